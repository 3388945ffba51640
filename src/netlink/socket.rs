//! The netfilter netlink socket: sending a batch in one `sendmsg`, reading ACKs and
//! errors, and dump requests.

#![forbid(unsafe_code)]

use super::consts::*;
use super::encode::Batch;
use super::ffi::{recv_nonblocking, send_to_kernel, set_recv_timeout, setsockopt_int};
use super::Error;

/// One netlink socket bound to the netfilter bus.
pub struct Conn {
    sock: mnl::Socket,
    portid: u32,
    seq: u32,
}

/// A parsed netlink message header plus payload.
struct Msg<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
        out.push(Msg {
            ty,
            seq,
            payload: &buf[off + 16..off + len],
        });
        off += (len + 3) & !3;
    }
    out
}

/// Reads an NLMSG_ERROR payload: (errno, seq of the message it answers, extack text).
fn parse_error(payload: &[u8]) -> Option<(i32, u32, Option<String>)> {
    if payload.len() < 20 {
        return None;
    }
    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let orig_len = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let seq = u32::from_ne_bytes([payload[12], payload[13], payload[14], payload[15]]);
    // With NETLINK_CAP_ACK only the original header (16 bytes) is echoed; extended ACK
    // attributes (NLMSGERR_ATTR_MSG = 1) follow.
    let _ = orig_len;
    let mut msg = None;
    let mut off = 4 + 16;
    while off + 4 <= payload.len() {
        let alen = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x7fff;
        if alen < 4 || off + alen > payload.len() {
            break;
        }
        if aty == 1 {
            let s = &payload[off + 4..off + alen];
            let s = s.split(|b| *b == 0).next().unwrap_or(&[]);
            msg = Some(String::from_utf8_lossy(s).into_owned());
        }
        off += (alen + 3) & !3;
    }
    Some((code, seq, msg))
}

/// The netlink port ids of every socket this process opened to commit: the
/// notification listener ([`super::monitor`]) tells our own transactions from other
/// programs' by them. Kept for the life of the process: a transaction whose
/// notifications are read after its socket closed is still ours.
static OWN_PORTS: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether netlink port `port` is one of this process's sockets.
pub fn own_port(port: u32) -> bool {
    OWN_PORTS.lock().map(|s| s.contains(&port)).unwrap_or(false)
}

