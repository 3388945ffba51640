//! kube-proxy's configuration file: `kubeproxy.config.k8s.io/v1alpha1`
//! `KubeProxyConfiguration`, YAML or JSON, as kubeadm and most installers write it into
//! the `kube-proxy` ConfigMap's `config.conf`.
//!
//! Only the fields that mean something to kube-nft-proxy are typed (see
//! [`KubeProxyConfiguration`]); every other key (the `iptables` and `winkernel`
//! sections, `ipvs` but for `excludeCIDRs`, `featureGates`, `oomScoreAdj`, ...) is
//! accepted and reported by its dotted
//! path, so the caller can warn about each instead of failing on a file written for
//! upstream kube-proxy.
//!
//! Loading follows upstream's decoding and defaulting: a `null` value is the same as an
//! absent key, and the fields upstream treats as "unset when zero" (durations, `qps`,
//! `burst`, `contentType`, empty bind addresses) get their defaults. After loading,
//! [`KubeProxyConfiguration::to_args`] gives the equivalent command line of our binary
//! (`config::parse_args` then keeps only the flags kube-proxy honours next to
//! `--config`); [`merge_args`] combines such a list with a command line whose flags win.
//!
//! This module uses no other module of the crate (only serde, serde_json, serde_yaml_ng
//! and thiserror), so tests can include it with `#[path]`.

use crate::model::convert::parse_ip_sloppy;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only `kind` accepted.
pub const KIND: &str = "KubeProxyConfiguration";
/// The only `mode` we implement.
pub const MODE_NFTABLES: &str = "nftables";

/// Upstream's `ports.ProxyHealthzPort`.
const HEALTHZ_PORT: u16 = 10256;
/// Upstream's `ports.ProxyStatusPort` (metrics).
const METRICS_PORT: u16 = 10249;
/// Upstream's default `clientConnection.contentType`.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// Upstream's default for `nftables.syncPeriod` (and ours).
const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Our default for `nftables.minSyncPeriod`. Upstream's is 1s; we keep 10ms (the
/// default of our `--min-sync-period` flag) when the file omits the field or sets it to
/// 0, because the point of kube-nft-proxy is change-to-kernel latency in milliseconds
/// (see the README) and a sync of an element-only change costs microseconds.
const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_millis(10);

/// Errors in a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// the file
        path: String,
        /// why
        #[source]
        source: std::io::Error,
    },
    /// Neither YAML nor JSON.
    #[error("not YAML or JSON: {0}")]
    Syntax(String),
    /// Valid YAML/JSON, but not an object (empty, a list, a scalar).
    #[error("not a KubeProxyConfiguration object: the document is {0}")]
    NotAnObject(&'static str),
    /// `apiVersion` missing or not [`API_VERSION`].
    #[error("apiVersion is {}, expected {API_VERSION:?}", show(.found))]
    ApiVersion {
        /// what the file says (`None`: missing or not a string)
        found: Option<String>,
    },
    /// `kind` missing or not [`KIND`].
    #[error("kind is {}, expected {KIND:?}", show(.found))]
    Kind {
        /// what the file says (`None`: missing or not a string)
        found: Option<String>,
    },
    /// A known field with a value of the wrong type or out of range.
    #[error("{field}: {message}")]
    Field {
        /// dotted path, e.g. `nftables.masqueradeBit`
        field: String,
        /// what is wrong with it
        message: String,
    },
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "missing (or not a string)".to_string(),
    }
}

