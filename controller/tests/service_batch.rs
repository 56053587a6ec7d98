//! `POST /api/batch` over real HTTP on loopback: the batch-test framework's
//! request becomes a zipped sweep that runs to its end with its steps, and
//! a bad request is a 400 `invalid_batch` naming the field, with nothing
//! queued.

use std::time::Duration;

use barrage_common::simulator::SimConfig;
use serde_json::{Value, json};

use crate::support::service::{Api, TestService};
use crate::support::{LOAD, scratch, sim_with};

const LIMIT: Duration = Duration::from_secs(60);

fn fast_sim() -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(10),
        itl: Duration::from_millis(2),
        ..SimConfig::default()
    }
}

/// POSTs a batch request: (status, body).
async fn post_batch(api: &Api, body: &Value) -> (u16, Value) {
    let resp = api
        .req(reqwest::Method::POST, "/api/batch")
        .json(body)
        .send()
        .await
        .expect("post /api/batch");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// The sweep's steps as (users, requests, input, output, requests_ok).
async fn steps_of(api: &Api, id: &str) -> Vec<[u64; 5]> {
    let (status, sweep) = api.json(&format!("/api/runs/{id}/files/sweep.json")).await;
    assert_eq!(status, 200, "sweep.json: {sweep}");
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    sweep["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            [
                n(&s["users"]),
                n(&s["requests"]),
                n(&s["input_tokens"]),
                n(&s["output_tokens"]),
                n(&s["requests_ok"]),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_as_a_zipped_sweep_against_llm_sim() {
    let _serial = LOAD.lock().await;
    let sim = sim_with(fast_sim()).await;
    let svc = TestService::start(&scratch("svc-batch"), None).await;
    let api = &svc.api;
    let (status, queued) = post_batch(
        api,
        &json!({
            "name": "batch-1", "description": "nightly",
            "num_prompts_list": [3, 6], "max_concurrency_list": [1, 2],
            "input_output_pairs": [[8, 4]],
            "url": format!("http://{}", sim.addr()),
        }),
    )
    .await;
    assert_eq!(status, 201, "{queued}");
    assert_eq!(queued["name"], "batch-1");
    assert_eq!(queued["description"], "nightly");
    assert_eq!(queued["sweep"], true);
    let id = queued["id"].as_str().expect("id").to_owned();

    let done = api.wait_end(&id, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["headline"]["requests_ok"].as_u64(), Some(9), "{done}");
    assert!(sim.stats().completed >= 9, "{:?}", sim.stats());
    assert_eq!(
        steps_of(api, &id).await,
        vec![[1, 3, 8, 4, 3], [2, 6, 8, 4, 6]],
        "step i runs num_prompts_list[i] at max_concurrency_list[i]"
    );
    let plan = api.run(&id).await;
    let text = plan["plan_toml"].as_str().expect("plan_toml");
    assert!(text.contains("pairing = \"zip\""), "{text}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_without_plan_or_url_runs_on_the_built_in_simulator() {
    let _serial = LOAD.lock().await;
    let svc = TestService::start(&scratch("svc-batch-sim"), None).await;
    let api = &svc.api;
    let (status, queued) = post_batch(
        api,
        &json!({
            "num_prompts_list": [2], "max_concurrency_list": [2],
            "input_output_pairs": [[8, 2], [16, 2]],
        }),
    )
    .await;
    assert_eq!(status, 201, "{queued}");
    let id = queued["id"].as_str().expect("id").to_owned();
    let done = api.wait_end(&id, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        steps_of(api, &id).await,
        vec![[2, 2, 8, 2, 2], [2, 2, 16, 2, 2]],
        "the pairs are crossed with the zipped lists"
    );
    let text = api.run(&id).await["plan_toml"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(text.contains("[simulator]"), "{text}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_naming_the_field_and_nothing_is_queued() {
    let svc = TestService::start(&scratch("svc-batch-bad"), None).await;
    let api = &svc.api;
    let io = json!([[8, 4]]);
    let cases = [
        (
            json!({"num_prompts_list": [1, 2, 3], "max_concurrency_list": [1, 2],
                   "input_output_pairs": io}),
            vec!["num_prompts_list", "max_concurrency_list"],
        ),
        (
            json!({"num_prompts_list": [], "max_concurrency_list": [],
                   "input_output_pairs": io}),
            vec!["num_prompts_list: must not be empty"],
        ),
        (
            json!({"num_prompts_list": [1], "max_concurrency_list": [0],
                   "input_output_pairs": io}),
            vec!["max_concurrency_list[0]"],
        ),
        (
            json!({"num_prompts_list": [1], "max_concurrency_list": [1],
                   "input_output_pairs": io, "plan": "[target\nurl = 1"}),
            vec!["plan: "],
        ),
        (
            json!({"num_prompts_list": [1], "max_concurrency_list": [1],
                   "input_output_pairs": io, "url": "ftp://127.0.0.1:9"}),
            vec!["target.url"],
        ),
        (
            json!({"num_prompts": [1], "max_concurrency_list": [1]}),
            vec!["num_prompts"],
        ),
    ];
    for (body, words) in cases {
        let (status, v) = post_batch(api, &body).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert_eq!(v["error"]["code"], "invalid_batch", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        for w in words {
            assert!(message.contains(w), "{body}: {message:?} lacks {w:?}");
        }
    }
    let (status, list) = api.json("/api/runs").await;
    assert_eq!(status, 200);
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(0), "{list}");
    svc.stop().await;
}
