//! Latency summaries (count, mean, P50/P95/P99, min, max) with hdrhistogram.
//!
//! Owns the histogram and its rounding; not which latencies are summarized (the profilers).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Collects durations in nanoseconds (3 significant digits, 1 ns .. 1 hour).
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
    sum_ns: u128,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("constant bounds are valid"),
            sum_ns: 0,
        }
    }
}

/// A summary in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean (ms).
    pub mean_ms: f64,
    /// Minimum (ms).
    pub min_ms: f64,
    /// Median (ms).
    pub p50_ms: f64,
    /// 95th percentile (ms).
    pub p95_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Maximum (ms).
    pub max_ms: f64,
}

impl Latency {
    /// Records one duration.
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
        self.sum_ns += u128::from(ns);
    }

    /// Number of samples.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The summary, or None without samples.
    #[must_use]
    pub fn summary(&self) -> Option<LatencySummary> {
        let n = self.hist.len();
        if n == 0 {
            return None;
        }
        let ms = |ns: u64| super::ms(ns);
        Some(LatencySummary {
            count: n,
            mean_ms: ((self.sum_ns / u128::from(n)) as f64 / 1e3).round() / 1e3,
            min_ms: ms(self.hist.min()),
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p95_ms: ms(self.hist.value_at_quantile(0.95)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            max_ms: ms(self.hist.max()),
        })
    }
}

/// A summary of counts (tokens, requests), unscaled.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CountSummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
}

impl Latency {
    /// The recorded values as counts (not durations), or None without samples.
    #[must_use]
    pub fn summary_raw(&self) -> Option<CountSummary> {
        let n = self.hist.len();
        if n == 0 {
            return None;
        }
        Some(CountSummary {
            count: n,
            mean: ((self.sum_ns * 100 / u128::from(n)) as f64).round() / 100.0,
            min: self.hist.min(),
            p50: self.hist.value_at_quantile(0.50),
            p95: self.hist.value_at_quantile(0.95),
            p99: self.hist.value_at_quantile(0.99),
            max: self.hist.max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::default();
        for i in 1..=1000u64 {
            l.record(i * 1_000_000); // 1..1000 ms
        }
        let s = l.summary().expect("samples");
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p95_ms - 950.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean_ms - 500.5).abs() < 0.01, "{s:?}");
        assert!(Latency::default().summary().is_none());
    }
}
