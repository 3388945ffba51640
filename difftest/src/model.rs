//! Executable model of upstream kube-proxy's **nftables** mode: from the Kubernetes
//! objects and the proxy options alone it predicts what happens to one new
//! connection, in run-flows' terms (DNAT to an endpoint set with or without
//! masquerade, REJECT, DROP, or untouched).
//!
//! Sources (kubernetes/kubernetes, read for semantics, not copied):
//! - `pkg/proxy/nftables/proxier.go`, `syncProxyRules`: the per-service-port
//!   decisions `hasInternalEndpoints` / `hasExternalEndpoints`, the
//!   `service-ips`, `service-nodeports`, `no-endpoint-services`,
//!   `no-endpoint-nodeports` and `firewall-ips` elements, the rules of the
//!   internal chain (masquerade-all, `IfNotLocal` masquerade), of the external
//!   chain (eTP=Cluster: masquerade + cluster chain; eTP=Local: pod short-circuit
//!   with `IfLocal`, `fib saddr type local` masquerade + cluster chain, then the
//!   local chain) and of the firewall chain (`saddr != {ranges[, LB IPs when a
//!   range holds the node IP]} drop`); the endpoint chain's hairpin masquerade.
//! - `proxier.go`, `setupNFTables` and the base/jump chain tables: which hook sees
//!   which check, in which order (firewall-check pre-DNAT at priority -110 in
//!   prerouting and output; services in nat prerouting/output; after DNAT
//!   `nodeport-endpoints-check` (input only), `service-endpoints-check` (input,
//!   forward, output) and `cluster-ips-check` (forward, output): reject for a
//!   known ClusterIP on an unknown port, drop for the rest of the service CIDRs).
//!   The newer layout (filter-prerouting-pre-dnat / filter-output-pre-dnat at
//!   -110, the other filter chains at priority 0) is the one modelled; it is what
//!   repros/bug3 states.
//! - `pkg/proxy/topology.go`, `CategorizeEndpoints`: cluster endpoints = ready,
//!   else serving+terminating; local endpoints = local ready, else local
//!   serving+terminating; computed only when `UsesClusterEndpoints()` /
//!   `UsesLocalEndpoints()`.
//! - `pkg/proxy/service.go`: `ExternallyAccessible`, `UsesClusterEndpoints`
//!   (`!InternalPolicyLocal() || ExternallyAccessible()`), `UsesLocalEndpoints`,
//!   per-family filtering of externalIPs, LB ingress IPs and source ranges,
//!   trimming of source ranges; `pkg/api/v1/service` `ExternalPolicyLocal` (only
//!   for NodePort/LoadBalancer types).
//! - `pkg/proxy/endpointslicecache.go`: conditions (ready/serving default true,
//!   terminating default false), locality = `nodeName` equals the proxy's node
//!   name, first address only, slice ports matched by name and protocol,
//!   duplicate `ip:port` replaced unless the later one is terminating.
//! - `pkg/proxy/util` `NodePortAddresses`: CIDRs filtered per family; a zero CIDR
//!   means "all local addresses except loopback"; default = the node IP of
//!   the family (run-flows' Node object gives the case's node IP, then the first
//!   host address of the other family).
//!
//! Not covered: topology hints / traffic distribution, `ipMode: Proxy` beyond
//! ignoring such ingress IPs, localhost sources (`route_localnet`), SCTP,
//! ExternalName/headless Services, health-check node ports, conntrack cleanup of
//! stale UDP flows, and session-affinity stickiness (run-flows checks that
//! itself; the model gives the candidate set).

use crate::net::{family, hostport, parse_ip, Cidr, Family};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pod,
    PodEndpoint,
    Node,
    External,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "pod" => Ok(Role::Pod),
            "pod-endpoint" => Ok(Role::PodEndpoint),
            "node" => Ok(Role::Node),
            "external" => Ok(Role::External),
            other => Err(format!("unsupported sourceRole {other:?}")),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Pod => "pod",
            Role::PodEndpoint => "pod-endpoint",
            Role::Node => "node",
            Role::External => "external",
        }
    }
}

