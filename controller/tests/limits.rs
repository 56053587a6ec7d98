//! Extreme values for every numeric plan key, through the loader that
//! `controller run` uses (a plan file layered with environment and flags by
//! figment, then validated): each is refused naming the key, never a panic;
//! a value that is accepted runs the load split without a panic either. And
//! the `controller` binary on odd input: exit 2, the key named, no traffic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use barrage_common::plan::PlanFile;
use barrage_controller::cli::RunArgs;

use crate::support::{run_binary_with, scratch};

const CLOSED: &str = "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\nusers = 2\nrequests = 4\n";
const OPEN: &str =
    "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\nrate = 5.0\nduration = \"2s\"\n";
const OPEN_INF: &str = "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\nrate = \"inf\"\n";
const TRACE: &str = "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\ntrace = \"t.jsonl\"\n";
const STAGES: &str = "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\n";
const SIM: &str = "[load]\nusers = 2\nrequests = 4\n[simulator]\n";
const SEARCH: &str = "[target]\nurl = \"http://127.0.0.1:9\"\n[load]\nusers = 2\nrequests = 4\n[slo]\nttft_p99 = \"1s\"\n[sweep]\nsearch = \"users\"\n";

const HUGE_INT: &str = "9223372036854775807";
const OVER_U32: &str = "4294967296";
const U32_MAX: &str = "4294967295";
const LONG: &str = "\"100000000h\"";
const OVERFLOW: &str = "\"99999999999999999999999s\"";

