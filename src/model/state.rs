//! The cluster objects the proxy knows, by key, and the proxy model computed from them.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::convert::{self, NodeInfo, Problems, SERVICE_NAME_LABEL};
use super::types::{Endpoint, ServiceName, ServicePort, ServicePortName};

/// One object the proxy watches.
#[derive(Clone, Debug)]
pub enum Object {
    /// v1 Service
    Service(Box<Service>),
    /// discovery.k8s.io/v1 EndpointSlice
    EndpointSlice(Box<EndpointSlice>),
    /// v1 Node
    Node(Box<Node>),
    /// networking.k8s.io/v1 ServiceCIDR
    ServiceCidr(Box<ServiceCIDR>),
}

/// Every object the sources delivered, by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Services by namespace/name
    pub services: BTreeMap<ServiceName, Service>,
    /// EndpointSlices by namespace/name
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    /// Nodes by name (only ours matters)
    pub nodes: BTreeMap<String, Node>,
    /// ServiceCIDRs by name
    pub service_cidrs: BTreeMap<String, ServiceCIDR>,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl ClusterState {
    /// Builds a state from a list of objects (later objects with the same key win).
    pub fn from_objects(objs: impl IntoIterator<Item = Object>) -> Self {
        let mut s = ClusterState::default();
        for o in objs {
            s.upsert(o);
        }
        s
    }

    /// Number of objects of a kind (`Service`, `EndpointSlice`, `Node`, `ServiceCIDR`).
    pub fn len_of(&self, kind: &str) -> usize {
        match kind {
            "Service" => self.services.len(),
            "EndpointSlice" => self.slices.len(),
            "Node" => self.nodes.len(),
            "ServiceCIDR" => self.service_cidrs.len(),
            _ => 0,
        }
    }

    /// Replaces every object of a kind with `objs` (a complete relist); returns whether
    /// anything changed.
    pub fn replace_kind(&mut self, kind: &str, objs: Vec<Object>) -> bool {
        let mut fresh = ClusterState::default();
        for o in objs {
            fresh.upsert(o);
        }
        let changed = match kind {
            "Service" => self.services != fresh.services,
            "EndpointSlice" => self.slices != fresh.slices,
            "Node" => self.nodes != fresh.nodes,
            "ServiceCIDR" => self.service_cidrs != fresh.service_cidrs,
            _ => false,
        };
        match kind {
            "Service" => self.services = fresh.services,
            "EndpointSlice" => self.slices = fresh.slices,
            "Node" => self.nodes = fresh.nodes,
            "ServiceCIDR" => self.service_cidrs = fresh.service_cidrs,
            _ => {}
        }
        changed
    }

    /// Adds or replaces an object; returns whether it differs from what was there.
    pub fn upsert_changed(&mut self, obj: Object) -> bool {
        let before = self.get(&obj);
        let same = before.as_ref().is_some_and(|b| objects_equal(b, &obj));
        self.upsert(obj);
        !same
    }

    fn get(&self, obj: &Object) -> Option<Object> {
        match obj {
            Object::Service(s) => {
                let (namespace, name) = ns_name(&s.metadata);
                self.services
                    .get(&ServiceName { namespace, name })
                    .map(|v| Object::Service(Box::new(v.clone())))
            }
            Object::EndpointSlice(s) => self
                .slices
                .get(&ns_name(&s.metadata))
                .map(|v| Object::EndpointSlice(Box::new(v.clone()))),
            Object::Node(n) => self
                .nodes
                .get(&ns_name(&n.metadata).1)
                .map(|v| Object::Node(Box::new(v.clone()))),
            Object::ServiceCidr(c) => self
                .service_cidrs
                .get(&ns_name(&c.metadata).1)
                .map(|v| Object::ServiceCidr(Box::new(v.clone()))),
        }
    }

    /// Removes an object by key; returns whether it was there.
    pub fn remove(&mut self, obj: &Object) -> bool {
        match obj {
            Object::Service(s) => {
                let (namespace, name) = ns_name(&s.metadata);
                self.services
                    .remove(&ServiceName { namespace, name })
                    .is_some()
            }
            Object::EndpointSlice(s) => self.slices.remove(&ns_name(&s.metadata)).is_some(),
            Object::Node(n) => self.nodes.remove(&ns_name(&n.metadata).1).is_some(),
            Object::ServiceCidr(c) => self.service_cidrs.remove(&ns_name(&c.metadata).1).is_some(),
        }
    }

    /// Adds or replaces an object.
    pub fn upsert(&mut self, obj: Object) {
        match obj {
            Object::Service(s) => {
                let (namespace, name) = ns_name(&s.metadata);
                self.services.insert(ServiceName { namespace, name }, *s);
            }
            Object::EndpointSlice(s) => {
                self.slices.insert(ns_name(&s.metadata), *s);
            }
            Object::Node(n) => {
                self.nodes.insert(ns_name(&n.metadata).1, *n);
            }
            Object::ServiceCidr(c) => {
                self.service_cidrs.insert(ns_name(&c.metadata).1, *c);
            }
        }
    }
}

fn objects_equal(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Service(x), Object::Service(y)) => x == y,
        (Object::EndpointSlice(x), Object::EndpointSlice(y)) => x == y,
        (Object::Node(x), Object::Node(y)) => x == y,
        (Object::ServiceCidr(x), Object::ServiceCidr(y)) => x == y,
        _ => false,
    }
}

/// One service port with its endpoints, ready for topology and the ruleset builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// the port
    pub port: ServicePort,
    /// every endpoint the slices list for it (both families)
    pub endpoints: Vec<Endpoint>,
}

/// What the ruleset is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyModel {
    /// service ports by name
    pub services: BTreeMap<ServicePortName, ServiceEntry>,
    /// this node
    pub node: NodeInfo,
    /// ServiceCIDR networks
    pub service_cidrs: Vec<IpNet>,
}

impl ProxyModel {
    /// Computes the model for `node_name` from the cluster state; problems with input
    /// objects are collected, never fatal.
    pub fn compute(state: &ClusterState, node_name: &str, problems: &mut Problems) -> Self {
        let node = match state.nodes.get(node_name) {
            Some(n) => convert::node_info(n, problems),
            None => NodeInfo {
                name: node_name.to_string(),
                ..Default::default()
            },
        };
        let mut by_service: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
        for ((ns, _), slice) in &state.slices {
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                by_service
                    .entry(ServiceName {
                        namespace: ns.clone(),
                        name: svc.clone(),
                    })
                    .or_default()
                    .push(slice);
            }
        }
        let mut services = BTreeMap::new();
        for (name, svc) in &state.services {
            let ports = convert::service_ports(svc, problems);
            if ports.is_empty() {
                continue;
            }
            let slices = by_service.get(name).map(|v| v.as_slice()).unwrap_or(&[]);
            let mut eps = convert::slice_endpoints(slices.iter().copied(), node_name, problems);
            for port in ports {
                let endpoints = eps
                    .remove(&(port.name.port.clone(), port.name.protocol))
                    .unwrap_or_default();
                services.insert(port.name.clone(), ServiceEntry { port, endpoints });
            }
        }
        let service_cidrs = convert::service_cidrs(state.service_cidrs.values(), problems);
        ProxyModel {
            services,
            node,
            service_cidrs,
        }
    }
}
