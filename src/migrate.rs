//! Taking over a node from upstream kube-proxy without a gap.
//!
//! With `--cleanup-kube-proxy`, once our own rules are committed (so both rule sets
//! serve the same Services for a moment, each DNATing to valid endpoints), we delete
//! what kube-proxy left behind: its `ip`/`ip6 kube-proxy` nftables tables (nftables
//! mode) in one transaction, and its iptables `KUBE-*` chains with the jumps to them
//! (iptables mode; best effort, through `iptables-save`/`iptables-restore` when they
//! are installed).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::netlink::{self, Kernel};
use crate::ruleset::diff::Op;
use crate::ruleset::ir::Family;

/// Upstream kube-proxy's nftables table name.
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// What the cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// nftables tables deleted
    pub tables: usize,
    /// iptables chains deleted
    pub chains: usize,
}

/// Deletes kube-proxy's nftables tables (one transaction) and iptables chains.
pub fn cleanup_kube_proxy(kernel: &mut Kernel) -> Result<Report, netlink::Error> {
    let mut ops = Vec::new();
    for f in Family::ALL {
        if kernel.table_names(f)?.iter().any(|n| n == KUBE_PROXY_TABLE) {
            ops.push(Op::DelForeignTable(f, KUBE_PROXY_TABLE.to_string()));
        }
    }
    kernel.apply(&ops)?;
    let mut r = Report {
        tables: ops.len(),
        chains: 0,
    };
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        match iptables_cleanup(save, restore) {
            Ok(n) => r.chains += n,
            Err(e) => tracing::debug!(tool = save, error = %e, "no iptables cleanup"),
        }
    }
    Ok(r)
}

/// A restore script that removes every `KUBE-*` chain and every rule jumping to one.
pub fn iptables_cleanup_script(saved: &str) -> (String, usize) {
    let mut out = String::new();
    let mut chains = 0;
    let mut table: Option<String> = None;
    let mut body = String::new();
    let mut kube_chains: Vec<String> = Vec::new();
    let flush =
        |table: &Option<String>, body: &mut String, kube: &mut Vec<String>, out: &mut String| {
            if let Some(t) = table {
                if !kube.is_empty() || !body.is_empty() {
                    out.push_str(&format!("*{t}\n"));
                    out.push_str(body);
                    for c in kube.iter() {
                        out.push_str(&format!("-F {c}\n"));
                    }
                    for c in kube.iter() {
                        out.push_str(&format!("-X {c}\n"));
                    }
                    out.push_str("COMMIT\n");
                }
            }
            body.clear();
            kube.clear();
        };
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            flush(&table, &mut body, &mut kube_chains, &mut out);
            table = Some(t.trim().to_string());
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or("");
            if name.starts_with("KUBE-") {
                kube_chains.push(name.to_string());
                chains += 1;
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let jumps_to_kube = rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with("KUBE-"));
            if !chain.starts_with("KUBE-") && jumps_to_kube {
                body.push_str(&format!("-D {rule}\n"));
            }
        } else if line.starts_with("COMMIT") {
            flush(&table, &mut body, &mut kube_chains, &mut out);
            table = None;
        }
    }
    (out, chains)
}

fn iptables_cleanup(save: &str, restore: &str) -> std::io::Result<usize> {
    let saved = Command::new(save).output()?;
    if !saved.status.success() {
        return Err(std::io::Error::other(format!("{save} failed")));
    }
    let (script, chains) = iptables_cleanup_script(&String::from_utf8_lossy(&saved.stdout));
    if script.is_empty() {
        return Ok(0);
    }
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let st = child.wait()?;
    if !st.success() {
        return Err(std::io::Error::other(format!("{restore} failed")));
    }
    Ok(chains)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_script_removes_kube_chains_and_jumps() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j OTHER\n-A KUBE-SERVICES -j KUBE-SVC-ABC\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let (script, n) = iptables_cleanup_script(saved);
        assert_eq!(n, 2);
        assert_eq!(
            script,
            "*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-F KUBE-SERVICES\n-F KUBE-SVC-ABC\n-X KUBE-SERVICES\n-X KUBE-SVC-ABC\nCOMMIT\n"
        );
    }
}
