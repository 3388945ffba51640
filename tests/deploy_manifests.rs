//! The deployment under `daemonset/` (and the `Containerfile`) agrees with the code:
//!
//! - every document parses as the Kubernetes type its `kind` names, with no field the
//!   type does not know (a typed round trip gives back the same document), and
//!   `kustomization.yaml` lists exactly the other files;
//! - the ClusterRole grants exactly what the watchers in `src/source/kube.rs` use;
//! - the DaemonSet's command, with the ConfigMap's `config.conf`, is accepted by the
//!   binary;
//! - `config.conf` parses with `src/kubeproxyconfig.rs` with nothing ignored.
//!
//! No root, no cluster.

use kube_nft_proxy::kubeproxyconfig;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::Resource;
use kube_nft_proxy::config::{Cli, ProxyConfig};
use kube_nft_proxy::model as lean;
use kube_nft_proxy::model::objects::ApiKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");
const NODE: &str = "node-1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    root().join("daemonset")
}

/// The YAML files under `daemonset/`, by file name.
fn yaml_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(deploy_dir()).expect("daemonset/ exists") {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// Every document of every manifest (not kustomization.yaml): (file, document).
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, text) in yaml_files() {
        if name == "kustomization.yaml" {
            continue;
        }
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                out.push((name.clone(), v));
            }
        }
    }
    out
}

fn to_json(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}

/// The document as `T`; fails if `T` drops anything the document says (a misspelled
/// or misplaced field), by comparing the typed value serialized back with the original.
fn typed<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> T {
    let t: T = serde_yaml_ng::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", std::any::type_name::<T>()));
    let mut diff = Vec::new();
    json_diff(&to_json(doc), &to_json(&t), "", &mut diff);
    assert!(
        diff.is_empty(),
        "{file}: fields {} does not know, or of the wrong shape: {diff:?}",
        std::any::type_name::<T>()
    );
    t
}

/// Paths where two JSON values differ.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(u, v, &p, out),
                    _ => out.push(p),
                }
            }
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_diff(u, v, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(path.to_string()),
    }
}

fn kind_of(doc: &Value) -> (&str, &str) {
    (
        doc.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
        doc.get("kind").and_then(Value::as_str).unwrap_or(""),
    )
}

fn the<T: DeserializeOwned + Serialize + Resource>() -> (String, T) {
    let mut found: Vec<(String, T)> = documents()
        .into_iter()
        .filter(|(_, d)| kind_of(d) == (T::API_VERSION, T::KIND))
        .map(|(f, d)| {
            let t = typed::<T>(&f, &d);
            (f, t)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {} under daemonset/", T::KIND);
    found.pop().unwrap()
}

fn container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1);
    spec.containers[0].clone()
}

fn config_conf() -> String {
    let (_, cm) = the::<ConfigMap>();
    cm.data
        .as_ref()
        .and_then(|d| d.get("config.conf"))
        .expect("ConfigMap key config.conf")
        .clone()
}

/// A directory under $TMPDIR removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("knp-deploy-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_document_is_its_kind() {
    let docs = documents();
    let mut kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = kind_of(doc);
        match kind {
            ("v1", "ServiceAccount") => {
                typed::<ServiceAccount>(file, doc);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                typed::<ClusterRole>(file, doc);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                typed::<ClusterRoleBinding>(file, doc);
            }
            ("v1", "ConfigMap") => {
                typed::<ConfigMap>(file, doc);
            }
            ("apps/v1", "DaemonSet") => {
                typed::<DaemonSet>(file, doc);
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        assert!(
            kinds.insert(kind.1.to_string()),
            "{file}: a second {}",
            kind.1
        );
    }
    let want: BTreeSet<String> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, want);
    // Namespaced objects live in kube-system.
    for (file, doc) in &docs {
        if !kind_of(doc).1.starts_with("Cluster") {
            assert_eq!(
                doc.get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str),
                Some("kube-system"),
                "{file}"
            );
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let files = yaml_files();
    let k: Value = serde_yaml_ng::from_str(&files["kustomization.yaml"]).unwrap();
    assert_eq!(kind_of(&k).1, "Kustomization");
    let listed: Vec<String> = k
        .get("resources")
        .and_then(Value::as_sequence)
        .expect("resources list")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "duplicates in {listed:?}");
    let others: BTreeSet<String> = files
        .keys()
        .filter(|f| *f != "kustomization.yaml")
        .cloned()
        .collect();
    assert_eq!(listed_set, others);
}

