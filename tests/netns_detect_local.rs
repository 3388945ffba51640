//! Each `--detect-local-mode` with real packets: a ClusterIP connection from a pod keeps
//! its source address, one from anywhere else is masqueraded to the node's address.
//!
//! Topology (four network namespaces per case, created and deleted by the test):
//!
//! ```text
//!  pod client                node (the proxy runs here)              backends
//!  eth0 10.0.1.2/24 ---- POD_IF 10.0.1.1/24 (or a port of bridge cni0 holding it)
//!  other client
//!  eth0 203.0.113.2/24 - ext0 203.0.113.1/24
//!                        to-backends 10.0.2.1/24 ---------------- eth0 10.0.2.10/24
//! ```
//!
//! Every mode that does not read `--cluster-cidr` gets a decoy one holding the other
//! client's network, so a mode that fell back to the CIDR would masquerade the pod and
//! not the other client: both halves of each case would fail.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};

use common::backends::{sockaddr, tcp_ask, udp_ask_from, Answer, Servers};
use common::manifests::{list, node_obj, ready_remote, service_obj, slice_obj, tcp_udp_ports};
use common::topology::{NODE_IP, NODE_NAME};
use common::{join, require_privileged, veth, NetNs, TempDir};

const CLUSTER_IP: &str = "172.30.0.10";
const BACKEND: &str = "10.0.2.10";
const POD: &str = "10.0.1.2";
const OTHER: &str = "203.0.113.2";
/// A `--cluster-cidr` that holds the other client, not the pod.
const DECOY_CIDR: &str = "203.0.113.0/24";

/// Never-reused UDP source ports, so no conntrack entry of an earlier case applies.
static UDP_PORT: AtomicU16 = AtomicU16::new(21_000);

struct Case {
    name: &'static str,
    /// the node's interface towards the pod client
    pod_if: &'static str,
    /// put `pod_if` in a bridge `cni0` that holds the pod gateway address
    bridge: bool,
    /// the Node's spec.podCIDRs
    pod_cidrs: &'static [&'static str],
    flags: &'static [&'static str],
}

