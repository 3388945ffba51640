//! Taking a node over from upstream kube-proxy's nftables mode (`--cleanup-kube-proxy`)
//! under real packets.
//!
//! The topology, the Service, the looping client and the run are in
//! `tests/common/takeover.rs` (shared with `tests/migration_iptables.rs`).
//!
//! The node starts out with the `ip`/`ip6 kube-proxy` tables upstream kube-proxy's
//! nftables mode would have programmed for the Service 172.30.0.10:80 (three endpoints
//! on 8080), loaded with `nft -f`, plus an unrelated `inet keepme` table. The node's
//! default route points at an address nobody holds, so a connection to the ClusterIP
//! that no rule DNATs goes nowhere: every answer proves that some rule set handled it.

mod common;

use std::collections::BTreeSet;

use common::backends::sockaddr;
use common::manifests::TARGET_PORT;
use common::takeover::{
    assert_unreachable_without_rules, list_with_handles, manifests, mentions_table, record,
    run_proxy_once, start_servers, table_set, tables, takeover_under_load, tcp_ask_reset_to,
    topology, BACKENDS, CLIENT_IP, CLUSTER_IP, KEEPME_RULES, SERVICE_CIDR,
};
use common::topology::CLUSTER_CIDR;
use common::{join, require_privileged, NetNs, TempDir};

// ---------------------------------------------------------------------------------
// What the node holds before we arrive

