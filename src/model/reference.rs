//! The conversion as it was written against full k8s-openapi objects, kept (test-only)
//! as the oracle of the differential test in [`super::objects`]: the lean types must
//! give the same service ports, endpoints, node facts, CIDRs and problems for every
//! object k8s-openapi accepts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::convert::{
    parse_cidr_sloppy, parse_ip_sloppy, special_address, NodeInfo, Problems,
    DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
    ZONE_LABEL,
};
use super::types::{
    Endpoint, Protocol, ServiceName, ServicePort, ServicePortName, TrafficDistribution,
};

/// The Service an EndpointSlice belongs to, as `state.rs` read it.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceName> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceName {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        name: svc.clone(),
    })
}

/// Node object → [`NodeInfo`].
pub fn node_info(node: &Node, problems: &mut Problems) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let object = format!("Node {name}");
    let mut internal = Vec::new();
    let mut other = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        match parse_ip_sloppy(&a.address) {
            Some(ip)
                if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    && special_address(&ip).is_some() =>
            {
                problems.add(
                    &object,
                    format!(
                        "address {:?} is a {} address; never used for NodePorts",
                        a.address,
                        special_address(&ip).unwrap_or_default()
                    ),
                )
            }
            Some(ip) if a.type_ == "InternalIP" => internal.push(ip),
            Some(ip) if a.type_ == "ExternalIP" => other.push(ip),
            Some(_) => {}
            None if a.type_ == "InternalIP" || a.type_ == "ExternalIP" => problems.add(
                &object,
                format!("address {:?} is not an IP; skipped", a.address),
            ),
            None => {}
        }
    }
    internal.extend(other);
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    NodeInfo {
        name,
        ips: internal,
        zone,
    }
}

