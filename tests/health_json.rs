//! Issue 9, review item: health answers are JSON. They were built with `{:?}` (Rust's
//! escaping: `\u{7f}`, which no JSON parser reads). A namespace or name from a file or
//! a hostile cluster must come back intact through a JSON parser.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_nft_proxy::health::{Health, ServiceHealth, ServiceHealthServers, Shared};
use kube_nft_proxy::metrics::Metrics;

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read");
    r.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn health_check_node_port_answers_json() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A free port: bind, read, release.
    let port = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let namespace = "ns-\u{7f}-\u{200b}-\"-\\-é-\t";
    let name = "web\u{1}";
    let shared = Arc::new(Shared {
        metrics: Metrics::default(),
        health: Health::new(Duration::from_secs(60)),
        rules: Mutex::new(None),
    });
    let body = rt.block_on(async {
        let mut servers = ServiceHealthServers::default();
        let wanted = BTreeMap::from([(
            port,
            ServiceHealth {
                namespace: namespace.into(),
                name: name.into(),
                local_endpoints: 2,
            },
        )]);
        servers.sync(wanted, &shared).await;
        tokio::task::spawn_blocking(move || get(port, "/"))
            .await
            .expect("client thread")
    });
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["service"]["namespace"], namespace, "{body}");
    assert_eq!(v["service"]["name"], name, "{body}");
    assert_eq!(v["localEndpoints"], 2, "{body}");
    assert_eq!(v["serviceProxyHealthy"], true, "{body}");

    for path in ["/healthz", "/livez"] {
        let r = shared.health.respond(path);
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.body));
        assert!(
            v["lastUpdated"].is_string() && v["currentTime"].is_string(),
            "{path}: {}",
            r.body
        );
    }
}
