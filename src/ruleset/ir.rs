//! The ruleset IR: typed tables, chains, rules, sets and elements.
//!
//! Both the nft text render and the netlink encoder consume these values, so what
//! `--dry-run` prints is what the kernel gets. Nothing here is a string of nft syntax:
//! statements, keys and verdicts are typed so that the encoder never parses text.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The name of our table in both families. We touch no other table.
pub const TABLE_NAME: &str = "kube-nft-proxy";

/// An address family: one table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip`
    V4,
    /// `ip6`
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The nft family keyword (`ip`, `ip6`); also the payload protocol keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The netfilter protocol family number (NFPROTO_IPV4 / NFPROTO_IPV6).
    pub fn nfproto(self) -> u16 {
        match self {
            Family::V4 => libc::NFPROTO_IPV4 as u16,
            Family::V6 => libc::NFPROTO_IPV6 as u16,
        }
    }

    /// Length of an address of this family in bytes.
    pub fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// Netfilter hooks used by our base chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING
    Prerouting,
    /// NF_INET_LOCAL_IN
    Input,
    /// NF_INET_FORWARD
    Forward,
    /// NF_INET_LOCAL_OUT
    Output,
    /// NF_INET_POST_ROUTING
    Postrouting,
}

impl Hook {
    /// nft keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// Kernel hook number.
    pub fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }
}

/// Base chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    /// `type filter`
    Filter,
    /// `type nat`
    Nat,
}

impl ChainType {
    /// nft keyword (also the kernel's chain type name).
    pub fn nft(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// Where a chain is attached: a base chain has a hook, a regular chain does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// Attached to a netfilter hook.
    Base {
        /// filter or nat
        kind: ChainType,
        /// the hook
        hook: Hook,
        /// numeric priority (nft 1.0.6 refuses `dstnat` on output, so we never use names)
        priority: i32,
    },
    /// Reached only by jump/goto.
    Regular,
}

/// A chain and its rules, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Base or regular.
    pub kind: ChainKind,
    /// Rules in evaluation order.
    pub rules: Vec<Rule>,
}

/// One rule: statements evaluated left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule(pub Vec<Stmt>);

/// A value that a packet field is loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Network-layer source address (family of the table).
    Saddr,
    /// Network-layer destination address.
    Daddr,
    /// `meta l4proto`
    L4Proto,
    /// `th dport`
    ThDport,
    /// `numgen random mod N`
    Numgen(u32),
    /// `numgen random mod 1 offset T`: always `T`. A constant inside a concatenation
    /// that nft 1.0.6 can type (it refuses a bare number or address there, `Can't parse
    /// symbolic invalid expressions`); session affinity uses it to name an endpoint in a
    /// `client . endpoint` key (see `build::affinity_chain`).
    Tag(u32),
}

/// Verdicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// accept
    Accept,
    /// drop
    Drop,
    /// return
    Return,
    /// jump CHAIN
    Jump(String),
    /// goto CHAIN
    Goto(String),
}