/// One flow to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub source: IpAddr,
    pub role: Role,
    pub protocol: String,
    pub dest: IpAddr,
    pub dport: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Dnat {
        endpoints: BTreeSet<String>,
        masq: bool,
    },
    Reject,
    Drop,
    None,
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Dnat { .. } => "DNAT",
            Verdict::Reject => "REJECT",
            Verdict::Drop => "DROP",
            Verdict::None => "NONE",
        }
    }
}

#[derive(Debug, Clone)]
struct SvcPort {
    name: String,
    protocol: String,
    port: u16,
    node_port: u16,
}

#[derive(Debug, Clone)]
struct Service {
    ns: String,
    name: String,
    cluster_ips: Vec<IpAddr>,
    ports: Vec<SvcPort>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<Cidr>,
    etp_local: bool,
    itp_local: bool,
}

#[derive(Debug, Clone)]
struct Ep {
    ip: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl Ep {
    fn key(&self) -> String {
        hostport(&self.ip, self.port)
    }
}

#[derive(Debug, Clone)]
struct SlicePort {
    name: String,
    protocol: String,
    port: Option<u16>,
}

#[derive(Debug, Clone)]
struct SliceEndpoint {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
}

#[derive(Debug, Clone)]
struct Slice {
    ns: String,
    name: String,
    service: String,
    endpoints: Vec<SliceEndpoint>,
    ports: Vec<SlicePort>,
}

/// The proxy options that matter to the model.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    node_name: String,
    node_ip: IpAddr,
    host_ips: Vec<IpAddr>,
    cluster_cidrs: Vec<Cidr>,
    masquerade_all: bool,
    /// None = default ("primary": the node IP of each family)
    node_port_cidrs: Option<Vec<Cidr>>,
    service_cidrs: Vec<Cidr>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl ProxyOptions {
    pub fn from_json(p: &Value) -> Result<ProxyOptions, String> {
        let node_name = str_field(p, "nodeName")
            .ok_or("proxy.nodeName missing")?
            .to_string();
        let node_ip = parse_ip(str_field(p, "nodeIP").ok_or("proxy.nodeIP missing")?)?;
        let mut host_ips = Vec::new();
        if let Some(Value::Object(m)) = p.get("hostAddresses") {
            for addrs in m.values() {
                for a in string_list(Some(addrs)) {
                    let ip = a.split('/').next().unwrap_or_default();
                    host_ips.push(parse_ip(ip)?);
                }
            }
        }
        let detect = p.get("detectLocal").cloned().unwrap_or(Value::Null);
        let mut cluster_cidrs = Vec::new();
        if str_field(&detect, "mode") == Some("ClusterCIDR") {
            for c in string_list(detect.get("clusterCIDR")) {
                cluster_cidrs.push(Cidr::parse(&c)?);
            }
        }
        let node_port_cidrs = match p.get("nodePortAddresses") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let list = string_list(Some(v));
                if list.is_empty() || list.iter().any(|s| s == "primary") {
                    None
                } else {
                    Some(
                        list.iter()
                            .map(|s| Cidr::parse(s))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
            }
        };
        let service_cidrs = string_list(p.get("serviceCIDRs"))
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProxyOptions {
            node_name,
            node_ip,
            host_ips,
            cluster_cidrs,
            masquerade_all: p
                .get("masqueradeAll")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            node_port_cidrs,
            service_cidrs,
        })
    }

    /// The node IP of a family, as run-flows' Node object states it.
    fn node_ip(&self, fam: Family) -> Option<IpAddr> {
        if family(&self.node_ip) == fam {
            return Some(self.node_ip);
        }
        self.host_ips
            .iter()
            .find(|ip| family(ip) == fam && !ip.is_loopback())
            .copied()
    }

    fn is_local(&self, ip: &IpAddr) -> bool {
        self.host_ips.contains(ip)
    }

