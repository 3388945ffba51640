//! Side outputs over HTTP: `/healthz` and `/livez` with upstream's JSON and status rules,
//! one server per eTP=Local service's `healthCheckNodePort`, and the metrics address
//! (`/metrics`, `/debug/rules`).
//!
//! A tiny GET-only HTTP/1.1 server on tokio (one response per connection) is all these
//! endpoints need; it avoids pulling in a web framework.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

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

    /// Whether the node may receive load-balancer traffic (not being deleted).
    pub fn set_node_eligible(&self, e: bool) {
        self.with(|h| h.node_eligible = e)
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

    /// `/healthz` and `/livez`.
    pub fn respond(&self, path: &str) -> Response {
        let (healthy, lu, now) = self.check();
        let eligible = self.with(|h| h.node_eligible);
        let (ok, body) = match path {
            "/livez" => (
                healthy,
                format!(
                    "{{\"lastUpdated\": {},\"currentTime\": {}}}",
                    json_str(&go_time(lu)),
                    json_str(&go_time(now))
                ),
            ),
            "/healthz" => (
                healthy && eligible,
                format!(
                    "{{\"lastUpdated\": {},\"currentTime\": {}, \"nodeEligible\": {eligible}}}",
                    json_str(&go_time(lu)),
                    json_str(&go_time(now))
                ),
            ),
            _ => return not_found(),
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

/// The metrics address: `/metrics`, `/debug/rules`, and health too (as upstream).
pub fn metrics_handler(shared: Arc<Shared>) -> impl Fn(&str) -> Response + Send + Sync + 'static {
    move |path| match path {
        "/metrics" => Response {
            status: 200,
            headers: vec![],
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.metrics.render(),
        },
        "/debug/rules" => Response {
            status: 200,
            headers: vec![],
            content_type: "text/plain; charset=utf-8",
            body: {
                let g = match shared.rules.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                g.as_ref()
                    .map(|i| crate::ruleset::render::ruleset(i.ruleset()))
                    .unwrap_or_default()
            },
        },
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
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            match TcpListener::bind(addr).await {
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
}
