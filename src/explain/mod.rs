//! `kube-nft-proxy explain`: what our rules do to the first packet of one connection.
//!
//! ```text
//! kube-nft-proxy explain --source IP [--source-role pod|pod-endpoint|node|external] [--protocol TCP|UDP|SCTP]
//!                        --destination IP --port N [--output text|json]
//!                        [--host-address IP ...] [--manifests FILE | --kubeconfig FILE] [proxy flags]
//! ```
//!
//! By default it reads our tables from the kernel of the network namespace it runs in
//! (every rule decoded back, see [`crate::netlink::rules`]) and takes "is this address
//! local?" from the same namespace's interfaces. With `--manifests` or `--kubeconfig`
//! (and the proxy's usual flags) it explains the ruleset those objects would give
//! instead; the local addresses are then the `--host-address` values if any, else this
//! host's addresses and the Node object's. The walk itself is [`walk::Tracer`].

pub mod walk;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;

use crate::ruleset::ir::{Family, Ruleset};
use walk::{Branch, Query, Role};

const USAGE: &str =
    "usage: kube-nft-proxy explain --source IP [--source-role pod|pod-endpoint|node|external] \
[--protocol TCP|UDP|SCTP] --destination IP --port N [--output text|json] [--host-address IP ...] \
[--manifests FILE | --kubeconfig FILE] [the proxy's flags]";

/// The command line of `explain`.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// the connection
    pub query: Query,
    /// `--output json`
    pub json: bool,
    /// `--host-address`: the node's own addresses, when explaining objects
    pub host_addresses: Vec<IpAddr>,
    /// every other argument: the proxy's flags (objects mode)
    pub proxy_args: Vec<String>,
}

fn protocol_number(s: &str) -> Option<u8> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

/// Parses the arguments after `explain`.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut source = None;
    let mut role = Role::External;
    let mut protocol = 6;
    let mut destination = None;
    let mut port = None;
    let mut json = false;
    let mut host_addresses = Vec::new();
    let mut proxy_args = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let known = [
            "--source",
            "--source-role",
            "--protocol",
            "--destination",
            "--port",
            "--output",
            "--host-address",
        ];
        if !known.contains(&flag) {
            proxy_args.push(a.clone());
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let ip = |v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| format!("{flag} {v:?}: not an IP address"))
        };
        match flag {
            "--source" => source = Some(ip(&v)?),
            "--destination" => destination = Some(ip(&v)?),
            "--host-address" => host_addresses.push(ip(&v)?),
            "--source-role" => {
                role = match v.as_str() {
                    // A pod that is itself an endpoint (hairpin) comes in like any pod.
                    "pod" | "pod-endpoint" => Role::Pod,
                    "node" => Role::Node,
                    "external" => Role::External,
                    _ => {
                        return Err(format!(
                            "--source-role {v:?}: pod, pod-endpoint, node or external"
                        ))
                    }
                }
            }
            "--protocol" => {
                protocol = protocol_number(&v)
                    .ok_or_else(|| format!("--protocol {v:?}: TCP, UDP or SCTP"))?
            }
            "--port" => {
                port = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("--port {v:?}: a port from 1 to 65535"))?,
                )
            }
            _ => {
                json = match v.as_str() {
                    "json" => true,
                    "text" => false,
                    _ => return Err(format!("--output {v:?}: text or json")),
                }
            }
        }
    }
    let (Some(source), Some(destination), Some(port)) = (source, destination, port) else {
        return Err(format!(
            "--source, --destination and --port are required\n{USAGE}"
        ));
    };
    if source.is_ipv4() != destination.is_ipv4() {
        return Err(format!(
            "--source {source} and --destination {destination} are of different families"
        ));
    }
    Ok(Args {
        query: Query {
            source,
            role,
            protocol,
            destination,
            port,
        },
        json,
        host_addresses,
        proxy_args,
    })
}

/// The rules to explain and the node's addresses.
pub struct Subject {
    /// the rules
    pub ruleset: Ruleset,
    /// the node's own addresses
    pub local: BTreeSet<IpAddr>,
    /// "kernel" or "objects"
    pub origin: &'static str,
    /// rules or sets that could not be read back
    pub warnings: Vec<String>,
}

