//! Service semantics with real packets through rules the proxy binary programs
//! (`--once`): session affinity, topology hints, terminating endpoints, dual-stack and
//! externalTrafficPolicy.
//!
//! Topology (three network namespaces per test, created and deleted by the test):
//!
//! ```text
//!  client                    node (the proxy runs here)            backends
//!  eth0 CLIENT/24 ------ to-client GATEWAY/24
//!  default via GATEWAY       to-backends 10.0.2.1/24 ---- eth0 10.0.2.10/24, .11, ...
//!                            ip_forward=1                 default via 10.0.2.1
//!                            default via 10.0.2.254 (no such host)
//! ```
//!
//! The client network is 10.0.1.0/24 (a pod network, inside `--cluster-cidr`
//! 10.0.0.0/16) except for the externalTrafficPolicy test, where it is 203.0.113.0/24
//! (outside it: an external client). The dual-stack test adds fd00:10:1::/64 on the
//! client side and fd00:10:2::/64 on the backend side (`--cluster-cidr` fd00:10::/32).
//!
//! Every backend address runs a TCP listener and a UDP socket on 8080 that answer
//! `BACKEND-IP CLIENT-IP-AS-SEEN\n`, so the client learns which endpoint answered and
//! whether it was masqueraded. The node's default route points at an address nobody
//! holds: a packet the proxy does not handle goes nowhere (a timeout), never to a backend
//! by accident.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{join, require_privileged, veth, NetNs, TempDir};
use serde_json::{json, Value};

/// Socket timeout for every client and server operation.
const TIMEOUT: Duration = Duration::from_secs(2);
const NODE_NAME: &str = "node1";
/// The node's address on the backend network: its InternalIP (primary node IP).
const NODE_IP: &str = "10.0.2.1";
const NODE_IP6: &str = "fd00:10:2::1";
const SERVICE_CIDR: &str = "172.30.0.0/16";
const SERVICE_CIDR6: &str = "fd00:30::/112";
const CLUSTER_CIDR: &str = "10.0.0.0/16";
const CLUSTER_CIDR6: &str = "fd00:10::/32";
const TARGET_PORT: u16 = 8080;
const BACKENDS: [&str; 4] = ["10.0.2.10", "10.0.2.11", "10.0.2.12", "10.0.2.13"];
const BACKENDS6: [&str; 2] = ["fd00:10:2::10", "fd00:10:2::11"];
/// A pod client (inside `--cluster-cidr`).
const POD_CLIENT: Net = Net {
    client: "10.0.1.2",
    gateway: "10.0.1.1",
};
/// An external client (outside `--cluster-cidr`).
const EXTERNAL_CLIENT: Net = Net {
    client: "203.0.113.2",
    gateway: "203.0.113.1",
};
const CLIENT6: &str = "fd00:10:1::2";
const GATEWAY6: &str = "fd00:10:1::1";

fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("IP literal"), port)
}