impl Conn {
    /// Opens and binds a socket.
    pub fn open() -> Result<Conn, Error> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Open)?;
        // Errors echo only the header, not a possibly huge message; extended ACKs carry
        // the kernel's reason text. Both are optional: old kernels ignore them.
        let _ = setsockopt_int(&sock, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = setsockopt_int(&sock, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        // A kernel that never answers must not hang a sync for ever.
        let _ = set_recv_timeout(&sock, 60);
        let _ = setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let portid = sock.portid();
        if let Ok(mut own) = OWN_PORTS.lock() {
            own.insert(portid);
        }
        Ok(Conn {
            sock,
            portid,
            seq: 1 << 20,
        })
    }

    fn recv<'a>(&self, buf: &'a mut [u8]) -> Result<&'a [u8], Error> {
        let n = self.sock.recv_raw(buf).map_err(Error::Recv)?;
        Ok(&buf[..n])
    }

    /// Reads and drops whatever the socket still holds: replies to an earlier request
    /// whose reading was cut short (a receive error such as ENOBUFS after tens of
    /// thousands of error replies, or a timeout), and the pending ENOBUFS itself.
    /// nfnetlink answers a batch while `sendmsg` runs, so after this drain every reply
    /// is to the next request.
    fn drain(&self) {
        let mut buf = vec![0u8; 1 << 16];
        // Bounded: a dump left half-read goes on producing pages as they are read, but
        // not for ever; stop after 64 Ki pages in any case.
        for _ in 0..(1 << 16) {
            match recv_nonblocking(&self.sock, &mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) => match e.raw_os_error() {
                    // A pending overflow is reported once; what follows may still be
                    // queued.
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => return,
                },
            }
        }
    }

    /// A copy of `batch` whose messages are numbered from this socket's counter, so
    /// that no two requests on one socket share a sequence number (the encoder numbers
    /// every batch from 1). Returns the copy and the offset added to every number.
    fn renumber(&mut self, batch: &Batch) -> (Vec<u8>, u32) {
        let base = self.seq.wrapping_add(1);
        let offset = base.wrapping_sub(batch.begin_seq);
        let mut bytes = batch.bytes.clone();
        let mut off = 0;
        let mut count: u32 = 0;
        while off + 16 <= bytes.len() {
            let len =
                u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
                    as usize;
            if len < 16 || len > bytes.len() - off {
                break;
            }
            let seq = u32::from_ne_bytes([
                bytes[off + 8],
                bytes[off + 9],
                bytes[off + 10],
                bytes[off + 11],
            ]);
            bytes[off + 8..off + 12].copy_from_slice(&seq.wrapping_add(offset).to_ne_bytes());
            count = count.wrapping_add(1);
            off += (len + 3) & !3;
        }
        self.seq = self.seq.wrapping_add(count.max(1));
        (bytes, offset)
    }

    /// Sends a batch with one `sendmsg` and waits for its outcome. On failure, returns
    /// the first error with the sequence number (as the batch numbers it) of the message
    /// that caused it.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), Error> {
        self.drain();
        let (bytes, offset) = self.renumber(batch);
        // The batch's own numbers run from BEGIN to END; replies outside them are not
        // ours.
        let first_seq = batch.begin_seq.wrapping_add(offset);
        let span = (batch.messages as u32).wrapping_add(2);
        let ours = |seq: u32| seq.wrapping_sub(first_seq) < span;
        let ack_seq = batch.ack_seq.wrapping_add(offset);
        let want = i32::try_from(bytes.len() + (1 << 16)).unwrap_or(i32::MAX);
        setsockopt_int(&self.sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
            .or_else(|_| setsockopt_int(&self.sock, libc::SOL_SOCKET, libc::SO_SNDBUF, want))
            .map_err(Error::Send)?;
        send_to_kernel(&self.sock, &bytes).map_err(Error::Send)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut first_err: Option<Error> = None;
        loop {
            let data = self.recv(&mut buf)?;
            for m in messages(data) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some((code, seq, text)) = parse_error(m.payload) else {
                    continue;
                };
                if !ours(seq) {
                    continue;
                }
                if code != 0 && first_err.is_none() {
                    first_err = Some(Error::Rejected {
                        errno: -code,
                        seq: seq.wrapping_sub(offset),
                        text,
                        op: None,
                    });
                }
                // The ACK'd message is the last one processed; a commit error (reported
                // against BEGIN) is sent before the per-message replies.
                if seq == ack_seq {
                    return match first_err {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
            }
        }
    }

    /// Runs a dump request and returns the payloads of every reply message.
    pub fn dump(
        &mut self,
        msg_type: u16,
        family: u16,
        payload: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.drain();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + 4 + payload.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, res_id
        req.push(family as u8);
        req.push(0);
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(payload);
        self.sock.send(&req).map_err(Error::Send)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let data = self.recv(&mut buf)?;
            for m in messages(data) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        if let Some((code, _, text)) = parse_error(m.payload) {
                            if code == 0 {
                                return Ok(out);
                            }
                            return Err(Error::Rejected {
                                errno: -code,
                                seq,
                                text,
                                op: None,
                            });
                        }
                    }
                    _ => {
                        let mut full = Vec::with_capacity(16 + m.payload.len());
                        full.extend_from_slice(&((16 + m.payload.len()) as u32).to_ne_bytes());
                        full.extend_from_slice(&m.ty.to_ne_bytes());
                        full.extend_from_slice(&0u16.to_ne_bytes());
                        full.extend_from_slice(&m.seq.to_ne_bytes());
                        full.extend_from_slice(&self.portid.to_ne_bytes());
                        full.extend_from_slice(m.payload);
                        out.push(full);
                    }
                }
            }
        }
    }
}
