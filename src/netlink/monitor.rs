//! Notices, as it happens, that another program changed our tables.
//!
//! The kernel multicasts every committed nf_tables change to the `NFNLGRP_NFTABLES`
//! group: one message per object (table, chain, rule, set, element) and, at the end of
//! each transaction, `NFT_MSG_NEWGEN`, each with the netlink port id of the socket
//! that sent the transaction in its header. A listener thread collects, per
//! transaction, whether an object of our tables was touched, and when the port is not
//! one of our own sockets ([`super::socket::own_port`]), raises a flag and wakes the
//! daemon, which
//! then repairs at once, elements included, instead of at the next `--sync-period`
//! reconcile. The generation poll (`Proxier::structure_drifted`) stays as the fallback
//! for a kernel or a sandbox that refuses the subscription.
//!
//! Elements that the packet path adds to our session-affinity sets (`update @set`) are
//! not changes to repair: notifications for sets named `affinity-*` are ignored. A lost
//! notification (the socket's buffer overran: `ENOBUFS`) counts as a foreign change,
//! since what it said is unknown.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::ffi::{netlink_socket, recv_wait, setsockopt_int};

use super::attr::attrs;
use super::consts::NFNL_SUBSYS_NFTABLES;
use crate::ruleset::ir::TABLE_NAME;

/// NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: libc::c_int = 7;
const NFT_MSG_NEWGEN: u16 = 15;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The flag a listener raises; the daemon takes it.
pub struct ForeignChange {
    raised: AtomicBool,
    wake: tokio::sync::Notify,
    socket: Arc<OwnedFd>,
}

impl ForeignChange {
    /// Runs `f` (a sync) with the subscription dropped. While anyone listens, the
    /// kernel builds a notification for every element a transaction adds or deletes:
    /// measured here, a 30k-Service full load took 4.2–5.2 s with nobody listening and
    /// 9.7–12.7 s with one listener that read nothing. So the daemon listens between
    /// its syncs only; a change another program commits to our tables during one is
    /// found by the generation poll (structure, within 250 ms) and, for elements, by
    /// the next periodic reconcile.
    pub fn quiet<T>(&self, f: impl FnOnce() -> T) -> T {
        let _ = setsockopt_int(
            &*self.socket,
            libc::SOL_NETLINK,
            libc::NETLINK_DROP_MEMBERSHIP,
            NFNLGRP_NFTABLES,
        );
        let r = f();
        if let Err(e) = setsockopt_int(
            &*self.socket,
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            NFNLGRP_NFTABLES,
        ) {
            tracing::warn!(error = %e, "cannot listen to nftables notifications again; drift is found by the periodic checks");
        }
        r
    }

    /// Whether a foreign change was seen since the last call (and clears it).
    pub fn take(&self) -> bool {
        self.raised.swap(false, Ordering::AcqRel)
    }

    /// Waits until a foreign change is raised.
    pub async fn raised(&self) {
        self.wake.notified().await
    }

    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// What one notification says about our tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// an object of our tables changed
    Ours,
    /// the end of a transaction sent from netlink port `portid` (not a pid: the
    /// kernel's `NFTA_GEN_PROC_PID` is a thread id in the initial pid namespace, which
    /// a containerised proxy cannot match against its own)
    EndOfTransaction(u32),
    /// anything else
    Other,
}

fn text(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or(&[])
}