fn strings(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------
// Topology

/// The client's IPv4 network: its address and the node's address (/24) facing it.
#[derive(Clone, Copy)]
struct Net {
    client: &'static str,
    gateway: &'static str,
}

struct Topology {
    client: NetNs,
    node: NetNs,
    backends: NetNs,
    dual_stack: bool,
}

impl Topology {
    /// Builds the three namespaces; `dual_stack` adds the IPv6 networks (and waits
    /// until duplicate address detection is over, so every address is usable).
    fn new(tag: &str, net: Net, dual_stack: bool) -> Topology {
        let t = Topology {
            client: NetNs::new(&format!("{tag}-c")),
            node: NetNs::new(&format!("{tag}-n")),
            backends: NetNs::new(&format!("{tag}-b")),
            dual_stack,
        };
        veth(&t.client, "eth0", &t.node, "to-client");
        veth(&t.node, "to-backends", &t.backends, "eth0");

        t.client
            .ip(&["addr", "add", &format!("{}/24", net.client), "dev", "eth0"]);
        t.client
            .ip(&["route", "add", "default", "via", net.gateway]);

        t.node.ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            "to-client",
        ]);
        t.node.ip(&[
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "to-backends",
        ]);
        t.node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.0.2.254",
            "dev",
            "to-backends",
        ]);
        t.node.sysctl("net.ipv4.ip_forward=1");
        // The refusals are ICMP errors sent by the node; its per-destination ICMP rate
        // limit must not swallow any of them.
        t.node.sysctl("net.ipv4.icmp_ratelimit=0");

        for b in BACKENDS {
            t.backends
                .ip(&["addr", "add", &format!("{b}/24"), "dev", "eth0"]);
        }
        t.backends.ip(&["route", "add", "default", "via", NODE_IP]);

        if dual_stack {
            let add6 = |ns: &NetNs, addr: &str, dev: &str| {
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
            };
            add6(&t.client, CLIENT6, "eth0");
            t.client
                .ip(&["-6", "route", "add", "default", "via", GATEWAY6]);
            add6(&t.node, GATEWAY6, "to-client");
            add6(&t.node, NODE_IP6, "to-backends");
            t.node.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:10:2::254",
                "dev",
                "to-backends",
            ]);
            t.node.sysctl("net.ipv6.conf.all.forwarding=1");
            t.node.sysctl("net.ipv6.icmp.ratelimit=0");
            for b in BACKENDS6 {
                add6(&t.backends, b, "eth0");
            }
            t.backends
                .ip(&["-6", "route", "add", "default", "via", NODE_IP6]);
            // The link-local addresses still go through DAD.
            for ns in [&t.client, &t.node, &t.backends] {
                wait_no_tentative(ns);
            }
        }
        t
    }

    /// Runs the proxy once in the node namespace on `manifests`, with the pod networks
    /// of the families in use as `--cluster-cidr`.
    fn program(&self, manifests: &str) {
        let cidrs = if self.dual_stack {
            format!("{CLUSTER_CIDR},{CLUSTER_CIDR6}")
        } else {
            CLUSTER_CIDR.to_string()
        };
        self.node.proxy(&[
            "--manifests",
            manifests,
            "--once",
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            &cidrs,
        ]);
    }

    /// The node's ruleset, for failure messages.
    fn ruleset(&self) -> String {
        self.node.run(&["nft", "list", "ruleset"])
    }
}

/// Waits (bounded: 10 s) until no IPv6 address of `ns` is tentative.
fn wait_no_tentative(ns: &NetNs) {
    for _ in 0..100 {
        if ns
            .ip(&["-6", "addr", "show", "tentative"])
            .trim()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{}: IPv6 addresses still tentative after 10 s:\n{}",
        ns.name(),
        ns.ip(&["-6", "addr", "show"])
    );
}

// ---------------------------------------------------------------------------------
// Backend servers

/// One TCP listener and one UDP socket per address, in the backends namespace, until
/// dropped. Declare it after the [`Topology`] so that it is dropped (joined) first.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &NetNs, addrs: &[&str]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut servers = Servers {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for a in addrs {
            let addr = sockaddr(a, TARGET_PORT);
            for udp in [false, true] {
                let stop = stop.clone();
                let ready = ready_tx.clone();
                servers.threads.push(ns.spawn(move || {
                    if udp {
                        serve_udp(addr, &stop, &ready)
                    } else {
                        serve_tcp(addr, &stop, &ready)
                    }
                }));
            }
        }
        for _ in 0..addrs.len() * 2 {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("backend server failed to start: {e}"),
                Err(e) => panic!("backend servers did not report readiness: {e}"),
            }
        }
        servers
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits up to `ms` for `fd` to become readable.
fn wait_readable(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, its count is 1.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn serve_tcp(addr: SocketAddr, stop: &AtomicBool, ready: &mpsc::Sender<Result<(), String>>) {
    let listener = match TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("tcp {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => answer_tcp(stream, addr, peer),
            // WouldBlock, or a connection that went away before accept: wait (at most
            // 100 ms, so that `stop` is seen) and try again.
            Err(_) => wait_readable(listener.as_raw_fd(), 100),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, local: SocketAddr, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let _ = writeln!(stream, "{} {}", local.ip(), peer.ip());
    // Let the client close first (bounded by the read timeout), so TIME_WAIT stays on
    // the client instead of on this listener.
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn serve_udp(addr: SocketAddr, stop: &AtomicBool, ready: &mpsc::Sender<Result<(), String>>) {
    let sock = match UdpSocket::bind(addr).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("udp {addr}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(format!("{} {}\n", addr.ip(), peer.ip()).as_bytes(), peer);
        }
    }
}

// ---------------------------------------------------------------------------------
// Clients (call these on a thread inside the client namespace)

/// What a backend answered.
#[derive(Debug)]
struct Answer {
    /// the backend's own address
    backend: String,
    /// the client address the backend saw
    seen_client: String,
}

fn parse_answer(text: &str) -> io::Result<Answer> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(b), Some(c), None) => Ok(Answer {
            backend: b.to_string(),
            seen_client: c.to_string(),
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {text:?}"),
        )),
    }
}

