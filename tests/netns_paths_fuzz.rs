//! Differential fuzzing of the two kernel paths: random, partly hostile object sets
//! (hostile and longest legal names, overlapping and full-range CIDRs, both families,
//! affinity, every Service type, extreme ports and timeouts). For each: the proxy must
//! not crash; the `--dry-run` text must load with `nft -f`; `nft list` after it must
//! equal `nft list` after the netlink path (`--once`); and a second `--once` of the
//! same objects must commit nothing.
//!
//! Bounded by time (`KNP_PATHS_FUZZ_SECS`, default 45) and seeded
//! (`KNP_PATHS_FUZZ_SEED`, default 1): a failure prints its seed and keeps the manifest.

mod common;

use std::time::{Duration, Instant};

use common::monitor::Monitor;
use common::{require_privileged, NetNs, TempDir, BIN};
use kube_nft_proxy::synthetic::Rng;
use serde_json::{json, Value};

const NODE: &str = "node1";
const PORTS: [i64; 5] = [80, 65535, 1, 0, 70000];
const TIMEOUTS: [i64; 5] = [1, 86400, 2147483647, 0, -5];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len())]
}

fn name(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "n".repeat(63),
        1 => "bad name;\"x\"".into(),
        2 => "a/b".into(),
        3 => "ü-ñ".repeat(10),
        _ => format!("s{}", rng.below(50)),
    }
}

fn addr(rng: &mut Rng, v6: bool) -> String {
    if v6 {
        pick(
            rng,
            &[
                "fd00:30::1",
                "fd00:30::2",
                "fd00:56::8",
                "::1",
                "ff02::1",
                "fd00:30::3",
            ],
        )
        .into()
    } else {
        pick(
            rng,
            &[
                "172.30.0.1",
                "172.30.0.2",
                "5.6.7.8",
                "127.0.0.1",
                "0.0.0.0",
                "224.0.0.1",
                "172.30.0.3",
                "1.2.3.4",
            ],
        )
        .into()
    }
}

fn objects(rng: &mut Rng) -> Vec<Value> {
    let mut o = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"},
                                 {"type": "InternalIP", "address": "fd00:1::2"}]}}),
    ];
    for i in 0..1 + rng.below(6) {
        let ns = name(rng);
        let svc = format!("{}{i}", name(rng));
        let dual = rng.one_in(3);
        let v6 = !dual && rng.one_in(3);
        let mut ips = vec![addr(rng, v6)];
        if dual {
            ips.push(addr(rng, true));
        }
        let ty = pick(rng, &["ClusterIP", "NodePort", "LoadBalancer"]);
        let nports = 1 + rng.below(3);
        let ports: Vec<Value> = (0..nports)
            .map(|j| {
                let name = if j == 0 && rng.one_in(2) {
                    "p".repeat(15)
                } else {
                    format!("p{j}")
                };
                let node_ports = [30000 + i as i64, -1, 65536];
                json!({"name": name,
                       "protocol": pick(rng, &["TCP", "UDP", "TCP"]),
                       "port": PORTS[rng.below(PORTS.len())],
                       "targetPort": 8080,
                       "nodePort": node_ports[rng.below(3)]})
            })
            .collect();
        let ranges: Vec<&str> = (0..rng.below(4))
            .map(|_| {
                pick(
                    rng,
                    &[
                        "0.0.0.0/0",
                        "::/0",
                        "10.0.0.0/8",
                        "10.1.0.0/16",
                        "192.168.0.0/24",
                        "fd00::/8",
                        "garbage",
                    ],
                )
            })
            .collect();
        let external_ips: Vec<String> = (0..rng.below(3))
            .map(|_| {
                let v6 = rng.one_in(3);
                addr(rng, v6)
            })
            .collect();
        let mut spec = json!({"type": ty, "clusterIPs": ips, "ports": ports,
            "externalIPs": external_ips,
            "loadBalancerSourceRanges": ranges,
            "externalTrafficPolicy": pick(rng, &["Cluster", "Local"]),
            "internalTrafficPolicy": pick(rng, &["Cluster", "Local"])});
        if rng.one_in(3) {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] =
                json!({"clientIP": {"timeoutSeconds": TIMEOUTS[rng.below(TIMEOUTS.len())]}});
        }
        let mut s = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc, "namespace": ns}, "spec": spec});
        if ty == "LoadBalancer" {
            s["status"] = json!({"loadBalancer": {"ingress": [{"ip": addr(rng, v6)}]}});
        }
        o.push(s);
        for fam in ["IPv4", "IPv6"] {
            let eps: Vec<Value> = (0..rng.below(4))
                .map(|k| {
                    let a = if fam == "IPv6" { format!("fd00:180::{}", k + 1) } else { format!("10.180.0.{}", k + 1) };
                    let a = if rng.one_in(8) { "127.0.0.1".to_string() } else { a };
                    json!({"addresses": [a], "nodeName": pick(rng, &[NODE, "other"]),
                           "conditions": {"ready": !rng.one_in(4), "serving": true, "terminating": rng.one_in(4)}})
                })
                .collect();
            o.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{svc}-{fam}"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": fam, "endpoints": eps,
                "ports": (0..nports).map(|j| json!({"name": if j == 0 { "p".repeat(15) } else { format!("p{j}") },
                                                    "port": 8080, "protocol": "TCP"})).collect::<Vec<_>>()}));
        }
    }
    o
}

