//! Diffs what the kernel holds against the desired table into ordered operations.
//!
//! A transaction is atomic and one message that does not fit what the kernel holds
//! (deleting an element that is not there) aborts all of it, so the old side must be
//! exactly what is in the kernel: either the last table we committed, or what we read
//! back. When the rules of the old side are not known (read back), every chain is
//! flushed and refilled in the same transaction; elements are always diffed exactly.

use std::collections::BTreeSet;

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
    AddElements(Family, SetDecl, Vec<(Key, ElementData)>),
    /// append a rule to a chain
    AddRule(Family, String, Rule),
    /// delete the whole table
    DelTable(Family),
    /// delete another program's table (migration from kube-proxy only)
    DelForeignTable(Family, String),
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

/// An endpoint-map element a diff keeps in the kernel for one more sync although the
/// desired table lacks it (see [`padding`]): family, map, key and the value it holds.
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
        for s in &new.sets {
            if !s.elements.is_empty() {
                out.push(Op::AddElements(
                    f,
                    s.decl.clone(),
                    s.elements
                        .iter()
                        .map(|(k, e)| (k.clone(), e.clone()))
                        .collect(),
                ));
            }
        }
        for c in &new.chains {
            for r in &c.rules {
                out.push(Op::AddRule(f, c.name.clone(), r.clone()));
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
                let lb_map = is_lb_map(&s.decl.name);
                for (k, e) in &o.elements {
                    match s.elements.get(k) {
                        None if lb_map && old_rule_reaches(old_t, &s.decl.name, k) => {
                            match padding(&s.elements, k) {
                                // The frontend lives on with fewer endpoints: see `padding`.
                                Some(p) => {
                                    if p != *e {
                                        del.push(k.clone());
                                        add.push((k.clone(), p.clone()));
                                    }
                                    kept.push((f, s.decl.name.clone(), k.clone(), p));
                                }
                                None => del.push(k.clone()),
                            }
                        }
                        None => del.push(k.clone()),
                        Some(ne) if ne != e => {
                            del.push(k.clone());
                            add.push((k.clone(), ne.clone()));
                        }
                        Some(_) => {}
                    }
                }
                for (k, e) in &s.elements {
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
            adds.push(Op::AddElements(f, s.decl.clone(), add));
        }
    }
    out.extend(adds);
    for c in &changed {
        for r in &c.rules {
            out.push(Op::AddRule(f, c.name.clone(), r.clone()));
        }
    }
}

/// Whether a rule of the old table can pick index `key` of this map (its frontend is
/// in a count class larger than the index). Padding left by an earlier shrink is not
/// reachable any more and is deleted.
pub(crate) fn old_rule_reaches(old: &Table, map: &str, key: &Key) -> bool {
    use crate::ruleset::build::names;
    let prefix = if map == names::ENDPOINTS {
        names::FRONTENDS_PREFIX
    } else {
        names::SHORTCUT_PREFIX
    };
    let (Some(Value::Index(i)), Some(front)) = (key.last(), key.get(..key.len().saturating_sub(1)))
    else {
        return false;
    };
    let front = front.to_vec();
    old.sets.iter().any(|s| {
        crate::ruleset::build::class_of(&s.decl.name, prefix).is_some_and(|n| n > *i as usize)
            && s.elements.contains_key(&front)
    })
}

/// Whether a set is one of the `frontend . index → endpoint` maps.
pub fn is_lb_map(name: &str) -> bool {
    name == crate::ruleset::build::names::ENDPOINTS
        || name == crate::ruleset::build::names::SHORTCUT_ENDPOINTS
}

/// When a frontend's endpoint count drops from N to M in a transaction, a packet that
/// entered the old `numgen random mod N` rule just before the commit can look up an
/// index ≥ M after it (set lookups see the new generation). Instead of deleting such an
/// element we point it at endpoint `index mod M`; the next sync, when no rule uses the
/// old modulus any more, deletes it. Returns that value, or None when the frontend has
/// no endpoints left (a real delete).
pub fn padding(
    new: &std::collections::BTreeMap<Key, ElementData>,
    key: &Key,
) -> Option<ElementData> {
    let (Some(Value::Index(i)), Some(front)) = (key.last(), key.get(..key.len().saturating_sub(1)))
    else {
        return None;
    };
    let probe = |j: u32| {
        let mut k = front.to_vec();
        k.push(Value::Index(j));
        k
    };
    let mut m = 0;
    while new.contains_key(&probe(m)) {
        m += 1;
    }
    if m == 0 {
        return None;
    }
    new.get(&probe(i % m)).cloned()
}

