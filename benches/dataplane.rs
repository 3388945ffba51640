//! Data-plane benchmark (root): what one new connection through a ClusterIP costs with
//! our ruleset, against the same cluster as an upstream-shaped ruleset, measured in one
//! run (issue 13: a new connection must not pay for every distinct endpoint count).
//!
//! Two clusters of 302 Services (ClusterIP, TCP 80 → 8080):
//!
//! * **2 counts**: Services 0..=150 have 1 endpoint, Services 151..=301 have 301;
//! * **301 counts**: Service i has min(i + 1, 301) endpoints: every count 1..=301.
//!
//! Measured: Service 0 (1 endpoint: our first class) and Service 301 (301 endpoints:
//! our last class), the same Services with the same endpoints in both clusters. Each
//! cluster is programmed three ways, each into its own network namespace:
//!
//! * **ours**: `kube-nft-proxy --once` (netlink), the ruleset this crate builds;
//! * **upstream shape**: `nft -f` of the rules upstream kube-proxy's nftables mode
//!   programs for these Services (verdict map `service-ips` → a chain per Service →
//!   `numgen random mod N vmap` → a chain per endpoint that DNATs; its filter chains
//!   with their verdict-map checks), reduced to what ClusterIPs need;
//! * **previous shape**: our ruleset with the dispatch it had before issue 13 — one rule
//!   per distinct endpoint count, `ip daddr . meta l4proto . th dport @count-N dnat …
//!   numgen random mod N map @endpoints`, walked in order (`nft -f` of our `--dry-run`
//!   text with the `pick-P` rules of `services` replaced by those).
//!
//! In each namespace the endpoints' addresses are local (on `lo`) and one listener on
//! 0.0.0.0:8080 serves them all; the ClusterIP range routes out of a veth, so only the
//! DNAT brings a connection anywhere. The client is this process, one thread that moves
//! between the namespaces (`setns`): a blocking `connect` (the whole handshake runs in
//! its context over loopback), then close with RST (`SO_LINGER` 0: no TIME_WAIT). Every
//! connection is new to conntrack, so its SYN walks the nat rules. The accept queues
//! are drained between rounds, outside the timed part (a warm-up round also checks
//! that every connection reached an endpoint of the right Service).
//!
//! Each round times `KNP_BENCH_CONNS` (200) connections of each of the 12 series (3
//! shapes × 2 clusters × 2 Services), in an order that rotates every round;
//! `KNP_BENCH_ROUNDS` (60) rounds. Reported per series: the median over rounds of the
//! mean time per connection. Each ratio is computed per round between two series of
//! that round (so that a slow phase of the machine hits both alike), then its median
//! over the rounds is taken.
//!
//!     sudo cargo bench --bench dataplane
//!
//! Without root it prints "skipped (needs root)" (or fails with
//! `KNP_REQUIRE_PRIVILEGED=1`).

#![allow(unsafe_code)] // setns(2), a listener with a large backlog, SO_LINGER, geteuid

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The proxy binary cargo built for this bench.
const BIN: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");
const SERVICES: usize = 302;
const MAX_ENDPOINTS: usize = 301;
const NODE: &str = "bench-node";
const NODE_IP: &str = "192.168.0.2";
/// The measured Services: the first and the last class of ours.
const MEASURED: [(usize, &str); 2] = [
    (0, "first class (1 endpoint)"),
    (301, "last class (301 endpoints)"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cluster {
    Two,
    Many,
}

impl Cluster {
    fn name(self) -> &'static str {
        match self {
            Cluster::Two => "2 counts",
            Cluster::Many => "301 counts",
        }
    }

    fn count(self, i: usize) -> usize {
        match self {
            Cluster::Two if i <= 150 => 1,
            Cluster::Two => MAX_ENDPOINTS,
            Cluster::Many => (i + 1).min(MAX_ENDPOINTS),
        }
    }

    fn distinct_counts(self) -> usize {
        let mut c: Vec<usize> = (0..SERVICES).map(|i| self.count(i)).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Ours,
    Upstream,
    Previous,
    Grouped,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Ours => "ours",
            Shape::Upstream => "upstream shape",
            Shape::Previous => "previous shape",
            Shape::Grouped => "grouped (√K)",
        }
    }
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 200) as u8, (i % 200 + 1) as u8)
}