fn manifests(pod_cidrs: &[&str]) -> String {
    let mut node = node_obj(&[NODE_IP], None);
    if !pod_cidrs.is_empty() {
        node["spec"] = serde_json::json!({"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs});
    }
    list(vec![
        node,
        service_obj(
            "web",
            "ClusterIP",
            &[CLUSTER_IP],
            tcp_udp_ports(),
            serde_json::json!({}),
        ),
        slice_obj("web", "web-1", ready_remote(&[BACKEND])),
    ])
}

/// The source address the backend saw, over TCP and over UDP (they must agree).
fn seen_from(client: &NetNs) -> String {
    let port = UDP_PORT.fetch_add(1, Ordering::SeqCst);
    let answers: (std::io::Result<Answer>, std::io::Result<Answer>) =
        join(client.spawn(move || {
            let dst = sockaddr(CLUSTER_IP, 80);
            let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            (tcp_ask(dst), udp_ask_from(local, dst))
        }));
    let tcp = answers
        .0
        .unwrap_or_else(|e| panic!("TCP to {CLUSTER_IP}:80: {e}"));
    let udp = answers
        .1
        .unwrap_or_else(|e| panic!("UDP to {CLUSTER_IP}:80: {e}"));
    assert_eq!(tcp.backend, BACKEND);
    assert_eq!(udp.backend, BACKEND);
    assert_eq!(tcp.seen_client, udp.seen_client, "TCP and UDP disagree");
    tcp.seen_client
}

fn run(case: &Case) {
    let tag = &case.name[..4];
    let pod = NetNs::new(&format!("dl{tag}-p"));
    let other = NetNs::new(&format!("dl{tag}-o"));
    let node = NetNs::new(&format!("dl{tag}-n"));
    let backends = NetNs::new(&format!("dl{tag}-b"));
    veth(&pod, "eth0", &node, case.pod_if);
    veth(&other, "eth0", &node, "ext0");
    veth(&node, "to-backends", &backends, "eth0");
    let gateway_if = if case.bridge {
        node.ip(&["link", "add", "cni0", "type", "bridge"]);
        node.ip(&["link", "set", case.pod_if, "master", "cni0"]);
        node.ip(&["link", "set", "cni0", "up"]);
        "cni0"
    } else {
        case.pod_if
    };
    node.ip(&["addr", "add", "10.0.1.1/24", "dev", gateway_if]);
    node.ip(&["addr", "add", "203.0.113.1/24", "dev", "ext0"]);
    node.ip(&[
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "to-backends",
    ]);
    node.sysctl("net.ipv4.ip_forward=1");
    pod.ip(&["addr", "add", &format!("{POD}/24"), "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    other.ip(&["addr", "add", &format!("{OTHER}/24"), "dev", "eth0"]);
    other.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    backends.ip(&["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"]);
    backends.ip(&["route", "add", "default", "via", NODE_IP]);
    let _servers = Servers::start(&backends, &[BACKEND], 8080);

    let dir = TempDir::new("detect-local");
    let file = dir.write("cluster.json", &manifests(case.pod_cidrs));
    let mut args = vec![
        "--manifests",
        &file,
        "--once",
        "--hostname-override",
        NODE_NAME,
    ];
    args.extend_from_slice(case.flags);
    node.proxy(&args);

    let ruleset = || node.run(&["nft", "list", "ruleset"]);
    let from_pod = seen_from(&pod);
    assert_eq!(
        from_pod,
        POD,
        "{}: pod traffic was masqueraded\n{}",
        case.name,
        ruleset()
    );
    let from_other = seen_from(&other);
    assert_eq!(
        from_other,
        NODE_IP,
        "{}: traffic from outside the pods was not masqueraded\n{}",
        case.name,
        ruleset()
    );
}

#[test]
fn cluster_cidr() {
    if !require_privileged() {
        return;
    }
    run(&Case {
        name: "cidr-cluster",
        pod_if: "vethpod0",
        bridge: false,
        // The Node's podCIDRs are a decoy here.
        pod_cidrs: &[DECOY_CIDR],
        flags: &[
            "--detect-local-mode=ClusterCIDR",
            "--cluster-cidr=10.0.0.0/16",
        ],
    });
}

#[test]
fn node_cidr() {
    if !require_privileged() {
        return;
    }
    run(&Case {
        name: "node-cidr",
        pod_if: "vethpod0",
        bridge: false,
        pod_cidrs: &["10.0.1.0/24"],
        flags: &["--detect-local-mode=NodeCIDR", "--cluster-cidr", DECOY_CIDR],
    });
}

#[test]
fn bridge_interface() {
    if !require_privileged() {
        return;
    }
    run(&Case {
        name: "bridge",
        pod_if: "vethpod0",
        bridge: true,
        pod_cidrs: &[],
        flags: &[
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cni0",
            "--cluster-cidr",
            DECOY_CIDR,
        ],
    });
}

#[test]
fn interface_name_prefix() {
    if !require_privileged() {
        return;
    }
    run(&Case {
        name: "prefix",
        pod_if: "cali1234",
        bridge: false,
        pod_cidrs: &[],
        flags: &[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=cali",
            "--cluster-cidr",
            DECOY_CIDR,
        ],
    });
}

/// NodeCIDR without podCIDRs on the Node: nothing is guessed (upstream waits for
/// them); a one-shot run says why and fails.
#[test]
fn node_cidr_without_pod_cidrs_programs_nothing() {
    if !require_privileged() {
        return;
    }
    let node = NetNs::new("dlnone-n");
    let dir = TempDir::new("detect-local-none");
    let file = dir.write("cluster.json", &manifests(&[]));
    let out = node
        .command(&[
            common::BIN,
            "--manifests",
            &file,
            "--once",
            "--hostname-override",
            NODE_NAME,
            "--detect-local-mode=NodeCIDR",
        ])
        .output()
        .expect("run the proxy");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.podCIDRs"), "{err}");
    let tables = node.run(&["nft", "list", "tables"]);
    assert!(!tables.contains("kube-nft-proxy"), "{tables}");
}
