//! Taking over a node from upstream kube-proxy without a gap, whatever mode it ran in.
//!
//! With `--cleanup-kube-proxy`, once our own rules are committed (so both rule sets
//! serve the same Services for a moment, each DNATing to valid endpoints), we delete
//! what kube-proxy left behind, in this order:
//!
//! 1. nftables mode: the `ip`/`ip6 kube-proxy` tables, in one transaction.
//! 2. iptables and IPVS modes through iptables-nft: kube-proxy's chains and the jumps
//!    to them in the `ip`/`ip6` `filter`, `nat`, `mangle`, `raw` and `security`
//!    tables, over netlink, one transaction per family ([`iptables_nft`]).
//! 3. The same through legacy iptables (xtables), with `iptables-legacy-save` and
//!    `-restore` when they are installed ([`iptables_legacy`]).
//! 4. kube-proxy's ipsets (IPVS mode), over ipset's netlink protocol, once no rule
//!    references them ([`ipset`]).
//! 5. If `kube-ipvs0` exists (kube-proxy's IPVS mode ran here since boot): its IPVS
//!    virtual servers over generic netlink ([`ipvs`]), then the interface itself over
//!    rtnetlink ([`link`]).
//!
//! Chains and sets are kube-proxy's by name ([`is_kube_proxy_chain`],
//! [`is_kube_proxy_set`]), not by the `KUBE-` prefix alone: kubelet's own chains
//! (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`, `KUBE-MARK-DROP`) and
//! kube-router's network-policy chains and sets (`KUBE-ROUTER-*`, `KUBE-NWPLCY-*`,
//! `KUBE-POD-FW-*`, `KUBE-SRC-*`, `KUBE-DST-*`; k3s runs it next to kube-proxy) are
//! named `KUBE-*` too, and stay, with the jumps to them. The [`Report`] counts what
//! each step removed and says what was skipped (the kernel or the image lacks
//! something) and what failed.

pub mod ipset;
pub mod iptables_legacy;
pub mod iptables_nft;
pub mod ipvs;
pub mod link;
pub mod nl;

use ipnet::IpNet;

use crate::error_text::error_chain;
use crate::netlink::{self, Kernel};
use crate::ruleset::diff::Op;
use crate::ruleset::ir::Family;

/// Upstream kube-proxy's nftables table name.
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// kube-proxy's fixed iptables chains, in every mode and version since 1.2
/// (pkg/proxy/iptables and pkg/proxy/ipvs; the userspace mode's, removed in 1.26).
/// Not here, because kubelet creates them: `KUBE-FIREWALL` (in `filter`; see
/// [`is_kube_proxy_chain`]), `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`,
/// `KUBE-MARK-DROP`.
pub const KUBE_PROXY_CHAINS: [&str; 17] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    "KUBE-PORTALS-CONTAINER",
    "KUBE-PORTALS-HOST",
    "KUBE-NODEPORT-CONTAINER",
    "KUBE-NODEPORT-HOST",
];

/// The prefixes of kube-proxy's per-Service chains (iptables mode): service, local
/// service, external, firewall, endpoint, and the older external-local ones.
pub const KUBE_PROXY_CHAIN_PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-XLB-",
];

/// kube-proxy's IPVS-mode ipsets (pkg/proxy/ipvs/ipset.go, current and older names).
/// On IPv6 the same names start `KUBE-6-` instead of `KUBE-`.
pub const KUBE_PROXY_SETS: [&str; 23] = [
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-LOAD-BALANCER-MASQ",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-NODE-PORT-SCTP",
    "KUBE-NODE-PORT-LOCAL-SCTP",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
    "KUBE-MASQ-ALL",
    "KUBE-CLUSTER-CIDR",
    "KUBE-SERVICE-ACCESS",
];

/// Whether the iptables chain `name` of `table` is kube-proxy's. `KUBE-FIREWALL` is
/// kubelet's in `filter`, but kube-proxy's IPVS mode before 1.28 had its own in `nat`
/// (for loadBalancerSourceRanges).
pub fn is_kube_proxy_chain(table: &str, name: &str) -> bool {
    (table == "nat" && name == "KUBE-FIREWALL")
        || KUBE_PROXY_CHAINS.contains(&name)
        || KUBE_PROXY_CHAIN_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// Whether an ipset is kube-proxy's.
pub fn is_kube_proxy_set(name: &str) -> bool {
    let v4 = match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_string(),
    };
    KUBE_PROXY_SETS.contains(&v4.as_str())
}

