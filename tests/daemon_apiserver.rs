//! The long-running daemon against the in-repo API server, with real packets.
//!
//! Topology (three network namespaces per test, created and deleted by the test):
//!
//! ```text
//!  client (a pod)            node (daemon + API server)            backends
//!  eth0 10.0.1.2/24 ---- to-client 10.0.1.1/24
//!  default via 10.0.1.1      to-backends 10.0.2.1/24 ---- eth0 10.0.2.10/24 .. .13
//!                            lo: API server, /healthz,     default via 10.0.2.1
//!                                /metrics on 127.0.0.1
//!                            default via 10.0.2.254 (no such host)
//! ```
//!
//! The API server runs on a thread that entered the node namespace, so the daemon (run
//! with `ip netns exec NODE kube-nft-proxy --master http://127.0.0.1:PORT ...`) reaches it
//! on the node's loopback. Objects are created, changed and deleted through the server's
//! store; the daemon learns about them by list and watch only.
//!
//! Every backend address runs a TCP listener and a UDP socket on 8080 that answer
//! `BACKEND-IP CLIENT-IP CLIENT-PORT\n`. Each backend can be stopped on its own (a pod
//! that went away). Every wait is bounded (poll with a deadline); nothing asserts how
//! fast something happened.

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiserver::{ApiServer, Config as ApiConfig, Fault};
use common::backends::{ServerOpts, Servers};
use common::manifests::{self, slice_obj, tcp_udp_ports, Cond, TARGET_PORT};
use common::topology::{Setup, Topology, NODE_IP, NODE_NAME};
use common::{join, require_privileged, NetNs, TempDir, BIN};
use serde_json::{json, Value};

/// Socket timeout for every client and server operation.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The usual bound for a condition to become true.
const WAIT: Duration = Duration::from_secs(10);
/// The bound after an API server outage or a held-off watch: the watchers retry with
/// kube-runtime's (client-go's) backoff, 0.8 s doubling up to 30 s, with jitter.
const WAIT_AFTER_OUTAGE: Duration = Duration::from_secs(60);
const CLIENT_IP: &str = "10.0.1.2";
const SERVICE_CIDR: &str = "172.30.0.0/16";
const WEB_IP: &str = "172.30.0.10";
const A: &str = "10.0.2.10";
const B: &str = "10.0.2.11";
const C: &str = "10.0.2.12";
const D: &str = "10.0.2.13";
const BACKENDS: [&str; 4] = [A, B, C, D];
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
/// Samples of the IPv4 series (upstream labels sync and programming metrics with the
/// family; this cluster is IPv4).
const SYNC_COUNT: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";
const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}";
const PROGRAMMED: &str = "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"}";
/// Consecutive answers that must show exactly the expected endpoints. With 4 equally
/// likely endpoints, 60 answers miss one with a probability of about 1e-7.
const WINDOW: usize = 60;

fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::from((ip.parse::<Ipv4Addr>().expect("IPv4 literal"), port))
}

fn strings(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Locks a mutex; a panicking thread must not wedge the others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a new thread inside the network namespace `ns` (by name), like
/// [`NetNs::spawn`], for owners that keep only the name.
fn spawn_in<F, T>(ns: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = File::open(format!("/var/run/netns/{ns}"))?;
    let name = ns.to_string();
    Ok(std::thread::spawn(move || {
        // SAFETY: `file` is an open nsfs file; setns only changes this thread's network
        // namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            panic!("setns({name}): {}", io::Error::last_os_error());
        }
        drop(file);
        f()
    }))
}

// ---------------------------------------------------------------------------------
// Topology and backend servers

/// The three namespaces (see the top of the file), with the node's ICMP rate limit off:
/// refusals are ICMP errors from the node; no rate limit may swallow one.
fn topology(tag: &str) -> Topology {
    Topology::new(
        tag,
        Setup {
            node_lo_up: true,
            ..Setup::new(&BACKENDS)
        },
    )
}

/// A TCP listener and a UDP socket on every backend address, each address stoppable on
/// its own; all stopped on drop. Answers carry the client port the backend saw.
fn start_servers(ns: &NetNs, addrs: &[&str]) -> Servers {
    let opts = ServerOpts {
        udp: true,
        report_port: true,
    };
    Servers::start_with(ns, addrs, TARGET_PORT, opts)
}

// ---------------------------------------------------------------------------------
// Clients (call these on a thread inside the client namespace)

/// What a backend answered.
#[derive(Clone, Debug)]
struct Answer {
    /// the backend's own address
    backend: String,
    /// the client address the backend saw
    seen_client: String,
    /// the client port the backend saw
    seen_port: u16,
}

fn parse_answer(text: &str) -> io::Result<Answer> {
    let mut w = text.split_whitespace();
    match (
        w.next(),
        w.next(),
        w.next().map(str::parse::<u16>),
        w.next(),
    ) {
        (Some(b), Some(c), Some(Ok(p)), None) => Ok(Answer {
            backend: b.to_string(),
            seen_client: c.to_string(),
            seen_port: p,
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {text:?}"),
        )),
    }
}

/// A new TCP connection to `dst`; reads the answer, then ends the connection with a
/// reset (`SO_LINGER` 0), so that a tight loop leaves no TIME_WAIT behind.
fn tcp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    read?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    parse_answer(&line)
}

// ---------------------------------------------------------------------------------
// Objects

fn node_obj() -> Value {
    manifests::node_obj(&[NODE_IP], None)
}

fn service_cidr_obj() -> Value {
    manifests::service_cidr_obj(&[SERVICE_CIDR])
}

/// A ClusterIP Service with ports `tcp` TCP/80 and `udp` UDP/80, both to 8080.
fn service_obj(name: &str, cluster_ip: &str) -> Value {
    manifests::service_obj(name, "ClusterIP", &[cluster_ip], tcp_udp_ports(), json!({}))
}

/// An endpoint on `node`: ready, or serving-and-terminating.
fn ep(ip: &str, node: &str, terminating: bool) -> Value {
    let cond = Cond {
        ready: !terminating,
        serving: true,
        terminating,
    };
    manifests::ep(ip, node, cond, None)
}

/// Ready endpoints on node2 (not this node).
fn ready(ips: &[&str]) -> Vec<Value> {
    ips.iter().map(|ip| ep(ip, "node2", false)).collect()
}

/// Node, ServiceCIDR, and Service `web` on [`WEB_IP`] with slice `web-1` of `eps`.
fn web_cluster(eps: &[&str]) -> Vec<Value> {
    vec![
        node_obj(),
        service_cidr_obj(),
        service_obj("web", WEB_IP),
        slice_obj("web", "web-1", ready(eps)),
    ]
}

/// The current time as RFC 3339 (UTC, seconds).
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------
// nft listings

/// Splits `s` at commas outside double quotes.
fn split_elements(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}

