//! Operations → one netlink batch (BEGIN, messages, END) in a single contiguous buffer.
//!
//! Only the last message before END asks for an ACK: the kernel reports every failing
//! message anyway, so one ACK tells us the batch was processed without filling the
//! receive buffer with 100k ACKs (`notes/netlink.md`). Each message's sequence number
//! maps back to the operation that produced it, so an error names its cause.

#![forbid(unsafe_code)]

use super::consts::*;
use super::expr::RawRule;
use super::ffi::{self, EncodeError, MsgBuf, Payload, SetElem};
use super::{describe, Error};
use crate::ruleset::diff::Op;
use crate::ruleset::ir::*;
use crate::ruleset::render;

/// Size of the buffer each message is built in. Every message is checked against it
/// before it is written ([`MsgBuf::message`]); element messages are cut to stay well
/// below it, and far below netlink's 64 KiB attribute limit.
pub const SCRATCH: usize = 256 * 1024;
/// Budget for one element message.
const ELEM_MSG_BUDGET: usize = 48 * 1024;

/// A batch being built.
pub struct BatchBuilder {
    buf: Vec<u8>,
    scratch: MsgBuf,
    seq: u32,
    /// (first seq of the op's messages, op index)
    seq_ops: Vec<(u32, usize)>,
    set_id: u32,
}

/// A batch ready to send.
pub struct Batch {
    /// the bytes: BEGIN, messages, END
    pub bytes: Vec<u8>,
    /// sequence number of BEGIN (a commit error is reported against it)
    pub begin_seq: u32,
    /// sequence number of the message that carries the ACK request
    pub ack_seq: u32,
    /// number of messages between BEGIN and END
    pub messages: usize,
    seq_ops: Vec<(u32, usize)>,
    /// where END starts in `bytes`
    end_at: usize,
}

impl Batch {
    /// The index of the operation that produced the message with this sequence number.
    pub fn op_for_seq(&self, seq: u32) -> Option<usize> {
        let i = self.seq_ops.partition_point(|(s, _)| *s <= seq);
        i.checked_sub(1).map(|i| self.seq_ops[i].1)
    }

    /// A batch whose messages were encoded elsewhere (the takeover's deletions in
    /// tables that are not ours): `bytes` holds BEGIN (numbered `begin_seq`), then
    /// `messages` messages numbered from `begin_seq + 1`, the last one asking for the
    /// ACK, then END, which starts at `end_at`. Errors name no operation.
    pub fn from_encoded(bytes: Vec<u8>, begin_seq: u32, messages: usize, end_at: usize) -> Batch {
        Batch {
            bytes,
            begin_seq,
            ack_seq: begin_seq.wrapping_add(messages as u32),
            messages,
            seq_ops: Vec::new(),
            end_at,
        }
    }

    /// The same batch without its END message: the kernel processes every message,
    /// reports each error, and then aborts instead of committing (what `nft --check`
    /// does). A dry run of a transaction against the real kernel.
    pub fn without_end(mut self) -> Batch {
        self.bytes.truncate(self.end_at);
        self
    }
}

/// nft's type number of a key component.
fn type_id(t: KeyType, family: Family) -> u32 {
    match (t, family) {
        (KeyType::Addr | KeyType::Net, Family::V4) => TYPE_IPADDR,
        (KeyType::Addr | KeyType::Net, Family::V6) => TYPE_IP6ADDR,
        (KeyType::Proto, _) => TYPE_INET_PROTOCOL,
        (KeyType::Port, _) => TYPE_INET_SERVICE,
        (KeyType::Index, _) => TYPE_INTEGER,
    }
}

/// The (possibly concatenated) type number and byte length of a key.
pub fn key_type(ts: &[KeyType], family: Family) -> (u32, u32) {
    let mut id = 0;
    let mut len = 0;
    for t in ts {
        id = (id << TYPE_BITS) | type_id(*t, family);
        len += padded_len(*t, family);
    }
    if ts.len() == 1 {
        // A single component is not padded.
        len = field_len(ts[0], family);
    }
    (id, len)
}

/// Unpadded byte length of one key component (the kernel's concat field length).
fn field_len(t: KeyType, family: Family) -> u32 {
    match t {
        KeyType::Addr | KeyType::Net => family.addr_len(),
        KeyType::Proto => 1,
        KeyType::Port => 2,
        KeyType::Index => 4,
    }
}

/// The `NFTA_SET_FLAGS` of a declaration, every property OR-ed into one value.
///
/// A dynamic timeout set (session affinity) is `NFT_SET_TIMEOUT | NFT_SET_EVAL`, what
/// nft sends for `flags dynamic,timeout`. It is sent without a size
/// (`NFTA_SET_DESC_SIZE`), as nft sends it when the text gives none: the kernel's
/// hash backend sizes its first bucket table from the declared size
/// (`nft_rhash_init`: `nelem_hint = desc->size ?: 3`), so `size 65535` preallocated a
/// table of 131,072 buckets, a 2 MiB allocation per set, before any client was
/// recorded. Without a size the table starts at 4 buckets and grows with its
/// elements, and binding the set to `update @set` gives it the kernel's default cap of
/// [`render::AFFINITY_SET_SIZE`] elements (`nft_dynset_init`), which `nft list` shows
/// as `size 65535` either way.
pub fn set_flags(d: &SetDecl) -> u32 {
    let mut flags = 0;
    if d.is_interval() {
        flags |= NFT_SET_INTERVAL | NFT_SET_CONCAT;
    }
    if d.timeout.is_some() {
        flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
    }
    if d.is_map() {
        flags |= NFT_SET_MAP;
    }
    flags
}