/// What the takeover needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--ipvs-exclude-cidrs`: IPVS virtual servers kube-proxy was told to leave alone
    pub ipvs_exclude_cidrs: Vec<IpNet>,
}

/// Chains and rules removed from one kind of iptables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// kube-proxy's chains deleted (with their rules)
    pub chains: usize,
    /// rules deleted from other chains: the jumps into those
    pub rules: usize,
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, o: Removed) {
        self.chains += o.chains;
        self.rules += o.rules;
    }
}

/// What the takeover removed, skipped and failed to remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// nftables tables deleted (`ip`/`ip6 kube-proxy`)
    pub tables: usize,
    /// from iptables-nft's tables, both families
    pub iptables_nft: Removed,
    /// from legacy iptables, both families
    pub iptables_legacy: Removed,
    /// ipsets destroyed
    pub ipsets: usize,
    /// IPVS virtual servers deleted
    pub ipvs_services: usize,
    /// links deleted (`kube-ipvs0`)
    pub links: usize,
    /// what was not looked at, and why (the kernel or the image lacks something)
    pub skipped: Vec<String>,
    /// what could not be removed, and why
    pub failed: Vec<String>,
}

impl Report {
    /// Whether everything that was found was removed (skips aside).
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Logs the report: one line with the counts, one per skip and failure.
    pub fn log(&self, what: &str) {
        tracing::info!(
            nftables_tables = self.tables,
            iptables_nft_chains = self.iptables_nft.chains,
            iptables_nft_rules = self.iptables_nft.rules,
            iptables_legacy_chains = self.iptables_legacy.chains,
            iptables_legacy_rules = self.iptables_legacy.rules,
            ipsets = self.ipsets,
            ipvs_services = self.ipvs_services,
            links = self.links,
            skipped = self.skipped.len(),
            failed = self.failed.len(),
            "{what}"
        );
        for s in &self.skipped {
            tracing::warn!(reason = %s, "kube-proxy cleanup skipped a step");
        }
        for f in &self.failed {
            tracing::warn!(error = %f, "kube-proxy cleanup could not remove something");
        }
    }
}

/// Deletes kube-proxy's leftovers (see the module's documentation). `Err`: kube-proxy's
/// nftables tables could not be deleted (nothing else was tried); every other step's
/// failure is in the report, and the steps after it still run.
pub fn cleanup_kube_proxy(kernel: &mut Kernel, opts: &Options) -> Result<Report, netlink::Error> {
    let mut ops = Vec::new();
    for f in Family::ALL {
        if kernel.table_names(f)?.iter().any(|n| n == KUBE_PROXY_TABLE) {
            ops.push(Op::DelForeignTable(f, KUBE_PROXY_TABLE.to_string()));
        }
    }
    kernel.apply(&ops)?;
    let mut r = Report {
        tables: ops.len(),
        ..Report::default()
    };

    for f in Family::ALL {
        match iptables_nft::remove(kernel, f, &is_kube_proxy_chain) {
            Ok(n) => r.iptables_nft += n,
            Err(e) => r.failed.push(format!(
                "{} iptables-nft tables: {}",
                f.nft(),
                error_chain(&e)
            )),
        }
    }

    for tools in &iptables_legacy::FAMILIES {
        match iptables_legacy::remove(tools, &is_kube_proxy_chain) {
            Ok(iptables_legacy::Outcome::NoTables) => {}
            Ok(iptables_legacy::Outcome::Removed(n)) => r.iptables_legacy += n,
            Ok(iptables_legacy::Outcome::Skipped(why)) => r.skipped.push(why),
            Err(e) => r.failed.push(e),
        }
    }

    match ipset::remove(is_kube_proxy_set) {
        // A kernel without ipset (`no_ipset`) has no sets to remove.
        Ok(o) => {
            r.ipsets = o.destroyed.len();
            r.failed
                .extend(o.failed.into_iter().map(|f| format!("ipset {f}")));
        }
        Err(e) => r.failed.push(format!("ipsets: {}", error_chain(&e))),
    }

    ipvs_leftovers(opts, &mut r);
    Ok(r)
}

