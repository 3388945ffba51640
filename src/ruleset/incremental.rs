//! Incremental builds: a partial sync costs what changed, not the size of the cluster.
//!
//! [`Incremental`] keeps the desired ruleset together with what each service port
//! contributed to it (its set elements and hairpin addresses, with reference counts for
//! elements that several ports share, such as a ClusterIP). A partial sync recomputes
//! only the dirty service ports, retracts their old contributions, adds the new ones and
//! emits exactly the element operations that follow — plus new count-class sets, their
//! chains and refilled dispatch chains in the rare case the set of endpoint counts
//! changes.
//!
//! A session-affinity port also brings its chains, set and dispatch rules; when one of
//! those changes, the chains and sets are brought in line by a diff of the table's
//! structure without elements (an endpoint change of an affinity Service replaces the
//! rules of its chain and keeps its set, so its clients stay recorded).
//!
//! Anything unusual falls back to a full build ([`Incremental::update`] returns `None`):
//! a frontend claimed by two services (the full build's first-claim rule), node or
//! ServiceCIDR changes. `tests/transitions.rs` checks
//! that random sequences of incremental updates yield the same table as a full build,
//! and that a kernel (a model of its referential rules, and the real one in
//! `tests/netns_transitions.rs`) accepts every transaction on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::build::{self, AffinityParts, BuildConfig, Contribution, Dispatch, Plan};
use super::diff::Op;
use super::ir::*;
use crate::model::objects::intern;
use crate::model::{ProxyModel, ServicePortName};

#[derive(Clone, Debug, Default)]
struct PortContrib {
    frontends: Vec<Key>,
    elements: Vec<Contribution>,
    hairpins: Vec<IpAddr>,
    /// its session-affinity chains, set and dispatch rules (empty without affinity)
    affinity: AffinityParts,
}

/// What a service port contributed, as kept between syncs: enough to retract it.
///
/// Its set elements are not kept. Every element but a ClusterIP is keyed by one of the
/// port's frontends, and no other port claims a frontend, so the table itself says
/// which elements a frontend holds ([`owned_elements`]); keeping their keys here, and a
/// reference count for each, cost ~150 bytes per element (about 100 MiB at 30,000
/// Services).
#[derive(Clone, Debug, Default)]
struct Held {
    frontends: Vec<Key>,
    /// its ClusterIPs: the one element several ports share (every port of a Service)
    cluster_ips: Vec<IpAddr>,
    /// hairpin addresses that its endpoint maps do not show (session-affinity
    /// endpoints); the others are read from the values of the map elements it retracts
    hairpins: Vec<IpAddr>,
    affinity: AffinityParts,
}

impl PortContrib {
    fn held(&self) -> Held {
        let mut cluster_ips = Vec::new();
        let mut mapped: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (set, k, e) in &self.elements {
            if &**set == build::names::CLUSTER_IPS {
                if let Some(Value::Addr(ip)) = k.first() {
                    cluster_ips.push(ip);
                }
            } else if let Some(ip) = endpoint_of(set, e) {
                *mapped.entry(ip).or_default() += 1;
            }
        }
        let mut hairpins = self.hairpins.clone();
        hairpins.retain(|ip| match mapped.get_mut(ip) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        });
        Held {
            frontends: self.frontends.clone(),
            cluster_ips,
            hairpins,
            affinity: self.affinity.clone(),
        }
    }
}

/// The endpoint address of an element of an endpoint map (which has a hairpin pair).
fn endpoint_of(set: &str, e: &ElementData) -> Option<IpAddr> {
    use build::names::{ENDPOINTS, SHORTCUT_ENDPOINTS};
    match e.data.first() {
        Some(Value::Addr(ip)) if set == ENDPOINTS || set == SHORTCUT_ENDPOINTS => Some(ip),
        _ => None,
    }
}

