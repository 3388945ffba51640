//! Objects from the API server: kube-runtime watchers for Services, EndpointSlices,
//! ServiceCIDRs and this proxy's own Node.
//!
//! Each watcher runs with kube-runtime's default backoff and feeds plain events into one
//! channel. [`Sources`] applies them to the [`ClusterState`] synchronously: an initial
//! (re)list is buffered and swapped in whole at `InitDone`, so objects missing from a
//! relist are deleted there (a `Delete` event alone may have been lost). The state is
//! "ready" only once every watcher has delivered its first complete list: a half-known
//! cluster must never be programmed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use kube::core::{DynamicResourceScope, ObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;

use crate::model::convert::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::model::objects::ApiKind;
use crate::model::{ClusterState, EndpointSlice, Node, Object, Service, ServiceCidr, ServiceName};

/// The kinds we watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Service
    Service,
    /// discovery.k8s.io/v1 EndpointSlice
    EndpointSlice,
    /// networking.k8s.io/v1 ServiceCIDR
    ServiceCidr,
    /// v1 Node (ours only)
    Node,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceCidr,
        Kind::Node,
    ];

    /// Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceCidr => "ServiceCIDR",
            Kind::Node => "Node",
        }
    }
}

/// One event from one watcher.
#[derive(Debug)]
pub enum SourceEvent {
    /// a relist starts
    Init(Kind),
    /// an object of a relist
    InitApply(Object),
    /// a relist is complete
    InitDone(Kind),
    /// an object was added or changed
    Apply(Object),
    /// an object was deleted
    Delete(Object),
    /// the watcher failed (it retries with backoff)
    Error(Kind, String),
    /// the API server does not serve this kind (404 on the first list): it counts as
    /// listed and empty, and the watcher looks again later
    Absent(Kind),
}

fn kind_of(o: &Object) -> Kind {
    match o {
        Object::Service(_) => Kind::Service,
        Object::EndpointSlice(_) => Kind::EndpointSlice,
        Object::ServiceCidr(_) => Kind::ServiceCidr,
        Object::Node(_) => Kind::Node,
    }
}

/// Applies watcher events to the cluster state.
#[derive(Default)]
pub struct Sources {
    /// the state
    pub state: ClusterState,
    buffers: BTreeMap<Kind, Vec<Object>>,
    listed: BTreeMap<Kind, bool>,
    absent: BTreeSet<Kind>,
}

/// What an event changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// objects of these kinds changed
    pub services: usize,
    /// slices changed
    pub slices: usize,
    /// the node or service CIDRs changed
    pub other: usize,
    /// the Services whose ports or endpoints may have changed
    pub dirty: BTreeSet<ServiceName>,
    /// something changed that is not one Service's business (a relist, the node, a
    /// ServiceCIDR): the next sync must rebuild everything
    pub global: bool,
}

impl Applied {
    fn count(&mut self, k: Kind) {
        match k {
            Kind::Service => self.services += 1,
            Kind::EndpointSlice => self.slices += 1,
            _ => self.other += 1,
        }
    }

    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.services + self.slices + self.other > 0
    }
}

impl Sources {
    /// Whether every kind has delivered its first complete list.
    pub fn ready(&self) -> bool {
        Kind::ALL
            .iter()
            .all(|k| self.listed.get(k).copied().unwrap_or(false))
    }

    /// Applies one event; returns what changed.
    pub fn apply(&mut self, ev: SourceEvent) -> Applied {
        let mut a = Applied::default();
        match ev {
            SourceEvent::Init(k) => {
                self.buffers.insert(k, Vec::new());
            }
            SourceEvent::InitApply(o) => {
                self.buffers.entry(kind_of(&o)).or_default().push(o);
            }
            SourceEvent::InitDone(k) => {
                if self.absent.remove(&k) {
                    tracing::info!(kind = k.name(), "the API server serves this kind now");
                }
                let objs = self.buffers.remove(&k).unwrap_or_default();
                let before = self.state.len_of(k.name());
                let changed = self.state.replace_kind(k.name(), objs);
                if changed || before != self.state.len_of(k.name()) {
                    a.count(k);
                    a.global = true;
                }
                self.listed.insert(k, true);
            }
            SourceEvent::Apply(o) => {
                let k = kind_of(&o);
                let before = self.state.stored_slice_service(&o);
                let now = self.state.service_of(&o);
                if self.state.upsert_changed(o) {
                    a.count(k);
                    a.dirty.extend(before.into_iter().chain(now));
                    a.global |= matches!(k, Kind::Node | Kind::ServiceCidr);
                }
            }
            SourceEvent::Delete(o) => {
                let k = kind_of(&o);
                let before = self.state.stored_slice_service(&o);
                let now = self.state.service_of(&o);
                if self.state.remove(&o) {
                    a.count(k);
                    a.dirty.extend(before.into_iter().chain(now));
                    a.global |= matches!(k, Kind::Node | Kind::ServiceCidr);
                }
            }
            SourceEvent::Absent(k) => {
                if self.absent.insert(k) {
                    tracing::warn!(
                        kind = k.name(),
                        "the API server does not serve this kind (404); programming without it{}",
                        if k == Kind::ServiceCidr {
                            ": no drop for unallocated service addresses"
                        } else {
                            ""
                        }
                    );
                }
                self.buffers.remove(&k);
                let before = self.state.len_of(k.name());
                let changed = self.state.replace_kind(k.name(), Vec::new());
                if changed || before != self.state.len_of(k.name()) {
                    a.count(k);
                    a.global = true;
                }
                self.listed.insert(k, true);
            }
            SourceEvent::Error(k, e) => {
                tracing::warn!(kind = k.name(), error = %e, "watch failed; retrying with backoff, rules stay in place");
            }
        }
        a
    }
}