/// A new TCP connection to `dst`; reads the backend's answer, then closes it
/// gracefully (TIME_WAIT stays on the client, which does not reuse such a port).
fn tcp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    parse_answer(&line)
}

/// Source ports of UDP requests: each request of this process uses a port no earlier
/// one used, below the ephemeral range, so that no earlier conntrack entry (and its NAT
/// binding, which outlives a re-programming) can apply to it.
static UDP_PORT: AtomicU16 = AtomicU16::new(20_000);

/// One request datagram to `dst` from a new socket and a never-used source port;
/// returns the answer.
fn udp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let any: IpAddr = if dst.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let port = UDP_PORT.fetch_add(1, Ordering::SeqCst);
    assert!(port < 32_000, "out of unused UDP source ports");
    let sock = UdpSocket::bind(SocketAddr::new(any, port))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    sock.connect(dst)?;
    sock.send(b"who are you?\n")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse_answer(&String::from_utf8_lossy(&buf[..n]))
}

/// `n` sequential TCP connections to `dst`; panics on the first failure.
fn tcp_many(dst: SocketAddr, n: usize) -> Vec<Answer> {
    (1..=n)
        .map(|i| {
            tcp_ask(dst).unwrap_or_else(|e| {
                panic!(
                    "TCP connection {i} of {n} to {dst} failed: {e} ({:?})",
                    e.kind()
                )
            })
        })
        .collect()
}

/// `n` UDP requests (each from a new socket) to `dst`; panics on the first failure.
fn udp_many(dst: SocketAddr, n: usize) -> Vec<Answer> {
    (1..=n)
        .map(|i| {
            udp_ask(dst).unwrap_or_else(|e| {
                panic!(
                    "UDP request {i} of {n} to {dst} failed: {e} ({:?})",
                    e.kind()
                )
            })
        })
        .collect()
}

/// How many answers each backend gave.
fn by_backend(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.backend.clone()).or_insert(0) += 1;
    }
    m
}

fn backends_of(answers: &[Answer]) -> BTreeSet<String> {
    answers.iter().map(|a| a.backend.clone()).collect()
}

fn seen_clients(answers: &[Answer]) -> BTreeSet<String> {
    answers.iter().map(|a| a.seen_client.clone()).collect()
}

/// Panics unless `result` is a refusal (ECONNREFUSED: the node's ICMP port unreachable).
fn expect_refused(result: io::Result<Answer>, what: &str) {
    match result {
        Ok(a) => panic!("{what}: expected to be refused, but {a:?} answered"),
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionRefused,
            "{what}: expected ECONNREFUSED (ICMP port unreachable), got {e}"
        ),
    }
}

// ---------------------------------------------------------------------------------
// Manifests (a JSON `List`, as `kubectl get -o json` prints it)

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// This node: its InternalIPs (primary first per family) and optionally its zone.
fn node_obj(ips: &[&str], zone: Option<&str>) -> Value {
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME},
        "status": {"addresses": addresses}
    });
    if let Some(z) = zone {
        node["metadata"]["labels"] = json!({"topology.kubernetes.io/zone": z});
    }
    node
}

fn service_cidr_obj(cidrs: &[&str]) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": cidrs}
    })
}

/// A service port `(name, protocol, port, node port)` targeting 8080.
fn svc_port(name: &str, protocol: &str, port: u16, node_port: Option<u16>) -> Value {
    let mut p = json!({"name": name, "protocol": protocol, "port": port,
                       "targetPort": TARGET_PORT});
    if let Some(np) = node_port {
        p["nodePort"] = json!(np);
    }
    p
}

/// The usual ports: `tcp` TCP/80 and `udp` UDP/80.
fn tcp_udp_ports() -> Vec<Value> {
    vec![
        svc_port("tcp", "TCP", 80, None),
        svc_port("udp", "UDP", 80, None),
    ]
}

