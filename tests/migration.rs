//! Taking a node over from upstream kube-proxy's nftables mode (`--cleanup-kube-proxy`)
//! under real packets.
//!
//! Topology (three network namespaces per test, created and deleted by the test; the
//! same as `netns_clusterip.rs`):
//!
//! ```text
//!  client (a pod)            node (kube-proxy, then we, run here)  backends
//!  eth0 10.0.1.2/24 ---- to-client 10.0.1.1/24
//!  default via 10.0.1.1      to-backends 10.0.2.1/24 ---- eth0 10.0.2.10/24, .11, .12
//!                            ip_forward=1                 default via 10.0.2.1
//!                            default via 10.0.2.254 (no such host)
//! ```
//!
//! The node starts out with the `ip`/`ip6 kube-proxy` tables upstream kube-proxy's
//! nftables mode would have programmed for the Service 172.30.0.10:80 (three endpoints
//! on 8080), loaded with `nft -f`, plus an unrelated `inet keepme` table. The node's
//! default route points at an address nobody holds, so a connection to the ClusterIP
//! that no rule DNATs goes nowhere: every answer proves that some rule set handled it.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use std::io;
use std::net::SocketAddr;

use common::backends::{sockaddr, tcp_ask_reset, Answer, EmptyAnswer, ServerOpts, Servers};
use common::manifests::{
    clusterip_service_obj, list, named_ports_slice_obj, node_obj, ready_eps, service_cidr_obj,
    TARGET_PORT,
};
use common::monitor::Monitor;
use common::topology::{Setup, Topology, CLUSTER_CIDR, NODE_IP, NODE_NAME};
use common::{join, require_privileged, NetNs, TempDir, BIN};

const CLIENT_IP: &str = "10.0.1.2";
const CLUSTER_IP: &str = "172.30.0.10";
const SERVICE_CIDR: &str = "172.30.0.0/16";
const BACKENDS: [&str; 3] = ["10.0.2.10", "10.0.2.11", "10.0.2.12"];

// ---------------------------------------------------------------------------------
// Topology

/// The three namespaces (see the top of the file); the node keeps its ICMP rate limit.
fn topology(tag: &str) -> Topology {
    Topology::new(
        tag,
        Setup {
            no_icmp_ratelimit: false,
            ..Setup::new(&BACKENDS)
        },
    )
}

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

/// Another program's table, which the takeover must not touch (it does not affect the
/// test's traffic).
const KEEPME_RULES: &str = "table inet keepme {
	chain input {
		type filter hook input priority 0; policy accept;
		udp dport 9 drop
	}
}
";

/// Loads kube-proxy's tables and the unrelated `inet keepme` table into the node.
fn load_node_state(node: &NetNs) {
    node.run_with_stdin(&["nft", "-f", "-"], KEEPME_RULES);
    node.run_with_stdin(&["nft", "-f", "-"], &kube_proxy_rules());
}

