//! Command-line flags → one typed [`ProxyConfig`]. Flag names follow kube-proxy's.

use std::path::PathBuf;
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use ipnet::IpNet;

use crate::kubeproxyconfig::{parse_go_duration, Conntrack};
use crate::model::convert::{parse_cidr_sloppy, parse_ip_sloppy};

/// kube-nft-proxy: a Kubernetes service proxy that programs nftables through netlink.
#[derive(Parser, Debug, Clone)]
#[command(name = "kube-nft-proxy", version, about)]
pub struct Cli {
    /// Read cluster objects from these files or directories (YAML or JSON; `-` is stdin)
    /// instead of an API server.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// Program the current network namespace once, then exit.
    #[arg(long)]
    pub once: bool,

    /// Print the complete ruleset as nft text and touch nothing (no root needed).
    #[arg(long)]
    pub dry_run: bool,

    /// The name of this node (default: the host name).
    #[arg(long, value_name = "NODE")]
    pub hostname_override: Option<String>,

    /// Pod networks, comma separated (one per family): traffic from outside them to a
    /// ClusterIP is masqueraded.
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,

    /// How traffic from pods is recognised: `ClusterCIDR` (source in --cluster-cidr;
    /// the default), `NodeCIDR` (source in the Node's spec.podCIDRs; waits for them),
    /// `BridgeInterface` (arrives on --pod-bridge-interface) or `InterfaceNamePrefix`
    /// (arrives on an interface named --pod-interface-name-prefix*).
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// The pods' bridge, for --detect-local-mode=BridgeInterface.
    #[arg(long, value_name = "INTERFACE")]
    pub pod_bridge_interface: Option<String>,

    /// The start of the pods' interface names, for
    /// --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// This node's primary IP (overrides the Node object's, as kube-proxy; no socket
    /// is bound to it). `0.0.0.0` or `::`: the Node's.
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,

    /// kube-proxy's mode: only `nftables` is accepted.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Apply the conntrack sysctls (the step that needs more than CAP_NET_ADMIN), then
    /// exit: for a privileged init container.
    #[arg(long)]
    pub init_only: bool,

    /// Masquerade all traffic sent to service addresses.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// Where NodePorts answer: `primary` (the node's primary IP of each family) or a
    /// comma separated list of CIDRs matched against this host's addresses.
    #[arg(long, value_name = "primary|CIDR,...", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,

    /// The bit of the packet mark that flags traffic for masquerading (0-31).
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(0..=31))]
    pub masquerade_bit: u32,

    /// Delete our nftables tables (and nothing else), then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Take over from kube-proxy: once our rules are in place, delete what kube-proxy
    /// left behind in any mode: its `ip`/`ip6 kube-proxy` nftables tables, its
    /// iptables chains (iptables-nft over netlink; legacy iptables through
    /// iptables-legacy-save/-restore when installed), its ipsets, its IPVS virtual
    /// servers and `kube-ipvs0`.
    #[arg(long)]
    pub cleanup_kube_proxy: bool,

    /// kube-proxy's IPVS mode flag: IPVS virtual servers in these CIDRs are not
    /// kube-proxy's, and --cleanup-kube-proxy leaves them in place.
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',')]
    pub ipvs_exclude_cidrs: Vec<String>,
    /// Count new connections and refused ones per Service port in the kernel (a
    /// counter on each frontend set element) and export them on `/metrics`
    /// (`kubenftproxy_service_*_total`; a series per Service port and family).
    #[arg(long)]
    pub service_counters: bool,
    /// Do not listen to nftables notifications. By default the daemon listens between
    /// its syncs, to repair another program's change to our tables at once; while it
    /// listens, the kernel builds a notification for every element any program
    /// commits, in every network namespace, which makes large commits of other
    /// programs several times slower. Without it, a change to our chains and rules is
    /// still found within 250 ms (generation poll), a changed element at the next
    /// --sync-period.
    #[arg(long)]
    pub no_nft_listener: bool,

    /// How often to reconcile everything with the kernel when running continuously.
    #[arg(long, visible_alias = "iptables-sync-period", default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,

    /// Path to a kubeconfig file (default: in-cluster credentials, then $KUBECONFIG).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The API server's address (overrides the kubeconfig's).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Accepted for kube-proxy compatibility: watches need no client-side rate limit.
    #[arg(long, default_value_t = 5.0)]
    pub kube_api_qps: f64,

    /// Accepted for kube-proxy compatibility (see --kube-api-qps).
    #[arg(long, default_value_t = 10)]
    pub kube_api_burst: u32,

    /// Where `/healthz` and `/livez` are served (empty: off).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,

    /// Where `/metrics` and `/debug/rules` are served (empty: off).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,

    /// Shortest time between two syncs, so that a burst of changes is one transaction.
    #[arg(long, visible_alias = "iptables-min-sync-period", default_value = "10ms", value_parser = parse_duration)]
    pub min_sync_period: Duration,

    /// Deprecated kube-proxy flag: the port of --healthz-bind-address when that has
    /// none; 0 turns the server off.
    #[arg(long, value_name = "PORT")]
    pub healthz_port: Option<u16>,

    /// Deprecated kube-proxy flag: the port of --metrics-bind-address when that has
    /// none; 0 turns the server off.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,

    /// nf_conntrack_max per CPU (0: leave the limit and --conntrack-min alone).
    #[arg(long, value_name = "N")]
    pub conntrack_max_per_core: Option<u32>,

    /// Lower bound of nf_conntrack_max.
    #[arg(long, value_name = "N")]
    pub conntrack_min: Option<u32>,

    /// nf_conntrack_tcp_timeout_established (0: leave alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_established: Option<Duration>,

    /// nf_conntrack_tcp_timeout_close_wait (0: leave alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,

    /// Set nf_conntrack_tcp_be_liberal.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// nf_conntrack_udp_timeout (0: leave alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Option<Duration>,

    /// nf_conntrack_udp_timeout_stream (0: leave alone).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout_stream: Option<Duration>,

    /// A kube-proxy config file (`kubeproxy.config.k8s.io/v1alpha1`
    /// KubeProxyConfiguration); flags on the command line override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Write the effective configuration as a KubeProxyConfiguration file, then exit.
    #[arg(long, value_name = "PATH")]
    pub write_config_to: Option<PathBuf>,

    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub logging_format: String,

    /// Log verbosity (0: warnings and info, 2: debug, 4+: trace).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,

    /// kube-proxy flags that do not apply to kube-nft-proxy (see [`IGNORED`]).
    #[command(flatten)]
    pub ignored: Ignored,
}