/// (base plan, key, values that must each be refused naming the key).
const REFUSED: &[(&str, &str, &[&str])] = &[
    (CLOSED, "load.users", &[HUGE_INT, "10000000", "100001"]),
    (CLOSED, "load.requests", &[HUGE_INT, "1000000001"]),
    (
        CLOSED,
        "load.spawn_rate",
        &["1e-300", "1e300", "-1e300", "nan", "inf", "0.0"],
    ),
    (CLOSED, "load.duration", &[LONG, OVERFLOW, "\"0s\""]),
    (CLOSED, "load.warmup", &[LONG, OVERFLOW]),
    (
        CLOSED,
        "request.max_tokens",
        &[OVER_U32, U32_MAX, "0", "-1"],
    ),
    (CLOSED, "request.min_tokens", &[OVER_U32, U32_MAX]),
    (CLOSED, "request.top_p", &["1e300", "-1.0", "nan"]),
    (CLOSED, "request.frequency_penalty", &["inf", "nan"]),
    (CLOSED, "request.presence_penalty", &["-inf", "nan"]),
    (CLOSED, "request.temperature", &["nan", "inf", "-1.0"]),
    (CLOSED, "request.n", &["0", OVER_U32]),
    (CLOSED, "target.timeout", &["\"0s\"", LONG, OVERFLOW]),
    (CLOSED, "target.connect_timeout", &["\"0s\"", LONG]),
    (CLOSED, "target.idle_timeout", &["\"0s\"", LONG]),
    (
        CLOSED,
        "metrics.interval",
        &["\"0s\"", "\"1ms\"", LONG, OVERFLOW],
    ),
    (CLOSED, "metrics.sigfig", &["0", "6", "256"]),
    (CLOSED, "monitor.scrape_interval", &["\"0s\"", LONG]),
    (
        CLOSED,
        "cluster.embedded_agents",
        &["0", "10000000", HUGE_INT],
    ),
    (CLOSED, "cluster.min_agents", &["0", HUGE_INT]),
    (CLOSED, "cluster.agent_wait", &[LONG, OVERFLOW]),
    (
        CLOSED,
        "dataset.input_tokens",
        &["0", OVER_U32, "20000000", "1000000"],
    ),
    (CLOSED, "dataset.prompts", &["0", OVER_U32, "2000000"]),
    (
        CLOSED,
        "dataset.output_tokens",
        &["0", OVER_U32, "20000000"],
    ),
    (
        CLOSED,
        "dataset.range_ratio",
        &["1.0", "-1e-300", "nan", "inf"],
    ),
    (CLOSED, "dataset.prefix_tokens", &[U32_MAX, "128"]),
    (
        OPEN,
        "load.rate",
        &["1e300", "1e-300", "-1e300", "nan", "0.0", "100001.0"],
    ),
    (OPEN, "load.burstiness", &["1e-300", "1e300", "nan", "-1.0"]),
    (OPEN, "load.max_concurrency", &["0", HUGE_INT]),
    (OPEN_INF, "load.requests", &["100001", HUGE_INT]),
    (TRACE, "load.time_scale", &["1e-300", "1e300", "nan", "0.0"]),
    (
        STAGES,
        "load.stages",
        &[
            "[{duration = \"1s\", rate = 1e300}]",
            "[{duration = \"1s\", rate = 1e-300}]",
            "[{duration = \"1s\", rate = nan}]",
            "[{duration = \"1s\", users = 10000000}]",
            "[{duration = \"100000000h\", users = 1}]",
            "[{duration = \"500h\", users = 1}, {duration = \"500h\", users = 1}]",
        ],
    ),
    (SIM, "simulator.ttft", &[LONG, OVERFLOW]),
    (SIM, "simulator.itl", &[LONG]),
    (SIM, "simulator.prefill_per_token", &[LONG]),
    (SIM, "simulator.faults.stall_duration", &[LONG]),
    (SIM, "simulator.batch_slowdown", &["1e300", "nan", "-1.0"]),
    (
        SIM,
        "simulator.tokens_per_word",
        &["1e-300", "1e300", "nan"],
    ),
    (SIM, "simulator.tokens_per_chunk", &["0", U32_MAX]),
    (SIM, "simulator.output_tokens", &[U32_MAX, OVER_U32]),
    (SIM, "simulator.reasoning_tokens", &[U32_MAX]),
    (SIM, "simulator.faults.http_500", &["nan", "1e300"]),
    (SIM, "simulator.prefix_cache.block_tokens", &["0", U32_MAX]),
    (
        SIM,
        "simulator.prefix_cache.capacity_tokens",
        &["1", HUGE_INT],
    ),
    (CLOSED, "conversation.turns", &["0", U32_MAX, "100001"]),
    (CLOSED, "conversation.think_time", &[LONG, OVERFLOW]),
    (CLOSED, "load.conversations", &["0", HUGE_INT, "1000000001"]),
    (
        CLOSED,
        "sweep.users",
        &["[9223372036854775807]", "[10000000]"],
    ),
    (OPEN, "sweep.rate", &["[1e300]", "[1e-300]", "[nan]"]),
    (CLOSED, "sweep.requests", &["[9223372036854775807]"]),
    (
        CLOSED,
        "sweep.io",
        &["[[4294967295, 8]]", "[[8, 4294967295]]", "[[2000000, 8]]"],
    ),
    (CLOSED, "sweep.cooldown", &[LONG]),
    (SEARCH, "sweep.search_max", &["1e300", "nan", "inf"]),
    (SEARCH, "sweep.search_min", &["1e-300", "nan"]),
    (SEARCH, "sweep.search_max_steps", &["0", U32_MAX]),
    (SEARCH, "sweep.search_precision", &["nan", "0.0", "1.0"]),
];

/// Keys where an extreme value may be a legitimate choice: accepted or
/// refused, but never a panic, and a refusal names the key.
const FREE: &[(&str, &str)] = &[
    (CLOSED, "request.seed"),
    (CLOSED, "request.top_k"),
    (CLOSED, "request.logprobs"),
    (CLOSED, "request.temperature"),
    (CLOSED, "dataset.seed"),
    (CLOSED, "dataset.limit"),
    (CLOSED, "dataset.min_prompt_tokens"),
    (CLOSED, "dataset.max_prompt_tokens"),
    (SIM, "simulator.max_batch"),
    (SIM, "simulator.seed"),
    (SEARCH, "sweep.search_precision"),
];

