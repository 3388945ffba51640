//! kube-proxy's iptables rules as iptables-nft keeps them: nftables tables `filter`,
//! `nat`, `mangle`, `raw` and `security` of families `ip` and `ip6`, with its chains
//! (`KUBE-SERVICES`, `KUBE-SVC-*`, ...) and, in other chains (the built-in
//! `PREROUTING`, `OUTPUT`, ... or another program's), rules that jump to them (an
//! `immediate` expression whose verdict is `jump`/`goto` to the chain).
//!
//! Removed over netlink, without iptables' tools: per family, the tables' chains and
//! rules (with their handles) are dumped, and one transaction deletes by handle every
//! rule outside the removed chains that jumps to one of them, flushes the removed
//! chains, and deletes them. No moment exists where a jump points at a missing chain,
//! and no other chain or rule is touched. A transaction that fails because the tables
//! changed meanwhile (a rule deleted by someone else, a new jump) is planned and tried
//! again.

#![forbid(unsafe_code)]

use crate::netlink::consts::{
    NFNL_SUBSYS_NFTABLES, NFT_GOTO, NFT_JUMP, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_GETCHAIN,
    NFT_MSG_GETRULE, NLM_F_ACK, NLM_F_REQUEST,
};
use crate::netlink::{self, Batch, Kernel};
use crate::ruleset::ir::Family;

use super::nl::{self, Attrs};
use super::Removed;

/// The tables iptables-nft uses.
pub const TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// `NFNL_MSG_BATCH_BEGIN` / `_END` (linux/netfilter/nfnetlink.h).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

// linux/netfilter/nf_tables.h
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Tries of the transaction when the tables changed between dump and commit.
const TRIES: usize = 3;

/// A chain: (table, name).
pub type TableChain = (String, String);

/// One rule as the dump shows it: where it is, its handle, and the chains its
/// `immediate` verdicts jump or go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// table
    pub table: String,
    /// chain
    pub chain: String,
    /// handle
    pub handle: u64,
    /// chains it jumps or goes to
    pub targets: Vec<String>,
}

/// The attributes of a dumped message (after `nlmsghdr` and `nfgenmsg`).
fn body(msg: &[u8]) -> &[u8] {
    msg.get(20..).unwrap_or_default()
}

/// A dumped chain: (table, name).
pub fn parse_chain(msg: &[u8]) -> Option<(String, String)> {
    let b = body(msg);
    Some((
        nl::string(nl::find(b, NFTA_CHAIN_TABLE)?),
        nl::string(nl::find(b, NFTA_CHAIN_NAME)?),
    ))
}

/// A dumped rule.
pub fn parse_rule(msg: &[u8]) -> Option<RuleRef> {
    let b = body(msg);
    let mut targets = Vec::new();
    for (ty, elem) in nl::attrs(nl::find(b, NFTA_RULE_EXPRESSIONS).unwrap_or_default()) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let name = nl::find(elem, NFTA_EXPR_NAME).map(nl::string);
        if name.as_deref() != Some("immediate") {
            continue;
        }
        let verdict = nl::find(elem, NFTA_EXPR_DATA)
            .and_then(|d| nl::find(d, NFTA_IMMEDIATE_DATA))
            .and_then(|d| nl::find(d, NFTA_DATA_VERDICT));
        let Some(verdict) = verdict else { continue };
        let code = nl::find(verdict, NFTA_VERDICT_CODE)
            .and_then(nl::get_be32)
            .map(|c| c as i32);
        if code == Some(NFT_JUMP) || code == Some(NFT_GOTO) {
            if let Some(c) = nl::find(verdict, NFTA_VERDICT_CHAIN) {
                targets.push(nl::string(c));
            }
        }
    }
    Some(RuleRef {
        table: nl::string(nl::find(b, NFTA_RULE_TABLE)?),
        chain: nl::string(nl::find(b, NFTA_RULE_CHAIN)?),
        handle: nl::find(b, NFTA_RULE_HANDLE).and_then(nl::get_be64)?,
        targets,
    })
}

/// What one family's transaction deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// jumps into removed chains, from chains that stay: (table, chain, handle)
    pub jumps: Vec<(String, String, u64)>,
    /// removed chains: (table, chain), flushed, then deleted
    pub chains: Vec<(String, String)>,
}

impl Plan {
    /// Nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }

    /// The counts for the report.
    pub fn removed(&self) -> Removed {
        Removed {
            chains: self.chains.len(),
            rules: self.jumps.len(),
        }
    }
}

