//! The live view of a run on a terminal: a progress bar of the stop
//! condition and the last interval's figures, redrawn at every interval.
//!
//! `LiveView` turns events into a `Frame` (pure, unit-tested); `LiveConsole`
//! is the consumer that draws frames on stderr with indicatif and clears the
//! bar when a step ends, so the summary tables print on a clean terminal.
//! Without a terminal the plain per-interval lines are used instead
//! (outputs::defaults chooses).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::events::{Consumer, IntervalEvent, OutputError, RunEvent, StepStart};

/// How many steps a sweep runs, when known from its plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Steps {
    /// A matrix: exactly this many.
    Exactly(usize),
    /// An SLO search: at most this many.
    AtMost(usize),
}

/// The last interval's figures, as shown.
#[derive(Debug, Clone, PartialEq)]
struct Last {
    /// Seconds from the start to the end of the interval.
    t_end_s: f64,
    warmup: bool,
    in_flight: u64,
    ok: u64,
    failed: u64,
    incomplete: u64,
    req_s: f64,
    tok_s: f64,
    ttft_p50_ms: Option<f64>,
    ttft_p99_ms: Option<f64>,
    itl_p50_ms: Option<f64>,
    gpu_util_pct: Option<f64>,
}

/// What one event changed for the terminal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Nothing,
    /// A new frame to draw.
    Redraw,
    /// The step ended: clear the bar.
    StepEnded,
    /// The plan ended: clear everything.
    PlanEnded,
}

/// The state of the live view, fed every event.
#[derive(Debug, Default)]
pub struct LiveView {
    steps: Option<Steps>,
    step: Option<StepStart>,
    last: Option<Last>,
    /// The GPU exporters' latest utilisation reading of this step.
    gpu_util_pct: Option<f64>,
}

/// One screen of the live view.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// "step 3/8 · users=16" in a sweep, else the plan's name.
    pub title: String,
    /// Share of the stop condition reached (0..=1; None: no stop known).
    pub done: Option<f64>,
    /// "12.0/30 s" or "450/1000 requests".
    pub progress: String,
    /// The figures below the bar.
    pub lines: Vec<String>,
}

impl LiveView {
    /// Feeds one event; says what the terminal has to do about it.
    pub fn apply(&mut self, ev: &RunEvent) -> Change {
        match ev {
            RunEvent::PlanStarted(p) => {
                self.steps = p.sweep.then(|| sweep_steps(&p.plan_toml)).flatten();
                Change::Nothing
            }
            RunEvent::StepStarted(s) => {
                self.step = Some(s.clone());
                self.last = None;
                self.gpu_util_pct = None;
                Change::Redraw
            }
            RunEvent::Interval(iv) => {
                let Some(step) = &self.step else {
                    return Change::Nothing;
                };
                self.last = Some(last_of(iv, step.interval_s));
                Change::Redraw
            }
            RunEvent::Monitor(m) => {
                // The exporters' latest reading (live rows carry none); kept
                // until the next, so every frame shows it.
                if m.sample.gpu_util_pct.is_none() {
                    return Change::Nothing;
                }
                self.gpu_util_pct = m.sample.gpu_util_pct;
                Change::Redraw
            }
            RunEvent::Requests(_) | RunEvent::Message(_) => Change::Nothing,
            RunEvent::StepFinished(_) => {
                self.step = None;
                Change::StepEnded
            }
            RunEvent::PlanFinished(_) => Change::PlanEnded,
        }
    }

    /// The screen now; None between steps.
    pub fn frame(&self) -> Option<Frame> {
        let step = self.step.as_ref()?;
        let (done, progress) = progress(step, self.last.as_ref());
        Some(Frame {
            title: self.title(step),
            done,
            progress,
            lines: self.lines(),
        })
    }

