//! Plain data the rest of the proxy works with: service ports and endpoints.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A transport protocol kube-proxy handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP
    Tcp,
    /// UDP
    Udp,
    /// SCTP
    Sctp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case name, as nft prints it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Identifies one port of one Service: `namespace/name:port-name/protocol`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// namespace
    pub namespace: String,
    /// service name
    pub name: String,
    /// the port's name (may be empty for a single unnamed port)
    pub port: String,
    /// protocol
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// namespace
    pub namespace: String,
    /// name
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Topology mode requested by `spec.trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// PreferClose / PreferSameZone
    PreferSameZone,
    /// PreferSameNode
    PreferSameNode,
}

/// One port of one Service, with everything the ruleset needs about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// identity
    pub name: ServicePortName,
    /// cluster IPs (one per family at most)
    pub cluster_ips: Vec<IpAddr>,
    /// service port
    pub port: u16,
    /// node port, if allocated
    pub node_port: Option<u16>,
    /// spec.externalIPs
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress IPs (not ipMode Proxy)
    pub load_balancer_ips: Vec<IpAddr>,
    /// spec.loadBalancerSourceRanges
    pub source_ranges: Vec<IpNet>,
    /// externalTrafficPolicy: Local (only meaningful for externally reachable services)
    pub external_policy_local: bool,
    /// internalTrafficPolicy: Local
    pub internal_policy_local: bool,
    /// ClientIP affinity timeout in seconds, if enabled
    pub affinity_timeout: Option<u32>,
    /// spec.healthCheckNodePort
    pub health_check_node_port: Option<u16>,
    /// spec.trafficDistribution
    pub traffic_distribution: Option<TrafficDistribution>,
    /// metadata.creationTimestamp as (seconds, nanoseconds) since the epoch: of two
    /// Services claiming one frontend, the older keeps it
    pub created: Option<(i64, i32)>,
}

impl ServicePort {
    /// Whether anything outside the cluster can address this port.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Upstream's `ExternalPolicyLocal`: only for externally reachable services.
    pub fn uses_external_local(&self) -> bool {
        self.external_policy_local && self.externally_accessible()
    }

    /// Whether any traffic uses the cluster-wide endpoints: upstream's
    /// `UsesClusterEndpoints` (pkg/proxy/serviceport.go). An externally accessible port
    /// needs them even with externalTrafficPolicy=Local: pod and node traffic to its
    /// external addresses is short-circuited to the cluster-wide endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether any traffic uses the node-local endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || self.uses_external_local()
    }
}

/// One endpoint of one service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// address
    pub ip: IpAddr,
    /// target port
    pub port: u16,
    /// conditions.ready (absent = true)
    pub ready: bool,
    /// conditions.serving (absent = ready)
    pub serving: bool,
    /// conditions.terminating (absent = false)
    pub terminating: bool,
    /// whether nodeName is this proxy's node
    pub is_local: bool,
    /// whether the slice names the endpoint's node at all
    pub has_node: bool,
    /// hints.forZones
    pub zone_hints: Names,
    /// hints.forNodes
    pub node_hints: Names,
}

/// A list of names that is nearly always empty (topology hints), in one pointer.
///
/// The model holds every endpoint of the cluster (300k at 30,000 Services); two empty
/// `Vec`s made 48 of an endpoint's 72 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[allow(clippy::box_collection)] // the box is the point: one thin pointer, 8 bytes
pub struct Names(Option<Box<Vec<String>>>);

impl std::ops::Deref for Names {
    type Target = [String];
    fn deref(&self) -> &[String] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl From<Vec<String>> for Names {
    fn from(v: Vec<String>) -> Names {
        Names((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Names {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}
