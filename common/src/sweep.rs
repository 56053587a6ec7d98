//! The `[sweep]` table: many steps in one run. Either a matrix — users (or
//! rates) × input/output length pairs × request counts, zipped
//! (run_1k_4K.sh style) or as a full product — or an SLO search for the
//! highest rate or user count that keeps every `[slo]` limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::PlanFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// users[i] (or rate[i]) runs with requests[i]; io pairs are crossed with them.
    #[default]
    Zip,
    /// Every combination of users/rate × requests × io.
    Product,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchOver {
    Users,
    Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepSection {
    pub users: Vec<u64>,
    pub rate: Vec<f64>,
    pub requests: Vec<u64>,
    /// [input_tokens, output_tokens] pairs: the dataset's input length and
    /// the request's max_tokens.
    pub io: Vec<[u32; 2]>,
    pub pairing: Pairing,
    /// Pause between steps.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// SLO search instead of a matrix.
    pub search: Option<SearchOver>,
    /// Search: the first value tried (default 1).
    pub search_min: f64,
    /// Search: never beyond this (default 4096).
    pub search_max: f64,
    /// Search: stop when the bracket is this narrow, relative (default 0.05).
    pub search_precision: f64,
    /// Search: most steps run (default 12).
    pub search_max_steps: u32,
}

impl Default for SweepSection {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            rate: Vec::new(),
            requests: Vec::new(),
            io: Vec::new(),
            pairing: Pairing::Zip,
            cooldown: Duration::ZERO,
            search: None,
            search_min: 1.0,
            search_max: 4096.0,
            search_precision: 0.05,
            search_max_steps: 12,
        }
    }
}

/// One step of a matrix: plan keys to override, and a label.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub label: String,
    pub users: Option<u64>,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub io: Option<[u32; 2]>,
}

type Problem = (&'static str, String);

/// Users or rate of one step (neither: the plan's own load).
type LoadPoint = (Option<u64>, Option<f64>);

impl SweepSection {
    pub fn validate(&self, plan: &PlanFile) -> Result<(), Problem> {
        let p = |k, s: &str| Err((k, s.to_owned()));
        if !self.users.is_empty() && !self.rate.is_empty() {
            return p("rate", "sweep users or rates, not both");
        }
        if self.users.contains(&0) {
            return p("users", "every value must be at least 1");
        }
        if self.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return p("rate", "every value must be a number > 0");
        }
        if self.requests.contains(&0) {
            return p("requests", "every value must be at least 1");
        }
        if self.io.iter().any(|[i, o]| *i == 0 || *o == 0) {
            return p(
                "io",
                "each pair is [input_tokens, output_tokens], both at least 1",
            );
        }
        if let Some(over) = self.search {
            if plan.slo.limits.is_empty() {
                return p("search", "an SLO search needs limits in [slo]");
            }
            if !self.users.is_empty() || !self.rate.is_empty() {
                return p(
                    "search",
                    "a search chooses users or rate itself; remove the lists",
                );
            }
            if !(self.search_min > 0.0 && self.search_max >= self.search_min) {
                return p("search_max", "needs 0 < search_min <= search_max");
            }
            if !(self.search_precision > 0.0 && self.search_precision < 1.0) {
                return p("search_precision", "must be between 0 and 1");
            }
            if plan.load.duration.is_none()
                && self.requests.is_empty()
                && plan.load.requests.is_none()
            {
                return p(
                    "search",
                    "give load.duration (or requests) so every probe ends",
                );
            }
            if over == SearchOver::Users && plan.load.open_loop() {
                return p("search", "search = \"users\" needs closed-loop load");
            }
            return Ok(());
        }
        if self.pairing == Pairing::Zip {
            let lens: Vec<usize> = [self.users.len().max(self.rate.len()), self.requests.len()]
                .into_iter()
                .filter(|l| *l > 0)
                .collect();
            if lens.windows(2).any(|w| w[0] != w[1]) {
                return p(
                    "requests",
                    "with pairing = \"zip\", requests needs as many values as users (or rate)",
                );
            }
        }
        if self.steps().is_empty() {
            return p(
                "users",
                "the sweep has no steps: give users, rate, requests, io or search",
            );
        }
        Ok(())
    }

    /// The matrix, in run order (io pairs outermost, as run_1k_4K.sh loops).
    pub fn steps(&self) -> Vec<StepSpec> {
        let loads: Vec<LoadPoint> = if !self.users.is_empty() {
            self.users.iter().map(|u| (Some(*u), None)).collect()
        } else if !self.rate.is_empty() {
            self.rate.iter().map(|r| (None, Some(*r))).collect()
        } else {
            vec![(None, None)]
        };
        let requests: Vec<Option<u64>> = if self.requests.is_empty() {
            vec![None]
        } else {
            self.requests.iter().copied().map(Some).collect()
        };
        let ios: Vec<Option<[u32; 2]>> = if self.io.is_empty() {
            vec![None]
        } else {
            self.io.iter().copied().map(Some).collect()
        };
        let pairs: Vec<(LoadPoint, Option<u64>)> = match self.pairing {
            Pairing::Zip if requests.len() == loads.len() => {
                loads.into_iter().zip(requests).collect()
            }
            Pairing::Zip if requests.len() == 1 => {
                loads.into_iter().map(|l| (l, requests[0])).collect()
            }
            Pairing::Zip if loads.len() == 1 => {
                requests.into_iter().map(|r| (loads[0], r)).collect()
            }
            _ => loads
                .iter()
                .flat_map(|l| requests.iter().map(move |r| (*l, *r)))
                .collect(),
        };
        let mut out = Vec::new();
        for io in &ios {
            for ((users, rate), requests) in &pairs {
                let mut label = Vec::new();
                if let Some([i, o]) = io {
                    label.push(format!("in{i}-out{o}"));
                }
                if let Some(u) = users {
                    label.push(format!("u{u}"));
                }
                if let Some(r) = rate {
                    label.push(format!("r{r}"));
                }
                if let Some(n) = requests {
                    label.push(format!("n{n}"));
                }
                out.push(StepSpec {
                    label: label.join("-"),
                    users: *users,
                    rate: *rate,
                    requests: *requests,
                    io: *io,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> SweepSection {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn zip_pairs_users_with_requests_and_crosses_io() {
        let s =
            sweep("users = [1, 2, 8]\nrequests = [8, 16, 48]\nio = [[1024, 1024], [4096, 1024]]");
        let steps = s.steps();
        assert_eq!(steps.len(), 6);
        assert_eq!(
            (steps[0].users, steps[0].requests, steps[0].io),
            (Some(1), Some(8), Some([1024, 1024]))
        );
        assert_eq!((steps[2].users, steps[2].requests), (Some(8), Some(48)));
        assert_eq!(steps[3].io, Some([4096, 1024]));
        assert_eq!(steps[0].label, "in1024-out1024-u1-n8");
    }

    #[test]
    fn product_crosses_everything() {
        let s = sweep("rate = [1.0, 2.0]\nrequests = [10, 20, 30]\npairing = \"product\"");
        assert_eq!(s.steps().len(), 6);
    }
}
