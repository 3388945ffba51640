//! Issue 9, review item: batch sequence numbers restarted at 1 on a long-lived socket.
//! A batch whose replies were not all read (here: tens of thousands of errors overflow
//! the receive buffer, and the read fails with ENOBUFS) left replies behind that carry
//! the same numbers as the next batch's messages; the next commit then took a stale
//! error (or a stale ACK) for its own outcome. Runs in a network namespace of its own.

mod common;

use common::{join, require_privileged, NetNs};
use kube_nft_proxy::netlink::Kernel;
use kube_nft_proxy::ruleset::diff::Op;
use kube_nft_proxy::ruleset::ir::Family;

#[test]
fn a_commit_after_an_overflowed_one_reads_its_own_outcome() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("seq");
    let outcome = join(ns.spawn(|| {
        let mut k = Kernel::open().expect("netlink socket");
        k.apply(&[Op::AddTable(Family::V4)]).expect("add table ip");
        // Every message fails (no such chain): one error reply each, far more than
        // the receive buffer holds.
        let doomed: Vec<Op> = (0..100_000)
            .map(|i| Op::DelChain(Family::V4, format!("missing-{i}")))
            .collect();
        let first = k.apply(&doomed);
        assert!(first.is_err(), "deleting missing chains succeeded");
        // On the same socket, a batch that the kernel accepts.
        let second = k.apply(&[Op::AddTable(Family::V6)]);
        let v6 = k.read(Family::V6).map(|t| t.is_some());
        (
            first
                .err()
                .map(|e| kube_nft_proxy::proxier::error_chain(&e)),
            second.map_err(|e| kube_nft_proxy::proxier::error_chain(&e)),
            v6,
        )
    }));
    let (first, second, v6) = outcome;
    eprintln!("first commit: {first:?}");
    assert!(
        matches!(v6, Ok(true)),
        "the second commit did not create the table: {v6:?}"
    );
    assert!(
        second.is_ok(),
        "the second commit succeeded in the kernel but reported: {second:?}"
    );
}
