//! What `--dry-run` prints is what `--once` programs over netlink.
//!
//! For one manifest set (multi-port, dual-stack, no endpoints, NodePort, LoadBalancer
//! with eTP=Local, iTP=Local, a ServiceCIDR per family), namespace A loads the
//! `--dry-run` text with `nft -f -` and namespace B is programmed by the binary with
//! `--once`; `nft list table` of both families must be equal. Re-running `--once` with
//! the same input must leave B unchanged, and re-running it with one endpoint removed
//! must change exactly the elements that depend on that endpoint (and B must then equal
//! a fresh namespace loaded from the new `--dry-run` text).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{require_privileged, NetNs, TempDir};

const NODE_FLAGS: [&str; 4] = [
    "--hostname-override",
    "node1",
    "--cluster-cidr",
    "10.1.0.0/16,fd00:1::/64",
];

/// The endpoint the last step removes (from `shop/multi`, the highest of its three
/// ready endpoints, so the indices of the other two do not move). It runs on this node,
/// so it also has a hairpin pair.
const REMOVED: &str = "10.1.0.12";

fn manifests(with_removed: bool) -> String {
    let removed = if with_removed {
        format!("  - {{addresses: [{REMOVED}], nodeName: node1}}\n")
    } else {
        String::new()
    };
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: node1
  labels: {{topology.kubernetes.io/zone: zone-a}}
spec:
  podCIDRs: [10.1.0.0/24, "fd00:1::/96"]
status:
  addresses:
    - {{type: InternalIP, address: 192.168.7.1}}
    - {{type: InternalIP, address: "fd00:7::1"}}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {{name: services-v4}}
spec: {{cidrs: [172.30.0.0/16]}}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {{name: services-v6}}
spec: {{cidrs: ["fd00:30::/112"]}}
---
# multi-port, with a non-ready endpoint
apiVersion: v1
kind: Service
metadata: {{name: multi, namespace: shop}}
spec:
  clusterIP: 172.30.0.10
  ports:
    - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}
    - {{name: https, protocol: TCP, port: 443, targetPort: 8443}}
    - {{name: dns, protocol: UDP, port: 53}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: multi-1
  namespace: shop
  labels: {{kubernetes.io/service-name: multi}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.10], nodeName: node1}}
  - {{addresses: [10.1.0.11], nodeName: node2}}
{removed}  - {{addresses: [10.1.0.13], nodeName: node2, conditions: {{ready: false, serving: false}}}}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
  - {{name: https, protocol: TCP, port: 8443}}
  - {{name: dns, protocol: UDP, port: 53}}
---
# dual-stack, one slice per family
apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: shop}}
spec:
  clusterIP: 172.30.0.20
  clusterIPs: [172.30.0.20, "fd00:30::20"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {{name: web, protocol: TCP, port: 80, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v4
  namespace: shop
  labels: {{kubernetes.io/service-name: dual}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.20], nodeName: node1}}
  - {{addresses: [10.1.0.21], nodeName: node2}}
  - {{addresses: [10.1.0.22], nodeName: node2}}
ports:
  - {{name: web, protocol: TCP, port: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v6
  namespace: shop
  labels: {{kubernetes.io/service-name: dual}}
addressType: IPv6
endpoints:
  - {{addresses: ["fd00:1::20"], nodeName: node1}}
  - {{addresses: ["fd00:1::21"], nodeName: node2}}
ports:
  - {{name: web, protocol: TCP, port: 8080}}
---
# no endpoints: no slice at all (IPv4), an empty slice (IPv6)
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: shop}}
spec:
  clusterIP: 172.30.0.30
  ports:
    - {{name: http, protocol: TCP, port: 80}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty6, namespace: shop}}
spec:
  clusterIP: "fd00:30::30"
  ipFamilies: [IPv6]
  ports:
    - {{name: http, protocol: TCP, port: 80}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: empty6-1
  namespace: shop
  labels: {{kubernetes.io/service-name: empty6}}
addressType: IPv6
endpoints: []
ports:
  - {{name: http, protocol: TCP, port: 80}}
---
# dual-stack NodePort
apiVersion: v1
kind: Service
metadata: {{name: np, namespace: shop}}
spec:
  type: NodePort
  clusterIP: 172.30.0.40
  clusterIPs: [172.30.0.40, "fd00:30::40"]
  ipFamilies: [IPv4, IPv6]
  ports:
    - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-v4
  namespace: shop
  labels: {{kubernetes.io/service-name: np}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.40], nodeName: node1}}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-v6
  namespace: shop
  labels: {{kubernetes.io/service-name: np}}
