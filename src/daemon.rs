//! The long-running proxy against an API server: watchers → cluster state → coalesced
//! syncs → kernel, with health, metrics, healthCheckNodePorts and conntrack cleanup fed
//! from each sync's result.
//!
//! Nothing is programmed before every watcher has delivered its first complete list.
//! Losing the API server only pauses the watchers (they retry with backoff); the rules
//! in the kernel stay as last applied. A full reconcile (read back, repair drift) runs
//! at start-up, after any failed sync and every `syncPeriod`; every other sync diffs
//! against the last applied ruleset.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::mpsc;

use crate::config::ProxyConfig;
use crate::conntrack::{self, StaleFlow};
use crate::health::{self, Health, ServiceHealth, ServiceHealthServers, Shared};
use crate::metrics::{now_unix, IpFamily, Metrics};
use crate::model::objects::AddressType;
use crate::model::{
    Endpoint, Object, Problem, Problems, Protocol, ProxyModel, ServiceEntry, ServiceName,
    ServicePort, ServicePortName,
};
use crate::proxier::{self, error_chain, Proxier};
use crate::quarantine::Quarantine;
use crate::ruleset::incremental::Incremental;
use crate::ruleset::render;
use crate::ruleset::{build, BuildConfig, Ruleset};
use crate::source::kube::{watch_all, SourceEvent, Sources};
use crate::topology;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable API server configuration.
    #[error("cannot configure the API client")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}")]
    Listen {
        /// the address
        addr: String,
        /// the cause
        #[source]
        source: std::io::Error,
    },
    /// The watch channel closed.
    #[error("the watchers stopped")]
    SourcesClosed,
    /// A one-shot sync failed.
    #[error("sync failed")]
    Sync(#[from] proxier::Error),
}

/// Builds the API client from `--kubeconfig` / `--master` / in-cluster credentials.
pub async fn client(cfg: &ProxyConfig) -> Result<Client, Error> {
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| Error::Config(e);
    let mut config = match (&cfg.kubeconfig, &cfg.master) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| boxed(Box::new(e)))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| boxed(Box::new(e)))?
        }
        (None, Some(master)) => {
            let url = master.parse().map_err(|e| boxed(Box::new(e)))?;
            Config::new(url)
        }
        (None, None) => Config::infer().await.map_err(|e| boxed(Box::new(e)))?,
    };
    if let (Some(_), Some(master)) = (&cfg.kubeconfig, &cfg.master) {
        config.cluster_url = master.parse().map_err(|e| boxed(Box::new(e)))?;
    }
    Client::try_from(config).map_err(|e| boxed(Box::new(e)))
}

/// Parses an RFC 3339 UTC timestamp (`2024-01-02T03:04:05Z`, optional fraction) into
/// seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    crate::model::objects::parse_timestamp(s).map(|(s, n)| s as f64 + f64::from(n) / 1e9)
}

/// The side outputs a sync feeds.
struct SideOutputs {
    shared: Arc<Shared>,
    health_servers: ServiceHealthServers,
    seen_problems: BTreeSet<(String, String)>,
}

impl SideOutputs {
    /// Logs and counts problems not seen before. A full sync passes all current
    /// problems (`partial` false); a partial sync only those of the Services it rebuilt.
    fn problems(&mut self, problems: &[Problem], partial: bool) {
        let current: BTreeSet<(String, String)> = problems
            .iter()
            .map(|p| (p.object.clone(), p.reason.clone()))
            .collect();
        let new: Vec<(String, String)> = current.difference(&self.seen_problems).cloned().collect();
        for (object, reason) in &new {
            tracing::warn!(object = %object, "skipped invalid input: {reason}");
        }
        if partial {
            self.seen_problems.extend(new.iter().cloned());
        } else {
            self.seen_problems = current;
        }
        self.shared
            .metrics
            .invalid(new.len(), self.seen_problems.len());
    }
}

