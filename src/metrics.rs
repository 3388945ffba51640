//! Prometheus metrics under kube-proxy's names, so dashboards carry over.
//!
//! A small hand-written registry (counters, gauges, histograms with kube-proxy's
//! buckets) rendered in the Prometheus text format; no dependency needed.

use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// kube-proxy's sync duration buckets: exponential from 1 ms, factor 2, 15 buckets.
fn sync_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.001 * 2f64.powi(i)).collect()
}

/// kube-proxy's network programming buckets (seconds): component-base's
/// `MergeBuckets`, which starts with a 0 bucket, of 0.25 s and 0.5 s, every second up
/// to 59 s, every 5 s up to 115 s, every 30 s from 2 to 5 minutes.
pub fn programming_buckets() -> Vec<f64> {
    let mut v = vec![0.0, 0.25, 0.5];
    v.extend((1..=59).map(f64::from));
    v.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    v.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    v
}

/// An address family, as upstream's `ip_family` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpFamily {
    /// `IPv4`
    V4,
    /// `IPv6`
    V6,
}

impl IpFamily {
    /// Both, in upstream's order.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The label value (`v1.IPFamily`).
    pub fn label(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> IpFamily {
        if ip.is_ipv6() {
            IpFamily::V6
        } else {
            IpFamily::V4
        }
    }

    /// Position in per-family arrays (`[IPv4, IPv6]`).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which of upstream's health probes answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz` (`kubeproxy_proxy_healthz_total`)
    Healthz,
    /// `/livez` (`kubeproxy_proxy_livez_total`)
    Livez,
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
}

/// Writes `# HELP` and `# TYPE` of one metric.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One histogram per family, under one name (labels sorted as Prometheus's Go client
/// writes them: `ip_family` before `le`).
fn render_histograms(out: &mut String, name: &str, help: &str, per: &[Histogram; 2]) {
    header(out, name, help, "histogram");
    for f in IpFamily::ALL {
        let h = &per[f.index()];
        let fam = f.label();
        for (b, c) in h.buckets.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{{ip_family=\"{fam}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{ip_family=\"{fam}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{ip_family=\"{fam}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{ip_family=\"{fam}\"}} {}", h.count);
    }
}

/// One sample per family under one name.
fn render_per_family(out: &mut String, name: &str, help: &str, kind: &str, per: [String; 2]) {
    header(out, name, help, kind);
    for f in IpFamily::ALL {
        let _ = writeln!(
            out,
            "{name}{{ip_family=\"{}\"}} {}",
            f.label(),
            per[f.index()]
        );
    }
}

/// One family's share of the metrics upstream labels with `ip_family`.
#[derive(Debug)]
struct PerFamily {
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    programming: Histogram,
    last_sync: f64,
    last_queued: f64,
    sync_failures: u64,
    no_local_internal: u64,
    no_local_external: u64,
}

impl PerFamily {
    fn new() -> Self {
        PerFamily {
            sync: Histogram::new(sync_buckets()),
            sync_full: Histogram::new(sync_buckets()),
            sync_partial: Histogram::new(sync_buckets()),
            programming: Histogram::new(programming_buckets()),
            last_sync: 0.0,
            last_queued: 0.0,
            sync_failures: 0,
            no_local_internal: 0,
            no_local_external: 0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// by [`IpFamily::index`]
    family: [PerFamily; 2],
    endpoint_changes: u64,
    service_changes: u64,
    endpoint_changes_pending: u64,
    service_changes_pending: u64,
    /// answers by status code: [200, 503]
    healthz: [u64; 2],
    livez: [u64; 2],
    rebuilds: u64,
    invalid_total: u64,
    invalid_current: u64,
    conntrack_deleted: u64,
}

/// The proxy's metrics, and with `--service-counters` the reader of the per-Service
/// counters.
#[derive(Debug)]
pub struct Metrics(Mutex<Inner>, OnceLock<crate::counters::Scraper>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(
            Mutex::new(Inner {
                family: [PerFamily::new(), PerFamily::new()],
                endpoint_changes: 0,
                service_changes: 0,
                endpoint_changes_pending: 0,
                service_changes_pending: 0,
                healthz: [0; 2],
                livez: [0; 2],
                rebuilds: 0,
                invalid_total: 0,
                invalid_current: 0,
                conntrack_deleted: 0,
            }),
            OnceLock::new(),
        )
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// One sync programs the tables of both families in one transaction; upstream runs one
// proxier per family (both on any node whose kernel has IPv6), each counting its own
// syncs. So each sync, failure and queued change is counted under both families, as a
// dual-stack kube-proxy reports them.
impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A successful sync of `d`: no change is pending any more.
    pub fn sync_done(&self, d: Duration, full: bool) {
        let now = now_unix();
        self.with(|m| {
            for f in &mut m.family {
                f.sync.observe(d.as_secs_f64());
                if full {
                    f.sync_full.observe(d.as_secs_f64());
                } else {
                    f.sync_partial.observe(d.as_secs_f64());
                }
                f.last_sync = now;
            }
            m.endpoint_changes_pending = 0;
            m.service_changes_pending = 0;
        })
    }

    /// A failed sync.
    pub fn sync_failed(&self) {
        self.with(|m| {
            for f in &mut m.family {
                f.sync_failures += 1;
            }
        })
    }

    /// The total of rebuilds after a refused transaction (the proxier counts them).
    pub fn rebuilds(&self, total: u64) {
        self.with(|m| m.rebuilds = total)
    }

    /// A change was queued for the next sync: `services` Service and `slices`
    /// EndpointSlice changes.
    pub fn queued(&self, services: usize, slices: usize) {
        let now = now_unix();
        self.with(|m| {
            for f in &mut m.family {
                f.last_queued = now;
            }
            m.service_changes += services as u64;
            m.endpoint_changes += slices as u64;
        })
    }

    /// Changes waiting for the next sync, as upstream's change trackers count them:
    /// Services whose Service object changed, and Services whose EndpointSlices did.
    pub fn pending(&self, services: usize, slices: usize) {
        self.with(|m| {
            m.service_changes_pending = services as u64;
            m.endpoint_changes_pending = slices as u64;
        })
    }

    /// Time from an EndpointSlice change trigger to its programming, under the family
    /// of the slice's addresses.
    pub fn programmed(&self, family: IpFamily, seconds: f64) {
        self.with(|m| {
            m.family[family.index()]
                .programming
                .observe(seconds.max(0.0))
        })
    }

    /// Services of a family whose policy leaves no local endpoint of that family.
    pub fn no_local_endpoints(&self, family: IpFamily, internal: usize, external: usize) {
        self.with(|m| {
            let f = &mut m.family[family.index()];
            f.no_local_internal = internal as u64;
            f.no_local_external = external as u64;
        })
    }

    /// A health probe answered with `status` (200 or 503; others are not counted).
    pub fn probe_answered(&self, probe: Probe, status: u16) {
        let i = match status {
            200 => 0,
            503 => 1,
            _ => return,
        };
        self.with(|m| match probe {
            Probe::Healthz => m.healthz[i] += 1,
            Probe::Livez => m.livez[i] += 1,
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

    /// Exports the per-Service counters (`--service-counters`) from now on.
    pub fn enable_service_counters(&self) {
        self.1.get_or_init(crate::counters::Scraper::new);
    }

    /// The reader of the per-Service counters, when they are on. Reading them asks the
    /// kernel, so it is not part of [`Metrics::render`].
    pub fn service_counters(&self) -> Option<&crate::counters::Scraper> {
        self.1.get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            let hist = |sel: fn(&PerFamily) -> &Histogram| {
                [sel(&m.family[0]).clone(), sel(&m.family[1]).clone()]
            };
            render_histograms(&mut s, "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", &hist(|f| &f.sync));
            render_histograms(&mut s, "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", &hist(|f| &f.sync_full));
            render_histograms(&mut s, "kubeproxy_sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", &hist(|f| &f.sync_partial));
            render_histograms(&mut s, "kubeproxy_network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", &hist(|f| &f.programming));
            let per = |sel: fn(&PerFamily) -> String| [sel(&m.family[0]), sel(&m.family[1])];
            render_per_family(&mut s, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", "gauge", per(|f| f.last_sync.to_string()));
            render_per_family(&mut s, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", "gauge", per(|f| f.last_queued.to_string()));
            render_per_family(&mut s, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures", "counter", per(|f| f.sync_failures.to_string()));
            let gauge = |s: &mut String, n: &str, h: &str, v: String| {
                header(s, n, h, "gauge");
                let _ = writeln!(s, "{n} {v}");
            };
            let counter = |s: &mut String, n: &str, h: &str, v: u64| {
                header(s, n, h, "counter");
                let _ = writeln!(s, "{n} {v}");
            };
            counter(&mut s, "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes", m.endpoint_changes);
            counter(&mut s, "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes", m.service_changes);
            gauge(&mut s, "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes", m.endpoint_changes_pending.to_string());
            gauge(&mut s, "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes", m.service_changes_pending.to_string());
            header(&mut s, "kubeproxy_sync_proxy_rules_no_local_endpoints_total", "Number of services with a Local traffic policy and no endpoints", "gauge");
            for f in IpFamily::ALL {
                let per = &m.family[f.index()];
                for (policy, v) in [("internal", per.no_local_internal), ("external", per.no_local_external)] {
                    let _ = writeln!(s, "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"{}\",traffic_policy=\"{policy}\"}} {v}", f.label());
                }
            }
            for (name, help, counts) in [
                ("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", m.healthz),
                ("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", m.livez),
            ] {
                header(&mut s, name, help, "counter");
                let _ = writeln!(s, "{name}{{code=\"200\"}} {}", counts[0]);
                let _ = writeln!(s, "{name}{{code=\"503\"}} {}", counts[1]);
            }
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
        m.programmed(IpFamily::V4, 0.3);
        let t = m.render();
        for fam in ["IPv4", "IPv6"] {
            assert!(t.contains(&format!(
                "kubeproxy_sync_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}} 1"
            )));
            assert!(t.contains(&format!(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{{ip_family=\"{fam}\",le=\"0.004\"}} 1"
            )));
            assert!(t.contains(&format!(
                "kubeproxy_sync_full_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}} 0"
            )));
            assert!(t.contains(&format!(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{ip_family=\"{fam}\"}} 1"
            )));
        }
        assert!(t.contains(
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.5\"} 1"
        ));
        assert!(t.contains(
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv6\",le=\"0.5\"} 0"
        ));
        // Each name has one HELP and one TYPE line, even with two families.
        assert_eq!(
            t.matches("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram")
                .count(),
            1
        );
    }

    /// Upstream's buckets, written out: component-base's MergeBuckets of
    /// LinearBuckets(0.25, 0.25, 2), (1, 1, 59), (60, 5, 12), (120, 30, 7), after the
    /// 0 it starts with.
    #[test]
    fn programming_buckets_are_upstreams() {
        let mut want = vec![0.0, 0.25, 0.5];
        let mut x = 1.0;
        while x <= 59.0 {
            want.push(x);
            x += 1.0;
        }
        for i in 0..12 {
            want.push(60.0 + 5.0 * i as f64);
        }
        for i in 0..7 {
            want.push(120.0 + 30.0 * i as f64);
        }
        assert_eq!(want.len(), 81);
        assert_eq!(*want.last().unwrap_or(&0.0), 300.0);
        assert_eq!(programming_buckets(), want);
        let t = Metrics::default().render();
        let les: Vec<&str> = t
            .lines()
            .filter_map(|l| {
                l.strip_prefix(
                    "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"",
                )
            })
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(les.len(), 82, "81 buckets and +Inf");
        assert_eq!(&les[..4], ["0", "0.25", "0.5", "1"]);
        assert_eq!(&les[60..66], ["58", "59", "60", "65", "70", "75"]);
        assert_eq!(
            &les[74..],
            ["120", "150", "180", "210", "240", "270", "300", "+Inf"]
        );
    }

    #[test]
    fn pending_changes_and_probe_totals() {
        let m = Metrics::default();
        m.queued(1, 2);
        m.pending(1, 2);
        m.probe_answered(Probe::Healthz, 503);
        m.probe_answered(Probe::Healthz, 503);
        m.probe_answered(Probe::Livez, 200);
        let t = m.render();
        assert!(t.contains("\nkubeproxy_sync_proxy_rules_service_changes_pending 1\n"));
        assert!(t.contains("\nkubeproxy_sync_proxy_rules_endpoint_changes_pending 2\n"));
        assert!(t.contains("\nkubeproxy_proxy_healthz_total{code=\"503\"} 2\n"));
        assert!(t.contains("\nkubeproxy_proxy_healthz_total{code=\"200\"} 0\n"));
        assert!(t.contains("\nkubeproxy_proxy_livez_total{code=\"200\"} 1\n"));
        assert!(t.contains("# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_pending gauge\n"));
        m.no_local_endpoints(IpFamily::V6, 1, 2);
        let t = m.render();
        for (sample, v) in [
            ("ip_family=\"IPv4\",traffic_policy=\"internal\"", 0),
            ("ip_family=\"IPv6\",traffic_policy=\"internal\"", 1),
            ("ip_family=\"IPv6\",traffic_policy=\"external\"", 2),
        ] {
            let line =
                format!("kubeproxy_sync_proxy_rules_no_local_endpoints_total{{{sample}}} {v}");
            assert!(t.lines().any(|l| l == line), "no {line} in\n{t}");
        }
        // A sync takes every pending change; the totals stay.
        m.sync_done(Duration::from_millis(1), true);
        let t = m.render();
        assert!(t.contains("\nkubeproxy_sync_proxy_rules_service_changes_pending 0\n"));
        assert!(t.contains("\nkubeproxy_sync_proxy_rules_endpoint_changes_pending 0\n"));
        assert!(t.contains("\nkubeproxy_sync_proxy_rules_endpoint_changes_total 2\n"));
    }
}
