//! The random cluster histories of `tests/transitions.rs`, sent to the real kernel.
//!
//! Two network namespaces (one for the daemon's path, one for `--once`'s) receive every
//! transaction that the fake kernel receives, in the same order; the kernel must accept
//! each one the fake accepts, and after every step it must hold exactly what the fake
//! holds (read back through our own read-back). So the fake's model of the kernel's
//! rules is itself checked against the kernel on every run.
//!
//! `KNP_NETNS_TRANSITION_SEEDS=N` runs N seeds (default 200).

mod common;

use common::transitions::{run_history, Mirror};
use common::{join, require_privileged, NetNs};
use std::os::fd::AsRawFd;

use kube_nft_proxy::netlink::Kernel;
use kube_nft_proxy::ruleset::diff::Op;
use kube_nft_proxy::ruleset::ir::Family;

#[test]
fn every_generated_transaction_is_accepted_by_the_real_kernel() {
    if !require_privileged() {
        return;
    }
    let seeds: u64 = std::env::var("KNP_NETNS_TRANSITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let a = NetNs::new("trans-daemon");
    let b = NetNs::new("trans-once");
    let b_path = format!("/var/run/netns/{}", b.name());
    // A netlink socket stays in the namespace it was opened in: open one in `a`, move
    // this thread to `b`, open the other, and run every history from here.
    join(a.spawn(move || {
        let mut daemon = Kernel::open().expect("netlink socket in the daemon's namespace");
        let nsfile = std::fs::File::open(&b_path).expect("open the second namespace");
        // SAFETY: an open nsfs file; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut once = Kernel::open().expect("netlink socket in --once's namespace");
        for seed in 1..=seeds {
            run_history(seed, 12, &mut Mirror::Kernels(&mut daemon, &mut once));
            // Each history starts from an empty kernel.
            for k in [&mut daemon, &mut once] {
                let mut ops = Vec::new();
                for f in Family::ALL {
                    if k.read(f).expect("read back").is_some() {
                        ops.push(Op::DelTable(f));
                    }
                }
                k.apply(&ops).expect("delete our tables");
            }
        }
    }));
}
