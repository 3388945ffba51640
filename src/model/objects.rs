//! The Kubernetes objects the proxy watches, holding only the fields it reads.
//!
//! A full k8s-openapi object keeps every field of the API (managed fields, annotations,
//! owner references, target references of every endpoint...): at 30,000 Services with
//! 10 endpoints each that was a quarter of a GiB the proxy never looks at. These types
//! deserialize from the same JSON (API server responses and manifests alike) and skip
//! everything else while parsing.
//!
//! They accept what k8s-openapi accepts for the fields they keep: every field may be
//! missing or `null` (a required field then takes its default), a field of the wrong
//! type fails the whole object, and `apiVersion`/`kind`, when present, must be the
//! object's own. Fields they skip are not type-checked any more: they cannot change
//! what the proxy programs.
//!
//! Values that repeat across objects (namespaces, node names, zones, port names and
//! protocols) are interned; addresses are kept parsed when their text is the address's
//! canonical spelling, and as text otherwise, so that [`super::convert`] reports a bad
//! or oddly spelled address with the text the object gave.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::convert::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ZONE_LABEL};
use super::types::{ServiceName, TrafficDistribution};

/// The EndpointSlice annotation with the time of the change that caused the slice's
/// last update (the start of the network programming latency).
pub const TRIGGER_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

// ---------------------------------------------------------------------------------
// Interning

struct Interner {
    set: HashSet<Arc<str>>,
    /// size at which entries no object holds any more are dropped
    prune_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        set: HashSet::new(),
        prune_at: 1024,
    })
});

/// One shared copy of a string that many objects hold (a namespace, a node name, a
/// zone). Strings no object holds any more are dropped when the table has doubled
/// since the last sweep, so names of deleted namespaces do not accumulate.
pub fn intern(s: &str) -> Arc<str> {
    let mut g = match INTERNER.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(a) = g.set.get(s) {
        return a.clone();
    }
    if g.set.len() >= g.prune_at {
        g.set.retain(|a| Arc::strong_count(a) > 1);
        g.prune_at = (2 * g.set.len()).max(1024);
    }
    let a: Arc<str> = Arc::from(s);
    g.set.insert(a.clone());
    a
}

// ---------------------------------------------------------------------------------
// Addresses

/// An address field as the object gave it: parsed when the text is the canonical
/// spelling of an IP address (so it prints back the same), else the text itself
/// (`010.0.0.1`, `None`, garbage), which [`super::convert`] parses sloppily or
/// reports.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// canonical text of this address
    Ip(IpAddr),
    /// any other text
    Text(Box<str>),
}

impl Addr {
    /// From the object's text.
    pub fn new(s: &str) -> Addr {
        match s.parse::<IpAddr>() {
            Ok(ip) if prints_as(&ip, s) => Addr::Ip(ip),
            _ => Addr::Text(s.into()),
        }
    }

    /// The address, parsed as upstream's `ParseIPSloppy` does.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Addr::Ip(ip) => Some(*ip),
            Addr::Text(s) => super::convert::parse_ip_sloppy(s),
        }
    }

    /// The text, when it is not an address's canonical spelling.
    pub fn text(&self) -> Option<&str> {
        match self {
            Addr::Ip(_) => None,
            Addr::Text(s) => Some(s),
        }
    }
}

/// Whether `ip` prints as exactly `s` (checked without allocating).
fn prints_as(ip: &IpAddr, s: &str) -> bool {
    struct Cmp<'a> {
        rest: &'a [u8],
        same: bool,
    }
    impl fmt::Write for Cmp<'_> {
        fn write_str(&mut self, part: &str) -> fmt::Result {
            match self.rest.strip_prefix(part.as_bytes()) {
                Some(r) if self.same => self.rest = r,
                _ => self.same = false,
            }
            Ok(())
        }
    }
    let mut c = Cmp {
        rest: s.as_bytes(),
        same: true,
    };
    let _ = fmt::write(&mut c, format_args!("{ip}"));
    c.same && c.rest.is_empty()
}

/// Prints the object's text.
impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "{ip}"),
            Addr::Text(s) => f.write_str(s),
        }
    }
}

/// Prints the object's text as `{:?}` of a string does, so messages read as before.
impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "\"{ip}\""),
            Addr::Text(s) => fmt::Debug::fmt(&**s, f),
        }
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(Addr::new))
    }
}