    fn detect_local(&self, fam: Family) -> Option<Vec<Cidr>> {
        let c: Vec<Cidr> = self
            .cluster_cidrs
            .iter()
            .filter(|c| c.family() == fam)
            .copied()
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c)
        }
    }

    /// Whether `ip` accepts NodePort traffic (`nodeport-ips` set, or
    /// `fib daddr type local` minus loopback when a zero CIDR is configured).
    fn accepts_node_port(&self, ip: &IpAddr) -> bool {
        let fam = family(ip);
        let cidrs: Vec<Cidr> = match &self.node_port_cidrs {
            Some(list) => list.iter().filter(|c| c.family() == fam).copied().collect(),
            None => Vec::new(),
        };
        if cidrs.is_empty() {
            return self.node_ip(fam) == Some(*ip);
        }
        if cidrs.iter().any(Cidr::is_zero) {
            return self.is_local(ip) && !ip.is_loopback();
        }
        self.is_local(ip) && !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip))
    }
}

fn parse_service(o: &Value) -> Result<Option<Service>, String> {
    let meta = o.get("metadata").cloned().unwrap_or(Value::Null);
    let spec = o.get("spec").cloned().unwrap_or(Value::Null);
    let ty = str_field(&spec, "type").unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Ok(None);
    }
    let mut cips = string_list(spec.get("clusterIPs"));
    if cips.is_empty() {
        if let Some(c) = str_field(&spec, "clusterIP") {
            cips.push(c.to_string());
        }
    }
    if cips.is_empty() || cips.iter().any(|c| c == "None" || c.is_empty()) {
        return Ok(None);
    }
    let cluster_ips = cips.iter().map(|s| parse_ip(s)).collect::<Result<_, _>>()?;
    let mut ports = Vec::new();
    if let Some(Value::Array(ps)) = spec.get("ports") {
        for p in ps {
            ports.push(SvcPort {
                name: str_field(p, "name").unwrap_or("").to_string(),
                protocol: str_field(p, "protocol").unwrap_or("TCP").to_string(),
                port: p.get("port").and_then(Value::as_u64).unwrap_or(0) as u16,
                node_port: p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16,
            });
        }
    }
    // Invalid entries are skipped like proxyutil.MapIPsByIPFamily does.
    let external_ips = string_list(spec.get("externalIPs"))
        .iter()
        .filter_map(|s| parse_ip(s).ok())
        .collect();
    let source_ranges = string_list(spec.get("loadBalancerSourceRanges"))
        .iter()
        .filter_map(|s| Cidr::parse(s).ok())
        .collect();
    let mut lb_ips = Vec::new();
    if let Some(Value::Array(ing)) = o.pointer("/status/loadBalancer/ingress") {
        for i in ing {
            if str_field(i, "ipMode") == Some("Proxy") {
                continue;
            }
            if let Some(ip) = str_field(i, "ip").filter(|s| !s.is_empty()) {
                if let Ok(ip) = parse_ip(ip) {
                    lb_ips.push(ip);
                }
            }
        }
    }
    let external_type = ty == "NodePort" || ty == "LoadBalancer";
    Ok(Some(Service {
        ns: str_field(&meta, "namespace").unwrap_or("").to_string(),
        name: str_field(&meta, "name").unwrap_or("").to_string(),
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        source_ranges,
        etp_local: external_type && str_field(&spec, "externalTrafficPolicy") == Some("Local"),
        itp_local: str_field(&spec, "internalTrafficPolicy") == Some("Local"),
    }))
}

