//! Real packets through a ClusterIP programmed by the proxy binary (`--once`).
//!
//! Topology (three network namespaces per test, created and deleted by the test):
//!
//! ```text
//!  client (a pod)            node (the proxy runs here)            backends
//!  eth0 10.0.1.2/24 ---- to-client 10.0.1.1/24
//!  default via 10.0.1.1      to-backends 10.0.2.1/24 ---- eth0 10.0.2.10/24, .11, .12
//!                            ip_forward=1                 default via 10.0.2.1
//!                            default via 10.0.2.254 (no such host)
//! ```
//!
//! The Service's ClusterIP is 172.30.0.10:80; every backend address runs a TCP listener
//! and a UDP socket on 8080 that answer `BACKEND-IP CLIENT-IP-AS-SEEN\n`, so the client
//! learns which endpoint answered and whether it was masqueraded. The node's default
//! route points at an address nobody holds: a packet to a service address the proxy
//! does not handle goes nowhere (a timeout), never to a backend by accident.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::backends::{
    expect_refused, sockaddr, tcp_ask, tcp_ask_reset, udp_ask_from, Answer, EmptyAnswer, Servers,
};
use common::manifests::{
    clusterip_service_obj as service_obj, list, named_ports_slice_obj as slice_obj,
    ready_eps as ready, Ep, TARGET_PORT,
};
use common::topology::{Setup, Topology, NODE_IP};
use common::{join, require_privileged, NetNs, TempDir};
use serde_json::Value;

const CLIENT_IP: &str = "10.0.1.2";
const CLUSTER_IP: &str = "172.30.0.10";
const SERVICE_CIDR: &str = "172.30.0.0/16";
const BACKENDS: [&str; 3] = ["10.0.2.10", "10.0.2.11", "10.0.2.12"];

/// The three namespaces (see the top of the file), with the node's ICMP rate limit off:
/// the refusals are ICMP errors sent by the node.
fn topology(tag: &str) -> Topology {
    Topology::new(tag, Setup::new(&BACKENDS))
}

/// One request datagram to `dst` from a new socket (a new source port: a new conntrack
/// entry unless the kernel hands out a recently used port); returns the answer.
/// `local_port` 0 picks an ephemeral port.
fn udp_ask(dst: SocketAddr, local_port: u16) -> io::Result<Answer> {
    udp_ask_from(sockaddr(CLIENT_IP, local_port), dst)
}

fn node_obj() -> Value {
    common::manifests::node_obj(&[NODE_IP], None)
}

fn service_cidr_obj() -> Value {
    common::manifests::service_cidr_obj(&[SERVICE_CIDR])
}

// ---------------------------------------------------------------------------------
// Tests

/// A 3-endpoint ClusterIP service: over TCP and over UDP, every endpoint answers, only
/// endpoints answer, and they see the pod's own address (no masquerade for pod traffic
/// with `--cluster-cidr`).
#[test]
fn clusterip_reaches_every_backend_over_tcp_and_udp() {
    if !require_privileged() {
        return;
    }
    let topo = topology("all");
    let _servers = Servers::start(&topo.backends, &BACKENDS, TARGET_PORT);
    let dir = TempDir::new("all");
    let ports = [("tcp", "TCP", 80), ("udp", "UDP", 80)];
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(),
            service_cidr_obj(),
            service_obj("web", CLUSTER_IP, &ports),
            slice_obj(
                "web",
                "web-1",
                &[("tcp", "TCP"), ("udp", "UDP")],
                &ready(&BACKENDS),
            ),
        ]),
    );
    topo.program(&manifests);

    let dst = sockaddr(CLUSTER_IP, 80);
    let (tcp_seen, tcp_tries, udp_seen, udp_tries) = join(topo.client.spawn(move || {
        let all: BTreeSet<String> = BACKENDS.iter().map(|s| s.to_string()).collect();
        let mut seen = [BTreeSet::new(), BTreeSet::new()];
        let mut tries = [0usize; 2];
        for (k, udp) in [false, true].into_iter().enumerate() {
            let what = if udp { "UDP" } else { "TCP" };
            while seen[k] != all && tries[k] < 200 {
                tries[k] += 1;
                let answer = if udp { udp_ask(dst, 0) } else { tcp_ask(dst) }.unwrap_or_else(|e| {
                    panic!(
                        "{what} request {} to {dst} failed: {e} ({:?})",
                        tries[k],
                        e.kind()
                    )
                });
                assert!(
                    all.contains(&answer.backend),
                    "{what}: answer from {answer:?}, which is no endpoint"
                );
                assert_eq!(
                    answer.seen_client, CLIENT_IP,
                    "{what}: the backend saw {answer:?}: pod traffic was masqueraded"
                );
                seen[k].insert(answer.backend);
            }
        }
        let [tcp, udp] = seen;
        (tcp, tries[0], udp, tries[1])
    }));
    let all: BTreeSet<String> = BACKENDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        tcp_seen, all,
        "TCP: backends seen in {tcp_tries} connections"
    );
    assert_eq!(udp_seen, all, "UDP: backends seen in {udp_tries} requests");
}