/// ServiceCIDR objects → networks.
pub fn service_cidrs<'a>(
    objs: impl Iterator<Item = &'a ServiceCIDR>,
    problems: &mut Problems,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for o in objs {
        let object = format!("ServiceCIDR {}", o.metadata.name.as_deref().unwrap_or(""));
        for c in o
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_ref())
            .into_iter()
            .flatten()
        {
            match parse_cidr_sloppy(c) {
                Some(n) => out.push(n),
                None => problems.add(&object, format!("cidr {c:?} is not a CIDR; skipped")),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether the proxy must ignore this Service entirely (headless, ExternalName, no
/// cluster IP, or owned by another proxy).
pub fn ignored_service(svc: &Service) -> bool {
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return true;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return true;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return true;
    }
    // The API server always fills clusterIP from clusterIPs; a hand-written manifest
    // may give only clusterIPs, which then count.
    let first = match spec.cluster_ip.as_deref() {
        None | Some("") => spec
            .cluster_ips
            .as_ref()
            .and_then(|v| v.first())
            .map(String::as_str),
        ip => ip,
    };
    matches!(first, None | Some("") | Some("None"))
}

fn port_u16(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

/// One Service → its ports. Bad fields are skipped with a problem; a Service whose
/// cluster IP is unusable yields no ports.
pub fn service_ports(svc: &Service, problems: &mut Problems) -> Vec<ServicePort> {
    if ignored_service(svc) {
        return Vec::new();
    }
    let name = ServiceName {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    };
    let object = format!("Service {name}");
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let raw_ips: Vec<&String> = match spec.cluster_ips.as_ref() {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    for s in raw_ips {
        match parse_ip_sloppy(s) {
            Some(ip) if special_address(&ip).is_some() => problems.add(
                &object,
                format!(
                    "cluster IP {s:?} is a {} address; skipped",
                    special_address(&ip).unwrap_or_default()
                ),
            ),
            Some(ip) if !cluster_ips.iter().any(|c| c.is_ipv6() == ip.is_ipv6()) => {
                cluster_ips.push(ip)
            }
            Some(_) => problems.add(
                &object,
                format!("second cluster IP {s:?} of one family; skipped"),
            ),
            None => problems.add(&object, format!("cluster IP {s:?} is not an IP; skipped")),
        }
    }
    if cluster_ips.is_empty() {
        problems.add(&object, "no usable cluster IP; service skipped");
        return Vec::new();
    }
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let is_lb = svc_type == "LoadBalancer";
    let mut external_ips = Vec::new();
    // Frontends of a family the Service has no cluster IP of are never programmed
    // (upstream filters them by the Service's families too).
    let family_ok = |ip: &IpAddr| cluster_ips.iter().any(|c| c.is_ipv6() == ip.is_ipv6());
    let usable = |what: &str, s: &str, ip: &IpAddr, problems: &mut Problems| -> bool {
        if let Some(why) = special_address(ip) {
            problems.add(&object, format!("{what} {s:?} is a {why} address; skipped"));
            false
        } else if !family_ok(ip) {
            problems.add(
                &object,
                format!("{what} {s:?} is of a family the Service does not have; skipped"),
            );
            false
        } else {
            true
        }
    };
    for s in spec.external_ips.iter().flatten() {
        match parse_ip_sloppy(s) {
            Some(ip) if !usable("external IP", s, &ip, problems) => {}
            Some(ip) => external_ips.push(ip),
            None => problems.add(&object, format!("external IP {s:?} is not an IP; skipped")),
        }
    }
    let mut load_balancer_ips = Vec::new();
    if is_lb {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let Some(s) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            match parse_ip_sloppy(s) {
                Some(ip) if !usable("load balancer IP", s, &ip, problems) => {}
                Some(ip) => load_balancer_ips.push(ip),
                None => problems.add(
                    &object,
                    format!("load balancer IP {s:?} is not an IP; skipped"),
                ),
            }
        }
    }
    let mut source_ranges = Vec::new();
    if is_lb {
        for s in spec.load_balancer_source_ranges.iter().flatten() {
            match parse_cidr_sloppy(s.trim()) {
                Some(n) => source_ranges.push(n),
                None => problems.add(
                    &object,
                    format!("source range {s:?} is not a CIDR; skipped"),
                ),
            }
        }
    }
    let node_port_type = svc_type == "NodePort" || is_lb;
    let external_policy_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        Some(match t {
            Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => t as u32,
            Some(t) => {
                problems.add(&object, format!("session affinity timeout {t} is outside 1..{MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"));
                DEFAULT_AFFINITY_TIMEOUT
            }
            None => DEFAULT_AFFINITY_TIMEOUT,
        })
    } else {
        None
    };
    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        Some("PreferClose") | Some("PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
        Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
        _ => None,
    };
    let health_check_node_port = if is_lb && external_policy_local {
        spec.health_check_node_port.and_then(port_u16)
    } else {
        None
    };

    let mut out = Vec::new();
    let created = svc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| (t.0.as_second(), t.0.subsec_nanosecond()));
    let mut seen: Vec<(String, Protocol, u16)> = Vec::new();
    let ports = spec.ports.as_deref().unwrap_or_default();
    for p in ports {
        let port_name = p.name.clone().unwrap_or_default();
        if port_name.is_empty() && ports.len() > 1 {
            problems.add(
                &object,
                format!("port {} has no name although the Service has several ports; its endpoints are matched by the empty name", p.port),
            );
        }
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            problems.add(
                &object,
                format!(
                    "port {port_name:?}: protocol {:?} is not TCP, UDP or SCTP; skipped",
                    p.protocol
                ),
            );
            continue;
        };
        let Some(port) = port_u16(p.port) else {
            problems.add(
                &object,
                format!(
                    "port {port_name:?}: port {} is outside 1-65535; skipped",
                    p.port
                ),
            );
            continue;
        };
        if let Some((n, pr, po)) = seen
            .iter()
            .find(|(n, pr, po)| *pr == protocol && (*n == port_name || *po == port))
        {
            problems.add(
                &object,
                format!(
                    "port {port_name:?} ({}/{port}) repeats port {n:?} ({}/{po}); skipped",
                    protocol.name(),
                    pr.name()
                ),
            );
            continue;
        }
        seen.push((port_name.clone(), protocol, port));
        let node_port = match p.node_port {
            Some(n) if node_port_type => match port_u16(n) {
                Some(n) => Some(n),
                None => {
                    problems.add(
                        &object,
                        format!("port {port_name:?}: node port {n} is outside 1-65535; ignored"),
                    );
                    None
                }
            },
            _ => None,
        };
        out.push(ServicePort {
            name: ServicePortName {
                namespace: name.namespace.clone(),
                name: name.name.clone(),
                port: port_name,
                protocol,
            },
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            source_ranges: source_ranges.clone(),
            external_policy_local,
            internal_policy_local,
            affinity_timeout,
            health_check_node_port,
            traffic_distribution,
            created,
        });
    }
    out
}