/// (API group, resource) of a type, as RBAC names it.
fn rbac_resource<T: Resource>() -> (String, String) {
    (T::GROUP.to_string(), T::URL_PATH_SEGMENT.to_string())
}

#[test]
fn rbac_is_exactly_what_the_code_uses() {
    // The watchers the code builds: `forward::<T>` in src/source/kube.rs (each watches
    // `Api::<Watched<T>>` of a lean object type), and nothing else.
    let src = std::fs::read_to_string(root().join("src/source/kube.rs")).unwrap();
    let watched: BTreeSet<&str> = src
        .match_indices("forward::<")
        .map(|(i, m)| {
            let rest = &src[i + m.len()..];
            &rest[..rest.find('>').expect("forward::<T>")]
        })
        .collect();
    assert_eq!(
        watched,
        BTreeSet::from(["Service", "EndpointSlice", "ServiceCidr", "Node"]),
        "src/source/kube.rs watches a different set of kinds: update daemonset/clusterrole.yaml \
         and this test"
    );
    // The lean types ask for the same URLs as k8s-openapi's, whose names the RBAC
    // rules below are checked against.
    fn urls_of<T: ApiKind>() -> (String, String) {
        (T::GROUP.to_string(), T::PLURAL.to_string())
    }
    assert_eq!(urls_of::<lean::Service>(), rbac_resource::<Service>());
    assert_eq!(
        urls_of::<lean::EndpointSlice>(),
        rbac_resource::<EndpointSlice>()
    );
    assert_eq!(
        urls_of::<lean::ServiceCidr>(),
        rbac_resource::<ServiceCIDR>()
    );
    assert_eq!(urls_of::<lean::Node>(), rbac_resource::<Node>());
    let verbs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let list_watch = verbs(&["list", "watch"]);
    let expected: BTreeSet<(String, String, BTreeSet<String>)> = [
        (rbac_resource::<Service>(), list_watch.clone()),
        (rbac_resource::<EndpointSlice>(), list_watch.clone()),
        (rbac_resource::<ServiceCIDR>(), list_watch),
        (rbac_resource::<Node>(), verbs(&["get", "list", "watch"])),
    ]
    .into_iter()
    .map(|((g, r), v)| (g, r, v))
    .collect();
    // The types name what we expect (a guard against a k8s-openapi surprise).
    let names: BTreeSet<(&str, &str)> = expected
        .iter()
        .map(|(g, r, _)| (g.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.k8s.io", "servicecidrs"),
            ("", "nodes"),
        ])
    );

    let (file, role) = the::<ClusterRole>();
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        for g in rule.api_groups.as_deref().unwrap_or_default() {
            for r in rule.resources.as_deref().unwrap_or_default() {
                assert!(
                    granted.insert((g.clone(), r.clone(), verbs.clone())),
                    "{file}: {g}/{r} twice"
                );
            }
        }
    }
    assert_eq!(granted, expected, "{file}");

    // The binding gives that role to the ServiceAccount the DaemonSet runs as.
    let (_, sa) = the::<ServiceAccount>();
    let (_, binding) = the::<ClusterRoleBinding>();
    let (_, ds) = the::<DaemonSet>();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn daemonset_shape() {
    let (file, ds) = the::<DaemonSet>();
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "{file}");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tol = pod.tolerations.as_deref().unwrap_or_default();
    assert!(tol
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()));
    let c = container(&ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    // The one privileged container only writes the conntrack sysctls (--init-only),
    // from the main container's config file, and exits.
    let inits = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(inits.len(), 1, "{file}: one init container");
    let init = &inits[0];
    assert_eq!(
        init.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let init_cmd = init.command.as_deref().unwrap_or_default();
    assert!(init_cmd.iter().any(|a| a == "--init-only"), "{init_cmd:?}");
    let config_flag = |cmd: &[String]| {
        cmd.iter()
            .find(|a| a.starts_with("--config="))
            .cloned()
            .expect("--config= in the command")
    };
    assert_eq!(
        config_flag(init_cmd),
        config_flag(c.command.as_deref().unwrap_or_default())
    );
    assert_eq!(init.image, c.image);
    // The probes hit the health server the config binds.
    let (cfg, _) = kubeproxyconfig::parse(&config_conf()).unwrap();
    let healthz_port: i32 = cfg
        .healthz_bind_address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (probe, path) in [
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(healthz_port)
        );
    }
    // The ConfigMap is mounted where --config points.
    let config_arg = c
        .command
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config=PATH in the command")
        .to_string();
    let (dir, key) = config_arg.rsplit_once('/').unwrap();
    assert_eq!(key, "config.conf");
    let mount = c
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == dir)
        .expect("a volume mounted at the --config directory");
    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let (_, cm) = the::<ConfigMap>();
    assert_eq!(
        volume.config_map.as_ref().map(|c| &c.name),
        cm.metadata.name.as_ref()
    );
    // NODE_NAME comes from the downward API.
    let env = c.env.as_deref().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
}

