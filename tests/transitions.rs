//! Every transaction the proxy can generate is asked of a kernel.
//!
//! Random clusters (both families, every Service type, eTP/iTP Local, session affinity,
//! overlapping source ranges, random endpoint conditions) change step by step the way a
//! cluster does: Services arrive and leave, scale from and to zero, change policy. Each
//! step goes through the daemon's path (incremental update, or a full build when the
//! incremental builder declines) and through `--once`'s path (diff of whole tables, in
//! stages) and every transaction is applied, in order, to [`FakeKernel`], which refuses
//! what the kernel refuses with its errno. After each step the fake must hold exactly
//! the full build. `tests/netns_transitions.rs` sends the same sequences to the real
//! kernel.
//!
//! `KNP_TRANSITION_SEEDS=N` runs N seeds (default 300).

use std::collections::BTreeSet;

use kube_nft_proxy::model::{ProxyModel, ServicePortName};
use kube_nft_proxy::ruleset::build::{build, BuildConfig};
use kube_nft_proxy::ruleset::diff::{self, is_class_set, Known, Op};
use kube_nft_proxy::ruleset::fake::FakeKernel;
use kube_nft_proxy::ruleset::incremental::Incremental;
use kube_nft_proxy::ruleset::ir::{Family, Ruleset, Stmt, Table};
use kube_nft_proxy::synthetic::{random_entry, random_node, Rng};

mod common;
use common::transitions::{differences, normalized, random_step, without_padding};

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
fn once(k: &mut FakeKernel, desired: &Ruleset, seed: u64, step: usize) -> Vec<diff::Kept> {
    let mut pre = Vec::new();
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    for t in &desired.tables {
        let held: Option<Table> = k.table(t.family).cloned();
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
    commit(k, &pre, "--once stage", seed, step);
    let readable = readable_classes(k);
    commit(k, &ops, "--once main", seed, step);
    check_classes_readable(&readable, k, seed, step);
    kept
}

fn run_seed(seed: u64) {
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
    let kept = once(&mut daemon, inc.ruleset(), seed, 0);
    assert!(kept.is_empty());
    let mut cli = daemon.clone();
    for step in 1..=12 {
        let dirty: BTreeSet<ServicePortName> = random_step(&mut rng, &mut model, n + 2);
        let full = build(&model, &cfg);
        // The daemon: an increment, or a full build when the builder declines.
        match inc.update(&model, &dirty, false) {
            Some(u) => {
                commit(&mut daemon, &u.pre, "increment stage", seed, step);
                let readable = readable_classes(&daemon);
                commit(&mut daemon, &u.ops, "increment", seed, step);
                check_classes_readable(&readable, &daemon, seed, step);
                let deferred = inc.take_deferred();
                commit(&mut daemon, &deferred, "deferred deletes", seed, step);
            }
            None => {
                // As the daemon's full sync: the new state adopts what the diff kept.
                inc = Incremental::full(&model, &cfg);
                let kept = once(&mut daemon, inc.ruleset(), seed, step);
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
        let _kept = once(&mut cli, &full, seed, step);
        let held = without_padding(&tables(&cli));
        assert!(
            normalized(&held) == normalized(&full),
            "seed {seed} step {step}: --once's kernel differs from the full build:\n{}",
            differences(&held, &full)
        );
        let kept = once(&mut cli, &full, seed, step);
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

#[test]
fn every_generated_transaction_is_accepted_by_the_kernel_model() {
    let seeds: u64 = std::env::var("KNP_TRANSITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 1..=seeds {
        run_seed(seed);
    }
}

/// The fake refuses what the kernel refuses: a rule using a set that is not there, a
/// set still in use, an element twice with two values, overlapping intervals.
#[test]
fn the_kernel_model_refuses_what_the_kernel_refuses() {
    let mut rng = Rng::new(7);
    let mut model = ProxyModel {
        node: random_node(),
        ..Default::default()
    };
    let mut e = random_entry(&mut rng, 0);
    e.port.affinity_timeout = None;
    e.endpoints.truncate(1);
    while e.endpoints.is_empty() {
        e = random_entry(&mut rng, 0);
        e.port.affinity_timeout = None;
        e.endpoints.truncate(1);
    }
    model.services.insert(e.port.name.clone(), e);
    let cfg = BuildConfig::default();
    let rs = build(&model, &cfg);
    let mut k = FakeKernel::new();
    let mut ops = Vec::new();
    for t in &rs.tables {
        diff::diff(None, t, &mut ops);
    }
    k.apply(&ops).expect("a full load is accepted");
    let t = k.table(Family::V4).unwrap().clone();
    let services = t.chain("services").unwrap().rules[0].clone();
    let errno = |k: &mut FakeKernel, ops: &[Op]| k.clone().apply(ops).map_err(|e| e.errno);
    let mut missing = services.clone();
    if let Stmt::Lookup { set, .. } = &mut missing.0[0] {
        *set = "frontends-9".into();
    }
    assert_eq!(
        errno(
            &mut k,
            &[Op::AddRule(Family::V4, "services".into(), missing)]
        ),
        Err(libc::ENOENT)
    );
    assert_eq!(
        errno(&mut k, &[Op::DelSet(Family::V4, "masq-always".into())]),
        Err(libc::EBUSY)
    );
    assert_eq!(
        errno(&mut k, &[Op::DelChain(Family::V4, "masquerading".into())]),
        Err(libc::EBUSY)
    );
    let fw = t.set("firewall-allow").unwrap().decl.clone();
    let el = |net: &str| {
        (
            vec![
                kube_nft_proxy::ruleset::ir::Value::Addr("10.96.1.1".parse().unwrap()),
                kube_nft_proxy::ruleset::ir::Value::Proto(6),
                kube_nft_proxy::ruleset::ir::Value::Port(80),
                kube_nft_proxy::ruleset::ir::Value::Net(net.parse().unwrap()),
            ],
            Default::default(),
        )
    };
    assert_eq!(
        errno(
            &mut k,
            &[Op::AddElements(
                Family::V4,
                fw,
                vec![el("0.0.0.0/0"), el("10.96.1.1/32")]
            )]
        ),
        Err(libc::EEXIST)
    );
    // Refused means nothing applied.
    assert_eq!(k.table(Family::V4), Some(&t));
}
