//! The kernel side of a trace: the temporary table that marks packets, the dumps that
//! name rules and chains, and the socket the trace events arrive on.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use nftnl_sys as sys;

use super::event::{attrs, be32, nft_payload, str_attr};
use super::rules::{HookInfo, Index};
use super::Filter;
use crate::netlink::consts::*;
use crate::netlink::encode::{comment_udata, BatchBuilder};
use crate::netlink::expr::RawRule;
use crate::netlink::ffi::{self, EncodeError, Expr, ExprKind, Payload};
use crate::netlink::{Conn, Error as NlError};
use crate::ruleset::ir::{Family, Field, Stmt, TABLE_NAME};

/// The temporary table's name, in each family traced (`ip`, `ip6`).
pub const TRACE_TABLE: &str = "kube-nft-proxy-trace";

/// `NFT_TABLE_F_OWNER` (Linux 5.12): the table belongs to the netlink socket that
/// created it, and the kernel deletes it when that socket closes.
const NFT_TABLE_F_OWNER: u32 = 0x2;
/// `NFT_META_NFTRACE`
const NFT_META_NFTRACE: u32 = 12;
// enum nft_table_attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_OWNER: u16 = 7;
/// `NFT_MSG_TRACE`'s multicast group.
const NFNLGRP_NFTRACE: u32 = 9;
/// One base chain of the temporary table.
struct TraceChain {
    name: &'static str,
    /// hook number and nft's name for it
    hook: (u32, &'static str),
    priority: i32,
    /// whether it holds the marking rule (or no rule at all)
    marks: bool,
}

/// The temporary table's chains. The marking chains sit at prerouting (packets that
/// arrive) and output (packets the node sends), at nft's `raw` priority: before
/// conntrack (-200) and before our nat chains (-100), so that the first packet of a
/// connection is marked before it is DNATed. The empty chain at the end of
/// postrouting, after source NAT (100), reports the headers a packet leaves with: it
/// shows a masquerade, and the headers a packet the node sends itself comes back in
/// with.
const CHAINS: [TraceChain; 3] = [
    TraceChain {
        name: "mark-prerouting",
        hook: (0, "prerouting"),
        priority: -300,
        marks: true,
    },
    TraceChain {
        name: "mark-output",
        hook: (3, "output"),
        priority: -300,
        marks: true,
    },
    TraceChain {
        name: "leave-postrouting",
        hook: (4, "postrouting"),
        priority: 500,
        marks: false,
    },
];
/// What `nft list ruleset` shows next to the marking rule.
const RULE_COMMENT: &str = "kube-nft-proxy trace: mark packets for tracing";

/// Errors of the kernel side, each named for the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to nftables failed.
    #[error("{step}")]
    Nftables {
        /// what was being done
        step: String,
        /// the netlink error
        #[source]
        source: NlError,
    },
    /// A message could not be encoded.
    #[error("cannot encode {what}")]
    Encode {
        /// the object
        what: String,
        /// why
        #[source]
        source: EncodeError,
    },
    /// Another trace owns the temporary table.
    #[error(
        "another `kube-nft-proxy trace` is running in this network namespace (table {family} \
         {TRACE_TABLE} belongs to netlink port {owner}); wait for it to end"
    )]
    Busy {
        /// the table's family
        family: &'static str,
        /// the owning socket's port id
        owner: u32,
    },
    /// The trace event socket failed.
    #[error("{step}")]
    Socket {
        /// what was being done
        step: &'static str,
        /// the system error
        #[source]
        source: io::Error,
    },
}

fn nft_err(step: impl Into<String>) -> impl FnOnce(NlError) -> Error {
    let step = step.into();
    move |source| Error::Nftables { step, source }
}

fn enc_err(what: impl Into<String>) -> impl FnOnce(EncodeError) -> Error {
    let what = what.into();
    move |source| Error::Encode { what, source }
}

/// The temporary table of one family as a dump shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableState {
    /// the port id of the socket that owns it, if it is owned
    owner: Option<u32>,
}

/// Whether the temporary table exists in `family`, and who owns it.
fn trace_table(conn: &mut Conn, family: Family) -> Result<Option<TableState>, Error> {
    let msgs = conn
        .dump(NFT_MSG_GETTABLE, family.nfproto(), &[])
        .map_err(nft_err(format!("cannot list the {} tables", family.nft())))?;
    for m in &msgs {
        let Some((_, _, payload)) = nft_payload(m) else {
            continue;
        };
        let a: Vec<_> = attrs(payload).collect();
        let get = |ty| a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v);
        if get(NFTA_TABLE_NAME).map(str_attr).as_deref() != Some(TRACE_TABLE) {
            continue;
        }
        let flags = get(NFTA_TABLE_FLAGS).and_then(be32).unwrap_or(0);
        let owner = get(NFTA_TABLE_OWNER).and_then(be32);
        return Ok(Some(TableState {
            owner: owner.filter(|_| flags & NFT_TABLE_F_OWNER != 0),
        }));
    }
    Ok(None)
}

