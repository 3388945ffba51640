//! An in-memory nftables that refuses what the kernel refuses, with the kernel's errnos.
//!
//! The property tests apply every transaction the diff and the incremental builder
//! generate to this fake, in order, so that "is this increment acceptable to the kernel"
//! is asked on every step, without root. Like knftables' `Fake`, a transaction is applied
//! to a copy which replaces the state only when every operation succeeded (the kernel's
//! transactions are atomic). The rules modelled are the referential ones our operations
//! can break (see `nf_tables_api.c`):
//!
//! * a rule, element or flush that names a missing table, chain or set: `ENOENT`;
//! * deleting a set that a rule still refers to, or a chain that still has rules or is
//!   the target of a jump or goto: `EBUSY`;
//! * creating a set or chain that exists with another declaration: `EEXIST`;
//! * adding an element that exists with another value, or an interval that overlaps
//!   another one of the same set (same exact components): `EEXIST`;
//! * deleting an element that is not there: `ENOENT`;
//! * a key or lookup whose shape does not fit the set, a `dnat … map` on a plain set,
//!   an `update @set` on a set without timeouts, a jump to a base chain: `EINVAL` or
//!   `EOPNOTSUPP`.
//!
//! Name lengths (`ERANGE`) and comment lengths are checked too, with the kernel's bounds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::diff::Op;
use super::ir::*;

/// NFT_NAME_MAXLEN: table, chain and set names are at most 255 bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A transaction the fake refused: which operation, with which errno, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// index of the refused operation in the transaction
    pub index: usize,
    /// the errno the kernel would answer
    pub errno: i32,
    /// what was wrong
    pub why: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operation {} refused ({}): {}",
            self.index,
            errno_name(self.errno),
            self.why
        )
    }
}

impl std::error::Error for Refused {}

/// The symbolic name of the errnos the fake answers with.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ERANGE => "ERANGE",
        _ => "E?",
    }
}

/// Our two tables as the kernel would hold them.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    tables: BTreeMap<Family, Table>,
}

fn refuse(errno: i32, why: String) -> Result<(), (i32, String)> {
    Err((errno, why))
}

/// A set or chain a rule refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference<'a> {
    /// a set or map, and how the rule uses it
    Set(&'a str, SetUse<'a>),
    /// a jump or goto target
    Chain(&'a str),
}

/// How a statement uses a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetUse<'a> {
    /// a lookup with this key
    Lookup(&'a [Field]),
    /// an interval lookup with this key
    LookupRange(&'a [Field]),
    /// `dnat … map @set` with this key
    Map(&'a [Field]),
    /// `update @set { … }` with this key
    Update(&'a [Field]),
}

/// Every set and chain a rule refers to, in order.
pub fn references(rule: &Rule) -> Vec<Reference<'_>> {
    rule.0
        .iter()
        .filter_map(|s| match s {
            Stmt::Lookup { fields, set, .. } => Some(Reference::Set(set, SetUse::Lookup(fields))),
            Stmt::LookupRange { fields, set, .. } => {
                Some(Reference::Set(set, SetUse::LookupRange(fields)))
            }
            Stmt::DnatMap { fields, map } => Some(Reference::Set(map, SetUse::Map(fields))),
            Stmt::Update { fields, set } => Some(Reference::Set(set, SetUse::Update(fields))),
            Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => Some(Reference::Chain(c)),
            _ => None,
        })
        .collect()
}

/// Whether a key component fits a key type.
fn value_fits(v: &Value, t: KeyType, family: Family) -> bool {
    match (v, t) {
        (Value::Addr(a), KeyType::Addr) => Family::of(a) == family,
        (Value::Net(n), KeyType::Net) => Family::of_net(n) == family,
        (Value::Proto(_), KeyType::Proto)
        | (Value::Port(_), KeyType::Port)
        | (Value::Index(_), KeyType::Index) => true,
        _ => false,
    }
}

fn field_fits(f: &Field, t: KeyType) -> bool {
    matches!(
        (f, t),
        (Field::Saddr | Field::Daddr, KeyType::Addr)
            | (Field::Saddr | Field::Daddr, KeyType::Net)
            | (Field::L4Proto, KeyType::Proto)
            | (Field::ThDport, KeyType::Port)
            | (Field::Numgen(_) | Field::Tag(_), KeyType::Index)
    )
}

/// The address interval of an element component (an address is a one-address interval).
fn interval(v: &Value) -> Option<(IpAddr, IpAddr)> {
    match v {
        Value::Net(n) => Some((n.network(), n.broadcast())),
        Value::Addr(a) => Some((*a, *a)),
        _ => None,
    }
}

fn overlaps(a: &Key, b: &Key) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| match (interval(&x), interval(&y)) {
                (Some((xs, xe)), Some((ys, ye))) if matches!(x, Value::Net(_)) => {
                    xs <= ye && ys <= xe
                }
                _ => x == y,
            })
}

