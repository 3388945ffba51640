//! One object's blast radius is that object: a hostile object set (all of issue 9's
//! careless and hostile inputs at once) still programs every valid Service with
//! `--once` and in the daemon; the `--dry-run` text loads with `nft -f` and lists the
//! same as the netlink path; a second `--once` commits nothing.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::monitor::Monitor;
use common::{require_privileged, NetNs, TempDir, BIN};
use serde_json::{json, Value};

const NODE: &str = "node1";

fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn slice(ns: &str, svc: &str, name: &str, family: &str, eps: &[&str], ports: Value) -> Value {
    let endpoints: Vec<Value> = eps.iter().map(|a| json!({"addresses": [a]})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": family, "endpoints": endpoints, "ports": ports})
}

fn tcp80() -> Value {
    json!([{"name": "p", "port": 8080, "protocol": "TCP"}])
}

/// The hostile set, and the ClusterIPs of the valid Services it holds.
fn objects() -> (Vec<Value>, Vec<&'static str>) {
    let long_ns = "n".repeat(63);
    let long_name = "s".repeat(63);
    let long_port = "p".repeat(15);
    let mut o = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
               "status": {"addresses": [
                   {"type": "InternalIP", "address": "127.0.0.1"},
                   {"type": "InternalIP", "address": "::1"},
                   {"type": "InternalIP", "address": "192.168.0.2"}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
               "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["172.30.0.0/16"]}}),
    ];
    let mut valid = Vec::new();
    // Full-range and overlapping source ranges, dual-stack.
    o.push(service(
        "h",
        "all-ranges",
        json!({
        "type": "LoadBalancer", "clusterIPs": ["172.30.0.1", "fd00:30::1"],
        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
        "ports": [{"name": "p", "port": 80, "targetPort": 8080, "nodePort": 30001}],
        "loadBalancerSourceRanges": ["0.0.0.0/0", "::/0", "10.0.0.0/8", "10.1.0.0/16"]}),
    ));
    o.last_mut().unwrap()["status"] =
        json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"ip": "fd00:56::8"}]}});
    o.push(slice(
        "h",
        "all-ranges",
        "all-ranges-4",
        "IPv4",
        &["10.180.0.1"],
        tcp80(),
    ));
    o.push(slice(
        "h",
        "all-ranges",
        "all-ranges-6",
        "IPv6",
        &["fd00:180::1"],
        tcp80(),
    ));
    valid.push("172.30.0.1");
    // The longest legal names, with session affinity and an impossible timeout.
    o.push(service(
        &long_ns,
        &long_name,
        json!({
        "clusterIP": "172.30.0.2",
        "ports": [{"name": long_port, "port": 80, "targetPort": 8080}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2147483647}}}),
    ));
    o.push(slice(
        &long_ns,
        &long_name,
        "long-1",
        "IPv4",
        &["10.180.0.2", "10.180.0.3"],
        json!([{"name": long_port, "port": 8080, "protocol": "TCP"}]),
    ));
    valid.push("172.30.0.2");
    // Names nft would need quoted; a/b + c against a + b/c.
    for (i, (ns, name)) in [("bad ns;x", "svc \"q\""), ("a/b", "c"), ("a", "b/c")]
        .iter()
        .enumerate()
    {
        let ip = ["172.30.0.3", "172.30.0.4", "172.30.0.5"][i];
        o.push(service(
            ns,
            name,
            json!({
            "clusterIP": ip, "ports": [{"name": "p", "port": 80, "targetPort": 8080}],
            "sessionAffinity": "ClientIP"}),
        ));
        o.push(slice(
            ns,
            name,
            &format!("{name}-1"),
            "IPv4",
            &["10.180.0.4"],
            tcp80(),
        ));
    }
    valid.extend(["172.30.0.3", "172.30.0.4", "172.30.0.5"]);
    // Special and wrong-family addresses.
    o.push(service(
        "h",
        "zero",
        json!({"clusterIP": "0.0.0.0",
        "ports": [{"name": "p", "port": 80}]}),
    ));
    o.push(service(
        "h",
        "specials",
        json!({
        "clusterIP": "172.30.0.6", "externalIPs": ["127.0.0.1", "224.0.0.1", "fd00::99", "7.7.7.7"],
        "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}),
    ));
    o.push(slice(
        "h",
        "specials",
        "specials-1",
        "IPv4",
        &["224.0.0.5", "127.0.0.1", "0.0.0.0", "10.180.0.6"],
        tcp80(),
    ));
    valid.push("172.30.0.6");
    // Two Services claiming one ClusterIP: the older keeps it.
    for (name, ts) in [
        ("newer", "2024-06-01T00:00:00Z"),
        ("older", "2020-01-01T00:00:00Z"),
    ] {
        let mut s = service(
            "h",
            name,
            json!({"clusterIP": "172.30.0.7",
            "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}),
        );
        s["metadata"]["creationTimestamp"] = json!(ts);
        o.push(s);
        o.push(slice(
            "h",
            name,
            &format!("{name}-1"),
            "IPv4",
            &[if name == "older" {
                "10.180.0.77"
            } else {
                "10.180.0.78"
            }],
            tcp80(),
        ));
    }
    valid.push("172.30.0.7");
    // Duplicate, unnamed and impossible ports.
    o.push(service(
        "h",
        "ports",
        json!({"clusterIP": "172.30.0.8", "type": "NodePort", "ports": [
        {"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": 8080},
        {"name": "d", "port": 82}, {"name": "d", "port": 82},
        {"name": "big", "port": 70000}, {"name": "np", "port": 83, "nodePort": -1},
        {"name": "x", "port": 84, "protocol": "XYZ"}]}),
    ));
    o.push(slice(
        "h",
        "ports",
        "ports-1",
        "IPv4",
        &["10.180.0.8"],
        tcp80(),
    ));
    valid.push("172.30.0.8");
    // Garbage in fields and whole objects.
    o.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nospec", "namespace": "h"}}));
    o.push(slice(
        "h",
        "ghost",
        "ghost-1",
        "IPv4",
        &["not-an-ip", "10.180.0.9"],
        tcp80(),
    ));
    o.push(slice(
        "h",
        "specials",
        "specials-v6",
        "IPv4",
        &["fd00::1"],
        tcp80(),
    ));
    (o, valid)
}

fn list(objs: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objs}).to_string()
}

fn args(path: &str) -> Vec<&str> {
    vec![
        "--manifests",
        path,
        "--hostname-override",
        NODE,
        "--cluster-cidr",
        "10.0.0.0/8,fd00:10::/64",
    ]
}

fn listing(ns: &NetNs) -> (String, String) {
    (ns.list_table("ip"), ns.list_table("ip6"))
}

#[test]
fn a_hostile_object_set_programs_every_valid_service() {
    if !require_privileged() {
        return;
    }
    let (objs, valid) = objects();
    let dir = TempDir::new("hostile");
    let path = dir.write("cluster.json", &list(&objs));

    // --once.
    let once = NetNs::new("hostile-once");
    let mut a = args(&path);
    a.push("--once");
    once.proxy(&a);
    let (v4, v6) = listing(&once);
    for ip in &valid {
        assert!(v4.contains(ip), "{ip} is not programmed:\n{v4}");
    }
    assert!(
        v6.contains("fd00:30::1"),
        "the IPv6 side is not programmed:\n{v6}"
    );
    assert!(
        v4.contains("10.180.0.77") && !v4.contains("10.180.0.78"),
        "the older Service keeps 172.30.0.7:\n{v4}"
    );
    for never in ["127.0.0.1", "224.0.0.", "0.0.0.0 ", "fd00::99"] {
        assert!(
            !v4.contains(never) && !v6.contains(never),
            "{never} is programmed:\n{v4}\n{v6}"
        );
    }
    assert!(
        !v6.split_whitespace().any(|t| t == "::1" || t == "{ ::1"),
        "no NodePort on ::1:\n{v6}"
    );

    // A second --once commits nothing.
    let mut monitor = Monitor::start(&once);
    once.proxy(&a);
    monitor.sync(&once);
    let txs = monitor.transactions();
    assert!(
        txs.is_empty(),
        "a second --once changed the ruleset: {txs:?}"
    );
    drop(monitor);

    // The --dry-run text loads and lists the same.
    let mut d = args(&path);
    d.push("--dry-run");
    let text = once.proxy(&d);
    let loaded = NetNs::new("hostile-text");
    loaded.run_with_stdin(&["nft", "-f", "-"], &text);
    assert_eq!(
        listing(&loaded),
        listing(&once),
        "the text and the netlink path differ"
    );

    // The daemon (files mode) programs the same.
    let daemon_ns = NetNs::new("hostile-daemon");
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut child = daemon_ns
        .command(&[&[BIN][..], &args(&path)[..]].concat())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let start = Instant::now();
    let mut got = (String::new(), String::new());
    while start.elapsed() < Duration::from_secs(10) {
        let v4 = daemon_ns
            .command(&["nft", "list", "table", "ip", "kube-nft-proxy"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if valid.iter().all(|ip| v4.contains(ip)) {
            got = listing(&daemon_ns);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let daemon_log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        got,
        listing(&once),
        "the daemon programs what --once does\n{daemon_log}"
    );
    assert!(
        daemon_log.contains("skipped"),
        "bad input is reported:\n{daemon_log}"
    );
}
