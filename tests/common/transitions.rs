//! Random change sequences of a cluster model, and table comparison, for the tests
//! that send every generated transaction to a kernel (fake or real).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube_nft_proxy::model::{ProxyModel, ServicePortName};
use kube_nft_proxy::netlink::{to_known, Kernel};
use kube_nft_proxy::ruleset::build::{build, BuildConfig};
use kube_nft_proxy::ruleset::diff::{self, is_class_set, Known, Op};
use kube_nft_proxy::ruleset::fake::{nat_walk, FakeKernel, Source, Walk};
use kube_nft_proxy::ruleset::incremental::Incremental;
use kube_nft_proxy::ruleset::ir::{
    Chain, ElementData, Family, Key, KeyType, Ruleset, Set, SetDecl, Stmt, Table, Value,
};
use kube_nft_proxy::ruleset::render;
use kube_nft_proxy::synthetic::{random_entry, random_node, Rng};

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

/// The ruleset without the class memberships kept one sync after a frontend moved to
/// a smaller power-of-two class (a frontend in two `pick-P` sets of one dispatch keeps
/// only the smallest; see `diff::kept_on_shrink`).
pub fn without_kept(r: &Ruleset) -> Ruleset {
    let mut r = r.clone();
    for t in &mut r.tables {
        for prefix in ["shortcut-pick-", "pick-"] {
            let class = |name: &str| name.strip_prefix(prefix)?.parse::<usize>().ok();
            let mut smallest: BTreeMap<Key, usize> = BTreeMap::new();
            for s in &t.sets {
                if let Some(p) = class(&s.decl.name) {
                    for k in s.elements.keys() {
                        let e = smallest.entry(k.clone()).or_insert(p);
                        *e = (*e).min(p);
                    }
                }
            }
            for s in &mut t.sets {
                if let Some(p) = class(&s.decl.name) {
                    std::sync::Arc::make_mut(&mut s.elements)
                        .retain(|k, _| smallest.get(k) == Some(&p));
                }
            }
        }
    }
    r
}

fn cfg(rng: &mut Rng) -> BuildConfig {
    BuildConfig {
        masquerade_mark: 1 << 14,
        masquerade_all: rng.one_in(4),
        cluster_cidrs: if rng.one_in(3) {
            vec![]
        } else {
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00:10::/64".parse().unwrap(),
            ]
        },
        pod_interface: None,
        nodeport_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        service_counters: false,
    }
}

/// Where a history is: for messages, and the configuration the invariants need.
struct At<'a> {
    seed: u64,
    step: usize,
    cfg: &'a BuildConfig,
}

fn commit(k: &mut FakeKernel, ops: &[Op], what: &str, at: &At<'_>) {
    let (seed, step) = (at.seed, at.step);
    let before = k.clone();
    if let Err(e) = k.apply(ops) {
        let op = ops
            .get(e.index)
            .map(|o| format!("{o:?}"))
            .unwrap_or_default();
        panic!("seed {seed} step {step}: {what} refused: {e}\n  operation: {op:.600}");
    }
    let touched = touched(ops);
    check_exact(k, touched.as_ref(), what, at);
    check_flip(&before, k, touched.as_ref(), what, at);
}

