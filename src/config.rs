//! Command-line flags → one typed [`ProxyConfig`]. Flag names follow kube-proxy's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::model::convert::parse_cidr_sloppy;

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

    /// Take over from kube-proxy: once our rules are in place, delete kube-proxy's
    /// `ip`/`ip6 kube-proxy` nftables tables and its iptables `KUBE-*` chains.
    #[arg(long)]
    pub cleanup_kube_proxy: bool,

    /// How often to reconcile everything with the kernel when running continuously.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
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
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub min_sync_period: Duration,

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
}

/// Parses a Go-style duration (`30s`, `1m`, `250ms`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
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
    /// conntrack settings from the config file, applied through sysctls
    pub conntrack: Option<crate::kubeproxyconfig::Conntrack>,
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
        let addr = |flag: &'static str, v: &str| -> Result<Option<std::net::SocketAddr>, Error> {
            if v.trim().is_empty() {
                return Ok(None);
            }
            v.trim().parse().map(Some).map_err(|_| Error::BadAddress {
                flag,
                value: v.to_string(),
            })
        };
        let healthz_bind_address = addr("healthz-bind-address", &cli.healthz_bind_address)?;
        let metrics_bind_address = addr("metrics-bind-address", &cli.metrics_bind_address)?;
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
            sync_period: cli.sync_period,
            min_sync_period: cli.min_sync_period,
            kubeconfig: cli.kubeconfig,
            master: cli.master,
            healthz_bind_address,
            metrics_bind_address,
            verbosity: cli.verbosity,
            write_config_to: cli.write_config_to,
            logging_format: cli.logging_format,
            conntrack: None,
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
        if !k.cluster_cidr.is_empty() {
            k.detect_local_mode = "ClusterCIDR".into();
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

/// Parses the command line with `--config` applied: the file's settings become flags,
/// and flags given on the command line override them (as kube-proxy does). Returns
/// the CLI, the file's conntrack settings, and messages to log (unknown fields,
/// settings we do not honour).
pub fn parse_args(
    raw: Vec<String>,
) -> Result<(Cli, Option<crate::kubeproxyconfig::Conntrack>, Vec<String>), ArgsError> {
    let cli = Cli::try_parse_from(&raw).map_err(ArgsError::Clap)?;
    let Some(path) = cli.config.clone() else {
        return Ok((cli, None, Vec::new()));
    };
    let (file, unknown) = crate::kubeproxyconfig::read(&path)
        .map_err(|e| ArgsError::Config(format!("--config {}: {e}", path.display())))?;
    let mut notes: Vec<String> = unknown
        .iter()
        .map(|u| format!("--config {}: unknown field {u} ignored", path.display()))
        .collect();
    notes.extend(
        file.warnings()
            .into_iter()
            .map(|w| format!("--config {}: {w}", path.display())),
    );
    let prog = raw
        .first()
        .cloned()
        .unwrap_or_else(|| "kube-nft-proxy".into());
    let merged = crate::kubeproxyconfig::merge_args(&file.to_args(), raw.get(1..).unwrap_or(&[]));
    let cli = Cli::try_parse_from(std::iter::once(prog).chain(merged)).map_err(ArgsError::Clap)?;
    Ok((cli, Some(file.conntrack), notes))
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
        let (cli, _, notes) = parse_args(args(&["--hostname-override", "from-flag"])).unwrap();
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
        let (cli2, _, _) = parse_args(args(&[])).unwrap();
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
}
