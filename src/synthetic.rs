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
        zone_hints: vec![],
        node_hints: vec![],
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
