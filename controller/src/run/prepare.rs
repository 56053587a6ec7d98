//! Prepare: split the load into slices, build each agent's Prepare and
//! send it with its dataset.

use crate::link::AgentLink;
use barrage_common::metrics::{Layout, Layouts};
use barrage_common::plan::{ApiKind, PlanFile};
use barrage_proto::agent::v1 as pb;
use futures::future::join_all;
use std::time::Duration;

use super::*;

pub(super) fn api(kind: ApiKind) -> pb::Api {
    match kind {
        ApiKind::OpenaiChat => pb::Api::OpenaiChat,
        ApiKind::OpenaiCompletions => pb::Api::OpenaiCompletions,
        ApiKind::OllamaGenerate => pb::Api::OllamaGenerate,
        ApiKind::OllamaChat => pb::Api::OllamaChat,
        ApiKind::OpenaiEmbeddings => pb::Api::OpenaiEmbeddings,
        ApiKind::Template => pb::Api::Template,
    }
}

pub(super) fn target_proto(plan: &PlanFile, url: &str) -> Result<pb::Target, RunError> {
    let api_key = match &plan.target.api_key_env {
        Some(var) => std::env::var(var).map_err(|_| {
            RunError::Plan(format!(
                "target.api_key_env: environment variable {var} is not set"
            ))
        })?,
        None => String::new(),
    };
    Ok(pb::Target {
        url: url.to_owned(),
        api: api(plan.target.api) as i32,
        model: plan
            .target
            .model
            .clone()
            .or_else(|| plan.simulator.as_ref().map(|s| s.model.clone()))
            .unwrap_or_default(),
        api_key,
        headers: plan
            .target
            .headers
            .iter()
            .map(|(k, v)| pb::Header {
                name: k.clone(),
                value: v.clone(),
                secret: true,
            })
            .collect(),
        // Embeddings answer with one body.
        stream: plan.streams(),
        timeout_ms: plan.target.timeout.as_millis() as u64,
        include_usage: plan.target.include_usage,
        connect_timeout_ms: plan.target.connect_timeout.as_millis() as u64,
        idle_timeout_ms: plan.target.idle_timeout.map_or(0, |d| d.as_millis() as u64),
        http2: plan.target.http_version == "2",
        template: plan.target.template.as_ref().map(|t| pb::TemplateApi {
            body: t.body.clone(),
            format: match t.format.as_deref() {
                Some("ndjson") => pb::TemplateFormat::Ndjson,
                Some("json") => pb::TemplateFormat::Json,
                _ => pb::TemplateFormat::Sse,
            } as i32,
            text_pointer: t.text.clone(),
            reasoning_pointer: t.reasoning.clone().unwrap_or_default(),
            prompt_tokens_pointer: t.prompt_tokens.clone().unwrap_or_default(),
            completion_tokens_pointer: t.completion_tokens.clone().unwrap_or_default(),
            done_pointer: t.done.clone().unwrap_or_default(),
            done_marker: t.done_marker.clone().unwrap_or_default(),
        }),
    })
}

/// What every agent's Prepare shares; each then gets its slice, seed and
/// prompts.
pub(super) fn common_prepare(
    plan: &PlanFile,
    (run_id, plan_sha): (&str, &str),
    target: &pb::Target,
    layouts: Layouts,
    (hard_deadline, drain): (Duration, Duration),
    tokenizer_json: &[u8],
) -> pb::Prepare {
    pb::Prepare {
        run_id: run_id.to_owned(),
        step: 0,
        slice: None,
        target: Some(target.clone()),
        request: Some(request_params(plan)),
        latency_layout: Some(layouts.latency.to_proto()),
        count_layout: Some(layouts.tokens.to_proto()),
        interval_ms: plan.metrics.interval.as_millis() as u64,
        lease_ms: crate::link::LEASE.as_millis() as u64,
        hard_deadline_ms: hard_deadline.as_millis() as u64,
        seed: 0,
        dataset_len: 0,
        plan_sha256: plan_sha.to_owned(),
        slo: Some(request_slo(plan)),
        tokenizer_json: tokenizer_json.to_vec(),
        drain_ms: drain.as_millis() as u64,
        warmup_intervals: crate::edges::warmup_window(
            plan.load.warmup.unwrap_or_default(),
            plan.metrics.interval,
        )
        .0,
        records: Some(pb::RecordOptions {
            enabled: plan.output.requests,
            save_text: plan.output.save_text.per_agent(),
        }),
        conversation: None,
    }
}