// ---------------------------------------------------------------------------------
// Deserialization helpers

/// A visitor for a string, mapped by `f` (borrowed or owned input alike).
struct StrVisitor<F>(F);

impl<T, F: FnOnce(&str) -> T> Visitor<'_> for StrVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v))
    }
}

/// A string whose value is not needed (type-checked, then dropped).
struct AnyStr;

impl<'de> Deserialize<'de> for AnyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|_: &str| AnyStr))
    }
}

/// An interned string.
struct Interned(Arc<str>);

impl<'de> Deserialize<'de> for Interned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| Interned(intern(s))))
    }
}

/// A string shared by `Arc` (not interned: names unique to one object).
struct Shared(Arc<str>);

impl<'de> Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| Shared(Arc::from(s))))
    }
}

/// A field that may be `null`: then, as when it is missing, its default (k8s-openapi
/// reads every field this way).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A JSON object read as `T`. serde's derived structs also accept a list of field
/// values in declaration order, which k8s-openapi never did: `metadata: ["ns", "a"]`
/// must be refused, not read as a namespace and a name.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(MapOnly)
    }
}

/// An object field (`null` or missing: its default).
fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<MapOnly<T>>::deserialize(d)?.map_or_else(T::default, |m| m.0))
}

/// A list of objects (`null` or missing: empty).
fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<MapOnly<T>>>::deserialize(d)?
        .map(|v| v.into_iter().map(|m| m.0).collect())
        .unwrap_or_default())
}

/// A whole object of a kind the proxy reads, refusing anything but a JSON object (the
/// watcher's and the manifest loader's entry point).
pub fn from_object<'de, D: Deserializer<'de>, T: ApiKind>(d: D) -> Result<T, D::Error> {
    MapOnly::<T>::deserialize(d).map(|m| m.0)
}

fn interned<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    Ok(Option::<Interned>::deserialize(d)?.map_or_else(|| intern(""), |s| s.0))
}

fn interned_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    Ok(Option::<Interned>::deserialize(d)?.map(|s| s.0))
}

fn shared<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    Ok(Option::<Shared>::deserialize(d)?.map_or_else(|| Arc::from(""), |s| s.0))
}

fn boxed_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(String::into_boxed_str))
}

/// `metadata.creationTimestamp` as (seconds, nanoseconds) since the epoch; a value
/// that is not a timestamp fails the object, as it did in k8s-openapi.
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(i64, i32)>, D::Error> {
    Ok(Option::<k8s_openapi::jiff::Timestamp>::deserialize(d)?
        .map(|t| (t.as_second(), t.subsec_nanosecond())))
}

/// Parses an RFC 3339 timestamp into (seconds, nanoseconds) since the epoch.
pub fn parse_timestamp(s: &str) -> Option<(i64, i32)> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| (t.as_second(), t.subsec_nanosecond()))
}

/// The value of one key of a string map (labels, annotations); every other entry is
/// type-checked and dropped.
struct Pick(&'static str);

impl<'de> DeserializeSeed<'de> for Pick {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

/// Whether a map key is the one wanted.
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| s == self.0))
    }
}

impl<'de> Visitor<'de> for Pick {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Some(map.next_value::<String>()?);
            } else {
                map.next_value::<AnyStr>()?;
            }
        }
        Ok(found)
    }
}

fn proxy_name_label<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Pick(SERVICE_PROXY_NAME_LABEL).deserialize(d)?.is_some())
}

fn service_name_label<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    Ok(Pick(SERVICE_NAME_LABEL)
        .deserialize(d)?
        .map(String::into_boxed_str))
}

fn zone_label<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    Ok(Pick(ZONE_LABEL).deserialize(d)?.map(|z| intern(&z)))
}

/// The trigger-time annotation; a value that is not a timestamp is ignored (as the
/// daemon did), never a reason to refuse the slice.
fn trigger_annotation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(i64, i32)>, D::Error> {
    Ok(Pick(TRIGGER_ANNOTATION)
        .deserialize(d)?
        .and_then(|t| parse_timestamp(&t)))
}