/// A Service of `type_` with `cluster_ips` (IPv4 first) and `ports`; `extra` fields are
/// merged into its spec.
fn service_obj(
    name: &str,
    type_: &str,
    cluster_ips: &[&str],
    ports: Vec<Value>,
    extra: Value,
) -> Value {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut spec = json!({
        "type": type_,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
        "ports": ports
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    })
}

/// An endpoint's conditions.
#[derive(Clone, Copy, Debug)]
struct Cond {
    ready: bool,
    serving: bool,
    terminating: bool,
}

const READY: Cond = Cond {
    ready: true,
    serving: true,
    terminating: false,
};
const NOT_READY: Cond = Cond {
    ready: false,
    serving: false,
    terminating: false,
};
const SERVING_TERMINATING: Cond = Cond {
    ready: false,
    serving: true,
    terminating: true,
};
const TERMINATED: Cond = Cond {
    ready: false,
    serving: false,
    terminating: true,
};

/// An endpoint on `node` with `cond`; `zone` adds `hints.forZones`.
fn ep(ip: &str, node: &str, cond: Cond, zone: Option<&str>) -> Value {
    let mut e = json!({
        "addresses": [ip],
        "nodeName": node,
        "conditions": {"ready": cond.ready, "serving": cond.serving,
                       "terminating": cond.terminating}
    });
    if let Some(z) = zone {
        e["hints"] = json!({"forZones": [{"name": z}]});
    }
    e
}

/// An EndpointSlice of `service` (ports `tcp` TCP/8080 and `udp` UDP/8080); the address
/// type follows the first endpoint's address.
fn slice_obj(service: &str, name: &str, eps: Vec<Value>) -> Value {
    let v6 = eps
        .first()
        .and_then(|e| e["addresses"][0].as_str())
        .is_some_and(|a| a.contains(':'));
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": eps,
        "ports": [
            {"name": "tcp", "protocol": "TCP", "port": TARGET_PORT},
            {"name": "udp", "protocol": "UDP", "port": TARGET_PORT}
        ]
    })
}

/// Ready endpoints on node2 (not this node), without hints.
fn ready_remote(ips: &[&str]) -> Vec<Value> {
    ips.iter().map(|ip| ep(ip, "node2", READY, None)).collect()
}

// ---------------------------------------------------------------------------------
// Tests

/// `sessionAffinity: ClientIP` with a 2 s timeout on a 3-endpoint ClusterIP: 50
/// sequential connections from one client all reach one backend; the same 50 to a
/// service without affinity (same endpoints) reach several. Once the client has been
/// quiet for longer than the timeout, its next connection is balanced again: repeated
/// (connect, wait past the timeout) rounds eventually reach another backend.
#[test]
fn session_affinity_sticks_and_expires() {
    if !require_privileged() {
        return;
    }
    const AFFINITY_IP: &str = "172.30.0.10";
    const PLAIN_IP: &str = "172.30.0.11";
    const AFFINITY_TIMEOUT_S: u64 = 2;
    let eps = &BACKENDS[..3];
    let topo = Topology::new("aff", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, eps);
    let dir = TempDir::new("aff");
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(&[NODE_IP], None),
            service_cidr_obj(&[SERVICE_CIDR]),
            service_obj(
                "sticky",
                "ClusterIP",
                &[AFFINITY_IP],
                tcp_udp_ports(),
                json!({"sessionAffinity": "ClientIP",
                       "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": AFFINITY_TIMEOUT_S}}}),
            ),
            slice_obj("sticky", "sticky-1", ready_remote(eps)),
            service_obj("plain", "ClusterIP", &[PLAIN_IP], tcp_udp_ports(), json!({})),
            slice_obj("plain", "plain-1", ready_remote(eps)),
        ]),
    );
    topo.program(&manifests);

    let all = strings(eps);
    let (sticky, plain) = join(topo.client.spawn(|| {
        let sticky = tcp_many(sockaddr(AFFINITY_IP, 80), 50);
        // Right after, while the affinity record is alive: it must not leak into a
        // service without affinity.
        let plain = tcp_many(sockaddr(PLAIN_IP, 80), 50);
        (sticky, plain)
    }));
    let sticky_counts = by_backend(&sticky);
    assert!(
        backends_of(&sticky).is_subset(&all),
        "affinity service answered by a non-endpoint: {sticky_counts:?}"
    );
    assert_eq!(
        sticky_counts.len(),
        1,
        "with ClientIP affinity, 50 connections from one client reached {sticky_counts:?}\n{}",
        topo.ruleset()
    );
    let plain_counts = by_backend(&plain);
    assert!(
        backends_of(&plain).is_subset(&all),
        "plain service answered by a non-endpoint: {plain_counts:?}"
    );
    assert!(
        plain_counts.len() > 1,
        "without affinity, 50 connections from one client all reached {plain_counts:?}"
    );
    let first = sticky[0].backend.clone();

    // Expiry: each round waits past the timeout since the client's last connection,
    // then connects once. With 3 endpoints, 10 rounds all landing on the same endpoint
    // has probability (1/3)^10.
    const ROUNDS: usize = 10;
    let quiet = Duration::from_millis(AFFINITY_TIMEOUT_S * 1000 + 1000);
    let rounds = join(topo.client.spawn(move || {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            std::thread::sleep(quiet);
            let a = tcp_ask(sockaddr(AFFINITY_IP, 80))
                .unwrap_or_else(|e| panic!("connection after the affinity timeout failed: {e}"));
            let moved = a.backend != first;
            rounds.push(a.backend);
            if moved {
                break;
            }
        }
        rounds
    }));
    assert!(
        rounds.iter().all(|b| all.contains(b)),
        "answers after expiry from a non-endpoint: {rounds:?}"
    );
    assert!(
        rounds.iter().any(|b| *b != sticky[0].backend),
        "after {ROUNDS} rounds of {quiet:?} quiet + one connection, the client always \
         reached {}: affinity never expired ({rounds:?})\n{}",
        sticky[0].backend,
        topo.ruleset()
    );
}

