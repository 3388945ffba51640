//! `--init-only` (kube-proxy's privileged init step): writes the conntrack sysctls it is
//! given, programs nothing, exits 0. Run in a network namespace, with
//! `--conntrack-max-per-core=0` so that the one sysctl shared with the host
//! (`nf_conntrack_max`) is left alone; the others are per namespace.

mod common;

use common::{require_privileged, NetNs};

const ESTABLISHED: &str = "net.netfilter.nf_conntrack_tcp_timeout_established";
const LIBERAL: &str = "net.netfilter.nf_conntrack_tcp_be_liberal";

fn sysctl(ns: &NetNs, key: &str) -> String {
    ns.run(&["sysctl", "-n", key]).trim().to_string()
}

#[test]
fn init_only_sets_conntrack_sysctls_and_exits() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("initonly");
    // The conntrack sysctls of a namespace appear once conntrack is in use there.
    ns.run(&["nft", "add table ip knp-ct-probe; add chain ip knp-ct-probe c { type filter hook output priority 0; ct state new accept; }"]);
    ns.run(&["nft", "delete table ip knp-ct-probe"]);
    let before = (sysctl(&ns, ESTABLISHED), sysctl(&ns, LIBERAL));
    assert_ne!(before.0, "7200", "already the value under test");
    ns.proxy(&[
        "--init-only",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=2h0m0s",
        "--conntrack-tcp-timeout-close-wait=0s",
        "--conntrack-tcp-be-liberal",
        "--hostname-override=node1",
    ]);
    assert_eq!(sysctl(&ns, ESTABLISHED), "7200");
    assert_eq!(sysctl(&ns, LIBERAL), "1");
    let tables = ns.run(&["nft", "list", "tables"]);
    assert!(!tables.contains("kube-nft-proxy"), "{tables}");
}