fn endpoint(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        (128 + i / 64) as u8,
        ((i % 64) * 4 + j / 250) as u8,
        (j % 250 + 1) as u8,
    )
}

// ---------------------------------------------------------------------------------
// Rulesets

/// The cluster as a JSON `List` for `--manifests`.
fn manifests(c: Cluster) -> Value {
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
               "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/12"]}}),
    ];
    for i in 0..SERVICES {
        let name = format!("svc{i}");
        let ip = vip(i).to_string();
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
        }));
        let eps: Vec<Value> = (0..c.count(i))
            .map(|j| {
                json!({"addresses": [endpoint(i, j).to_string()], "nodeName": format!("worker-{}", j % 50),
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// What upstream kube-proxy's nftables mode programs for these ClusterIP Services
/// (`pkg/proxy/nftables`: base chains and their checks, `service-ips` verdict map, a
/// chain per Service balancing with `numgen random mod N vmap`, a chain per endpoint
/// with its hairpin check and DNAT), without the objects ClusterIPs never use.
fn upstream_script(c: Cluster) -> String {
    let mut s = String::from("table ip kube-proxy {\n");
    let vips: Vec<String> = (0..SERVICES).map(|i| vip(i).to_string()).collect();
    let _ = writeln!(
        s,
        "\tset cluster-ips {{ type ipv4_addr; elements = {{ {} }} }}",
        vips.join(", ")
    );
    for m in ["no-endpoint-services", "firewall-ips"] {
        let _ = writeln!(
            s,
            "\tmap {m} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"
        );
    }
    for m in ["no-endpoint-nodeports", "service-nodeports"] {
        let _ = writeln!(
            s,
            "\tmap {m} {{ type inet_proto . inet_service : verdict; }}"
        );
    }
    s.push_str("\tchain mark-for-masquerade { meta mark set meta mark | 0x4000; }\n");
    for i in 0..SERVICES {
        for j in 0..c.count(i) {
            let e = endpoint(i, j);
            let _ = writeln!(
                s,
                "\tchain endpoint-{i}-{j} {{\n\t\tip saddr {e} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to {e}:8080\n\t}}"
            );
        }
        let vmap: Vec<String> = (0..c.count(i))
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        let _ = writeln!(
            s,
            "\tchain service-{i} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            c.count(i),
            vmap.join(", ")
        );
    }
    let elements: Vec<String> = (0..SERVICES)
        .map(|i| format!("{} . tcp . 80 : goto service-{i}", vip(i)))
        .collect();
    let _ = writeln!(
        s,
        "\tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {} }} }}",
        elements.join(", ")
    );
    s.push_str(
        "\tchain reject-chain { reject; }
\tchain firewall-check { ip daddr . meta l4proto . th dport vmap @firewall-ips; }
\tchain service-endpoints-check { ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }
\tchain nodeport-endpoints-check { ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports; }
\tchain cluster-ips-check {
\t\tip daddr @cluster-ips reject
\t\tip daddr 10.96.0.0/12 drop
\t}
\tchain nodeports { meta l4proto . th dport vmap @service-nodeports; }
\tchain services {
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump nodeports
\t}
\tchain masquerading {
\t\tmeta mark & 0x4000 == 0 return
\t\tmeta mark set meta mark ^ 0x4000
\t\tmasquerade fully-random
\t}
\tchain filter-prerouting { type filter hook prerouting priority -110; ct state new jump firewall-check; }
\tchain filter-input {
\t\ttype filter hook input priority -110;
\t\tct state new jump nodeport-endpoints-check
\t\tct state new jump service-endpoints-check
\t}
\tchain filter-forward {
\t\ttype filter hook forward priority -110;
\t\tct state new jump service-endpoints-check
\t\tct state new jump cluster-ips-check
\t}
\tchain filter-output {
\t\ttype filter hook output priority -110;
\t\tct state new jump service-endpoints-check
\t\tct state new jump firewall-check
\t}
\tchain filter-output-post-dnat { type filter hook output priority -90; ct state new jump cluster-ips-check; }
\tchain nat-prerouting { type nat hook prerouting priority -100; jump services; }
\tchain nat-output { type nat hook output priority -100; jump services; }
\tchain nat-postrouting { type nat hook postrouting priority 100; jump masquerading; }
}
",
    );
    s
}

/// Our `--dry-run` text with the dispatch of `services` replaced by the one this crate
/// had before issue 13: a set per distinct count and one rule per set, in count order.
/// `grouped`: the alternative instead, those rules split by count into ⌈√K⌉
/// group chains of consecutive counts, each reached by one group-set lookup.
fn previous_script(ours: &str, c: Cluster, grouped: bool) -> String {
    let mut by_count: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..SERVICES {
        by_count.entry(c.count(i)).or_default().push(i);
    }
    let f = "ip daddr . meta l4proto . th dport";
    let set = |name: &str, svcs: &mut dyn Iterator<Item = &usize>| {
        let els: Vec<String> = svcs.map(|i| format!("{} . tcp . 80", vip(*i))).collect();
        format!(
            "\tset {name} {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = {{ {} }}\n\t}}\n",
            els.join(", ")
        )
    };
    let class_rule =
        |n: usize| format!("{f} @count-{n} dnat ip to {f} . numgen random mod {n} map @endpoints");
    let mut sets = String::new();
    let mut rules = String::new();
    for (n, svcs) in &by_count {
        sets.push_str(&set(&format!("count-{n}"), &mut svcs.iter()));
        if !grouped {
            let _ = writeln!(rules, "\t\t{}", class_rule(*n));
        }
    }
    if grouped {
        let counts: Vec<usize> = by_count.keys().copied().collect();
        let per = (counts.len() as f64).sqrt().ceil() as usize;
        for (g, group) in counts.chunks(per).enumerate() {
            let mut members = group.iter().flat_map(|n| &by_count[n]);
            sets.push_str(&set(&format!("group-{g}"), &mut members));
            let body: Vec<String> = group
                .iter()
                .map(|n| format!("\t\t{}\n", class_rule(*n)))
                .collect();
            let _ = writeln!(sets, "\tchain group-{g} {{\n{}\t}}", body.concat());
            let _ = writeln!(rules, "\t\t{f} @group-{g} jump group-{g}");
        }
    }
    let mut out = String::new();
    let (mut in_v4, mut in_services, mut sets_done, mut rules_done) = (false, false, false, false);
    for line in ours.lines() {
        if line.starts_with("table ") {
            in_v4 = line.starts_with("table ip kube-nft-proxy");
        }
        if in_v4 && !sets_done && line.starts_with("\tchain ") {
            out.push_str(&sets);
            sets_done = true;
        }
        if in_v4 && line == "\tchain services {" {
            in_services = true;
        } else if in_services && line == "\t}" {
            in_services = false;
        } else if in_services && line.contains("@pick-") {
            if !rules_done {
                out.push_str(&rules);
                rules_done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        sets_done && rules_done,
        "our --dry-run text has no ip table with pick rules in services"
    );
    out
}

// ---------------------------------------------------------------------------------
// Namespaces

/// A network namespace of this run; deleted on drop.
struct Ns {
    name: String,
    file: std::fs::File,
}

fn run(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to {args:?}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Ns {
    /// A namespace whose `lo` holds the measured Services' endpoints, with the
    /// ClusterIP range routed out of a veth.
    fn new(tag: &str) -> Ns {
        let name = format!("knp-dp-{tag}-{}", std::process::id());
        run(&["ip", "netns", "add", &name], None);
        let file = std::fs::File::open(format!("/var/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("open namespace {name}: {e}"));
        let ns = Ns { name, file };
        let mut batch = String::from(
            "link set lo up\nlink add v0 type veth peer name v1\nlink set v0 up\nlink set v1 up\n",
        );
        let _ = writeln!(
            batch,
            "addr add {NODE_IP}/24 dev v0\nroute add 10.96.0.0/12 dev v0"
        );
        for (i, _) in MEASURED {
            for j in 0..MAX_ENDPOINTS.min(Cluster::Many.count(i)) {
                let _ = writeln!(batch, "addr add {}/32 dev lo", endpoint(i, j));
            }
        }
        run(&["ip", "-n", &ns.name, "-batch", "-"], Some(&batch));
        ns
    }

    fn exec(&self, args: &[&str], input: Option<&str>) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full, input)
    }

    /// Moves this thread into the namespace.
    fn enter(&self) {
        // SAFETY: an open nsfs file; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A non-blocking listener on 0.0.0.0:8080 in the current namespace, with a backlog
/// large enough for a round (std's is 128).
fn listener() -> OwnedFd {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 8080u16.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(
            rc,
            0,
            "bind 0.0.0.0:8080: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::listen(fd.as_raw_fd(), 4096),
            0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Accepts (and closes) everything queued; returns the local addresses they reached.
fn drain(l: &OwnedFd) -> Vec<Ipv4Addr> {
    let mut reached = Vec::new();
    loop {
        // SAFETY: a valid listening socket; the accepted descriptor is owned at once.
        let fd = unsafe {
            libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return reached;
        }
        // SAFETY: accept4 returned a new descriptor.
        let c = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` is a sockaddr_in of the length passed.
        if unsafe {
            libc::getsockname(
                c.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        } == 0
        {
            reached.push(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)));
        }
    }
}

/// `n` connections to `dst` (handshake, then RST); the wall time they took.
fn connections(dst: SocketAddr, n: usize) -> Duration {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let start = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        // SAFETY: a valid socket and a `linger` of the size passed.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&lg as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------
// The run

struct Setup {
    cluster: Cluster,
    shape: Shape,
    ns: Ns,
    listener: OwnedFd,
}

struct Series {
    setup: usize,
    service: usize,
    /// mean µs per connection, per round
    us: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("KNP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("data-plane benchmark needs root");
        }
        println!("dataplane: skipped (needs root)");
        return;
    }
    let rounds = env_usize("KNP_BENCH_ROUNDS", 60).max(1);
    let conns = env_usize("KNP_BENCH_CONNS", 200).clamp(1, 4000);
    let dir = std::env::temp_dir().join(format!("knp-dataplane-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
    println!(
        "dataplane: {SERVICES} ClusterIP Services; {rounds} rounds x {conns} connections per series; kernel {}; {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        run(&["nft", "--version"], None).trim()
    );

    let mut shapes = vec![Shape::Ours, Shape::Upstream, Shape::Previous];
    if std::env::var("KNP_BENCH_ALTERNATIVES").as_deref() == Ok("1") {
        shapes.push(Shape::Grouped);
    }
    let mut setups = Vec::new();
    for cluster in [Cluster::Two, Cluster::Many] {
        let file = dir.join(format!("{:?}.json", cluster).to_lowercase());
        let text = serde_json::to_vec(&manifests(cluster)).expect("manifests serialize");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
        let file = file.to_string_lossy().into_owned();
        let proxy = |extra: &[&str]| {
            let mut a = vec![BIN, "--manifests", &file, "--hostname-override", NODE];
            a.extend_from_slice(extra);
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let dry = run(
            &proxy(&["--dry-run"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            None,
        );
        for &shape in &shapes {
            let tag = format!(
                "{}{}",
                if cluster == Cluster::Two { "2" } else { "301" },
                &shape.name()[..2]
            );
            let ns = Ns::new(&tag);
            let t0 = Instant::now();
            match shape {
                Shape::Ours => {
                    ns.exec(
                        &proxy(&["--once"])
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                        None,
                    );
                }
                Shape::Upstream => {
                    ns.exec(&["nft", "-f", "-"], Some(&upstream_script(cluster)));
                }
                Shape::Previous | Shape::Grouped => {
                    let text = previous_script(&dry, cluster, shape == Shape::Grouped);
                    ns.exec(&["nft", "-f", "-"], Some(&text));
                }
            }
            println!(
                "  {} ({} distinct endpoint counts) / {}: programmed in {:.0} ms",
                cluster.name(),
                cluster.distinct_counts(),
                shape.name(),
                t0.elapsed().as_secs_f64() * 1e3,
            );
            ns.enter();
            let listener = listener();
            setups.push(Setup {
                cluster,
                shape,
                ns,
                listener,
            });
        }
    }

    let mut series: Vec<Series> = Vec::new();
    for (k, _) in setups.iter().enumerate() {
        for (svc, _) in MEASURED {
            series.push(Series {
                setup: k,
                service: svc,
                us: Vec::new(),
            });
        }
    }
    // Warm-up: every connection must reach an endpoint of its Service.
    for s in &series {
        let st = &setups[s.setup];
        st.ns.enter();
        let dst = SocketAddr::V4(SocketAddrV4::new(vip(s.service), 80));
        connections(dst, conns);
        let reached = drain(&st.listener);
        let n = st.cluster.count(s.service);
        let wanted: std::collections::BTreeSet<Ipv4Addr> =
            (0..n).map(|j| endpoint(s.service, j)).collect();
        let hit: std::collections::BTreeSet<Ipv4Addr> = reached.iter().copied().collect();
        assert!(
            reached.len() == conns && hit.is_subset(&wanted),
            "{} / {}: {} of {conns} connections to {dst} reached {} endpoints, {} of them not the Service's",
            st.cluster.name(),
            st.shape.name(),
            reached.len(),
            hit.len(),
            hit.difference(&wanted).count()
        );
    }
    let t0 = Instant::now();
    for r in 0..rounds {
        let len = series.len();
        for k in 0..len {
            let s = &mut series[(k + r) % len];
            let st = &setups[s.setup];
            st.ns.enter();
            let took = connections(SocketAddr::V4(SocketAddrV4::new(vip(s.service), 80)), conns);
            drain(&st.listener);
            s.us.push(took.as_secs_f64() * 1e6 / conns as f64);
        }
    }
    println!("  measured in {:.1} s", t0.elapsed().as_secs_f64());

    let find = |c: Cluster, sh: Shape, svc: usize| {
        series
            .iter()
            .find(|s| {
                setups[s.setup].cluster == c && setups[s.setup].shape == sh && s.service == svc
            })
            .expect("every series exists")
    };
    let ratio =
        |a: &Series, b: &Series| median(a.us.iter().zip(&b.us).map(|(x, y)| x / y).collect());
    println!("\n## New-connection cost through a ClusterIP (µs per connection, median of {rounds} rounds)\n");
    let names: Vec<&str> = shapes.iter().map(|s| s.name()).collect();
    println!("| cluster | Service | {} |", names.join(" | "));
    println!("|---|---|{}", "---|".repeat(shapes.len()));
    for c in [Cluster::Two, Cluster::Many] {
        for (svc, what) in MEASURED {
            let cells: Vec<String> = shapes
                .iter()
                .map(|sh| format!("{:.1}", median(find(c, *sh, svc).us.clone())))
                .collect();
            println!("| {} | {what} | {} |", c.name(), cells.join(" | "));
        }
    }
    println!("\n## Ratios (per round, median)\n");
    println!("| ratio | first class | last class | target |");
    println!("|---|---|---|---|");
    let mut rows: Vec<(&str, Cluster, Shape, Cluster, Shape, &str)> = vec![
        (
            "ours, 301 counts / ours, 2 counts",
            Cluster::Many,
            Shape::Ours,
            Cluster::Two,
            Shape::Ours,
            "≤ 1.05",
        ),
        (
            "ours / upstream shape, 301 counts",
            Cluster::Many,
            Shape::Ours,
            Cluster::Many,
            Shape::Upstream,
            "≤ 1.10",
        ),
        (
            "ours / upstream shape, 2 counts",
            Cluster::Two,
            Shape::Ours,
            Cluster::Two,
            Shape::Upstream,
            "",
        ),
        (
            "previous, 301 counts / previous, 2 counts",
            Cluster::Many,
            Shape::Previous,
            Cluster::Two,
            Shape::Previous,
            "",
        ),
    ];
    if shapes.contains(&Shape::Grouped) {
        rows.push((
            "grouped, 301 counts / grouped, 2 counts",
            Cluster::Many,
            Shape::Grouped,
            Cluster::Two,
            Shape::Grouped,
            "",
        ));
    }
    for (what, ca, sa, cb, sb, target) in rows {
        let [first, last] = MEASURED.map(|(svc, _)| ratio(find(ca, sa, svc), find(cb, sb, svc)));
        println!("| {what} | {first:.3} | {last:.3} | {target} |");
    }
    drop(setups);
    let _ = std::fs::remove_dir_all(&dir);
}
