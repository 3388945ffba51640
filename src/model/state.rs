//! The cluster objects the proxy knows, by key, and the proxy model computed from them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::convert::{self, NodeInfo, Problems};
use super::objects::{EndpointSlice, Node, Service, ServiceCidr, SliceKey};
use super::types::{Endpoint, Protocol, ServiceName, ServicePort, ServicePortName};

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
    ServiceCidr(Box<ServiceCidr>),
}

/// Every object the sources delivered, by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Services by namespace/name (boxed as they arrive: a map's nodes hold room for
    /// eleven values, which for values this size is mostly slack)
    pub services: BTreeMap<ServiceName, Box<Service>>,
    /// EndpointSlices by namespace/name (boxed, as Services are)
    pub slices: BTreeMap<SliceKey, Box<EndpointSlice>>,
    /// Nodes by name (only ours matters)
    pub nodes: BTreeMap<String, Node>,
    /// ServiceCIDRs by name
    pub service_cidrs: BTreeMap<String, ServiceCidr>,
    /// EndpointSlice keys by the Service they belong to (their service-name label),
    /// sorted; most Services have one slice, so a `Vec` rather than a set
    slice_index: BTreeMap<ServiceName, Vec<SliceKey>>,
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceName> {
    slice.service()
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

    fn unindex_slice(&mut self, key: &SliceKey) {
        if let Some(old) = self.slices.get(key).and_then(|s| s.service()) {
            if let Some(keys) = self.slice_index.get_mut(&old) {
                if let Ok(i) = keys.binary_search(key) {
                    keys.remove(i);
                }
                if keys.is_empty() {
                    self.slice_index.remove(&old);
                }
            }
        }
    }

    /// The EndpointSlices of one Service.
    pub fn slices_of(&self, svc: &ServiceName) -> Vec<&EndpointSlice> {
        self.slice_index
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|s| &**s))
            .collect()
    }

    /// The Service a stored object belongs to, if it is a Service or an EndpointSlice.
    pub fn service_of(&self, obj: &Object) -> Option<ServiceName> {
        match obj {
            Object::Service(s) => Some(s.key()),
            Object::EndpointSlice(s) => slice_service(s),
            _ => None,
        }
    }

    /// The Service a stored slice with this object's key belongs to now (before an
    /// update replaces it).
    pub fn stored_slice_service(&self, obj: &Object) -> Option<ServiceName> {
        match obj {
            Object::EndpointSlice(s) => self.slices.get(&s.key()).and_then(|s| s.service()),
            _ => None,
        }
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
            "EndpointSlice" => {
                self.slices = fresh.slices;
                self.slice_index = fresh.slice_index;
            }
            "Node" => self.nodes = fresh.nodes,
            "ServiceCIDR" => self.service_cidrs = fresh.service_cidrs,
            _ => {}
        }
        changed
    }

    /// Adds or replaces an object; returns whether it differs from what was there.
    pub fn upsert_changed(&mut self, obj: Object) -> bool {
        let same = match &obj {
            Object::Service(s) => self.services.get(&s.key()) == Some(s),
            Object::EndpointSlice(s) => self.slices.get(&s.key()) == Some(s),
            Object::Node(n) => self.nodes.get(&n.metadata.name) == Some(&**n),
            Object::ServiceCidr(c) => self.service_cidrs.get(&c.metadata.name) == Some(&**c),
        };
        self.upsert(obj);
        !same
    }

    /// Removes an object by key; returns whether it was there.
    pub fn remove(&mut self, obj: &Object) -> bool {
        match obj {
            Object::Service(s) => self.services.remove(&s.key()).is_some(),
            Object::EndpointSlice(s) => {
                let key = s.key();
                self.unindex_slice(&key);
                self.slices.remove(&key).is_some()
            }
            Object::Node(n) => self.nodes.remove(&n.metadata.name).is_some(),
            Object::ServiceCidr(c) => self.service_cidrs.remove(&c.metadata.name).is_some(),
        }
    }

    /// Adds or replaces an object.
    pub fn upsert(&mut self, obj: Object) {
        match obj {
            Object::Service(s) => {
                self.services.insert(s.key(), s);
            }
            Object::EndpointSlice(s) => {
                let key = s.key();
                self.unindex_slice(&key);
                if let Some(svc) = slice_service(&s) {
                    let keys = self.slice_index.entry(svc).or_default();
                    if let Err(i) = keys.binary_search(&key) {
                        keys.insert(i, key.clone());
                    }
                }
                self.slices.insert(key, s);
            }
            Object::Node(n) => {
                self.nodes.insert(n.metadata.name.clone(), *n);
            }
            Object::ServiceCidr(c) => {
                self.service_cidrs.insert(c.metadata.name.clone(), *c);
            }
        }
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
        // Collected, not inserted one by one: a map built from a sorted sequence has
        // full nodes, one grown by inserts in order half-full ones.
        let services = state
            .services
            .keys()
            .flat_map(|name| service_entries(state, name, node_name, problems))
            .map(|e| (e.port.name.clone(), e))
            .collect();
        let service_cidrs = convert::service_cidrs(state.service_cidrs.values(), problems);
        let model = ProxyModel {
            services,
            node,
            service_cidrs,
        };
        model.report_contested_frontends(problems);
        model
    }

    /// Service ports in the order they claim frontends: older Services first (by
    /// creationTimestamp; Services without one after those), then by name. Of two
    /// Services that claim one address and port, the first keeps it.
    pub fn claim_order(&self) -> Vec<(&ServicePortName, &ServiceEntry)> {
        let mut v: Vec<_> = self.services.iter().collect();
        v.sort_by_key(|(n, e)| (e.port.created.is_none(), e.port.created, *n));
        v
    }

    /// Names both Services of every address and port two of them claim (the later one
    /// loses it; see [`ProxyModel::claim_order`]).
    fn report_contested_frontends(&self, problems: &mut Problems) {
        let mut owner: BTreeMap<(IpAddr, Protocol, u16), &ServicePortName> = BTreeMap::new();
        let mut node_ports: BTreeMap<(Protocol, u16), &ServicePortName> = BTreeMap::new();
        for (name, e) in self.claim_order() {
            let p = &e.port;
            let proto = name.protocol;
            let addrs = p
                .cluster_ips
                .iter()
                .chain(&p.external_ips)
                .chain(&p.load_balancer_ips);
            for ip in addrs {
                match owner.get(&(*ip, proto, p.port)) {
                    Some(first) if first.namespace != name.namespace || first.name != name.name => {
                        problems.add(
                            &format!("Service {}/{}", name.namespace, name.name),
                            format!(
                                "{ip} port {}/{} is also claimed by Service {}/{}, which is older (or first by name) and keeps it",
                                p.port,
                                proto.name(),
                                first.namespace,
                                first.name
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        owner.insert((*ip, proto, p.port), name);
                    }
                }
            }
            if let Some(np) = p.node_port {
                match node_ports.get(&(proto, np)) {
                    Some(first) if first.namespace != name.namespace || first.name != name.name => {
                        problems.add(
                            &format!("Service {}/{}", name.namespace, name.name),
                            format!(
                                "node port {np}/{} is also claimed by Service {}/{}, which keeps it",
                                proto.name(),
                                first.namespace,
                                first.name
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        node_ports.insert((proto, np), name);
                    }
                }
            }
        }
    }

    /// The ports of one Service (a range query: ports sort by namespace and name).
    pub fn ports_of<'a>(
        &'a self,
        svc: &'a ServiceName,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a ServiceEntry)> + 'a {
        let lower = ServicePortName {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            port: String::new(),
            protocol: crate::model::Protocol::Tcp,
        };
        self.services
            .range(lower..)
            .take_while(move |(k, _)| k.namespace == svc.namespace && k.name == svc.name)
    }

    /// Recomputes only the given Services (after their Service object or slices
    /// changed); returns the service ports that were removed, added or recomputed.
    pub fn update_services(
        &mut self,
        state: &ClusterState,
        dirty: &BTreeSet<ServiceName>,
        problems: &mut Problems,
    ) -> BTreeSet<ServicePortName> {
        let mut changed = BTreeSet::new();
        for svc in dirty {
            let old: Vec<ServicePortName> = self.ports_of(svc).map(|(k, _)| k.clone()).collect();
            for k in old {
                self.services.remove(&k);
                changed.insert(k);
            }
            for e in service_entries(state, svc, &self.node.name, problems) {
                changed.insert(e.port.name.clone());
                self.services.insert(e.port.name.clone(), e);
            }
        }
        changed
    }
}

/// The service ports of one Service with their endpoints.
fn service_entries(
    state: &ClusterState,
    name: &ServiceName,
    node_name: &str,
    problems: &mut Problems,
) -> Vec<ServiceEntry> {
    let Some(svc) = state.services.get(name) else {
        return Vec::new();
    };
    let ports = convert::service_ports(svc, problems);
    if ports.is_empty() {
        return Vec::new();
    }
    let slices = state.slices_of(name);
    let mut eps = convert::slice_endpoints(slices.into_iter(), node_name, problems);
    ports
        .into_iter()
        .map(|port| {
            let endpoints = eps
                .remove(&(port.name.port.clone(), port.name.protocol))
                .unwrap_or_default();
            ServiceEntry { port, endpoints }
        })
        .collect()
}
