//! The `[load]` table: how traffic is shaped. Closed loop (users who send
//! their next request when the last ends), open loop (arrivals at a rate,
//! constant, Poisson or gamma, optionally capped in concurrency), or stages
//! (k6-style piecewise-linear ramps of users or rate).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// Closed loop: `users` each send their next request when the last ends.
    Concurrency,
    /// Open loop: requests arrive at `rate` per second whatever the server does.
    Rate,
    /// A list of stages, each ramping users or rate to its target.
    Stages,
    /// Replay a timestamped request log at its own timing (or time-scaled).
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ArrivalKind {
    /// Exponential gaps (the default of vLLM's bench serve).
    #[default]
    Poisson,
    /// Equal gaps.
    Constant,
    /// Gamma gaps with shape `burstiness` (vLLM's meaning: < 1 burstier, 1 = Poisson).
    Gamma,
}

/// A rate: requests per second, or "inf" (everything at the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RateValue {
    PerSecond(f64),
    Text(String),
}

impl RateValue {
    /// `None` for "inf".
    pub fn per_second(&self) -> Result<Option<f64>, String> {
        match self {
            RateValue::PerSecond(r) if r.is_finite() && *r > 0.0 => Ok(Some(*r)),
            // TOML's own `inf` float means the same as "inf".
            RateValue::PerSecond(r) if r.is_infinite() && *r > 0.0 => Ok(None),
            RateValue::PerSecond(_) => {
                Err("must be a number > 0 (requests per second) or \"inf\"".into())
            }
            RateValue::Text(t) if t.eq_ignore_ascii_case("inf") => Ok(None),
            RateValue::Text(t) => Err(format!("{t:?} is not a rate: give a number or \"inf\"")),
        }
    }
}

/// One stage: ramp linearly from the previous target (0 at the start) to this
/// one over `duration`. Repeat a target to hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub users: Option<u64>,
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadSection {
    /// Absent: `stages` if given, else `rate` if given, else `concurrency`.
    pub mode: Option<LoadMode>,
    /// Concurrency: closed-loop users.
    pub users: Option<u64>,
    /// Concurrency: users started per second; absent = all at once.
    pub spawn_rate: Option<f64>,
    /// Rate: requests per second, or "inf".
    pub rate: Option<RateValue>,
    /// Rate and rate stages: arrival process.
    #[serde(default)]
    pub arrival: ArrivalKind,
    /// Gamma arrivals: shape (default 1 = Poisson).
    pub burstiness: Option<f64>,
    /// Rate: most requests in flight at once (arrivals beyond it wait, and
    /// their wait shows as `schedule_lag`).
    pub max_concurrency: Option<u64>,
    /// Stages: the profile.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Total requests to start across all users and agents.
    pub requests: Option<u64>,
    /// Multi-turn (`[conversation]`): total conversations to start across
    /// all users and agents; each runs all its turns.
    pub conversations: Option<u64>,
    /// Excluded from the statistics, shown in the time series.
    #[serde(default, with = "humantime_serde")]
    pub warmup: Option<Duration>,
    /// End of a duration run: how long requests in flight may still finish
    /// (and count) before they are cut; absent: the target's timeout, at
    /// most 30 s. "0s" cuts them at once.
    #[serde(default, with = "humantime_serde")]
    pub drain: Option<Duration>,
    /// Trace: a JSONL file of `{timestamp, input_tokens, output_tokens, prompt?}`.
    pub trace: Option<std::path::PathBuf>,
    /// Trace: gaps are multiplied by this (0.5 replays twice as fast). Default 1.
    pub time_scale: Option<f64>,
    /// Trace: unit of `timestamp`, "ms" (default) or "s".
    pub trace_time_unit: Option<String>,
}