/// UDP flows to endpoints that served in `old` and are gone in `new`.
fn stale_udp_flows(
    old: &BTreeMap<ServicePortName, ServiceEntry>,
    new: &BTreeMap<ServicePortName, ServiceEntry>,
    nodeport_ips: &[IpAddr],
) -> BTreeSet<StaleFlow> {
    let mut out = BTreeSet::new();
    for (name, o) in old {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let svc = &o.port;
        let still: BTreeSet<(IpAddr, u16)> = new
            .get(name)
            .map(|n| {
                n.endpoints
                    .iter()
                    .filter(|e| e.serving)
                    .map(|e| (e.ip, e.port))
                    .collect()
            })
            .unwrap_or_default();
        let frontends: Vec<(IpAddr, u16)> = frontends_of(svc, nodeport_ips).collect();
        for ep in o.endpoints.iter().filter(|e| e.serving) {
            if still.contains(&(ep.ip, ep.port)) {
                continue;
            }
            for (ip, port) in &frontends {
                if ip.is_ipv6() == ep.ip.is_ipv6() {
                    out.insert(StaleFlow {
                        frontend: *ip,
                        frontend_port: *port,
                        endpoint: ep.ip,
                        endpoint_port: ep.port,
                    });
                }
            }
        }
    }
    out
}

async fn listen(
    addr: Option<std::net::SocketAddr>,
    handler: impl Fn(&str) -> health::Response + Send + Sync + 'static,
) -> Result<(), Error> {
    if let Some(a) = addr {
        let l = health::bind(a).await.map_err(|source| Error::Listen {
            addr: a.to_string(),
            source,
        })?;
        health::serve(l, handler);
    }
    Ok(())
}

/// How often the daemon asks the kernel whether someone else committed to nftables
/// (one small netlink request; the structure of our tables is read only when someone
/// did).
const DRIFT_CHECK_PERIOD: Duration = Duration::from_millis(250);

/// Runs the proxy against the API server until the process is stopped.
pub async fn run(cfg: ProxyConfig) -> Result<(), Error> {
    let client = client(&cfg).await?;
    let rx = watch_all(client, &cfg.node_name);
    run_with(cfg, rx).await
}

/// `--dry-run` against the API server: list everything once, print the ruleset the
/// named node would get.
pub async fn dry_run(cfg: &ProxyConfig) -> Result<String, Error> {
    let (rs, _) = desired_from_cluster(cfg).await?;
    Ok(render::ruleset(&rs))
}

/// Lists everything once: the ruleset the named node would get, and its addresses.
pub async fn desired_from_cluster(cfg: &ProxyConfig) -> Result<(Ruleset, Vec<IpAddr>), Error> {
    let client = client(cfg).await?;
    let mut rx = watch_all(client, &cfg.node_name);
    let mut sources = Sources::default();
    while !sources.ready() || proxier::waiting_for(cfg, &sources.state).is_some() {
        let ev = rx.recv().await.ok_or(Error::SourcesClosed)?;
        sources.apply(ev);
    }
    let d = proxier::desired_full(cfg, &sources.state)?;
    proxier::log_problems(&d.problems);
    Ok((build(&d.model, &d.build), d.model.node.ips.clone()))
}