fn listing(ns: &NetNs) -> String {
    let out = ns
        .command(&["nft", "list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(ns: &NetNs, args: &[&str]) -> (bool, String, String) {
    let out = ns
        .command(&[&[BIN][..], args].concat())
        .output()
        .expect("run the proxy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn text_and_netlink_paths_agree_on_random_hostile_objects() {
    if !require_privileged() {
        return;
    }
    let secs: u64 = std::env::var("KNP_PATHS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let first: u64 = std::env::var("KNP_PATHS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let a = NetNs::new("fuzz-netlink");
    let b = NetNs::new("fuzz-text");
    let dir = TempDir::new("fuzz");
    let start = Instant::now();
    let mut seed = first;
    while start.elapsed() < Duration::from_secs(secs) {
        let mut rng = Rng::new(seed);
        let objs = objects(&mut rng);
        let path = dir.write(
            &format!("seed-{seed}.json"),
            &json!({"apiVersion": "v1", "kind": "List", "items": objs}).to_string(),
        );
        let base = [
            "--manifests",
            path.as_str(),
            "--hostname-override",
            NODE,
            "--cluster-cidr",
            "10.0.0.0/8,fd00:10::/64",
        ];
        let once = [&base[..], &["--once"]].concat();
        let (ok, _, err) = run(&a, &once);
        assert!(ok, "seed {seed}: --once failed ({path}):\n{err}");
        let (ok, text, err) = run(&a, &[&base[..], &["--dry-run"]].concat());
        assert!(ok, "seed {seed}: --dry-run failed ({path}):\n{err}");
        let load = b
            .command(&["nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(text.as_bytes())?;
                }
                c.wait_with_output()
            })
            .expect("run nft -f");
        assert!(
            load.status.success(),
            "seed {seed}: the --dry-run text does not load ({path}): {}",
            String::from_utf8_lossy(&load.stderr)
        );
        assert_eq!(
            listing(&a),
            listing(&b),
            "seed {seed}: the two paths differ ({path})"
        );
        let mut monitor = Monitor::start(&a);
        let (ok, _, err) = run(&a, &once);
        assert!(ok, "seed {seed}: second --once failed:\n{err}");
        monitor.sync(&a);
        let txs = monitor.transactions();
        assert!(
            txs.is_empty(),
            "seed {seed}: a second --once committed {txs:?} ({path})"
        );
        drop(monitor);
        for ns in [&a, &b] {
            ns.run(&["nft", "flush", "ruleset"]);
        }
        let _ = std::fs::remove_file(&path);
        seed += 1;
    }
    eprintln!("{} object sets from seed {first}", seed - first);
}
