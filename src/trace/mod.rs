//! `kube-nft-proxy trace`: follows real packets through the rules of the current network
//! namespace for a while and prints every rule they hit, mapped back to our rules, the
//! NAT they got, and the conntrack entry each connection ended up with.
//!
//! For `--duration` seconds a temporary rule `meta nftrace set 1`, limited to the
//! packets the flags select, marks packets in base chains at the `raw` priority (-300)
//! of the prerouting and output hooks: before conntrack and before our nat chains, so
//! the first packet of a connection is marked before it is DNATed. The kernel then
//! reports every rule a marked packet matches (and every base chain it leaves on its
//! policy) to the listeners of the `NFNLGRP_NFTRACE` netlink group, with the packet's
//! headers as each base chain sees them: a DNAT shows as the destination changing
//! between the nat chain and the next base chain.
//!
//! # Why a table of its own
//!
//! The marking chains live in a separate table, `ip kube-nft-proxy-trace` (and `ip6`),
//! not in our `kube-nft-proxy` tables. A running daemon would delete them there: it
//! hears of any other program's change to its tables at once (`netlink::monitor`), and
//! of any commit at all through the ruleset generation (`Proxier::structure_drifted`);
//! either makes it read its tables' structure back, and the structure diff
//! (`diff::diff` against the read-back chains) flushes and deletes every chain that the
//! desired table lacks; `repair_structure` commits exactly that. The daemon never
//! touches, nor listens to, a table of another name.
//!
//! The table is created *owned* (`NFT_TABLE_F_OWNER`, Linux 5.12) by the netlink socket
//! that created it: the kernel deletes it when the socket closes, so even a trace killed
//! with SIGKILL leaves nothing behind, and no other process can change it (a second
//! trace is told one is running). The trace also deletes it itself on exit: after the
//! duration, on SIGINT (Ctrl-C), SIGTERM and SIGHUP, and when its output goes away. A
//! leftover table that is not owned (from a kernel without owned tables) is deleted at
//! start.

pub mod event;
pub mod kernel;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use crate::conntrack::{Flow, Lookup, Tuple};
use crate::netlink::Conn;
use crate::ruleset::ir::{Family, TABLE_NAME};
use event::{endpoint_text, protocol_name, Kind, Packet, TraceEvent};
use kernel::TRACE_TABLE;
use rules::{describe_rule, hook_name, Index};

/// IP protocols whose transport header starts with the ports: a `--port` without a
/// `--protocol` selects these.
pub const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// Follow real packets through the rules for a while.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kube-nft-proxy trace",
    about = "Follow real packets through the rules of this network namespace for a while: \
             every rule they hit, the NAT they get, and the conntrack entry of each connection"
)]
pub struct Args {
    /// Only packets from this address.
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,
    /// Only packets of this protocol.
    #[arg(long, value_name = "TCP|UDP|SCTP", value_parser = parse_protocol)]
    pub protocol: Option<u8>,
    /// Only packets to this address (a ClusterIP, a node address, ...).
    #[arg(long, value_name = "IP")]
    pub destination: Option<IpAddr>,
    /// Only packets to this port (TCP, UDP and SCTP unless --protocol says which).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// How long to trace, in seconds (Ctrl-C ends it earlier).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// `text` for people, `json` for one JSON object per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// How the output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// lines for people
    Text,
    /// one JSON object per line
    Json,
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        _ => Err(format!("{s:?} is not TCP, UDP or SCTP")),
    }
}

/// Which packets are traced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// source address
    pub source: Option<IpAddr>,
    /// destination address
    pub destination: Option<IpAddr>,
    /// IP protocol number
    pub protocol: Option<u8>,
    /// destination port
    pub port: Option<u16>,
}

impl Filter {
    /// The families to trace: that of the addresses given, or both.
    pub fn families(&self) -> Result<Vec<Family>, String> {
        match (self.source, self.destination) {
            (Some(s), Some(d)) if Family::of(&s) != Family::of(&d) => Err(format!(
                "--source {s} and --destination {d} are of different families"
            )),
            (Some(a), _) | (None, Some(a)) => Ok(vec![Family::of(&a)]),
            (None, None) => Ok(Family::ALL.to_vec()),
        }
    }

    /// Whether `p` is a packet the flags select (the same test as the marking rule's).
    pub fn matches(&self, p: &Packet) -> bool {
        self.source.is_none_or(|s| s == p.src)
            && self.destination.is_none_or(|d| d == p.dst)
            && match (self.protocol, self.port) {
                (Some(proto), _) if proto != p.protocol => false,
                (None, Some(_)) if !PORT_PROTOCOLS.contains(&p.protocol) => false,
                _ => true,
            }
            && self.port.is_none_or(|port| p.dport == Some(port))
    }

    /// `tcp packets from 10.0.1.2 to 172.30.0.10 port 80`
    pub fn text(&self) -> String {
        let mut s = match self.protocol {
            Some(p) => format!("{} packets", protocol_name(p)),
            None => "packets".to_string(),
        };
        if let Some(a) = self.source {
            s.push_str(&format!(" from {a}"));
        }
        if let Some(a) = self.destination {
            s.push_str(&format!(" to {a}"));
        }
        if let Some(p) = self.port {
            s.push_str(&format!(" port {p}"));
        }
        s
    }
}

