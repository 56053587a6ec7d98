//! Monotonic clocks and round-trip clock alignment (PROTOCOL.md R5).
//!
//! Every process measures on its own monotonic clock, expressed as
//! nanoseconds since a process-wide epoch. Wall clocks are never used to line
//! up samples: the controller estimates each peer's offset from round trips
//! and translates times into the peer's clock (or back).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds on this process's monotonic clock.
pub fn mono_now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The [`mono_now_ns`] value of an `Instant`.
pub fn mono_ns_of(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The `Instant` that corresponds to a value of [`mono_now_ns`].
pub fn instant_at(mono_ns: u64) -> Instant {
    epoch() + Duration::from_nanos(mono_ns)
}

/// One probe: our send time, the peer's clock when it answered, our receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSample {
    pub sent_ns: u64,
    pub peer_ns: u64,
    pub received_ns: u64,
}

/// The estimated relation between our clock and a peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// peer_clock − local_clock, in ns.
    pub offset_ns: i64,
    /// Round trip of the sample used; the offset is uncertain by ± rtt/2.
    pub rtt_ns: u64,
}

impl ClockOffset {
    /// warp's rule: trust the sample with the smallest round trip and assume
    /// the peer answered half-way through it.
    pub fn from_probes(samples: &[ProbeSample]) -> Option<Self> {
        let best = samples
            .iter()
            .filter(|s| s.received_ns >= s.sent_ns)
            .min_by_key(|s| s.received_ns - s.sent_ns)?;
        let rtt = best.received_ns - best.sent_ns;
        let midpoint = best.sent_ns as i128 + (rtt / 2) as i128;
        let offset = best.peer_ns as i128 - midpoint;
        Some(Self {
            offset_ns: offset.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            rtt_ns: rtt,
        })
    }

    /// Our clock value translated into the peer's clock.
    pub fn to_peer(&self, local_ns: u64) -> u64 {
        (local_ns as i128 + self.offset_ns as i128).clamp(0, u64::MAX as i128) as u64
    }

    /// A peer clock value translated into ours.
    pub fn to_local(&self, peer_ns: u64) -> u64 {
        (peer_ns as i128 - self.offset_ns as i128).clamp(0, u64::MAX as i128) as u64
    }

    /// Half the round trip: how far off the translation can be.
    pub fn uncertainty(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_min_rtt_sample_and_translates_both_ways() {
        // Peer clock runs 1_000_000 ns ahead of ours.
        let samples = [
            ProbeSample {
                sent_ns: 100,
                peer_ns: 1_000_400,
                received_ns: 900,
            }, // rtt 800
            ProbeSample {
                sent_ns: 2_000,
                peer_ns: 1_002_050,
                received_ns: 2_100,
            }, // rtt 100
        ];
        let off = ClockOffset::from_probes(&samples).expect("samples");
        assert_eq!(off.rtt_ns, 100);
        assert_eq!(off.offset_ns, 1_000_000);
        assert_eq!(off.to_peer(5), 1_000_005);
        assert_eq!(off.to_local(1_000_005), 5);
        assert_eq!(off.uncertainty(), Duration::from_nanos(50));
    }

    #[test]
    fn no_valid_samples_gives_none() {
        assert!(ClockOffset::from_probes(&[]).is_none());
    }

    #[test]
    fn mono_clock_round_trips_through_instant() {
        let ns = mono_now_ns();
        let back = instant_at(ns);
        assert!(back <= Instant::now());
    }
}
