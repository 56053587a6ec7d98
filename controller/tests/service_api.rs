//! `controller serve` over real HTTP on loopback: runs submitted against a
//! real llm-sim, the queue, cancel, restarts of the real binary, the event
//! stream, bad input, tokens and the OpenAPI document.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use barrage_common::simulator::SimConfig;
use barrage_controller::service::ServeConfig;
use reqwest::Method;
use serde_json::Value;

use crate::support::service::{Api, ServiceProcess, TestService, parse_sse, sim_plan};
use crate::support::{LOAD, scratch, sim_with};

const LIMIT: Duration = Duration::from_secs(60);

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("a JSON error body");
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_owned(),
        v["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_plan_runs_against_llm_sim_and_keeps_its_results() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let svc = TestService::start(&scratch("svc-run"), None).await;
    let api = &svc.api;
    let queued = api.submit(&sim_plan("first", sim.addr(), 4, "2s")).await;
    assert_eq!(queued["status"], "queued");
    let id = id_of(&queued);
    let done = api.wait_end(&id, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    let ok = done["headline"]["requests_ok"].as_u64().expect("headline");
    assert!(
        ok > 0 && ok <= sim.stats().completed,
        "{ok} vs the simulator's {:?}",
        sim.stats()
    );

    // Its files: listed, downloadable, and the same figures as the headline.
    let (_, files) = api.json(&format!("/api/runs/{id}/files")).await;
    let names: Vec<&str> = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in [
        "report.html",
        "results.sqlite",
        "requests.csv",
        "histograms.hlog",
        "summary.json",
    ] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    let (status, summary) = api
        .json(&format!("/api/runs/{id}/files/summary.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(summary["requests_ok"].as_u64(), Some(ok));
    let sqlite = api
        .req(Method::GET, &format!("/api/runs/{id}/files/results.sqlite"))
        .send()
        .await
        .expect("get");
    assert_eq!(sqlite.headers()["content-type"], "application/vnd.sqlite3");
    assert!(
        sqlite
            .bytes()
            .await
            .expect("body")
            .starts_with(b"SQLite format 3")
    );

    // A run's plan comes back; JSON plans are accepted like TOML.
    assert!(
        api.run(&id).await["plan_toml"]
            .as_str()
            .expect("plan")
            .contains("first")
    );
    let toml_plan: toml::Value =
        toml::from_str(&sim_plan("as-json", sim.addr(), 1, "1s")).expect("toml");
    let resp = api
        .req(Method::POST, "/api/runs")
        .json(&toml_plan)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    let json_id = id_of(&resp.json::<Value>().await.expect("json"));
    assert_eq!(api.wait_end(&json_id, LIMIT).await["status"], "completed");
    svc.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_submitted_at_once_queue_and_run_one_at_a_time_per_pool() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let cfg = ServeConfig {
        data: scratch("svc-queue"),
        pools: [("wide".to_owned(), 2)].into(),
        ..ServeConfig::default()
    };
    let svc = TestService::start_with(cfg).await;
    let api = svc.api.clone();
    let plan = sim_plan("q", sim.addr(), 2, "1s");
    // Two clients at once.
    let (a, b) = tokio::join!(api.submit(&plan), api.submit(&plan));
    let (a, b) = (id_of(&a), id_of(&b));
    assert_ne!(a, b);
    let (a, b) = (api.wait_end(&a, LIMIT).await, api.wait_end(&b, LIMIT).await);
    let (first, second) = if a["started_at"].as_str() < b["started_at"].as_str() {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        second["started_at"].as_str() >= first["finished_at"].as_str(),
        "the default pool runs one at a time: {first} / {second}"
    );
    // A pool of 2 runs both at once.
    let wide = |p: &str| {
        let api = api.clone();
        let p = p.to_owned();
        async move {
            let r = api
                .req(Method::POST, "/api/runs?pool=wide")
                .body(p)
                .send()
                .await
                .expect("post");
            id_of(&r.json::<Value>().await.expect("json"))
        }
    };
    let long = sim_plan("wide", sim.addr(), 2, "3s");
    let (c, d) = tokio::join!(wide(&long), wide(&long));
    api.wait(&c, LIMIT, |s| s == "running").await;
    api.wait(&d, LIMIT, |s| s == "running").await;
    assert_eq!(api.wait_end(&c, LIMIT).await["pool"], "wide");
    api.wait_end(&d, LIMIT).await;
    let (_, list) = api.json("/api/runs?status=completed").await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(4));

    // Finished runs compare by id: the figures as JSON, and the page.
    let ids = format!("{},{}", id_of(&first), id_of(&second));
    let (status, cmp) = api.json(&format!("/api/compare?ids={ids}")).await;
    assert_eq!(status, 200, "{cmp}");
    assert_eq!(cmp["runs"][1]["letter"], "B");
    let rows = cmp["groups"][0]["rows"].as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|r| r["cells"][0]["value"].as_f64().is_some_and(|v| v > 0.0)),
        "{cmp}"
    );
    let page = api
        .req(Method::GET, &format!("/compare?ids={ids}"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("<title>barrage: compare</title>")
            && html.contains("BarrageCharts")
            && html.contains("<a href=\"/\">"),
        "the compare page with its charts"
    );
    svc.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_agents_within_two_seconds_and_keeps_what_was_measured() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let svc = TestService::start(&scratch("svc-cancel"), None).await;
    let api = &svc.api;
    let id = id_of(&api.submit(&sim_plan("long", sim.addr(), 8, "60s")).await);
    // A queued run behind it: cancelled at once, never started.
    let queued = id_of(&api.submit(&sim_plan("behind", sim.addr(), 1, "1s")).await);
    api.wait(&id, LIMIT, |s| s == "running").await;
    let start = Instant::now();
    while sim.stats().completed < 20 {
        assert!(start.elapsed() < LIMIT, "no traffic: {:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = api
        .req(Method::POST, &format!("/api/runs/{queued}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 202);
    assert_eq!(api.run(&queued).await["status"], "cancelled");

    let asked = Instant::now();
    let r = api
        .req(Method::POST, &format!("/api/runs/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 202);
    while sim.stats().in_flight > 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "agents still sending after 2 s: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_after = asked.elapsed();
    let (status, code, _) = error_of(
        api.req(Method::POST, &format!("/api/runs/{id}/cancel"))
            .send()
            .await
            .expect("again"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (409, "conflict"),
        "a second cancel"
    );
    let done = api.wait_end(&id, LIMIT).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let (status, summary) = api
        .json(&format!("/api/runs/{id}/files/summary.json"))
        .await;
    assert_eq!(status, 200, "what it measured is kept");
    assert!(summary["requests_ok"].as_u64() > Some(0));
    println!("agents stopped {stopped_after:?} after the cancel");
    assert_eq!(api.run(&queued).await["started_at"], Value::Null);
    svc.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_interrupts_the_running_run_keeps_its_data_and_starts_the_queued_one() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let data = scratch("svc-restart");
    let first = ServiceProcess::start(&data, Some("restart-token"));
    let api = first.api.clone();
    let running = id_of(&api.submit(&sim_plan("cut", sim.addr(), 4, "60s")).await);
    let queued = id_of(&api.submit(&sim_plan("waits", sim.addr(), 2, "1s")).await);
    api.wait(&running, LIMIT, |s| s == "running").await;
    // Let it store a few intervals, then kill the service outright.
    let start = Instant::now();
    while api.run(&running).await["progress"]["t_s"].as_f64() < Some(1.5) {
        assert!(start.elapsed() < LIMIT);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill();

    let second = ServiceProcess::start(&data, Some("restart-token"));
    let api: Api = second.api.clone();
    let cut = api.run(&running).await;
    assert_eq!(cut["status"], "interrupted", "{cut}");
    let dir = std::path::PathBuf::from(cut["dir"].as_str().expect("dir"));
    let conn = rusqlite::Connection::open(dir.join("results.sqlite")).expect("store");
    let intervals: i64 = conn
        .query_row("SELECT count(*) FROM intervals", [], |r| r.get(0))
        .expect("count");
    assert!(
        intervals >= 2,
        "the partial results are kept: {intervals} intervals"
    );
    assert_eq!(api.wait_end(&queued, LIMIT).await["status"], "completed");

    // A clean stop (SIGTERM) interrupts a running run with its summary written.
    let third_run = id_of(&api.submit(&sim_plan("term", sim.addr(), 2, "60s")).await);
    api.wait(&third_run, LIMIT, |s| s == "running").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let code = tokio::task::spawn_blocking(move || second.terminate(Duration::from_secs(30)))
        .await
        .expect("join");
    assert_eq!(code, Some(0));
    let third = ServiceProcess::start(&data, Some("restart-token"));
    let run = third.api.run(&third_run).await;
    assert_eq!(run["status"], "interrupted", "{run}");
    let (status, _) = third
        .api
        .json(&format!("/api/runs/{third_run}/files/summary.json"))
        .await;
    assert_eq!(status, 200);
    third.kill();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_or_reloaded_watcher_gets_the_history_then_live_events_once() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let svc = TestService::start(&scratch("svc-sse"), None).await;
    let api = svc.api.clone();
    let id = id_of(&api.submit(&sim_plan("watched", sim.addr(), 4, "4s")).await);
    let early = tokio::spawn({
        let api = api.clone();
        let id = id.clone();
        async move { api.events(&id, LIMIT).await }
    });
    // A watcher that joins half-way (a reload).
    api.wait(&id, LIMIT, |s| s == "running").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = api.events(&id, LIMIT).await;
    let early = early.await.expect("join");
    let after = api.events(&id, LIMIT).await;
    for (who, events) in [
        ("early", &early),
        ("late", &late),
        ("after the end", &after),
    ] {
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"run"), "{who}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"end"), "{who}: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k == "step").count(),
            1,
            "{who}: {kinds:?}"
        );
        let idx: Vec<u64> = events
            .iter()
            .filter(|(k, _)| k == "interval")
            .map(|(_, d)| d["row"]["index"].as_u64().expect("index"))
            .collect();
        let expect: Vec<u64> = (0..idx.len() as u64).collect();
        assert_eq!(idx, expect, "{who}: every interval once, in order");
        assert!(
            idx.len() >= 6,
            "{who}: {} intervals of 0.5 s in a 4 s run",
            idx.len()
        );
        assert_eq!(
            events.last().map(|(_, d)| d["status"].clone()),
            Some("completed".into())
        );
    }
    svc.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_naming_the_problem_and_the_queue_is_untouched() {
    let cfg = ServeConfig {
        data: scratch("svc-bad"),
        max_upload: 64 << 10,
        ..ServeConfig::default()
    };
    let svc = TestService::start_with(cfg).await;
    let api = &svc.api;
    let post = |body: String| api.req(Method::POST, "/api/runs").body(body).send();
    let (s, code, msg) = error_of(
        post("name = \"x\"\n[load]\nusers = \"many\"\n".into())
            .await
            .expect("post"),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "invalid_plan"));
    assert!(msg.contains("load.users"), "names the key: {msg}");
    let (s, code, _) = error_of(post("this is = not toml [".into()).await.expect("post")).await;
    assert_eq!((s, code.as_str()), (400, "invalid_plan"));
    let (s, code, _) = error_of(
        post(format!("# {}\n", "x".repeat(100 << 10)))
            .await
            .expect("post"),
    )
    .await;
    assert_eq!((s, code.as_str()), (413, "payload_too_large"));
    let r = api
        .req(Method::POST, "/api/runs")
        .header("content-type", "application/json")
        .body("[1, 2]")
        .send()
        .await
        .expect("post");
    assert_eq!(error_of(r).await.1, "invalid_plan");
    for (m, path) in [
        (Method::GET, "/api/runs/r-nope"),
        (Method::POST, "/api/runs/r-nope/cancel"),
        (Method::DELETE, "/api/runs/r-nope"),
        (Method::GET, "/api/runs/r-nope/events"),
        (Method::GET, "/api/runs/r-nope/files"),
    ] {
        let (s, code, msg) = error_of(api.req(m, path).send().await.expect("send")).await;
        assert_eq!((s, code.as_str()), (404, "not_found"), "{path}");
        assert!(msg.contains("r-nope"), "{msg}");
    }
    let (s, code, _) = error_of(
        api.req(Method::GET, "/api/runs?status=sleeping")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "bad_request"));
    let (s, _, _) = error_of(
        api.req(Method::GET, "/api/compare?ids=r-a")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(s, 400);
    // A queued run cannot be deleted; nothing was queued by the bad input.
    let plan = "name = \"stays\"\n[simulator]\n[load]\nusers = 1\nduration = \"30s\"\n";
    let id = id_of(&api.submit(plan).await);
    let (s, code, _) = error_of(
        api.req(Method::DELETE, &format!("/api/runs/{id}"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!((s, code.as_str()), (409, "conflict"));
    let (_, list) = api.json("/api/runs").await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(1), "{list}");
    api.req(Method::POST, &format!("/api/runs/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    api.wait_end(&id, LIMIT).await;
    let r = api
        .req(Method::DELETE, &format!("/api/runs/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert!(
        !svc.data.join("runs").join(&id).exists(),
        "its folder is gone"
    );
    assert_eq!(api.json(&format!("/api/runs/{id}")).await.0, 404);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_reads_writes_pages_and_metrics() {
    let svc = TestService::start(&scratch("svc-auth"), Some("s3cret-token")).await;
    let anon = Api::new(svc.api.base.clone(), None);
    for (m, path) in [
        (Method::GET, "/api/runs"),
        (Method::POST, "/api/runs"),
        (Method::GET, "/metrics"),
        (Method::GET, "/api/openapi.json"),
    ] {
        let (s, code, _) = error_of(anon.req(m.clone(), path).send().await.expect("send")).await;
        assert_eq!(
            (s, code.as_str()),
            (401, "unauthorized"),
            "{m} {path} without a token"
        );
        let wrong = anon
            .req(m.clone(), path)
            .bearer_auth("guess")
            .send()
            .await
            .expect("send");
        assert_eq!(wrong.status(), 401, "{m} {path} with a wrong token");
    }
    // Pages send the browser to the login form; health needs no token.
    let page = anon
        .req(Method::GET, "/runs/r-1")
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login?next=/runs/r-1");
    assert_eq!(
        anon.req(Method::GET, "/healthz")
            .send()
            .await
            .expect("health")
            .status(),
        200
    );

    // The login form sets the cookie that then opens the API.
    let bad = anon
        .http
        .post(anon.url("/login"))
        .form(&[("token", "guess"), ("next", "/")])
        .send()
        .await
        .expect("login");
    assert!(bad.headers().get("set-cookie").is_none());
    let good = anon
        .http
        .post(anon.url("/login"))
        .form(&[("token", "s3cret-token"), ("next", "//evil.example/")])
        .send()
        .await
        .expect("login");
    assert_eq!(good.headers()["location"], "/", "never an open redirect");
    let cookie = good.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let with_cookie = anon
        .http
        .get(anon.url("/api/runs"))
        .header("cookie", pair)
        .send()
        .await
        .expect("get");
    assert_eq!(with_cookie.status(), 200);
    let bearer = svc
        .api
        .req(Method::GET, "/api/runs")
        .bearer_auth("s3cret-token")
        .send()
        .await
        .expect("get");
    assert_eq!(bearer.status(), 200);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_ends_in_error_with_the_reason() {
    let svc = TestService::start(&scratch("svc-error"), None).await;
    let api = &svc.api;
    // Nothing listens on port 1 of loopback: the agent cannot be reached.
    let plan = "name = \"no-agent\"\n[simulator]\n[cluster]\nagents = [\"127.0.0.1:1\"]\nagent_wait = \"1s\"\n[load]\nusers = 1\nduration = \"2s\"\n";
    let id = id_of(&api.submit(plan).await);
    let done = api.wait_end(&id, LIMIT).await;
    assert_eq!(done["status"], "error", "{done}");
    let why = done["error"].as_str().unwrap_or("");
    assert!(
        why.contains("127.0.0.1:1"),
        "the reason names the agent: {why}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_non_loopback_address_is_refused() {
    let data = scratch("svc-open");
    let mut cmd = crate::support::controller();
    cmd.args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(&data);
    let out = crate::support::output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("--token-env"),
        "{err}"
    );
    let mut cmd = crate::support::controller();
    cmd.args(["serve", "--data"])
        .arg(&data)
        .args(["--token-env", "BARRAGE_TEST_UNSET_TOKEN_VAR"]);
    let out = crate::support::output(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BARRAGE_TEST_UNSET_TOKEN_VAR"));
}

/// The API table of docs/service.md: (method, path) pairs.
fn documented_routes() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/service.md"))
        .expect("docs/service.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter_map(|l| {
            let (m, p) = l.split_once(' ')?;
            let path = p.split(['?', '[']).next()?.replace("{*", "{");
            ["GET", "POST", "DELETE"]
                .contains(&m)
                .then(|| (m.to_lowercase(), path))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_and_the_docs() {
    let svc = TestService::start(&scratch("svc-openapi"), None).await;
    let api = &svc.api;
    let (status, doc) = api.json("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut in_doc = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            in_doc.insert((method.clone(), path.clone()));
        }
    }
    let mut listed = documented_routes();
    listed.remove(&("get".into(), "/api/openapi.json".into()));
    assert_eq!(
        in_doc, listed,
        "OpenAPI document vs the API table of docs/service.md"
    );
    // Every documented operation is routed: never 404 for the route itself
    // (an unknown run answers with the JSON not_found) nor 405.
    for (method, path) in &in_doc {
        let concrete = path
            .replace("{id}", "r-none")
            .replace("{path}", "summary.json");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let resp = api.req(m, &concrete).send().await.expect("send");
        let s = resp.status().as_u16();
        assert_ne!(s, 405, "{method} {path}");
        if s == 404 {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(
                body["error"]["code"], "not_found",
                "{method} {path} is not routed"
            );
        }
    }
    svc.stop().await;
}

#[test]
fn event_stream_text_parses_into_events() {
    let events =
        parse_sse("event: run\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: end\ndata: {}\n\n");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, "run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_streams_each_step_and_ends_with_its_headline() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let svc = TestService::start(&scratch("svc-sweep"), None).await;
    let api = &svc.api;
    let plan = format!(
        "{}[sweep]\nusers = [1, 2]\nrequests = [4, 8]\n",
        sim_plan("swept", sim.addr(), 1, "30s")
    );
    let id = id_of(&api.submit(&plan).await);
    let events = api.events(&id, LIMIT).await;
    let steps: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "step")
        .map(|(_, d)| d["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, vec![1, 2], "one step event per sweep step");
    let finished = events.iter().filter(|(k, _)| k == "step_finished").count();
    assert_eq!(finished, 2);
    for step in [1, 2] {
        assert!(
            events
                .iter()
                .any(|(k, d)| k == "interval" && d["step"] == step),
            "intervals of step {step}"
        );
    }
    let (kind, end) = events.last().expect("events");
    assert_eq!(kind, "end");
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["sweep"], true);
    assert_eq!(end["headline"]["steps"], 2);
    assert_eq!(
        end["headline"]["requests_ok"].as_u64(),
        Some(12),
        "4 + 8 requests"
    );
    let (_, files) = api.json(&format!("/api/runs/{id}/files")).await;
    let files = files["files"].to_string();
    assert!(
        files.contains("sweep.json") && files.contains("report.html"),
        "{files}"
    );
    svc.stop().await;
    sim.shutdown().await;
}