/// The frontends whose elements a transaction changes, by family; None when it changes
/// rules (then every frontend may walk differently).
fn touched(ops: &[Op]) -> Option<BTreeSet<(Family, Key)>> {
    let mut out = BTreeSet::new();
    let frontend = |d: &SetDecl, k: &Key| -> Option<Key> {
        if d.key == [KeyType::Addr, KeyType::Proto, KeyType::Port] {
            Some(k.clone())
        } else if d.name == "endpoints" || d.name == "shortcut-endpoints" {
            Some(k.without_last())
        } else {
            None
        }
    };
    for op in ops {
        match op {
            Op::AddElements(f, d, items) => {
                out.extend(
                    items
                        .iter()
                        .filter_map(|(k, _)| Some((*f, frontend(d, k)?))),
                );
            }
            Op::DelElements(f, d, keys) => {
                out.extend(keys.iter().filter_map(|k| Some((*f, frontend(d, k)?))));
            }
            Op::AddSet(..) => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Sources of new connections the invariants try in a family: a pod (when the cluster
/// has pod networks), the node itself, and a client elsewhere.
fn sources(cfg: &BuildConfig, family: Family) -> Vec<Source> {
    let mut out = Vec::new();
    if let Some(net) = cfg
        .cluster_cidrs
        .iter()
        .find(|n| Family::of_net(n) == family)
    {
        if let Some(addr) = net.hosts().nth(6) {
            out.push(Source { addr, local: false });
        }
    }
    let (node, remote): (IpAddr, IpAddr) = match family {
        Family::V4 => ([192, 168, 0, 2].into(), [203, 0, 113, 9].into()),
        Family::V6 => (
            "fd00::2".parse().expect("address"),
            "2001:db8::9".parse().expect("address"),
        ),
    };
    out.push(Source {
        addr: node,
        local: true,
    });
    out.push(Source {
        addr: remote,
        local: false,
    });
    out
}

/// Every frontend a table names: the keys of its `address . protocol . port` sets and
/// the frontends of its endpoint maps.
fn frontends(t: &Table, out: &mut BTreeSet<Key>) {
    for s in &t.sets {
        if s.decl.key == [KeyType::Addr, KeyType::Proto, KeyType::Port] {
            out.extend(s.elements.keys().cloned());
        } else if s.decl.name == "endpoints" || s.decl.name == "shortcut-endpoints" {
            out.extend(s.elements.keys().map(Key::without_last));
        }
    }
}

fn walk<'a>(
    rules: &Table,
    sets: &dyn Fn(usize, &str) -> Option<&'a Set>,
    f: &Key,
    src: Source,
) -> Walk {
    nat_walk(rules, sets, f, src).unwrap_or_else(|e| panic!("the nat walk of {f:?}: {e:?}"))
}

/// After every commit, the pick is exact: a frontend whose new connections are DNATed
/// is DNATed always (no probability of leaving without DNAT), through one endpoint map,
/// to each of its indexes there (0..N, nothing else) with probability 1/N.
fn check_exact(k: &FakeKernel, only: Option<&BTreeSet<(Family, Key)>>, what: &str, at: &At<'_>) {
    for f in Family::ALL {
        let Some(t) = k.table(f) else { continue };
        let mut fronts = BTreeSet::new();
        frontends(t, &mut fronts);
        fronts.retain(|x| only.is_none_or(|o| o.contains(&(f, x.clone()))));
        for src in sources(at.cfg, f) {
            for front in &fronts {
                let w = walk(t, &|_, s| t.set(s), front, src);
                let fail = |why: &str| {
                    panic!(
                        "seed {} step {}: after {what}, {front:?} from {src:?}: {why}\n  {w:?}",
                        at.seed, at.step
                    )
                };
                // `--service-counters`: a new connection that is dispatched (DNAT, or
                // to its affinity chain) finds its frontend in exactly one counted set
                // of the nat hook; one that is not (refused later) in none.
                if at.cfg.service_counters && (w.counted - (w.dnat() + w.affinity)).abs() > 1e-9 {
                    fail("counted in the nat hook other than once per dispatched connection");
                }
                if w.affinity > 0.0 || w.dnat() == 0.0 {
                    continue;
                }
                if w.missed > 0.0 {
                    fail("some new connections leave without DNAT");
                }
                let maps: BTreeSet<&String> = w.picks.keys().map(|(m, _, _)| m).collect();
                let [map] = maps.into_iter().collect::<Vec<_>>()[..] else {
                    fail("DNAT through two maps");
                    return;
                };
                let held: BTreeSet<u32> = t
                    .set(map)
                    .map(|s| {
                        s.elements
                            .keys()
                            .filter(|k| k.without_last() == *front)
                            .filter_map(|k| match k.last() {
                                Some(Value::Index(i)) => Some(i),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let n = held.len() as u32;
                if held != (0..n).collect() {
                    fail(&format!("{map} holds indexes {held:?}, not 0..{n}"));
                }
                let picked: BTreeSet<u32> = w.picks.keys().map(|(_, i, _)| *i).collect();
                if picked != held {
                    fail(&format!("picks indexes {picked:?} of {held:?}"));
                }
                let uniform = 1.0 / f64::from(n);
                if w.picks
                    .values()
                    .any(|p| ((p - uniform) / uniform).abs() > 1e-12)
                {
                    fail("the pick is not uniform");
                }
            }
        }
    }
}

/// During every commit: a frontend whose new connections are DNATed before and after
/// it is DNATed by a packet that meets the generation flip between any two of its set
/// lookups (old rules throughout; a set the commit deletes keeps its elements for the
/// old rules that still read it).
fn check_flip(
    before: &FakeKernel,
    after: &FakeKernel,
    only: Option<&BTreeSet<(Family, Key)>>,
    what: &str,
    at: &At<'_>,
) {
    for f in Family::ALL {
        let (Some(old), Some(new)) = (before.table(f), after.table(f)) else {
            continue;
        };
        let mut fronts = BTreeSet::new();
        frontends(old, &mut fronts);
        // A frontend whose elements the commit leaves alone walks as before it, at any
        // cut (the rules are the old ones): `check_exact` covered that state.
        fronts.retain(|x| only.is_none_or(|o| o.contains(&(f, x.clone()))));
        for src in sources(at.cfg, f) {
            for front in &fronts {
                let dnat = |t: &Table| {
                    let w = walk(t, &|_, s| t.set(s), front, src);
                    w.affinity == 0.0 && w.dnat() > 0.0
                };
                if !dnat(old) || !dnat(new) {
                    continue;
                }
                let mut cut = 0;
                loop {
                    let sets = |i: usize, s: &str| {
                        if i < cut {
                            old.set(s)
                        } else {
                            new.set(s).or_else(|| old.set(s))
                        }
                    };
                    let w = walk(old, &sets, front, src);
                    if w.missed > 0.0 {
                        let show = |t: &Table| {
                            let sets: Vec<&String> = t
                                .sets
                                .iter()
                                .filter(|s| s.elements.contains_key(front))
                                .map(|s| &s.decl.name)
                                .collect();
                            let rules = t.chain("services").map(|c| {
                                c.rules
                                    .iter()
                                    .map(|r| render::rule(r, f))
                                    .collect::<Vec<_>>()
                                    .join("\n      ")
                            });
                            format!(
                                "in sets {sets:?}; services:\n      {}",
                                rules.unwrap_or_default()
                            )
                        };
                        panic!(
                            "seed {} step {}: during {what}, {front:?} from {src:?} leaves without DNAT with probability {} when the flip comes before lookup {cut}\n  {w:?}\n  before: {}\n  after: {}",
                            at.seed,
                            at.step,
                            w.missed,
                            show(old),
                            show(new)
                        );
                    }
                    if cut > w.lookups {
                        break;
                    }
                    cut += 1;
                }
            }
        }
    }
}

/// What `netlink::to_known` makes of a kernel table: a chain's rules are known only when
/// their digests are those of the desired chain's rules; otherwise (when it has any)
/// they read back as unknown.
fn as_read_back(held: &Table, desired: &Table) -> Table {
    let mut t = held.clone();
    for c in &mut t.chains {
        if !c.rules.is_empty() && desired.chain(&c.name).map(|d| &d.rules) != Some(&c.rules) {
            c.rules = kube_nft_proxy::ruleset::diff::unknown_rules();
        }
    }
    t
}

/// Commits to the fake and, when there is one, to the real kernel that mirrors it.
fn commit_both(k: &mut FakeKernel, real: Option<&mut Kernel>, ops: &[Op], what: &str, at: &At<'_>) {
    let (seed, step) = (at.seed, at.step);
    commit(k, ops, what, at);
    if let Some(real) = real {
        if let Err(e) = real.apply(ops) {
            panic!(
                "seed {seed} step {step}: {what}: the fake accepted what the kernel refused: {e}"
            );
        }
    }
}

/// Class sets that hold frontends must be read by a rule that was in place before the
/// elements moved (the kernel flips set generations before rule blobs).
fn readable_classes(k: &FakeKernel) -> BTreeSet<(Family, String)> {
    let mut out = BTreeSet::new();
    for f in Family::ALL {
        if let Some(t) = k.table(f) {
            // A table that exists: its packets see old rules for an instant.
            out.insert((f, String::new()));
            for c in &t.chains {
                for r in &c.rules {
                    for s in &r.0 {
                        if let Stmt::Lookup { set, .. } = s {
                            out.insert((f, set.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

fn check_classes_readable(
    before: &BTreeSet<(Family, String)>,
    k: &FakeKernel,
    seed: u64,
    step: usize,
) {
    for f in Family::ALL {
        let Some(t) = k.table(f) else { continue };
        if !before.contains(&(f, String::new())) {
            continue;
        }
        for s in &t.sets {
            if is_class_set(&s.decl.name) && !s.elements.is_empty() {
                assert!(
                    before.contains(&(f, s.decl.name.clone())),
                    "seed {seed} step {step}: {} filled before a rule read it",
                    s.decl.name
                );
            }
        }
    }
}

fn tables(k: &FakeKernel) -> Ruleset {
    Ruleset {
        tables: Family::ALL
            .iter()
            .filter_map(|f| k.table(*f).cloned())
            .collect(),
    }
}

/// The `--once` path: diff whole tables (what the kernel holds → desired), in stages.
fn once(
    k: &mut FakeKernel,
    mut real: Option<&mut Kernel>,
    desired: &Ruleset,
    at: &At<'_>,
) -> Vec<diff::Kept> {
    let (seed, step) = (at.seed, at.step);
    let mut pre = Vec::new();
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for t in &desired.tables {
        // As our read-back knows them: rules only where they are the desired ones.
        let held: Option<Table> = k.table(t.family).map(|h| as_read_back(h, t));
        kept.extend(diff::diff_staged(
            held.as_ref().map(|h| Known {
                table: h,
                rules_known: true,
            }),
            t,
            &mut pre,
            &mut ops,
        ));
    }
    commit_both(k, real.as_deref_mut(), &pre, "--once stage", at);
    let readable = readable_classes(k);
    commit_both(k, real, &ops, "--once main", at);
    check_classes_readable(&readable, k, seed, step);
    kept
}

/// Where the transactions of a history go besides the fake.
pub enum Mirror<'a> {
    /// the fake only
    None,
    /// also real kernels (in namespaces): the daemon's path and `--once`'s path
    Kernels(&'a mut Kernel, &'a mut Kernel),
}

/// Asserts the real kernel holds what the fake holds.
fn same_as_real(k: &FakeKernel, real: &mut Kernel, seed: u64, step: usize) {
    for f in Family::ALL {
        let raw = real
            .read(f)
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: read back: {e}"));
        match (k.table(f), raw) {
            (None, None) => {}
            (Some(t), Some(raw)) => {
                let known = to_known(&raw, f, t);
                let (a, b) = (
                    Ruleset {
                        tables: vec![known],
                    },
                    Ruleset {
                        tables: vec![t.clone()],
                    },
                );
                assert!(
                    normalized(&a) == normalized(&b),
                    "seed {seed} step {step}: the kernel differs from the fake:\n{}",
                    differences(&a, &b)
                );
            }
            (a, b) => panic!(
                "seed {seed} step {step}: table {f:?} in fake: {}, in kernel: {}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
}

/// One random cluster history of `steps` changes, through the daemon's path and
/// `--once`'s path; every transaction goes to a fake kernel (and to real ones when
/// mirrored), and after every step each kernel must hold the full build.
pub fn run_history(seed: u64, steps: usize, mirror: &mut Mirror<'_>) {
    let (mut real_daemon, mut real_cli) = match mirror {
        Mirror::None => (None, None),
        Mirror::Kernels(a, b) => (Some(&mut **a), Some(&mut **b)),
    };
    let mut rng = Rng::new(seed);
    let cfg = BuildConfig {
        // Every other seed with `--service-counters` (counted sets, reordered rules);
        // decided by the seed so that each seed's history stays what it was.
        service_counters: seed % 2 == 0,
        ..cfg(&mut rng)
    };
    let mut model = ProxyModel {
        node: random_node(),
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let n = 2 + rng.below(7);
    for i in 0..n {
        let e = random_entry(&mut rng, i);
        model.services.insert(e.port.name.clone(), e);
    }
    let mut inc = Incremental::full(&model, &cfg);
    let mut daemon = FakeKernel::new();
    let at = At {
        seed,
        step: 0,
        cfg: &cfg,
    };
    let kept = once(&mut daemon, real_daemon.as_deref_mut(), inc.ruleset(), &at);
    assert!(kept.is_empty());
    let mut cli = FakeKernel::new();
    let _ = once(&mut cli, real_cli.as_deref_mut(), inc.ruleset(), &at);
    for step in 1..=steps {
        let at = At {
            seed,
            step,
            cfg: &cfg,
        };
        let dirty: BTreeSet<ServicePortName> = random_step(&mut rng, &mut model, n + 2);
        let full = build(&model, &cfg);
        // The daemon: an increment, or a full build when the builder declines.
        match inc.update(&model, &dirty, false) {
            Some(u) => {
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &u.pre, "increment stage", &at);
                let readable = readable_classes(&daemon);
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &u.ops, "increment", &at);
                check_classes_readable(&readable, &daemon, seed, step);
                let deferred = inc.take_deferred();
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &deferred, "deferred deletes", &at);
            }
            None => {
                // As the daemon's full sync: the new state adopts what the diff kept.
                inc = Incremental::full(&model, &cfg);
                let rd = real_daemon.as_deref_mut();
                let kept = once(&mut daemon, rd, inc.ruleset(), &at);
                inc.adopt_kept(&kept);
            }
        }
        let held = without_kept(&tables(&daemon));
        assert!(
            normalized(&held) == normalized(&full),
            "seed {seed} step {step}: the daemon's kernel differs from the full build:\n{}",
            differences(&held, &full)
        );
        // `--once` with the new objects, from what the previous `--once` left; then again
        // (which deletes what a shrink kept for one sync); then a third time: nothing.
        if let Some(real) = real_daemon.as_deref_mut() {
            same_as_real(&daemon, real, seed, step);
        }
        let _kept = once(&mut cli, real_cli.as_deref_mut(), &full, &at);
        let held = without_kept(&tables(&cli));
        assert!(
            normalized(&held) == normalized(&full),
            "seed {seed} step {step}: --once's kernel differs from the full build:\n{}",
            differences(&held, &full)
        );
        let kept = once(&mut cli, real_cli.as_deref_mut(), &full, &at);
        assert!(
            kept.is_empty(),
            "seed {seed} step {step}: a class membership kept twice"
        );
        let held = tables(&cli);
        assert!(
            normalized(&held) == normalized(&full),
            "seed {seed} step {step}: a second --once does not settle:\n{}",
            differences(&held, &full)
        );
        let mut pre = Vec::new();
        let mut ops = Vec::new();
        for t in &full.tables {
            let held = cli.table(t.family).cloned();
            let _ = diff::diff_staged(
                held.as_ref().map(|h| Known {
                    table: h,
                    rules_known: true,
                }),
                t,
                &mut pre,
                &mut ops,
            );
        }
        assert!(
            pre.is_empty() && ops.is_empty(),
            "seed {seed} step {step}: a settled sync is not empty: {pre:?} {ops:?}"
        );
    }
}