#[test]
fn configmap_parses_with_kubeproxyconfig() {
    let (cfg, unknown) = kubeproxyconfig::parse(&config_conf()).expect("config.conf");
    assert!(
        unknown.is_empty(),
        "fields kube-nft-proxy ignores: {unknown:?}"
    );
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    assert_eq!(cfg.mode, "nftables");
    assert_eq!(cfg.cluster_cidr, "10.244.0.0/16");
    assert_eq!(cfg.nftables.min_sync_period, Duration::from_millis(10));
}

/// What `kube-nft-proxy --help` lists.
fn help() -> String {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn run_dry(args: &[String], manifests: &str) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--dry-run", "--manifests", manifests])
        .output()
        .unwrap()
}

#[test]
fn daemonset_command_is_accepted_by_the_binary() {
    let (_, ds) = the::<DaemonSet>();
    let c = container(&ds);
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(
        command[0], "/usr/local/bin/kube-nft-proxy",
        "where the Containerfile installs it"
    );
    assert!(c.args.is_none());
    let scratch = Scratch::new("cmd");
    let config = scratch.write("config.conf", &config_conf());
    let empty = scratch.write("empty.yaml", "");
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| {
            let a = a.replace("$(NODE_NAME)", NODE);
            match a.strip_prefix("--config=") {
                Some(_) => format!("--config={config}"),
                None => a,
            }
        })
        .collect();
    assert!(
        !args.iter().any(|a| a.contains("$(")),
        "unexpanded variable in {args:?}"
    );

    // The config file's values as flags, with the command line's flags on top, are what
    // --config amounts to: the binary must take them as they are today.
    let (cfg, _) = kubeproxyconfig::parse(&config_conf()).unwrap();
    let not_config: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--config"))
        .cloned()
        .collect();
    let merged = kubeproxyconfig::merge_args(&cfg.to_args(), &not_config);
    let out = run_dry(&merged, &empty);
    assert!(
        out.status.success(),
        "{merged:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("table ip kube-nft-proxy"));

    let help = help();
    if help.contains("--config") {
        // The real command line.
        let out = run_dry(&args, &empty);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("table ip kube-nft-proxy"));
    } else {
        // Until the binary has --config: every other flag of the command exists.
        eprintln!("note: the binary has no --config yet; checking the command's other flags against --help");
        for a in &not_config {
            let flag = a.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag} <")),
                "{flag} not in --help"
            );
        }
    }
}