/// Classifies one notification message (a whole netlink message).
pub fn classify(msg: &[u8]) -> Seen {
    if msg.len() < 20 {
        return Seen::Other;
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty >> 8 != NFNL_SUBSYS_NFTABLES {
        return Seen::Other;
    }
    let body = &msg[20..];
    let kind = ty & 0xff;
    if kind == NFT_MSG_NEWGEN {
        return Seen::EndOfTransaction(u32::from_ne_bytes([msg[12], msg[13], msg[14], msg[15]]));
    }
    // Tables, chains, rules, sets and elements: attribute 1 names the table.
    if kind > 14 || ![NFPROTO_IPV4, NFPROTO_IPV6].contains(&msg[16]) {
        return Seen::Other;
    }
    let mut table = false;
    let mut affinity = false;
    for (t, v) in attrs(body) {
        match t {
            1 => table = text(v) == TABLE_NAME.as_bytes(),
            // The set of an element or set message (NFTA_SET_ELEM_LIST_SET,
            // NFTA_SET_NAME are both attribute 2).
            2 if (9..=14).contains(&kind) => {
                affinity = text(v).starts_with(crate::ruleset::build::AFFINITY_PREFIX.as_bytes())
            }
            _ => {}
        }
    }
    if table && !(affinity && (12..=14).contains(&kind)) {
        Seen::Ours
    } else {
        Seen::Other
    }
}

/// Per-transaction bookkeeping of the listener.
#[derive(Default)]
pub struct Transactions {
    touched: bool,
}

impl Transactions {
    /// Feeds one message; true when it ends a foreign transaction that touched our
    /// tables. `own(port)` says whether a netlink port is one of ours.
    pub fn feed(&mut self, msg: &[u8], own: &dyn Fn(u32) -> bool) -> bool {
        match classify(msg) {
            Seen::Ours => {
                self.touched = true;
                false
            }
            Seen::EndOfTransaction(port) => std::mem::take(&mut self.touched) && !own(port),
            Seen::Other => false,
        }
    }
}

fn subscribe() -> io::Result<OwnedFd> {
    let fd = netlink_socket(libc::NETLINK_NETFILTER)?;
    setsockopt_int(
        &fd,
        libc::SOL_NETLINK,
        libc::NETLINK_ADD_MEMBERSHIP,
        NFNLGRP_NFTABLES,
    )?;
    // Room for a large foreign transaction; an overrun is handled (ENOBUFS).
    let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
    Ok(fd)
}

/// Subscribes to nf_tables notifications and starts the listener thread. An error
/// means notifications are unavailable (the caller keeps its periodic checks).
pub fn start() -> io::Result<Arc<ForeignChange>> {
    let fd = Arc::new(subscribe()?);
    let flag = Arc::new(ForeignChange {
        raised: AtomicBool::new(false),
        wake: tokio::sync::Notify::new(),
        socket: fd.clone(),
    });
    let raised = flag.clone();
    std::thread::Builder::new()
        .name("nft-monitor".into())
        .spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut tx = Transactions::default();
            loop {
                let n = match recv_wait(&*fd, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                    match e.raw_os_error() {
                        Some(libc::ENOBUFS) => {
                            tracing::warn!("nftables notifications were lost (ENOBUFS); reading our tables back");
                            tx = Transactions::default();
                            raised.raise();
                        }
                        Some(libc::EINTR) => {}
                        _ => {
                            tracing::warn!(error = %e, "nftables notifications stopped; drift is found by the periodic checks");
                            return;
                        }
                    }
                    continue;
                    }
                };
                let mut b = &buf[..n];
                while b.len() >= 16 {
                    let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    if len < 16 || len > b.len() {
                        break;
                    }
                    if tx.feed(&b[..len], &super::socket::own_port) {
                        raised.raise();
                    }
                    b = &b[((len + 3) & !3).min(b.len())..];
                }
            }
        })?;
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, family: u8, port: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        m.extend_from_slice(&[0; 6]);
        m.extend_from_slice(&port.to_ne_bytes());
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_foreign_transaction_on_our_table_is_seen_and_ours_are_not() {
        let table = b"kube-nft-proxy\0";
        let del_elem = |port| msg(14, NFPROTO_IPV4, port, &[(1, table), (2, b"endpoints\0")]);
        let other_table = msg(14, NFPROTO_IPV4, 200, &[(1, b"filter\0"), (2, b"x\0")]);
        let affinity = msg(12, NFPROTO_IPV4, 0, &[(1, table), (2, b"affinity-ns/s\0")]);
        let gen = |port: u32| msg(NFT_MSG_NEWGEN, 0, port, &[(1, &7u32.to_be_bytes())]);
        let own = |p: u32| p == 100;
        let mut t = Transactions::default();
        // Someone else deletes one of our elements.
        assert!(!t.feed(&del_elem(200), &own));
        assert!(t.feed(&gen(200), &own));
        // We do.
        assert!(!t.feed(&del_elem(100), &own));
        assert!(!t.feed(&gen(100), &own));
        // Someone else changes another table, or the packet path records a client.
        assert!(!t.feed(&other_table, &own));
        assert!(!t.feed(&affinity, &own));
        assert!(!t.feed(&gen(200), &own));
        // A flush of our table by another program (rule deletions).
        let del_rule = msg(8, NFPROTO_IPV6, 300, &[(1, table), (2, b"services\0")]);
        assert!(!t.feed(&del_rule, &own));
        assert!(t.feed(&gen(300), &own));
    }
}