type Problem = (&'static str, String);

fn problem(key: &'static str, what: impl Into<String>) -> Result<(), Problem> {
    Err((key, what.into()))
}

impl LoadSection {
    pub fn mode(&self) -> LoadMode {
        self.mode.unwrap_or(if self.trace.is_some() {
            LoadMode::Trace
        } else if !self.stages.is_empty() {
            LoadMode::Stages
        } else if self.rate.is_some() {
            LoadMode::Rate
        } else {
            LoadMode::Concurrency
        })
    }

    /// True when stages ramp users (closed loop), false when they ramp a rate.
    pub fn stages_are_users(&self) -> bool {
        self.stages.first().is_some_and(|s| s.users.is_some())
    }

    /// Whether the traffic is open loop (arrivals) rather than users.
    pub fn open_loop(&self) -> bool {
        match self.mode() {
            LoadMode::Concurrency => false,
            LoadMode::Rate | LoadMode::Trace => true,
            LoadMode::Stages => !self.stages_are_users(),
        }
    }

    /// Total length of the stages.
    pub fn stages_duration(&self) -> Duration {
        // Saturating: limits::check refuses the overflow with its key.
        self.stages
            .iter()
            .fold(Duration::ZERO, |t, s| t.saturating_add(s.duration))
    }

    /// When the step ends by time: `duration`, else the stages' length.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.mode()) {
            (Some(d), _) => Some(d),
            (None, LoadMode::Stages) => Some(self.stages_duration()),
            (None, _) => None,
        }
    }

    /// The drain of a duration run: `drain`, else the target's timeout
    /// capped at 30 s (k6's `gracefulStop` is 30 s too).
    pub fn drain_or(&self, target_timeout: Duration) -> Duration {
        self.drain
            .unwrap_or_else(|| target_timeout.min(Duration::from_secs(30)))
    }

    /// The most users this load can have (for splitting and the report):
    /// users, the peak of user stages, or 0 for open loop.
    pub fn peak_users(&self) -> u64 {
        match self.mode() {
            LoadMode::Concurrency => self.users.unwrap_or(0),
            LoadMode::Stages if self.stages_are_users() => self
                .stages
                .iter()
                .filter_map(|s| s.users)
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// The rate in requests/s (`None` for inf or closed loop).
    pub fn rate_per_second(&self) -> Option<f64> {
        self.rate
            .as_ref()
            .and_then(|r| r.per_second().ok().flatten())
    }

    /// Checks the section; errors are (key below `load.`, problem).
    pub fn validate(&self) -> Result<(), Problem> {
        if let Some(r) = self.spawn_rate
            && !(r.is_finite() && r > 0.0)
        {
            return problem("spawn_rate", "must be a number > 0 (users per second)");
        }
        if let Some(b) = self.burstiness
            && !(b.is_finite() && b > 0.0)
        {
            return problem("burstiness", "must be a number > 0");
        }
        if self.max_concurrency == Some(0) {
            return problem("max_concurrency", "must be at least 1");
        }
        match self.mode() {
            LoadMode::Concurrency => {
                match self.users {
                    None => {
                        return problem(
                            "users",
                            "missing: closed-loop load needs users (or give rate, or stages)",
                        );
                    }
                    Some(0) => return problem("users", "must be at least 1"),
                    _ => {}
                }
                if self.rate.is_some() {
                    return problem(
                        "rate",
                        "only for mode = \"rate\"; with users, load is closed loop",
                    );
                }
                if !self.stages.is_empty() {
                    return problem("stages", "only for mode = \"stages\"");
                }
                if self.max_concurrency.is_some() {
                    return problem(
                        "max_concurrency",
                        "only for open-loop load; users already bound concurrency",
                    );
                }
            }
            LoadMode::Rate => {
                let Some(rate) = &self.rate else {
                    return problem(
                        "rate",
                        "missing: mode = \"rate\" needs rate (requests per second or \"inf\")",
                    );
                };
                let per_s = rate.per_second().map_err(|e| ("rate", e))?;
                if self.users.is_some() {
                    return problem(
                        "users",
                        "not used in rate mode; use load.max_concurrency to cap requests in flight",
                    );
                }
                if per_s.is_none() && self.requests.is_none() && self.conversations.is_none() {
                    return problem(
                        "requests",
                        "rate = \"inf\" sends every request at once: give load.requests",
                    );
                }
                if !self.stages.is_empty() {
                    return problem("stages", "only for mode = \"stages\"");
                }
            }
            LoadMode::Stages => self.validate_stages()?,
            LoadMode::Trace => {
                if self.trace.is_none() {
                    return problem("trace", "mode = \"trace\" needs the trace file");
                }
                if self.users.is_some() || self.rate.is_some() || !self.stages.is_empty() {
                    return problem(
                        "trace",
                        "a trace sets its own arrivals: remove users, rate and stages",
                    );
                }
                if let Some(t) = self.time_scale
                    && !(t.is_finite() && t > 0.0)
                {
                    return problem("time_scale", "must be a number > 0");
                }
                if let Some(u) = &self.trace_time_unit
                    && u != "ms"
                    && u != "s"
                {
                    return problem("trace_time_unit", "must be \"ms\" or \"s\"");
                }
                // The trace's own end stops the run.
                return Ok(());
            }
        }
        let duration = self.effective_duration();
        if self.conversations == Some(0) {
            return problem("conversations", "must be at least 1");
        }
        match (duration, self.requests.or(self.conversations)) {
            (None, None) => {
                return problem(
                    "duration",
                    "give load.duration, load.requests (or load.conversations) or both, so the run stops by itself",
                );
            }
            (Some(d), _) if d.is_zero() => return problem("duration", "must be greater than zero"),
            (_, Some(0)) => return problem("requests", "must be at least 1"),
            _ => {}
        }
        if let (Some(w), Some(d)) = (self.warmup, duration)
            && w >= d
        {
            return problem("warmup", "must be shorter than the run's duration");
        }
        Ok(())
    }

    fn validate_stages(&self) -> Result<(), Problem> {
        if self.stages.is_empty() {
            return problem("stages", "mode = \"stages\" needs at least one stage");
        }
        let users = self.stages_are_users();
        for s in &self.stages {
            match (s.users, s.rate) {
                (Some(_), Some(_)) | (None, None) => {
                    return problem("stages", "each stage sets exactly one of users or rate");
                }
                (Some(_), None) if !users => {
                    return problem("stages", "do not mix user and rate stages");
                }
                (None, Some(_)) if users => {
                    return problem("stages", "do not mix user and rate stages");
                }
                (None, Some(r)) if !(r.is_finite() && r >= 0.0) => {
                    return problem("stages", "a stage rate must be a number >= 0");
                }
                _ => {}
            }
        }
        if self.stages_duration().is_zero() {
            return problem("stages", "the stages last no time at all");
        }
        if users && self.users.is_some() {
            return problem(
                "users",
                "user stages set their own users; remove load.users",
            );
        }
        if self.rate.is_some() {
            return problem("rate", "rate stages set their own rate; remove load.rate");
        }
        if users && self.max_concurrency.is_some() {
            return problem("max_concurrency", "only for rate stages");
        }
        if self.peak_users() == 0 && users {
            return problem("stages", "no stage has any users");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadSection, Problem> {
        let l: LoadSection = toml::from_str(text).map_err(|e| ("toml", e.to_string()))?;
        l.validate()?;
        Ok(l)
    }

    #[test]
    fn modes_are_inferred() {
        assert_eq!(
            parse("users = 4\nrequests = 8").map(|l| l.mode()),
            Ok(LoadMode::Concurrency)
        );
        assert_eq!(
            parse("rate = 5.0\nduration = \"10s\"").map(|l| l.mode()),
            Ok(LoadMode::Rate)
        );
        let l = parse("stages = [{duration = \"10s\", rate = 5.0}]").expect("stages");
        assert_eq!(l.mode(), LoadMode::Stages);
        assert!(l.open_loop());
        assert_eq!(l.effective_duration(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn inf_rate_needs_requests() {
        assert_eq!(
            parse("rate = \"inf\"\nduration = \"1s\"").map(|_| ()),
            Err((
                "requests",
                "rate = \"inf\" sends every request at once: give load.requests".into()
            ))
        );
        let l = parse("rate = \"inf\"\nrequests = 100").expect("inf");
        assert_eq!(l.rate_per_second(), None);
        assert_eq!(
            parse("rate = \"fast\"\nrequests = 1")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("rate")
        );
        assert_eq!(
            parse("rate = -1.0\nrequests = 1")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("rate")
        );
    }

    #[test]
    fn mixing_is_refused_with_the_key() {
        assert_eq!(
            parse("users = 4\nrate = 2.0\nrequests = 1")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("users")
        );
        assert_eq!(
            parse("stages = [{duration = \"1s\", users = 2}, {duration = \"1s\", rate = 2.0}]")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("stages")
        );
        assert_eq!(
            parse("users = 1\nduration = \"5s\"\nwarmup = \"5s\"")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("warmup")
        );
        assert_eq!(
            parse("users = 1\nrequests = 5\nmax_concurrency = 3")
                .map(|_| ())
                .map_err(|e| e.0),
            Err("max_concurrency")
        );
    }

    #[test]
    fn peak_users_of_stages() {
        let l = parse("stages = [{duration = \"1s\", users = 2}, {duration = \"1s\", users = 9}, {duration = \"1s\", users = 0}]").expect("stages");
        assert_eq!(l.peak_users(), 9);
        assert!(!l.open_loop());
    }
}