/// User data nft 1.0.6 writes for our set shapes; `nft list` needs it to print the
/// declarations (`typeof …`) and elements readably. Captured from nft's own messages.
pub fn set_userdata(decl: &SetDecl, family: Family) -> Vec<u8> {
    if render::uses_typeof(decl) {
        let hex = match (family, decl.timeout.is_some()) {
            (Family::V4, false) => TYPEOF_LB_MAP_V4,
            (Family::V6, false) => TYPEOF_LB_MAP_V6,
            (Family::V4, true) => TYPEOF_AFFINITY_V4,
            (Family::V6, true) => TYPEOF_AFFINITY_V6,
        };
        return hex_bytes(hex);
    }
    if decl.key.len() == 1 {
        // KEYBYTEORDER = big endian
        vec![0, 4, 2, 0, 0, 0]
    } else {
        // KEYBYTEORDER = invalid (concatenation), KEY_TYPEOF = concat
        vec![0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 0x0d, 0, 0, 0, 1, 0]
    }
}

const TYPEOF_LB_MAP_V4: &str = "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000";
const TYPEOF_LB_MAP_V6: &str = "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000";

/// `typeof ip saddr . numgen random mod 1` (session affinity: `client . endpoint tag`).
const TYPEOF_AFFINITY_V4: &str = "000400000000033a00040d00000001320014000407000000010c00040c00000001040b000000011a0004170000000112000401000000010401000000020400000000";
const TYPEOF_AFFINITY_V6: &str = "000400000000033a00040d00000001320014000407000000010c00040d000000010408000000011a0004170000000112000401000000010401000000020400000000";

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Encodes a key or value tuple as the kernel stores it: each component padded to 4
/// bytes in a concatenation; numgen indexes in host order.
pub fn encode_tuple(vs: &[Value]) -> Vec<u8> {
    encode_tuple_at(vs, false)
}

/// Encodes the end of an interval element: networks become their last address.
pub fn encode_tuple_end(vs: &[Value]) -> Vec<u8> {
    encode_tuple_at(vs, true)
}