/// The first entry of `addresses` (upstream uses only that one); the others are
/// type-checked and dropped.
fn first_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Addr>, D::Error> {
    struct First;
    impl<'de> Visitor<'de> for First {
        type Value = Option<Addr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of addresses")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<Addr>()?;
            while seq.next_element::<AnyStr>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_option(First)
}

/// Checks `apiVersion` or `kind` when the object carries it (a list's items may not).
struct Expect(&'static str);

impl<'de> DeserializeSeed<'de> for Expect {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let want = self.0;
        let v = String::deserialize(d)?;
        if v == want {
            Ok(())
        } else {
            Err(de::Error::invalid_value(de::Unexpected::Str(&v), &want))
        }
    }
}

macro_rules! expect_fn {
    ($name:ident, $value:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
            Expect($value).deserialize(d)
        }
    };
}

expect_fn!(v1, "v1");
expect_fn!(discovery_v1, "discovery.k8s.io/v1");
expect_fn!(networking_v1, "networking.k8s.io/v1");
expect_fn!(kind_service, "Service");
expect_fn!(kind_slice, "EndpointSlice");
expect_fn!(kind_node, "Node");
expect_fn!(kind_cidr, "ServiceCIDR");

// ---------------------------------------------------------------------------------
// The objects

/// Where an object of each kind lives in the API, for the watchers.
pub trait ApiKind: Clone + fmt::Debug + for<'de> Deserialize<'de> + Send + 'static {
    /// `kind`
    const KIND: &'static str;
    /// API group (empty for core)
    const GROUP: &'static str;
    /// API version
    const VERSION: &'static str;
    /// resource name in URLs
    const PLURAL: &'static str;

    /// Takes the object's `metadata.resourceVersion` out of it: the watcher needs it
    /// to resume, the stored state does not.
    fn take_resource_version(&mut self) -> Option<Box<str>>;
}

/// v1 Service: what [`super::convert::service_ports`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, rename = "apiVersion", deserialize_with = "v1")]
    _api_version: (),
    #[serde(default, rename = "kind", deserialize_with = "kind_service")]
    _kind: (),
    /// metadata
    #[serde(default, deserialize_with = "object")]
    pub metadata: ServiceMeta,
    /// spec
    #[serde(default, deserialize_with = "object")]
    pub spec: ServiceSpec,
    /// status
    #[serde(default, deserialize_with = "object")]
    pub status: ServiceStatus,
}

/// A Service's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeta {
    /// namespace (interned; empty when absent)
    #[serde(default = "empty", deserialize_with = "interned")]
    pub namespace: Arc<str>,
    /// name (empty when absent)
    #[serde(default = "empty_shared", deserialize_with = "shared")]
    pub name: Arc<str>,
    /// creationTimestamp as (seconds, nanoseconds) since the epoch
    #[serde(default, deserialize_with = "timestamp")]
    pub creation_timestamp: Option<(i64, i32)>,
    /// whether the `service.kubernetes.io/service-proxy-name` label is set (the
    /// Service then belongs to another proxy)
    #[serde(default, rename = "labels", deserialize_with = "proxy_name_label")]
    pub other_proxy: bool,
    /// resourceVersion, until the watcher takes it
    #[serde(default, deserialize_with = "boxed_opt")]
    pub resource_version: Option<Box<str>>,
}

fn empty() -> Arc<str> {
    intern("")
}

fn empty_shared() -> Arc<str> {
    Arc::from("")
}

/// `spec.type`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// ClusterIP, or absent
    #[default]
    ClusterIp,
    /// NodePort
    NodePort,
    /// LoadBalancer
    LoadBalancer,
    /// ExternalName
    ExternalName,
    /// any other value (treated as ClusterIP)
    Other,
}

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| match s {
            "ClusterIP" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            _ => ServiceType::Other,
        }))
    }
}

/// A string field of which the proxy only asks whether it is one value: `Local` for
/// the traffic policies, `ClientIP` for session affinity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flag(pub bool);

fn flag<'de, D: Deserializer<'de>>(d: D, value: &'static str) -> Result<Flag, D::Error> {
    Ok(Flag(
        Option::<FlagText>::deserialize(d)?.is_some_and(|t| t.0 == value),
    ))
}

/// The text of a [`Flag`] field; short-lived.
struct FlagText(String);

