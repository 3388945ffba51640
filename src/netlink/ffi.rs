//! The one module of `netlink/` that calls C: libnftnl (through nftnl-sys) to build and
//! parse nftables messages, and the few libc socket calls the mnl crate does not offer.
//! Everything else in `netlink/` uses the safe types below and has no `unsafe` (a test
//! in `netlink/mod.rs` scans the sources).
//!
//! What makes the calls sound:
//! - Every libnftnl object is an owned handle freed by `Drop`, so an error on any path
//!   leaks nothing; an object handed to a container (an expression to a rule, an element
//!   to a set) is given up by the handle at that point, and freed by its container.
//! - Setters are typed: each attribute is set with the width libnftnl reads for it
//!   (libnftnl `memcpy`s that many bytes from our pointer), data values are checked
//!   against the 64-byte register libnftnl copies them into, and every setter returns
//!   libnftnl's own refusal as an error.
//! - libnftnl writes a message into the buffer it is given without knowing its size.
//!   Each handle therefore keeps an upper bound of the bytes it can put on the wire,
//!   grown by every setter, and [`MsgBuf::message`] refuses to build a message whose
//!   bound does not fit the buffer: an error, never a write past the end.
//! - Messages handed to libnftnl's parsers are checked to hold the headers they read and
//!   at least the length their header claims, and are 4-byte aligned.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use nftnl_sys as sys;

/// Why an object or message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// libnftnl returned no object (out of memory).
    #[error("libnftnl could not allocate a {0}")]
    Alloc(&'static str),
    /// A value is longer than the fixed buffer libnftnl copies it into.
    #[error("{what} is {len} bytes, more than the {max} bytes libnftnl holds for it")]
    ValueTooLong {
        /// the attribute
        what: &'static str,
        /// its length
        len: usize,
        /// the most it may have
        max: usize,
    },
    /// libnftnl refused to set an attribute.
    #[error("libnftnl refused attribute {attr} of a {what}")]
    Refused {
        /// the object
        what: &'static str,
        /// libnftnl's attribute number
        attr: u32,
    },
    /// An expression attribute this module does not know the width of.
    #[error("attribute {attr} is not one this encoder sets on a {expr} expression")]
    UnknownAttr {
        /// the expression's name
        expr: &'static str,
        /// libnftnl's attribute number
        attr: u32,
    },
    /// The message could be longer than the buffer it is built in.
    #[error(
        "the message needs up to {need} bytes, more than the {room} bytes of the message buffer"
    )]
    NoRoom {
        /// upper bound of the message's length
        need: usize,
        /// the buffer's size
        room: usize,
    },
    /// The message is longer than netlink's 16-bit attribute lengths can describe.
    #[error("the message is {len} bytes; its attributes would need more than netlink's 16-bit attribute lengths ({} bytes)", u16::MAX)]
    AttrOverflow {
        /// the message's length
        len: usize,
    },
    /// libnftnl wrote more than the bound accounted for (a bug in the accounting).
    #[error("libnftnl wrote {len} bytes where at most {bound} were accounted for")]
    BoundExceeded {
        /// what was written
        len: usize,
        /// the bound
        bound: usize,
    },
}

/// Bytes of a netlink header plus the nfgenmsg that follows it in every nftables
/// message.
pub const HEADERS: usize = 20;

/// nftnl's data registers (`union nftnl_data_reg`) hold at most this many bytes
/// (`NFT_DATA_VALUE_MAXLEN`): keys, key ends, map data, and the data of `cmp`,
/// `bitwise` and `immediate`.
pub const DATA_MAX: usize = 64;

/// nftnl keeps a concatenation's field lengths in `uint8_t field_len[NFT_REG32_COUNT]`.
const CONCAT_FIELDS_MAX: usize = 16;

// Wire-size accounting: upper bounds of what one setter adds to a message.
/// A scalar attribute (up to 8 bytes of value, 4 of header).
const WIRE_SCALAR: usize = 12;
/// A string attribute beyond its bytes: header, NUL and padding.
const WIRE_STR: usize = 8;
/// A data attribute beyond its bytes: header, the `NFTA_DATA_VALUE` nest libnftnl puts
/// keys and register data in, and padding.
const WIRE_DATA: usize = 12;
/// What libnftnl adds around an object of its own (nests such as the rule's
/// expression list, the set's element list, the chain's hook, the set's description).
const WIRE_OBJECT: usize = 64;
/// What libnftnl adds around one expression or one element (its list entry and data
/// nests) beyond its attributes.
const WIRE_ITEM: usize = 16;
/// A concatenation's description beyond its fields: two nests.
const WIRE_CONCAT: usize = 16;
/// One field of a concatenation's description: a nest and a 32-bit attribute.
const WIRE_CONCAT_FIELD: usize = 12;

/// Extra bytes past the room a message may use: never written while the accounting
/// is right, it keeps a wrong accounting from writing past the allocation before
/// [`MsgBuf::message`] reports it.
const GUARD: usize = 4096;

/// A C string of a name: NUL bytes are dropped (libnftnl reads up to the first one).
fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Copies a NUL-terminated string libnftnl owns; empty for a null pointer.
fn copy_str(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // Safety: libnftnl returns NUL-terminated strings it owns and keeps alive as long as
    // the object, which outlives this call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Copies a buffer libnftnl owns; empty for a null pointer.
fn copy_data(p: *const libc::c_void, len: u32) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // Safety: libnftnl reports the length of the buffer it returns, which lives as long
    // as the object, which outlives this call.
    unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) }.to_vec()
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::ValueTooLong { what, len, max });
    }
    Ok(())
}

fn refused(rc: libc::c_int, what: &'static str, attr: u32) -> Result<(), EncodeError> {
    if rc < 0 {
        return Err(EncodeError::Refused { what, attr });
    }
    Ok(())
}

/// A received message in a form libnftnl's parsers may read: at least the headers
/// long, its header's length within the bytes, 4-byte aligned (copied if it is not).
enum ParseInput<'a> {
    Aligned(&'a [u8]),
    Copied(Vec<u32>),
}

