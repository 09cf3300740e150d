//! Latency recording into HDR histograms, shared between the task that records and the one that
//! reports.

use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// A thread-safe histogram of latencies in nanoseconds (1 µs to 60 s, 3 significant digits).
#[derive(Clone)]
pub struct LatencyRecorder {
    inner: Arc<Mutex<Histogram<u64>>>,
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// Returns an empty recorder.
    pub fn new() -> Self {
        let h = Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
        Self {
            inner: Arc::new(Mutex::new(h)),
        }
    }

    /// Records one latency; values outside the range are clamped.
    pub fn record(&self, ns: i64) {
        let v = (ns.max(1_000) as u64).min(60_000_000_000);
        if let Ok(mut h) = self.inner.lock() {
            let _ = h.record(v);
        }
    }

    /// Returns the percentiles recorded so far.
    pub fn summary(&self) -> LatencySummary {
        let h = self
            .inner
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Formats nanoseconds for humans: `850µs`, `2.31ms`, `1.2s`.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}µs", ns / 1_000)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_percentiles() {
        let r = LatencyRecorder::new();
        for us in 1..=1000 {
            r.record(us * 1_000);
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.p50), "{s:?}");
        assert!((989_000..=991_000).contains(&s.p99), "{s:?}");
        assert!(s.max >= 999_000);
        assert_eq!(fmt_ns(2_310_000), "2.31ms");
        assert_eq!(fmt_ns(850_000), "850µs");
    }
}
