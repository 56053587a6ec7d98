//! Command-line interface of the `controller` binary and its entry point.
//! `controller run` takes a plan file, flags for the common keys (a quick
//! command without a file, EvalScope-style), or both (flags override the
//! file); `--print-plan` shows the resulting plan as TOML.

use std::path::{Path, PathBuf};

use barrage_common::plan::{self, PlanError, PlanFile};
use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::{Format, Toml};
use tokio_util::sync::CancellationToken;

use crate::run::RunOptions;
use crate::sweep::{PlanOutcome, execute_plan};

/// Exit status for a plan that cannot run (bad key, file, value).
pub const EXIT_BAD_PLAN: i32 = 2;
/// Exit status for a run that failed to set up or broke down.
pub const EXIT_FAILED: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "controller",
    version,
    about = "barrage controller: load tests for LLM inference services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the run's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test plan (TOML) and/or the flags below. BARRAGE_SECTION__KEY
    /// environment variables override plan keys; flags override both.
    Run(RunArgs),
    /// Rebuild every file of a results folder from its results.sqlite.
    Report {
        /// The results folder (of a run, or of a sweep).
        dir: PathBuf,
    },
    /// Compare results folders (runs or sweeps) side by side: prints the
    /// headline figures with the change against the first, and writes
    /// compare.html with their curves overlaid.
    Compare(CompareArgs),
    /// Serve the REST API, the run queue and the web dashboard
    /// (docs/service.md).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --token-env only loopback is allowed.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The service's data folder: the run queue (service.sqlite) and every
    /// run's results.
    #[arg(long, default_value = "barrage-data")]
    pub data: PathBuf,
    /// Environment variable holding the API token (Bearer, or the login
    /// form). Never the token itself.
    #[arg(long)]
    pub token_env: Option<String>,
    /// Runs at once in a pool, as NAME=N (repeatable; any pool: 1).
    #[arg(long = "pool", value_name = "NAME=N")]
    pub pools: Vec<String>,
    /// Largest plan or batch upload, in bytes.
    #[arg(long, default_value_t = crate::service::MAX_UPLOAD)]
    pub max_upload: usize,
}

impl ServeArgs {
    /// The service's configuration; the error names the flag.
    pub fn config(&self) -> Result<crate::service::ServeConfig, String> {
        let token = match &self.token_env {
            Some(var) => Some(
                barrage_common::auth::Token::from_env(var)
                    .map_err(|e| format!("--token-env: {e}"))?,
            ),
            None => None,
        };
        let mut pools = std::collections::BTreeMap::new();
        for p in &self.pools {
            let parsed = p
                .split_once('=')
                .and_then(|(name, n)| Some((name.trim(), n.trim().parse::<usize>().ok()?)))
                .filter(|(name, n)| !name.is_empty() && *n > 0);
            let Some((name, n)) = parsed else {
                return Err(format!("--pool {p:?}: expected NAME=N with N >= 1"));
            };
            pools.insert(name.to_owned(), n);
        }
        Ok(crate::service::ServeConfig {
            listen: self.listen,
            data: self.data.clone(),
            token,
            pools,
            max_upload: self.max_upload,
        })
    }
}

/// `controller serve`: 0 after a clean stop (Ctrl-C, SIGTERM), 2 for bad
/// flags, 1 when it cannot start.
async fn serve(args: &ServeArgs) -> i32 {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_PLAN;
        }
    };
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        if stop_signal().await {
            s.cancel();
        }
    });
    match crate::service::serve(cfg, stop).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Results folders: the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long, default_value = crate::compare::COMPARE_HTML)]
    pub html: PathBuf,
}

/// `controller compare`: 0, or 2 when a folder is not a results folder.
fn compare(args: &CompareArgs) -> i32 {
    match crate::compare::run(&args.dirs, &args.html) {
        Ok(text) => {
            println!("{text}");
            println!("Wrote {}", args.html.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                crate::compare::CompareError::Write { .. } => EXIT_FAILED,
                _ => EXIT_BAD_PLAN,
            }
        }
    }
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// The plan file (optional when --url or --simulator is given).
    pub plan: Option<PathBuf>,
    /// Write results below this folder instead of [output] dir.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// No per-interval progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print the plan these flags and files make, as TOML, and exit.
    #[arg(long)]
    pub print_plan: bool,
    /// Log every request and response (bodies truncated; keys and header values never).
    #[arg(long)]
    pub debug: bool,
    /// target.url: the endpoint, or host:port.
    #[arg(long)]
    pub url: Option<String>,
    /// Use the built-in simulator as the target (its [simulator] defaults).
    #[arg(long, conflicts_with = "url")]
    pub simulator: bool,
    /// target.model
    #[arg(long)]
    pub model: Option<String>,
    /// target.api: openai-chat | openai-completions | ollama-generate | ollama-chat
    #[arg(long)]
    pub api: Option<String>,
    /// target.api_key_env: the environment variable holding the API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// target.stream
    #[arg(long)]
    pub stream: Option<bool>,
    /// target.headers, as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// load.users (closed-loop concurrency).
    #[arg(long, visible_alias = "parallel")]
    pub users: Option<u64>,
    /// load.requests (total requests).
    #[arg(long, visible_alias = "number")]
    pub requests: Option<u64>,
    /// load.rate: requests per second, or inf (open loop).
    #[arg(long)]
    pub rate: Option<String>,
    /// load.duration ("5m").
    #[arg(long)]
    pub duration: Option<String>,
    /// load.spawn_rate (users per second).
    #[arg(long)]
    pub spawn_rate: Option<f64>,
    /// load.drain: how long in-flight requests may finish after `duration` ("30s"; "0s" cuts at once).
    #[arg(long)]
    pub drain: Option<String>,
    /// dataset.kind
    #[arg(long)]
    pub dataset: Option<String>,
    /// dataset.path
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// dataset.tokenizer (an HF tokenizer.json).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// request.max_tokens
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// cluster.agents, comma separated host:port.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// cluster.token_env: the environment variable holding the agents' token.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
}

fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_owned(), value);
            return;
        }
        let next = cur
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = next else { return };
        cur = t;
    }
}

impl RunArgs {
    /// The flags as a TOML table of plan keys.
    pub fn overrides(&self) -> Result<toml::Table, PlanError> {
        let mut t = toml::Table::new();
        let s = |v: &str| toml::Value::String(v.to_owned());
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        if let Some(v) = &self.url {
            set(&mut t, "target.url", s(v));
        }
        if self.simulator {
            set(&mut t, "simulator", toml::Value::Table(toml::Table::new()));
        }
        if let Some(v) = &self.model {
            set(&mut t, "target.model", s(v));
        }
        if let Some(v) = &self.api {
            set(&mut t, "target.api", s(v));
        }
        if let Some(v) = &self.api_key_env {
            set(&mut t, "target.api_key_env", s(v));
        }
        if let Some(v) = self.stream {
            set(&mut t, "target.stream", toml::Value::Boolean(v));
        }
        for h in &self.headers {
            let Some((name, value)) = h.split_once('=') else {
                return Err(PlanError::Invalid {
                    key: "--header".into(),
                    problem: format!("{h:?} is not NAME=VALUE"),
                });
            };
            set(&mut t, &format!("target.headers.{}", name.trim()), s(value));
        }
        if let Some(v) = self.users {
            set(
                &mut t,
                "load.users",
                toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        if let Some(v) = self.requests {
            set(
                &mut t,
                "load.requests",
                toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        if let Some(v) = &self.rate {
            let value = match v.parse::<f64>() {
                Ok(r) if r.is_finite() => toml::Value::Float(r),
                _ => s(v),
            };
            set(&mut t, "load.rate", value);
        }
        if let Some(v) = &self.duration {
            set(&mut t, "load.duration", s(v));
        }
        if let Some(v) = self.spawn_rate {
            set(&mut t, "load.spawn_rate", toml::Value::Float(v));
        }
        if let Some(v) = &self.drain {
            set(&mut t, "load.drain", s(v));
        }
        if let Some(v) = &self.dataset {
            set(&mut t, "dataset.kind", s(v));
        }
        if let Some(v) = &self.dataset_path {
            set(&mut t, "dataset.path", path(v));
        }
        if let Some(v) = &self.tokenizer {
            set(&mut t, "dataset.tokenizer", path(v));
        }
        if let Some(v) = self.max_tokens {
            set(
                &mut t,
                "request.max_tokens",
                toml::Value::Integer(i64::from(v)),
            );
        }
        if !self.agents.is_empty() {
            set(
                &mut t,
                "cluster.agents",
                toml::Value::Array(self.agents.iter().map(|a| s(a)).collect()),
            );
        }
        if let Some(v) = &self.token_env {
            set(&mut t, "cluster.token_env", s(v));
        }
        if let Some(v) = &self.output {
            set(&mut t, "output.dir", path(v));
        }
        Ok(t)
    }

    /// The plan: file (if any), then `BARRAGE_*` env, then flags.
    pub fn plan(&self) -> Result<PlanFile, PlanError> {
        let mut overrides = self.overrides()?;
        let mut fig = match &self.plan {
            Some(p) => {
                std::fs::metadata(p).map_err(|e| PlanError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                plan::figment_for(p)
            }
            None => {
                if !(overrides.contains_key("target") || overrides.contains_key("simulator")) {
                    return Err(PlanError::Invalid {
                        key: "target.url".into(),
                        problem: "give a plan file, or --url (or --simulator) and the load flags"
                            .into(),
                    });
                }
                // A quick command: one user unless told otherwise.
                let load = overrides.get("load").and_then(toml::Value::as_table);
                if !load.is_some_and(|l| l.contains_key("users") || l.contains_key("rate")) {
                    set(&mut overrides, "load.users", toml::Value::Integer(1));
                }
                Figment::new().merge(plan::env_overrides())
            }
        };
        let text = toml::to_string(&overrides).map_err(|e| PlanError::Parse(e.to_string()))?;
        // A rate flag turns a closed-loop plan file into an open-loop one.
        if self.rate.is_some() && self.users.is_none() {
            fig = fig.merge(Toml::string("[load]\nmode = \"rate\"\n"));
        }
        let mut p: PlanFile = fig
            .merge(Toml::string(&text))
            .extract()
            .map_err(|e| PlanError::Parse(e.to_string()))?;
        if self.rate.is_some() && self.users.is_none() {
            p.load.users = None;
        }
        if self.users.is_some() && self.rate.is_none() && p.load.rate.is_some() {
            p.load.rate = None;
            p.load.mode = None;
        }
        p.validate()?;
        Ok(p)
    }
}

/// Runs the CLI; returns the process exit status.
pub async fn main(cli: Cli) -> i32 {
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Report { dir } => return crate::store::report_command(&dir),
        Command::Compare(c) => return compare(&c),
        Command::Serve(s) => return serve(&s).await,
    };
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_PLAN;
        }
    };
    if args.print_plan {
        return match barrage_common::redact::plan_for_display(&plan).to_toml() {
            Ok(t) => {
                print!("{t}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        };
    }
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if stop_signal().await {
            c.cancel();
        }
    });
    let opts = RunOptions {
        plan_dir: args
            .plan
            .as_ref()
            .and_then(|p| p.parent())
            .map(PathBuf::from),
        progress: !args.quiet,
        ..RunOptions::default()
    };
    match execute_plan(plan, opts, cancel).await {
        Ok(PlanOutcome::Single(outcome)) => {
            println!("{}", crate::report::render(&outcome.summary));
            println!("Results: {}", outcome.dir.display());
            outcome.verdict.exit_code()
        }
        Ok(PlanOutcome::Sweep(outcome)) => {
            println!("{}", crate::sweep::render(&outcome.report));
            println!("Results: {}", outcome.dir.display());
            outcome.verdict.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                crate::run::RunError::Dataset(_)
                | crate::run::RunError::Trace(_)
                | crate::run::RunError::Tls(_)
                | crate::run::RunError::Plan(_) => EXIT_BAD_PLAN,
                _ => EXIT_FAILED,
            }
        }
    }
}

/// Waits for Ctrl-C, or SIGTERM (what Kubernetes and systemd send to stop a
/// job): both stop every agent and still write what was measured. False
/// when no signal can be listened for.
async fn stop_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                t = term.recv() => t.is_some(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still stops the run");
                tokio::signal::ctrl_c().await.is_ok()
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> RunArgs {
        let cli = Cli::parse_from(
            std::iter::once("controller")
                .chain(std::iter::once("run"))
                .chain(a.iter().copied()),
        );
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        r
    }

    #[test]
    fn plan_free_flags_make_a_plan() {
        let p = args(&[
            "--url",
            "http://127.0.0.1:8000",
            "--parallel",
            "8",
            "--number",
            "100",
            "--header",
            "X-A=b",
            "--max-tokens",
            "32",
        ])
        .plan()
        .expect("valid");
        assert_eq!(p.load.users, Some(8));
        assert_eq!(p.load.requests, Some(100));
        assert_eq!(p.target.headers.get("X-A").map(String::as_str), Some("b"));
        assert_eq!(p.request.max_tokens, 32);
    }

    #[test]
    fn drain_flag_sets_the_drain_and_a_bad_one_names_the_key() {
        let p = args(&["--simulator", "--duration", "5s", "--drain", "2s"])
            .plan()
            .expect("valid");
        assert_eq!(p.load.drain, Some(std::time::Duration::from_secs(2)));
        let e = args(&["--simulator", "--duration", "5s", "--drain", "soon"])
            .plan()
            .expect_err("not a duration");
        assert!(e.to_string().contains("drain"), "{e}");
    }

    #[test]
    fn rate_flag_makes_open_loop_and_bad_flags_name_the_key() {
        let p = args(&["--simulator", "--rate", "5", "--duration", "10s"])
            .plan()
            .expect("valid");
        assert!(p.load.open_loop());
        let e = args(&["--url", "http://x:1", "--users", "0", "--requests", "1"])
            .plan()
            .expect_err("zero users");
        assert!(e.to_string().contains("load.users"), "{e}");
        let e = args(&["--users", "1"]).plan().expect_err("no target");
        assert!(e.to_string().contains("target.url"), "{e}");
    }

    #[test]
    fn printed_plan_round_trips() {
        let p = args(&["--simulator", "--users", "3", "--requests", "9"])
            .plan()
            .expect("valid");
        let text = p.to_toml().expect("toml");
        let back = plan::from_figment(Figment::new().merge(Toml::string(&text))).expect("reparse");
        assert_eq!(back, p);
    }
}
