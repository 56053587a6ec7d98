//! A fleet of simulated agents (real gRPC on loopback, the fleet_bench's
//! fakes) with one killed mid-run and one whose intervals arrive late: the
//! merge stays exact for everything that arrived, rows keep settling, and
//! the run ends degraded naming the lost agent.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use barrage_controller::events::{Consumer, OutputError, RunEvent};
use barrage_controller::run::{RunOptions, Verdict, execute_with};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, plan_from, scratch};

#[path = "../examples/bench_support/fleet_agent.rs"]
mod fakes;

use fakes::data::{Pool, Traffic};
use fakes::{Fault, Fleet};

/// When each settled row reached the outputs.
struct Rows(Arc<Mutex<Vec<(u64, Instant)>>>);

impl Consumer for Rows {
    fn name(&self) -> &'static str {
        "rows"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        if let RunEvent::Interval(iv) = ev {
            let mut rows = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            rows.push((iv.row.index, Instant::now()));
        }
        Ok(())
    }
}

fn plan(addrs: &[std::net::SocketAddr], seconds: u64) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
        name = "fleet"
        [target]
        url = "http://127.0.0.1:9/v1/chat/completions"
        [dataset]
        input_tokens = 8
        prompts = 2
        [load]
        users = {users}
        duration = "{seconds}s"
        [cluster]
        agents = [{agents}]
        [output]
        dir = "{out}"
        "#,
        users = addrs.len(),
        agents = list.join(", "),
        out = scratch("fleet").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_that_loses_an_agent_and_waits_for_a_slow_one_merges_exactly() {
    let _serial = LOAD.lock().await;
    let seconds = 8;
    let mut faults = vec![Fault::None; 10];
    faults[3] = Fault::Lose(Duration::from_millis(3500));
    faults[7] = Fault::Slow(Duration::from_millis(1500));
    let pool = Arc::new(Pool::generate(Traffic::chat(200), 4, 1.0));
    let fleet = Fleet::start(pool, 200, &faults).await.expect("fleet");
    let rows = Arc::new(Mutex::new(Vec::new()));
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        execute_with(
            plan_from(&plan(&fleet.addrs, seconds)),
            RunOptions::default(),
            CancellationToken::new(),
            vec![Box::new(Rows(rows.clone()))],
        ),
    )
    .await
    .expect("bounded")
    .expect("run");
    fleet.shutdown();
    let s = &outcome.summary;
    assert_eq!(outcome.verdict, Verdict::Degraded, "{:?}", s.notes);
    let problems = fakes::exactness(&fleet, s);
    assert!(problems.is_empty(), "{problems:#?}");
    let lost: Vec<&str> = s
        .agents
        .iter()
        .filter(|a| a.lost.is_some())
        .map(|a| a.addr.as_str())
        .collect();
    assert_eq!(lost, vec![fleet.addrs[3].to_string()]);
    let rows = rows.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let indexes: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        indexes,
        (0..seconds).collect::<Vec<_>>(),
        "one row per interval, in order"
    );
    // The wait for the dead agent is bounded by its lease, then rows flow.
    let longest = rows
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default();
    let bound = barrage_controller::link::LEASE + Duration::from_secs(2);
    assert!(
        longest <= bound,
        "rows paused {longest:?} (bound {bound:?})"
    );
}
