//! kube-proxy's rules in legacy iptables (xtables, not nftables): only the kernel's
//! `ip_tables` / `ip6_tables` blobs hold them, which have no netlink interface, so
//! this goes through `iptables-legacy-save` / `-restore` (and the `ip6tables-`
//! ones) when the image has them.
//!
//! Whether legacy tables exist at all is read first from
//! `/proc/net/ip_tables_names` (`ip6_tables_names`): a table appears there once
//! anything used it in this network namespace. No names, no legacy rules: nothing is
//! run and nothing is reported.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use super::Removed;

/// One family's legacy tools.
#[derive(Clone, Copy, Debug)]
pub struct Tools {
    /// the kernel's list of this family's legacy tables
    pub names: &'static str,
    /// `iptables-legacy-save`, ...
    pub save: &'static str,
    /// `iptables-legacy-restore`, ...
    pub restore: &'static str,
}

/// IPv4 and IPv6.
pub const FAMILIES: [Tools; 2] = [
    Tools {
        names: "/proc/net/ip_tables_names",
        save: "iptables-legacy-save",
        restore: "iptables-legacy-restore",
    },
    Tools {
        names: "/proc/net/ip6_tables_names",
        save: "ip6tables-legacy-save",
        restore: "ip6tables-legacy-restore",
    },
];

/// What one family's step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// no legacy table exists in this namespace
    NoTables,
    /// the rules and chains removed
    Removed(Removed),
    /// legacy tables exist but could not be looked at: why
    Skipped(String),
}

/// The legacy tables of a family that exist in this namespace.
pub fn tables(names_file: &str) -> Vec<String> {
    std::fs::read_to_string(names_file)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A restore script (for `--noflush`) that removes every chain `wanted` accepts (given
/// table and chain) and
/// every rule elsewhere that jumps or goes to one, table by table; and the counts.
pub fn cleanup_script(saved: &str, wanted: &dyn Fn(&str, &str) -> bool) -> (String, Removed) {
    let mut out = String::new();
    let mut removed = Removed::default();
    let mut table: Option<String> = None;
    let mut body = String::new();
    let mut chains: Vec<String> = Vec::new();
    let flush =
        |table: &Option<String>, body: &mut String, chains: &mut Vec<String>, out: &mut String| {
            if let Some(t) = table {
                if !chains.is_empty() || !body.is_empty() {
                    out.push_str(&format!("*{t}\n"));
                    out.push_str(body);
                    for c in chains.iter() {
                        out.push_str(&format!("-F {c}\n"));
                    }
                    for c in chains.iter() {
                        out.push_str(&format!("-X {c}\n"));
                    }
                    out.push_str("COMMIT\n");
                }
            }
            body.clear();
            chains.clear();
        };
    // A table's chain declarations (`:NAME ...`) come before its rules in
    // iptables-save's output, so the removed chains are known when a rule is read.
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            flush(&table, &mut body, &mut chains, &mut out);
            table = Some(t.trim().to_string());
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("");
            if wanted(table.as_deref().unwrap_or_default(), name) {
                chains.push(name.to_string());
                removed.chains += 1;
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let words: Vec<&str> = rule.split_whitespace().collect();
            let jumps_to_removed = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && chains.iter().any(|c| c == w[1]));
            if !chains.iter().any(|c| c == chain) && jumps_to_removed {
                body.push_str(&format!("-D {rule}\n"));
                removed.rules += 1;
            }
        } else if line.starts_with("COMMIT") {
            flush(&table, &mut body, &mut chains, &mut out);
            table = None;
        }
    }
    (out, removed)
}

/// Runs a tool; `Err` says why it could not run or failed.
fn run(tool: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{tool} is not installed")
            } else {
                format!("cannot run {tool}: {e}")
            }
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to {tool}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the chains `wanted` accepts, and the jumps to them, from one family's
/// legacy tables. `Err`: the tools ran and failed.
pub fn remove(tools: &Tools, wanted: &dyn Fn(&str, &str) -> bool) -> Result<Outcome, String> {
    let present = tables(tools.names);
    if present.is_empty() {
        return Ok(Outcome::NoTables);
    }
    let saved = match run(tools.save, &[], None) {
        Ok(s) => s,
        Err(why) => {
            return Ok(Outcome::Skipped(format!(
                "legacy iptables tables exist ({}) but cannot be read: {why}",
                present.join(", ")
            )))
        }
    };
    let (script, removed) = cleanup_script(&saved, wanted);
    if script.is_empty() {
        return Ok(Outcome::Removed(Removed::default()));
    }
    // --wait: take the xtables lock as every iptables-legacy user does.
    run(tools.restore, &["--noflush", "--wait"], Some(&script))?;
    Ok(Outcome::Removed(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube(t: &str, c: &str) -> bool {
        super::super::is_kube_proxy_chain(t, c)
    }

    #[test]
    fn script_removes_kube_chains_and_jumps() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j OTHER\n-A KUBE-SERVICES -j KUBE-SVC-ABC\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let (script, n) = cleanup_script(saved, &kube);
        assert_eq!(
            n,
            Removed {
                chains: 2,
                rules: 1
            }
        );
        assert_eq!(
            script,
            "*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-F KUBE-SERVICES\n-F KUBE-SVC-ABC\n-X KUBE-SERVICES\n-X KUBE-SVC-ABC\nCOMMIT\n"
        );
    }

    #[test]
    fn kubelets_and_kube_routers_chains_and_the_jumps_to_them_stay() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-ROUTER-INPUT - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -j KUBE-ROUTER-INPUT\n-A FORWARD -j KUBE-FORWARD\n-A KUBE-FIREWALL -j DROP\nCOMMIT\n*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let (script, n) = cleanup_script(saved, &kube);
        assert_eq!(
            n,
            Removed {
                chains: 1,
                rules: 1
            }
        );
        assert_eq!(
            script,
            "*filter\n-D FORWARD -j KUBE-FORWARD\n-F KUBE-FORWARD\n-X KUBE-FORWARD\nCOMMIT\n"
        );
    }

    #[test]
    fn missing_names_file_means_no_tables() {
        assert!(tables("/nonexistent/ip_tables_names").is_empty());
        let t = Tools {
            names: "/nonexistent/ip_tables_names",
            save: "/nonexistent/save",
            restore: "/nonexistent/restore",
        };
        assert_eq!(remove(&t, &kube), Ok(Outcome::NoTables));
    }

    #[test]
    fn tables_without_tools_are_reported() {
        let dir = std::env::temp_dir().join(format!("knp-legacy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = dir.join("ip_tables_names");
        std::fs::write(&names, "nat\nfilter\n").unwrap();
        let names: &'static str = Box::leak(names.to_str().unwrap().to_string().into_boxed_str());
        let t = Tools {
            names,
            save: "knp-no-such-iptables-legacy-save",
            restore: "knp-no-such-iptables-legacy-restore",
        };
        let got = remove(&t, &kube);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            Ok(Outcome::Skipped(
                "legacy iptables tables exist (nat, filter) but cannot be read: knp-no-such-iptables-legacy-save is not installed".into()
            ))
        );
    }
}
