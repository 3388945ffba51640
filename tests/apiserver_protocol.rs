//! Protocol tests of the test API server in `tests/support/apiserver.rs`, with a std-only
//! HTTP/1.1 client. No root needed; every wait is bounded.

#[path = "support/apiserver.rs"]
mod apiserver;

use apiserver::{ApiServer, Config, Fault, FIRST_RESOURCE_VERSION};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn connect(server: &ApiServer) -> BufReader<TcpStream> {
    let stream = TcpStream::connect_timeout(&server.addr(), WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    BufReader::new(stream)
}

fn send_request(conn: &mut BufReader<TcpStream>, target: &str, close: bool) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\
         User-Agent: apiserver-protocol-test\r\nAuthorization: Bearer test-token\r\n\
         Connection: {connection}\r\n\r\n"
    );
    conn.get_mut().write_all(request.as_bytes()).unwrap();
}

/// Reads a status line and headers.
fn read_head(conn: &mut BufReader<TcpStream>) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// Reads one non-streaming response (Content-Length body).
fn read_response(conn: &mut BufReader<TcpStream>) -> Response {
    let (status, headers) = read_head(conn).expect("response head");
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("content-length");
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection.
fn get(server: &ApiServer, target: &str) -> Response {
    let mut conn = connect(server);
    send_request(&mut conn, target, true);
    read_response(&mut conn)
}

fn get_json(server: &ApiServer, target: &str) -> Value {
    let resp = get(server, target);
    assert_eq!(
        resp.status,
        200,
        "{target}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

#[derive(Debug)]
enum Next {
    Event(Value),
    /// The terminating chunk: the server ended the watch cleanly.
    End,
    /// The connection closed (or was reset) without the terminating chunk.
    Dropped,
    TimedOut,
}

/// A watch response read as chunked JSON lines.
struct Watch {
    conn: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    pending: Vec<u8>,
    ended: bool,
}

impl Watch {
    fn open(server: &ApiServer, target: &str) -> Watch {
        let mut conn = connect(server);
        send_request(&mut conn, target, false);
        let (status, headers) = read_head(&mut conn).expect("watch head");
        Watch {
            conn,
            status,
            headers,
            pending: Vec::new(),
            ended: false,
        }
    }

    fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad event line ({e}): {}", String::from_utf8_lossy(&line))
                });
                return Next::Event(value);
            }
            if self.ended {
                return Next::End;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::TimedOut;
            }
            self.conn.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.read_chunk() {
                Ok(Some(data)) => self.pending.extend(data),
                Ok(None) => self.ended = true,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Next::TimedOut
                }
                Err(_) => return Next::Dropped,
            }
        }
    }

    /// `Ok(None)` for the terminating chunk. (A timeout in the middle of a chunk would lose
    /// sync; the server writes each chunk in one write, so this does not happen here.)
    fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.conn.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
        }
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        let mut data = vec![0; size + 2];
        self.conn.read_exact(&mut data)?;
        if &data[size..] != b"\r\n" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk end"));
        }
        data.truncate(size);
        Ok((size > 0).then_some(data))
    }

    /// The next event; panics on anything else.
    fn event(&mut self) -> Value {
        match self.next(WAIT) {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event that is not a BOOKMARK.
    fn non_bookmark(&mut self) -> Value {
        loop {
            let e = self.event();
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }

    /// Asks for an on-demand bookmark and returns the events before it (the watch must have
    /// `allowWatchBookmarks=true`; with a long periodic interval this is a sync point).
    fn events_until_bookmark(&mut self, server: &ApiServer) -> Vec<Value> {
        server.bookmark_now();
        let mut events = Vec::new();
        loop {
            let e = self.event();
            if e["type"] == "BOOKMARK" {
                return events;
            }
            events.push(e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn summary(e: &Value) -> (String, String, String) {
    (
        e["type"].as_str().unwrap().to_string(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// Periodic bookmarks far apart, so that on-demand ones can serve as sync points.
fn quiet_server() -> ApiServer {
    ApiServer::start_with(Config {
        bookmark_interval: Duration::from_secs(3600),
        ..Config::default()
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn list_paginates_with_consistent_continue_tokens() {
    let server = ApiServer::start();
    for (ns, name) in [
        ("b", "s1"),
        ("a", "s2"),
        ("a", "s1"),
        ("c", "s0"),
        ("b", "s0"),
    ] {
        server.apply(service(ns, name, json!({})));
    }
    let rv = server.resource_version();
    assert!(rv > FIRST_RESOURCE_VERSION);

    let page1 = get_json(&server, "/api/v1/services?limit=2");
    assert_eq!(page1["kind"], "ServiceList");
    assert_eq!(page1["apiVersion"], "v1");
    assert_eq!(page1["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(names(&page1), ["a/s1", "a/s2"]);
    assert_eq!(page1["items"][0]["kind"], "Service");
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();

    // A change between pages does not show up in later pages: they are a snapshot at `rv`.
    server.apply(service("b", "s0", json!({"changed": "yes"})));
    server.apply(service("b", "s00", json!({})));
    let page2 = get_json(
        &server,
        &format!("/api/v1/services?limit=2&continue={token}"),
    );
    assert_eq!(page2["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(names(&page2), ["b/s0", "b/s1"]);
    assert!(page2["items"][0]["metadata"]["labels"]
        .get("changed")
        .is_none());
    let token = page2["metadata"]["continue"].as_str().unwrap().to_string();
    let page3 = get_json(
        &server,
        &format!("/api/v1/services?limit=2&continue={token}"),
    );
    assert_eq!(names(&page3), ["c/s0"]);
    assert!(page3["metadata"]
        .get("continue")
        .is_none_or(|c| c.as_str() == Some("")));

    // Without limit: everything current; namespaced path: that namespace only.
    let all = get_json(&server, "/api/v1/services");
    assert_eq!(names(&all).len(), 6);
    assert_eq!(
        all["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    let ns_b = get_json(&server, "/api/v1/namespaces/b/services");
    assert_eq!(names(&ns_b), ["b/s0", "b/s00", "b/s1"]);

    // An exact list at an older version is the snapshot at that version.
    let exact = get_json(
        &server,
        &format!("/api/v1/namespaces/b/services?resourceVersion={rv}&resourceVersionMatch=Exact"),
    );
    assert_eq!(exact["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(names(&exact), ["b/s0", "b/s1"]);
    let too_new = get(
        &server,
        &format!(
            "/api/v1/services?resourceVersion={}",
            server.resource_version() + 5
        ),
    );
    assert_eq!(too_new.status, 504);

    // A continue token or an exact version older than the compacted history: 410 Expired.
    server.compact();
    let resp = get(
        &server,
        &format!("/api/v1/services?resourceVersion={rv}&resourceVersionMatch=Exact"),
    );
    assert_eq!(resp.status, 410);
    let resp = get(
        &server,
        &format!("/api/v1/services?limit=2&continue={token}"),
    );
    assert_eq!(resp.status, 410);
    assert_eq!(resp.json()["reason"], "Expired");
    assert_eq!(resp.json()["kind"], "Status");
}

#[test]
fn list_other_kinds_selectors_and_single_get() {
    let server = ApiServer::start();
    server.apply(json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"namespace": "ns1", "name": "web-abc",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [], "ports": [],
    }));
    server.apply(json!({
        "kind": "EndpointSlice",
        "metadata": {"namespace": "ns1", "name": "db-xyz",
                     "labels": {"kubernetes.io/service-name": "db",
                                "service.kubernetes.io/headless": ""}},
        "addressType": "IPv4", "endpoints": [],
    }));
    server.apply(json!({"kind": "Node", "metadata": {"name": "node-1", "namespace": "x"}}));
    server.apply(json!({
        "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/16"]},
    }));

    let slices = get_json(&server, "/apis/discovery.k8s.io/v1/endpointslices");
    assert_eq!(slices["kind"], "EndpointSliceList");
    assert_eq!(slices["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(names(&slices), ["ns1/db-xyz", "ns1/web-abc"]);
    assert_eq!(slices["items"][0]["apiVersion"], "discovery.k8s.io/v1");
    let selected = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/namespaces/ns1/endpointslices?\
         labelSelector=%21service.kubernetes.io%2Fheadless%2Ckubernetes.io%2Fservice-name",
    );
    assert_eq!(names(&selected), ["ns1/web-abc"]);
    let in_set = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io/service-name+in+(db,cache)",
    );
    assert_eq!(names(&in_set), ["ns1/db-xyz"]);
    let by_name = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/endpointslices?fieldSelector=metadata.name%3Dweb-abc",
    );
    assert_eq!(names(&by_name), ["ns1/web-abc"]);
    let not_ns = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/endpointslices?fieldSelector=metadata.namespace!=ns1",
    );
    assert_eq!(names(&not_ns), Vec::<String>::new());

    let nodes = get_json(&server, "/api/v1/nodes");
    assert_eq!(nodes["kind"], "NodeList");
    assert_eq!(names(&nodes), ["/node-1"]);
    assert!(nodes["items"][0]["metadata"].get("namespace").is_none());
    let cidrs = get_json(&server, "/apis/networking.k8s.io/v1/servicecidrs");
    assert_eq!(cidrs["kind"], "ServiceCIDRList");
    assert_eq!(cidrs["items"][0]["spec"]["cidrs"][0], "10.96.0.0/16");

    let node = get_json(&server, "/api/v1/nodes/node-1");
    assert_eq!(node["kind"], "Node");
    let missing = get(&server, "/api/v1/namespaces/ns1/services/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["reason"], "NotFound");

    let bad = get(
        &server,
        "/api/v1/services?fieldSelector=spec.clusterIP%3D1.2.3.4",
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["reason"], "BadRequest");
    let unknown = get(&server, "/api/v1/pods");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["kind"], "Status");
    assert_eq!(unknown.json()["code"], 404);
    let namespaced_node = get(&server, "/api/v1/namespaces/x/nodes");
    assert_eq!(namespaced_node.status, 404);
}

#[test]
fn version_and_keep_alive() {
    let server = ApiServer::start();
    let mut conn = connect(&server);
    send_request(&mut conn, "/version", false);
    let v = read_response(&mut conn);
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["gitVersion"], "v1.34.0");
    assert_eq!(v.json()["major"], "1");
    // Same connection, second and third request.
    send_request(&mut conn, "/api/v1/services", false);
    assert_eq!(read_response(&mut conn).status, 200);
    send_request(&mut conn, "/api/v1/nodes", true);
    let last = read_response(&mut conn);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("Connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).unwrap(),
        0,
        "closed after Connection: close"
    );
    let log = server.requests();
    assert_eq!(
        log,
        ["GET /version", "GET /api/v1/services", "GET /api/v1/nodes"]
    );
}

#[test]
fn watch_replays_history_after_resource_version_then_streams() {
    let server = quiet_server();
    let a = server.apply(service("default", "a", json!({})));
    let from = rv_of(&a);
    let b = server.apply(service("default", "b", json!({})));
    let a2 = server.apply(service("default", "a", json!({"v": "2"})));
    let gone = server.delete("Service", "default", "b").unwrap();
    assert!(server.delete("Service", "default", "b").is_none());
    server.apply(json!({"kind": "Node", "metadata": {"name": "n"}})); // another kind: not seen

    let mut watch = Watch::open(
        &server,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=30"
        ),
    );
    assert_eq!(watch.status, 200);
    let te = watch
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    assert_eq!(te.map(|(_, v)| v.as_str()), Some("chunked"));
    let events: Vec<_> = watch
        .events_until_bookmark(&server)
        .iter()
        .map(summary)
        .collect();
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        events,
        [
            ("ADDED".into(), "b".into(), rv(&b)),
            ("MODIFIED".into(), "a".into(), rv(&a2)),
            ("DELETED".into(), "b".into(), rv(&gone)),
        ]
    );
    assert!(rv_of(&gone) > rv_of(&b));

    // Live events after the replay, and a bookmark at the latest version.
    let c = server.apply(service("other", "c", json!({})));
    let e = watch.non_bookmark();
    assert_eq!(summary(&e), ("ADDED".into(), "c".into(), rv(&c)));
    assert_eq!(e["object"]["kind"], "Service");
    server.apply(json!({"kind": "Node", "metadata": {"name": "n2"}}));
    server.bookmark_now();
    let bm = watch.event();
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["kind"], "Service");
    assert_eq!(bm["object"]["apiVersion"], "v1");
    assert_eq!(
        bm["object"]["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    // A namespaced watch sees only its namespace.
    let mut ns_watch = Watch::open(
        &server,
        &format!("/api/v1/namespaces/other/services?watch=true&resourceVersion={from}&allowWatchBookmarks=true"),
    );
    let events: Vec<_> = ns_watch
        .events_until_bookmark(&server)
        .iter()
        .map(summary)
        .collect();
    assert_eq!(events, [("ADDED".into(), "c".into(), rv(&c))]);
}

#[test]
fn watch_from_compacted_resource_version_gets_410_error_event() {
    let server = ApiServer::start();
    let a = server.apply(service("default", "a", json!({})));
    server.apply(service("default", "a", json!({"x": "1"})));
    server.compact();
    let mut watch = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", rv_of(&a)),
    );
    assert_eq!(watch.status, 200);
    let e = watch.event();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert_eq!(e["object"]["status"], "Failure");
    assert!(matches!(watch.next(WAIT), Next::End));

    // The current version is still watchable after compaction.
    let mut ok = Watch::open(
        &server,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}",
            server.resource_version()
        ),
    );
    server.apply(service("default", "b", json!({})));
    assert_eq!(ok.non_bookmark()["type"], "ADDED");

    // A bounded history expires old versions by itself.
    let small = ApiServer::start_with(Config {
        history_limit: 2,
        ..Config::default()
    })
    .unwrap();
    let first = small.apply(service("default", "a", json!({})));
    for i in 0..3 {
        small.apply(service("default", "a", json!({"i": i.to_string()})));
    }
    let mut old = Watch::open(
        &small,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}",
            rv_of(&first)
        ),
    );
    assert_eq!(old.event()["object"]["code"], 410);
    let mut recent = Watch::open(
        &small,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}&allowWatchBookmarks=true",
            small.resource_version() - 2
        ),
    );
    assert_eq!(recent.events_until_bookmark(&small).len(), 2);
}

#[test]
fn send_initial_events_ends_with_initial_events_end_bookmark() {
    let server = quiet_server();
    server.apply(service("b", "x", json!({"app": "web"})));
    server.apply(service("a", "y", json!({"app": "web"})));
    server.apply(service("a", "z", json!({"app": "db"})));
    let current = server.resource_version();
    // As kube-runtime's streaming-list watcher sends it.
    let mut watch = Watch::open(
        &server,
        "/api/v1/services?&watch=true&timeoutSeconds=290&labelSelector=app%3Dweb\
         &allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan\
         &resourceVersion=0",
    );
    let e1 = watch.event();
    let e2 = watch.event();
    assert_eq!(summary(&e1).0, "ADDED");
    assert_eq!(summary(&e1).1, "y");
    assert_eq!(summary(&e2).1, "x");
    let end = watch.event();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["resourceVersion"],
        current.to_string()
    );
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    server.apply(service("a", "z", json!({"app": "web"})));
    let e = watch.non_bookmark();
    assert_eq!(summary(&e).0, "ADDED");
    assert_eq!(summary(&e).1, "z");

    // Legacy: resourceVersion unset sends synthetic ADDED (no end bookmark); with
    // sendInitialEvents=false it starts from now.
    let mut legacy = Watch::open(
        &server,
        "/api/v1/services?watch=true&allowWatchBookmarks=true",
    );
    let events: Vec<_> = legacy
        .events_until_bookmark(&server)
        .iter()
        .map(summary)
        .collect();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.0 == "ADDED"));
    let mut from_now = Watch::open(
        &server,
        "/api/v1/services?watch=true&allowWatchBookmarks=true&sendInitialEvents=false",
    );
    assert!(from_now.events_until_bookmark(&server).is_empty());
}

#[test]
fn label_selector_transitions_become_added_and_deleted() {
    let server = quiet_server();
    let mut watch = Watch::open(
        &server,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}&allowWatchBookmarks=true\
             &labelSelector=app%3Dweb,%21skip,tier!%3Dbackend",
            server.resource_version()
        ),
    );
    assert!(server.wait_for_watches(1, WAIT));

    server.apply(service("default", "s", json!({})));
    assert!(
        watch.events_until_bookmark(&server).is_empty(),
        "not matching yet"
    );

    let matching = server.apply(service("default", "s", json!({"app": "web"})));
    let events = watch.events_until_bookmark(&server);
    assert_eq!(events.len(), 1);
    assert_eq!(
        summary(&events[0]),
        ("ADDED".into(), "s".into(), rv_of(&matching).to_string())
    );

    server.apply(service("default", "s", json!({"app": "web", "x": "1"})));
    let events = watch.events_until_bookmark(&server);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "MODIFIED");

    let unmatched = server.apply(service("default", "s", json!({"app": "web", "skip": ""})));
    let events = watch.events_until_bookmark(&server);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "DELETED");
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        rv_of(&unmatched).to_string()
    );
    // The DELETED object is the last state that matched.
    assert!(events[0]["object"]["metadata"]["labels"]
        .get("skip")
        .is_none());

    server.apply(service(
        "default",
        "s",
        json!({"app": "web", "tier": "backend"}),
    ));
    server.delete("Service", "default", "s");
    assert!(
        watch.events_until_bookmark(&server).is_empty(),
        "deleting a non-matching object"
    );

    server.apply(service(
        "default",
        "s",
        json!({"app": "web", "tier": "frontend"}),
    ));
    server.delete("Service", "default", "s");
    let kinds: Vec<_> = watch
        .events_until_bookmark(&server)
        .iter()
        .map(|e| summary(e).0)
        .collect();
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