fn parse_slice(o: &Value) -> Result<Option<Slice>, String> {
    let meta = o.get("metadata").cloned().unwrap_or(Value::Null);
    let Some(service) = meta
        .pointer("/labels/kubernetes.io~1service-name")
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let at = str_field(o, "addressType").unwrap_or("");
    if at != "IPv4" && at != "IPv6" {
        return Ok(None);
    }
    let mut endpoints = Vec::new();
    if let Some(Value::Array(eps)) = o.get("endpoints") {
        for e in eps {
            let addrs = string_list(e.get("addresses"));
            let Some(first) = addrs.first() else { continue };
            let cond = e.get("conditions").cloned().unwrap_or(Value::Null);
            let flag = |k: &str| cond.get(k).and_then(Value::as_bool);
            endpoints.push(SliceEndpoint {
                ip: parse_ip(first)?,
                ready: flag("ready").unwrap_or(true),
                serving: flag("serving").unwrap_or(true),
                terminating: flag("terminating").unwrap_or(false),
                node: str_field(e, "nodeName").map(str::to_string),
            });
        }
    }
    let mut ports = Vec::new();
    if let Some(Value::Array(ps)) = o.get("ports") {
        for p in ps {
            ports.push(SlicePort {
                name: str_field(p, "name").unwrap_or("").to_string(),
                protocol: str_field(p, "protocol").unwrap_or("TCP").to_string(),
                port: p.get("port").and_then(Value::as_u64).map(|n| n as u16),
            });
        }
    }
    Ok(Some(Slice {
        ns: str_field(&meta, "namespace").unwrap_or("").to_string(),
        name: str_field(&meta, "name").unwrap_or("").to_string(),
        service: service.to_string(),
        endpoints,
        ports,
    }))
}

/// Everything the model computes for one service port in one IP family.
#[derive(Debug, Clone)]
struct PortState {
    cluster_ip: IpAddr,
    port: u16,
    protocol: String,
    node_port: u16,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<Cidr>,
    etp_local: bool,
    itp_local: bool,
    cluster_eps: Vec<Ep>,
    local_eps: Vec<Ep>,
    has_endpoints: bool,
}

impl PortState {
    fn has_internal(&self) -> bool {
        self.has_endpoints && (!self.itp_local || !self.local_eps.is_empty())
    }
    fn has_external(&self) -> bool {
        self.has_endpoints && (!self.etp_local || !self.local_eps.is_empty())
    }
    /// Verdict of the no-endpoint maps: reject when nothing is usable anywhere,
    /// drop when only the traffic policy leaves nothing.
    fn no_endpoint_verdict(&self) -> Verdict {
        if self.has_endpoints {
            Verdict::Drop
        } else {
            Verdict::Reject
        }
    }
}

pub struct Model {
    opts: ProxyOptions,
    ports: Vec<PortState>,
}

impl Model {
    pub fn new(proxy: &Value, objects: &[Value]) -> Result<Model, String> {
        let opts = ProxyOptions::from_json(proxy)?;
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for o in objects {
            match str_field(o, "kind") {
                Some("Service") => services.extend(parse_service(o)?),
                Some("EndpointSlice") => slices.extend(parse_slice(o)?),
                _ => {}
            }
        }
        // Go map order is random; sort by name so duplicates resolve the same
        // way every time (the generator avoids duplicates anyway).
        slices.sort_by(|a: &Slice, b: &Slice| a.name.cmp(&b.name));
        let mut ports = Vec::new();
        for fam in [Family::V4, Family::V6] {
            for svc in &services {
                // GetClusterIPByFamily: a Service without a ClusterIP of this
                // family does not exist for this family's proxier.
                let Some(cip) = svc.cluster_ips.iter().find(|ip| family(ip) == fam) else {
                    continue;
                };
                for sp in &svc.ports {
                    ports.push(build_port(&opts, svc, sp, *cip, fam, &slices));
                }
            }
        }
        Ok(Model { opts, ports })
    }

