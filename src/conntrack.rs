//! Stale UDP flows: when a UDP endpoint goes away, conntrack entries that our rules
//! DNATed to it would keep sending a client's datagrams to a dead pod until they time
//! out. We delete exactly those entries through ctnetlink: UDP, DNATed, reply source =
//! the removed endpoint, original destination = one of the service's frontends.
//!
//! Events miss what happened while the proxy was not running (an endpoint removed
//! during a restart or an API server outage), so every full sync also reconciles the
//! whole UDP table against the Services, as upstream's `CleanStaleEntries` (1.33+):
//! [`reconcile_udp`].

use crate::netlink::attr::{attrs, find};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A flow our rules created: frontend (original destination) → endpoint (reply source).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    /// original destination address
    pub frontend: IpAddr,
    /// original destination port
    pub frontend_port: u16,
    /// reply source address (the endpoint)
    pub endpoint: IpAddr,
    /// reply source port
    pub endpoint_port: u16,
}

/// Errors talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened or used.
    #[error("conntrack netlink socket failed")]
    Socket(#[source] std::io::Error),
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPS_DST_NAT: u32 = 1 << 5;

/// (src, dst, proto, sport, dport) of a tuple attribute.
fn tuple(b: &[u8]) -> Option<(IpAddr, IpAddr, u8, u16, u16)> {
    let ip = find(b, CTA_TUPLE_IP)?;
    let (src, dst) = {
        let a: Vec<_> = attrs(ip).collect();
        let get = |t: u16| a.iter().find(|(x, _)| *x == t).map(|(_, v)| *v);
        if let (Some(s), Some(d)) = (get(1), get(2)) {
            (
                IpAddr::from(<[u8; 4]>::try_from(s).ok()?),
                IpAddr::from(<[u8; 4]>::try_from(d).ok()?),
            )
        } else {
            let (s, d) = (get(3)?, get(4)?);
            (
                IpAddr::from(<[u8; 16]>::try_from(s).ok()?),
                IpAddr::from(<[u8; 16]>::try_from(d).ok()?),
            )
        }
    };
    let p = find(b, CTA_TUPLE_PROTO)?;
    let num = *find(p, CTA_PROTO_NUM)?.first()?;
    let port = |t| {
        find(p, t)
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .map(u16::from_be_bytes)
            .unwrap_or(0)
    };
    Some((
        src,
        dst,
        num,
        port(CTA_PROTO_SRC_PORT),
        port(CTA_PROTO_DST_PORT),
    ))
}

fn header(ty: u16, flags: u16, seq: u32, family: u8, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&[family, 0, 0, 0]);
    v
}

/// One conntrack entry as the stale-flow checks see it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// IP protocol number
    proto: u8,
    /// whether the entry was DNATed
    dnat: bool,
    /// original destination
    dst: (IpAddr, u16),
    /// reply source (after a DNAT: the endpoint)
    reply_src: (IpAddr, u16),
}

/// The UDP frontends of the Services (ClusterIPs, external and load-balancer IPs with
/// the service port; node addresses with the node port), each with the endpoints it
/// may be DNATed to (serving ones).
pub type UdpFrontends = BTreeMap<(IpAddr, u16), BTreeSet<(IpAddr, u16)>>;

/// Whether a reconcile deletes `e`: a UDP flow to a Service's frontend that was DNATed
/// to an address that is not one of its serving endpoints any more, or that was not
/// DNATed although the frontend has endpoints now (it was created while it had none,
/// and would keep the client's datagrams from ever being DNATed: upstream's fix for
/// Services that come back from zero endpoints).
fn stale_against(frontends: &UdpFrontends, e: &Entry) -> bool {
    if e.proto != 17 {
        return false;
    }
    match frontends.get(&e.dst) {
        None => false,
        Some(serving) if e.dnat => !serving.contains(&e.reply_src),
        Some(serving) => !serving.is_empty(),
    }
}