/// A statement inside a rule. Each renders as nft text and encodes as a few netlink
/// expressions; the set is small on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `ct state new`
    CtStateNew,
    /// `ct status dnat`
    CtStatusDnat,
    /// `ip saddr 10.0.0.0/8` or `ip saddr != 10.0.0.0/8`
    Cidr {
        /// Saddr or Daddr
        field: Field,
        /// the network
        net: IpNet,
        /// `!=`
        negate: bool,
    },
    /// like `Lookup`, against an interval set (the kernel wants every component in
    /// network byte order there)
    LookupRange {
        /// concatenated key
        fields: Vec<Field>,
        /// set name
        set: String,
        /// `!=`
        negate: bool,
    },
    /// `iifname "NAME"`, or `iifname "NAME*"` (any interface whose name starts with
    /// `NAME`) when `prefix`
    Iifname {
        /// the interface name or prefix (1-15 bytes, no `"` or `*`)
        name: String,
        /// match the name as a prefix
        prefix: bool,
    },
    /// `ip daddr . meta l4proto . th dport @set`
    Lookup {
        /// concatenated key
        fields: Vec<Field>,
        /// set name
        set: String,
        /// `!=`
        negate: bool,
    },
    /// `fib saddr type local` (saddr true) / `fib daddr type local`
    FibLocal {
        /// saddr or daddr
        saddr: bool,
        /// `type != local`
        negate: bool,
    },
    /// `meta mark & BIT == 0`
    MarkClear(u32),
    /// `meta mark set meta mark | BIT`
    MarkSetOr(u32),
    /// `meta mark set meta mark ^ BIT`
    MarkSetXor(u32),
    /// `dnat ip to KEY map @MAP` where the map yields `addr . port`
    DnatMap {
        /// concatenated key
        fields: Vec<Field>,
        /// map name
        map: String,
    },
    /// `meta l4proto tcp`
    L4Proto(u8),
    /// `th dport 80`
    Dport(u16),
    /// `numgen random mod N V`: true with probability 1/N
    NumgenEq {
        /// N
        modulus: u32,
        /// V
        value: u32,
    },
    /// `update @set { KEY }`: adds the key, or refreshes its timeout
    Update {
        /// concatenated key
        fields: Vec<Field>,
        /// set name
        set: String,
    },
    /// `dnat ip to ADDR:PORT` (needs an `L4Proto` before it)
    Dnat(IpAddr, u16),
    /// `masquerade fully-random`
    Masquerade,
    /// `reject` (ICMP port unreachable)
    Reject,
    /// a verdict
    Verdict(Verdict),
}

/// The type of one component of a set key or map value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyType {
    /// ipv4_addr / ipv6_addr (family of the table)
    Addr,
    /// inet_proto
    Proto,
    /// inet_service
    Port,
    /// the value of `numgen random mod N` (declared with typeof)
    Index,
    /// an address range (a CIDR) of the table's family: makes the set an interval set
    Net,
}

/// One component of an element key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// an address
    Addr(IpAddr),
    /// an IP protocol number
    Proto(u8),
    /// a port
    Port(u16),
    /// a numgen index
    Index(u32),
    /// a network (an interval of addresses)
    Net(IpNet),
}

/// A named set or map declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDecl {
    /// name
    pub name: String,
    /// key components
    pub key: Vec<KeyType>,
    /// value components; empty for a plain set
    pub data: Vec<KeyType>,
    /// a comment describing what the set holds
    pub comment: &'static str,
    /// a dynamic set whose elements expire after this many seconds (session affinity)
    pub timeout: Option<u32>,
    /// every element carries its own counter (`counter` in the declaration), which each
    /// lookup that finds the element increments (`--service-counters`)
    pub counter: bool,
}

impl SetDecl {
    /// Whether this is a map (has values).
    pub fn is_map(&self) -> bool {
        !self.data.is_empty()
    }

    /// Whether this is an interval set (a key component is a network).
    pub fn is_interval(&self) -> bool {
        self.key.contains(&KeyType::Net)
    }
}

/// A sequence of values (an element's key, or a map element's value), packed into
/// bytes.
///
/// At 30,000 Services the table holds ~700k elements; as a heap slice of [`Value`]s
/// (20 bytes each) every key and map value was an allocation of 56–96 bytes, the
/// largest part of the daemon's memory. Packed, an IPv4 key (up to 22 bytes: a tag
/// byte and the value's bytes per component) lives inside the 24-byte `Values`; only
/// IPv6 keys longer than that take a shared allocation.
///
/// Each component is a tag byte and a tag-determined number of big-endian bytes, so the
/// encoding is prefix-free and comparing bytes orders sequences as comparing their
/// values does (element maps stay in the order `nft list` prints).
#[derive(Clone)]
pub struct Values(Packed);