    pub fn predict(&self, q: &Query) -> Verdict {
        let fam = family(&q.dest);
        if family(&q.source) != fam {
            return Verdict::None;
        }
        let o = &self.opts;
        let src_local = o.is_local(&q.source) || q.role == Role::Node;
        let detect = o.detect_local(fam);
        let src_in_cluster = detect
            .as_ref()
            .map(|cs| cs.iter().any(|c| c.contains(&q.source)));
        let matches = |p: &&PortState| p.protocol == q.protocol && family(&p.cluster_ip) == fam;

        // 1. filter-{prerouting,output}-pre-dnat -> firewall-check (all sources).
        for p in self.ports.iter().filter(matches) {
            if p.port != q.dport || !p.lb_ips.contains(&q.dest) {
                continue;
            }
            let ranges: Vec<&Cidr> = p
                .source_ranges
                .iter()
                .filter(|c| c.family() == fam)
                .collect();
            let vips: Vec<&IpAddr> = p.lb_ips.iter().filter(|ip| family(ip) == fam).collect();
            if ranges.is_empty() || vips.is_empty() {
                continue;
            }
            let allow_node = o
                .node_ip(fam)
                .is_some_and(|n| ranges.iter().any(|c| c.contains(&n)));
            let allowed = ranges.iter().any(|c| c.contains(&q.source))
                || (allow_node && vips.contains(&&q.source));
            if !allowed {
                return Verdict::Drop;
            }
        }

        // 2. nat prerouting/output -> services: service-ips, then service-nodeports.
        // The maps hold an element only when the Service port has (internal or
        // any) endpoints; a key without element falls through to the filter checks.
        let mut dnat: Option<(Vec<Ep>, bool)> = None;
        let mut matched = false;
        for p in self.ports.iter().filter(matches) {
            if p.port != q.dport {
                continue;
            }
            if p.cluster_ip == q.dest && p.has_internal() {
                let eps = if p.itp_local {
                    &p.local_eps
                } else {
                    &p.cluster_eps
                };
                let masq = o.masquerade_all || src_in_cluster == Some(false);
                dnat = Some((eps.clone(), masq));
                matched = true;
                break;
            }
            if (p.external_ips.contains(&q.dest) || p.lb_ips.contains(&q.dest)) && p.has_endpoints {
                dnat = external_chain(p, src_in_cluster == Some(true), src_local);
                matched = true;
                break;
            }
        }
        if !matched && o.accepts_node_port(&q.dest) {
            for p in self.ports.iter().filter(matches) {
                if p.node_port != 0 && p.node_port == q.dport && p.has_endpoints {
                    dnat = external_chain(p, src_in_cluster == Some(true), src_local);
                    break;
                }
            }
        }
        if let Some((eps, masq)) = dnat {
            let endpoints: BTreeSet<String> = eps.iter().map(Ep::key).collect();
            // Endpoint chain: `ip saddr <ep> jump mark-for-masquerade` (hairpin).
            let hairpin = eps.iter().any(|e| e.ip == q.source);
            return Verdict::Dnat {
                endpoints,
                masq: masq || hairpin,
            };
        }

        // 3. Not DNATed. filter-input (destination local): nodeport-endpoints-check,
        // service-endpoints-check. filter-forward / filter-output:
        // service-endpoints-check, cluster-ips-check.
        let dest_local = o.is_local(&q.dest);
        if dest_local && o.accepts_node_port(&q.dest) {
            for p in self.ports.iter().filter(matches) {
                if p.node_port != 0 && p.node_port == q.dport && !p.has_external() {
                    return p.no_endpoint_verdict();
                }
            }
        }
        for p in self.ports.iter().filter(matches) {
            if p.port != q.dport {
                continue;
            }
            if p.cluster_ip == q.dest && !p.has_internal() {
                return p.no_endpoint_verdict();
            }
            if (p.external_ips.contains(&q.dest) || p.lb_ips.contains(&q.dest)) && !p.has_external()
            {
                return p.no_endpoint_verdict();
            }
        }
        // cluster-ips-check runs in forward and output, i.e. whenever the
        // destination is not a local address (node-sourced packets to a local
        // address also pass input, where it is absent).
        if !dest_local {
            let any_cluster_ip = self
                .ports
                .iter()
                .any(|p| family(&p.cluster_ip) == fam && p.cluster_ip == q.dest);
            if any_cluster_ip {
                return Verdict::Reject;
            }
            if o.service_cidrs
                .iter()
                .any(|c| c.family() == fam && c.contains(&q.dest))
            {
                return Verdict::Drop;
            }
        }
        Verdict::None
    }
}

