//! A small in-memory Kubernetes API server over plain HTTP/1.1 (no TLS), std + serde_json only.
//!
//! It serves Services, EndpointSlices, ServiceCIDRs and Nodes the way kube-rs (`Api::list`,
//! `Api::watch`, kube-runtime's `watcher` in both its list-then-watch and streaming-list modes)
//! talks to a real API server:
//!
//! * one global `resourceVersion` counter (starts at 1000, only grows); every `apply`/`delete`
//!   bumps it, stamps `metadata.resourceVersion` and appends to a bounded change history;
//! * LIST with `limit`/`continue` (consistent snapshot pages), `labelSelector`, `fieldSelector`,
//!   `resourceVersion` + `resourceVersionMatch`;
//! * WATCH (`watch=true`) as a chunked stream of one JSON event per line: replay from a
//!   `resourceVersion` out of the history, `410 Expired` ERROR events for compacted versions,
//!   `sendInitialEvents=true` with the `k8s.io/initial-events-end` bookmark, periodic and
//!   on-demand BOOKMARKs, `timeoutSeconds`, and ADDED/DELETED for objects that start/stop
//!   matching the watch's selectors;
//! * fault hooks: close or abort every watch, compact history, inject 500/429/403 answers,
//!   delay answers, stop and restart on the same port with the store kept.
//!
//! Semantics of `resourceVersion` on a watch without `sendInitialEvents`, as the real server:
//! unset or `"0"` first sends every current matching object as ADDED (legacy "get state and
//! start"), then live events; `sendInitialEvents=false` with unset/`"0"` starts from now; any
//! other value replays the history after it (410 ERROR event if it is compacted).
//!
//! Include it with `#[path = "support/apiserver.rs"] mod apiserver;` and start it with
//! [`ApiServer::start`].
// Included by several test crates and an example through `#[path]`; each uses a different subset.
#![allow(dead_code)]

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Bound;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The kinds this server stores, in the order of its resource table.
pub const KINDS: [&str; 4] = ["Service", "EndpointSlice", "ServiceCIDR", "Node"];

/// The first `resourceVersion`; the first change gets `FIRST_RESOURCE_VERSION + 1`.
pub const FIRST_RESOURCE_VERSION: u64 = 1000;

struct Resource {
    kind: &'static str,
    list_kind: &'static str,
    api_version: &'static str,
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    prefix: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const RESOURCES: [Resource; 4] = [
    Resource {
        kind: "Service",
        list_kind: "ServiceList",
        api_version: "v1",
        prefix: "/api/v1",
        plural: "services",
        namespaced: true,
    },
    Resource {
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        api_version: "discovery.k8s.io/v1",
        prefix: "/apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
    Resource {
        kind: "ServiceCIDR",
        list_kind: "ServiceCIDRList",
        api_version: "networking.k8s.io/v1",
        prefix: "/apis/networking.k8s.io/v1",
        plural: "servicecidrs",
        namespaced: false,
    },
    Resource {
        kind: "Node",
        list_kind: "NodeList",
        api_version: "v1",
        prefix: "/api/v1",
        plural: "nodes",
        namespaced: false,
    },
];

fn resource_index(kind: &str) -> Option<usize> {
    RESOURCES.iter().position(|r| r.kind == kind)
}

/// How long an idle keep-alive connection is kept open (hyper's pool drops idle ones at 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a watch checks that its client is still connected.
const PEER_CHECK: Duration = Duration::from_millis(200);
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// An injected failure answer (see [`ApiServer::fail_next`] and [`ApiServer::fail_all`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `500 Internal Server Error`, `Status` reason `InternalError`.
    InternalError,
    /// `429 Too Many Requests` with `Retry-After: 1`, `Status` reason `TooManyRequests`.
    TooManyRequests,
    /// `403 Forbidden`, `Status` reason `Forbidden`.
    Forbidden,
}

/// Server settings for [`ApiServer::start_with`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Interval of periodic BOOKMARKs on watches with `allowWatchBookmarks=true`. Default 1 s.
    pub bookmark_interval: Duration,
    /// Changes kept for watch replay; older resource versions get 410. Default 10 000.
    pub history_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            bookmark_interval: Duration::from_secs(1),
            history_limit: 10_000,
        }
    }
}