/// Like [`diff`], in two transactions when a new endpoint-count class appears (a
/// `frontends-N` or `shortcut-N` set): `pre` only adds — every set and chain of `new`
/// that `old` lacks, and, appended to the chains `old` has, the rules of `new` that
/// read them — so the old rules stay in place and every frontend stays readable while
/// `out` then moves the elements into the new classes and replaces the rules. The
/// kernel flips to the new set generation before it swaps rule blobs, so a packet can
/// meet old rules with new sets for an instant: every frontend must then still sit in
/// a set that some rule in place reads.
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

/// Whether a set is a count class (`frontends-N`, `shortcut-N`).
pub fn is_class_set(name: &str) -> bool {
    use crate::ruleset::build::{class_of, names};
    class_of(name, names::FRONTENDS_PREFIX).is_some()
        || class_of(name, names::SHORTCUT_PREFIX).is_some()
}

/// The table between `old` and `new` when `new` has count classes that `old` lacks
/// (None otherwise), and the operations in `pre` that make it from `old`: `old` plus
/// every set of `new` that `old` lacks (empty), every chain of `new` that `old` lacks
/// (with its rules), and appended to each chain of both the rules of `new` that refer to
/// something `old` lacks. Nothing is removed, so the rules of `old` keep working.
pub fn stage(old: &Table, new: &Table, pre: &mut Vec<Op>) -> Option<Table> {
    let appears = new
        .sets
        .iter()
        .any(|s| is_class_set(&s.decl.name) && old.set(&s.decl.name).is_none());
    if !appears {
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
    Some(stage)
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
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {"clusterIP": "172.30.0.1", "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let eps: Vec<_> = (0..n_eps)
            .map(|i| serde_json::json!({"addresses": [format!("10.0.0.{}", i + 1)]}))
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
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

    #[test]
    fn shrinking_keeps_dropped_indexes_reachable_for_one_sync() {
        let cfg = BuildConfig::default();
        let three = build_table(&model(3), &cfg, Family::V4);
        let two = build_table(&model(2), &cfg, Family::V4);
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &three,
                rules_known: true,
            }),
            &two,
            &mut ops,
        );
        let idx2 = |k: &Key| k.last() == Some(&Value::Index(2));
        // Index 2 is re-pointed at a live endpoint, not deleted.
        assert!(ops.iter().any(|o| matches!(o, Op::AddElements(_, d, els) if d.name == "endpoints" && els.iter().any(|(k, _)| idx2(k)))), "{ops:?}");
        // The next sync (from a kernel that holds the padding) deletes it.
        let mut padded = two.clone();
        for s in &mut padded.sets {
            if s.decl.name == "endpoints" {
                let (k, e) = three
                    .set("endpoints")
                    .unwrap()
                    .elements
                    .iter()
                    .find(|(k, _)| idx2(k))
                    .unwrap();
                s.elements.insert(k.clone(), e.clone());
            }
        }
        let mut ops = Vec::new();
        diff(
            Some(Known {
                table: &padded,
                rules_known: true,
            }),
            &two,
            &mut ops,
        );
        assert!(ops.iter().any(|o| matches!(o, Op::DelElements(_, d, keys) if d.name == "endpoints" && keys.iter().any(idx2))), "{ops:?}");
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
        let reads = |set: &str| {
            pre.iter().any(|o| matches!(o, Op::AddRule(_, c, r) if c == "services" && r.0.iter().any(|s| matches!(s, Stmt::Lookup { set: x, .. } if x == set))))
        };
        assert!(reads("frontends-3"), "{pre:?}");
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
            .any(|o| matches!(o, Op::DelSet(_, n) if n == "frontends-2")));
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
}
