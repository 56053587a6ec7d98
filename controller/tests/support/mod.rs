//! Helpers for the controller's integration tests: plans from TOML text,
//! temporary result folders, and bounded waits.

use std::path::PathBuf;
use std::time::Duration;

use barrage_common::plan::{self, PlanFile};
use figment::Figment;
use figment::providers::{Format, Toml};

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