/// `trafficDistribution: PreferClose` on node1 in zone-a, 4 ready endpoints, 2 hinted
/// for zone-a and 2 for zone-b: traffic reaches both zone-a endpoints and only them.
/// When both zone-a endpoints become not ready (and not serving), the ready endpoints'
/// hints no longer include this zone, so the hints are ignored: traffic reaches both
/// zone-b endpoints, and never the not-ready ones (whose servers still listen).
#[test]
fn topology_zone_hints_keep_traffic_in_zone() {
    if !require_privileged() {
        return;
    }
    const CLUSTER_IP: &str = "172.30.0.20";
    let zone_a = [BACKENDS[0], BACKENDS[1]];
    let zone_b = [BACKENDS[2], BACKENDS[3]];
    let topo = Topology::new("zone", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &BACKENDS);
    let dir = TempDir::new("zone");
    let version = |a_cond: Cond| {
        let mut eps: Vec<Value> = zone_a
            .iter()
            .map(|ip| ep(ip, "node2", a_cond, Some("zone-a")))
            .collect();
        eps.extend(
            zone_b
                .iter()
                .map(|ip| ep(ip, "node3", READY, Some("zone-b"))),
        );
        list(vec![
            node_obj(&[NODE_IP], Some("zone-a")),
            service_cidr_obj(&[SERVICE_CIDR]),
            service_obj(
                "web",
                "ClusterIP",
                &[CLUSTER_IP],
                tcp_udp_ports(),
                json!({"trafficDistribution": "PreferClose"}),
            ),
            slice_obj("web", "web-1", eps),
        ])
    };
    let dst = sockaddr(CLUSTER_IP, 80);

    topo.program(&dir.write("cluster.json", &version(READY)));
    let (tcp, udp) = join(
        topo.client
            .spawn(move || (tcp_many(dst, 60), udp_many(dst, 60))),
    );
    for (what, answers) in [("TCP", &tcp), ("UDP", &udp)] {
        assert_eq!(
            backends_of(answers),
            strings(&zone_a),
            "{what}: with zone-a hints on node1 (zone-a), 60 requests reached {:?}; want \
             exactly the zone-a endpoints\n{}",
            by_backend(answers),
            topo.ruleset()
        );
    }

    topo.program(&dir.write("cluster.json", &version(NOT_READY)));
    let (tcp, udp) = join(
        topo.client
            .spawn(move || (tcp_many(dst, 60), udp_many(dst, 60))),
    );
    for (what, answers) in [("TCP", &tcp), ("UDP", &udp)] {
        assert_eq!(
            backends_of(answers),
            strings(&zone_b),
            "{what}: with the zone-a endpoints not ready, 60 requests reached {:?}; want \
             exactly the (ready) zone-b endpoints\n{}",
            by_backend(answers),
            topo.ruleset()
        );
    }
}