/// (namespace, name); the namespace is "" for cluster-scoped kinds.
type Key = (String, String);

/// One change of the store, kept in the history and sent to live watches.
struct Change {
    rv: u64,
    res: usize,
    key: Key,
    /// The object before the change (`None` on creation).
    old: Option<Value>,
    /// The object after the change (`None` on deletion).
    new: Option<Value>,
}

enum Msg {
    Change(Arc<Change>),
    Bookmark,
    Close,
    Abort,
}

struct Store {
    rv: u64,
    objects: Vec<BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    /// Every change with `rv > oldest` is in `history`.
    oldest: u64,
    watchers: Vec<(u64, Sender<Msg>)>,
    next_watch_id: u64,
    next_uid: u64,
}

impl Store {
    fn record(&mut self, change: Change, history_limit: usize) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.rv;
            }
        }
        self.watchers
            .retain(|(_, tx)| tx.send(Msg::Change(change.clone())).is_ok());
    }

    /// The objects of one kind as they were at `rv`, or `None` if history no longer reaches it.
    fn snapshot(&self, res: usize, rv: u64) -> Option<BTreeMap<Key, Value>> {
        if rv < self.oldest || rv > self.rv {
            return None;
        }
        let mut map = self.objects[res].clone();
        for change in self.history.iter().rev() {
            if change.rv <= rv {
                break;
            }
            if change.res != res {
                continue;
            }
            match &change.old {
                Some(old) => map.insert(change.key.clone(), old.clone()),
                None => map.remove(&change.key),
            };
        }
        Some(map)
    }

    fn broadcast(&mut self, make: impl Fn() -> Msg) {
        self.watchers.retain(|(_, tx)| tx.send(make()).is_ok());
    }
}

#[derive(Default)]
struct Faults {
    /// The fault and how many more requests get it (`None`: every request until cleared).
    active: Option<(Fault, Option<usize>)>,
    delay: Duration,
    /// kinds answered as an API server that does not serve them (404 on every path)
    unserved: Vec<usize>,
}

struct Conns {
    running: bool,
    next_id: u64,
    open: HashMap<u64, TcpStream>,
}

struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    conns: Mutex<Conns>,
    log: Mutex<Vec<String>>,
    bookmark_interval: Duration,
    history_limit: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not wedge the server for the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running test API server. Dropping it stops it. All methods take `&self` and are safe to
