//! Side outputs over HTTP: `/healthz` and `/livez` with upstream's JSON and status rules,
//! one server per eTP=Local service's `healthCheckNodePort`, and the metrics address
//! (`/metrics`, `/debug/rules`).
//!
//! A tiny GET-only HTTP/1.1 server on tokio (one response per connection) is all these
//! endpoints need; it avoids pulling in a web framework.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, Probe};
use crate::model::Node;

/// A response.
pub struct Response {
    /// status code
    pub status: u16,
    /// extra headers
    pub headers: Vec<(&'static str, String)>,
    /// content type
    pub content_type: &'static str,
    /// body
    pub body: String,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// First pause after a failed `accept`; it doubles up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
/// Longest pause between `accept` attempts while they fail.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// A JSON string literal (quotes and escapes) for `s`.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Pending connections a listener's backlog holds (Go's default on Linux reads
/// `somaxconn`; 1024 is what most kernels have there).
const BACKLOG: i32 = 1024;

/// Opens a listener on `addr` as Go's `net.Listen("tcp", addr)` does: a wildcard
/// address (`0.0.0.0` or `::`) accepts both families, through one IPv6 socket with
/// `IPV6_V6ONLY` off, so `0.0.0.0:10256` answers on `::1` too (load balancers and
/// kubelet probes of IPv6 and dual-stack clusters). A host without IPv6 gets an IPv4
/// listener. Any other address is bound as given.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_unspecified() {
        return TcpListener::bind(addr).await;
    }
    match bind_dual_stack(addr.port()) {
        Ok(l) => Ok(l),
        // No IPv6 in this kernel or namespace (socket: EAFNOSUPPORT; bind with IPv6
        // disabled: EADDRNOTAVAIL): listen on IPv4 only, as Go falls back to.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
            ) =>
        {
            TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))).await
        }
        Err(e) => Err(e),
    }
}

fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    // As Go (and std's TcpListener): a restarted proxy rebinds while connections of
    // the previous one linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Upstream's node eligibility (KEP-3836, `ProxyHealthServer.SyncNode`): a Node that is
/// being deleted, or that the cluster autoscaler tainted for deletion, fails `/healthz`
/// so that load balancers drain it before it goes away.
pub fn node_eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .taints
            .iter()
            .any(|t| t.key == TO_BE_DELETED_TAINT)
}

/// The taint the cluster autoscaler puts on a Node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The body of a `healthCheckNodePort` answer, laid out as upstream's; strings are
/// escaped as JSON (namespace and name come from the cluster, or from a file).
pub fn service_body(s: &ServiceHealth, proxy_healthy: bool) -> String {
    format!(
        "{{\"service\": {{\"namespace\": {}, \"name\": {}}}, \"localEndpoints\": {}, \"serviceProxyHealthy\": {proxy_healthy}}}",
        json_str(&s.namespace),
        json_str(&s.name),
        s.local_endpoints
    )
}

/// Serves GET requests on `listener` with `handler(path)`.
pub fn serve<F>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        let addr = listener.local_addr().ok();
        let mut pause = ACCEPT_PAUSE_MIN;
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => {
                    pause = ACCEPT_PAUSE_MIN;
                    sock
                }
                Err(e) => {
                    // The error (EMFILE, ENFILE, ENOBUFS) stays while the backlog holds
                    // a connection: accepting again at once would spin a core. Back off
                    // as Go's net/http does, and say so once per streak.
                    if pause == ACCEPT_PAUSE_MIN {
                        tracing::warn!(address = ?addr, error = %e, "cannot accept a connection; retrying with backoff");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                })
                .await;
                if !matches!(read, Ok(true)) {
                    return;
                }
                let text = String::from_utf8_lossy(&buf);
                let path = text
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                let r = handler(&path);
                let mut head = format!(
                    "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n",
                    r.status,
                    reason(r.status),
                    r.content_type,
                    r.body.len()
                );
                for (k, v) in &r.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(r.body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    })
}

/// Formats a time as Go's `time.Time.String()` does (what upstream's JSON carries).
pub fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let mm = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mm <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{mm:02}-{dd:02} {:02}:{:02}:{:02}.{:09} +0000 UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[derive(Debug, Default)]
struct HealthInner {
    last_updated: Option<SystemTime>,
    last_queued: Option<SystemTime>,
    node_eligible: bool,
}

/// Upstream's proxier health: unhealthy when a change has been queued for longer than
/// the timeout (2 × syncPeriod) without a successful sync since.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<HealthInner>,
    timeout: Duration,
}