/// An nft listing with the elements of every set and map sorted, one per line (the
/// kernel's element order is not part of the ruleset's meaning).
fn normalize(listing: &str) -> String {
    const OPEN: &str = "elements = {";
    let mut out = String::new();
    let mut rest = listing;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + OPEN.len()..];
        let mut quoted = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == '}' && !quoted
            })
            .map(|(j, _)| j)
            .unwrap_or_else(|| panic!("unterminated element list in:\n{listing}"));
        let mut elements = split_elements(&after[..end]);
        elements.sort();
        out.push_str("elements = {\n");
        for e in elements {
            out.push_str("\t\t\t");
            out.push_str(&e);
            out.push_str(",\n");
        }
        out.push_str("\t\t}");
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Lines of `a` missing from `b` and lines of `b` missing from `a` (for messages).
fn line_diff(a: &str, b: &str) -> String {
    let la: BTreeSet<&str> = a.lines().collect();
    let lb: BTreeSet<&str> = b.lines().collect();
    let mut s = String::new();
    for l in la.difference(&lb) {
        s.push_str(&format!("- {l}\n"));
    }
    for l in lb.difference(&la) {
        s.push_str(&format!("+ {l}\n"));
    }
    s
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to completion, killing it if it runs longer than `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} still running after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------
// HTTP (from inside the node namespace)

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    /// header names in lower case
    headers: BTreeMap<String, String>,
    body: String,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// `GET path` on `addr` with `Connection: close`; reads the whole answer.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{why}: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no head"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// The value of an unlabelled metric sample `name VALUE`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

// ---------------------------------------------------------------------------------
// The API server, living in the node namespace

/// The test API server, bound on the node's loopback. `stop`, `start_again` and the
/// final stop (on drop) run on a thread inside the node namespace: they open or wake
/// sockets there.
struct Api {
    server: Option<Arc<ApiServer>>,
    ns: String,
}

impl Api {
    fn start(node: &NetNs) -> Api {
        let server = join(node.spawn(|| {
            ApiServer::start_with(ApiConfig {
                listen: "127.0.0.1:0".parse().expect("address"),
                ..Default::default()
            })
        }))
        .expect("start the API server in the node namespace");
        Api {
            server: Some(Arc::new(server)),
            ns: node.name().to_string(),
        }
    }

    fn arc(&self) -> Arc<ApiServer> {
        self.server.clone().expect("API server present")
    }

    /// Stops listening and drops every connection; the store stays.
    fn stop(&self) {
        let s = self.arc();
        join(spawn_in(&self.ns, move || s.stop()).expect("enter the node namespace"));
    }

    /// Listens again on the same port, with the same store.
    fn start_again(&self) {
        let s = self.arc();
        join(spawn_in(&self.ns, move || s.start_again()).expect("enter the node namespace"))
            .expect("restart the API server on its port");
    }

    /// LIST requests (not watches) for `plural` logged from index `from` on.
    fn lists_since(&self, from: usize, plural: &str) -> usize {
        self.requests()[from..]
            .iter()
            .filter(|r| {
                let path = r.split('?').next().unwrap_or("");
                path.ends_with(&format!("/{plural}")) && !r.contains("watch=true")
            })
            .count()
    }
}

impl Deref for Api {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        self.server.as_deref().expect("API server present")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        match spawn_in(&self.ns, move || drop(server)) {
            Ok(h) => {
                let _ = h.join();
            }
            Err(e) => eprintln!("warning: cannot stop the API server in {}: {e}", self.ns),
        }
    }
}

// ---------------------------------------------------------------------------------
// The daemon

/// The daemon's flags against `url`.
fn daemon_args(url: &str) -> Vec<String> {
    DaemonOpts::default().args(url)
}

/// The flags a test may vary.
#[derive(Clone, Copy)]
struct DaemonOpts {
    sync_period: &'static str,
    min_sync_period: &'static str,
    healthz: &'static str,
    metrics: &'static str,
    cleanup_kube_proxy: bool,
    /// more flags
    extra: &'static [&'static str],
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            sync_period: "2s",
            min_sync_period: "10ms",
            healthz: HEALTHZ,
            metrics: METRICS,
            cleanup_kube_proxy: false,
            extra: &[],
        }
    }
}

impl DaemonOpts {
    fn args(&self, url: &str) -> Vec<String> {
        [
            "--master",
            url,
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            "10.0.0.0/16",
            "--sync-period",
            self.sync_period,
            "--min-sync-period",
            self.min_sync_period,
            "--healthz-bind-address",
            self.healthz,
            "--metrics-bind-address",
            self.metrics,
            "-v",
            "2",
        ]
        .iter()
        .copied()
        .chain(self.cleanup_kube_proxy.then_some("--cleanup-kube-proxy"))
        .chain(self.extra.iter().copied())
        .map(|s| s.to_string())
        .collect()
    }
}

/// The daemon running in the node namespace; killed on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(node: &NetNs, url: &str, opts: DaemonOpts, log: PathBuf) -> Daemon {
        let file = File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let mut cmd = node.command(&[BIN]);
        cmd.args(opts.args(url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Daemon { child }
    }

    /// `kill -9` (`ip netns exec` execs the daemon: the child is the daemon itself) and
    /// reap it.
    fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------
// One test's world

/// Fields drop in declaration order: the daemon is killed first, then the API server
/// stopped (inside the node namespace), the backends stopped, the namespaces deleted.
struct Env {
    daemon: Mutex<Option<Daemon>>,
    api: Api,
    servers: Servers,
    topo: Topology,
    dir: TempDir,
    starts: Mutex<usize>,
    opts: DaemonOpts,
}

impl Env {
    /// Topology, backends on every address, the API server holding `objects`, the
    /// daemon started and its table present.
    fn new(tag: &str, objects: Vec<Value>) -> Env {
        let env = Env::started(tag, objects, "2s");
        env.wait_until("the daemon programs its table", WAIT, || {
            env.try_listing(false)
                .ok_or_else(|| "no table ip kube-nft-proxy yet".to_string())
        });
        env
    }

    /// Like [`Env::new`] with another `--sync-period`, returning as soon as the daemon
    /// is started.
    fn started(tag: &str, objects: Vec<Value>, sync_period: &'static str) -> Env {
        let opts = DaemonOpts {
            sync_period,
            ..DaemonOpts::default()
        };
        Env::started_with(tag, objects, opts, |_| {})
    }

    /// Like [`Env::started`] with other daemon flags, and `prepare` run on the API
    /// server before the daemon starts.
    fn started_with(
        tag: &str,
        objects: Vec<Value>,
        opts: DaemonOpts,
        prepare: impl FnOnce(&ApiServer),
    ) -> Env {
        Env::started_on(tag, objects, opts, prepare, |_| {})
    }

    /// Like [`Env::started_with`], with `prepare_node` run in the node namespace before
    /// the daemon starts.
    fn started_on(
        tag: &str,
        objects: Vec<Value>,
        opts: DaemonOpts,
        prepare: impl FnOnce(&ApiServer),
        prepare_node: impl FnOnce(&NetNs),
    ) -> Env {
        let topo = topology(tag);
        prepare_node(&topo.node);
        let servers = start_servers(&topo.backends, &BACKENDS);
        let api = Api::start(&topo.node);
        prepare(&api);
        for o in objects {
            api.apply(o);
        }
        let env = Env {
            daemon: Mutex::new(None),
            api,
            servers,
            topo,
            dir: TempDir::new(tag),
            starts: Mutex::new(0),
            opts,
        };
        env.start_daemon();
        env
    }

    fn start_daemon(&self) {
        let n = {
            let mut s = lock(&self.starts);
            *s += 1;
            *s
        };
        let log = self.dir.path().join(format!("daemon-{n}.log"));
        let d = Daemon::start(&self.topo.node, &self.api.url(), self.opts, log);
        let old = lock(&self.daemon).replace(d);
        assert!(old.is_none(), "a daemon was already running");
    }

    /// Kills the daemon with SIGKILL; returns how it ended.
    fn kill_daemon(&self) -> Option<std::process::ExitStatus> {
        let mut d = lock(&self.daemon).take().expect("a running daemon");
        // Its log stays in the scratch directory for the diagnostics.
        d.kill()
    }

    /// Panics (with the diagnostics) if the daemon exited on its own.
    fn check_daemon(&self) {
        let exited = match lock(&self.daemon).as_mut() {
            Some(d) => d.child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            panic!("the daemon exited on its own ({status})\n{}", self.diag());
        }
    }

    /// Daemon logs (tails), the node's whole ruleset and the API server's last requests.
    fn diag(&self) -> String {
        let mut s = String::from("\n======== diagnostics ========\n");
        let starts = *lock(&self.starts);
        for n in 1..=starts {
            let path = self.dir.path().join(format!("daemon-{n}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            s.push_str(&format!(
                "---- daemon start #{n} stderr (last 80 lines of {path:?}):\n{}\n",
                tail(&strip_ansi(&text), 80)
            ));
        }
        let ruleset = self
            .topo
            .node
            .command(&["nft", "list", "ruleset"])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("cannot run nft: {e}"));
        s.push_str(&format!(
            "---- nft list ruleset (node namespace):\n{ruleset}\n"
        ));
        let reqs = self.api.requests();
        s.push_str(&format!(
            "---- API server: last requests of {}:\n{}\n",
            reqs.len(),
            reqs[reqs.len().saturating_sub(15)..].join("\n")
        ));
        s
    }

    /// `nft [-a] list table ip kube-nft-proxy` normalized, or `None` if there is no
    /// such table.
    fn try_listing(&self, handles: bool) -> Option<String> {
        let mut args = vec!["nft"];
        if handles {
            args.push("-a");
        }
        args.extend(["list", "table", "ip", "kube-nft-proxy"]);
        let out = self
            .topo
            .node
            .command(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run nft");
        out.status
            .success()
            .then(|| normalize(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Waits until our table's listing equals `want` (a repair), or fails with the
    /// differences.
    fn wait_listing(&self, want: &str, what: &str) {
        self.wait_until(what, WAIT, || {
            let now = self.listing();
            if now == want {
                Ok(())
            } else {
                Err(format!("differences:\n{}", line_diff(want, &now)))
            }
        });
    }

    fn listing(&self) -> String {
        self.try_listing(false)
            .unwrap_or_else(|| panic!("table ip kube-nft-proxy is missing\n{}", self.diag()))
    }

    /// Polls `f` until it returns `Ok` (its value is returned) or `timeout` passes (then
    /// panics with `what`, the last `Err` and the diagnostics). Also fails at once if
    /// the daemon exits.
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_daemon();
            match f() {
                Ok(v) => return v,
                Err(last) if Instant::now() >= deadline => panic!(
                    "{what}: not reached within {timeout:?}; last state: {last}\n{}",
                    self.diag()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `GET` on the node's loopback.
    fn http(&self, addr: &str, path: &str) -> io::Result<HttpResponse> {
        let addr: SocketAddr = addr.parse().expect("address");
        let path = path.to_string();
        join(self.topo.node.spawn(move || http_get(addr, &path)))
    }

    /// The daemon's `/metrics` text.
    fn metrics(&self) -> Result<String, String> {
        self.metrics_at(METRICS)
    }

    /// `/metrics` on `addr`.
    fn metrics_at(&self, addr: &str) -> Result<String, String> {
        match self.http(addr, "/metrics") {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(format!("/metrics answered {}: {}", r.status, r.body)),
            Err(e) => Err(format!("/metrics: {e}")),
        }
    }

    fn metric(&self, name: &str) -> Result<f64, String> {
        let text = self.metrics()?;
        metric(&text, name).ok_or_else(|| format!("no sample {name} in /metrics"))
    }

    /// `n` new TCP connections to `dst` from the client: the endpoints that answered, or
    /// the first failure.
    fn probe(&self, dst: SocketAddr, n: usize) -> Result<BTreeSet<String>, String> {
        join(self.topo.client.spawn(move || {
            let mut seen = BTreeSet::new();
            for i in 0..n {
                match tcp_ask(dst) {
                    Ok(a) => seen.insert(a.backend),
                    Err(e) => return Err(format!("connection {i} to {dst}: {e} ({:?})", e.kind())),
                };
            }
            Ok(seen)
        }))
    }

    /// Waits until [`WINDOW`] new connections to `dst` all succeed and reach exactly
    /// `expected`.
    fn wait_backends(&self, dst: SocketAddr, expected: &[&str], what: &str, timeout: Duration) {
        let want = strings(expected);
        self.wait_until(what, timeout, || match self.probe(dst, WINDOW) {
            Ok(seen) if seen == want => Ok(()),
            Ok(seen) => Err(format!("{dst} reached {seen:?}, want {want:?}")),
            Err(e) => Err(e),
        });
    }

    /// Waits until a new TCP connection to `dst` fails with `kind` three times in a row.
    fn wait_failing(&self, dst: SocketAddr, kind: io::ErrorKind, what: &str) {
        self.wait_until(what, WAIT, || {
            join(self.topo.client.spawn(move || {
                for _ in 0..3 {
                    match tcp_ask(dst) {
                        Ok(a) => return Err(format!("{dst}: answered by {a:?}")),
                        Err(e) if e.kind() == kind => {}
                        Err(e) => {
                            return Err(format!("{dst}: {e} ({:?}), want {kind:?}", e.kind()))
                        }
                    }
                }
                Ok(())
            }))
        });
    }

    /// Waits until the daemon reports `name` > `than`; returns the value.
    fn wait_metric_above(&self, name: &str, than: f64, what: &str) -> f64 {
        self.wait_until(what, WAIT, || {
            let v = self.metric(name)?;
            if v > than {
                Ok(v)
            } else {
                Err(format!("{name} = {v}, waiting for > {than}"))
            }
        })
    }
}

// ---------------------------------------------------------------------------------
// A looping TCP client

#[derive(Default)]
struct LoopState {
    /// the endpoint of every successful connection, in order
    answers: Vec<String>,
    /// every failed connection, with when and in which phase
    failures: Vec<String>,
    /// successful connections that took longer than 500 ms (a retransmitted SYN)
    slow: Vec<String>,
    /// what the test is doing (for messages)
    phase: String,
}

/// A client in the client namespace that opens a new TCP connection to `dst` every
/// ~2 ms until stopped, recording which endpoint answered and every failure.
struct Looper {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<LoopState>>,
    handle: Option<JoinHandle<()>>,
}

impl Looper {
    fn start(ns: &NetNs, dst: SocketAddr) -> Looper {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(LoopState {
            phase: "start".into(),
            ..Default::default()
        }));
        let (stop2, state2) = (stop.clone(), state.clone());
        let handle = ns.spawn(move || {
            let t0 = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                let start = Instant::now();
                let result = tcp_ask(dst);
                let took = start.elapsed();
                let mut st = lock(&state2);
                let at = format!("t={:.3}s phase {:?}", (start - t0).as_secs_f64(), st.phase);
                match result {
                    Ok(a) if BACKENDS.contains(&a.backend.as_str()) => {
                        if took > Duration::from_millis(500) {
                            st.slow.push(format!("{at}: {a:?} took {took:?}"));
                        }
                        st.answers.push(a.backend);
                    }
                    Ok(a) => st
                        .failures
                        .push(format!("{at}: answer from a non-endpoint {a:?}")),
                    Err(e) => st
                        .failures
                        .push(format!("{at}: {e} ({:?}) after {took:?}", e.kind())),
                }
                drop(st);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Looper {
            stop,
            state,
            handle: Some(handle),
        }
    }

    fn phase(&self, p: &str) {
        lock(&self.state).phase = p.to_string();
    }

    fn mark(&self) -> usize {
        lock(&self.state).answers.len()
    }

    /// The endpoints of the answers since `mark`.
    fn seen_since(&self, mark: usize) -> BTreeMap<String, usize> {
        let st = lock(&self.state);
        let mut m = BTreeMap::new();
        for a in &st.answers[mark..] {
            *m.entry(a.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Panics with the diagnostics if any connection failed so far.
    fn assert_no_failures(&self, env: &Env) {
        let st = lock(&self.state);
        if !st.failures.is_empty() {
            let msg = format!(
                "the looping client had {} failed connections ({} succeeded); first ones:\n{}",
                st.failures.len(),
                st.answers.len(),
                st.failures
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            drop(st);
            panic!("{msg}\n{}", env.diag());
        }
    }

    /// Waits until the last [`WINDOW`] answers (all after now) reach exactly `expected`;
    /// fails at once on any failed connection.
    fn wait_exact(&self, env: &Env, expected: &[&str], what: &str, timeout: Duration) {
        let want = strings(expected);
        let mark = self.mark();
        env.wait_until(what, timeout, || {
            self.assert_no_failures(env);
            let st = lock(&self.state);
            let after = &st.answers[mark..];
            if after.len() < WINDOW {
                return Err(format!("{} answers since the change", after.len()));
            }
            let last: BTreeSet<String> = after[after.len() - WINDOW..].iter().cloned().collect();
            if last == want {
                Ok(())
            } else {
                Err(format!(
                    "last {WINDOW} answers from {last:?}, want {want:?} ({} answers since the change)",
                    after.len()
                ))
            }
        });
    }

    /// Keeps running for `d`, failing at once on any failed connection.
    fn run_for(&self, env: &Env, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            env.check_daemon();
            self.assert_no_failures(env);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the client; returns what it saw.
    fn finish(mut self) -> LoopState {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            join(h);
        }
        std::mem::take(&mut *lock(&self.state))
    }

    /// Stops the client and asserts that no connection failed and that it made at
    /// least `min_ok` connections.
    fn finish_clean(self, env: &Env, min_ok: usize) -> LoopState {
        let st = self.finish();
        eprintln!(
            "looping client: {} connections ok, {} failed, {} slow (>500 ms){}",
            st.answers.len(),
            st.failures.len(),
            st.slow.len(),
            if st.slow.is_empty() {
                String::new()
            } else {
                format!(": {:?}", &st.slow[..st.slow.len().min(5)])
            }
        );
        assert!(
            st.failures.is_empty(),
            "{} failed connections; first ones:\n{}\n{}",
            st.failures.len(),
            st.failures[..st.failures.len().min(20)].join("\n"),
            env.diag()
        );
        assert!(
            st.answers.len() >= min_ok,
            "only {} successful connections",
            st.answers.len()
        );
        st
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------
// Tests

/// Endpoints scale 2 → 3 → 1 through the API server while a client opens a new TCP
/// connection every few milliseconds. Endpoints that go away are first marked
/// serving-and-terminating (their servers keep listening) for a while, then removed
/// from the slice, and only then stopped. Not one connection may fail, and after every
/// step the client's connections reach exactly the expected endpoints.
#[test]
fn scale_follows_with_no_failed_connection() {
    if !require_privileged() {
        return;
    }
    let env = Env::new("scale", web_cluster(&[A, B]));
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);

    let looper = Looper::start(&env.topo.client, dst);
    looper.wait_exact(&env, &[A, B], "2 endpoints", WAIT);

    looper.phase("2 -> 3");
    env.api.apply(slice_obj("web", "web-1", ready(&[A, B, C])));
    looper.wait_exact(&env, &[A, B, C], "scaled to 3", WAIT);

    looper.phase("3 -> 1: B and C terminating");
    let changes = env
        .metric("kubeproxy_sync_proxy_rules_endpoint_changes_total")
        .unwrap_or_else(|e| panic!("{e}\n{}", env.diag()));
    env.api.apply(slice_obj(
        "web",
        "web-1",
        vec![
            ep(A, "node2", false),
            ep(B, "node2", true),
            ep(C, "node2", true),
        ],
    ));
    looper.wait_exact(&env, &[A], "B and C terminating: only A", WAIT);
    // Terminating pods keep serving for a while (their grace period).
    looper.run_for(&env, Duration::from_secs(2));

    looper.phase("3 -> 1: B and C removed");
    let changes = env.wait_metric_above(
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        changes,
        "the terminating change is counted",
    );
    env.api
        .apply(slice_obj("web", "web-1", vec![ep(A, "node2", false)]));
    // The removal changes no rule (terminating endpoints were unused already): wait
    // until the daemon has taken the event in, then let the pods die.
    env.wait_metric_above(
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        changes,
        "the removal is seen by the daemon",
    );
    env.servers.stop(B);
    env.servers.stop(C);
    looper.phase("1 endpoint, B and C dead");
    looper.wait_exact(&env, &[A], "scaled to 1", WAIT);
    looper.run_for(&env, Duration::from_secs(1));
    looper.finish_clean(&env, 4 * WINDOW);
    assert!(
        !env.listing().contains(&format!(": {B} ."))
            && !env.listing().contains(&format!(": {C} .")),
        "removed endpoints still in the endpoints map\n{}",
        env.diag()
    );
}

/// With traffic flowing, the API server is stopped for 30 s. The client keeps opening
/// connections the whole time: none may fail, and the table is unchanged during and at
/// the end of the outage (element order aside), although the store changed meanwhile
/// (an endpoint added, a new service). Once the API server is back, the daemon
/// converges: the new endpoint is reached and the new service answers.
#[test]
fn api_server_outage_keeps_rules_then_converges() {
    if !require_privileged() {
        return;
    }
    const OUTAGE: Duration = Duration::from_secs(30);
    const WEB2_IP: &str = "172.30.0.11";
    let env = Env::new("outage", web_cluster(&[A, B]));
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
    let looper = Looper::start(&env.topo.client, dst);
    looper.wait_exact(&env, &[A, B], "2 endpoints", WAIT);
    let before = env.listing();

    looper.phase("API server stopped");
    let mark = looper.mark();
    env.api.stop();
    let stopped = Instant::now();
    // The store changes while nobody can watch it.
    env.api.apply(slice_obj("web", "web-1", ready(&[A, B, C])));
    env.api.apply(service_obj("web2", WEB2_IP));
    env.api.apply(slice_obj("web2", "web2-1", ready(&[D])));

    let mut samples = 0;
    while stopped.elapsed() < OUTAGE {
        std::thread::sleep((OUTAGE - stopped.elapsed().min(OUTAGE)).min(Duration::from_secs(3)));
        env.check_daemon();
        looper.assert_no_failures(&env);
        let now = env.listing();
        samples += 1;
        assert!(
            now == before,
            "{:?} into the outage, the table changed:\n{}\n{}",
            stopped.elapsed(),
            line_diff(&before, &now),
            env.diag()
        );
    }
    let after = env.listing();
    assert!(
        after == before,
        "the table at the end of the outage differs from before it:\n{}\n{}",
        line_diff(&before, &after),
        env.diag()
    );
    let during = looper.seen_since(mark);
    assert_eq!(
        during.keys().cloned().collect::<BTreeSet<_>>(),
        strings(&[A, B]),
        "during the outage the client must reach exactly the endpoints known before it: {during:?}"
    );
    eprintln!("outage: {samples} listings compared, answers {during:?}");

    looper.phase("API server back");
    env.api.start_again();
    let back = Instant::now();
    looper.wait_exact(
        &env,
        &[A, B, C],
        "the endpoint added during the outage",
        WAIT_AFTER_OUTAGE,
    );
    env.wait_backends(
        sockaddr(WEB2_IP, 80),
        &[D],
        "the service created during the outage",
        WAIT_AFTER_OUTAGE,
    );
    eprintln!(
        "converged {:?} after the API server came back",
        back.elapsed()
    );
    looper.run_for(&env, Duration::from_secs(1));
    looper.finish_clean(&env, 4 * WINDOW);
}

/// Three faults of the watch, each with a change that the daemon can only learn through
/// the way the fault makes it resync:
///
/// a. watches closed and held off (every request answered 500) while a Service and two
///    EndpointSlices are deleted and an endpoint added, then the history compacted:
///    the watches resume from a compacted resourceVersion, get 410 and relist; the
///    deletions are noticed through the relist (a deleted Service is dropped as an
///    unallocated ServiceCIDR address, a Service whose slice is gone is refused).
/// b. watches aborted mid-stream and held off while endpoints change: they resume from
///    their resourceVersion and replay the history.
/// c. the history compacted under open watches, then a change; then the watches
///    aborted and another change.
#[test]
fn relist_after_410_abort_and_compaction() {
    if !require_privileged() {
        return;
    }
    const GONE_IP: &str = "172.30.0.11";
    const NOEPS_IP: &str = "172.30.0.12";
    let mut objects = web_cluster(&[A, B]);
    objects.extend([
        service_obj("gone", GONE_IP),
        slice_obj("gone", "gone-1", ready(&[C])),
        service_obj("noeps", NOEPS_IP),
        slice_obj("noeps", "noeps-1", ready(&[D])),
    ]);
    let env = Env::new("relist", objects);
    let web = sockaddr(WEB_IP, 80);
    let gone = sockaddr(GONE_IP, 80);
    let noeps = sockaddr(NOEPS_IP, 80);
    env.wait_backends(web, &[A, B], "web programmed", WAIT);
    env.wait_backends(gone, &[C], "gone programmed", WAIT);
    env.wait_backends(noeps, &[D], "noeps programmed", WAIT);

    // Holds the watchers off: every request fails with 500 until released, and every
    // open watch is ended by `end_watches`.
    let hold = |end_watches: &dyn Fn()| {
        env.api.fail_all(Fault::InternalError);
        end_watches();
        env.wait_until("every watch ended", WAIT, || match env.api.watch_count() {
            0 => Ok(()),
            n => Err(format!("{n} watches open")),
        });
    };

    // (a) 410 → relist.
    let from = env.api.requests().len();
    hold(&|| env.api.close_watches());
    env.api.delete("Service", "default", "gone");
    env.api.delete("EndpointSlice", "default", "gone-1");
    env.api.delete("EndpointSlice", "default", "noeps-1");
    env.api.apply(slice_obj("web", "web-1", ready(&[A, B, C])));
    env.api.compact();
    env.api.clear_faults();
    env.wait_backends(
        web,
        &[A, B, C],
        "(a) endpoint added during the 410",
        WAIT_AFTER_OUTAGE,
    );
    env.wait_failing(
        noeps,
        io::ErrorKind::ConnectionRefused,
        "(a) service whose slice was deleted during the 410 is refused",
    );
    env.wait_failing(
        gone,
        io::ErrorKind::TimedOut,
        "(a) deleted service: its address is unallocated, dropped",
    );
    let listing = env.listing();
    assert!(
        !listing.contains("default/gone:") && !listing.contains(&format!("{GONE_IP} .")),
        "(a) the deleted service is still in the table\n{}",
        env.diag()
    );
    for plural in ["services", "endpointslices"] {
        assert!(
            env.api.lists_since(from, plural) > 0,
            "(a) no LIST of {plural} after the 410: the phase did not test a relist\n{}",
            env.diag()
        );
    }

    // (b) abort alone: resume from the resourceVersion, replay.
    env.wait_until("watches re-established", WAIT_AFTER_OUTAGE, || {
        match env.api.watch_count() {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} watches open")),
        }
    });
    let from = env.api.requests().len();
    hold(&|| env.api.abort_watches());
    env.api.apply(slice_obj("web", "web-1", ready(&[B, C])));
    env.api.apply(slice_obj("noeps", "noeps-1", ready(&[D])));
    env.api.clear_faults();
    env.wait_backends(
        web,
        &[B, C],
        "(b) endpoint removed during the abort",
        WAIT_AFTER_OUTAGE,
    );
    env.wait_backends(noeps, &[D], "(b) slice re-created during the abort", WAIT);
    eprintln!(
        "(b) LISTs after the abort: services {}, endpointslices {}",
        env.api.lists_since(from, "services"),
        env.api.lists_since(from, "endpointslices")
    );

    // (c) compaction under open watches, plus a change.
    env.wait_until("watches re-established", WAIT_AFTER_OUTAGE, || {
        match env.api.watch_count() {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} watches open")),
        }
    });
    env.api.compact();
    env.api.apply(slice_obj("web", "web-1", ready(&[C])));
    env.api.delete("EndpointSlice", "default", "noeps-1");
    env.wait_backends(web, &[C], "(c) change after the compaction", WAIT);
    env.wait_failing(
        noeps,
        io::ErrorKind::ConnectionRefused,
        "(c) slice deleted after the compaction: refused",
    );
    // ...and the watches resume after the compaction.
    env.api.abort_watches();
    env.api.apply(slice_obj("web", "web-1", ready(&[A, C])));
    env.wait_backends(
        web,
        &[A, C],
        "(c) change after abort past the compaction",
        WAIT_AFTER_OUTAGE,
    );
}

/// A client loops new TCP connections while the daemon is killed with SIGKILL and
/// started again with the same flags: no connection fails, the table is the same after
/// the restarted daemon has synced (twice: its start-up reconcile and a periodic one),
/// with the same handles for every chain, set and rule (the reconcile read the kernel
/// back and left identical rules in place), and the restarted daemon follows changes.
#[test]
fn kill_and_restart_without_failed_connections() {
    if !require_privileged() {
        return;
    }
    const FULL_SYNCS: &str =
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";
    let env = Env::new("restart", web_cluster(&[A, B, C]));
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B, C], "3 endpoints programmed", WAIT);
    let looper = Looper::start(&env.topo.client, dst);
    looper.wait_exact(&env, &[A, B, C], "3 endpoints", WAIT);
    // Steady state: a periodic reconcile ran after the first sync.
    env.wait_metric_above(FULL_SYNCS, 1.0, "a periodic full sync before the kill");
    let before = env.listing();
    let handles_before = env.try_listing(true).expect("table");

    looper.phase("daemon killed");
    let status = env.kill_daemon();
    assert_eq!(
        status.and_then(|s| s.signal()),
        Some(libc::SIGKILL),
        "the daemon must have died of SIGKILL: {status:?}"
    );
    looper.run_for(&env, Duration::from_secs(1));
    assert!(
        env.listing() == before,
        "the table changed while no daemon ran\n{}",
        env.diag()
    );

    looper.phase("daemon restarted");
    env.start_daemon();
    env.wait_metric_above(
        FULL_SYNCS,
        1.0,
        "the restarted daemon's start-up and periodic reconcile",
    );
    let after = env.listing();
    let handles_after = env.try_listing(true).expect("table");
    assert!(
        after == before,
        "the table differs after the restart:\n{}\n{}",
        line_diff(&before, &after),
        env.diag()
    );
    assert!(
        handles_after == handles_before,
        "objects were replaced by the restart (handles differ: our chains or rules were flushed and re-added):\n{}\n{}",
        line_diff(&handles_before, &handles_after),
        env.diag()
    );
    looper.wait_exact(&env, &[A, B, C], "3 endpoints after the restart", WAIT);

    looper.phase("change after the restart");
    env.api.apply(slice_obj("web", "web-1", ready(&[A, B])));
    looper.wait_exact(&env, &[A, B], "the restarted daemon follows a change", WAIT);
    looper.finish_clean(&env, 4 * WINDOW);
}

/// The `--sync-period` of the drift tests: far beyond their waits, so that a repair
/// they see cannot be the periodic reconcile's.
const NO_PERIODIC_RECONCILE: &str = "600s";

/// `nft flush table ip kube-nft-proxy` by hand: the daemon's periodic reconcile puts
/// every rule and element back (the listing equals the one before) and traffic works.
#[test]
fn flushed_table_is_repaired() {
    if !require_privileged() {
        return;
    }
    let env = Env::new("flush", web_cluster(&[A, B]));
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
    let before = env.listing();

    env.topo
        .node
        .run(&["nft", "flush", "table", "ip", "kube-nft-proxy"]);
    let flushed = env.try_listing(false).unwrap_or_default();
    eprintln!(
        "right after the flush the listing {} the one before",
        if flushed == before {
            "already equals"
        } else {
            "differs from"
        }
    );
    env.wait_listing(&before, "the flushed table is repaired");
    env.wait_backends(dst, &[A, B], "traffic after the repair", WAIT);
}

/// One element of our table edited by hand (the endpoints map's entry for index 0 of
/// the web Service sent to an address nobody holds), with the periodic reconcile out of
/// reach: the daemon puts the element back (the listing equals the one before) and
/// every endpoint answers again.
#[test]
fn edited_element_is_repaired() {
    if !require_privileged() {
        return;
    }
    let env = Env::started("edit", web_cluster(&[A, B]), NO_PERIODIC_RECONCILE);
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
    let before = env.listing();
    let key = format!("{WEB_IP} . tcp . 80 . 0");
    let line = before
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{key} : ")))
        .unwrap_or_else(|| panic!("no element {key} in the listing:\n{before}"));
    let script = format!(
        "delete element ip kube-nft-proxy endpoints {{ {key} }}\n\
         add element ip kube-nft-proxy endpoints {{ {key} : 10.0.2.99 . 8080 }}\n"
    );
    let path = env.dir.write("edit.nft", &script);
    // `run` fails the test if nft refuses the edit.
    env.topo.node.run(&["nft", "-f", &path]);
    eprintln!("edited {line}");
    env.wait_listing(&before, "the edited element is repaired");
    env.wait_backends(dst, &[A, B], "traffic after the repair", WAIT);
}

/// A UDP client sends a datagram every ~50 ms from one fixed source port to a ClusterIP
/// with 2 endpoints; conntrack keeps all of them on one endpoint. That endpoint is
/// deleted from the slice and its server stopped: the client's answers come from the
/// remaining endpoint (the daemon deleted the stale conntrack entry), from the same
/// source port.
#[test]
fn udp_client_moves_off_deleted_endpoint() {
    if !require_privileged() {
        return;
    }
    let env = Env::new("udp", web_cluster(&[A, B]));
    let client = UdpClient::start(&env);
    let (stuck, remaining) = client.stuck_endpoint(&env);
    let mark = client.answered();
    env.api
        .apply(slice_obj("web", "web-1", ready(&[remaining])));
    env.servers.stop(&stuck);
    client.wait_moved_to(&env, remaining, mark);
    client.finish(&env);
}

/// The endpoint a UDP flow sticks to is removed while the daemon is down (killed, so
/// no event of the removal ever reaches it): the first full sync of the restarted
/// daemon reconciles the conntrack table against the Services (upstream's periodic
/// `CleanStaleEntries`) and the client's flow moves to the remaining endpoint.
#[test]
fn udp_flow_is_moved_off_an_endpoint_removed_while_the_daemon_was_down() {
    if !require_privileged() {
        return;
    }
    let env = Env::new("udprst", web_cluster(&[A, B]));
    let client = UdpClient::start(&env);
    let (stuck, remaining) = client.stuck_endpoint(&env);
    env.kill_daemon();
    let mark = client.answered();
    env.api
        .apply(slice_obj("web", "web-1", ready(&[remaining])));
    env.servers.stop(&stuck);
    env.start_daemon();
    client.wait_moved_to(&env, remaining, mark);
    client.finish(&env);
}

/// A UDP client sending a datagram every ~50 ms from one fixed source port to
/// `WEB_IP:80` (so conntrack keeps it on one endpoint), recording the answers.
struct UdpClient {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    thread: Option<JoinHandle<io::Result<usize>>>,
}

impl UdpClient {
    const SRC_PORT: u16 = 40123;

    fn start(env: &Env) -> UdpClient {
        let dst = sockaddr(WEB_IP, 80);
        env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let thread = {
            let (stop, answers) = (stop.clone(), answers.clone());
            env.topo.client.spawn(move || -> io::Result<usize> {
                let sock = UdpSocket::bind(sockaddr(CLIENT_IP, Self::SRC_PORT))?;
                let mut buf = [0u8; 512];
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    let next = Instant::now() + Duration::from_millis(50);
                    sock.send_to(b"who are you?\n", dst)?;
                    sent += 1;
                    loop {
                        let left = next.saturating_duration_since(Instant::now());
                        if left < Duration::from_millis(1) {
                            break;
                        }
                        sock.set_read_timeout(Some(left))?;
                        match sock.recv_from(&mut buf) {
                            Ok((n, _)) => {
                                if let Ok(a) = parse_answer(&String::from_utf8_lossy(&buf[..n])) {
                                    lock(&answers).push(a);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(sent)
            })
        };
        UdpClient {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> usize {
        lock(&self.answers).len()
    }

    /// After 20 answers, all from one endpoint: (that endpoint, the other one).
    fn stuck_endpoint(&self, env: &Env) -> (String, &'static str) {
        let first: Vec<Answer> = env.wait_until("20 UDP answers", WAIT, || {
            let a = lock(&self.answers);
            if a.len() >= 20 {
                Ok(a[..20].to_vec())
            } else {
                Err(format!("{} answers", a.len()))
            }
        });
        let stuck = first[0].backend.clone();
        assert!(
            first.iter().all(|a| a.backend == stuck),
            "one source port must stay on one endpoint (conntrack): {first:?}"
        );
        let remaining = if stuck == A { B } else { A };
        eprintln!("the UDP flow is on {stuck}; deleting it, {remaining} remains");
        (stuck, remaining)
    }

    /// Waits until the last 10 answers after the first `mark` come from `remaining`.
    fn wait_moved_to(&self, env: &Env, remaining: &str, mark: usize) {
        env.wait_until(
            &format!(
                "the UDP flow from port {} answered by {remaining}",
                Self::SRC_PORT
            ),
            WAIT,
            || {
                let a = lock(&self.answers);
                let after = &a[mark.min(a.len())..];
                let last: Vec<&str> = after[after.len().saturating_sub(10)..]
                    .iter()
                    .map(|a| a.backend.as_str())
                    .collect();
                if last.len() == 10 && last.iter().all(|b| *b == remaining) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} answers since the deletion, the last ones from {last:?}",
                        after.len()
                    ))
                }
            },
        );
    }

    /// Stops the client; every answer must have gone to its own address and port.
    fn finish(mut self, env: &Env) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .thread
            .take()
            .map(|t| join(t).expect("UDP client"))
            .unwrap_or(0);
        let all = lock(&self.answers).clone();
        eprintln!(
            "{sent} datagrams sent, {} answered; kubenftproxy_conntrack_entries_deleted_total {:?}",
            all.len(),
            env.metric("kubenftproxy_conntrack_entries_deleted_total")
        );
        assert!(
            all.iter()
                .all(|a| a.seen_port == Self::SRC_PORT && a.seen_client == CLIENT_IP),
            "every answer must be to {CLIENT_IP}:{}: {:?}",
            Self::SRC_PORT,
            all.iter()
                .filter(|a| a.seen_port != Self::SRC_PORT || a.seen_client != CLIENT_IP)
                .take(5)
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The side outputs: `/healthz` and `/livez` answer 200 with upstream's JSON; an
/// eTP=Local LoadBalancer's healthCheckNodePort answers 200 with the endpoint weight
/// header and `localEndpoints` 1 while this node has an endpoint, 503 after it is
/// removed; `/metrics` carries kube-proxy's metric names and its counters grow with a
/// change; `/debug/rules` equals what `--dry-run` prints against the same API server.
#[test]
fn health_metrics_debug_rules_and_dry_run() {
    if !require_privileged() {
        return;
    }
    const HC_PORT: u16 = 30500;
    let lb = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "172.30.0.20", "clusterIPs": ["172.30.0.20"],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "ports": [{"name": "tcp", "protocol": "TCP", "port": 80,
                            "targetPort": TARGET_PORT, "nodePort": 30080}],
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": HC_PORT},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.99.1"}]}}
    });
    let lb_slice = |eps: Vec<Value>| {
        let mut s = slice_obj("lb", "lb-1", eps);
        s["metadata"]["annotations"] =
            json!({"endpoints.kubernetes.io/last-change-trigger-time": rfc3339_now()});
        s
    };
    let mut objects = web_cluster(&[A, B]);
    objects.extend([
        lb,
        lb_slice(vec![ep(A, NODE_NAME, false), ep(B, "node2", false)]),
    ]);
    let test_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let env = Env::new("side", objects);
    env.wait_backends(sockaddr(WEB_IP, 80), &[A, B], "web programmed", WAIT);

    // /healthz and /livez, on the healthz address and (as upstream) the metrics one.
    for addr in [HEALTHZ, METRICS] {
        for path in ["/healthz", "/livez"] {
            let r = env.wait_until(&format!("{addr}{path} answers 200"), WAIT, || {
                match env.http(addr, path) {
                    Ok(r) if r.status == 200 => Ok(r),
                    Ok(r) => Err(format!("{} {}", r.status, r.body)),
                    Err(e) => Err(e.to_string()),
                }
            });
            let j = r.json();
            assert_eq!(
                r.headers.get("content-type").map(String::as_str),
                Some("application/json"),
                "{addr}{path}: {r:?}"
            );
            for field in ["lastUpdated", "currentTime"] {
                let v = j[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("{addr}{path}: no {field}: {j}"));
                assert!(
                    !v.is_empty() && !v.starts_with("1970-"),
                    "{addr}{path}: {field} {v:?} (after a sync it is a real time)"
                );
            }
            if path == "/healthz" {
                assert_eq!(j["nodeEligible"], json!(true), "{addr}{path}: {j}");
            } else {
                assert!(j.get("nodeEligible").is_none(), "{addr}{path}: {j}");
            }
        }
    }

    // The healthCheckNodePort with one local endpoint.
    let hc = format!("127.0.0.1:{HC_PORT}");
    let check_hc = |status: u16, local: u64| -> Result<HttpResponse, String> {
        let r = env.http(&hc, "/").map_err(|e| format!("{hc}: {e}"))?;
        let j: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {r:?}"))?;
        let weight = r.headers.get("x-load-balancing-endpoint-weight").cloned();
        if r.status == status
            && weight.as_deref() == Some(local.to_string().as_str())
            && j["localEndpoints"] == json!(local)
        {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    };
    let r = env.wait_until("healthCheckNodePort: 200, one local endpoint", WAIT, || {
        check_hc(200, 1)
    });
    let j = r.json();
    assert_eq!(
        j["service"],
        json!({"namespace": "default", "name": "lb"}),
        "{j}"
    );
    assert_eq!(j["serviceProxyHealthy"], json!(true), "{j}");

    // /metrics: kube-proxy's names.
    let text = env.wait_until("/metrics", WAIT, || env.metrics());
    for name in [
        SYNC_COUNT,
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        LAST_SYNC,
        PROGRAMMED,
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
    ] {
        assert!(
            metric(&text, name).is_some(),
            "/metrics has no sample {name}:\n{text}"
        );
    }
    let last_sync = metric(&text, LAST_SYNC).unwrap_or(0.0);
    assert!(
        last_sync >= test_start.floor(),
        "last sync timestamp {last_sync} is before the test started ({test_start})"
    );
    let syncs = metric(&text, SYNC_COUNT).unwrap_or(0.0);
    let changes = metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap_or(0.0);
    let programmed = metric(&text, PROGRAMMED).unwrap_or(0.0);
    assert!(syncs >= 1.0, "no sync counted:\n{text}");

    // A change: the local endpoint goes away.
    env.api.apply(lb_slice(vec![ep(B, "node2", false)]));
    env.wait_until("healthCheckNodePort: 503, no local endpoint", WAIT, || {
        check_hc(503, 0)
    });
    env.wait_metric_above(SYNC_COUNT, syncs, "the sync count grows after a change");
    env.wait_metric_above(
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        changes,
        "the endpoint change is counted",
    );
    env.wait_metric_above(
        PROGRAMMED,
        programmed,
        "the slice's trigger time is observed as programming latency",
    );

    // /debug/rules equals --dry-run against the same API server, same flags.
    let url = env.api.url();
    env.wait_until("/debug/rules equals --dry-run", WAIT, || {
        let rules = match env.http(METRICS, "/debug/rules") {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => return Err(format!("/debug/rules answered {}", r.status)),
            Err(e) => return Err(format!("/debug/rules: {e}")),
        };
        let mut args = vec!["--dry-run".to_string()];
        args.extend(daemon_args(&url));
        let out = output_within(env.topo.node.command(&[BIN]).args(&args), WAIT)
            .map_err(|e| format!("--dry-run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "--dry-run failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let dry = String::from_utf8_lossy(&out.stdout).into_owned();
        if !dry.contains("default/lb:tcp") {
            return Err(format!("--dry-run output lacks the lb service:\n{dry}"));
        }
        if rules == dry {
            Ok(())
        } else {
            Err(format!(
                "/debug/rules vs --dry-run:\n{}",
                line_diff(&rules, &dry)
            ))
        }
    });

    // The Service goes away: so does its healthCheckNodePort server.
    env.api.delete("Service", "default", "lb");
    env.wait_until(
        "healthCheckNodePort closed after its Service is deleted",
        WAIT,
        || match env.http(&hc, "/") {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// Another program flushes our table, then deletes it: the daemon repairs both at once,
/// not at its next periodic reconcile (`--sync-period 1h` here). It asks the kernel
/// every 250 ms whether anyone else committed (the nftables generation id), and then
/// compares our tables' chains, rules and sets with what it programmed.
#[test]
fn drift_is_repaired_without_waiting_for_the_sync_period() {
    if !require_privileged() {
        return;
    }
    let env = Env::started("drift", web_cluster(&[A, B]), "1h");
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
    let before = env.listing();
    for edit in [
        &["nft", "flush", "table", "ip", "kube-nft-proxy"][..],
        &["nft", "delete", "table", "ip", "kube-nft-proxy"][..],
        &[
            "nft",
            "delete",
            "chain",
            "ip",
            "kube-nft-proxy",
            "nat-output",
        ][..],
    ] {
        let t0 = Instant::now();
        env.topo.node.run(edit);
        // A re-created chain is listed last: compare the lines, not their order.
        let sorted = |t: &str| {
            let mut l: Vec<String> = t.lines().map(str::to_string).collect();
            l.sort();
            l
        };
        env.wait_until(
            &format!("repaired after `{}`", edit.join(" ")),
            WAIT,
            || match env.try_listing(false) {
                Some(now) if sorted(&now) == sorted(&before) => Ok(()),
                Some(now) => Err(format!("differences:\n{}", line_diff(&before, &now))),
                None => Err("no table".into()),
            },
        );
        eprintln!("`{}` repaired after {:?}", edit.join(" "), t0.elapsed());
        env.wait_backends(dst, &[A, B], "traffic after the repair", WAIT);
    }
}

/// Another program deletes one element of our table, with the periodic reconcile out of
/// reach: the nftables notification of that transaction (not sent from one of the
/// daemon's sockets, and touching our table) makes the daemon read our tables back at
/// once and restore the element.
#[test]
fn an_element_deleted_by_hand_is_repaired() {
    if !require_privileged() {
        return;
    }
    let env = Env::started("element", web_cluster(&[A, B]), NO_PERIODIC_RECONCILE);
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "2 endpoints programmed", WAIT);
    let before = env.listing();
    let frontend = format!("{{ {WEB_IP} . tcp . 80 }}");
    let set = before
        .lines()
        .filter_map(|l| l.trim().strip_prefix("set pick-"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| format!("pick-{n}"))
        .next()
        .unwrap_or_else(|| panic!("no count class in\n{before}"));
    env.topo.node.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "kube-nft-proxy",
        &set,
        &frontend,
    ]);
    env.wait_listing(&before, "the deleted element is restored");
    env.wait_backends(dst, &[A, B], "traffic after the repair", WAIT);
}

/// `/healthz` answers while the daemon programs a large cluster for the first time:
/// the sync runs beside the health server, not in front of it. An answer counts when
/// it arrives after the daemon logged that it starts programming and before our table
/// exists (the first sync commits it at its very end).
#[test]
fn healthz_answers_during_a_full_sync() {
    if !require_privileged() {
        return;
    }
    const SERVICES: usize = 6000;
    let mut objects = vec![node_obj(), service_cidr_obj()];
    for i in 0..SERVICES {
        let name = format!("bulk{i}");
        let ip = format!("172.30.{}.{}", 1 + i / 250, 1 + i % 250);
        objects.push(service_obj(&name, &ip));
        objects.push(slice_obj(&name, &format!("{name}-1"), ready(&[A, B])));
    }
    let env = Env::started("busy", objects, "1h");
    let log = env.dir.path().join("daemon-1.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut during, mut before_programming) = (0, 0);
    while env.try_listing(false).is_none() {
        env.check_daemon();
        assert!(
            Instant::now() < deadline,
            "the daemon never programmed its table\n{}",
            env.diag()
        );
        let programming = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("programming");
        if env.http(HEALTHZ, "/healthz").is_ok() {
            if !programming {
                before_programming += 1;
            } else if env.try_listing(false).is_none() {
                during += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("/healthz answers: {before_programming} before the first sync, {during} during it");
    assert!(
        during > 0,
        "no /healthz answer arrived while the first sync ran\n{}",
        env.diag()
    );
}

/// A cluster before Kubernetes 1.33 has no ServiceCIDR API: its list answers 404. The
/// daemon programs everything else (traffic to the Service flows), only without the
/// drop for unallocated service addresses, and says so once. EndpointSlices are listed
/// without headless ones, as upstream does.
#[test]
fn without_the_service_cidr_api_everything_else_is_programmed() {
    if !require_privileged() {
        return;
    }
    let env = Env::started_with(
        "nocidr",
        web_cluster(&[A, B]),
        DaemonOpts::default(),
        |api| api.set_served("ServiceCIDR", false),
    );
    env.wait_until("the daemon programs its table", WAIT, || {
        env.try_listing(false)
            .ok_or_else(|| "no table ip kube-nft-proxy yet".to_string())
    });
    let dst = sockaddr(WEB_IP, 80);
    env.wait_backends(dst, &[A, B], "both endpoints without ServiceCIDRs", WAIT);
    let listing = env.listing();
    assert!(
        !listing.contains(&format!("ip daddr {SERVICE_CIDR} drop")),
        "a drop for unallocated addresses without any ServiceCIDR:\n{listing}\n{}",
        env.diag()
    );
    let reqs = env.api.requests();
    assert!(
        reqs.iter().any(|r| r.contains("/servicecidrs")),
        "the daemon never asked for ServiceCIDRs\n{}",
        env.diag()
    );
    let slice_lists: Vec<&String> = reqs
        .iter()
        .filter(|r| r.contains("/endpointslices") && !r.contains("watch=true"))
        .collect();
    assert!(
        !slice_lists.is_empty()
            && slice_lists
                .iter()
                .all(|r| r.contains("%21service.kubernetes.io%2Fheadless")
                    || r.contains("!service.kubernetes.io/headless")),
        "EndpointSlices listed without the headless exclusion: {slice_lists:?}"
    );
    let log = std::fs::read_to_string(env.dir.path().join("daemon-1.log")).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("does not serve this kind") && l.contains("ServiceCIDR"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one warning about the absent API\n{}",
        env.diag()
    );
}

/// The Node as [`node_obj`], with `edit` applied to its JSON.
fn node_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut n = node_obj();
    edit(&mut n);
    n
}

/// Issue 11: node eligibility (KEP-3836) and dual-stack listeners. The daemon listens on
/// the wildcard addresses (`0.0.0.0` for health, `::` for metrics), as kube-proxy's
/// defaults do; both answer on `127.0.0.1` and `::1` of the node namespace. A Node the
/// cluster autoscaler tainted for deletion, or one being deleted, makes `/healthz` 503
/// with `"nodeEligible": false` so that load balancers drain the node; `/livez` stays
/// 200 (a kubelet liveness probe must not restart the proxy then). `/metrics` carries
/// upstream's names and labels.
#[test]
fn node_eligibility_dual_stack_listeners_and_upstream_metrics() {
    if !require_privileged() {
        return;
    }
    let opts = DaemonOpts {
        healthz: "0.0.0.0:10256",
        metrics: "[::]:10249",
        ..DaemonOpts::default()
    };
    let env = Env::started_with("eligible", web_cluster(&[A, B]), opts, |_| {});
    env.wait_backends(sockaddr(WEB_IP, 80), &[A, B], "web programmed", WAIT);
    let healthz = ["127.0.0.1:10256", "[::1]:10256"];
    let metrics = ["127.0.0.1:10249", "[::1]:10249"];

    // Every health address answers `path` with `status` and, for /healthz,
    // `nodeEligible` = `eligible`.
    let answers = |path: &str, status: u16, eligible: bool| -> Result<(), String> {
        for addr in healthz {
            let r = env
                .http(addr, path)
                .map_err(|e| format!("{addr}{path}: {e}"))?;
            let j: Value = serde_json::from_str(&r.body)
                .map_err(|e| format!("{addr}{path}: not JSON ({e}): {r:?}"))?;
            let want = if path == "/healthz" {
                json!(eligible)
            } else {
                Value::Null
            };
            if r.status != status || j.get("nodeEligible").unwrap_or(&Value::Null) != &want {
                return Err(format!(
                    "{addr}{path}: {} {} (want {status}, nodeEligible {want})",
                    r.status, r.body
                ));
            }
        }
        Ok(())
    };
    let steps: [(&str, Value, bool); 4] = [
        ("an ordinary Node", node_obj(), true),
        (
            "tainted ToBeDeletedByClusterAutoscaler",
            node_with(|n| {
                n["spec"] = json!({"taints": [
                    {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000",
                     "effect": "NoSchedule"}
                ]})
            }),
            false,
        ),
        (
            "the taint removed (the scale-down was cancelled)",
            node_obj(),
            true,
        ),
        (
            "being deleted (deletionTimestamp, a finalizer holds it)",
            node_with(|n| {
                n["metadata"]["deletionTimestamp"] = json!(rfc3339_now());
                n["metadata"]["finalizers"] = json!(["example.com/hold"]);
            }),
            false,
        ),
    ];
    for (what, node, eligible) in steps {
        env.api.apply(node);
        let status = if eligible { 200 } else { 503 };
        env.wait_until(&format!("{what}: /healthz {status}"), WAIT, || {
            answers("/healthz", status, eligible)
        });
        answers("/livez", 200, eligible)
            .unwrap_or_else(|e| panic!("{what}: /livez: {e}\n{}", env.diag()));
        // Draining the node changes nothing in the data plane.
        env.wait_backends(sockaddr(WEB_IP, 80), &[A, B], what, WAIT);
    }

    // /metrics on both loopbacks, with upstream's names and labels.
    let mut text = String::new();
    for addr in metrics {
        text = env.wait_until(&format!("{addr}/metrics"), WAIT, || env.metrics_at(addr));
    }
    for fam in ["IPv4", "IPv6"] {
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
            "kubeproxy_network_programming_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        ] {
            let sample = format!("{name}{{ip_family=\"{fam}\"}}");
            assert!(
                metric(&text, &sample).is_some(),
                "/metrics has no sample {sample}:\n{text}"
            );
        }
        for policy in ["internal", "external"] {
            let sample = format!(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"{fam}\",traffic_policy=\"{policy}\"}}"
            );
            assert!(
                metric(&text, &sample).is_some(),
                "/metrics has no sample {sample}:\n{text}"
            );
        }
    }
    assert!(
        metric(&text, SYNC_COUNT).is_some_and(|v| v >= 1.0),
        "no sync counted under IPv4:\n{text}"
    );
    for name in [
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
    ] {
        assert!(
            metric(&text, name).is_some(),
            "/metrics has no sample {name}:\n{text}"
        );
    }
    // Every probe above was answered by the healthz server and counted by code.
    for (sample, at_least) in [
        ("kubeproxy_proxy_healthz_total{code=\"200\"}", 1.0),
        ("kubeproxy_proxy_healthz_total{code=\"503\"}", 1.0),
        ("kubeproxy_proxy_livez_total{code=\"200\"}", 1.0),
        ("kubeproxy_proxy_livez_total{code=\"503\"}", 0.0),
    ] {
        let v = metric(&text, sample).unwrap_or(-1.0);
        assert!(v >= at_least, "{sample} = {v}, want >= {at_least}:\n{text}");
    }
    // Upstream's network programming buckets: 0, 0.25, 0.5, 1..59 s, 60..115 s by 5,
    // 2..5 min by 30 s.
    let les: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix(
                "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"",
            )
        })
        .filter_map(|l| l.split('"').next())
        .collect();
    let mut want: Vec<String> = ["0", "0.25", "0.5"].map(String::from).to_vec();
    want.extend((1..=59).map(|s| s.to_string()));
    want.extend((0..12).map(|i| (60 + 5 * i).to_string()));
    want.extend((0..7).map(|i| (120 + 30 * i).to_string()));
    want.push("+Inf".into());
    assert_eq!(les, want, "network programming buckets");
}

/// `kubeproxy_sync_proxy_rules_{service,endpoint}_changes_pending` count the Services
/// with changes waiting for a sync. `--min-sync-period 1h` holds every change after
/// the first sync, so the gauges show them.
#[test]
fn changes_pending_while_a_sync_waits() {
    if !require_privileged() {
        return;
    }
    let opts = DaemonOpts {
        sync_period: "1h",
        min_sync_period: "1h",
        ..DaemonOpts::default()
    };
    let env = Env::started_with("pending", web_cluster(&[A, B]), opts, |_| {});
    env.wait_backends(sockaddr(WEB_IP, 80), &[A, B], "web programmed", WAIT);
    let pending = |kind: &str| format!("kubeproxy_sync_proxy_rules_{kind}_changes_pending");
    env.wait_until("nothing pending after the first sync", WAIT, || {
        let s = env.metric(&pending("service"))?;
        let e = env.metric(&pending("endpoint"))?;
        if s == 0.0 && e == 0.0 {
            Ok(())
        } else {
            Err(format!("service {s}, endpoint {e}"))
        }
    });
    // Two slices of one Service change (one Service with pending endpoint changes),
    // and two Services change.
    env.api.apply(slice_obj("web", "web-1", ready(&[A])));
    env.api.apply(slice_obj("web", "web-2", ready(&[C])));
    env.api.apply(service_obj("api", "172.30.0.11"));
    env.api.apply(service_obj("db", "172.30.0.12"));
    env.wait_until("the held changes are pending", WAIT, || {
        let s = env.metric(&pending("service"))?;
        let e = env.metric(&pending("endpoint"))?;
        if s == 2.0 && e == 1.0 {
            Ok(())
        } else {
            Err(format!("service {s}, endpoint {e}; want 2 and 1"))
        }
    });
}

/// `--cleanup-kube-proxy` in the daemon: after its first sync it removes what
/// kube-proxy's iptables mode left in iptables-nft's tables (in one transaction per
/// family, over netlink) and its ipsets, keeps kubelet's chain, and logs the report.
#[test]
fn daemon_takes_over_from_kube_proxys_iptables_leftovers() {
    if !require_privileged() {
        return;
    }
    for tool in ["iptables-nft-restore", "iptables-nft-save", "ipset"] {
        let there = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !there {
            assert!(
                std::env::var("KNP_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "KNP_REQUIRE_PRIVILEGED=1 but {tool} is missing (Debian packages iptables, ipset)"
            );
            eprintln!("skipping: {tool} is missing");
            return;
        }
    }
    const LEFTOVERS: &str = "*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-SERVICES
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -j KUBE-MARK-MASQ
COMMIT
";
    let opts = DaemonOpts {
        cleanup_kube_proxy: true,
        ..DaemonOpts::default()
    };
    let env = Env::started_on(
        "dmig",
        web_cluster(&[A, B]),
        opts,
        |_| {},
        |node| {
            node.run_with_stdin(
                &["ipset", "restore"],
                "create KUBE-CLUSTER-IP hash:ip,port family inet\n",
            );
            node.run_with_stdin(&["iptables-nft-restore"], LEFTOVERS);
        },
    );
    let log_path = env.dir.path().join("daemon-1.log");
    let log = env.wait_until(
        "the daemon reports kube-proxy's leftovers removed",
        WAIT,
        || {
            let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
            if log.contains("removed kube-proxy's leftovers") {
                Ok(log)
            } else {
                Err(tail(&log, 20))
            }
        },
    );
    let report = log
        .lines()
        .find(|l| l.contains("removed kube-proxy's leftovers"))
        .unwrap_or_default();
    for field in [
        "iptables_nft_chains=3",
        "iptables_nft_rules=2",
        "ipsets=1",
        "skipped=0",
        "failed=0",
    ] {
        assert!(
            report.contains(field),
            "no {field} in: {report}\n{}",
            env.diag()
        );
    }
    let save = env.topo.node.run(&["iptables-nft-save"]);
    assert!(
        !save.contains("KUBE-SERVICES") && !save.contains("KUBE-MARK-MASQ"),
        "kube-proxy's chains are still there:\n{save}"
    );
    assert!(
        save.contains(":KUBE-FIREWALL") && save.contains("-A INPUT -j KUBE-FIREWALL"),
        "kubelet's chain or its jump was removed:\n{save}"
    );
    let sets = env.topo.node.run(&["ipset", "list", "-n"]);
    assert!(sets.trim().is_empty(), "ipsets left: {sets}");
    assert!(
        env.try_listing(false).is_some(),
        "our table is missing\n{}",
        env.diag()
    );
    env.check_daemon();
}

// ---------------------------------------------------------------------------------
// Per-Service counters (issue 10)

/// One request datagram to `dst` from a new socket (a new flow, on a new port).
fn udp_ask(dst: SocketAddr) -> io::Result<Answer> {
    let sock = UdpSocket::bind(sockaddr(CLIENT_IP, 0))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.connect(dst)?;
    sock.send(b"who are you?\n")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse_answer(&String::from_utf8_lossy(&buf[..n]))
}

/// Panics unless `r` is a refusal (ECONNREFUSED: the node's ICMP port unreachable).
fn expect_refused(r: io::Result<Answer>, what: &str) {
    match r {
        Ok(a) => panic!("{what}: answered by {a:?}, want a refusal"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}"),
    }
}

/// The per-Service samples of a `/metrics` text: `name{labels}` → value.
fn service_samples(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| l.starts_with("kubenftproxy_service_"))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The packets counted by the element of `set` (in the node's IPv4 table) whose key
/// starts with `prefix`, as nft lists it.
fn kernel_packets(env: &Env, set: &str, prefix: &str) -> Result<u64, String> {
    let out = env
        .topo
        .node
        .command(&["nft", "list", "set", "ip", "kube-nft-proxy", set])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let body = text
        .split_once("elements = {")
        .and_then(|(_, b)| b.split_once('}'))
        .map(|(b, _)| b)
        .ok_or_else(|| format!("no elements in set {set}: {text}"))?;
    split_elements(body)
        .into_iter()
        .find(|e| e.starts_with(prefix))
        .and_then(|e| {
            e.split_once("counter packets ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| format!("no counted element {prefix} in set {set}: {text}"))
}

/// Issue 10, acceptance 4: with `--service-counters`, `/metrics` counts each new
/// connection to a Service port with endpoints once and each refused one once, with its
/// reason, by exactly the number made (TCP and UDP, from a pod through the node); every
/// other series stays as it was. Adding a Service whose frontend joins the same counted
/// set is element-only (the kernel's counter of the other Service's element keeps its
/// value); a Service that grows into another endpoint-count class gets a new element,
/// and its series goes on from where it was instead of falling back.
#[test]
fn service_counters_count_real_connections_and_refusals() {
    if !require_privileged() {
        return;
    }
    const EMPTY_IP: &str = "172.30.0.20";
    const OTHER_IP: &str = "172.30.0.30";
    let mut objects = web_cluster(&[A, B]);
    // No EndpointSlice: both ports reject.
    objects.push(service_obj("empty", EMPTY_IP));
    let opts = DaemonOpts {
        extra: &["--service-counters"],
        ..DaemonOpts::default()
    };
    let env = Env::started_with("counters", objects, opts, |_| {});
    let (web, empty) = (sockaddr(WEB_IP, 80), sockaddr(EMPTY_IP, 80));
    env.wait_backends(web, &[A, B], "web programmed", WAIT);
    env.wait_failing(empty, io::ErrorKind::ConnectionRefused, "empty refuses");
    let series = |svc: &str, port: &str| {
        format!("kubenftproxy_service_new_connections_total{{namespace=\"default\",service=\"{svc}\",port=\"{port}\",family=\"IPv4\"}}")
    };
    let refused = |svc: &str, port: &str| {
        format!("kubenftproxy_service_rejected_total{{namespace=\"default\",service=\"{svc}\",port=\"{port}\",family=\"IPv4\",reason=\"no_endpoints\"}}")
    };
    let names = [
        series("web", "tcp"),
        series("web", "udp"),
        refused("empty", "tcp"),
        refused("empty", "udp"),
    ];
    // Scrapes less than a second apart may share one reading: wait for the values to
    // be what they must be, and fail on anything else once the wait is over.
    let wait_samples = |what: &str, want: &BTreeMap<String, u64>| {
        env.wait_until(what, WAIT, || {
            let got = service_samples(&env.metrics()?);
            if &got == want {
                Ok(())
            } else {
                Err(format!("samples {got:#?}\nwant {want:#?}"))
            }
        })
    };
    let before = env.wait_until("every series on /metrics", WAIT, || {
        let got = service_samples(&env.metrics()?);
        if names.iter().all(|n| got.contains_key(n)) {
            Ok(got)
        } else {
            Err(format!("samples {got:#?}"))
        }
    });
    assert!(
        before[&series("web", "tcp")] >= WINDOW as u64,
        "the {WINDOW} connections that found web programmed are not counted: {before:#?}"
    );

    const TCP_OK: u64 = 7;
    const UDP_OK: u64 = 5;
    const TCP_REFUSED: u64 = 4;
    const UDP_REFUSED: u64 = 3;
    join(env.topo.client.spawn(move || {
        for i in 0..TCP_OK {
            tcp_ask(web).unwrap_or_else(|e| panic!("TCP connection {i} to web: {e}"));
        }
        for i in 0..UDP_OK {
            udp_ask(web).unwrap_or_else(|e| panic!("UDP flow {i} to web: {e}"));
        }
        for i in 0..TCP_REFUSED {
            expect_refused(tcp_ask(empty), &format!("TCP connection {i} to empty"));
        }
        for i in 0..UDP_REFUSED {
            expect_refused(udp_ask(empty), &format!("UDP flow {i} to empty"));
        }
    }));
    let mut want = before.clone();
    for (name, n) in names.iter().zip([TCP_OK, UDP_OK, TCP_REFUSED, UDP_REFUSED]) {
        *want.entry(name.clone()).or_default() += n;
    }
    wait_samples("the counters grow by the connections made", &want);

    // Another Service with 2 endpoints: its frontends join web's class sets (`pick-2`)
    // in an element-only transaction; web's elements keep their kernel counters.
    let web_tcp = format!("{WEB_IP} . tcp . 80 ");
    let kernel_before = kernel_packets(&env, "pick-2", &web_tcp).unwrap_or_else(|e| panic!("{e}"));
    env.api.apply(service_obj("other", OTHER_IP));
    env.api.apply(slice_obj("other", "other-1", ready(&[C, D])));
    env.wait_backends(sockaddr(OTHER_IP, 80), &[C, D], "other programmed", WAIT);
    assert_eq!(
        kernel_packets(&env, "pick-2", &web_tcp),
        Ok(kernel_before),
        "web's counter in pick-2 changed when another Service joined the set"
    );
    let other = env.wait_until("other's series", WAIT, || {
        let got = service_samples(&env.metrics()?);
        match got.get(&series("other", "tcp")) {
            Some(_) => Ok(got),
            None => Err(format!("samples {got:#?}")),
        }
    });
    for n in &names {
        assert_eq!(other.get(n), want.get(n), "{n} moved");
    }

    // web grows to 3 endpoints: its frontends move from pick-2 to pick-4 (new elements,
    // counting from 0). The series goes on.
    env.api.apply(slice_obj("web", "web-1", ready(&[A, B, C])));
    env.wait_until("web in pick-4", WAIT, || {
        kernel_packets(&env, "pick-4", &web_tcp)
    });
    let at_move = want[&series("web", "tcp")];
    join(env.topo.client.spawn(move || {
        for i in 0..2 {
            tcp_ask(web).unwrap_or_else(|e| panic!("TCP connection {i} to web: {e}"));
        }
    }));
    env.wait_until("web's series after the class change", WAIT, || {
        let got = service_samples(&env.metrics()?);
        match got.get(&series("web", "tcp")) {
            Some(v) if *v == at_move + 2 => Ok(()),
            v => Err(format!("{v:?}, want {}", at_move + 2)),
        }
    });
}