/// Walks one receive of a conntrack dump: pushes the original tuple of every entry
/// `victim` picks onto `victims`. Returns whether the dump ended (NLMSG_DONE or an
/// error). The buffer comes from the kernel, but is checked like any other input: a
/// message too short for its headers is skipped, never sliced.
fn dump_page(buf: &[u8], victim: &dyn Fn(&Entry) -> bool, victims: &mut Vec<Vec<u8>>) -> bool {
    // nlmsghdr (16 bytes) and nfgenmsg (4 bytes) precede a ctnetlink message's attributes.
    const HEADERS: usize = 20;
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || len > buf.len() - off {
            break;
        }
        if ty == 3 || ty == 2 {
            // NLMSG_DONE or an error ends the dump.
            return true;
        }
        if len >= HEADERS {
            let payload = &buf[off + HEADERS..off + len];
            let status = find(payload, CTA_STATUS)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            if let (Some(orig_raw), Some(reply)) = (
                find(payload, CTA_TUPLE_ORIG),
                find(payload, CTA_TUPLE_REPLY).and_then(tuple),
            ) {
                if let Some(orig) = tuple(orig_raw) {
                    let e = Entry {
                        proto: orig.2,
                        dnat: status & IPS_DST_NAT != 0,
                        dst: (orig.1, orig.4),
                        reply_src: (reply.0, reply.3),
                    };
                    if victim(&e) {
                        victims.push(orig_raw.to_vec());
                    }
                }
            }
        }
        off += (len + 3) & !3;
    }
    false
}

/// Deletes the conntrack entries of `flows` (UDP only) in the current network
/// namespace; returns how many were deleted.
pub fn delete_stale_udp(flows: &BTreeSet<StaleFlow>) -> Result<usize, Error> {
    if flows.is_empty() {
        return Ok(0);
    }
    delete_where(&|e: &Entry| {
        e.proto == 17
            && e.dnat
            && flows.contains(&StaleFlow {
                frontend: e.dst.0,
                frontend_port: e.dst.1,
                endpoint: e.reply_src.0,
                endpoint_port: e.reply_src.1,
            })
    })
}

/// Deletes every UDP conntrack entry of the current network namespace that is stale
/// against `frontends` (see [`stale_against`]); returns how many were deleted.
pub fn reconcile_udp(frontends: &UdpFrontends) -> Result<usize, Error> {
    if frontends.is_empty() {
        return Ok(0);
    }
    delete_where(&|e: &Entry| stale_against(frontends, e))
}

fn delete_where(victim: &dyn Fn(&Entry) -> bool) -> Result<usize, Error> {
    let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Socket)?;
    let mut deleted = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // Dump this family's entries and pick ours.
        let seq = 1;
        let req = header(IPCTNL_MSG_CT_GET, 0x1 | 0x300, seq, family, 20);
        sock.send(&req).map_err(Error::Socket)?;
        let mut victims: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = sock.recv_raw(&mut buf).map_err(Error::Socket)?;
            if dump_page(&buf[..n], victim, &mut victims) {
                break;
            }
        }
        for (i, orig) in victims.iter().enumerate() {
            let alen = 4 + orig.len();
            let total = 20 + ((alen + 3) & !3);
            let mut m = header(
                IPCTNL_MSG_CT_DELETE,
                0x1 | 0x4,
                100 + i as u32,
                family,
                total,
            );
            m.extend_from_slice(&(alen as u16).to_ne_bytes());
            m.extend_from_slice(&(CTA_TUPLE_ORIG | 0x8000).to_ne_bytes());
            m.extend_from_slice(orig);
            while m.len() < total {
                m.push(0);
            }
            sock.send(&m).map_err(Error::Socket)?;
            let n = sock.recv_raw(&mut buf).map_err(Error::Socket)?;
            if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
                let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
                if code == 0 {
                    deleted += 1;
                }
            }
        }
    }
    Ok(deleted)
}

/// One direction of a conntrack entry: addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    /// IP protocol number
    pub protocol: u8,
    /// source address
    pub src: IpAddr,
    /// destination address
    pub dst: IpAddr,
    /// source port (0 for a protocol without ports)
    pub sport: u16,
    /// destination port
    pub dport: u16,
}

/// A conntrack entry, as `kube-nft-proxy trace` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// the original direction (as the client sent it)
    pub original: Tuple,
    /// the reply direction: after a DNAT its source is the endpoint
    pub reply: Tuple,
    /// `CTA_STATUS` (IPS_* bits)
    pub status: u32,
    /// seconds until it expires
    pub timeout: Option<u32>,
    /// the TCP state (`ESTABLISHED`, `TIME_WAIT`, ...)
    pub tcp_state: Option<&'static str>,
    /// the connection mark
    pub mark: Option<u32>,
}

impl Flow {
    /// Whether the connection was DNATed.
    pub fn dnat(&self) -> bool {
        self.status & IPS_DST_NAT != 0
    }
    /// Whether the connection was SNATed (masqueraded).
    pub fn snat(&self) -> bool {
        self.status & IPS_SRC_NAT != 0
    }
}

