//! The per-request store and the files made from the same events:
//! `results.sqlite` (this module), `requests.csv` (`csv`) and
//! `histograms.hlog` (`hlog`), each a consumer of the run's events; and
//! `controller report DIR` (`replay`), which rebuilds the results folder by
//! replaying the events kept in the store through the same consumers.
//!
//! The store is written as events arrive and committed at every interval
//! and at least every `COMMIT_EVERY` or `COMMIT_RECORDS` request records
//! (WAL journal), so a crash or SIGKILL keeps everything committed so far.

pub mod csv;
pub mod hlog;
pub mod replay;
pub mod rows;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use barrage_common::metrics::{Layouts, Metric, MetricError, MetricSet};
use barrage_proto::agent::v1 as pb;
use prost::Message as _;
use rusqlite::{Connection, params};

use crate::events::{
    Consumer, IntervalEvent, OutputError, PlanEnd, PlanStart, RequestsEvent, RunEvent, StepEnd,
    StepStart,
};
use crate::run::Verdict;
use rows::RequestRow;

/// The store's file name in the results folder.
pub const FILE: &str = "results.sqlite";
/// Longest a request record waits uncommitted (while events arrive).
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Most request records in one transaction (each commit writes the WAL
/// frames of the pages touched: at tens of thousands of records a second,
/// 2000 a commit cost ~1.4 % of the run's CPU; `COMMIT_EVERY` bounds what a
/// crash can lose).
pub const COMMIT_RECORDS: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no results store here (run `controller run` first, or give a results folder)")]
    Missing { path: PathBuf },
    #[error(
        "{path}: schema version {found} is newer than this controller reads ({supported}); use a newer controller"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error(transparent)]
    Metric(#[from] MetricError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// A verdict as the store keeps it.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Completed => "completed",
        Verdict::Interrupted => "interrupted",
        Verdict::Degraded => "degraded",
        Verdict::Breached => "breached",
        Verdict::Failed => "failed",
    }
}

pub fn verdict_from_name(s: &str) -> Option<Verdict> {
    [
        Verdict::Completed,
        Verdict::Interrupted,
        Verdict::Degraded,
        Verdict::Breached,
        Verdict::Failed,
    ]
    .into_iter()
    .find(|v| verdict_name(*v) == s)
}

/// The histogram layouts of a metric set (to decode its blobs again).
pub fn layouts_of(m: &MetricSet) -> Layouts {
    Layouts {
        latency: m.get(Metric::Ttft).layout(),
        tokens: m.get(Metric::InputTokens).layout(),
    }
}

/// The `results.sqlite` consumer. The file is created when the first step
/// starts its load: a plan that fails before (a bad dataset path, an
/// unreachable agent) leaves no folder behind.
#[derive(Default)]
pub struct Store {
    plan: Option<PlanStart>,
    db: Option<Db>,
}

struct Db {
    conn: Connection,
    path: PathBuf,
    in_tx: bool,
    /// Request records since the last commit, and when it was.
    pending: usize,
    committed_at: Instant,
    /// Steps whose histogram layouts are stored already.
    layouts_known: Vec<u32>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    fn db(&mut self) -> Result<&mut Db, OutputError> {
        self.db.as_mut().ok_or_else(|| {
            OutputError::Other("results.sqlite: an event came before its step started".into())
        })
    }
}

impl Consumer for Store {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::PlanStarted(p) => {
                self.plan = Some(p.clone());
                return Ok(());
            }
            RunEvent::StepStarted(_) if self.db.is_none() => {
                let plan = self.plan.as_ref().ok_or_else(|| {
                    OutputError::Other("results.sqlite: a step started before its plan".into())
                })?;
                self.db = Some(Db::create(plan).map_err(out)?);
            }
            // Nothing to store yet: no step started.
            RunEvent::PlanFinished(_) | RunEvent::Message(_) | RunEvent::Monitor(_)
                if self.db.is_none() =>
            {
                return Ok(());
            }
            _ => {}
        }
        let db = self.db()?;
        let r = match ev {
            RunEvent::PlanStarted(_) => Ok(()),
            RunEvent::StepStarted(s) => db.step_started(s),
            RunEvent::Interval(iv) => db.interval(iv),
            RunEvent::Requests(r) => db.requests(r),
            RunEvent::StepFinished(s) => db.step_finished(s),
            RunEvent::PlanFinished(p) => db.plan_finished(p),
            // Live readings only: the per-interval averages come with the
            // step's final timeline (StepFinished).
            RunEvent::Monitor(_) | RunEvent::Message(_) => Ok(()),
        };
        r.map_err(out)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        let Some(mut db) = self.db.take() else {
            return Ok(Vec::new());
        };
        db.commit().map_err(out)?;
        let path = db.path.clone();
        db.conn.close().map_err(|(_, source)| {
            out(StoreError::Sqlite {
                path: path.clone(),
                source,
            })
        })?;
        Ok(vec![path])
    }
}