/// kube-proxy's flags that mean nothing for nftables mode or for this program. Each is
/// accepted, so that kube-proxy's command line works unchanged, and reported once at
/// start-up with the reason from [`IGNORED`].
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Accepted for kube-proxy compatibility, without effect")]
pub struct Ignored {
    #[arg(long, value_name = "GATES")]
    feature_gates: Option<String>,
    #[arg(long, value_name = "TYPE")]
    kube_api_content_type: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    bind_address_hard_fail: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    profiling: Option<String>,
    #[arg(long, value_name = "VERSION")]
    show_hidden_metrics_for_version: Option<String>,
    #[arg(long, value_name = "DURATION")]
    config_sync_period: Option<String>,
    #[arg(long, value_name = "N")]
    oom_score_adj: Option<String>,
    #[arg(long, value_name = "BIT")]
    iptables_masquerade_bit: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    iptables_localhost_nodeports: Option<String>,
    #[arg(long, value_name = "DURATION")]
    ipvs_sync_period: Option<String>,
    #[arg(long, value_name = "DURATION")]
    ipvs_min_sync_period: Option<String>,
    #[arg(long, value_name = "NAME")]
    ipvs_scheduler: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    ipvs_strict_arp: Option<String>,
    #[arg(long, value_name = "DURATION")]
    ipvs_tcp_timeout: Option<String>,
    #[arg(long, value_name = "DURATION")]
    ipvs_tcpfin_timeout: Option<String>,
    #[arg(long, value_name = "DURATION")]
    ipvs_udp_timeout: Option<String>,
    #[arg(long, value_name = "PATTERN")]
    vmodule: Option<String>,
    #[arg(long, value_name = "DURATION")]
    log_flush_frequency: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    log_text_split_stream: Option<String>,
    #[arg(long, value_name = "SIZE")]
    log_text_info_buffer_size: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    log_json_split_stream: Option<String>,
    #[arg(long, value_name = "SIZE")]
    log_json_info_buffer_size: Option<String>,
}

/// Each flag of [`Ignored`] (its clap id) and why it has no effect.
pub const IGNORED: &[(&str, &str)] = &[
    (
        "feature_gates",
        "kube-nft-proxy has no feature gates; nftables mode needs none",
    ),
    ("kube_api_content_type", "the API client always speaks JSON"),
    (
        "bind_address_hard_fail",
        "a health or metrics address that cannot be bound always stops kube-nft-proxy",
    ),
    ("profiling", "there is no /debug/pprof (Go profiling)"),
    ("show_hidden_metrics_for_version", "no metric is hidden"),
    (
        "config_sync_period",
        "the watches do not resync; a full reconcile runs every --sync-period",
    ),
    (
        "oom_score_adj",
        "set the container's OOM score through Kubernetes (its QoS class)",
    ),
    (
        "iptables_masquerade_bit",
        "iptables mode only; nftables mode uses nftables.masqueradeBit (our --masquerade-bit)",
    ),
    (
        "iptables_localhost_nodeports",
        "iptables mode only: NodePorts on localhost do not exist in nftables mode",
    ),
    ("ipvs_sync_period", "IPVS mode only"),
    ("ipvs_min_sync_period", "IPVS mode only"),
    ("ipvs_scheduler", "IPVS mode only"),
    ("ipvs_strict_arp", "IPVS mode only"),
    ("ipvs_tcp_timeout", "IPVS mode only"),
    ("ipvs_tcpfin_timeout", "IPVS mode only"),
    ("ipvs_udp_timeout", "IPVS mode only"),
    (
        "vmodule",
        "per-file verbosity is not implemented; -v applies to all our logs",
    ),
    ("log_flush_frequency", "logs are written unbuffered"),
    ("log_text_split_stream", "all logs go to stderr"),
    ("log_text_info_buffer_size", "logs are written unbuffered"),
    ("log_json_split_stream", "all logs go to stderr"),
    ("log_json_info_buffer_size", "logs are written unbuffered"),
];

