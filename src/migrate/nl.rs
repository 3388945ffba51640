//! A small netlink client for the takeover's few requests on buses other than the
//! nftables one (rtnetlink, generic netlink, ipset's nfnetlink subsystem): building
//! messages and attributes byte by byte, one request at a time, each answered by an
//! ACK, an error or a dump.
//!
//! The takeover sends a handful of messages once per process, so this favours being
//! easy to check against the kernel's uapi headers (the unit tests of the callers
//! compare whole messages with bytes written out from those headers) over speed.

#![forbid(unsafe_code)]

use std::io;

pub use crate::netlink::attr::{attrs, find};
use crate::netlink::ffi::{set_recv_timeout, setsockopt_int};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
/// On an `NLMSG_ERROR`: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLA_F_NESTED`: marks an attribute whose value is a list of attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLMSGERR_ATTR_MSG`: the extended ACK's reason text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// Errors of one request, each saying what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened.
    #[error("cannot open a netlink socket")]
    Open(#[source] io::Error),
    /// Sending failed.
    #[error("sending {what} to the kernel failed")]
    Send {
        /// the request
        what: String,
        /// why
        #[source]
        source: io::Error,
    },
    /// Receiving failed (or timed out).
    #[error("receiving the kernel's answer to {what} failed")]
    Recv {
        /// the request
        what: String,
        /// why
        #[source]
        source: io::Error,
    },
    /// The kernel answered with an error.
    #[error("the kernel refused {what}: {}{}", errno_text(*errno), text.as_ref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        /// the request
        what: String,
        /// the errno (positive)
        errno: i32,
        /// the kernel's extended ACK text, if any
        text: Option<String>,
    },
}

/// An errno as text; ipset's private codes (4096 and up) by their uapi names.
fn errno_text(errno: i32) -> String {
    match errno {
        4097 => "IPSET_ERR_PROTOCOL: protocol version not supported".into(),
        4100 => "IPSET_ERR_BUSY: the set is in use".into(),
        n if n >= 4096 => format!("ipset error {n}"),
        n => io::Error::from_raw_os_error(n).to_string(),
    }
}

impl Error {
    /// The errno the kernel answered with, if it refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Netlink attributes being built (each padded to 4 bytes, as the kernel expects).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    /// No attributes.
    pub fn new() -> Attrs {
        Attrs::default()
    }

    /// An attribute holding `value`.
    pub fn bytes(mut self, ty: u16, value: &[u8]) -> Attrs {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }

    /// A NUL-terminated string (`NLA_NUL_STRING`, also accepted as `NLA_STRING`).
    pub fn str(self, ty: u16, s: &str) -> Attrs {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(ty, &v)
    }

    /// A u8.
    pub fn u8(self, ty: u16, v: u8) -> Attrs {
        self.bytes(ty, &[v])
    }

    /// A u16 in host order.
    pub fn u16(self, ty: u16, v: u16) -> Attrs {
        self.bytes(ty, &v.to_ne_bytes())
    }

    /// A u32 in host order.
    pub fn u32(self, ty: u16, v: u32) -> Attrs {
        self.bytes(ty, &v.to_ne_bytes())
    }

    /// A u16 in network order.
    pub fn be16(self, ty: u16, v: u16) -> Attrs {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A u32 in network order.
    pub fn be32(self, ty: u16, v: u32) -> Attrs {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A u64 in network order.
    pub fn be64(self, ty: u16, v: u64) -> Attrs {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// An attribute whose value is `inner` (pass `ty | NLA_F_NESTED` where the
    /// receiver wants the flag).
    pub fn nested(self, ty: u16, inner: Attrs) -> Attrs {
        self.bytes(ty, &inner.0)
    }

    /// The encoded attributes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A string attribute's value up to its NUL.
pub fn string(v: &[u8]) -> String {
    let s = v.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// A u16 attribute in host order.
pub fn get_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

/// A u32 attribute in host order.
pub fn get_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// A u32 attribute in network order.
pub fn get_be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// A u64 attribute in network order.
pub fn get_be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// One netlink message: the 16-byte header (`struct nlmsghdr`: length, type, flags,
/// sequence number, port id 0 = from us to the kernel) and `payload`, padded.
pub fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::with_capacity((len + 3) & !3);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// A received message: type, flags, sequence number, payload (after the header).
struct Received<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn received(buf: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        out.push(Received {
            ty: u16::from_ne_bytes([buf[off + 4], buf[off + 5]]),
            flags: u16::from_ne_bytes([buf[off + 6], buf[off + 7]]),
            seq: u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]),
            payload: &buf[off + NLMSG_HDRLEN..off + len],
        });
        off += (len + 3) & !3;
    }
    out
}

/// An `NLMSG_ERROR` payload: the (negative) error code, 0 for an ACK, and the
/// extended ACK text. The request is echoed after the code: its header only when the
/// message's flags say `NLM_F_CAPPED` (an ACK, or `NETLINK_CAP_ACK`), else all of it.
fn parse_error(flags: u16, payload: &[u8]) -> Option<(i32, Option<String>)> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    let echoed = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        echoed.max(NLMSG_HDRLEN)
    };
    let text = payload
        .get(4 + ((skip + 3) & !3)..)
        .and_then(|ext| find(ext, NLMSGERR_ATTR_MSG))
        .map(string);
    Some((code, text))
}

