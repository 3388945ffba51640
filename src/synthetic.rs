//! Synthetic clusters of any size, for benchmarks and scale tests.

use std::net::{IpAddr, Ipv4Addr};

use crate::model::{
    Endpoint, NodeInfo, Protocol, ProxyModel, ServiceEntry, ServicePort, ServicePortName,
};

/// `n` ClusterIP services (TCP port 80 → 8080) with `eps` ready endpoints each. Service
/// `i` has ClusterIP `10.96.0.0 + i`; its endpoints are `10.128.0.0 + 16 i + j`.
pub fn model(n: usize, eps: usize) -> ProxyModel {
    let mut m = ProxyModel {
        node: NodeInfo {
            name: "bench-node".into(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))],
            zone: None,
        },
        service_cidrs: vec!["10.96.0.0/12".parse().expect("static CIDR")],
        ..Default::default()
    };
    for i in 0..n {
        let e = entry(i, eps);
        m.services.insert(e.port.name.clone(), e);
    }
    m
}

/// Service `i` of [`model`], with `eps` endpoints.
pub fn entry(i: usize, eps: usize) -> ServiceEntry {
    let name = ServicePortName {
        namespace: format!("ns{}", i % 100),
        name: format!("svc{i}"),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32);
    ServiceEntry {
        port: ServicePort {
            name,
            cluster_ips: vec![IpAddr::V4(vip)],
            port: 80,
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
        endpoints: (0..eps).map(|j| endpoint(i, j)).collect(),
    }
}

/// Endpoint `j` of service `i`.
pub fn endpoint(i: usize, j: usize) -> Endpoint {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i as u32) * 16 + j as u32);
    Endpoint {
        ip: IpAddr::V4(ip),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        is_local: false,
        has_node: true,
        zone_hints: Default::default(),
        node_hints: Default::default(),
    }
}

/// The Kubernetes objects of [`model`]: `n` Services and one EndpointSlice each, plus the
/// Node. `generation` changes the first endpoint of service 0 (a changed slice).
pub fn objects(n: usize, eps: usize, generation: u32) -> Vec<crate::model::Object> {
    use crate::model::Object;
    let mut out = Vec::with_capacity(2 * n + 1);
    let node = serde_json::json!({
        "metadata": {"name": "bench-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
    });
    if let Ok(n) = serde_json::from_value(node) {
        out.push(Object::Node(Box::new(n)));
    }
    for i in 0..n {
        let e = entry(i, eps);
        let svc = serde_json::json!({
            "metadata": {"name": e.port.name.name, "namespace": e.port.name.namespace},
            "spec": {"clusterIP": e.port.cluster_ips[0].to_string(),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        });
        let endpoints: Vec<_> = e
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, ep)| {
                let ip = if i == 0 && j == 0 && generation > 0 {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 127, 0, 0)) + generation).to_string()
                } else {
                    ep.ip.to_string()
                };
                serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})
            })
            .collect();
        let slice = serde_json::json!({
            "metadata": {"name": format!("{}-abcde", e.port.name.name), "namespace": e.port.name.namespace,
                         "labels": {"kubernetes.io/service-name": e.port.name.name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        });
        if let (Ok(s), Ok(sl)) = (serde_json::from_value(svc), serde_json::from_value(slice)) {
            out.push(Object::Service(Box::new(s)));
            out.push(Object::EndpointSlice(Box::new(sl)));
        }
    }
    out
}

/// A small seeded generator (xorshift64*), so tests and benches need no crate for it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// The node of [`random_entry`]'s clusters: dual-stack, named `node`.
pub fn random_node() -> NodeInfo {
    NodeInfo {
        name: "node".into(),
        ips: vec![
            IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2)),
            "fd00::2".parse().expect("static address"),
        ],
        zone: None,
    }
}

/// Service port `i` with random features, for property tests of the transaction
/// builder: both families, every Service type, eTP/iTP Local, ClientIP affinity,
/// overlapping and full-range source ranges, 0–5 endpoints with random conditions,
/// local, remote or without a node. Addresses are drawn from small pools so that
/// Services share endpoints and counts move between classes.
pub fn random_entry(rng: &mut Rng, i: usize) -> ServiceEntry {
    let v4 = |a: u8, b: u8| IpAddr::V4(Ipv4Addr::new(10, 96, a, b));
    let v6 = |x: u16| -> IpAddr {
        format!("fd00:96::{x:x}")
            .parse()
            .expect("formatted address")
    };
    let families = match rng.below(4) {
        0 => vec![false, true],
        1 => vec![true],
        _ => vec![false],
    };
    let protocol = match rng.below(4) {
        0 => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    let name = ServicePortName {
        namespace: format!("ns{}", i % 3),
        name: format!("svc{i}"),
        port: ["", "http", "dns"][rng.below(3)].into(),
        protocol,
    };
    let cluster_ips: Vec<IpAddr> = families
        .iter()
        .map(|v6_| {
            if *v6_ {
                v6(i as u16 + 1)
            } else {
                v4(0, i as u8 + 1)
            }
        })
        .collect();
    let externally = rng.below(3);
    let node_port = (externally >= 1).then(|| 30000 + i as u16);
    let mut external_ips = Vec::new();
    let mut load_balancer_ips = Vec::new();
    let mut source_ranges = Vec::new();
    if externally == 2 {
        for v6_ in &families {
            let ip = if *v6_ {
                v6(0x100 + rng.below(4) as u16)
            } else {
                v4(1, rng.below(4) as u8 + 1)
            };
            if rng.one_in(2) {
                external_ips.push(ip);
            } else {
                load_balancer_ips.push(ip);
            }
        }
        let pool = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.168.0.0/24",
            "203.0.113.0/24",
            "::/0",
            "fd00::/8",
            "fd00:1::/32",
        ];
        for _ in 0..rng.below(4) {
            if let Ok(n) = pool[rng.below(pool.len())].parse() {
                source_ranges.push(n);
            }
        }
    }
    // Mostly a few endpoints; one Service in four up to 39, so that histories cross
    // several power-of-two classes and their exact counts.
    let wide = rng.one_in(4);
    let n_eps = rng.below(if wide { 40 } else { 6 });
    let endpoints = (0..n_eps)
        .map(|_| {
            let v6_ = families[rng.below(families.len())];
            let host = rng.below(if wide { 200 } else { 12 });
            let ip = if v6_ {
                format!("fd00:128::{:x}", host + 1)
                    .parse()
                    .expect("formatted address")
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 128, 0, host as u8 + 1))
            };
            let ready = !rng.one_in(4);
            let has_node = !rng.one_in(5);
            Endpoint {
                ip,
                port: [8080, 53, 9000][rng.below(3)],
                ready,
                serving: ready || rng.one_in(2),
                terminating: !ready && rng.one_in(2),
                is_local: has_node && rng.one_in(2),
                has_node,
                zone_hints: Default::default(),
                node_hints: Default::default(),
            }
        })
        .collect();
    ServiceEntry {
        port: ServicePort {
            name,
            cluster_ips,
            port: [80, 53, 443][rng.below(3)],
            node_port,
            external_ips,
            load_balancer_ips,
            source_ranges,
            external_policy_local: rng.one_in(2),
            internal_policy_local: rng.one_in(3),
            affinity_timeout: rng.one_in(4).then(|| [10, 10800, 86400][rng.below(3)]),
            health_check_node_port: None,
            traffic_distribution: None,
            created: None,
        },
        endpoints,
    }
}
