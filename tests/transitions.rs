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

use kube_nft_proxy::model::ProxyModel;
use kube_nft_proxy::ruleset::build::{build, BuildConfig};
use kube_nft_proxy::ruleset::diff::{self, Op};
use kube_nft_proxy::ruleset::fake::FakeKernel;
use kube_nft_proxy::ruleset::ir::{Family, Stmt};
use kube_nft_proxy::synthetic::{random_entry, random_node, Rng};

mod common;
use common::transitions::{run_history, Mirror};

#[test]
fn every_generated_transaction_is_accepted_by_the_kernel_model() {
    let seeds: u64 = std::env::var("KNP_TRANSITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 1..=seeds {
        run_history(seed, 12, &mut Mirror::None);
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
            ]
            .into(),
            Default::default(),
        )
    };
    assert_eq!(
        errno(
            &mut k,
            &[Op::AddElements(
                Family::V4,
                fw,
                vec![el("0.0.0.0/0"), el("10.96.1.1/32")].into()
            )]
        ),
        Err(libc::EEXIST)
    );
    // Refused means nothing applied.
    assert_eq!(k.table(Family::V4), Some(&t));
}
