//! Multi-turn runs in the summary: how conversations ended, and TTFT,
//! e2e and input tokens by turn index (summary.json, summary.txt and the
//! console; report.html draws the same table from summary.json).

use std::fmt::Write as _;

use barrage_common::metrics::Metric;
use barrage_common::turns::TurnSets;
use serde::{Deserialize, Serialize};

use crate::report::Distribution;

/// Conversations replayed turn by turn: how they ended, and TTFT, e2e and
/// input tokens by turn index (turn 1 against later turns shows the
/// server's prefix cache).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationsReport {
    pub started: u64,
    /// Every turn answered.
    pub completed: u64,
    /// Ended by a failed turn.
    pub abandoned: u64,
    /// Cut by the end of the run, a stop or the request budget.
    pub cut: u64,
    pub turns: Vec<TurnReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TurnReport {
    /// 1-based; the last bucket (`last_bucket`) also holds every later turn.
    pub turn: u32,
    pub last_bucket: bool,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub ttft: Distribution,
    pub e2e: Distribution,
    pub input_tokens: Distribution,
}

impl ConversationsReport {
    pub fn of(c: &barrage_common::metrics::ConversationCounts, turns: &TurnSets) -> Self {
        Self {
            started: c.started,
            completed: c.completed,
            abandoned: c.abandoned,
            cut: c.cut,
            turns: turns
                .iter()
                .map(|(turn, t)| TurnReport {
                    turn,
                    last_bucket: turn == barrage_common::turns::LAST_TURN_BUCKET,
                    requests_ok: t.requests_ok,
                    requests_failed: t.requests_failed,
                    ttft: Distribution::of(Metric::Ttft, &t.ttft),
                    e2e: Distribution::of(Metric::E2e, &t.e2e),
                    input_tokens: Distribution::of(Metric::InputTokens, &t.input_tokens),
                })
                .collect(),
        }
    }
}

fn ms(d: &Distribution, p: &str) -> String {
    d.percentiles
        .get(p)
        .map_or("–".into(), |v| format!("{v:.1}"))
}

fn mean(d: &Distribution) -> String {
    d.mean.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The turn index as shown: "3", or "32+" for the last bucket.
pub fn label(t: &TurnReport) -> String {
    if t.last_bucket {
        format!("{}+", t.turn)
    } else {
        t.turn.to_string()
    }
}

/// The conversations line and the per-turn table of summary.txt.
pub fn render(out: &mut String, c: &ConversationsReport) {
    let _ = writeln!(
        out,
        "\n  Conversations: {} started, {} completed, {} abandoned (a turn failed), {} cut (run ended)",
        c.started, c.completed, c.abandoned, c.cut
    );
    if c.turns.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:>5} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "turn", "ok", "failed", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99", "input mean"
    );
    for t in &c.turns {
        let _ = writeln!(
            out,
            "  {:>5} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>12}",
            label(t),
            t.requests_ok,
            t.requests_failed,
            ms(&t.ttft, "p50"),
            ms(&t.ttft, "p99"),
            ms(&t.e2e, "p50"),
            ms(&t.e2e, "p99"),
            mean(&t.input_tokens),
        );
    }
    let _ = writeln!(
        out,
        "  (latencies in ms; input tokens per turn, history included)"
    );
}
