//! Which endpoints serve cluster traffic and which serve node-local traffic.
//!
//! A port of upstream's `CategorizeEndpoints` (pkg/proxy/topology.go). Ready endpoints
//! are preferred; serving-and-terminating endpoints are the fallback, decided separately
//! for Cluster and Local; non-serving endpoints never serve. The topology mode (zone or
//! node hints) is chosen once per service from the hints, and then applied without a
//! fallback. Feature switches and the node's zone are arguments: no hidden inputs.

use crate::model::{Endpoint, ServicePort};

/// The endpoint lists of one service port. `None` means the service does not use that
/// kind of endpoints; `Some(vec![])` means it does but has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// endpoints for traffic under a Cluster policy
    pub cluster: Option<Vec<Endpoint>>,
    /// endpoints for traffic under a Local policy
    pub local: Option<Vec<Endpoint>>,
    /// the union of both (what this node may ever send traffic to)
    pub all_reachable: Vec<Endpoint>,
    /// whether any endpoint anywhere can serve (decides reject vs drop)
    pub has_any: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    SameZone,
    SameNode,
}

fn topology_mode(endpoints: &[Endpoint], node: &str, zone: Option<&str>) -> Mode {
    let mut all_node_hints = true;
    let mut has_for_node = false;
    let mut all_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.iter().any(|n| n == node) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| ep.zone_hints.iter().any(|h| h == z)) {
            has_for_zone = true;
        }
    }
    if all_node_hints && has_for_node {
        return Mode::SameNode;
    }
    if all_zone_hints && has_for_zone {
        return Mode::SameZone;
    }
    Mode::None
}

fn available(ep: &Endpoint, mode: Mode, node: &str, zone: Option<&str>) -> bool {
    match mode {
        Mode::None => true,
        Mode::SameNode => ep.node_hints.iter().any(|n| n == node),
        Mode::SameZone => zone.is_some_and(|z| ep.zone_hints.iter().any(|h| h == z)),
    }
}