impl<'a> ParseInput<'a> {
    fn new(msg: &'a [u8]) -> Option<ParseInput<'a>> {
        let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
        if len < HEADERS || len > msg.len() {
            return None;
        }
        if msg.as_ptr() as usize % 4 == 0 {
            return Some(ParseInput::Aligned(msg));
        }
        let words = msg
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_ne_bytes(w)
            })
            .collect();
        Some(ParseInput::Copied(words))
    }

    fn nlh(&self) -> *const libc::nlmsghdr {
        match self {
            ParseInput::Aligned(b) => b.as_ptr() as *const libc::nlmsghdr,
            ParseInput::Copied(w) => w.as_ptr() as *const libc::nlmsghdr,
        }
    }
}

/// Defines an owned libnftnl object: allocation, `Drop`, a raw data setter that
/// reports libnftnl's refusal, and parsing from a received message.
macro_rules! handle {
    ($(#[$m:meta])* $name:ident, $what:literal, $ty:ty, $alloc:path, $free:path,
     $set:path, $parse:path) => {
        $(#[$m])*
        pub struct $name {
            ptr: NonNull<$ty>,
            /// upper bound of this object's bytes on the wire
            bound: usize,
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // Safety: we own the object; libnftnl frees what it holds with it.
                unsafe { $free(self.ptr.as_ptr()) }
            }
        }

        impl $name {
            /// A new, empty object.
            pub fn new() -> Result<$name, EncodeError> {
                // Safety: plain allocation.
                let p = unsafe { $alloc() };
                NonNull::new(p)
                    .map(|ptr| $name {
                        ptr,
                        bound: WIRE_OBJECT,
                    })
                    .ok_or(EncodeError::Alloc($what))
            }

            /// The object in one received message (None: not a valid one).
            pub fn parse(msg: &[u8]) -> Option<$name> {
                let input = ParseInput::new(msg)?;
                let obj = $name::new().ok()?;
                // Safety: `input` holds a whole, aligned message of the length its
                // header claims; libnftnl copies what it keeps.
                let rc = unsafe { $parse(input.nlh(), obj.ptr.as_ptr()) };
                (rc >= 0).then_some(obj)
            }

            /// Sets attribute `attr` to `data`; `wire` is what it adds to the message.
            /// The caller passes the width libnftnl reads for `attr`.
            fn set_raw(&mut self, attr: u32, data: &[u8], wire: usize) -> Result<(), EncodeError> {
                let len = u32::try_from(data.len()).map_err(|_| EncodeError::ValueTooLong {
                    what: $what,
                    len: data.len(),
                    max: u32::MAX as usize,
                })?;
                // Safety: libnftnl copies `len` bytes from `data`, which holds them; for
                // attributes of a fixed width, the typed setters below pass that width.
                let rc = unsafe {
                    $set(
                        self.ptr.as_ptr(),
                        attr as u16,
                        data.as_ptr() as *const libc::c_void,
                        len,
                    )
                };
                refused(rc, $what, attr)?;
                self.bound += wire;
                Ok(())
            }

            fn set_u32(&mut self, attr: u32, v: u32) -> Result<(), EncodeError> {
                self.set_raw(attr, &v.to_ne_bytes(), WIRE_SCALAR)
            }

            fn set_str(&mut self, attr: u32, s: &str) -> Result<(), EncodeError> {
                let c = cstring(s);
                let b = c.as_bytes_with_nul();
                self.set_raw(attr, b, WIRE_STR + b.len())
            }

            /// Upper bound of this object's bytes in a message (without the headers).
            pub fn wire_bound(&self) -> usize {
                self.bound
            }
        }
    };
}

handle!(
    /// An nftables table.
    Table,
    "table",
    sys::nftnl_table,
    sys::nftnl_table_alloc,
    sys::nftnl_table_free,
    sys::nftnl_table_set_data,
    sys::nftnl_table_nlmsg_parse
);

impl Table {
    /// `NFTNL_TABLE_NAME`
    pub fn set_name(&mut self, name: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_TABLE_NAME, name)
    }
    /// `NFTNL_TABLE_FAMILY`
    pub fn set_family(&mut self, family: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_TABLE_FAMILY, family)
    }
    /// `NFTNL_TABLE_FLAGS` (`NFT_TABLE_F_*`)
    pub fn set_flags(&mut self, flags: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_TABLE_FLAGS, flags)
    }
    /// The table's name.
    pub fn name(&self) -> String {
        // Safety: a valid table; NAME is a string attribute.
        copy_str(unsafe {
            sys::nftnl_table_get_str(self.ptr.as_ptr(), sys::NFTNL_TABLE_NAME as u16)
        })
    }
}

handle!(
    /// An nftables chain.
    Chain,
    "chain",
    sys::nftnl_chain,
    sys::nftnl_chain_alloc,
    sys::nftnl_chain_free,
    sys::nftnl_chain_set_data,
    sys::nftnl_chain_nlmsg_parse
);

impl Chain {
    /// `NFTNL_CHAIN_TABLE`
    pub fn set_table(&mut self, table: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_CHAIN_TABLE, table)
    }
    /// `NFTNL_CHAIN_NAME`
    pub fn set_name(&mut self, name: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_CHAIN_NAME, name)
    }
    /// `NFTNL_CHAIN_FAMILY`
    pub fn set_family(&mut self, family: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_CHAIN_FAMILY, family)
    }
    /// `NFTNL_CHAIN_HOOKNUM`
    pub fn set_hooknum(&mut self, hook: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_CHAIN_HOOKNUM, hook)
    }
    /// `NFTNL_CHAIN_PRIO`
    pub fn set_priority(&mut self, prio: i32) -> Result<(), EncodeError> {
        self.set_raw(sys::NFTNL_CHAIN_PRIO, &prio.to_ne_bytes(), WIRE_SCALAR)
    }
    /// `NFTNL_CHAIN_TYPE`
    pub fn set_type(&mut self, ty: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_CHAIN_TYPE, ty)
    }
    /// `NFTNL_CHAIN_POLICY`
    pub fn set_policy(&mut self, policy: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_CHAIN_POLICY, policy)
    }
    /// The chain's table.
    pub fn table(&self) -> String {
        // Safety: a valid chain; TABLE is a string attribute.
        copy_str(unsafe {
            sys::nftnl_chain_get_str(self.ptr.as_ptr(), sys::NFTNL_CHAIN_TABLE as u16)
        })
    }
    /// The chain's name.
    pub fn name(&self) -> String {
        // Safety: a valid chain; NAME is a string attribute.
        copy_str(unsafe {
            sys::nftnl_chain_get_str(self.ptr.as_ptr(), sys::NFTNL_CHAIN_NAME as u16)
        })
    }
}

