//! The batch-test request shape (`num_prompts_list`, `max_concurrency_list`,
//! `input_output_pairs`) turned into a zipped sweep plan (docs/service.md).
//!
//! The plan is layered with figment exactly as `controller run` layers its
//! flags over a plan file, and checked by the same `plan::from_figment`, so
//! a batch and the CLI refuse a plan with the same words. `BARRAGE_*`
//! environment overrides are not applied (docs/service.md).

use barrage_common::plan::{self, PlanError, PlanFile};
use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

use crate::cli::RunArgs;

/// The plan name when neither the request nor its base plan gives one.
pub const DEFAULT_NAME: &str = "batch";

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Requests of each step (`sweep.requests`), zipped with `max_concurrency_list`.
    #[serde(default)]
    pub num_prompts_list: Vec<u64>,
    /// Closed-loop users of each step (`sweep.users`).
    #[serde(default)]
    pub max_concurrency_list: Vec<u64>,
    /// [input_tokens, output_tokens] pairs (`sweep.io`), crossed with the zipped lists.
    #[serde(default)]
    pub input_output_pairs: Vec<[u32; 2]>,
    /// A base plan as TOML (target, dataset...).
    pub plan: Option<String>,
    /// `target.url`; with neither `plan` nor `url` the built-in simulator.
    pub url: Option<String>,
    /// `target.model`
    pub model: Option<String>,
    /// `target.api`
    pub api: Option<String>,
}

/// A batch request that cannot become a plan; the message names the field
/// (or the plan key) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> BatchError {
    BatchError::Invalid(format!("{field}: {problem}"))
}

/// The sweep plan of a batch request.
pub fn to_plan(req: &BatchRequest) -> Result<PlanFile, BatchError> {
    check_lists(req)?;
    if req.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(invalid("name", "must not be empty"));
    }
    let mut fig = Figment::new().merge(Toml::string(&toml_text(&Defaults { name: DEFAULT_NAME })?));
    if let Some(text) = &req.plan {
        check_base(text)?;
        fig = fig.merge(Toml::string(text));
    }
    fig = fig
        .merge(Toml::string(&toml_text(&target_keys(req)?)?))
        .merge(Toml::string(&toml_text(&BatchKeys::of(req))?));
    plan::from_figment(fig).map_err(plan_error)
}

/// The batch framework's own rules: equal, non-empty lists of values >= 1.
fn check_lists(req: &BatchRequest) -> Result<(), BatchError> {
    let lists = [
        ("num_prompts_list", &req.num_prompts_list),
        ("max_concurrency_list", &req.max_concurrency_list),
    ];
    for (field, list) in lists {
        if list.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if let Some(i) = list.iter().position(|v| *v == 0) {
            return Err(invalid(&format!("{field}[{i}]"), "must be at least 1"));
        }
    }
    let (n, c) = (req.num_prompts_list.len(), req.max_concurrency_list.len());
    if n != c {
        return Err(BatchError::Invalid(format!(
            "num_prompts_list and max_concurrency_list must have the same length \
             (step i runs num_prompts_list[i] requests at max_concurrency_list[i]); got {n} and {c}"
        )));
    }
    if req.input_output_pairs.is_empty() {
        return Err(invalid(
            "input_output_pairs",
            "must not be empty: give [[input_tokens, output_tokens], ...]",
        ));
    }
    if let Some(i) = req
        .input_output_pairs
        .iter()
        .position(|[i, o]| *i == 0 || *o == 0)
    {
        return Err(invalid(
            &format!("input_output_pairs[{i}]"),
            "[input_tokens, output_tokens] must both be at least 1",
        ));
    }
    Ok(())
}

/// Load keys a base plan may not set: every step runs closed loop at
/// `max_concurrency_list[i]` users, so an open-loop base would be ignored.
const OPEN_LOOP_KEYS: &[&str] = &["rate", "stages", "trace"];

