//! Renders the IR as nft text that `nft -f` (1.0.6) loads.

use std::fmt::Write;

use super::ir::*;

fn field(f: Field, family: Family) -> String {
    match f {
        Field::Saddr => format!("{} saddr", family.nft()),
        Field::Daddr => format!("{} daddr", family.nft()),
        Field::L4Proto => "meta l4proto".into(),
        Field::ThDport => "th dport".into(),
        Field::Numgen(n) => format!("numgen random mod {n}"),
        Field::Tag(t) => format!("numgen random mod 1 offset {t}"),
    }
}

fn fields(fs: &[Field], family: Family) -> String {
    fs.iter()
        .map(|f| field(*f, family))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn key_type(t: KeyType, family: Family) -> &'static str {
    match (t, family) {
        (KeyType::Addr | KeyType::Net, Family::V4) => "ipv4_addr",
        (KeyType::Addr | KeyType::Net, Family::V6) => "ipv6_addr",
        (KeyType::Proto, _) => "inet_proto",
        (KeyType::Port, _) => "inet_service",
        (KeyType::Index, _) => "integer",
    }
}

/// The expression nft uses to describe a key component in a `typeof` declaration.
fn typeof_expr(t: KeyType, family: Family, role_daddr: bool) -> String {
    match t {
        KeyType::Addr if role_daddr => format!("{} daddr", family.nft()),
        KeyType::Addr | KeyType::Net => format!("{} saddr", family.nft()),
        KeyType::Proto => "meta l4proto".into(),
        KeyType::Port => "th dport".into(),
        KeyType::Index => "numgen random mod 1".into(),
    }
}

/// Whether a set must be declared with `typeof` (it has a numgen component, which has
/// no named type).
pub fn uses_typeof(decl: &SetDecl) -> bool {
    decl.key.contains(&KeyType::Index)
}

