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
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{join, require_privileged, veth, NetNs, TempDir};
use serde_json::{json, Value};

/// Socket timeout for every client and server operation.
const TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_IP: &str = "10.0.1.2";
const CLUSTER_IP: &str = "172.30.0.10";
const SERVICE_CIDR: &str = "172.30.0.0/16";
const BACKENDS: [&str; 3] = ["10.0.2.10", "10.0.2.11", "10.0.2.12"];
const TARGET_PORT: u16 = 8080;
const NODE_NAME: &str = "node1";

fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::from((ip.parse::<Ipv4Addr>().expect("IPv4 literal"), port))
}

// ---------------------------------------------------------------------------------
// Topology

struct Topology {
    client: NetNs,
    node: NetNs,
    backends: NetNs,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let t = Topology {
            client: NetNs::new(&format!("{tag}-c")),
            node: NetNs::new(&format!("{tag}-n")),
            backends: NetNs::new(&format!("{tag}-b")),
        };
        veth(&t.client, "eth0", &t.node, "to-client");
        veth(&t.node, "to-backends", &t.backends, "eth0");

        t.client.ip(&["addr", "add", "10.0.1.2/24", "dev", "eth0"]);
        t.client.ip(&["route", "add", "default", "via", "10.0.1.1"]);

        t.node
            .ip(&["addr", "add", "10.0.1.1/24", "dev", "to-client"]);
        t.node
            .ip(&["addr", "add", "10.0.2.1/24", "dev", "to-backends"]);
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
        // limit (a burst of 6, then 1/s) must not swallow any of them.
        t.node.sysctl("net.ipv4.icmp_ratelimit=0");

        for b in BACKENDS {
            t.backends
                .ip(&["addr", "add", &format!("{b}/24"), "dev", "eth0"]);
        }
        t.backends
            .ip(&["route", "add", "default", "via", "10.0.2.1"]);
        t
    }

    /// Runs the proxy once in the node namespace on `manifests`.
    fn program(&self, manifests: &str) {
        self.node.proxy(&[
            "--manifests",
            manifests,
            "--once",
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            "10.0.0.0/16",
        ]);
    }
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
    fn start(ns: &NetNs, addrs: &[&str], port: u16) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut servers = Servers {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for a in addrs {
            let addr = sockaddr(a, port);
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
    // the client, which never reuses such a port, instead of on this listener.
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
/// gracefully.
fn tcp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    read_answer(&stream)
}

/// Like [`tcp_ask`], but ends the connection with a reset (`SO_LINGER` 0), so that it
/// leaves no TIME_WAIT behind: a tight loop of these cannot run out of ephemeral ports,
/// and its conntrack entries expire after 10 s (a SYN on a reset entry starts a new
/// one, with a new NAT decision).
fn tcp_ask_reset(dst: SocketAddr) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    let answer = read_answer(&stream);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    answer
}

fn read_answer(stream: &TcpStream) -> io::Result<Answer> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    parse_answer(&line)
}

/// One request datagram to `dst` from a new socket (a new source port: a new conntrack
/// entry unless the kernel hands out a recently used port); returns the answer.
/// `local_port` 0 picks an ephemeral port.
fn udp_ask(dst: SocketAddr, local_port: u16) -> io::Result<Answer> {
    let sock = UdpSocket::bind(sockaddr(CLIENT_IP, local_port))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    sock.connect(dst)?;
    sock.send(b"who are you?\n")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse_answer(&String::from_utf8_lossy(&buf[..n]))
}

// ---------------------------------------------------------------------------------
// Manifests (a JSON `List`, as `kubectl get -o json` prints it)

/// An endpoint of a slice: address and whether it is ready.
#[derive(Clone, Copy)]
struct Ep {
    ip: &'static str,
    ready: bool,
}

fn ready(ips: &[&'static str]) -> Vec<Ep> {
    ips.iter().map(|ip| Ep { ip, ready: true }).collect()
}

fn node_obj() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.2.1"}]}
    })
}

fn service_cidr_obj() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": [SERVICE_CIDR]}
    })
}

/// A ClusterIP Service; `ports` are `(name, protocol, port)`, all targeting 8080.
fn service_obj(name: &str, cluster_ip: &str, ports: &[(&str, &str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| {
            json!({"name": n, "protocol": proto, "port": port, "targetPort": TARGET_PORT})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ipFamilies": ["IPv4"], "ports": ports}
    })
}

/// An IPv4 EndpointSlice of `service`; `ports` are `(name, protocol)` on 8080.
fn slice_obj(service: &str, name: &str, ports: &[(&str, &str)], eps: &[Ep]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto)| json!({"name": n, "protocol": proto, "port": TARGET_PORT}))
        .collect();
    let eps: Vec<Value> = eps
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip],
                "nodeName": "node2",
                "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports
    })
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
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
    let topo = Topology::new("all");
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

/// Services without a usable endpoint (no slice at all, an empty slice, only non-ready
/// endpoints whose servers do listen) are refused at once, over TCP and UDP; so is a
/// port that a served ClusterIP does not have. A served port of the same setup answers,
/// so the refusals come from the rules, not from a broken topology.
#[test]
fn clusterip_without_endpoints_is_refused() {
    if !require_privileged() {
        return;
    }
    let topo = Topology::new("rej");
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
                tcp_ask_reset(dst)
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
    let topo = Topology::new("churn");
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