/// nft's name of a table family (nfgenmsg's).
fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        n => format!("family-{n}"),
    }
}

/// What the trace prints, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// a rule hit, a return or a policy of one packet
    Event {
        /// the event
        event: TraceEvent,
        /// the hook the packet is in
        hook: Option<String>,
        /// what the rule is ([`describe_rule`]), for rules of our tables
        rule: Option<String>,
        /// the packet as it is at this point (its last headers)
        packet: Option<Packet>,
    },
    /// a packet's addresses changed between two base chains
    Nat {
        /// the packet's trace id
        id: u32,
        /// `dnat` or `snat`
        kind: &'static str,
        /// `rule`: a rule of a nat chain matched the packet; `conntrack`: none did, the
        /// NAT is its connection's (a packet after the first)
        by: &'static str,
        /// before
        before: Packet,
        /// after
        after: Packet,
        /// where it was seen before
        before_hook: Option<String>,
        /// where it was seen after
        after_hook: Option<String>,
    },
}

/// What the trace knows about one packet (one trace id).
#[derive(Clone, Debug)]
struct PacketState {
    /// whether the flags select it (others' marked packets are not ours)
    ours: bool,
    /// the hook of its last base chain
    hook: Option<String>,
    /// its last headers, and the hook they were seen in
    packet: Option<(Packet, Option<String>)>,
    /// whether its current base chain is a `type nat` one
    in_nat: bool,
    /// whether a rule of a nat chain matched since its last headers: a change of
    /// address then is that rule's NAT, otherwise the NAT of its connection's conntrack
    /// entry (every packet after the first)
    nat_rule: bool,
}

impl PacketState {
    /// A packet of ours not seen anywhere yet.
    fn ours() -> PacketState {
        PacketState {
            ours: true,
            hook: None,
            packet: None,
            in_nat: false,
            nat_rule: false,
        }
    }
}

/// The loopback interface's index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Packets remembered at most; beyond that the oldest knowledge is dropped (only NAT
/// detection across hooks needs it).
const MAX_PACKETS: usize = 1 << 16;
/// Connections whose conntrack entry is looked up at the end, at most.
pub const MAX_CONNECTIONS: usize = 1000;

/// Turns trace events into records: which packets are ours, which hook they are in,
/// what each rule of ours is, and where their addresses changed. Pure.
pub struct Tracer {
    filter: Filter,
    /// the rules and base chains
    pub index: Index,
    packets: HashMap<u32, PacketState>,
    /// the last headers of our packets
    recent: HashSet<Packet>,
    connections: Vec<Tuple>,
    seen_connections: HashSet<Tuple>,
    /// connections past [`MAX_CONNECTIONS`]
    pub more_connections: usize,
    /// events of our packets
    pub events: u64,
    /// packets of ours
    pub packet_count: u64,
}

impl Tracer {
    /// A tracer for the packets `filter` selects.
    pub fn new(filter: Filter, index: Index) -> Tracer {
        Tracer {
            filter,
            index,
            packets: HashMap::new(),
            recent: HashSet::new(),
            connections: Vec::new(),
            seen_connections: HashSet::new(),
            more_connections: 0,
            events: 0,
            packet_count: 0,
        }
    }

    /// The connections seen (their first packet's tuple), in order.
    pub fn connections(&self) -> &[Tuple] {
        &self.connections
    }

    /// Whether `e` names a rule of our tables that the index does not know (added
    /// since it was read).
    pub fn unknown_rule(&self, e: &TraceEvent) -> bool {
        e.table == TABLE_NAME
            && e.handle
                .is_some_and(|h| self.index.rule(e.family, &e.table, h).is_none())
    }

    fn note_connection(&mut self, p: &Packet) {
        let (Some(sport), Some(dport)) = (p.sport, p.dport) else {
            return;
        };
        let t = Tuple {
            protocol: p.protocol,
            src: p.src,
            dst: p.dst,
            sport,
            dport,
        };
        if self.seen_connections.contains(&t) {
            return;
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            self.more_connections += 1;
            return;
        }
        self.seen_connections.insert(t);
        self.connections.push(t);
    }