/// Describes the operations of a batch for its errors.
struct Ops {
    batch: BatchBuilder,
    names: Vec<String>,
}

impl Ops {
    fn new() -> Ops {
        Ops {
            batch: BatchBuilder::new(),
            names: Vec::new(),
        }
    }

    fn add(
        &mut self,
        name: String,
        msg: u16,
        family: Family,
        flags: u16,
        payload: Payload<'_>,
    ) -> Result<(), Error> {
        let i = self.names.len();
        self.batch
            .add_message(i, msg, family, flags, payload)
            .map_err(enc_err(name.clone()))?;
        self.names.push(name);
        Ok(())
    }

    fn commit(self, conn: &mut Conn, step: &str) -> Result<(), Error> {
        if self.names.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finish();
        conn.commit(&batch).map_err(|e| {
            let e = match e {
                NlError::Rejected {
                    errno, seq, text, ..
                } => NlError::Rejected {
                    errno,
                    seq,
                    text,
                    op: batch
                        .op_for_seq(seq)
                        .and_then(|i| self.names.get(i))
                        .cloned(),
                },
                e => e,
            };
            Error::Nftables {
                step: step.to_string(),
                source: e,
            }
        })
    }

    fn table(&mut self, family: Family, msg: u16, flags: Option<u32>) -> Result<(), Error> {
        let verb = if msg == NFT_MSG_DELTABLE {
            "delete"
        } else {
            "add"
        };
        let name = format!("{verb} table {} {TRACE_TABLE}", family.nft());
        let mut t = ffi::Table::new().map_err(enc_err(name.clone()))?;
        t.set_name(TRACE_TABLE).map_err(enc_err(name.clone()))?;
        t.set_family(family.nfproto() as u32)
            .map_err(enc_err(name.clone()))?;
        if let Some(f) = flags {
            t.set_flags(f).map_err(enc_err(name.clone()))?;
        }
        let create = if msg == NFT_MSG_NEWTABLE {
            NLM_F_CREATE
        } else {
            0
        };
        self.add(name, msg, family, create, Payload::Table(&t))
    }
}

/// Deletes the temporary tables an earlier trace left behind (one killed on a kernel
/// without owned tables, or by an older version); fails if another trace that is still
/// running owns one. Returns the families it deleted a table of.
pub fn remove_leftovers(conn: &mut Conn) -> Result<Vec<Family>, Error> {
    let mut ops = Ops::new();
    let mut removed = Vec::new();
    for f in Family::ALL {
        match trace_table(conn, f)? {
            None => {}
            Some(TableState { owner: Some(owner) }) => {
                return Err(Error::Busy {
                    family: f.nft(),
                    owner,
                })
            }
            Some(TableState { owner: None }) => {
                ops.table(f, NFT_MSG_DELTABLE, None)?;
                removed.push(f);
            }
        }
    }
    ops.commit(conn, "cannot delete the table an earlier trace left behind")?;
    Ok(removed)
}

/// The statements that select the traced packets of `family`: one rule each (several
/// when a port is given without a protocol: one per protocol with ports).
fn selectors(filter: &Filter) -> Vec<Vec<Stmt>> {
    let host = |a: IpAddr| IpNet::from(a);
    let mut common = Vec::new();
    if let Some(s) = filter.source {
        common.push(Stmt::Cidr {
            field: Field::Saddr,
            net: host(s),
            negate: false,
        });
    }
    if let Some(d) = filter.destination {
        common.push(Stmt::Cidr {
            field: Field::Daddr,
            net: host(d),
            negate: false,
        });
    }
    let protocols: Vec<Option<u8>> = match (filter.protocol, filter.port) {
        (Some(p), _) => vec![Some(p)],
        // `th dport` reads the transport header of any protocol: only where it is a port.
        (None, Some(_)) => super::PORT_PROTOCOLS.iter().map(|p| Some(*p)).collect(),
        (None, None) => vec![None],
    };
    protocols
        .into_iter()
        .map(|p| {
            let mut r = common.clone();
            if let Some(p) = p {
                r.push(Stmt::L4Proto(p));
            }
            if let Some(port) = filter.port {
                r.push(Stmt::Dport(port));
            }
            r
        })
        .collect()
}