fn encode_tuple_at(vs: &[Value], end: bool) -> Vec<u8> {
    let concat = vs.len() > 1;
    let mut out = Vec::with_capacity(vs.len() * 4);
    for v in vs {
        let start = out.len();
        match v {
            Value::Addr(std::net::IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Value::Addr(std::net::IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Value::Proto(p) => out.push(*p),
            Value::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Value::Index(i) => out.extend_from_slice(&i.to_ne_bytes()),
            Value::Net(n) => match if end { n.broadcast() } else { n.network() } {
                std::net::IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                std::net::IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            },
        }
        if concat {
            while (out.len() - start) % 4 != 0 {
                out.push(0);
            }
        }
    }
    out
}

/// User-data TLV type of our rule digest. nft prints only type 0 (a comment) and skips
/// other types, so `nft list` output is unchanged by it.
pub const RULE_DIGEST_UDATA: u8 = 0xd1;

/// A rule's user data: our digest TLV.
pub fn rule_digest_udata(d: u64) -> Vec<u8> {
    let mut v = vec![RULE_DIGEST_UDATA, 8];
    v.extend_from_slice(&d.to_le_bytes());
    v
}

/// The digest in a rule's user data, if it carries ours.
pub fn parse_rule_digest(ud: &[u8]) -> Option<u64> {
    let mut off = 0;
    while off + 2 <= ud.len() {
        let (ty, len) = (ud[off], ud[off + 1] as usize);
        let v = ud.get(off + 2..off + 2 + len)?;
        if ty == RULE_DIGEST_UDATA && len == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            return Some(u64::from_le_bytes(b));
        }
        off += 2 + len;
    }
    None
}

/// Encodes an element comment as nft does (udata type 0, NUL-terminated, ≤ 128 bytes).
pub fn comment_udata(c: &str) -> Vec<u8> {
    let mut s = c.as_bytes().to_vec();
    s.retain(|b| *b != 0);
    if s.len() > 127 {
        let mut cut = 127;
        while cut > 0 && !c.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s.push(0);
    let mut out = vec![0u8, s.len() as u8];
    out.extend(s);
    out
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty batch (BEGIN written).
    pub fn new() -> Self {
        let mut b = BatchBuilder {
            buf: Vec::with_capacity(64 * 1024),
            scratch: MsgBuf::new(SCRATCH),
            seq: 1,
            seq_ops: Vec::new(),
            set_id: 1,
        };
        let seq = b.next_seq();
        b.buf.extend_from_slice(b.scratch.batch_begin(seq));
        b
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    /// Builds one message in the scratch buffer and appends it to the batch.
    fn message(
        &mut self,
        msg: u16,
        family: Family,
        flags: u16,
        payload: Payload<'_>,
    ) -> Result<(), EncodeError> {
        let seq = self.next_seq();
        let bytes = self
            .scratch
            .message(msg, family.nfproto(), flags, seq, payload)?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends all messages for one operation. On error the batch is as it was before
    /// the call (the operation's messages, numbers and set ids are taken back), so the
    /// caller may go on with other operations.
    pub fn add(&mut self, op_index: usize, op: &Op) -> Result<(), Error> {
        let mark = (self.buf.len(), self.seq, self.seq_ops.len(), self.set_id);
        self.seq_ops.push((self.seq, op_index));
        let r = match op {
            Op::AddTable(f) => self.table(*f, TABLE_NAME, NFT_MSG_NEWTABLE, NLM_F_CREATE),
            Op::DelTable(f) => self.table(*f, TABLE_NAME, NFT_MSG_DELTABLE, 0),
            Op::DelForeignTable(f, name) => self.table(*f, name, NFT_MSG_DELTABLE, 0),
            Op::AddChain(f, c) => {
                self.chain(*f, &c.name, Some(c.kind), NFT_MSG_NEWCHAIN, NLM_F_CREATE)
            }
            Op::DelChain(f, c) => self.chain(*f, c, None, NFT_MSG_DELCHAIN, 0),
            Op::FlushChain(f, c) => self.flush(*f, c),
            Op::AddSet(f, d) => self.set(*f, &d.name, Some(d), NFT_MSG_NEWSET, NLM_F_CREATE),
            Op::DelSet(f, n) => self.set(*f, n, None, NFT_MSG_DELSET, 0),
            Op::AddElements(f, d, els) => {
                let items: Vec<(&Key, Option<&ElementData>)> =
                    els.iter().map(|(k, e)| (k, Some(e))).collect();
                self.elements(*f, d, &items, NFT_MSG_NEWSETELEM, NLM_F_CREATE)
            }
            Op::DelElements(f, d, keys) => {
                let items: Vec<(&Key, Option<&ElementData>)> =
                    keys.iter().map(|k| (k, None)).collect();
                self.elements(*f, d, &items, NFT_MSG_DELSETELEM, 0)
            }
            Op::AddRule(f, c, r) => self.rule(*f, c, r),
        };
        r.map_err(|source| {
            let (len, seq, ops, set_id) = mark;
            self.buf.truncate(len);
            self.seq = seq;
            self.seq_ops.truncate(ops);
            self.set_id = set_id;
            Error::Encode {
                op: describe(op),
                source,
            }
        })
    }

    fn table(&mut self, f: Family, table: &str, msg: u16, flags: u16) -> Result<(), EncodeError> {
        let mut t = ffi::Table::new()?;
        t.set_name(table)?;
        t.set_family(f.nfproto() as u32)?;
        self.message(msg, f, flags | NLM_F_REQUEST, Payload::Table(&t))
    }

    fn chain(
        &mut self,
        f: Family,
        name: &str,
        kind: Option<ChainKind>,
        msg: u16,
        flags: u16,
    ) -> Result<(), EncodeError> {
        let mut c = ffi::Chain::new()?;
        c.set_table(TABLE_NAME)?;
        c.set_name(name)?;
        c.set_family(f.nfproto() as u32)?;
        if let Some(ChainKind::Base {
            kind,
            hook,
            priority,
        }) = kind
        {
            c.set_hooknum(hook.number())?;
            c.set_priority(priority)?;
            c.set_type(kind.nft())?;
            c.set_policy(NF_ACCEPT as u32)?;
        }
        self.message(msg, f, flags | NLM_F_REQUEST, Payload::Chain(&c))
    }

    fn flush(&mut self, f: Family, chain: &str) -> Result<(), EncodeError> {
        let mut r = RawRule::new(f, TABLE_NAME, chain)?;
        self.message(NFT_MSG_DELRULE, f, NLM_F_REQUEST, Payload::Rule(r.rule()))
    }

    fn rule(&mut self, f: Family, chain: &str, rule: &Rule) -> Result<(), EncodeError> {
        let mut r = RawRule::new(f, TABLE_NAME, chain)?;
        for s in &rule.0 {
            r.stmt(s, f)?;
        }
        r.set_userdata(&rule_digest_udata(render::rule_digest(rule, f)))?;
        self.message(
            NFT_MSG_NEWRULE,
            f,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
            Payload::Rule(r.rule()),
        )
    }

    fn set(
        &mut self,
        f: Family,
        name: &str,
        decl: Option<&SetDecl>,
        msg: u16,
        flags: u16,
    ) -> Result<(), EncodeError> {
        let id = self.set_id;
        self.set_id += 1;
        let mut s = ffi::Set::new()?;
        s.set_table(TABLE_NAME)?;
        s.set_name(name)?;
        s.set_family(f.nfproto() as u32)?;
        if let Some(d) = decl {
            let (kt, kl) = key_type(&d.key, f);
            s.set_key(kt, kl)?;
            // One flags value for every property of the set, set once: assigning
            // NFTNL_SET_FLAGS per property would keep only the last one.
            let flags = set_flags(d);
            if flags != 0 {
                s.set_flags(flags)?;
            }
            if d.is_interval() {
                let lens: Vec<u8> = d.key.iter().map(|t| field_len(*t, f) as u8).collect();
                s.set_concat(&lens)?;
            }
            if let Some(t) = d.timeout {
                s.set_timeout_ms(u64::from(t) * 1000)?;
            }
            // No NFTNL_SET_DESC_SIZE, ever: see `set_flags`.
            if d.is_map() {
                let (dt, dl) = key_type(&d.data, f);
                s.set_data_type(dt, dl)?;
            }
            s.set_id(id)?;
            s.set_userdata(&set_userdata(d, f))?;
            if d.counter {
                // As nft sends `counter` in a set declaration: NFTA_SET_EXPR holding a
                // counter without values; the kernel gives every element its own copy,
                // also to elements added later without one.
                s.add_expr(ffi::Expr::new(ffi::ExprKind::Counter)?);
            }
        }
        self.message(msg, f, flags | NLM_F_REQUEST, Payload::Set(&mut s))
    }

    fn elements(
        &mut self,
        f: Family,
        decl: &SetDecl,
        items: &[(&Key, Option<&ElementData>)],
        msg: u16,
        flags: u16,
    ) -> Result<(), EncodeError> {
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            let mut budget = 0usize;
            while end < items.len() && budget < ELEM_MSG_BUDGET {
                let (_, e) = items[end];
                budget += 64
                    + items[end].0.len() * 16
                    + e.map(|e| {
                        e.data.len() * 16 + e.comment.as_ref().map_or(0, |c| c.len().min(128) + 8)
                    })
                    .unwrap_or(0);
                end += 1;
            }
            self.element_msg(f, decl, &items[start..end], msg, flags)?;
            start = end;
        }
        Ok(())
    }

    fn element_msg(
        &mut self,
        f: Family,
        decl: &SetDecl,
        items: &[(&Key, Option<&ElementData>)],
        msg: u16,
        flags: u16,
    ) -> Result<(), EncodeError> {
        let mut s = ffi::Set::new()?;
        s.set_table(TABLE_NAME)?;
        s.set_name(&decl.name)?;
        s.set_family(f.nfproto() as u32)?;
        for (key, data) in items {
            let mut e = SetElem::new()?;
            e.set_key(&encode_tuple(&key.unpack()))?;
            if decl.is_interval() {
                e.set_key_end(&encode_tuple_end(&key.unpack()))?;
            }
            if let Some(d) = data {
                if !d.data.is_empty() {
                    e.set_data(&encode_tuple(&d.data.unpack()))?;
                }
                if let Some(c) = &d.comment {
                    e.set_userdata(&comment_udata(c))?;
                }
            }
            s.add_elem(e);
        }
        self.message(msg, f, flags | NLM_F_REQUEST, Payload::Elems(&mut s))
    }

    /// Appends one message the caller built (an object of a table other than ours, such
    /// as `trace`'s temporary table), numbered as operation `op_index` for
    /// [`Batch::op_for_seq`]. On error the batch is as it was before the call.
    pub fn add_message(
        &mut self,
        op_index: usize,
        msg: u16,
        family: Family,
        flags: u16,
        payload: Payload<'_>,
    ) -> Result<(), EncodeError> {
        let mark = (self.buf.len(), self.seq, self.seq_ops.len());
        self.seq_ops.push((self.seq, op_index));
        self.message(msg, family, flags | NLM_F_REQUEST, payload)
            .inspect_err(|_| {
                let (len, seq, ops) = mark;
                self.buf.truncate(len);
                self.seq = seq;
                self.seq_ops.truncate(ops);
            })
    }

    /// Finishes the batch: the last message asks for an ACK, then END.
    pub fn finish(mut self) -> Batch {
        let begin_seq = 1;
        let messages = (self.seq - 2) as usize;
        let mut ack_seq = begin_seq;
        if messages > 0 {
            // Set NLM_F_ACK on the last message: walk to it.
            let mut off = 0;
            let mut last = 0;
            while off + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes([
                    self.buf[off],
                    self.buf[off + 1],
                    self.buf[off + 2],
                    self.buf[off + 3],
                ]) as usize;
                last = off;
                off += (len + 3) & !3;
                if len == 0 {
                    break;
                }
            }
            let flags = u16::from_ne_bytes([self.buf[last + 6], self.buf[last + 7]]) | NLM_F_ACK;
            self.buf[last + 6..last + 8].copy_from_slice(&flags.to_ne_bytes());
            ack_seq = u32::from_ne_bytes([
                self.buf[last + 8],
                self.buf[last + 9],
                self.buf[last + 10],
                self.buf[last + 11],
            ]);
        }
        let seq = self.next_seq();
        let end_at = self.buf.len();
        self.buf.extend_from_slice(self.scratch.batch_end(seq));
        Batch {
            bytes: self.buf,
            begin_seq,
            ack_seq,
            messages,
            seq_ops: self.seq_ops,
            end_at,
        }
    }
}

/// Encodes operations into one batch; the first operation that cannot be encoded is
/// the error, named.
pub fn encode(ops: &[Op]) -> Result<Batch, Error> {
    let mut b = BatchBuilder::new();
    for (i, op) in ops.iter().enumerate() {
        b.add(i, op)?;
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_pad_concatenations() {
        let k = vec![
            Value::Addr("1.2.3.4".parse().unwrap()),
            Value::Proto(6),
            Value::Port(80),
            Value::Index(1),
        ];
        let b = encode_tuple(&k);
        assert_eq!(&b[..4], &[1, 2, 3, 4]);
        assert_eq!(&b[4..8], &[6, 0, 0, 0]);
        assert_eq!(&b[8..12], &[0, 80, 0, 0]);
        assert_eq!(&b[12..16], &1u32.to_ne_bytes());
        assert_eq!(
            encode_tuple(&[Value::Addr("1.2.3.4".parse().unwrap())]).len(),
            4
        );
    }

    #[test]
    fn key_types_match_nft() {
        let (id, len) = key_type(&[KeyType::Addr, KeyType::Proto, KeyType::Port], Family::V4);
        assert_eq!((id, len), (0x730d, 12));
        let (id, len) = key_type(
            &[KeyType::Addr, KeyType::Proto, KeyType::Port, KeyType::Index],
            Family::V4,
        );
        assert_eq!((id, len), (0x1cc344, 16));
        let (id, _) = key_type(
            &[KeyType::Addr, KeyType::Proto, KeyType::Port, KeyType::Index],
            Family::V6,
        );
        assert_eq!(id, 0x20c344);
    }

    #[test]
    fn comments_are_nul_terminated_and_capped() {
        assert_eq!(comment_udata("ab"), vec![0, 3, b'a', b'b', 0]);
        assert_eq!(comment_udata(&"x".repeat(300)).len(), 2 + 128);
    }

    #[test]
    fn errors_map_to_their_operation() {
        let ops = vec![
            Op::AddTable(Family::V4),
            Op::AddElements(
                Family::V4,
                SetDecl {
                    name: "s".into(),
                    key: vec![KeyType::Addr],
                    data: vec![],
                    comment: "",
                    timeout: None,
                    counter: false,
                },
                (0..2000u32)
                    .map(|i| {
                        (
                            vec![Value::Addr(std::net::Ipv4Addr::from(i).into())].into(),
                            ElementData::default(),
                        )
                    })
                    .collect(),
            ),
            Op::FlushChain(Family::V4, "c".into()),
        ];
        let b = encode(&ops).unwrap();
        assert!(b.messages >= 3);
        assert_eq!(b.op_for_seq(2), Some(0));
        assert_eq!(b.op_for_seq(3), Some(1));
        assert_eq!(b.op_for_seq(b.ack_seq), Some(2));
    }

    fn decl(key: Vec<KeyType>, data: Vec<KeyType>, timeout: Option<u32>) -> SetDecl {
        SetDecl {
            name: "s".into(),
            key,
            data,
            comment: "",
            timeout,
            counter: false,
        }
    }

    #[test]
    fn set_flags_are_or_ed_together() {
        assert_eq!(set_flags(&decl(vec![KeyType::Addr], vec![], None)), 0);
        assert_eq!(
            set_flags(&decl(vec![KeyType::Addr], vec![], Some(10))),
            NFT_SET_TIMEOUT | NFT_SET_EVAL
        );
        assert_eq!(
            set_flags(&decl(vec![KeyType::Addr, KeyType::Net], vec![], None)),
            NFT_SET_INTERVAL | NFT_SET_CONCAT
        );
        // Shapes the IR does not build today lose no flag either.
        assert_eq!(
            set_flags(&decl(
                vec![KeyType::Addr, KeyType::Net],
                vec![KeyType::Addr],
                Some(10)
            )),
            NFT_SET_INTERVAL | NFT_SET_CONCAT | NFT_SET_TIMEOUT | NFT_SET_EVAL | NFT_SET_MAP
        );
        assert_eq!(
            set_flags(&decl(vec![KeyType::Addr], vec![KeyType::Port], Some(10))),
            NFT_SET_TIMEOUT | NFT_SET_EVAL | NFT_SET_MAP
        );
    }

    /// The NEWSET message of an affinity set, decoded by libnftnl: what nft 1.0.6 sends
    /// for `set s { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }` (flags
    /// 0x30, key length 4, timeout in ms) and no size, which would make the kernel
    /// preallocate a 2 MiB hash table per set.
    #[test]
    fn affinity_set_is_sent_as_nft_sends_it_without_a_size() {
        let ops = vec![Op::AddSet(
            Family::V4,
            decl(vec![KeyType::Addr], vec![], Some(10800)),
        )];
        let b = encode(&ops).unwrap();
        let newset = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET;
        let mut off = 0;
        let mut seen = 0;
        while off + 16 <= b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b.bytes[off + 4..off + 6].try_into().unwrap());
            if ty == newset {
                seen += 1;
                let set = ffi::Set::parse(&b.bytes[off..off + len]).expect("a NEWSET message");
                assert_eq!(set.flags(), Some(NFT_SET_TIMEOUT | NFT_SET_EVAL));
                assert_eq!(set.key().1, Some(4));
                assert_eq!(set.desc_size(), None, "a size preallocates");
                assert_eq!(set.policy(), None);
                assert_eq!(set.timeout_ms(), Some(10_800_000));
            }
            off += (len + 3) & !3;
        }
        assert_eq!(seen, 1);
    }

    /// The messages of a batch, BEGIN and END included.
    fn messages(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= bytes.len() {
            let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            out.push(&bytes[off..off + len]);
            off += (len + 3) & !3;
        }
        assert_eq!(off, bytes.len(), "the batch does not end on a message");
        out
    }

    /// The top-level attributes of one nftables message, read without libnftnl.
    fn attrs(msg: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut off = ffi::HEADERS;
        while off + 4 <= msg.len() {
            let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
            assert!(len >= 4 && off + len <= msg.len(), "bad attribute at {off}");
            out.push((ty, &msg[off + 4..off + len]));
            off += (len + 3) & !3;
        }
        out
    }

    /// Issue 9 point 12: the flags were assigned once per property (interval, timeout,
    /// map), so a set with several kept only the last. Read from the encoded bytes.
    #[test]
    fn every_set_flag_reaches_the_message() {
        const NFTA_SET_FLAGS: u16 = 3;
        let interval_map = decl(
            vec![KeyType::Addr, KeyType::Net],
            vec![KeyType::Addr],
            Some(10),
        );
        let cases = [
            (
                interval_map,
                NFT_SET_INTERVAL | NFT_SET_CONCAT | NFT_SET_TIMEOUT | NFT_SET_EVAL | NFT_SET_MAP,
            ),
            (
                decl(vec![KeyType::Addr], vec![KeyType::Port], Some(10)),
                NFT_SET_TIMEOUT | NFT_SET_EVAL | NFT_SET_MAP,
            ),
            (
                decl(vec![KeyType::Addr, KeyType::Net], vec![], Some(10)),
                NFT_SET_INTERVAL | NFT_SET_CONCAT | NFT_SET_TIMEOUT | NFT_SET_EVAL,
            ),
            (
                decl(
                    vec![KeyType::Addr, KeyType::Net],
                    vec![KeyType::Index],
                    None,
                ),
                NFT_SET_INTERVAL | NFT_SET_CONCAT | NFT_SET_MAP,
            ),
        ];
        let newset = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET;
        for (d, want) in cases {
            let b = encode(&[Op::AddSet(Family::V4, d.clone())]).unwrap();
            let msgs = messages(&b.bytes);
            let m = msgs
                .iter()
                .find(|m| u16::from_ne_bytes([m[4], m[5]]) == newset)
                .expect("a NEWSET message");
            let flags: Vec<u32> = attrs(m)
                .into_iter()
                .filter(|(ty, _)| *ty == NFTA_SET_FLAGS)
                .map(|(_, v)| u32::from_be_bytes(v.try_into().unwrap()))
                .collect();
            assert_eq!(flags, vec![want], "{d:?}");
        }
    }

    /// A counted set is declared as nft declares `set s { ...; counter; }`: an
    /// `NFTA_SET_EXPR` nest holding a `counter` expression without values, and no
    /// flag; without counters there is none. Read back, the set names its counter.
    #[test]
    fn a_counted_set_carries_a_counter_expression() {
        const NFTA_SET_FLAGS: u16 = 3;
        const NFTA_SET_EXPR: u16 = 17;
        let newset = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET;
        let frontend = vec![KeyType::Addr, KeyType::Proto, KeyType::Port];
        for counter in [false, true] {
            let d = SetDecl {
                counter,
                ..decl(frontend.clone(), vec![], None)
            };
            let b = encode(&[Op::AddSet(Family::V4, d)]).unwrap();
            let msgs = messages(&b.bytes);
            let m = msgs
                .iter()
                .find(|m| u16::from_ne_bytes([m[4], m[5]]) == newset)
                .expect("a NEWSET message");
            let a = attrs(m);
            assert!(!a.iter().any(|(ty, _)| *ty == NFTA_SET_FLAGS));
            let exprs: Vec<&[u8]> = a
                .iter()
                .filter(|(ty, _)| *ty == NFTA_SET_EXPR)
                .map(|(_, v)| *v)
                .collect();
            if counter {
                // NFTA_EXPR_NAME "counter", then an empty NFTA_EXPR_DATA nest.
                let mut want = vec![12, 0, 1, 0];
                want.extend_from_slice(b"counter\0");
                want.extend_from_slice(&[4, 0, 2, 0x80]);
                assert_eq!(exprs, vec![&want[..]]);
            } else {
                assert!(exprs.is_empty());
            }
            let parsed = ffi::Set::parse(m).expect("a set declaration");
            let names = if counter { vec!["counter"] } else { vec![] };
            assert_eq!(parsed.expr_names(), names);
        }
    }

    fn dport_rule(n: usize) -> Op {
        Op::AddRule(
            Family::V4,
            "c".into(),
            Rule((0..n).map(|_| Stmt::Dport(80)).collect()),
        )
    }

    /// Issue 9 point 12: a message longer than the scratch buffer is refused before it
    /// is written, and the error names the operation.
    #[test]
    fn a_message_over_the_scratch_bound_is_an_error_naming_its_operation() {
        // About 144 bytes of bound per statement: 2,000 need more than 256 KiB.
        let ops = [Op::AddTable(Family::V4), dport_rule(2000)];
        let err = encode(&ops).err().expect("an oversize rule was encoded");
        let Error::Encode { op, source } = &err else {
            panic!("not an encoding error: {err:?}");
        };
        assert!(op.starts_with("add rule ip c th dport 80"), "{op}");
        assert!(
            matches!(source, EncodeError::NoRoom { need, room: SCRATCH } if *need > SCRATCH),
            "{source:?}"
        );

        // An element message whose set name alone is longer than the buffer.
        let long = SetDecl {
            name: "s".repeat(SCRATCH),
            key: vec![KeyType::Addr],
            data: vec![],
            comment: "",
            timeout: None,
            counter: false,
        };
        let one = vec![(
            vec![Value::Addr("10.0.0.1".parse().unwrap())].into(),
            ElementData::default(),
        )];
        let err = encode(&[Op::AddElements(Family::V4, long, one.into())])
            .err()
            .expect("an oversize element message was encoded");
        let Error::Encode { op, source } = &err else {
            panic!("not an encoding error: {err:?}");
        };
        assert!(op.starts_with("add 1 elements to ip sss"), "{}", &op[..40]);
        assert!(matches!(source, EncodeError::NoRoom { .. }), "{source:?}");
    }

    /// A message that fits the buffer but not netlink's 16-bit attribute lengths (its
    /// expression list would wrap) is refused too, not sent corrupt.
    #[test]
    fn a_message_over_the_attribute_length_limit_is_an_error() {
        // About 96 bytes on the wire per statement: 800 make more than 64 KiB.
        let err = encode(&[dport_rule(800)]).err().expect("encoded");
        assert!(
            matches!(
                err,
                Error::Encode {
                    source: EncodeError::AttrOverflow { len },
                    ..
                } if len > usize::from(u16::MAX)
            ),
            "{err:?}"
        );
        // 600 fit.
        encode(&[dport_rule(600)]).unwrap();
    }

    /// An element key longer than libnftnl's 64-byte register is refused, not copied
    /// past it.
    #[test]
    fn a_key_longer_than_a_register_is_an_error() {
        let d = SetDecl {
            name: "s".into(),
            key: vec![KeyType::Addr; 5],
            data: vec![],
            comment: "",
            timeout: None,
            counter: false,
        };
        let key = vec![Value::Addr("fd00::1".parse().unwrap()); 5];
        let err = encode(&[Op::AddElements(
            Family::V6,
            d,
            vec![(key.into(), ElementData::default())].into(),
        )])
        .err()
        .expect("an 80-byte key was encoded");
        assert!(
            matches!(
                err,
                Error::Encode {
                    source: EncodeError::ValueTooLong { len: 80, .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// After a refused operation the builder holds exactly what it held before: the
    /// operations added before and after it encode as if it had never been there.
    #[test]
    fn a_refused_operation_leaves_the_rest_of_the_batch_unaffected() {
        let good = [
            Op::AddTable(Family::V4),
            Op::AddSet(Family::V4, decl(vec![KeyType::Addr], vec![], Some(10))),
            Op::FlushChain(Family::V4, "c".into()),
        ];
        let mut b = BatchBuilder::new();
        b.add(0, &good[0]).unwrap();
        b.add(1, &good[1]).unwrap();
        assert!(b.add(2, &dport_rule(2000)).is_err());
        assert!(b.add(3, &dport_rule(800)).is_err());
        b.add(4, &good[2]).unwrap();
        let with = b.finish();
        let without = encode(&good).unwrap();
        assert_eq!(with.bytes, without.bytes);
        assert_eq!(with.messages, without.messages);
        assert_eq!(with.ack_seq, without.ack_seq);
        assert_eq!(with.op_for_seq(with.ack_seq), Some(4));
        assert_eq!(with.op_for_seq(3), Some(1));
    }

    /// Every statement, chain and set shape, with names as long as the kernel takes,
    /// encodes: the wire-size accounting of each holds what libnftnl writes (else
    /// [`EncodeError::BoundExceeded`]).
    #[test]
    fn every_shape_encodes_within_its_accounted_bound() {
        let name = "n".repeat(255);
        let all = |f: Family| {
            let addr: std::net::IpAddr = match f {
                Family::V4 => "10.1.2.3".parse().unwrap(),
                Family::V6 => "fd00::1:2:3".parse().unwrap(),
            };
            let net: ipnet::IpNet = match f {
                Family::V4 => "10.1.0.0/17".parse().unwrap(),
                Family::V6 => "fd00::/61".parse().unwrap(),
            };
            let all_fields = vec![Field::Saddr, Field::L4Proto, Field::ThDport, Field::Daddr];
            Rule(vec![
                Stmt::CtStateNew,
                Stmt::CtStatusDnat,
                Stmt::Cidr {
                    field: Field::Saddr,
                    net,
                    negate: true,
                },
                Stmt::Cidr {
                    field: Field::Daddr,
                    net: ipnet::IpNet::new(addr, 0).unwrap(),
                    negate: false,
                },
                Stmt::LookupRange {
                    fields: all_fields.clone(),
                    set: name.clone(),
                    negate: true,
                },
                Stmt::Lookup {
                    fields: all_fields,
                    set: name.clone(),
                    negate: false,
                },
                Stmt::FibLocal {
                    saddr: true,
                    negate: true,
                },
                Stmt::MarkClear(0x4000),
                Stmt::MarkSetOr(0x4000),
                Stmt::MarkSetXor(0x4000),
                Stmt::DnatMap {
                    fields: vec![
                        Field::Daddr,
                        Field::L4Proto,
                        Field::ThDport,
                        Field::Numgen(7),
                    ],
                    map: name.clone(),
                },
                Stmt::L4Proto(17),
                Stmt::Dport(u16::MAX),
                Stmt::NumgenEq {
                    modulus: u32::MAX,
                    value: 3,
                },
                Stmt::Update {
                    fields: vec![Field::Saddr, Field::Tag(u32::MAX)],
                    set: name.clone(),
                },
                Stmt::Dnat(addr, 8080),
                Stmt::Masquerade,
                Stmt::Reject,
                Stmt::Iifname {
                    name: "n".repeat(15),
                    prefix: false,
                },
                Stmt::Iifname {
                    name: "n".repeat(15),
                    prefix: true,
                },
                Stmt::Verdict(Verdict::Jump(name.clone())),
                Stmt::Verdict(Verdict::Goto(name.clone())),
                Stmt::Verdict(Verdict::Accept),
            ])
        };
        let comment = "c".repeat(300);
        for f in Family::ALL {
            let addr = Value::Addr(match f {
                Family::V4 => "10.1.2.3".parse().unwrap(),
                Family::V6 => "fd00::1:2:3".parse().unwrap(),
            });
            let net = Value::Net(match f {
                Family::V4 => "10.0.0.0/8".parse().unwrap(),
                Family::V6 => "fd00::/8".parse().unwrap(),
            });
            let map = SetDecl {
                name: name.clone(),
                key: vec![KeyType::Addr, KeyType::Proto, KeyType::Port, KeyType::Index],
                data: vec![KeyType::Addr, KeyType::Port],
                comment: "",
                timeout: None,
                counter: false,
            };
            let ranges = SetDecl {
                name: name.clone(),
                key: vec![KeyType::Addr, KeyType::Net],
                data: vec![],
                comment: "",
                timeout: None,
                counter: false,
            };
            let affinity = decl(vec![KeyType::Addr], vec![], Some(u32::MAX));
            let map_el = (
                Key::from(vec![
                    addr,
                    Value::Proto(6),
                    Value::Port(443),
                    Value::Index(7),
                ]),
                ElementData {
                    data: vec![addr, Value::Port(8443)].into(),
                    comment: Some(comment.clone().into()),
                },
            );
            let range_el = (
                Key::from(vec![addr, net]),
                ElementData {
                    data: Values::default(),
                    comment: Some(comment.clone().into()),
                },
            );
            let ops = vec![
                Op::AddTable(f),
                Op::DelTable(f),
                Op::DelForeignTable(f, name.clone()),
                Op::AddChain(
                    f,
                    Chain {
                        name: name.clone(),
                        kind: ChainKind::Base {
                            kind: ChainType::Nat,
                            hook: Hook::Prerouting,
                            priority: i32::MIN,
                        },
                        rules: vec![],
                    },
                ),
                Op::AddChain(
                    f,
                    Chain {
                        name: name.clone(),
                        kind: ChainKind::Regular,
                        rules: vec![],
                    },
                ),
                Op::DelChain(f, name.clone()),
                Op::FlushChain(f, name.clone()),
                Op::AddSet(f, map.clone()),
                Op::AddSet(f, ranges.clone()),
                Op::AddSet(f, affinity),
                Op::DelSet(f, name.clone()),
                Op::AddElements(f, map.clone(), vec![map_el.clone(); 2000].into()),
                Op::DelElements(f, map, vec![map_el.0; 2000]),
                Op::AddElements(f, ranges.clone(), vec![range_el.clone(); 2000].into()),
                Op::DelElements(f, ranges, vec![range_el.0; 2000]),
                Op::AddRule(f, name.clone(), all(f)),
            ];
            let b = encode(&ops).unwrap_or_else(|e| panic!("{f:?}: {e:?}"));
            assert!(b.messages > ops.len(), "element messages were not cut");
        }
    }
}