/// Sorts endpoints into cluster and local lists, as upstream does.
pub fn categorize(
    svc: &ServicePort,
    endpoints: &[Endpoint],
    node: &str,
    zone: Option<&str>,
) -> Categorized {
    let mut out = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let mode = if endpoints.iter().any(|e| e.ready) {
            topology_mode(endpoints, node, zone)
        } else {
            Mode::None
        };
        let mut cluster: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| e.ready && available(e, mode, node, zone))
            .cloned()
            .collect();
        if cluster.is_empty() {
            cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .cloned()
                .collect();
        }
        out.has_any = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone().unwrap_or_default();
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            local_terminating |= ep.is_local;
        }
    }
    let local: Vec<Endpoint> = if local_ready {
        endpoints
            .iter()
            .filter(|e| e.is_local && e.ready)
            .cloned()
            .collect()
    } else if local_terminating {
        endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut all = out.cluster.clone().unwrap_or_default();
    for e in &local {
        if !all.contains(e) {
            all.push(e.clone());
        }
    }
    out.all_reachable = all;
    out.local = Some(local);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn svc(itp_local: bool, etp_local: bool, external: bool) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "svc".into(),
                port: "p".into(),
                protocol: Protocol::Tcp,
            },
            cluster_ips: vec!["172.30.0.1".parse().unwrap()],
            port: 80,
            node_port: external.then_some(30080),
            external_ips: vec![],
            load_balancer_ips: vec![],
            source_ranges: vec![],
            external_policy_local: etp_local,
            internal_policy_local: itp_local,
            affinity_timeout: None,
            health_check_node_port: None,
            traffic_distribution: None,
            created: None,
        }
    }

    /// `"10.0.0.1:80"` plus flags: local, ready, serving, terminating.
    fn ep(s: &str, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        let (ip, port) = s.rsplit_once(':').unwrap();
        Endpoint {
            ip: ip.parse().unwrap(),
            port: port.parse().unwrap(),
            ready,
            serving,
            terminating,
            is_local: local,
            has_node: true,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        }
    }

    fn addrs(v: &Option<Vec<Endpoint>>) -> Option<Vec<String>> {
        v.as_ref()
            .map(|v| v.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect())
    }

    struct Case {
        name: &'static str,
        svc: ServicePort,
        eps: Vec<Endpoint>,
        cluster: Option<Vec<&'static str>>,
        local: Option<Vec<&'static str>>,
        has_any: bool,
    }

    #[test]
    fn upstream_table() {
        let cases = vec![
            Case {
                name: "should use ready endpoints, not terminating",
                svc: svc(false, false, false),
                eps: vec![
                    ep("10.0.0.0:80", false, true, true, false),
                    ep("10.0.0.1:80", false, false, true, true),
                ],
                cluster: Some(vec!["10.0.0.0:80"]),
                local: None,
                has_any: true,
            },
            Case {
                name: "Cluster: all endpoints terminating, fall back to serving-terminating",
                svc: svc(false, false, false),
                eps: vec![
                    ep("10.0.0.0:80", false, false, true, true),
                    ep("10.0.0.1:80", false, false, false, true),
                ],
                cluster: Some(vec!["10.0.0.0:80"]),
                local: None,
                has_any: true,
            },
            Case {
                name: "iTP: Local, with a local ready endpoint",
                svc: svc(true, false, false),
                eps: vec![
                    ep("10.0.0.0:80", true, true, true, false),
                    ep("10.0.0.1:80", false, true, true, false),
                ],
                cluster: None,
                local: Some(vec!["10.0.0.0:80"]),
                has_any: true,
            },
            Case {
                name: "iTP: Local, all endpoints remote",
                svc: svc(true, false, false),
                eps: vec![ep("10.0.0.1:80", false, true, true, false)],
                cluster: None,
                local: Some(vec![]),
                has_any: true,
            },
            Case {
                name: "eTP: Local, iTP: Cluster, local endpoint only terminating",
                svc: svc(false, true, true),
                eps: vec![
                    ep("10.0.0.0:80", true, false, true, true),
                    ep("10.0.0.1:80", false, true, true, false),
                ],
                cluster: Some(vec!["10.0.0.1:80"]),
                local: Some(vec!["10.0.0.0:80"]),
                has_any: true,
            },
            Case {
                name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
                svc: svc(true, true, true),
                eps: vec![ep("10.0.0.1:80", false, false, true, true)],
                cluster: Some(vec!["10.0.0.1:80"]),
                local: Some(vec![]),
                has_any: true,
            },
            Case {
                name: "no endpoints at all",
                svc: svc(false, false, false),
                eps: vec![ep("10.0.0.1:80", false, false, false, false)],
                cluster: Some(vec![]),
                local: None,
                has_any: false,
            },
        ];
        for c in cases {
            let got = categorize(&c.svc, &c.eps, "node", None);
            let want = |v: Option<Vec<&str>>| v.map(|v| v.into_iter().map(String::from).collect());
            assert_eq!(addrs(&got.cluster), want(c.cluster), "{}: cluster", c.name);
            assert_eq!(addrs(&got.local), want(c.local), "{}: local", c.name);
            assert_eq!(got.has_any, c.has_any, "{}: has_any", c.name);
        }
    }

    #[test]
    fn zone_hints_restrict_cluster_endpoints() {
        let s = svc(false, false, false);
        let mut a = ep("10.0.0.1:80", false, true, true, false);
        a.zone_hints = vec!["zone-a".to_string()].into();
        let mut b = ep("10.0.0.2:80", false, true, true, false);
        b.zone_hints = vec!["zone-b".to_string()].into();
        let got = categorize(&s, &[a.clone(), b.clone()], "node", Some("zone-a"));
        assert_eq!(addrs(&got.cluster), Some(vec!["10.0.0.1:80".to_string()]));
        // Node without a zone label: hints ignored.
        let got = categorize(&s, &[a.clone(), b.clone()], "node", None);
        assert_eq!(got.cluster.map(|v| v.len()), Some(2));
        // One endpoint without hints: hints ignored.
        b.zone_hints = Default::default();
        let got = categorize(&s, &[a, b], "node", Some("zone-a"));
        assert_eq!(got.cluster.map(|v| v.len()), Some(2));
    }
}
