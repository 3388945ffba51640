//! The sync loop: cluster state → desired ruleset → diff against what the kernel holds →
//! one transaction.
//!
//! The last applied ruleset is what the next partial sync diffs against. It is replaced
//! only after the kernel accepted a commit, and dropped after any failure, so that the
//! next sync reads the kernel back and reconciles everything (upstream's `needFullSync`
//! lesson: never lose track of what the kernel holds).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{LocalDetect, NodePortAddresses, ProxyConfig};
use crate::host;
use crate::model::{ClusterState, Problem, ProxyModel, ServiceName};
use crate::netlink::{self, Kernel};
use crate::quarantine::Quarantine;
use crate::ruleset::diff::{self, Known, Op};
use crate::ruleset::ir::{Family, Key, Ruleset, Table, Value, TABLE_NAME};
use crate::ruleset::{build, render, BuildConfig, PodInterface};
use crate::source::manifests;

/// Errors of a sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the kernel failed.
    #[error("programming nftables failed")]
    Kernel(#[from] netlink::Error),
    /// Reading manifests failed.
    #[error("reading manifests failed")]
    Manifests(#[from] manifests::Error),
    /// Reading this host's addresses failed.
    #[error("reading this host's addresses failed")]
    HostAddresses(#[source] std::io::Error),
    /// `--detect-local-mode=NodeCIDR` and the Node has no `spec.podCIDRs` (yet).
    #[error("--detect-local-mode=NodeCIDR: Node {0:?} has no spec.podCIDRs (yet)")]
    NoPodCidrs(String),
    /// `--cleanup-kube-proxy` could not remove everything it found (each logged).
    #[error("{0} of kube-proxy's leftovers could not be removed (see the warnings above)")]
    KubeProxyLeftovers(usize),
}

/// What the kube-proxy takeover needs from the configuration.
pub fn migrate_options(cfg: &ProxyConfig) -> crate::migrate::Options {
    crate::migrate::Options {
        ipvs_exclude_cidrs: cfg.ipvs_exclude_cidrs.clone(),
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// whether the kernel was read back (full reconcile)
    pub full: bool,
    /// operations in the transaction
    pub ops: usize,
    /// whether any operation touched rules or chains
    pub touched_rules: bool,
    /// service ports in the model
    pub service_ports: usize,
    /// time spent, end to end
    pub duration: Duration,
    /// class-set elements the kernel keeps beyond the desired ruleset until the next
    /// sync (a frontend that moved to a smaller class stays in the old one)
    pub kept: Vec<diff::Kept>,
}

/// The transactions of one sync.
pub struct Plan {
    /// the preparatory transaction (new count classes, gained shortcuts; may be empty)
    pub pre: Vec<Op>,
    /// the main transaction
    pub ops: Vec<Op>,
    /// whether the kernel was read back
    pub read_back: bool,
    /// elements the kernel keeps beyond the desired ruleset for one sync
    pub kept: Vec<diff::Kept>,
}

/// `desired` with the elements a diff kept beyond it: what the kernel then holds.
fn with_kept(mut desired: Ruleset, kept: &[diff::Kept]) -> Ruleset {
    for (family, map, key, value) in kept {
        let set = desired
            .tables
            .iter_mut()
            .filter(|t| t.family == *family)
            .flat_map(|t| t.sets.iter_mut())
            .find(|s| &s.decl.name == map);
        if let Some(s) = set {
            Arc::make_mut(&mut s.elements).insert(key.clone(), value.clone());
        }
    }
    desired
}

/// Resolves the addresses NodePorts answer on.
pub fn nodeport_ips(cfg: &ProxyConfig, model: &ProxyModel) -> Result<Vec<IpAddr>, Error> {
    Ok(match &cfg.nodeport_addresses {
        NodePortAddresses::Primary => [false, true]
            .iter()
            .filter_map(|v6| model.node.primary(*v6))
            .filter(|ip| crate::model::special_address(ip).is_none())
            .collect(),
        NodePortAddresses::Cidrs(nets) => host::local_addresses()
            .map_err(Error::HostAddresses)?
            .into_iter()
            .filter(|ip| {
                crate::model::special_address(ip).is_none() && nets.iter().any(|n| n.contains(ip))
            })
            .collect(),
    })
}

/// The desired ruleset for a cluster state, and the problems found in its objects.
pub fn desired(cfg: &ProxyConfig, state: &ClusterState) -> Result<(Ruleset, Vec<Problem>), Error> {
    let d = desired_full(cfg, state)?;
    Ok((build(&d.model, &d.build), d.problems))
}

/// Everything a sync computes before building the ruleset. The ruleset is left to the
/// caller: the daemon builds an incremental one, `--once` builds it inside the
/// quarantine's retry loop; building one here as well held two rulesets at once
/// (at 30k Services ~240 MiB each).
pub struct Desired {
    /// problems with input objects
    pub problems: Vec<Problem>,
    /// the model it was built from
    pub model: ProxyModel,
    /// the resolved builder inputs
    pub build: BuildConfig,
}

/// The model and builder inputs of a cluster state (see [`Desired`]).
pub fn desired_full(cfg: &ProxyConfig, state: &ClusterState) -> Result<Desired, Error> {
    let mut problems = Default::default();
    let mut model = ProxyModel::compute(state, &cfg.node_name, &mut problems);
    if let Some(ip) = cfg.node_ip_override {
        // Upstream's detectNodeIPs: --bind-address is the primary IP of its family.
        model.node.ips.retain(|a| *a != ip);
        model.node.ips.insert(0, ip);
    }
    let (cluster_cidrs, pod_interface) = match &cfg.local_detect {
        LocalDetect::ClusterCidr => (cfg.cluster_cidrs.clone(), None),
        LocalDetect::NodeCidr => {
            let cidrs = node_pod_cidrs(cfg, state);
            if cidrs.is_empty() {
                return Err(Error::NoPodCidrs(cfg.node_name.clone()));
            }
            (cidrs, None)
        }
        LocalDetect::BridgeInterface(name) => (
            Vec::new(),
            Some(PodInterface {
                name: name.clone(),
                prefix: false,
            }),
        ),
        LocalDetect::InterfaceNamePrefix(name) => (
            Vec::new(),
            Some(PodInterface {
                name: name.clone(),
                prefix: true,
            }),
        ),
    };
    let bc = BuildConfig {
        masquerade_mark: cfg.masquerade_mark,
        masquerade_all: cfg.masquerade_all,
        cluster_cidrs,
        pod_interface,
        nodeport_ips: nodeport_ips(cfg, &model)?,
        service_counters: cfg.service_counters,
    };
    Ok(Desired {
        problems: problems.0,
        model,
        build: bc,
    })
}

/// The pod networks of this node (`spec.podCIDRs`, else `spec.podCIDR`), for
/// `--detect-local-mode=NodeCIDR`. Values that are not CIDRs are left out.
pub fn node_pod_cidrs(cfg: &ProxyConfig, state: &ClusterState) -> Vec<ipnet::IpNet> {
    let Some(spec) = state.nodes.get(&cfg.node_name).map(|n| &n.spec) else {
        return Vec::new();
    };
    let all: Vec<&String> = if spec.pod_cidrs.is_empty() {
        vec![&spec.pod_cidr]
    } else {
        spec.pod_cidrs.iter().collect()
    };
    all.into_iter()
        .filter_map(|c| crate::model::convert::parse_cidr_sloppy(c.trim()))
        .collect()
}

/// Why nothing may be programmed yet although every source has listed: in NodeCIDR
/// mode, as upstream's `waitForPodCIDR`, the Node's pod networks must be known, else
/// pod traffic would be masqueraded (or not) by a guess.
pub fn waiting_for(cfg: &ProxyConfig, state: &ClusterState) -> Option<String> {
    (cfg.local_detect == LocalDetect::NodeCidr && node_pod_cidrs(cfg, state).is_empty()).then(
        || {
            format!(
                "--detect-local-mode=NodeCIDR: waiting for Node {:?} to have spec.podCIDRs",
                cfg.node_name
            )
        },
    )
}

/// Logs each problem with the object it came from.
pub fn log_problems(problems: &[Problem]) {
    for p in problems {
        tracing::warn!(object = %p.object, "skipped invalid input: {}", p.reason);
    }
}

/// At most this many Services are held out in one sync: a kernel that refuses more
/// refuses something more general than their objects.
pub const MAX_QUARANTINED: usize = 16;

/// Holds the kernel handle and the last applied ruleset.
#[derive(Default)]
pub struct Proxier {
    kernel: Option<Kernel>,
    last: Option<Arc<Ruleset>>,
    /// The kernel refused our last transaction: the next sync rebuilds our tables from
    /// the desired state in one transaction instead of diffing, so that a transition the
    /// kernel does not accept is never retried as the same thing.
    refused: bool,
    /// Rebuilds done because of a refused transaction.
    rebuilds: u64,
    /// Leave the kernel as found when a sync fails (`--once`): a sync of two
    /// transactions asks the kernel about both before committing the first.
    atomic: bool,
    /// The nftables generation id the kernel has if nobody but us committed anything
    /// since we last knew what our tables hold (a read-back, or a rebuild); `None`:
    /// unknown. Each transaction we commit moves it by one.
    expected_gen: Option<u32>,
    /// The last generation id whose structure [`Proxier::structure_drifted`] checked.
    checked_gen: Option<u32>,
    /// Every affinity set has been checked for records of removed endpoints once (a
    /// proxy that stopped between a commit and its clean-up left them behind).
    affinity_checked: bool,
}

impl Proxier {
    /// A proxier that knows nothing about the kernel yet (first sync reads it back).
    pub fn new() -> Self {
        Self::default()
    }

    /// A proxier whose failed syncs leave the kernel as they found it (see `atomic`).
    pub fn atomic() -> Self {
        Proxier {
            atomic: true,
            ..Self::default()
        }
    }

    /// Runs the kube-proxy takeover (after our rules are committed).
    pub fn migrate_from_kube_proxy(
        &mut self,
        opts: &crate::migrate::Options,
    ) -> Result<crate::migrate::Report, Error> {
        Ok(crate::migrate::cleanup_kube_proxy(self.kernel()?, opts)?)
    }

    /// The last ruleset the kernel accepted (shared, so side outputs need no copy).
    pub fn last(&self) -> Option<Arc<Ruleset>> {
        self.last.clone()
    }

    /// Computes the operations that bring the kernel to `desired`. With `full`, or when
    /// nothing was applied yet, the kernel is read back first.
    pub fn plan(&mut self, desired: &Ruleset, full: bool) -> Result<Plan, Error> {
        let read_back = full || self.last.is_none();
        if read_back {
            // Taken before reading: a commit by someone else after this point makes the
            // generation differ from what we expect, never the other way round.
            self.expected_gen = self.kernel()?.generation().ok();
        }
        let mut ops = Vec::new();
        let mut pre = Vec::new();
        let mut kept = Vec::new();
        for table in &desired.tables {
            let f = table.family;
            if read_back {
                match self.kernel()?.read(f)? {
                    None => diff::diff(None, table, &mut ops),
                    Some(raw) => {
                        let known = netlink::to_known(&raw, f, table);
                        kept.extend(diff::diff_staged(
                            Some(Known {
                                table: &known,
                                rules_known: true,
                            }),
                            table,
                            &mut pre,
                            &mut ops,
                        ));
                    }
                }
            } else if let Some(old) = self.last.as_ref().and_then(|l| l.table(f)) {
                kept.extend(diff::diff_staged(
                    Some(Known {
                        table: old,
                        rules_known: true,
                    }),
                    table,
                    &mut pre,
                    &mut ops,
                ));
            } else {
                diff::diff(None, table, &mut ops);
            }
        }
        Ok(Plan {
            pre,
            ops,
            read_back,
            kept,
        })
    }

    /// Deletes the session-affinity records of endpoints that no rule reads any more.
    ///
    /// An affinity set records `client . endpoint tag` (`build::affinity_chain`). When an
    /// endpoint goes, the transaction that removes it removes its rules, so nothing sends
    /// a client there or records one for it; its records are left, unread, until their
    /// timeout. Upstream deletes the endpoint's whole set instead, so an endpoint that
    /// comes back starts without clients; to keep that, this deletes them right after the
    /// commit. Since no rule can add such a record any more, one pass finds them all; a
    /// record that expires between our read and our delete makes the kernel refuse the
    /// delete (ENOENT), and the pass is repeated.
    ///
    /// `ops` is the committed transaction: the sets of the affinity chains it flushed or
    /// deleted are checked (on the first call, every affinity set of `desired`). Never
    /// fails the sync: a failure is logged, and the records expire with their timeout.
    pub fn forget_removed_endpoints(&mut self, desired: &Ruleset, ops: &[Op]) {
        let mut sets: std::collections::BTreeSet<(Family, String)> = Default::default();
        if self.affinity_checked {
            for op in ops {
                if let Op::FlushChain(f, c) | Op::DelChain(f, c) = op {
                    if let Some(set) = build::affinity_set_of_chain(c) {
                        sets.insert((*f, set.to_string()));
                    }
                }
            }
        } else {
            for t in &desired.tables {
                for s in t.sets.iter().filter(|s| s.decl.timeout.is_some()) {
                    sets.insert((t.family, s.decl.name.clone()));
                }
            }
        }
        let mut all_done = true;
        for (family, set) in sets {
            if let Err(e) = self.forget_in(desired, family, &set) {
                all_done = false;
                tracing::warn!(
                    set = %set,
                    error = %error_chain(&e),
                    "could not delete the affinity records of removed endpoints; they expire with their timeout"
                );
            }
        }
        self.affinity_checked |= all_done;
    }

    fn forget_in(&mut self, desired: &Ruleset, family: Family, set: &str) -> Result<(), Error> {
        let Some(table) = desired.table(family) else {
            return Ok(());
        };
        let Some(decl) = table.set(set).map(|s| s.decl.clone()) else {
            // The set itself went, and its records with it.
            return Ok(());
        };
        let live = build::affinity_tags_read(table, set);
        let mut attempt = 0;
        loop {
            let kernel = self.kernel()?;
            let stale: Vec<Key> = kernel
                .set_keys(family, set, &decl.key)?
                .into_iter()
                .filter(|k| matches!(k.last(), Some(Value::Index(t)) if !live.contains(&t)))
                // A dump can list an element twice; a delete of the same key twice in
                // one transaction is refused.
                .collect::<BTreeSet<Key>>()
                .into_iter()
                .collect();
            if stale.is_empty() {
                return Ok(());
            }
            // Not `commit`: a refusal here (a record expired meanwhile) is no reason to
            // rebuild; the generation we expect still moves with what we commit.
            let r = kernel.apply(&[Op::DelElements(family, decl.clone(), stale)]);
            self.expected_gen = match r {
                Ok(()) => self.expected_gen.map(|g| g.wrapping_add(1)),
                Err(_) => None,
            };
            match r {
                Err(e) if e.errno() == Some(libc::ENOENT) && attempt < 3 => attempt += 1,
                r => return Ok(r?),
            }
        }
    }

    /// How many times a refused transaction was followed by a rebuild.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Whether the kernel refused the last transaction (the next sync rebuilds).
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Replaces our tables with `desired` in one transaction: delete what is there and
    /// create everything anew, independent of any diff or incremental bookkeeping. For
    /// recovery after a refused transaction; session-affinity records start afresh.
    pub fn rebuild(&mut self, desired: &Ruleset) -> Result<SyncReport, Error> {
        self.rebuilds += 1;
        tracing::warn!(
            "the kernel refused the last transaction; rebuilding our tables in one transaction"
        );
        self.replace(desired)
    }

    /// Replaces our tables with `desired` in one transaction (delete, create), without
    /// reading them back: for tables another program damaged, where a full load costs
    /// less than reading every element. Session-affinity records start afresh.
    pub fn replace(&mut self, desired: &Ruleset) -> Result<SyncReport, Error> {
        let start = Instant::now();
        self.last = None;
        let ops = self.rebuild_ops(desired)?;
        self.expected_gen = self.kernel()?.generation().ok();
        self.commit(&ops)?;
        // Every affinity set is new: no record of any endpoint is left.
        self.affinity_checked = true;
        Ok(SyncReport {
            full: true,
            ops: ops.len(),
            touched_rules: true,
            service_ports: 0,
            duration: start.elapsed(),
            kept: Vec::new(),
        })
    }

    /// Repairs a drift of our tables' structure that [`Proxier::structure_drifted`] found
    /// (a flushed table, a deleted chain or set, an edited rule) with the smallest
    /// transaction: the chains, rules and sets that differ, and the elements of the sets
    /// it creates. Sets that still exist keep their elements: `nft flush table` removes
    /// rules only, and replacing both tables instead cost 2.5 s at 30k Services (720k
    /// elements). An element changed by hand is left to the next periodic reconcile,
    /// which reads everything back: after this the generation counts as unknown.
    pub fn repair_structure(&mut self, desired: &Ruleset) -> Result<SyncReport, Error> {
        let start = Instant::now();
        self.last = None;
        let mut ops = Vec::new();
        for table in &desired.tables {
            let Some(structural) = self.structure_diff(table)? else {
                diff::diff(None, table, &mut ops);
                continue;
            };
            let mut fills = Vec::new();
            for op in &structural {
                let Op::AddSet(f, decl) = op else {
                    continue;
                };
                if let Some(s) = table.set(&decl.name).filter(|s| !s.elements.is_empty()) {
                    let items = diff::Items::All(s.elements.clone());
                    fills.push(Op::AddElements(*f, decl.clone(), items));
                }
            }
            ops.extend(structural);
            ops.extend(fills);
        }
        self.expected_gen = None;
        self.commit(&ops)?;
        Ok(SyncReport {
            full: true,
            ops: ops.len(),
            touched_rules: true,
            service_ports: 0,
            duration: start.elapsed(),
            kept: Vec::new(),
        })
    }

    /// The one transaction that replaces our tables with `desired`.
    fn rebuild_ops(&mut self, desired: &Ruleset) -> Result<Vec<Op>, Error> {
        let kernel = self.kernel()?;
        let mut ops = Vec::new();
        for table in &desired.tables {
            let exists = kernel.table_names(table.family)?;
            if exists.iter().any(|n| n == TABLE_NAME) {
                ops.push(Op::DelTable(table.family));
            }
            diff::diff(None, table, &mut ops);
        }
        Ok(ops)
    }

    /// Whether the kernel would accept a rebuild to `desired` (nothing is committed).
    /// `Ok(Err(e))`: the kernel refused it, with `e` naming the operation.
    fn accepts(&mut self, desired: &Ruleset) -> Result<Result<(), netlink::Error>, Error> {
        let ops = self.rebuild_ops(desired)?;
        match self.kernel()?.check(&ops) {
            Ok(()) => Ok(Ok(())),
            Err(e @ netlink::Error::Rejected { .. }) => Ok(Err(e)),
            Err(e) => Err(Error::Kernel(e)),
        }
    }

    /// After the kernel refused a rebuild to the ruleset of `model`: finds the Services
    /// whose rules it refuses, asking the kernel without committing anything. Each round
    /// bisects the Services (in the model's order) for the shortest prefix the kernel
    /// refuses; its last Service is a culprit (alone, or together with Services before
    /// it) and is taken out; rounds end when the rest is accepted, or after `max`
    /// culprits. Costs about log2(Services) checks of up to the whole ruleset per
    /// culprit: an exceptional path. Fails when the kernel refuses even the ruleset
    /// without any Service (nobody to hold responsible).
    pub fn find_refused(
        &mut self,
        model: &ProxyModel,
        make: impl Fn(&ProxyModel) -> Ruleset,
        max: usize,
    ) -> Result<Vec<(ServiceName, String)>, Error> {
        let mut names: Vec<ServiceName> = Vec::new();
        for port in model.services.keys() {
            let svc = crate::quarantine::service_of(port);
            if names.last() != Some(&svc) {
                names.push(svc);
            }
        }
        let subset = |names: &[ServiceName]| {
            let keep: BTreeSet<&ServiceName> = names.iter().collect();
            let mut m = model.clone();
            m.services
                .retain(|port, _| keep.contains(&crate::quarantine::service_of(port)));
            m
        };
        if let Err(e) = self.accepts(&make(&subset(&[])))? {
            return Err(Error::Kernel(e));
        }
        let mut culprits = Vec::new();
        while culprits.len() < max {
            if self.accepts(&make(&subset(&names)))?.is_ok() {
                break;
            }
            // names[..lo] is accepted, names[..hi] refused.
            let (mut lo, mut hi) = (0, names.len());
            let mut reason = String::new();
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                match self.accepts(&make(&subset(&names[..mid])))? {
                    Ok(()) => lo = mid,
                    Err(e) => {
                        hi = mid;
                        reason = error_chain(&e);
                    }
                }
            }
            if reason.is_empty() {
                if let Err(e) = self.accepts(&make(&subset(&names[..hi])))? {
                    reason = error_chain(&e);
                }
            }
            culprits.push((names.remove(hi - 1), reason));
        }
        Ok(culprits)
    }

    /// A full sync of `model` that recovers from refusals: a refused transaction is
    /// followed at once by a rebuild; a refused rebuild by finding the Services the
    /// kernel refuses ([`Proxier::find_refused`]), holding them in `quarantine`, and a
    /// rebuild without them. Services already held are taken out of `model` first.
    /// Returns what `make` built for the model finally programmed, the report, and a
    /// problem for each held Service.
    pub fn sync_model<T>(
        &mut self,
        model: &mut ProxyModel,
        quarantine: &mut Quarantine,
        make: impl Fn(&ProxyModel) -> T,
        ruleset: impl Fn(&T) -> &Ruleset,
        check_build: impl Fn(&ProxyModel) -> Ruleset,
    ) -> Result<(T, SyncReport, Vec<Problem>), Error> {
        let now = Instant::now();
        quarantine.apply(model, true, now);
        let mut built = make(model);
        let mut result = self.sync_ref(ruleset(&built), true);
        if result.is_err() && self.refused {
            if let Err(e) = &result {
                tracing::error!(error = %error_chain(e), "the kernel refused the update");
            }
            result = self.sync_ref(ruleset(&built), true);
            if result.is_err() && self.refused {
                let culprits = self.find_refused(model, &check_build, MAX_QUARANTINED)?;
                for (svc, reason) in culprits {
                    quarantine.hold(svc, model, reason, now);
                }
                quarantine.apply(model, true, now);
                built = make(model);
                result = self.sync_ref(ruleset(&built), true);
            }
        }
        let report = result?;
        // The problems of the held Services, from a copy of the model (which no longer
        // holds them); no copy when nothing is held (at 30k Services the model is
        // ~60 MiB, and this ran at every full sync).
        let problems = if quarantine.is_empty() {
            Vec::new()
        } else {
            let mut probe = model.clone();
            quarantine.apply(&mut probe, false, now)
        };
        Ok((built, report, problems))
    }

    /// Whether nobody but us committed anything to nftables since we last knew what our
    /// tables hold: then they hold exactly that, and a reconcile has nothing to read.
    pub fn kernel_unchanged(&mut self) -> Result<bool, Error> {
        let Some(expected) = self.expected_gen else {
            return Ok(false);
        };
        Ok(self.kernel()?.generation()? == expected)
    }

    /// A cheap drift check for a running daemon: when someone else committed to
    /// nftables since the last check, reads our tables' chains, rules and sets (not
    /// their elements: a few small dumps whatever the cluster size) and says whether
    /// they differ from `desired` — a flushed or deleted table, a rule or chain edited
    /// by hand. A changed element is left to the periodic reconcile, which reads
    /// everything whenever the generation moved.
    pub fn structure_drifted(&mut self, desired: &Ruleset) -> Result<bool, Error> {
        let gen = self.kernel()?.generation()?;
        if Some(gen) == self.expected_gen || Some(gen) == self.checked_gen {
            return Ok(false);
        }
        self.checked_gen = Some(gen);
        for table in &desired.tables {
            if self
                .structure_diff(table)?
                .is_none_or(|ops| !ops.is_empty())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The operations that bring our table's structure in the kernel (chains, rules,
    /// set declarations; not elements) to `table`'s, or `None` when the table is gone.
    fn structure_diff(&mut self, table: &Table) -> Result<Option<Vec<Op>>, Error> {
        let Some(raw) = self.kernel()?.read_structure(table.family)? else {
            return Ok(None);
        };
        let known = netlink::to_known(&raw, table.family, table);
        let mut ops = Vec::new();
        diff::diff(
            Some(Known {
                table: &known,
                rules_known: true,
            }),
            &table.clone_structure(),
            &mut ops,
        );
        Ok(Some(ops))
    }

    /// The kernel handle, opened on first use.
    fn kernel(&mut self) -> Result<&mut Kernel, Error> {
        let k = match self.kernel.take() {
            Some(k) => k,
            None => Kernel::open()?,
        };
        Ok(self.kernel.insert(k))
    }

    /// Reads our tables back and brings the kernel to `desired` in one transaction (a
    /// full reconcile); does not keep a copy of `desired`. After a refused transaction
    /// this is a [`Proxier::rebuild`].
    pub fn sync_to(&mut self, desired: &Ruleset) -> Result<SyncReport, Error> {
        if self.refused {
            return self.rebuild(desired);
        }
        self.last = None;
        let start = Instant::now();
        let plan = self.plan(desired, true)?;
        let touched_rules = plan.ops.iter().chain(&plan.pre).any(diff::touches_rules);
        self.commit(&plan.pre)?;
        self.commit(&plan.ops)?;
        self.forget_removed_endpoints(desired, &plan.ops);
        Ok(SyncReport {
            full: true,
            ops: plan.ops.len(),
            touched_rules,
            service_ports: 0,
            duration: start.elapsed(),
            kept: plan.kept,
        })
    }

    /// Commits operations computed elsewhere (an incremental update).
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let result = self.kernel()?.apply(ops);
        match result {
            Err(e @ netlink::Error::Rejected { .. }) => {
                self.refused = true;
                self.expected_gen = None;
                Err(Error::Kernel(e))
            }
            Err(e) => {
                self.expected_gen = None;
                Err(Error::Kernel(e))
            }
            Ok(()) => {
                self.refused = false;
                self.expected_gen = self.expected_gen.map(|g| g.wrapping_add(1));
                Ok(())
            }
        }
    }

    /// Keeps `desired`, which the kernel now holds together with `kept`, as the base of
    /// the next diff.
    pub fn keep(&mut self, desired: Ruleset, kept: &[diff::Kept]) {
        self.last = Some(Arc::new(with_kept(desired, kept)));
    }

    /// Brings the kernel to `desired` and keeps it as the base of the next diff.
    pub fn sync(&mut self, desired: Ruleset, full: bool) -> Result<SyncReport, Error> {
        let r = self.sync_ref(&desired, full)?;
        self.last = Some(Arc::new(with_kept(desired, &r.kept)));
        Ok(r)
    }

    /// Brings the kernel to `desired` (after a refused transaction: a rebuild) without
    /// keeping it; the next sync reads the kernel back.
    pub fn sync_ref(&mut self, desired: &Ruleset, full: bool) -> Result<SyncReport, Error> {
        if self.refused {
            return self.rebuild(desired);
        }
        let start = Instant::now();
        let plan = self.plan(desired, full);
        // Whatever happens next, the kernel no longer holds what `last` says for sure.
        self.last = None;
        let plan = plan?;
        let touched_rules = plan.ops.iter().chain(&plan.pre).any(diff::touches_rules);
        if self.atomic && !plan.pre.is_empty() {
            // Both transactions are asked about as one before the first is committed, so
            // a refusal of the second cannot leave the first behind.
            let both: Vec<Op> = plan.pre.iter().chain(&plan.ops).cloned().collect();
            if let Err(e) = self.kernel()?.check(&both) {
                if matches!(e, netlink::Error::Rejected { .. }) {
                    self.refused = true;
                }
                return Err(Error::Kernel(e));
            }
        }
        self.commit(&plan.pre)?;
        self.commit(&plan.ops)?;
        self.forget_removed_endpoints(desired, &plan.ops);
        Ok(SyncReport {
            full: plan.read_back,
            ops: plan.ops.len(),
            touched_rules,
            service_ports: 0,
            duration: start.elapsed(),
            kept: plan.kept,
        })
    }
}

/// Deletes our tables (only ours) in one transaction.
pub fn cleanup() -> Result<usize, Error> {
    let mut k = Kernel::open()?;
    let mut ops = Vec::new();
    for f in Family::ALL {
        if k.read(f)?.is_some() {
            ops.push(Op::DelTable(f));
        }
    }
    k.apply(&ops)?;
    Ok(ops.len())
}

fn load_state(paths: &[PathBuf]) -> Result<ClusterState, Error> {
    let loaded = manifests::load(paths)?;
    log_problems(&loaded.problems);
    Ok(ClusterState::from_objects(loaded.objects))
}

/// `--dry-run`: the ruleset as nft text.
pub fn dry_run(cfg: &ProxyConfig) -> Result<String, Error> {
    let (rs, _) = desired_from_manifests(cfg)?;
    Ok(render::ruleset(&rs))
}

/// The ruleset the manifests give, and the node's addresses (its Node object's, or
/// `--bind-address`).
pub fn desired_from_manifests(cfg: &ProxyConfig) -> Result<(Ruleset, Vec<IpAddr>), Error> {
    let state = load_state(&cfg.manifests)?;
    let d = desired_full(cfg, &state)?;
    log_problems(&d.problems);
    Ok((build(&d.model, &d.build), d.model.node.ips.clone()))
}

/// `--once`: program the current namespace once. A Service whose rules the kernel
/// refuses is left out (with a warning) and everything else is programmed; a sync that
/// fails leaves the kernel as it found it.
pub fn once(cfg: &ProxyConfig) -> Result<SyncReport, Error> {
    let state = load_state(&cfg.manifests)?;
    let mut d = desired_full(cfg, &state)?;
    // The model holds what the rest needs; the objects would only add to the peak
    // (about 45 MiB at 30k Services).
    drop(state);
    log_problems(&d.problems);
    let mut p = Proxier::atomic();
    let bc = d.build.clone();
    let (rs, mut r, held) = p.sync_model(
        &mut d.model,
        &mut Quarantine::default(),
        |m| build(m, &bc),
        |rs| rs,
        |m| build(m, &bc),
    )?;
    log_problems(&held);
    r.service_ports = rs.tables.iter().map(|t| t.element_count()).sum::<usize>();
    if cfg.cleanup_kube_proxy {
        let m = p.migrate_from_kube_proxy(&migrate_options(cfg))?;
        m.log("removed kube-proxy's leftovers");
        if !m.complete() {
            return Err(Error::KubeProxyLeftovers(m.failed.len()));
        }
    }
    Ok(r)
}

fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for p in paths {
        for f in manifests::expand(p).unwrap_or_default() {
            let m = std::fs::metadata(&f).ok();
            out.push((
                f,
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map(|m| m.len()).unwrap_or(0),
            ));
        }
    }
    out
}

/// Runs continuously on manifest files: applies each change as a difference, reconciles
/// fully every `sync_period`, retries failures with backoff. Never returns normally.
pub fn run_files(cfg: &ProxyConfig) -> Result<(), Error> {
    let mut p = Proxier::new();
    let mut quarantine = Quarantine::default();
    let mut seen = None;
    let mut last_full = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut failed = true;
    loop {
        let fp = fingerprint(&cfg.manifests);
        let mut due_full = last_full.elapsed() >= cfg.sync_period;
        // Nothing changed in the files and nobody else committed to nftables: the
        // kernel holds what we programmed, and the reconcile has nothing to do.
        if due_full
            && !failed
            && seen.as_ref() == Some(&fp)
            && p.kernel_unchanged().unwrap_or(false)
        {
            last_full = Instant::now();
            due_full = false;
        }
        if failed || due_full || seen.as_ref() != Some(&fp) {
            let result = load_state(&cfg.manifests).and_then(|state| {
                let mut d = desired_full(cfg, &state)?;
                log_problems(&d.problems);
                if due_full || failed {
                    let bc = d.build.clone();
                    let (rs, r, held) = p.sync_model(
                        &mut d.model,
                        &mut quarantine,
                        |m| build(m, &bc),
                        |rs| rs,
                        |m| build(m, &bc),
                    )?;
                    log_problems(&held);
                    p.keep(rs, &r.kept);
                    Ok(r)
                } else {
                    log_problems(&quarantine.apply(&mut d.model, false, Instant::now()));
                    p.sync(build(&d.model, &d.build), false)
                }
            });
            match result {
                Ok(r) => {
                    tracing::info!(
                        full = r.full,
                        ops = r.ops,
                        elapsed_ms = r.duration.as_secs_f64() * 1e3,
                        "synced"
                    );
                    if cfg.cleanup_kube_proxy && seen.is_none() {
                        match p.migrate_from_kube_proxy(&migrate_options(cfg)) {
                            Ok(m) => m.log("removed kube-proxy's leftovers"),
                            Err(e) => {
                                tracing::warn!(error = %error_chain(&e), "kube-proxy cleanup failed")
                            }
                        }
                    }
                    if r.full {
                        last_full = Instant::now();
                    }
                    seen = Some(fp);
                    failed = false;
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), retry_in_s = backoff.as_secs(), "sync failed; keeping the rules in place");
                    failed = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub use crate::error_text::error_chain;