fn field_error(field: &str, message: impl Into<String>) -> Error {
    Error::Field {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `clientConnection`: how to reach the API server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientConnection {
    /// Path to a kubeconfig (`--kubeconfig`); empty: in-cluster credentials.
    pub kubeconfig: String,
    /// Client-side rate limit (`--kube-api-qps`; accepted, not needed by watches).
    pub qps: f64,
    /// Client-side burst (`--kube-api-burst`; accepted, not needed by watches).
    pub burst: u32,
    /// Read and written back; our client always speaks JSON.
    pub content_type: String,
    /// Read and written back; our client always speaks JSON.
    pub accept_content_types: String,
}

impl Default for ClientConnection {
    fn default() -> Self {
        ClientConnection {
            kubeconfig: String::new(),
            qps: 5.0,
            burst: 10,
            content_type: PROTOBUF.to_string(),
            accept_content_types: String::new(),
        }
    }
}

/// `nftables`: the settings of kube-proxy's nftables mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NfTables {
    /// `--masquerade-bit` (0-31).
    pub masquerade_bit: u32,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--sync-period`.
    #[serde(with = "go_duration")]
    pub sync_period: Duration,
    /// `--min-sync-period`.
    #[serde(with = "go_duration")]
    pub min_sync_period: Duration,
}

impl Default for NfTables {
    fn default() -> Self {
        NfTables {
            masquerade_bit: 14,
            masquerade_all: false,
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
        }
    }
}

/// `ipvs`: of kube-proxy's IPVS mode, only what the takeover from it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ipvs {
    /// `--ipvs-exclude-cidrs`: IPVS virtual servers that are not kube-proxy's, left in
    /// place by `--cleanup-kube-proxy`.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Vec<String>,
}

/// `conntrack`: the conntrack sysctls kube-proxy sets at start-up. kube-nft-proxy reads
/// and writes these back but does not set any sysctl (see
/// [`KubeProxyConfiguration::warnings`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Conntrack {
    /// `nf_conntrack_max` per CPU (0: leave the limit alone).
    pub max_per_core: u32,
    /// Lower bound of `nf_conntrack_max`.
    pub min: u32,
    /// `nf_conntrack_tcp_timeout_established`.
    #[serde(with = "go_duration")]
    pub tcp_established_timeout: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    #[serde(with = "go_duration")]
    pub tcp_close_wait_timeout: Duration,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout` (0: leave alone).
    #[serde(with = "go_duration")]
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream` (0: leave alone).
    #[serde(with = "go_duration")]
    pub udp_stream_timeout: Duration,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// `detectLocal`: the interface of the interface-based `detectLocalMode`s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DetectLocal {
    /// `--pod-bridge-interface` (mode `BridgeInterface`).
    pub bridge_interface: String,
    /// `--pod-interface-name-prefix` (mode `InterfaceNamePrefix`).
    pub interface_name_prefix: String,
}

/// `logging`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Logging {
    /// Log format; only `text` is implemented.
    pub format: String,
    /// `-v`.
    pub verbosity: u32,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            format: "text".to_string(),
            verbosity: 0,
        }
    }
}

/// The fields of kube-proxy's `KubeProxyConfiguration` that apply to kube-nft-proxy,
/// after upstream's defaulting.
///
/// `Default` is kube-proxy's default for every field, with two deliberate exceptions:
/// `nftables.minSyncPeriod` is 10ms (upstream: 1s; see `DEFAULT_MIN_SYNC_PERIOD`), and
/// `mode` is `nftables` (upstream: empty, which means iptables on Linux) so that a file
/// written by `--write-config-to` means the same to upstream kube-proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// `--bind-address`: when not unspecified, this node's primary IP of its family
    /// (as upstream, where no socket is bound to it); also decides the family of the
    /// default health and metrics addresses.
    #[serde(default)]
    pub bind_address: String,
    /// API server connection.
    pub client_connection: ClientConnection,
    /// `--cluster-cidr`: pod networks, comma separated (one per family).
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// `--detect-local-mode`: `ClusterCIDR` (or empty, which means the same),
    /// `NodeCIDR`, `BridgeInterface` or `InterfaceNamePrefix`.
    pub detect_local_mode: String,
    /// The interface of the interface-based modes.
    pub detect_local: DetectLocal,
    /// `--hostname-override`.
    pub hostname_override: String,
    /// `--healthz-bind-address`.
    #[serde(default)]
    pub healthz_bind_address: String,
    /// `--metrics-bind-address`.
    #[serde(default)]
    pub metrics_bind_address: String,
    /// `--nodeport-addresses`: CIDRs, or the single word `primary`.
    pub node_port_addresses: Vec<String>,
    /// Only `nftables` is implemented; anything else is warned about and ignored.
    pub mode: String,
    /// nftables mode settings.
    pub nftables: NfTables,
    /// IPVS mode settings the takeover from it reads.
    pub ipvs: Ipvs,
    /// conntrack sysctls (`--conntrack-*`).
    pub conntrack: Conntrack,
    /// Logging.
    pub logging: Logging,
}

impl Default for KubeProxyConfiguration {
    fn default() -> Self {
        KubeProxyConfiguration {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            bind_address: "0.0.0.0".to_string(),
            client_connection: ClientConnection::default(),
            cluster_cidr: String::new(),
            detect_local_mode: String::new(),
            detect_local: DetectLocal::default(),
            hostname_override: String::new(),
            healthz_bind_address: format!("0.0.0.0:{HEALTHZ_PORT}"),
            metrics_bind_address: format!("127.0.0.1:{METRICS_PORT}"),
            node_port_addresses: Vec::new(),
            mode: MODE_NFTABLES.to_string(),
            nftables: NfTables::default(),
            ipvs: Ipvs::default(),
            conntrack: Conntrack::default(),
            logging: Logging::default(),
        }
    }
}

/// Parses a `KubeProxyConfiguration` (YAML or JSON). Returns the configuration with
/// upstream's defaults applied and the dotted paths of every key we do not use (e.g.
/// `iptables.masqueradeAll`, `featureGates.NFTablesProxyMode`, `oomScoreAdj`), in file
/// order, for the caller to warn about. Also see [`KubeProxyConfiguration::warnings`].
pub fn parse(text: &str) -> Result<(KubeProxyConfiguration, Vec<String>), Error> {
    // The YAML parser's time is quadratic in nesting depth; a configuration nests
    // three levels.
    let depth = crate::source::manifests::MAX_DEPTH;
    if let Err(line) = crate::source::manifests::nesting_within(text, depth) {
        return Err(Error::Syntax(format!(
            "nested deeper than {depth} levels at line {line}"
        )));
    }
    let mut root: Value = if text.trim_start().starts_with('{') {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Syntax(e.to_string()))?;
        serde_yaml_ng::to_value(json).map_err(|e| Error::Syntax(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| Error::Syntax(e.to_string()))?
    };
    let map = match &mut root {
        Value::Mapping(m) => m,
        Value::Null => return Err(Error::NotAnObject("empty")),
        Value::Sequence(_) => return Err(Error::NotAnObject("a list")),
        _ => return Err(Error::NotAnObject("a scalar")),
    };
    // Go decodes `null` as "unset": the default applies.
    strip_nulls(map);
    let string_at = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let api_version = string_at("apiVersion");
    if api_version.as_deref() != Some(API_VERSION) {
        return Err(Error::ApiVersion { found: api_version });
    }
    let kind = string_at("kind");
    if kind.as_deref() != Some(KIND) {
        return Err(Error::Kind { found: kind });
    }
    let known = known_fields();
    let mut unknown = Vec::new();
    prune_unknown(map, &known, "", &mut unknown);
    let mut cfg: KubeProxyConfiguration =
        serde_yaml_ng::from_value(root.clone()).map_err(|e| locate_error(&root, &known, e))?;
    cfg.apply_defaults();
    cfg.validate()?;
    Ok((cfg, unknown))
}

/// Reads and parses a configuration file (see [`parse`]).
pub fn read(path: &Path) -> Result<(KubeProxyConfiguration, Vec<String>), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// The configuration as YAML; [`parse`] reads it back to an equal value (used by
/// `--write-config-to`).
pub fn to_yaml(cfg: &KubeProxyConfiguration) -> String {
    serde_yaml_ng::to_string(cfg).expect("plain strings, numbers and lists always serialize")
}

/// Combines the arguments from a configuration file ([`KubeProxyConfiguration::to_args`])
/// with the command line, the command line winning: every file argument whose flag
/// also appears on the command line (`--flag`, `--flag=value`, `--flag value`, or `-v`
/// for `--v`) is dropped, then the command line follows. Neither list includes the
/// program name. Dropping (rather than repeating) is needed because clap rejects a
/// single-valued flag given twice, and appends list flags such as `--cluster-cidr`.
pub fn merge_args(file_args: &[String], cli_args: &[String]) -> Vec<String> {
    let mut on_cli = Vec::new();
    for a in cli_args {
        if a == "--" {
            break;
        }
        if let Some(name) = flag_name(a) {
            on_cli.push(name);
        }
    }
    file_args
        .iter()
        .filter(|a| flag_name(a).is_none_or(|n| !on_cli.contains(&n)))
        .chain(cli_args.iter())
        .cloned()
        .collect()
}

/// The flag an argument names: `--name[=v]` → `name`; `-v`, `-v2`, `-v=2` → `v` (our
/// only short flag with a value is `-v`, whose long form is `--v`).
fn flag_name(arg: &str) -> Option<String> {
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or_default();
        return (!name.is_empty()).then(|| name.to_string());
    }
    let short = arg.strip_prefix('-')?;
    let c = short.chars().next()?;
    c.is_ascii_alphabetic().then(|| c.to_string())
}

impl KubeProxyConfiguration {
    /// The equivalent command-line flags of kube-nft-proxy (without the program name),
    /// one `--flag=value` per element. Empty strings and lists are left out (the flag's
    /// own default then applies); everything else is given explicitly. Fields without a
    /// flag of ours (`mode`, `contentType`, ...) do not appear.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: &str| args.push(format!("--{flag}={value}"));
        if !self.hostname_override.trim().is_empty() {
            push("hostname-override", self.hostname_override.trim());
        }
        if !self.cluster_cidr.trim().is_empty() {
            push("cluster-cidr", self.cluster_cidr.trim());
        }
        push("masquerade-all", &self.nftables.masquerade_all.to_string());
        push("masquerade-bit", &self.nftables.masquerade_bit.to_string());
        let np: Vec<&str> = self
            .node_port_addresses
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if !np.is_empty() {
            push("nodeport-addresses", &np.join(","));
        }
        let exclude: Vec<&str> = self
            .ipvs
            .exclude_cidrs
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if !exclude.is_empty() {
            push("ipvs-exclude-cidrs", &exclude.join(","));
        }
        push("sync-period", &flag_duration(self.nftables.sync_period));
        push(
            "min-sync-period",
            &flag_duration(self.nftables.min_sync_period),
        );
        push("healthz-bind-address", &self.healthz_bind_address);
        push("metrics-bind-address", &self.metrics_bind_address);
        if !self.client_connection.kubeconfig.trim().is_empty() {
            push("kubeconfig", self.client_connection.kubeconfig.trim());
        }
        push("kube-api-qps", &self.client_connection.qps.to_string());
        push("kube-api-burst", &self.client_connection.burst.to_string());
        push("v", &self.logging.verbosity.min(u8::MAX as u32).to_string());
        if matches!(self.logging.format.as_str(), "text" | "json") {
            push("logging-format", &self.logging.format);
        }
        push("bind-address", self.bind_address.trim());
        if !self.detect_local_mode.trim().is_empty() {
            push("detect-local-mode", self.detect_local_mode.trim());
        }
        let dl = &self.detect_local;
        if !dl.bridge_interface.trim().is_empty() {
            push("pod-bridge-interface", dl.bridge_interface.trim());
        }
        if !dl.interface_name_prefix.trim().is_empty() {
            push("pod-interface-name-prefix", dl.interface_name_prefix.trim());
        }
        let ct = &self.conntrack;
        push("conntrack-max-per-core", &ct.max_per_core.to_string());
        push("conntrack-min", &ct.min.to_string());
        push(
            "conntrack-tcp-timeout-established",
            &flag_duration(ct.tcp_established_timeout),
        );
        push(
            "conntrack-tcp-timeout-close-wait",
            &flag_duration(ct.tcp_close_wait_timeout),
        );
        push("conntrack-tcp-be-liberal", &ct.tcp_be_liberal.to_string());
        push("conntrack-udp-timeout", &flag_duration(ct.udp_timeout));
        push(
            "conntrack-udp-timeout-stream",
            &flag_duration(ct.udp_stream_timeout),
        );
        args
    }

    /// Settings that are valid but that kube-nft-proxy does not honour, one message
    /// each, for the caller to log as warnings (together with the unknown fields
    /// [`parse`] returns).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        match self.mode.as_str() {
            MODE_NFTABLES => {}
            "" => w.push(
                "mode is empty (kube-proxy's iptables mode on Linux); kube-nft-proxy always \
                 programs nftables"
                    .to_string(),
            ),
            m => w.push(format!(
                "mode {m:?} is ignored; kube-nft-proxy always programs nftables"
            )),
        }
        if !matches!(self.logging.format.as_str(), "" | "text" | "json") {
            w.push(format!(
                "logging.format {:?} is not implemented; logs are text",
                self.logging.format
            ));
        }
        w
    }

    /// Upstream's `SetDefaults_KubeProxyConfiguration` for the fields whose zero value
    /// means "unset" (pointer fields were handled by serde defaults and null stripping).
    fn apply_defaults(&mut self) {
        if self.bind_address.is_empty() {
            self.bind_address = "0.0.0.0".to_string();
        }
        let v4 = parse_ip_sloppy(&self.bind_address).is_some_and(|ip| ip.is_ipv4());
        let (healthz_host, metrics_host) = if v4 {
            ("0.0.0.0", "127.0.0.1")
        } else {
            ("[::]", "[::1]")
        };
        self.healthz_bind_address =
            with_port(&self.healthz_bind_address, healthz_host, HEALTHZ_PORT);
        self.metrics_bind_address =
            with_port(&self.metrics_bind_address, metrics_host, METRICS_PORT);
        if self.nftables.sync_period.is_zero() {
            self.nftables.sync_period = DEFAULT_SYNC_PERIOD;
        }
        if self.nftables.min_sync_period.is_zero() {
            self.nftables.min_sync_period = DEFAULT_MIN_SYNC_PERIOD;
        }
        let cc = &mut self.client_connection;
        if cc.content_type.is_empty() {
            cc.content_type = PROTOBUF.to_string();
        }
        if cc.qps == 0.0 {
            cc.qps = 5.0;
        }
        if cc.burst == 0 {
            cc.burst = 10;
        }
        if self.logging.format.is_empty() {
            self.logging.format = "text".to_string();
        }
    }

    /// Upstream's validation of the fields we use.
    fn validate(&self) -> Result<(), Error> {
        if !matches!(
            self.detect_local_mode.as_str(),
            "" | "ClusterCIDR" | "NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix"
        ) {
            return Err(field_error(
                "detectLocalMode",
                format!(
                    "{:?} is not ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix",
                    self.detect_local_mode
                ),
            ));
        }
        for (mode, field, v) in [
            (
                "BridgeInterface",
                "detectLocal.bridgeInterface",
                &self.detect_local.bridge_interface,
            ),
            (
                "InterfaceNamePrefix",
                "detectLocal.interfaceNamePrefix",
                &self.detect_local.interface_name_prefix,
            ),
        ] {
            if self.detect_local_mode == mode && v.trim().is_empty() {
                return Err(field_error(
                    field,
                    format!("must be set when detectLocalMode is {mode}"),
                ));
            }
        }
        if self.nftables.masquerade_bit > 31 {
            return Err(field_error(
                "nftables.masqueradeBit",
                format!("must be 0-31, not {}", self.nftables.masquerade_bit),
            ));
        }
        if parse_ip_sloppy(&self.bind_address).is_none() {
            return Err(field_error(
                "bindAddress",
                format!("{:?} is not an IP address", self.bind_address),
            ));
        }
        for (field, v) in [
            ("healthzBindAddress", &self.healthz_bind_address),
            ("metricsBindAddress", &self.metrics_bind_address),
        ] {
            if v.parse::<SocketAddr>().is_err() {
                return Err(field_error(
                    field,
                    format!("{v:?} is not an IP address with a port"),
                ));
            }
        }
        for c in self
            .cluster_cidr
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            if !is_cidr_sloppy(c) {
                return Err(field_error("clusterCIDR", format!("{c:?} is not a CIDR")));
            }
        }
        let np: Vec<&str> = self.node_port_addresses.iter().map(|s| s.trim()).collect();
        if np.contains(&"primary") {
            if np.len() > 1 {
                return Err(field_error(
                    "nodePortAddresses",
                    "\"primary\" cannot be combined with CIDRs",
                ));
            }
        } else if let Some(bad) = np.iter().find(|c| !is_cidr_sloppy(c)) {
            return Err(field_error(
                "nodePortAddresses",
                format!("{bad:?} is not a CIDR or \"primary\""),
            ));
        }
        if let Some(bad) = self
            .ipvs
            .exclude_cidrs
            .iter()
            .map(|c| c.trim())
            .find(|c| !c.is_empty() && !is_cidr_sloppy(c))
        {
            return Err(field_error(
                "ipvs.excludeCIDRs",
                format!("{bad:?} is not a CIDR"),
            ));
        }
        if self.client_connection.qps.is_nan() || self.client_connection.qps < 0.0 {
            return Err(field_error("clientConnection.qps", "must not be negative"));
        }
        Ok(())
    }
}

/// Upstream's defaulting of a bind address: empty → `host:port`; a bare IP gets the
/// port appended (IPv6 in brackets); anything else is left for validation.
fn with_port(addr: &str, default_host: &str, port: u16) -> String {
    if addr.is_empty() {
        return format!("{default_host}:{port}");
    }
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    match parse_ip_sloppy(addr) {
        Some(IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        None => addr.to_string(),
    }
}

/// `address/length` with a length that fits the family.
fn is_cidr_sloppy(s: &str) -> bool {
    crate::model::convert::parse_cidr_sloppy(s).is_some()
}

/// Removes `null` values from mappings, recursively.
fn strip_nulls(map: &mut Mapping) {
    map.retain(|_, v| !v.is_null());
    for (_, v) in map.iter_mut() {
        if let Value::Mapping(m) = v {
            strip_nulls(m);
        }
    }
}

/// Every key we read, with the default of each (the shape [`parse`] compares against).
fn known_fields() -> Mapping {
    match serde_yaml_ng::to_value(KubeProxyConfiguration::default()) {
        Ok(Value::Mapping(m)) => m,
        _ => unreachable!("a struct serializes to a mapping"),
    }
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Removes the keys of `map` that `known` does not have, recording their dotted paths
/// (an unknown section is reported by its leaves: `iptables.masqueradeAll`, ...).
fn prune_unknown(map: &mut Mapping, known: &Mapping, prefix: &str, out: &mut Vec<String>) {
    map.retain(|k, v| {
        let name = key_name(k);
        let path = join(prefix, &name);
        match known.get(name.as_str()) {
            Some(Value::Mapping(known_sub)) => {
                if let Value::Mapping(sub) = v {
                    prune_unknown(sub, known_sub, &path, out);
                }
                true
            }
            Some(_) if k.is_string() => true,
            _ => {
                leaves(v, &path, out);
                false
            }
        }
    });
}

fn leaves(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                leaves(v, &join(path, &key_name(k)), out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

/// Finds the field a failed deserialization is about: each known leaf of the input is
/// tried on its own in an otherwise default document, in file order; the first one that
/// fails is named with the error serde gives for it.
fn locate_error(input: &Value, known: &Mapping, whole: serde_yaml_ng::Error) -> Error {
    let mut paths = Vec::new();
    if let Value::Mapping(m) = input {
        known_leaves(m, known, &mut Vec::new(), &mut paths);
    }
    for path in paths {
        let Some(value) = get_path(input, &path) else {
            continue;
        };
        let mut probe = Value::Mapping(known.clone());
        set_path(&mut probe, &path, value.clone());
        if let Err(e) = serde_yaml_ng::from_value::<KubeProxyConfiguration>(probe) {
            return field_error(&path.join("."), e.to_string());
        }
    }
    field_error("(document)", whole.to_string())
}

fn known_leaves(
    m: &Mapping,
    known: &Mapping,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    for (k, v) in m {
        let name = key_name(k);
        prefix.push(name.clone());
        match (v, known.get(name.as_str())) {
            (Value::Mapping(sub), Some(Value::Mapping(known_sub))) => {
                known_leaves(sub, known_sub, prefix, out)
            }
            _ => out.push(prefix.clone()),
        }
        prefix.pop();
    }
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k.as_str()))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        match cur.get_mut(k.as_str()) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Value::Mapping(m) = cur {
        m.insert(Value::String(path[path.len() - 1].clone()), value);
    }
}

/// A duration as our own flags take it (one unit: `30s`, `10ms`, `0.25ms`).
fn flag_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_nanos() as f64 / 1e6)
    }
}

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal numbers,
/// each with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`),
/// e.g. `30s`, `1m0s`, `1h0m0s`, `1.5s`, `250ms`; `0` alone is allowed. Negative
/// durations are rejected.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{s:?} is not a duration ({why})");
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (int, r) = rest.split_at(digits(rest));
        let (frac, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", r),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_len = r
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        if int.len() > 20 {
            return Err(bad("too large"));
        }
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad("too large"))?
        };
        let mut v = whole.checked_mul(scale).ok_or_else(|| bad("too large"))?;
        if !frac.is_empty() {
            let f = &frac[..frac.len().min(18)];
            let fv: u128 = f.parse().map_err(|_| bad("bad fraction"))?;
            v += fv * scale / 10u128.pow(f.len() as u32);
        }
        total = total.checked_add(v).ok_or_else(|| bad("too large"))?;
        rest = r;
    }
    if total > i64::MAX as u128 {
        return Err(bad("too large"));
    }
    if negative && total > 0 {
        return Err(bad("negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration as Go's `time.Duration.String` does: `0s`, `250ms`, `1.5s`,
/// `1m0s`, `24h0m0s`, `1.5µs`.
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    // `int.frac` of ns / unit, trailing zeros of the fraction dropped.
    let decimal = |unit: u128, width: usize| {
        let mut s = (ns / unit).to_string();
        let rem = ns % unit;
        if rem > 0 {
            let f = format!("{rem:0width$}");
            let _ = write!(s, ".{}", f.trim_end_matches('0'));
        }
        s
    };
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}\u{b5}s", decimal(1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", decimal(1_000_000, 6));
    }
    let secs = ns / 1_000_000_000;
    let mut out = String::new();
    if secs >= 3600 {
        let _ = write!(out, "{}h", secs / 3600);
    }
    if secs >= 60 {
        let _ = write!(out, "{}m", (secs / 60) % 60);
    }
    let sub = ns % 1_000_000_000;
    let _ = write!(out, "{}", secs % 60);
    if sub > 0 {
        let f = format!("{sub:09}");
        let _ = write!(out, ".{}", f.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Serde for `metav1.Duration`: a Go duration string.
mod go_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_go_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"1m0s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                super::parse_go_duration(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kube-proxy ConfigMap as kubeadm writes it (nftables mode, dual-stack), with
    /// the sections and fields we ignore.
    const UPSTREAM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
featureGates:
  NFTablesProxyMode: true
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 2
metricsBindAddress: 0.0.0.0
mode: nftables
nftables:
  masqueradeAll: true
  masqueradeBit: 5
  minSyncPeriod: 250ms
  syncPeriod: 1m0s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    #[test]
    fn upstream_file() {
        let (c, unknown) = parse(UPSTREAM).unwrap();
        assert_eq!(c.cluster_cidr, "10.244.0.0/16,fd00:10:244::/56");
        assert_eq!(
            c.client_connection.kubeconfig,
            "/var/lib/kube-proxy/kubeconfig.conf"
        );
        assert_eq!(c.client_connection.qps, 5.0, "0 means unset");
        assert_eq!(c.client_connection.burst, 10);
        assert_eq!(c.client_connection.content_type, PROTOBUF);
        assert_eq!(c.healthz_bind_address, "0.0.0.0:10256");
        assert_eq!(c.metrics_bind_address, "0.0.0.0:10249", "port appended");
        assert_eq!(c.mode, "nftables");
        assert!(c.nftables.masquerade_all);
        assert_eq!(c.nftables.masquerade_bit, 5);
        assert_eq!(c.nftables.sync_period, Duration::from_secs(60));
        assert_eq!(c.nftables.min_sync_period, Duration::from_millis(250));
        assert_eq!(c.conntrack, Conntrack::default(), "null means unset");
        assert!(c.node_port_addresses.is_empty());
        assert_eq!(c.logging.verbosity, 2);
        assert_eq!(c.logging.format, "text");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let expect = [
            "bindAddressHardFail",
            "configSyncPeriod",
            "enableProfiling",
            "featureGates.NFTablesProxyMode",
            "iptables.masqueradeAll",
            "iptables.minSyncPeriod",
            "iptables.syncPeriod",
            "ipvs.minSyncPeriod",
            "ipvs.scheduler",
            "ipvs.strictARP",
            "ipvs.syncPeriod",
            "ipvs.tcpFinTimeout",
            "ipvs.tcpTimeout",
            "ipvs.udpTimeout",
            "logging.flushFrequency",
            "logging.options.json.infoBufferSize",
            "logging.options.text.infoBufferSize",
            "oomScoreAdj",
            "portRange",
            "showHiddenMetricsForVersion",
            "winkernel.enableDSR",
            "winkernel.forwardHealthCheckVip",
            "winkernel.networkName",
            "winkernel.rootHnsEndpointName",
            "winkernel.sourceVip",
        ];
        assert_eq!(unknown, expect);
        assert_eq!(
            c.to_args(),
            [
                "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
                "--masquerade-all=true",
                "--masquerade-bit=5",
                "--sync-period=60s",
                "--min-sync-period=250ms",
                "--healthz-bind-address=0.0.0.0:10256",
                "--metrics-bind-address=0.0.0.0:10249",
                "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
                "--kube-api-qps=5",
                "--kube-api-burst=10",
                "--v=2",
                "--logging-format=text",
                "--bind-address=0.0.0.0",
                "--conntrack-max-per-core=32768",
                "--conntrack-min=131072",
                "--conntrack-tcp-timeout-established=86400s",
                "--conntrack-tcp-timeout-close-wait=3600s",
                "--conntrack-tcp-be-liberal=false",
                "--conntrack-udp-timeout=0s",
                "--conntrack-udp-timeout-stream=0s",
            ]
        );
    }

    #[test]
    fn json_and_minimal() {
        let json = r#"{
	"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
	"kind": "KubeProxyConfiguration",
	"hostnameOverride": "node-1",
	"nodePortAddresses": ["192.168.0.0/24", "fd00::/64"],
	"conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "2h"},
	"foo": 1
}"#;
        let (c, unknown) = parse(json).unwrap();
        assert_eq!(unknown, ["foo"]);
        assert_eq!(c.hostname_override, "node-1");
        assert_eq!(c.node_port_addresses, ["192.168.0.0/24", "fd00::/64"]);
        assert_eq!(c.conntrack.max_per_core, 0, "explicit 0 is kept");
        assert_eq!(
            c.conntrack.tcp_established_timeout,
            Duration::from_secs(7200)
        );
        assert!(c.warnings().is_empty(), "conntrack is applied");
        let (c, unknown) =
            parse("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n")
                .unwrap();
        assert!(unknown.is_empty());
        assert_eq!(c, KubeProxyConfiguration::default());
    }

    #[test]
    fn defaults() {
        let d = KubeProxyConfiguration::default();
        assert_eq!(d.healthz_bind_address, "0.0.0.0:10256");
        assert_eq!(d.metrics_bind_address, "127.0.0.1:10249");
        assert_eq!(d.nftables.masquerade_bit, 14);
        assert_eq!(d.nftables.sync_period, Duration::from_secs(30));
        assert_eq!(d.nftables.min_sync_period, Duration::from_millis(10));
        assert_eq!(d.conntrack.max_per_core, 32768);
        assert_eq!(d.conntrack.min, 131072);
        assert_eq!(
            d.conntrack.tcp_established_timeout,
            Duration::from_secs(86400)
        );
        assert_eq!(
            d.conntrack.tcp_close_wait_timeout,
            Duration::from_secs(3600)
        );
        assert!(d.warnings().is_empty());
        // Explicit zeros are "unset" as upstream; an IPv6 bindAddress moves the defaults.
        let (c, _) = parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             bindAddress: '::'\nhealthzBindAddress: ''\nnftables:\n  syncPeriod: 0s\n  \
             minSyncPeriod: '0'\n",
        )
        .unwrap();
        assert_eq!(c.healthz_bind_address, "[::]:10256");
        assert_eq!(c.metrics_bind_address, "[::1]:10249");
        assert_eq!(c.nftables.sync_period, Duration::from_secs(30));
        assert_eq!(c.nftables.min_sync_period, Duration::from_millis(10));
        let (c, _) = parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             healthzBindAddress: 'fd00::1'\n",
        )
        .unwrap();
        assert_eq!(c.healthz_bind_address, "[fd00::1]:10256");
    }

    #[test]
    fn round_trip() {
        let (upstream, _) = parse(UPSTREAM).unwrap();
        let odd = KubeProxyConfiguration {
            bind_address: "::".into(),
            hostname_override: "Node-A".into(),
            healthz_bind_address: "[::]:1234".into(),
            metrics_bind_address: "[::1]:10249".into(),
            node_port_addresses: vec!["primary".into()],
            mode: "ipvs".into(),
            detect_local_mode: "NodeCIDR".into(),
            nftables: NfTables {
                masquerade_bit: 0,
                masquerade_all: true,
                sync_period: Duration::from_millis(1500),
                min_sync_period: Duration::from_micros(250),
            },
            conntrack: Conntrack {
                udp_timeout: Duration::from_nanos(1),
                udp_stream_timeout: Duration::from_secs(3 * 3600 + 61),
                tcp_be_liberal: true,
                ..Conntrack::default()
            },
            logging: Logging {
                format: "json".into(),
                verbosity: 7,
            },
            ..KubeProxyConfiguration::default()
        };
        for c in [KubeProxyConfiguration::default(), upstream, odd] {
            let text = to_yaml(&c);
            let (back, unknown) = parse(&text).unwrap();
            assert_eq!(back, c, "{text}");
            assert!(unknown.is_empty());
        }
        let text = to_yaml(&KubeProxyConfiguration::default());
        assert!(
            text.starts_with(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            ),
            "{text}"
        );
        assert!(text.contains("syncPeriod: 30s"), "{text}");
        assert!(text.contains("minSyncPeriod: 10ms"), "{text}");
        assert!(text.contains("tcpEstablishedTimeout: 24h0m0s"), "{text}");
    }

    #[test]
    fn errors() {
        let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        let err = |extra: &str| parse(&format!("{head}{extra}")).unwrap_err().to_string();
        assert!(matches!(
            parse("apiVersion: v1\nkind: KubeProxyConfiguration\n"),
            Err(Error::ApiVersion { found: Some(v) }) if v == "v1"
        ));
        assert!(matches!(
            parse("kind: KubeProxyConfiguration\n"),
            Err(Error::ApiVersion { found: None })
        ));
        assert!(matches!(
            parse("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n"),
            Err(Error::Kind { .. })
        ));
        assert!(matches!(parse(""), Err(Error::NotAnObject(_))));
        assert!(matches!(parse("- a\n"), Err(Error::NotAnObject(_))));
        assert!(matches!(parse("a: [\n"), Err(Error::Syntax(_))));
        assert!(matches!(parse("{\"a\": }"), Err(Error::Syntax(_))));
        let e = err("nftables:\n  masqueradeBit: x\n");
        assert!(e.starts_with("nftables.masqueradeBit: "), "{e}");
        let e = err("nftables:\n  masqueradeBit: 32\n");
        assert!(e.starts_with("nftables.masqueradeBit: must be 0-31"), "{e}");
        let e = err("nftables:\n  syncPeriod: 30\n");
        assert!(
            e.starts_with("nftables.syncPeriod: ") && e.contains("duration"),
            "{e}"
        );
        let e = err("nftables:\n  minSyncPeriod: 5 minutes\n");
        assert!(e.starts_with("nftables.minSyncPeriod: "), "{e}");
        let e = err("conntrack:\n  min: -1\n");
        assert!(e.starts_with("conntrack.min: "), "{e}");
        let e = err("nftables: 5\n");
        assert!(e.starts_with("nftables: "), "{e}");
        let e = err("nodePortAddresses: 10.0.0.0/8\n");
        assert!(e.starts_with("nodePortAddresses: "), "{e}");
        let e = err("nodePortAddresses: [primary, 10.0.0.0/8]\n");
        assert!(e.starts_with("nodePortAddresses: "), "{e}");
        let e = err("clusterCIDR: 10.0.0.0/33\n");
        assert!(e.starts_with("clusterCIDR: "), "{e}");
        let e = err("metricsBindAddress: localhost:10249\n");
        assert!(e.starts_with("metricsBindAddress: "), "{e}");
        let e = err("bindAddress: somewhere\n");
        assert!(e.starts_with("bindAddress: "), "{e}");
        let e = err("logging:\n  verbosity: lots\n");
        assert!(e.starts_with("logging.verbosity: "), "{e}");
    }

    #[test]
    fn warnings() {
        let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        let w = |extra: &str| parse(&format!("{head}{extra}")).unwrap().0.warnings();
        assert_eq!(w("mode: ipvs\n").len(), 1);
        assert_eq!(w("mode: ''\n").len(), 1);
        assert_eq!(w("mode: nftables\ndetectLocalMode: ClusterCIDR\n").len(), 0);
        assert_eq!(
            w("detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: veth\n")
                .len(),
            0
        );
        assert_eq!(w("logging:\n  format: json\n").len(), 0);
        assert_eq!(w("logging:\n  format: xml\n").len(), 1);
        let e = |extra: &str| parse(&format!("{head}{extra}")).unwrap_err().to_string();
        assert!(e("detectLocalMode: Bridge\n").starts_with("detectLocalMode: "));
        assert!(
            e("detectLocalMode: BridgeInterface\n").starts_with("detectLocal.bridgeInterface: ")
        );
    }

    #[test]
    fn go_durations() {
        for (text, d) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("1m0s", Duration::from_secs(60)),
            ("15m", Duration::from_secs(900)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("1h30m", Duration::from_secs(5400)),
            ("2us", Duration::from_micros(2)),
            ("2\u{b5}s", Duration::from_micros(2)),
            ("3ns", Duration::from_nanos(3)),
            (".5m", Duration::from_secs(30)),
            ("+1s", Duration::from_secs(1)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(d), "{text}");
        }
        for bad in [
            "",
            "s",
            "30",
            "1x",
            "-1s",
            "1.s.",
            "1e3s",
            "30 s",
            "99999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(86400), "24h0m0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5\u{b5}s"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_secs(3661), "1h1m1s"),
        ] {
            assert_eq!(format_go_duration(d), text);
            assert_eq!(parse_go_duration(text), Ok(d), "{text}");
        }
        assert_eq!(flag_duration(Duration::from_secs(30)), "30s");
        assert_eq!(flag_duration(Duration::from_millis(10)), "10ms");
        assert_eq!(flag_duration(Duration::from_micros(250)), "0.25ms");
    }

    #[test]
    fn merging() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let file = s(&[
            "--hostname-override=a",
            "--cluster-cidr=10.0.0.0/8",
            "--masquerade-all=true",
            "--v=2",
            "--sync-period=30s",
        ]);
        let cli = s(&[
            "--hostname-override",
            "b",
            "--masquerade-all",
            "-v3",
            "--sync-period=1m",
        ]);
        assert_eq!(
            merge_args(&file, &cli),
            s(&[
                "--cluster-cidr=10.0.0.0/8",
                "--hostname-override",
                "b",
                "--masquerade-all",
                "-v3",
                "--sync-period=1m",
            ])
        );
        assert_eq!(merge_args(&file, &[]), file);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let text = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nx: {}",
            "[".repeat(200_000)
        );
        let t = std::time::Instant::now();
        let e = parse(&text).expect_err("refused");
        assert!(e.to_string().contains("nested deeper"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }
}