/// The endpoints of every port of one service, gathered from its slices. Keys are the
/// port names; endpoints are de-duplicated by `ip:port` (a ready copy wins).
pub fn slice_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    node_name: &str,
    problems: &mut Problems,
) -> BTreeMap<(String, Protocol), Vec<Endpoint>> {
    let mut out: BTreeMap<(String, Protocol), Vec<Endpoint>> = BTreeMap::new();
    for slice in slices {
        let object = format!(
            "EndpointSlice {}/{}",
            slice.metadata.namespace.as_deref().unwrap_or(""),
            slice.metadata.name.as_deref().unwrap_or("")
        );
        let want_v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => continue, // FQDN and unknown types are not ours to program
        };
        for sp in slice.ports.iter().flatten() {
            let pname = sp.name.clone().unwrap_or_default();
            let Some(proto) = Protocol::parse(sp.protocol.as_deref()) else {
                problems.add(
                    &object,
                    format!(
                        "port {pname:?}: unknown protocol {:?}; skipped",
                        sp.protocol
                    ),
                );
                continue;
            };
            let Some(port) = sp.port.and_then(port_u16) else {
                problems.add(
                    &object,
                    format!(
                        "port {pname:?}: port {:?} missing or outside 1-65535; skipped",
                        sp.port
                    ),
                );
                continue;
            };
            let list = out.entry((pname.clone(), proto)).or_default();
            for ep in &slice.endpoints {
                // Upstream uses only the first address of an endpoint.
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let Some(ip) = parse_ip_sloppy(addr) else {
                    problems.add(
                        &object,
                        format!("endpoint address {addr:?} is not an IP; skipped"),
                    );
                    continue;
                };
                if let Some(why) = special_address(&ip) {
                    problems.add(
                        &object,
                        format!("endpoint address {addr:?} is a {why} address; skipped"),
                    );
                    continue;
                }
                if ip.is_ipv6() != want_v6 {
                    problems.add(
                        &object,
                        format!(
                            "endpoint address {addr:?} does not match addressType {}; skipped",
                            slice.address_type
                        ),
                    );
                    continue;
                }
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let hints = ep.hints.as_ref();
                let new = Endpoint {
                    ip,
                    port,
                    ready,
                    serving,
                    terminating,
                    is_local: ep.node_name.as_deref() == Some(node_name) && !node_name.is_empty(),
                    has_node: ep.node_name.as_deref().is_some_and(|n| !n.is_empty()),
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect())
                        .unwrap_or_default(),
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect())
                        .unwrap_or_default(),
                };
                match list
                    .iter_mut()
                    .find(|e| e.ip == new.ip && e.port == new.port)
                {
                    Some(old) if !old.ready && new.ready => *old = new,
                    Some(_) => {}
                    None => list.push(new),
                }
            }
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    //! Differential test: every object of a corpus (hand-written seeds, the repository's
    //! manifests and cases, and thousands of mutations of them) is read both as a
    //! k8s-openapi object, converted by the code above, and as a lean object, converted
    //! by [`super::super::convert`]. Both must agree on whether the object is refused
    //! and, when it is not, on every output and every problem reported.

    use std::path::Path;

    use serde_json::{json, Value};

    use super::*;

    use super::super::{convert, objects};
    use crate::synthetic::Rng;

    const NODE: &str = "node-a";

    fn seeds() -> Vec<Value> {
        let mut out = vec![
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "lb", "namespace": "ns", "resourceVersion": "42", "uid": "u",
                             "creationTimestamp": "2024-01-02T03:04:05Z",
                             "labels": {"app": "lb"}, "annotations": {"a": "b"},
                             "managedFields": [{"manager": "m", "operation": "Update",
                                                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
                "spec": {"type": "LoadBalancer", "clusterIP": "172.30.0.41",
                         "clusterIPs": ["172.30.0.41", "fd00:30::41"],
                         "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                         "externalIPs": ["192.168.99.33", "2001:db8::33"],
                         "loadBalancerSourceRanges": ["203.0.113.0/25", " 10.0.0.0/8 "],
                         "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                         "healthCheckNodePort": 30000,
                         "sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 100}},
                         "trafficDistribution": "PreferClose",
                         "selector": {"app": "lb"},
                         "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "targetPort": 8080,
                                    "nodePort": 3001, "appProtocol": "http"},
                                   {"name": "p53", "port": 53, "protocol": "UDP", "targetPort": "dns",
                                    "nodePort": 3002}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"},
                                                        {"ip": "5.6.7.8", "ipMode": "Proxy"},
                                                        {"ip": "2001:db8::1:1", "ipMode": "VIP"},
                                                        {"hostname": "lb.example"}]},
                           "conditions": []}
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "np", "namespace": "ns2"},
                "spec": {"type": "NodePort", "clusterIP": "172.30.0.42",
                         "internalTrafficPolicy": "Local", "trafficDistribution": "PreferSameNode",
                         "ports": [{"port": 3306, "nodePort": 31306, "protocol": "SCTP"}]}
            }),
            json!({"kind": "Service", "metadata": {"name": "ext", "namespace": "ns"},
                   "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            json!({"kind": "Service", "metadata": {"name": "headless", "namespace": "ns"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            json!({"kind": "Service", "metadata": {"name": "other", "namespace": "ns",
                                "labels": {"service.kubernetes.io/service-proxy-name": "x"}},
                   "spec": {"clusterIP": "172.30.0.43", "ports": [{"port": 80}]}}),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "lb-abc", "namespace": "ns", "resourceVersion": "7",
                             "generateName": "lb-",
                             "labels": {"kubernetes.io/service-name": "lb",
                                        "endpointslice.kubernetes.io/managed-by": "c"},
                             "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                                                 "2024-01-02T03:04:05.25Z"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                                  "name": "lb", "uid": "u"}]},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.180.0.1", "10.180.0.9"], "nodeName": "node-a",
                     "conditions": {"ready": true, "serving": true, "terminating": false},
                     "targetRef": {"kind": "Pod", "name": "p1", "namespace": "ns"},
                     "zone": "z1",
                     "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}],
                               "forNodes": [{"name": "node-a"}]}},
                    {"addresses": ["10.180.0.2"], "nodeName": "node-b",
                     "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.180.0.3"], "conditions": {"serving": false}},
                    {"addresses": ["010.180.0.4"], "nodeName": ""},
                    {"addresses": ["10.180.0.1"], "conditions": {"ready": false}},
                    {"addresses": []}
                ],
                "ports": [{"name": "p80", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                          {"name": "p53", "port": 53, "protocol": "UDP"}]
            }),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "lb-v6", "namespace": "ns",
                             "labels": {"kubernetes.io/service-name": "lb"}},
                "addressType": "IPv6",
                "endpoints": [{"addresses": ["fd00:180::1"], "nodeName": "node-a"},
                              {"addresses": ["FD00:180::2"]}],
                "ports": [{"name": "p80", "port": 8080}]
            }),
            json!({"kind": "EndpointSlice", "metadata": {"name": "f", "namespace": "ns"},
                   "addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}],
                   "ports": [{"port": 80}]}),
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-a", "resourceVersion": "9",
                             "labels": {"topology.kubernetes.io/zone": "z1",
                                        "kubernetes.io/hostname": "node-a"}},
                "spec": {"podCIDR": "10.180.0.0/24", "taints": []},
                "status": {"addresses": [{"type": "Hostname", "address": "node-a"},
                                         {"type": "ExternalIP", "address": "203.0.113.5"},
                                         {"type": "InternalIP", "address": "192.168.0.2"},
                                         {"type": "InternalIP", "address": "fd00::2"},
                                         {"type": "InternalIP", "address": "127.0.0.1"}],
                           "capacity": {"cpu": "4"}}
            }),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                "metadata": {"name": "kubernetes"},
                "spec": {"cidrs": ["172.30.0.0/16", "fd00:30::/112", "172.031.0.0/16", "x"]},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "r",
                                           "message": "", "lastTransitionTime": "2024-01-02T03:04:05Z"}]}
            }),
        ];
        // The repository's own inputs: the fuzz corpus and the conformance cases.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["fuzz/corpus/manifests", "tests/cases"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(e.unwrap().path());
            }
        }
        // More cases (the shared conformance suite) when asked for.
        if let Some(dir) = std::env::var_os("KNP_DIFF_CORPUS") {
            for e in std::fs::read_dir(dir).unwrap() {
                files.push(e.unwrap().path());
            }
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            // The YAML parser cannot resume after an error: stop at the first.
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                match <Value as serde::Deserialize>::deserialize(doc) {
                    Ok(v) => collect(v, &mut out),
                    Err(_) => break,
                }
            }
        }
        out
    }

    /// The objects of a kind the proxy reads, anywhere in `v`.
    fn collect(v: Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m)
                if matches!(
                    m.get("kind").and_then(Value::as_str),
                    Some("Service" | "EndpointSlice" | "Node" | "ServiceCIDR")
                ) =>
            {
                out.push(Value::Object(m))
            }
            Value::Object(m) => m.into_iter().for_each(|(_, v)| collect(v, out)),
            Value::Array(a) => a.into_iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }

    #[derive(Debug)]
    enum Outcome {
        /// both refused the object
        Refused,
        /// both read it the same
        Same,
        /// k8s-openapi refused it and the lean type did not
        OnlyOpenapiRefused,
    }

    /// Reads `v` both ways as `kind` and compares; panics on a difference.
    fn compare(kind: &str, v: &Value) -> Outcome {
        macro_rules! both {
            ($full:ty, $lean:ty) => {
                match (
                    serde_json::from_value::<$full>(v.clone()),
                    objects::from_object::<_, $lean>(v.clone()),
                ) {
                    (Ok(f), Ok(l)) => (f, l),
                    (Err(_), Err(_)) => return Outcome::Refused,
                    (Err(_), Ok(_)) => return Outcome::OnlyOpenapiRefused,
                    (Ok(_), Err(e)) => panic!("only the lean type refuses {v}: {e}"),
                }
            };
        }
        let (mut pf, mut pl) = (Problems::default(), Problems::default());
        match kind {
            "Service" => {
                let (f, l) = both!(Service, objects::Service);
                assert_eq!(ignored_service(&f), convert::ignored_service(&l), "{v}");
                assert_eq!(
                    service_ports(&f, &mut pf),
                    convert::service_ports(&l, &mut pl),
                    "{v}"
                );
                let name = ServiceName {
                    namespace: f.metadata.namespace.clone().unwrap_or_default(),
                    name: f.metadata.name.clone().unwrap_or_default(),
                };
                assert_eq!(name, l.key(), "{v}");
            }
            "EndpointSlice" => {
                let (f, l) = both!(EndpointSlice, objects::EndpointSlice);
                assert_eq!(
                    slice_endpoints(std::iter::once(&f), NODE, &mut pf),
                    convert::slice_endpoints(std::iter::once(&l), NODE, &mut pl),
                    "{v}"
                );
                assert_eq!(slice_service(&f), l.service(), "{v}");
                let trigger = f
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(objects::TRIGGER_ANNOTATION))
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| t.as_second() as f64 + f64::from(t.subsec_nanosecond()) / 1e9);
                assert_eq!(trigger, l.trigger_time(), "{v}");
            }
            "Node" => {
                let (f, l) = both!(Node, objects::Node);
                assert_eq!(
                    node_info(&f, &mut pf),
                    convert::node_info(&l, &mut pl),
                    "{v}"
                );
            }
            "ServiceCIDR" => {
                let (f, l) = both!(ServiceCIDR, objects::ServiceCidr);
                assert_eq!(
                    service_cidrs(std::iter::once(&f), &mut pf),
                    convert::service_cidrs(std::iter::once(&l), &mut pl),
                    "{v}"
                );
            }
            _ => unreachable!(),
        }
        assert_eq!(pf.0, pl.0, "{v}");
        Outcome::Same
    }

    /// A lean object of `kind` from `v`, compared by its `Debug` text (enough to tell
    /// whether a change of input reached it).
    fn lean_debug(kind: &str, v: &Value) -> Option<String> {
        fn d<T: objects::ApiKind>(v: &Value) -> Option<String> {
            objects::from_object::<_, T>(v.clone())
                .ok()
                .map(|o| format!("{o:?}"))
        }
        match kind {
            "Service" => d::<objects::Service>(v),
            "EndpointSlice" => d::<objects::EndpointSlice>(v),
            "Node" => d::<objects::Node>(v),
            _ => d::<objects::ServiceCidr>(v),
        }
    }

    /// Every path to a value inside `v`.
    fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    at.push(k.clone());
                    paths(c, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    at.push(i.to_string());
                    paths(c, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    fn pointer(path: &[String]) -> String {
        path.iter().map(|p| format!("/{p}")).collect()
    }

    /// Removes the value at `path` (an object's key or an array's element).
    fn remove(v: &mut Value, path: &[String]) {
        let Some((last, parent)) = path.split_last() else {
            *v = Value::Null;
            return;
        };
        match v.pointer_mut(&pointer(parent)) {
            Some(Value::Object(m)) => {
                m.remove(last);
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            _ => {}
        }
    }

    fn values() -> Vec<Value> {
        vec![
            json!(null),
            json!(5),
            json!(-1),
            json!(0),
            json!(70000),
            json!(2147483648u64),
            json!(1.5),
            json!(true),
            json!(""),
            json!("x"),
            json!([]),
            json!({}),
            json!(["x"]),
            json!([5]),
            json!([null]),
            json!({"a": 1}),
            json!({"a": "b"}),
            json!([{"name": "z9"}]),
            json!("010.0.0.1"),
            json!("10.0.0.7"),
            json!("fd00:0::1"),
            json!("fd00::7"),
            json!("::ffff:10.0.0.1"),
            json!("0.0.0.0"),
            json!("127.0.0.1"),
            json!("224.0.0.1"),
            json!("None"),
            json!("10.0.0.0/8"),
            json!("2024-01-02T03:04:05Z"),
            json!("yesterday"),
            json!("Local"),
            json!("ClientIP"),
            json!("LoadBalancer"),
            json!("NodePort"),
            json!("ExternalName"),
            json!("ClusterIP"),
            json!("IPv4"),
            json!("IPv6"),
            json!("FQDN"),
            json!("Proxy"),
            json!("PreferSameZone"),
            json!("TCP"),
            json!("udp"),
            json!("SCTP"),
            json!("node-a"),
            json!("Service"),
            json!("v1"),
        ]
    }

    const KEYS: &[&str] = &[
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "labels",
        "annotations",
        "creationTimestamp",
        "resourceVersion",
        "spec",
        "status",
        "type",
        "clusterIP",
        "clusterIPs",
        "externalIPs",
        "ports",
        "port",
        "nodePort",
        "protocol",
        "ipMode",
        "ip",
        "addresses",
        "address",
        "addressType",
        "endpoints",
        "conditions",
        "ready",
        "serving",
        "terminating",
        "nodeName",
        "hints",
        "forZones",
        "forNodes",
        "cidrs",
        "sessionAffinity",
        "sessionAffinityConfig",
        "clientIP",
        "timeoutSeconds",
        "healthCheckNodePort",
        "externalTrafficPolicy",
        "loadBalancerSourceRanges",
        "ingress",
        "loadBalancer",
        "trafficDistribution",
        convert::SERVICE_NAME_LABEL,
        convert::SERVICE_PROXY_NAME_LABEL,
        convert::ZONE_LABEL,
        objects::TRIGGER_ANNOTATION,
        "unknownField",
    ];

    #[test]
    fn lean_objects_read_what_k8s_openapi_reads() {
        let seeds = seeds();
        let kinds = ["Service", "EndpointSlice", "Node", "ServiceCIDR"];
        for k in kinds {
            assert!(
                seeds.iter().filter(|s| s["kind"] == k).count() >= 1,
                "no {k} seed"
            );
        }
        let values = values();
        let mut rng = Rng::new(
            std::env::var("KNP_DIFF_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(12),
        );
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for seed in &seeds {
            let kind = seed["kind"].as_str().unwrap().to_string();
            // Each seed as it is (the corpus holds bad objects too), and without kind
            // and apiVersion (as items of a List come from the API server).
            match compare(&kind, seed) {
                Outcome::Same => *counts.entry("seeds read").or_default() += 1,
                Outcome::Refused => continue,
                Outcome::OnlyOpenapiRefused => panic!("only k8s-openapi refuses {seed}"),
            }
            let mut bare = seed.clone();
            remove(&mut bare, &["kind".to_string()]);
            remove(&mut bare, &["apiVersion".to_string()]);
            assert!(matches!(compare(&kind, &bare), Outcome::Same), "{bare}");
            // Mutations, accumulating on objects both still accept.
            let mut pool = vec![seed.clone()];
            for _ in 0..std::env::var("KNP_DIFF_ROUNDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(400)
            {
                let base = pool[rng.below(pool.len())].clone();
                let mut all = Vec::new();
                paths(&base, &mut Vec::new(), &mut all);
                let path = all[rng.below(all.len())].clone();
                let mut v = base.clone();
                let what;
                match rng.below(3) {
                    0 => {
                        remove(&mut v, &path);
                        what = "removed";
                    }
                    1 => {
                        let new = values[rng.below(values.len())].clone();
                        match v.pointer_mut(&pointer(&path)) {
                            Some(slot) => *slot = new,
                            None => continue,
                        }
                        what = "replaced";
                    }
                    _ => {
                        let new = values[rng.below(values.len())].clone();
                        let key = KEYS[rng.below(KEYS.len())];
                        match v.pointer_mut(&pointer(&path)) {
                            Some(Value::Object(m)) => {
                                m.insert(key.to_string(), new);
                            }
                            Some(Value::Array(a)) => a.push(new),
                            _ => continue,
                        }
                        what = "inserted";
                    }
                }
                let outcome = compare(&kind, &v);
                *counts
                    .entry(match outcome {
                        Outcome::Same => "same",
                        Outcome::Refused => "refused",
                        Outcome::OnlyOpenapiRefused => "skipped field",
                    })
                    .or_default() += 1;
                match outcome {
                    Outcome::Same => pool.push(v),
                    Outcome::Refused => {}
                    // A value k8s-openapi type-checks and the lean type skips: it must
                    // not reach the lean object (undoing the change gives the same).
                    Outcome::OnlyOpenapiRefused => {
                        let before = lean_debug(&kind, &base);
                        let after = lean_debug(&kind, &v);
                        if what != "removed" {
                            assert_eq!(
                                before,
                                after,
                                "{what} {} read by the lean type only: {v}",
                                pointer(&path)
                            );
                        }
                    }
                }
            }
        }
        eprintln!("{} seeds, outcomes {counts:?}", seeds.len());
        // The mutations reached every outcome (else the test proves little).
        for o in ["same", "refused", "skipped field"] {
            assert!(counts.get(o).is_some_and(|&n| n >= 50), "{counts:?}");
        }
    }
}