/// The daemon loop over an event channel (the API watchers, or anything that speaks
/// [`SourceEvent`]).
pub async fn run_with(
    cfg: ProxyConfig,
    mut rx: mpsc::UnboundedReceiver<SourceEvent>,
) -> Result<(), Error> {
    let shared = Arc::new(Shared {
        metrics: Metrics::default(),
        health: Health::new(cfg.sync_period * 2),
        rules: Mutex::new(None),
    });
    if cfg.service_counters {
        shared.metrics.enable_service_counters();
    }
    {
        let s = shared.clone();
        listen(cfg.healthz_bind_address, move |p| s.respond_health(p)).await?;
    }
    listen(
        cfg.metrics_bind_address,
        health::metrics_handler(shared.clone()),
    )
    .await?;
    let mut side = SideOutputs {
        shared: shared.clone(),
        health_servers: ServiceHealthServers::default(),
        seen_problems: BTreeSet::new(),
    };
    let mut sources = Sources::default();
    let mut proxier = Proxier::new();
    let mut quarantine = Quarantine::default();
    let mut model: Option<ProxyModel> = None;
    let mut build_cfg: Option<BuildConfig> = None;
    let mut port_side: BTreeMap<ServicePortName, PortSide> = BTreeMap::new();
    let mut dirty = false;
    let mut dirty_services: BTreeSet<ServiceName> = BTreeSet::new();
    let mut need_full = true;
    let mut last_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut retry_at: Option<Instant> = None;
    // EndpointSlice trigger times (with the slice's family) waiting for the sync that
    // programs them.
    let mut pending_triggers: Vec<(IpFamily, f64)> = Vec::new();
    // Services with changes waiting for a sync, by what changed (upstream's change
    // trackers: kubeproxy_sync_proxy_rules_{service,endpoint}_changes_pending).
    let mut pending_services: BTreeSet<ServiceName> = BTreeSet::new();
    let mut pending_slices: BTreeSet<ServiceName> = BTreeSet::new();
    // Whether our Node has been seen: gone after that means deleted.
    let mut node_seen = false;
    let mut was_ready = false;
    let mut next_drift_check = Instant::now();
    // Set by the drift check: reconcile at once instead of at the next period.
    let mut reconcile_now = false;
    // Set by an nftables notification of another program's change to our tables: after
    // the structure repair (which restores traffic after a flush), a reconcile that
    // reads every element back follows at once instead of at the next period (the
    // generation poll sees structure only). Two syncs, so that a change queued
    // meanwhile goes in between.
    let mut readback_now = false;
    let foreign = match crate::netlink::monitor::start() {
        _ if cfg.no_nft_listener => None,
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "no nftables notifications; another program's changes to our elements are repaired at the next --sync-period");
            None
        }
    };
    // Takeover attempts left: one after the first sync, and a few more after later
    // syncs while something could not be removed (a set still referenced, a table
    // changed meanwhile); then what is left is left, with the last report logged.
    let mut migrate_attempts: u32 = if cfg.cleanup_kube_proxy { 5 } else { 0 };
    let migrate_options = crate::proxier::migrate_options(&cfg);
    // What programming waits for, logged once (see `proxier::waiting_for`).
    let mut waiting: Option<String> = None;
    loop {
        let now = Instant::now();
        let min_next = last_sync.map(|t| t + cfg.min_sync_period).unwrap_or(now);
        let full_due = last_full + cfg.sync_period;
        // Listed, but not ready to program (NodeCIDR without the Node's pod networks):
        // said once; only an event can end the wait, so no timer is due meanwhile (the
        // loop would spin on a dirty state or a past full sync).
        let wait = sources
            .ready()
            .then(|| proxier::waiting_for(&cfg, &sources.state))
            .flatten();
        if wait.is_some() && wait != waiting {
            tracing::info!(
                "{}; nothing is programmed until then",
                wait.as_deref().unwrap_or_default()
            );
        }
        waiting = wait;
        let mut wake = if waiting.is_some() {
            now + cfg.sync_period
        } else {
            full_due
        };
        if sources.ready() && waiting.is_none() {
            wake = wake.min(next_drift_check);
            if dirty {
                wake = wake.min(min_next.max(now));
            }
            if let Some(r) = retry_at {
                wake = wake.min(r);
            }
        }
        tokio::select! {
            ev = rx.recv() => {
                let mut ev = Some(ev.ok_or(Error::SourcesClosed)?);
                // Take everything already queued: one sync for a burst.
                while let Some(e) = ev.take() {
                    if let SourceEvent::Apply(Object::EndpointSlice(s)) | SourceEvent::InitApply(Object::EndpointSlice(s)) = &e {
                        if let Some(t) = s.trigger_time() {
                            let family = match s.address_type {
                                AddressType::Ipv6 => IpFamily::V6,
                                _ => IpFamily::V4,
                            };
                            pending_triggers.push((family, t));
                        }
                    }
                    let a = sources.apply(e);
                    if a.any() {
                        dirty = true;
                        need_full |= a.global;
                        if a.services > 0 {
                            pending_services.extend(a.dirty.iter().cloned());
                        }
                        if a.slices > 0 {
                            pending_slices.extend(a.dirty.iter().cloned());
                        }
                        dirty_services.extend(a.dirty);
                        shared.metrics.queued(a.services, a.slices);
                        shared.health.queued();
                    }
                    ev = rx.try_recv().ok();
                }
                shared.metrics.pending(pending_services.len(), pending_slices.len());
                let node = sources.state.nodes.get(&cfg.node_name);
                node_seen |= node.is_some();
                let eligible = match node {
                    Some(n) => health::node_eligible(n),
                    // Deleted (or missing from a relist) after it was seen; before the
                    // first sighting the node counts as eligible, as upstream's.
                    None => !node_seen,
                };
                if shared.health.set_node_eligible(eligible) != eligible {
                    tracing::info!(node = %cfg.node_name, eligible, "node eligibility changed: /healthz follows (load balancers drain a node that is being deleted)");
                }
                if sources.ready() && !was_ready {
                    was_ready = true;
                    tracing::info!("every source delivered its first list; programming");
                    dirty = true;
                }
                continue;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = async {
                match &foreign {
                    Some(f) => f.raised().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if !sources.ready() {
            continue;
        }
        if waiting.is_some() {
            continue;
        }
        let now = Instant::now();
        if now >= next_drift_check {
            next_drift_check = now + DRIFT_CHECK_PERIOD;
            if !need_full && retry_at.is_none() && !reconcile_now {
                let drifted = match shared.rules.lock() {
                    Ok(guard) => guard
                        .as_ref()
                        .map(|inc| proxier.structure_drifted(inc.ruleset())),
                    Err(_) => None,
                };
                match drifted {
                    Some(Ok(true)) => {
                        tracing::warn!("another program changed our tables; repairing them now");
                        reconcile_now = true;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %error_chain(&e), "drift check failed")
                    }
                    _ => {}
                }
            }
        }
        if foreign.as_ref().is_some_and(|f| f.take()) && !need_full && retry_at.is_none() {
            tracing::warn!(
                "another program changed our tables (nftables notification); repairing them now"
            );
            reconcile_now = true;
            readback_now = true;
        }
        let full = need_full || now >= full_due || reconcile_now;
        let retry = retry_at.is_some_and(|r| now >= r);
        // A plain change waits for min-sync-period; a due full sync or retry does not.
        let due = full || retry || (dirty && now >= min_next);
        if !due {
            continue;
        }
        let start = Instant::now();
        // The sync itself blocks this thread (netlink, building): tell the runtime, so that
        // /healthz, /metrics, healthCheckNodePort servers and the watchers keep being
        // served by the other worker meanwhile.
        // Not listening to nftables notifications while we commit: see
        // `ForeignChange::quiet` (the kernel would build one per element).
        let quiet = |f: &mut dyn FnMut() -> Result<bool, proxier::Error>| match &foreign {
            Some(m) => m.quiet(f),
            None => f(),
        };
        let result = tokio::task::block_in_place(|| {
            quiet(&mut || {
                // Partial sync: recompute only the dirty Services and commit the delta (also
                // when a periodic reconcile is due: it follows, and changes never wait for a
                // rebuild of the whole cluster).
                let mut outcome: Option<Result<bool, proxier::Error>> = None;
                if !need_full && !retry {
                    if let (Some(m), Ok(mut guard)) = (model.as_mut(), shared.rules.lock()) {
                        if let Some(inc) = guard.as_mut() {
                            let old: BTreeMap<ServicePortName, ServiceEntry> = dirty_services
                                .iter()
                                .flat_map(|svc| ports_of(m, svc))
                                .collect();
                            let mut problems = Problems::default();
                            let changed =
                                m.update_services(&sources.state, &dirty_services, &mut problems);
                            // A held Service stays out unless its content changed.
                            problems
                                .0
                                .extend(quarantine.apply(m, false, Instant::now()));
                            match inc.update(m, &changed, false) {
                                Some(ops) => {
                                    let r = proxier
                                        .commit(&ops.pre)
                                        .and_then(|_| proxier.commit(&ops.ops))
                                        .map(|_| false);
                                    if r.is_ok() {
                                        proxier.forget_removed_endpoints(inc.ruleset(), &ops.ops);
                                        side.problems(&problems.0, true);
                                        for name in &changed {
                                            match m.services.get(name) {
                                                Some(e) => {
                                                    port_side
                                                        .insert(name.clone(), PortSide::of(e, m));
                                                }
                                                None => {
                                                    port_side.remove(name);
                                                }
                                            }
                                        }
                                        let new: BTreeMap<ServicePortName, ServiceEntry> = changed
                                            .iter()
                                            .filter_map(|n| {
                                                m.services.get(n).map(|e| (n.clone(), e.clone()))
                                            })
                                            .collect();
                                        let np = build_cfg
                                            .as_ref()
                                            .map(|b| b.nodeport_ips.clone())
                                            .unwrap_or_default();
                                        clean_conntrack(&shared, &old, &new, &np);
                                    }
                                    outcome = Some(r);
                                }
                                None => {
                                    // Needs a full build (a contested frontend, ...).
                                    drop(guard);
                                }
                            }
                        }
                    }
                }
                // A periodic reconcile with nothing else to do keeps the desired ruleset it has
                // (kept exact by the incremental updates) and only reads the kernel back to
                // repair drift; rebuilding the cluster is for start-up, failures and global
                // changes.
                let partial_ok = match &outcome {
                    Some(r) => r.is_ok(),
                    None => dirty_services.is_empty(),
                };
                if full && !need_full && !retry && partial_ok {
                    if let Ok(mut guard) = shared.rules.lock() {
                        if let Some(inc) = guard.as_mut() {
                            let deferred = inc.take_deferred();
                            outcome = Some(proxier.commit(&deferred).and_then(|_| {
                                // Nobody else committed since we last knew our tables: they
                                // hold what we think, and there is nothing to read back.
                                if !reconcile_now && proxier.kernel_unchanged()? {
                                    return Ok(true);
                                }
                                // Another program changed our tables' structure (a flush,
                                // a deleted chain): repair the structure at once, without
                                // reading every element back.
                                if reconcile_now {
                                    proxier.repair_structure(inc.ruleset())?;
                                    return Ok(true);
                                }
                                let report = proxier.sync_to(inc.ruleset())?;
                                inc.adopt_kept(&report.kept);
                                Ok(true)
                            }));
                        }
                    }
                }
                let result = match outcome {
                    Some(r) => r,
                    None => {
                        // Full sync: rebuild everything, read the kernel back, repair the diff.
                        proxier::desired_full(&cfg, &sources.state).and_then(|mut d| {
                            let bc = d.build.clone();
                            let (mut inc, report, held) = proxier.sync_model(
                                &mut d.model,
                                &mut quarantine,
                                |m| Incremental::full(m, &bc),
                                Incremental::ruleset,
                                |m| build(m, &bc),
                            )?;
                            inc.adopt_kept(&report.kept);
                            d.problems.extend(held);
                            side.problems(&d.problems, false);
                            port_side = d
                                .model
                                .services
                                .iter()
                                .map(|(n, e)| (n.clone(), PortSide::of(e, &d.model)))
                                .collect();
                            if let Some(old) = &model {
                                let old_map = old.services.clone();
                                clean_conntrack(
                                    &shared,
                                    &old_map,
                                    &d.model.services,
                                    &d.build.nodeport_ips,
                                );
                            }
                            if let Ok(mut g) = shared.rules.lock() {
                                *g = Some(inc);
                            }
                            model = Some(d.model);
                            build_cfg = Some(d.build);
                            Ok(true)
                        })
                    }
                };
                result
            })
        });
        last_sync = Some(Instant::now());
        shared.metrics.rebuilds(proxier.rebuilds());
        match result {
            Ok(was_full) => {
                let elapsed = start.elapsed();
                shared.metrics.sync_done(elapsed, was_full);
                shared.health.updated();
                for (family, t) in pending_triggers.drain(..) {
                    shared.metrics.programmed(family, now_unix() - t);
                }
                pending_services.clear();
                pending_slices.clear();
                let (hc, no_local) = aggregate_side(&port_side);
                for family in IpFamily::ALL {
                    let (internal, external) = no_local[family.index()];
                    shared
                        .metrics
                        .no_local_endpoints(family, internal, external);
                }
                side.health_servers.sync(hc, &shared).await;
                tracing::debug!(
                    full = was_full,
                    elapsed_ms = elapsed.as_secs_f64() * 1e3,
                    "synced"
                );
                if was_full {
                    last_full = Instant::now();
                    crate::allocator::release_free_memory();
                    if let (Some(m), Some(b)) = (&model, &build_cfg) {
                        let frontends = udp_frontends(m, &b.nodeport_ips);
                        match tokio::task::block_in_place(|| conntrack::reconcile_udp(&frontends)) {
                            Ok(n) => {
                                if n > 0 {
                                    tracing::info!(deleted = n, "stale UDP conntrack entries deleted by the periodic reconcile");
                                }
                                shared.metrics.conntrack_deleted(n);
                            }
                            Err(e) => {
                                tracing::warn!(error = %error_chain(&e), "conntrack reconcile failed")
                            }
                        }
                    }
                }
                if migrate_attempts > 0 {
                    migrate_attempts -= 1;
                    // Runs iptables-legacy tools and waits for ipsets to be released:
                    // off the async workers, as the conntrack reconcile.
                    match tokio::task::block_in_place(|| {
                        proxier.migrate_from_kube_proxy(&migrate_options)
                    }) {
                        Ok(m) => {
                            m.log("our rules are in place; removed kube-proxy's leftovers");
                            if m.complete() {
                                migrate_attempts = 0;
                            } else if migrate_attempts > 0 {
                                tracing::warn!(attempts_left = migrate_attempts, "kube-proxy cleanup incomplete; will try again after the next sync");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %error_chain(&e), attempts_left = migrate_attempts, "kube-proxy cleanup failed; will retry after the next sync")
                        }
                    }
                }
                dirty = false;
                dirty_services.clear();
                need_full = false;
                if readback_now {
                    if let Some(t) = Instant::now().checked_sub(cfg.sync_period) {
                        last_full = t;
                    }
                }
                reconcile_now = false;
                readback_now = false;
                retry_at = None;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                shared.metrics.sync_failed();
                tracing::error!(error = %error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "sync failed; the last applied rules stay in place");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                need_full = true;
            }
        }
    }
}

/// The service ports of one Service in a model.
fn ports_of(m: &ProxyModel, svc: &ServiceName) -> Vec<(ServicePortName, ServiceEntry)> {
    m.ports_of(svc)
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect()
}

/// Every UDP frontend with the endpoints it may be DNATed to, for the periodic
/// conntrack reconcile.
fn udp_frontends(model: &ProxyModel, nodeport_ips: &[IpAddr]) -> conntrack::UdpFrontends {
    let mut out = conntrack::UdpFrontends::new();
    for (name, e) in &model.services {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let svc = &e.port;
        let mut add = |ip: IpAddr, port: u16| {
            let serving = e
                .endpoints
                .iter()
                .filter(|ep| ep.serving && ep.ip.is_ipv6() == ip.is_ipv6())
                .map(|ep| (ep.ip, ep.port));
            out.entry((ip, port)).or_default().extend(serving);
        };
        for (ip, port) in frontends_of(svc, nodeport_ips) {
            add(ip, port);
        }
    }
    out
}

/// The addresses and ports a client reaches a service port at, as conntrack's
/// original destination shows them: its ClusterIPs, external and load-balancer IPs
/// with the service port, the node's NodePort addresses with the node port.
fn frontends_of<'a>(
    svc: &'a ServicePort,
    nodeport_ips: &'a [IpAddr],
) -> impl Iterator<Item = (IpAddr, u16)> + 'a {
    let vips = svc
        .cluster_ips
        .iter()
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
        .map(|ip| (*ip, svc.port));
    let node_ports = svc
        .node_port
        .into_iter()
        .flat_map(move |np| nodeport_ips.iter().map(move |ip| (*ip, np)));
    vips.chain(node_ports)
}

