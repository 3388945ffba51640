//! Diffs what the kernel holds against the desired table into ordered operations.
//!
//! A transaction is atomic and one message that does not fit what the kernel holds
//! (deleting an element that is not there) aborts all of it, so the old side must be
//! exactly what is in the kernel: either the last table we committed, or what we read
//! back. When the rules of the old side are not known (read back), every chain is
//! flushed and refilled in the same transaction; elements are always diffed exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::ir::*;

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// create the table (no-op if it exists)
    AddTable(Family),
    /// remove every rule of a chain
    FlushChain(Family, String),
    /// delete an (empty, unreferenced) chain
    DelChain(Family, String),
    /// delete a set
    DelSet(Family, String),
    /// create a set
    AddSet(Family, SetDecl),
    /// create a chain (rules are added by `AddRule`)
    AddChain(Family, Chain),
    /// delete elements
    DelElements(Family, SetDecl, Vec<Key>),
    /// add elements
    AddElements(Family, SetDecl, Items),
    /// append a rule to a chain
    AddRule(Family, String, Rule),
    /// delete the whole table
    DelTable(Family),
    /// delete another program's table (migration from kube-proxy only)
    DelForeignTable(Family, String),
}

/// The elements of an [`Op::AddElements`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Items {
    /// these elements
    List(Vec<(Key, ElementData)>),
    /// every element of a set of the desired table (a set created with its elements),
    /// shared with the table rather than copied
    All(Arc<ElementMap>),
}

impl Items {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Items::List(v) => v.len(),
            Items::All(m) => m.len(),
        }
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, in order.
    pub fn iter(&self) -> ItemsIter<'_> {
        match self {
            Items::List(v) => ItemsIter::List(v.iter()),
            Items::All(m) => ItemsIter::All(m.iter()),
        }
    }
}

impl From<Vec<(Key, ElementData)>> for Items {
    fn from(v: Vec<(Key, ElementData)>) -> Items {
        Items::List(v)
    }
}

impl FromIterator<(Key, ElementData)> for Items {
    fn from_iter<I: IntoIterator<Item = (Key, ElementData)>>(iter: I) -> Items {
        Items::List(iter.into_iter().collect())
    }
}

/// The iterator of [`Items::iter`].
pub enum ItemsIter<'a> {
    /// over a list
    List(std::slice::Iter<'a, (Key, ElementData)>),
    /// over a set's map
    All(std::collections::btree_map::Iter<'a, Key, ElementData>),
}

impl<'a> Iterator for ItemsIter<'a> {
    type Item = (&'a Key, &'a ElementData);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ItemsIter::List(i) => i.next().map(|(k, e)| (k, e)),
            ItemsIter::All(i) => i.next(),
        }
    }
}

/// What the diff knows about the kernel's copy of one table.
#[derive(Clone, Debug)]
pub struct Known<'a> {
    /// the table as the kernel holds it (sets with their elements, chain names)
    pub table: &'a Table,
    /// whether `table`'s chains hold the kernel's rules; if not, all chains are refilled
    pub rules_known: bool,
}

/// The rules of a chain read back from the kernel that we cannot recognise: a marker
/// that equals no rule we build, so the diff always flushes and refills such a chain
/// (never mistaking it for an empty one, whose rules could still refer to a set or
/// chain the diff deletes). The diff never sends old rules, so the marker never
/// reaches the kernel.
pub fn unknown_rules() -> Vec<Rule> {
    vec![Rule(vec![Stmt::Verdict(Verdict::Jump(
        UNKNOWN_RULES.into(),
    ))])]
}

/// The jump target of [`unknown_rules`]: not a name nft or we would create.
pub const UNKNOWN_RULES: &str = "?unknown rules";

/// A class-set element a diff keeps in the kernel for one more sync although the
/// desired table lacks it (see [`kept_on_shrink`]): family, set, key and its data.
pub type Kept = (Family, String, Key, ElementData);

/// Emits the operations that turn `old` (None: no table in the kernel) into `new`.
pub fn diff(old: Option<Known<'_>>, new: &Table, out: &mut Vec<Op>) {
    diff_keeping(old, new, out, &mut Vec::new())
}

