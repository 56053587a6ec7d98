//! The Ollama API: `/api/generate` and `/api/chat`, streaming (the default)
//! and not, with the count and duration fields of the final object.

use serde_json::{Value, json};

use crate::support::*;

fn ns_as_ms(v: &Value) -> f64 {
    v.as_u64().expect("a duration in ns") as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_ndjson_by_default() {
    timed(|| async {
        let cfg = SimConfig { ttft: ms(20), itl: ms(5), ..fast() };
        let (server, base, client) = start(cfg).await;
        let body = json!({"model": "llama3", "prompt": "why is the sky blue", "options": {"num_predict": 8}});
        let reply = post(&client, &format!("{base}/api/generate"), &body, Framing::Ndjson).await;
        assert_eq!(reply.headers["content-type"], "application/x-ndjson");
        assert!(reply.rest.is_empty());
        let objects = reply.json();
        assert_eq!(objects.len(), 9, "8 tokens and the final object");
        let first = &objects[0].1;
        assert_eq!((&first["model"], &first["response"], &first["done"]), (&json!("llama3"), &json!("tok "), &json!(false)));
        assert!(first["created_at"].as_str().is_some_and(|t| t.contains('T')));
        let last = reply.last_json();
        assert_eq!((&last["done"], &last["done_reason"], &last["response"]), (&json!(true), &json!("length"), &json!("")));
        assert_eq!((&last["prompt_eval_count"], &last["eval_count"]), (&json!(5), &json!(8)));
        let s = server.stats();
        assert_eq!((s.completed, s.input_tokens, s.output_tokens), (1, 5, 8));
        server.shutdown().await;
        let (ttft, gap) = (as_ms(reply.ttft()), median(reply.gaps_ms()));
        let (total, load) = (ns_as_ms(&last["total_duration"]), ns_as_ms(&last["load_duration"]));
        let (prompt_eval, eval) = (ns_as_ms(&last["prompt_eval_duration"]), ns_as_ms(&last["eval_duration"]));
        println!("ttft {ttft:.2} gap {gap:.2}; total {total:.2} load {load:.2} prompt_eval {prompt_eval:.2} eval {eval:.2} ms");
        ensure!((20.0..23.0).contains(&ttft), "ttft {ttft}");
        ensure!((gap - 5.0).abs() < 1.5, "gap {gap}");
        ensure!(load < 1.0, "load {load}");
        ensure!((20.0..22.0).contains(&prompt_eval), "prompt_eval {prompt_eval}");
        ensure!((34.0..37.0).contains(&eval), "eval {eval}");
        ensure!((55.0..58.0).contains(&total) && total >= load + prompt_eval + eval - 0.1, "total {total}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_whole() {
    bounded(async {
        let (server, base, client) = start(fast()).await;
        let body = json!({"prompt": "hi there", "system": "be brief", "stream": false, "options": {"num_predict": 3}});
        let reply = post(&client, &format!("{base}/api/generate"), &body, Framing::Whole).await;
        assert_eq!(reply.headers["content-type"], "application/json");
        let v = reply.last_json();
        assert_eq!((&v["response"], &v["done"], &v["model"]), (&json!("tok tok tok "), &json!(true), &json!("llm-sim")));
        assert_eq!((&v["prompt_eval_count"], &v["eval_count"]), (&json!(4), &json!(3)));
        for key in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
            assert!(v[key].is_u64(), "{key} in {v}");
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_messages_with_thinking() {
    bounded(async {
        let cfg = SimConfig { reasoning_tokens: 2, role_chunk: true, ..fast() };
        let (server, base, client) = start(cfg).await;
        let body = json!({"model": "qwen3", "messages": [{"role": "user", "content": "one two three"}],
            "options": {"num_predict": 3}});
        let reply = post(&client, &format!("{base}/api/chat"), &body, Framing::Ndjson).await;
        let messages: Vec<Value> = reply.json().into_iter().map(|(_, v)| v["message"].clone()).collect();
        assert_eq!(messages.len(), 7, "empty first object, 2 thinking, 3 content, final");
        assert_eq!(messages[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(messages[1], json!({"role": "assistant", "content": "", "thinking": "tok "}));
        assert_eq!(messages[3], json!({"role": "assistant", "content": "tok "}));
        assert_eq!(reply.tokens(), 5);
        let last = reply.last_json();
        assert_eq!((&last["done"], &last["prompt_eval_count"], &last["eval_count"]), (&json!(true), &json!(3), &json!(5)));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_whole_uses_the_length_model_without_num_predict() {
    bounded(async {
        let cfg = SimConfig { output_tokens: barrage_common::simulator::OutputLength::Fixed(4), ..fast() };
        let (server, base, client) = start(cfg).await;
        let body = json!({"messages": [{"role": "user", "content": "hello"}], "stream": false, "options": {"num_predict": -1}});
        let v = post(&client, &format!("{base}/api/chat"), &body, Framing::Whole).await.last_json();
        assert_eq!(v["message"], json!({"role": "assistant", "content": "tok tok tok tok "}));
        assert_eq!((&v["done_reason"], &v["eval_count"], &v["prompt_eval_count"]), (&json!("stop"), &json!(4), &json!(1)));
        let bad = post(&client, &format!("{base}/api/chat"), &json!({"messages": 3}), Framing::Whole).await;
        assert_eq!(bad.status, 400);
        assert!(bad.last_json()["error"].is_string());
        server.shutdown().await;
    })
    .await;
}
