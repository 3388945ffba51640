//! Taking a node over from upstream kube-proxy (`--cleanup-kube-proxy`) under a
//! looping client: the topology, the Service, the client and the run, shared by
//! `tests/migration.rs` (kube-proxy's nftables mode) and `tests/migration_iptables.rs`
//! (its iptables and IPVS modes).
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
//! The Service is `default/web`, ClusterIP 172.30.0.10, port `http` 80/TCP → 8080 on
//! three endpoints. The node's default route points at an address nobody holds, so a
//! connection to the ClusterIP that no rule DNATs goes nowhere: every answer proves
//! that some rule set handled it.

// Shared test support: not every test crate uses every helper.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::backends::{sockaddr, tcp_ask_reset, Answer, EmptyAnswer, ServerOpts, Servers};
use super::manifests::{
    clusterip_service_obj, list, named_ports_slice_obj, node_obj, ready_eps, service_cidr_obj,
    TARGET_PORT,
};
use super::monitor::Monitor;
use super::topology::{Setup, Topology, CLUSTER_CIDR, NODE_IP, NODE_NAME};
use super::{join, NetNs, BIN};

pub const CLIENT_IP: &str = "10.0.1.2";
pub const CLUSTER_IP: &str = "172.30.0.10";
pub const SERVICE_CIDR: &str = "172.30.0.0/16";
pub const BACKENDS: [&str; 3] = ["10.0.2.10", "10.0.2.11", "10.0.2.12"];

// ---------------------------------------------------------------------------------
// Topology, servers, manifests

/// The three namespaces (see the top of the file); the node keeps its ICMP rate limit.
pub fn topology(tag: &str) -> Topology {
    Topology::new(
        tag,
        Setup {
            no_icmp_ratelimit: false,
            ..Setup::new(&BACKENDS)
        },
    )
}

/// One TCP listener per backend address, in the backends namespace, until dropped.
/// Declare it after the [`Topology`] so that it is dropped (joined) first.
pub fn start_servers(ns: &NetNs) -> Servers {
    let tcp_only = ServerOpts {
        udp: false,
        report_port: false,
    };
    Servers::start_with(ns, &BACKENDS, TARGET_PORT, tcp_only)
}

/// A new TCP connection to `dst`; reads the backend's answer, then ends the connection
/// with a reset (`SO_LINGER` 0) so that a tight loop leaves no TIME_WAIT behind and
/// cannot run out of ephemeral ports.
pub fn tcp_ask_reset_to(dst: SocketAddr) -> io::Result<Answer> {
    tcp_ask_reset(dst, EmptyAnswer::Unparsed)
}

/// The cluster as a JSON `List` (as `kubectl get -o json` prints it).
pub fn manifests() -> String {
    list(vec![
        node_obj(&[NODE_IP], None),
        service_cidr_obj(&[SERVICE_CIDR]),
        clusterip_service_obj("web", CLUSTER_IP, &[("http", "TCP", 80)]),
        named_ports_slice_obj("web", "web-1", &[("http", "TCP")], &ready_eps(&BACKENDS)),
    ])
}

/// Runs the proxy once in `node` with `extra` flags; returns (success, exit status,
/// stdout and stderr).
pub fn run_proxy_once(node: &NetNs, manifests: &str, extra: &[&str]) -> (bool, String) {
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

/// Control: with no rules at all the ClusterIP goes nowhere, so every answer a test
/// sees comes from a rule set.
pub fn assert_unreachable_without_rules(topo: &Topology) {
    let control = join(
        topo.client
            .spawn(|| tcp_ask_reset_to(sockaddr(CLUSTER_IP, 80))),
    );
    assert!(
        control.is_err(),
        "control: {CLUSTER_IP}:80 answered with no rules on the node: {control:?}"
    );
}

// ---------------------------------------------------------------------------------
// nftables state

/// `nft list tables` in `ns`, as a set of `table FAMILY NAME` lines.
pub fn tables(ns: &NetNs) -> BTreeSet<String> {
    ns.run(&["nft", "list", "tables"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

pub fn table_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("table {n}")).collect()
}

/// `nft -a list table FAMILY NAME` (with handles, so a table that was deleted and
/// re-created, or a chain or rule replaced, would not compare equal).
pub fn list_with_handles(ns: &NetNs, family: &str, name: &str) -> String {
    ns.run(&["nft", "-a", "list", "table", family, name])
}

/// Another program's table, which the takeover must not touch (it does not affect the
/// test's traffic).
pub const KEEPME_RULES: &str = "table inet keepme {
	chain input {
		type filter hook input priority 0; policy accept;
		udp dport 9 drop
	}
}
";

/// Whether a monitor line is about the table `FAMILY NAME` (`add table ip x`,
/// `delete rule ip x chain handle 4`, ...).
pub fn mentions_table(line: &str, family: &str, name: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| w[0] == family && w[1] == name)
}

