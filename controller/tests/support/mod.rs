//! Helpers for the controller's integration tests: plans from TOML text,
//! temporary result folders, bounded waits, simulators, the `controller`
//! binary, and word-level tokenizers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use barrage_common::plan::{self, PlanFile};
use barrage_common::simulator::SimConfig;
use barrage_llm_sim::SimServer;
use figment::Figment;
use figment::providers::{Format, Toml};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

/// A fresh folder under the target dir (no external temp crate needed).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn plan_from(text: &str) -> PlanFile {
    plan::from_figment(Figment::new().merge(Toml::string(text))).expect("valid plan")
}

/// Every test is bounded in time.
pub const TEST_LIMIT: Duration = Duration::from_secs(90);

/// Tests that generate load hold this, so a timing assertion never competes
/// with another test's load for this machine's cores.
pub static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a plan given as TOML text through `execute`, bounded by
/// `TEST_LIMIT`; a run that errors fails the test.
pub async fn run_text(
    text: &str,
    opts: barrage_controller::run::RunOptions,
) -> barrage_controller::run::RunOutcome {
    tokio::time::timeout(
        TEST_LIMIT,
        barrage_controller::run::execute(
            plan_from(text),
            opts,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("bounded")
    .expect("run")
}

/// An llm-sim on an ephemeral loopback port.
pub async fn sim_with(cfg: SimConfig) -> SimServer {
    SimServer::spawn(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("sim")
}

/// The `controller` binary.
pub fn controller() -> Command {
    Command::new(env!("CARGO_BIN_EXE_controller"))
}

/// Runs `cmd` to its end off the async threads; its output.
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("spawn controller")
}

/// Runs `controller run PLAN --quiet` with `env` on a plan text aimed at a
/// live simulator (`SIM_URL` in the text is its URL, `OUT` is `dir/out`),
/// the plan written to `dir`; returns (status, stderr, requests the
/// simulator saw).
pub async fn run_binary_with(
    dir: &Path,
    body: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, u64) {
    let _serial = LOAD.lock().await;
    let sim = sim_with(SimConfig::default()).await;
    let plan = dir.join("plan.toml");
    let text = body
        .replace("SIM_URL", &format!("http://{}", sim.addr()))
        .replace("OUT", &dir.join("out").display().to_string());
    std::fs::write(&plan, text).expect("write plan");
    let mut cmd = controller();
    cmd.envs(env.iter().copied())
        .arg("run")
        .arg(&plan)
        .arg("--quiet");
    let out = output(cmd).await;
    let seen = sim.stats().requests;
    sim.shutdown().await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        seen,
    )
}

/// A word-level tokenizer: one token per whitespace-separated word, ids in
/// the order of `words`, which must hold `[UNK]` for any other word.
pub fn word_level_tokenizer<S: Into<String>>(words: impl IntoIterator<Item = S>) -> Tokenizer {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for w in words {
        vocab.insert(w.into(), vocab.len() as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .expect("word level");
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(WhitespaceSplit));
    t
}
/// The body of one HTTP/1.1 request (headers, then a content-length
/// body); empty when the peer closed first. For the test servers.
pub async fn read_http_body(sock: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::io::AsyncReadExt::read(sock, &mut chunk).await?;
        if n == 0 {
            return Ok(Vec::new());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return Ok(buf[end + 4..end + 4 + len].to_vec());
        }
    }
}

pub mod service;
