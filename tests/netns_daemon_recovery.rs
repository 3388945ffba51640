//! The daemon (files mode) never wedges: the updates of the bug4/bug5 reproducers are
//! programmed within 2 s, and so is a later unrelated change; a transaction the kernel
//! refuses (here: another program deleted elements our next increment deletes too) is
//! followed by a rebuild of our tables, and the node converges.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{require_privileged, NetNs, TempDir, BIN};
use serde_json::{json, Value};

fn repro(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/repros")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let m = &o["metadata"];
    (
        s(&o["kind"]),
        s(m.get("namespace").unwrap_or(&o["namespace"])),
        s(m.get("name").unwrap_or(&o["name"])),
    )
}

/// The objects of a case plus the Node and ServiceCIDR run-flows adds.
fn manifest(case: &Value, objects: &[Value]) -> String {
    let proxy = &case["proxy"];
    let mut items = objects.to_vec();
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": proxy["nodeName"]},
        "status": {"addresses": [{"type": "InternalIP", "address": proxy["nodeIP"]}]}
    }));
    items.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": proxy["serviceCIDRs"]}
    }));
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn apply_step(objects: &mut Vec<Value>, step: &Value) {
    for d in step["delete"].as_array().into_iter().flatten() {
        let k = key(d);
        objects.retain(|o| key(o) != k);
    }
    for a in step["apply"].as_array().into_iter().flatten() {
        let k = key(a);
        objects.retain(|o| key(o) != k);
        objects.push(a.clone());
    }
}

/// Replaces the file in one rename, so the daemon never reads half of it.
fn write(dir: &TempDir, text: &str) -> String {
    let path = dir.write("cluster.json", text);
    let tmp = dir.write("cluster.json.new", text);
    std::fs::rename(&tmp, &path).expect("rename manifest");
    path
}

struct Daemon(Child, std::path::PathBuf);

impl Daemon {
    fn start(ns: &NetNs, manifest: &str, case: &Value, log: &Path) -> Daemon {
        let proxy = &case["proxy"];
        let node = proxy["nodeName"].as_str().unwrap_or("test-node");
        let cidr = proxy["detectLocal"]["clusterCIDR"]
            .as_str()
            .unwrap_or("10.0.0.0/8");
        let out = std::fs::File::create(log).expect("log file");
        let child = ns
            .command(&[
                BIN,
                "--manifests",
                manifest,
                "--hostname-override",
                node,
                "--cluster-cidr",
                cidr,
                "--sync-period",
                "5s",
                "-v",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start the daemon");
        Daemon(child, log.to_path_buf())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `nft list table ip kube-nft-proxy` satisfies `ok`; returns how long it took.
fn wait_for(
    ns: &NetNs,
    what: &str,
    within: Duration,
    d: &Daemon,
    ok: impl Fn(&str) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let out = ns
            .command(&["nft", "list", "table", "ip", "kube-nft-proxy"])
            .output()
            .expect("run nft");
        if ok(&String::from_utf8_lossy(&out.stdout)) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!(
                "{what}: not in the kernel after {within:?}\n--- daemon log ---\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unrelated_service() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "later", "namespace": "other"},
            "spec": {"clusterIP": "172.30.77.7", "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "later-1", "namespace": "other",
                         "labels": {"kubernetes.io/service-name": "later"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.180.77.7"]}],
            "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]
        }),
    ]
}

/// Starts the daemon on the case's objects, applies its step, then an unrelated
/// change; `new_endpoints` must appear after the step.
fn converges(case_file: &str, new_endpoints: &[&str]) {
    if !require_privileged() {
        return;
    }
    let case = repro(case_file);
    let ns = NetNs::new("recover");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new("recover");
    let mut objects: Vec<Value> = case["objects"].as_array().cloned().unwrap_or_default();
    let path = write(&dir, &manifest(&case, &objects));
    let d = Daemon::start(&ns, &path, &case, &dir.path().join("daemon.log"));
    wait_for(
        &ns,
        "the initial objects",
        Duration::from_secs(10),
        &d,
        |t| t.contains("services"),
    );
    for step in case["steps"].as_array().into_iter().flatten() {
        apply_step(&mut objects, step);
    }
    write(&dir, &manifest(&case, &objects));
    let took = wait_for(
        &ns,
        "the step's endpoints",
        Duration::from_secs(2) + Duration::from_millis(600),
        &d,
        |t| new_endpoints.iter().all(|e| t.contains(e)),
    );
    eprintln!("{case_file}: step programmed after {took:?}");
    objects.extend(unrelated_service());
    write(&dir, &manifest(&case, &objects));
    wait_for(
        &ns,
        "a later unrelated change",
        Duration::from_secs(2) + Duration::from_millis(600),
        &d,
        |t| t.contains("10.180.77.7"),
    );
    assert!(
        !d.log().contains("sync failed"),
        "no sync may fail:\n{}",
        d.log()
    );
}

#[test]
fn etp_local_scale_up_is_programmed() {
    // bug4: an eTP=Local Service goes from 1 to 2 endpoints.
    converges(
        "bug4-update-new-shortcut-class-fails.json",
        &["10.180.0.1", "10.180.0.2"],
    );
}

#[test]
fn affinity_first_endpoints_with_a_new_service_are_programmed() {
    // bug5: an affinity Service gets its first endpoints while a new Service arrives.
    converges(
        "bug5-update-affinity-chain-missing.json",
        &["10.180.5.1", "10.180.6.1"],
    );
}

/// Another program deletes the elements our next increment deletes too: the kernel
/// refuses the increment (ENOENT); the next attempt rebuilds and the node converges.
#[test]
fn a_refused_increment_is_followed_by_a_rebuild() {
    if !require_privileged() {
        return;
    }
    let case = repro("bug4-update-new-shortcut-class-fails.json");
    let ns = NetNs::new("refused");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = TempDir::new("refused");
    let mut objects: Vec<Value> = case["objects"].as_array().cloned().unwrap_or_default();
    objects.extend(unrelated_service());
    let path = write(&dir, &manifest(&case, &objects));
    let d = Daemon::start(&ns, &path, &case, &dir.path().join("daemon.log"));
    wait_for(
        &ns,
        "the initial objects",
        Duration::from_secs(10),
        &d,
        |t| t.contains("10.180.77.7"),
    );
    // Drift: the ClusterIP of `later` leaves the kernel behind the daemon's back.
    ns.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "kube-nft-proxy",
        "cluster-ips",
        "{ 172.30.77.7 }",
    ]);
    // The daemon now deletes that same element: the kernel answers ENOENT.
    objects.retain(|o| key(o).2 != "later" && key(o).2 != "later-1");
    write(&dir, &manifest(&case, &objects));
    wait_for(&ns, "the rebuilt table", Duration::from_secs(4), &d, |t| {
        !t.contains("10.180.77.7") && t.contains("10.180.0.1")
    });
    let log = d.log();
    assert!(log.contains("refused"), "the refusal is logged:\n{log}");
    assert!(log.contains("rebuilding"), "the rebuild is logged:\n{log}");
    // And the node keeps taking changes.
    objects.extend(unrelated_service());
    write(&dir, &manifest(&case, &objects));
    wait_for(
        &ns,
        "a change after the rebuild",
        Duration::from_secs(3),
        &d,
        |t| t.contains("10.180.77.7") && t.contains("172.30.77.7"),
    );
}
