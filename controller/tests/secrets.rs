//! Credentials in the target URL (userinfo, `?api_key=`) and in headers
//! reach the server but never the console, the logs or the results folder.

use std::path::Path;
use std::process::{Command, Output};

use barrage_common::simulator::SimConfig;
use barrage_llm_sim::SimServer;

use crate::support::{self, LOAD, output, scratch, sim_with};

const SECRETS: [&str; 4] = [
    "userinfo-pass-7f3a",
    "query-key-91c2",
    "query-token-55d0",
    "header-value-2b8e",
];

fn controller(args: &[&str]) -> Command {
    let mut c = support::controller();
    c.args(args);
    c
}

/// A URL carrying every kind of credential, aimed at `sim`.
fn secret_url(sim: &SimServer) -> String {
    format!(
        "http://alice:{}@{}/v1/chat/completions?api_key={}&model_hint=ok&access_token={}",
        SECRETS[0],
        sim.addr(),
        SECRETS[1],
        SECRETS[2]
    )
}

/// Every file below `dir`, as text.
fn files_below(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    out
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
}

fn console(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_and_headers_stay_out_of_console_logs_and_results() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let dir = scratch("secrets");
    let plan = dir.join("plan.toml");
    let results = dir.join("results");
    let text = format!(
        "name = \"secrets\"\n[target]\nurl = \"{}\"\n[target.headers]\nX-Api-Key = \"{}\"\n\
         [load]\nusers = 2\nrequests = 4\n[cluster]\nembedded_agents = 1\n\
         [output]\ndir = \"{}\"\n",
        secret_url(&sim),
        SECRETS[3],
        results.display()
    );
    std::fs::write(&plan, text).expect("write plan");
    let mut cmd = controller(&["run", "--debug"]);
    cmd.arg(&plan)
        .env("RUST_LOG", "info,barrage_agent::client=debug");
    let out = output(cmd).await;
    let shown = console(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    // The real URL was used: every request reached the server.
    assert_eq!(sim.stats().completed, 4);
    assert!(
        shown.contains("step prepared") && shown.contains("barrage_agent::client"),
        "the logs that show the URL ran: {shown}"
    );
    assert_no_secret("the console and logs", &shown);
    let files = files_below(&results);
    assert!(files.len() >= 2, "{files:?}");
    for (path, text) in &files {
        assert_no_secret(path, text);
    }
    let summary = files
        .iter()
        .find(|(p, _)| p.ends_with("summary.json"))
        .expect("summary.json");
    assert!(
        summary.1.contains("api_key=<redacted>") && summary.1.contains("model_hint=ok"),
        "the target is shown, redacted: {}",
        summary.1
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_plan_hides_header_values_and_url_credentials() {
    let sim = sim_with(SimConfig::default()).await;
    let url = secret_url(&sim);
    let header = format!("Authorization=Bearer {}", SECRETS[3]);
    let out = output(controller(&[
        "run",
        "--url",
        &url,
        "--header",
        &header,
        "--requests",
        "1",
        "--print-plan",
    ]))
    .await;
    let shown = console(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Authorization") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert_no_secret("--print-plan", &shown);
    assert_eq!(sim.stats().requests, 0, "printing runs nothing");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_results_hide_url_credentials() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let results = scratch("secrets-sweep");
    let text = format!(
        "name = \"sweep-secrets\"\n[target]\nurl = \"{}\"\n[load]\nusers = 1\nrequests = 2\n\
         [sweep]\nusers = [1, 2]\nrequests = [2, 4]\n[cluster]\nembedded_agents = 1\n\
         [output]\ndir = \"{}\"\n",
        secret_url(&sim),
        results.display()
    );
    let plan = results.join("plan-in.toml");
    std::fs::write(&plan, text).expect("write plan");
    let mut cmd = controller(&["run", "--quiet"]);
    cmd.arg(&plan);
    let out = output(cmd).await;
    let shown = console(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(sim.stats().completed, 6);
    assert_no_secret("the sweep console", &shown);
    std::fs::remove_file(&plan).expect("the input plan is ours, not a result");
    let files = files_below(&results);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("sweep.json")),
        "{files:?}"
    );
    for (path, text) in &files {
        assert_no_secret(path, text);
    }
    sim.shutdown().await;
}
