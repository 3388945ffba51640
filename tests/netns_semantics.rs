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
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::backends::{expect_refused, sockaddr, tcp_ask, udp_ask_from, Answer, Servers};
use common::manifests::{
    ep, list, node_obj, ready_remote, service_cidr_obj, service_obj, slice_obj, svc_port,
    tcp_udp_ports, Cond, NOT_READY, READY, SERVING_TERMINATING, TARGET_PORT, TERMINATED,
};
use common::topology::{Net, Setup, Topology, CLIENT6, NODE_IP, NODE_IP6, NODE_NAME, POD_CLIENT};
use common::{join, require_privileged, TempDir};
use serde_json::{json, Value};

const SERVICE_CIDR: &str = "172.30.0.0/16";
const SERVICE_CIDR6: &str = "fd00:30::/112";
const BACKENDS: [&str; 4] = ["10.0.2.10", "10.0.2.11", "10.0.2.12", "10.0.2.13"];
const BACKENDS6: [&str; 2] = ["fd00:10:2::10", "fd00:10:2::11"];
/// An external client (outside `--cluster-cidr`).
const EXTERNAL_CLIENT: Net = Net {
    client: "203.0.113.2",
    gateway: "203.0.113.1",
};

fn strings(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The three namespaces (see the top of the file) with the client on `net`;
/// `dual_stack` adds the IPv6 networks. The node's ICMP rate limit is off: the refusals
/// are ICMP errors sent by the node.
fn topology(tag: &str, net: Net, dual_stack: bool) -> Topology {
    Topology::new(
        tag,
        Setup {
            net,
            backends6: dual_stack.then_some(&BACKENDS6[..]),
            ..Setup::new(&BACKENDS)
        },
    )
}

// ---------------------------------------------------------------------------------
// Clients (call these on a thread inside the client namespace)

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
    udp_ask_from(SocketAddr::new(any, port), dst)
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
    let topo = topology("aff", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, eps, TARGET_PORT);
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
    let topo = topology("zone", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &BACKENDS, TARGET_PORT);
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
    let topo = topology("term", POD_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &eps, TARGET_PORT);
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
    let topo = topology("dual", POD_CLIENT, true);
    let mut all_backends: Vec<&str> = eps4.to_vec();
    all_backends.extend(BACKENDS6);
    let _servers = Servers::start(&topo.backends, &all_backends, TARGET_PORT);
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
    let topo = topology("etp", EXTERNAL_CLIENT, false);
    let _servers = Servers::start(&topo.backends, &[local_ep, remote_ep], TARGET_PORT);
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
