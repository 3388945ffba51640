//! `kube-nft-proxy trace` against real packets (issue 10, acceptance 3): the trace runs
//! in the node namespace while a client connects through a ClusterIP and a NodePort, and
//! its output must show, for every connection, the DNAT to the very endpoint that
//! answered (backends answer with their own address), the conntrack entry that says so,
//! and the rules of our table it hit, as nft text read back from the kernel. The
//! temporary table must exist while the trace runs and be gone after it: when it ends
//! on SIGINT, on SIGTERM, after its duration, and when it is killed. A leftover table
//! is removed at start, and a second trace is refused while one runs.
//!
//! Topology: `common::topology` (client 10.0.1.2 → node → backends 10.0.2.10-12).

mod common;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::backends::{
    read_answer, sockaddr, udp_ask_from, Answer, EmptyAnswer, Servers, TIMEOUT,
};
use common::manifests::{
    list, node_obj, ready_remote, service_cidr_obj, service_obj, slice_obj, svc_port,
    tcp_udp_ports, TARGET_PORT,
};
use common::monitor::Monitor;
use common::topology::{Setup, Topology, NODE_IP, POD_CLIENT};
use common::{join, require_privileged, NetNs, TempDir, BIN};
use serde_json::{json, Value};

const CLIENT_IP: &str = POD_CLIENT.client;
const CLUSTER_IP: &str = "172.30.0.10";
const NODEPORT_CLUSTER_IP: &str = "172.30.0.20";
const NODE_PORT: u16 = 30080;
const BACKENDS: [&str; 3] = ["10.0.2.10", "10.0.2.11", "10.0.2.12"];
const TRACE_TABLE: &str = "kube-nft-proxy-trace";
/// Connections per frontend: enough that the endpoints differ between them.
const CONNECTIONS: usize = 4;

/// The topology with a ClusterIP Service (TCP and UDP 80) and a NodePort Service (TCP
/// 80, node port 30080), both on the three backends, programmed with `--once`.
fn setup(tag: &str) -> (Topology, Servers, TempDir) {
    let topo = Topology::new(tag, Setup::new(&BACKENDS));
    let servers = Servers::start(&topo.backends, &BACKENDS, TARGET_PORT);
    let dir = TempDir::new(tag);
    let manifests = dir.write(
        "cluster.json",
        &list(vec![
            node_obj(&[NODE_IP], None),
            service_cidr_obj(&["172.30.0.0/16"]),
            service_obj(
                "web",
                "ClusterIP",
                &[CLUSTER_IP],
                tcp_udp_ports(),
                json!({}),
            ),
            slice_obj("web", "web-1", ready_remote(&BACKENDS)),
            service_obj(
                "np",
                "NodePort",
                &[NODEPORT_CLUSTER_IP],
                vec![svc_port("tcp", "TCP", 80, Some(NODE_PORT))],
                json!({}),
            ),
            slice_obj("np", "np-1", ready_remote(&BACKENDS)),
        ]),
    );
    topo.program(&manifests);
    (topo, servers, dir)
}

/// The tables in `ns`.
fn tables(ns: &NetNs) -> String {
    ns.run(&["nft", "list", "tables"])
}

/// How many transactions the trace committed that delete its table: its own removal.
/// (When the kernel deletes an owned table because its socket closed, `nft monitor`
/// reports nothing, so this tells the trace's removal from the kernel's.)
fn removals(monitor: &mut Monitor, ns: &NetNs) -> usize {
    monitor.sync(ns);
    let delete = format!("delete table ip {TRACE_TABLE}");
    monitor
        .transactions()
        .iter()
        .filter(|t| t.contains(&delete))
        .count()
}

/// A running `kube-nft-proxy trace`: its output lines arrive on a channel as they are
/// written.
struct Trace {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    seen: Vec<String>,
}

impl Trace {
    /// Starts `trace ARGS --output json` in `ns` and waits for its first line (the
    /// marking rules are in place then).
    fn start(ns: &NetNs, args: &[&str]) -> Trace {
        let mut all = vec![BIN, "trace"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", "json"]);
        let mut cmd = ns.command(&all);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Trace {
            child,
            lines: rx,
            reader: Some(reader),
            seen: Vec::new(),
        };
        // Bounded, so that a trace that never starts fails the test instead of hanging.
        match t.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(first) => t.seen.push(first),
            Err(e) => {
                let _ = t.child.kill();
                let (status, out, err) = t.finish();
                panic!("trace printed nothing ({e}): {status}\n{out:?}\n{err}");
            }
        }
        let start: Value = serde_json::from_str(&t.seen[0])
            .unwrap_or_else(|e| panic!("first line {:?}: {e}", t.seen[0]));
        assert_eq!(start["type"], "start", "{start}");
        t
    }

