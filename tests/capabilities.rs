//! The shipped DaemonSet gives the proxy's container `CAP_NET_ADMIN` and no other
//! capability (`daemonset/daemonset.yaml`). Containers cannot run on these machines, so
//! this runs what the image would run, the binary, with exactly that capability set
//! (`setpriv`, as root: the bounding set caps what root's exec gets), and checks that
//! it programs a network namespace; and that without the capability the same command
//! fails, so that the first half shows something.

mod common;

use std::process::Output;

use common::{require_privileged, NetNs, BIN};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/cluster.yaml");
const CAP_NET_ADMIN_BIT: u32 = 12;

/// `setpriv` keeping only `caps` (e.g. `-all,+net_admin`), then `args`, in `ns`.
fn with_caps(ns: &NetNs, caps: &str, args: &[&str]) -> Output {
    let mut all = vec!["setpriv", "--bounding-set", caps, "--inh-caps", caps];
    all.extend_from_slice(args);
    ns.command(&all)
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"))
}

/// The effective capability mask of a process started with `caps`.
fn effective(ns: &NetNs, caps: &str) -> u64 {
    let out = with_caps(ns, caps, &["grep", "^CapEff:", "/proc/self/status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().nth(1).unwrap_or_default();
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("CapEff {text:?}: {e}"))
}

fn once(ns: &NetNs, caps: &str) -> Output {
    with_caps(
        ns,
        caps,
        &[
            BIN,
            "--once",
            "--manifests",
            DEMO,
            "--hostname-override",
            "demo-node",
        ],
    )
}

#[test]
fn programs_a_namespace_with_net_admin_as_its_only_capability() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("caps");
    assert_eq!(
        effective(&ns, "-all,+net_admin"),
        1 << CAP_NET_ADMIN_BIT,
        "setpriv must leave CAP_NET_ADMIN as the only effective capability"
    );
    let out = once(&ns, "-all,+net_admin");
    assert!(
        out.status.success(),
        "--once with CAP_NET_ADMIN only failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = ns.list_table("ip");
    assert!(
        table.contains("chain services") && table.contains("@pick-"),
        "the demo cluster's rules are missing:\n{table}"
    );

    let bare = NetNs::new("nocaps");
    assert_eq!(effective(&bare, "-all"), 0);
    let out = once(&bare, "-all");
    assert!(
        !out.status.success(),
        "--once without any capability succeeded: the check above proves nothing"
    );
    let listed = bare
        .command(&["nft", "list", "tables"])
        .output()
        .expect("run nft");
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("kube-nft-proxy"),
        "a table was created without CAP_NET_ADMIN"
    );
}