/// The base plan parses as TOML (its own message otherwise) and its load
/// can be turned into closed-loop steps.
fn check_base(text: &str) -> Result<(), BatchError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid("plan", e))?;
    let Some(load) = table.get("load").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    let mode = load.get("mode").and_then(toml::Value::as_str);
    let key = OPEN_LOOP_KEYS
        .iter()
        .find(|k| load.contains_key(**k))
        .copied()
        .or(mode.filter(|m| *m != "concurrency").map(|_| "mode"));
    match key {
        Some(k) => Err(invalid(
            &format!("plan: load.{k}"),
            "a batch runs closed-loop steps (max_concurrency_list users each); remove it",
        )),
        None => Ok(()),
    }
}

/// `url` / `model` / `api` as plan keys, through the same code as
/// `controller run --url/--model/--api/--simulator`.
fn target_keys(req: &BatchRequest) -> Result<toml::Table, BatchError> {
    let args = RunArgs {
        url: req.url.clone(),
        model: req.model.clone(),
        api: req.api.clone(),
        simulator: req.plan.is_none() && req.url.is_none(),
        ..RunArgs::default()
    };
    args.overrides().map_err(plan_error)
}

#[derive(Serialize)]
struct Defaults<'a> {
    name: &'a str,
}

/// The keys a batch sets over its base plan. The base load is the first
/// step's, so the base validates as it will run; each step then sets its own.
#[derive(Serialize)]
struct BatchKeys<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    load: LoadKeys,
    sweep: SweepKeys<'a>,
}

#[derive(Serialize)]
struct LoadKeys {
    users: u64,
    requests: u64,
}

#[derive(Serialize)]
struct SweepKeys<'a> {
    pairing: &'static str,
    users: &'a [u64],
    requests: &'a [u64],
    io: &'a [[u32; 2]],
}

impl<'a> BatchKeys<'a> {
    fn of(req: &'a BatchRequest) -> Self {
        Self {
            name: req.name.as_deref(),
            load: LoadKeys {
                users: req.max_concurrency_list.first().copied().unwrap_or(1),
                requests: req.num_prompts_list.first().copied().unwrap_or(1),
            },
            sweep: SweepKeys {
                pairing: "zip",
                users: &req.max_concurrency_list,
                requests: &req.num_prompts_list,
                io: &req.input_output_pairs,
            },
        }
    }
}

fn toml_text(value: &impl Serialize) -> Result<String, BatchError> {
    toml::to_string(value).map_err(|e| BatchError::Invalid(format!("internal: {e}")))
}

/// The batch field behind a sweep key, so a limit names what the client sent.
const FIELDS: &[(&str, &str)] = &[
    ("sweep.users", "max_concurrency_list"),
    ("sweep.requests", "num_prompts_list"),
    ("sweep.io", "input_output_pairs"),
];

