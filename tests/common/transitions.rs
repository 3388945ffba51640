//! Random change sequences of a cluster model, and table comparison, for the tests
//! that send every generated transaction to a kernel (fake or real).

use std::collections::BTreeSet;

use kube_nft_proxy::model::{ProxyModel, ServicePortName};
use kube_nft_proxy::ruleset::ir::{Chain, ElementData, Family, Key, Ruleset};
use kube_nft_proxy::synthetic::{random_entry, Rng};

/// A table with its sets sorted by name and dynamic sets' elements left out (creation
/// order differs by design between paths; the packet path fills dynamic sets).
pub type Normal = (Family, Vec<(String, Vec<(Key, ElementData)>)>, Vec<Chain>);

/// Both tables, normalized.
pub fn normalized(r: &Ruleset) -> Vec<Normal> {
    r.tables
        .iter()
        .map(|t| {
            let mut sets: Vec<_> = t
                .sets
                .iter()
                .map(|s| {
                    (
                        s.decl.name.clone(),
                        s.elements
                            .iter()
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect(),
                    )
                })
                .collect();
            sets.sort_by(|a: &(String, Vec<_>), b| a.0.cmp(&b.0));
            let mut chains = t.chains.clone();
            chains.sort_by(|a, b| a.name.cmp(&b.name));
            (t.family, sets, chains)
        })
        .collect()
}

/// One change of the kind a cluster sees: a Service arrives or leaves, scales (also
/// from and to zero), its endpoints change conditions or move, its policy or type or
/// affinity changes; sometimes two at once. Returns the service ports that changed.
pub fn random_step(
    rng: &mut Rng,
    model: &mut ProxyModel,
    pool: usize,
) -> BTreeSet<ServicePortName> {
    let mut dirty = BTreeSet::new();
    let changes = 1 + rng.below(3);
    for _ in 0..changes {
        let i = rng.below(pool);
        let existing: Option<ServicePortName> = model
            .services
            .keys()
            .find(|n| n.name == format!("svc{i}"))
            .cloned();
        match (existing, rng.below(6)) {
            (None, _) | (Some(_), 0) => {
                let e = random_entry(rng, i);
                if let Some(old) = model
                    .services
                    .keys()
                    .find(|n| n.name == format!("svc{i}"))
                    .cloned()
                {
                    model.services.remove(&old);
                    dirty.insert(old);
                }
                dirty.insert(e.port.name.clone());
                model.services.insert(e.port.name.clone(), e);
            }
            (Some(name), 1) => {
                model.services.remove(&name);
                dirty.insert(name);
            }
            (Some(name), k) => {
                let fresh = random_entry(rng, i);
                if let Some(e) = model.services.get_mut(&name) {
                    match k {
                        2 => e.endpoints = fresh.endpoints,
                        3 => {
                            if e.endpoints.is_empty() {
                                e.endpoints = fresh.endpoints;
                            } else {
                                let j = rng.below(e.endpoints.len());
                                e.endpoints.remove(j);
                            }
                        }
                        4 => {
                            e.port.external_policy_local = !e.port.external_policy_local;
                            e.port.internal_policy_local = fresh.port.internal_policy_local;
                        }
                        _ => {
                            e.port.affinity_timeout = fresh.port.affinity_timeout;
                            e.port.source_ranges = fresh.port.source_ranges;
                        }
                    }
                }
                dirty.insert(name);
            }
        }
    }
    dirty
}

/// What differs between two rulesets, briefly: which sets (with a few of the keys on
/// either side only) and which chains.
pub fn differences(a: &Ruleset, b: &Ruleset) -> String {
    let (na, nb) = (normalized(a), normalized(b));
    let mut out = String::new();
    for f in [Family::V4, Family::V6] {
        let ta = na.iter().find(|t| t.0 == f);
        let tb = nb.iter().find(|t| t.0 == f);
        let (Some(ta), Some(tb)) = (ta, tb) else {
            if ta.is_some() != tb.is_some() {
                out.push_str(&format!("{f:?}: table only on one side\n"));
            }
            continue;
        };
        let names: BTreeSet<&String> = ta.1.iter().chain(tb.1.iter()).map(|s| &s.0).collect();
        for n in names {
            let ea: Vec<_> =
                ta.1.iter()
                    .filter(|s| &s.0 == n)
                    .flat_map(|s| s.1.iter())
                    .collect();
            let eb: Vec<_> =
                tb.1.iter()
                    .filter(|s| &s.0 == n)
                    .flat_map(|s| s.1.iter())
                    .collect();
            let has_a = ta.1.iter().any(|s| &s.0 == n);
            let has_b = tb.1.iter().any(|s| &s.0 == n);
            if has_a != has_b || ea != eb {
                let only_a: Vec<_> = ea.iter().filter(|e| !eb.contains(e)).take(4).collect();
                let only_b: Vec<_> = eb.iter().filter(|e| !ea.contains(e)).take(4).collect();
                out.push_str(&format!(
                    "{f:?} set {n} (left {has_a}, right {has_b}): left only {only_a:?}; right only {only_b:?}\n"
                ));
            }
        }
        for c in ta.2.iter().chain(tb.2.iter()) {
            let ca = ta.2.iter().find(|x| x.name == c.name);
            let cb = tb.2.iter().find(|x| x.name == c.name);
            if ca != cb && !out.contains(&format!("chain {} ", c.name)) {
                out.push_str(&format!(
                    "{f:?} chain {} differs: left {ca:?}\n  right {cb:?}\n",
                    c.name
                ));
            }
        }
    }
    out
}

/// The ruleset without the endpoint-map elements kept one sync after a count shrank
/// (indexes at or above the frontend's current count; see `diff::padding`).
pub fn without_padding(r: &Ruleset) -> Ruleset {
    use kube_nft_proxy::ruleset::ir::Value;
    let mut r = r.clone();
    for t in &mut r.tables {
        let counts: Vec<(String, Vec<Key>)> = t
            .sets
            .iter()
            .filter_map(|s| {
                let (prefix, map) = if s.decl.name.starts_with("frontends-") {
                    ("frontends-", "endpoints")
                } else if s.decl.name.starts_with("shortcut-")
                    && s.decl.name != "shortcut-endpoints"
                {
                    ("shortcut-", "shortcut-endpoints")
                } else {
                    return None;
                };
                let n: u32 = s.decl.name.strip_prefix(prefix)?.parse().ok()?;
                Some((
                    map.to_string(),
                    s.elements
                        .keys()
                        .map(|k| {
                            let mut k = k.clone();
                            k.push(Value::Index(n));
                            k
                        })
                        .collect(),
                ))
            })
            .collect();
        for s in &mut t.sets {
            if s.decl.name != "endpoints" && s.decl.name != "shortcut-endpoints" {
                continue;
            }
            let bounds: Vec<&Key> = counts
                .iter()
                .filter(|(m, _)| *m == s.decl.name)
                .flat_map(|(_, ks)| ks.iter())
                .collect();
            s.elements.retain(|k, _| {
                let front = &k[..k.len() - 1];
                bounds.iter().any(|b| {
                    &b[..b.len() - 1] == front
                        && matches!((k.last(), b.last()), (Some(Value::Index(i)), Some(Value::Index(n))) if i < n)
                })
            });
        }
    }
    r
}
