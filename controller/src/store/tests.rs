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

/// The row-by-row insert the batched one replaced: the reference it must
/// equal row for row.
fn reference_insert(conn: &Connection, row: &RequestRow<'_>) -> Result<(), rusqlite::Error> {
    let r = row.r;
    let mut st = conn.prepare_cached(
        "INSERT INTO requests VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)",
    )?;
    st.execute(params![
        row.step,
        row.agent as i64,
        int(r.seq),
        r.user,
        int(r.prompt_index),
        opt_u64(r.intended_offset_us),
        int(r.start_offset_us),
        opt_u64(r.ttft_us),
        opt_u64(r.ttfo_us),
        opt_u64(r.e2e_us),
        row.tpot_us,
        row.gap_mean_us,
        opt_u64(row.gap_p50_us),
        opt_u64(row.gap_max_us),
        int(row.chunks),
        rows::gaps_blob(&r.chunk_gaps_us),
        int(r.input_tokens),
        int(r.output_tokens),
        row.input_source(),
        row.output_source(),
        row.outcome(),
        r.error_class,
        r.http_status,
        r.error,
        r.warmup,
        r.prompt,
        r.response,
        int(r.conversation),
        r.turn,
    ])?;
    Ok(())
}

fn random_records(rng: &mut rand::rngs::StdRng, n: usize, seq0: u64) -> Vec<pb::RequestRecord> {
    use rand::Rng;
    (0..n as u64)
        .map(|i| pb::RequestRecord {
            seq: seq0 + i,
            user: rng.random_range(0..64),
            prompt_index: rng.random_range(0..100),
            intended_offset_us: rng.random_bool(0.5).then(|| rng.random_range(0..1 << 40)),
            start_offset_us: rng.random(),
            ttft_us: rng.random_bool(0.8).then(|| rng.random_range(0..1 << 30)),
            ttfo_us: rng.random_bool(0.3).then(|| rng.random_range(0..1 << 30)),
            e2e_us: rng.random_bool(0.9).then(|| rng.random_range(0..1 << 30)),
            chunk_gaps_us: (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..1 << 33))
                .collect(),
            input_tokens: rng.random_range(0..4000),
            output_tokens: rng.random_range(0..4),
            input_source: rng.random_range(0..5),
            output_source: rng.random_range(0..5),
            outcome: rng.random_range(0..4),
            error_class: if rng.random_bool(0.2) {
                "timeout".into()
            } else {
                String::new()
            },
            http_status: rng.random_range(0..600),
            error: if rng.random_bool(0.2) {
                "a, \"b\"\nc".into()
            } else {
                String::new()
            },
            warmup: rng.random(),
            prompt: rng.random_bool(0.3).then(|| "hello, world".into()),
            response: rng.random_bool(0.3).then(|| "ünïcode".into()),
            conversation: rng.random_range(0..3),
            turn: rng.random_range(0..3),
        })
        .collect()
}

fn all_requests(conn: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
    let mut st = conn
        .prepare("SELECT * FROM requests ORDER BY rowid")
        .expect("select");
    let cols = st.column_count();
    st.query_map([], |r| (0..cols).map(|i| r.get(i)).collect())
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn empty_store(dir: &Path) -> Connection {
    let c = Connection::open(dir.join(FILE)).expect("create");
    c.execute_batch(schema::DDL).expect("ddl");
    c
}

/// Batches of every size around the multi-row statement's (none, one,
/// whole groups, groups and a remainder) give the same rows, in the same
/// order, as inserting each record on its own.
#[test]
fn batched_inserts_equal_row_by_row_inserts() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (a, b) = (scratch("store-batched"), scratch("store-rows"));
    let (batched, reference) = (empty_store(&a), empty_store(&b));
    let sizes = [
        0,
        1,
        ROWS_PER_INSERT - 1,
        ROWS_PER_INSERT,
        ROWS_PER_INSERT + 1,
        3 * ROWS_PER_INSERT + 11,
        512,
    ];
    let mut seq = 0;
    for (k, n) in sizes.into_iter().enumerate() {
        let ev = RequestsEvent {
            step: k as u32 % 2,
            agent: k % 3,
            records: random_records(&mut rng, n, seq),
        };
        seq += n as u64;
        insert_requests(&batched, &ev).expect("batched");
        for r in &ev.records {
            reference_insert(&reference, &RequestRow::new(ev.step, ev.agent, r)).expect("row");
        }
    }
    let (got, want) = (all_requests(&batched), all_requests(&reference));
    assert_eq!(got.len() as u64, seq, "every row written");
    assert_eq!(got, want);
}

/// A run that dies half-way (the store is never finished nor closed, as
/// under SIGKILL) leaves every row committed so far readable, in order:
/// all rows before its last interval, and all but fewer than
/// `COMMIT_RECORDS` of the rows after it, in batches whose sizes are not
/// multiples of the multi-row statement's.
#[test]
fn a_run_that_dies_half_way_keeps_its_committed_rows() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let dir = scratch("store-killed");
    let mut store = Store::new();
    let evs = events(&dir);
    let mut sent = 0usize;
    let mut send = |store: &mut Store, sent: &mut usize, n: usize| {
        let records = random_records(&mut rng, n, *sent as u64);
        *sent += n;
        store
            .event(&RunEvent::Requests(RequestsEvent {
                step: 0,
                agent: 0,
                records,
            }))
            .expect("requests");
    };
    for ev in &evs[..2] {
        store.event(ev).expect("start");
    }
    let batch = 1000 + 7;
    for _ in 0..3 {
        send(&mut store, &mut sent, batch);
    }
    // An interval commits everything before it.
    assert!(matches!(evs[3], RunEvent::Interval(_)));
    store.event(&evs[3]).expect("interval");
    let at_interval = 3 * batch;
    for _ in 0..COMMIT_RECORDS.div_ceil(batch) {
        send(&mut store, &mut sent, batch);
    }
    let before_last = sent;
    send(&mut store, &mut sent, 13);
    std::mem::forget(store);
    let conn = Connection::open(dir.join(FILE)).expect("open");
    let rows = all_requests(&conn);
    assert!(
        rows.len() >= at_interval && rows.len() + COMMIT_RECORDS > before_last,
        "{} rows on disk of {sent} sent",
        rows.len()
    );
    assert!(rows.len() <= sent);
    let seqs: Vec<i64> = (0..rows.len() as i64).collect();
    let got: Vec<i64> = rows
        .iter()
        .map(|r| match r[2] {
            rusqlite::types::Value::Integer(s) => s,
            _ => -1,
        })
        .collect();
    assert_eq!(got, seqs, "every row, in order");
}