/// The elements of `map` whose key begins with frontend `k` (its endpoint-map entries,
/// its allowed source ranges).
fn prefixed<'a>(
    map: &'a ElementMap,
    k: &'a Key,
) -> impl Iterator<Item = (&'a Key, &'a ElementData)> {
    map.range(k.clone()..)
        .take_while(move |(ek, _)| ek.starts_with(k))
}

/// The elements of `table` that frontend `k` holds (set, key, value), in every set but
/// the ClusterIPs and the hairpin pairs, found by key: the fixed sets by the frontend
/// itself, the endpoint maps and the firewall's allowed sources by the frontend as a key
/// prefix, and the count classes from the number of endpoints the maps give it.
fn owned_elements(table: &Table, k: &Key, out: &mut Vec<(Arc<str>, Key, ElementData)>) {
    use build::names::{
        ENDPOINTS, FRONTENDS_PREFIX, PICK_PREFIX, SHORTCUT_ENDPOINTS, SHORTCUT_PICK_PREFIX,
        SHORTCUT_PREFIX,
    };
    let frontend = [KeyType::Addr, KeyType::Proto, KeyType::Port];
    let mut counts = [0usize; 2];
    for s in &table.sets {
        let name = s.decl.name.as_str();
        if s.decl.timeout.is_some()
            || !s.decl.key.starts_with(&frontend)
            || super::diff::is_class_set(name)
        {
            continue;
        }
        let mut push = |ek: &Key, e: &ElementData| {
            out.push((intern(name), ek.clone(), e.clone()));
        };
        if s.decl.key.len() > frontend.len() {
            let mut n = 0;
            for (ek, e) in prefixed(&s.elements, k) {
                push(ek, e);
                n += 1;
            }
            if name == ENDPOINTS {
                counts[0] = n;
            } else if name == SHORTCUT_ENDPOINTS {
                counts[1] = n;
            }
        } else if let Some(e) = s.elements.get(k) {
            push(k, e);
        }
    }
    let classes = [
        (PICK_PREFIX, FRONTENDS_PREFIX),
        (SHORTCUT_PICK_PREFIX, SHORTCUT_PREFIX),
    ];
    for ((pick, exact), n) in classes.into_iter().zip(counts) {
        if n == 0 {
            continue;
        }
        for set in build::class_sets(pick, exact, n) {
            if let Some(e) = table.set(&set).and_then(|s| s.elements.get(k)) {
                out.push((intern(&set), k.clone(), e.clone()));
            }
        }
    }
}

/// Whether `table`'s endpoint maps put frontend `k` in count class `set` (a `pick-P`).
fn in_class(table: &Table, set: &str, k: &Key) -> bool {
    use build::names::{ENDPOINTS, PICK_PREFIX, SHORTCUT_ENDPOINTS, SHORTCUT_PICK_PREFIX};
    let (map, p) = match build::class_of(set, SHORTCUT_PICK_PREFIX) {
        Some(p) => (SHORTCUT_ENDPOINTS, p),
        None => match build::class_of(set, PICK_PREFIX) {
            Some(p) => (ENDPOINTS, p),
            None => return false,
        },
    };
    let n = table
        .set(map)
        .map_or(0, |s| prefixed(&s.elements, k).count());
    n > 0 && n.next_power_of_two() == p
}

#[derive(Clone, Debug)]
struct FamState {
    by_port: BTreeMap<ServicePortName, Held>,
    owner: BTreeMap<Key, ServicePortName>,
    /// how many ports hold each ClusterIP
    cluster_ip_refs: BTreeMap<IpAddr, u32>,
    hairpin_refs: BTreeMap<IpAddr, u32>,
    affinity: AffinityParts,
}

/// The transactions of one incremental update, to commit in order.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// new count-class sets and the rules that read them (before anything moves)
    pub pre: Vec<Op>,
    /// everything else
    pub ops: Vec<Op>,
}