/// Adds the temporary table, its marking chains and rules for `families` in one
/// transaction on `conn`, owned by `conn`'s socket where the kernel supports it (the
/// kernel then deletes the table if this process dies without removing it). Returns
/// whether the table is owned.
pub fn install(conn: &mut Conn, families: &[Family], filter: &Filter) -> Result<bool, Error> {
    match install_with(conn, families, filter, Some(NFT_TABLE_F_OWNER)) {
        // Linux before 5.12 refuses the owner flag: an ordinary table, removed by us.
        Err(Error::Nftables { source, .. }) if source.errno() == Some(libc::EOPNOTSUPP) => {
            install_with(conn, families, filter, None).map(|()| false)
        }
        r => r.map(|()| true),
    }
}

fn install_with(
    conn: &mut Conn,
    families: &[Family],
    filter: &Filter,
    flags: Option<u32>,
) -> Result<(), Error> {
    let mut ops = Ops::new();
    for &f in families {
        ops.table(f, NFT_MSG_NEWTABLE, flags)?;
        for tc in &CHAINS {
            let name = format!(
                "add chain {} {TRACE_TABLE} {} {{ type filter hook {} priority {}; }}",
                f.nft(),
                tc.name,
                tc.hook.1,
                tc.priority
            );
            let mut c = ffi::Chain::new().map_err(enc_err(name.clone()))?;
            (|| {
                c.set_table(TRACE_TABLE)?;
                c.set_name(tc.name)?;
                c.set_family(f.nfproto() as u32)?;
                c.set_hooknum(tc.hook.0)?;
                c.set_priority(tc.priority)?;
                c.set_type("filter")?;
                c.set_policy(NF_ACCEPT as u32)
            })()
            .map_err(enc_err(name.clone()))?;
            ops.add(name, NFT_MSG_NEWCHAIN, f, NLM_F_CREATE, Payload::Chain(&c))?;
        }
        for tc in CHAINS.iter().filter(|c| c.marks) {
            for stmts in selectors(filter) {
                let name = format!(
                    "add rule {} {TRACE_TABLE} {} {} meta nftrace set 1",
                    f.nft(),
                    tc.name,
                    stmts
                        .iter()
                        .map(|s| crate::ruleset::render::stmt(s, f))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let mut r = mark_rule(f, tc.name, &stmts).map_err(enc_err(name.clone()))?;
                ops.add(
                    name,
                    NFT_MSG_NEWRULE,
                    f,
                    NLM_F_CREATE | NLM_F_APPEND,
                    Payload::Rule(r.rule()),
                )?;
            }
        }
    }
    ops.commit(conn, "cannot add the temporary table that marks packets")
}

/// Records the hooks of the temporary table's chains in `index` (they did not exist
/// when it read the chains).
pub fn note_mark_chains(families: &[Family], index: &mut Index) {
    for f in families {
        for tc in &CHAINS {
            let hook = HookInfo {
                hooknum: tc.hook.0,
                priority: tc.priority,
                nat: false,
            };
            index.add_hook(f.nfproto() as u8, TRACE_TABLE, tc.name, hook);
        }
    }
}

/// `STMTS meta nftrace set 1`, with a comment.
fn mark_rule(f: Family, chain: &str, stmts: &[Stmt]) -> Result<RawRule, EncodeError> {
    let mut r = RawRule::new(f, TRACE_TABLE, chain)?;
    for s in stmts {
        r.stmt(s, f)?;
    }
    r.rule().add_expr(
        Expr::new(ExprKind::Immediate)?
            .u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_1)?
            .data(sys::NFTNL_EXPR_IMM_DATA, &[1])?,
    );
    r.rule().add_expr(
        Expr::new(ExprKind::Meta)?
            .u32(sys::NFTNL_EXPR_META_KEY, NFT_META_NFTRACE)?
            .u32(sys::NFTNL_EXPR_META_SREG, NFT_REG_1)?,
    );
    r.set_userdata(&comment_udata(RULE_COMMENT))?;
    Ok(r)
}

/// Deletes the temporary table of `families` (those that still exist).
pub fn remove(conn: &mut Conn, families: &[Family]) -> Result<(), Error> {
    let mut ops = Ops::new();
    for &f in families {
        if trace_table(conn, f)?.is_some() {
            ops.table(f, NFT_MSG_DELTABLE, None)?;
        }
    }
    ops.commit(conn, "cannot delete the temporary table")
}

