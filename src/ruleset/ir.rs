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

/// A sequence of values (an element's key, or a map element's value), shared by
/// reference.
///
/// The incremental ruleset holds each element key three times: in the table, in the
/// contribution of the service port that made it and in the reference counts of shared
/// elements. At 30,000 Services that is 720k elements; a heap `Vec` per copy made keys
/// the largest part of the daemon's memory. Clones of a `Values` share one allocation,
/// and an empty sequence (a plain set's value) allocates nothing.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Values(Option<Arc<[Value]>>);

impl Values {
    /// The values, with `v` appended (a new allocation).
    pub fn with(&self, v: Value) -> Values {
        let mut all = self.to_vec();
        all.push(v);
        all.into()
    }
}

impl std::ops::Deref for Values {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Vec<Value>> for Values {
    fn from(v: Vec<Value>) -> Values {
        // Empty is always `None`, so that equal sequences compare and order equal.
        Values((!v.is_empty()).then(|| Arc::from(v)))
    }
}

impl From<&[Value]> for Values {
    fn from(v: &[Value]) -> Values {
        Values((!v.is_empty()).then(|| Arc::from(v)))
    }
}

impl FromIterator<Value> for Values {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Values {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl PartialEq<Vec<Value>> for Values {
    fn eq(&self, other: &Vec<Value>) -> bool {
        **self == other[..]
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

/// A set and its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// declaration
    pub decl: SetDecl,
    /// elements by key
    pub elements: BTreeMap<Key, ElementData>,
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
                    elements: BTreeMap::new(),
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