/// Services without a usable endpoint (no slice at all, an empty slice, only non-ready
/// endpoints whose servers do listen) are refused at once, over TCP and UDP; so is a
/// port that a served ClusterIP does not have. A served port of the same setup answers,
/// so the refusals come from the rules, not from a broken topology.
#[test]
fn clusterip_without_endpoints_is_refused() {
    if !require_privileged() {
        return;
    }
    let topo = topology("rej");
    let _servers = Servers::start(&topo.backends, &BACKENDS, TARGET_PORT);
    let dir = TempDir::new("rej");
    let tcp_udp = [("tcp", "TCP", 80), ("udp", "UDP", 80)];
    let tcp_udp_slice = [("tcp", "TCP"), ("udp", "UDP")];
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(),
            service_cidr_obj(),
            service_obj("web", CLUSTER_IP, &[("http", "TCP", 80)]),
            slice_obj("web", "web-1", &[("http", "TCP")], &ready(&BACKENDS)),
            // no EndpointSlice at all
            service_obj("no-slice", "172.30.0.11", &tcp_udp),
            // an EndpointSlice without endpoints
            service_obj("empty-slice", "172.30.0.12", &tcp_udp),
            slice_obj("empty-slice", "empty-slice-1", &tcp_udp_slice, &[]),
            // only endpoints that are neither ready nor serving (their servers listen)
            service_obj("not-ready", "172.30.0.13", &tcp_udp),
            slice_obj(
                "not-ready",
                "not-ready-1",
                &tcp_udp_slice,
                &[
                    Ep {
                        ip: BACKENDS[0],
                        ready: false,
                    },
                    Ep {
                        ip: BACKENDS[1],
                        ready: false,
                    },
                ],
            ),
        ]),
    );
    topo.program(&manifests);

    join(topo.client.spawn(|| {
        let served = tcp_ask(sockaddr(CLUSTER_IP, 80))
            .unwrap_or_else(|e| panic!("control: {CLUSTER_IP}:80 has endpoints but failed: {e}"));
        assert!(
            BACKENDS.contains(&served.backend.as_str()),
            "control: {served:?}"
        );

        for ip in ["172.30.0.11", "172.30.0.12", "172.30.0.13"] {
            expect_refused(tcp_ask(sockaddr(ip, 80)), &format!("TCP {ip}:80"));
            expect_refused(udp_ask(sockaddr(ip, 80), 0), &format!("UDP {ip}:80"));
        }
        // A port the ClusterIP does not serve (cluster-ips-check).
        expect_refused(
            tcp_ask(sockaddr(CLUSTER_IP, 81)),
            &format!("TCP {CLUSTER_IP}:81 (port not in the Service)"),
        );
    }));
}

/// Ready endpoint subsets the churn test cycles through; consecutive subsets (also last
/// to first) share at least one endpoint, and the endpoint count changes between 1, 2
/// and 3 (so frontends move between count classes).
const SUBSETS: [&[usize]; 7] = [&[0, 1, 2], &[1, 2], &[2], &[0, 2], &[0], &[0, 1], &[1]];