    /// Sends `sig` to the trace (the process `ip netns exec` turned into).
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our own child's, not yet
        // waited for.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Waits for the trace to exit: its status, output lines and stderr.
    fn finish(&mut self) -> (ExitStatus, Vec<String>, String) {
        let status = self.child.wait().expect("wait for the trace");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.seen.extend(self.lines.try_iter());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, std::mem::take(&mut self.seen), err)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // A failed assertion must not leave the trace running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the JSON lines of a finished trace; panics (with the output) unless it
/// exited successfully and ended for `reason`.
fn records(status: ExitStatus, lines: &[String], err: &str, reason: &str) -> Vec<Value> {
    let all = lines.join("\n");
    assert!(status.success(), "trace failed: {status}\n{err}\n{all}");
    let recs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}\n{all}")))
        .collect();
    let end = recs.last().unwrap_or_else(|| panic!("no output\n{err}"));
    assert_eq!(end["type"], "end", "the last line is not the end\n{all}");
    assert_eq!(end["reason"], reason, "{all}");
    assert_eq!(end["table_removed"], true, "{all}");
    recs
}

/// A new TCP connection to `dst`: the client port it used and the backend's answer.
fn tcp_connect(dst: SocketAddr) -> io::Result<(u16, Answer)> {
    let stream = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    let port = stream.local_addr()?.port();
    let answer = read_answer(&stream, EmptyAnswer::Eof)?;
    Ok((port, answer))
}

/// What one client connection found out: (protocol, client port, frontend) → the
/// backend that answered.
type Reached = BTreeMap<(String, u16, SocketAddr), String>;

/// Checks that the trace shows, for every connection in `reached`, a DNAT of its
/// packets from the frontend to the backend that answered (port 8080), the conntrack
/// entry DNATed to that backend, and a hit of one of our rules (as its nft text) on
/// the same packet as the DNAT.
fn assert_trace_shows(recs: &[Value], reached: &Reached) {
    let all = || {
        recs.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for ((proto, port, frontend), backend) in reached {
        let what = format!("{proto} {CLIENT_IP}:{port} -> {frontend} (answered by {backend})");
        let nats: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                r["type"] == "nat"
                    && r["nat"] == "dnat"
                    && r["before"]["protocol"] == proto.as_str()
                    && r["before"]["src"] == CLIENT_IP
                    && r["before"]["sport"] == *port
                    && r["before"]["dst"] == frontend.ip().to_string()
                    && r["before"]["dport"] == frontend.port()
            })
            .collect();
        assert!(!nats.is_empty(), "{what}: no DNAT in the trace\n{}", all());
        for n in &nats {
            assert_eq!(
                (n["after"]["dst"].as_str(), n["after"]["dport"].as_u64()),
                (Some(backend.as_str()), Some(u64::from(TARGET_PORT))),
                "{what}: the trace shows the DNAT to another endpoint: {n}\n{}",
                all()
            );
        }
        // The first packet was DNATed by a rule: our nat chains' rules, read back from
        // the kernel as nft text, matched that very packet.
        let by_rule: Vec<&&Value> = nats.iter().filter(|n| n["by"] == "rule").collect();
        assert_eq!(
            by_rule.len(),
            1,
            "{what}: DNATs by a rule: {by_rule:?}\n{}",
            all()
        );
        let hits: Vec<&str> = recs
            .iter()
            .filter(|r| {
                r["type"] == "event"
                    && r["id"] == by_rule[0]["id"]
                    && r["table"] == "kube-nft-proxy"
                    && r["hook"] == "prerouting"
                    && r["kind"] == "rule"
            })
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(
            hits.contains(&"nat-prerouting rule 1: jump services"),
            "{what}: the packet did not hit our nat-prerouting rule: {hits:?}\n{}",
            all()
        );
        let ct: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                r["type"] == "conntrack"
                    && r["connection"]["protocol"] == proto.as_str()
                    && r["connection"]["sport"] == *port
                    && r["connection"]["dst"] == frontend.ip().to_string()
            })
            .collect();
        assert_eq!(ct.len(), 1, "{what}: conntrack records {ct:?}\n{}", all());
        let e = &ct[0]["entry"];
        assert_eq!(e["dnat"], true, "{what}: {e}");
        assert_eq!(
            (e["reply"]["src"].as_str(), e["reply"]["sport"].as_u64()),
            (Some(backend.as_str()), Some(u64::from(TARGET_PORT))),
            "{what}: the conntrack entry says another endpoint: {e}"
        );
    }
}