    fn title(&self, s: &StepStart) -> String {
        if s.step == 0 {
            return s.name.clone();
        }
        let of = match self.steps {
            Some(Steps::Exactly(n)) => format!("/{n}"),
            Some(Steps::AtMost(n)) => format!("/≤{n}"),
            None => String::new(),
        };
        let load = match (s.users, s.rate) {
            (0, Some(r)) => format!("rate={r}/s"),
            (0, None) => "rate=inf".to_owned(),
            (u, _) => format!("users={u}"),
        };
        format!("step {}{of} · {load}", s.step)
    }

    fn lines(&self) -> Vec<String> {
        let Some(l) = &self.last else {
            return vec!["  waiting for the first interval…".to_owned()];
        };
        let f = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
        };
        let mut counts = format!(
            "  in-flight {} · ok {} · failed {}",
            l.in_flight, l.ok, l.failed
        );
        if l.incomplete > 0 {
            counts.push_str(&format!(" · cut {}", l.incomplete));
        }
        if l.warmup {
            counts.push_str(" · warmup (not counted)");
        }
        let mut latency = format!(
            "  ttft p50 {} / p99 {} ms · itl p50 {} ms",
            f(l.ttft_p50_ms, 1),
            f(l.ttft_p99_ms, 1),
            f(l.itl_p50_ms, 2)
        );
        if let Some(g) = l.gpu_util_pct.or(self.gpu_util_pct) {
            latency.push_str(&format!(" · gpu {g:.0} %"));
        }
        let rates = format!(
            "  last interval: {:.1} req/s · {:.0} out tok/s",
            l.req_s, l.tok_s
        );
        vec![counts, rates, latency]
    }
}

impl Frame {
    /// The frame as the terminal shows it, the bar `width` cells wide.
    pub fn text(&self, width: usize) -> String {
        let filled = self.done.map_or(0, |d| {
            ((d.clamp(0.0, 1.0) * width as f64) as usize).min(width)
        });
        let head = if filled < width && self.done.is_some() {
            ">"
        } else {
            ""
        };
        let mut out = format!(
            "{} [{}{head}{}] {}",
            self.title,
            "=".repeat(filled),
            " ".repeat(width - filled - head.len()),
            self.progress
        );
        for l in &self.lines {
            out.push('\n');
            out.push_str(l);
        }
        out
    }
}

/// The steps of a sweep, from the `[sweep]` table of its plan.
fn sweep_steps(plan_toml: &str) -> Option<Steps> {
    let table: toml::Table = toml::from_str(plan_toml).ok()?;
    let sweep: barrage_common::sweep::SweepSection = table.get("sweep")?.clone().try_into().ok()?;
    Some(match sweep.search {
        Some(_) => Steps::AtMost(sweep.search_max_steps as usize),
        None => Steps::Exactly(sweep.steps().len()),
    })
}

fn last_of(iv: &IntervalEvent, interval_s: f64) -> Last {
    let r = &iv.row;
    let per_s = |n: u64| {
        if interval_s > 0.0 {
            n as f64 / interval_s
        } else {
            0.0
        }
    };
    Last {
        t_end_s: r.t_s + interval_s,
        warmup: r.warmup,
        in_flight: r.in_flight,
        ok: iv.totals.requests_ok,
        failed: iv.totals.requests_failed,
        incomplete: iv.totals.requests_incomplete,
        req_s: per_s(r.requests_ok),
        tok_s: per_s(r.output_tokens),
        ttft_p50_ms: r.ttft_p50_ms,
        ttft_p99_ms: r.ttft_p99_ms,
        itl_p50_ms: r.itl_p50_ms,
        gpu_util_pct: r.monitor.gpu_util_pct,
    }
}

/// Share done and label of the bar: elapsed vs the duration, or requests
/// done vs requested, whichever is nearer its end (it ends the run).
fn progress(s: &StepStart, last: Option<&Last>) -> (Option<f64>, String) {
    let elapsed = last.map_or(0.0, |l| l.t_end_s);
    let done = last.map_or(0, |l| l.ok + l.failed + l.incomplete);
    let by_time = s.duration_s.filter(|d| *d > 0.0).map(|d| {
        let at = elapsed.min(d);
        (at / d, format!("{at:.1}/{d:.0} s"))
    });
    let by_count = s.requests.filter(|n| *n > 0).map(|n| {
        let at = done.min(n);
        (at as f64 / n as f64, format!("{at}/{n} requests"))
    });
    match (by_time, by_count) {
        (Some(t), Some(c)) => {
            let (share, label) = if c.0 > t.0 { c } else { t };
            (Some(share), label)
        }
        (Some((share, label)), None) | (None, Some((share, label))) => (Some(share), label),
        // No stop condition known: the elapsed time alone.
        (None, None) => (None, format!("{elapsed:.1} s")),
    }
}