/// Version `i` of the churning cluster: its ready endpoints and its manifests.
fn churn_version(i: usize) -> (Vec<&'static str>, String) {
    let subset: Vec<&'static str> = SUBSETS[i % SUBSETS.len()]
        .iter()
        .map(|k| BACKENDS[*k])
        .collect();
    // The port is renamed on every version, in the Service and in its slices.
    let port = if i % 2 == 0 { "http" } else { "web" };
    let mut eps = ready(&subset);
    // Every third version also lists the other backends as not ready.
    if i % 3 == 0 {
        for b in BACKENDS.iter().filter(|b| !subset.contains(b)) {
            eps.push(Ep {
                ip: b,
                ready: false,
            });
        }
    }
    let mut items = vec![
        node_obj(),
        service_cidr_obj(),
        service_obj("web", CLUSTER_IP, &[(port, "TCP", 80), ("dns", "UDP", 80)]),
    ];
    let slice_ports = [(port, "TCP"), ("dns", "UDP")];
    // Every fifth version splits the endpoints over two slices.
    if i % 5 == 0 && eps.len() > 1 {
        let (a, b) = eps.split_at(1);
        items.push(slice_obj("web", "web-a", &slice_ports, a));
        items.push(slice_obj("web", "web-b", &slice_ports, b));
    } else {
        items.push(slice_obj("web", "web-a", &slice_ports, &eps));
    }
    (subset, list(items))
}

/// What a background client did.
struct ClientReport {
    ok: usize,
    failures: Vec<String>,
    seen: BTreeSet<String>,
}

/// Shared between the test and its background clients.
#[derive(Default)]
struct Progress {
    /// the version being applied (or last applied) by the test
    version: AtomicUsize,
    /// exchanges attempted, per client (0: TCP, 1: UDP)
    attempts: [AtomicUsize; 2],
    /// exchanges failed, all clients
    failed: AtomicUsize,
    /// tells the clients to stop
    stop: AtomicBool,
}

/// Loops new connections (TCP) or new-socket requests (UDP) to `dst` until told to
/// stop. TCP runs flat out (connections end with a reset, so ports are not used up) to
/// catch even a short window of inconsistent rules; UDP is paced, because every request
/// from a new port leaves a conntrack entry behind for 30 s.
fn background_client(
    ns: &NetNs,
    dst: SocketAddr,
    udp: bool,
    progress: Arc<Progress>,
) -> JoinHandle<ClientReport> {
    ns.spawn(move || {
        let mut r = ClientReport {
            ok: 0,
            failures: Vec::new(),
            seen: BTreeSet::new(),
        };
        // Bounded: `stop` ends it normally; the cap only guards against a hung test.
        for n in 0..1_000_000usize {
            if progress.stop.load(Ordering::SeqCst) {
                break;
            }
            let version = progress.version.load(Ordering::SeqCst);
            let result = if udp {
                std::thread::sleep(Duration::from_millis(1));
                udp_ask(dst, 0)
            } else {
                tcp_ask_reset(dst, EmptyAnswer::Eof)
            };
            let failure = match result {
                Ok(a) if BACKENDS.contains(&a.backend.as_str()) => {
                    r.ok += 1;
                    r.seen.insert(a.backend);
                    None
                }
                Ok(a) => Some(format!("answer from a non-endpoint: {a:?}")),
                Err(e) => Some(format!("{e} ({:?})", e.kind())),
            };
            if let Some(f) = failure {
                r.failures
                    .push(format!("#{n}, while applying version {version}: {f}"));
                progress.failed.fetch_add(1, Ordering::SeqCst);
            }
            progress.attempts[udp as usize].fetch_add(1, Ordering::SeqCst);
        }
        r
    })
}