handle!(
    /// An nftables rule with its expressions.
    Rule,
    "rule",
    sys::nftnl_rule,
    sys::nftnl_rule_alloc,
    sys::nftnl_rule_free,
    sys::nftnl_rule_set_data,
    sys::nftnl_rule_nlmsg_parse
);

impl Rule {
    /// `NFTNL_RULE_FAMILY`
    pub fn set_family(&mut self, family: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_RULE_FAMILY, family)
    }
    /// `NFTNL_RULE_TABLE`
    pub fn set_table(&mut self, table: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_RULE_TABLE, table)
    }
    /// `NFTNL_RULE_CHAIN`
    pub fn set_chain(&mut self, chain: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_RULE_CHAIN, chain)
    }
    /// `NFTNL_RULE_USERDATA` (copied)
    pub fn set_userdata(&mut self, ud: &[u8]) -> Result<(), EncodeError> {
        self.set_raw(sys::NFTNL_RULE_USERDATA, ud, WIRE_DATA + ud.len())
    }
    /// Appends an expression; the rule owns it from now on.
    pub fn add_expr(&mut self, e: Expr) {
        let e = ManuallyDrop::new(e);
        self.bound += e.bound;
        // Safety: both valid; the rule takes ownership of the expression (and frees it
        // with itself), so `e` is not dropped here.
        unsafe { sys::nftnl_rule_add_expr(self.ptr.as_ptr(), e.ptr.as_ptr()) }
    }
    /// The rule's table.
    pub fn table(&self) -> String {
        // Safety: a valid rule; TABLE is a string attribute.
        copy_str(unsafe {
            sys::nftnl_rule_get_str(self.ptr.as_ptr(), sys::NFTNL_RULE_TABLE as u16)
        })
    }
    /// The rule's chain.
    pub fn chain(&self) -> String {
        // Safety: a valid rule; CHAIN is a string attribute.
        copy_str(unsafe {
            sys::nftnl_rule_get_str(self.ptr.as_ptr(), sys::NFTNL_RULE_CHAIN as u16)
        })
    }
    /// The rule's user data (empty if none).
    pub fn userdata(&self) -> Vec<u8> {
        let mut len = 0u32;
        // Safety: a valid rule; libnftnl writes the length of the buffer it returns.
        let p = unsafe {
            sys::nftnl_rule_get_data(self.ptr.as_ptr(), sys::NFTNL_RULE_USERDATA as u16, &mut len)
        };
        copy_data(p, len)
    }
}

handle!(
    /// An nftables set: a declaration, or the container of the elements of an element
    /// message.
    Set,
    "set",
    sys::nftnl_set,
    sys::nftnl_set_alloc,
    sys::nftnl_set_free,
    sys::nftnl_set_set_data,
    sys::nftnl_set_nlmsg_parse
);

/// One element of a set as received.
#[derive(Clone, Debug, Default)]
pub struct ElemData {
    /// key bytes
    pub key: Vec<u8>,
    /// key end bytes (interval sets)
    pub key_end: Vec<u8>,
    /// data bytes (maps)
    pub data: Vec<u8>,
    /// user data (comment)
    pub userdata: Vec<u8>,
    /// the element's counter (packets, bytes), in a set declared with `counter`
    pub counter: Option<(u64, u64)>,
}

/// What [`collect_expr`] finds in a list of expressions.
#[derive(Default)]
struct Exprs {
    /// whether to note the names (a set's declaration; not for each element, where it
    /// would cost two allocations per element of a dump)
    want_names: bool,
    /// each expression's name, in order
    names: Vec<String>,
    /// the values of the last `counter` expression: (packets, bytes)
    counter: Option<(u64, u64)>,
}

/// A 64-bit attribute of an expression; `None` when it is missing or not 8 bytes.
fn expr_u64(e: *const sys::nftnl_expr, attr: u32) -> Option<u64> {
    let mut len = 0u32;
    // Safety: a valid expression; libnftnl writes the length of the buffer it returns,
    // which the expression owns.
    let p = unsafe { sys::nftnl_expr_get(e, attr as u16, &mut len) };
    if p.is_null() || len != 8 {
        return None;
    }
    // Safety: `p` points to `len` (8) readable bytes; they need not be aligned.
    Some(unsafe { std::ptr::read_unaligned(p as *const u64) })
}

/// `nftnl_*_expr_foreach` callback: notes each expression's name, and a counter's
/// values, in the [`Exprs`] that `data` points to. Cannot panic (it runs inside C).
unsafe extern "C" fn collect_expr(e: *mut sys::nftnl_expr, data: *mut libc::c_void) -> libc::c_int {
    if e.is_null() || data.is_null() {
        return -1;
    }
    // Safety: `data` is the `&mut Exprs` the caller passed to the foreach, alive and not
    // otherwise borrowed during it; `e` is a valid expression of the walked list.
    let found = unsafe { &mut *(data as *mut Exprs) };
    // Safety: as above; NAME is the expression type's static name.
    let name = unsafe { sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16) };
    if name.is_null() {
        return 0;
    }
    // Safety: a NUL-terminated string libnftnl owns for the expression's lifetime.
    let name = unsafe { CStr::from_ptr(name) };
    if name.to_bytes() == b"counter" {
        found.counter = Some((
            expr_u64(e, sys::NFTNL_EXPR_CTR_PACKETS).unwrap_or(0),
            expr_u64(e, sys::NFTNL_EXPR_CTR_BYTES).unwrap_or(0),
        ));
    }
    if found.want_names {
        found.names.push(name.to_string_lossy().into_owned());
    }
    0
}

/// An element iterator, destroyed with its guard.
struct ElemsIter(NonNull<sys::nftnl_set_elems_iter>);

impl Drop for ElemsIter {
    fn drop(&mut self) {
        // Safety: we created the iterator; the set it walks outlives it.
        unsafe { sys::nftnl_set_elems_iter_destroy(self.0.as_ptr()) }
    }
}