/// The `type`/`typeof` line of a set declaration.
pub fn type_line(decl: &SetDecl, family: Family) -> String {
    if uses_typeof(decl) {
        // A dynamic set records clients (`ip saddr . …`); the other typeof sets are
        // keyed by frontends (`ip daddr . …`).
        let daddr = decl.timeout.is_none();
        let k = decl
            .key
            .iter()
            .map(|t| typeof_expr(*t, family, daddr))
            .collect::<Vec<_>>()
            .join(" . ");
        let d = decl
            .data
            .iter()
            .map(|t| typeof_expr(*t, family, true))
            .collect::<Vec<_>>()
            .join(" . ");
        if d.is_empty() {
            format!("typeof {k}")
        } else {
            format!("typeof {k} : {d}")
        }
    } else {
        let k = decl
            .key
            .iter()
            .map(|t| key_type(*t, family))
            .collect::<Vec<_>>()
            .join(" . ");
        let d = decl
            .data
            .iter()
            .map(|t| key_type(*t, family))
            .collect::<Vec<_>>()
            .join(" . ");
        if d.is_empty() {
            format!("type {k}")
        } else {
            format!("type {k} : {d}")
        }
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// Capacity of a dynamic (affinity) set: the kernel's default for a set that
/// `update @set` binds without a declared size (`nft_dynset_init`), which `nft list`
/// shows as `size 65535`. Neither path declares it: a declared size is also the hash
/// table's initial size hint, so `size 65535` costs 2 MiB of kernel memory per set up
/// front, while an undeclared one starts at a few hundred bytes and grows with the
/// clients it records. So each endpoint of a ClientIP Service records at most this
/// many clients at once (per family). On a full set `update` fails and its rule does
/// not match: a new client whose pick finds its endpoint's set full goes on to the
/// next endpoints' rules; the affinity chain ends with rules that balance without
/// `update`, so such a client is still balanced (not sticky), never dropped
/// (`tests/affinity_kernel.rs`, `full_affinity_set_still_balances`).
pub const AFFINITY_SET_SIZE: u32 = 65535;

/// Renders one value.
pub fn value(v: &Value) -> String {
    match v {
        Value::Addr(a) => a.to_string(),
        Value::Proto(p) => proto_name(*p),
        Value::Port(p) => p.to_string(),
        Value::Index(i) => i.to_string(),
        Value::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
        Value::Net(n) => n.to_string(),
    }
}

/// Renders a key or value tuple.
pub fn tuple(vs: &[Value]) -> String {
    vs.iter().map(value).collect::<Vec<_>>().join(" . ")
}

/// Renders one element as it appears inside `{ ... }`.
pub fn element(key: &Key, e: &ElementData) -> String {
    let mut s = tuple(&key.unpack());
    if !e.data.is_empty() {
        s.push_str(" : ");
        s.push_str(&tuple(&e.data.unpack()));
    }
    if let Some(c) = &e.comment {
        let _ = write!(s, " comment \"{}\"", c.replace('"', "'"));
    }
    s
}

/// Renders one statement.
pub fn stmt(s: &Stmt, family: Family) -> String {
    match s {
        Stmt::CtStateNew => "ct state new".into(),
        Stmt::CtStatusDnat => "ct status dnat".into(),
        Stmt::Cidr {
            field: f,
            net,
            negate,
        } => {
            let op = if *negate { "!= " } else { "" };
            let net = if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            };
            format!("{} {op}{net}", field(*f, family))
        }
        Stmt::Iifname { name, prefix } => {
            format!("iifname \"{name}{}\"", if *prefix { "*" } else { "" })
        }
        Stmt::Lookup {
            fields: fs,
            set,
            negate,
        }
        | Stmt::LookupRange {
            fields: fs,
            set,
            negate,
        } => {
            let op = if *negate { "!= " } else { "" };
            format!("{} {op}@{set}", fields(fs, family))
        }
        Stmt::FibLocal { saddr, negate } => format!(
            "fib {} type {}local",
            if *saddr { "saddr" } else { "daddr" },
            if *negate { "!= " } else { "" }
        ),
        Stmt::MarkClear(m) => format!("meta mark & {m:#010x} == 0x00000000"),
        Stmt::MarkSetOr(m) => format!("meta mark set meta mark | {m:#010x}"),
        Stmt::MarkSetXor(m) => format!("meta mark set meta mark ^ {m:#010x}"),
        Stmt::DnatMap { fields: fs, map } => {
            format!("dnat {} to {} map @{map}", family.nft(), fields(fs, family))
        }
        Stmt::L4Proto(p) => format!("meta l4proto {}", proto_name(*p)),
        Stmt::Dport(p) => format!("th dport {p}"),
        Stmt::NumgenEq { modulus, value } => format!("numgen random mod {modulus} {value}"),
        Stmt::Update { fields: fs, set } => {
            format!("update @{set} {{ {} }}", fields(fs, family))
        }
        Stmt::Dnat(std::net::IpAddr::V6(a), p) => format!("dnat ip6 to [{a}]:{p}"),
        Stmt::Dnat(a, p) => format!("dnat {} to {a}:{p}", family.nft()),
        Stmt::Masquerade => "masquerade fully-random".into(),
        Stmt::Reject => "reject".into(),
        Stmt::Verdict(v) => verdict(v),
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

/// Renders one rule.
pub fn rule(r: &Rule, family: Family) -> String {
    r.0.iter()
        .filter(|s| !matches!(s, Stmt::Cidr { net, .. } if net.prefix_len() == 0))
        .map(|s| stmt(s, family))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A stable 64-bit digest of a rule (FNV-1a over its nft text). The netlink path stores
/// it in the rule's user data, so a read-back can tell exactly which rules the kernel
/// holds without parsing expressions.
pub fn rule_digest(r: &Rule, family: Family) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule(r, family).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Renders a chain's `type … hook … priority …;` line, if it is a base chain.
pub fn chain_header(c: &Chain) -> Option<String> {
    match c.kind {
        ChainKind::Base {
            kind,
            hook,
            priority,
        } => Some(format!(
            "type {} hook {} priority {priority}; policy accept;",
            kind.nft(),
            hook.nft()
        )),
        ChainKind::Regular => None,
    }
}

/// Renders a whole table as a loadable nft script.
pub fn table(t: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {} {} {{", t.family.nft(), TABLE_NAME);
    for s in &t.sets {
        let kw = if s.decl.is_map() { "map" } else { "set" };
        let _ = writeln!(out, "\t# {}", s.decl.comment);
        let _ = writeln!(out, "\t{kw} {} {{", s.decl.name);
        let _ = writeln!(out, "\t\t{}", type_line(&s.decl, t.family));
        if s.decl.is_interval() {
            let _ = writeln!(out, "\t\tflags interval");
        }
        if let Some(t) = s.decl.timeout {
            let _ = writeln!(out, "\t\tflags dynamic,timeout");
            let _ = writeln!(out, "\t\ttimeout {t}s");
        }
        if s.decl.counter {
            let _ = writeln!(out, "\t\tcounter");
        }
        if !s.elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{");
            for (k, e) in s.elements.iter() {
                let _ = writeln!(out, "\t\t\t{},", element(k, e));
            }
            let _ = writeln!(out, "\t\t}}");
        }
        let _ = writeln!(out, "\t}}");
    }
    for c in &t.chains {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(h) = chain_header(c) {
            let _ = writeln!(out, "\t\t{h}");
        }
        for r in &c.rules {
            let _ = writeln!(out, "\t\t{}", rule(r, t.family));
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// Renders the whole ruleset (both tables).
pub fn ruleset(r: &Ruleset) -> String {
    r.tables.iter().map(table).collect::<Vec<_>>().join("\n")
}

/// Renders one operation as an nft command (a transaction renders as an `nft -f` script:
/// for logs, and for measuring nft on the same change).
pub fn op(op: &super::diff::Op) -> String {
    use super::diff::Op;
    let t = |f: Family| format!("{} {TABLE_NAME}", f.nft());
    let kw = |d: &SetDecl| if d.is_map() { "map" } else { "set" };
    match op {
        Op::AddTable(f) => format!("add table {}", t(*f)),
        Op::DelTable(f) => format!("delete table {}", t(*f)),
        Op::DelForeignTable(f, n) => format!("delete table {} {n}", f.nft()),
        Op::FlushChain(f, c) => format!("flush chain {} {c}", t(*f)),
        Op::DelChain(f, c) => format!("delete chain {} {c}", t(*f)),
        Op::DelSet(f, s) => format!("delete set {} {s}", t(*f)),
        Op::AddSet(f, d) => {
            let flags = match d.timeout {
                Some(t) => {
                    format!(" flags dynamic,timeout; timeout {t}s;")
                }
                None if d.is_interval() => " flags interval;".to_string(),
                None => String::new(),
            };
            let counter = if d.counter { " counter;" } else { "" };
            format!(
                "add {} {} {} {{ {};{flags}{counter} }}",
                kw(d),
                t(*f),
                d.name,
                type_line(d, *f)
            )
        }
        Op::AddChain(f, c) => match chain_header(c) {
            Some(h) => format!("add chain {} {} {{ {h} }}", t(*f), c.name),
            None => format!("add chain {} {}", t(*f), c.name),
        },
        Op::DelElements(f, d, keys) => format!(
            "delete element {} {} {{ {} }}",
            t(*f),
            d.name,
            keys.iter()
                .map(|k| tuple(&k.unpack()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Op::AddElements(f, d, els) => format!(
            "add element {} {} {{ {} }}",
            t(*f),
            d.name,
            els.iter()
                .map(|(k, e)| element(k, e))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Op::AddRule(f, c, r) => format!("add rule {} {c} {}", t(*f), rule(r, *f)),
    }
}

/// Renders a transaction as an `nft -f` script.
pub fn script(ops: &[super::diff::Op]) -> String {
    let mut s = String::new();
    for o in ops {
        s.push_str(&op(o));
        s.push('\n');
    }
    s
}