/// The Service's external chain: `Some((endpoints, masquerade))` when it DNATs,
/// `None` when the packet falls off the chain (eTP=Local, no local endpoints,
/// not short-circuited) and meets the no-endpoint drop later.
fn external_chain(p: &PortState, src_is_pod: bool, src_local: bool) -> Option<(Vec<Ep>, bool)> {
    if !p.etp_local {
        return Some((p.cluster_eps.clone(), true));
    }
    if src_is_pod {
        return Some((p.cluster_eps.clone(), false));
    }
    if src_local {
        return Some((p.cluster_eps.clone(), true));
    }
    if !p.local_eps.is_empty() {
        return Some((p.local_eps.clone(), false));
    }
    None
}

fn build_port(
    opts: &ProxyOptions,
    svc: &Service,
    sp: &SvcPort,
    cluster_ip: IpAddr,
    fam: Family,
    slices: &[Slice],
) -> PortState {
    // endpointslicecache: ip:port -> endpoint, per service port name+protocol.
    let mut by_key: BTreeMap<String, Ep> = BTreeMap::new();
    for s in slices
        .iter()
        .filter(|s| s.ns == svc.ns && s.service == svc.name)
    {
        for port in s
            .ports
            .iter()
            .filter(|p| p.name == sp.name && p.protocol == sp.protocol)
        {
            let Some(num) = port.port else { continue };
            for e in &s.endpoints {
                if family(&e.ip) != fam {
                    continue;
                }
                let ep = Ep {
                    ip: e.ip,
                    port: num,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    local: e.node.as_deref() == Some(opts.node_name.as_str())
                        && !opts.node_name.is_empty(),
                };
                let k = ep.key();
                if !by_key.contains_key(&k) || !ep.terminating {
                    by_key.insert(k, ep);
                }
            }
        }
    }
    let all: Vec<Ep> = by_key.into_values().collect();
    let of_family = |v: &Vec<IpAddr>| {
        v.iter()
            .filter(|ip| family(ip) == fam)
            .copied()
            .collect::<Vec<_>>()
    };
    let external_ips = of_family(&svc.external_ips);
    let lb_ips = of_family(&svc.lb_ips);
    let externally_accessible = sp.node_port != 0 || !lb_ips.is_empty() || !external_ips.is_empty();
    let etp_local = svc.etp_local;
    let itp_local = svc.itp_local;
    let uses_cluster = !itp_local || externally_accessible;
    let uses_local = itp_local || (etp_local && externally_accessible);

    // topology.go CategorizeEndpoints (no topology hints).
    let mut cluster_eps = Vec::new();
    let mut has_endpoints = false;
    if uses_cluster {
        cluster_eps = all.iter().filter(|e| e.ready).cloned().collect();
        if cluster_eps.is_empty() {
            cluster_eps = all
                .iter()
                .filter(|e| e.serving && e.terminating)
                .cloned()
                .collect();
        }
        has_endpoints = !cluster_eps.is_empty();
    }
    let mut local_eps = Vec::new();
    if uses_local {
        let usable = |e: &&Ep| e.ready || (e.serving && e.terminating);
        if all.iter().any(|e| usable(&e)) {
            has_endpoints = true;
        }
        local_eps = all.iter().filter(|e| e.local && e.ready).cloned().collect();
        if local_eps.is_empty() {
            local_eps = all
                .iter()
                .filter(|e| e.local && e.serving && e.terminating)
                .cloned()
                .collect();
        }
    }
    PortState {
        cluster_ip,
        port: sp.port,
        protocol: sp.protocol.clone(),
        node_port: sp.node_port,
        external_ips,
        lb_ips,
        source_ranges: svc
            .source_ranges
            .iter()
            .filter(|c| c.family() == fam)
            .copied()
            .collect(),
        etp_local,
        itp_local,
        cluster_eps,
        local_eps,
        has_endpoints,
    }
}