/// Step 5: IPVS virtual servers and `kube-ipvs0`, only where `kube-ipvs0` exists.
/// Asking the kernel for the "IPVS" family could load the IPVS module on a node that
/// never used it; `kube-ipvs0` is kube-proxy's own sign that its IPVS mode ran here.
fn ipvs_leftovers(opts: &Options, r: &mut Report) {
    let mut rt = match nl::Socket::open(mnl::Bus::Route) {
        Ok(s) => s,
        Err(e) => {
            r.failed
                .push(format!("{}: {}", link::KUBE_IPVS0, error_chain(&e)));
            return;
        }
    };
    let kind = match link::kind(&mut rt, link::KUBE_IPVS0) {
        Ok(Some(k)) => k,
        Ok(None) => return,
        Err(e) => {
            r.failed
                .push(format!("{}: {}", link::KUBE_IPVS0, error_chain(&e)));
            return;
        }
    };
    match ipvs::remove(&opts.ipvs_exclude_cidrs) {
        Ok(o) if o.no_ipvs => r.skipped.push(format!(
            "IPVS virtual servers: {} exists but this kernel has no IPVS (no \"IPVS\" generic netlink family), so there are none to remove",
            link::KUBE_IPVS0
        )),
        Ok(o) => {
            r.ipvs_services = o.deleted;
            if !o.kept.is_empty() {
                tracing::info!(kept = %o.kept.join(", "), "IPVS virtual servers left in place: not kube-proxy's (firewall marks, --ipvs-exclude-cidrs)");
            }
            r.failed
                .extend(o.failed.into_iter().map(|f| format!("IPVS: {f}")));
        }
        Err(e) => r.failed.push(format!("IPVS: {}", error_chain(&e))),
    }
    match link::delete(&mut rt, link::KUBE_IPVS0) {
        Ok(true) => {
            r.links += 1;
            tracing::info!(link = link::KUBE_IPVS0, kind = %kind, "deleted kube-proxy's IPVS interface");
        }
        Ok(false) => {}
        Err(e) => r
            .failed
            .push(format!("{}: {}", link::KUBE_IPVS0, error_chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_chains_are_not_kubelets_nor_kube_routers() {
        for c in [
            "KUBE-SERVICES",
            "KUBE-SVC-7RRAOYVM6IVRE2IL",
            "KUBE-SEP-BZ3XJ5QDF3SFTTL7",
            "KUBE-EXT-7RRAOYVM6IVRE2IL",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-PROXY-CANARY",
            "KUBE-IPVS-FILTER",
        ] {
            assert!(is_kube_proxy_chain("nat", c), "{c}");
        }
        assert!(is_kube_proxy_chain("nat", "KUBE-FIREWALL"));
        for c in [
            "KUBE-FIREWALL",
            "KUBE-KUBELET-CANARY",
            "KUBE-IPTABLES-HINT",
            "KUBE-MARK-DROP",
            "KUBE-ROUTER-INPUT",
            "KUBE-NWPLCY-LC6LKJIS3EXL2QBO",
            "KUBE-POD-FW-3KBJ3JJGUJ5QWEOZ",
            "KUBE-SVC-",
            "INPUT",
            "kube-services",
        ] {
            assert!(!is_kube_proxy_chain("filter", c), "{c}");
        }
    }

    #[test]
    fn kube_proxys_sets_of_both_families() {
        for s in [
            "KUBE-CLUSTER-IP",
            "KUBE-6-CLUSTER-IP",
            "KUBE-6-LOOP-BACK",
            "KUBE-IPVS-IPS",
        ] {
            assert!(is_kube_proxy_set(s), "{s}");
        }
        for s in [
            "KUBE-SRC-ABCDEFGHIJKLMNOP",
            "KUBE-DST-ABCDEFGHIJKLMNOP",
            "KUBE-6-SRC-X",
            "kube-router-pod-subnets",
            "KUBE-",
        ] {
            assert!(!is_kube_proxy_set(s), "{s}");
        }
    }
}