/// Our tables in the kernel of this network namespace.
pub fn from_kernel() -> Result<Subject, String> {
    let mut k =
        crate::netlink::Kernel::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let mut ruleset = Ruleset { tables: Vec::new() };
    let mut warnings = Vec::new();
    for f in Family::ALL {
        match k.read_ir(f) {
            Ok(Some(rb)) => {
                warnings.extend(rb.problems.into_iter().map(|p| format!("{} {p}", f.nft())));
                ruleset.tables.push(rb.table);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot read our {} table: {e}", f.nft())),
        }
    }
    if ruleset.tables.is_empty() {
        return Err(format!(
            "no {} tables in this network namespace: is the proxy running here? \
             (--manifests or --kubeconfig explain the rules some objects would give)",
            crate::ruleset::ir::TABLE_NAME
        ));
    }
    let local = crate::host::local_addresses()
        .map_err(|e| format!("cannot list this host's addresses: {e}"))?
        .into_iter()
        .collect();
    Ok(Subject {
        ruleset,
        local,
        origin: "kernel",
        warnings,
    })
}

/// The ruleset some objects would give, with the proxy's flags in `proxy_args`.
pub fn from_objects(proxy_args: &[String], host: &[IpAddr]) -> Result<Subject, String> {
    let mut argv = vec!["kube-nft-proxy".to_string()];
    argv.extend(proxy_args.iter().cloned());
    let (cli, _) = crate::config::parse_args(argv).map_err(|e| match e {
        crate::config::ArgsError::Clap(e) => e.to_string(),
        crate::config::ArgsError::Config(e) => e,
    })?;
    let cfg = crate::config::ProxyConfig::from_cli(cli).map_err(|e| e.to_string())?;
    let (ruleset, node_ips) = if cfg.manifests.is_empty() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(crate::daemon::desired_from_cluster(&cfg))
            .map_err(|e| crate::error_text::error_chain(&e))?
    } else {
        crate::proxier::desired_from_manifests(&cfg)
            .map_err(|e| crate::error_text::error_chain(&e))?
    };
    let local: BTreeSet<IpAddr> = if host.is_empty() {
        let mut l: BTreeSet<IpAddr> = crate::host::local_addresses()
            .map_err(|e| format!("cannot list this host's addresses: {e}"))?
            .into_iter()
            .collect();
        l.extend(node_ips);
        l
    } else {
        host.iter().copied().collect()
    };
    Ok(Subject {
        ruleset,
        local,
        origin: "objects",
        warnings: Vec::new(),
    })
}

/// The explanation of one connection.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// the summary over every branch
    pub summary: walk::Summary,
    /// the decisions, each once, in the order the branches met them
    pub steps: Vec<String>,
    /// where the rules came from
    pub origin: &'static str,
    /// what could not be read
    pub warnings: Vec<String>,
}

/// Explains `q` against `s`.
pub fn explain(s: &Subject, q: Query) -> Result<Explanation, String> {
    let family = if q.destination.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let mut warnings = s.warnings.clone();
    let branches: Vec<Branch> = match s.ruleset.table(family) {
        None => {
            warnings.push(format!(
                "no {} table: nothing of ours sees this packet",
                family.nft()
            ));
            vec![Branch {
                fate: walk::Fate::Accept,
                masquerade: false,
                steps: Vec::new(),
                service: None,
            }]
        }
        Some(t) => {
            let local = |a: IpAddr| s.local.contains(&a);
            walk::Tracer::new(t, q, &local)
                .run()
                .map_err(|e| format!("cannot follow the rules: {e}"))?
        }
    };
    let summary = walk::summarize(&branches);
    // Every branch's steps merged, each once: a step only some branches take goes
    // right after the step it follows in its own branch.
    let mut steps: Vec<String> = Vec::new();
    for b in &branches {
        let mut at = 0;
        for st in &b.steps {
            match steps.iter().position(|x| x == st) {
                Some(i) => at = i + 1,
                None => {
                    steps.insert(at, st.clone());
                    at += 1;
                }
            }
        }
    }
    if steps.is_empty() {
        steps.push(format!(
            "no rule of ours matches {} {} port {}: the packet is left alone",
            crate::ruleset::render::proto_name(q.protocol),
            q.destination,
            q.port
        ));
    }
    if summary.mixed {
        warnings.push(
            "the branches end differently (some picks find no endpoint): a ruleset in the \
             middle of a change?"
                .into(),
        );
    }
    Ok(Explanation {
        summary,
        steps,
        origin: s.origin,
        warnings,
    })
}