#[derive(Clone)]
enum Packed {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Arc<[u8]>),
}

const INLINE: usize = 22;

/// The most components a key or value has (frontend . index, frontend . range).
pub const MAX_VALUES: usize = 6;

const _: () = assert!(std::mem::size_of::<Values>() == 24);

mod tag {
    pub const ADDR4: u8 = 0;
    pub const ADDR6: u8 = 1;
    pub const PROTO: u8 = 2;
    pub const PORT: u8 = 3;
    pub const INDEX: u8 = 4;
    pub const NET4: u8 = 5;
    pub const NET6: u8 = 6;
}

fn pack_one(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Addr(IpAddr::V4(a)) => {
            out.push(tag::ADDR4);
            out.extend_from_slice(&a.octets());
        }
        Value::Addr(IpAddr::V6(a)) => {
            out.push(tag::ADDR6);
            out.extend_from_slice(&a.octets());
        }
        Value::Proto(p) => out.extend_from_slice(&[tag::PROTO, *p]),
        Value::Port(p) => {
            out.push(tag::PORT);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Value::Index(i) => {
            out.push(tag::INDEX);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Net(IpNet::V4(n)) => {
            out.push(tag::NET4);
            out.extend_from_slice(&n.addr().octets());
            out.push(n.prefix_len());
        }
        Value::Net(IpNet::V6(n)) => {
            out.push(tag::NET6);
            out.extend_from_slice(&n.addr().octets());
            out.push(n.prefix_len());
        }
    }
}

/// The first value packed in `b` and the bytes after it (`None` past the end; bytes
/// this module did not write cannot occur).
fn unpack_one(b: &[u8]) -> Option<(Value, &[u8])> {
    fn take<const N: usize>(b: &[u8]) -> Option<([u8; N], &[u8])> {
        let head: [u8; N] = b.get(..N)?.try_into().ok()?;
        Some((head, &b[N..]))
    }
    let (&t, rest) = b.split_first()?;
    Some(match t {
        tag::ADDR4 => {
            let (a, r) = take::<4>(rest)?;
            (Value::Addr(IpAddr::from(a)), r)
        }
        tag::ADDR6 => {
            let (a, r) = take::<16>(rest)?;
            (Value::Addr(IpAddr::from(a)), r)
        }
        tag::PROTO => {
            let (p, r) = take::<1>(rest)?;
            (Value::Proto(p[0]), r)
        }
        tag::PORT => {
            let (p, r) = take::<2>(rest)?;
            (Value::Port(u16::from_be_bytes(p)), r)
        }
        tag::INDEX => {
            let (i, r) = take::<4>(rest)?;
            (Value::Index(u32::from_be_bytes(i)), r)
        }
        tag::NET4 => {
            let (a, r) = take::<4>(rest)?;
            let (p, r) = take::<1>(r)?;
            let n = ipnet::Ipv4Net::new(a.into(), p[0]).ok()?;
            (Value::Net(IpNet::V4(n)), r)
        }
        tag::NET6 => {
            let (a, r) = take::<16>(rest)?;
            let (p, r) = take::<1>(r)?;
            let n = ipnet::Ipv6Net::new(a.into(), p[0]).ok()?;
            (Value::Net(IpNet::V6(n)), r)
        }
        _ => return None,
    })
}

/// The values of a [`Values`], unpacked on the stack.
#[derive(Clone, Copy)]
pub struct Unpacked {
    n: usize,
    v: [Value; MAX_VALUES],
}

impl std::ops::Deref for Unpacked {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        &self.v[..self.n]
    }
}

