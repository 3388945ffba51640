//! kube-proxy command lines (and ConfigMaps) as the common installers write them for
//! nftables mode are taken unchanged: each runs `--dry-run` on the demo cluster
//! (`demo/cluster.yaml`), prints both tables with the installer's pod network as the
//! local-traffic match, and reports each flag it ignores once. No root needed.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/cluster.yaml");

/// A scratch directory for config files, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("knp-cmdline-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create scratch dir");
        Scratch(d)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with an installer's `line` plus `--manifests DEMO --dry-run`.
fn dry_run(line: &[String]) -> Output {
    Command::new(BIN)
        .args(line)
        .args(["--manifests", DEMO, "--dry-run"])
        .output()
        .expect("run the binary")
}

/// The line must succeed, print both tables, match pod traffic by `pod_cidr`, and
/// report each of `ignored` (flags) exactly once.
fn accepted(what: &str, line: &[String], pod_cidr: &str, ignored: &[&str]) -> String {
    let out = dry_run(line);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {line:?} refused:\n{stderr}");
    assert!(
        stdout.contains("table ip kube-nft-proxy") && stdout.contains("table ip6 kube-nft-proxy"),
        "{what}: no ruleset:\n{stdout}"
    );
    let chain = stdout
        .split("chain mark-unless-pod {")
        .nth(1)
        .and_then(|c| c.split('}').next())
        .unwrap_or_else(|| panic!("{what}: no mark-unless-pod chain:\n{stdout}"));
    assert!(
        chain.contains(&format!("ip saddr {pod_cidr} return")),
        "{what}: pod network {pod_cidr} is not the local match:\n{chain}"
    );
    for flag in ignored {
        let n = stderr
            .matches(&format!("{flag} is accepted and ignored"))
            .count();
        assert_eq!(n, 1, "{what}: {flag} reported {n} times:\n{stderr}");
    }
    stderr
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// kubeadm's DaemonSet command and the ConfigMap kubeadm writes (every field, most of
/// them null or zero), with `mode: nftables`.
#[test]
fn kubeadm() {
    let s = Scratch::new("kubeadm");
    let conf = s.write(
        "config.conf",
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
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
  verbosity: 0
metricsBindAddress: ""
mode: nftables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#,
    );
    accepted(
        "kubeadm",
        &strings(&[&format!("--config={conf}"), "--hostname-override=demo-node"]),
        "10.244.0.0/16",
        &[],
    );
}

/// kubespray: kubeadm's DaemonSet, with the ConfigMap from kubespray's template
/// (`kube_proxy_mode: nftables`; empty template values render as nulls).
#[test]
fn kubespray() {
    let s = Scratch::new("kubespray");
    let conf = s.write(
        "config.conf",
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  acceptContentTypes:
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig:
  qps: 5
clusterCIDR: "10.233.64.0/18"
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
enableProfiling: False
healthzBindAddress: "0.0.0.0:10256"
hostnameOverride: "node1"
iptables:
  masqueradeAll: False
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: []
  minSyncPeriod: 0s
  scheduler: rr
  syncPeriod: 30s
  strictARP: False
  tcpTimeout: 0s
  tcpFinTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: "127.0.0.1:10249"
mode: nftables
nodePortAddresses: []
oomScoreAdj: -999
portRange:
"#,
    );
    accepted(
        "kubespray",
        &strings(&[&format!("--config={conf}"), "--hostname-override=demo-node"]),
        "10.233.64.0/18",
        &[],
    );
}

/// kOps: kube-proxy with flags only (its nodeup manifest), nftables mode.
#[test]
fn kops() {
    accepted(
        "kOps",
        &strings(&[
            "--cluster-cidr=100.96.0.0/11",
            "--conntrack-max-per-core=131072",
            "--hostname-override=demo-node",
            "--kubeconfig=/var/lib/kube-proxy/kubeconfig",
            "--master=https://api.internal.example.com",
            "--oom-score-adj=-998",
            "--proxy-mode=nftables",
            "--v=2",
        ]),
        "100.96.0.0/11",
        &["--oom-score-adj"],
    );
}

/// k3s: kube-proxy's flags as k3s passes them (`--kube-proxy-arg=proxy-mode=nftables`):
/// a bare health address, conntrack left alone.
#[test]
fn k3s() {
    accepted(
        "k3s",
        &strings(&[
            "--cluster-cidr=10.42.0.0/16",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-close-wait=0s",
            "--conntrack-tcp-timeout-established=0s",
            "--healthz-bind-address=127.0.0.1",
            "--hostname-override=demo-node",
            "--kubeconfig=/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig",
            "--proxy-mode=nftables",
        ]),
        "10.42.0.0/16",
        &[],
    );
}

/// A line full of flags that do not apply to nftables mode: accepted, each reported
/// once; with `--config`, the flags kube-proxy then ignores are reported too, and the
/// file wins.
#[test]
fn flags_that_do_not_apply_are_reported_once() {
    let ignored = [
        "--feature-gates",
        "--kube-api-content-type",
        "--bind-address-hard-fail",
        "--profiling",
        "--show-hidden-metrics-for-version",
        "--config-sync-period",
        "--oom-score-adj",
        "--iptables-masquerade-bit",
        "--iptables-localhost-nodeports",
        "--ipvs-scheduler",
        "--ipvs-strict-arp",
        "--ipvs-sync-period",
        "--vmodule",
    ];
    accepted(
        "not applicable",
        &strings(&[
            "--hostname-override=demo-node",
            "--cluster-cidr=10.244.0.0/16",
            "--feature-gates=NFTablesProxyMode=true",
            "--kube-api-content-type=application/json",
            "--bind-address-hard-fail",
            "--profiling=false",
            "--show-hidden-metrics-for-version=1.30",
            "--config-sync-period=15m",
            "--oom-score-adj=-999",
            "--iptables-masquerade-bit=14",
            "--iptables-localhost-nodeports=false",
            "--ipvs-scheduler=rr",
            "--ipvs-strict-arp",
            "--ipvs-sync-period=30s",
            "--vmodule=proxier=4",
            "--iptables-min-sync-period=1s",
        ]),
        "10.244.0.0/16",
        &ignored,
    );
    let s = Scratch::new("precedence");
    let conf = s.write(
        "config.conf",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nclusterCIDR: 10.244.0.0/16\n",
    );
    let stderr = accepted(
        "--config with flags",
        &strings(&[
            &format!("--config={conf}"),
            "--hostname-override=demo-node",
            "--cluster-cidr=10.99.0.0/16",
        ]),
        "10.244.0.0/16",
        &[],
    );
    assert_eq!(
        stderr
            .matches("--cluster-cidr is ignored: --config")
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn proxy_mode_other_than_nftables_exits_2() {
    for mode in ["iptables", "ipvs"] {
        let out = dry_run(&strings(&[
            "--hostname-override=demo-node",
            &format!("--proxy-mode={mode}"),
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{mode}: {stderr}");
        assert!(
            stderr.contains("only implements kube-proxy's nftables mode"),
            "{mode}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}