/// Reads the rules of our table of `family` into `index` (nothing if it does not
/// exist).
pub fn read_rules(conn: &mut Conn, family: Family, index: &mut Index) -> Result<(), Error> {
    // NFTA_RULE_TABLE and NFTA_SET_TABLE are both attribute 1.
    let mut req = Vec::new();
    let name = {
        let mut v = TABLE_NAME.as_bytes().to_vec();
        v.push(0);
        v
    };
    req.extend(((4 + name.len()) as u16).to_ne_bytes());
    req.extend(1u16.to_ne_bytes());
    req.extend(&name);
    while req.len() % 4 != 0 {
        req.push(0);
    }
    let step = |what: &str| {
        format!(
            "cannot list the {what} of table {} {TABLE_NAME}",
            family.nft()
        )
    };
    let dump = |conn: &mut Conn, msg: u16, what: &str| match conn.dump(msg, family.nfproto(), &req)
    {
        Ok(m) => Ok(m),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(nft_err(step(what))(e)),
    };
    // The rule decoder must know which sets are interval sets.
    let interval: Vec<String> = dump(conn, NFT_MSG_GETSET, "sets")?
        .iter()
        .filter_map(|m| ffi::Set::parse(m))
        .filter(|s| s.flags().unwrap_or(0) & NFT_SET_INTERVAL != 0)
        .map(|s| s.name())
        .collect();
    let msgs = dump(conn, NFT_MSG_GETRULE, "rules")?;
    index.clear_rules(family.nfproto() as u8, TABLE_NAME);
    index.add_rules(&msgs, &|set| interval.iter().any(|n| n == set));
    Ok(())
}

/// Reads every chain of every table (for the hooks of base chains) into `index`.
pub fn read_chains(conn: &mut Conn, index: &mut Index) -> Result<(), Error> {
    let msgs = conn
        .dump(NFT_MSG_GETCHAIN, libc::NFPROTO_UNSPEC as u16, &[])
        .map_err(nft_err("cannot list the chains"))?;
    index.add_chains(&msgs);
    Ok(())
}

/// The socket trace events arrive on, registered with the tokio runtime.
pub struct EventSocket {
    sock: tokio::io::unix::AsyncFd<mnl::Socket>,
}

impl EventSocket {
    /// Opens a netfilter socket that listens to the trace group (in a tokio runtime).
    /// Its receive buffer is made large: events come in bursts, and a full buffer drops
    /// them.
    pub fn open() -> Result<EventSocket, Error> {
        let sock = mnl::Socket::open(mnl::Bus::Netfilter).map_err(|source| Error::Socket {
            step: "cannot open a netfilter netlink socket",
            source,
        })?;
        sock.bind(1 << (NFNLGRP_NFTRACE - 1), 0)
            .map_err(|source| Error::Socket {
                step: "cannot listen to the nftables trace events (NFNLGRP_NFTRACE)",
                source,
            })?;
        // Best effort: without CAP_NET_ADMIN only the default size is allowed.
        let _ = ffi::setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
        let sock = ffi::register_readable(sock).map_err(|source| Error::Socket {
            step: "cannot wait for trace events",
            source,
        })?;
        Ok(EventSocket { sock })
    }

    /// Waits until events are queued (or an error is pending).
    pub async fn readable(
        &self,
    ) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, mnl::Socket>> {
        self.sock.readable().await
    }

    /// Receives what is queued without blocking: `Ok(None)` when nothing is.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match ffi::recv_nonblocking(self.sock.get_ref(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(
        src: Option<&str>,
        dst: Option<&str>,
        proto: Option<u8>,
        port: Option<u16>,
    ) -> Filter {
        Filter {
            source: src.map(|s| s.parse().unwrap()),
            destination: dst.map(|s| s.parse().unwrap()),
            protocol: proto,
            port,
        }
    }

    fn text(f: &Filter) -> Vec<String> {
        selectors(f)
            .iter()
            .map(|r| {
                r.iter()
                    .map(|s| crate::ruleset::render::stmt(s, Family::V4))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn selectors_follow_the_flags() {
        assert_eq!(text(&filter(None, None, None, None)), vec![""]);
        assert_eq!(
            text(&filter(
                Some("10.0.1.2"),
                Some("172.30.0.10"),
                Some(6),
                Some(80)
            )),
            vec!["ip saddr 10.0.1.2 ip daddr 172.30.0.10 meta l4proto tcp th dport 80"]
        );
        assert_eq!(
            text(&filter(None, None, None, Some(53))),
            vec![
                "meta l4proto tcp th dport 53",
                "meta l4proto udp th dport 53",
                "meta l4proto sctp th dport 53"
            ]
        );
    }

    #[test]
    fn the_marking_rule_encodes() {
        let f = filter(None, Some("172.30.0.10"), Some(17), Some(53));
        for stmts in selectors(&f) {
            assert!(mark_rule(Family::V4, "mark-prerouting", &stmts).is_ok());
        }
    }
}
