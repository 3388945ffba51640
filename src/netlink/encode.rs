//! Operations → one netlink batch (BEGIN, messages, END) in a single contiguous buffer.
//!
//! Only the last message before END asks for an ACK: the kernel reports every failing
//! message anyway, so one ACK tells us the batch was processed without filling the
//! receive buffer with 100k ACKs (`notes/netlink.md`). Each message's sequence number
//! maps back to the operation that produced it, so an error names its cause.

use std::ffi::CString;
use std::ptr::NonNull;

use nftnl_sys as sys;

use super::consts::*;
use super::expr::RawRule;
use crate::ruleset::diff::Op;
use crate::ruleset::ir::*;
use crate::ruleset::render;

/// Largest message we build: element messages are cut to stay well below it.
const SCRATCH: usize = 256 * 1024;
/// Budget for one element message.
const ELEM_MSG_BUDGET: usize = 48 * 1024;

/// A batch being built.
pub struct BatchBuilder {
    buf: Vec<u8>,
    scratch: Vec<u8>,
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

    /// The same batch without its END message: the kernel processes every message,
    /// reports each error, and then aborts instead of committing (what `nft --check`
    /// does). A dry run of a transaction against the real kernel.
    pub fn without_end(mut self) -> Batch {
        self.bytes.truncate(self.end_at);
        self
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn nn<T>(p: *mut T) -> NonNull<T> {
    NonNull::new(p)
        .unwrap_or_else(|| std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()))
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
        let hex = match family {
            Family::V4 => TYPEOF_LB_MAP_V4,
            Family::V6 => TYPEOF_LB_MAP_V6,
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
            scratch: vec![0u8; SCRATCH],
            seq: 1,
            seq_ops: Vec::new(),
            set_id: 1,
        };
        let seq = b.next_seq();
        // Safety: scratch is large enough for a 20-byte batch message.
        unsafe { sys::nftnl_batch_begin(b.scratch.as_mut_ptr() as *mut libc::c_char, seq) };
        b.commit_scratch();
        b
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn commit_scratch(&mut self) {
        let len = u32::from_ne_bytes([
            self.scratch[0],
            self.scratch[1],
            self.scratch[2],
            self.scratch[3],
        ]) as usize;
        let aligned = (len + 3) & !3;
        self.buf
            .extend_from_slice(&self.scratch[..aligned.min(SCRATCH)]);
    }

    fn hdr(&mut self, msg: u16, family: Family, flags: u16) -> *mut libc::nlmsghdr {
        let seq = self.next_seq();
        // Safety: scratch is SCRATCH bytes; header is 20 bytes.
        unsafe {
            sys::nftnl_nlmsg_build_hdr(
                self.scratch.as_mut_ptr() as *mut libc::c_char,
                msg,
                family.nfproto(),
                flags,
                seq,
            )
        }
    }

    /// Appends all messages for one operation.
    pub fn add(&mut self, op_index: usize, op: &Op) {
        self.seq_ops.push((self.seq, op_index));
        match op {
            Op::AddTable(f) => self.table(*f, NFT_MSG_NEWTABLE, NLM_F_CREATE),
            Op::DelTable(f) => self.table(*f, NFT_MSG_DELTABLE, 0),
            Op::DelForeignTable(f, name) => self.table_named(*f, name, NFT_MSG_DELTABLE, 0),
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
        }
    }

    fn table(&mut self, f: Family, msg: u16, flags: u16) {
        self.table_named(f, TABLE_NAME, msg, flags)
    }

    fn table_named(&mut self, f: Family, table: &str, msg: u16, flags: u16) {
        let nlh = self.hdr(msg, f, flags | NLM_F_REQUEST);
        let name = cstr(table);
        // Safety: allocated object, valid strings (copied), freed after building.
        unsafe {
            let t = nn(sys::nftnl_table_alloc());
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                f.nfproto() as u32,
            );
            sys::nftnl_table_nlmsg_build_payload(nlh, t.as_ptr());
            sys::nftnl_table_free(t.as_ptr());
        }
        self.commit_scratch();
    }

