//! Services whose rules the kernel refuses, held out of the ruleset so that everything
//! else is still programmed.
//!
//! Every cause of a refusal we know of is caught while converting objects (see
//! `model::convert`), so a Service lands here only through a kernel behaviour nobody
//! foresaw. When even a rebuild from the desired state is refused, the proxier asks the
//! kernel, without committing (`netlink::Kernel::check`), which Services it refuses
//! ([`crate::proxier::Proxier::find_refused`]) and holds them here. A held Service is
//! tried again when its ports or endpoints change, or after a backoff that doubles from
//! [`FIRST_RETRY`] to [`MAX_RETRY`], at a full sync.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::model::{Problem, ProxyModel, ServiceEntry, ServiceName, ServicePortName};

/// How long a Service is held before it is tried again with unchanged content.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);
/// The longest hold between two tries.
pub const MAX_RETRY: Duration = Duration::from_secs(30 * 60);

/// One held Service.
#[derive(Debug)]
struct Held {
    /// its ports as they were when the kernel refused them
    entries: BTreeMap<ServicePortName, ServiceEntry>,
    /// what the kernel said
    reason: String,
    /// when it is tried again with unchanged content
    retry_at: Instant,
    /// the hold after the next refusal
    next_backoff: Duration,
}

/// The held Services.
#[derive(Debug, Default)]
pub struct Quarantine {
    held: BTreeMap<ServiceName, Held>,
    /// backoff to use if a Service is held again soon after its release
    released: BTreeMap<ServiceName, Duration>,
}

/// The Service a port belongs to.
pub fn service_of(p: &ServicePortName) -> ServiceName {
    ServiceName {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    }
}

/// The ports of one Service in a model.
fn entries_of(model: &ProxyModel, svc: &ServiceName) -> BTreeMap<ServicePortName, ServiceEntry> {
    model
        .services
        .iter()
        .filter(|(n, _)| n.namespace == svc.namespace && n.name == svc.name)
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect()
}

impl Quarantine {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The held Services.
    pub fn services(&self) -> impl Iterator<Item = &ServiceName> {
        self.held.keys()
    }

    /// Holds `svc` (as `model` has it) because the kernel refused its rules.
    pub fn hold(&mut self, svc: ServiceName, model: &ProxyModel, reason: String, now: Instant) {
        let backoff = self.released.remove(&svc).unwrap_or(FIRST_RETRY);
        tracing::warn!(
            service = %svc,
            retry_in_s = backoff.as_secs(),
            "the kernel refuses this Service's rules ({reason}); programming every other Service without it"
        );
        self.held.insert(
            svc.clone(),
            Held {
                entries: entries_of(model, &svc),
                reason,
                retry_at: now + backoff,
                next_backoff: (backoff * 2).min(MAX_RETRY),
            },
        );
    }

    /// Takes the held Services out of `model` and returns a problem for each that stays
    /// held. A Service whose ports changed since it was held is released (its new
    /// content gets a try); with `full` (a model of the whole cluster), so is one that is
    /// gone or whose hold has expired.
    pub fn apply(&mut self, model: &mut ProxyModel, full: bool, now: Instant) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut release = Vec::new();
        for (svc, held) in &self.held {
            let current = entries_of(model, svc);
            // A partial model holds only the Services it recomputed: absence means
            // "not looked at"; a full model without it means the Service is gone.
            let changed = if current.is_empty() {
                full
            } else {
                current != held.entries
            };
            if changed || (full && now >= held.retry_at) {
                release.push(svc.clone());
                continue;
            }
            for port in current.keys() {
                model.services.remove(port);
            }
            problems.push(Problem {
                object: format!("Service {svc}"),
                reason: format!(
                    "the kernel refused its rules ({}); held out of the ruleset, tried again when it changes or in {} s",
                    held.reason,
                    held.retry_at.saturating_duration_since(now).as_secs()
                ),
            });
        }
        for svc in release {
            if let Some(h) = self.held.remove(&svc) {
                tracing::info!(service = %svc, "trying a held Service again");
                self.released.insert(svc, h.next_backoff);
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePort};

    fn port(ns: &str, name: &str, p: u16) -> (ServicePortName, ServiceEntry) {
        let n = ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        let e = ServiceEntry {
            port: ServicePort {
                name: n.clone(),
                cluster_ips: vec!["10.0.0.1".parse().unwrap()],
                port: p,
                node_port: None,
                external_ips: vec![],
                load_balancer_ips: vec![],
                source_ranges: vec![],
                external_policy_local: false,
                internal_policy_local: false,
                affinity_timeout: None,
                health_check_node_port: None,
                traffic_distribution: None,
                created: None,
            },
            endpoints: vec![],
        };
        (n, e)
    }

    fn model(ports: &[(&str, u16)]) -> ProxyModel {
        ProxyModel {
            services: ports.iter().map(|(n, p)| port("ns", n, *p)).collect(),
            ..Default::default()
        }
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn held_until_changed_or_expired() {
        let t0 = Instant::now();
        let mut q = Quarantine::default();
        q.hold(svc("bad"), &model(&[("bad", 80)]), "EINVAL".into(), t0);

        let mut m = model(&[("bad", 80), ("good", 80)]);
        let problems = q.apply(&mut m, true, t0);
        assert_eq!(m.services.len(), 1, "the held Service is taken out");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].object.contains("ns/bad"));

        // unchanged, partial sync long after: still held (timed retries are for full syncs)
        let mut m = model(&[("bad", 80), ("good", 80)]);
        q.apply(&mut m, false, t0 + MAX_RETRY);
        assert_eq!(m.services.len(), 1);

        // a partial model without it: still held, still reported
        let mut m = model(&[("good", 80)]);
        assert_eq!(q.apply(&mut m, false, t0).len(), 1);

        // changed: released at once
        let mut m = model(&[("bad", 81), ("good", 80)]);
        assert!(q.apply(&mut m, false, t0).is_empty());
        assert_eq!(m.services.len(), 2);
        assert!(q.is_empty());

        // held again: the hold doubles; expires at a full sync
        q.hold(svc("bad"), &model(&[("bad", 81)]), "EINVAL".into(), t0);
        let mut m = model(&[("bad", 81)]);
        q.apply(&mut m, true, t0 + FIRST_RETRY);
        assert!(
            m.services.is_empty(),
            "second hold is longer than the first"
        );
        let mut m = model(&[("bad", 81)]);
        q.apply(&mut m, true, t0 + FIRST_RETRY * 2);
        assert_eq!(m.services.len(), 1);
    }
}
