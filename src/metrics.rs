//! Prometheus metrics under kube-proxy's names, so dashboards carry over.
//!
//! A small hand-written registry (counters, gauges, histograms with kube-proxy's
//! buckets) rendered in the Prometheus text format; no dependency needed.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// kube-proxy's sync duration buckets: exponential from 1 ms, factor 2, 15 buckets.
fn sync_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.001 * 2f64.powi(i)).collect()
}

/// kube-proxy's network programming buckets (seconds).
fn programming_buckets() -> Vec<f64> {
    let mut v: Vec<f64> = vec![0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
    v.extend((1..=12).map(|i| 10.0 + 5.0 * i as f64));
    v.extend([90.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]);
    v
}

#[derive(Clone, Debug)]
struct Histogram {
    buckets: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: Vec<f64>) -> Self {
        let n = buckets.len();
        Histogram {
            buckets,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.buckets.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    programming: Histogram,
    last_sync: f64,
    last_queued: f64,
    endpoint_changes: u64,
    service_changes: u64,
    no_local_internal: u64,
    no_local_external: u64,
    sync_failures: u64,
    rebuilds: u64,
    invalid_total: u64,
    invalid_current: u64,
    conntrack_deleted: u64,
}

/// The proxy's metrics.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            sync: Histogram::new(sync_buckets()),
            sync_full: Histogram::new(sync_buckets()),
            sync_partial: Histogram::new(sync_buckets()),
            programming: Histogram::new(programming_buckets()),
            last_sync: 0.0,
            last_queued: 0.0,
            endpoint_changes: 0,
            service_changes: 0,
            no_local_internal: 0,
            no_local_external: 0,
            sync_failures: 0,
            rebuilds: 0,
            invalid_total: 0,
            invalid_current: 0,
            conntrack_deleted: 0,
        }))
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A successful sync of `d`.
    pub fn sync_done(&self, d: Duration, full: bool) {
        self.with(|m| {
            m.sync.observe(d.as_secs_f64());
            if full {
                m.sync_full.observe(d.as_secs_f64());
            } else {
                m.sync_partial.observe(d.as_secs_f64());
            }
            m.last_sync = now_unix();
        })
    }

    /// A failed sync.
    pub fn sync_failed(&self) {
        self.with(|m| m.sync_failures += 1)
    }

    /// The total of rebuilds after a refused transaction (the proxier counts them).
    pub fn rebuilds(&self, total: u64) {
        self.with(|m| m.rebuilds = total)
    }

    /// A change was queued for the next sync.
    pub fn queued(&self, services: usize, slices: usize) {
        self.with(|m| {
            m.last_queued = now_unix();
            m.service_changes += services as u64;
            m.endpoint_changes += slices as u64;
        })
    }

    /// Time from an EndpointSlice change trigger to its programming.
    pub fn programmed(&self, seconds: f64) {
        self.with(|m| m.programming.observe(seconds.max(0.0)))
    }

    /// Services whose policy leaves no local endpoint.
    pub fn no_local_endpoints(&self, internal: usize, external: usize) {
        self.with(|m| {
            m.no_local_internal = internal as u64;
            m.no_local_external = external as u64;
        })
    }

    /// Invalid input: `new` problems seen for the first time, `current` in the state.
    pub fn invalid(&self, new: usize, current: usize) {
        self.with(|m| {
            m.invalid_total += new as u64;
            m.invalid_current = current as u64;
        })
    }

    /// Conntrack entries deleted.
    pub fn conntrack_deleted(&self, n: usize) {
        self.with(|m| m.conntrack_deleted += n as u64)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            m.sync.render(&mut s, "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds");
            m.sync_full.render(&mut s, "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs");
            m.sync_partial.render(&mut s, "kubeproxy_sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs");
            m.programming.render(&mut s, "kubeproxy_network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds");
            let gauge = |s: &mut String, n: &str, h: &str, v: String| {
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} gauge\n{n} {v}");
            };
            let counter = |s: &mut String, n: &str, h: &str, v: u64| {
                let _ = writeln!(s, "# HELP {n} {h}\n# TYPE {n} counter\n{n} {v}");
            };
            gauge(&mut s, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", m.last_sync.to_string());
            gauge(&mut s, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", m.last_queued.to_string());
            counter(&mut s, "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules EndpointSlice changes", m.endpoint_changes);
            counter(&mut s, "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes", m.service_changes);
            let _ = writeln!(s, "# HELP kubeproxy_sync_proxy_rules_no_local_endpoints_total Number of services with a Local traffic policy and no endpoints\n# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge");
            let _ = writeln!(s, "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy=\"internal\"}} {}", m.no_local_internal);
            let _ = writeln!(s, "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy=\"external\"}} {}", m.no_local_external);
            counter(&mut s, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures", m.sync_failures);
            counter(&mut s, "kubenftproxy_sync_rebuilds_total", "Rebuilds of our tables in one transaction after the kernel refused a transaction", m.rebuilds);
            counter(&mut s, "kubenftproxy_invalid_objects_total", "Invalid values in cluster objects that were skipped (each distinct problem counted once)", m.invalid_total);
            gauge(&mut s, "kubenftproxy_invalid_objects", "Invalid values in the current cluster objects", m.invalid_current.to_string());
            counter(&mut s, "kubenftproxy_conntrack_entries_deleted_total", "Stale UDP conntrack entries deleted", m.conntrack_deleted);
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_names() {
        let m = Metrics::default();
        m.sync_done(Duration::from_millis(3), false);
        m.sync_failed();
        m.programmed(0.3);
        let t = m.render();
        assert!(t.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"));
        assert!(t.contains(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1"
        ));
        assert!(t.contains("kubeproxy_sync_full_proxy_rules_duration_seconds_count 0"));
        assert!(t.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 1"));
        assert!(t.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1"));
    }
}
