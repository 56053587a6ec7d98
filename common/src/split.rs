//! Splitting one step's load across agents in proportion to their declared
//! capacity, with exact totals (PROTOCOL.md R5 striping): global user `i`
//! starts at `i / spawn_rate` on whichever agent owns stripe position `i`, so
//! the union of the agents' ramps is the single-machine ramp.

/// Assigns global user indexes `0..users` to agents by weight. Each position
/// goes to the agent furthest behind its fair share (smooth weighted round
/// robin), so counts differ from the exact proportion by less than one and
/// every agent's users are spread over the whole ramp.
pub fn stripe_users(users: u64, weights: &[f64]) -> Vec<Vec<u64>> {
    let n = weights.len();
    let mut out = vec![Vec::new(); n];
    if n == 0 {
        return out;
    }
    let w: Vec<f64> = weights
        .iter()
        .map(|w| if w.is_finite() && *w > 0.0 { *w } else { 0.0 })
        .collect();
    let total: f64 = w.iter().sum();
    let w = if total > 0.0 { w } else { vec![1.0; n] };
    let total: f64 = w.iter().sum();
    for i in 0..users {
        let due = (i + 1) as f64 / total;
        let pick = (0..n)
            .max_by(|a, b| {
                let da = w[*a] * due - out[*a].len() as f64;
                let db = w[*b] * due - out[*b].len() as f64;
                // Ties go to the lower index: deterministic order.
                da.total_cmp(&db).then(b.cmp(a))
            })
            .unwrap_or(0);
        out[pick].push(i);
    }
    out
}

/// Splits `total` into parts proportional to `weights` by largest remainder:
/// the parts always sum to `total` exactly.
pub fn proportional(total: u64, weights: &[f64]) -> Vec<u64> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let sum: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
    if sum <= 0.0 {
        return proportional(total, &vec![1.0; n]);
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| {
            if w.is_finite() && *w > 0.0 {
                total as f64 * w / sum
            } else {
                0.0
            }
        })
        .collect();
    let mut parts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let assigned: u64 = parts.iter().sum();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| {
        let ra = exact[*a] - exact[*a].floor();
        let rb = exact[*b] - exact[*b].floor();
        rb.total_cmp(&ra).then(a.cmp(b))
    });
    for i in order
        .into_iter()
        .cycle()
        .take(total.saturating_sub(assigned) as usize)
    {
        parts[i] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_every_user_once_and_within_one_of_share() {
        let weights = [1.0, 2.0, 1.0, 4.0];
        let stripes = stripe_users(2000, &weights);
        let mut all: Vec<u64> = stripes.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..2000).collect::<Vec<_>>());
        for (s, w) in stripes.iter().zip(weights) {
            let share = 2000.0 * w / 8.0;
            assert!(
                (s.len() as f64 - share).abs() < 1.0,
                "{} vs {share}",
                s.len()
            );
        }
    }

    #[test]
    fn equal_weights_interleave() {
        let stripes = stripe_users(7, &[1.0, 1.0, 1.0]);
        assert_eq!(stripes, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn proportional_parts_sum_exactly() {
        for total in [0, 1, 7, 1000, 1001] {
            let parts = proportional(total, &[1.0, 1.0, 1.0]);
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert!(parts.iter().max().unwrap_or(&0) - parts.iter().min().unwrap_or(&0) <= 1);
        }
        assert_eq!(proportional(10, &[3.0, 1.0]), vec![8, 2]);
        assert_eq!(proportional(5, &[0.0, 0.0]), vec![3, 2]);
    }
}