/// `nft list tables` in `ns`, as a set of `table FAMILY NAME` lines.
fn tables(ns: &NetNs) -> BTreeSet<String> {
    ns.run(&["nft", "list", "tables"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn table_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("table {n}")).collect()
}

/// `nft -a list table FAMILY NAME` (with handles, so a table that was deleted and
/// re-created, or a chain or rule replaced, would not compare equal).
fn list_with_handles(ns: &NetNs, family: &str, name: &str) -> String {
    ns.run(&["nft", "-a", "list", "table", family, name])
}

// ---------------------------------------------------------------------------------
// Backend servers and the client's connections

/// One TCP listener per backend address, in the backends namespace, until dropped.
/// Declare it after the [`Topology`] so that it is dropped (joined) first.
fn start_servers(ns: &NetNs) -> Servers {
    let tcp_only = ServerOpts {
        udp: false,
        report_port: false,
    };
    Servers::start_with(ns, &BACKENDS, TARGET_PORT, tcp_only)
}

/// A new TCP connection to `dst`; reads the backend's answer, then ends the connection
/// with a reset (`SO_LINGER` 0) so that a tight loop leaves no TIME_WAIT behind and
/// cannot run out of ephemeral ports.
fn tcp_ask_reset_to(dst: SocketAddr) -> io::Result<Answer> {
    tcp_ask_reset(dst, EmptyAnswer::Unparsed)
}

// ---------------------------------------------------------------------------------
// Manifests (a JSON `List`, as `kubectl get -o json` prints it)

fn manifests() -> String {
    list(vec![
        node_obj(&[NODE_IP], None),
        service_cidr_obj(&[SERVICE_CIDR]),
        clusterip_service_obj("web", CLUSTER_IP, &[("http", "TCP", 80)]),
        named_ports_slice_obj("web", "web-1", &[("http", "TCP")], &ready_eps(&BACKENDS)),
    ])
}

/// Runs the proxy once in `node` with `extra` flags; returns (success, stderr).
fn run_proxy_once(node: &NetNs, manifests: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        BIN,
        "--manifests",
        manifests,
        "--once",
        "--hostname-override",
        NODE_NAME,
        "--cluster-cidr",
        CLUSTER_CIDR,
    ];
    args.extend_from_slice(extra);
    let out = node
        .command(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the proxy: {e}"));
    (
        out.status.success(),
        format!(
            "{}; stdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// ---------------------------------------------------------------------------------
// The looping client

const BEFORE: usize = 0;
const DURING: usize = 1;
const AFTER: usize = 2;
const PHASES: [&str; 3] = [
    "before the takeover (kube-proxy's rules alone)",
    "while the proxy ran",
    "after the takeover (our rules alone)",
];

/// Shared between the test and its looping client.
#[derive(Default)]
struct Progress {
    /// the phase the test is in; a connection counts in the phase it started in
    phase: AtomicUsize,
    /// tells the client to stop
    stop: AtomicBool,
    /// connections that got a proper answer, per phase
    ok: [AtomicUsize; 3],
    /// bit `i`: `BACKENDS[i]` answered, per phase
    seen: [AtomicUsize; 3],
    /// connections that failed, all phases
    failed: AtomicUsize,
    /// what went wrong, all phases
    failures: Mutex<Vec<String>>,
}

impl Progress {
    fn seen(&self, phase: usize) -> BTreeSet<&'static str> {
        let bits = self.seen[phase].load(Ordering::SeqCst);
        (0..BACKENDS.len())
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| BACKENDS[i])
            .collect()
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        for (p, name) in PHASES.iter().enumerate() {
            s.push_str(&format!(
                "{name}: {} ok, backends {:?}\n",
                self.ok[p].load(Ordering::SeqCst),
                self.seen(p)
            ));
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        s.push_str(&format!("{} failed", failures.len()));
        for f in failures.iter().take(20) {
            s.push_str(&format!("\n  {f}"));
        }
        s
    }
}

/// Stops the client when dropped (also when an assertion fails).
struct StopOnDrop(Arc<Progress>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// Loops new TCP connections to the ClusterIP, flat out, until told to stop. A
/// connection succeeds when an endpoint answers and saw the pod's own address (neither
/// rule set masquerades traffic from inside `--cluster-cidr`).
fn looping_client(ns: &NetNs, progress: Arc<Progress>) -> JoinHandle<()> {
    let dst = sockaddr(CLUSTER_IP, 80);
    ns.spawn(move || {
        // Bounded: `stop` ends it normally; the cap only guards against a hung test.
        for n in 0..2_000_000usize {
            if progress.stop.load(Ordering::SeqCst) {
                break;
            }
            let phase = progress.phase.load(Ordering::SeqCst);
            let failure = match tcp_ask_reset_to(dst) {
                Ok(a) if a.seen_client != CLIENT_IP => {
                    Some(format!("masqueraded: the backend saw {a:?}"))
                }
                Ok(a) => match BACKENDS.iter().position(|b| *b == a.backend) {
                    Some(i) => {
                        progress.seen[phase].fetch_or(1 << i, Ordering::SeqCst);
                        progress.ok[phase].fetch_add(1, Ordering::SeqCst);
                        None
                    }
                    None => Some(format!("answer from a non-endpoint: {a:?}")),
                },
                Err(e) => Some(format!("{e} ({:?})", e.kind())),
            };
            if let Some(f) = failure {
                progress
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("#{n}, {}: {f}", PHASES[phase]));
                progress.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
}

/// Connections per phase (before and after) that must succeed.
const MIN_OK: usize = 200;

/// Waits (bounded, and no longer once a connection failed) until the client has made
/// `MIN_OK` successful connections in `phase` and reached every endpoint in it; returns
/// whether it did.
fn wait_for_phase(progress: &Progress, phase: usize) -> bool {
    for _ in 0..2000 {
        if progress.failed.load(Ordering::SeqCst) > 0 {
            return false;
        }
        if progress.ok[phase].load(Ordering::SeqCst) >= MIN_OK
            && progress.seen(phase).len() == BACKENDS.len()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

// ---------------------------------------------------------------------------------
// Watching the ruleset change

/// Whether a monitor line is about the table `FAMILY NAME` (`add table ip x`,
/// `delete rule ip x chain handle 4`, ...).
fn mentions_table(line: &str, family: &str, name: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| w[0] == family && w[1] == name)
}

/// Checks, from the monitor's record of the proxy's run, that kube-proxy's tables were
/// deleted in one transaction of their own, committed after every change to ours, and
/// that nothing else was touched; panics with the record otherwise.
fn check_takeover_order(transactions: &[Vec<String>]) {
    let record = || {
        transactions
            .iter()
            .enumerate()
            .map(|(i, t)| format!("transaction {i}:\n  {}", t.join("\n  ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
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

    // Control: with no rules at all the ClusterIP goes nowhere, so every answer below
    // comes from a rule set.
    let control = join(
        topo.client
            .spawn(|| tcp_ask_reset_to(sockaddr(CLUSTER_IP, 80))),
    );
    assert!(
        control.is_err(),
        "control: {CLUSTER_IP}:80 answered with no rules on the node: {control:?}"
    );

    load_node_state(&topo.node);
    assert_eq!(
        tables(&topo.node),
        table_set(&["inet keepme", "ip kube-proxy", "ip6 kube-proxy"]),
        "the node's tables before the takeover"
    );
    let keepme_before = list_with_handles(&topo.node, "inet", "keepme");

    let progress = Arc::new(Progress::default());
    let client = looping_client(&topo.client, progress.clone());
    let stopper = StopOnDrop(progress.clone());

    // kube-proxy's rules alone carry the traffic to every endpoint.
    assert!(
        wait_for_phase(&progress, BEFORE),
        "the client did not reach every endpoint {MIN_OK} times without a failure through kube-proxy's rules:\n{}",
        progress.summary()
    );

    let mut monitor = Monitor::start(&topo.node);
    progress.phase.store(DURING, Ordering::SeqCst);
    let (ok, output) = run_proxy_once(&topo.node, &manifests, &["--cleanup-kube-proxy"]);
    progress.phase.store(AFTER, Ordering::SeqCst);
    monitor.sync(&topo.node);
    let transactions = monitor.transactions();
    drop(monitor);
    let after_tables = tables(&topo.node);
    let keepme_after = list_with_handles(&topo.node, "inet", "keepme");

    // Keep looping for about a second through our rules alone, then until every
    // endpoint has answered enough times.
    std::thread::sleep(Duration::from_secs(1));
    if ok {
        // The outcome is asserted below.
        wait_for_phase(&progress, AFTER);
    }
    drop(stopper);
    join(client);
    eprintln!("{}", progress.summary());

    assert!(ok, "the proxy failed: {output}");
    check_takeover_order(&transactions);
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
    let failures = progress
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        failures.is_empty(),
        "{} connections failed across the takeover:\n{}",
        failures.len(),
        progress.summary()
    );
    for phase in [BEFORE, AFTER] {
        assert!(
            progress.seen(phase).len() == BACKENDS.len()
                && progress.ok[phase].load(Ordering::SeqCst) >= MIN_OK,
            "not every endpoint answered, or fewer than {MIN_OK} connections succeeded, {}:\n{}",
            PHASES[phase],
            progress.summary()
        );
    }
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
