//! Kubernetes objects → service ports and endpoints, with validation.
//!
//! Every value that comes from the API is checked here. A bad value is skipped (or
//! defaulted, where kube-proxy defaults it) and reported as a [`Problem`] that names the
//! object and the reason; it never stops the rest of the cluster from being programmed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::objects::{Addr, AddressType, EndpointSlice, Node, Service, ServiceCidr, ServiceType};
use super::types::{Endpoint, Protocol, ServicePort, ServicePortName};
use ipnet::IpNet;

/// Label that names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Headless services carry this label on their slices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Node label with the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The API server's bound on `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// Why an address can never be a Service frontend or an endpoint, if it cannot:
/// unspecified, loopback, multicast or link-local-multicast addresses (the API server
/// refuses them too; a manifest need not have passed it).
pub fn special_address(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Why a value was skipped. Each one is logged with the object it came from and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name`
    pub object: String,
    /// what was wrong and what was done about it
    pub reason: String,
}

/// Collects problems while converting.
#[derive(Default, Debug)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, object: &str, reason: impl Into<String>) {
        self.0.push(Problem {
            object: object.to_string(),
            reason: reason.into(),
        });
    }
}

/// Parses an IP as upstream's `ParseIPSloppy` does: IPv4 octets may carry leading zeros
/// (read as decimal), surrounding white space is not accepted.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if s.contains(':') {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in octets.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse::<u8>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::from(octets))
}

/// Parses a CIDR sloppily (leading zeros in IPv4 octets allowed); the network is
/// truncated to its prefix.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (ip, len) = s.split_once('/')?;
    let ip = parse_ip_sloppy(ip)?;
    let len: u8 = len.parse().ok()?;
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

/// The node facts the ruleset needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// node name
    pub name: String,
    /// InternalIP addresses first, then others, in order (upstream's primary IP per
    /// family is the first of that family)
    pub ips: Vec<IpAddr>,
    /// topology.kubernetes.io/zone
    pub zone: Option<String>,
}

impl NodeInfo {
    /// The primary node IP of a family.
    pub fn primary(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }
}

/// Node object → [`NodeInfo`].
pub fn node_info(node: &Node, problems: &mut Problems) -> NodeInfo {
    let name = node.metadata.name.clone();
    let object = format!("Node {name}");
    let mut internal = Vec::new();
    let mut other = Vec::new();
    for a in &node.status.addresses {
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
    let zone = node.metadata.zone.as_deref().map(str::to_string);
    NodeInfo {
        name,
        ips: internal,
        zone,
    }
}

/// ServiceCIDR objects → networks.
pub fn service_cidrs<'a>(
    objs: impl Iterator<Item = &'a ServiceCidr>,
    problems: &mut Problems,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for o in objs {
        let object = format!("ServiceCIDR {}", o.metadata.name);
        for c in &o.spec.cidrs {
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
    if svc.metadata.other_proxy {
        return true;
    }
    let spec = &svc.spec;
    if spec.type_ == ServiceType::ExternalName {
        return true;
    }
    // The API server always fills clusterIP from clusterIPs; a hand-written manifest
    // may give only clusterIPs, which then count.
    let first = match spec.cluster_ip.as_ref() {
        None => spec.cluster_ips.first(),
        Some(ip) if ip.text() == Some("") => spec.cluster_ips.first(),
        ip => ip,
    };
    match first {
        None => true,
        Some(ip) => matches!(ip.text(), Some("" | "None")),
    }
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
    let name = svc.key();
    let object = format!("Service {name}");
    let spec = &svc.spec;
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let raw_ips: &[_] = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.as_slice()
    } else {
        &spec.cluster_ips
    };
    for s in raw_ips {
        match s.ip() {
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
    let is_lb = spec.type_ == ServiceType::LoadBalancer;
    let mut external_ips = Vec::new();
    // Frontends of a family the Service has no cluster IP of are never programmed
    // (upstream filters them by the Service's families too).
    let family_ok = |ip: &IpAddr| cluster_ips.iter().any(|c| c.is_ipv6() == ip.is_ipv6());
    let usable = |what: &str, s: &Addr, ip: &IpAddr, problems: &mut Problems| -> bool {
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
    for s in &spec.external_ips {
        match s.ip() {
            Some(ip) if !usable("external IP", s, &ip, problems) => {}
            Some(ip) => external_ips.push(ip),
            None => problems.add(&object, format!("external IP {s:?} is not an IP; skipped")),
        }
    }
    let mut load_balancer_ips = Vec::new();
    if is_lb {
        for ing in &svc.status.load_balancer.ingress {
            if ing.ip_mode_proxy {
                continue;
            }
            let Some(s) = ing.ip.as_ref().filter(|s| s.text() != Some("")) else {
                continue;
            };
            match s.ip() {
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
        for s in &spec.load_balancer_source_ranges {
            match parse_cidr_sloppy(s.trim()) {
                Some(n) => source_ranges.push(n),
                None => problems.add(
                    &object,
                    format!("source range {s:?} is not a CIDR; skipped"),
                ),
            }
        }
    }
    let node_port_type = spec.type_ == ServiceType::NodePort || is_lb;
    let external_policy_local = spec.external_traffic_policy.0;
    let internal_policy_local = spec.internal_traffic_policy.0;
    let affinity_timeout = if spec.session_affinity.0 {
        let t = spec.session_affinity_config.client_ip.timeout_seconds;
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
    let traffic_distribution = spec.traffic_distribution;
    let health_check_node_port = if is_lb && external_policy_local {
        spec.health_check_node_port.and_then(port_u16)
    } else {
        None
    };

    let mut out = Vec::new();
    let created = svc.metadata.creation_timestamp;
    let mut seen: Vec<(String, Protocol, u16)> = Vec::new();
    let ports = &spec.ports;
    for p in ports {
        let port_name = p.name.as_deref().unwrap_or_default().to_string();
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
            slice.metadata.namespace, slice.metadata.name
        );
        let want_v6 = match slice.address_type {
            AddressType::Ipv4 => false,
            AddressType::Ipv6 => true,
            AddressType::Other => continue, // FQDN and unknown types are not ours to program
        };
        for sp in &slice.ports {
            let pname = sp.name.as_deref().unwrap_or_default().to_string();
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
                let Some(addr) = ep.address.as_ref() else {
                    continue;
                };
                let Some(ip) = addr.ip() else {
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
                            slice.address_type.name()
                        ),
                    );
                    continue;
                }
                let c = &ep.conditions;
                let ready = c.ready.unwrap_or(true);
                let serving = c.serving.unwrap_or(ready);
                let terminating = c.terminating.unwrap_or(false);
                let hints = ep.hints.as_deref();
                let new = Endpoint {
                    ip,
                    port,
                    ready,
                    serving,
                    terminating,
                    is_local: ep.node_name.as_deref() == Some(node_name) && !node_name.is_empty(),
                    has_node: ep.node_name.as_deref().is_some_and(|n| !n.is_empty()),
                    zone_hints: hints
                        .map(|h| h.for_zones.iter().map(|z| z.to_string()).collect())
                        .unwrap_or_default(),
                    node_hints: hints
                        .map(|h| h.for_nodes.iter().map(|n| n.to_string()).collect())
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
    use super::*;

    #[test]
    fn sloppy_ips() {
        assert_eq!(
            parse_ip_sloppy("010.001.0.7"),
            Some("10.1.0.7".parse().unwrap())
        );
        assert_eq!(parse_ip_sloppy("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("1.2.3"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.256"), None);
        assert_eq!(parse_ip_sloppy(" 1.2.3.4"), None);
        assert_eq!(
            parse_cidr_sloppy("10.0.0.5/8"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_cidr_sloppy("10.0.0.5"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
    }
}