/// Prepare: every agent gets its slice, seed and dataset chunks (and their
/// prompt count) and answers Ready
/// with the plan's hash, or the run fails before any traffic.
pub(super) async fn prepare_all(
    links: &mut [AgentLink],
    common: &pb::Prepare,
    slices: &[pb::Slice],
    (chunks, lens): (&[&[pb::DatasetChunk]], &[u64]),
    seed: u64,
) -> Result<(), RunError> {
    let prepares = links.iter_mut().enumerate().map(|(i, link)| {
        let prepare = pb::Prepare {
            slice: Some(slices[i].clone()),
            seed: seed.wrapping_add(i as u64 * 0x9E37_79B9),
            dataset_len: lens[i],
            ..common.clone()
        };
        link.prepare(prepare, chunks[i])
    });
    let readies = join_all(prepares)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let sha = &common.plan_sha256;
    if let Some((i, r)) = readies
        .iter()
        .enumerate()
        .find(|(_, r)| &r.plan_sha256 != sha)
    {
        return Err(RunError::Setup(format!(
            "agent {}: prepared plan {} instead of {sha}",
            links[i].addr, r.plan_sha256
        )));
    }
    Ok(())
}

/// Each agent's weight: its declared capacity, else its cores.
pub(super) fn capacity_weights(links: &[AgentLink]) -> Vec<f64> {
    links
        .iter()
        .map(|l| {
            l.hello.capacity.as_ref().map_or(1.0, |c| {
                if c.weight > 0.0 {
                    c.weight
                } else {
                    f64::from(c.cores.max(1))
                }
            })
        })
        .collect()
}

/// Trace replay: each agent gets its stripe of arrivals (set in its slice)
/// and their prompts.
pub(super) fn stripe_trace(
    t: &crate::trace::Trace,
    weights: &[f64],
    slices: &mut [pb::Slice],
) -> Vec<Vec<pb::Prompt>> {
    t.split(weights)
        .into_iter()
        .zip(slices.iter_mut())
        .map(|((offsets, prompts), slice)| {
            slice.max_requests = Some(offsets.len() as u64);
            slice.arrival_offsets_s = offsets;
            slice.duration_ms = 0;
            // An agent without arrivals still needs a dataset to prepare.
            if prompts.is_empty() {
                t.prompts[..1].to_vec()
            } else {
                prompts
            }
        })
        .collect()
}

/// The one histogram layout of this run, at the plan's precision.
pub(super) fn run_layouts(plan: &PlanFile) -> Layouts {
    Layouts {
        latency: Layout {
            sigfig: plan.metrics.sigfig,
            ..Layout::LATENCY_US
        },
        tokens: Layout {
            sigfig: plan.metrics.sigfig,
            ..Layout::TOKENS
        },
    }
}

/// When an agent stops by itself, whatever the controller does: the run's
/// length, the drain and one request timeout, with a margin.
pub(super) fn hard_deadline(
    plan: &PlanFile,
    trace: Option<&crate::trace::Trace>,
    drain: Duration,
) -> Duration {
    match plan
        .load
        .effective_duration()
        .or(trace.map(|t| Duration::from_secs_f64(t.span_s())))
    {
        Some(d) => d + drain + plan.target.timeout + Duration::from_secs(30),
        None => Duration::from_secs(24 * 3600),
    }
}

/// The request parameters every agent sends, from `[request]`.
pub(super) fn request_params(plan: &PlanFile) -> pb::RequestParams {
    let extra = plan.request.extra_json(plan.target.api);
    pb::RequestParams {
        max_tokens: plan.request.max_tokens,
        temperature: plan.request.temperature,
        ignore_eos: plan.request.ignore_eos,
        extra_body_json: if extra.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(extra).to_string()
        },
    }
}

/// Each agent's id, address, users and share of the load (users in closed
/// loop, rate in open loop).
pub(super) fn agent_infos(
    links: &[AgentLink],
    slices: &[pb::Slice],
) -> Vec<(String, String, u64, f64)> {
    let total_weight: f64 = slices.iter().map(slice_weight).sum();
    links
        .iter()
        .zip(slices)
        .map(|(l, s)| {
            let share = if total_weight > 0.0 {
                slice_weight(s) / total_weight
            } else {
                0.0
            };
            (
                l.hello.agent_id.clone(),
                l.addr.clone(),
                s.user_indexes.len() as u64,
                share,
            )
        })
        .collect()
}