/// call from any thread.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl ApiServer {
    /// Starts a server on `127.0.0.1:0` with 1 s bookmarks; panics if it cannot bind.
    pub fn start() -> ApiServer {
        ApiServer::start_with(Config::default()).expect("start test API server")
    }

    /// Starts a server with the given settings.
    pub fn start_with(config: Config) -> io::Result<ApiServer> {
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: FIRST_RESOURCE_VERSION,
                objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                oldest: FIRST_RESOURCE_VERSION,
                watchers: Vec::new(),
                next_watch_id: 1,
                next_uid: 1,
            }),
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(Conns {
                running: true,
                next_id: 1,
                open: HashMap::new(),
            }),
            log: Mutex::new(Vec::new()),
            bookmark_interval: config.bookmark_interval,
            history_limit: config.history_limit,
        });
        let server = ApiServer {
            shared: shared.clone(),
            addr,
            acceptor: Mutex::new(None),
        };
        *lock(&server.acceptor) = Some(spawn_acceptor(shared, listener));
        Ok(server)
    }

    /// The base URL, `http://IP:PORT` (a loopback IP when listening on an unspecified address).
    pub fn url(&self) -> String {
        format!("http://{}", self.connect_addr())
    }

    /// The address the server listens on (the real port, also after `start_again`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates or replaces an object (by kind, namespace, name), bumping the resourceVersion.
    /// Fills in `apiVersion`, `metadata.namespace` (`default` for namespaced kinds when missing;
    /// removed for cluster-scoped kinds), `metadata.uid` (kept across replacements) and
    /// `metadata.resourceVersion`. Returns the stored object. Panics on an unknown kind or a
    /// missing `metadata.name`.
    pub fn apply(&self, obj: Value) -> Value {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let res = resource_index(&kind)
            .unwrap_or_else(|| panic!("apiserver: unknown kind {kind:?}; known: {KINDS:?}"));
        let r = &RESOURCES[res];
        let mut obj = obj;
        obj["apiVersion"] = json!(r.api_version);
        if !obj["metadata"].is_object() {
            panic!("apiserver: {kind} without metadata");
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| panic!("apiserver: {kind} without metadata.name"))
            .to_string();
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        let ns = if r.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key = (ns, name);

        let mut st = lock(&self.shared.store);
        st.rv += 1;
        let rv = st.rv;
        let old = st.objects[res].get(&key).cloned();
        let has_uid = obj["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty());
        if !has_uid {
            let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
                Some(uid) => uid.to_string(),
                None => {
                    st.next_uid += 1;
                    format!("00000000-0000-4000-8000-{:012x}", st.next_uid - 1)
                }
            };
            obj["metadata"]["uid"] = json!(uid);
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects[res].insert(key.clone(), obj.clone());
        let change = Change {
            rv,
            res,
            key,
            old,
            new: Some(obj.clone()),
        };
        st.record(change, self.shared.history_limit);
        obj
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds (pass "").
    /// Returns the deleted object (stamped with the deletion's resourceVersion), or `None` if
    /// there was no such object (then nothing changes). Panics on an unknown kind.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_index(kind)
            .unwrap_or_else(|| panic!("apiserver: unknown kind {kind:?}; known: {KINDS:?}"));
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        let key = (ns.to_string(), name.to_string());
        let mut st = lock(&self.shared.store);
        let old = st.objects[res].remove(&key)?;
        st.rv += 1;
        let rv = st.rv;
        let deleted = stamped(&old, rv);
        let change = Change {
            rv,
            res,
            key,
            old: Some(old),
            new: None,
        };
        st.record(change, self.shared.history_limit);
        Some(deleted)
    }

    /// The current objects of a kind, ordered by namespace then name. Panics on an unknown kind.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let res = resource_index(kind)
            .unwrap_or_else(|| panic!("apiserver: unknown kind {kind:?}; known: {KINDS:?}"));
        lock(&self.shared.store).objects[res]
            .values()
            .cloned()
            .collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Number of watch streams currently open.
    pub fn watch_count(&self) -> usize {
        lock(&self.shared.store).watchers.len()
    }

    /// Waits until at least `n` watches are open; false if `timeout` passes first.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.watch_count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every request line received so far, in order, e.g. `GET /api/v1/services?limit=500`
    /// (the path and query as the client sent them, still percent-encoded).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Sends a BOOKMARK now on every watch that asked for bookmarks.
    pub fn bookmark_now(&self) {
        lock(&self.shared.store).broadcast(|| Msg::Bookmark);
    }

    /// Ends every open watch cleanly (terminating chunk; the connection stays usable).
    pub fn close_watches(&self) {
        lock(&self.shared.store).broadcast(|| Msg::Close);
    }

    /// Drops the TCP connection of every open watch mid-stream, without the terminating chunk.
    pub fn abort_watches(&self) {
        lock(&self.shared.store).broadcast(|| Msg::Abort);
    }

    /// Drops the whole change history: a watch or a list `continue` from any older
    /// resourceVersion now gets 410 Expired. Open watches keep streaming.
    pub fn compact(&self) {
        let mut st = lock(&self.shared.store);
        st.history.clear();
        st.oldest = st.rv;
    }

    /// Answers the next `count` requests (of any kind, `/version` included) with `fault`.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        lock(&self.shared.faults).active = (count > 0).then_some((fault, Some(count)));
    }

    /// Answers every request with `fault` until [`ApiServer::clear_faults`].
    pub fn fail_all(&self, fault: Fault) {
        lock(&self.shared.faults).active = Some((fault, None));
    }

    /// Stops injecting faults (the delay stays).
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).active = None;
    }

    /// Answers every request for `kind` with 404, as an API server that does not serve
    /// it (a cluster before the kind's API existed); `false` serves it again.
    pub fn set_served(&self, kind: &str, served: bool) {
        let Some(res) = resource_index(kind) else {
            panic!("unknown kind {kind}");
        };
        let mut f = lock(&self.shared.faults);
        f.unserved.retain(|r| *r != res);
        if !served {
            f.unserved.push(res);
        }
    }

    /// Waits `delay` before answering each request (`Duration::ZERO` to stop).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Stops listening and drops every open connection (watches end without the terminating
    /// chunk); the store is kept. Idempotent.
    pub fn stop(&self) {
        let handle = lock(&self.acceptor).take();
        let Some(handle) = handle else { return };
        {
            let mut conns = lock(&self.shared.conns);
            conns.running = false;
            for (_, stream) in conns.open.drain() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        lock(&self.shared.store).broadcast(|| Msg::Abort);
        // Wake the acceptor blocked in accept(); it sees `running == false` and drops the listener.
        let _ = TcpStream::connect_timeout(&self.connect_addr(), Duration::from_secs(2));
        let _ = handle.join();
    }

    /// Listens again on the same address and port after [`ApiServer::stop`], with the same
    /// store. Does nothing if the server is running.
    pub fn start_again(&self) -> io::Result<()> {
        let mut acceptor = lock(&self.acceptor);
        if acceptor.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)?;
        lock(&self.shared.conns).running = true;
        *acceptor = Some(spawn_acceptor(self.shared.clone(), listener));
        Ok(())
    }

    fn connect_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        addr
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stamped(obj: &Value, rv: u64) -> Value {
    let mut obj = obj.clone();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    obj
}

