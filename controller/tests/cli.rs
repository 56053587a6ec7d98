//! The `controller` binary as users run it: bad plans fail before traffic
//! with the key named; the exit status says how the run went.

use crate::support::{LOAD, controller, output, run_binary_with, scratch};

/// Runs the binary on a plan text aimed at a live simulator; returns
/// (status, stderr, requests the simulator saw).
async fn run_plan(body: &str) -> (Option<i32>, String, u64) {
    run_binary_with(&scratch("cli"), body, &[]).await
}

const GOOD: &str = r#"
[target]
url = "SIM_URL"
[load]
users = 2
requests = 4
[cluster]
embedded_agents = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_fails_before_traffic_naming_the_key() {
    let (code, err, seen) = run_plan(&GOOD.replace("users = 2", "users = 2\nuserz = 3")).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("userz"), "{err}");
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_on_an_unobservable_metric_is_refused_naming_the_key() {
    let plan = GOOD.replace("url = \"SIM_URL\"", "url = \"SIM_URL\"\nstream = false")
        + "[thresholds]\ntpot_p99 = \"50ms\"\n";
    let (code, err, seen) = run_plan(&plan).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("thresholds.tpot_p99") && err.contains("not streamed"),
        "{err}"
    );
    assert_eq!(seen, 0, "no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_where_every_request_fails_exits_5_and_says_why() {
    let _serial = LOAD.lock().await;
    // Nothing listens on a port that was just free.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let dir = scratch("cli-failed");
    let plan = dir.join("plan.toml");
    let text = GOOD.replace("SIM_URL", &format!("http://{addr}"))
        + &format!("[output]\ndir = \"{}\"\n", dir.display());
    std::fs::write(&plan, text).expect("write plan");
    let mut cmd = controller();
    cmd.arg("run").arg(&plan).args(["--quiet", "--debug"]);
    let out = output(cmd).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(stdout.contains("all 4 requests failed"), "{stdout}");
    assert!(
        stdout.contains("Connection refused") && stderr.contains("Connection refused"),
        "the OS error on the console and in the --debug log: {stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_users_fails_naming_the_key() {
    let (code, err, seen) = run_plan(&GOOD.replace("users = 2", "users = -2")).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("load.users"), "{err}");
    assert_eq!(seen, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_dataset_file_fails_naming_the_file() {
    let plan =
        format!("{GOOD}\n[dataset]\nkind = \"lines\"\npath = \"/nonexistent/prompts.txt\"\n");
    let (code, err, seen) = run_plan(&plan).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/prompts.txt") && err.contains("dataset.path"),
        "{err}"
    );
    assert_eq!(seen, 0);
}

#[test]
fn missing_plan_file_is_named() {
    let out = controller()
        .args(["run", "/nonexistent/plan.toml"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/plan.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_plan_runs_and_exits_zero() {
    let dir = scratch("cli-good");
    let plan = GOOD.replace(
        "[cluster]",
        &format!("[output]\ndir = \"{}\"\n[cluster]", dir.display()),
    );
    let (code, err, seen) = run_plan(&plan).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(seen, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_free_flags_run_against_the_simulator() {
    let _serial = LOAD.lock().await;
    let dir = scratch("cli-flags");
    let mut cmd = controller();
    cmd.args([
        "run",
        "--simulator",
        "--parallel",
        "2",
        "--number",
        "6",
        "--max-tokens",
        "4",
        "--quiet",
        "--output",
    ])
    .arg(&dir);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Succeeded requests") && stdout.contains("ttft"),
        "{stdout}"
    );
    let run_dir = std::fs::read_dir(&dir)
        .expect("results")
        .flatten()
        .next()
        .expect("one run")
        .path();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(json["requests_ok"], 6);
    assert_eq!(json["output_tokens"], 24);
}

#[test]
fn print_plan_shows_flags_as_a_plan_and_runs_nothing() {
    let out = controller()
        .args([
            "run",
            "--url",
            "http://127.0.0.1:9",
            "--rate",
            "inf",
            "--requests",
            "5",
            "--print-plan",
        ])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("url = \"http://127.0.0.1:9\"") && text.contains("rate = \"inf\""),
        "{text}"
    );
}

#[test]
fn every_example_plan_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            barrage_common::plan::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "examples found: {seen}");
}