addressType: IPv6
endpoints:
  - {{addresses: ["fd00:1::40"], nodeName: node1}}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
---
# LoadBalancer, eTP=Local, with an external IP
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.50
  externalIPs: [198.51.100.5]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30999
  ports:
    - {{name: https, protocol: TCP, port: 443, targetPort: 8443, nodePort: 30443}}
status:
  loadBalancer:
    ingress: [{{ip: 192.0.2.50}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: shop
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.50], nodeName: node1}}
  - {{addresses: [10.1.0.51], nodeName: node2}}
ports:
  - {{name: https, protocol: TCP, port: 8443}}
---
# eTP=Local NodePort without a local endpoint
apiVersion: v1
kind: Service
metadata: {{name: np-local, namespace: shop}}
spec:
  type: NodePort
  clusterIP: 172.30.0.70
  externalTrafficPolicy: Local
  ports:
    - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30070}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-local-1
  namespace: shop
  labels: {{kubernetes.io/service-name: np-local}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.70], nodeName: node2}}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
---
# iTP=Local without a local endpoint
apiVersion: v1
kind: Service
metadata: {{name: itp, namespace: shop}}
spec:
  clusterIP: 172.30.0.60
  internalTrafficPolicy: Local
  ports:
    - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: itp-1
  namespace: shop
  labels: {{kubernetes.io/service-name: itp}}
addressType: IPv4
endpoints:
  - {{addresses: [10.1.0.60], nodeName: node2}}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
"#
    )
}

/// An `nft list table` listing, normalised for comparison: the element lists are taken
/// out of the text and kept per set as sorted sets.
///
/// Why: `nft list` prints the elements of a hash set in the kernel's walk order (which
/// depends on the set's random hash seed, so it differs between two namespaces holding
/// the same elements) and wraps them several to a line. Element order carries no
/// meaning, so elements are compared as sets; everything else (set declarations, the
/// order of sets and chains, every rule in order) is compared as text.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    /// the listing with each element list replaced by `elements = { ... }`
    skeleton: String,
    /// set or map name → its elements, each with whitespace collapsed
    elements: BTreeMap<String, BTreeSet<String>>,
}

impl Listing {
    fn parse(text: &str) -> Listing {
        const OPEN: &str = "elements = {";
        let mut skeleton = String::new();
        let mut elements = BTreeMap::new();
        let mut current = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(OPEN) {
            let before = &rest[..i];
            for line in before.lines() {
                let t = line.trim();
                if let Some(name) = t.strip_prefix("set ").or_else(|| t.strip_prefix("map ")) {
                    current = name.trim_end_matches('{').trim().to_string();
                }
            }
            skeleton.push_str(before);
            skeleton.push_str("elements = { ... }");
            let body = &rest[i + OPEN.len()..];
            let (items, used) = split_elements(body);
            assert!(
                elements.insert(current.clone(), items).is_none(),
                "two element lists for {current:?} in:\n{text}"
            );
            rest = &body[used..];
        }
        skeleton.push_str(rest);
        Listing { skeleton, elements }
    }

    /// One element per line, sorted: for readable failure messages.
    fn render(&self) -> String {
        let mut out = self.skeleton.clone();
        for (set, items) in &self.elements {
            out.push_str(&format!("\n# elements of {set}:\n"));
            for e in items {
                out.push_str(&format!("  {e}\n"));
            }
        }
        out
    }
}

/// Splits the inside of `{ ... }` (after the opening brace) at top-level commas,
/// honouring quoted comments; returns the elements and the bytes used (through the
/// closing brace).
fn split_elements(body: &str) -> (BTreeSet<String>, usize) {
    let mut items = BTreeSet::new();
    let mut cur = String::new();
    let mut quoted = false;
    for (i, c) in body.char_indices() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' | '}' if !quoted => {
                let e = cur.split_whitespace().collect::<Vec<_>>().join(" ");
                if !e.is_empty() {
                    items.insert(e);
                }
                cur.clear();
                if c == '}' {
                    return (items, i + 1);
                }
            }
            _ => cur.push(c),
        }
    }
    panic!("unterminated element list: {body}");
}