/// One netlink socket for the takeover's requests.
pub struct Socket {
    sock: mnl::Socket,
    seq: u32,
}

impl Socket {
    /// Opens and binds a socket on `bus`.
    pub fn open(bus: mnl::Bus) -> Result<Socket, Error> {
        let sock = mnl::Socket::new(bus).map_err(Error::Open)?;
        // Errors echo only the header; extended ACKs carry the kernel's reason. Both
        // optional: old kernels ignore them.
        let _ = setsockopt_int(&sock, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = setsockopt_int(&sock, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        // A kernel that never answers must not hang the takeover for ever.
        let _ = set_recv_timeout(&sock, 30);
        Ok(Socket { sock, seq: 0 })
    }

    /// Sends one request (`NLM_F_REQUEST | NLM_F_ACK | flags`) and collects the
    /// payloads of the messages that answer it, until its ACK, its error, or the end
    /// of its dump. `what` names the request in errors.
    pub fn request(
        &mut self,
        what: &str,
        ty: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = message(ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq, payload);
        self.sock.send(&msg).map_err(|source| Error::Send {
            what: what.into(),
            source,
        })?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.sock.recv_raw(&mut buf).map_err(|source| Error::Recv {
                what: what.into(),
                source,
            })?;
            for m in received(&buf[..n]) {
                // Answers to an earlier request (a late ACK after a dump's DONE) are
                // not ours.
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let Some((code, text)) = parse_error(m.flags, m.payload) else {
                            continue;
                        };
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(Error::Refused {
                            what: what.into(),
                            errno: code.saturating_neg(),
                            text,
                        });
                    }
                    _ => out.push(m.payload.to_vec()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let a = Attrs::new()
            .str(1, "KUBE")
            .u8(2, 7)
            .be16(3, 80)
            .nested(4 | NLA_F_NESTED, Attrs::new().u32(1, 5));
        let b = a.into_bytes();
        assert_eq!(b.len(), 12 + 8 + 8 + 12);
        let got: Vec<_> = attrs(&b).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(string(got[0].1), "KUBE");
        assert_eq!(got[1], (2, &[7u8][..]));
        assert_eq!(got[2], (3, &[0u8, 80][..]));
        assert_eq!(got[3].0, 4, "the nested flag is masked");
        assert_eq!(find(got[3].1, 1).and_then(get_u32), Some(5));
    }

    #[test]
    fn truncated_attributes_stop_the_walk() {
        let mut b = Attrs::new().u32(1, 1).into_bytes();
        b.extend_from_slice(&[40, 0, 2, 0, 1, 2]);
        assert_eq!(attrs(&b).count(), 1);
    }

    #[test]
    fn errors_carry_the_extended_ack_text() {
        // NLMSG_ERROR payload with NETLINK_CAP_ACK: error -16, the echoed header (16
        // bytes, length field 36), then NLMSGERR_ATTR_MSG "busy".
        let mut p = (-16i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&36u32.to_ne_bytes());
        p.extend_from_slice(&[0u8; 12]);
        p.extend(Attrs::new().str(NLMSGERR_ATTR_MSG, "busy").into_bytes());
        assert_eq!(
            parse_error(NLM_F_CAPPED, &p),
            Some((-16, Some("busy".into())))
        );
        let ack = [0u8; 20];
        assert_eq!(parse_error(NLM_F_CAPPED, &ack), Some((0, None)));
        // Not capped: the whole request (36 bytes) is echoed before the attributes.
        let mut full = (-2i32).to_ne_bytes().to_vec();
        full.extend_from_slice(&36u32.to_ne_bytes());
        full.extend_from_slice(&[0u8; 32]);
        full.extend(Attrs::new().str(NLMSGERR_ATTR_MSG, "gone").into_bytes());
        assert_eq!(parse_error(0, &full), Some((-2, Some("gone".into()))));
    }
}
