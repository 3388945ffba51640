//! Random change sequences of a cluster model, and table comparison, for the tests
//! that send every generated transaction to a kernel (fake or real).

use std::collections::BTreeSet;

use kube_nft_proxy::model::{ProxyModel, ServicePortName};
use kube_nft_proxy::netlink::{to_known, Kernel};
use kube_nft_proxy::ruleset::build::{build, BuildConfig};
use kube_nft_proxy::ruleset::diff::{self, is_class_set, Known, Op};
use kube_nft_proxy::ruleset::fake::FakeKernel;
use kube_nft_proxy::ruleset::incremental::Incremental;
use kube_nft_proxy::ruleset::ir::{Chain, ElementData, Family, Key, Ruleset, Stmt, Table};
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
        nodeport_ips: vec!["192.168.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
    }
}

fn commit(k: &mut FakeKernel, ops: &[Op], what: &str, seed: u64, step: usize) {
    if let Err(e) = k.apply(ops) {
        let op = ops
            .get(e.index)
            .map(|o| format!("{o:?}"))
            .unwrap_or_default();
        panic!("seed {seed} step {step}: {what} refused: {e}\n  operation: {op:.600}");
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
fn commit_both(
    k: &mut FakeKernel,
    real: Option<&mut Kernel>,
    ops: &[Op],
    what: &str,
    seed: u64,
    step: usize,
) {
    commit(k, ops, what, seed, step);
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
    seed: u64,
    step: usize,
) -> Vec<diff::Kept> {
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
    commit_both(k, real.as_deref_mut(), &pre, "--once stage", seed, step);
    let readable = readable_classes(k);
    commit_both(k, real, &ops, "--once main", seed, step);
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
    let cfg = cfg(&mut rng);
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
    let kept = once(
        &mut daemon,
        real_daemon.as_deref_mut(),
        inc.ruleset(),
        seed,
        0,
    );
    assert!(kept.is_empty());
    let mut cli = FakeKernel::new();
    let _ = once(&mut cli, real_cli.as_deref_mut(), inc.ruleset(), seed, 0);
    for step in 1..=steps {
        let dirty: BTreeSet<ServicePortName> = random_step(&mut rng, &mut model, n + 2);
        let full = build(&model, &cfg);
        // The daemon: an increment, or a full build when the builder declines.
        match inc.update(&model, &dirty, false) {
            Some(u) => {
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &u.pre, "increment stage", seed, step);
                let readable = readable_classes(&daemon);
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &u.ops, "increment", seed, step);
                check_classes_readable(&readable, &daemon, seed, step);
                let deferred = inc.take_deferred();
                let rd = real_daemon.as_deref_mut();
                commit_both(&mut daemon, rd, &deferred, "deferred deletes", seed, step);
            }
            None => {
                // As the daemon's full sync: the new state adopts what the diff kept.
                inc = Incremental::full(&model, &cfg);
                let rd = real_daemon.as_deref_mut();
                let kept = once(&mut daemon, rd, inc.ruleset(), seed, step);
                inc.adopt_kept(&kept);
            }
        }
        let held = without_padding(&tables(&daemon));
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
        let _kept = once(&mut cli, real_cli.as_deref_mut(), &full, seed, step);
        let held = without_padding(&tables(&cli));
        assert!(
            normalized(&held) == normalized(&full),
            "seed {seed} step {step}: --once's kernel differs from the full build:\n{}",
            differences(&held, &full)
        );
        let kept = once(&mut cli, real_cli.as_deref_mut(), &full, seed, step);
        assert!(
            kept.is_empty(),
            "seed {seed} step {step}: padding kept twice"
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