impl<'de> Deserialize<'de> for FlagText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(FlagText)
    }
}

fn local_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
    flag(d, "Local")
}

fn client_ip_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
    flag(d, "ClientIP")
}

/// `spec.trafficDistribution`: the values the proxy knows; others are ignored.
fn traffic_distribution<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<TrafficDistribution>, D::Error> {
    Ok(
        Option::<FlagText>::deserialize(d)?.and_then(|t| match t.0.as_str() {
            "PreferClose" | "PreferSameZone" => Some(TrafficDistribution::PreferSameZone),
            "PreferSameNode" => Some(TrafficDistribution::PreferSameNode),
            _ => None,
        }),
    )
}

/// A Service's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// type
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub type_: ServiceType,
    /// clusterIP
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<Addr>,
    /// clusterIPs
    #[serde(default, rename = "clusterIPs", deserialize_with = "nullable")]
    pub cluster_ips: Vec<Addr>,
    /// externalIPs
    #[serde(default, rename = "externalIPs", deserialize_with = "nullable")]
    pub external_ips: Vec<Addr>,
    /// loadBalancerSourceRanges
    #[serde(default, deserialize_with = "nullable")]
    pub load_balancer_source_ranges: Vec<Box<str>>,
    /// externalTrafficPolicy is `Local`
    #[serde(default, deserialize_with = "local_flag")]
    pub external_traffic_policy: Flag,
    /// internalTrafficPolicy is `Local`
    #[serde(default, deserialize_with = "local_flag")]
    pub internal_traffic_policy: Flag,
    /// sessionAffinity is `ClientIP`
    #[serde(default, deserialize_with = "client_ip_flag")]
    pub session_affinity: Flag,
    /// sessionAffinityConfig
    #[serde(default, deserialize_with = "object")]
    pub session_affinity_config: SessionAffinityConfig,
    /// trafficDistribution
    #[serde(default, deserialize_with = "traffic_distribution")]
    pub traffic_distribution: Option<TrafficDistribution>,
    /// healthCheckNodePort
    #[serde(default)]
    pub health_check_node_port: Option<i32>,
    /// ports
    #[serde(default, deserialize_with = "objects")]
    pub ports: Vec<ServicePortSpec>,
}

/// `spec.sessionAffinityConfig`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// clientIP
    #[serde(default, rename = "clientIP", deserialize_with = "object")]
    pub client_ip: ClientIpConfig,
}

/// `spec.sessionAffinityConfig.clientIP`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// timeoutSeconds
    #[serde(default)]
    pub timeout_seconds: Option<i32>,
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    /// name (interned)
    #[serde(default, deserialize_with = "interned_opt")]
    pub name: Option<Arc<str>>,
    /// protocol, as given (interned)
    #[serde(default, deserialize_with = "interned_opt")]
    pub protocol: Option<Arc<str>>,
    /// port (0 when absent)
    #[serde(default, deserialize_with = "nullable")]
    pub port: i32,
    /// nodePort
    #[serde(default)]
    pub node_port: Option<i32>,
}

/// A Service's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// loadBalancer
    #[serde(default, deserialize_with = "object")]
    pub load_balancer: LoadBalancerStatus,
}

/// `status.loadBalancer`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    /// ingress
    #[serde(default, deserialize_with = "objects")]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    /// ip
    #[serde(default)]
    pub ip: Option<Addr>,
    /// ipMode is `Proxy` (the load balancer delivers to the node, not the address)
    #[serde(default, rename = "ipMode", deserialize_with = "proxy_mode")]
    pub ip_mode_proxy: bool,
}

fn proxy_mode<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(flag(d, "Proxy")?.0)
}

impl Service {
    /// namespace/name
    pub fn key(&self) -> ServiceName {
        ServiceName {
            namespace: self.metadata.namespace.to_string(),
            name: self.metadata.name.to_string(),
        }
    }
}

impl ApiKind for Service {
    const KIND: &'static str = "Service";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "services";

    fn take_resource_version(&mut self) -> Option<Box<str>> {
        self.metadata.resource_version.take()
    }
}

