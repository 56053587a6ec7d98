//! The run's one stream of events, seen by a consumer next to the default
//! outputs, through real runs against the built-in simulator.

use std::sync::{Arc, Mutex};

use barrage_controller::events::{Consumer, OutputError, RunEvent};
use barrage_controller::run::{RunError, RunOptions, Verdict};
use barrage_controller::sweep::{PlanOutcome, execute_plan_with};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch};

/// What a recorder saw, in order: a tag per event and the figures to check.
#[derive(Default)]
struct Seen {
    tags: Vec<String>,
    /// (step, interval index, requests ok, warmup) per Interval event.
    intervals: Vec<(u32, u64, u64, bool)>,
    gpu: Vec<f64>,
    finished_ok: Vec<u64>,
}

struct Recorder(Arc<Mutex<Seen>>);

impl Consumer for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| OutputError::Other("poisoned".into()))?;
        let tag = match ev {
            RunEvent::PlanStarted(p) => format!("plan-start sweep={}", p.sweep),
            RunEvent::StepStarted(st) => format!("step-start {}", st.step),
            RunEvent::Interval(iv) => {
                s.intervals.push((
                    iv.step,
                    iv.row.index,
                    iv.counters.requests_ok,
                    iv.row.warmup,
                ));
                "interval".into()
            }
            RunEvent::Requests(_) => "requests".into(),
            RunEvent::Message(_) => "message".into(),
            RunEvent::Monitor(m) => {
                s.gpu.extend(m.sample.gpu_util_pct);
                "monitor".into()
            }
            RunEvent::StepFinished(end) => {
                s.finished_ok.push(end.summary.requests_ok);
                format!("step-end {}", end.step)
            }
            RunEvent::PlanFinished(end) => format!("plan-end sweep={}", end.sweep.is_some()),
        };
        s.tags.push(tag);
        Ok(())
    }
}

/// An output that fails at its first event.
struct Broken;

impl Consumer for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn event(&mut self, _: &RunEvent) -> Result<(), OutputError> {
        Err(OutputError::Other("cannot write".into()))
    }
}

fn plan(dir: &std::path::Path, sweep: &str) -> String {
    format!(
        r#"
        name = "events"
        [request]
        max_tokens = 8
        [load]
        users = 4
        duration = "2s"
        [metrics]
        interval = "500ms"
        [cluster]
        embedded_agents = 2
        [output]
        dir = "{}"
        [simulator]
        ttft = "10ms"
        itl = "5ms"
        {sweep}
        "#,
        dir.display()
    )
}

async fn run(text: &str, extra: Vec<Box<dyn Consumer>>) -> Result<PlanOutcome, RunError> {
    let opts = RunOptions::default();
    let mut outputs = barrage_controller::outputs::defaults(&opts);
    outputs.extend(extra);
    tokio::time::timeout(
        TEST_LIMIT,
        execute_plan_with(plan_from(text), opts, CancellationToken::new(), outputs),
    )
    .await
    .expect("bounded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_streams_its_intervals_in_order_and_they_add_up_to_the_summary() {
    let _serial = LOAD.lock().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dir = scratch("events-single");
    let out = run(
        &plan(&dir, ""),
        vec![Box::new(Recorder(seen.clone())), Box::new(Broken)],
    )
    .await
    .expect("a broken extra output does not fail the run");
    let PlanOutcome::Single(o) = out else {
        panic!("a single run")
    };
    assert_eq!(o.verdict, Verdict::Completed);
    assert!(
        o.dir.join("summary.json").is_file(),
        "the results folder is a consumer"
    );
    let s = seen.lock().expect("lock");
    assert_eq!(
        s.tags.first().map(String::as_str),
        Some("plan-start sweep=false")
    );
    assert_eq!(s.tags.get(1).map(String::as_str), Some("step-start 0"));
    let n = s.tags.len();
    assert_eq!(&s.tags[n - 2..], ["step-end 0", "plan-end sweep=false"]);
    // Every timeline row went out once, in order, while the run went on.
    let indexes: Vec<u64> = s.intervals.iter().map(|i| i.1).collect();
    let timeline: Vec<u64> = o.summary.timeline.iter().map(|r| r.index).collect();
    assert_eq!(indexes, timeline);
    let ok: u64 = s.intervals.iter().filter(|i| !i.3).map(|i| i.2).sum();
    assert_eq!(ok, o.summary.requests_ok);
    assert_eq!(s.finished_ok, vec![o.summary.requests_ok]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_is_one_stream_with_a_step_start_and_end_per_step() {
    let _serial = LOAD.lock().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dir = scratch("events-sweep");
    let sweep = "[sweep]\nusers = [1, 2]\nrequests = [3, 4]";
    let text = plan(&dir, sweep).replace("duration = \"2s\"", "requests = 1");
    let out = run(&text, vec![Box::new(Recorder(seen.clone()))])
        .await
        .expect("sweep");
    let PlanOutcome::Sweep(o) = out else {
        panic!("a sweep")
    };
    assert!(o.dir.join("sweep.json").is_file());
    let s = seen.lock().expect("lock");
    let marks: Vec<&str> = s
        .tags
        .iter()
        .map(String::as_str)
        .filter(|t| !matches!(*t, "interval" | "requests" | "monitor" | "message"))
        .collect();
    assert_eq!(
        marks,
        [
            "plan-start sweep=true",
            "step-start 1",
            "step-end 1",
            "step-start 2",
            "step-end 2",
            "plan-end sweep=true"
        ]
    );
    assert_eq!(s.finished_ok, vec![3, 4]);
    assert!(
        s.intervals.iter().any(|i| i.0 == 2),
        "intervals carry their step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_folder_that_cannot_be_written_fails_the_run_naming_it() {
    let _serial = LOAD.lock().await;
    let dir = scratch("events-blocked");
    // [output] dir is a file: nothing can be created below it.
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("file");
    let text = plan(&blocker, "").replace("duration = \"2s\"", "requests = 2");
    let err = match run(&text, Vec::new()).await {
        Err(e) => e,
        Ok(_) => panic!("the results could not be written"),
    };
    assert!(matches!(err, RunError::Output { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