/// The monitor's record, for failure messages.
pub fn record(transactions: &[Vec<String>]) -> String {
    transactions
        .iter()
        .enumerate()
        .map(|(i, t)| format!("transaction {i}:\n  {}", t.join("\n  ")))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------
// The looping client

pub const BEFORE: usize = 0;
pub const DURING: usize = 1;
pub const AFTER: usize = 2;
pub const PHASES: [&str; 3] = [
    "before the takeover (kube-proxy's rules alone)",
    "while the proxy ran",
    "after the takeover (our rules alone)",
];

/// Shared between the test and its looping client.
#[derive(Default)]
pub struct Progress {
    /// the phase the test is in; a connection counts in the phase it started in
    pub phase: AtomicUsize,
    /// tells the client to stop
    pub stop: AtomicBool,
    /// connections that got a proper answer, per phase
    pub ok: [AtomicUsize; 3],
    /// bit `i`: `BACKENDS[i]` answered, per phase
    pub seen: [AtomicUsize; 3],
    /// connections that failed, all phases
    pub failed: AtomicUsize,
    /// what went wrong, all phases
    pub failures: Mutex<Vec<String>>,
}

impl Progress {
    pub fn seen(&self, phase: usize) -> BTreeSet<&'static str> {
        let bits = self.seen[phase].load(Ordering::SeqCst);
        (0..BACKENDS.len())
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| BACKENDS[i])
            .collect()
    }

    pub fn summary(&self) -> String {
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

    /// Not one connection failed, and before and after the takeover every endpoint
    /// answered and at least [`MIN_OK`] connections succeeded.
    pub fn assert_no_failed_connections(&self) {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert!(
            failures.is_empty(),
            "{} connections failed across the takeover:\n{}",
            failures.len(),
            self.summary()
        );
        for phase in [BEFORE, AFTER] {
            assert!(
                self.seen(phase).len() == BACKENDS.len()
                    && self.ok[phase].load(Ordering::SeqCst) >= MIN_OK,
                "not every endpoint answered, or fewer than {MIN_OK} connections succeeded, {}:\n{}",
                PHASES[phase],
                self.summary()
            );
        }
    }
}

/// Stops the client when dropped (also when an assertion fails).
pub struct StopOnDrop(pub Arc<Progress>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// Loops new TCP connections to the ClusterIP, flat out, until told to stop. A
/// connection succeeds when an endpoint answers and saw the pod's own address (neither
/// rule set masquerades traffic from inside `--cluster-cidr`).
pub fn looping_client(ns: &NetNs, progress: Arc<Progress>) -> JoinHandle<()> {
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
pub const MIN_OK: usize = 200;

/// Waits (bounded, and no longer once a connection failed) until the client has made
/// `MIN_OK` successful connections in `phase` and reached every endpoint in it; returns
/// whether it did.
pub fn wait_for_phase(progress: &Progress, phase: usize) -> bool {
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
// The takeover

/// What [`takeover_under_load`] saw.
pub struct TakeoverRun<T> {
    /// whether the proxy exited 0
    pub ok: bool,
    /// its exit status, stdout and stderr
    pub output: String,
    /// every transaction committed while it ran (`nft monitor`)
    pub transactions: Vec<Vec<String>>,
    /// the client's record (stopped and joined)
    pub progress: Arc<Progress>,
    /// what `inspect` returned right after the proxy exited
    pub inspected: T,
}

/// With the node's leftovers loaded: loops the client until kube-proxy's rules alone
/// have reached every endpoint (panics otherwise), runs the proxy once with
/// `--cleanup-kube-proxy` (and `extra`) under `nft monitor`, calls `inspect` on the
/// node, then keeps the client looping for about a second through our rules alone,
/// and until every endpoint has answered enough times.
pub fn takeover_under_load<T>(
    topo: &Topology,
    manifests: &str,
    extra: &[&str],
    inspect: impl FnOnce(&NetNs) -> T,
) -> TakeoverRun<T> {
    let progress = Arc::new(Progress::default());
    let client = looping_client(&topo.client, progress.clone());
    let stopper = StopOnDrop(progress.clone());

    assert!(
        wait_for_phase(&progress, BEFORE),
        "the client did not reach every endpoint {MIN_OK} times without a failure through kube-proxy's rules:\n{}",
        progress.summary()
    );

    let mut monitor = Monitor::start(&topo.node);
    progress.phase.store(DURING, Ordering::SeqCst);
    let mut args = vec!["--cleanup-kube-proxy"];
    args.extend_from_slice(extra);
    let (ok, output) = run_proxy_once(&topo.node, manifests, &args);
    progress.phase.store(AFTER, Ordering::SeqCst);
    monitor.sync(&topo.node);
    let transactions = monitor.transactions();
    drop(monitor);
    let inspected = inspect(&topo.node);

    std::thread::sleep(Duration::from_secs(1));
    if ok {
        // The outcome is asserted by the caller.
        wait_for_phase(&progress, AFTER);
    }
    drop(stopper);
    join(client);
    eprintln!("{}", progress.summary());
    TakeoverRun {
        ok,
        output,
        transactions,
        progress,
        inspected,
    }
}
