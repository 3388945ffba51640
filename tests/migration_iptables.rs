//! Taking a node over from upstream kube-proxy's iptables and IPVS modes
//! (`--cleanup-kube-proxy`) under real packets, with real leftovers: rules loaded with
//! `iptables-nft-restore`, `iptables-legacy-restore` and `ipset restore` into the node's
//! namespace, a link named `kube-ipvs0`.
//!
//! The topology, the Service (`default/web`, ClusterIP 172.30.0.10:80 → three endpoints
//! on 8080), the looping client and the run are in `tests/common/takeover.rs`, shared
//! with `tests/migration.rs`. Each takeover test checks: the proxy exits 0; not one
//! connection fails before, during or after the takeover, and every endpoint answers
//! before (through kube-proxy's rules alone) and after (through ours alone); every
//! chain of kube-proxy and every jump to one is gone; kubelet's own chains
//! (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`, `KUBE-MARK-DROP`),
//! kube-router's network-policy chains and sets (also named `KUBE-*`) and every
//! unrelated rule, chain, table and set are still there; the log's counts match.
//!
//! The kernel these tests were written on has no IPVS and no dummy links: IPVS's part
//! of the DNAT is played by an iptables chain (see [`IPVS_MODE_V4`]), and `kube-ipvs0`
//! is a bridge. The IPVS messages themselves are tested against bytes written from the
//! uapi headers (`src/migrate/ipvs.rs`).

mod common;

use std::process::Stdio;

use common::takeover::{
    assert_unreachable_without_rules, list_with_handles, manifests, record, start_servers,
    table_set, tables, takeover_under_load, topology, BACKENDS, CLUSTER_IP, KEEPME_RULES,
};
use common::topology::{CLUSTER_CIDR, NODE_NAME};
use common::{require_privileged, NetNs, TempDir, BIN};

// ---------------------------------------------------------------------------------
// What the node holds before we arrive

/// kubelet's chains: `KUBE-*`, but not kube-proxy's; the takeover must keep them.
const KUBELET_CHAINS: [&str; 4] = [
    "KUBE-FIREWALL",
    "KUBE-KUBELET-CANARY",
    "KUBE-IPTABLES-HINT",
    "KUBE-MARK-DROP",
];

/// kube-router's network-policy chain prefixes (k3s runs it next to kube-proxy).
const KUBE_ROUTER_PREFIXES: [&str; 3] = ["KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-"];

/// Which of the fixtures' `KUBE-*` chains are kube-proxy's: said here by what they
/// are not (the proxy says it by what they are).
fn is_kube_proxys(chain: &str) -> bool {
    chain.starts_with("KUBE-")
        && !KUBELET_CHAINS.contains(&chain)
        && !KUBE_ROUTER_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// kube-router's set, which its rules below reference: it must survive the takeover.
const KUBE_ROUTER_SET: &str = "KUBE-SRC-ABCDEFGHIJKLMNOP";

fn create_kube_router_set(node: &NetNs) {
    node.run(&["ipset", "create", KUBE_ROUTER_SET, "hash:ip"]);
}

/// kube-router's chains and the jump into them, for a fixture's `filter` table: they
/// must survive the takeover.
const KUBE_ROUTER_DECLS: &str = ":KUBE-NWPLCY-LC6LKJIS3EXL2QBO - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
";
const KUBE_ROUTER_RULES: &str =
    "-A INPUT -m comment --comment \"kube-router netpol\" -j KUBE-ROUTER-INPUT
-A KUBE-NWPLCY-LC6LKJIS3EXL2QBO -m set --match-set KUBE-SRC-ABCDEFGHIJKLMNOP src -j RETURN
-A KUBE-ROUTER-INPUT -s 192.0.2.0/24 -j KUBE-NWPLCY-LC6LKJIS3EXL2QBO
";

/// The chains upstream kube-proxy's iptables mode names for the Service (`KUBE-SVC-`
/// and `KUBE-SEP-` plus 16 characters of a hash, shaped like upstream's).
const SVC: &str = "KUBE-SVC-7RRAOYVM6IVRE2IL";
const SEPS: [&str; 3] = [
    "KUBE-SEP-BZ3XJ5QDF3SFTTL7",
    "KUBE-SEP-NMCLHGTNHXXHIOAV",
    "KUBE-SEP-Y4LYFUFKAOEDHXBN",
];

/// The `nat` rules that send the Service to its endpoints the way iptables mode does:
/// `KUBE-SVC-*` picks an endpoint with `statistic`, each `KUBE-SEP-*` DNATs.
fn service_chains() -> String {
    let mut s = String::new();
    let n = SEPS.len();
    for (i, (sep, ip)) in SEPS.iter().zip(BACKENDS).enumerate() {
        let pick = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.11}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "-A {SVC} -m comment --comment \"default/web:http -> {ip}:8080\"{pick} -j {sep}\n"
        ));
    }
    for (sep, ip) in SEPS.iter().zip(BACKENDS) {
        s.push_str(&format!(
            "-A {sep} -s {ip}/32 -m comment --comment \"default/web:http\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination {ip}:8080\n"
        ));
    }
    s
}