/// The desired ruleset, kept up to date by per-service deltas.
#[derive(Clone, Debug)]
pub struct Incremental {
    cfg: BuildConfig,
    ruleset: Ruleset,
    fams: Vec<FamState>,
    /// class-set elements kept one sync longer after a frontend moved to a smaller class
    /// (family index, set, key); see [`super::diff::kept_on_shrink`]
    deferred: Vec<(usize, String, Key)>,
}

fn port_contrib(
    entry: &crate::model::ServiceEntry,
    model: &ProxyModel,
    cfg: &BuildConfig,
    family: Family,
) -> (PortContrib, Vec<(Key, Plan)>) {
    let plans = build::service_plans(entry, &model.node, cfg, family);
    let mut c = PortContrib::default();
    build::cluster_ip_elements(entry, family, &mut c.elements);
    for (k, _) in &plans {
        c.frontends.push(k.clone());
    }
    (c, plans)
}

impl Incremental {
    /// A full build of `model`.
    pub fn full(model: &ProxyModel, cfg: &BuildConfig) -> Incremental {
        let mut fams = Vec::new();
        let mut tables = Vec::new();
        for family in Family::ALL {
            let mut st = FamState {
                by_port: BTreeMap::new(),
                owner: BTreeMap::new(),
                cluster_ip_refs: BTreeMap::new(),
                hairpin_refs: BTreeMap::new(),
                affinity: AffinityParts::default(),
            };
            let mut all_elements = build::BySet::new();
            for (name, entry) in model.claim_order() {
                let (mut c, plans) = port_contrib(entry, model, cfg, family);
                let mut claimed = Vec::new();
                for (k, p) in &plans {
                    if st.owner.contains_key(k) {
                        continue;
                    }
                    st.owner.insert(k.clone(), name.clone());
                    claimed.push(k.clone());
                    build::plan_elements(k, p, &mut c.elements, &mut c.hairpins);
                    build::affinity_parts(k, p, cfg, &mut c.affinity);
                }
                st.affinity.add(&c.affinity);
                c.frontends = claimed;
                for ip in &c.hairpins {
                    *st.hairpin_refs.entry(*ip).or_default() += 1;
                }
                let held = c.held();
                for ip in &held.cluster_ips {
                    *st.cluster_ip_refs.entry(*ip).or_default() += 1;
                }
                build::gather(&mut all_elements, c.elements);
                st.by_port.insert(name.clone(), held);
            }
            let hairpins: BTreeSet<IpAddr> = st.hairpin_refs.keys().copied().collect();
            tables.push(build::assemble(
                family,
                cfg,
                &model.service_cidrs,
                all_elements,
                &hairpins,
                st.affinity.clone(),
            ));
            // Rebuilt with full nodes (grown by inserts, a map's nodes are half full).
            st.by_port = std::mem::take(&mut st.by_port).into_iter().collect();
            st.owner = std::mem::take(&mut st.owner).into_iter().collect();
            st.hairpin_refs = std::mem::take(&mut st.hairpin_refs).into_iter().collect();
            fams.push(st);
        }
        Incremental {
            cfg: cfg.clone(),
            ruleset: Ruleset { tables },
            fams,
            deferred: Vec::new(),
        }
    }

    /// Deletes the class memberships the previous update kept (see
    /// [`super::diff::kept_on_shrink`]); the frontend is in its smaller class by now.
    pub fn take_deferred(&mut self) -> Vec<Op> {
        let mut dels: BTreeMap<(usize, String), Vec<Key>> = BTreeMap::new();
        for (fi, set, key) in std::mem::take(&mut self.deferred) {
            if in_class(&self.ruleset.tables[fi], &set, &key) {
                continue;
            }
            let table = &mut self.ruleset.tables[fi];
            if let Some(s) = table.sets.iter_mut().find(|s| s.decl.name == set) {
                if Arc::make_mut(&mut s.elements).remove(&key).is_some() {
                    dels.entry((fi, set)).or_default().push(key);
                }
            }
        }
        let mut ops = Vec::new();
        for ((fi, set), keys) in dels {
            let table = &self.ruleset.tables[fi];
            if let Some(s) = table.set(&set) {
                ops.push(Op::DelElements(table.family, s.decl.clone(), keys));
            }
        }
        ops
    }

