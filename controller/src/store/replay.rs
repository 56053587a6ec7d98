//! `controller report DIR`: reads the events kept in DIR/results.sqlite and
//! replays them, in order, through the results-folder consumers, which
//! rebuild every file of the folder exactly as the run wrote it.

use std::path::{Path, PathBuf};

use barrage_common::metrics::{Counters, Layouts, Metric, MetricSet};
use barrage_proto::agent::v1 as pb;
use prost::Message as _;
use rusqlite::{Connection, OpenFlags, Row, params};

use crate::events::{
    AgentStart, Consumer, ConsumerReport, Events, IntervalEvent, Outputs, PlanEnd, PlanStart,
    RequestsEvent, RunEvent, StepEnd, StepStart,
};
use crate::merge::IntervalRow;
use crate::report::Summary;
use crate::store::rows::{gaps_from_blob, outcome_value, source_value};
use crate::store::schema::SCHEMA_VERSION;
use crate::store::{FILE, StoreError, verdict_from_name};

/// Request records per replayed batch.
const BATCH: usize = 1000;

/// What a replay did.
pub struct Replayed {
    pub reports: Vec<ConsumerReport>,
    /// Steps that never finished (the run was killed): no summary for them.
    pub unfinished_steps: Vec<u32>,
    pub plan_finished: bool,
}

/// The store of a results folder, opened for reading (read-write so a
/// journal left by a killed run is recovered).
pub fn open(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join(FILE);
    if !path.is_file() {
        return Err(StoreError::Missing { path });
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Sqlite {
        path: path.clone(),
        source,
    })?;
    let version: Result<String, _> = conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    );
    let found = version
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| StoreError::Bad {
            path: path.clone(),
            what: "not a barrage results store (no schema_version in its meta table)".into(),
        })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path,
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// Replays the store of `dir` through `consumers`, writing into `dir`
/// (whatever folder the run first wrote to).
pub fn replay(dir: &Path, consumers: Vec<Box<dyn Consumer>>) -> Result<Replayed, StoreError> {
    replay_with(dir, consumers, true)
}

/// `replay` without the per-request records: the timeline a live view
/// needs (a reloaded dashboard), at a fraction of the reading.
pub fn replay_timeline(
    dir: &Path,
    consumers: Vec<Box<dyn Consumer>>,
) -> Result<Replayed, StoreError> {
    replay_with(dir, consumers, false)
}

fn replay_with(
    dir: &Path,
    consumers: Vec<Box<dyn Consumer>>,
    requests: bool,
) -> Result<Replayed, StoreError> {
    let conn = open(dir)?;
    let r = Reader {
        conn: &conn,
        path: dir.join(FILE),
        dir: dir.to_owned(),
        requests,
    };
    let outputs = Outputs::start(consumers);
    let events = outputs.events();
    let result = r.emit_all(&events);
    drop(events);
    let reports = outputs.close();
    let (unfinished_steps, plan_finished) = result?;
    Ok(Replayed {
        reports,
        unfinished_steps,
        plan_finished,
    })
}

struct Reader<'a> {
    conn: &'a Connection,
    path: PathBuf,
    /// Where the files go now.
    dir: PathBuf,
    /// Replay the per-request records too.
    requests: bool,
}

struct PlanRow {
    start: PlanStart,
    verdict: Option<String>,
    sweep_report: Option<String>,
}