    /// The records one event makes (none for packets that are not ours).
    pub fn event(&mut self, e: TraceEvent) -> Vec<Record> {
        if self.packets.len() >= MAX_PACKETS && !self.packets.contains_key(&e.id) {
            self.packets.clear();
        }
        if self.recent.len() >= MAX_PACKETS {
            self.recent.clear();
        }
        let marking = e.table == TRACE_TABLE;
        let selected = e.packet.as_ref().map(|p| self.filter.matches(p));
        let known = self.packets.contains_key(&e.id);
        // A packet the node sends to itself leaves through output and postrouting and
        // comes back in through loopback's prerouting, still marked, with a new id and
        // the headers it last had: the same packet, whatever the flags say of its
        // translated headers.
        let back_in = !known
            && e.iif == Some(LOOPBACK_IFINDEX)
            && e.packet.is_some_and(|p| self.recent.contains(&p));
        let new = if back_in {
            self.packets.insert(e.id, PacketState::ours());
            false
        } else if marking && e.kind == Kind::Rule && selected == Some(true) {
            // Our marking rule matched: a new packet (the kernel gives a later packet
            // of a flow the id of an earlier one now and then).
            true
        } else if known {
            false
        } else if selected == Some(true) {
            // Marked by someone else's rule, but one the flags select.
            true
        } else {
            self.packets.insert(
                e.id,
                PacketState {
                    ours: false,
                    ..PacketState::ours()
                },
            );
            return Vec::new();
        };
        if new {
            self.packet_count += 1;
            if let Some(p) = e.packet {
                self.note_connection(&p);
            }
            self.packets.insert(e.id, PacketState::ours());
        }
        let Some(state) = self.packets.get_mut(&e.id) else {
            return Vec::new();
        };
        if !state.ours {
            return Vec::new();
        }
        let base = self.index.hook(e.family, &e.table, &e.chain);
        if let Some(h) = base {
            state.hook = Some(hook_name(e.family, h.hooknum));
            state.in_nat = h.nat;
        }
        let mut out = Vec::new();
        if let Some(p) = e.packet {
            if let Some((old, old_hook)) = &state.packet {
                let dnat = (old.dst, old.dport) != (p.dst, p.dport);
                let snat = (old.src, old.sport) != (p.src, p.sport);
                for (changed, kind) in [(dnat, "dnat"), (snat, "snat")] {
                    if changed {
                        out.push(Record::Nat {
                            id: e.id,
                            kind,
                            by: if state.nat_rule { "rule" } else { "conntrack" },
                            before: *old,
                            after: p,
                            before_hook: old_hook.clone(),
                            after_hook: state.hook.clone(),
                        });
                    }
                }
            }
            state.packet = Some((p, state.hook.clone()));
            state.nat_rule = false;
            self.recent.insert(p);
        }
        if e.kind == Kind::Rule && state.in_nat && !marking {
            state.nat_rule = true;
        }
        // Left out: the ends and policies of the temporary table's chains (its marking
        // rule said it all; the NAT its last chain shows is a record of its own), and a
        // base chain's end (its policy follows).
        let quiet = match e.kind {
            Kind::Policy => marking,
            Kind::End => marking || base.is_some(),
            _ => false,
        };
        if quiet {
            return out;
        }
        self.events += 1;
        let rule = match (marking, e.handle) {
            (true, _) => Some(format!("{}: marked for tracing", e.chain)),
            (false, Some(h)) if e.table == TABLE_NAME => Some(
                self.index
                    .rule(e.family, &e.table, h)
                    .map(describe_rule)
                    .unwrap_or_else(|| format!("{} rule with handle {h} (unknown)", e.chain)),
            ),
            _ => None,
        };
        let hook = state.hook.clone();
        let packet = state.packet.as_ref().map(|(p, _)| *p);
        out.push(Record::Event {
            event: e,
            hook,
            rule,
            packet,
        });
        out
    }
}

// ---------------------------------------------------------------------------------
// Output

fn packet_json(p: &Packet) -> Value {
    json!({
        "protocol": protocol_name(p.protocol),
        "src": p.src.to_string(),
        "sport": p.sport,
        "dst": p.dst.to_string(),
        "dport": p.dport,
    })
}

fn tuple_json(t: &Tuple) -> Value {
    json!({
        "protocol": protocol_name(t.protocol),
        "src": t.src.to_string(),
        "sport": t.sport,
        "dst": t.dst.to_string(),
        "dport": t.dport,
    })
}

fn tuple_text(t: &Tuple) -> String {
    let port = |p: u16| (p != 0).then_some(p);
    format!(
        "{} {} -> {}",
        protocol_name(t.protocol),
        endpoint_text(t.src, port(t.sport)),
        endpoint_text(t.dst, port(t.dport))
    )
}

/// `1 packet`, `2 packets`
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn id_text(id: u32) -> String {
    format!("{id:08x}")
}

/// How the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `--duration` passed
    Duration,
    /// SIGINT (Ctrl-C)
    Interrupted,
    /// SIGTERM
    Terminated,
    /// SIGHUP
    HangUp,
    /// the output went away
    OutputClosed,
}

impl Reason {
    fn word(self) -> &'static str {
        match self {
            Reason::Duration => "duration",
            Reason::Interrupted => "interrupted",
            Reason::Terminated => "terminated",
            Reason::HangUp => "hangup",
            Reason::OutputClosed => "output-closed",
        }
    }
}

/// Writes records as text or JSON lines, flushing each so that a reader sees packets as
/// they come.
pub struct Output<W: Write> {
    w: W,
    format: Format,
}

impl<W: Write> Output<W> {
    /// Output to `w`.
    pub fn new(w: W, format: Format) -> Output<W> {
        Output { w, format }
    }