#[test]
fn config_file_flags_match_the_cli() {
    let parse = |args: &[String]| {
        let mut v = vec!["kube-nft-proxy".to_string()];
        v.extend_from_slice(args);
        ProxyConfig::from_cli(Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}")))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: From-File
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
clientConnection:
  kubeconfig: /etc/kube-nft-proxy/kubeconfig
  qps: 50
  burst: 100
healthzBindAddress: 127.0.0.1
metricsBindAddress: '[::]:9100'
nodePortAddresses: [192.168.0.0/16, 'fd00::/64']
nftables:
  masqueradeAll: true
  masqueradeBit: 4
  syncPeriod: 1m30s
  minSyncPeriod: 250us
logging:
  verbosity: 3
";
    let (cfg, unknown) = kubeproxyconfig::parse(text).unwrap();
    assert!(unknown.is_empty());
    let file_args = cfg.to_args();
    let p = parse(&file_args);
    assert_eq!(p.node_name, "from-file");
    assert_eq!(p.cluster_cidrs.len(), 2);
    assert!(p.masquerade_all);
    assert_eq!(p.masquerade_mark, 1 << 4);
    assert_eq!(
        p.nodeport_addresses,
        kube_nft_proxy::config::NodePortAddresses::Cidrs(vec![
            "192.168.0.0/16".parse().unwrap(),
            "fd00::/64".parse().unwrap()
        ])
    );
    assert_eq!(p.sync_period, Duration::from_secs(90));
    assert_eq!(p.min_sync_period, Duration::from_micros(250));
    assert_eq!(
        p.healthz_bind_address,
        Some("127.0.0.1:10256".parse().unwrap())
    );
    assert_eq!(p.metrics_bind_address, Some("[::]:9100".parse().unwrap()));
    assert_eq!(
        p.kubeconfig.as_deref(),
        Some(Path::new("/etc/kube-nft-proxy/kubeconfig"))
    );
    assert_eq!(p.verbosity, 3);

    // Flags override the file, list flags included (clap alone would reject a repeated
    // single-valued flag and append a repeated list flag).
    let cli: Vec<String> = [
        "--hostname-override",
        "from-cli",
        "--cluster-cidr=10.0.0.0/8",
        "--masquerade-all=false",
        "-v",
        "0",
        "--metrics-bind-address=",
    ]
    .map(String::from)
    .into();
    let p = parse(&kubeproxyconfig::merge_args(&file_args, &cli));
    assert_eq!(p.node_name, "from-cli");
    assert_eq!(
        p.cluster_cidrs,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(!p.masquerade_all);
    assert_eq!(p.verbosity, 0);
    assert_eq!(p.metrics_bind_address, None);
    assert_eq!(p.masquerade_mark, 1 << 4, "from the file");

    // Our defaults and kube-proxy's file defaults agree (apart from what the module
    // documents: none of the flags differ).
    let (defaults, _) = kubeproxyconfig::parse(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
    )
    .unwrap();
    let from_file = parse(&defaults.to_args());
    let from_flags = parse(&[]);
    assert_eq!(from_file.masquerade_mark, from_flags.masquerade_mark);
    assert_eq!(from_file.sync_period, from_flags.sync_period);
    assert_eq!(from_file.min_sync_period, from_flags.min_sync_period);
    assert_eq!(
        from_file.healthz_bind_address,
        from_flags.healthz_bind_address
    );
    assert_eq!(
        from_file.metrics_bind_address,
        from_flags.metrics_bind_address
    );
    assert_eq!(from_file.nodeport_addresses, from_flags.nodeport_addresses);
    assert_eq!(from_file.masquerade_all, from_flags.masquerade_all);
    assert_eq!(from_file.verbosity, from_flags.verbosity);
}

#[test]
fn containerfile_matches_the_daemonset() {
    let text = std::fs::read_to_string(root().join("Containerfile")).unwrap();
    // The image ships the `dist` build: release code without debug information or
    // symbols (docs/operations.md), so it stays small on every node.
    assert!(text.contains("cargo build --profile dist --locked"));
    assert!(text.contains("target/dist/kube-nft-proxy"));
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let dist = manifest
        .split("[profile.dist]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("Cargo.toml has a [profile.dist]");
    for setting in ["inherits = \"release\"", "strip = true"] {
        assert!(dist.contains(setting), "[profile.dist] lacks {setting}");
    }
    assert!(text.contains("/usr/local/bin/kube-nft-proxy"));
    let runtime = text.rsplit("FROM ").next().unwrap();
    assert!(runtime.starts_with("docker.io/library/debian:bookworm-slim"));
    for pkg in ["libnftnl11", "libmnl0", "ca-certificates"] {
        assert!(runtime.contains(pkg), "{pkg}");
    }
    // Every workspace member is copied: cargo loads each member's manifest, so one left
    // out breaks the image build.
    let members = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("Cargo.toml lists workspace members");
    for member in members.split('"').skip(1).step_by(2).filter(|m| *m != ".") {
        assert!(
            text.contains(&format!("COPY {member} ./{member}\n")),
            "Containerfile does not copy workspace member {member}"
        );
    }
    // Everything it copies exists (a renamed directory would break the image build).
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "Containerfile copies missing {src}"
            );
        }
    }
}