/// A lean object as the watcher sees it: kube-runtime reads `metadata.resourceVersion`
/// through [`kube::Resource::meta`] to resume a watch, so this carries an
/// [`ObjectMeta`] with only that field; the object passed on keeps none of it.
#[derive(Clone, Debug)]
pub struct Watched<T> {
    meta: ObjectMeta,
    /// the object
    pub object: T,
}

impl<'de, T: ApiKind> Deserialize<'de> for Watched<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut object: T = crate::model::objects::from_object(d)?;
        let meta = ObjectMeta {
            resource_version: object.take_resource_version().map(String::from),
            ..ObjectMeta::default()
        };
        Ok(Watched { meta, object })
    }
}

impl<T: ApiKind> kube::Resource for Watched<T> {
    type DynamicType = ();
    type Scope = DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::GROUP)
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::VERSION)
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::PLURAL)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// How long the watcher of a kind the API server does not serve waits before it looks
/// again (a cluster upgraded to serve ServiceCIDRs gets their drop rule without a
/// restart of the proxy).
const ABSENT_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether a watcher error says the API server does not serve the kind at all: a 404
/// on the list (not a 404 for one object, which a list never gives).
fn not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

fn forward<T: ApiKind>(
    kind: Kind,
    client: Client,
    cfg: watcher::Config,
    wrap: fn(Box<T>) -> Object,
    tx: mpsc::UnboundedSender<SourceEvent>,
    optional: bool,
) -> tokio::task::JoinHandle<()> {
    let api = Api::<Watched<T>>::all(client);
    let wrap = move |w: Watched<T>| wrap(Box::new(w.object));
    tokio::spawn(async move {
        loop {
            let mut stream = watcher::watcher(api.clone(), cfg.clone())
                .default_backoff()
                .boxed();
            let mut absent = false;
            while let Some(ev) = stream.next().await {
                let out = match ev {
                    Ok(Event::Init) => SourceEvent::Init(kind),
                    Ok(Event::InitApply(o)) => SourceEvent::InitApply(wrap(o)),
                    Ok(Event::InitDone) => SourceEvent::InitDone(kind),
                    Ok(Event::Apply(o)) => SourceEvent::Apply(wrap(o)),
                    Ok(Event::Delete(o)) => SourceEvent::Delete(wrap(o)),
                    Err(e) if optional && not_served(&e) => {
                        absent = true;
                        SourceEvent::Absent(kind)
                    }
                    Err(e) => SourceEvent::Error(kind, crate::error_text::error_chain(&e)),
                };
                if tx.send(out).is_err() {
                    return;
                }
                if absent {
                    break;
                }
            }
            if !absent {
                return;
            }
            tokio::time::sleep(ABSENT_RETRY).await;
        }
    })
}

/// Starts the four watchers; events arrive on the returned channel.
pub fn watch_all(client: Client, node: &str) -> mpsc::UnboundedReceiver<SourceEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Upstream's selectors: Services of other proxies and headless Services are not ours.
    let svc_cfg = watcher::Config::default()
        .labels(&format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"));
    let slice_cfg = watcher::Config::default()
        .labels(&format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"));
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    forward::<Service>(
        Kind::Service,
        client.clone(),
        svc_cfg,
        Object::Service,
        tx.clone(),
        false,
    );
    forward::<EndpointSlice>(
        Kind::EndpointSlice,
        client.clone(),
        slice_cfg,
        Object::EndpointSlice,
        tx.clone(),
        false,
    );
    forward::<ServiceCidr>(
        Kind::ServiceCidr,
        client.clone(),
        watcher::Config::default(),
        Object::ServiceCidr,
        tx.clone(),
        // Clusters before 1.33 have no ServiceCIDR API; upstream then does without the
        // drop for unallocated service addresses, and so do we.
        true,
    );
    forward::<Node>(Kind::Node, client, node_cfg, Object::Node, tx, false);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Object {
        Object::Service(Box::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn relist_swaps_in_and_deletes_missing_objects() {
        let mut s = Sources::default();
        assert!(!s.ready());
        s.apply(SourceEvent::Init(Kind::Service));
        s.apply(SourceEvent::InitApply(svc("a", "10.0.0.1")));
        s.apply(SourceEvent::InitApply(svc("b", "10.0.0.2")));
        // Nothing is visible until the list is complete.
        assert_eq!(s.state.services.len(), 0);
        assert!(s.apply(SourceEvent::InitDone(Kind::Service)).any());
        assert_eq!(s.state.services.len(), 2);
        for k in [Kind::EndpointSlice, Kind::ServiceCidr, Kind::Node] {
            assert!(!s.ready());
            s.apply(SourceEvent::Init(k));
            s.apply(SourceEvent::InitDone(k));
        }
        assert!(s.ready());
        // A relist without "b": b is deleted at InitDone.
        s.apply(SourceEvent::Init(Kind::Service));
        s.apply(SourceEvent::InitApply(svc("a", "10.0.0.1")));
        assert_eq!(s.state.services.len(), 2);
        assert!(s.apply(SourceEvent::InitDone(Kind::Service)).any());
        assert_eq!(s.state.services.len(), 1);
        // Re-applying an identical object changes nothing.
        assert!(!s.apply(SourceEvent::Apply(svc("a", "10.0.0.1"))).any());
        assert!(s.apply(SourceEvent::Apply(svc("a", "10.0.0.9"))).any());
        assert!(s.apply(SourceEvent::Delete(svc("a", "10.0.0.9"))).any());
        assert_eq!(s.state.services.len(), 0);
    }
}