/// Lines that differ between two texts (a small multiset diff for messages).
fn line_diff(a: &str, b: &str) -> String {
    let count = |t: &str| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for l in t.lines() {
            *m.entry(l.to_string()).or_default() += 1;
        }
        m
    };
    let (ca, cb) = (count(a), count(b));
    let mut out = String::new();
    for (l, n) in &ca {
        for _ in 0..(n - cb.get(l).copied().unwrap_or(0)).max(0) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for (l, n) in &cb {
        for _ in 0..(n - ca.get(l).copied().unwrap_or(0)).max(0) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    out
}

fn assert_same(what: &str, a_name: &str, a: &str, b_name: &str, b: &str) {
    let (la, lb) = (Listing::parse(a), Listing::parse(b));
    assert!(
        la == lb,
        "{what}: {a_name} and {b_name} differ (normalised, - {a_name} / + {b_name}):\n{}\n\
         --- {a_name}:\n{a}\n--- {b_name}:\n{b}",
        line_diff(&la.render(), &lb.render())
    );
}

const FAMILIES: [&str; 2] = ["ip", "ip6"];

fn list_both(ns: &NetNs) -> [String; 2] {
    FAMILIES.map(|f| ns.list_table(f))
}

/// Loads `--dry-run` output for `manifests` into `ns` with `nft -f -`.
fn load_dry_run(ns: &NetNs, manifests: &str) {
    load_dry_run_with(ns, manifests, &NODE_FLAGS);
}

fn load_dry_run_with(ns: &NetNs, manifests: &str, flags: &[&str]) {
    let mut args = vec!["--manifests", manifests, "--dry-run"];
    args.extend_from_slice(flags);
    let text = ns.proxy(&args);
    assert!(text.contains("table ip kube-nft-proxy") && text.contains("table ip6 kube-nft-proxy"));
    ns.run_with_stdin(&["nft", "-f", "-"], &text);
}

fn once(ns: &NetNs, manifests: &str) {
    once_with(ns, manifests, &NODE_FLAGS);
}

fn once_with(ns: &NetNs, manifests: &str, flags: &[&str]) {
    let mut args = vec!["--manifests", manifests, "--once"];
    args.extend_from_slice(flags);
    ns.proxy(&args);
}

/// Each `--detect-local-mode` (and `--bind-address`): the `--dry-run` text loads with
/// `nft -f`, and lists the same as what `--once` programs over netlink, with the
/// pod match each mode promises in `mark-unless-pod` (the interface matches are
/// encoded as `meta iifname` compares: the full name NUL-padded, a prefix without NUL).
#[test]
fn detect_local_modes_text_equals_netlink_programming() {
    if !require_privileged() {
        return;
    }
    let dir = TempDir::new("dry-modes");
    let full = dir.write("cluster.yaml", &manifests(true));
    type Case<'a> = (&'a str, &'a [&'a str], [&'a str; 2]);
    let cases: [Case; 5] = [
        (
            "ClusterCIDR",
            &[
                "--detect-local-mode=ClusterCIDR",
                "--cluster-cidr=10.1.0.0/16,fd00:1::/64",
            ],
            [
                "ip saddr 10.1.0.0/16 return",
                "ip6 saddr fd00:1::/64 return",
            ],
        ),
        (
            "NodeCIDR",
            // --cluster-cidr is not used in this mode.
            &["--detect-local-mode=NodeCIDR", "--cluster-cidr=10.0.0.0/8"],
            [
                "ip saddr 10.1.0.0/24 return",
                "ip6 saddr fd00:1::/96 return",
            ],
        ),
        (
            "BridgeInterface",
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cni0",
            ],
            ["iifname \"cni0\" return", "iifname \"cni0\" return"],
        ),
        (
            "InterfaceNamePrefix",
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=veth",
            ],
            ["iifname \"veth*\" return", "iifname \"veth*\" return"],
        ),
        (
            "bind-address",
            &["--bind-address=192.168.7.99", "--cluster-cidr=10.1.0.0/16"],
            ["ip saddr 10.1.0.0/16 return", ""],
        ),
    ];
    for (name, flags, want) in cases {
        let mut all = vec!["--hostname-override", "node1"];
        all.extend_from_slice(flags);
        let a = NetNs::new("dry-ma");
        let b = NetNs::new("dry-mb");
        load_dry_run_with(&a, &full, &all);
        once_with(&b, &full, &all);
        let (la, lb) = (list_both(&a), list_both(&b));
        for (k, f) in FAMILIES.iter().enumerate() {
            assert_same(
                &format!("{name}: table {f}"),
                "dry-run via nft -f",
                &la[k],
                "--once via netlink",
                &lb[k],
            );
            let chain = lb[k]
                .split("chain mark-unless-pod {")
                .nth(1)
                .map(|c| c.split('}').next().unwrap_or_default().to_string());
            match (want[k], chain) {
                ("", None) => {}
                ("", Some(c)) => panic!("{name}: {f} detects no local traffic, yet:\n{c}"),
                (w, Some(c)) => assert!(c.contains(w), "{name}: {f}: {w:?} not in:\n{c}"),
                (w, None) => panic!(
                    "{name}: {f}: no mark-unless-pod chain (want {w:?}):\n{}",
                    lb[k]
                ),
            }
        }
        let v4 = Listing::parse(&lb[0]);
        let nodeport_ip = if name == "bind-address" {
            "192.168.7.99"
        } else {
            "192.168.7.1"
        };
        assert!(
            v4.elements.get("pick-1").is_some_and(|s| s
                .iter()
                .any(|e| e.starts_with(&format!("{nodeport_ip} . tcp . 30080")))),
            "{name}: NodePort not on {nodeport_ip}:\n{}",
            v4.render()
        );
    }
}