fn spawn_acceptor(shared: Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    thread::spawn(move || loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                if !lock(&shared.conns).running {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = {
            let mut conns = lock(&shared.conns);
            if !conns.running {
                return;
            }
            let id = conns.next_id;
            conns.next_id += 1;
            if let Ok(clone) = stream.try_clone() {
                conns.open.insert(id, clone);
            }
            id
        };
        let shared = shared.clone();
        thread::spawn(move || {
            serve_connection(&shared, stream);
            lock(&shared.conns).open.remove(&id);
        });
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    /// The raw request target (path and query, percent-encoded).
    target: String,
    path: String,
    query: Vec<(String, String)>,
    keep_alive: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> Option<bool> {
        self.param(name).map(|v| v == "true" || v == "1")
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(_) => {
                let body = status_body(400, "BadRequest", "malformed HTTP request");
                let _ = write_response(&mut writer, 400, &[], &body, true);
                return;
            }
        };
        lock(&shared.log).push(format!("{} {}", req.method, req.target));
        match handle(shared, &req, &mut writer) {
            Ok(true) if req.keep_alive => continue,
            _ => return,
        }
    }
}

/// Reads one request's head and discards its body. `Ok(None)` on a clean EOF before a request.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut total = 0;
    let mut line = String::new();
    // Skip empty lines before the request line (RFC 9112 2.2).
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if total > MAX_HEADER_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let method = method.to_string();
    let target = target.to_string();
    let http10 = version == "HTTP/1.0";
    let mut keep_alive = !http10;
    let mut content_length = 0u64;
    let mut chunked = false;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in head"));
        }
        total += n;
        if total > MAX_HEADER_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad header"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.split(',').any(|t| t.trim() == "close") {
                    keep_alive = false;
                } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {} // Accept, User-Agent, Authorization, Host, ...: not needed.
        }
    }
    if chunked {
        // Request bodies are never needed; rather than decode one, answer and close.
        keep_alive = false;
    } else if content_length > 0 {
        io::copy(&mut reader.by_ref().take(content_length), &mut io::sink())?;
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
    let query = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request {
        method,
        path: percent_decode(raw_path),
        target: target.clone(),
        query,
        keep_alive,
    }))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn write_response(
    w: &mut TcpStream,
    code: u16,
    extra_headers: &[(&str, &str)],
    body: &Value,
    close: bool,
) -> io::Result<()> {
    let body = body.to_string();
    write_raw_response(
        w,
        code,
        "application/json",
        extra_headers,
        body.as_bytes(),
        close,
    )
}