fn out(e: StoreError) -> OutputError {
    OutputError::Other(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    Ok(serde_json::to_string(v)?)
}

fn opt_u64(v: Option<u64>) -> Option<i64> {
    v.map(|x| i64::try_from(x).unwrap_or(i64::MAX))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    /// A fresh store in the plan's folder (one left by an earlier run of
    /// the same folder is replaced).
    fn create(p: &PlanStart) -> Result<Self, StoreError> {
        let path = p.dir.join(FILE);
        std::fs::create_dir_all(&p.dir).map_err(|source| StoreError::Io {
            path: p.dir.clone(),
            source,
        })?;
        for stale in [
            path.clone(),
            wal_path(&path, "-wal"),
            wal_path(&path, "-shm"),
        ] {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Io {
                        path: stale,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        // WAL + NORMAL: a commit survives the process being killed.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.execute_batch(schema::DDL).map_err(sql)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('writer', ?2)",
            params![
                schema::SCHEMA_VERSION.to_string(),
                format!("barrage controller {}", env!("CARGO_PKG_VERSION"))
            ],
        )
        .map_err(sql)?;
        conn.execute(
            "INSERT INTO plan (id, name, dir, plan_toml, started_at, sweep) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![p.name, p.dir.display().to_string(), p.plan_toml, p.started_at, p.sweep],
        )
        .map_err(sql)?;
        let mut db = Db {
            conn,
            path,
            in_tx: false,
            pending: 0,
            committed_at: Instant::now(),
            layouts_known: Vec::new(),
        };
        db.begin()?;
        Ok(db)
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if !self.in_tx {
            self.conn.execute_batch("BEGIN").map_err(self.sql())?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.in_tx {
            self.conn.execute_batch("COMMIT").map_err(self.sql())?;
            self.in_tx = false;
        }
        self.pending = 0;
        self.committed_at = Instant::now();
        Ok(())
    }

    /// Commits now and starts the next transaction.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.commit()?;
        self.begin()
    }

    fn step_started(&mut self, s: &StepStart) -> Result<(), StoreError> {
        let sql = self.sql();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO steps (step, name, run_id, dir, plan_toml, started_at, interval_s, users, rate, duration_s, requests)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    s.step,
                    s.name,
                    s.run_id,
                    s.dir.display().to_string(),
                    s.plan_toml,
                    s.started_at,
                    s.interval_s,
                    int(s.users),
                    s.rate,
                    s.duration_s,
                    opt_u64(s.requests),
                ],
            )
            .map_err(&sql)?;
        for (i, a) in s.agents.iter().enumerate() {
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO agents (step, agent, id, addr, users, share) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![s.step, i as i64, a.id, a.addr, int(a.users), a.share],
                )
                .map_err(&sql)?;
        }
        drop(sql);
        self.checkpoint()
    }

    fn interval(&mut self, iv: &IntervalEvent) -> Result<(), StoreError> {
        if !self.layouts_known.contains(&iv.step) {
            self.conn
                .execute(
                    "UPDATE steps SET layouts = ?1 WHERE step = ?2",
                    params![json(&layouts_of(&iv.metrics))?, iv.step],
                )
                .map_err(self.sql())?;
            self.layouts_known.push(iv.step);
        }
        let blob = pb::Interval {
            seq: 0,
            index: iv.row.index,
            metrics: iv.metrics.encode()?,
            counters: Some(iv.counters.to_proto()),
            health: None,
            // Per-turn figures are in summary.json; rows carry conversation and turn.
            turns: Vec::new(),
        }
        .encode_to_vec();
        let r = &iv.row;
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO intervals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
            )
            .map_err(self.sql())?;
        st.execute(params![
            iv.step,
            int(r.index),
            r.warmup,
            r.t_s,
            r.agents_reporting as i64,
            int(r.requests_ok),
            int(r.requests_failed),
            int(r.output_tokens),
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.itl_p50_ms,
            r.itl_p99_ms,
            r.e2e_p50_ms,
            r.e2e_p99_ms,
            r.max_agent_cpu_percent,
            r.max_agent_cpu_share,
            r.max_scheduler_lag_ms,
            int(r.in_flight),
            json(&r.monitor)?,
            blob,
            json(&iv.counters)?,
            json(&iv.totals)?,
        ])
        .map_err(self.sql())?;
        drop(st);
        self.checkpoint()
    }

    fn requests(&mut self, ev: &RequestsEvent) -> Result<(), StoreError> {
        insert_requests(&self.conn, ev).map_err(self.sql())?;
        self.pending += ev.records.len();
        if self.pending >= COMMIT_RECORDS || self.committed_at.elapsed() >= COMMIT_EVERY {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn step_finished(&mut self, s: &StepEnd) -> Result<(), StoreError> {
        let sql = self.sql();
        self.conn
            .execute(
                "UPDATE steps SET status = ?1, verdict = ?2, summary = ?3 WHERE step = ?4",
                params![
                    s.summary.status,
                    verdict_name(s.verdict),
                    json(&s.summary)?,
                    s.step
                ],
            )
            .map_err(&sql)?;
        for row in s.summary.timeline.iter() {
            insert_monitor(&self.conn, &self.path, s.step, row)?;
        }
        for note in &s.summary.notes {
            self.conn
                .execute(
                    "INSERT INTO notes (step, note) VALUES (?1, ?2)",
                    params![s.step, note],
                )
                .map_err(&sql)?;
        }
        drop(sql);
        self.checkpoint()
    }

    fn plan_finished(&mut self, p: &PlanEnd) -> Result<(), StoreError> {
        let report = p.sweep.as_ref().map(json).transpose()?;
        self.conn
            .execute(
                "UPDATE plan SET verdict = ?1, sweep_report = ?2 WHERE id = 1",
                params![verdict_name(p.verdict), report],
            )
            .map_err(self.sql())?;
        self.checkpoint()
    }
}

fn wal_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Columns of the `requests` table, each bound once per row.
const REQUEST_COLUMNS: usize = 29;
/// Rows per multi-row INSERT: one statement step (cursor opening, halt)
/// per this many rows instead of per row; 29 × 32 parameters stay under
/// SQLite's limit of 32,766.
pub const ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO requests VALUES (?, …), …` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let one = format!("({})", vec!["?"; REQUEST_COLUMNS].join(", "));
    format!("INSERT INTO requests VALUES {}", vec![one; rows].join(", "))
}

/// Inserts one batch's rows in arrival order (so `rowid` order is arrival
/// order, as replay reads them): whole groups of `ROWS_PER_INSERT` through
/// one statement, the rest one by one. Both statements are prepared once
/// per connection (cached).
fn insert_requests(conn: &Connection, ev: &RequestsEvent) -> Result<(), rusqlite::Error> {
    static SQL: LazyLock<(String, String)> =
        LazyLock::new(|| (insert_sql(ROWS_PER_INSERT), insert_sql(1)));
    let (many, one) = &*SQL;
    let row = |r| RequestRow::new(ev.step, ev.agent, r);
    let mut groups = ev.records.chunks_exact(ROWS_PER_INSERT);
    if groups.len() > 0 {
        let mut st = conn.prepare_cached(many)?;
        for group in &mut groups {
            for (i, r) in group.iter().enumerate() {
                bind_request(&mut st, i * REQUEST_COLUMNS, &row(r))?;
            }
            st.raw_execute()?;
        }
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut st = conn.prepare_cached(one)?;
        for r in rest {
            bind_request(&mut st, 0, &row(r))?;
            st.raw_execute()?;
        }
    }
    Ok(())
}

/// Binds one row's columns at parameters `base + 1 ..= base + 29` (the
/// same values, of the same types, as a row inserted on its own).
fn bind_request(
    st: &mut rusqlite::Statement<'_>,
    base: usize,
    row: &RequestRow<'_>,
) -> Result<(), rusqlite::Error> {
    let r = row.r;
    let mut i = base;
    let mut bind = |v: &dyn rusqlite::ToSql| {
        i += 1;
        st.raw_bind_parameter(i, v)
    };
    bind(&row.step)?;
    bind(&(row.agent as i64))?;
    bind(&int(r.seq))?;
    bind(&r.user)?;
    bind(&int(r.prompt_index))?;
    bind(&opt_u64(r.intended_offset_us))?;
    bind(&int(r.start_offset_us))?;
    bind(&opt_u64(r.ttft_us))?;
    bind(&opt_u64(r.ttfo_us))?;
    bind(&opt_u64(r.e2e_us))?;
    bind(&row.tpot_us)?;
    bind(&row.gap_mean_us)?;
    bind(&opt_u64(row.gap_p50_us))?;
    bind(&opt_u64(row.gap_max_us))?;
    bind(&int(row.chunks))?;
    bind(&rows::gaps_blob(&r.chunk_gaps_us))?;
    bind(&int(r.input_tokens))?;
    bind(&int(r.output_tokens))?;
    bind(&row.input_source())?;
    bind(&row.output_source())?;
    bind(&row.outcome())?;
    bind(&r.error_class)?;
    bind(&r.http_status)?;
    bind(&r.error)?;
    bind(&r.warmup)?;
    bind(&r.prompt)?;
    bind(&r.response)?;
    bind(&int(r.conversation))?;
    bind(&r.turn)?;
    Ok(())
}

/// The monitor columns of one final timeline row (none when unmonitored).
fn insert_monitor(
    conn: &Connection,
    path: &Path,
    step: u32,
    row: &crate::merge::IntervalRow,
) -> Result<(), StoreError> {
    let serde_json::Value::Object(mut values) = serde_json::to_value(&row.monitor)? else {
        return Ok(());
    };
    let mut take = |k: &str| values.remove(k).and_then(|v| v.as_f64());
    let (util, mem, power) = (
        take("gpu_util_pct"),
        take("gpu_mem_pct"),
        take("gpu_power_w"),
    );
    let host = take("host_cpu_pct");
    let empty = values
        .values()
        .all(|v| v.is_null() || v.as_object().is_some_and(|o| o.is_empty()));
    if util.is_none() && mem.is_none() && power.is_none() && host.is_none() && empty {
        return Ok(());
    }
    conn.execute(
        "INSERT OR REPLACE INTO monitor VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            step,
            int(row.index),
            row.t_s,
            util,
            mem,
            power,
            host,
            serde_json::Value::Object(values).to_string()
        ],
    )
    .map_err(|source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// The file outputs of this module, each its own consumer: the store,
/// requests.csv and histograms.hlog.
pub fn consumers() -> Vec<Box<dyn Consumer>> {
    vec![
        Box::new(Store::new()),
        Box::new(csv::RequestsCsv::new()),
        Box::new(hlog::Hlog::new()),
    ]
}

/// `controller report DIR`: rebuilds the results folder from its store
/// through the run's own outputs (less the store itself); the exit status.
pub fn report_command(dir: &Path) -> i32 {
    let consumers: Vec<Box<dyn Consumer>> =
        crate::outputs::defaults(&crate::run::RunOptions::default())
            .into_iter()
            .filter(|c| c.name() != "sqlite")
            .collect();
    match replay::replay(dir, consumers) {
        Ok(done) => {
            let mut status = 0;
            for r in &done.reports {
                if let Some(e) = &r.error {
                    eprintln!("error: {}: {e}", r.name);
                    status = crate::cli::EXIT_FAILED;
                }
                for f in &r.files {
                    println!("{}", f.display());
                }
            }
            if !done.unfinished_steps.is_empty() || !done.plan_finished {
                eprintln!(
                    "note: the run did not finish (killed?): no summary for step(s) {:?}; rebuilt what was stored",
                    done.unfinished_steps
                );
            }
            status
        }
        Err(
            e @ (StoreError::Missing { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Bad { .. }),
        ) => {
            eprintln!("error: {e}");
            crate::cli::EXIT_BAD_PLAN
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::cli::EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests;