impl Set {
    /// `NFTNL_SET_TABLE`
    pub fn set_table(&mut self, table: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_SET_TABLE, table)
    }
    /// `NFTNL_SET_NAME`
    pub fn set_name(&mut self, name: &str) -> Result<(), EncodeError> {
        self.set_str(sys::NFTNL_SET_NAME, name)
    }
    /// `NFTNL_SET_FAMILY`
    pub fn set_family(&mut self, family: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_SET_FAMILY, family)
    }
    /// `NFTNL_SET_KEY_TYPE` and `NFTNL_SET_KEY_LEN`
    pub fn set_key(&mut self, ty: u32, len: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_SET_KEY_TYPE, ty)?;
        self.set_u32(sys::NFTNL_SET_KEY_LEN, len)
    }
    /// `NFTNL_SET_DATA_TYPE` and `NFTNL_SET_DATA_LEN`
    pub fn set_data_type(&mut self, ty: u32, len: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_SET_DATA_TYPE, ty)?;
        self.set_u32(sys::NFTNL_SET_DATA_LEN, len)
    }
    /// `NFTNL_SET_FLAGS`
    pub fn set_flags(&mut self, flags: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_SET_FLAGS, flags)
    }
    /// `NFTNL_SET_ID`
    pub fn set_id(&mut self, id: u32) -> Result<(), EncodeError> {
        self.set_u32(sys::NFTNL_SET_ID, id)
    }
    /// `NFTNL_SET_TIMEOUT` in milliseconds
    pub fn set_timeout_ms(&mut self, ms: u64) -> Result<(), EncodeError> {
        self.set_raw(sys::NFTNL_SET_TIMEOUT, &ms.to_ne_bytes(), WIRE_SCALAR)
    }
    /// `NFTNL_SET_DESC_CONCAT`: the byte length of each field of a concatenation.
    pub fn set_concat(&mut self, field_lens: &[u8]) -> Result<(), EncodeError> {
        check_len("a concatenation", field_lens.len(), CONCAT_FIELDS_MAX)?;
        let wire = WIRE_CONCAT + WIRE_CONCAT_FIELD * field_lens.len();
        self.set_raw(sys::NFTNL_SET_DESC_CONCAT, field_lens, wire)
    }
    /// `NFTNL_SET_USERDATA` (copied)
    pub fn set_userdata(&mut self, ud: &[u8]) -> Result<(), EncodeError> {
        self.set_raw(sys::NFTNL_SET_USERDATA, ud, WIRE_DATA + ud.len())
    }
    /// Adds a stateful expression to a set declaration (`NFTA_SET_EXPR`): the kernel
    /// gives each element its own copy. The set owns it from now on.
    pub fn add_expr(&mut self, e: Expr) {
        let e = ManuallyDrop::new(e);
        // The nest that holds the expression.
        self.bound += e.bound + WIRE_ITEM;
        // Safety: both valid; the set takes ownership of the expression (and frees it
        // with itself), so `e` is not dropped here.
        unsafe { sys::nftnl_set_add_expr(self.ptr.as_ptr(), e.ptr.as_ptr()) }
    }

    /// The names of the set's own expressions (`NFTA_SET_EXPR`/`NFTA_SET_EXPRESSIONS`
    /// of a received declaration), in order.
    pub fn expr_names(&self) -> Vec<String> {
        let mut exprs = Exprs {
            want_names: true,
            ..Exprs::default()
        };
        // Safety: a valid set; the callback only reads the expressions the set owns and
        // writes `exprs`, which outlives the call.
        unsafe {
            sys::nftnl_set_expr_foreach(
                self.ptr.as_ptr(),
                Some(collect_expr),
                (&mut exprs as *mut Exprs).cast(),
            )
        };
        exprs.names
    }

    /// Adds an element; the set owns it from now on.
    pub fn add_elem(&mut self, e: SetElem) {
        let e = ManuallyDrop::new(e);
        self.bound += e.bound;
        // Safety: both valid; the set takes ownership of the element (and frees it with
        // itself), so `e` is not dropped here.
        unsafe { sys::nftnl_set_elem_add(self.ptr.as_ptr(), e.ptr.as_ptr()) }
    }

    /// The elements in one received element message (None: not a valid one).
    pub fn parse_elems(msg: &[u8]) -> Option<Set> {
        let input = ParseInput::new(msg)?;
        let set = Set::new().ok()?;
        // Safety: as in `parse`.
        let rc = unsafe { sys::nftnl_set_elems_nlmsg_parse(input.nlh(), set.ptr.as_ptr()) };
        (rc >= 0).then_some(set)
    }

    fn get_str(&self, attr: u32) -> String {
        // Safety: a valid set; the callers pass string attributes.
        copy_str(unsafe { sys::nftnl_set_get_str(self.ptr.as_ptr(), attr as u16) })
    }

    fn get_u32(&self, attr: u32) -> Option<u32> {
        // Safety: a valid set; the callers pass 32-bit attributes (libnftnl exits on a
        // width mismatch, it does not read past the value).
        unsafe {
            sys::nftnl_set_is_set(self.ptr.as_ptr(), attr as u16)
                .then(|| sys::nftnl_set_get_u32(self.ptr.as_ptr(), attr as u16))
        }
    }

    /// The set's table.
    pub fn table(&self) -> String {
        self.get_str(sys::NFTNL_SET_TABLE)
    }
    /// The set's name.
    pub fn name(&self) -> String {
        self.get_str(sys::NFTNL_SET_NAME)
    }
    /// Key type and length.
    pub fn key(&self) -> (Option<u32>, Option<u32>) {
        (
            self.get_u32(sys::NFTNL_SET_KEY_TYPE),
            self.get_u32(sys::NFTNL_SET_KEY_LEN),
        )
    }
    /// Data type and length (maps).
    pub fn data_type(&self) -> (Option<u32>, Option<u32>) {
        (
            self.get_u32(sys::NFTNL_SET_DATA_TYPE),
            self.get_u32(sys::NFTNL_SET_DATA_LEN),
        )
    }
    /// `NFTNL_SET_FLAGS`, if present.
    pub fn flags(&self) -> Option<u32> {
        self.get_u32(sys::NFTNL_SET_FLAGS)
    }
    /// `NFTNL_SET_DESC_SIZE`, if present.
    pub fn desc_size(&self) -> Option<u32> {
        self.get_u32(sys::NFTNL_SET_DESC_SIZE)
    }
    /// `NFTNL_SET_POLICY`, if present.
    pub fn policy(&self) -> Option<u32> {
        self.get_u32(sys::NFTNL_SET_POLICY)
    }
    /// `NFTNL_SET_TIMEOUT` in milliseconds, if present.
    pub fn timeout_ms(&self) -> Option<u64> {
        let p = self.ptr.as_ptr();
        // Safety: a valid set; TIMEOUT is a 64-bit attribute.
        unsafe {
            sys::nftnl_set_is_set(p, sys::NFTNL_SET_TIMEOUT as u16)
                .then(|| sys::nftnl_set_get_u64(p, sys::NFTNL_SET_TIMEOUT as u16))
        }
    }
    /// The set's user data (empty if none).
    pub fn userdata(&self) -> Vec<u8> {
        let mut len = 0u32;
        // Safety: a valid set; libnftnl writes the length of the buffer it returns.
        let p = unsafe {
            sys::nftnl_set_get_data(self.ptr.as_ptr(), sys::NFTNL_SET_USERDATA as u16, &mut len)
        };
        copy_data(p, len)
    }

    /// Copies of the set's elements, in libnftnl's order.
    pub fn elems(&self) -> Vec<ElemData> {
        let mut out = Vec::new();
        // Safety: a valid set; the iterator is destroyed (guard) before the set.
        let Some(it) = NonNull::new(unsafe { sys::nftnl_set_elems_iter_create(self.ptr.as_ptr()) })
        else {
            return out;
        };
        let it = ElemsIter(it);
        // Safety: a valid iterator over elements the set owns.
        let mut e = unsafe { sys::nftnl_set_elems_iter_cur(it.0.as_ptr()) };
        while !e.is_null() {
            let get = |attr: u32| {
                let mut len = 0u32;
                // Safety: `e` is an element of the set, alive while the set is; libnftnl
                // writes the length of the buffer it returns.
                let p = unsafe { sys::nftnl_set_elem_get(e, attr as u16, &mut len) };
                copy_data(p, len)
            };
            let mut exprs = Exprs::default();
            // Safety: `e` is an element of the set; the callback only reads the
            // expressions the element owns and writes `exprs`, which outlives the call.
            unsafe {
                sys::nftnl_set_elem_expr_foreach(
                    e,
                    Some(collect_expr),
                    (&mut exprs as *mut Exprs).cast(),
                )
            };
            out.push(ElemData {
                key: get(sys::NFTNL_SET_ELEM_KEY),
                key_end: get(sys::NFTNL_SET_ELEM_KEY_END),
                data: get(sys::NFTNL_SET_ELEM_DATA),
                userdata: get(sys::NFTNL_SET_ELEM_USERDATA),
                counter: exprs.counter,
            });
            // Safety: as above.
            e = unsafe { sys::nftnl_set_elems_iter_next(it.0.as_ptr()) };
        }
        out
    }
}