/// A trace of the client's TCP packets while it connects through the ClusterIP and the
/// NodePort, ended by SIGINT in the middle of a long `--duration`; then a trace of UDP
/// to the ClusterIP's port (the flags `--destination --port --protocol`), ended by
/// SIGTERM. Each shows the DNAT to the endpoint that answered every connection.
#[test]
fn trace_shows_the_dnat_to_the_endpoint_each_connection_reached() {
    if !require_privileged() {
        return;
    }
    let (topo, _servers, _dir) = setup("trace");
    let mut monitor = Monitor::start(&topo.node);

    let mut trace = Trace::start(
        &topo.node,
        &[
            "--source",
            CLIENT_IP,
            "--protocol",
            "TCP",
            "--duration",
            "600",
        ],
    );
    assert!(
        tables(&topo.node).contains(&format!("table ip {TRACE_TABLE}")),
        "no temporary table while the trace runs:\n{}",
        tables(&topo.node)
    );
    let frontends = [sockaddr(CLUSTER_IP, 80), sockaddr(NODE_IP, NODE_PORT)];
    let reached: Reached = join(topo.client.spawn(move || {
        let mut reached = Reached::new();
        for dst in frontends {
            for _ in 0..CONNECTIONS {
                let (port, a) = tcp_connect(dst).unwrap_or_else(|e| panic!("TCP to {dst}: {e}"));
                reached.insert(("tcp".into(), port, dst), a.backend);
            }
        }
        reached
    }));
    trace.signal(libc::SIGINT);
    let (status, lines, err) = trace.finish();
    assert!(
        !tables(&topo.node).contains(TRACE_TABLE),
        "the temporary table outlived the trace (SIGINT):\n{}",
        tables(&topo.node)
    );
    assert_eq!(
        removals(&mut monitor, &topo.node),
        1,
        "the trace did not delete its table"
    );
    let recs = records(status, &lines, &err, "interrupted");
    assert_trace_shows(&recs, &reached);

    let mut trace = Trace::start(
        &topo.node,
        &[
            "--destination",
            CLUSTER_IP,
            "--port",
            "80",
            "--protocol",
            "UDP",
            "--duration",
            "600",
        ],
    );
    let dst = sockaddr(CLUSTER_IP, 80);
    let reached: Reached = join(topo.client.spawn(move || {
        let mut reached = Reached::new();
        for i in 0..CONNECTIONS as u16 {
            // Ports no earlier request used: each request is a new conntrack entry.
            let port = 21_000 + i;
            let a = udp_ask_from(sockaddr(CLIENT_IP, port), dst)
                .unwrap_or_else(|e| panic!("UDP to {dst}: {e}"));
            reached.insert(("udp".into(), port, dst), a.backend);
        }
        reached
    }));
    trace.signal(libc::SIGTERM);
    let (status, lines, err) = trace.finish();
    assert!(
        !tables(&topo.node).contains(TRACE_TABLE),
        "the temporary table outlived the trace (SIGTERM):\n{}",
        tables(&topo.node)
    );
    assert_eq!(
        removals(&mut monitor, &topo.node),
        2,
        "the trace did not delete its table"
    );
    let recs = records(status, &lines, &err, "terminated");
    assert_trace_shows(&recs, &reached);
    // The flags select: no TCP, nothing to another address.
    assert!(
        recs.iter().all(|r| r["type"] != "event"
            || (r["packet"]["protocol"] == "udp" && r["packet"]["src"] == CLIENT_IP)),
        "the UDP trace shows other packets:\n{lines:?}"
    );
}

/// A leftover table (not owned: as an older kernel or version leaves it) is deleted at
/// start; a second trace is refused while one runs; a killed trace leaves nothing (the
/// kernel deletes the table its socket owned); a trace ends by itself after its
/// duration and removes its table.
#[test]
fn trace_cleans_up_leftovers_and_after_itself() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("trace-clean");
    ns.run_with_stdin(
        &["nft", "-f", "-"],
        &format!(
            "table ip {TRACE_TABLE} {{\n chain mark-prerouting {{\n  type filter hook prerouting priority -300;\n  meta nftrace set 1\n }}\n}}\n"
        ),
    );

    let mut trace = Trace::start(&ns, &["--protocol", "UDP", "--duration", "600"]);
    let during = tables(&ns);
    assert!(
        during.contains(&format!("table ip {TRACE_TABLE}")),
        "{during}"
    );
    let second = ns
        .command(&[BIN, "trace", "--duration", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run a second trace");
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains("another `kube-nft-proxy trace` is running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    trace.signal(libc::SIGKILL);
    let (status, _, err) = trace.finish();
    assert!(!status.success());
    assert!(
        err.contains("left behind by an earlier trace"),
        "the leftover table was not reported: {err}"
    );
    let after = tables(&ns);
    assert!(!after.contains(TRACE_TABLE), "after SIGKILL:\n{after}");

    let mut trace = Trace::start(&ns, &["--duration", "1"]);
    let (status, lines, err) = trace.finish();
    records(status, &lines, &err, "duration");
    let after = tables(&ns);
    assert!(!after.contains(TRACE_TABLE), "after the duration:\n{after}");
}

/// CAP_NET_ADMIN is all `trace` needs (what the docs say), and without it the trace
/// says that it needs it. Root's capabilities are capped with `setpriv`, as in
/// `tests/capabilities.rs`.
#[test]
fn trace_needs_cap_net_admin_only() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("trace-caps");
    let with_caps = |caps: &str| {
        ns.command(&[
            "setpriv",
            "--bounding-set",
            caps,
            "--inh-caps",
            caps,
            BIN,
            "trace",
            "--duration",
            "1",
            "--output",
            "json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"))
    };
    let out = with_caps("-all,+net_admin");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    records(
        out.status,
        &lines,
        &String::from_utf8_lossy(&out.stderr),
        "duration",
    );
    let out = with_caps("-all");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "without CAP_NET_ADMIN: {err}");
    assert!(err.contains("trace needs CAP_NET_ADMIN"), "{err}");
    assert!(!tables(&ns).contains(TRACE_TABLE));
}
