//! Per-Service counters (`--service-counters`): new connections and refused ones per
//! Service port, counted by the kernel and exported on `/metrics`.
//!
//! With the flag, the dispatch and refusal sets ([`build::counted`]) are declared with
//! `counter`, so every element (a frontend: `address . protocol . port`) has its own
//! packet counter, which each lookup that finds the element increments. Which sets, and
//! why each new connection finds its frontend in one of them exactly once, is in
//! [`build::counted`]. Adding or removing an element stays an element-only transaction:
//! the kernel gives an element added later its own copy of the set's counter.
//!
//! A scrape dumps the counted sets' elements with their counters over netlink and sums
//! them by the Service port their comment names (`namespace/name:port`, see
//! `build::service_plans`). A counter lives and dies with its element; so that a series
//! does not fall back whenever a frontend moves between sets (its endpoint count crosses
//! a power of two, so it moves from `pick-4` to `pick-8`), [`Totals`] keeps the last
//! value of every element it saw and carries the value of an element that went away
//! into its series. What such an element counted after the scrape before it went is
//! lost; a series whose last element goes (the Service is deleted, or stops answering
//! for that reason) disappears, and starts again from 0 when one comes back. A restart
//! of the proxy restarts the carried part: Prometheus sees a counter reset.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netlink::{self, readback::take_comment, Kernel};
use crate::ruleset::build::{self, Counted};
use crate::ruleset::ir::Family;

/// One counted element as a scrape read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// the table's family
    pub family: Family,
    /// what its set counts
    pub counted: Counted,
    /// identity of the element: its family, set and key (see [`element_id`])
    pub id: u64,
    /// its comment: the Service port it belongs to
    pub comment: Option<String>,
    /// the packets its counter counted: one per new connection (or refused attempt)
    pub packets: u64,
}

/// A stable 64-bit identity of an element (FNV-1a of family, set name and key bytes).
pub fn element_id(family: Family, set: &str, key: &[u8], key_end: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        &[family as u8][..],
        set.as_bytes(),
        &[0],
        key,
        &[0],
        key_end,
    ] {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Reads every counted set of our tables (sets created without `counter` are left
/// out: counters were off when they were made).
pub fn read(kernel: &mut Kernel) -> Result<Vec<Reading>, netlink::Error> {
    let mut out = Vec::new();
    for family in Family::ALL {
        for set in kernel.set_decls(family)? {
            let Some(counted) = build::counted(&set.name) else {
                continue;
            };
            if set.exprs.len() != 1 || set.exprs[0] != "counter" {
                continue;
            }
            let elements = match kernel.set_elements(family, &set.name) {
                Ok(e) => e,
                // Deleted since the list of sets (an emptied class): nothing to count.
                Err(e) if e.errno() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            out.extend(elements.into_iter().filter_map(|e| {
                let (packets, _bytes) = e.counter?;
                Some(Reading {
                    family,
                    counted,
                    id: element_id(family, &set.name, &e.key, &e.key_end),
                    comment: take_comment(e.userdata),
                    packets,
                })
            }));
        }
    }
    Ok(out)
}

/// One exported series: a metric (by what is counted) and its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    /// new connections, or refusals with their reason
    pub counted: Counted,
    /// the table's family
    pub family: Family,
    /// the Service port as the comments name it, `namespace/name:port` (see
    /// [`service_port_of`])
    pub service_port: Arc<str>,
}

impl Series {
    /// The Service's namespace, name and port name.
    pub fn labels(&self) -> (&str, &str, &str) {
        service_port_of(&self.service_port).unwrap_or_default()
    }
}

/// The Service port an element comment names: `namespace/name:port`, the port part
/// absent for an unnamed port, then for frontends other than a ClusterIP a space and
/// what the frontend is (`node port`, ...). None of the three names holds a space, a
/// `/` or a `:` (Kubernetes validates them), so the identity ends at the first space.
/// nft caps comments at 127 bytes (`build::bounded_comment`): an identity longer than
/// that comes out cut.
pub fn service_port_of(comment: &str) -> Option<(&str, &str, &str)> {
    let id = comment.split(' ').next()?;
    let (namespace, rest) = id.split_once('/')?;
    let (service, port) = rest.split_once(':').unwrap_or((rest, ""));
    (!namespace.is_empty() && !service.is_empty()).then_some((namespace, service, port))
}

/// Hashes an element identity, which is a hash already, to itself.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Elements by identity ([`element_id`]): their series and last value.
type ById = HashMap<u64, (Arc<Series>, u64), std::hash::BuildHasherDefault<IdHasher>>;

/// The counters across scrapes: the last value of each element, and what elements
/// that went away had counted, by series (see the module documentation).
#[derive(Debug, Default)]
pub struct Totals {
    /// by element identity: its series and its last value
    last: ById,
    /// what elements that went away had counted, by series
    carried: HashMap<Arc<Series>, u64>,
}

impl Totals {
    /// Takes in one scrape's readings; returns every series with its value, in
    /// series order.
    pub fn update(&mut self, readings: Vec<Reading>) -> Vec<(Arc<Series>, u64)> {
        // The elements of one Service port (its frontends) share one series: the
        // series, and the sum of its elements' counters.
        let mut series: HashMap<(Counted, Family, &str), (Arc<Series>, u64)> = HashMap::new();
        let mut now = ById::with_capacity_and_hasher(readings.len(), Default::default());
        for r in &readings {
            let Some(comment) = r.comment.as_deref() else {
                continue;
            };
            if service_port_of(comment).is_none() {
                continue;
            }
            let id = comment.split(' ').next().unwrap_or_default();
            let (s, sum) = series.entry((r.counted, r.family, id)).or_insert_with(|| {
                let s = Series {
                    counted: r.counted,
                    family: r.family,
                    service_port: id.into(),
                };
                (Arc::new(s), 0)
            });
            match now.entry(r.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((s.clone(), r.packets));
                    *sum += r.packets;
                }
                // A dump can list an element twice: one value per element.
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let seen = &mut o.get_mut().1;
                    if r.packets > *seen {
                        *sum += r.packets - *seen;
                        *seen = r.packets;
                    }
                }
            }
        }
        for (id, (s, old)) in self.last.drain() {
            let kept = now.get(&id).is_some_and(|(n, v)| *n == s && *v >= old);
            if !kept {
                // Gone, or deleted and added again (its counter started over): what
                // it had counted stays in its series.
                *self.carried.entry(s).or_default() += old;
            }
        }
        // A series without any element left ends (and starts again from 0).
        self.carried
            .retain(|s, _| series.contains_key(&(s.counted, s.family, &*s.service_port)));
        for (s, c) in &self.carried {
            if let Some((_, sum)) = series.get_mut(&(s.counted, s.family, &*s.service_port)) {
                *sum += c;
            }
        }
        let mut out: Vec<(Arc<Series>, u64)> = series.into_values().collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.last = now;
        out
    }
}