impl Health {
    /// A health state with `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Health {
            inner: Mutex::new(HealthInner {
                node_eligible: true,
                ..Default::default()
            }),
            timeout,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HealthInner) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// A change is waiting for a sync.
    pub fn queued(&self) {
        self.with(|h| {
            if h.last_queued
                .is_none_or(|q| h.last_updated.is_some_and(|u| u >= q))
            {
                h.last_queued = Some(SystemTime::now());
            }
        })
    }

    /// A sync succeeded.
    pub fn updated(&self) {
        self.with(|h| h.last_updated = Some(SystemTime::now()))
    }

    /// Whether the node may receive load-balancer traffic (not being deleted); returns
    /// the previous value.
    pub fn set_node_eligible(&self, e: bool) -> bool {
        self.with(|h| std::mem::replace(&mut h.node_eligible, e))
    }

    /// (healthy, last updated, now)
    pub fn check(&self) -> (bool, SystemTime, SystemTime) {
        let now = SystemTime::now();
        self.with(|h| {
            let lu = h.last_updated.unwrap_or(SystemTime::UNIX_EPOCH);
            let healthy = match h.last_queued {
                Some(q) => lu >= q || now.duration_since(q).unwrap_or_default() <= self.timeout,
                None => true,
            };
            (healthy, lu, now)
        })
    }

    /// `/healthz` and `/livez`, laid out as upstream's. `/healthz` also fails while the
    /// node is not eligible; `/livez` follows the proxier alone.
    pub fn respond(&self, path: &str) -> Response {
        let (healthy, lu, now) = self.check();
        let eligible = self.with(|h| h.node_eligible);
        let ok = match path {
            "/livez" => healthy,
            "/healthz" => healthy && eligible,
            _ => return not_found(),
        };
        // As upstream: a healthy answer says "updated now" (older releases reported
        // every sync loop run, changes or not); a failing one the last real update.
        let lu = json_str(&go_time(if ok { now } else { lu }));
        let now = json_str(&go_time(now));
        let body = if path == "/healthz" {
            format!(
                "{{\"lastUpdated\": {lu},\"currentTime\": {now}, \"nodeEligible\": {eligible}}}"
            )
        } else {
            format!("{{\"lastUpdated\": {lu},\"currentTime\": {now}}}")
        };
        Response {
            status: if ok { 200 } else { 503 },
            headers: vec![],
            content_type: "application/json",
            body,
        }
    }
}

/// A 404.
pub fn not_found() -> Response {
    Response {
        status: 404,
        headers: vec![],
        content_type: "text/plain; charset=utf-8",
        body: "404 page not found\n".into(),
    }
}

/// State shared by the HTTP side outputs.
pub struct Shared {
    /// metrics
    pub metrics: Metrics,
    /// proxier health
    pub health: Health,
    /// the desired (and, after each successful sync, programmed) ruleset with its
    /// incremental bookkeeping; rendered as nft text on request
    pub rules: Mutex<Option<crate::ruleset::incremental::Incremental>>,
}

impl Shared {
    /// The healthz address's `/healthz` and `/livez`, counted in
    /// `kubeproxy_proxy_healthz_total` / `kubeproxy_proxy_livez_total` by status code as
    /// upstream counts its health server's answers.
    pub fn respond_health(&self, path: &str) -> Response {
        let r = self.health.respond(path);
        let probe = match path {
            "/healthz" => Some(Probe::Healthz),
            "/livez" => Some(Probe::Livez),
            _ => None,
        };
        if let Some(p) = probe {
            self.metrics.probe_answered(p, r.status);
        }
        r
    }
}

/// The metrics address: `/metrics`, `/debug/rules`, and health too (as upstream).
pub fn metrics_handler(shared: Arc<Shared>) -> impl Fn(&str) -> Response + Send + Sync + 'static {
    move |path| match path {
        "/metrics" => Response {
            status: 200,
            headers: vec![],
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: {
                let mut body = shared.metrics.render();
                if let Some(counters) = shared.metrics.service_counters() {
                    body.push_str(&counters.text());
                }
                body
            },
        },
        "/debug/rules" => Response {
            status: 200,
            headers: vec![],
            content_type: "text/plain; charset=utf-8",
            body: {
                // A snapshot taken under the lock (the element maps are shared, so it
                // copies only chains and declarations) and rendered after it: the sync
                // loop never waits for the text (29 MiB at 30k Services). A sync that
                // changes a map meanwhile copies that map once.
                let snapshot = match shared.rules.lock() {
                    Ok(g) => g.as_ref().map(|i| i.ruleset().clone()),
                    Err(p) => p.into_inner().as_ref().map(|i| i.ruleset().clone()),
                };
                snapshot
                    .map(|rs| crate::ruleset::render::ruleset(&rs))
                    .unwrap_or_default()
            },
        },
        // Not counted in the probe totals: upstream counts its health server's answers,
        // and serves only a plain `ok` here.
        "/healthz" | "/livez" => shared.health.respond(path),
        _ => not_found(),
    }
}

/// One eTP=Local service's health check port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    /// namespace
    pub namespace: String,
    /// name
    pub name: String,
    /// local ready endpoints
    pub local_endpoints: usize,
}

/// The servers on `healthCheckNodePort`s: started, updated and stopped to follow the
/// services.
#[derive(Default)]
pub struct ServiceHealthServers {
    servers: BTreeMap<u16, (Arc<Mutex<ServiceHealth>>, JoinHandle<()>)>,
}