    fn line(&mut self, text: &str, json: Value) -> io::Result<()> {
        match self.format {
            Format::Text => writeln!(self.w, "{text}")?,
            Format::Json => writeln!(self.w, "{json}")?,
        }
        self.w.flush()
    }

    /// The first line: what is traced, for how long.
    pub fn start(
        &mut self,
        filter: &Filter,
        families: &[Family],
        args: &Args,
        owned: bool,
    ) -> io::Result<()> {
        let fams: Vec<&str> = families.iter().map(|f| f.nft()).collect();
        self.line(
            &format!(
                "tracing {} ({}) for {} s; Ctrl-C ends the trace earlier",
                filter.text(),
                fams.join(", "),
                args.duration
            ),
            json!({
                "type": "start",
                "filter": {
                    "source": filter.source.map(|a| a.to_string()),
                    "destination": filter.destination.map(|a| a.to_string()),
                    "protocol": filter.protocol.map(protocol_name),
                    "port": filter.port,
                },
                "families": fams,
                "duration_seconds": args.duration,
                "table": TRACE_TABLE,
                "table_owned": owned,
            }),
        )
    }

    /// One record.
    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        match r {
            Record::Event {
                event: e,
                hook,
                rule,
                packet,
            } => {
                let hook_text = hook.as_deref().unwrap_or("?");
                let verdict = e.verdict_text().unwrap_or_default();
                // A rule's description names its chain.
                let what = match (&e.kind, rule) {
                    (Kind::Rule, Some(r)) => format!("{r} => {verdict}"),
                    (Kind::Rule, None) => match e.handle {
                        Some(h) => format!("{} rule with handle {h} => {verdict}", e.chain),
                        None => format!("{} rule => {verdict}", e.chain),
                    },
                    (Kind::End, _) => {
                        format!("{}: end of chain, back to the calling chain", e.chain)
                    }
                    (Kind::Policy, _) => format!("{}: policy {verdict}", e.chain),
                    (k, _) => format!("{}: {} {verdict}", e.chain, k.name()),
                };
                let mut text = format!(
                    "[{}] {hook_text:<11} {} {} {what}",
                    id_text(e.id),
                    family_name(e.family),
                    e.table,
                );
                if let (Some(p), true) = (packet, e.packet.is_some()) {
                    text.push_str(&format!("  | {}", p.text()));
                }
                let (verdict_word, target) = match (&e.verdict, e.policy) {
                    (Some(v), _) => (Some(v.name()), v.chain.clone()),
                    (None, Some(p)) => (Some(event::verdict_name(p)), None),
                    (None, None) => (None, None),
                };
                self.line(
                    &text,
                    json!({
                        "type": "event",
                        "id": id_text(e.id),
                        "hook": hook,
                        "family": family_name(e.family),
                        "table": e.table,
                        "chain": e.chain,
                        "kind": e.kind.name(),
                        "handle": e.handle,
                        "rule": rule,
                        "verdict": verdict_word,
                        "target": target,
                        "packet": packet.as_ref().map(packet_json),
                        "headers": e.packet.is_some(),
                        "iif": e.iif,
                        "oif": e.oif,
                        "mark": e.mark,
                    }),
                )
            }
            Record::Nat {
                id,
                kind,
                by,
                before,
                after,
                before_hook,
                after_hook,
            } => {
                let (from, to) = if *kind == "dnat" {
                    (
                        endpoint_text(before.dst, before.dport),
                        endpoint_text(after.dst, after.dport),
                    )
                } else {
                    (
                        endpoint_text(before.src, before.sport),
                        endpoint_text(after.src, after.sport),
                    )
                };
                self.line(
                    &format!(
                        "[{}] {} by {by}: {from} became {to} (between {} and {}): {}",
                        id_text(*id),
                        kind.to_uppercase(),
                        before_hook.as_deref().unwrap_or("?"),
                        after_hook.as_deref().unwrap_or("?"),
                        after.text()
                    ),
                    json!({
                        "type": "nat",
                        "id": id_text(*id),
                        "nat": kind,
                        "by": by,
                        "before": packet_json(before),
                        "after": packet_json(after),
                        "before_hook": before_hook,
                        "after_hook": after_hook,
                    }),
                )
            }
        }
    }

    /// The conntrack entry of one connection (None: there is none).
    pub fn conntrack(&mut self, c: &Tuple, flow: Option<&Flow>) -> io::Result<()> {
        let Some(f) = flow else {
            return self.line(
                &format!(
                    "conntrack {}: no entry (it expired, or the first packet was dropped)",
                    tuple_text(c)
                ),
                json!({"type": "conntrack", "connection": tuple_json(c), "entry": null}),
            );
        };
        let mut notes = Vec::new();
        if f.dnat() {
            notes.push(format!(
                "DNAT to {}",
                endpoint_text(f.reply.src, Some(f.reply.sport).filter(|p| *p != 0))
            ));
        }
        if f.snat() {
            notes.push(format!(
                "SNAT to {}",
                endpoint_text(f.reply.dst, Some(f.reply.dport).filter(|p| *p != 0))
            ));
        }
        if let Some(s) = f.tcp_state {
            notes.push(s.to_string());
        }
        if let Some(t) = f.timeout {
            notes.push(format!("expires in {t} s"));
        }
        self.line(
            &format!(
                "conntrack {} reply {} [{}]",
                tuple_text(&f.original),
                tuple_text(&f.reply),
                notes.join(", ")
            ),
            json!({
                "type": "conntrack",
                "connection": tuple_json(c),
                "entry": {
                    "original": tuple_json(&f.original),
                    "reply": tuple_json(&f.reply),
                    "dnat": f.dnat(),
                    "snat": f.snat(),
                    "status": f.status,
                    "tcp_state": f.tcp_state,
                    "timeout_seconds": f.timeout,
                    "mark": f.mark,
                },
            }),
        )
    }

    /// The last line.
    pub fn end(&mut self, reason: Reason, tracer: &Tracer, lost: u64) -> io::Result<()> {
        let mut text = format!(
            "trace ended ({}): {}, {}, {}; the temporary table is removed",
            reason.word(),
            count(tracer.events, "event"),
            count(tracer.packet_count, "packet"),
            count(
                (tracer.connections().len() + tracer.more_connections) as u64,
                "connection"
            ),
        );
        if tracer.more_connections > 0 {
            text.push_str(&format!(
                "; conntrack shown for the first {MAX_CONNECTIONS} connections"
            ));
        }
        if lost > 0 {
            text.push_str(&format!(
                "; the kernel dropped trace events {lost} times (receive buffer full): narrow the flags"
            ));
        }
        self.line(
            &text,
            json!({
                "type": "end",
                "reason": reason.word(),
                "events": tracer.events,
                "packets": tracer.packet_count,
                "connections": tracer.connections().len() + tracer.more_connections,
                "lost_event_batches": lost,
                "table_removed": true,
            }),
        )
    }
}