fn rule_refers_to_set(t: &Table, set: &str) -> Option<String> {
    t.chains.iter().find_map(|c| {
        c.rules
            .iter()
            .any(|r| {
                references(r)
                    .iter()
                    .any(|x| matches!(x, Reference::Set(s, _) if *s == set))
            })
            .then(|| c.name.clone())
    })
}

fn rule_refers_to_chain(t: &Table, chain: &str) -> Option<String> {
    t.chains.iter().find_map(|c| {
        c.rules
            .iter()
            .any(|r| references(r).contains(&Reference::Chain(chain)))
            .then(|| c.name.clone())
    })
}

fn check_name(kind: &str, name: &str) -> Result<(), (i32, String)> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return refuse(
            libc::ERANGE,
            format!("{kind} name of {} bytes: {name:.40}…", name.len()),
        );
    }
    Ok(())
}

fn check_rule(t: &Table, chain: &str, rule: &Rule) -> Result<(), (i32, String)> {
    for r in references(rule) {
        match r {
            Reference::Chain(c) => match t.chain(c) {
                None => {
                    return refuse(
                        libc::ENOENT,
                        format!("rule in {chain} jumps to missing chain {c}"),
                    )
                }
                Some(target) if matches!(target.kind, ChainKind::Base { .. }) => {
                    return refuse(
                        libc::EOPNOTSUPP,
                        format!("rule in {chain} jumps to base chain {c}"),
                    )
                }
                Some(_) => {}
            },
            Reference::Set(s, how) => {
                let Some(set) = t.set(s) else {
                    return refuse(
                        libc::ENOENT,
                        format!("rule in {chain} refers to missing set {s}"),
                    );
                };
                let d = &set.decl;
                let fields = match how {
                    SetUse::Lookup(f) => f,
                    SetUse::LookupRange(f) => {
                        if !d.is_interval() {
                            return refuse(
                                libc::EINVAL,
                                format!("interval lookup on {s}, not an interval set"),
                            );
                        }
                        f
                    }
                    SetUse::Map(f) => {
                        if !d.is_map() {
                            return refuse(
                                libc::EOPNOTSUPP,
                                format!("map lookup on plain set {s}"),
                            );
                        }
                        f
                    }
                    SetUse::Update(f) => {
                        if d.timeout.is_none() {
                            return refuse(
                                libc::EOPNOTSUPP,
                                format!("update of {s}, a set without timeouts"),
                            );
                        }
                        f
                    }
                };
                if fields.len() != d.key.len()
                    || !fields.iter().zip(&d.key).all(|(f, k)| field_fits(f, *k))
                {
                    return refuse(
                        libc::EINVAL,
                        format!("key of rule in {chain} does not fit set {s}"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn apply_op(tables: &mut BTreeMap<Family, Table>, op: &Op) -> Result<(), (i32, String)> {
    let family = match op {
        Op::AddTable(f)
        | Op::DelTable(f)
        | Op::DelForeignTable(f, _)
        | Op::FlushChain(f, _)
        | Op::DelChain(f, _)
        | Op::DelSet(f, _)
        | Op::AddSet(f, _)
        | Op::AddChain(f, _)
        | Op::DelElements(f, _, _)
        | Op::AddElements(f, _, _)
        | Op::AddRule(f, _, _) => *f,
    };
    if let Op::AddTable(f) = op {
        tables.entry(*f).or_insert_with(|| Table::new(*f));
        return Ok(());
    }
    if let Op::DelForeignTable(..) = op {
        // Another program's table: not modelled (it may or may not exist).
        return Ok(());
    }
    let Some(t) = tables.get_mut(&family) else {
        return refuse(
            libc::ENOENT,
            format!("no table {} {TABLE_NAME}", family.nft()),
        );
    };
    match op {
        Op::AddTable(_) | Op::DelForeignTable(..) => {}
        Op::DelTable(f) => {
            tables.remove(f);
        }
        Op::AddSet(_, d) => {
            check_name("set", &d.name)?;
            if d.key.is_empty() {
                return refuse(libc::EINVAL, format!("set {} without a key", d.name));
            }
            match t.set(&d.name) {
                Some(s) if s.decl != *d => {
                    return refuse(
                        libc::EEXIST,
                        format!("set {} exists with another declaration", d.name),
                    )
                }
                Some(_) => {}
                None => t.sets.push(Set {
                    decl: d.clone(),
                    elements: Default::default(),
                }),
            }
        }
        Op::DelSet(_, name) => {
            if t.set(name).is_none() {
                return refuse(libc::ENOENT, format!("delete of missing set {name}"));
            }
            if let Some(c) = rule_refers_to_set(t, name) {
                return refuse(
                    libc::EBUSY,
                    format!("delete of set {name}, used by a rule in {c}"),
                );
            }
            t.sets.retain(|s| &s.decl.name != name);
        }
        Op::AddChain(_, c) => {
            check_name("chain", &c.name)?;
            match t.chain(&c.name) {
                Some(o) if o.kind != c.kind => {
                    return refuse(
                        libc::EEXIST,
                        format!("chain {} exists with another hook", c.name),
                    )
                }
                Some(_) => {}
                None => t.chains.push(Chain {
                    name: c.name.clone(),
                    kind: c.kind,
                    rules: Vec::new(),
                }),
            }
            // The kernel takes the rules of a chain only from NEWRULE messages.
            for r in &c.rules {
                check_rule(t, &c.name, r)?;
            }
            if let Some(ch) = t.chains.iter_mut().find(|x| x.name == c.name) {
                ch.rules.extend(c.rules.iter().cloned());
            }
        }
        Op::DelChain(_, name) => {
            let Some(c) = t.chain(name) else {
                return refuse(libc::ENOENT, format!("delete of missing chain {name}"));
            };
            if !c.rules.is_empty() {
                return refuse(
                    libc::EBUSY,
                    format!("delete of chain {name}, which has rules"),
                );
            }
            if let Some(from) = rule_refers_to_chain(t, name) {
                return refuse(
                    libc::EBUSY,
                    format!("delete of chain {name}, target of a rule in {from}"),
                );
            }
            t.chains.retain(|c| &c.name != name);
        }
        Op::FlushChain(_, name) => match t.chains.iter_mut().find(|c| &c.name == name) {
            Some(c) => c.rules.clear(),
            None => return refuse(libc::ENOENT, format!("flush of missing chain {name}")),
        },
        Op::AddRule(_, chain, rule) => {
            if t.chain(chain).is_none() {
                return refuse(libc::ENOENT, format!("rule for missing chain {chain}"));
            }
            check_rule(t, chain, rule)?;
            if let Some(c) = t.chains.iter_mut().find(|c| &c.name == chain) {
                c.rules.push(rule.clone());
            }
        }
        Op::AddElements(_, d, items) => {
            let Some(set) = t.sets.iter_mut().find(|s| s.decl.name == d.name) else {
                return refuse(libc::ENOENT, format!("elements for missing set {}", d.name));
            };
            let decl = set.decl.clone();
            for (k, e) in items.iter() {
                let fits = k.len() == decl.key.len()
                    && k.iter()
                        .zip(&decl.key)
                        .all(|(v, t)| value_fits(&v, *t, family))
                    && e.data.len() == decl.data.len()
                    && e.data
                        .iter()
                        .zip(&decl.data)
                        .all(|(v, t)| value_fits(&v, *t, family));
                if !fits {
                    return refuse(
                        libc::EINVAL,
                        format!("element {k:?} does not fit set {}", d.name),
                    );
                }
                if e.comment.as_ref().is_some_and(|c| c.len() > 127) {
                    return refuse(
                        libc::EINVAL,
                        format!("element comment over 127 bytes in {}", d.name),
                    );
                }
                match set.elements.get(k) {
                    Some(old) if old.data != e.data => {
                        return refuse(
                            libc::EEXIST,
                            format!("element {k:?} of {} exists with another value", d.name),
                        )
                    }
                    Some(_) => {}
                    None => {
                        if decl.is_interval() {
                            if let Some((other, _)) =
                                set.elements.iter().find(|(o, _)| overlaps(o, k))
                            {
                                return refuse(
                                    libc::EEXIST,
                                    format!("interval {k:?} of {} overlaps {other:?}", d.name),
                                );
                            }
                        }
                    }
                }
                std::sync::Arc::make_mut(&mut set.elements).insert(k.clone(), e.clone());
            }
        }
        Op::DelElements(_, d, keys) => {
            let Some(set) = t.sets.iter_mut().find(|s| s.decl.name == d.name) else {
                return refuse(libc::ENOENT, format!("delete from missing set {}", d.name));
            };
            for k in keys {
                if std::sync::Arc::make_mut(&mut set.elements)
                    .remove(k)
                    .is_none()
                {
                    return refuse(
                        libc::ENOENT,
                        format!("delete of missing element {k:?} from {}", d.name),
                    );
                }
            }
        }
    }
    Ok(())
}

impl FakeKernel {
    /// A kernel without our tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Our table of one family, if it exists.
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.get(&family)
    }

    /// Applies one transaction: all of it, or (refused) nothing.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), Refused> {
        let mut next = self.tables.clone();
        for (index, op) in ops.iter().enumerate() {
            apply_op(&mut next, op).map_err(|(errno, why)| Refused { index, errno, why })?;
        }
        self.tables = next;
        Ok(())
    }
}

/// The source of a new connection, as the nat rules test it.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// its address
    pub addr: IpAddr,
    /// whether `fib saddr type local` holds (the node itself)
    pub local: bool,
}

/// Where the new connections to one frontend go, by probability (see [`nat_walk`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Walk {
    /// DNAT through `map` at `index` (to the element's value then)
    pub picks: BTreeMap<(String, u32, Vec<Value>), f64>,
    /// left the `services` chain without DNAT
    pub missed: f64,
    /// sent to the session-affinity dispatch (not modelled further)
    pub affinity: f64,
    /// set lookups on the way (with the cut of [`nat_walk`]: how many a cut can split)
    pub lookups: usize,
    /// lookups that found the frontend in a set with counters (each increments the
    /// element's counter), weighted by probability
    pub counted: f64,
}

impl Walk {
    /// The probability of DNAT.
    pub fn dnat(&self) -> f64 {
        self.picks.values().sum()
    }
}

/// A step of [`nat_walk`] that the model does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmodelled(pub String);

/// How the kernel's nat hook treats the first packet of a connection from `src` to
/// `frontend` (`address . protocol . port`): walks the `services` chain of `rules`,
/// reading set `s` through `sets(i, s)` at the `i`-th set lookup of the walk. So with
/// `sets` answering from the table before a commit for `i < cut` and after it for the
/// rest, this is a packet that met the commit's generation flip between two lookups
/// (the kernel flips every set at one instant, before it swaps rule blobs, so the
/// rules are the old ones). `numgen random mod N` is enumerated: the result is exact,
/// up to floating point.
pub fn nat_walk<'a>(
    rules: &Table,
    sets: &dyn Fn(usize, &str) -> Option<&'a Set>,
    frontend: &Key,
    src: Source,
) -> Result<Walk, Unmodelled> {
    let mut w = Walk::default();
    let rest = walk_chain(
        rules,
        sets,
        frontend,
        src,
        crate::ruleset::build::names::SERVICES,
        1.0,
        &mut w,
        0,
    )?;
    w.missed += rest;
    Ok(w)
}

/// Walks one chain with probability `mass`; returns the mass that falls off its end or
/// returns (back to the rule after the jump that called it).
#[allow(clippy::too_many_arguments)]
fn walk_chain<'a>(
    rules: &Table,
    sets: &dyn Fn(usize, &str) -> Option<&'a Set>,
    frontend: &Key,
    src: Source,
    chain: &str,
    mut mass: f64,
    w: &mut Walk,
    depth: usize,
) -> Result<f64, Unmodelled> {
    use crate::ruleset::build::names::AFFINITY_DISPATCH;
    if chain == AFFINITY_DISPATCH {
        w.affinity += mass;
        return Ok(0.0);
    }
    if depth > 16 {
        return Err(Unmodelled(format!(
            "chains nested deeper than 16 at {chain}"
        )));
    }
    let Some(c) = rules.chain(chain) else {
        return Err(Unmodelled(format!("no chain {chain}")));
    };
    let field = |f: &Field| -> Result<Value, Unmodelled> {
        Ok(match (f, &frontend.unpack()[..]) {
            (Field::Daddr, [a, ..]) => *a,
            (Field::L4Proto, [_, p, ..]) => *p,
            (Field::ThDport, [_, _, p, ..]) => *p,
            (Field::Saddr, _) => Value::Addr(src.addr),
            _ => return Err(Unmodelled(format!("field {f:?} in a lookup"))),
        })
    };
    'rules: for r in &c.rules {
        if mass == 0.0 {
            break;
        }
        for s in &r.0 {
            match s {
                Stmt::Lookup {
                    fields,
                    set,
                    negate,
                } => {
                    let key = fields.iter().map(field).collect::<Result<Key, _>>()?;
                    let held = sets(w.lookups, set);
                    let found = held.is_some_and(|s| s.elements.contains_key(&key));
                    w.lookups += 1;
                    // The kernel counts a lookup that finds its element, never a negated
                    // one (`nft_lookup_eval`).
                    if found && !*negate && held.is_some_and(|s| s.decl.counter) {
                        w.counted += mass;
                    }
                    if found == *negate {
                        continue 'rules;
                    }
                }
                Stmt::Cidr {
                    field: f,
                    net,
                    negate,
                } => {
                    let Value::Addr(a) = field(f)? else {
                        return Err(Unmodelled("a CIDR match on a non-address".into()));
                    };
                    if net.contains(&a) == *negate {
                        continue 'rules;
                    }
                }
                // The walk knows a source by address only.
                Stmt::Iifname { .. } => {
                    return Err(Unmodelled("an input interface match".into()));
                }
                Stmt::FibLocal {
                    saddr: true,
                    negate,
                } => {
                    if src.local == *negate {
                        continue 'rules;
                    }
                }
                Stmt::MarkSetOr(_) | Stmt::MarkSetXor(_) => {}
                Stmt::DnatMap { fields, map } => {
                    let (Some(Field::Numgen(m)), Some(front)) =
                        (fields.last(), fields.get(..fields.len() - 1))
                    else {
                        return Err(Unmodelled(format!("dnat map key {fields:?}")));
                    };
                    let key = front.iter().map(field).collect::<Result<Key, _>>()?;
                    let set = sets(w.lookups, map);
                    w.lookups += 1;
                    let at = |i: u32| key.with(Value::Index(i));
                    let mut misses = *m;
                    let hits = set
                        .into_iter()
                        .flat_map(|s| s.elements.range(at(0)..at(*m)));
                    for (k, e) in hits {
                        if let Some(Value::Index(i)) = k.last() {
                            misses -= 1;
                            *w.picks
                                .entry((map.clone(), i, e.data.to_vec()))
                                .or_default() += mass / f64::from(*m);
                        }
                    }
                    // A miss ends the rule (NFT_BREAK); the next one is tried.
                    mass = mass * f64::from(misses) / f64::from(*m);
                    continue 'rules;
                }
                Stmt::Verdict(Verdict::Goto(t)) => {
                    return walk_chain(rules, sets, frontend, src, t, mass, w, depth + 1);
                }
                Stmt::Verdict(Verdict::Jump(t)) => {
                    mass = walk_chain(rules, sets, frontend, src, t, mass, w, depth + 1)?;
                    continue 'rules;
                }
                Stmt::Verdict(Verdict::Return) => return Ok(mass),
                other => return Err(Unmodelled(format!("{other:?} in {chain}"))),
            }
        }
    }
    Ok(mass)
}