const IPS_SRC_NAT: u32 = 1 << 4;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `NLA_F_NESTED`
const NESTED: u16 = 0x8000;

/// nf_conntrack's TCP state names (`enum tcp_conntrack`).
fn tcp_state_name(s: u8) -> &'static str {
    const NAMES: [&str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
    NAMES.get(s as usize).copied().unwrap_or("UNKNOWN")
}

fn push_attr(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    out.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(body);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// `CTA_TUPLE_ORIG` for a lookup of `t`.
fn tuple_attr(t: &Tuple) -> Vec<u8> {
    let mut ip = Vec::new();
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            push_attr(&mut ip, 1, &s.octets());
            push_attr(&mut ip, 2, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            push_attr(&mut ip, 3, &v6(s));
            push_attr(&mut ip, 4, &v6(d));
        }
    }
    let mut proto = Vec::new();
    push_attr(&mut proto, CTA_PROTO_NUM, &[t.protocol]);
    push_attr(&mut proto, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
    push_attr(&mut proto, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    let mut inner = Vec::new();
    push_attr(&mut inner, CTA_TUPLE_IP | NESTED, &ip);
    push_attr(&mut inner, CTA_TUPLE_PROTO | NESTED, &proto);
    let mut out = Vec::new();
    push_attr(&mut out, CTA_TUPLE_ORIG | NESTED, &inner);
    out
}

/// Decodes the attributes of one conntrack entry message.
fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let as_tuple = |(src, dst, protocol, sport, dport)| Tuple {
        protocol,
        src,
        dst,
        sport,
        dport,
    };
    let original = as_tuple(tuple(find(payload, CTA_TUPLE_ORIG)?)?);
    let reply = as_tuple(tuple(find(payload, CTA_TUPLE_REPLY)?)?);
    let be32 = |ty| {
        find(payload, ty)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
    };
    let tcp_state = find(payload, CTA_PROTOINFO)
        .and_then(|p| find(p, CTA_PROTOINFO_TCP))
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first())
        .map(|s| tcp_state_name(*s));
    Some(Flow {
        original,
        reply,
        status: be32(CTA_STATUS).unwrap_or(0),
        timeout: be32(CTA_TIMEOUT),
        tcp_state,
        mark: be32(CTA_MARK),
    })
}

/// Looks conntrack entries up by their original tuple (ctnetlink `GET` with the tuple:
/// one entry, not a dump of the table).
pub struct Lookup {
    sock: mnl::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Lookup {
    /// Opens a ctnetlink socket in the current network namespace.
    pub fn open() -> Result<Lookup, Error> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Socket)?;
        // A kernel that never answers must not hang the caller.
        crate::netlink::ffi::set_recv_timeout(&sock, 5).map_err(Error::Socket)?;
        Ok(Lookup {
            sock,
            seq: 0,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// The entry whose original direction is `t` (in conntrack zone 0), if any.
    pub fn get(&mut self, t: &Tuple) -> Result<Option<Flow>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let family = if t.src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let body = tuple_attr(t);
        let mut req = header(IPCTNL_MSG_CT_GET, 0x1, self.seq, family, 20 + body.len());
        req.extend_from_slice(&body);
        self.sock.send(&req).map_err(Error::Socket)?;
        loop {
            let n = self.sock.recv_raw(&mut self.buf).map_err(Error::Socket)?;
            let buf = &self.buf[..n];
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || len > buf.len() - off {
                    break;
                }
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                if ty == 2 {
                    // NLMSG_ERROR: ENOENT is "no such entry".
                    let code = msg
                        .get(16..20)
                        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(0);
                    return match -code {
                        0 | libc::ENOENT => Ok(None),
                        e => Err(Error::Socket(std::io::Error::from_raw_os_error(e))),
                    };
                }
                if len >= 20 {
                    return Ok(parse_flow(&msg[20..]));
                }
            }
        }
    }
}