/// discovery.k8s.io/v1 EndpointSlice: what [`super::convert::slice_endpoints`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default, rename = "apiVersion", deserialize_with = "discovery_v1")]
    _api_version: (),
    #[serde(default, rename = "kind", deserialize_with = "kind_slice")]
    _kind: (),
    /// metadata
    #[serde(default, deserialize_with = "object")]
    pub metadata: SliceMeta,
    /// addressType
    #[serde(default, deserialize_with = "nullable")]
    pub address_type: AddressType,
    /// endpoints
    #[serde(default, deserialize_with = "objects")]
    pub endpoints: Vec<SliceEndpoint>,
    /// ports
    #[serde(default, deserialize_with = "objects")]
    pub ports: Vec<SlicePort>,
}

/// An EndpointSlice's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceMeta {
    /// namespace (interned; empty when absent)
    #[serde(default = "empty", deserialize_with = "interned")]
    pub namespace: Arc<str>,
    /// name (empty when absent)
    #[serde(default = "empty_shared", deserialize_with = "shared")]
    pub name: Arc<str>,
    /// the `kubernetes.io/service-name` label: the Service the slice belongs to
    #[serde(default, rename = "labels", deserialize_with = "service_name_label")]
    pub service_name: Option<Box<str>>,
    /// the `endpoints.kubernetes.io/last-change-trigger-time` annotation, when it is
    /// a timestamp, as (seconds, nanoseconds) since the epoch
    #[serde(
        default,
        rename = "annotations",
        deserialize_with = "trigger_annotation"
    )]
    pub trigger_time: Option<(i64, i32)>,
    /// resourceVersion, until the watcher takes it
    #[serde(default, deserialize_with = "boxed_opt")]
    pub resource_version: Option<Box<str>>,
}

/// `addressType`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressType {
    /// IPv4
    Ipv4,
    /// IPv6
    Ipv6,
    /// FQDN, absent or unknown: not ours to program
    #[default]
    Other,
}

impl AddressType {
    /// The API's spelling.
    pub fn name(self) -> &'static str {
        match self {
            AddressType::Ipv4 => "IPv4",
            AddressType::Ipv6 => "IPv6",
            AddressType::Other => "other",
        }
    }
}

impl<'de> Deserialize<'de> for AddressType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| match s {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            _ => AddressType::Other,
        }))
    }
}

/// One entry of an EndpointSlice's `endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// the first of `addresses` (the only one upstream uses)
    #[serde(default, rename = "addresses", deserialize_with = "first_address")]
    pub address: Option<Addr>,
    /// conditions
    #[serde(default, deserialize_with = "object")]
    pub conditions: Conditions,
    /// nodeName (interned)
    #[serde(default, deserialize_with = "interned_opt")]
    pub node_name: Option<Arc<str>>,
    /// hints, when they name any zone or node
    #[serde(default, deserialize_with = "hints")]
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Conditions {
    /// ready
    #[serde(default)]
    pub ready: Option<bool>,
    /// serving
    #[serde(default)]
    pub serving: Option<bool>,
    /// terminating
    #[serde(default)]
    pub terminating: Option<bool>,
}

/// An endpoint's hints (names interned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hints {
    /// forZones[].name
    #[serde(default, deserialize_with = "named")]
    pub for_zones: Vec<Arc<str>>,
    /// forNodes[].name
    #[serde(default, deserialize_with = "named")]
    pub for_nodes: Vec<Arc<str>>,
}

fn hints<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<Hints>>, D::Error> {
    Ok(Option::<MapOnly<Hints>>::deserialize(d)?
        .map(|h| h.0)
        .filter(|h| !h.for_zones.is_empty() || !h.for_nodes.is_empty())
        .map(Box::new))
}

/// `[{name: ...}]` → the names, interned.
fn named<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<str>>, D::Error> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default = "empty", deserialize_with = "interned")]
        name: Arc<str>,
    }
    Ok(objects::<D, Named>(d)?
        .into_iter()
        .map(|n| n.name)
        .collect())
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    /// name (interned)
    #[serde(default, deserialize_with = "interned_opt")]
    pub name: Option<Arc<str>>,
    /// protocol, as given (interned)
    #[serde(default, deserialize_with = "interned_opt")]
    pub protocol: Option<Arc<str>>,
    /// port
    #[serde(default)]
    pub port: Option<i32>,
}

impl EndpointSlice {
    /// namespace and name
    pub fn key(&self) -> SliceKey {
        (self.metadata.namespace.clone(), self.metadata.name.clone())
    }

