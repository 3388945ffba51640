//! `--detect-local-mode=NodeCIDR` against the in-repo API server: as kube-proxy waits
//! for the Node's `spec.podCIDRs`, the daemon programs nothing while the Node has none
//! (and says so once), then programs with them as the local match once the Node gets
//! them.
//!
//! One network namespace (the node), holding the API server (on a thread that entered
//! it) and the daemon (`ip netns exec`). Every wait is bounded; nothing asserts how fast
//! something happened.

#[path = "support/apiserver.rs"]
mod apiserver;
mod common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Config as ApiConfig};
use common::manifests::tcp_udp_ports;
use common::manifests::{node_obj, ready_remote, service_cidr_obj, service_obj, slice_obj};
use common::topology::{NODE_IP, NODE_NAME};
use common::{join, require_privileged, NetNs, TempDir, BIN};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The API server, stopped from inside the node namespace on drop (its stop wakes the
/// acceptor by connecting to its loopback address, which exists only there).
struct Api<'a> {
    server: Option<ApiServer>,
    node: &'a NetNs,
}

impl Drop for Api<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            join(self.node.spawn(move || drop(s)));
        }
    }
}

impl std::ops::Deref for Api<'_> {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        self.server.as_ref().expect("running until dropped")
    }
}

/// Kills the daemon on drop (also when the test panics).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, log: &std::path::Path, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what}: not within {WAIT:?}; daemon log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn node_cidr_waits_for_the_nodes_pod_cidrs() {
    if !require_privileged() {
        return;
    }
    let node = NetNs::new("nodecidr");
    let dir = TempDir::new("nodecidr");
    let api = Api {
        server: Some(
            join(node.spawn(|| ApiServer::start_with(ApiConfig::default())))
                .expect("start the API server in the node namespace"),
        ),
        node: &node,
    };
    let without = node_obj(&[NODE_IP], None);
    api.apply(without.clone());
    api.apply(service_cidr_obj(&["172.30.0.0/16"]));
    api.apply(service_obj(
        "web",
        "ClusterIP",
        &["172.30.0.10"],
        tcp_udp_ports(),
        json!({}),
    ));
    api.apply(slice_obj("web", "web-1", ready_remote(&["10.0.2.10"])));

    let log = dir.path().join("daemon.log");
    let file = File::create(&log).expect("create the daemon log");
    let url = api.url();
    let child = node
        .command(&[
            BIN,
            "--master",
            &url,
            "--hostname-override",
            NODE_NAME,
            "--detect-local-mode=NodeCIDR",
            // Not used in this mode: a decoy.
            "--cluster-cidr=10.99.0.0/16",
            "--healthz-bind-address=",
            "--metrics-bind-address=",
            "-v",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start the daemon");
    let mut daemon = Daemon(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Every watch has listed when the daemon says what it waits for; it programs only
    // after the gate, so no table can exist at that point.
    wait_until("the daemon waits for spec.podCIDRs", &log, || {
        read_log().contains("waiting for Node \"node1\" to have spec.podCIDRs")
    });
    let tables = node.run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("kube-nft-proxy"),
        "programmed while waiting:\n{tables}"
    );

    let mut with = without;
    with["spec"] = json!({"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"]});
    api.apply(with);
    let listing = || {
        node.command(&["nft", "list", "table", "ip", "kube-nft-proxy"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    wait_until(
        "the table is programmed with the Node's pod network",
        &log,
        || listing().contains("ip saddr 10.0.1.0/24 return"),
    );
    let l = listing();
    assert!(
        !l.contains("10.99.0.0/16"),
        "--cluster-cidr used in NodeCIDR mode:\n{l}"
    );
    assert!(l.contains("172.30.0.10"), "{l}");
    assert_eq!(
        read_log().matches("waiting for Node").count(),
        1,
        "the wait is logged once:\n{}",
        read_log()
    );
    assert!(
        daemon.0.try_wait().ok().flatten().is_none(),
        "the daemon exited"
    );
    drop(daemon);
    drop(api);
}