/// Applies kube-proxy's conntrack settings through sysctls (only values that are set:
/// 0 leaves a value alone), as kube-proxy does at start-up. Failures are logged: a
/// read-only `/proc/sys` (e.g. a container without the capability) must not stop the
/// proxy.
pub fn apply_settings(c: &crate::kubeproxyconfig::Conntrack) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let mut writes: Vec<(&str, String)> = Vec::new();
    if c.max_per_core > 0 {
        let max = (u64::from(c.max_per_core) * cpus).max(u64::from(c.min));
        writes.push(("nf_conntrack_max", max.to_string()));
    }
    let secs = |d: std::time::Duration| d.as_secs();
    if secs(c.tcp_established_timeout) > 0 {
        writes.push((
            "nf_conntrack_tcp_timeout_established",
            secs(c.tcp_established_timeout).to_string(),
        ));
    }
    if secs(c.tcp_close_wait_timeout) > 0 {
        writes.push((
            "nf_conntrack_tcp_timeout_close_wait",
            secs(c.tcp_close_wait_timeout).to_string(),
        ));
    }
    if c.tcp_be_liberal {
        writes.push(("nf_conntrack_tcp_be_liberal", "1".into()));
    }
    if secs(c.udp_timeout) > 0 {
        writes.push(("nf_conntrack_udp_timeout", secs(c.udp_timeout).to_string()));
    }
    if secs(c.udp_stream_timeout) > 0 {
        writes.push((
            "nf_conntrack_udp_timeout_stream",
            secs(c.udp_stream_timeout).to_string(),
        ));
    }
    for (name, value) in writes {
        let path = format!("/proc/sys/net/netfilter/{name}");
        let current = std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if current == value {
            continue;
        }
        match std::fs::write(&path, &value) {
            Ok(()) => tracing::info!(sysctl = name, value = %value, "set conntrack sysctl"),
            Err(e) => {
                tracing::warn!(sysctl = name, value = %value, error = %e, "cannot set conntrack sysctl")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, len: u32, total: usize) -> Vec<u8> {
        let mut m = vec![0u8; total];
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m
    }

    /// Issue 9: a message whose length covers the netlink header (16) but not the
    /// nfgenmsg (20) was sliced as `buf[off + 20..off + len]` and panicked.
    #[test]
    fn short_messages_are_skipped_not_sliced() {
        let flows = |_: &Entry| true;
        for len in 16..20u32 {
            let mut buf = nlmsg(NFNL_SUBSYS_CTNETLINK << 8, len, (len as usize + 3) & !3);
            buf.extend(nlmsg(3, 16, 16)); // NLMSG_DONE
            let mut victims = Vec::new();
            assert!(dump_page(&buf, &flows, &mut victims), "len {len}");
            assert!(victims.is_empty());
        }
        // A length past the buffer and a truncated header end the page quietly.
        let mut victims = Vec::new();
        assert!(!dump_page(&nlmsg(0x100, 4096, 40), &flows, &mut victims));
        assert!(!dump_page(&[0u8; 15], &flows, &mut victims));
        assert!(!dump_page(
            &nlmsg(0x100, u32::MAX, 20),
            &flows,
            &mut victims
        ));
    }

    /// A lookup's tuple is what the kernel's own entries carry, and an entry with its
    /// status, TCP state and timeout is read back whole.
    #[test]
    fn an_entry_is_looked_up_and_decoded() {
        let orig = Tuple {
            protocol: 6,
            src: "10.0.1.2".parse().unwrap(),
            dst: "172.30.0.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
        };
        let reply = Tuple {
            protocol: 6,
            src: "10.0.2.11".parse().unwrap(),
            dst: "10.0.1.2".parse().unwrap(),
            sport: 8080,
            dport: 40000,
        };
        let reply_attr = {
            let a = tuple_attr(&reply);
            let mut r = a.clone();
            r[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NESTED).to_ne_bytes());
            r
        };
        let mut payload = tuple_attr(&orig);
        payload.extend(reply_attr);
        push_attr(&mut payload, CTA_STATUS, &(IPS_DST_NAT | 0xe).to_be_bytes());
        push_attr(&mut payload, CTA_TIMEOUT, &119u32.to_be_bytes());
        let mut tcp = Vec::new();
        push_attr(&mut tcp, CTA_PROTOINFO_TCP_STATE, &[7]);
        let mut info = Vec::new();
        push_attr(&mut info, CTA_PROTOINFO_TCP | NESTED, &tcp);
        push_attr(&mut payload, CTA_PROTOINFO | NESTED, &info);
        let f = parse_flow(&payload).expect("an entry");
        assert_eq!((f.original, f.reply), (orig, reply));
        assert!(f.dnat() && !f.snat());
        assert_eq!(
            (f.tcp_state, f.timeout, f.mark),
            (Some("TIME_WAIT"), Some(119), None)
        );
        // IPv6 tuples use the IPv6 address attributes.
        let v6 = Tuple {
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            ..orig
        };
        let a = tuple_attr(&v6);
        let t = tuple(find(&a, CTA_TUPLE_ORIG).unwrap()).unwrap();
        assert_eq!((t.0, t.1, t.2, t.3, t.4), (v6.src, v6.dst, 6, 40000, 80));
    }

    #[test]
    fn a_stale_udp_flow_is_found() {
        fn attr(ty: u16, body: &[u8]) -> Vec<u8> {
            let mut a = ((4 + body.len()) as u16).to_ne_bytes().to_vec();
            a.extend((ty | 0x8000).to_ne_bytes());
            a.extend(body);
            while a.len() % 4 != 0 {
                a.push(0);
            }
            a
        }
        let tuple = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            let ip = [attr(1, &src), attr(2, &dst)].concat();
            let proto = [
                attr(CTA_PROTO_NUM, &[17]),
                attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
            ]
            .concat();
            [attr(CTA_TUPLE_IP, &ip), attr(CTA_TUPLE_PROTO, &proto)].concat()
        };
        let orig = tuple([10, 0, 0, 9], [172, 30, 0, 10], 5555, 53);
        let page = |reply_src: [u8; 4], status: u32| {
            let payload = [
                attr(CTA_TUPLE_ORIG, &orig),
                attr(
                    CTA_TUPLE_REPLY,
                    &tuple(reply_src, [10, 0, 0, 9], 8053, 5555),
                ),
                attr(CTA_STATUS, &status.to_be_bytes()),
            ]
            .concat();
            let mut buf = nlmsg(NFNL_SUBSYS_CTNETLINK << 8, (20 + payload.len()) as u32, 20);
            buf.extend(&payload);
            buf.extend(nlmsg(3, 16, 16));
            buf
        };
        let dnated = page([10, 0, 2, 10], IPS_DST_NAT);
        let flows = BTreeSet::from([StaleFlow {
            frontend: "172.30.0.10".parse().unwrap(),
            frontend_port: 53,
            endpoint: "10.0.2.10".parse().unwrap(),
            endpoint_port: 8053,
        }]);
        let by_event = |e: &Entry| {
            e.dnat
                && flows.contains(&StaleFlow {
                    frontend: e.dst.0,
                    frontend_port: e.dst.1,
                    endpoint: e.reply_src.0,
                    endpoint_port: e.reply_src.1,
                })
        };
        let mut victims = Vec::new();
        assert!(dump_page(&dnated, &by_event, &mut victims));
        assert_eq!(victims.len(), 1);
        assert_eq!(victims[0], attr(CTA_TUPLE_ORIG, &orig)[4..]);

        // The periodic reconcile: stale unless DNATed to a serving endpoint; an entry
        // that was not DNATed is stale once the frontend has endpoints.
        let frontend = ("172.30.0.10".parse().unwrap(), 53);
        let ep = |s: &str| (s.parse::<IpAddr>().unwrap(), 8053);
        let picks = |buf: &[u8], serving: &[(IpAddr, u16)]| {
            let frontends: UdpFrontends =
                BTreeMap::from([(frontend, serving.iter().copied().collect())]);
            let mut victims = Vec::new();
            assert!(dump_page(
                buf,
                &|e: &Entry| stale_against(&frontends, e),
                &mut victims
            ));
            victims.len()
        };
        assert_eq!(
            picks(&dnated, &[ep("10.0.2.10")]),
            0,
            "DNATed to a serving endpoint"
        );
        assert_eq!(
            picks(&dnated, &[ep("10.0.2.11")]),
            1,
            "DNATed to a gone endpoint"
        );
        assert_eq!(picks(&dnated, &[]), 1, "DNATed, no endpoints left");
        let plain = page([172, 30, 0, 10], 0);
        assert_eq!(picks(&plain, &[]), 0, "not DNATed, still no endpoints");
        assert_eq!(
            picks(&plain, &[ep("10.0.2.11")]),
            1,
            "not DNATed, endpoints now"
        );
        let other: UdpFrontends =
            BTreeMap::from([(("172.30.0.99".parse().unwrap(), 53), BTreeSet::new())]);
        let mut victims = Vec::new();
        dump_page(&dnated, &|e: &Entry| stale_against(&other, e), &mut victims);
        assert!(victims.is_empty(), "another destination is left alone");
    }
}