    /// Takes in the elements a full sync's diff kept in the kernel beyond the desired
    /// ruleset (see [`super::diff::kept_on_shrink`]), so that this state is again exactly
    /// what the kernel holds: the next update deletes them (or keeps them when the
    /// frontend grows back into that class).
    pub fn adopt_kept(&mut self, kept: &[super::diff::Kept]) {
        for (family, map, key, value) in kept {
            let Some(fi) = self.ruleset.tables.iter().position(|t| t.family == *family) else {
                continue;
            };
            let table = &mut self.ruleset.tables[fi];
            if let Some(s) = table.sets.iter_mut().find(|s| &s.decl.name == map) {
                Arc::make_mut(&mut s.elements).insert(key.clone(), value.clone());
                self.deferred.push((fi, map.clone(), key.clone()));
            }
        }
    }

    /// The desired ruleset.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// Recomputes the `dirty` service ports of `model` (already updated) and returns the
    /// operations that turn the previous desired ruleset into the new one, or `None`
    /// when the change needs a full build (the state is then unchanged).
    pub fn update(
        &mut self,
        model: &ProxyModel,
        dirty: &BTreeSet<ServicePortName>,
        service_cidrs_changed: bool,
    ) -> Option<Update> {
        if service_cidrs_changed {
            return None;
        }
        // Plan everything first; bail out before touching any state.
        let mut planned: Vec<Vec<(ServicePortName, PortContrib)>> = Vec::new();
        for (fi, family) in Family::ALL.iter().enumerate() {
            let st = &self.fams[fi];
            let mut out = Vec::new();
            let mut claimed: BTreeSet<Key> = BTreeSet::new();
            for name in dirty {
                let Some(entry) = model.services.get(name) else {
                    continue;
                };
                let (mut c, plans) = port_contrib(entry, model, &self.cfg, *family);
                for (k, p) in &plans {
                    let owned_by_other = st
                        .owner
                        .get(k)
                        .is_some_and(|o| o != name && !dirty.contains(o));
                    if owned_by_other || !claimed.insert(k.clone()) {
                        return None;
                    }
                    build::plan_elements(k, p, &mut c.elements, &mut c.hairpins);
                    build::affinity_parts(k, p, &self.cfg, &mut c.affinity);
                }
                out.push((name.clone(), c));
            }
            // A dirty port giving up a frontend another port also wants: full build.
            for name in dirty {
                if let Some(old) = st.by_port.get(name) {
                    for k in &old.frontends {
                        if !claimed.contains(k)
                            && wanted_by_other(model, &self.cfg, *family, k, name, dirty)
                        {
                            return None;
                        }
                    }
                }
            }
            planned.push(out);
        }
        let mut ops = self.take_deferred();
        let mut pre = Vec::new();
        for (fi, family) in Family::ALL.iter().enumerate() {
            let new_contribs = std::mem::take(&mut planned[fi]);
            self.apply_family(fi, *family, dirty, new_contribs, &mut pre, &mut ops);
        }
        Some(Update { pre, ops })
    }