/// The IPv4 rules of upstream kube-proxy's iptables mode for the Service, as
/// `iptables-save` prints them (pkg/proxy/iptables, `TestOverallIPTablesRules`), with
/// kubelet's chains and another program's chain and rules next to them.
fn iptables_mode_v4() -> String {
    let sep_decls: String = SEPS.iter().map(|s| format!(":{s} - [0:0]\n")).collect();
    format!(
        "*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KEEP-ME - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
{KUBE_ROUTER_DECLS}-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A INPUT -p udp -m udp --dport 9 -j KEEP-ME
{KUBE_ROUTER_RULES}-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KEEP-ME -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
{sep_decls}:KUBE-SERVICES - [0:0]
:{SVC} - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {SVC}
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A {SVC} ! -s {CLUSTER_CIDR} -d {CLUSTER_IP}/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ
{}COMMIT
",
        service_chains()
    )
}

/// The IPv6 skeleton of iptables mode on a dual-stack node (the Service is IPv4-only).
const IPTABLES_MODE_V6: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -j KUBE-FIREWALL
-A INPUT -p udp -m udp --dport 9 -j DROP
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
";

/// The IPv4 rules of upstream kube-proxy's IPVS mode (pkg/proxy/ipvs: the jump
/// chains, `KUBE-SERVICES`, `KUBE-POSTROUTING`, the IPVS filter chains, each matching
/// kube-proxy's ipsets), with kubelet's chains and another program's rule.
///
/// In IPVS mode the DNAT itself is IPVS's, at the input hook, for addresses bound to
/// `kube-ipvs0`. This kernel has no IPVS, so in its place the Service goes through
/// iptables mode's `KUBE-SVC-*`/`KUBE-SEP-*` chains, matched through the
/// `KUBE-CLUSTER-IP` set before the rule that accepts the Service's traffic; so the
/// traffic before the takeover depends on a kube-proxy ipset.
fn ipvs_mode_v4() -> String {
    let sep_decls: String = SEPS.iter().map(|s| format!(":{s} - [0:0]\n")).collect();
    format!(
        "*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
{KUBE_ROUTER_DECLS}-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER
-A INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT
-A INPUT -j KUBE-FIREWALL
-A INPUT -m set --match-set keepme-set src -j DROP
{KUBE_ROUTER_RULES}-A FORWARD -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A OUTPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-OUT-FILTER
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
-A KUBE-NODE-PORT -m comment --comment \"Kubernetes health check node port\" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
{sep_decls}:KUBE-SERVICES - [0:0]
:{SVC} - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s {CLUSTER_CIDR} -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment \"in place of IPVS\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j {SVC}
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
{}COMMIT
",
        service_chains()
    )
}

/// kube-proxy's IPVS-mode ipsets for the Service (names and types from
/// pkg/proxy/ipvs/ipset.go), as `ipset save` prints them, another program's set and
/// kube-router's (each referenced by its rule in [`ipvs_mode_v4`]).
fn ipvs_mode_sets() -> String {
    let mut s = format!(
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP {CLUSTER_IP},tcp:80
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535
create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536
add KUBE-IPVS-IPS {CLUSTER_IP}
create keepme-set hash:ip family inet hashsize 1024 maxelem 65536
add keepme-set 192.0.2.1
"
    );
    for b in BACKENDS {
        s.push_str(&format!("add KUBE-LOOP-BACK {b},tcp:8080,{b}\n"));
    }
    s
}

/// kube-proxy's sets in [`ipvs_mode_sets`].
const KUBE_SETS: usize = 6;

// ---------------------------------------------------------------------------------
// Reading the node