    fn chain(&mut self, f: Family, name: &str, kind: Option<ChainKind>, msg: u16, flags: u16) {
        let nlh = self.hdr(msg, f, flags | NLM_F_REQUEST);
        let table = cstr(TABLE_NAME);
        let cname = cstr(name);
        // Safety: as in `table`.
        unsafe {
            let c = nn(sys::nftnl_chain_alloc());
            let p = c.as_ptr();
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_NAME as u16, cname.as_ptr());
            sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_FAMILY as u16, f.nfproto() as u32);
            if let Some(ChainKind::Base {
                kind,
                hook,
                priority,
            }) = kind
            {
                let ty = cstr(kind.nft());
                sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16, hook.number());
                sys::nftnl_chain_set_s32(p, sys::NFTNL_CHAIN_PRIO as u16, priority);
                sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TYPE as u16, ty.as_ptr());
                sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_POLICY as u16, NF_ACCEPT as u32);
            }
            sys::nftnl_chain_nlmsg_build_payload(nlh, p);
            sys::nftnl_chain_free(p);
        }
        self.commit_scratch();
    }

    fn flush(&mut self, f: Family, chain: &str) {
        let nlh = self.hdr(NFT_MSG_DELRULE, f, NLM_F_REQUEST);
        let r = RawRule::new(f, TABLE_NAME, chain);
        // Safety: valid rule; payload fits the scratch buffer.
        unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr()) };
        self.commit_scratch();
    }

    fn rule(&mut self, f: Family, chain: &str, rule: &Rule) {
        let nlh = self.hdr(
            NFT_MSG_NEWRULE,
            f,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
        );
        let mut r = RawRule::new(f, TABLE_NAME, chain);
        for s in &rule.0 {
            r.stmt(s, f);
        }
        r.set_userdata(&rule_digest_udata(render::rule_digest(rule, f)));
        // Safety: valid rule; a rule of a few statements is far below SCRATCH.
        unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr()) };
        self.commit_scratch();
    }

    fn set(&mut self, f: Family, name: &str, decl: Option<&SetDecl>, msg: u16, flags: u16) {
        let nlh = self.hdr(msg, f, flags | NLM_F_REQUEST);
        let table = cstr(TABLE_NAME);
        let sname = cstr(name);
        let id = self.set_id;
        self.set_id += 1;
        // Safety: as in `table`; data setters copy their input.
        unsafe {
            let s = nn(sys::nftnl_set_alloc());
            let p = s.as_ptr();
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, sname.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, f.nfproto() as u32);
            if let Some(d) = decl {
                let (kt, kl) = key_type(&d.key, f);
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, kt);
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, kl);
                // One flags value for every property of the set, set once: assigning
                // NFTNL_SET_FLAGS per property would keep only the last one.
                let flags = set_flags(d);
                if flags != 0 {
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags);
                }
                if d.is_interval() {
                    let lens: Vec<u8> = d.key.iter().map(|t| field_len(*t, f) as u8).collect();
                    sys::nftnl_set_set_data(
                        p,
                        sys::NFTNL_SET_DESC_CONCAT as u16,
                        lens.as_ptr() as *const libc::c_void,
                        lens.len() as u32,
                    );
                }
                if let Some(t) = d.timeout {
                    sys::nftnl_set_set_u64(p, sys::NFTNL_SET_TIMEOUT as u16, u64::from(t) * 1000);
                }
                // No NFTNL_SET_DESC_SIZE, ever: see `set_flags`.
                if d.is_map() {
                    let (dt, dl) = key_type(&d.data, f);
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, dt);
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, dl);
                }
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
                let ud = set_userdata(d, f);
                sys::nftnl_set_set_data(
                    p,
                    sys::NFTNL_SET_USERDATA as u16,
                    ud.as_ptr() as *const libc::c_void,
                    ud.len() as u32,
                );
            }
            sys::nftnl_set_nlmsg_build_payload(nlh, p);
            sys::nftnl_set_free(p);
        }
        self.commit_scratch();
    }

    fn elements(
        &mut self,
        f: Family,
        decl: &SetDecl,
        items: &[(&Key, Option<&ElementData>)],
        msg: u16,
        flags: u16,
    ) {
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
            self.element_msg(f, decl, &items[start..end], msg, flags);
            start = end;
        }
    }

    fn element_msg(
        &mut self,
        f: Family,
        decl: &SetDecl,
        items: &[(&Key, Option<&ElementData>)],
        msg: u16,
        flags: u16,
    ) {
        let nlh = self.hdr(msg, f, flags | NLM_F_REQUEST);
        let table = cstr(TABLE_NAME);
        let sname = cstr(&decl.name);
        // Safety: the set owns the elements added to it; all setters copy their input;
        // the chunk size keeps the message below SCRATCH.
        unsafe {
            let s = nn(sys::nftnl_set_alloc());
            let p = s.as_ptr();
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, sname.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, f.nfproto() as u32);
            for (key, data) in items {
                let e = nn(sys::nftnl_set_elem_alloc()).as_ptr();
                let k = encode_tuple(key);
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    k.as_ptr() as *const libc::c_void,
                    k.len() as u32,
                );
                if decl.is_interval() {
                    let k = encode_tuple_end(key);
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_KEY_END as u16,
                        k.as_ptr() as *const libc::c_void,
                        k.len() as u32,
                    );
                }
                if let Some(d) = data {
                    if !d.data.is_empty() {
                        let v = encode_tuple(&d.data);
                        sys::nftnl_set_elem_set(
                            e,
                            sys::NFTNL_SET_ELEM_DATA as u16,
                            v.as_ptr() as *const libc::c_void,
                            v.len() as u32,
                        );
                    }
                    if let Some(c) = &d.comment {
                        let u = comment_udata(c);
                        sys::nftnl_set_elem_set(
                            e,
                            sys::NFTNL_SET_ELEM_USERDATA as u16,
                            u.as_ptr() as *const libc::c_void,
                            u.len() as u32,
                        );
                    }
                }
                sys::nftnl_set_elem_add(p, e);
            }
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, p);
            sys::nftnl_set_free(p);
        }
        self.commit_scratch();
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
        // Safety: scratch holds a 20-byte batch message.
        unsafe { sys::nftnl_batch_end(self.scratch.as_mut_ptr() as *mut libc::c_char, seq) };
        self.commit_scratch();
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