fn write_raw_response(
    w: &mut TcpStream,
    code: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason_phrase(code),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// A `meta/v1 Status` failure object.
fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn write_status(
    w: &mut TcpStream,
    code: u16,
    reason: &str,
    message: &str,
    close: bool,
) -> io::Result<bool> {
    write_response(w, code, &[], &status_body(code, reason, message), close)?;
    Ok(true)
}

enum Route {
    Collection {
        res: usize,
        ns: Option<String>,
    },
    Object {
        res: usize,
        ns: Option<String>,
        name: String,
    },
}

fn route(path: &str) -> Option<Route> {
    for (res, r) in RESOURCES.iter().enumerate() {
        let Some(rest) = path.strip_prefix(r.prefix) else {
            continue;
        };
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').skip(1).collect();
        let (ns, tail) = match segs.as_slice() {
            ["namespaces", ns, tail @ ..] if r.namespaced && !tail.is_empty() => {
                (Some(ns.to_string()), tail)
            }
            other => (None, other),
        };
        match tail {
            [plural] if *plural == r.plural => return Some(Route::Collection { res, ns }),
            [plural, name] if *plural == r.plural && !name.is_empty() => {
                return Some(Route::Object {
                    res,
                    ns,
                    name: name.to_string(),
                })
            }
            _ => {}
        }
    }
    None
}

/// Answers one request. `Ok(true)` if the connection may serve another request.
fn handle(shared: &Shared, req: &Request, w: &mut TcpStream) -> io::Result<bool> {
    let (delay, fault, unserved) = {
        let mut faults = lock(&shared.faults);
        let fault = match &mut faults.active {
            None => None,
            Some((fault, None)) => Some(*fault),
            Some((fault, Some(left))) => {
                let fault = *fault;
                *left -= 1;
                if *left == 0 {
                    faults.active = None;
                }
                Some(fault)
            }
        };
        (faults.delay, fault, faults.unserved.clone())
    };
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let close = !req.keep_alive;
    if let Some(fault) = fault {
        let (code, reason, message, headers): (u16, &str, &str, &[(&str, &str)]) = match fault {
            Fault::InternalError => (500, "InternalError", "injected internal error", &[]),
            Fault::TooManyRequests => (
                429,
                "TooManyRequests",
                "injected: too many requests, please try again later",
                &[("Retry-After", "1")],
            ),
            Fault::Forbidden => (403, "Forbidden", "injected: forbidden", &[]),
        };
        let mut body = status_body(code, reason, message);
        if fault == Fault::TooManyRequests {
            body["details"] = json!({"retryAfterSeconds": 1});
        }
        write_response(w, code, headers, &body, close)?;
        return Ok(true);
    }
    if req.method != "GET" {
        let message = format!(
            "the server does not allow the method {} here (read-only test server)",
            req.method
        );
        return write_status(w, 405, "MethodNotAllowed", &message, close);
    }
    match req.path.as_str() {
        "/version" => {
            let body = json!({
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.0",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-08-27T00:00:00Z",
                "goVersion": "go1.24.6",
                "compiler": "gc",
                "platform": "linux/amd64",
            });
            write_response(w, 200, &[], &body, close)?;
            return Ok(true);
        }
        "/healthz" | "/livez" | "/readyz" => {
            write_raw_response(w, 200, "text/plain; charset=utf-8", &[], b"ok", close)?;
            return Ok(true);
        }
        _ => {}
    }
    let route = route(&req.path).filter(|r| {
        let (Route::Collection { res, .. } | Route::Object { res, .. }) = r;
        !unserved.contains(res)
    });
    match route {
        Some(Route::Collection { res, ns }) => {
            let filter = match Filter::from_request(res, ns, req) {
                Ok(filter) => filter,
                Err(message) => return write_status(w, 400, "BadRequest", &message, close),
            };
            if req.flag("watch") == Some(true) {
                watch(shared, req, &filter, w)
            } else {
                list(shared, req, &filter, w)
            }
        }
        Some(Route::Object { res, ns, name }) => {
            let key = (ns.unwrap_or_default(), name);
            let obj = lock(&shared.store).objects[res].get(&key).cloned();
            match obj {
                Some(obj) => {
                    write_response(w, 200, &[], &obj, close)?;
                    Ok(true)
                }
                None => {
                    let mut body = status_body(
                        404,
                        "NotFound",
                        &format!("{} \"{}\" not found", RESOURCES[res].plural, key.1),
                    );
                    body["details"] = json!({"name": key.1, "kind": RESOURCES[res].plural});
                    write_response(w, 404, &[], &body, close)?;
                    Ok(true)
                }
            }
        }
        None => write_status(
            w,
            404,
            "NotFound",
            "the server could not find the requested resource",
            close,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors

enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

enum FieldReq {
    Eq(&'static str, String),
    NotEq(&'static str, String),
}

struct Filter {
    res: usize,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(s: &str) -> bool {
    s.is_empty() || valid_token(s)
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut reqs = Vec::new();
    let bad = |t: &str| format!("unable to parse requirement: invalid label selector term {t:?}");
    for term in split_terms(s) {
        let t = term.trim();
        if t.is_empty() {
            continue;
        }
        let req = if let Some(key) = t.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_string())
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some(open) = t.find('(') {
            let (head, set) = t.split_at(open);
            let set = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| bad(t))?;
            let values: Vec<String> = set.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(|v| !valid_value(v)) {
                return Err(bad(t));
            }
            let mut words = head.split_whitespace();
            let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(t));
            };
            match op {
                "in" => LabelReq::In(key.to_string(), values),
                "notin" => LabelReq::NotIn(key.to_string(), values),
                _ => return Err(bad(t)),
            }
        } else {
            LabelReq::Exists(t.to_string())
        };
        let ok = match &req {
            LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => valid_token(k),
            LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => valid_token(k) && valid_value(v),
        };
        if !ok {
            return Err(bad(t));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for term in s.split(',') {
        let t = term.trim();
        if t.is_empty() {
            continue;
        }
        let (field, value, eq) = if let Some((f, v)) = t.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = t.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = t.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{t}'; can't understand '{t}'"));
        };
        let field = match field.trim() {
            "metadata.name" => "name",
            "metadata.namespace" => "namespace",
            other => return Err(format!("field label not supported: {other}")),
        };
        let value = value.trim().to_string();
        reqs.push(if eq {
            FieldReq::Eq(field, value)
        } else {
            FieldReq::NotEq(field, value)
        });
    }
    Ok(reqs)
}

impl Filter {
    fn from_request(res: usize, ns: Option<String>, req: &Request) -> Result<Filter, String> {
        Ok(Filter {
            res,
            ns,
            labels: parse_label_selector(req.param("labelSelector").unwrap_or(""))?,
            fields: parse_field_selector(req.param("fieldSelector").unwrap_or(""))?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("");
        if self.ns.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        let empty = Map::new();
        let labels = meta["labels"].as_object().unwrap_or(&empty);
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let (field, value, eq) = match req {
                    FieldReq::Eq(f, v) => (f, v, true),
                    FieldReq::NotEq(f, v) => (f, v, false),
                };
                let actual = meta[*field].as_str().unwrap_or("");
                (actual == value) == eq
            })
    }

    /// The watch event (type, object) a change produces for this filter, if any.
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.res != self.res {
            return None;
        }
        let old_matches = change.old.as_ref().is_some_and(|o| self.matches(o));
        let new_matches = change.new.as_ref().is_some_and(|n| self.matches(n));
        match (&change.new, old_matches, new_matches) {
            (Some(new), true, true) => Some(("MODIFIED", new.clone())),
            (Some(new), false, true) => Some(("ADDED", new.clone())),
            // Deleted, or stopped matching: the last matching state at the change's version.
            (_, true, false) => change
                .old
                .as_ref()
                .map(|o| ("DELETED", stamped(o, change.rv))),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LIST

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode_continue(rv: u64, key: &Key) -> String {
    hex_encode(format!("{rv}\n{}\n{}", key.0, key.1).as_bytes())
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    let text = String::from_utf8(hex_decode(token)?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
}

fn parse_rv(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("invalid resource version {s:?}: must be an unsigned integer"))
}

fn list(shared: &Shared, req: &Request, filter: &Filter, w: &mut TcpStream) -> io::Result<bool> {
    let close = !req.keep_alive;
    let limit = match req.param("limit").filter(|l| !l.is_empty()) {
        None => 0,
        Some(l) => match l.parse::<usize>() {
            Ok(l) => l,
            Err(_) => {
                return write_status(w, 400, "BadRequest", &format!("invalid limit {l:?}"), close)
            }
        },
    };
    let rv_param = req.param("resourceVersion").filter(|v| !v.is_empty());
    let exact = req.param("resourceVersionMatch") == Some("Exact");
    let st = lock(&shared.store);
    let current = st.rv;
    let expired = |rv: u64| {
        format!(
            "too old resource version: {rv} ({})",
            st.oldest.max(FIRST_RESOURCE_VERSION)
        )
    };
    // (resourceVersion of the list, key to start after)
    let (at, after) = if let Some(token) = req.param("continue").filter(|t| !t.is_empty()) {
        match decode_continue(token) {
            None => {
                drop(st);
                return write_status(w, 400, "BadRequest", "continue key is not valid", close);
            }
            Some((rv, _)) if rv < st.oldest || rv > current => {
                drop(st);
                let message = "The provided continue parameter is too old to display a consistent \
                               list result. You can start a new list without the continue parameter.";
                return write_status(w, 410, "Expired", message, close);
            }
            Some((rv, key)) => (rv, Some(key)),
        }
    } else {
        match rv_param {
            None | Some("0") => (current, None),
            Some(v) => match parse_rv(v) {
                Err(message) => {
                    drop(st);
                    return write_status(w, 400, "BadRequest", &message, close);
                }
                Ok(rv) if rv > current => {
                    drop(st);
                    let message = format!("Too large resource version: {rv}, current: {current}");
                    let mut body = status_body(504, "Timeout", &message);
                    body["details"] = json!({
                        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1
                    });
                    write_response(w, 504, &[], &body, close)?;
                    return Ok(true);
                }
                Ok(rv) if exact && rv < st.oldest => {
                    let message = expired(rv);
                    drop(st);
                    return write_status(w, 410, "Expired", &message, close);
                }
                Ok(rv) if exact => (rv, None),
                Ok(_) => (current, None),
            },
        }
    };
    let snapshot;
    let map = if at == current {
        &st.objects[filter.res]
    } else {
        snapshot = st
            .snapshot(filter.res, at)
            .expect("checked against history");
        &snapshot
    };
    let lower = match &after {
        Some(key) => Bound::Excluded(key.clone()),
        None => Bound::Unbounded,
    };
    let mut items = Vec::new();
    let mut next = None;
    for (key, obj) in map.range((lower, Bound::Unbounded)) {
        if !filter.matches(obj) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            next = Some(encode_continue(at, &items_last_key(&items)));
            break;
        }
        items.push((key.clone(), obj.clone()));
    }
    drop(st);
    let r = &RESOURCES[filter.res];
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    let body = json!({
        "apiVersion": r.api_version,
        "kind": r.list_kind,
        "metadata": metadata,
        "items": items.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
    });
    write_response(w, 200, &[], &body, close)?;
    Ok(true)
}

fn items_last_key(items: &[(Key, Value)]) -> Key {
    items.last().map(|(k, _)| k.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// WATCH

/// Removes a watch's registration when its thread leaves, however it leaves.
struct WatchGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.store)
            .watchers
            .retain(|(id, _)| *id != self.id);
    }
}

fn write_chunk(w: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

fn write_event(w: &mut TcpStream, kind: &str, object: &Value) -> io::Result<()> {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    write_chunk(w, line.as_bytes())
}

fn bookmark_object(res: usize, rv: u64, initial_end: bool) -> Value {
    let r = &RESOURCES[res];
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": r.kind, "apiVersion": r.api_version, "metadata": metadata})
}

/// True if the client closed its side (EOF) or the socket failed.
fn peer_closed(sock: &TcpStream) -> bool {
    if sock.set_nonblocking(true).is_err() {
        return true;
    }
    let result = sock.peek(&mut [0u8; 1]);
    let _ = sock.set_nonblocking(false);
    match result {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted,
    }
}

fn watch(shared: &Shared, req: &Request, filter: &Filter, w: &mut TcpStream) -> io::Result<bool> {
    let close = !req.keep_alive;
    let bookmarks = req.flag("allowWatchBookmarks") == Some(true);
    let explicit_initial = req.flag("sendInitialEvents");
    let timeout = match req.param("timeoutSeconds").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<u64>() {
            Ok(0) => None,
            Ok(t) => Some(Duration::from_secs(t)),
            Err(_) => {
                return write_status(
                    w,
                    400,
                    "BadRequest",
                    &format!("invalid timeoutSeconds {t:?}"),
                    close,
                )
            }
        },
    };
    let rv_param = req.param("resourceVersion").filter(|v| !v.is_empty());
    let from_rv = match rv_param {
        None | Some("0") => None,
        Some(v) => match parse_rv(v) {
            Ok(rv) => Some(rv),
            Err(message) => return write_status(w, 400, "BadRequest", &message, close),
        },
    };
    // Real servers: sendInitialEvents defaults to true for resourceVersion unset or "0".
    let send_initial = explicit_initial.unwrap_or(from_rv.is_none());

    // Under the store lock: the initial state or the replay, and the registration, so that no
    // change falls between them.
    let mut first_events: Vec<(&str, Value)> = Vec::new();
    let (rx, id, start_rv, from) = {
        let mut st = lock(&shared.store);
        let current = st.rv;
        let from = if send_initial {
            for obj in st.objects[filter.res]
                .values()
                .filter(|o| filter.matches(o))
            {
                first_events.push(("ADDED", obj.clone()));
            }
            current
        } else if let Some(rv) = from_rv {
            if rv < st.oldest {
                let message = format!("too old resource version: {rv} ({})", st.oldest);
                drop(st);
                write_watch_head(w, close)?;
                let status = status_body(410, "Expired", &message);
                write_event(w, "ERROR", &status)?;
                write_chunk(w, b"")?;
                return Ok(true);
            }
            for change in st.history.iter().filter(|c| c.rv > rv) {
                first_events.extend(filter.event(change));
            }
            rv
        } else {
            current
        };
        let (tx, rx) = mpsc::channel();
        let id = st.next_watch_id;
        st.next_watch_id += 1;
        st.watchers.push((id, tx));
        (rx, id, current.max(from), from)
    };
    let _guard = WatchGuard { shared, id };

    write_watch_head(w, close)?;
    for (kind, obj) in &first_events {
        write_event(w, kind, obj)?;
    }
    if explicit_initial == Some(true) {
        write_event(w, "BOOKMARK", &bookmark_object(filter.res, start_rv, true))?;
    }

    let mut seen_rv = start_rv;
    let deadline = timeout.map(|t| Instant::now() + t);
    let interval = shared.bookmark_interval.max(Duration::from_millis(1));
    let mut next_bookmark = Instant::now() + interval;
    let mut next_peer_check = Instant::now() + PEER_CHECK;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if now >= next_peer_check {
            if peer_closed(w) {
                return Ok(false);
            }
            next_peer_check = now + PEER_CHECK;
        }
        if bookmarks && now >= next_bookmark {
            write_event(w, "BOOKMARK", &bookmark_object(filter.res, seen_rv, false))?;
            next_bookmark = now + interval;
        }
        let mut wake = next_peer_check;
        if bookmarks {
            wake = wake.min(next_bookmark);
        }
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Change(change)) => {
                if change.rv <= from {
                    continue;
                }
                seen_rv = seen_rv.max(change.rv);
                if let Some((kind, obj)) = filter.event(&change) {
                    write_event(w, kind, &obj)?;
                }
            }
            Ok(Msg::Bookmark) => {
                if bookmarks {
                    write_event(w, "BOOKMARK", &bookmark_object(filter.res, seen_rv, false))?;
                }
            }
            Ok(Msg::Close) => break,
            Ok(Msg::Abort) | Err(RecvTimeoutError::Disconnected) => {
                let _ = w.shutdown(Shutdown::Both);
                return Ok(false);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    write_chunk(w, b"")?;
    Ok(true)
}

fn write_watch_head(w: &mut TcpStream, close: bool) -> io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}