impl Values {
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Packed::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Packed::Heap(b) => b,
        }
    }

    fn from_bytes(b: &[u8]) -> Values {
        Values(match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..b.len()].copy_from_slice(b);
                Packed::Inline { len, bytes }
            }
            _ => Packed::Heap(Arc::from(b)),
        })
    }

    /// The values, in order.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        let mut rest = self.bytes();
        std::iter::from_fn(move || {
            let (v, r) = unpack_one(rest)?;
            rest = r;
            Some(v)
        })
    }

    /// The values on the stack, to index and match as a slice.
    pub fn unpack(&self) -> Unpacked {
        let mut u = Unpacked {
            n: 0,
            v: [Value::Proto(0); MAX_VALUES],
        };
        for (slot, v) in u.v.iter_mut().zip(self.iter()) {
            *slot = v;
            u.n += 1;
        }
        u
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The first value.
    pub fn first(&self) -> Option<Value> {
        self.iter().next()
    }

    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<Value> {
        self.iter().nth(i)
    }

    /// The last value.
    pub fn last(&self) -> Option<Value> {
        self.iter().last()
    }

    /// The values without the last one (an endpoint map key's frontend).
    pub fn without_last(&self) -> Values {
        let u = self.unpack();
        Values::from(&u[..u.len().saturating_sub(1)])
    }

    /// Whether the values begin with those of `prefix`.
    pub fn starts_with(&self, prefix: &Values) -> bool {
        self.bytes().starts_with(prefix.bytes())
    }

    /// The values, as a vector.
    pub fn to_vec(&self) -> Vec<Value> {
        self.iter().collect()
    }

    /// The values, with `v` appended.
    pub fn with(&self, v: Value) -> Values {
        let mut b = self.bytes().to_vec();
        pack_one(&v, &mut b);
        Values::from_bytes(&b)
    }
}