    /// The Service the slice belongs to (its `kubernetes.io/service-name` label).
    pub fn service(&self) -> Option<ServiceName> {
        Some(ServiceName {
            namespace: self.metadata.namespace.to_string(),
            name: self.metadata.service_name.as_deref()?.to_string(),
        })
    }

    /// The trigger-time annotation in seconds since the epoch.
    pub fn trigger_time(&self) -> Option<f64> {
        self.metadata
            .trigger_time
            .map(|(s, n)| s as f64 + f64::from(n) / 1e9)
    }
}

/// An EndpointSlice's namespace and name.
pub type SliceKey = (Arc<str>, Arc<str>);

impl ApiKind for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    const GROUP: &'static str = "discovery.k8s.io";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "endpointslices";

    fn take_resource_version(&mut self) -> Option<Box<str>> {
        self.metadata.resource_version.take()
    }
}

/// v1 Node: what [`super::convert::node_info`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default, rename = "apiVersion", deserialize_with = "v1")]
    _api_version: (),
    #[serde(default, rename = "kind", deserialize_with = "kind_node")]
    _kind: (),
    /// metadata
    #[serde(default, deserialize_with = "object")]
    pub metadata: NodeMeta,
    /// spec (taints for `/healthz` node eligibility; pod networks for
    /// `--detect-local-mode=NodeCIDR`)
    #[serde(default, deserialize_with = "object")]
    pub spec: NodeSpec,
    /// status
    #[serde(default, deserialize_with = "object")]
    pub status: NodeStatus,
}

/// A Node's spec: the keys of its taints (`/healthz` node eligibility) and its pod
/// networks (`--detect-local-mode=NodeCIDR`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// taints
    #[serde(default, deserialize_with = "objects")]
    pub taints: Vec<Taint>,
    /// `podCIDR` (the first of `podCIDRs`; older clusters set only this)
    #[serde(default, rename = "podCIDR", deserialize_with = "nullable")]
    pub pod_cidr: String,
    /// `podCIDRs`, at most one per family
    #[serde(default, rename = "podCIDRs", deserialize_with = "nullable")]
    pub pod_cidrs: Vec<String>,
}

/// One entry of `spec.taints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    /// key
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
}

/// A Node's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMeta {
    /// name (empty when absent)
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// the `topology.kubernetes.io/zone` label (interned)
    #[serde(default, rename = "labels", deserialize_with = "zone_label")]
    pub zone: Option<Arc<str>>,
    /// deletionTimestamp (`/healthz` node eligibility)
    #[serde(default, deserialize_with = "timestamp")]
    pub deletion_timestamp: Option<(i64, i32)>,
    /// resourceVersion, until the watcher takes it
    #[serde(default, deserialize_with = "boxed_opt")]
    pub resource_version: Option<Box<str>>,
}

/// A Node's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// addresses
    #[serde(default, deserialize_with = "objects")]
    pub addresses: Vec<NodeAddress>,
}

/// One entry of `status.addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    /// type
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub type_: String,
    /// address
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
}

impl ApiKind for Node {
    const KIND: &'static str = "Node";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "nodes";

    fn take_resource_version(&mut self) -> Option<Box<str>> {
        self.metadata.resource_version.take()
    }
}

/// networking.k8s.io/v1 ServiceCIDR: what [`super::convert::service_cidrs`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCidr {
    #[serde(default, rename = "apiVersion", deserialize_with = "networking_v1")]
    _api_version: (),
    #[serde(default, rename = "kind", deserialize_with = "kind_cidr")]
    _kind: (),
    /// metadata
    #[serde(default, deserialize_with = "object")]
    pub metadata: NameMeta,
    /// spec
    #[serde(default, deserialize_with = "object")]
    pub spec: ServiceCidrSpec,
}

/// Metadata of which only the name is read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameMeta {
    /// name (empty when absent)
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// resourceVersion, until the watcher takes it
    #[serde(default, deserialize_with = "boxed_opt")]
    pub resource_version: Option<Box<str>>,
}

/// A ServiceCIDR's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCidrSpec {
    /// cidrs
    #[serde(default, deserialize_with = "nullable")]
    pub cidrs: Vec<String>,
}

