//! A latency histogram for `/metrics`: fixed buckets from 100 µs to 10 s, counted with
//! atomics. An observation is a search among 16 bounds and two relaxed additions: no lock,
//! no allocation. Rendered in the Prometheus text format (`_bucket{le=…}` cumulative,
//! `_sum` in seconds, `_count`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tether_core::prom::{Kind, head, sample};

/// Upper bounds of the buckets, in nanoseconds, and as the `le` label writes them.
const BOUNDS: [(u64, &str); 16] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Counts of observations per bucket (not cumulative; the last is above every bound) and
/// their sum.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at or above the value (`le`: less or equal).
        let i = BOUNDS.partition_point(|&(bound, _)| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Append the histogram as `name` to `out`. The count is the sum of the buckets read,
    /// so `+Inf` and `_count` agree even while observations come in.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        head(out, name, Kind::Histogram, help);
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (bucket, (_, le)) in self.buckets.iter().zip(BOUNDS.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            sample(out, &bucket_name, &[("le", le)], cumulative);
        }
        cumulative += self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        sample(out, &bucket_name, &[("le", "+Inf")], cumulative);
        sample(out, &format!("{name}_sum"), &[], sum);
        sample(out, &format!("{name}_count"), &[], cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(h: &Histogram) -> Vec<(String, f64)> {
        let mut out = String::new();
        h.render(&mut out, "t", "A test.");
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    fn value(lines: &[(String, f64)], key: &str) -> f64 {
        lines.iter().find(|(k, _)| k == key).unwrap().1
    }

    #[test]
    fn values_fall_in_the_first_bucket_at_or_above_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on the bound: in le=0.0001
        h.observe(Duration::from_nanos(100_001)); // just above: in le=0.00025
        h.observe(Duration::from_millis(3)); // le=0.005
        h.observe(Duration::from_secs(60)); // above every bound: +Inf only
        h.observe(Duration::ZERO);
        let lines = rendered(&h);
        assert_eq!(value(&lines, "t_bucket{le=\"0.0001\"}"), 2.0);
        assert_eq!(value(&lines, "t_bucket{le=\"0.00025\"}"), 3.0);
        assert_eq!(value(&lines, "t_bucket{le=\"0.0025\"}"), 3.0);
        assert_eq!(value(&lines, "t_bucket{le=\"0.005\"}"), 4.0);
        assert_eq!(value(&lines, "t_bucket{le=\"10\"}"), 4.0);
        assert_eq!(value(&lines, "t_bucket{le=\"+Inf\"}"), 5.0);
        assert_eq!(value(&lines, "t_count"), 5.0);
        let sum = value(&lines, "t_sum");
        assert!((sum - 60.003_200_001).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn buckets_are_cumulative_and_complete() {
        let h = Histogram::default();
        for us in [50, 300, 300, 7_000, 90_000, 2_000_000, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let lines = rendered(&h);
        let buckets: Vec<f64> = lines
            .iter()
            .filter(|(k, _)| k.starts_with("t_bucket"))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(buckets.len(), BOUNDS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(*buckets.last().unwrap(), 7.0);
        assert_eq!(value(&lines, "t_count"), 7.0);
        // Bounds in ascending order, as the search needs.
        assert!(BOUNDS.windows(2).all(|w| w[0].0 < w[1].0));
        for (ns, le) in BOUNDS {
            assert_eq!(le.parse::<f64>().unwrap(), ns as f64 / 1e9);
        }
    }

    #[test]
    fn empty_renders_zeroes() {
        let lines = rendered(&Histogram::default());
        assert_eq!(value(&lines, "t_count"), 0.0);
        assert_eq!(value(&lines, "t_sum"), 0.0);
        assert_eq!(value(&lines, "t_bucket{le=\"+Inf\"}"), 0.0);
    }
}