/// Like [`diff`], and says which elements beyond `new` the kernel holds afterwards.
pub fn diff_keeping(old: Option<Known<'_>>, new: &Table, out: &mut Vec<Op>, kept: &mut Vec<Kept>) {
    let f = new.family;
    let Some(old) = old else {
        out.push(Op::AddTable(f));
        for s in &new.sets {
            out.push(Op::AddSet(f, s.decl.clone()));
        }
        for c in &new.chains {
            out.push(Op::AddChain(f, chain_shell(c)));
        }
        // Rules before elements: a rule that looks up a map binds it, and binding a map
        // makes the kernel check every element it already holds (`nf_tables_bind_set`
        // walks the set). Bound while empty, each element is checked once as it comes:
        // at 30k Services the walks were 12% of a full load.
        for c in &new.chains {
            for r in &c.rules {
                out.push(Op::AddRule(f, c.name.clone(), r.clone()));
            }
        }
        for s in &new.sets {
            if !s.elements.is_empty() {
                out.push(Op::AddElements(
                    f,
                    s.decl.clone(),
                    Items::All(s.elements.clone()),
                ));
            }
        }
        return;
    };
    let old_t = old.table;

    // Sets whose declaration changed must be re-created; rules referencing them must
    // be flushed first, so any such change refills every chain (a rare event).
    let replaced: BTreeSet<&str> = new
        .sets
        .iter()
        .filter(|s| old_t.set(&s.decl.name).is_some_and(|o| o.decl != s.decl))
        .map(|s| s.decl.name.as_str())
        .collect();
    let refill_all = !old.rules_known || !replaced.is_empty();

    let changed: Vec<&Chain> = new
        .chains
        .iter()
        .filter(|c| match old_t.chain(&c.name) {
            None => true,
            Some(o) => refill_all || o.rules != c.rules || o.kind != c.kind,
        })
        .collect();
    let removed_chains: Vec<&Chain> = old_t
        .chains
        .iter()
        .filter(|c| new.chain(&c.name).is_none())
        .collect();
    for c in changed.iter().filter(|c| old_t.chain(&c.name).is_some()) {
        out.push(Op::FlushChain(f, c.name.clone()));
    }
    for c in &removed_chains {
        out.push(Op::FlushChain(f, c.name.clone()));
    }
    for c in &removed_chains {
        out.push(Op::DelChain(f, c.name.clone()));
    }
    for s in &old_t.sets {
        if new.set(&s.decl.name).is_none() || replaced.contains(s.decl.name.as_str()) {
            out.push(Op::DelSet(f, s.decl.name.clone()));
        }
    }
    for s in &new.sets {
        if old_t.set(&s.decl.name).is_none() || replaced.contains(s.decl.name.as_str()) {
            out.push(Op::AddSet(f, s.decl.clone()));
        }
    }
    for c in &changed {
        if old_t.chain(&c.name).is_none() {
            out.push(Op::AddChain(f, chain_shell(c)));
        }
    }
    // Elements: all deletions first, then additions. A changed value or comment is a
    // delete and an add of the same key in one transaction.
    let mut adds = Vec::new();
    for s in &new.sets {
        if s.decl.timeout.is_some() {
            // Dynamic sets are filled by the packet path (session affinity); we never
            // manage their elements.
            continue;
        }
        let old_s = old_t
            .set(&s.decl.name)
            .filter(|_| !replaced.contains(s.decl.name.as_str()));
        let mut del = Vec::new();
        let mut add = Vec::new();
        match old_s {
            None => add.extend(s.elements.iter().map(|(k, e)| (k.clone(), e.clone()))),
            Some(o) => {
                for (k, e) in o.elements.iter() {
                    match s.elements.get(k) {
                        None if kept_on_shrink(old_t, new, &s.decl.name, k) => {
                            kept.push((f, s.decl.name.clone(), k.clone(), e.clone()));
                        }
                        None => del.push(k.clone()),
                        Some(ne) if ne != e => {
                            del.push(k.clone());
                            add.push((k.clone(), ne.clone()));
                        }
                        Some(_) => {}
                    }
                }
                for (k, e) in s.elements.iter() {
                    if !o.elements.contains_key(k) {
                        add.push((k.clone(), e.clone()));
                    }
                }
            }
        }
        if !del.is_empty() {
            out.push(Op::DelElements(f, s.decl.clone(), del));
        }
        if !add.is_empty() {
            adds.push(Op::AddElements(f, s.decl.clone(), add.into()));
        }
    }
    out.extend(adds);
    for c in &changed {
        for r in &c.rules {
            out.push(Op::AddRule(f, c.name.clone(), r.clone()));
        }
    }
}