impl Reader<'_> {
    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn bad(&self, what: impl Into<String>) -> StoreError {
        StoreError::Bad {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// A folder of the run, moved below the folder written now.
    fn remap(&self, plan_dir: &Path, p: &str) -> PathBuf {
        match Path::new(p).strip_prefix(plan_dir) {
            Ok(rel) if rel.as_os_str().is_empty() => self.dir.clone(),
            Ok(rel) => self.dir.join(rel),
            Err(_) => self.dir.clone(),
        }
    }

    fn emit_all(&self, events: &Events) -> Result<(Vec<u32>, bool), StoreError> {
        let plan = self.plan()?;
        let plan_dir = plan.start.dir.clone();
        events.emit(RunEvent::PlanStarted(PlanStart {
            dir: self.dir.clone(),
            ..plan.start
        }));
        let mut unfinished = Vec::new();
        let steps: Vec<u32> = {
            let mut st = self
                .conn
                .prepare("SELECT step FROM steps ORDER BY step")
                .map_err(self.sql())?;
            st.query_map([], |r| r.get(0))
                .map_err(self.sql())?
                .collect::<Result<_, _>>()
                .map_err(self.sql())?
        };
        for step in steps {
            if !self.emit_step(events, &plan_dir, step)? {
                unfinished.push(step);
            }
        }
        let Some(verdict) = plan.verdict else {
            return Ok((unfinished, false));
        };
        let verdict = verdict_from_name(&verdict)
            .ok_or_else(|| self.bad(format!("unknown verdict {verdict:?}")))?;
        let sweep = plan
            .sweep_report
            .map(|j| serde_json::from_str::<crate::sweep::SweepReport>(&j))
            .transpose()?;
        events.emit(RunEvent::PlanFinished(PlanEnd {
            verdict,
            dir: self.dir.clone(),
            sweep,
        }));
        Ok((unfinished, true))
    }

    fn plan(&self) -> Result<PlanRow, StoreError> {
        self.conn
            .query_row(
                "SELECT name, dir, plan_toml, started_at, sweep, verdict, sweep_report FROM plan WHERE id = 1",
                [],
                |r| {
                    Ok(PlanRow {
                        start: PlanStart {
                            name: r.get(0)?,
                            dir: PathBuf::from(r.get::<_, String>(1)?),
                            plan_toml: r.get(2)?,
                            started_at: r.get(3)?,
                            sweep: r.get(4)?,
                        },
                        verdict: r.get(5)?,
                        sweep_report: r.get(6)?,
                    })
                },
            )
            .map_err(self.sql())
    }

    /// One step's events; false when it never finished.
    fn emit_step(&self, events: &Events, plan_dir: &Path, step: u32) -> Result<bool, StoreError> {
        let (start, layouts, verdict, summary) = self.conn
            .query_row(
                "SELECT name, run_id, dir, plan_toml, started_at, interval_s, duration_s, requests, users, rate, layouts, verdict, summary FROM steps WHERE step = ?1",
                params![step],
                |r| {
                    let start = StepStart {
                        step,
                        name: r.get(0)?,
                        run_id: r.get(1)?,
                        dir: self.remap(plan_dir, &r.get::<_, String>(2)?),
                        plan_toml: r.get(3)?,
                        started_at: r.get(4)?,
                        interval_s: r.get(5)?,
                        duration_s: r.get(6)?,
                        requests: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                        users: r.get::<_, i64>(8)? as u64,
                        rate: r.get(9)?,
                        agents: Vec::new(),
                    };
                    Ok((start, r.get::<_, Option<String>>(10)?, r.get::<_, Option<String>>(11)?, r.get::<_, Option<String>>(12)?))
                },
            )
            .map_err(self.sql())?;
        let dir = start.dir.clone();
        let plan_toml = start.plan_toml.clone();
        events.emit(RunEvent::StepStarted(StepStart {
            agents: self.agents(step)?,
            ..start
        }));
        if let Some(l) = layouts {
            self.emit_intervals(events, step, serde_json::from_str(&l)?)?;
        }
        if self.requests {
            self.emit_requests(events, step)?;
        }
        let (Some(verdict), Some(summary)) = (verdict, summary) else {
            return Ok(false);
        };
        let summary: Summary = serde_json::from_str(&summary)?;
        events.emit(RunEvent::StepFinished(Box::new(StepEnd {
            step,
            summary,
            verdict: verdict_from_name(&verdict)
                .ok_or_else(|| self.bad(format!("unknown verdict {verdict:?}")))?,
            dir,
            plan_toml,
        })));
        Ok(true)
    }

    fn agents(&self, step: u32) -> Result<Vec<AgentStart>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, addr, users, share FROM agents WHERE step = ?1 ORDER BY agent")
            .map_err(self.sql())?;
        st.query_map(params![step], |r| {
            Ok(AgentStart {
                id: r.get(0)?,
                addr: r.get(1)?,
                users: r.get::<_, i64>(2)? as u64,
                share: r.get(3)?,
            })
        })
        .map_err(self.sql())?
        .collect::<Result<_, _>>()
        .map_err(self.sql())
    }

    fn emit_intervals(
        &self,
        events: &Events,
        step: u32,
        layouts: Layouts,
    ) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM intervals WHERE step = ?1 ORDER BY rowid")
            .map_err(self.sql())?;
        let mut rows = st.query(params![step]).map_err(self.sql())?;
        while let Some(r) = rows.next().map_err(self.sql())? {
            let (row, blob, counters, totals) = interval_row(r).map_err(self.sql())?;
            let iv = pb::Interval::decode(blob.as_slice())
                .map_err(|e| self.bad(format!("interval {} of step {step}: {e}", row.row.index)))?;
            let metrics = MetricSet::decode(&iv.metrics, layouts)?;
            let read_lag_p99_ms = metrics
                .get(Metric::ReadLag)
                .quantile(0.99)
                .map(|us| us as f64 / 1000.0);
            events.emit(RunEvent::Interval(IntervalEvent {
                step,
                metrics,
                counters: serde_json::from_str::<Counters>(&counters)?,
                totals: serde_json::from_str::<Counters>(&totals)?,
                row: IntervalRow {
                    monitor: serde_json::from_str(&row.monitor_json)?,
                    read_lag_p99_ms,
                    ..row.row
                },
            }));
        }
        Ok(())
    }

    /// The records in the order they arrived, in batches of one agent.
    fn emit_requests(&self, events: &Events, step: u32) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM requests WHERE step = ?1 ORDER BY rowid")
            .map_err(self.sql())?;
        let mut rows = st.query(params![step]).map_err(self.sql())?;
        let mut batch: Option<RequestsEvent> = None;
        while let Some(r) = rows.next().map_err(self.sql())? {
            let (agent, rec) = request_record(r).map_err(self.sql())?;
            match batch.as_mut() {
                Some(b) if b.agent == agent && b.records.len() < BATCH => b.records.push(rec),
                _ => {
                    if let Some(b) = batch.take() {
                        events.emit(RunEvent::Requests(b));
                    }
                    batch = Some(RequestsEvent {
                        step,
                        agent,
                        records: vec![rec],
                    });
                }
            }
        }
        if let Some(b) = batch {
            events.emit(RunEvent::Requests(b));
        }
        Ok(())
    }
}