impl Default for Values {
    fn default() -> Values {
        Values(Packed::Inline {
            len: 0,
            bytes: [0; INLINE],
        })
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Values {}

impl PartialOrd for Values {
    fn partial_cmp(&self, other: &Values) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Values {
    fn cmp(&self, other: &Values) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl std::hash::Hash for Values {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.bytes().hash(h)
    }
}

impl From<&[Value]> for Values {
    fn from(v: &[Value]) -> Values {
        let mut b = Vec::with_capacity(INLINE);
        for x in v {
            pack_one(x, &mut b);
        }
        Values::from_bytes(&b)
    }
}

impl From<Vec<Value>> for Values {
    fn from(v: Vec<Value>) -> Values {
        Values::from(&v[..])
    }
}

impl FromIterator<Value> for Values {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Values {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl PartialEq<Vec<Value>> for Values {
    fn eq(&self, other: &Vec<Value>) -> bool {
        self.iter().eq(other.iter().copied())
    }
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The key of an element.
pub type Key = Values;

/// An element's value and comment.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ElementData {
    /// map value; empty for a plain set
    pub data: Values,
    /// operator-facing comment (`namespace/name:port`), shared by every element of the
    /// service port
    pub comment: Option<Arc<str>>,
}

/// A set's elements by key.
pub type ElementMap = BTreeMap<Key, ElementData>;

/// A set and its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// declaration
    pub decl: SetDecl,
    /// elements by key, shared: a full load's operations and the copy of the ruleset
    /// the proxier keeps refer to these maps instead of copying ~700k elements at 30k
    /// Services; a change copies a map only while something else still refers to it
    /// (`Arc::make_mut`), which after a commit nothing does
    pub elements: Arc<ElementMap>,
}

/// One family's table. Sets and chains keep their order: it is the creation order, and
/// `nft list` prints objects in creation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// family
    pub family: Family,
    /// sets and maps, in creation order
    pub sets: Vec<Set>,
    /// chains, in creation order (jump targets before the chains that jump to them)
    pub chains: Vec<Chain>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family) -> Self {
        Table {
            family,
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// Looks a set up by name.
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.decl.name == name)
    }

    /// Looks a chain up by name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The table's chains and set declarations without any element.
    pub fn clone_structure(&self) -> Table {
        Table {
            family: self.family,
            sets: self
                .sets
                .iter()
                .map(|s| Set {
                    decl: s.decl.clone(),
                    elements: Default::default(),
                })
                .collect(),
            chains: self.chains.clone(),
        }
    }

    /// Number of elements over all sets.
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum()
    }
}

/// The whole desired state: one table per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// IPv4 then IPv6
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table of one family.
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

/// Size in bytes of one key component inside a concatenation (padded to 4 bytes, as
/// the kernel's registers are 32 bits wide).
pub fn padded_len(t: KeyType, family: Family) -> u32 {
    match t {
        KeyType::Addr | KeyType::Net => family.addr_len(),
        KeyType::Proto | KeyType::Port | KeyType::Index => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::Rng;

    fn random_value(rng: &mut Rng) -> Value {
        let byte = |rng: &mut Rng| (rng.next_u64() % 4) as u8;
        match rng.below(7) {
            0 => Value::Addr(IpAddr::from([10, byte(rng), byte(rng), byte(rng)])),
            1 => Value::Addr(IpAddr::from([
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                u16::from(byte(rng)),
            ])),
            2 => Value::Proto(byte(rng)),
            3 => Value::Port(u16::from(byte(rng)) * 300),
            4 => Value::Index(u32::from(byte(rng)) << 20),
            5 => {
                Value::Net(IpNet::new(IpAddr::from([10, byte(rng), 0, 0]), 8 + byte(rng)).unwrap())
            }
            _ => Value::Net(
                IpNet::new(
                    IpAddr::from([0xfd00, u16::from(byte(rng)), 0, 0, 0, 0, 0, 0]),
                    32,
                )
                .unwrap(),
            ),
        }
    }

    /// Packed values give back what went in, and order, compare and prefix-match as the
    /// sequences of values do (element maps print in value order).
    #[test]
    fn packed_values_keep_the_values_and_their_order() {
        let mut rng = Rng::new(11);
        let mut seqs: Vec<Vec<Value>> = (0..400)
            .map(|_| {
                let n = rng.below(MAX_VALUES + 1);
                (0..n).map(|_| random_value(&mut rng)).collect()
            })
            .collect();
        seqs.push(Vec::new());
        for a in &seqs {
            let pa = Values::from(a.clone());
            assert_eq!(pa.to_vec(), *a);
            assert_eq!(&pa.unpack()[..], &a[..]);
            assert_eq!(pa.len(), a.len());
            assert_eq!(pa.first(), a.first().copied());
            assert_eq!(pa.last(), a.last().copied());
            assert_eq!(pa.without_last().to_vec(), a[..a.len().saturating_sub(1)]);
            for b in &seqs {
                let pb = Values::from(b.clone());
                assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(pa == pb, a == b);
                assert_eq!(pa.starts_with(&pb), a.starts_with(b), "{a:?} vs {b:?}");
            }
            if let Some(v) = a.first() {
                let mut longer = a.clone();
                longer.push(*v);
                assert_eq!(pa.with(*v).to_vec(), longer);
            }
        }
    }

    /// An IPv4 endpoint-map key and value live inside the `Values`; an IPv6 key with a
    /// range does not fit and is shared on the heap.
    #[test]
    fn ipv4_keys_are_inline() {
        let v4 = Values::from(vec![
            Value::Addr(IpAddr::from([10, 96, 0, 1])),
            Value::Proto(6),
            Value::Port(80),
            Value::Net("10.0.0.0/8".parse().unwrap()),
        ]);
        assert!(matches!(v4.0, Packed::Inline { .. }));
        let v6 = Values::from(vec![
            Value::Addr("fd00::1".parse().unwrap()),
            Value::Proto(6),
            Value::Port(80),
            Value::Net("fd00::/64".parse().unwrap()),
        ]);
        assert!(matches!(v6.0, Packed::Heap(_)));
        assert_eq!(v6.len(), 4);
    }
}