/// The CLI's message; a sweep key also names its batch field.
fn plan_error(e: PlanError) -> BatchError {
    match e {
        PlanError::Invalid { key, problem } => match FIELDS.iter().find(|(k, _)| *k == key) {
            Some((k, field)) => invalid(&format!("{field} ({k})"), problem),
            None => invalid(&key, problem),
        },
        other => BatchError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barrage_common::sweep::{Pairing, StepSpec};

    fn req(np: &[u64], mc: &[u64], io: &[[u32; 2]]) -> BatchRequest {
        BatchRequest {
            num_prompts_list: np.to_vec(),
            max_concurrency_list: mc.to_vec(),
            input_output_pairs: io.to_vec(),
            ..BatchRequest::default()
        }
    }

    fn doc_example() -> BatchRequest {
        req(&[100, 200], &[8, 16], &[[1024, 128], [4096, 256]])
    }

    fn message(r: &BatchRequest) -> String {
        match to_plan(r) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn step(
        users: u64,
        requests: u64,
        io: [u32; 2],
    ) -> (Option<u64>, Option<u64>, Option<[u32; 2]>) {
        (Some(users), Some(requests), Some(io))
    }

    #[test]
    fn zips_concurrency_with_prompts_and_crosses_the_pairs() {
        let p = to_plan(&doc_example()).expect("valid");
        let sweep = p.sweep.as_ref().expect("a sweep");
        assert_eq!(sweep.pairing, Pairing::Zip);
        let steps: Vec<_> = sweep
            .steps()
            .iter()
            .map(|s: &StepSpec| (s.users, s.requests, s.io))
            .collect();
        assert_eq!(
            steps,
            vec![
                step(8, 100, [1024, 128]),
                step(16, 200, [1024, 128]),
                step(8, 100, [4096, 256]),
                step(16, 200, [4096, 256]),
            ]
        );
    }

    #[test]
    fn every_step_plan_validates() {
        let p = to_plan(&doc_example()).expect("valid");
        let sweep = p.sweep.clone().expect("a sweep");
        let dir = std::path::Path::new("unused");
        for (i, spec) in sweep.steps().iter().enumerate() {
            let s = crate::sweep::step_plan(&p, spec, i + 1, dir).expect("step validates");
            assert_eq!(s.load.users, spec.users);
            assert_eq!(s.load.requests, spec.requests);
            assert_eq!(s.request.max_tokens, spec.io.map_or(0, |io| io[1]));
        }
    }

    #[test]
    fn the_documented_json_becomes_a_plan_and_unknown_fields_are_refused() {
        let json = r#"{"name": "batch-1", "description": "nightly",
            "num_prompts_list": [100, 200], "max_concurrency_list": [8, 16],
            "input_output_pairs": [[1024, 128], [4096, 256]]}"#;
        let r: BatchRequest = serde_json::from_str(json).expect("the documented shape");
        let p = to_plan(&r).expect("valid");
        assert_eq!(p.name, "batch-1");
        assert_eq!(p.sweep.map(|s| s.steps().len()), Some(4));
        let e = serde_json::from_str::<BatchRequest>(r#"{"num_prompts": [1]}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("num_prompts"), "{e}");
    }

    #[test]
    fn without_plan_or_url_the_target_is_the_simulator() {
        let p = to_plan(&doc_example()).expect("valid");
        assert!(p.simulator.is_some());
        assert_eq!(p.target.url, None);
        assert_eq!(p.name, DEFAULT_NAME);
        let cli = RunArgs {
            simulator: true,
            requests: Some(1),
            ..RunArgs::default()
        }
        .plan()
        .expect("cli plan");
        assert_eq!(
            p.simulator, cli.simulator,
            "the same simulator as --simulator"
        );
    }

    #[test]
    fn url_model_api_and_name_set_their_keys() {
        let mut r = doc_example();
        r.url = Some("http://127.0.0.1:9/v1".into());
        r.model = Some("m1".into());
        r.api = Some("openai-completions".into());
        r.name = Some("nightly".into());
        let p = to_plan(&r).expect("valid");
        assert_eq!(p.target.url.as_deref(), Some("http://127.0.0.1:9/v1"));
        assert_eq!(p.target.model.as_deref(), Some("m1"));
        assert_eq!(p.target.api, plan::ApiKind::OpenaiCompletions);
        assert!(p.simulator.is_none());
        assert_eq!(p.name, "nightly");
    }

    #[test]
    fn base_plan_keeps_its_keys_and_url_overrides_its_target() {
        let mut r = doc_example();
        r.plan = Some(
            "name = \"base\"\n[target]\nurl = \"http://127.0.0.1:1\"\nmodel = \"a\"\n\
             [request]\ntemperature = 0.5\n[sweep]\ncooldown = \"1s\"\n"
                .into(),
        );
        r.url = Some("http://127.0.0.1:2".into());
        let p = to_plan(&r).expect("valid");
        assert_eq!(p.name, "base");
        assert_eq!(p.target.url.as_deref(), Some("http://127.0.0.1:2"));
        assert_eq!(p.target.model.as_deref(), Some("a"));
        assert_eq!(p.request.temperature, Some(0.5));
        let sweep = p.sweep.expect("sweep");
        assert_eq!(sweep.cooldown, std::time::Duration::from_secs(1));
        assert_eq!(sweep.users, vec![8, 16]);
    }

    #[test]
    fn a_base_plan_without_a_target_is_refused_naming_target_url() {
        let mut r = doc_example();
        r.plan = Some("[request]\nmax_tokens = 9\n".into());
        assert!(
            message(&r).starts_with("target.url: missing"),
            "{}",
            message(&r)
        );
    }

    #[test]
    fn mismatched_lengths_name_both_lists() {
        let m = message(&req(&[100, 200, 300], &[8, 16], &[[1, 1]]));
        assert!(
            m.contains("num_prompts_list and max_concurrency_list"),
            "{m}"
        );
        assert!(m.contains("got 3 and 2"), "{m}");
    }

    #[test]
    fn empty_lists_are_refused_by_name() {
        let m = message(&req(&[], &[1], &[[1, 1]]));
        assert!(m.starts_with("num_prompts_list: must not be empty"), "{m}");
        let m = message(&req(&[1], &[], &[[1, 1]]));
        assert!(
            m.starts_with("max_concurrency_list: must not be empty"),
            "{m}"
        );
        let m = message(&req(&[1], &[1], &[]));
        assert!(
            m.starts_with("input_output_pairs: must not be empty"),
            "{m}"
        );
    }

    #[test]
    fn zero_values_are_refused_with_their_index() {
        let m = message(&req(&[5, 0], &[1, 2], &[[1, 1]]));
        assert!(
            m.starts_with("num_prompts_list[1]: must be at least 1"),
            "{m}"
        );
        let m = message(&req(&[5], &[0], &[[1, 1]]));
        assert!(
            m.starts_with("max_concurrency_list[0]: must be at least 1"),
            "{m}"
        );
        let m = message(&req(&[5], &[1], &[[8, 8], [16, 0]]));
        assert!(m.starts_with("input_output_pairs[1]:"), "{m}");
    }

    #[test]
    fn empty_name_is_refused() {
        let mut r = doc_example();
        r.name = Some(" ".into());
        assert!(message(&r).starts_with("name: must not be empty"));
    }

    #[test]
    fn a_base_plan_that_does_not_parse_gives_its_own_message() {
        let mut r = doc_example();
        let text = "[target\nurl = 1";
        r.plan = Some(text.into());
        let own = toml::from_str::<toml::Table>(text).expect_err("bad toml");
        assert_eq!(message(&r), format!("plan: {own}"));
    }

    #[test]
    fn an_unknown_key_in_the_base_plan_is_named() {
        let mut r = doc_example();
        r.plan = Some("[target]\nurl = \"http://127.0.0.1:1\"\nbogus = 1\n".into());
        let m = message(&r);
        assert!(m.contains("bogus"), "{m}");
    }

    #[test]
    fn an_open_loop_base_plan_is_refused() {
        let mut r = doc_example();
        r.plan = Some("[target]\nurl = \"http://127.0.0.1:1\"\n[load]\nrate = 5.0\n".into());
        let m = message(&r);
        assert!(m.starts_with("plan: load.rate:"), "{m}");
        r.plan = Some("[target]\nurl = \"http://127.0.0.1:1\"\n[load]\nmode = \"stages\"\n".into());
        assert!(message(&r).starts_with("plan: load.mode:"));
    }

    #[test]
    fn validation_messages_match_the_cli() {
        let mut r = doc_example();
        r.url = Some("127.0.0.1:8000".into());
        let cli = RunArgs {
            url: r.url.clone(),
            users: Some(8),
            requests: Some(100),
            ..RunArgs::default()
        }
        .plan()
        .expect_err("not a URL");
        assert_eq!(message(&r), cli.to_string());
        assert!(message(&r).starts_with("target.url: \"127.0.0.1:8000\" must start with http://"));
    }

    #[test]
    fn schema_messages_match_a_submitted_plan() {
        let mut r = doc_example();
        r.url = Some("http://127.0.0.1:8000".into());
        r.api = Some("no-such-api".into());
        let text = "[target]\nurl = \"http://127.0.0.1:8000\"\napi = \"no-such-api\"\n\
                    [load]\nusers = 8\nrequests = 100\n";
        let submitted =
            plan::from_figment(Figment::new().merge(Toml::string(text))).expect_err("bad api");
        assert_eq!(message(&r), submitted.to_string());
        assert!(message(&r).starts_with("target.api: unknown variant"));
    }

    #[test]
    fn sweep_limits_name_the_batch_field() {
        let too_many = barrage_common::limits::MAX_USERS + 1;
        // The first step sets the base load: put the excess in the second.
        let m = message(&req(&[1, 1], &[1, too_many], &[[1, 1]]));
        assert!(
            m.starts_with("max_concurrency_list (sweep.users): must be at most"),
            "{m}"
        );
    }
}