/// The `ip`/`ip6 kube-proxy` tables upstream kube-proxy's nftables mode programs for
/// the Service `default/web` (ClusterIP 172.30.0.10, port `http` 80/TCP → 8080 on three
/// endpoints) with `--cluster-cidr 10.0.0.0/16`, as the transaction it sends to
/// `nft -f`.
///
/// This mirrors upstream's layout (kubernetes/kubernetes `pkg/proxy/nftables`: the
/// proxier's base rules and per-service chains as in `TestOverallNFTablesRules`),
/// reduced to what a ClusterIP-only node needs: no NodePort, firewall or affinity
/// objects. Chain names are upstream's: `service-`/`endpoint-` plus the first 8
/// characters of the base32 SHA-256 of the chain's base name (`default/web/tcp/http`,
/// `default/web/tcp/http__10.0.2.10/8080`, ...), then that base name.
fn kube_proxy_rules() -> String {
    let svc = "service-SUSTUHLJ-default/web/tcp/http";
    let eps = [
        "endpoint-GPJJJBF3-default/web/tcp/http__10.0.2.10/8080",
        "endpoint-2KYEDY4A-default/web/tcp/http__10.0.2.11/8080",
        "endpoint-H7K7TIKL-default/web/tcp/http__10.0.2.12/8080",
    ];
    let mut s = String::new();
    let mut add = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };

    // IPv4: the base rules.
    let t = "ip kube-proxy";
    add(format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    add(format!(
        "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    add(format!(
        "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    add(format!(
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    add(format!("add chain {t} cluster-ips-check"));
    add(format!(
        "add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}"
    ));
    add(format!(
        "add chain {t} filter-input {{ type filter hook input priority 0 ; }}"
    ));
    add(format!(
        "add chain {t} filter-output {{ type filter hook output priority 0 ; }}"
    ));
    add(format!("add chain {t} mark-for-masquerade"));
    add(format!("add chain {t} masquerading"));
    add(format!(
        "add chain {t} nat-output {{ type nat hook output priority -100 ; }}"
    ));
    add(format!(
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"
    ));
    add(format!(
        "add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}"
    ));
    add(format!(
        "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    ));
    add(format!("add chain {t} services"));
    add(format!("add chain {t} service-endpoints-check"));
    add(format!(
        "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    ));
    add(format!(
        "add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    ));
    add(format!(
        "add rule {t} filter-forward ct state new jump service-endpoints-check"
    ));
    add(format!(
        "add rule {t} filter-forward ct state new jump cluster-ips-check"
    ));
    add(format!(
        "add rule {t} filter-input ct state new jump service-endpoints-check"
    ));
    add(format!(
        "add rule {t} filter-output ct state new jump service-endpoints-check"
    ));
    add(format!(
        "add rule {t} filter-output ct state new jump cluster-ips-check"
    ));
    add(format!(
        "add rule {t} mark-for-masquerade mark set mark or 0x4000"
    ));
    add(format!(
        "add rule {t} masquerading mark and 0x4000 == 0 return"
    ));
    add(format!(
        "add rule {t} masquerading mark set mark xor 0x4000"
    ));
    add(format!("add rule {t} masquerading masquerade fully-random"));
    add(format!("add rule {t} nat-output jump services"));
    add(format!("add rule {t} nat-postrouting jump masquerading"));
    add(format!("add rule {t} nat-prerouting jump services"));
    add(format!("add rule {t} reject-chain reject"));
    add(format!(
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    ));
    add(format!(
        "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    ));

    // IPv4: the Service's chains and elements.
    for (ep, ip) in eps.iter().zip(BACKENDS) {
        add(format!("add chain {t} {ep}"));
        add(format!(
            "add rule {t} {ep} ip saddr {ip} jump mark-for-masquerade"
        ));
        add(format!(
            "add rule {t} {ep} meta l4proto tcp dnat to {ip}:{TARGET_PORT}"
        ));
    }
    add(format!("add chain {t} {svc}"));
    add(format!(
        "add rule {t} {svc} ip daddr {CLUSTER_IP} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
    ));
    add(format!(
        "add rule {t} {svc} numgen random mod 3 vmap {{ 0 : goto {} , 1 : goto {} , 2 : goto {} }}",
        eps[0], eps[1], eps[2]
    ));
    add(format!("add element {t} cluster-ips {{ {CLUSTER_IP} }}"));
    add(format!(
        "add element {t} service-ips {{ {CLUSTER_IP} . tcp . 80 : goto {svc} }}"
    ));

    // IPv6: the same skeleton, no Service (the cluster is IPv4-only).
    let t = "ip6 kube-proxy";
    add(format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    add(format!(
        "add set {t} cluster-ips {{ type ipv6_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    add(format!(
        "add map {t} service-ips {{ type ipv6_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    add(format!("add chain {t} mark-for-masquerade"));
    add(format!("add chain {t} masquerading"));
    add(format!(
        "add chain {t} nat-output {{ type nat hook output priority -100 ; }}"
    ));
    add(format!(
        "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"
    ));
    add(format!(
        "add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}"
    ));
    add(format!("add chain {t} services"));
    add(format!(
        "add rule {t} mark-for-masquerade mark set mark or 0x4000"
    ));
    add(format!(
        "add rule {t} masquerading mark and 0x4000 == 0 return"
    ));
    add(format!(
        "add rule {t} masquerading mark set mark xor 0x4000"
    ));
    add(format!("add rule {t} masquerading masquerade fully-random"));
    add(format!("add rule {t} nat-output jump services"));
    add(format!("add rule {t} nat-postrouting jump masquerading"));
    add(format!("add rule {t} nat-prerouting jump services"));
    add(format!(
        "add rule {t} services ip6 daddr . meta l4proto . th dport vmap @service-ips"
    ));
    s
}

/// Loads kube-proxy's tables and the unrelated `inet keepme` table into the node.
fn load_node_state(node: &NetNs) {
    node.run_with_stdin(&["nft", "-f", "-"], KEEPME_RULES);
    node.run_with_stdin(&["nft", "-f", "-"], &kube_proxy_rules());
}

// ---------------------------------------------------------------------------------
// Watching the ruleset change

/// Checks, from the monitor's record of the proxy's run, that kube-proxy's tables were
/// deleted in one transaction of their own, committed after every change to ours, and
/// that nothing else was touched; panics with the record otherwise.
fn check_takeover_order(transactions: &[Vec<String>]) {
    let record = || record(transactions);
    let is_ours = |l: &str| {
        mentions_table(l, "ip", "kube-nft-proxy") || mentions_table(l, "ip6", "kube-nft-proxy")
    };
    let is_kube_proxy =
        |l: &str| mentions_table(l, "ip", "kube-proxy") || mentions_table(l, "ip6", "kube-proxy");
    let deletion = transactions
        .iter()
        .position(|t| t.iter().any(|l| l == "delete table ip kube-proxy"))
        .unwrap_or_else(|| {
            panic!(
                "the proxy's run never deleted ip kube-proxy; changes:\n{}",
                record()
            )
        });
    let del = &transactions[deletion];
    assert!(
        del.iter().any(|l| l == "delete table ip6 kube-proxy"),
        "ip6 kube-proxy was not deleted in the same transaction as ip kube-proxy; changes:\n{}",
        record()
    );
    assert!(
        del.iter()
            .all(|l| l.starts_with("delete ") && is_kube_proxy(l)),
        "the transaction deleting kube-proxy's tables did more than that; changes:\n{}",
        record()
    );
    let added = |what: &str| {
        transactions[..deletion]
            .iter()
            .any(|t| t.iter().any(|l| l.starts_with(what)))
    };
    assert!(
        added("add table ip kube-nft-proxy") && added("add table ip6 kube-nft-proxy"),
        "our tables were not committed before kube-proxy's were deleted; changes:\n{}",
        record()
    );
    assert!(
        transactions[deletion..]
            .iter()
            .all(|t| t.iter().all(|l| !is_ours(l))),
        "our tables still changed after kube-proxy's were deleted; changes:\n{}",
        record()
    );
    assert!(
        transactions
            .iter()
            .all(|t| t.iter().all(|l| is_ours(l) || is_kube_proxy(l))),
        "the proxy changed a table that is neither ours nor kube-proxy's; changes:\n{}",
        record()
    );
}

// ---------------------------------------------------------------------------------
// Tests

/// The node runs upstream kube-proxy's nftables rules for a 3-endpoint ClusterIP; a
/// pod loops new TCP connections to it. The proxy runs once with
/// `--cleanup-kube-proxy`: it exits 0, leaves `ip`/`ip6 kube-nft-proxy` and no
/// `kube-proxy` table of either family, leaves `inet keepme` exactly as it was, and not
/// one connection fails before, during or after the takeover; every endpoint answers
/// before (through kube-proxy's rules alone) and after (through ours alone).
#[test]
fn kube_proxy_nftables_takeover_without_failed_connections() {
    if !require_privileged() {
        return;
    }
    let topo = topology("mig");
    let _servers = start_servers(&topo.backends);
    let dir = TempDir::new("mig");
    let manifests = dir.write("cluster.json", &manifests());

    assert_unreachable_without_rules(&topo);

    load_node_state(&topo.node);
    assert_eq!(
        tables(&topo.node),
        table_set(&["inet keepme", "ip kube-proxy", "ip6 kube-proxy"]),
        "the node's tables before the takeover"
    );
    let keepme_before = list_with_handles(&topo.node, "inet", "keepme");

    let run = takeover_under_load(&topo, &manifests, &[], |node| {
        (tables(node), list_with_handles(node, "inet", "keepme"))
    });
    let (after_tables, keepme_after) = run.inspected;

    assert!(run.ok, "the proxy failed: {}", run.output);
    check_takeover_order(&run.transactions);
    for family in ["ip", "ip6"] {
        assert!(
            after_tables.contains(&format!("table {family} kube-nft-proxy")),
            "no {family} kube-nft-proxy table after the takeover: {after_tables:?}"
        );
        assert!(
            !after_tables.contains(&format!("table {family} kube-proxy")),
            "{family} kube-proxy is still there after --cleanup-kube-proxy: {after_tables:?}"
        );
    }
    assert_eq!(
        after_tables,
        table_set(&["inet keepme", "ip kube-nft-proxy", "ip6 kube-nft-proxy"]),
        "the node's tables after the takeover"
    );
    assert_eq!(
        keepme_after, keepme_before,
        "another program's table was changed by the takeover"
    );
    run.progress.assert_no_failed_connections();
}

/// Without `--cleanup-kube-proxy` the proxy programs its own tables and leaves
/// kube-proxy's (and every other) table exactly as it was; traffic keeps flowing with
/// both rule sets in place.
#[test]
fn kube_proxy_tables_left_alone_without_cleanup_flag() {
    if !require_privileged() {
        return;
    }
    let topo = topology("migno");
    let _servers = start_servers(&topo.backends);
    let dir = TempDir::new("migno");
    let manifests = dir.write("cluster.json", &manifests());

    load_node_state(&topo.node);
    let before: Vec<String> = [
        ("ip", "kube-proxy"),
        ("ip6", "kube-proxy"),
        ("inet", "keepme"),
    ]
    .iter()
    .map(|(f, n)| list_with_handles(&topo.node, f, n))
    .collect();

    let (ok, output) = run_proxy_once(&topo.node, &manifests, &[]);
    assert!(ok, "the proxy failed: {output}");

    assert_eq!(
        tables(&topo.node),
        table_set(&[
            "inet keepme",
            "ip kube-proxy",
            "ip kube-nft-proxy",
            "ip6 kube-proxy",
            "ip6 kube-nft-proxy"
        ]),
        "the node's tables after a run without --cleanup-kube-proxy"
    );
    let after: Vec<String> = [
        ("ip", "kube-proxy"),
        ("ip6", "kube-proxy"),
        ("inet", "keepme"),
    ]
    .iter()
    .map(|(f, n)| list_with_handles(&topo.node, f, n))
    .collect();
    assert_eq!(
        after, before,
        "a table that is not ours changed without --cleanup-kube-proxy"
    );

    // Both rule sets in place: every endpoint still answers.
    let seen = join(topo.client.spawn(|| {
        let mut seen = BTreeSet::new();
        for n in 0..200 {
            if seen.len() == BACKENDS.len() {
                break;
            }
            let a = tcp_ask_reset_to(sockaddr(CLUSTER_IP, 80))
                .unwrap_or_else(|e| panic!("connection {n} failed: {e}"));
            assert_eq!(a.seen_client, CLIENT_IP, "masqueraded: {a:?}");
            seen.insert(a.backend);
        }
        seen
    }));
    assert_eq!(
        seen,
        BACKENDS.iter().map(|b| b.to_string()).collect(),
        "endpoints reached with both rule sets in place"
    );
}
