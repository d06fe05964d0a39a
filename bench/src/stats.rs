//! Measurements of one target in one scenario, and their summary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Raw measurements, merged across rounds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latency of every successful request, microseconds.
    pub latencies_us: Vec<u64>,
    /// Failed requests by status (0 for transport errors).
    pub errors: BTreeMap<u16, u64>,
    /// Payload bytes moved (sent for pushes, received for pulls).
    pub bytes: u64,
    /// Wall time spent running requests.
    pub elapsed: Duration,
    /// Highest resident memory of the server seen while it ran, bytes.
    pub peak_rss: Option<u64>,
    /// Resident memory of the server before the scenario, bytes.
    pub idle_rss: Option<u64>,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        for (status, n) in other.errors {
            *self.errors.entry(status).or_default() += n;
        }
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.peak_rss = match (self.peak_rss, other.peak_rss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.idle_rss = self.idle_rss.or(other.idle_rss);
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let ok = sorted.len() as u64;
        Summary {
            requests: ok,
            errors: self.errors.values().sum(),
            errors_by_status: self.errors.clone(),
            req_per_sec: ok as f64 / secs,
            mb_per_sec: self.bytes as f64 / 1e6 / secs,
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
            elapsed_s: secs,
            peak_rss_mib: self.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            idle_rss_mib: self.idle_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// What a report shows for one target.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<u16, u64>,
    pub req_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub elapsed_s: f64,
    pub peak_rss_mib: Option<f64>,
    pub idle_rss_mib: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5000], 99.0), 5.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn merge_and_summarize() {
        let mut a = Samples {
            latencies_us: vec![1000, 3000],
            bytes: 2_000_000,
            elapsed: Duration::from_secs(1),
            peak_rss: Some(10),
            ..Samples::default()
        };
        a.errors.insert(500, 1);
        let mut b = Samples {
            latencies_us: vec![2000],
            bytes: 1_000_000,
            elapsed: Duration::from_secs(2),
            peak_rss: Some(30),
            ..Samples::default()
        };
        b.errors.insert(500, 2);
        b.errors.insert(0, 1);
        a.merge(b);
        let s = a.summary();
        assert_eq!(s.requests, 3);
        assert_eq!(s.errors, 4);
        assert_eq!(s.errors_by_status[&500], 3);
        assert!((s.req_per_sec - 1.0).abs() < 1e-9);
        assert!((s.mb_per_sec - 1.0).abs() < 1e-9);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.peak_rss_mib, Some(30.0 / (1024.0 * 1024.0)));
    }
}