/// Waits (bounded) until `counter` reaches `target`; panics if it never does.
fn wait_for(counter: &AtomicUsize, target: usize, what: &str) {
    for _ in 0..1000 {
        if counter.load(Ordering::SeqCst) >= target {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{what} made no progress: {} attempts, waiting for {target}",
        counter.load(Ordering::SeqCst)
    );
}

/// A client loops new TCP connections and new UDP requests to the ClusterIP while the
/// proxy is re-run 100 times with changed objects: endpoints swapped among the three
/// backends (always overlapping), the count class changing, the port renamed in the
/// Service and its slices, not-ready endpoints listed, endpoints split over slices.
/// Every connection and request must succeed. After each run a fresh connection (and a
/// request from a never-used source port) must reach an endpoint of the new version.
#[test]
fn clusterip_survives_endpoint_churn_and_port_rename() {
    if !require_privileged() {
        return;
    }
    const VERSIONS: usize = 100;
    let topo = topology("churn");
    let _servers = Servers::start(&topo.backends, &BACKENDS, TARGET_PORT);
    let dir = TempDir::new("churn");
    let (_, text) = churn_version(0);
    topo.program(&dir.write("cluster.json", &text));

    let dst = sockaddr(CLUSTER_IP, 80);
    let progress = Arc::new(Progress::default());
    let tcp_client = background_client(&topo.client, dst, false, progress.clone());
    let udp_client = background_client(&topo.client, dst, true, progress.clone());

    // Stop the clients also if an assertion below fails.
    struct StopOnDrop(Arc<Progress>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::SeqCst);
        }
    }
    let stopper = StopOnDrop(progress.clone());

    let mut check_failures = Vec::new();
    let mut applied = 0;
    for i in 1..=VERSIONS {
        // Fail fast: the failures are reported below.
        if progress.failed.load(Ordering::SeqCst) > 0 || !check_failures.is_empty() {
            break;
        }
        let before = progress
            .attempts
            .each_ref()
            .map(|a| a.load(Ordering::SeqCst));
        let (subset, text) = churn_version(i);
        progress.version.store(i, Ordering::SeqCst);
        topo.program(&dir.write("cluster.json", &text));
        applied = i;

        // The commit is done: a new connection must use the new endpoints. The UDP
        // request comes from a port below the ephemeral range used by no earlier
        // request, so that no earlier conntrack entry (and its NAT binding) applies.
        let udp_port = 20_000 + i as u16;
        let (tcp, udp) = join(
            topo.client
                .spawn(move || (tcp_ask(dst), udp_ask(dst, udp_port))),
        );
        for (what, r) in [("TCP", tcp), ("UDP", udp)] {
            match r {
                Ok(a) if subset.contains(&a.backend.as_str()) => {}
                Ok(a) => check_failures.push(format!(
                    "version {i} ({subset:?}): {what} answer from {a:?}"
                )),
                Err(e) => check_failures.push(format!("version {i} ({subset:?}): {what}: {e}")),
            }
        }

        // Let both background clients make progress under this version.
        wait_for(&progress.attempts[0], before[0] + 2, "the TCP client");
        wait_for(&progress.attempts[1], before[1] + 2, "the UDP client");
    }
    drop(stopper);
    let tcp = join(tcp_client);
    let udp = join(udp_client);
    eprintln!(
        "{applied} of {VERSIONS} updates applied: TCP {} ok / {} failed, UDP {} ok / {} failed",
        tcp.ok,
        tcp.failures.len(),
        udp.ok,
        udp.failures.len()
    );

    assert!(
        check_failures.is_empty(),
        "after-commit checks failed:\n{}",
        check_failures.join("\n")
    );
    for (what, r) in [("TCP", &tcp), ("UDP", &udp)] {
        assert!(
            r.failures.is_empty(),
            "{what}: {} of {} failed during the updates; first ones:\n{}",
            r.failures.len(),
            r.ok + r.failures.len(),
            r.failures
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            r.ok >= 2 * VERSIONS,
            "{what}: only {} successful exchanges during {VERSIONS} updates",
            r.ok
        );
        assert_eq!(
            r.seen.len(),
            BACKENDS.len(),
            "{what}: backends seen: {:?}",
            r.seen
        );
    }
}
