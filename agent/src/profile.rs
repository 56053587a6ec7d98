//! Piecewise-linear load profiles (k6-style stages) and the time-rescaling
//! that turns a unit-rate arrival process into arrivals at a varying rate:
//! arrival j happens when the expected count ∫rate reaches x_j, where x_j are
//! the points of a unit-rate process (constant, Poisson or gamma gaps).

use std::time::Duration;

/// Value over time: linear between points, the last value held after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// (seconds from start, value); the first point is at 0.
    points: Vec<(f64, f64)>,
}

impl Profile {
    pub fn constant(v: f64) -> Self {
        Self {
            points: vec![(0.0, v)],
        }
    }

    /// Stages: each ramps from the previous target (0 at the start) to its own.
    pub fn stages(stages: &[(Duration, f64)]) -> Self {
        let mut points = vec![(0.0, 0.0)];
        let mut t = 0.0;
        for (d, target) in stages {
            t += d.as_secs_f64();
            points.push((t, *target));
        }
        Self { points }
    }

    pub fn value(&self, t: f64) -> f64 {
        let last = self.points[self.points.len() - 1];
        if t >= last.0 {
            return last.1;
        }
        for w in self.points.windows(2) {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            if t < t1 {
                if t1 <= t0 {
                    return v1;
                }
                return v0 + (v1 - v0) * (t.max(t0) - t0) / (t1 - t0);
            }
        }
        last.1
    }

    /// The earliest t' ≥ t at which the value exceeds `level` (user `level`
    /// is active while value > level), or `None` if it never does.
    pub fn next_above(&self, level: f64, t: f64) -> Option<f64> {
        if self.value(t) > level {
            return Some(t);
        }
        for w in self.points.windows(2) {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            if t1 <= t || v1 <= level {
                continue;
            }
            // Rising through `level` inside this segment (v1 > level).
            let start = t.max(t0);
            let v_start = self.value(start);
            if v_start > level {
                return Some(start);
            }
            let cross = t0 + (level - v0) / (v1 - v0) * (t1 - t0);
            // Strictly above: nudge past the crossing point.
            return Some(cross.max(start) + 1e-9);
        }
        let last = self.points[self.points.len() - 1];
        (last.1 > level).then_some(t.max(last.0))
    }

    /// The time at which ∫₀ᵗ value = x, or `None` if it is never reached.
    pub fn inverse_cumulative(&self, x: f64) -> Option<f64> {
        let mut acc = 0.0;
        for w in self.points.windows(2) {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            let dt = t1 - t0;
            let area = 0.5 * (v0 + v1) * dt;
            if acc + area >= x && area > 0.0 {
                let rem = x - acc;
                let slope = (v1 - v0) / dt;
                let tau = if slope.abs() < 1e-12 {
                    rem / v0
                } else {
                    let disc = (v0 * v0 + 2.0 * slope * rem).max(0.0);
                    (-v0 + disc.sqrt()) / slope
                };
                return Some(t0 + tau.clamp(0.0, dt));
            }
            acc += area;
        }
        let (t_last, v_last) = self.points[self.points.len() - 1];
        (v_last > 0.0).then(|| t_last + (x - acc) / v_last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn stages_ramp_hold_and_down() {
        let p = Profile::stages(&[(secs(10), 100.0), (secs(10), 100.0), (secs(10), 0.0)]);
        assert_eq!(p.value(0.0), 0.0);
        assert_eq!(p.value(5.0), 50.0);
        assert_eq!(p.value(15.0), 100.0);
        assert_eq!(p.value(25.0), 50.0);
        assert_eq!(p.value(40.0), 0.0);
    }

    #[test]
    fn next_above_finds_user_activation() {
        let p = Profile::stages(&[(secs(10), 100.0), (secs(10), 0.0)]);
        // User 49 becomes active when the ramp passes 49: at 4.9 s.
        let t = p.next_above(49.0, 0.0).expect("rises");
        assert!((t - 4.9).abs() < 1e-6, "{t}");
        assert_eq!(p.next_above(49.0, 6.0), Some(6.0));
        assert_eq!(p.next_above(149.0, 0.0), None);
        // After the ramp down, never again.
        assert_eq!(p.next_above(10.0, 19.5), None);
    }

    #[test]
    fn inverse_cumulative_matches_area() {
        // Constant 4/s: the 10th arrival at 2.5 s.
        assert_eq!(Profile::constant(4.0).inverse_cumulative(10.0), Some(2.5));
        // Ramp 0 → 10/s over 10 s: area 50; x = 12.5 at t = 5.
        let p = Profile::stages(&[(secs(10), 10.0)]);
        let t = p.inverse_cumulative(12.5).expect("reached");
        assert!((t - 5.0).abs() < 1e-9, "{t}");
        // Held at 10/s afterwards: x = 60 at t = 11.
        assert!((p.inverse_cumulative(60.0).expect("held") - 11.0).abs() < 1e-9);
        // Ramping down to zero: never beyond the total area.
        let down = Profile::stages(&[(secs(2), 10.0), (secs(2), 0.0)]);
        assert_eq!(down.inverse_cumulative(20.5), None);
    }
}