/// Encodes operations into one batch.
pub fn encode(ops: &[Op]) -> Batch {
    let mut b = BatchBuilder::new();
    for (i, op) in ops.iter().enumerate() {
        b.add(i, op);
    }
    b.finish()
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
                },
                (0..2000u32)
                    .map(|i| {
                        (
                            vec![Value::Addr(std::net::Ipv4Addr::from(i).into())],
                            ElementData::default(),
                        )
                    })
                    .collect(),
            ),
            Op::FlushChain(Family::V4, "c".into()),
        ];
        let b = encode(&ops);
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
        let b = encode(&ops);
        let newset = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET;
        let mut off = 0;
        let mut seen = 0;
        while off + 16 <= b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b.bytes[off + 4..off + 6].try_into().unwrap());
            if ty == newset {
                seen += 1;
                let msg = &b.bytes[off..off + len];
                // Safety: `msg` is one complete netlink message; the set is freed.
                unsafe {
                    let s = sys::nftnl_set_alloc();
                    assert!(!s.is_null());
                    assert!(
                        sys::nftnl_set_nlmsg_parse(msg.as_ptr() as *const libc::nlmsghdr, s) >= 0
                    );
                    let get = |a: u32| {
                        sys::nftnl_set_is_set(s, a as u16)
                            .then(|| sys::nftnl_set_get_u32(s, a as u16))
                    };
                    assert_eq!(
                        get(sys::NFTNL_SET_FLAGS),
                        Some(NFT_SET_TIMEOUT | NFT_SET_EVAL)
                    );
                    assert_eq!(get(sys::NFTNL_SET_KEY_LEN), Some(4));
                    assert_eq!(get(sys::NFTNL_SET_DESC_SIZE), None, "a size preallocates");
                    assert_eq!(get(sys::NFTNL_SET_POLICY), None);
                    assert_eq!(
                        sys::nftnl_set_get_u64(s, sys::NFTNL_SET_TIMEOUT as u16),
                        10_800_000
                    );
                    sys::nftnl_set_free(s);
                }
            }
            off += (len + 3) & !3;
        }
        assert_eq!(seen, 1);
    }
}