/// The deletions for the dumped `chains` and `rules` of one family's tables, removing
/// the chains `wanted` accepts (given table and chain).
pub fn plan(
    chains: &[(String, String)],
    rules: &[RuleRef],
    wanted: &dyn Fn(&str, &str) -> bool,
) -> Plan {
    let removed: Vec<(String, String)> = chains
        .iter()
        .filter(|(t, c)| wanted(t, c))
        .cloned()
        .collect();
    let is_removed = |t: &str, c: &str| removed.iter().any(|(rt, rc)| rt == t && rc == c);
    let jumps = rules
        .iter()
        .filter(|r| !is_removed(&r.table, &r.chain))
        .filter(|r| r.targets.iter().any(|t| is_removed(&r.table, t)))
        .map(|r| (r.table.clone(), r.chain.clone(), r.handle))
        .collect();
    Plan {
        jumps,
        chains: removed,
    }
}

/// One family's deletions as one batch: BEGIN; `DELRULE` by handle for each jump;
/// `DELRULE` without a handle (a flush) for each removed chain; `DELCHAIN` for each;
/// END. Returns the batch and a description of each message between BEGIN and END.
pub fn encode(family: Family, plan: &Plan) -> (Batch, Vec<String>) {
    let nfgen = |fam: u8, res_id: u16| {
        let mut v = vec![fam, 0];
        v.extend_from_slice(&res_id.to_be_bytes());
        v
    };
    let nft = |msg: u16| (NFNL_SUBSYS_NFTABLES << 8) | msg;
    let mut payloads: Vec<(u16, Vec<u8>, String)> = Vec::new();
    let fam = family.nft();
    for (table, chain, handle) in &plan.jumps {
        let a = Attrs::new()
            .str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain)
            .be64(NFTA_RULE_HANDLE, *handle);
        payloads.push((
            nft(NFT_MSG_DELRULE),
            a.into_bytes(),
            format!("delete rule {fam} {table} {chain} handle {handle}"),
        ));
    }
    for (table, chain) in &plan.chains {
        let a = Attrs::new()
            .str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain);
        payloads.push((
            nft(NFT_MSG_DELRULE),
            a.into_bytes(),
            format!("flush chain {fam} {table} {chain}"),
        ));
    }
    for (table, chain) in &plan.chains {
        let a = Attrs::new()
            .str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, chain);
        payloads.push((
            nft(NFT_MSG_DELCHAIN),
            a.into_bytes(),
            format!("delete chain {fam} {table} {chain}"),
        ));
    }
    let begin_seq = 1u32;
    let mut bytes = nl::message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        begin_seq,
        &nfgen(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES),
    );
    let last = payloads.len();
    let mut what = Vec::with_capacity(last);
    for (i, (ty, attrs, describe)) in payloads.into_iter().enumerate() {
        let flags = if i + 1 == last {
            NLM_F_REQUEST | NLM_F_ACK
        } else {
            NLM_F_REQUEST
        };
        let mut p = nfgen(family.nfproto() as u8, 0);
        p.extend(attrs);
        bytes.extend(nl::message(ty, flags, begin_seq + 1 + i as u32, &p));
        what.push(describe);
    }
    let end_at = bytes.len();
    bytes.extend(nl::message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        begin_seq + 1 + last as u32,
        &nfgen(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES),
    ));
    (Batch::from_encoded(bytes, begin_seq, last, end_at), what)
}

/// Dumps one family's iptables-nft tables.
fn dump(
    kernel: &mut Kernel,
    family: Family,
) -> Result<(Vec<TableChain>, Vec<RuleRef>), netlink::Error> {
    let present: Vec<String> = kernel
        .table_names(family)?
        .into_iter()
        .filter(|t| TABLES.contains(&t.as_str()))
        .collect();
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for table in &present {
        let filter = Attrs::new().str(NFTA_CHAIN_TABLE, table).into_bytes();
        for m in kernel
            .conn()
            .dump(NFT_MSG_GETCHAIN, family.nfproto(), &filter)?
        {
            if let Some((t, c)) = parse_chain(&m) {
                if t == *table {
                    chains.push((t, c));
                }
            }
        }
        let filter = Attrs::new().str(NFTA_RULE_TABLE, table).into_bytes();
        for m in kernel
            .conn()
            .dump(NFT_MSG_GETRULE, family.nfproto(), &filter)?
        {
            if let Some(r) = parse_rule(&m) {
                if r.table == *table {
                    rules.push(r);
                }
            }
        }
    }
    Ok((chains, rules))
}