/// Cells of the progress bar on the terminal.
const BAR_WIDTH: usize = 30;

/// Draws the live view on stderr (a terminal).
pub struct LiveConsole {
    view: LiveView,
    bar: Option<ProgressBar>,
}

impl Default for LiveConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveConsole {
    pub fn new() -> Self {
        Self {
            view: LiveView::default(),
            bar: None,
        }
    }

    fn draw(&mut self) {
        let Some(frame) = self.view.frame() else {
            return;
        };
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            // The whole frame is the message: one update draws it at once
            // (setting position and message apart could show a mix).
            if let Ok(style) = ProgressStyle::with_template("{msg}") {
                bar.set_style(style);
            }
            bar
        });
        bar.set_message(frame.text(BAR_WIDTH));
    }

    /// Removes the bar from the terminal (the summary prints next).
    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Consumer for LiveConsole {
    fn name(&self) -> &'static str {
        "live view"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        if let RunEvent::Message(m) = ev {
            // Printed above the view, which is then drawn again below it.
            match &self.bar {
                Some(bar) => bar.suspend(|| eprintln!("{m}")),
                None => eprintln!("{m}"),
            }
        }
        match self.view.apply(ev) {
            Change::Redraw => self.draw(),
            Change::StepEnded | Change::PlanEnded => self.clear(),
            Change::Nothing => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        self.clear();
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PlanEnd, PlanStart, StepEnd};
    use crate::merge::IntervalRow;
    use barrage_common::metrics::{Counters, Layouts, MetricSet};

    fn plan(sweep: bool, toml: &str) -> RunEvent {
        RunEvent::PlanStarted(PlanStart {
            name: "p".into(),
            dir: PathBuf::from("out"),
            plan_toml: toml.into(),
            started_at: String::new(),
            sweep,
        })
    }

    fn step(step: u32, users: u64, duration_s: Option<f64>, requests: Option<u64>) -> RunEvent {
        RunEvent::StepStarted(StepStart {
            step,
            name: "smoke".into(),
            run_id: "r".into(),
            dir: PathBuf::from("out"),
            plan_toml: String::new(),
            started_at: String::new(),
            interval_s: 1.0,
            duration_s,
            requests,
            users,
            rate: None,
            agents: Vec::new(),
        })
    }

    fn interval(row: IntervalRow, ok_so_far: u64, failed_so_far: u64) -> RunEvent {
        RunEvent::Interval(IntervalEvent {
            step: 0,
            row,
            metrics: MetricSet::new(Layouts::default()).expect("layouts"),
            counters: Counters::default(),
            totals: Counters {
                requests_ok: ok_so_far,
                requests_failed: failed_so_far,
                ..Counters::default()
            },
        })
    }

    /// The pure renderer: the screen after these events.
    fn screen(events: &[RunEvent]) -> Option<Vec<String>> {
        let mut v = LiveView::default();
        for ev in events {
            v.apply(ev);
        }
        v.frame()
            .map(|f| f.text(20).lines().map(str::to_owned).collect())
    }

    #[test]
    fn a_duration_run_shows_elapsed_counts_and_the_last_interval() {
        let mut row = IntervalRow::sample(2);
        row.requests_ok = 25;
        row.output_tokens = 1250;
        row.in_flight = 16;
        row.ttft_p50_ms = Some(12.34);
        row.ttft_p99_ms = Some(40.0);
        row.itl_p50_ms = Some(2.5);
        row.monitor.gpu_util_pct = Some(87.2);
        let lines = screen(&[
            plan(false, ""),
            step(0, 16, Some(10.0), None),
            interval(row, 60, 2),
        ])
        .expect("a frame while the step runs");
        assert_eq!(
            lines,
            [
                "smoke [======>             ] 3.0/10 s",
                "  in-flight 16 · ok 60 · failed 2",
                "  last interval: 25.0 req/s · 1250 out tok/s",
                "  ttft p50 12.3 / p99 40.0 ms · itl p50 2.50 ms · gpu 87 %",
            ]
        );
    }

    #[test]
    fn the_stop_nearer_its_end_drives_the_bar() {
        // 3 s of 60 s, but 900 of 1000 requests: the request budget ends it.
        let lines = screen(&[
            step(0, 4, Some(60.0), Some(1000)),
            interval(IntervalRow::sample(2), 880, 20),
        ])
        .expect("frame");
        assert!(
            lines[0].ends_with("[==================> ] 900/1000 requests"),
            "{}",
            lines[0]
        );
        // No GPU figure when the row carries none.
        assert!(!lines[3].contains("gpu"), "{}", lines[3]);
    }

    #[test]
    fn the_gpu_reading_of_the_monitors_shows_until_the_next() {
        let monitor = RunEvent::Monitor(crate::events::MonitorEvent {
            step: 0,
            t_s: 1.0,
            sample: crate::monitor::IntervalMonitor {
                gpu_util_pct: Some(55.4),
                ..Default::default()
            },
        });
        let base = [
            step(0, 4, Some(60.0), None),
            interval(IntervalRow::sample(0), 10, 0),
        ];
        let without = screen(&base).expect("frame");
        assert!(!without[3].contains("gpu"), "{}", without[3]);
        let mut events: Vec<RunEvent> = base.into_iter().collect();
        events.push(monitor);
        events.push(interval(IntervalRow::sample(1), 20, 0));
        let with = screen(&events).expect("frame");
        assert!(with[3].ends_with(" · gpu 55 %"), "{}", with[3]);
        assert!(with[0].contains("2.0/60 s"), "{}", with[0]);
    }

    #[test]
    fn a_sweep_step_is_numbered_from_its_plan() {
        let toml = "name = \"s\"\n[sweep]\nusers = [1, 4, 16, 64]\n";
        let lines = screen(&[plan(true, toml), step(3, 16, Some(5.0), None)]).expect("frame");
        assert!(
            lines[0].starts_with("step 3/4 · users=16 ["),
            "{}",
            lines[0]
        );
        assert_eq!(lines[1], "  waiting for the first interval…");
        let search = "name = \"s\"\n[sweep]\nsearch = \"users\"\nsearch_max_steps = 8\n";
        let lines = screen(&[plan(true, search), step(2, 8, Some(5.0), None)]).expect("frame");
        assert!(
            lines[0].starts_with("step 2/≤8 · users=8 ["),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn the_view_clears_when_a_step_and_the_plan_end() {
        let mut v = LiveView::default();
        assert_eq!(v.apply(&step(0, 1, Some(1.0), None)), Change::Redraw);
        let summary = crate::report::Summary::build(
            crate::report::RunFacts {
                name: "smoke".into(),
                run_id: "r".into(),
                started_at: String::new(),
                target: String::new(),
                api: String::new(),
                status: "completed".into(),
                duration_s: 1.0,
                users: 1,
                streamed: true,
            },
            &MetricSet::new(Layouts::default()).expect("layouts"),
            &Counters::default(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let end = RunEvent::StepFinished(Box::new(StepEnd {
            step: 0,
            summary,
            verdict: crate::run::Verdict::Completed,
            dir: PathBuf::from("out"),
            plan_toml: String::new(),
        }));
        assert_eq!(v.apply(&end), Change::StepEnded);
        assert!(v.frame().is_none(), "nothing drawn between steps");
        let done = RunEvent::PlanFinished(PlanEnd {
            verdict: crate::run::Verdict::Completed,
            dir: PathBuf::from("out"),
            sweep: None,
        });
        assert_eq!(v.apply(&done), Change::PlanEnded);
    }
}