/// A service whose only endpoints are serving and terminating (not ready) still serves,
/// from those endpoints; a service whose endpoints are terminating and not serving is
/// refused; and a service with one ready and one serving-terminating endpoint uses only
/// the ready one. TCP and UDP.
#[test]
fn terminating_only_service_still_serves() {
    if !require_privileged() {
        return;
    }
    const SERVING_IP: &str = "172.30.0.30";
    const GONE_IP: &str = "172.30.0.31";
    const MIXED_IP: &str = "172.30.0.32";
    let eps = [BACKENDS[0], BACKENDS[1]];
    let topo = Topology::new("term", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &eps);
    let dir = TempDir::new("term");
    let with =
        |cond: Cond| -> Vec<Value> { eps.iter().map(|ip| ep(ip, "node2", cond, None)).collect() };
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(&[NODE_IP], None),
            service_cidr_obj(&[SERVICE_CIDR]),
            service_obj(
                "serving",
                "ClusterIP",
                &[SERVING_IP],
                tcp_udp_ports(),
                json!({}),
            ),
            slice_obj("serving", "serving-1", with(SERVING_TERMINATING)),
            service_obj("gone", "ClusterIP", &[GONE_IP], tcp_udp_ports(), json!({})),
            slice_obj("gone", "gone-1", with(TERMINATED)),
            service_obj(
                "mixed",
                "ClusterIP",
                &[MIXED_IP],
                tcp_udp_ports(),
                json!({}),
            ),
            slice_obj(
                "mixed",
                "mixed-1",
                vec![
                    ep(eps[0], "node2", READY, None),
                    ep(eps[1], "node2", SERVING_TERMINATING, None),
                ],
            ),
        ]),
    );
    topo.program(&manifests);

    let (serving, mixed) = join(topo.client.spawn(|| {
        let s = sockaddr(SERVING_IP, 80);
        let m = sockaddr(MIXED_IP, 80);
        let serving = [tcp_many(s, 40), udp_many(s, 40)];
        let mixed = [tcp_many(m, 40), udp_many(m, 40)];
        expect_refused(
            tcp_ask(sockaddr(GONE_IP, 80)),
            "TCP to a service whose endpoints are terminating and not serving",
        );
        expect_refused(
            udp_ask(sockaddr(GONE_IP, 80)),
            "UDP to a service whose endpoints are terminating and not serving",
        );
        (serving, mixed)
    }));
    for (what, answers) in ["TCP", "UDP"].iter().zip(&serving) {
        assert_eq!(
            backends_of(answers),
            strings(&eps),
            "{what}: the serving-terminating endpoints should serve (both of them); got {:?}",
            by_backend(answers)
        );
    }
    for (what, answers) in ["TCP", "UDP"].iter().zip(&mixed) {
        assert_eq!(
            backends_of(answers),
            strings(&eps[..1]),
            "{what}: with a ready endpoint, a serving-terminating one must not be used; got {:?}",
            by_backend(answers)
        );
    }
}

/// A dual-stack service (`clusterIPs` 172.30.0.40 and fd00:30::40) with one IPv4 and
/// one IPv6 EndpointSlice: TCP (and UDP) through each ClusterIP reaches both endpoints
/// of that family and never one of the other family, and (pod traffic) keeps the
/// client's own address of that family.
#[test]
fn dual_stack_service_answers_on_both_families() {
    if !require_privileged() {
        return;
    }
    const CLUSTER_IP: &str = "172.30.0.40";
    const CLUSTER_IP6: &str = "fd00:30::40";
    let eps4 = [BACKENDS[0], BACKENDS[1]];
    let topo = Topology::new("dual", POD_CLIENT, true);
    let mut all_backends: Vec<&str> = eps4.to_vec();
    all_backends.extend(BACKENDS6);
    let _servers = Servers::start(&topo.backends, &all_backends);
    let dir = TempDir::new("dual");
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(&[NODE_IP, NODE_IP6], None),
            service_cidr_obj(&[SERVICE_CIDR, SERVICE_CIDR6]),
            service_obj(
                "web",
                "ClusterIP",
                &[CLUSTER_IP, CLUSTER_IP6],
                tcp_udp_ports(),
                json!({}),
            ),
            slice_obj("web", "web-v4", ready_remote(&eps4)),
            slice_obj("web", "web-v6", ready_remote(&BACKENDS6)),
        ]),
    );
    topo.program(&manifests);

    let results = join(topo.client.spawn(|| {
        [CLUSTER_IP, CLUSTER_IP6].map(|ip| {
            let dst = sockaddr(ip, 80);
            [tcp_many(dst, 40), udp_many(dst, 40)]
        })
    }));
    for ((family, want, client), per_proto) in [
        ("IPv4", strings(&eps4), POD_CLIENT.client),
        ("IPv6", strings(&BACKENDS6), CLIENT6),
    ]
    .into_iter()
    .zip(&results)
    {
        for (proto, answers) in ["TCP", "UDP"].iter().zip(per_proto) {
            assert_eq!(
                backends_of(answers),
                want,
                "{family} {proto}: 40 requests reached {:?}; want exactly the {family} \
                 endpoints\n{}",
                by_backend(answers),
                topo.ruleset()
            );
            assert_eq!(
                seen_clients(answers),
                strings(&[client]),
                "{family} {proto}: the backends saw these client addresses"
            );
        }
    }
}