#[test]
fn dry_run_text_equals_netlink_programming() {
    if !require_privileged() {
        return;
    }
    let dir = TempDir::new("dry");
    let full = dir.write("cluster.yaml", &manifests(true));
    let a = NetNs::new("dry-a");
    let b = NetNs::new("dry-b");

    load_dry_run(&a, &full);
    once(&b, &full);
    let listed_a = list_both(&a);
    let listed_b = list_both(&b);
    for (k, f) in FAMILIES.iter().enumerate() {
        assert_same(
            &format!("table {f}"),
            "dry-run via nft -f",
            &listed_a[k],
            "--once via netlink",
            &listed_b[k],
        );
    }
    // The manifests exercise what they claim to (guards against a silently ignored
    // object making the comparison trivial).
    let v4 = Listing::parse(&listed_b[0]);
    let v6 = Listing::parse(&listed_b[1]);
    for (l, set, needle) in [
        (&v4, "pick-4", "172.30.0.10 . udp . 53"),
        (&v4, "frontends-3", "172.30.0.10 . udp . 53"),
        (&v4, "pick-4", "172.30.0.20 . tcp . 80"),
        (&v4, "frontends-3", "172.30.0.20 . tcp . 80"),
        (&v6, "pick-2", "fd00:30::20 . tcp . 80"),
        (&v4, "no-endpoint-reject", "172.30.0.30 . tcp . 80"),
        (&v6, "no-endpoint-reject", "fd00:30::30 . tcp . 80"),
        (&v4, "pick-1", "192.168.7.1 . tcp . 30080"),
        (&v6, "pick-1", "fd00:7::1 . tcp . 30080"),
        (&v4, "pick-1", "192.0.2.50 . tcp . 443"),
        (&v4, "shortcut-pick-2", "198.51.100.5 . tcp . 443"),
        (&v4, "no-local-endpoint-drop", "192.168.7.1 . tcp . 30070"),
        (&v4, "no-endpoint-drop", "172.30.0.60 . tcp . 80"),
    ] {
        assert!(
            l.elements
                .get(set)
                .is_some_and(|s| s.iter().any(|e| e.starts_with(needle))),
            "expected {needle} in {set}; listing:\n{}",
            l.render()
        );
    }

    // The same input again: nothing changes.
    once(&b, &full);
    let again_b = list_both(&b);
    for (k, f) in FAMILIES.iter().enumerate() {
        assert_same(
            &format!("table {f}, --once re-run with the same input"),
            "first run",
            &listed_b[k],
            "second run",
            &again_b[k],
        );
    }

    // One endpoint removed: exactly its elements change. Removing 10.1.0.12 from
    // shop/multi (3 → 2 endpoints) removes its `endpoints` entries (index 2 of each of
    // the three ports; indices 0 and 1 keep their endpoints because endpoints are
    // ordered by address) and its hairpin pair (it is a local endpoint), takes the
    // three frontends out of frontends-3 (exact count 3) and puts them in pick-2 (class
    // 2; the sets exist before and after). Nothing else, and the IPv6 table not at all.
    let reduced = dir.write("reduced.yaml", &manifests(false));
    once(&b, &reduced);
    let after_b = list_both(&b);
    assert_same(
        "table ip6 after removing an IPv4 endpoint",
        "before",
        &listed_b[1],
        "after",
        &after_b[1],
    );
    let before = Listing::parse(&listed_b[0]);
    let after = Listing::parse(&after_b[0]);
    assert_eq!(
        before.skeleton,
        after.skeleton,
        "removing an endpoint changed more than elements:\n{}",
        line_diff(&before.skeleton, &after.skeleton)
    );
    let frontends = [
        "172.30.0.10 . tcp . 80 comment \"shop/multi:http\"",
        "172.30.0.10 . tcp . 443 comment \"shop/multi:https\"",
        "172.30.0.10 . udp . 53 comment \"shop/multi:dns\"",
    ];
    let mut expected: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut change = |set: &str, removed: &[String], added: &[String]| {
        let e = expected.entry(set.to_string()).or_default();
        e.0.extend(removed.iter().cloned());
        e.1.extend(added.iter().cloned());
    };
    let fronts: Vec<String> = frontends.iter().map(|s| s.to_string()).collect();
    // Index 2 goes at once: a draw of `mod 4` that finds no element draws again.
    change(
        "endpoints",
        &[
            format!("172.30.0.10 . tcp . 80 . 2 : {REMOVED} . 8080"),
            format!("172.30.0.10 . tcp . 443 . 2 : {REMOVED} . 8443"),
            format!("172.30.0.10 . udp . 53 . 2 : {REMOVED} . 53"),
        ],
        &[],
    );
    change("hairpin", &[format!("{REMOVED} . {REMOVED}")], &[]);
    // The frontends stay in pick-4 until the next sync: a packet that tests pick-2
    // before the commit's flip and pick-4 after it still finds them (pick-2 comes
    // first, so from the commit on they are picked among 2).
    change("frontends-3", &fronts, &[]);
    change("pick-2", &[], &fronts);

    let mut actual: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let empty = BTreeSet::new();
    let names: BTreeSet<&String> = before
        .elements
        .keys()
        .chain(after.elements.keys())
        .collect();
    for set in names {
        let old = before.elements.get(set).unwrap_or(&empty);
        let new = after.elements.get(set).unwrap_or(&empty);
        let removed: BTreeSet<String> = old.difference(new).cloned().collect();
        let added: BTreeSet<String> = new.difference(old).cloned().collect();
        if !removed.is_empty() || !added.is_empty() {
            actual.insert(set.clone(), (removed, added));
        }
    }
    assert_eq!(
        actual, expected,
        "element changes (set → (removed, added)) after removing {REMOVED}"
    );

    // The next sync takes them out of pick-4; then the updated namespace equals a
    // fresh one loaded from the new dry-run text.
    once(&b, &reduced);
    let after_b = list_both(&b);
    let c = NetNs::new("dry-c");
    load_dry_run(&c, &reduced);
    let fresh_c = list_both(&c);
    for (k, f) in FAMILIES.iter().enumerate() {
        assert_same(
            &format!("table {f} after removing an endpoint"),
            "fresh dry-run via nft -f",
            &fresh_c[k],
            "updated via --once",
            &after_b[k],
        );
    }
}