#[test]
fn periodic_bookmarks_and_timeout_seconds_end_the_stream() {
    let server = ApiServer::start_with(Config {
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .unwrap();
    server.apply(service("default", "a", json!({})));
    let mut watch = Watch::open(
        &server,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds=1",
            server.resource_version()
        ),
    );
    let bm = watch.event();
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(
        bm["object"]["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    let mut ended = false;
    for _ in 0..100 {
        match watch.next(WAIT) {
            Next::Event(e) => assert_eq!(e["type"], "BOOKMARK"),
            Next::End => {
                ended = true;
                break;
            }
            other => panic!("expected bookmarks then the end, got {other:?}"),
        }
    }
    assert!(ended, "timeoutSeconds=1 ends the watch");
    // The connection stays usable after a cleanly ended watch.
    send_request(&mut watch.conn, "/version", true);
    assert_eq!(read_response(&mut watch.conn).status, 200);

    // Without allowWatchBookmarks: no bookmarks, just the end.
    let mut plain = Watch::open(
        &server,
        "/api/v1/services?watch=true&resourceVersion=1001&timeoutSeconds=1",
    );
    assert!(matches!(plain.next(WAIT), Next::End));
}

#[test]
fn injected_500_429_403_and_delay() {
    let server = ApiServer::start();
    server.fail_next(2, Fault::InternalError);
    for _ in 0..2 {
        let r = get(&server, "/api/v1/services");
        assert_eq!(r.status, 500);
        let status = r.json();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(status["code"], 500);
    }
    assert_eq!(get(&server, "/api/v1/services").status, 200);

    server.fail_all(Fault::TooManyRequests);
    for _ in 0..3 {
        let r = get(&server, "/api/v1/services?watch=true");
        assert_eq!(r.status, 429);
        assert_eq!(r.header("Retry-After"), Some("1"));
        assert_eq!(r.json()["reason"], "TooManyRequests");
    }
    server.clear_faults();
    assert_eq!(get(&server, "/version").status, 200);

    server.fail_next(1, Fault::Forbidden);
    let r = get(&server, "/api/v1/nodes");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "Forbidden");
    assert_eq!(get(&server, "/api/v1/nodes").status, 200);

    server.set_delay(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(get(&server, "/version").status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);
}

#[test]
fn abort_drops_watch_connections_and_close_ends_them() {
    let server = quiet_server();
    let target = "/api/v1/services?watch=true&resourceVersion=1000&allowWatchBookmarks=true";
    let mut w1 = Watch::open(&server, target);
    let mut w2 = Watch::open(&server, target);
    assert!(server.wait_for_watches(2, WAIT));
    server.apply(service("default", "a", json!({})));
    assert_eq!(w1.event()["type"], "ADDED");
    assert_eq!(w2.event()["type"], "ADDED");
    server.abort_watches();
    assert!(matches!(w1.next(WAIT), Next::Dropped));
    assert!(matches!(w2.next(WAIT), Next::Dropped));

    let mut w3 = Watch::open(&server, target);
    assert!(server.wait_for_watches(1, WAIT));
    server.close_watches();
    assert_eq!(w3.event()["type"], "ADDED"); // replay from 1000
    assert!(matches!(w3.next(WAIT), Next::End));
    let deadline = Instant::now() + WAIT;
    while server.watch_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.watch_count(), 0);
}

#[test]
fn stop_and_start_again_on_the_same_port_keeps_the_store() {
    let server = quiet_server();
    let url = server.url();
    let a = server.apply(service("default", "a", json!({})));
    let mut watch = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", rv_of(&a)),
    );
    let mut idle = connect(&server);
    send_request(&mut idle, "/version", false);
    assert_eq!(read_response(&mut idle).status, 200);

    server.stop();
    assert!(matches!(watch.next(WAIT), Next::Dropped));
    let mut rest = Vec::new();
    assert!(
        matches!(idle.read_to_end(&mut rest), Ok(0) | Err(_)),
        "keep-alive connection closed"
    );
    assert!(
        TcpStream::connect_timeout(&server.addr(), WAIT).is_err(),
        "not listening"
    );

    // Changes while stopped are replayed after the restart.
    let b = server.apply(service("default", "b", json!({})));
    server.start_again().unwrap();
    assert_eq!(server.url(), url);
    let list = get_json(&server, "/api/v1/services");
    assert_eq!(names(&list), ["default/a", "default/b"]);
    let mut watch = Watch::open(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", rv_of(&a)),
    );
    let e = watch.event();
    assert_eq!(
        summary(&e),
        ("ADDED".into(), "b".into(), rv_of(&b).to_string())
    );
}