/// Removes the chains `wanted` accepts, and the jumps to them, from one family's
/// iptables-nft tables in one transaction.
pub fn remove(
    kernel: &mut Kernel,
    family: Family,
    wanted: &dyn Fn(&str, &str) -> bool,
) -> Result<Removed, netlink::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (chains, rules) = dump(kernel, family)?;
        let plan = plan(&chains, &rules, wanted);
        if plan.is_empty() {
            return Ok(Removed::default());
        }
        let (batch, what) = encode(family, &plan);
        match kernel.conn().commit(&batch) {
            Ok(()) => return Ok(plan.removed()),
            // The tables changed between the dump and the commit: a rule or chain
            // gone (ENOENT), or a new jump into a chain being deleted (EBUSY).
            Err(e)
                if tries < TRIES && matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EBUSY)) =>
            {
                tracing::debug!(family = family.nft(), error = %crate::error_text::error_chain(&e), "iptables-nft tables changed during the takeover; trying again");
            }
            Err(netlink::Error::Rejected {
                errno, seq, text, ..
            }) => {
                let op = seq
                    .checked_sub(batch.begin_seq + 1)
                    .and_then(|i| what.get(i as usize))
                    .cloned()
                    .or_else(|| (seq == batch.begin_seq).then(|| "commit".to_string()));
                return Err(netlink::Error::Rejected {
                    errno,
                    seq,
                    text,
                    op,
                });
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dumped rule message (nlmsghdr, nfgenmsg, then the rule's attributes) from
    /// linux/netfilter/nf_tables.h, as the kernel writes `-A PREROUTING -m comment
    /// --comment "kubernetes service portals" -j KUBE-SERVICES` (a `match` expression,
    /// a `counter`, then `immediate` with the jump).
    fn dumped_jump(table: &str, chain: &str, handle: u64, code: i32, to: &str) -> Vec<u8> {
        let immediate = Attrs::new().str(NFTA_EXPR_NAME, "immediate").nested(
            NFTA_EXPR_DATA | nl::NLA_F_NESTED,
            Attrs::new().be32(1, 0).nested(
                NFTA_IMMEDIATE_DATA | nl::NLA_F_NESTED,
                Attrs::new().nested(
                    NFTA_DATA_VERDICT | nl::NLA_F_NESTED,
                    Attrs::new()
                        .be32(NFTA_VERDICT_CODE, code as u32)
                        .str(NFTA_VERDICT_CHAIN, to),
                ),
            ),
        );
        let exprs = Attrs::new()
            .nested(
                NFTA_LIST_ELEM | nl::NLA_F_NESTED,
                Attrs::new().str(NFTA_EXPR_NAME, "match").nested(
                    NFTA_EXPR_DATA | nl::NLA_F_NESTED,
                    Attrs::new().str(1, "comment"),
                ),
            )
            .nested(
                NFTA_LIST_ELEM | nl::NLA_F_NESTED,
                Attrs::new().str(NFTA_EXPR_NAME, "counter"),
            )
            .nested(NFTA_LIST_ELEM | nl::NLA_F_NESTED, immediate);
        let attrs = Attrs::new()
            .str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain)
            .be64(NFTA_RULE_HANDLE, handle)
            .nested(NFTA_RULE_EXPRESSIONS | nl::NLA_F_NESTED, exprs);
        let mut p = vec![libc::NFPROTO_IPV4 as u8, 0, 0, 0];
        p.extend(attrs.into_bytes());
        nl::message((NFNL_SUBSYS_NFTABLES << 8) | 6, 0, 9, &p)
    }

    #[test]
    fn a_dumped_jump_names_its_target() {
        let r = parse_rule(&dumped_jump(
            "nat",
            "PREROUTING",
            3,
            NFT_JUMP,
            "KUBE-SERVICES",
        ))
        .expect("a rule");
        assert_eq!(
            r,
            RuleRef {
                table: "nat".into(),
                chain: "PREROUTING".into(),
                handle: 3,
                targets: vec!["KUBE-SERVICES".into()],
            }
        );
        let g = parse_rule(&dumped_jump("nat", "X", 4, NFT_GOTO, "KUBE-SEP-A")).unwrap();
        assert_eq!(g.targets, vec!["KUBE-SEP-A".to_string()]);
        // `-j ACCEPT` is an immediate verdict without a chain.
        let accept = parse_rule(&dumped_jump("filter", "INPUT", 5, 1, "")).unwrap();
        assert!(accept.targets.is_empty(), "{accept:?}");
    }

    fn rule(table: &str, chain: &str, handle: u64, to: &[&str]) -> RuleRef {
        RuleRef {
            table: table.into(),
            chain: chain.into(),
            handle,
            targets: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plan_removes_kube_chains_and_only_the_jumps_into_them() {
        let chains: Vec<(String, String)> = [
            ("nat", "PREROUTING"),
            ("nat", "KUBE-SERVICES"),
            ("nat", "KUBE-SVC-A"),
            ("filter", "INPUT"),
            ("filter", "KEEP-ME"),
            ("filter", "KUBE-FIREWALL"),
        ]
        .iter()
        .map(|(t, c)| (t.to_string(), c.to_string()))
        .collect();
        let rules = vec![
            rule("nat", "PREROUTING", 3, &["KUBE-SERVICES"]),
            rule("nat", "PREROUTING", 4, &[]),
            rule("nat", "KUBE-SERVICES", 5, &["KUBE-SVC-A"]),
            rule("filter", "INPUT", 6, &["KEEP-ME"]),
            rule("filter", "INPUT", 7, &["KUBE-FIREWALL"]),
            // A chain of the same name in another table is not the target.
            rule("filter", "KEEP-ME", 8, &["KUBE-SVC-A"]),
        ];
        let wanted = |_: &str, c: &str| c.starts_with("KUBE-") && c != "KUBE-FIREWALL";
        let p = plan(&chains, &rules, &wanted);
        assert_eq!(p.jumps, vec![("nat".into(), "PREROUTING".into(), 3)]);
        assert_eq!(
            p.chains,
            vec![
                ("nat".into(), "KUBE-SERVICES".into()),
                ("nat".into(), "KUBE-SVC-A".into())
            ]
        );
        assert_eq!(
            p.removed(),
            Removed {
                chains: 2,
                rules: 1
            }
        );
    }

    /// The batch from nf_tables.h and nfnetlink.h: BEGIN (res_id NFNL_SUBSYS_NFTABLES,
    /// big-endian), DELRULE by handle (NFTA_RULE_HANDLE is a be64), a flush (DELRULE
    /// without a handle), DELCHAIN; only the last message before END asks for an ACK.
    #[test]
    fn the_batch_deletes_jumps_then_flushes_then_deletes() {
        let p = Plan {
            jumps: vec![("nat".into(), "PREROUTING".into(), 0x0102)],
            chains: vec![("nat".into(), "KUBE-X".into())],
        };
        let (batch, what) = encode(Family::V4, &p);
        assert_eq!(
            what,
            vec![
                "delete rule ip nat PREROUTING handle 258",
                "flush chain ip nat KUBE-X",
                "delete chain ip nat KUBE-X"
            ]
        );
        assert_eq!((batch.begin_seq, batch.ack_seq, batch.messages), (1, 4, 3));
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // BEGIN: nlmsghdr (len 20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq 1), nfgenmsg
            &[20, 0, 0, 0][..], &[0x10, 0], &[1, 0], &[1, 0, 0, 0], &[0; 4], &[0, 0, 0, 10],
            // DELRULE ip nat PREROUTING handle 0x102
            &[56, 0, 0, 0], &[8, 10], &[1, 0], &[2, 0, 0, 0], &[0; 4], &[2, 0, 0, 0],
            &[8, 0, 1, 0], b"nat\0",
            &[15, 0, 2, 0], b"PREROUTING\0", &[0],
            &[12, 0, 3, 0], &[0, 0, 0, 0, 0, 0, 1, 2],
            // DELRULE ip nat KUBE-X (no handle: flush)
            &[40, 0, 0, 0], &[8, 10], &[1, 0], &[3, 0, 0, 0], &[0; 4], &[2, 0, 0, 0],
            &[8, 0, 1, 0], b"nat\0",
            &[11, 0, 2, 0], b"KUBE-X\0", &[0],
            // DELCHAIN ip nat KUBE-X, with the ACK request
            &[40, 0, 0, 0], &[5, 10], &[5, 0], &[4, 0, 0, 0], &[0; 4], &[2, 0, 0, 0],
            &[8, 0, 1, 0], b"nat\0",
            &[11, 0, 3, 0], b"KUBE-X\0", &[0],
            // END
            &[20, 0, 0, 0], &[0x11, 0], &[1, 0], &[5, 0, 0, 0], &[0; 4], &[0, 0, 0, 10],
        ]
        .concat();
        if cfg!(target_endian = "little") {
            assert_eq!(batch.bytes, expected);
        }
    }
}