/// The name of the metric of new connections.
pub const NEW_CONNECTIONS: &str = "kubenftproxy_service_new_connections_total";
/// The name of the metric of refused connections.
pub const REJECTED: &str = "kubenftproxy_service_rejected_total";

/// Appends a label value as the Prometheus text format escapes it.
fn push_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends one sample: `name{labels} value`.
fn push_sample(out: &mut String, name: &str, s: &Series, v: u64) {
    let (namespace, service, port) = s.labels();
    out.push_str(name);
    out.push_str("{namespace=\"");
    push_label(out, namespace);
    out.push_str("\",service=\"");
    push_label(out, service);
    out.push_str("\",port=\"");
    push_label(out, port);
    out.push_str("\",family=\"");
    out.push_str(match s.family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    });
    if let Counted::Rejected(reason) = s.counted {
        out.push_str("\",reason=\"");
        out.push_str(reason);
    }
    let _ = writeln!(out, "\"}} {v}");
}

/// The two metrics in the Prometheus text format.
pub fn render(series: &[(Arc<Series>, u64)]) -> String {
    let mut out = String::with_capacity(128 * series.len() + 512);
    let _ = writeln!(out, "# HELP {NEW_CONNECTIONS} New connections to a Service port sent to one of its endpoints, counted in the kernel (--service-counters)\n# TYPE {NEW_CONNECTIONS} counter");
    for (s, v) in series {
        if s.counted == Counted::NewConnections {
            push_sample(&mut out, NEW_CONNECTIONS, s, *v);
        }
    }
    let _ = writeln!(out, "# HELP {REJECTED} New connections to a Service port refused (rejected or dropped) by our rules, by reason, counted in the kernel (--service-counters)\n# TYPE {REJECTED} counter");
    for (s, v) in series {
        if matches!(s.counted, Counted::Rejected(_)) {
            push_sample(&mut out, REJECTED, s, *v);
        }
    }
    out
}

/// How long a scrape's answer is reused: Prometheus servers in pairs, or several of
/// them, scrape the same second; each dump costs a few milliseconds per 10k Services.
const REUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct ScrapeState {
    totals: Totals,
    last: Option<(Instant, String)>,
    /// the last read failed (logged once per streak)
    failing: bool,
}

/// The counters' part of `/metrics`: reads the kernel when scraped.
#[derive(Debug, Default)]
pub struct Scraper {
    state: Mutex<ScrapeState>,
}

impl Scraper {
    /// A scraper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The metrics as Prometheus text, read from the kernel now (or within the last
    /// second). Blocks on netlink: called on a worker of a multi-threaded tokio
    /// runtime (the daemon's), it hands the worker's other tasks off first, as the
    /// daemon's syncs do, so health answers and watches go on meanwhile.
    pub fn text(&self) -> String {
        blocking(|| {
            let mut st = match self.state.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some((at, text)) = &st.last {
                if at.elapsed() < REUSE {
                    return text.clone();
                }
            }
            match Kernel::open().and_then(|mut k| read(&mut k)) {
                Ok(readings) => {
                    st.failing = false;
                    let text = render(&st.totals.update(readings));
                    st.last = Some((Instant::now(), text.clone()));
                    text
                }
                Err(e) => {
                    if !st.failing {
                        tracing::warn!(error = %crate::error_text::error_chain(&e), "cannot read the per-Service counters; /metrics leaves them out until a read succeeds");
                    }
                    st.failing = true;
                    render(&[])
                }
            }
        })
    }
}