/// Open loop: the planned arrivals per second (None in closed loop).
pub(super) fn offered_rate(
    load: &barrage_common::load::LoadSection,
    slices: &[pb::Slice],
    trace: Option<&crate::trace::Trace>,
) -> Option<f64> {
    match load.mode() {
        barrage_common::load::LoadMode::Rate => load.rate_per_second(),
        barrage_common::load::LoadMode::Stages if load.open_loop() => {
            let total: f64 = slices.iter().map(expected_arrivals).sum();
            load.effective_duration().map(|d| total / d.as_secs_f64())
        }
        barrage_common::load::LoadMode::Trace => trace
            .filter(|t| t.span_s() > 0.0)
            .map(|t| t.offsets_s.len() as f64 / t.span_s()),
        _ => None,
    }
}

/// Per-request goodput limits from `[slo]`: the tightest limit given on each
/// of ttft, ttfo, tpot, e2e and max_stall, whatever its statistic.
pub fn request_slo(plan: &PlanFile) -> pb::RequestSlo {
    use barrage_common::metrics::Metric;
    use barrage_common::thresholds::Subject;
    let mut slo = pb::RequestSlo::default();
    for c in plan.slo.checks().unwrap_or_default() {
        let Subject::Metric(m, _) = c.subject else {
            continue;
        };
        let us = (c.limit * 1000.0).round() as u64;
        let field = match m {
            Metric::Ttft => &mut slo.ttft_us,
            Metric::Ttfo => &mut slo.ttfo_us,
            Metric::Tpot => &mut slo.tpot_us,
            Metric::E2e => &mut slo.e2e_us,
            Metric::MaxStall => &mut slo.max_stall_us,
            _ => continue,
        };
        *field = Some(field.map_or(us, |v| v.min(us)));
    }
    slo
}

/// Arrivals a rate-stage slice plans over its stages (the profile's area).
pub(super) fn expected_arrivals(s: &pb::Slice) -> f64 {
    let mut prev = 0.0;
    let mut area = 0.0;
    for st in &s.stages {
        area += 0.5 * (prev + st.target) * st.duration_ms as f64 / 1000.0;
        prev = st.target;
    }
    area
}

/// The quantity a slice carries: users, else its (peak) rate.
pub(super) fn slice_weight(s: &pb::Slice) -> f64 {
    if !s.user_indexes.is_empty() {
        return s.user_indexes.len() as f64;
    }
    let peak = s.stages.iter().map(|st| st.target).fold(s.rate, f64::max);
    if s.rate_infinite {
        s.max_requests.unwrap_or(0) as f64
    } else {
        peak
    }
}

/// What the prepare phase settled: each agent's slice, the histogram
/// layout and the drain.
pub(super) struct Prepared {
    pub(super) slices: Vec<pb::Slice>,
    pub(super) layouts: Layouts,
    pub(super) drain: Duration,
}

/// Prepare: split the load by capacity, give each agent its slice and its
/// dataset (or its stripe of a trace), and wait for every Ready.
pub(super) async fn prepare_step(
    plan: &PlanFile,
    loaded: &Loaded,
    target: &pb::Target,
    run_id: &str,
    links: &mut [AgentLink],
) -> Result<Prepared, RunError> {
    let weights = capacity_weights(links);
    let mut slices = crate::slices::slices(&plan.load, &weights);
    let trace = loaded.trace.as_ref();
    let per_agent = trace.map(|t| stripe_trace(t, &weights, &mut slices));
    let layouts = run_layouts(plan);
    let drain = crate::edges::drain(plan);
    let common = common_prepare(
        plan,
        (run_id, &loaded.plan_sha),
        target,
        layouts,
        (hard_deadline(plan, trace, drain), drain),
        &loaded.tokenizer_json,
    );
    let common = pb::Prepare {
        conversation: loaded.conversation.clone(),
        ..common
    };
    // The dataset in ≤ 1 MiB chunks: encoded once when every agent gets it all.
    let (chunks, lens): (Vec<Vec<pb::DatasetChunk>>, Vec<u64>) = match &per_agent {
        Some(parts) => (
            parts.iter().map(|d| dataset::chunks(d, 1 << 20)).collect(),
            parts.iter().map(|d| d.len() as u64).collect(),
        ),
        None => (
            vec![dataset::chunks(&loaded.prompts, 1 << 20)],
            vec![loaded.prompts.len() as u64; links.len()],
        ),
    };
    let chunk_refs: Vec<&[pb::DatasetChunk]> = match &per_agent {
        Some(_) => chunks.iter().map(Vec::as_slice).collect(),
        None => vec![chunks[0].as_slice(); links.len()],
    };
    prepare_all(
        links,
        &common,
        &slices,
        (&chunk_refs, &lens),
        plan.dataset.seed,
    )
    .await?;
    Ok(Prepared {
        slices,
        layouts,
        drain,
    })
}