struct StoredRow {
    row: IntervalRow,
    monitor_json: String,
}

/// An `intervals` row: the timeline row, the histogram blob, the counters
/// and the totals (JSON).
fn interval_row(r: &Row<'_>) -> rusqlite::Result<(StoredRow, Vec<u8>, String, String)> {
    let row = IntervalRow {
        index: r.get::<_, i64>("idx")? as u64,
        warmup: r.get("warmup")?,
        t_s: r.get("t_s")?,
        agents_reporting: r.get::<_, i64>("agents_reporting")? as usize,
        requests_ok: r.get::<_, i64>("requests_ok")? as u64,
        requests_failed: r.get::<_, i64>("requests_failed")? as u64,
        output_tokens: r.get::<_, i64>("output_tokens")? as u64,
        ttft_p50_ms: r.get("ttft_p50_ms")?,
        ttft_p99_ms: r.get("ttft_p99_ms")?,
        itl_p50_ms: r.get("itl_p50_ms")?,
        itl_p99_ms: r.get("itl_p99_ms")?,
        e2e_p50_ms: r.get("e2e_p50_ms")?,
        e2e_p99_ms: r.get("e2e_p99_ms")?,
        max_agent_cpu_percent: r.get("max_agent_cpu_percent")?,
        max_agent_cpu_share: r.get("max_agent_cpu_share")?,
        max_scheduler_lag_ms: r.get("max_scheduler_lag_ms")?,
        // From the interval's histograms, below.
        read_lag_p99_ms: None,
        in_flight: r.get::<_, i64>("in_flight")? as u64,
        monitor: Default::default(),
    };
    Ok((
        StoredRow {
            row,
            monitor_json: r.get("monitor")?,
        },
        r.get("histograms")?,
        r.get("counters")?,
        r.get("totals")?,
    ))
}

/// A `requests` row back as the agent sent it.
pub fn request_record(r: &Row<'_>) -> rusqlite::Result<(usize, pb::RequestRecord)> {
    let u = |name: &str| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(name)? as u64) };
    let o = |name: &str| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(name)?.map(|v| v as u64))
    };
    let gaps: Option<Vec<u8>> = r.get("chunk_gaps")?;
    let rec = pb::RequestRecord {
        seq: u("seq")?,
        user: r.get("user")?,
        prompt_index: u("prompt_index")?,
        intended_offset_us: o("intended_offset_us")?,
        start_offset_us: u("start_offset_us")?,
        ttft_us: o("ttft_us")?,
        ttfo_us: o("ttfo_us")?,
        e2e_us: o("e2e_us")?,
        chunk_gaps_us: gaps.as_deref().map(gaps_from_blob).unwrap_or_default(),
        input_tokens: u("input_tokens")?,
        output_tokens: u("output_tokens")?,
        input_source: source_value(&r.get::<_, String>("input_source")?),
        output_source: source_value(&r.get::<_, String>("output_source")?),
        outcome: outcome_value(&r.get::<_, String>("outcome")?),
        error_class: r.get("error_class")?,
        http_status: r.get("http_status")?,
        error: r.get("error")?,
        warmup: r.get("warmup")?,
        prompt: r.get("prompt")?,
        response: r.get("response")?,
        // Absent from stores written before multi-turn replay.
        conversation: r.get::<_, i64>("conversation").map_or(0, |v| v as u64),
        turn: r.get::<_, u32>("turn").unwrap_or(0),
    };
    Ok((u("agent")? as usize, rec))
}
