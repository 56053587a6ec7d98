//! The tables of results.sqlite (schema version 1, documented in
//! docs/results.md). Times in the `requests` table are µs; offsets are from
//! the step's agreed start.

/// Bumped on any change a reader would notice; `controller report` refuses
/// a store of a newer version.
pub const SCHEMA_VERSION: i64 = 1;

pub const DDL: &str = r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The plan run: one row.
CREATE TABLE plan (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    dir TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    started_at TEXT NOT NULL,
    sweep INTEGER NOT NULL,
    verdict TEXT,
    sweep_report TEXT
);
-- One row per step (step 0: a plain run).
CREATE TABLE steps (
    step INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    dir TEXT NOT NULL,
    plan_toml TEXT NOT NULL,
    started_at TEXT NOT NULL,
    interval_s REAL NOT NULL,
    users INTEGER NOT NULL,
    rate REAL,
    duration_s REAL,
    requests INTEGER,
    layouts TEXT,
    status TEXT,
    verdict TEXT,
    summary TEXT
);
CREATE TABLE agents (
    step INTEGER NOT NULL,
    agent INTEGER NOT NULL,
    id TEXT NOT NULL,
    addr TEXT NOT NULL,
    users INTEGER NOT NULL,
    share REAL NOT NULL,
    PRIMARY KEY (step, agent)
);
-- The merged timeline as it arrived; histograms: a protobuf
-- barrage.agent.v1.Interval (HdrHistogram V2+DEFLATE per metric with exact
-- count/sum/min/max, and the interval's counters).
CREATE TABLE intervals (
    step INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    warmup INTEGER NOT NULL,
    t_s REAL NOT NULL,
    agents_reporting INTEGER NOT NULL,
    requests_ok INTEGER NOT NULL,
    requests_failed INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    ttft_p50_ms REAL,
    ttft_p99_ms REAL,
    itl_p50_ms REAL,
    itl_p99_ms REAL,
    e2e_p50_ms REAL,
    e2e_p99_ms REAL,
    max_agent_cpu_percent REAL NOT NULL,
    max_agent_cpu_share REAL NOT NULL,
    max_scheduler_lag_ms REAL NOT NULL,
    in_flight INTEGER NOT NULL,
    monitor TEXT NOT NULL,
    histograms BLOB NOT NULL,
    counters TEXT NOT NULL,
    totals TEXT NOT NULL
);
CREATE INDEX intervals_step ON intervals (step, idx);
-- One row per request that ended. chunk_gaps: little-endian u32 µs each.
CREATE TABLE requests (
    step INTEGER NOT NULL,
    agent INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    user INTEGER NOT NULL,
    prompt_index INTEGER NOT NULL,
    intended_offset_us INTEGER,
    start_offset_us INTEGER NOT NULL,
    ttft_us INTEGER,
    ttfo_us INTEGER,
    e2e_us INTEGER,
    tpot_us REAL,
    chunk_gap_mean_us REAL,
    chunk_gap_p50_us INTEGER,
    chunk_gap_max_us INTEGER,
    chunks INTEGER NOT NULL,
    chunk_gaps BLOB,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    input_source TEXT NOT NULL,
    output_source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error_class TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    error TEXT NOT NULL,
    warmup INTEGER NOT NULL,
    prompt TEXT,
    response TEXT,
    conversation INTEGER NOT NULL DEFAULT 0,
    turn INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX requests_step ON requests (step, agent, seq);
CREATE INDEX requests_outcome ON requests (step, outcome);
-- GPU, host and scraped server metrics per interval (attached at step end).
CREATE TABLE monitor (
    step INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    t_s REAL NOT NULL,
    gpu_util_pct REAL,
    gpu_mem_pct REAL,
    gpu_power_w REAL,
    host_cpu_pct REAL,
    values_json TEXT NOT NULL,
    PRIMARY KEY (step, idx)
);
CREATE TABLE notes (
    step INTEGER NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX notes_step ON notes (step);
"#;