/// The flags that still count next to `--config` (all others are then taken from the
/// file, as kube-proxy's `Options.Complete` does): what to do, which node, the API
/// server URL, logging (kube-proxy's `copyLogsFromFlags`), and our own flags that the
/// file cannot express.
const WITH_CONFIG: &[&str] = &[
    "config",
    "write_config_to",
    "cleanup",
    "init_only",
    "hostname_override",
    "master",
    "verbosity",
    "logging_format",
    "manifests",
    "once",
    "dry_run",
    "cleanup_kube_proxy",
    "service_counters",
    "no_nft_listener",
];

/// The `--flag` spelling of a clap id.
fn flag_of(id: &str) -> String {
    match id {
        "verbosity" => "--v".to_string(),
        _ => format!("--{}", id.replace('_', "-")),
    }
}

/// Whether an argument was given on the command line.
fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

/// Parses a duration as kube-proxy's flags take it (Go's `time.ParseDuration`: `30s`,
/// `1m30s`, `250ms`, `24h0m0s`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(d) = parse_go_duration(s) {
        return Ok(d);
    }
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where NodePorts answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family.
    Primary,
    /// Host addresses inside these networks.
    Cidrs(Vec<IpNet>),
}

/// Errors in the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value that is not a CIDR where one is required.
    #[error("--{flag}: {value:?} is not a CIDR")]
    BadCidr {
        /// the flag
        flag: &'static str,
        /// the value
        value: String,
    },
    /// A bind address that is not `host:port`.
    #[error("--{flag}: {value:?} is not an address:port")]
    BadAddress {
        /// the flag
        flag: &'static str,
        /// the value
        value: String,
    },
    /// `--proxy-mode` other than `nftables`.
    #[error(
        "--proxy-mode={0:?}: kube-nft-proxy only implements kube-proxy's nftables mode; \
         remove the flag or set it to nftables"
    )]
    ProxyMode(String),
    /// A `--detect-local-mode` kube-proxy does not know.
    #[error(
        "--detect-local-mode={0:?}: must be ClusterCIDR, NodeCIDR, BridgeInterface or \
         InterfaceNamePrefix"
    )]
    DetectLocalMode(String),
    /// The interface (prefix) of the chosen detect-local mode is missing or unusable.
    #[error("--{flag}={value:?}: {why}")]
    BadInterface {
        /// the flag
        flag: &'static str,
        /// the value
        value: String,
        /// what is wrong
        why: &'static str,
    },
}

/// How traffic from pods is told apart from other traffic (kube-proxy's
/// `--detect-local-mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalDetect {
    /// source address in `--cluster-cidr` (no CIDR: not detected, as upstream)
    ClusterCidr,
    /// source address in the Node's `spec.podCIDRs`; nothing is programmed before the
    /// Node has them
    NodeCidr,
    /// arrives on this bridge
    BridgeInterface(String),
    /// arrives on an interface whose name starts with this
    InterfaceNamePrefix(String),
}

impl LocalDetect {
    /// kube-proxy's name of the mode.
    pub fn mode(&self) -> &'static str {
        match self {
            LocalDetect::ClusterCidr => "ClusterCIDR",
            LocalDetect::NodeCidr => "NodeCIDR",
            LocalDetect::BridgeInterface(_) => "BridgeInterface",
            LocalDetect::InterfaceNamePrefix(_) => "InterfaceNamePrefix",
        }
    }
}

