//! A Service the kernel refuses is held out and everything else is programmed; a sync
//! that fails leaves the kernel as it found it (`Proxier::atomic`, used by `--once`).
//!
//! Every refusal we know how to provoke with an object is caught before it reaches the
//! kernel (tests/netns_hostile.rs), so these tests make the real kernel refuse one
//! Service by giving the proxier a builder that adds, for that Service, a rule jumping
//! to a chain that does not exist (`ENOENT`): the stand-in for a refusal nobody
//! foresaw. The kernel, the checks without commit, the bisection and the commits are
//! the real ones.

mod common;

use common::{join, require_privileged, NetNs};

use kube_nft_proxy::model::ProxyModel;
use kube_nft_proxy::proxier::Proxier;
use kube_nft_proxy::quarantine::Quarantine;
use kube_nft_proxy::ruleset::build::{build, BuildConfig};
use kube_nft_proxy::ruleset::ir::{ElementData, Family, Rule, Ruleset, Stmt, Value, Verdict};
use kube_nft_proxy::synthetic;

/// The port that makes a Service's rules unacceptable to the kernel.
const POISON_PORT: u16 = 6666;

fn cfg() -> BuildConfig {
    BuildConfig {
        masquerade_mark: 1 << 14,
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("static CIDR")],
        pod_interface: None,
        nodeport_ips: vec![],
        service_counters: false,
    }
}

/// `build`, plus one rule per poisoned Service that the kernel refuses.
fn build_poisoned(m: &ProxyModel) -> Ruleset {
    let mut rs = build(m, &cfg());
    let poisoned = m
        .services
        .values()
        .filter(|e| e.port.port == POISON_PORT)
        .count();
    add_refused_rules(&mut rs, poisoned);
    rs
}

fn add_refused_rules(rs: &mut Ruleset, n: usize) {
    if let Some(t) = rs.tables.iter_mut().find(|t| t.family == Family::V4) {
        if let Some(c) = t.chains.iter_mut().find(|c| c.name == "services") {
            for _ in 0..n {
                c.rules.push(Rule(vec![Stmt::Verdict(Verdict::Jump(
                    "no-such-chain".into(),
                ))]));
            }
        }
    }
}

/// 12 Services (`svc0`..`svc11`, ClusterIP 10.96.0.i) with 2 endpoints each; those in
/// `poisoned` use the poison port.
fn cluster(poisoned: &[usize]) -> ProxyModel {
    let mut m = synthetic::model(12, 2);
    for e in m.services.values_mut() {
        if poisoned
            .iter()
            .any(|i| e.port.name.name == format!("svc{i}"))
        {
            e.port.port = POISON_PORT;
        }
    }
    m
}

fn listing(ns: &NetNs) -> String {
    ns.run(&["nft", "list", "ruleset"])
}

