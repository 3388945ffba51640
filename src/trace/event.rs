//! Decoding the kernel's trace events (`NFT_MSG_TRACE`, multicast group
//! `NFNLGRP_NFTRACE`) and the packet headers they carry. Pure: every function takes the
//! bytes of one message and checks every length before it reads.
//!
//! The kernel sends one event per rule that matched (type `rule`, with its verdict; a
//! rule that only sets something reports `continue`), one when a regular chain returns
//! (`return`) and one when a base chain ends on its policy (`policy`). The packet's
//! headers come only with the first event of each base chain a packet walks
//! (`nf_trace_fill_pkt_info` runs once per `nft_do_chain`), so a packet's addresses are
//! those of its last event that had them. The id is a hash of the packet (`skb`) and
//! stays the same across the hooks one packet crosses.

pub use crate::netlink::attr::attrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE`.
pub const TRACE_MSG_TYPE: u16 = (10 << 8) | 17;

/// nlmsghdr (16 bytes) and nfgenmsg (4 bytes).
const HEADERS: usize = 20;

// enum nft_trace_attributes (linux/netfilter/nf_tables.h)
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;

// enum nft_verdict_attributes
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// The payload of one netlink message after nlmsghdr and nfgenmsg, with the message
/// type and the nfgenmsg family, if the message holds its headers.
pub fn nft_payload(msg: &[u8]) -> Option<(u16, u8, &[u8])> {
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    if len < HEADERS || len > msg.len() {
        return None;
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    Some((ty, msg[16], &msg[HEADERS..len]))
}

/// A NUL-terminated string attribute.
pub fn str_attr(v: &[u8]) -> String {
    let s = v.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(s).into_owned()
}

/// A big-endian 32-bit attribute.
pub fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// A big-endian 64-bit attribute.
pub fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// What kind of trace event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// a rule matched (`NFT_TRACETYPE_RULE`)
    Rule,
    /// a regular chain returned to its caller (`NFT_TRACETYPE_RETURN`)
    Return,
    /// a base chain ended on its policy (`NFT_TRACETYPE_POLICY`)
    Policy,
    /// the end of a chain's rules: the kernel reports its trailing sentinel rule as a
    /// rule event without a handle, verdict `continue` (a regular chain then returns
    /// to its caller, a base chain applies its policy)
    End,
    /// a type this program does not know
    Other(u32),
}

impl Kind {
    fn from_u32(v: u32) -> Kind {
        match v {
            1 => Kind::Policy,
            2 => Kind::Return,
            3 => Kind::Rule,
            n => Kind::Other(n),
        }
    }

    /// A word for it.
    pub fn name(self) -> String {
        match self {
            Kind::Rule => "rule".into(),
            Kind::Return => "return".into(),
            Kind::Policy => "policy".into(),
            Kind::End => "end".into(),
            Kind::Other(n) => format!("type-{n}"),
        }
    }
}

/// A verdict as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// the verdict code (NF_ACCEPT, NFT_JUMP, ...)
    pub code: i32,
    /// the chain of a jump or goto
    pub chain: Option<String>,
}

impl Verdict {
    /// nft's word for the verdict (`accept`, `jump`, `continue`, ...).
    pub fn name(&self) -> String {
        verdict_name(self.code)
    }
}

/// nft's word for a verdict code.
pub fn verdict_name(code: i32) -> String {
    match code {
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => "jump".into(),
        -4 => "goto".into(),
        -5 => "return".into(),
        // NF_* verdicts keep extra data (a queue number) above the low byte.
        c if c >= 0 => match c & 0xff {
            0 => "drop".into(),
            1 => "accept".into(),
            2 => "stolen".into(),
            3 => "queue".into(),
            4 => "repeat".into(),
            5 => "stop".into(),
            n => format!("verdict-{n}"),
        },
        c => format!("verdict-{c}"),
    }
}

/// The addresses and ports of a packet, from the headers a trace event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Packet {
    /// IP protocol number of the transport header (IPv6: the first next header)
    pub protocol: u8,
    /// source address
    pub src: IpAddr,
    /// destination address
    pub dst: IpAddr,
    /// source port (TCP, UDP, UDP-Lite, SCTP)
    pub sport: Option<u16>,
    /// destination port
    pub dport: Option<u16>,
}

/// Protocols whose transport header starts with a 16-bit source and destination port.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 136)
}

/// nft's name of an IP protocol, or its number.
pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

impl Packet {
    /// Decodes the network header (IPv4 or IPv6, by its version) and, for protocols with
    /// ports, the transport header.
    pub fn decode(network: &[u8], transport: Option<&[u8]>) -> Option<Packet> {
        let version = network.first()? >> 4;
        let (protocol, src, dst) = match version {
            4 => {
                let b: &[u8; 20] = network.get(..20)?.try_into().ok()?;
                (
                    b[9],
                    IpAddr::from(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
                    IpAddr::from(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
                )
            }
            6 => {
                let b: &[u8; 40] = network.get(..40)?.try_into().ok()?;
                let src: [u8; 16] = b[8..24].try_into().ok()?;
                let dst: [u8; 16] = b[24..40].try_into().ok()?;
                (
                    b[6],
                    IpAddr::from(Ipv6Addr::from(src)),
                    IpAddr::from(Ipv6Addr::from(dst)),
                )
            }
            _ => return None,
        };
        let ports = transport
            .filter(|_| has_ports(protocol))
            .and_then(|t| t.get(..4))
            .map(|t| {
                (
                    u16::from_be_bytes([t[0], t[1]]),
                    u16::from_be_bytes([t[2], t[3]]),
                )
            });
        Some(Packet {
            protocol,
            src,
            dst,
            sport: ports.map(|p| p.0),
            dport: ports.map(|p| p.1),
        })
    }

    /// `tcp 10.0.1.2:41234 -> 172.30.0.10:80`
    pub fn text(&self) -> String {
        format!(
            "{} {} -> {}",
            protocol_name(self.protocol),
            endpoint_text(self.src, self.sport),
            endpoint_text(self.dst, self.dport)
        )
    }
}

/// `10.0.0.1:80`, `[fd00::1]:80`, or the address alone without a port.
pub fn endpoint_text(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (a, None) => a.to_string(),
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
    }
}

/// One trace event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// the packet's trace id
    pub id: u32,
    /// what happened
    pub kind: Kind,
    /// the table's family (nfgenmsg: NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_INET, ...)
    pub family: u8,
    /// the packet's protocol family (for `inet`, `bridge`, `netdev` tables)
    pub nfproto: Option<u32>,
    /// the table
    pub table: String,
    /// the chain
    pub chain: String,
    /// the rule's handle (rule events)
    pub handle: Option<u64>,
    /// the rule's or return's verdict
    pub verdict: Option<Verdict>,
    /// the base chain's policy (policy events)
    pub policy: Option<i32>,
    /// the packet, if this event carries its headers
    pub packet: Option<Packet>,
    /// input interface index
    pub iif: Option<u32>,
    /// output interface index
    pub oif: Option<u32>,
    /// the packet mark
    pub mark: Option<u32>,
}

impl TraceEvent {
    /// Decodes one netlink message; `None` if it is not a trace event or lacks the
    /// attributes every event has (id, type, table, chain).
    pub fn parse(msg: &[u8]) -> Option<TraceEvent> {
        let (ty, family, payload) = nft_payload(msg)?;
        if ty != TRACE_MSG_TYPE {
            return None;
        }
        let mut id = None;
        let mut kind = None;
        let mut table = None;
        let mut chain = None;
        let mut ev = TraceEvent {
            id: 0,
            kind: Kind::Other(0),
            family,
            nfproto: None,
            table: String::new(),
            chain: String::new(),
            handle: None,
            verdict: None,
            policy: None,
            packet: None,
            iif: None,
            oif: None,
            mark: None,
        };
        let mut network = None;
        let mut transport = None;
        for (t, v) in attrs(payload) {
            match t {
                NFTA_TRACE_TABLE => table = Some(str_attr(v)),
                NFTA_TRACE_CHAIN => chain = Some(str_attr(v)),
                NFTA_TRACE_RULE_HANDLE => ev.handle = be64(v),
                NFTA_TRACE_TYPE => kind = be32(v).map(Kind::from_u32),
                NFTA_TRACE_ID => id = be32(v),
                NFTA_TRACE_VERDICT => {
                    let mut code = None;
                    let mut target = None;
                    for (vt, vv) in attrs(v) {
                        match vt {
                            NFTA_VERDICT_CODE => code = be32(vv).map(|c| c as i32),
                            NFTA_VERDICT_CHAIN => target = Some(str_attr(vv)),
                            _ => {}
                        }
                    }
                    ev.verdict = code.map(|code| Verdict {
                        code,
                        chain: target,
                    });
                }
                NFTA_TRACE_NETWORK_HEADER => network = Some(v),
                NFTA_TRACE_TRANSPORT_HEADER => transport = Some(v),
                NFTA_TRACE_IIF => ev.iif = be32(v),
                NFTA_TRACE_OIF => ev.oif = be32(v),
                NFTA_TRACE_MARK => ev.mark = be32(v),
                NFTA_TRACE_NFPROTO => ev.nfproto = be32(v),
                NFTA_TRACE_POLICY => ev.policy = be32(v).map(|c| c as i32),
                _ => {}
            }
        }
        ev.id = id?;
        ev.kind = kind?;
        ev.table = table?;
        ev.chain = chain?;
        ev.packet = network.and_then(|n| Packet::decode(n, transport));
        if ev.kind == Kind::Rule && ev.handle.is_none() {
            ev.kind = Kind::End;
        }
        Some(ev)
    }

    /// The verdict word of this event: the rule's or return's verdict, or the policy.
    pub fn verdict_text(&self) -> Option<String> {
        match (&self.verdict, self.policy) {
            (Some(v), _) => Some(match &v.chain {
                Some(c) => format!("{} {c}", v.name()),
                None => v.name(),
            }),
            (None, Some(p)) => Some(verdict_name(p)),
            (None, None) => None,
        }
    }
}

/// Builds trace event messages for the tests (here and in the tracer's).
#[cfg(test)]
pub mod testing {
    /// One attribute, padded.
    pub fn attr(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut a = ((4 + body.len()) as u16).to_ne_bytes().to_vec();
        a.extend(ty.to_ne_bytes());
        a.extend(body);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    /// A string attribute.
    pub fn str_attr(ty: u16, s: &str) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        attr(ty, &b)
    }

    /// A message of `ty` (family `family`) around `payload`.
    pub fn message(ty: u16, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = ((20 + payload.len()) as u32).to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend([family, 0, 0, 0]);
        m.extend(payload);
        m
    }

    /// An IPv4 header (20 bytes) and a TCP/UDP header's ports.
    pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> [Vec<u8>; 2] {
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, proto, 0, 0];
        ip.extend(src);
        ip.extend(dst);
        let mut th = sport.to_be_bytes().to_vec();
        th.extend(dport.to_be_bytes());
        th.extend([0u8; 16]);
        [ip, th]
    }

    /// What a trace event says.
    pub struct Ev<'a> {
        pub id: u32,
        pub kind: u32,
        pub table: &'a str,
        pub chain: &'a str,
        pub handle: Option<u64>,
        pub verdict: Option<(i32, Option<&'a str>)>,
        pub policy: Option<i32>,
        pub headers: Option<[Vec<u8>; 2]>,
    }

    /// The message the kernel would send for `e` (an IPv4 table).
    pub fn event(e: &Ev<'_>) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend(str_attr(super::NFTA_TRACE_TABLE, e.table));
        p.extend(str_attr(super::NFTA_TRACE_CHAIN, e.chain));
        if let Some(h) = e.handle {
            p.extend(attr(super::NFTA_TRACE_RULE_HANDLE, &h.to_be_bytes()));
        }
        p.extend(attr(super::NFTA_TRACE_TYPE, &e.kind.to_be_bytes()));
        if let Some((code, chain)) = e.verdict {
            let mut v = attr(super::NFTA_VERDICT_CODE, &code.to_be_bytes());
            if let Some(c) = chain {
                v.extend(str_attr(super::NFTA_VERDICT_CHAIN, c));
            }
            p.extend(attr(super::NFTA_TRACE_VERDICT | 0x8000, &v));
        }
        p.extend(attr(super::NFTA_TRACE_ID, &e.id.to_be_bytes()));
        if let Some([n, t]) = &e.headers {
            p.extend(attr(super::NFTA_TRACE_NETWORK_HEADER, n));
            p.extend(attr(super::NFTA_TRACE_TRANSPORT_HEADER, t));
        }
        p.extend(attr(super::NFTA_TRACE_NFPROTO, &2u32.to_be_bytes()));
        if let Some(pol) = e.policy {
            p.extend(attr(super::NFTA_TRACE_POLICY, &pol.to_be_bytes()));
        }
        message(super::TRACE_MSG_TYPE, 2, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_rule_event_with_its_packet_is_decoded() {
        let m = event(&Ev {
            id: 0xa4b3_8095,
            kind: 3,
            table: "kube-nft-proxy",
            chain: "nat-prerouting",
            handle: Some(7),
            verdict: Some((-3, Some("services"))),
            policy: None,
            headers: Some(ipv4(6, [10, 0, 1, 2], [172, 30, 0, 10], 41234, 80)),
        });
        let e = TraceEvent::parse(&m).expect("a trace event");
        assert_eq!(e.id, 0xa4b3_8095);
        assert_eq!(e.kind, Kind::Rule);
        assert_eq!(e.family, 2);
        assert_eq!(e.nfproto, Some(2));
        assert_eq!(
            (e.table.as_str(), e.chain.as_str()),
            ("kube-nft-proxy", "nat-prerouting")
        );
        assert_eq!(e.handle, Some(7));
        assert_eq!(e.verdict_text().as_deref(), Some("jump services"));
        let p = e.packet.expect("headers");
        assert_eq!(p.text(), "tcp 10.0.1.2:41234 -> 172.30.0.10:80");
    }

    #[test]
    fn a_policy_event_without_headers_is_decoded() {
        let m = event(&Ev {
            id: 1,
            kind: 1,
            table: "t",
            chain: "c",
            handle: None,
            verdict: None,
            policy: Some(1),
            headers: None,
        });
        let e = TraceEvent::parse(&m).expect("a trace event");
        assert_eq!(e.kind, Kind::Policy);
        assert_eq!(e.packet, None);
        assert_eq!(e.verdict_text().as_deref(), Some("accept"));
    }

    #[test]
    fn other_messages_and_truncations_are_not_events() {
        let m = event(&Ev {
            id: 1,
            kind: 3,
            table: "t",
            chain: "c",
            handle: Some(1),
            verdict: Some((1, None)),
            policy: None,
            headers: Some(ipv4(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2)),
        });
        // Every truncation either fails or decodes a shorter message: never a panic.
        for n in 0..m.len() {
            let mut cut = m[..n].to_vec();
            if n >= 4 {
                cut[..4].copy_from_slice(&(n as u32).to_ne_bytes());
            }
            let _ = TraceEvent::parse(&cut);
        }
        let mut other = m.clone();
        other[4..6].copy_from_slice(&((10u16 << 8) | 6).to_ne_bytes());
        assert_eq!(TraceEvent::parse(&other), None);
        // A header claiming more than the bytes hold.
        let mut long = m.clone();
        long[..4].copy_from_slice(&(m.len() as u32 + 4).to_ne_bytes());
        assert_eq!(TraceEvent::parse(&long), None);
    }

    #[test]
    fn ipv6_and_portless_packets() {
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip6.extend("fd00:10:1::2".parse::<Ipv6Addr>().unwrap().octets());
        ip6.extend("fd00:30::10".parse::<Ipv6Addr>().unwrap().octets());
        let udp = [0x30, 0x39, 0, 53, 0, 8, 0, 0];
        let p = Packet::decode(&ip6, Some(&udp)).unwrap();
        assert_eq!(p.text(), "udp [fd00:10:1::2]:12345 -> [fd00:30::10]:53");
        let [mut ip, _] = ipv4(1, [1, 2, 3, 4], [5, 6, 7, 8], 0, 0);
        let icmp = [8u8, 0, 0, 0];
        assert_eq!(
            Packet::decode(&ip, Some(&icmp)).unwrap().text(),
            "icmp 1.2.3.4 -> 5.6.7.8"
        );
        ip[0] = 0x25;
        assert_eq!(Packet::decode(&ip, None), None, "version 2");
        assert_eq!(Packet::decode(&ip[..10], None), None);
    }

    #[test]
    fn verdict_words() {
        assert_eq!(verdict_name(1), "accept");
        assert_eq!(verdict_name(0), "drop");
        assert_eq!(verdict_name(-1), "continue");
        assert_eq!(verdict_name(-4), "goto");
        assert_eq!(verdict_name((5 << 16) | 3), "queue");
    }
}
