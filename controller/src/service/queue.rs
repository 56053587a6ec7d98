//! The run queue: one row per submitted run in `<data>/service.sqlite`.
//! Every state change is committed at once, so a restart (or a kill) of the
//! service finds each run where it was: queued runs start again, a run that
//! was running is marked interrupted (docs/service.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// The queue's file in the data folder.
pub const FILE: &str = "service.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    pool TEXT NOT NULL,
    sweep INTEGER NOT NULL,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    dir TEXT,
    headline TEXT,
    plan_toml TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, seq);
";

/// Where a run stands. The terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Degraded,
    Breached,
    Failed,
    Cancelled,
    Interrupted,
    Error,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Degraded,
        RunStatus::Breached,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
        RunStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Degraded => "degraded",
            RunStatus::Breached => "breached",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// One run as the queue keeps it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: RunStatus,
    pub pool: String,
    pub sweep: bool,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// The run's results folder (or a sweep's), once the run started.
    pub dir: Option<String>,
    /// The finished run's headline figures (JSON).
    pub headline: Option<serde_json::Value>,
    /// The plan as submitted (it may hold header secrets: shown redacted).
    pub plan_toml: String,
}

/// A run to add.
pub struct NewRun {
    pub name: String,
    pub description: String,
    pub pool: String,
    pub sweep: bool,
    pub plan_toml: String,
}

/// Filters of `GET /api/runs`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub name: Option<String>,
    pub status: Option<RunStatus>,
    /// Inclusive bounds on `submitted_at` (RFC 3339 text compares in order).
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("run queue {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("run queue {path}: {what}")]
    Bad { path: PathBuf, what: String },
}

/// The queue. SQLite calls are short (one row); a mutex serialises them.
pub struct Queue {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const COLUMNS: &str = "id, name, description, status, pool, sweep, submitted_at, started_at, finished_at, error, dir, headline, plan_toml";

impl Queue {
    /// Opens (or creates) the queue of the data folder `data`.
    pub fn open(data: &Path) -> Result<Self, QueueError> {
        let path = data.join(FILE);
        let err = |source| QueueError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves a consistent connection
        // (every statement is atomic): keep using it.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
        |source| QueueError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a queued run; its id is new.
    pub fn insert(&self, run: NewRun) -> Result<RunRow, QueueError> {
        let now = now();
        let id = new_id();
        self.conn()
            .execute(
                "INSERT INTO runs (id, name, description, status, pool, sweep, submitted_at, plan_toml) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
                params![id, run.name, run.description, run.pool, run.sweep, now, run.plan_toml],
            )
            .map_err(self.sql())?;
        self.get(&id)?.ok_or_else(|| QueueError::Bad {
            path: self.path.clone(),
            what: format!("run {id} vanished after its insert"),
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<RunRow>, QueueError> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
            params![id],
            run_row,
        )
        .optional()
        .map_err(self.sql())
    }

    /// Runs matching `f`, newest first.
    pub fn list(&self, f: &ListFilter) -> Result<Vec<RunRow>, QueueError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs
                 WHERE (?1 IS NULL OR instr(lower(name), lower(?1)) > 0)
                   AND (?2 IS NULL OR status = ?2)
                   AND (?3 IS NULL OR submitted_at >= ?3)
                   AND (?4 IS NULL OR submitted_at <= ?4)
                 ORDER BY seq DESC LIMIT ?5"
            ))
            .map_err(self.sql())?;
        let limit = i64::from(f.limit.unwrap_or(1000));
        let rows = st
            .query_map(
                params![
                    f.name,
                    f.status.map(RunStatus::as_str),
                    f.since,
                    f.until,
                    limit
                ],
                run_row,
            )
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Queued runs in submission order.
    pub fn queued(&self) -> Result<Vec<RunRow>, QueueError> {
        self.with_status(RunStatus::Queued)
    }

