//! Turning a step's `[load]` into one wire `Slice` per agent, in proportion
//! to declared capacity, with exact totals: users are striped over the global
//! ramp, requests / rate / concurrency split by largest remainder, stages
//! scaled per agent (PROTOCOL.md R5).

use barrage_common::load::{ArrivalKind, LoadMode, LoadSection};
use barrage_common::split;
use barrage_proto::agent::v1 as pb;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One slice per weight. Agents whose share is empty get an idle slice.
pub fn slices(load: &LoadSection, weights: &[f64]) -> Vec<pb::Slice> {
    let n = weights.len();
    let duration_ms = load.effective_duration().map_or(0, ms);
    if !load.open_loop() {
        let stripes = split::stripe_users(load.peak_users(), weights);
        let counts: Vec<f64> = stripes.iter().map(|s| s.len() as f64).collect();
        let requests = load.requests.map(|r| split::proportional(r, &counts));
        let conversations = load.conversations.map(|r| split::proportional(r, &counts));
        let stages: Vec<pb::Stage> = match load.mode() {
            LoadMode::Stages => load
                .stages
                .iter()
                .map(|s| pb::Stage {
                    duration_ms: ms(s.duration),
                    target: s.users.unwrap_or(0) as f64,
                })
                .collect(),
            _ => Vec::new(),
        };
        return stripes
            .into_iter()
            .enumerate()
            .map(|(i, users)| pb::Slice {
                user_indexes: users,
                spawn_rate: load.spawn_rate.unwrap_or(0.0),
                max_requests: requests.as_ref().map(|r| r[i]),
                max_conversations: conversations.as_ref().map(|r| r[i]),
                duration_ms,
                model: pb::LoadModel::ClosedLoop as i32,
                stages: stages.clone(),
                ..pb::Slice::default()
            })
            .collect();
    }
    // Open loop. A concurrency cap smaller than the agent count leaves some
    // agents without a share; they then get no rate and no requests either.
    let caps = load
        .max_concurrency
        .map(|c| split::proportional(c, weights));
    let live: Vec<f64> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if caps.as_ref().is_some_and(|c| c[i] == 0) {
                0.0
            } else {
                *w
            }
        })
        .collect();
    let total: f64 = live.iter().sum();
    let share = |i: usize| if total > 0.0 { live[i] / total } else { 0.0 };
    let requests = load.requests.map(|r| split::proportional(r, &live));
    let conversations = load.conversations.map(|r| split::proportional(r, &live));
    let (arrival, burstiness) = match load.arrival {
        ArrivalKind::Poisson => (pb::Arrival::Poisson, 1.0),
        ArrivalKind::Constant => (pb::Arrival::Constant, 1.0),
        ArrivalKind::Gamma => (pb::Arrival::Gamma, load.burstiness.unwrap_or(1.0)),
    };
    let active = live.iter().filter(|w| **w > 0.0).count().max(1);
    let mut ordinal = 0usize;
    (0..n)
        .map(|i| {
            let f = share(i);
            let phase = if live[i] > 0.0 {
                ordinal += 1;
                (ordinal - 1) as f64 / active as f64
            } else {
                0.0
            };
            pb::Slice {
                model: pb::LoadModel::OpenLoop as i32,
                rate: load.rate_per_second().unwrap_or(0.0) * f,
                rate_infinite: load.mode() == LoadMode::Rate && load.rate_per_second().is_none(),
                arrival: arrival as i32,
                burstiness,
                max_concurrency: caps.as_ref().map(|c| c[i]),
                phase,
                stages: load
                    .stages
                    .iter()
                    .map(|s| pb::Stage {
                        duration_ms: ms(s.duration),
                        target: s.rate.unwrap_or(0.0) * f,
                    })
                    .collect(),
                // An agent without a share must not run unbounded.
                max_requests: if f == 0.0 {
                    Some(0)
                } else {
                    requests.as_ref().map(|r| r[i])
                },
                max_conversations: if f == 0.0 {
                    conversations.as_ref().map(|_| 0)
                } else {
                    conversations.as_ref().map(|r| r[i])
                },
                duration_ms,
                ..pb::Slice::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> LoadSection {
        let l: LoadSection = toml::from_str(text).expect("toml");
        l.validate().expect("valid");
        l
    }

    #[test]
    fn closed_loop_users_and_requests_sum_exactly() {
        let s = slices(&load("users = 10\nrequests = 101"), &[1.0, 1.0, 2.0]);
        assert_eq!(s.iter().map(|x| x.user_indexes.len()).sum::<usize>(), 10);
        assert_eq!(
            s.iter().map(|x| x.max_requests.unwrap_or(0)).sum::<u64>(),
            101
        );
        assert_eq!(s[2].user_indexes.len(), 5);
    }

    #[test]
    fn open_loop_rate_and_caps_split_by_weight() {
        let s = slices(
            &load("rate = 12.0\nrequests = 100\nmax_concurrency = 9\narrival = \"constant\""),
            &[1.0, 2.0],
        );
        assert!((s[0].rate - 4.0).abs() < 1e-9 && (s[1].rate - 8.0).abs() < 1e-9);
        assert_eq!(s[0].max_concurrency, Some(3));
        assert_eq!(s[1].max_concurrency, Some(6));
        assert_eq!(
            s.iter().map(|x| x.max_requests.unwrap_or(0)).sum::<u64>(),
            100
        );
        assert_eq!((s[0].phase, s[1].phase), (0.0, 0.5));
    }

    #[test]
    fn a_cap_below_the_agent_count_idles_agents_without_losing_rate() {
        let s = slices(
            &load("rate = 10.0\nduration = \"5s\"\nmax_concurrency = 1"),
            &[1.0, 1.0],
        );
        assert_eq!(s[0].max_concurrency, Some(1));
        assert!((s[0].rate - 10.0).abs() < 1e-9);
        assert_eq!((s[1].rate, s[1].max_requests), (0.0, Some(0)));
    }

    #[test]
    fn rate_stages_are_scaled_per_agent() {
        let s = slices(
            &load("stages = [{duration = \"2s\", rate = 10.0}, {duration = \"2s\", rate = 0.0}]"),
            &[3.0, 1.0],
        );
        assert_eq!(s[0].stages.len(), 2);
        assert!((s[0].stages[0].target - 7.5).abs() < 1e-9);
        assert!((s[1].stages[0].target - 2.5).abs() < 1e-9);
        assert_eq!(s[0].duration_ms, 4000);
    }

    #[test]
    fn inf_rate_is_flagged() {
        let s = slices(&load("rate = \"inf\"\nrequests = 10"), &[1.0]);
        assert!(s[0].rate_infinite);
        assert_eq!(s[0].max_requests, Some(10));
    }
}