/// The JSON object of `../shared/conformance/README.md`, "Explain mode".
pub fn to_json(e: &Explanation) -> serde_json::Value {
    serde_json::json!({
        "verdict": e.summary.verdict,
        "service": e.summary.service,
        "endpoints": e.summary.endpoints.iter().map(|(a, p)| walk::endpoint_text(*a, *p)).collect::<Vec<_>>(),
        "masquerade": e.summary.masquerade,
        "steps": e.steps,
        "rules": e.origin,
        "warnings": e.warnings,
    })
}

/// The explanation for people.
pub fn to_text(e: &Explanation) -> String {
    let s = &e.summary;
    let mut out = String::new();
    let svc = s
        .service
        .as_deref()
        .map(|x| format!(" ({x})"))
        .unwrap_or_default();
    let head = match s.verdict {
        "DNAT" => format!(
            "DNAT{svc}: to {}{}",
            match s.endpoints.len() {
                1 => "1 endpoint".to_string(),
                n => format!("any of {n} endpoints"),
            },
            match (s.masquerade, s.masquerade_partly) {
                (false, _) => ", source kept",
                (true, false) => ", source masqueraded",
                (true, true) => ", source masqueraded only when the endpoint is the client itself",
            }
        ),
        "REJECT" => format!("REJECT{svc}"),
        "DROP" => format!("DROP{svc}"),
        _ => "ACCEPT: our rules leave this packet alone".to_string(),
    };
    out.push_str(&head);
    out.push('\n');
    if !s.endpoints.is_empty() {
        let eps: Vec<String> = s
            .endpoints
            .iter()
            .map(|(a, p)| walk::endpoint_text(*a, *p))
            .collect();
        out.push_str(&format!("  endpoints: {}\n", eps.join(", ")));
    }
    out.push_str(&format!("  how (rules from the {}):\n", e.origin));
    for st in &e.steps {
        out.push_str(&format!("    - {st}\n"));
    }
    for w in &e.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out
}

/// `kube-nft-proxy explain ARGS`.
pub fn main(args: &[String]) -> ExitCode {
    let fail = |msg: &str, code: u8| {
        let _ = writeln!(std::io::stderr().lock(), "kube-nft-proxy explain: {msg}");
        ExitCode::from(code)
    };
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => return fail(&e, 2),
    };
    let objects = a.proxy_args.iter().any(|x| {
        let f = x.split('=').next().unwrap_or("");
        ["--manifests", "--kubeconfig", "--master"].contains(&f)
    });
    if !objects && !a.proxy_args.is_empty() {
        return fail(
            &format!(
                "{:?}: the proxy's flags apply only with --manifests or --kubeconfig\n{USAGE}",
                a.proxy_args
            ),
            2,
        );
    }
    let subject = if objects {
        from_objects(&a.proxy_args, &a.host_addresses)
    } else {
        from_kernel()
    };
    let subject = match subject {
        Ok(s) => s,
        Err(e) => return fail(&e, 1),
    };
    let e = match explain(&subject, a.query) {
        Ok(e) => e,
        Err(e) => return fail(&e, 1),
    };
    let text = if a.json {
        format!("{}\n", to_json(&e))
    } else {
        to_text(&e)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&format!("cannot write to stdout: {e}"), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn careless_command_lines_are_refused_with_a_reason() {
        let ok = "--source 10.0.0.1 --destination 10.96.0.10 --port 80";
        assert!(parse(&args(ok)).is_ok());
        for (bad, says) in [
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port 0",
                "--port",
            ),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port 65536",
                "--port",
            ),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port -1",
                "--port",
            ),
            (
                "--source 10.0.0.1 --destination fd00::1 --port 80",
                "different families",
            ),
            (
                "--source 10.0.0.0/8 --destination 10.96.0.10 --port 80",
                "not an IP",
            ),
            ("--source 10.0.0.1 --destination 10.96.0.10", "required"),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port 80 --protocol ICMP",
                "--protocol",
            ),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port 80 --source-role admin",
                "--source-role",
            ),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port 80 --output yaml",
                "--output",
            ),
            (
                "--source 10.0.0.1 --destination 10.96.0.10 --port",
                "needs a value",
            ),
        ] {
            let e = parse(&args(bad)).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // `--flag=value`, lower-case protocols, and the proxy's own flags passed on.
        let a = parse(&args(
            "--source=fd00::5 --destination=fd00:96::1 --port=53 --protocol=sctp \
             --source-role=pod-endpoint --manifests x.yaml",
        ))
        .unwrap();
        assert_eq!(a.query.protocol, 132);
        assert_eq!(a.query.role, Role::Pod);
        assert_eq!(a.proxy_args, args("--manifests x.yaml"));
    }
}