const EXTREMES: &[&str] = &[
    HUGE_INT, "-1", "0", U32_MAX, "1e300", "1e-300", "-1e300", "nan", "inf",
];

/// `base` with `key` set to the TOML literal `value`.
fn plan_text(base: &str, key: &str, value: &str) -> String {
    let mut table: toml::Table = base.parse().expect("base plan");
    let literal: toml::Table = format!("v = {value}").parse().expect("literal");
    let mut cur = &mut table;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let next = cur
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = next.as_table_mut().expect("a table on the way");
    }
    cur.insert(parts[parts.len() - 1].to_owned(), literal["v"].clone());
    toml::to_string(&table).expect("toml")
}

/// Loads the plan as `controller run plan.toml` does; a panic is an error
/// that names the panic, so the assertion below reports it with the case.
fn load(dir: &Path, text: &str) -> Result<PlanFile, String> {
    let file = dir.join("plan.toml");
    std::fs::write(&file, text).expect("write plan");
    let args = RunArgs {
        plan: Some(file),
        ..RunArgs::default()
    };
    match catch_unwind(AssertUnwindSafe(|| args.plan())) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("PANIC while loading the plan".to_owned()),
    }
}

/// What runs with an accepted plan before any traffic: the split and steps.
fn split_without_panic(plan: &PlanFile) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        let _ = barrage_controller::slices::slices(&plan.load, &[1.0, 3.0]);
        let _ = plan.sweep.as_ref().map(|s| s.steps());
    }))
    .is_ok()
}