/// The tools' privileged tests need besides `nft` and `ip`.
fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools
        .iter()
        .filter(|t| {
            !std::process::Command::new(t)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("KNP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("KNP_REQUIRE_PRIVILEGED=1 but this test cannot run: missing {missing:?} (Debian packages iptables, ipset)");
    }
    eprintln!("skipping: missing {missing:?}");
    false
}

/// `iptables-save` output without comments and counters (the built-in chains' policy
/// counters move with traffic).
fn normalized(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => l[..i].to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// What a save should look like after the takeover: without kube-proxy's chains,
/// their rules and the jumps into them; and (chains, jumps) removed.
fn without_kube_proxy(lines: &[String]) -> (Vec<String>, usize, usize) {
    let mut out = Vec::new();
    let (mut chains, mut jumps) = (0, 0);
    for l in lines {
        if let Some(decl) = l.strip_prefix(':') {
            if is_kube_proxys(decl.split_whitespace().next().unwrap_or("")) {
                chains += 1;
                continue;
            }
        } else if let Some(rule) = l.strip_prefix("-A ") {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if is_kube_proxys(words.first().copied().unwrap_or("")) {
                continue;
            }
            if words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && is_kube_proxys(w[1]))
            {
                jumps += 1;
                continue;
            }
        }
        out.push(l.clone());
    }
    (out, chains, jumps)
}

/// `text` without ANSI escape sequences (the log's colours).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=N` in the proxy's log.
fn logged_count(output: &str, name: &str) -> Option<usize> {
    let key = format!("{name}=");
    strip_ansi(output)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&key))
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

fn assert_logged(output: &str, name: &str, want: usize) {
    assert_eq!(
        logged_count(output, name),
        Some(want),
        "{name} in the proxy's report; output: {output}"
    );
}

/// Saves of both families with one tool set (`iptables-nft` or `iptables-legacy`).
fn saves(node: &NetNs, flavour: &str) -> [Vec<String>; 2] {
    [
        normalized(&node.run(&[&format!("iptables-{flavour}-save")])),
        normalized(&node.run(&[&format!("ip6tables-{flavour}-save")])),
    ]
}