/// Whether the diff keeps frontend `key` in class set `set` (a `pick-P`) one sync
/// longer: the frontend moves from there to a smaller power-of-two class of the same
/// dispatch in this transaction, and `set` lives on. The `services` chain tests the
/// classes in ascending order and the kernel flips all sets at one instant, so a packet
/// can test the smaller class before the flip (not there yet) and this one after it
/// (gone): kept, it still finds the frontend, and after the commit the smaller class
/// comes first. The next sync deletes it (by then the frontend was in the smaller
/// class before the transaction, so it is not kept again).
pub fn kept_on_shrink(old: &Table, new: &Table, set: &str, key: &Key) -> bool {
    use crate::ruleset::build::{class_of, names};
    let Some((prefix, p)) = [names::SHORTCUT_PICK_PREFIX, names::PICK_PREFIX]
        .into_iter()
        .find_map(|pre| class_of(set, pre).map(|p| (pre, p)))
    else {
        return false;
    };
    let smaller = |t: &Table| {
        t.sets.iter().any(|s| {
            class_of(&s.decl.name, prefix).is_some_and(|q| q < p) && s.elements.contains_key(key)
        })
    };
    new.set(set).is_some() && smaller(new) && !smaller(old)
}

/// Like [`diff`], in two transactions when a new endpoint-count class appears (a
/// `pick-P`, `frontends-N`, `shortcut-pick-P` or `shortcut-N` set) or a frontend gains
/// an eTP=Local shortcut: `pre` only adds — every set and chain of `new` that `old`
/// lacks, appended to the chains `old` has the rules of `new` that read them, and the
/// shortcuts of [`early_shortcuts`] — so the old rules stay in place and every frontend
/// stays readable while `out` then moves the elements into the new classes and
/// replaces the rules. A packet walks the rules of the generation it started in, while
/// each set lookup sees the generation current at that instant (the kernel reads the
/// generation once per hook traversal for the rules, at every lookup for elements):
/// a packet can meet old rules with new sets, and every frontend must then still sit
/// in a set that some rule in place reads.
///
/// What `pre` creates is derived from what the rules refer to, and `out` comes from
/// [`diff`], which creates before use and deletes after the last use: no transaction
/// refers to anything it did not create, whatever the old rules were (they need not
/// be known: a read-back may not recognise them).
///
/// Returns the elements the kernel keeps beyond `new` (see [`diff_keeping`]).
pub fn diff_staged(
    old: Option<Known<'_>>,
    new: &Table,
    pre: &mut Vec<Op>,
    out: &mut Vec<Op>,
) -> Vec<Kept> {
    let mut kept = Vec::new();
    let Some(k) = old else {
        diff(None, new, out);
        return kept;
    };
    let Some(stage) = stage(k.table, new, pre) else {
        diff_keeping(Some(k), new, out, &mut kept);
        return kept;
    };
    diff_keeping(
        Some(Known {
            table: &stage,
            rules_known: k.rules_known,
        }),
        new,
        out,
        &mut kept,
    );
    kept
}

/// Whether a set is a count class (`pick-P`, `frontends-N`, `shortcut-pick-P`,
/// `shortcut-N`).
pub fn is_class_set(name: &str) -> bool {
    use crate::ruleset::build::{class_of, names};
    [
        names::PICK_PREFIX,
        names::FRONTENDS_PREFIX,
        names::SHORTCUT_PICK_PREFIX,
        names::SHORTCUT_PREFIX,
    ]
    .iter()
    .any(|p| class_of(name, p).is_some())
}