fn clean_conntrack(
    shared: &Shared,
    old: &BTreeMap<ServicePortName, ServiceEntry>,
    new: &BTreeMap<ServicePortName, ServiceEntry>,
    nodeport_ips: &[IpAddr],
) {
    let flows = stale_udp_flows(old, new, nodeport_ips);
    match conntrack::delete_stale_udp(&flows) {
        Ok(n) => shared.metrics.conntrack_deleted(n),
        Err(e) => tracing::warn!(error = %error_chain(&e), "conntrack cleanup failed"),
    }
}

/// What one service port contributes to the side outputs.
#[derive(Clone, Debug)]
struct PortSide {
    health: Option<(u16, ServiceHealth)>,
    /// by [`IpFamily::index`]: (internal, external) policy Local leaves no local endpoint
    no_local: [(bool, bool); 2],
}

impl PortSide {
    fn of(e: &ServiceEntry, model: &ProxyModel) -> PortSide {
        let svc = &e.port;
        let mut no_local = [(false, false); 2];
        for family in IpFamily::ALL {
            // As upstream's proxier of each family: a Service counts in a family when it
            // has a cluster IP of that family, with that family's endpoints only.
            if !svc.cluster_ips.iter().any(|ip| IpFamily::of(ip) == family) {
                continue;
            }
            let of_family = |x: &Endpoint| IpFamily::of(&x.ip) == family;
            let filtered: Vec<Endpoint>;
            let endpoints: &[Endpoint] = if e.endpoints.iter().all(of_family) {
                &e.endpoints
            } else {
                filtered = e
                    .endpoints
                    .iter()
                    .filter(|x| of_family(x))
                    .cloned()
                    .collect();
                &filtered
            };
            let cat =
                topology::categorize(svc, endpoints, &model.node.name, model.node.zone.as_deref());
            let none = cat.has_any && cat.local.as_ref().is_none_or(|l| l.is_empty());
            no_local[family.index()] = (
                none && svc.internal_policy_local,
                none && svc.uses_external_local(),
            );
        }
        PortSide {
            health: svc.health_check_node_port.map(|port| {
                (
                    port,
                    ServiceHealth {
                        namespace: svc.name.namespace.clone(),
                        name: svc.name.name.clone(),
                        local_endpoints: e
                            .endpoints
                            .iter()
                            .filter(|x| x.is_local && x.ready)
                            .count(),
                    },
                )
            }),
            no_local,
        }
    }
}