impl ApiKind for ServiceCidr {
    const KIND: &'static str = "ServiceCIDR";
    const GROUP: &'static str = "networking.k8s.io";
    const VERSION: &'static str = "v1";
    const PLURAL: &'static str = "servicecidrs";

    fn take_resource_version(&mut self) -> Option<Box<str>> {
        self.metadata.resource_version.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_odd_spellings_as_text() {
        for s in ["10.0.0.1", "fd00::1", "::ffff:1.2.3.4"] {
            assert!(matches!(Addr::new(s), Addr::Ip(_)), "{s}");
            assert_eq!(format!("{:?}", Addr::new(s)), format!("{s:?}"));
            assert_eq!(Addr::new(s).to_string(), s);
        }
        for s in [
            "010.0.0.1",
            "fd00:0::1",
            "FD00::1",
            "None",
            "",
            " 1.2.3.4",
            "a\"b",
        ] {
            assert_eq!(Addr::new(s), Addr::Text(s.into()), "{s}");
            assert_eq!(format!("{:?}", Addr::new(s)), format!("{s:?}"));
        }
        assert_eq!(
            Addr::new("010.0.0.1").ip(),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            Addr::new("fd00:0::1").ip(),
            Some("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn reads_only_what_it_keeps_and_checks_its_types() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7",
                         "creationTimestamp": "2024-01-02T03:04:05Z",
                         "labels": {"x": "y", "service.kubernetes.io/service-proxy-name": "other"},
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80, "protocol": null}],
                     "selector": {"app": "a"}, "externalTrafficPolicy": "Local"},
            "status": null
        }))
        .unwrap();
        assert_eq!(&*svc.metadata.namespace, "ns");
        assert_eq!(svc.metadata.creation_timestamp, Some((1704164645, 0)));
        assert!(svc.metadata.other_proxy);
        assert_eq!(svc.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(svc.spec.ports[0].port, 80);
        assert!(svc.spec.external_traffic_policy.0);
        // Namespaces are shared between objects.
        let other: Service =
            serde_json::from_value(serde_json::json!({"metadata": {"namespace": "ns"}})).unwrap();
        assert!(Arc::ptr_eq(
            &svc.metadata.namespace,
            &other.metadata.namespace
        ));

        // What k8s-openapi refused in a field the proxy reads is still refused.
        for bad in [
            serde_json::json!({"kind": "Node"}),
            serde_json::json!({"metadata": {"labels": {"a": 1}}}),
            serde_json::json!({"metadata": {"creationTimestamp": "yesterday"}}),
            serde_json::json!({"spec": {"ports": [{"port": "eighty"}]}}),
            serde_json::json!({"spec": {"clusterIPs": [1]}}),
            // serde's derived structs read a list as fields in order; k8s-openapi does not
            serde_json::json!({"metadata": ["ns", "a"]}),
            serde_json::json!({"spec": {"ports": [[80]]}}),
            serde_json::json!(["v1", "Service"]),
        ] {
            assert!(from_object::<_, Service>(bad.clone()).is_err(), "{bad}");
        }
        let slice = serde_json::json!({
            "metadata": {"name": "s", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "a"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-01-02T03:04:05.5Z",
                                         "other": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1", "10.1.0.2"], "nodeName": "n1",
                           "targetRef": {"kind": "Pod", "name": "p"},
                           "hints": {"forZones": [{"name": "z"}]}},
                          {"addresses": [], "conditions": {"ready": false}}],
            "ports": [{"name": "http", "port": 8080}]
        });
        let s: EndpointSlice = serde_json::from_value(slice).unwrap();
        assert_eq!(s.service().unwrap().name, "a");
        assert_eq!(s.trigger_time(), Some(1704164645.5));
        assert_eq!(s.endpoints[0].address, Some(Addr::new("10.1.0.1")));
        assert_eq!(&*s.endpoints[0].hints.as_ref().unwrap().for_zones[0], "z");
        assert_eq!(s.endpoints[1].address, None);
        assert_eq!(s.endpoints[1].conditions.ready, Some(false));
        assert!(serde_json::from_value::<EndpointSlice>(
            serde_json::json!({"endpoints": [{"addresses": ["10.1.0.1", 5]}]})
        )
        .is_err());
    }
}