/// `--service-counters`: the `--dry-run` text (sets declared with `counter`) loads with
/// `nft -f` and lists the same as what `--once` programs over netlink; the dispatch and
/// refusal sets carry a counter per element, the others none; an endpoint change is
/// still element-only; and turning the flag on or off on a programmed node re-creates
/// the counted sets (the read-back tells a set with counters from one without).
#[test]
fn service_counters_text_equals_netlink_and_the_flag_toggles() {
    if !require_privileged() {
        return;
    }
    let dir = TempDir::new("dry-counters");
    let full = dir.write("cluster.yaml", &manifests(true));
    let reduced = dir.write("reduced.yaml", &manifests(false));
    let mut counters = NODE_FLAGS.to_vec();
    counters.push("--service-counters");
    let a = NetNs::new("dry-ca");
    let b = NetNs::new("dry-cb");
    load_dry_run_with(&a, &full, &counters);
    once_with(&b, &full, &counters);
    let (listed_a, listed_b) = (list_both(&a), list_both(&b));
    for (k, f) in FAMILIES.iter().enumerate() {
        assert_same(
            &format!("--service-counters: table {f}"),
            "dry-run via nft -f",
            &listed_a[k],
            "--once via netlink",
            &listed_b[k],
        );
    }
    // Which sets count, as nft lists them.
    let v4 = Listing::parse(&listed_b[0]);
    let declared_with_counter = |set: &str| {
        let decl = v4
            .skeleton
            .split(&format!("set {set} {{"))
            .nth(1)
            .and_then(|d| d.split('}').next())
            .unwrap_or_else(|| panic!("no set {set} in:\n{}", v4.skeleton));
        decl.lines().any(|l| l.trim() == "counter")
    };
    for (set, counted) in [
        ("pick-4", true),
        ("pick-1", true),
        ("shortcut-pick-2", true),
        ("no-endpoint-reject", true),
        ("no-endpoint-drop", true),
        ("no-local-endpoint-drop", true),
        ("firewall", true),
        ("session-affinity-frontends", true),
        ("frontends-3", false),
        ("cluster-ips", false),
        ("masq-unless-pod", false),
        ("hairpin", false),
    ] {
        assert_eq!(declared_with_counter(set), counted, "set {set}");
    }
    for (set, needle) in [
        (
            "pick-4",
            "172.30.0.10 . tcp . 80 counter packets 0 bytes 0 comment",
        ),
        (
            "no-endpoint-reject",
            "172.30.0.30 . tcp . 80 counter packets 0 bytes 0",
        ),
    ] {
        assert!(
            v4.elements
                .get(set)
                .is_some_and(|s| s.iter().any(|e| e.starts_with(needle))),
            "expected {needle} in {set}; listing:\n{}",
            v4.render()
        );
    }
    assert!(
        v4.elements
            .get("frontends-3")
            .is_some_and(|s| s.iter().all(|e| !e.contains("counter"))),
        "{}",
        v4.render()
    );

    // One endpoint removed: only elements change; no set is re-created.
    once_with(&b, &reduced, &counters);
    let after = Listing::parse(&list_both(&b)[0]);
    assert_eq!(
        v4.skeleton,
        after.skeleton,
        "with counters, removing an endpoint changed more than elements:\n{}",
        line_diff(&v4.skeleton, &after.skeleton)
    );

    // On and off again on a programmed node: each time, what a fresh load gives.
    let c = NetNs::new("dry-cc");
    let plain = NetNs::new("dry-cp");
    load_dry_run(&plain, &full);
    once(&c, &full);
    for (flags, fresh, what) in [
        (&counters[..], &a, "turned on"),
        (&NODE_FLAGS[..], &plain, "turned off"),
    ] {
        once_with(&c, &full, flags);
        let (now, want) = (list_both(&c), list_both(fresh));
        for (k, f) in FAMILIES.iter().enumerate() {
            // Re-created sets are listed after the others (nft lists in creation
            // order): sets are compared in name order.
            assert_same(
                &format!("table {f}, counters {what}"),
                "a fresh load",
                &sets_in_name_order(&want[k]),
                "the programmed node",
                &sets_in_name_order(&now[k]),
            );
        }
    }
}

/// An `nft list table` listing with its set and map blocks in name order (chains
/// stay in their order, after them).
fn sets_in_name_order(text: &str) -> String {
    let Some((head, body)) = text.split_once('\n') else {
        return text.to_string();
    };
    let body = body.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body).trim_end();
    let (mut sets, chains): (Vec<&str>, Vec<&str>) = body
        .split("\n\n")
        .partition(|b| b.starts_with("\tset ") || b.starts_with("\tmap "));
    sets.sort();
    let blocks: Vec<&str> = sets.into_iter().chain(chains).collect();
    format!("{head}\n{}\n}}\n", blocks.join("\n\n"))
}
