//! What a trace event's rule and chain are: our tables' rules by handle (chain,
//! position, digest, comment, and the rule's nft text decoded from its expressions) and
//! every base chain's hook, read from the kernel's dumps at start. Pure: built from the
//! dump messages.

use std::collections::HashMap;

use super::event::{attrs, be32, be64, nft_payload, str_attr};
use crate::netlink::encode::parse_rule_digest;
use crate::netlink::rules::{decode_rule, rule_parts};
use crate::ruleset::ir::Family;
use crate::ruleset::render;

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
    /// the rule as nft text, decoded from its expressions and checked against its
    /// digest (None: it does not decode to the rule its digest names)
    pub text: Option<String>,
    /// the whole `NFT_MSG_NEWRULE` message of the dump, for a decoder of the rule's
    /// expressions
    pub message: Vec<u8>,
}

/// What a trace prints for a rule of our tables: its chain, its position and its nft
/// text as the kernel holds it, or its digest when its expressions do not read back as
/// the rule the digest names (another program edited it).
pub fn describe_rule(rule: &RuleInfo) -> String {
    let mut s = format!("{} rule {}", rule.chain, rule.position);
    match (&rule.text, rule.digest) {
        (Some(t), _) => s.push_str(&format!(": {t}")),
        (None, Some(d)) => s.push_str(&format!(
            " (digest {d:016x}; its expressions do not read back as that rule)"
        )),
        (None, None) => s.push_str(" (no digest: not a rule kube-nft-proxy wrote)"),
    }
    if let Some(c) = &rule.comment {
        s.push_str(&format!(" \"{c}\""));
    }
    s
}

/// The nft text of a rule message of a table of `family` (nfgenmsg's), if its
/// expressions decode and give the digest the rule carries.
fn verified_text(family: u8, message: &[u8], interval: &dyn Fn(&str) -> bool) -> Option<String> {
    let family = Family::ALL
        .into_iter()
        .find(|f| f.nfproto() == u16::from(family))?;
    let (_, _, expressions, digest) = rule_parts(message)?;
    let rule = decode_rule(family, expressions, interval).ok()?;
    (digest == Some(render::rule_digest(&rule, family))).then(|| render::rule(&rule, family))
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
    /// each chain's rule order); `interval(set)` says whether a set of their table is an
    /// interval set (which the decoder needs to know).
    pub fn add_rules(&mut self, messages: &[Vec<u8>], interval: &dyn Fn(&str) -> bool) {
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
                text: verified_text(family, m, interval),
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
                        let h: Vec<_> = attrs(v).collect();
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
    use crate::ruleset::diff::Op;
    use crate::ruleset::ir::{Field, Rule, Stmt, Verdict};

    fn rule_msg(chain: &str, handle: u64, ud: &[u8]) -> Vec<u8> {
        let mut p = str_attr(NFTA_RULE_TABLE, "kube-nft-proxy");
        p.extend(str_attr(NFTA_RULE_CHAIN, chain));
        p.extend(attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()));
        if !ud.is_empty() {
            p.extend(attr(NFTA_RULE_USERDATA, ud));
        }
        message((10 << 8) | 6, 2, &p)
    }

    /// A rule message as the kernel dumps it: what our encoder sends for `rule`, with
    /// the handle the kernel adds.
    fn encoded(chain: &str, rule: Rule, handle: u64) -> Vec<u8> {
        use crate::netlink::consts::{NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE};
        let b = crate::netlink::encode(&[Op::AddRule(Family::V4, chain.into(), rule)]).unwrap();
        let mut off = 0;
        while off + 16 <= b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([b.bytes[off + 4], b.bytes[off + 5]]);
            if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
                let mut m = b.bytes[off..off + len].to_vec();
                m.extend(attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()));
                let n = m.len() as u32;
                m[..4].copy_from_slice(&n.to_ne_bytes());
                return m;
            }
            off += (len + 3) & !3;
        }
        panic!("no NEWRULE message")
    }

    #[test]
    fn rules_get_their_position_text_and_comment() {
        let jump = Rule(vec![Stmt::Verdict(Verdict::Jump("services".into()))]);
        let lookup = Rule(vec![
            Stmt::LookupRange {
                fields: vec![Field::Saddr],
                set: "ranges".into(),
                negate: false,
            },
            Stmt::Verdict(Verdict::Drop),
        ]);
        let mut ud = rule_digest_udata(0x1234);
        ud.extend([UDATA_COMMENT, 3, b'h', b'i', 0]);
        let mut idx = Index::default();
        let interval = |s: &str| s == "ranges";
        idx.add_rules(
            &[
                rule_msg("services", 10, &rule_digest_udata(0xabc)),
                encoded("nat-prerouting", jump, 12),
                rule_msg("masquerading", 11, &[]),
                rule_msg("services", 14, &ud),
                encoded("nat-prerouting", lookup, 13),
            ],
            &interval,
        );
        assert_eq!(idx.rule_count(), 5);
        let d = |h| describe_rule(idx.rule(2, "kube-nft-proxy", h).expect("a rule"));
        assert_eq!(d(12), "nat-prerouting rule 1: jump services");
        assert_eq!(d(13), "nat-prerouting rule 2: ip saddr @ranges drop");
        assert_eq!(
            d(14),
            "services rule 2 (digest 0000000000001234; its expressions do not read back as \
             that rule) \"hi\""
        );
        assert_eq!(
            d(11),
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