// ---------------------------------------------------------------------------------
// Running

/// Errors of `trace`, each named for the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags contradict each other.
    #[error("{0}")]
    Usage(String),
    /// The kernel side failed.
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    /// A local resource (runtime, signal handler, event wait) failed.
    #[error("{step}")]
    Local {
        /// what was being done
        step: &'static str,
        /// the system error
        #[source]
        source: io::Error,
    },
    /// The kernel refused to list the tables: no CAP_NET_ADMIN.
    #[error(
        "trace needs CAP_NET_ADMIN in this network namespace (run it as root on the node, \
         or in the proxy's pod)"
    )]
    NotPermitted(#[source] crate::netlink::Error),
    /// Reading the trace events failed.
    #[error("cannot read the trace events")]
    Events(#[source] io::Error),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// Looking up a conntrack entry failed.
    #[error("cannot look the connections up in conntrack")]
    Conntrack(#[source] crate::conntrack::Error),
}

fn local(step: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Local { step, source }
}

/// The temporary table while it is installed: removed by [`Installed::remove`], or on
/// drop if something failed before.
struct Installed {
    conn: Conn,
    families: Vec<Family>,
    removed: bool,
}

impl Installed {
    fn remove(&mut self) -> Result<(), kernel::Error> {
        self.removed = true;
        kernel::remove(&mut self.conn, &self.families)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            let _ = kernel::remove(&mut self.conn, &self.families);
        }
    }
}

/// `kube-nft-proxy trace ARGS`: `args` are the words after `trace`.
pub fn main(args: &[String]) -> ExitCode {
    let argv = std::iter::once("kube-nft-proxy trace".to_string()).chain(args.iter().cloned());
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut out = Output::new(io::stdout().lock(), args.output);
    match rt.block_on(run(&args, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            report(&msg);
            ExitCode::from(2)
        }
        Err(e) => {
            report(&crate::error_text::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr (a failure to write it has nowhere to go).
fn report(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "kube-nft-proxy trace: {msg}");
}

/// Traces as `args` say, writing to `out`.
pub async fn run<W: Write>(args: &Args, out: &mut Output<W>) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let filter = Filter {
        source: args.source,
        destination: args.destination,
        protocol: args.protocol,
        port: args.port,
    };
    let families = filter.families().map_err(Error::Usage)?;
    // Signals are caught from here on, before anything is installed: a Ctrl-C at any
    // later point ends the trace through the removal below, never by killing it.
    let mut sigint = signal(SignalKind::interrupt()).map_err(local("cannot catch SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(local("cannot catch SIGTERM"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(local("cannot catch SIGHUP"))?;

    let mut conn = Conn::open().map_err(|source| kernel::Error::Nftables {
        step: "cannot open a netfilter netlink socket".into(),
        source,
    })?;
    let leftovers = match kernel::remove_leftovers(&mut conn) {
        Err(kernel::Error::Nftables { source, .. }) if source.errno() == Some(libc::EPERM) => {
            return Err(Error::NotPermitted(source));
        }
        r => r?,
    };
    for f in leftovers {
        report(&format!(
            "deleted table {} {TRACE_TABLE}, left behind by an earlier trace",
            f.nft()
        ));
    }
    let mut index = Index::default();
    for f in Family::ALL {
        kernel::read_rules(&mut conn, f, &mut index)?;
    }
    kernel::read_chains(&mut conn, &mut index)?;
    // Listening before the marking starts: no event of the first packets is missed.
    let events = kernel::EventSocket::open()?;

    let owned = kernel::install(&mut conn, &families, &filter)?;
    kernel::note_mark_chains(&families, &mut index);
    let mut installed = Installed {
        conn,
        families: families.clone(),
        removed: false,
    };
    out.start(&filter, &families, args, owned)
        .map_err(Error::Output)?;

    let mut tracer = Tracer::new(filter, index);
    let mut buf = vec![0u8; 1 << 20];
    let mut lost = 0u64;
    let mut refreshed: HashSet<(u8, u64)> = HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(args.duration));
    tokio::pin!(deadline);
    let mut failure = None;
    let reason = loop {
        tokio::select! {
            _ = &mut deadline => break Reason::Duration,
            _ = sigint.recv() => break Reason::Interrupted,
            _ = sigterm.recv() => break Reason::Terminated,
            _ = sighup.recv() => break Reason::HangUp,
            r = events.readable() => {
                let mut guard = match r {
                    Ok(g) => g,
                    Err(e) => {
                        failure = Some(Error::Events(e));
                        break Reason::Duration;
                    }
                };
                match drain(&events, &mut buf, &mut tracer, &mut installed.conn, &mut refreshed, &mut lost, out) {
                    Ok(()) => guard.clear_ready(),
                    Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                        break Reason::OutputClosed
                    }
                    Err(e) => {
                        failure = Some(e);
                        break Reason::Duration;
                    }
                }
            }
        }
    };
    // What the kernel sent before the end is still shown.
    let tail = if failure.is_none() && reason != Reason::OutputClosed {
        drain(
            &events,
            &mut buf,
            &mut tracer,
            &mut installed.conn,
            &mut refreshed,
            &mut lost,
            out,
        )
    } else {
        Ok(())
    };
    let removed = installed.remove();
    if let Some(e) = failure {
        return Err(e);
    }
    removed?;
    if reason == Reason::OutputClosed {
        return Ok(());
    }
    match tail {
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        r => r?,
    }
    let mut lookup = Lookup::open().map_err(Error::Conntrack)?;
    let result = (|| {
        for c in tracer.connections() {
            let flow = lookup.get(c).map_err(Error::Conntrack)?;
            out.conntrack(c, flow.as_ref()).map_err(Error::Output)?;
        }
        out.end(reason, &tracer, lost).map_err(Error::Output)
    })();
    match result {
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Reads and prints every trace event queued on the socket.
fn drain<W: Write>(
    events: &kernel::EventSocket,
    buf: &mut [u8],
    tracer: &mut Tracer,
    conn: &mut Conn,
    refreshed: &mut HashSet<(u8, u64)>,
    lost: &mut u64,
    out: &mut Output<W>,
) -> Result<(), Error> {
    loop {
        let n = match events.recv(buf) {
            Ok(Some(n)) if n > 0 => n,
            Ok(_) => return Ok(()),
            // The receive buffer overflowed: events were dropped, the socket goes on.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                *lost += 1;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Events(e)),
        };
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if len < 16 || len > n - off {
                break;
            }
            let msg = &buf[off..off + len];
            off += (len + 3) & !3;
            let Some(ev) = TraceEvent::parse(msg) else {
                continue;
            };
            if tracer.unknown_rule(&ev) && refreshed.insert((ev.family, ev.handle.unwrap_or(0))) {
                // A rule added since the start (the daemon changed its rules): read the
                // table again, once per unknown rule.
                let family = if ev.family == Family::V6.nfproto() as u8 {
                    Family::V6
                } else {
                    Family::V4
                };
                kernel::read_rules(conn, family, &mut tracer.index)?;
            }
            for r in tracer.event(ev) {
                out.record(&r).map_err(Error::Output)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event::testing::{event, ipv4, Ev};
    use super::*;

    fn ev(
        id: u32,
        table: &str,
        chain: &str,
        kind: u32,
        handle: Option<u64>,
        headers: Option<[Vec<u8>; 2]>,
    ) -> TraceEvent {
        let verdict = match kind {
            3 => Some((-1, None)),
            _ => None,
        };
        TraceEvent::parse(&event(&Ev {
            id,
            kind,
            table,
            chain,
            handle,
            verdict,
            policy: (kind == 1).then_some(1),
            headers,
        }))
        .expect("an event")
    }

    fn tracer() -> Tracer {
        Tracer::new(
            Filter {
                source: None,
                destination: Some("172.30.0.10".parse().unwrap()),
                protocol: Some(6),
                port: Some(80),
            },
            Index::default(),
        )
    }

    const CLIENT: [u8; 4] = [10, 0, 1, 2];
    const VIP: [u8; 4] = [172, 30, 0, 10];
    const EP: [u8; 4] = [10, 0, 2, 11];

    #[test]
    fn a_dnat_shows_between_hooks() {
        let mut t = tracer();
        for (chain, hooknum, nat) in [
            ("mark-prerouting", 0, false),
            ("nat-prerouting", 0, true),
            ("filter-forward", 2, false),
        ] {
            let table = if chain.starts_with("mark") {
                TRACE_TABLE
            } else {
                TABLE_NAME
            };
            let hook = rules::HookInfo {
                hooknum,
                priority: 0,
                nat,
            };
            t.index.add_hook(2, table, chain, hook);
        }
        let pre = ipv4(6, CLIENT, VIP, 40000, 80);
        let post = ipv4(6, CLIENT, EP, 40000, 8080);
        let mut recs = Vec::new();
        recs.extend(t.event(ev(
            7,
            TRACE_TABLE,
            "mark-prerouting",
            3,
            Some(2),
            Some(pre.clone()),
        )));
        recs.extend(t.event(ev(7, TRACE_TABLE, "mark-prerouting", 1, None, None)));
        recs.extend(t.event(ev(7, TABLE_NAME, "nat-prerouting", 3, Some(9), Some(pre))));
        recs.extend(t.event(ev(7, TABLE_NAME, "filter-forward", 1, None, Some(post))));
        let nats = |recs: &[Record]| -> Vec<_> {
            recs.iter()
                .filter_map(|r| match r {
                    Record::Nat {
                        kind,
                        by,
                        before,
                        after,
                        before_hook,
                        after_hook,
                        ..
                    } => Some((
                        *kind,
                        *by,
                        before.text(),
                        after.text(),
                        before_hook.clone().unwrap_or_default(),
                        after_hook.clone().unwrap_or_default(),
                    )),
                    _ => None,
                })
                .collect()
        };
        let want = |by| {
            vec![(
                "dnat",
                by,
                "tcp 10.0.1.2:40000 -> 172.30.0.10:80".to_string(),
                "tcp 10.0.1.2:40000 -> 10.0.2.11:8080".to_string(),
                "prerouting".to_string(),
                "forward".to_string(),
            )]
        };
        assert_eq!(nats(&recs), want("rule"));
        // The marking chain's policy and the base chain's end are left out; the rest
        // are events.
        assert_eq!(
            recs.iter()
                .filter(|r| matches!(r, Record::Event { .. }))
                .count(),
            3
        );
        assert_eq!(t.packet_count, 1);
        assert_eq!(t.connections().len(), 1);
        assert_eq!(t.connections()[0].dport, 80);

        // The next packet of the connection: no nat rule matches, conntrack DNATs it.
        let pre = ipv4(6, CLIENT, VIP, 40000, 80);
        let post = ipv4(6, CLIENT, EP, 40000, 8080);
        let mut recs = Vec::new();
        recs.extend(t.event(ev(8, TRACE_TABLE, "mark-prerouting", 3, Some(2), Some(pre))));
        recs.extend(t.event(ev(8, TRACE_TABLE, "mark-prerouting", 3, None, None)));
        recs.extend(t.event(ev(8, TABLE_NAME, "filter-forward", 3, None, Some(post))));
        recs.extend(t.event(ev(8, TABLE_NAME, "filter-forward", 1, None, None)));
        assert_eq!(nats(&recs), want("conntrack"));
        assert_eq!(
            recs.iter()
                .filter(|r| matches!(r, Record::Event { .. }))
                .count(),
            2
        );
        assert_eq!(t.packet_count, 2);
        assert_eq!(t.connections().len(), 1, "the same connection");
    }

    #[test]
    fn packets_the_flags_do_not_select_are_left_out() {
        let mut t = tracer();
        let other = ipv4(6, CLIENT, [172, 30, 0, 99], 40000, 80);
        assert!(t
            .event(ev(
                1,
                TRACE_TABLE,
                "mark-prerouting",
                3,
                Some(2),
                Some(other.clone())
            ))
            .is_empty());
        assert!(t
            .event(ev(
                1,
                TABLE_NAME,
                "nat-prerouting",
                3,
                Some(9),
                Some(other.clone())
            ))
            .is_empty());
        // Someone else's marked packet, first seen in their table.
        assert!(t
            .event(ev(2, "filter", "input", 1, None, Some(other)))
            .is_empty());
        assert_eq!(t.packet_count, 0);
        assert!(t.connections().is_empty());
    }

    /// The node connects to a ClusterIP whose endpoint is the node itself: the packet
    /// is DNATed in output, and comes back in through loopback with a new id.
    #[test]
    fn a_packet_the_node_sends_itself_is_followed_back_in() {
        let mut t = tracer();
        for (chain, hooknum, nat) in [
            ("mark-output", 3, false),
            ("mark-prerouting", 0, false),
            ("nat-output", 3, true),
            ("filter-output-post-dnat", 3, false),
            ("filter-input", 1, false),
        ] {
            let table = if chain.starts_with("mark") {
                TRACE_TABLE
            } else {
                TABLE_NAME
            };
            let hook = rules::HookInfo {
                hooknum,
                priority: 0,
                nat,
            };
            t.index.add_hook(2, table, chain, hook);
        }
        let node = [10, 0, 2, 1];
        let pre = ipv4(6, node, VIP, 40000, 80);
        let post = ipv4(6, node, node, 40000, 8080);
        let mut recs = Vec::new();
        recs.extend(t.event(ev(
            1,
            TRACE_TABLE,
            "mark-output",
            3,
            Some(2),
            Some(pre.clone()),
        )));
        recs.extend(t.event(ev(1, TABLE_NAME, "nat-output", 3, Some(9), Some(pre))));
        recs.extend(t.event(ev(
            1,
            TABLE_NAME,
            "filter-output-post-dnat",
            1,
            None,
            Some(post.clone()),
        )));
        let mut back = ev(
            2,
            TRACE_TABLE,
            "mark-prerouting",
            3,
            None,
            Some(post.clone()),
        );
        back.iif = Some(LOOPBACK_IFINDEX);
        recs.extend(t.event(back));
        recs.extend(t.event(ev(2, TABLE_NAME, "filter-input", 1, None, Some(post))));
        let nats: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                Record::Nat {
                    kind, by, after, ..
                } => Some((*kind, *by, after.text())),
                _ => None,
            })
            .collect();
        assert_eq!(
            nats,
            vec![("dnat", "rule", "tcp 10.0.2.1:40000 -> 10.0.2.1:8080".into())]
        );
        assert!(
            recs.iter()
                .any(|r| matches!(r, Record::Event { event, .. } if event.chain == "filter-input")),
            "the packet is followed into input: {recs:?}"
        );
        assert_eq!(t.packet_count, 1);
        assert_eq!(t.connections().len(), 1);
    }

    #[test]
    fn a_reused_id_is_a_new_packet() {
        let mut t = tracer();
        let a = ipv4(6, CLIENT, VIP, 40000, 80);
        let b = ipv4(6, CLIENT, VIP, 40001, 80);
        t.event(ev(5, TRACE_TABLE, "mark-prerouting", 3, Some(2), Some(a)));
        let recs = t.event(ev(5, TRACE_TABLE, "mark-prerouting", 3, Some(2), Some(b)));
        assert!(
            !recs.iter().any(|r| matches!(r, Record::Nat { .. })),
            "a new packet is no NAT of the old one: {recs:?}"
        );
        assert_eq!(t.packet_count, 2);
        assert_eq!(t.connections().len(), 2);
    }

    #[test]
    fn filters_match_like_the_marking_rule() {
        let p = Packet::decode(
            &ipv4(17, CLIENT, VIP, 5353, 53)[0],
            Some(&ipv4(17, CLIENT, VIP, 5353, 53)[1]),
        )
        .unwrap();
        let f = |port: Option<u16>, proto: Option<u8>| Filter {
            source: None,
            destination: None,
            protocol: proto,
            port,
        };
        assert!(f(Some(53), None).matches(&p));
        assert!(!f(Some(54), None).matches(&p));
        assert!(!f(Some(53), Some(6)).matches(&p));
        assert!(f(None, Some(17)).matches(&p));
        let icmp = Packet::decode(&ipv4(1, CLIENT, VIP, 0, 0)[0], None).unwrap();
        assert!(!f(Some(53), None).matches(&icmp));
        assert!(f(None, None).matches(&icmp));
    }

    #[test]
    fn families_come_from_the_addresses() {
        let f = |s: Option<&str>, d: Option<&str>| Filter {
            source: s.map(|a| a.parse().unwrap()),
            destination: d.map(|a| a.parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(f(None, None).families(), Ok(vec![Family::V4, Family::V6]));
        assert_eq!(f(Some("fd00::1"), None).families(), Ok(vec![Family::V6]));
        assert!(f(Some("fd00::1"), Some("10.0.0.1")).families().is_err());
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "trace",
            "--protocol",
            "tcp",
            "--destination",
            "172.30.0.10",
            "--port",
            "80",
            "--duration",
            "5",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(
            (a.protocol, a.port, a.duration, a.output),
            (Some(6), Some(80), 5, Format::Json)
        );
        assert!(
            Args::try_parse_from(["trace"]).is_err(),
            "--duration is required"
        );
        assert!(Args::try_parse_from(["trace", "--duration", "0"]).is_err());
        assert!(Args::try_parse_from(["trace", "--duration", "1", "--protocol", "icmp"]).is_err());
    }

    #[test]
    fn json_lines_name_the_nat() {
        let mut buf = Vec::new();
        let mut out = Output::new(&mut buf, Format::Json);
        let before = Packet::decode(
            &ipv4(6, CLIENT, VIP, 40000, 80)[0],
            Some(&ipv4(6, CLIENT, VIP, 40000, 80)[1]),
        )
        .unwrap();
        let after = Packet {
            dst: "10.0.2.11".parse().unwrap(),
            dport: Some(8080),
            ..before
        };
        out.record(&Record::Nat {
            id: 7,
            kind: "dnat",
            by: "rule",
            before,
            after,
            before_hook: Some("prerouting".into()),
            after_hook: Some("forward".into()),
        })
        .unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "nat");
        assert_eq!(v["after"]["dst"], "10.0.2.11");
        assert_eq!(v["after"]["dport"], 8080);
    }
}