/// A NodePort service with `externalTrafficPolicy: Local`, one endpoint on this node
/// and one on another: an external client (203.0.113.2, outside `--cluster-cidr`)
/// connecting to the node IP's node port always reaches the local endpoint, which sees
/// the client's real address. The same service with `externalTrafficPolicy: Cluster`
/// reaches both endpoints, masqueraded to the node's address.
#[test]
fn external_traffic_policy_local_preserves_source() {
    if !require_privileged() {
        return;
    }
    const LOCAL_NODE_PORT: u16 = 30080;
    const CLUSTER_NODE_PORT: u16 = 30081;
    let local_ep = BACKENDS[0];
    let remote_ep = BACKENDS[1];
    let topo = Topology::new("etp", EXTERNAL_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &[local_ep, remote_ep]);
    let dir = TempDir::new("etp");
    let eps = || {
        vec![
            ep(local_ep, NODE_NAME, READY, None),
            ep(remote_ep, "node2", READY, None),
        ]
    };
    let node_port_svc = |name: &str, cluster_ip: &str, node_port: u16, policy: &str| {
        service_obj(
            name,
            "NodePort",
            &[cluster_ip],
            vec![
                svc_port("tcp", "TCP", 80, Some(node_port)),
                svc_port("udp", "UDP", 80, Some(node_port)),
            ],
            json!({"externalTrafficPolicy": policy}),
        )
    };
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(&[NODE_IP], None),
            service_cidr_obj(&[SERVICE_CIDR]),
            node_port_svc("local", "172.30.0.50", LOCAL_NODE_PORT, "Local"),
            slice_obj("local", "local-1", eps()),
            node_port_svc("cluster", "172.30.0.51", CLUSTER_NODE_PORT, "Cluster"),
            slice_obj("cluster", "cluster-1", eps()),
        ]),
    );
    topo.program(&manifests);

    let (local, cluster) = join(topo.client.spawn(|| {
        let l = sockaddr(NODE_IP, LOCAL_NODE_PORT);
        let c = sockaddr(NODE_IP, CLUSTER_NODE_PORT);
        (
            [tcp_many(l, 40), udp_many(l, 40)],
            [tcp_many(c, 40), udp_many(c, 40)],
        )
    }));
    for (proto, answers) in ["TCP", "UDP"].iter().zip(&local) {
        assert_eq!(
            backends_of(answers),
            strings(&[local_ep]),
            "eTP=Local {proto}: external traffic reached {:?}; want only the local endpoint\n{}",
            by_backend(answers),
            topo.ruleset()
        );
        assert_eq!(
            seen_clients(answers),
            strings(&[EXTERNAL_CLIENT.client]),
            "eTP=Local {proto}: the endpoint must see the client's own address\n{}",
            topo.ruleset()
        );
    }
    for (proto, answers) in ["TCP", "UDP"].iter().zip(&cluster) {
        assert_eq!(
            backends_of(answers),
            strings(&[local_ep, remote_ep]),
            "eTP=Cluster {proto}: external traffic reached {:?}; want both endpoints",
            by_backend(answers)
        );
        assert_eq!(
            seen_clients(answers),
            strings(&[NODE_IP]),
            "eTP=Cluster {proto}: external traffic must be masqueraded to the node's address\n{}",
            topo.ruleset()
        );
    }
}