/// The healthCheckNodePort servers' state, and per family the counts of service ports
/// whose internal and external Local policy leaves no local endpoint.
fn aggregate_side(
    sides: &BTreeMap<ServicePortName, PortSide>,
) -> (BTreeMap<u16, ServiceHealth>, [(usize, usize); 2]) {
    let mut hc: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    let mut no_local = [(0, 0); 2];
    for s in sides.values() {
        for (n, (internal, external)) in no_local.iter_mut().zip(s.no_local) {
            n.0 += usize::from(internal);
            n.1 += usize::from(external);
        }
        if let Some((port, h)) = &s.health {
            let e = hc.entry(*port).or_insert_with(|| ServiceHealth {
                local_endpoints: 0,
                ..h.clone()
            });
            e.local_endpoints = e.local_endpoints.max(h.local_endpoints);
        }
    }
    (hc, no_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream counts Services with no local endpoint per family (one proxier each):
    /// a dual-stack Service whose only local endpoint is IPv4 has none in IPv6; a
    /// single-stack one does not count in the other family at all.
    #[test]
    fn no_local_endpoints_per_family() {
        let model = crate::synthetic::model(0, 0);
        let mut e = crate::synthetic::entry(0, 2);
        e.port.internal_policy_local = true;
        e.endpoints[0].is_local = true;
        let v4_only = PortSide::of(&e, &model);
        assert_eq!(v4_only.no_local, [(false, false), (false, false)]);
        e.port
            .cluster_ips
            .push("fd00::10".parse().expect("literal"));
        let mut v6 = e.endpoints[1].clone();
        v6.ip = "fd00:1::5".parse().expect("literal");
        e.endpoints.push(v6);
        let dual = PortSide::of(&e, &model);
        assert_eq!(dual.no_local, [(false, false), (true, false)]);
        let (_, counts) = aggregate_side(&BTreeMap::from([(e.port.name.clone(), dual)]));
        assert_eq!(counts, [(0, 0), (1, 0)]);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05Z"), Some(1704164645.0));
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
