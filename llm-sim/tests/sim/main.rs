//! Integration tests of llm-sim over real HTTP on 127.0.0.1 (one test binary,
//! one module per area). Every test is bounded in time; the ones with tight
//! timing assertions run alone ([`timed`]) and check timing with
//! `ensure!`, retried a few times against scheduler noise.

/// A timing check inside a [`timed`] attempt.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let ok: bool = $cond;
        if !ok {
            return Err(format!($($fmt)+));
        }
    };
}

use std::future::Future;
use std::time::Duration;

/// Tests with tight timing assertions hold this exclusively (see [`timed`]);
/// every other test holds it shared (see [`bounded`]), so a timed test never
/// shares the machine with another test of this binary.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const BOUND: Duration = Duration::from_secs(30);

/// Runs a test body under a time bound, beside other untimed tests.
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    let _shared = MACHINE.read().await;
    tokio::time::timeout(BOUND, body)
        .await
        .expect("test exceeded its time bound")
}

/// Runs a timing test under a time bound, alone, with [`retry`].
pub async fn timed<F, Fut>(attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let _alone = MACHINE.write().await;
    tokio::time::timeout(BOUND, retry(attempt))
        .await
        .expect("test exceeded its time bound")
}

/// Runs a timing check up to 5 times. The server's deadlines are exact, but
/// on a busy 2-core machine (parallel builds) the OS may delay one attempt's
/// threads by a few ms; an exact server passes at least one attempt, a biased
/// one fails them all.
pub async fn retry<F, Fut>(mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut failures = Vec::new();
    for _ in 0..5 {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                println!("timing attempt failed: {e}");
                failures.push(e);
            }
        }
    }
    panic!("every timing attempt failed: {failures:#?}");
}

mod control;
mod counting;
mod faults;
mod ollama;
mod prefix;
mod shapes;
mod soak;
mod support;
mod timing;