#[test]
fn a_refused_service_is_held_out_and_the_rest_is_programmed() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("quarantine");
    let (second_ops, rebuilds, held) = join(ns.spawn(|| {
        let mut p = Proxier::new();
        let mut q = Quarantine::default();
        let mut model = cluster(&[4, 9]);
        let names: Vec<String> = model
            .services
            .values()
            .filter(|e| e.port.port == POISON_PORT)
            .map(|e| format!("{}/{}", e.port.name.namespace, e.port.name.name))
            .collect();
        let (rs, _, problems) = p
            .sync_model(&mut model, &mut q, build_poisoned, |r| r, build_poisoned)
            .expect("everything but the refused Services is programmed");
        assert_eq!(
            rs,
            build(&without_poisoned(cluster(&[4, 9])), &cfg()),
            "the programmed ruleset is the cluster without the refused Services"
        );
        let mut held: Vec<String> = q.services().map(|s| s.to_string()).collect();
        held.sort();
        let mut want = names.clone();
        want.sort();
        assert_eq!(held, want, "exactly the refused Services are held");
        assert_eq!(
            problems.len(),
            2,
            "one problem per held Service: {problems:?}"
        );
        assert!(problems.iter().all(|p| p.reason.contains("kernel refused")));

        // The same cluster again: the held Services stay out without asking the kernel
        // about them again, and nothing is committed.
        let rebuilds = p.rebuilds();
        let mut model = cluster(&[4, 9]);
        let (_, report, _) = p
            .sync_model(&mut model, &mut q, build_poisoned, |r| r, build_poisoned)
            .expect("second sync");
        let second = (report.ops, p.rebuilds() - rebuilds);

        // One held Service is fixed (its port changes): it is tried and programmed; the
        // other stays held.
        let mut model = cluster(&[9]);
        p.sync_model(&mut model, &mut q, build_poisoned, |r| r, build_poisoned)
            .expect("third sync");
        let held_after: Vec<String> = q.services().map(|s| s.to_string()).collect();
        (second.0, second.1, (held_after, want))
    }));
    assert_eq!(second_ops, 0, "an unchanged cluster commits nothing");
    assert_eq!(
        rebuilds, 0,
        "held Services are not tried again while unchanged"
    );
    let (held_after, want) = held;
    assert_eq!(held_after.len(), 1, "the fixed Service is released");
    assert!(want.contains(&held_after[0]));
    let text = listing(&ns);
    // Service 4 (fixed) and a never-poisoned one are in the kernel; 9 is not.
    for (i, present) in [(4u32, true), (0, true), (9, false)] {
        let vip = format!("10.96.0.{i} . tcp . ");
        assert_eq!(
            text.contains(&vip),
            present,
            "Service {i} programmed: {present}\n{text}"
        );
    }
}

#[test]
fn a_failed_atomic_sync_leaves_the_kernel_as_found() {
    if !require_privileged() {
        return;
    }
    for atomic in [true, false] {
        let ns = NetNs::new("atomic");
        join(ns.spawn(move || {
            let mut p = Proxier::new();
            p.sync_ref(&build(&cluster(&[]), &cfg()), true)
                .expect("first sync");
        }));
        let found = listing(&ns);
        let failed = join(ns.spawn(move || {
            let mut p = if atomic {
                Proxier::atomic()
            } else {
                Proxier::new()
            };
            // A Service with a new endpoint count needs a preparatory transaction (its
            // count class); the main one is refused: it adds an element with an IPv6
            // key to an IPv4 set that exists already (EINVAL).
            let mut m = cluster(&[]);
            if let Some(e) = m.services.values_mut().next() {
                e.endpoints.push(synthetic::endpoint(0, 7));
            }
            let mut rs = build(&m, &cfg());
            let set = rs
                .tables
                .iter_mut()
                .filter(|t| t.family == Family::V4)
                .flat_map(|t| t.sets.iter_mut())
                .find(|s| s.decl.name == "pick-2")
                .expect("the class of the other Services");
            std::sync::Arc::make_mut(&mut set.elements).insert(
                vec![
                    Value::Addr("fd00::1".parse().expect("static address")),
                    Value::Proto(6),
                    Value::Port(80),
                ]
                .into(),
                ElementData::default(),
            );
            let plan = p.plan(&rs, true).expect("plan");
            assert!(!plan.pre.is_empty(), "the sync needs two transactions");
            p.sync_ref(&rs, true).is_err()
        }));
        assert!(failed, "the sync must fail");
        let after = listing(&ns);
        if atomic {
            assert_eq!(found, after, "an atomic sync that fails changes nothing");
        } else {
            // Shows what the atomic mode prevents: the preparatory transaction stays.
            assert_ne!(
                found, after,
                "without it the new count class is left behind"
            );
        }
    }
}

/// A model without its poisoned Services.
fn without_poisoned(mut m: ProxyModel) -> ProxyModel {
    m.services.retain(|_, e| e.port.port != POISON_PORT);
    m
}