/// Checks that the transactions deleting kube-proxy's iptables-nft chains are one
/// per family, committed after ours, and do nothing but delete.
fn check_one_transaction_per_family(transactions: &[Vec<String>]) {
    for family in ["ip", "ip6"] {
        let prefix = format!("delete chain {family} ");
        let with: Vec<usize> = transactions
            .iter()
            .enumerate()
            .filter(|(_, t)| t.iter().any(|l| l.starts_with(&prefix)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            with.len(),
            1,
            "the {family} KUBE-* chains were not deleted in exactly one transaction; changes:\n{}",
            record(transactions)
        );
        let t = &transactions[with[0]];
        assert!(
            t.iter()
                .all(|l| l.starts_with("delete ") || l.starts_with('#')),
            "the transaction deleting {family} KUBE-* chains did more than delete; changes:\n{}",
            record(transactions)
        );
        assert!(
            transactions[..with[0]]
                .iter()
                .any(|t| t.iter().any(|l| l.starts_with(&format!("add table {family} kube-nft-proxy")))),
            "kube-proxy's {family} chains were deleted before our table was committed; changes:\n{}",
            record(transactions)
        );
    }
}

// ---------------------------------------------------------------------------------
// Tests

/// kube-proxy's iptables mode through iptables-nft (IPv4 with the Service, IPv6
/// skeleton): removed over netlink, one transaction per family, under the looping
/// client; kubelet's chains, another program's chain and rules and `inet keepme` stay;
/// nothing is said about legacy iptables (this node has none).
#[test]
fn iptables_nft_takeover_without_failed_connections() {
    if !require_privileged()
        || !tools_present(&["iptables-nft-restore", "ip6tables-nft-restore", "ipset"])
    {
        return;
    }
    let topo = topology("mipn");
    let _servers = start_servers(&topo.backends);
    let dir = TempDir::new("mipn");
    let manifests = dir.write("cluster.json", &manifests());
    assert_unreachable_without_rules(&topo);

    topo.node.run_with_stdin(&["nft", "-f", "-"], KEEPME_RULES);
    create_kube_router_set(&topo.node);
    topo.node
        .run_with_stdin(&["iptables-nft-restore"], &iptables_mode_v4());
    topo.node
        .run_with_stdin(&["ip6tables-nft-restore"], IPTABLES_MODE_V6);
    let before = saves(&topo.node, "nft");
    let keepme_before = list_with_handles(&topo.node, "inet", "keepme");

    let run = takeover_under_load(&topo, &manifests, &[], |node| {
        (
            saves(node, "nft"),
            list_with_handles(node, "inet", "keepme"),
            tables(node),
        )
    });
    let (after, keepme_after, after_tables) = run.inspected;

    eprintln!("{}", run.output);
    assert!(run.ok, "the proxy failed: {}", run.output);
    let (mut chains, mut jumps) = (0, 0);
    for (i, family) in ["IPv4", "IPv6"].iter().enumerate() {
        let (want, c, j) = without_kube_proxy(&before[i]);
        chains += c;
        jumps += j;
        assert_eq!(
            after[i].join("\n"),
            want.join("\n"),
            "{family} iptables-nft rules after the takeover (kube-proxy's removed, everything else kept)"
        );
    }
    assert!(chains > 20 && jumps > 10, "the fixture lost its leftovers");
    assert_logged(&run.output, "iptables_nft_chains", chains);
    assert_logged(&run.output, "iptables_nft_rules", jumps);
    assert_logged(&run.output, "failed", 0);
    assert!(
        !run.output.contains("legacy iptables"),
        "a node without legacy tables got a word about them: {}",
        run.output
    );
    check_one_transaction_per_family(&run.transactions);
    assert_eq!(
        keepme_after, keepme_before,
        "another program's table changed"
    );
    assert!(
        after_tables.is_superset(&table_set(&[
            "inet keepme",
            "ip kube-nft-proxy",
            "ip nat",
            "ip filter",
            "ip mangle",
            "ip6 nat",
            "ip6 filter"
        ])),
        "tables after the takeover: {after_tables:?}"
    );
    run.progress.assert_no_failed_connections();
}

/// kube-proxy's iptables mode through legacy iptables (xtables): removed with
/// `iptables-legacy-save`/`-restore` under the looping client; kubelet's chains and
/// another program's chain and rules stay.
#[test]
fn iptables_legacy_takeover_without_failed_connections() {
    if !require_privileged()
        || !tools_present(&[
            "iptables-legacy-save",
            "iptables-legacy-restore",
            "ip6tables-legacy-save",
            "ip6tables-legacy-restore",
            "ipset",
        ])
    {
        return;
    }
    let topo = topology("mipl");
    let _servers = start_servers(&topo.backends);
    let dir = TempDir::new("mipl");
    let manifests = dir.write("cluster.json", &manifests());
    assert_unreachable_without_rules(&topo);

    create_kube_router_set(&topo.node);
    topo.node
        .run_with_stdin(&["iptables-legacy-restore"], &iptables_mode_v4());
    topo.node
        .run_with_stdin(&["ip6tables-legacy-restore"], IPTABLES_MODE_V6);
    let before = saves(&topo.node, "legacy");

    let run = takeover_under_load(&topo, &manifests, &[], |node| saves(node, "legacy"));
    let after = run.inspected;

    eprintln!("{}", run.output);
    assert!(run.ok, "the proxy failed: {}", run.output);
    let (mut chains, mut jumps) = (0, 0);
    for (i, family) in ["IPv4", "IPv6"].iter().enumerate() {
        let (want, c, j) = without_kube_proxy(&before[i]);
        chains += c;
        jumps += j;
        assert_eq!(
            after[i].join("\n"),
            want.join("\n"),
            "{family} legacy iptables rules after the takeover (kube-proxy's removed, everything else kept)"
        );
    }
    assert!(chains > 20 && jumps > 10, "the fixture lost its leftovers");
    assert_logged(&run.output, "iptables_legacy_chains", chains);
    assert_logged(&run.output, "iptables_legacy_rules", jumps);
    assert_logged(&run.output, "iptables_nft_chains", 0);
    assert_logged(&run.output, "failed", 0);
    assert_logged(&run.output, "skipped", 0);
    run.progress.assert_no_failed_connections();
}

/// Legacy leftovers on a node whose image has no iptables-legacy tools: the proxy
/// says so (a warning and the report's `skipped`), leaves them as they are, and
/// exits 0.
#[test]
fn legacy_tables_without_tools_are_reported() {
    if !require_privileged() || !tools_present(&["iptables-legacy-restore", "ipset"]) {
        return;
    }
    let node = NetNs::new("mipx");
    let dir = TempDir::new("mipx");
    let manifests = dir.write("cluster.json", &manifests());
    create_kube_router_set(&node);
    node.run_with_stdin(&["iptables-legacy-restore"], &iptables_mode_v4());
    let before = normalized(&node.run(&["iptables-legacy-save"]));

    // `env` (found through the test's PATH) starts the proxy with a PATH where no
    // iptables tool is.
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("mkdir {empty:?}: {e}"));
    let path = format!("PATH={}", empty.display());
    let out = node
        .command(&[
            "env",
            &path,
            BIN,
            "--manifests",
            &manifests,
            "--once",
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--cleanup-kube-proxy",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the proxy: {e}"));
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the proxy failed: {output}");
    assert!(
        output.contains("legacy iptables tables exist (")
            && output.contains("iptables-legacy-save is not installed"),
        "no report of the legacy tables it could not read: {output}"
    );
    assert_logged(&output, "skipped", 1);
    assert_logged(&output, "failed", 0);
    assert_eq!(
        normalized(&node.run(&["iptables-legacy-save"])),
        before,
        "legacy rules changed without the tools"
    );
}