/// The table between `old` and `new` when `new` has count classes that `old` lacks or
/// frontends that gain an eTP=Local shortcut (None otherwise), and the operations in
/// `pre` that make it from `old`: `old` plus every set of `new` that `old` lacks
/// (empty), every chain of `new` that `old` lacks (with its rules), appended to each
/// chain of both the rules of `new` that refer to something `old` lacks, and the
/// shortcuts of [`early_shortcuts`]. Nothing is removed, so the rules of `old` keep
/// working.
pub fn stage(old: &Table, new: &Table, pre: &mut Vec<Op>) -> Option<Table> {
    let appears = new
        .sets
        .iter()
        .any(|s| is_class_set(&s.decl.name) && old.set(&s.decl.name).is_none());
    let early = early_shortcuts(old, new);
    if !appears && early.is_empty() {
        return None;
    }
    let f = new.family;
    let mut stage = old.clone();
    for s in &new.sets {
        if old.set(&s.decl.name).is_none() {
            pre.push(Op::AddSet(f, s.decl.clone()));
            stage.sets.push(Set {
                decl: s.decl.clone(),
                elements: Default::default(),
            });
        }
    }
    let fresh: Vec<&Chain> = new
        .chains
        .iter()
        .filter(|c| old.chain(&c.name).is_none())
        .collect();
    for c in &fresh {
        pre.push(Op::AddChain(f, chain_shell(c)));
        stage.chains.push(chain_shell(c));
    }
    let new_in_old = |r: &Rule| {
        crate::ruleset::fake::references(r).iter().any(|x| match x {
            crate::ruleset::fake::Reference::Set(s, _) => old.set(s).is_none(),
            crate::ruleset::fake::Reference::Chain(c) => old.chain(c).is_none(),
        })
    };
    for c in &new.chains {
        let appended: Vec<&Rule> = if old.chain(&c.name).is_none() {
            c.rules.iter().collect()
        } else {
            c.rules.iter().filter(|r| new_in_old(r)).collect()
        };
        for r in appended {
            pre.push(Op::AddRule(f, c.name.clone(), r.clone()));
            match stage.chains.iter_mut().find(|x| x.name == c.name) {
                Some(x) => x.rules.push(r.clone()),
                None => stage.chains.push(Chain {
                    name: c.name.clone(),
                    kind: c.kind,
                    rules: vec![r.clone()],
                }),
            }
        }
    }
    for (set, items) in early {
        if let Some(s) = stage.sets.iter_mut().find(|s| s.decl.name == set) {
            pre.push(Op::AddElements(f, s.decl.clone(), items.clone().into()));
            Arc::make_mut(&mut s.elements).extend(items);
        }
    }
    Some(stage)
}

/// The elements of `new` that go in before the rest: the eTP=Local shortcut of each
/// frontend that has none in `old` (its shortcut class memberships, its
/// `shortcut-endpoints` entries and the hairpin pairs of those endpoints), by set.
///
/// The shortcut rules come before the other classes in `services`. A frontend that
/// gains a shortcut and loses its last local endpoint in one transaction could
/// otherwise meet the flip between the two: the shortcut tested before it (not there
/// yet), its old class after it, whose endpoints are gone. With the shortcut in place
/// first, pod and node traffic already takes it, and traffic from elsewhere still has
/// its old class until the main transaction: each source sees either the old or the
/// new behaviour.
pub fn early_shortcuts(old: &Table, new: &Table) -> BTreeMap<String, Vec<(Key, ElementData)>> {
    use crate::ruleset::build::{class_of, hairpin_key, names};
    let shortcut_pick = |name: &str| class_of(name, names::SHORTCUT_PICK_PREFIX).is_some();
    let has_shortcut = |t: &Table, f: &Key| {
        t.sets
            .iter()
            .any(|s| shortcut_pick(&s.decl.name) && s.elements.contains_key(f))
    };
    let gaining: BTreeSet<&Key> = new
        .sets
        .iter()
        .filter(|s| shortcut_pick(&s.decl.name))
        .flat_map(|s| s.elements.keys())
        .filter(|f| !has_shortcut(old, f))
        .collect();
    let mut out: BTreeMap<String, Vec<(Key, ElementData)>> = BTreeMap::new();
    if gaining.is_empty() {
        return out;
    }
    let held = |set: &str, k: &Key| old.set(set).is_some_and(|s| s.elements.contains_key(k));
    let mut ips = BTreeSet::new();
    for s in &new.sets {
        let name = s.decl.name.as_str();
        let frontend_of = |k: &Key| -> Key {
            if name == names::SHORTCUT_ENDPOINTS {
                k.without_last()
            } else {
                k.clone()
            }
        };
        if !(shortcut_pick(name)
            || class_of(name, names::SHORTCUT_PREFIX).is_some()
            || name == names::SHORTCUT_ENDPOINTS)
        {
            continue;
        }
        for (k, e) in s.elements.iter() {
            if gaining.contains(&frontend_of(k)) && !held(name, k) {
                if let Some(Value::Addr(ip)) = e.data.first() {
                    ips.insert(ip);
                }
                out.entry(name.to_string())
                    .or_default()
                    .push((k.clone(), e.clone()));
            }
        }
    }
    for ip in ips {
        let k = hairpin_key(ip);
        if !held(names::HAIRPIN, &k)
            && new
                .set(names::HAIRPIN)
                .is_some_and(|s| s.elements.contains_key(&k))
        {
            out.entry(names::HAIRPIN.to_string())
                .or_default()
                .push((k, ElementData::default()));
        }
    }
    out
}