/// One element being built, before it is added to a [`Set`].
pub struct SetElem {
    ptr: NonNull<sys::nftnl_set_elem>,
    bound: usize,
}

impl Drop for SetElem {
    fn drop(&mut self) {
        // Safety: we own the element (it was not added to a set: `add_elem` forgets it).
        unsafe { sys::nftnl_set_elem_free(self.ptr.as_ptr()) }
    }
}

impl SetElem {
    /// A new, empty element.
    pub fn new() -> Result<SetElem, EncodeError> {
        // Safety: plain allocation.
        let p = unsafe { sys::nftnl_set_elem_alloc() };
        NonNull::new(p)
            .map(|ptr| SetElem {
                ptr,
                bound: WIRE_ITEM,
            })
            .ok_or(EncodeError::Alloc("set element"))
    }

    fn set(&mut self, attr: u32, data: &[u8], wire: usize) -> Result<(), EncodeError> {
        // Safety: libnftnl copies `data.len()` bytes from `data`; the callers have
        // checked the length against the buffer libnftnl copies into.
        let rc = unsafe {
            sys::nftnl_set_elem_set(
                self.ptr.as_ptr(),
                attr as u16,
                data.as_ptr() as *const libc::c_void,
                data.len() as u32,
            )
        };
        refused(rc, "set element", attr)?;
        self.bound += wire;
        Ok(())
    }

    fn value(&mut self, what: &'static str, attr: u32, v: &[u8]) -> Result<(), EncodeError> {
        check_len(what, v.len(), DATA_MAX)?;
        self.set(attr, v, WIRE_DATA + v.len())
    }

    /// `NFTNL_SET_ELEM_KEY` (at most [`DATA_MAX`] bytes)
    pub fn set_key(&mut self, k: &[u8]) -> Result<(), EncodeError> {
        self.value("an element key", sys::NFTNL_SET_ELEM_KEY, k)
    }
    /// `NFTNL_SET_ELEM_KEY_END` (at most [`DATA_MAX`] bytes)
    pub fn set_key_end(&mut self, k: &[u8]) -> Result<(), EncodeError> {
        self.value("an element key end", sys::NFTNL_SET_ELEM_KEY_END, k)
    }
    /// `NFTNL_SET_ELEM_DATA` (at most [`DATA_MAX`] bytes)
    pub fn set_data(&mut self, d: &[u8]) -> Result<(), EncodeError> {
        self.value("element data", sys::NFTNL_SET_ELEM_DATA, d)
    }
    /// `NFTNL_SET_ELEM_USERDATA` (copied)
    pub fn set_userdata(&mut self, ud: &[u8]) -> Result<(), EncodeError> {
        check_len("element user data", ud.len(), u32::MAX as usize)?;
        self.set(sys::NFTNL_SET_ELEM_USERDATA, ud, WIRE_DATA + ud.len())
    }
}

/// The expressions this encoder builds. Each knows the width libnftnl reads for each
/// attribute we set on it, so that a setter never hands libnftnl fewer bytes than it
/// copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprKind {
    /// `payload`
    Payload,
    /// `cmp`
    Cmp,
    /// `bitwise`
    Bitwise,
    /// `meta`
    Meta,
    /// `ct`
    Ct,
    /// `numgen`
    Numgen,
    /// `byteorder`
    Byteorder,
    /// `lookup`
    Lookup,
    /// `nat`
    Nat,
    /// `immediate`
    Immediate,
    /// `dynset`
    Dynset,
    /// `masq`
    Masq,
    /// `reject`
    Reject,
    /// `fib`
    Fib,
    /// `counter` (a set's per-element counter; no attribute is set on it)
    Counter,
}