impl ServiceHealthServers {
    /// Makes the set of servers match `wanted` (port → service state).
    pub async fn sync(&mut self, wanted: BTreeMap<u16, ServiceHealth>, shared: &Arc<Shared>) {
        let stale: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for p in stale {
            if let Some((_, h)) = self.servers.remove(&p) {
                h.abort();
            }
        }
        for (port, state) in wanted {
            if let Some((s, _)) = self.servers.get(&port) {
                if let Ok(mut g) = s.lock() {
                    *g = state;
                }
                continue;
            }
            // Every address of both families, as upstream's servers for the default
            // nodePortAddresses: IPv6 load balancers check the node over IPv6.
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match bind(addr).await {
                Ok(l) => {
                    let st = Arc::new(Mutex::new(state));
                    let st2 = st.clone();
                    let sh = shared.clone();
                    let h = serve(l, move |_path| {
                        let s = match st2.lock() {
                            Ok(g) => g.clone(),
                            Err(p) => p.into_inner().clone(),
                        };
                        let (healthy, _, _) = sh.health.check();
                        Response {
                            status: if s.local_endpoints > 0 && healthy {
                                200
                            } else {
                                503
                            },
                            headers: vec![(
                                "X-Load-Balancing-Endpoint-Weight",
                                s.local_endpoints.to_string(),
                            )],
                            content_type: "application/json",
                            body: service_body(&s, healthy),
                        }
                    });
                    self.servers.insert(port, (st, h));
                }
                Err(e) => tracing::warn!(port, error = %e, "cannot open healthCheckNodePort"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(go_time(t), "2023-11-14 22:13:20.000000005 +0000 UTC");
    }

    #[test]
    fn health_follows_queue_and_updates() {
        let h = Health::new(Duration::from_millis(0));
        assert!(h.check().0);
        h.queued();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !h.check().0,
            "queued change not synced past the timeout is unhealthy"
        );
        h.updated();
        assert!(h.check().0);
        assert_eq!(h.respond("/healthz").status, 200);
        h.set_node_eligible(false);
        assert_eq!(h.respond("/healthz").status, 503);
        assert_eq!(h.respond("/livez").status, 200);
    }

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("a Node: {e}"))
    }

    #[test]
    fn deleting_or_autoscaler_tainted_nodes_are_not_eligible() {
        let meta = serde_json::json!({"name": "n1"});
        assert!(node_eligible(&node(serde_json::json!({"metadata": meta}))));
        assert!(node_eligible(&node(serde_json::json!({
            "metadata": meta,
            "spec": {"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}
        }))));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": meta,
            "spec": {"taints": [
                {"key": "other", "effect": "NoSchedule"},
                {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}
            ]}
        }))));
        assert!(!node_eligible(&node(serde_json::json!({
            "metadata": {"name": "n1", "deletionTimestamp": "2024-01-02T03:04:05Z"}
        }))));
    }

    #[test]
    fn healthz_json_and_counters_follow_upstream() {
        let shared = Shared {
            metrics: Metrics::default(),
            health: Health::new(Duration::from_secs(60)),
            rules: Mutex::new(None),
        };
        shared.health.queued();
        shared.health.updated();
        let r = shared.respond_health("/healthz");
        assert_eq!(r.status, 200);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(j["nodeEligible"], true, "{}", r.body);
        // Healthy: "lastUpdated" is the answer's own time, as upstream's.
        assert_eq!(j["lastUpdated"], j["currentTime"], "{}", r.body);
        shared.health.set_node_eligible(false);
        let r = shared.respond_health("/healthz");
        assert_eq!(r.status, 503);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(j["nodeEligible"], false, "{}", r.body);
        let r = shared.respond_health("/livez");
        assert_eq!(r.status, 200);
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert!(j.get("nodeEligible").is_none(), "{}", r.body);
        assert_eq!(shared.respond_health("/other").status, 404);
        let t = shared.metrics.render();
        for sample in [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"503\"} 0",
        ] {
            assert!(t.lines().any(|l| l == sample), "no {sample} in\n{t}");
        }
    }

    /// A wildcard bind listens on both families (port 0: nothing to collide with).
    #[test]
    fn wildcard_listener_answers_on_both_loopbacks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(async {
            let l = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
                .await
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            let _server = serve(l, |_| not_found());
            for ip in [
                std::net::IpAddr::from(Ipv4Addr::LOCALHOST),
                std::net::IpAddr::from(Ipv6Addr::LOCALHOST),
            ] {
                let mut c = tokio::net::TcpStream::connect((ip, port))
                    .await
                    .unwrap_or_else(|e| panic!("connect {ip}: {e}"));
                c.write_all(b"GET / HTTP/1.1\r\n\r\n")
                    .await
                    .unwrap_or_else(|e| panic!("send: {e}"));
                let mut out = String::new();
                c.read_to_string(&mut out)
                    .await
                    .unwrap_or_else(|e| panic!("read: {e}"));
                assert!(out.starts_with("HTTP/1.1 404"), "{ip}: {out}");
            }
        });
    }
}