/// kube-proxy's IPVS-mode leftovers: iptables-nft rules matching its ipsets, the
/// ipsets, and `kube-ipvs0` (a bridge here: this kernel has no dummy links) holding the
/// ClusterIP. Under the looping client the rules go first, then the sets (one of them
/// carried the traffic), then the link; another program's set and the rule that
/// references it stay. On a kernel without IPVS, the report says the IPVS step found
/// no IPVS.
#[test]
fn ipvs_mode_ipsets_and_kube_ipvs0_takeover_without_failed_connections() {
    if !require_privileged() || !tools_present(&["iptables-nft-restore", "ipset"]) {
        return;
    }
    let topo = topology("mips");
    let _servers = start_servers(&topo.backends);
    let dir = TempDir::new("mips");
    let manifests = dir.write("cluster.json", &manifests());
    assert_unreachable_without_rules(&topo);

    create_kube_router_set(&topo.node);
    topo.node
        .run_with_stdin(&["ipset", "restore"], &ipvs_mode_sets());
    topo.node
        .run_with_stdin(&["iptables-nft-restore"], &ipvs_mode_v4());
    topo.node
        .ip(&["link", "add", "kube-ipvs0", "type", "bridge"]);
    topo.node.ip(&[
        "addr",
        "add",
        &format!("{CLUSTER_IP}/32"),
        "dev",
        "kube-ipvs0",
    ]);
    let before = normalized(&topo.node.run(&["iptables-nft-save"]));
    let sets_before = topo.node.run(&["ipset", "list", "-n"]);
    assert_eq!(
        sets_before
            .lines()
            .filter(|l| l.starts_with("KUBE-"))
            .count(),
        KUBE_SETS + 1,
        "ipsets before the takeover: {sets_before}"
    );
    let kernel_has_ipvs = topo
        .node
        .command(&["test", "-e", "/proc/net/ip_vs"])
        .status()
        .is_ok_and(|s| s.success());

    let run = takeover_under_load(&topo, &manifests, &["-v", "2"], |node| {
        (
            normalized(&node.run(&["iptables-nft-save"])),
            node.run(&["ipset", "list", "-n"]),
            node.ip(&["-o", "link", "show"]),
        )
    });
    let (after, sets_after, links_after) = run.inspected;

    eprintln!("{}", run.output);
    assert!(run.ok, "the proxy failed: {}", run.output);
    let (want, chains, jumps) = without_kube_proxy(&before);
    assert_eq!(
        after.join("\n"),
        want.join("\n"),
        "iptables-nft rules after the takeover (kube-proxy's removed, everything else kept)"
    );
    let mut sets_after: Vec<&str> = sets_after.lines().map(str::trim).collect();
    sets_after.sort();
    assert_eq!(
        sets_after,
        vec![KUBE_ROUTER_SET, "keepme-set"],
        "ipsets after the takeover"
    );
    assert!(
        !links_after.contains("kube-ipvs0"),
        "kube-ipvs0 is still there: {links_after}"
    );
    assert_logged(&run.output, "iptables_nft_chains", chains);
    assert_logged(&run.output, "iptables_nft_rules", jumps);
    assert_logged(&run.output, "ipsets", KUBE_SETS);
    assert_logged(&run.output, "links", 1);
    assert_logged(&run.output, "ipvs_services", 0);
    assert_logged(&run.output, "failed", 0);
    if kernel_has_ipvs {
        assert_logged(&run.output, "skipped", 0);
    } else {
        assert_logged(&run.output, "skipped", 1);
        assert!(
            run.output.contains("this kernel has no IPVS"),
            "the missing IPVS family was not reported: {}",
            run.output
        );
    }
    run.progress.assert_no_failed_connections();
}