/// Runs `f`, which blocks, without stalling a multi-threaded tokio runtime it may be
/// called from (elsewhere, as a test's current-thread runtime, it just runs).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: u64, counted: Counted, comment: &str, packets: u64) -> Reading {
        Reading {
            family: Family::V4,
            counted,
            id,
            comment: Some(comment.to_string()),
            packets,
        }
    }

    fn value(out: &[(Arc<Series>, u64)], service: &str, counted: Counted) -> Option<u64> {
        out.iter()
            .find(|(s, _)| s.labels().1 == service && s.counted == counted)
            .map(|(_, v)| *v)
    }

    #[test]
    fn comments_name_the_service_port() {
        assert_eq!(
            service_port_of("shop/web:http"),
            Some(("shop", "web", "http"))
        );
        assert_eq!(
            service_port_of("shop/web:http load balancer IP"),
            Some(("shop", "web", "http"))
        );
        assert_eq!(
            service_port_of("shop/web node port"),
            Some(("shop", "web", ""))
        );
        assert_eq!(service_port_of("shop/web"), Some(("shop", "web", "")));
        assert_eq!(service_port_of("no identity"), None);
        assert_eq!(service_port_of("/web:x"), None);
    }

    /// A frontend's elements add up; an element that moves to another set (a class
    /// change) keeps what it counted in the series; a re-created element (counter
    /// back to 0) too; a series whose elements all went ends.
    #[test]
    fn series_sum_elements_and_survive_moves() {
        let new = Counted::NewConnections;
        let mut t = Totals::default();
        let out = t.update(vec![
            reading(1, new, "a/web:http", 5),
            reading(2, new, "a/web:http node port", 2),
            reading(3, Counted::Rejected("no_endpoints"), "a/empty:http", 4),
        ]);
        assert_eq!(value(&out, "web", new), Some(7));
        assert_eq!(
            value(&out, "empty", Counted::Rejected("no_endpoints")),
            Some(4)
        );
        // Element 1 moved to another class set (new identity 4, counting from 0), and
        // element 2 was deleted and added again (its counter started over).
        let out = t.update(vec![
            reading(4, new, "a/web:http", 3),
            reading(2, new, "a/web:http node port", 1),
            reading(3, Counted::Rejected("no_endpoints"), "a/empty:http", 6),
        ]);
        assert_eq!(value(&out, "web", new), Some(5 + 2 + 3 + 1));
        assert_eq!(
            value(&out, "empty", Counted::Rejected("no_endpoints")),
            Some(6)
        );
        // A dump that lists an element twice counts it once.
        let out = t.update(vec![
            reading(4, new, "a/web:http", 3),
            reading(4, new, "a/web:http", 3),
            reading(2, new, "a/web:http node port", 1),
        ]);
        assert_eq!(value(&out, "web", new), Some(11));
        assert_eq!(
            value(&out, "empty", Counted::Rejected("no_endpoints")),
            None
        );
        // The empty Service gets its rejection element back: it starts from 0.
        let out = t.update(vec![reading(
            3,
            Counted::Rejected("no_endpoints"),
            "a/empty:http",
            1,
        )]);
        assert_eq!(
            value(&out, "empty", Counted::Rejected("no_endpoints")),
            Some(1)
        );
        assert_eq!(value(&out, "web", new), None);
    }

    #[test]
    fn renders_both_metrics_with_escaped_labels() {
        let mut t = Totals::default();
        let out = t.update(vec![
            reading(1, Counted::NewConnections, "a/web:http", 5),
            reading(2, Counted::Rejected("source_range"), "a/lb:https", 2),
            reading(3, Counted::NewConnections, "x\"y/z", 1),
        ]);
        let text = render(&out);
        for line in [
            "# TYPE kubenftproxy_service_new_connections_total counter",
            "kubenftproxy_service_new_connections_total{namespace=\"a\",service=\"web\",port=\"http\",family=\"IPv4\"} 5",
            "kubenftproxy_service_new_connections_total{namespace=\"x\\\"y\",service=\"z\",port=\"\",family=\"IPv4\"} 1",
            "# TYPE kubenftproxy_service_rejected_total counter",
            "kubenftproxy_service_rejected_total{namespace=\"a\",service=\"lb\",port=\"https\",family=\"IPv4\",reason=\"source_range\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert_eq!(text.matches("# HELP").count(), 2);
    }

    #[test]
    fn element_identity_depends_on_set_and_key() {
        let a = element_id(Family::V4, "pick-4", &[1, 2], &[]);
        assert_eq!(a, element_id(Family::V4, "pick-4", &[1, 2], &[]));
        assert_ne!(a, element_id(Family::V4, "pick-8", &[1, 2], &[]));
        assert_ne!(a, element_id(Family::V6, "pick-4", &[1, 2], &[]));
        assert_ne!(a, element_id(Family::V4, "pick-4", &[1, 3], &[]));
    }
}
