//! Kubernetes objects for `--manifests` (a JSON `List`, as `kubectl get -o json`
//! prints it) and for the fake API server.

// Shared test support: not every test crate uses every helper.
#![allow(dead_code)]

use serde_json::{json, Value};

use super::topology::NODE_NAME;

/// Every Service port targets this port; every backend listens on it.
pub const TARGET_PORT: u16 = 8080;

/// A `List` of `items`, as text.
pub fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// This node: its InternalIPs (primary first per family) and optionally its zone.
pub fn node_obj(ips: &[&str], zone: Option<&str>) -> Value {
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME},
        "status": {"addresses": addresses}
    });
    if let Some(z) = zone {
        node["metadata"]["labels"] = json!({"topology.kubernetes.io/zone": z});
    }
    node
}

pub fn service_cidr_obj(cidrs: &[&str]) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": cidrs}
    })
}

// ---------------------------------------------------------------------------------
// IPv4 ClusterIP Services with named ports (no `ipFamilyPolicy`)

/// An endpoint of a slice: address and whether it is ready (and serving).
#[derive(Clone, Copy)]
pub struct Ep {
    pub ip: &'static str,
    pub ready: bool,
}

/// Ready endpoints.
pub fn ready_eps(ips: &[&'static str]) -> Vec<Ep> {
    ips.iter().map(|ip| Ep { ip, ready: true }).collect()
}

/// An IPv4 ClusterIP Service without `ipFamilyPolicy`; `ports` are
/// `(name, protocol, port)`, all targeting [`TARGET_PORT`].
pub fn clusterip_service_obj(name: &str, cluster_ip: &str, ports: &[(&str, &str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| {
            json!({"name": n, "protocol": proto, "port": port, "targetPort": TARGET_PORT})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ipFamilies": ["IPv4"], "ports": ports}
    })
}

/// An IPv4 EndpointSlice of `service`; `ports` are `(name, protocol)` on
/// [`TARGET_PORT`]; every endpoint is on node2 (not this node).
pub fn named_ports_slice_obj(
    service: &str,
    name: &str,
    ports: &[(&str, &str)],
    eps: &[Ep],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto)| json!({"name": n, "protocol": proto, "port": TARGET_PORT}))
        .collect();
    let eps: Vec<Value> = eps
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip],
                "nodeName": "node2",
                "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports
    })
}

// ---------------------------------------------------------------------------------
// Services of any type and family, with ports `tcp` and `udp`

/// A service port `(name, protocol, port, node port)` targeting [`TARGET_PORT`].
pub fn svc_port(name: &str, protocol: &str, port: u16, node_port: Option<u16>) -> Value {
    let mut p = json!({"name": name, "protocol": protocol, "port": port,
                       "targetPort": TARGET_PORT});
    if let Some(np) = node_port {
        p["nodePort"] = json!(np);
    }
    p
}

/// The usual ports: `tcp` TCP/80 and `udp` UDP/80.
pub fn tcp_udp_ports() -> Vec<Value> {
    vec![
        svc_port("tcp", "TCP", 80, None),
        svc_port("udp", "UDP", 80, None),
    ]
}

/// A Service of `type_` with `cluster_ips` (IPv4 first) and `ports`; `extra` fields are
/// merged into its spec.
pub fn service_obj(
    name: &str,
    type_: &str,
    cluster_ips: &[&str],
    ports: Vec<Value>,
    extra: Value,
) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut spec = json!({
        "type": type_,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
        "ports": ports
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    })
}

/// An endpoint's conditions.
#[derive(Clone, Copy, Debug)]
pub struct Cond {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub const READY: Cond = Cond {
    ready: true,
    serving: true,
    terminating: false,
};
pub const NOT_READY: Cond = Cond {
    ready: false,
    serving: false,
    terminating: false,
};
pub const SERVING_TERMINATING: Cond = Cond {
    ready: false,
    serving: true,
    terminating: true,
};
pub const TERMINATED: Cond = Cond {
    ready: false,
    serving: false,
    terminating: true,
};

/// An endpoint on `node` with `cond`; `zone` adds `hints.forZones`.
pub fn ep(ip: &str, node: &str, cond: Cond, zone: Option<&str>) -> Value {
    let mut e = json!({
        "addresses": [ip],
        "nodeName": node,
        "conditions": {"ready": cond.ready, "serving": cond.serving,
                       "terminating": cond.terminating}
    });
    if let Some(z) = zone {
        e["hints"] = json!({"forZones": [{"name": z}]});
    }
    e
}

/// An EndpointSlice of `service` (ports `tcp` TCP/8080 and `udp` UDP/8080); the address
/// type follows the first endpoint's address.
pub fn slice_obj(service: &str, name: &str, eps: Vec<Value>) -> Value {
    let v6 = eps
        .first()
        .and_then(|e| e["addresses"][0].as_str())
        .is_some_and(|a| a.contains(':'));
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": eps,
        "ports": [
            {"name": "tcp", "protocol": "TCP", "port": TARGET_PORT},
            {"name": "udp", "protocol": "UDP", "port": TARGET_PORT}
        ]
    })
}

/// Ready endpoints on node2 (not this node), without hints.
pub fn ready_remote(ips: &[&str]) -> Vec<Value> {
    ips.iter().map(|ip| ep(ip, "node2", READY, None)).collect()
}
