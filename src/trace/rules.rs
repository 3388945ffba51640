//! What a trace event's rule and chain are: our tables' rules by handle (chain,
//! position, digest, comment) and every base chain's hook, read from the kernel's dumps
//! at start. Pure: built from the dump messages.

use std::collections::HashMap;

use super::event::{attrs, be32, be64, nft_payload, str_attr};
use crate::netlink::encode::parse_rule_digest;

// enum nft_rule_attributes
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
// enum nft_chain_attributes
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_CHAIN_TYPE: u16 = 7;
/// `NFTNL_UDATA_RULE_COMMENT`: a rule comment in the rule's user data.
const UDATA_COMMENT: u8 = 0;

/// One rule of our tables as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// the table's family (NFPROTO_*)
    pub family: u8,
    /// the table
    pub table: String,
    /// the chain
    pub chain: String,
    /// 1 for the chain's first rule
    pub position: usize,
    /// the kernel's handle
    pub handle: u64,
    /// our digest of the rule (from its user data), if it carries one
    pub digest: Option<u64>,
    /// the rule's comment, if any
    pub comment: Option<String>,
    /// the whole `NFT_MSG_NEWRULE` message of the dump, for a decoder of the rule's
    /// expressions
    pub message: Vec<u8>,
}

/// What a trace prints for a rule of our tables. The one place that says what a rule
/// is: today its chain, position, digest and comment; once rules read back from the
/// kernel can be decoded into the IR, the rule's nft text.
pub fn describe_rule(rule: &RuleInfo) -> String {
    let mut s = format!("{} rule {}", rule.chain, rule.position);
    match rule.digest {
        Some(d) => s.push_str(&format!(" (digest {d:016x})")),
        None => s.push_str(" (no digest: not a rule kube-nft-proxy wrote)"),
    }
    if let Some(c) = &rule.comment {
        s.push_str(&format!(" \"{c}\""));
    }
    s
}

/// A rule comment in a rule's user data (type-length-value, as nft writes it).
fn rule_comment(ud: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= ud.len() {
        let (ty, len) = (ud[off], ud[off + 1] as usize);
        let v = ud.get(off + 2..off + 2 + len)?;
        if ty == UDATA_COMMENT {
            return Some(str_attr(v));
        }
        off += 2 + len;
    }
    None
}

/// A base chain's hook and priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// the hook number (NF_INET_*, NF_NETDEV_*, ...)
    pub hooknum: u32,
    /// the priority
    pub priority: i32,
    /// a `type nat` chain (where NAT decisions are made)
    pub nat: bool,
}

/// The name of hook `hooknum` in a table of `family` (nft's words).
pub fn hook_name(family: u8, hooknum: u32) -> String {
    const NFPROTO_ARP: u8 = 3;
    const NFPROTO_NETDEV: u8 = 5;
    let names: &[&str] = match family {
        NFPROTO_ARP => &["input", "output", "forward"],
        NFPROTO_NETDEV => &["ingress", "egress"],
        _ => &[
            "prerouting",
            "input",
            "forward",
            "output",
            "postrouting",
            "ingress",
        ],
    };
    names
        .get(hooknum as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("hook-{hooknum}"))
}

/// Rules by handle and base chains by name.
#[derive(Clone, Debug, Default)]
pub struct Index {
    rules: HashMap<(u8, String, u64), RuleInfo>,
    hooks: HashMap<(u8, String, String), HookInfo>,
}

impl Index {
    /// Adds the rules of one `NFT_MSG_GETRULE` dump (messages in kernel order, which is
    /// each chain's rule order).
    pub fn add_rules(&mut self, messages: &[Vec<u8>]) {
        let mut positions: HashMap<(u8, String, String), usize> = HashMap::new();
        for m in messages {
            let Some((_, family, payload)) = nft_payload(m) else {
                continue;
            };
            let mut table = None;
            let mut chain = None;
            let mut handle = None;
            let mut userdata: &[u8] = &[];
            for (t, v) in attrs(payload) {
                match t {
                    NFTA_RULE_TABLE => table = Some(str_attr(v)),
                    NFTA_RULE_CHAIN => chain = Some(str_attr(v)),
                    NFTA_RULE_HANDLE => handle = be64(v),
                    NFTA_RULE_USERDATA => userdata = v,
                    _ => {}
                }
            }
            let (Some(table), Some(chain), Some(handle)) = (table, chain, handle) else {
                continue;
            };
            let position = positions
                .entry((family, table.clone(), chain.clone()))
                .or_insert(0);
            *position += 1;
            let info = RuleInfo {
                family,
                table: table.clone(),
                chain,
                position: *position,
                handle,
                digest: parse_rule_digest(userdata),
                comment: rule_comment(userdata),
                message: m.clone(),
            };
            self.rules.insert((family, table, handle), info);
        }
    }

    /// Forgets the rules of one table (before it is read again).
    pub fn clear_rules(&mut self, family: u8, table: &str) {
        self.rules
            .retain(|(f, t, _), _| !(*f == family && t == table));
    }