    fn apply_family(
        &mut self,
        fi: usize,
        family: Family,
        dirty: &BTreeSet<ServicePortName>,
        new: Vec<(ServicePortName, PortContrib)>,
        pre: &mut Vec<Op>,
        ops: &mut Vec<Op>,
    ) {
        let st = &mut self.fams[fi];
        let table = &mut self.ruleset.tables[fi];
        // Session-affinity parts of the dirty ports, before and after; the chains and
        // sets they make are brought in line after everything else (see the end).
        let mut affinity = st.affinity.clone();
        let mut affinity_touched = false;
        for name in dirty {
            if let Some(old) = st.by_port.get(name).filter(|c| !c.affinity.is_empty()) {
                affinity.remove(&old.affinity);
                affinity_touched = true;
            }
        }
        for (_, c) in new.iter().filter(|(_, c)| !c.affinity.is_empty()) {
            affinity.add(&c.affinity);
            affinity_touched = true;
        }
        // Retract old contributions.
        let mut before: BTreeMap<(Arc<str>, Key), Option<ElementData>> = BTreeMap::new();
        let mut hp_touched: BTreeSet<IpAddr> = BTreeSet::new();
        let mut owned = Vec::new();
        for name in dirty {
            let Some(old) = st.by_port.remove(name) else {
                continue;
            };
            let mut hairpins = old.hairpins;
            for k in &old.frontends {
                st.owner.remove(k);
                owned.clear();
                owned_elements(table, k, &mut owned);
                for (set, key, e) in owned.drain(..) {
                    hairpins.extend(endpoint_of(&set, &e));
                    before.insert((set, key), Some(e));
                }
            }
            for ip in old.cluster_ips {
                let k = build::cluster_ip_key(ip);
                let cur = table
                    .set(build::names::CLUSTER_IPS)
                    .and_then(|s| s.elements.get(&k))
                    .cloned();
                before
                    .entry((intern(build::names::CLUSTER_IPS), k))
                    .or_insert(cur);
                if let Some(n) = st.cluster_ip_refs.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        st.cluster_ip_refs.remove(&ip);
                    }
                }
            }
            for ip in hairpins {
                hp_touched.insert(ip);
                if let Some(n) = st.hairpin_refs.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        st.hairpin_refs.remove(&ip);
                    }
                }
            }
        }
        // Add new contributions; the first contribution of a key gives its value.
        let mut after: BTreeMap<(Arc<str>, Key), ElementData> = BTreeMap::new();
        for (name, c) in new {
            for k in &c.frontends {
                st.owner.insert(k.clone(), name.clone());
            }
            let held = c.held();
            for ip in &held.cluster_ips {
                *st.cluster_ip_refs.entry(*ip).or_default() += 1;
            }
            for (set, k, e) in c.elements {
                let key = (set, k);
                if !before.contains_key(&key) {
                    let cur = table
                        .set(&key.0)
                        .and_then(|s| s.elements.get(&key.1))
                        .cloned();
                    before.insert(key.clone(), cur);
                }
                after.entry(key).or_insert(e);
            }
            for ip in &c.hairpins {
                hp_touched.insert(*ip);
                *st.hairpin_refs.entry(*ip).or_default() += 1;
            }
            st.by_port.insert(name, held);
        }
        // Final state of each touched key.
        let mut dels: BTreeMap<String, Vec<Key>> = BTreeMap::new();
        let mut adds: BTreeMap<String, Vec<(Key, ElementData)>> = BTreeMap::new();
        for (key, old) in &before {
            // A ClusterIP lives while a port holds it; any other element only while a
            // new contribution makes it (its frontend's port is dirty, so the old
            // contribution is retracted).
            let alive = match key.1.first() {
                Some(Value::Addr(ip)) if &*key.0 == build::names::CLUSTER_IPS => {
                    st.cluster_ip_refs.contains_key(&ip)
                }
                _ => after.contains_key(key),
            };
            let new_val = if alive {
                // Still referenced: by a new contribution (its value) or by an untouched
                // port (the value already in the table).
                after.get(key).cloned().or_else(|| old.clone())
            } else {
                None
            };
            match (old, new_val) {
                (Some(o), Some(n)) if *o == n => {}
                (Some(_), Some(n)) => {
                    dels.entry(key.0.to_string())
                        .or_default()
                        .push(key.1.clone());
                    adds.entry(key.0.to_string())
                        .or_default()
                        .push((key.1.clone(), n));
                }
                (Some(_), None) => dels
                    .entry(key.0.to_string())
                    .or_default()
                    .push(key.1.clone()),
                (None, Some(n)) => adds
                    .entry(key.0.to_string())
                    .or_default()
                    .push((key.1.clone(), n)),
                (None, None) => {}
            }
        }
        for ip in &hp_touched {
            let alive = st.hairpin_refs.contains_key(ip);
            let was = table
                .set(build::names::HAIRPIN)
                .is_some_and(|s| s.elements.contains_key(&build::hairpin_key(*ip)));
            let k = build::hairpin_key(*ip);
            if alive && !was {
                adds.entry(build::names::HAIRPIN.to_string())
                    .or_default()
                    .push((k, ElementData::default()));
            } else if !alive && was {
                dels.entry(build::names::HAIRPIN.to_string())
                    .or_default()
                    .push(k);
            }
        }
        // A frontend that moves to a smaller power-of-two class stays in its old one for
        // one more sync (see `diff::kept_on_shrink`), if that class lives on.
        let live_after = |set: &String| {
            let held = table.set(set).map_or(0, |s| s.elements.len());
            let gone = dels.get(set).map_or(0, Vec::len);
            held + adds.get(set).map_or(0, Vec::len) > gone
        };
        let alive: BTreeSet<String> = dels.keys().filter(|s| live_after(s)).cloned().collect();
        let member = |set: &String, key: &Key, before: bool| {
            if before {
                table.set(set).is_some_and(|s| s.elements.contains_key(key))
            } else {
                after.contains_key(&(intern(set), key.clone()))
            }
        };
        for (set, keys) in dels.iter_mut() {
            let Some((prefix, p)) = [
                build::names::SHORTCUT_PICK_PREFIX,
                build::names::PICK_PREFIX,
            ]
            .into_iter()
            .find_map(|pre| build::class_of(set, pre).map(|p| (pre, p))) else {
                continue;
            };
            if !alive.contains(set) {
                continue;
            }
            let smaller: Vec<String> = (0..p.trailing_zeros())
                .map(|b| format!("{prefix}{}", 1usize << b))
                .collect();
            keys.retain(|k| {
                let moved = smaller.iter().any(|s| member(s, k, false))
                    && !smaller.iter().any(|s| member(s, k, true));
                if moved {
                    self.deferred.push((fi, set.clone(), k.clone()));
                }
                !moved
            });
        }
        // A frontend that gains an eTP=Local shortcut gets it in the preparatory
        // transaction (see `diff::early_shortcuts`).
        let early = early_shortcuts(table, &adds);
        // Apply to the table, creating count-class sets as needed.
        let mut new_sets = Vec::new();
        let counters = self.cfg.service_counters;
        for s in build::class_decls(
            &Dispatch::of_sets(adds.keys().map(String::as_str)),
            counters,
        ) {
            if table.set(&s.decl.name).is_none() {
                new_sets.push(s.decl.clone());
                table.sets.push(s);
            }
        }
        for (set, keys) in &dels {
            if let Some(s) = table.sets.iter_mut().find(|s| &s.decl.name == set) {
                let elements = Arc::make_mut(&mut s.elements);
                for k in keys {
                    elements.remove(k);
                }
            }
        }
        for (set, items) in &adds {
            if let Some(s) = table.sets.iter_mut().find(|s| &s.decl.name == set) {
                let elements = Arc::make_mut(&mut s.elements);
                for (k, e) in items {
                    elements.insert(k.clone(), e.clone());
                }
            }
        }
        // Count classes that emptied go away.
        let emptied: Vec<String> = table
            .sets
            .iter()
            .filter(|s| s.elements.is_empty())
            .filter(|s| super::diff::is_class_set(&s.decl.name))
            .map(|s| s.decl.name.clone())
            .collect();
        table.sets.retain(|s| !emptied.contains(&s.decl.name));
        let after = Dispatch::of_sets(table.sets.iter().map(|s| s.decl.name.as_str()));
        let union = after.union(&Dispatch::of_sets(emptied.iter().map(String::as_str)));
        let cidrs = self.service_cidrs_of(fi);
        let chains_for =
            |d: &Dispatch, st: &FamState| build::chains(family, &self.cfg, &cidrs, d, &st.affinity);
        // A class's chain comes and goes with its set: chains are created before any
        // rule may go to them, and deleted once no rule does.
        let changed_chains = |from: &[Chain], to: &[Chain], out: &mut Vec<Op>| {
            let old = |name: &str| from.iter().find(|o| o.name == name);
            for c in to.iter().filter(|c| old(&c.name).is_none()) {
                out.push(Op::AddChain(
                    family,
                    Chain {
                        rules: Vec::new(),
                        ..c.clone()
                    },
                ));
            }
            for c in to {
                let held = old(&c.name);
                if held.map(|o| &o.rules) != Some(&c.rules) {
                    if held.is_some() {
                        out.push(Op::FlushChain(family, c.name.clone()));
                    }
                    for r in &c.rules {
                        out.push(Op::AddRule(family, c.name.clone(), r.clone()));
                    }
                }
            }
            let gone = || from.iter().filter(|o| !to.iter().any(|c| c.name == o.name));
            for c in gone() {
                out.push(Op::FlushChain(family, c.name.clone()));
            }
            for c in gone() {
                out.push(Op::DelChain(family, c.name.clone()));
            }
        };
        // A new count class gets its set and its rules in an earlier transaction than
        // the elements that move into it: a packet walks the rules of the generation
        // it started in while its set lookups see the current one, so it can meet old
        // rules with new sets; every frontend must then still be in a set some old
        // rule reads.
        let union_chains = if new_sets.is_empty() {
            None
        } else {
            for d in &new_sets {
                pre.push(Op::AddSet(family, d.clone()));
            }
            let u = chains_for(&union, &self.fams[fi]);
            changed_chains(&self.ruleset.tables[fi].chains, &u, pre);
            Some(u)
        };
        let table = &mut self.ruleset.tables[fi];
        for (set, keys) in dels {
            if emptied.contains(&set) || keys.is_empty() {
                continue;
            }
            if let Some(s) = table.set(&set) {
                ops.push(Op::DelElements(family, s.decl.clone(), keys));
            }
        }
        for (set, items) in adds {
            let Some(s) = table.set(&set) else { continue };
            let (first, rest): (Vec<_>, Vec<_>) = items
                .into_iter()
                .partition(|(k, _)| early.contains(&(set.clone(), k.clone())));
            if !first.is_empty() {
                pre.push(Op::AddElements(family, s.decl.clone(), first.into()));
            }
            if !rest.is_empty() {
                ops.push(Op::AddElements(family, s.decl.clone(), rest.into()));
            }
        }
        if !new_sets.is_empty() || !emptied.is_empty() {
            let chains = chains_for(&after, &self.fams[fi]);
            let table = &mut self.ruleset.tables[fi];
            let from = union_chains.unwrap_or_else(|| table.chains.clone());
            changed_chains(&from, &chains, ops);
            table.chains = chains;
            for s in emptied {
                ops.push(Op::DelSet(family, s));
            }
        }
        if affinity_touched {
            self.fams[fi].affinity = affinity;
            let chains = chains_for(&after, &self.fams[fi]);
            self.apply_affinity(fi, chains, ops);
        }
    }

    /// Brings the chains and the affinity sets of table `fi` to `chains` and the
    /// family's affinity parts: the operations of a diff of the two tables without
    /// their elements (the elements are done; affinity sets have none we manage), so
    /// creation comes before use and deletion after the last use, as in a full diff.
    fn apply_affinity(&mut self, fi: usize, chains: Vec<Chain>, ops: &mut Vec<Op>) {
        let table = &mut self.ruleset.tables[fi];
        let shell = |sets: &mut dyn Iterator<Item = &Set>, chains: &[Chain]| Table {
            family: table.family,
            sets: sets
                .map(|s| Set {
                    decl: s.decl.clone(),
                    elements: Default::default(),
                })
                .collect(),
            chains: chains.to_vec(),
        };
        let old = shell(&mut table.sets.iter(), &table.chains);
        let affinity = &self.fams[fi].affinity;
        let new = shell(
            &mut table
                .sets
                .iter()
                .filter(|s| s.decl.timeout.is_none())
                .chain(affinity.sets.values()),
            &chains,
        );
        super::diff::diff(
            Some(super::diff::Known {
                table: &old,
                rules_known: true,
            }),
            &new,
            ops,
        );
        table.sets.retain(|s| s.decl.timeout.is_none());
        table.sets.extend(affinity.sets.values().cloned());
        table.chains = chains;
    }

    /// The ServiceCIDRs as they appear in the table's cluster-ips-check chain.
    fn service_cidrs_of(&self, fi: usize) -> Vec<ipnet::IpNet> {
        let t = &self.ruleset.tables[fi];
        t.chain(build::names::CLUSTER_IPS_CHECK)
            .map(|c| {
                c.rules
                    .iter()
                    .filter_map(|r| match r.0.first() {
                        Some(Stmt::Cidr { net, .. }) => Some(*net),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether a service port other than `name` (and not dirty) plans frontend `k`.
fn wanted_by_other(
    model: &ProxyModel,
    cfg: &BuildConfig,
    family: Family,
    k: &Key,
    name: &ServicePortName,
    dirty: &BTreeSet<ServicePortName>,
) -> bool {
    // Only a ClusterIP, external IP, LB IP or node port can collide; checking the
    // frontend address against every service is linear, but this runs only for the
    // frontends a dirty port gave up, which is rare.
    model.services.iter().any(|(n, e)| {
        n != name
            && !dirty.contains(n)
            && build::service_plans(e, &model.node, cfg, family)
                .iter()
                .any(|(pk, _)| pk == k)
    })
}

/// The additions (by set) that a preparatory transaction makes before the rest: the
/// eTP=Local shortcut of each frontend that `table` (the state before) gives none, as
/// [`super::diff::early_shortcuts`] does for whole tables.
fn early_shortcuts(
    table: &Table,
    adds: &BTreeMap<String, Vec<(Key, ElementData)>>,
) -> BTreeSet<(String, Key)> {
    use build::names::{HAIRPIN, SHORTCUT_ENDPOINTS, SHORTCUT_PICK_PREFIX, SHORTCUT_PREFIX};
    let pick = |name: &str| build::class_of(name, SHORTCUT_PICK_PREFIX).is_some();
    let gaining: BTreeSet<&Key> = adds
        .iter()
        .filter(|(set, _)| pick(set))
        .flat_map(|(_, items)| items.iter().map(|(k, _)| k))
        .filter(|f| {
            !table
                .sets
                .iter()
                .any(|s| pick(&s.decl.name) && s.elements.contains_key(*f))
        })
        .collect();
    let mut out = BTreeSet::new();
    if gaining.is_empty() {
        return out;
    }
    let mut hairpins = BTreeSet::new();
    for (set, items) in adds {
        let shortcut_class = pick(set) || build::class_of(set, SHORTCUT_PREFIX).is_some();
        for (k, e) in items {
            let frontend = if set == SHORTCUT_ENDPOINTS {
                k.without_last()
            } else if shortcut_class {
                k.clone()
            } else {
                continue;
            };
            if gaining.contains(&frontend) {
                if let (true, Some(Value::Addr(ip))) = (set == SHORTCUT_ENDPOINTS, e.data.first()) {
                    hairpins.insert(build::hairpin_key(ip));
                }
                out.insert((set.clone(), k.clone()));
            }
        }
    }
    for (k, _) in adds.get(HAIRPIN).into_iter().flatten() {
        if hairpins.contains(k) {
            out.insert((HAIRPIN.to_string(), k.clone()));
        }
    }
    out
}