/// An interface name (or prefix) that the kernel and nft's text both take: 1-15 bytes
/// (IFNAMSIZ less the NUL), none of what the kernel refuses in a name (`/`, `:`,
/// white space) nor what nft's quoted string or wildcard would read differently
/// (`"`, `\\`, `*`).
fn check_interface(flag: &'static str, value: Option<&str>) -> Result<String, Error> {
    let v = value.map(str::trim).unwrap_or_default();
    let bad = |why| Error::BadInterface {
        flag,
        value: v.to_string(),
        why,
    };
    if v.is_empty() {
        return Err(bad("must be set for this --detect-local-mode"));
    }
    if v.len() > 15 {
        return Err(bad("longer than an interface name (15 bytes)"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"/:\"\\*".contains(&b))
    {
        return Err(bad("not an interface name"));
    }
    Ok(v.to_string())
}

/// The proxy's configuration, resolved and validated.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// manifest paths
    pub manifests: Vec<PathBuf>,
    /// run once
    pub once: bool,
    /// print, do not program
    pub dry_run: bool,
    /// this node's name
    pub node_name: String,
    /// pod networks
    pub cluster_cidrs: Vec<IpNet>,
    /// masquerade everything
    pub masquerade_all: bool,
    /// NodePort addresses
    pub nodeport_addresses: NodePortAddresses,
    /// the masquerade mark (1 << bit)
    pub masquerade_mark: u32,
    /// delete our tables and exit
    pub cleanup: bool,
    /// delete kube-proxy's leftovers after our first sync
    pub cleanup_kube_proxy: bool,
    /// IPVS virtual servers the takeover leaves alone
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// `--service-counters`: per-Service counters in the kernel and on `/metrics`
    pub service_counters: bool,
    /// `--no-nft-listener`: no nftables notifications (drift found by polling only)
    pub no_nft_listener: bool,
    /// full resync period
    pub sync_period: Duration,
    /// shortest time between syncs
    pub min_sync_period: Duration,
    /// kubeconfig path
    pub kubeconfig: Option<PathBuf>,
    /// API server URL override
    pub master: Option<String>,
    /// `/healthz` address
    pub healthz_bind_address: Option<std::net::SocketAddr>,
    /// `/metrics` address
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// log verbosity
    pub verbosity: u8,
    /// `--write-config-to`
    pub write_config_to: Option<PathBuf>,
    /// `text` or `json`
    pub logging_format: String,
    /// conntrack settings (from the config file or `--conntrack-*`), applied through
    /// sysctls; `None`: none given, nothing is written (except with `--init-only`)
    pub conntrack: Option<Conntrack>,
    /// `--detect-local-mode` and its interface
    pub local_detect: LocalDetect,
    /// `--bind-address` when not unspecified: this node's primary IP of its family
    pub node_ip_override: Option<IpAddr>,
    /// `--init-only`
    pub init_only: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

impl ProxyConfig {
    /// Validates the command line.
    pub fn from_cli(cli: Cli) -> Result<ProxyConfig, Error> {
        let mut cluster_cidrs = Vec::new();
        for c in cli
            .cluster_cidr
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            cluster_cidrs.push(parse_cidr_sloppy(c).ok_or_else(|| Error::BadCidr {
                flag: "cluster-cidr",
                value: c.to_string(),
            })?);
        }
        let mut ipvs_exclude_cidrs = Vec::new();
        for c in cli
            .ipvs_exclude_cidrs
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            ipvs_exclude_cidrs.push(parse_cidr_sloppy(c).ok_or_else(|| Error::BadCidr {
                flag: "ipvs-exclude-cidrs",
                value: c.to_string(),
            })?);
        }
        let np: Vec<&str> = cli
            .nodeport_addresses
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        let nodeport_addresses = if np.is_empty() || np == ["primary"] {
            NodePortAddresses::Primary
        } else {
            let mut nets = Vec::new();
            for c in np {
                nets.push(parse_cidr_sloppy(c).ok_or_else(|| Error::BadCidr {
                    flag: "nodeport-addresses",
                    value: c.to_string(),
                })?);
            }
            NodePortAddresses::Cidrs(nets)
        };
        if let Some(m) = cli.proxy_mode.as_deref() {
            if m != crate::kubeproxyconfig::MODE_NFTABLES {
                return Err(Error::ProxyMode(m.to_string()));
            }
        }
        let local_detect = match cli.detect_local_mode.as_deref().map(str::trim) {
            None | Some("") | Some("ClusterCIDR") => LocalDetect::ClusterCidr,
            Some("NodeCIDR") => LocalDetect::NodeCidr,
            Some("BridgeInterface") => LocalDetect::BridgeInterface(check_interface(
                "pod-bridge-interface",
                cli.pod_bridge_interface.as_deref(),
            )?),
            Some("InterfaceNamePrefix") => LocalDetect::InterfaceNamePrefix(check_interface(
                "pod-interface-name-prefix",
                cli.pod_interface_name_prefix.as_deref(),
            )?),
            Some(other) => return Err(Error::DetectLocalMode(other.to_string())),
        };
        // Upstream's detectNodeIPs: a bind address that is not 0.0.0.0 or :: replaces
        // the primary node IP of its family.
        let node_ip_override = match cli.bind_address.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => {
                let ip = parse_ip_sloppy(v).ok_or_else(|| Error::BadAddress {
                    flag: "bind-address",
                    value: v.to_string(),
                })?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        // Upstream's IPPortVar takes `IP` or `IP:port`; a missing port is the default
        // (or --healthz-port / --metrics-port), and port 0 turns the server off.
        let addr = |flag: &'static str,
                    v: &str,
                    port: Option<u16>,
                    default_port: u16|
         -> Result<Option<SocketAddr>, Error> {
            let v = v.trim();
            if v.is_empty() || port == Some(0) {
                return Ok(None);
            }
            if let Ok(a) = v.parse::<SocketAddr>() {
                return Ok(Some(a));
            }
            let ip = parse_ip_sloppy(v).ok_or_else(|| Error::BadAddress {
                flag,
                value: v.to_string(),
            })?;
            Ok(Some(SocketAddr::new(ip, port.unwrap_or(default_port))))
        };
        let healthz_bind_address = addr(
            "healthz-bind-address",
            &cli.healthz_bind_address,
            cli.healthz_port,
            10256,
        )?;
        let metrics_bind_address = addr(
            "metrics-bind-address",
            &cli.metrics_bind_address,
            cli.metrics_port,
            10249,
        )?;
        let conntrack_given = cli.conntrack_max_per_core.is_some()
            || cli.conntrack_min.is_some()
            || cli.conntrack_tcp_timeout_established.is_some()
            || cli.conntrack_tcp_timeout_close_wait.is_some()
            || cli.conntrack_tcp_be_liberal.is_some()
            || cli.conntrack_udp_timeout.is_some()
            || cli.conntrack_udp_timeout_stream.is_some();
        let conntrack = conntrack_given.then(|| {
            let d = Conntrack::default();
            Conntrack {
                max_per_core: cli.conntrack_max_per_core.unwrap_or(d.max_per_core),
                min: cli.conntrack_min.unwrap_or(d.min),
                tcp_established_timeout: cli
                    .conntrack_tcp_timeout_established
                    .unwrap_or(d.tcp_established_timeout),
                tcp_close_wait_timeout: cli
                    .conntrack_tcp_timeout_close_wait
                    .unwrap_or(d.tcp_close_wait_timeout),
                tcp_be_liberal: cli.conntrack_tcp_be_liberal.unwrap_or(d.tcp_be_liberal),
                udp_timeout: cli.conntrack_udp_timeout.unwrap_or(d.udp_timeout),
                udp_stream_timeout: cli
                    .conntrack_udp_timeout_stream
                    .unwrap_or(d.udp_stream_timeout),
            }
        });
        Ok(ProxyConfig {
            manifests: cli.manifests,
            once: cli.once,
            dry_run: cli.dry_run,
            node_name: cli
                .hostname_override
                .map(|h| h.trim().to_lowercase())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(host_name),
            cluster_cidrs,
            masquerade_all: cli.masquerade_all.unwrap_or(false),
            nodeport_addresses,
            masquerade_mark: 1u32 << cli.masquerade_bit,
            cleanup: cli.cleanup,
            cleanup_kube_proxy: cli.cleanup_kube_proxy,
            ipvs_exclude_cidrs,
            service_counters: cli.service_counters,
            no_nft_listener: cli.no_nft_listener,
            sync_period: cli.sync_period,
            min_sync_period: cli.min_sync_period,
            kubeconfig: cli.kubeconfig,
            master: cli.master,
            healthz_bind_address,
            metrics_bind_address,
            verbosity: cli.verbosity,
            write_config_to: cli.write_config_to,
            logging_format: cli.logging_format,
            conntrack,
            local_detect,
            node_ip_override,
            init_only: cli.init_only,
        })
    }
}

impl ProxyConfig {
    /// The effective configuration as a KubeProxyConfiguration (`--write-config-to`).
    pub fn to_kube_proxy_config(&self) -> crate::kubeproxyconfig::KubeProxyConfiguration {
        let mut k = crate::kubeproxyconfig::KubeProxyConfiguration {
            hostname_override: self.node_name.clone(),
            cluster_cidr: self
                .cluster_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
            healthz_bind_address: self
                .healthz_bind_address
                .map(|a| a.to_string())
                .unwrap_or_default(),
            metrics_bind_address: self
                .metrics_bind_address
                .map(|a| a.to_string())
                .unwrap_or_default(),
            node_port_addresses: match &self.nodeport_addresses {
                NodePortAddresses::Primary => vec!["primary".to_string()],
                NodePortAddresses::Cidrs(v) => v.iter().map(|n| n.to_string()).collect(),
            },
            ..Default::default()
        };
        k.detect_local_mode = self.local_detect.mode().into();
        match &self.local_detect {
            LocalDetect::BridgeInterface(i) => k.detect_local.bridge_interface = i.clone(),
            LocalDetect::InterfaceNamePrefix(p) => k.detect_local.interface_name_prefix = p.clone(),
            LocalDetect::ClusterCidr | LocalDetect::NodeCidr => {}
        }
        if let Some(ip) = self.node_ip_override {
            k.bind_address = ip.to_string();
        }
        k.client_connection.kubeconfig = self
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        k.nftables.masquerade_bit = self.masquerade_mark.trailing_zeros();
        k.nftables.masquerade_all = self.masquerade_all;
        k.nftables.sync_period = self.sync_period;
        k.nftables.min_sync_period = self.min_sync_period;
        k.ipvs.exclude_cidrs = self
            .ipvs_exclude_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        k.logging.format = self.logging_format.clone();
        k.logging.verbosity = u32::from(self.verbosity);
        if let Some(c) = &self.conntrack {
            k.conntrack = c.clone();
        }
        k
    }
}

/// Why the command line could not be used.
#[derive(Debug)]
pub enum ArgsError {
    /// clap's own error (also `--help` and `--version`, which it prints and exits on)
    Clap(clap::Error),
    /// the config file could not be read or parsed
    Config(String),
}

/// Parses the command line with `--config` applied as kube-proxy's `Options.Complete`
/// does: with a file, the file decides every setting, and of the command line only the
/// flags in [`WITH_CONFIG`] count (the node name, logging, what to do); every other
/// flag given is reported as ignored. Without a file, the flags decide. Returns the
/// CLI and messages to log once (ignored flags, unknown fields of the file, settings
/// we do not honour).
pub fn parse_args(raw: Vec<String>) -> Result<(Cli, Vec<String>), ArgsError> {
    let m = Cli::command()
        .try_get_matches_from(&raw)
        .map_err(ArgsError::Clap)?;
    let cli = Cli::from_arg_matches(&m).map_err(ArgsError::Clap)?;
    let mut notes: Vec<String> = IGNORED
        .iter()
        .filter(|(id, _)| given(&m, id))
        .map(|(id, why)| format!("{} is accepted and ignored: {why}", flag_of(id)))
        .collect();
    let Some(path) = cli.config.clone() else {
        return Ok((cli, notes));
    };
    let (file, unknown) = crate::kubeproxyconfig::read(&path)
        .map_err(|e| ArgsError::Config(format!("--config {}: {e}", path.display())))?;
    let cmd = Cli::command();
    for id in cmd.get_arguments().map(|a| a.get_id().as_str()) {
        if given(&m, id) && !WITH_CONFIG.contains(&id) && !IGNORED.iter().any(|(i, _)| *i == id) {
            notes.push(format!(
                "{} is ignored: --config {} is given, and kube-proxy then takes this \
                 setting from the file",
                flag_of(id),
                path.display()
            ));
        }
    }
    notes.extend(
        unknown
            .iter()
            .map(|u| format!("--config {}: unknown field {u} ignored", path.display())),
    );
    notes.extend(
        file.warnings()
            .into_iter()
            .map(|w| format!("--config {}: {w}", path.display())),
    );
    let prog = raw
        .first()
        .cloned()
        .unwrap_or_else(|| "kube-nft-proxy".into());
    let from_file = Cli::try_parse_from(std::iter::once(prog).chain(file.to_args()))
        .map_err(ArgsError::Clap)?;
    let cli = Cli {
        manifests: cli.manifests,
        once: cli.once,
        dry_run: cli.dry_run,
        cleanup: cli.cleanup,
        cleanup_kube_proxy: cli.cleanup_kube_proxy,
        service_counters: cli.service_counters,
        no_nft_listener: cli.no_nft_listener,
        init_only: cli.init_only,
        config: cli.config,
        write_config_to: cli.write_config_to,
        master: cli.master,
        hostname_override: cli
            .hostname_override
            .or(from_file.hostname_override.clone()),
        verbosity: if given(&m, "verbosity") {
            cli.verbosity
        } else {
            from_file.verbosity
        },
        logging_format: if given(&m, "logging_format") {
            cli.logging_format
        } else {
            from_file.logging_format.clone()
        },
        ..from_file
    };
    Ok((cli, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ProxyConfig, Error> {
        let mut v = vec!["kube-nft-proxy"];
        v.extend_from_slice(args);
        ProxyConfig::from_cli(Cli::try_parse_from(v).expect("parse"))
    }

    #[test]
    fn flags() {
        let c = parse(&[
            "--manifests",
            "a.yaml",
            "--once",
            "--hostname-override",
            "Node1",
            "--cluster-cidr",
            "10.0.0.0/8,fd00::/64",
            "--masquerade-all",
            "--masquerade-bit",
            "3",
            "--nodeport-addresses",
            "192.168.0.2/32,2001:db8::1/128",
        ])
        .unwrap();
        assert_eq!(c.node_name, "node1");
        assert_eq!(c.cluster_cidrs.len(), 2);
        assert!(c.masquerade_all);
        assert_eq!(c.masquerade_mark, 8);
        assert!(matches!(c.nodeport_addresses, NodePortAddresses::Cidrs(ref v) if v.len() == 2));
        let c = parse(&[
            "--manifests",
            "a",
            "--masquerade-all=false",
            "--nodeport-addresses",
            "primary",
        ])
        .unwrap();
        assert!(!c.masquerade_all);
        assert_eq!(c.nodeport_addresses, NodePortAddresses::Primary);
        assert!(parse(&["--manifests", "a", "--cluster-cidr", "nope"]).is_err());
        assert!(
            parse(&[]).is_ok(),
            "no manifests: the API server is the source"
        );
        assert!(parse(&["--healthz-bind-address", "nope"]).is_err());
        let c = parse(&["--metrics-bind-address", ""]).unwrap();
        assert!(c.metrics_bind_address.is_none());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn config_file_with_flag_overrides_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("knp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.conf");
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.244.0.0/16\nhostnameOverride: from-file\nnftables:\n  masqueradeBit: 5\n  syncPeriod: 1m0s\niptables:\n  masqueradeAll: true\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v = vec![
                "kube-nft-proxy".to_string(),
                "--config".into(),
                f.display().to_string(),
            ];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let (cli, notes) = parse_args(args(&["--hostname-override", "from-flag"])).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("iptables.masqueradeAll")),
            "{notes:?}"
        );
        let c = ProxyConfig::from_cli(cli).unwrap();
        assert_eq!(c.node_name, "from-flag", "the flag overrides the file");
        assert_eq!(c.masquerade_mark, 1 << 5);
        assert_eq!(c.sync_period, Duration::from_secs(60));
        assert_eq!(
            c.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        // --write-config-to output read back gives the same settings.
        let written = crate::kubeproxyconfig::to_yaml(&c.to_kube_proxy_config());
        std::fs::write(&f, written).unwrap();
        let (cli2, _) = parse_args(args(&[])).unwrap();
        let c2 = ProxyConfig::from_cli(cli2).unwrap();
        assert_eq!(c2.node_name, c.node_name);
        assert_eq!(c2.masquerade_mark, c.masquerade_mark);
        assert_eq!(c2.sync_period, c.sync_period);
        assert_eq!(c2.min_sync_period, c.min_sync_period);
        assert_eq!(c2.cluster_cidrs, c.cluster_cidrs);
        assert_eq!(c2.healthz_bind_address, c.healthz_bind_address);
        assert_eq!(c2.metrics_bind_address, c.metrics_bind_address);
        assert_eq!(c2.nodeport_addresses, c.nodeport_addresses);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn args(v: &[&str]) -> Vec<String> {
        std::iter::once("kube-nft-proxy")
            .chain(v.iter().copied())
            .map(String::from)
            .collect()
    }

    /// `--ipvs-exclude-cidrs` (and the file's `ipvs.excludeCIDRs`) reach the takeover:
    /// IPVS virtual servers there are not kube-proxy's.
    #[test]
    fn ipvs_exclude_cidrs_from_flag_and_file() {
        let c = parse(&["--ipvs-exclude-cidrs", "192.0.2.0/24,2001:db8::/64"]).unwrap();
        assert_eq!(
            c.ipvs_exclude_cidrs,
            vec![
                "192.0.2.0/24".parse::<IpNet>().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ]
        );
        assert!(matches!(
            parse(&["--ipvs-exclude-cidrs", "192.0.2.0"]),
            Err(Error::BadCidr { .. })
        ));
        let dir = std::env::temp_dir().join(format!("knp-config-ipvs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.conf");
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\nipvs:\n  excludeCIDRs: [192.0.2.0/24]\n  scheduler: rr\n",
        )
        .unwrap();
        let (cli, notes) = parse_args(args(&["--config", f.to_str().unwrap()])).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("ipvs.scheduler")),
            "{notes:?}"
        );
        assert!(
            !notes.iter().any(|n| n.contains("excludeCIDRs")),
            "{notes:?}"
        );
        let c = ProxyConfig::from_cli(cli).unwrap();
        assert_eq!(
            c.ipvs_exclude_cidrs,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nipvs:\n  excludeCIDRs: [nope]\n",
        )
        .unwrap();
        assert!(parse_args(args(&["--config", f.to_str().unwrap()])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proxy_mode_other_than_nftables_is_refused() {
        assert!(parse(&["--proxy-mode", "nftables"]).is_ok());
        for m in ["iptables", "ipvs", "", "NFTables"] {
            let e = parse(&["--proxy-mode", m]).unwrap_err();
            assert!(matches!(e, Error::ProxyMode(_)), "{m}: {e}");
            assert!(e.to_string().contains("nftables mode"), "{e}");
        }
    }

    #[test]
    fn ignored_flags_are_accepted_and_reported_once_each() {
        let (cli, notes) = parse_args(args(&[
            "--feature-gates=NFTablesProxyMode=true",
            "--oom-score-adj=-998",
            "--profiling",
            "--ipvs-strict-arp=false",
            "--iptables-masquerade-bit",
            "14",
            "--kube-api-content-type=application/json",
            "--config-sync-period=15m",
            "--bind-address-hard-fail",
            "--vmodule=proxier=4",
        ]))
        .unwrap();
        assert!(ProxyConfig::from_cli(cli).is_ok());
        assert_eq!(notes.len(), 9, "{notes:?}");
        assert!(notes.iter().all(|n| n.contains("accepted and ignored")));
        assert!(notes[0].starts_with("--feature-gates "), "{notes:?}");
        // Every table entry names a real argument.
        let cmd = Cli::command();
        for (id, _) in IGNORED {
            assert!(cmd.get_arguments().any(|a| a.get_id() == id), "{id}");
        }
    }

    #[test]
    fn detect_local_modes() {
        assert_eq!(parse(&[]).unwrap().local_detect, LocalDetect::ClusterCidr);
        assert_eq!(
            parse(&["--detect-local-mode", "NodeCIDR"])
                .unwrap()
                .local_detect,
            LocalDetect::NodeCidr
        );
        assert_eq!(
            parse(&[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cbr0"
            ])
            .unwrap()
            .local_detect,
            LocalDetect::BridgeInterface("cbr0".into())
        );
        assert_eq!(
            parse(&[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=veth"
            ])
            .unwrap()
            .local_detect,
            LocalDetect::InterfaceNamePrefix("veth".into())
        );
        // The interface flag of another mode is not needed and not used.
        assert_eq!(
            parse(&["--pod-bridge-interface=cbr0"])
                .unwrap()
                .local_detect,
            LocalDetect::ClusterCidr
        );
        for bad in [
            &["--detect-local-mode=Bridge"][..],
            &["--detect-local-mode=BridgeInterface"],
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=",
            ],
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=a\"b",
            ],
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=veth*",
            ],
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=0123456789abcdef",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bind_address_and_bare_ip_bind_addresses() {
        let c = parse(&["--bind-address", "192.168.5.5"]).unwrap();
        assert_eq!(c.node_ip_override, Some("192.168.5.5".parse().unwrap()));
        assert_eq!(
            parse(&["--bind-address=0.0.0.0"]).unwrap().node_ip_override,
            None
        );
        assert_eq!(
            parse(&["--bind-address=::"]).unwrap().node_ip_override,
            None
        );
        assert!(parse(&["--bind-address=node1"]).is_err());
        // k3s passes a bare IP; kube-proxy appends its port.
        let c = parse(&[
            "--healthz-bind-address=127.0.0.1",
            "--metrics-bind-address=::1",
        ])
        .unwrap();
        assert_eq!(
            c.healthz_bind_address,
            Some("127.0.0.1:10256".parse().unwrap())
        );
        assert_eq!(c.metrics_bind_address, Some("[::1]:10249".parse().unwrap()));
        // The deprecated port flags: a port for a bare IP, 0 turns the server off.
        let c = parse(&[
            "--healthz-bind-address=10.0.0.1",
            "--healthz-port=1234",
            "--metrics-port=0",
        ])
        .unwrap();
        assert_eq!(
            c.healthz_bind_address,
            Some("10.0.0.1:1234".parse().unwrap())
        );
        assert_eq!(c.metrics_bind_address, None);
    }

    #[test]
    fn sync_period_aliases_and_conntrack_flags() {
        let c = parse(&[
            "--iptables-sync-period=1m0s",
            "--iptables-min-sync-period=1s",
        ])
        .unwrap();
        assert_eq!(c.sync_period, Duration::from_secs(60));
        assert_eq!(c.min_sync_period, Duration::from_secs(1));
        assert!(
            parse(&[]).unwrap().conntrack.is_none(),
            "nothing given, nothing written"
        );
        let c = parse(&[
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0s",
            "--conntrack-tcp-be-liberal",
        ])
        .unwrap();
        let ct = c.conntrack.unwrap();
        assert_eq!(ct.max_per_core, 0);
        assert_eq!(ct.tcp_established_timeout, Duration::ZERO);
        assert!(ct.tcp_be_liberal);
        assert_eq!(ct.min, Conntrack::default().min, "kube-proxy's default");
    }

    #[test]
    fn with_config_only_node_logging_and_actions_come_from_flags() {
        let dir = std::env::temp_dir().join(format!("knp-config-prec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.conf");
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: nftables\nclusterCIDR: 10.244.0.0/16\nhostnameOverride: from-file\n\
             detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: cali\n\
             bindAddress: 192.168.1.9\nconntrack:\n  maxPerCore: 0\n",
        )
        .unwrap();
        let path = f.display().to_string();
        let (cli, notes) = parse_args(args(&[
            "--config",
            &path,
            "--cluster-cidr=10.0.0.0/8",
            "--proxy-mode=ipvs",
            "--hostname-override=from-flag",
            "-v",
            "3",
            "--dry-run",
            "--oom-score-adj=-999",
        ]))
        .unwrap();
        let c = ProxyConfig::from_cli(cli).unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.verbosity, 3);
        assert!(c.dry_run);
        assert_eq!(
            c.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            c.local_detect,
            LocalDetect::InterfaceNamePrefix("cali".into())
        );
        assert_eq!(c.node_ip_override, Some("192.168.1.9".parse().unwrap()));
        assert_eq!(c.conntrack.as_ref().map(|c| c.max_per_core), Some(0));
        let ignored: Vec<&String> = notes
            .iter()
            .filter(|n| n.contains("is ignored: --config"))
            .collect();
        assert_eq!(ignored.len(), 2, "{notes:?}");
        assert!(
            ignored[0].starts_with("--cluster-cidr ") || ignored[1].starts_with("--cluster-cidr ")
        );
        assert!(notes
            .iter()
            .any(|n| n.starts_with("--oom-score-adj is accepted and ignored")));
        // --write-config-to output keeps the detect-local settings.
        let text = crate::kubeproxyconfig::to_yaml(&c.to_kube_proxy_config());
        std::fs::write(&f, text).unwrap();
        let (cli, _) = parse_args(args(&["--config", &path])).unwrap();
        let c2 = ProxyConfig::from_cli(cli).unwrap();
        assert_eq!(c2.local_detect, c.local_detect);
        assert_eq!(c2.node_ip_override, c.node_ip_override);
        assert_eq!(c2.conntrack, c.conntrack);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `--service-counters` is off by default, and ours: the file has no field for it,
    /// so next to `--config` the flag still counts (and is not reported as ignored).
    #[test]
    /// Our own switches (no kube-proxy counterpart) are taken with or without a
    /// config file, without a warning.
    fn own_switches_count_with_or_without_a_config_file() {
        type Get = fn(&ProxyConfig) -> bool;
        let switches: [(&str, Get); 2] = [
            ("--service-counters", |c| c.service_counters),
            ("--no-nft-listener", |c| c.no_nft_listener),
        ];
        let dir = std::env::temp_dir().join(format!("knp-config-ctr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.conf");
        std::fs::write(
            &f,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
        )
        .unwrap();
        let path = f.display().to_string();
        for (switch, get) in switches {
            assert!(!get(&parse(&[]).unwrap()), "{switch}");
            assert!(get(&parse(&[switch]).unwrap()), "{switch}");
            for (flag, on) in [(None, false), (Some(switch), true)] {
                let mut a = vec!["--config", path.as_str()];
                a.extend(flag);
                let (cli, notes) = parse_args(args(&a)).unwrap();
                assert!(!notes.iter().any(|n| n.contains(&switch[2..])), "{notes:?}");
                assert_eq!(get(&ProxyConfig::from_cli(cli).unwrap()), on, "{switch}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
