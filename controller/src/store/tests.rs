//! The store, requests.csv and the hlog fed synthesized events, and a
//! replay of the store rebuilding the same files.

use std::path::{Path, PathBuf};

use barrage_common::metrics::{Counters, Layouts, Metric, MetricSet};
use barrage_proto::agent::v1 as pb;

use super::*;
use crate::events::{
    AgentStart, IntervalEvent, Outputs, PlanEnd, PlanStart, RequestsEvent, StepStart,
};
use crate::merge::IntervalRow;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("barrage-{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

fn row(index: u64, ok: u64) -> IntervalRow {
    IntervalRow {
        index,
        warmup: index == 0,
        t_s: index as f64 * 0.5,
        agents_reporting: 1,
        requests_ok: ok,
        requests_failed: 0,
        output_tokens: ok * 3,
        ttft_p50_ms: Some(1.5),
        ttft_p99_ms: None,
        itl_p50_ms: None,
        itl_p99_ms: None,
        e2e_p50_ms: None,
        e2e_p99_ms: None,
        max_agent_cpu_percent: 12.5,
        max_agent_cpu_share: 0.125,
        max_scheduler_lag_ms: 0.25,
        read_lag_p99_ms: None,
        in_flight: 2,
        monitor: Default::default(),
    }
}

fn events(dir: &Path) -> Vec<RunEvent> {
    let mut out = vec![
        RunEvent::PlanStarted(PlanStart {
            name: "t".into(),
            dir: dir.to_owned(),
            plan_toml: "name = \"t\"\n".into(),
            started_at: "2026-12-02T17:00:00Z".into(),
            sweep: false,
        }),
        RunEvent::StepStarted(StepStart {
            step: 0,
            name: "t".into(),
            run_id: "r1".into(),
            dir: dir.to_owned(),
            plan_toml: "name = \"t\"\n".into(),
            started_at: "2026-12-02T17:00:00Z".into(),
            interval_s: 0.5,
            duration_s: Some(1.5),
            requests: None,
            users: 2,
            rate: None,
            agents: vec![AgentStart {
                id: "a0".into(),
                addr: "embedded".into(),
                users: 2,
                share: 1.0,
            }],
        }),
    ];
    let mut totals = Counters::default();
    for index in 0..3u64 {
        let mut m = MetricSet::new(Layouts::default()).expect("set");
        for v in 0..=index {
            m.record(Metric::Ttft, 1000 + v);
            m.record(Metric::OutputTokens, 3);
        }
        let counters = Counters {
            requests_ok: index + 1,
            ..Counters::default()
        };
        totals.add(&counters);
        out.push(RunEvent::Requests(RequestsEvent {
            step: 0,
            agent: 0,
            records: (0..=index)
                .map(|i| pb::RequestRecord {
                    seq: index * 10 + i,
                    ttft_us: Some(1000 + i),
                    e2e_us: Some(5000),
                    chunk_gaps_us: vec![100, 200],
                    output_tokens: 3,
                    outcome: pb::RecordOutcome::Ok as i32,
                    error: "a, \"quoted\"\nmessage".into(),
                    ..pb::RequestRecord::default()
                })
                .collect(),
        }));
        out.push(RunEvent::Interval(IntervalEvent {
            step: 0,
            row: row(index, index + 1),
            metrics: m,
            counters,
            totals: totals.clone(),
        }));
    }
    out.push(RunEvent::PlanFinished(PlanEnd {
        verdict: Verdict::Interrupted,
        dir: dir.to_owned(),
        sweep: None,
    }));
    out
}

fn feed(evs: Vec<RunEvent>) -> Vec<crate::events::ConsumerReport> {
    let outputs = Outputs::start(consumers());
    let e = outputs.events();
    for ev in evs {
        e.emit(ev);
    }
    drop(e);
    outputs.close()
}

#[test]
fn a_replay_of_the_store_rebuilds_the_csv_and_the_hlog() {
    let dir = scratch("store-unit");
    let reports = feed(events(&dir));
    for r in &reports {
        assert!(r.error.is_none(), "{}: {:?}", r.name, r.error);
    }
    let conn = Connection::open(dir.join(FILE)).expect("open");
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 6);
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM intervals WHERE warmup = 1", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(n, 1);
    drop(conn);
    let read = |p: &Path| std::fs::read(p).expect("read");
    let csv = read(&dir.join(csv::FILE));
    let hlog = read(&dir.join(hlog::FILE));
    assert!(String::from_utf8_lossy(&hlog).contains("Tag=warmup_ttft,"));
    assert!(String::from_utf8_lossy(&hlog).contains("Tag=ttft,"));

    // Rebuilt in another folder (the results folder moved).
    let moved = scratch("store-unit-moved");
    std::fs::copy(dir.join(FILE), moved.join(FILE)).expect("copy");
    let done = replay::replay(
        &moved,
        vec![
            Box::new(csv::RequestsCsv::new()),
            Box::new(hlog::Hlog::new()),
        ],
    )
    .expect("replay");
    assert!(done.plan_finished);
    assert_eq!(done.unfinished_steps, vec![0], "no StepFinished was sent");
    assert_eq!(read(&moved.join(csv::FILE)), csv);
    assert_eq!(read(&moved.join(hlog::FILE)), hlog);
}

#[test]
fn a_newer_or_missing_store_is_refused_by_name() {
    let dir = scratch("store-refuse");
    let e = replay::open(&dir).expect_err("missing");
    assert!(matches!(e, StoreError::Missing { .. }));
    assert!(e.to_string().contains("results.sqlite"), "{e}");
    let c = Connection::open(dir.join(FILE)).expect("create");
    c.execute_batch(schema::DDL).expect("ddl");
    c.execute("INSERT INTO meta VALUES ('schema_version', '2')", [])
        .expect("meta");
    drop(c);
    let e = replay::open(&dir).expect_err("newer");
    assert!(matches!(e, StoreError::NewerSchema { found: 2, .. }), "{e}");
}

#[test]
fn a_plan_that_fails_before_its_first_step_leaves_no_folder() {
    let dir =
        std::env::temp_dir().join(format!("barrage-store-none-{:08x}", rand::random::<u32>()));
    let mut evs = events(&dir);
    evs.truncate(1);
    evs.push(RunEvent::Message("sweep step 1/2".into()));
    let reports = feed(evs);
    assert!(
        reports
            .iter()
            .all(|r| r.error.is_none() && r.files.is_empty())
    );
    assert!(!dir.exists(), "nothing created");
}