#[test]
fn extreme_values_are_refused_naming_the_key_and_never_panic() {
    let dir = scratch("limits");
    let mut wrong = Vec::new();
    for (base, key, values) in REFUSED {
        for value in *values {
            match load(&dir, &plan_text(base, key, value)) {
                Err(e) if e.contains(key) && !e.contains("PANIC") => {}
                Err(e) => wrong.push(format!("{key} = {value}: {e}")),
                Ok(_) => wrong.push(format!("{key} = {value}: accepted")),
            }
        }
    }
    for (base, key) in FREE {
        for value in EXTREMES {
            match load(&dir, &plan_text(base, key, value)) {
                Ok(plan) if split_without_panic(&plan) => {}
                Ok(_) => wrong.push(format!("{key} = {value}: the split panicked")),
                Err(e) if e.contains(key) && !e.contains("PANIC") => {}
                Err(e) => wrong.push(format!("{key} = {value}: {e}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn values_at_the_limits_are_accepted() {
    let dir = scratch("limits-ok");
    let ok = [
        (CLOSED, "load.users", "100000"),
        (CLOSED, "load.spawn_rate", "0.001"),
        (OPEN, "load.rate", "100000.0"),
        (CLOSED, "request.max_tokens", "10000000"),
        (CLOSED, "load.duration", "\"720h\""),
        (CLOSED, "cluster.embedded_agents", "256"),
    ];
    for (base, key, value) in ok {
        let plan = load(&dir, &plan_text(base, key, value));
        assert!(plan.is_ok(), "{key} = {value}: {plan:?}");
    }
}

/// Runs `controller run` on a plan text aimed at a live simulator; returns
/// (status, stderr, requests the simulator saw).
async fn run_binary(dir: &Path, body: &str) -> (Option<i32>, String, u64) {
    run_binary_with(dir, body, &[]).await
}

const TARGET: &str =
    "[target]\nurl = \"SIM_URL\"\n[cluster]\nembedded_agents = 1\n[output]\ndir = \"OUT\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_million_users_exit_2_naming_the_limit_before_any_traffic() {
    let dir = scratch("limits-users");
    let plan = format!("{TARGET}[load]\nusers = 10000000\nrequests = 4\n");
    let (code, err, seen) = run_binary(&dir, &plan).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("load.users") && err.contains("100000"),
        "{err}"
    );
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_timestamp_beyond_the_longest_run_is_refused_naming_the_line() {
    let dir = scratch("limits-trace");
    std::fs::write(
        dir.join("t.jsonl"),
        "{\"timestamp\": 0, \"input_tokens\": 4, \"output_tokens\": 2}\n\
         {\"timestamp\": 1e300, \"input_tokens\": 4, \"output_tokens\": 2}\n",
    )
    .expect("trace");
    let plan = format!("{TARGET}[load]\ntrace = \"t.jsonl\"\n");
    let (code, err, seen) = run_binary(&dir, &plan).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("load.trace") && err.contains("line 2") && err.contains("1e300"),
        "{err}"
    );
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_tokenizer_exits_2_naming_the_key_and_file() {
    let dir = scratch("limits-tokenizer");
    std::fs::write(
        dir.join("t.jsonl"),
        "{\"timestamp\": 0, \"input_tokens\": 4, \"output_tokens\": 2}\n",
    )
    .expect("trace");
    std::fs::write(dir.join("bad.json"), "{\"not\": \"a tokenizer\"}").expect("bad file");
    for (file, load) in [
        ("missing.json", "[load]\nusers = 1\nrequests = 2\n"),
        ("bad.json", "[load]\ntrace = \"t.jsonl\"\n"),
    ] {
        let plan = format!("{TARGET}{load}[dataset]\ntokenizer = \"{file}\"\n");
        let (code, err, seen) = run_binary(&dir, &plan).await;
        assert_eq!(code, Some(2), "{file}: {err}");
        assert!(
            err.contains("dataset.tokenizer") && err.contains(file),
            "{file}: {err}"
        );
        assert_eq!(seen, 0, "no traffic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_template_placeholder_is_refused_once_naming_it() {
    let dir = scratch("limits-template");
    let template = |body: &str| {
        format!(
            "{}[load]\nusers = 1\nrequests = 2\n[target.template]\nbody = '{body}'\ntext = \"/choices/0/text\"\n",
            TARGET.replace("[cluster]", "api = \"template\"\n[cluster]")
        )
    };
    let misspelled =
        template(r#"{"model": "%m", "prompt": "%p", "max_tokens": %max_token, "stream": true}"#);
    let (code, err, seen) = run_binary(&dir, &misspelled).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("target.template.body") && err.contains("%max_token:"),
        "{err}"
    );
    assert_eq!(err.matches("max_token:").count(), 1, "printed once: {err}");
    assert_eq!(seen, 0, "no traffic");
    let not_json = template(r#"{"model": "%m", "prompt": %p, "max_tokens": %max_tokens}"#);
    let (code, err, seen) = run_binary(&dir, &not_json).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("target.template.body") && err.contains("not JSON"),
        "{err}"
    );
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_an_embedded_agent_reports_at_prepare_is_printed_once() {
    let dir = scratch("limits-prepare");
    // A key with a line break cannot be an Authorization header: the agent
    // refuses it at prepare and tells the controller, which prints it.
    let var = "BARRAGE_LIMITS_TEST_KEY";
    let plan = format!(
        "{}[load]\nusers = 1\nrequests = 2\n",
        TARGET.replace("[cluster]", &format!("api_key_env = \"{var}\"\n[cluster]"))
    );
    let (code, err, seen) = run_binary_with(&dir, &plan, &[(var, "line\nbreak")]).await;
    assert_ne!(code, Some(0), "{err}");
    assert_eq!(
        err.matches("Authorization").count(),
        1,
        "printed once: {err}"
    );
    assert!(!err.contains("break"), "the key is never shown: {err}");
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_api_key_variable_exits_2_naming_the_key() {
    let dir = scratch("limits-api-key-env");
    let var = "BARRAGE_LIMITS_TEST_SURELY_UNSET_KEY";
    let plan = format!(
        "{}[load]\nusers = 1\nrequests = 2\n",
        TARGET.replace("[cluster]", &format!("api_key_env = \"{var}\"\n[cluster]"))
    );
    let (code, err, seen) = run_binary_with(&dir, &plan, &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("target.api_key_env") && err.contains(var),
        "{err}"
    );
    assert_eq!(seen, 0, "no traffic");
}