    pub fn with_status(&self, status: RunStatus) -> Result<Vec<RunRow>, QueueError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs WHERE status = ?1 ORDER BY seq"
            ))
            .map_err(self.sql())?;
        let rows = st
            .query_map(params![status.as_str()], run_row)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// queued → running. False when the run is no longer queued (a cancel
    /// won the race).
    pub fn start(&self, id: &str) -> Result<bool, QueueError> {
        let n = self
            .conn()
            .execute(
                "UPDATE runs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
                params![id, now()],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    pub fn set_dir(&self, id: &str, dir: &Path) -> Result<(), QueueError> {
        self.conn()
            .execute(
                "UPDATE runs SET dir = ?2 WHERE id = ?1",
                params![id, dir.to_string_lossy()],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Moves a run that has not ended into a terminal state. False when it
    /// had already ended (the first end wins).
    pub fn finish(
        &self,
        id: &str,
        status: RunStatus,
        error: Option<&str>,
        headline: Option<&serde_json::Value>,
    ) -> Result<bool, QueueError> {
        let headline = headline.map(serde_json::Value::to_string);
        let n = self
            .conn()
            .execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4, headline = coalesce(?5, headline)
                 WHERE id = ?1 AND status IN ('queued', 'running')",
                params![id, status.as_str(), now(), error, headline],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Removes a run's row (its folder is the caller's).
    pub fn delete(&self, id: &str) -> Result<bool, QueueError> {
        let n = self
            .conn()
            .execute("DELETE FROM runs WHERE id = ?1", params![id])
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// How many runs are in each state (every state listed).
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        let mut counts: BTreeMap<String, u64> = RunStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT status, count(*) FROM runs GROUP BY status")
            .map_err(self.sql())?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.sql())?;
        for row in rows {
            let (status, n) = row.map_err(self.sql())?;
            counts.insert(status, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    let status: String = r.get("status")?;
    let headline: Option<String> = r.get("headline")?;
    Ok(RunRow {
        id: r.get("id")?,
        name: r.get("name")?,
        description: r.get("description")?,
        // An unknown word (a newer service wrote it) reads as an error state.
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Error),
        pool: r.get("pool")?,
        sweep: r.get("sweep")?,
        submitted_at: r.get("submitted_at")?,
        started_at: r.get("started_at")?,
        finished_at: r.get("finished_at")?,
        error: r.get("error")?,
        dir: r.get("dir")?,
        headline: headline.and_then(|h| serde_json::from_str(&h).ok()),
        plan_toml: r.get("plan_toml")?,
    })
}

/// UTC, RFC 3339 with milliseconds: sorts as text in time order.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `r-YYYYMMDD-HHMMSS-xxxxxx`: sortable, readable, unique enough with six
/// random hex digits (the insert fails on the rare clash).
fn new_id() -> String {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    format!("r-{stamp}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("barrage-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn new_run(name: &str) -> NewRun {
        NewRun {
            name: name.into(),
            description: String::new(),
            pool: "default".into(),
            sweep: false,
            plan_toml: "name = \"x\"\n".into(),
        }
    }

    #[test]
    fn states_survive_reopening_and_terminal_states_do_not_change() {
        let dir = scratch("reopen");
        let q = Queue::open(&dir).expect("open");
        let a = q.insert(new_run("alpha")).expect("insert");
        let b = q.insert(new_run("beta")).expect("insert");
        assert!(q.start(&a.id).expect("start"));
        assert!(
            !q.start(&a.id).expect("start twice"),
            "only a queued run starts"
        );
        drop(q);
        let q = Queue::open(&dir).expect("reopen");
        assert_eq!(
            q.get(&a.id).expect("get").map(|r| r.status),
            Some(RunStatus::Running)
        );
        assert_eq!(
            q.queued()
                .expect("queued")
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>(),
            vec![b.id.clone()]
        );
        assert!(
            q.finish(&b.id, RunStatus::Cancelled, None, None)
                .expect("cancel")
        );
        assert!(
            !q.finish(&b.id, RunStatus::Completed, None, None)
                .expect("finish"),
            "the first end wins"
        );
        assert_eq!(
            q.get(&b.id).expect("get").map(|r| r.status),
            Some(RunStatus::Cancelled)
        );
        let counts = q.counts().expect("counts");
        assert_eq!(
            (counts["running"], counts["cancelled"], counts["completed"]),
            (1, 1, 0)
        );
    }

    #[test]
    fn list_filters_by_name_status_and_date_newest_first() {
        let q = Queue::open(&scratch("list")).expect("open");
        let a = q.insert(new_run("Nightly-8k")).expect("insert");
        let b = q.insert(new_run("smoke")).expect("insert");
        let ids = |f: ListFilter| {
            q.list(&f)
                .expect("list")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(ListFilter::default()), vec![b.id.clone(), a.id.clone()]);
        let by_name = ListFilter {
            name: Some("nightly".into()),
            ..Default::default()
        };
        assert_eq!(ids(by_name), vec![a.id.clone()]);
        q.finish(&b.id, RunStatus::Error, Some("boom"), None)
            .expect("finish");
        let by_status = ListFilter {
            status: Some(RunStatus::Error),
            ..Default::default()
        };
        assert_eq!(ids(by_status), vec![b.id.clone()]);
        let future = ListFilter {
            since: Some("2999-01-01".into()),
            ..Default::default()
        };
        assert!(ids(future).is_empty());
        let past = ListFilter {
            until: Some("2000-01-01".into()),
            ..Default::default()
        };
        assert!(ids(past).is_empty());
    }
}