fn chain_shell(c: &Chain) -> Chain {
    Chain {
        name: c.name.clone(),
        kind: c.kind,
        rules: Vec::new(),
    }
}

/// Whether an operation re-validates the table in the kernel (a rule or chain change).
pub fn touches_rules(op: &Op) -> bool {
    matches!(
        op,
        Op::AddRule(..) | Op::AddChain(..) | Op::AddTable(..) | Op::FlushChain(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterState, Object, ProxyModel};
    use crate::ruleset::build::{build_table, BuildConfig};

    fn model(n_eps: usize) -> ProxyModel {
        let svc: crate::model::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {"clusterIP": "172.30.0.1", "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let eps: Vec<_> = (0..n_eps)
            .map(|i| serde_json::json!({"addresses": [format!("10.0.0.{}", i + 1)]}))
            .collect();
        let slice: crate::model::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "svc-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "svc"}},
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]
            }))
            .unwrap();
        let state = ClusterState::from_objects([
            Object::Service(Box::new(svc)),
            Object::EndpointSlice(Box::new(slice)),
        ]);
        ProxyModel::compute(&state, "node", &mut Default::default())
    }

    #[test]
    fn endpoint_change_is_element_only() {
        let cfg = BuildConfig::default();
        let a = build_table(&model(2), &cfg, Family::V4);
        let b = build_table(&model(2), &cfg, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &a,
                rules_known: true,
            }),
            &b,
            &mut ops,
        );
        assert!(ops.is_empty(), "no change must give no ops: {ops:?}");

        // Add a third endpoint to a new count class: one set + one rule appear.
        let c = build_table(&model(3), &cfg, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &a,
                rules_known: true,
            }),
            &c,
            &mut ops,
        );
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddSet(_, d) if d.name == "frontends-3")));
        // Back from 3 to 2 endpoints: the class set frontends-2 ... frontends-3 removed.
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &c,
                rules_known: true,
            }),
            &a,
            &mut ops,
        );
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::DelSet(_, n) if n == "frontends-3")));
        let flush_pos = ops
            .iter()
            .position(|o| matches!(o, Op::FlushChain(_, n) if n == "services"));
        let del_pos = ops.iter().position(|o| matches!(o, Op::DelSet(..)));
        assert!(
            flush_pos < del_pos,
            "rules referencing a set go before the set: {ops:?}"
        );
    }

    #[test]
    fn same_class_change_touches_no_rule() {
        let cfg = BuildConfig::default();
        let a = build_table(&model(2), &cfg, Family::V4);
        let mut m = model(2);
        for e in m.services.values_mut() {
            e.endpoints[1].ip = "10.0.9.9".parse().unwrap();
        }
        let b = build_table(&m, &cfg, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &a,
                rules_known: true,
            }),
            &b,
            &mut ops,
        );
        assert!(!ops.is_empty());
        assert!(!ops.iter().any(touches_rules), "{ops:?}");
    }

    /// Two services: `svc` with `n` endpoints and `other` with 4 (so `pick-4` lives on).
    fn two_services(n: usize) -> ProxyModel {
        let mut m = model(n);
        let mut other = model(4);
        let (name, mut e) = other.services.pop_first().unwrap();
        let name = crate::model::ServicePortName {
            name: "other".into(),
            ..name
        };
        e.port.name = name.clone();
        e.port.cluster_ips = vec!["172.30.0.2".parse().unwrap()];
        m.services.insert(name, e);
        m
    }

    fn ops(old: &Table, new: &Table) -> (Vec<Op>, Vec<Kept>) {
        let (mut ops, mut kept) = (Vec::new(), Vec::new());
        diff_keeping(
            Some(Known {
                table: old,
                rules_known: true,
            }),
            new,
            &mut ops,
            &mut kept,
        );
        (ops, kept)
    }

    #[test]
    fn a_frontend_moving_to_a_smaller_class_stays_in_the_old_one_for_one_sync() {
        let cfg = BuildConfig::default();
        let svc: Key = vec![
            Value::Addr("172.30.0.1".parse().unwrap()),
            Value::Proto(6),
            Value::Port(80),
        ]
        .into();
        let in_set =
            |t: &Table, set: &str| t.set(set).is_some_and(|s| s.elements.contains_key(&svc));
        let three = build_table(&two_services(3), &cfg, Family::V4);
        let two = build_table(&two_services(2), &cfg, Family::V4);
        assert!(in_set(&three, "pick-4") && in_set(&two, "pick-2") && !in_set(&two, "pick-4"));
        let (o, kept) = ops(&three, &two);
        let deletes = |o: &[Op], set: &str| {
            o.iter().any(|x| matches!(x, Op::DelElements(_, d, keys) if d.name == set && keys.contains(&svc)))
        };
        assert!(!deletes(&o, "pick-4"), "{o:?}");
        assert!(
            o.iter()
                .any(|x| matches!(x, Op::DelSet(_, n) if n == "frontends-3")),
            "{o:?}"
        );
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].1.as_str(), &kept[0].2), ("pick-4", &svc));
        // No padding: index 2 goes at once (a draw that misses draws again).
        assert!(o.iter().any(|x| matches!(x, Op::DelElements(_, d, keys) if d.name == "endpoints" && keys.iter().any(|k| k.last() == Some(Value::Index(2))))), "{o:?}");
        // The next sync (from a kernel that holds both memberships) deletes the old one.
        let mut held = two.clone();
        for s in &mut held.sets {
            if s.decl.name == "pick-4" {
                Arc::make_mut(&mut s.elements).insert(svc.clone(), kept[0].3.clone());
            }
        }
        let (o, kept) = ops(&held, &two);
        assert!(kept.is_empty() && deletes(&o, "pick-4"), "{o:?} {kept:?}");
        // A class that empties is deleted with the move: its elements stay visible to
        // the rules that still read it until the commit.
        let (o, kept) = ops(
            &build_table(&model(3), &cfg, Family::V4),
            &build_table(&model(2), &cfg, Family::V4),
        );
        assert!(kept.is_empty(), "{kept:?}");
        assert!(o
            .iter()
            .any(|x| matches!(x, Op::DelSet(_, n) if n == "pick-4")));
        // Growing needs nothing kept: the old, smaller class is tested first.
        let (_, kept) = ops(&two, &three);
        assert!(kept.is_empty(), "{kept:?}");
    }

    #[test]
    fn a_new_count_class_is_readable_before_anything_moves_into_it() {
        let cfg = BuildConfig::default();
        let two = build_table(&model(2), &cfg, Family::V4);
        let three = build_table(&model(3), &cfg, Family::V4);
        let (mut pre, mut ops) = (Vec::new(), Vec::new());
        diff_staged(
            Some(Known {
                table: &two,
                rules_known: true,
            }),
            &three,
            &mut pre,
            &mut ops,
        );
        let created = pre
            .iter()
            .position(|o| matches!(o, Op::AddSet(_, d) if d.name == "frontends-3"));
        let first_use = pre.iter().position(|o| {
            matches!(o, Op::AddRule(_, _, r) if r.0.iter().any(|s| matches!(s, Stmt::Lookup { set, .. } if set == "frontends-3")))
        });
        assert!(
            created.is_some() && created < first_use,
            "the class set exists before a rule reads it: {pre:?}"
        );
        let reads = |chain: &str, set: &str| {
            pre.iter().any(|o| matches!(o, Op::AddRule(_, c, r) if c == chain && r.0.iter().any(|s| matches!(s, Stmt::Lookup { set: x, .. } if x == set))))
        };
        assert!(reads("services", "pick-4"), "{pre:?}");
        assert!(reads("pick-4-exact", "frontends-3"), "{pre:?}");
        // The old class's rule stays in place: the stage removes nothing.
        assert!(
            !pre.iter()
                .any(|o| matches!(o, Op::FlushChain(..) | Op::DelSet(..) | Op::DelChain(..))),
            "{pre:?}"
        );
        assert!(!pre
            .iter()
            .any(|o| matches!(o, Op::AddElements(..) | Op::DelElements(..))));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::AddElements(_, d, _) if d.name == "frontends-3")));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::DelSet(_, n) if n == "pick-2")));
        // No new class (here: no change at all): one transaction.
        let (mut pre, mut ops) = (Vec::new(), Vec::new());
        diff_staged(
            Some(Known {
                table: &three,
                rules_known: true,
            }),
            &three,
            &mut pre,
            &mut ops,
        );
        assert!(pre.is_empty() && ops.is_empty());
    }

    #[test]
    fn unknown_rules_refill_every_chain() {
        let cfg = BuildConfig::default();
        let a = build_table(&model(2), &cfg, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &a,
                rules_known: false,
            }),
            &a,
            &mut ops,
        );
        let flushed = ops
            .iter()
            .filter(|o| matches!(o, Op::FlushChain(..)))
            .count();
        assert_eq!(flushed, a.chains.len());
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::AddElements(..) | Op::DelElements(..))));
    }

    /// `--service-counters`: the dispatch and refusal sets carry counters (and only
    /// they); an endpoint change stays element-only; turning counters on or off
    /// re-creates exactly the counted sets (a set with and without counters are two
    /// declarations), in the fake kernel too.
    #[test]
    fn counters_are_part_of_the_declaration() {
        use crate::ruleset::build::counted;
        use crate::ruleset::fake::FakeKernel;
        let on = BuildConfig {
            service_counters: true,
            ..BuildConfig::default()
        };
        let off = BuildConfig::default();
        let a = build_table(&model(2), &on, Family::V4);
        let counted_sets: Vec<&str> = a
            .sets
            .iter()
            .filter(|s| s.decl.counter)
            .map(|s| s.decl.name.as_str())
            .collect();
        assert!(counted_sets.contains(&"pick-2"), "{counted_sets:?}");
        assert!(
            counted_sets.contains(&"no-endpoint-reject"),
            "{counted_sets:?}"
        );
        for s in &a.sets {
            assert_eq!(
                s.decl.counter,
                counted(&s.decl.name).is_some(),
                "{}",
                s.decl.name
            );
        }
        assert!(build_table(&model(2), &off, Family::V4)
            .sets
            .iter()
            .all(|s| !s.decl.counter));

        // An endpoint more (3: pick-4 and frontends-3 appear, counted and not).
        let b = build_table(&model(3), &on, Family::V4);
        let decl = |t: &Table, n: &str| t.set(n).map(|s| s.decl.counter);
        assert_eq!(decl(&b, "pick-4"), Some(true));
        assert_eq!(decl(&b, "frontends-3"), Some(false));
        // Same class, another endpoint address: elements only.
        let mut m = model(2);
        for e in m.services.values_mut() {
            e.endpoints[0].ip = "10.0.0.9".parse().unwrap();
        }
        let c = build_table(&m, &on, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &a,
                rules_known: true,
            }),
            &c,
            &mut ops,
        );
        assert!(!ops.is_empty());
        assert!(
            ops.iter()
                .all(|o| matches!(o, Op::AddElements(..) | Op::DelElements(..))),
            "{ops:?}"
        );

        let mut k = FakeKernel::new();
        let plain = build_table(&model(2), &off, Family::V4);
        let mut ops = Vec::new();
        diff(None, &plain, &mut ops);
        k.apply(&ops).unwrap();
        for (from, to) in [(&plain, &a), (&a, &plain)] {
            let mut ops = Vec::new();
            diff(
                Some(Known {
                    table: from,
                    rules_known: true,
                }),
                to,
                &mut ops,
            );
            let recreated: Vec<&str> = ops
                .iter()
                .filter_map(|o| match o {
                    Op::AddSet(_, d) => Some(d.name.as_str()),
                    _ => None,
                })
                .collect();
            let mut want: Vec<&str> = counted_sets.clone();
            want.sort();
            let mut got = recreated.clone();
            got.sort();
            assert_eq!(got, want, "{ops:?}");
            k.apply(&ops).unwrap_or_else(|e| panic!("{e}"));
            // Re-created sets come last: compare by name.
            let by_name = |t: &Table| {
                let mut sets = t.sets.clone();
                sets.sort_by(|a, b| a.decl.name.cmp(&b.decl.name));
                (sets, t.chains.clone())
            };
            let held = k.table(Family::V4).map(by_name);
            assert!(held == Some(by_name(to)), "the fake holds {held:?}");
        }
    }
}