/// How libnftnl reads an expression attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    U8,
    U32,
    Str,
    /// a data register: at most [`DATA_MAX`] bytes
    Data,
}

impl ExprKind {
    fn name(self) -> &'static CStr {
        match self {
            ExprKind::Payload => c"payload",
            ExprKind::Cmp => c"cmp",
            ExprKind::Bitwise => c"bitwise",
            ExprKind::Meta => c"meta",
            ExprKind::Ct => c"ct",
            ExprKind::Numgen => c"numgen",
            ExprKind::Byteorder => c"byteorder",
            ExprKind::Lookup => c"lookup",
            ExprKind::Nat => c"nat",
            ExprKind::Immediate => c"immediate",
            ExprKind::Dynset => c"dynset",
            ExprKind::Masq => c"masq",
            ExprKind::Reject => c"reject",
            ExprKind::Fib => c"fib",
            ExprKind::Counter => c"counter",
        }
    }

    fn label(self) -> &'static str {
        self.name().to_str().unwrap_or("expression")
    }

    /// The width of `attr` on this expression (libnftnl 1.2's `*_set` callbacks).
    fn width(self, attr: u32) -> Option<Width> {
        use ExprKind::*;
        use Width::*;
        let w = match (self, attr) {
            (
                Payload,
                sys::NFTNL_EXPR_PAYLOAD_DREG
                | sys::NFTNL_EXPR_PAYLOAD_BASE
                | sys::NFTNL_EXPR_PAYLOAD_OFFSET
                | sys::NFTNL_EXPR_PAYLOAD_LEN,
            ) => U32,
            (Cmp, sys::NFTNL_EXPR_CMP_SREG | sys::NFTNL_EXPR_CMP_OP) => U32,
            (Cmp, sys::NFTNL_EXPR_CMP_DATA) => Data,
            (
                Bitwise,
                sys::NFTNL_EXPR_BITWISE_SREG
                | sys::NFTNL_EXPR_BITWISE_DREG
                | sys::NFTNL_EXPR_BITWISE_LEN,
            ) => U32,
            (Bitwise, sys::NFTNL_EXPR_BITWISE_MASK | sys::NFTNL_EXPR_BITWISE_XOR) => Data,
            (
                Meta,
                sys::NFTNL_EXPR_META_KEY | sys::NFTNL_EXPR_META_DREG | sys::NFTNL_EXPR_META_SREG,
            ) => U32,
            (Ct, sys::NFTNL_EXPR_CT_KEY | sys::NFTNL_EXPR_CT_DREG) => U32,
            (
                Numgen,
                sys::NFTNL_EXPR_NG_DREG
                | sys::NFTNL_EXPR_NG_MODULUS
                | sys::NFTNL_EXPR_NG_TYPE
                | sys::NFTNL_EXPR_NG_OFFSET,
            ) => U32,
            (
                Byteorder,
                sys::NFTNL_EXPR_BYTEORDER_SREG
                | sys::NFTNL_EXPR_BYTEORDER_DREG
                | sys::NFTNL_EXPR_BYTEORDER_OP
                | sys::NFTNL_EXPR_BYTEORDER_LEN
                | sys::NFTNL_EXPR_BYTEORDER_SIZE,
            ) => U32,
            (
                Lookup,
                sys::NFTNL_EXPR_LOOKUP_SREG
                | sys::NFTNL_EXPR_LOOKUP_DREG
                | sys::NFTNL_EXPR_LOOKUP_FLAGS,
            ) => U32,
            (Lookup, sys::NFTNL_EXPR_LOOKUP_SET) => Str,
            (
                Nat,
                sys::NFTNL_EXPR_NAT_TYPE
                | sys::NFTNL_EXPR_NAT_FAMILY
                | sys::NFTNL_EXPR_NAT_REG_ADDR_MIN
                | sys::NFTNL_EXPR_NAT_REG_ADDR_MAX
                | sys::NFTNL_EXPR_NAT_REG_PROTO_MIN
                | sys::NFTNL_EXPR_NAT_REG_PROTO_MAX
                | sys::NFTNL_EXPR_NAT_FLAGS,
            ) => U32,
            (Immediate, sys::NFTNL_EXPR_IMM_DREG | sys::NFTNL_EXPR_IMM_VERDICT) => U32,
            (Immediate, sys::NFTNL_EXPR_IMM_CHAIN) => Str,
            (Immediate, sys::NFTNL_EXPR_IMM_DATA) => Data,
            (Dynset, sys::NFTNL_EXPR_DYNSET_SREG_KEY | sys::NFTNL_EXPR_DYNSET_OP) => U32,
            (Dynset, sys::NFTNL_EXPR_DYNSET_SET_NAME) => Str,
            (Masq, sys::NFTNL_EXPR_MASQ_FLAGS) => U32,
            (Reject, sys::NFTNL_EXPR_REJECT_TYPE) => U32,
            (Reject, sys::NFTNL_EXPR_REJECT_CODE) => U8,
            (
                Fib,
                sys::NFTNL_EXPR_FIB_DREG | sys::NFTNL_EXPR_FIB_RESULT | sys::NFTNL_EXPR_FIB_FLAGS,
            ) => U32,
            _ => return None,
        };
        Some(w)
    }
}

/// One expression being built, before it is added to a [`Rule`].
pub struct Expr {
    ptr: NonNull<sys::nftnl_expr>,
    kind: ExprKind,
    bound: usize,
}

impl Drop for Expr {
    fn drop(&mut self) {
        // Safety: we own the expression (it was not added to a rule: `add_expr` forgets
        // it).
        unsafe { sys::nftnl_expr_free(self.ptr.as_ptr()) }
    }
}

impl Expr {
    /// A new expression of `kind`.
    pub fn new(kind: ExprKind) -> Result<Expr, EncodeError> {
        let name = kind.name();
        // Safety: a valid C string; libnftnl looks the name up among its expressions.
        let p = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        NonNull::new(p)
            .map(|ptr| Expr {
                ptr,
                kind,
                bound: WIRE_ITEM + WIRE_STR + name.to_bytes_with_nul().len(),
            })
            .ok_or(EncodeError::Alloc("expression"))
    }

