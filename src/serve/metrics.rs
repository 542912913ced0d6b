//! `/metrics`: Prometheus text exposition of the service's builds (builds by outcome,
//! the queue, build durations), written by hand: a few counters need no client library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the duration histogram, as BinderHub's `BUILD_BUCKETS`.
const BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Default)]
struct Inner {
    outcomes: BTreeMap<&'static str, u64>,
    /// Per outcome: bucket counts, sum, count.
    durations: BTreeMap<&'static str, (Vec<u64>, f64, u64)>,
    requests: u64,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A build request answered from a finished build (`reused`), or any other count.
    pub fn count(&self, outcome: &'static str) {
        *self.inner().outcomes.entry(outcome).or_default() += 1;
    }

    /// One build request received.
    pub fn request(&self) {
        self.inner().requests += 1;
    }

    /// A build ended with `outcome` (`ready`, `failed`, `timeout`) after `took`.
    pub fn finished(&self, outcome: &'static str, took: Duration) {
        let mut inner = self.inner();
        *inner.outcomes.entry(outcome).or_default() += 1;
        let seconds = took.as_secs_f64();
        let entry = inner
            .durations
            .entry(outcome)
            .or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (bucket, bound) in entry.0.iter_mut().zip(BUCKETS) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        entry.1 += seconds;
        entry.2 += 1;
    }

    /// The text exposition, with the queue's current state.
    pub fn render(&self, running: usize, queued: usize, max_builds: usize) -> String {
        let inner = self.inner();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hpcbinder_build_requests_total Build requests received."
        );
        let _ = writeln!(out, "# TYPE hpcbinder_build_requests_total counter");
        let _ = writeln!(out, "hpcbinder_build_requests_total {}", inner.requests);
        let _ = writeln!(out, "# HELP hpcbinder_builds_total Builds by outcome (ready, failed, timeout; reused: answered from a finished build).");
        let _ = writeln!(out, "# TYPE hpcbinder_builds_total counter");
        for outcome in ["ready", "failed", "timeout", "reused"] {
            let count = inner.outcomes.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "hpcbinder_builds_total{{outcome=\"{outcome}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP hpcbinder_builds_running Builds running now.");
        let _ = writeln!(out, "# TYPE hpcbinder_builds_running gauge");
        let _ = writeln!(
            out,
            "hpcbinder_builds_running {}",
            running - queued.min(running)
        );
        let _ = writeln!(
            out,
            "# HELP hpcbinder_build_queue_length Builds waiting for a slot."
        );
        let _ = writeln!(out, "# TYPE hpcbinder_build_queue_length gauge");
        let _ = writeln!(out, "hpcbinder_build_queue_length {queued}");
        let _ = writeln!(out, "# HELP hpcbinder_max_builds Builds allowed at once.");
        let _ = writeln!(out, "# TYPE hpcbinder_max_builds gauge");
        let _ = writeln!(out, "hpcbinder_max_builds {max_builds}");
        let _ = writeln!(
            out,
            "# HELP hpcbinder_build_duration_seconds Build durations by outcome."
        );
        let _ = writeln!(out, "# TYPE hpcbinder_build_duration_seconds histogram");
        for (outcome, (buckets, sum, count)) in &inner.durations {
            for (bucket, bound) in buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "hpcbinder_build_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"{bound}\"}} {bucket}"
                );
            }
            let _ = writeln!(
                out,
                "hpcbinder_build_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "hpcbinder_build_duration_seconds_sum{{outcome=\"{outcome}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "hpcbinder_build_duration_seconds_count{{outcome=\"{outcome}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.finished("ready", Duration::from_secs(20));
        metrics.finished("ready", Duration::from_secs(200));
        metrics.count("reused");
        let text = metrics.render(3, 1, 2);
        assert!(
            text.contains("hpcbinder_builds_total{outcome=\"ready\"} 2"),
            "{text}"
        );
        assert!(text.contains("hpcbinder_builds_total{outcome=\"reused\"} 1"));
        assert!(text.contains("le=\"30\"} 1"), "{text}");
        assert!(text.contains("le=\"300\"} 2"), "{text}");
        assert!(text.contains("hpcbinder_build_queue_length 1"));
        assert!(text.contains("hpcbinder_builds_running 2"));
    }
}