    /// Adds the base chains of one `NFT_MSG_GETCHAIN` dump.
    pub fn add_chains(&mut self, messages: &[Vec<u8>]) {
        for m in messages {
            let Some((_, family, payload)) = nft_payload(m) else {
                continue;
            };
            let mut table = None;
            let mut name = None;
            let mut hook = None;
            let mut nat = false;
            for (t, v) in attrs(payload) {
                match t {
                    NFTA_CHAIN_TABLE => table = Some(str_attr(v)),
                    NFTA_CHAIN_NAME => name = Some(str_attr(v)),
                    NFTA_CHAIN_HOOK => {
                        let h = attrs(v);
                        let get = |ty| h.iter().find(|(t, _)| *t == ty).and_then(|(_, v)| be32(v));
                        if let (Some(hooknum), Some(priority)) =
                            (get(NFTA_HOOK_HOOKNUM), get(NFTA_HOOK_PRIORITY))
                        {
                            hook = Some(HookInfo {
                                hooknum,
                                priority: priority as i32,
                                nat: false,
                            });
                        }
                    }
                    NFTA_CHAIN_TYPE => nat = str_attr(v) == "nat",
                    _ => {}
                }
            }
            if let (Some(table), Some(name), Some(hook)) = (table, name, hook) {
                self.hooks
                    .insert((family, table, name), HookInfo { nat, ..hook });
            }
        }
    }

    /// Records the hook of a base chain.
    pub fn add_hook(&mut self, family: u8, table: &str, chain: &str, hook: HookInfo) {
        self.hooks
            .insert((family, table.to_string(), chain.to_string()), hook);
    }

    /// The rule of `table` (of `family`) with `handle`.
    pub fn rule(&self, family: u8, table: &str, handle: u64) -> Option<&RuleInfo> {
        self.rules.get(&(family, table.to_string(), handle))
    }

    /// The hook of a base chain (None: a regular chain, or one created after the dump).
    pub fn hook(&self, family: u8, table: &str, chain: &str) -> Option<HookInfo> {
        self.hooks
            .get(&(family, table.to_string(), chain.to_string()))
            .copied()
    }

    /// How many rules are known.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::event::testing::{attr, message, str_attr};
    use super::*;
    use crate::netlink::encode::rule_digest_udata;

    fn rule_msg(chain: &str, handle: u64, ud: &[u8]) -> Vec<u8> {
        let mut p = str_attr(NFTA_RULE_TABLE, "kube-nft-proxy");
        p.extend(str_attr(NFTA_RULE_CHAIN, chain));
        p.extend(attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()));
        if !ud.is_empty() {
            p.extend(attr(NFTA_RULE_USERDATA, ud));
        }
        message((10 << 8) | 6, 2, &p)
    }

    #[test]
    fn rules_get_their_position_digest_and_comment() {
        let mut ud = rule_digest_udata(0x1234);
        ud.extend([UDATA_COMMENT, 3, b'h', b'i', 0]);
        let mut idx = Index::default();
        idx.add_rules(&[
            rule_msg("services", 10, &rule_digest_udata(0xabc)),
            rule_msg("masquerading", 11, &[]),
            rule_msg("services", 14, &ud),
        ]);
        assert_eq!(idx.rule_count(), 3);
        let r = idx.rule(2, "kube-nft-proxy", 14).expect("rule 14");
        assert_eq!((r.chain.as_str(), r.position), ("services", 2));
        assert_eq!(
            describe_rule(r),
            "services rule 2 (digest 0000000000001234) \"hi\""
        );
        let r = idx.rule(2, "kube-nft-proxy", 11).expect("rule 11");
        assert_eq!(r.position, 1);
        assert_eq!(
            describe_rule(r),
            "masquerading rule 1 (no digest: not a rule kube-nft-proxy wrote)"
        );
        assert!(
            idx.rule(10, "kube-nft-proxy", 14).is_none(),
            "another family"
        );
        idx.clear_rules(2, "kube-nft-proxy");
        assert_eq!(idx.rule_count(), 0);
    }

    #[test]
    fn base_chains_get_their_hook() {
        let mut hook = attr(NFTA_HOOK_HOOKNUM, &0u32.to_be_bytes());
        hook.extend(attr(NFTA_HOOK_PRIORITY, &(-100i32).to_be_bytes()));
        let mut p = str_attr(NFTA_CHAIN_TABLE, "kube-nft-proxy");
        p.extend(str_attr(NFTA_CHAIN_NAME, "nat-prerouting"));
        p.extend(attr(NFTA_CHAIN_HOOK | 0x8000, &hook));
        p.extend(str_attr(NFTA_CHAIN_TYPE, "nat"));
        let mut q = str_attr(NFTA_CHAIN_TABLE, "kube-nft-proxy");
        q.extend(str_attr(NFTA_CHAIN_NAME, "services"));
        let mut idx = Index::default();
        idx.add_chains(&[message((10 << 8) | 3, 2, &p), message((10 << 8) | 3, 2, &q)]);
        let h = idx
            .hook(2, "kube-nft-proxy", "nat-prerouting")
            .expect("a base chain");
        assert_eq!(
            (hook_name(2, h.hooknum).as_str(), h.priority, h.nat),
            ("prerouting", -100, true)
        );
        assert_eq!(idx.hook(2, "kube-nft-proxy", "services"), None);
        assert_eq!(hook_name(5, 0), "ingress");
        assert_eq!(hook_name(2, 9), "hook-9");
    }
}