    fn set(mut self, attr: u32, want: Width, data: &[u8]) -> Result<Self, EncodeError> {
        let width = match self.kind.width(attr) {
            Some(w) if w == want => w,
            _ => {
                return Err(EncodeError::UnknownAttr {
                    expr: self.kind.label(),
                    attr,
                })
            }
        };
        let wire = match width {
            Width::U8 | Width::U32 => WIRE_SCALAR,
            Width::Str => WIRE_STR + data.len(),
            Width::Data => {
                check_len("expression data", data.len(), DATA_MAX)?;
                WIRE_DATA + data.len()
            }
        };
        // Safety: `width` is what libnftnl reads for `attr` on this expression (the
        // table above), and `data` holds exactly that many bytes (a NUL-terminated
        // string for strings, at most DATA_MAX bytes for data registers).
        let rc = unsafe {
            sys::nftnl_expr_set(
                self.ptr.as_ptr(),
                attr as u16,
                data.as_ptr() as *const libc::c_void,
                data.len() as u32,
            )
        };
        refused(rc, self.kind.label(), attr)?;
        self.bound += wire;
        Ok(self)
    }

    /// Sets a 32-bit attribute.
    pub fn u32(self, attr: u32, v: u32) -> Result<Self, EncodeError> {
        self.set(attr, Width::U32, &v.to_ne_bytes())
    }
    /// Sets an 8-bit attribute.
    pub fn u8(self, attr: u32, v: u8) -> Result<Self, EncodeError> {
        self.set(attr, Width::U8, &[v])
    }
    /// Sets a data attribute (at most [`DATA_MAX`] bytes).
    pub fn data(self, attr: u32, d: &[u8]) -> Result<Self, EncodeError> {
        self.set(attr, Width::Data, d)
    }
    /// Sets a string attribute.
    pub fn str(self, attr: u32, s: &str) -> Result<Self, EncodeError> {
        let c = cstring(s);
        self.set(attr, Width::Str, c.as_bytes_with_nul())
    }
}

/// What a message carries.
pub enum Payload<'a> {
    /// a table message
    Table(&'a Table),
    /// a chain message
    Chain(&'a Chain),
    /// a rule message
    Rule(&'a mut Rule),
    /// a set declaration message
    Set(&'a mut Set),
    /// an element message: the elements added to the set
    Elems(&'a mut Set),
}

impl Payload<'_> {
    fn wire_bound(&self) -> usize {
        match self {
            Payload::Table(t) => t.bound,
            Payload::Chain(c) => c.bound,
            Payload::Rule(r) => r.bound,
            Payload::Set(s) | Payload::Elems(s) => s.bound,
        }
    }
}

/// The buffer each message is built in before it is copied into a batch: 4-byte
/// aligned, of a fixed size that every message is checked against before it is
/// written.
pub struct MsgBuf {
    words: Vec<u32>,
    room: usize,
}

impl MsgBuf {
    /// A buffer for messages of up to `room` bytes (at least the headers).
    pub fn new(room: usize) -> MsgBuf {
        let room = room.max(HEADERS);
        MsgBuf {
            words: vec![0u32; (room + GUARD).div_ceil(4)],
            room,
        }
    }

    /// The largest message this buffer builds.
    pub fn room(&self) -> usize {
        self.room
    }

    fn ptr(&mut self) -> *mut libc::c_char {
        self.words.as_mut_ptr() as *mut libc::c_char
    }

    /// The first `len` bytes (`len` is at most the allocation: checked by callers).
    fn bytes(&self, len: usize) -> &[u8] {
        let len = len.min(self.words.len() * 4);
        // Safety: the words are initialized, u8 has no alignment requirement, and `len`
        // is within the allocation.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, len) }
    }

    fn nlmsg_len(&self) -> usize {
        self.words[0] as usize
    }

    /// A batch BEGIN message (`NFNL_MSG_BATCH_BEGIN`, 20 bytes).
    pub fn batch_begin(&mut self, seq: u32) -> &[u8] {
        // Safety: the buffer holds at least HEADERS bytes, what libnftnl writes.
        unsafe { sys::nftnl_batch_begin(self.ptr(), seq) };
        self.bytes(HEADERS)
    }

    /// A batch END message (`NFNL_MSG_BATCH_END`, 20 bytes).
    pub fn batch_end(&mut self, seq: u32) -> &[u8] {
        // Safety: as in `batch_begin`.
        unsafe { sys::nftnl_batch_end(self.ptr(), seq) };
        self.bytes(HEADERS)
    }

    /// Builds one nftables message; returns its bytes (a multiple of 4 long). Refuses,
    /// before writing, a message whose payload could be longer than the buffer, and,
    /// after, one longer than netlink's 16-bit attribute lengths can describe.
    pub fn message(
        &mut self,
        ty: u16,
        family: u16,
        flags: u16,
        seq: u32,
        payload: Payload<'_>,
    ) -> Result<&[u8], EncodeError> {
        let need = HEADERS + payload.wire_bound();
        if need > self.room {
            return Err(EncodeError::NoRoom {
                need,
                room: self.room,
            });
        }
        let buf = self.ptr();
        // Safety: the buffer holds `need` bytes: the headers and the most the payload
        // can add (its wire bound); libnftnl writes no more.
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(buf, ty, family, flags, seq);
            match payload {
                Payload::Table(t) => sys::nftnl_table_nlmsg_build_payload(nlh, t.ptr.as_ptr()),
                Payload::Chain(c) => sys::nftnl_chain_nlmsg_build_payload(nlh, c.ptr.as_ptr()),
                Payload::Rule(r) => sys::nftnl_rule_nlmsg_build_payload(nlh, r.ptr.as_ptr()),
                Payload::Set(s) => sys::nftnl_set_nlmsg_build_payload(nlh, s.ptr.as_ptr()),
                Payload::Elems(s) => sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.ptr.as_ptr()),
            }
        }
        let len = self.nlmsg_len();
        if len > need {
            return Err(EncodeError::BoundExceeded { len, bound: need });
        }
        if len - HEADERS.min(len) > u16::MAX as usize {
            return Err(EncodeError::AttrOverflow { len });
        }
        Ok(self.bytes((len + 3) & !3))
    }
}

/// Sets an integer socket option.
pub fn setsockopt_int(sock: &impl AsRawFd, level: i32, opt: i32, val: i32) -> io::Result<()> {
    // Safety: a pointer to a local int and its size; a bad descriptor is an error.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &val as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `SO_RCVTIMEO`.
pub fn set_recv_timeout(sock: &impl AsRawFd, secs: i64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: secs as libc::time_t,
        tv_usec: 0,
    };
    // Safety: a pointer to a local timeval and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives without blocking into `buf`; `Ok(0)` at end of stream.
pub fn recv_nonblocking(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // Safety: `buf` outlives the call and its length is passed.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives into `buf`, waiting for a message; `Ok(0)` at end of stream.
pub fn recv_wait(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // Safety: `buf` outlives the call and its length is passed.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A netlink socket of `protocol` (e.g. `NETLINK_NETFILTER`), bound to a port the
/// kernel picks and to no multicast group yet.
pub fn netlink_socket(protocol: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // Safety: socket(2) has no memory arguments; the descriptor it returns is owned by
    // the `OwnedFd` from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // Safety: all-zero is a valid sockaddr_nl (port 0: the kernel picks one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // Safety: a pointer to a local sockaddr_nl and its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `bytes` to the kernel (netlink port 0) with one `sendmsg`.
pub fn send_to_kernel(sock: &impl AsRawFd, bytes: &[u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Safety: all-zero is a valid sockaddr_nl (port 0 is the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // Safety: all-zero is a valid msghdr; the fields set below point at locals.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_name = &mut addr as *mut libc::sockaddr_nl as *mut libc::c_void;
    mh.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    // Safety: the msghdr and what it points at (the address, the iovec and `bytes`,
    // which the kernel only reads) outlive the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A netlink socket registered with the current tokio runtime's reactor, so that a
/// task can wait until it is readable (`kube-nft-proxy trace` waits for trace events
/// and signals together). The returned `AsyncFd` owns the socket.
pub fn register_readable(sock: mnl::Socket) -> io::Result<tokio::io::unix::AsyncFd<mnl::Socket>> {
    // Safety: `register` needs the descriptor to stay open as long as it is registered:
    // the AsyncFd owns the socket and deregisters the descriptor before it drops it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_longer_than_a_register_are_refused() {
        let mut e = SetElem::new().unwrap();
        e.set_key(&[0; DATA_MAX]).unwrap();
        assert!(matches!(
            e.set_key(&[0; DATA_MAX + 1]),
            Err(EncodeError::ValueTooLong { len: 65, .. })
        ));
        assert!(matches!(
            Expr::new(ExprKind::Cmp)
                .unwrap()
                .data(sys::NFTNL_EXPR_CMP_DATA, &[0; 100]),
            Err(EncodeError::ValueTooLong { .. })
        ));
        let mut s = Set::new().unwrap();
        assert!(s.set_concat(&[4; 17]).is_err());
    }

    #[test]
    fn an_attribute_of_the_wrong_width_is_refused() {
        // REJECT_CODE is a u8: setting it as a u32 would be read as one byte of four,
        // and TYPE as a u8 would make libnftnl read three bytes past ours.
        let e = Expr::new(ExprKind::Reject).unwrap();
        let e = e.u8(sys::NFTNL_EXPR_REJECT_CODE, 3).unwrap();
        assert!(e.u8(sys::NFTNL_EXPR_REJECT_TYPE, 1).is_err());
        let e = Expr::new(ExprKind::Payload).unwrap();
        assert!(matches!(
            e.u32(100, 1),
            Err(EncodeError::UnknownAttr { .. })
        ));
    }

    #[test]
    fn a_message_that_may_not_fit_is_not_written() {
        let mut buf = MsgBuf::new(256);
        let mut t = Table::new().unwrap();
        t.set_name(&"t".repeat(300)).unwrap();
        let before = buf.bytes(buf.words.len() * 4).to_vec();
        assert!(matches!(
            buf.message(0, 2, 0, 1, Payload::Table(&t)),
            Err(EncodeError::NoRoom { room: 256, .. })
        ));
        assert_eq!(
            buf.bytes(buf.words.len() * 4),
            before,
            "the buffer was written"
        );
        let mut t = Table::new().unwrap();
        t.set_name("t").unwrap();
        assert_eq!(
            buf.message(0, 2, 0, 1, Payload::Table(&t)).unwrap().len(),
            28
        );
    }

    #[test]
    fn malformed_input_is_not_parsed() {
        assert!(Table::parse(&[]).is_none());
        assert!(Table::parse(&[0u8; 19]).is_none());
        // A header claiming more than the bytes hold.
        let mut m = vec![0u8; 24];
        m[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(Table::parse(&m).is_none());
        // A valid message, misaligned: parsed from an aligned copy.
        let mut buf = MsgBuf::new(1024);
        let mut t = Table::new().unwrap();
        t.set_name("kube-nft-proxy").unwrap();
        let msg = buf
            .message(0, 2, 0, 1, Payload::Table(&t))
            .unwrap()
            .to_vec();
        let mut shifted = vec![0u8];
        shifted.extend(&msg);
        assert_eq!(
            Table::parse(&shifted[1..]).unwrap().name(),
            "kube-nft-proxy"
        );
        assert_eq!(Table::parse(&msg).unwrap().name(), "kube-nft-proxy");
    }

    /// Every call into C is in `ffi.rs`: no other source file of `netlink/` (however
    /// many there are, at any depth) has `unsafe` in its code, nor an attribute that
    /// allows it. Comments are skipped; `forbid`/`deny(unsafe_code)` are fine.
    #[test]
    fn unsafe_code_lives_only_in_ffi() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap_or_else(|e| panic!("{dir:?}: {e}")).path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/netlink");
        let mut files = Vec::new();
        walk(&root, &mut files);
        let mut found = Vec::new();
        let mut scanned = 0;
        for path in &files {
            if path == &root.join("ffi.rs") {
                continue;
            }
            scanned += 1;
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let code = code
                    .replace("forbid(unsafe_code)", "")
                    .replace("deny(unsafe_code)", "");
                if code.contains("unsafe") {
                    found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(scanned >= 6, "scanned only {scanned} files under {root:?}");
        assert!(
            found.is_empty(),
            "unsafe outside netlink/ffi.rs:\n{}",
            found.join("\n")
        );
    }
}
