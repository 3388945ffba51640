//! Our tables read back from the kernel as IR: every chain with its hook and priority,
//! every rule decoded from its netlink expressions, every set with its declaration and
//! elements. `explain` walks this when it explains the rules that are in the kernel
//! rather than the rules some objects would give.
//!
//! The decoder is the inverse of [`super::expr`] for the small statement vocabulary we
//! emit, no more: a rule it cannot read back (another program edited our table, or a
//! newer proxy wrote it) is reported, never guessed. Each decoded rule is checked
//! against the digest its user data carries (the digest of the rule's nft text, see
//! [`crate::ruleset::render::rule_digest`]): a rule that decodes to anything else than
//! what was written is reported the same way.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::attr::{attrs, find as attr};
use super::consts::*;
use super::encode::parse_rule_digest;
use super::readback::{decode_comment, decode_tuple, set_elements, table_names};
use super::socket::Conn;
use super::Error;
use crate::ruleset::ir::*;

/// One table read back, and what could not be read.
#[derive(Clone, Debug)]
pub struct ReadBack {
    /// the table as IR (rules that could not be decoded are left out)
    pub table: Table,
    /// one line per rule or set left out, and why
    pub problems: Vec<String>,
}

// Attribute numbers of the nf_tables uapi (linux/netfilter/nf_tables.h).
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_META_L4PROTO_KEY: u32 = NFT_META_L4PROTO;

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn text(v: &[u8]) -> String {
    let s = v.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(s).into_owned()
}

/// The attributes of one nf_tables message (after nlmsghdr and nfgenmsg).
fn body(msg: &[u8]) -> &[u8] {
    msg.get(20..).unwrap_or(&[])
}

/// One netlink expression of a rule, with the attributes we read.
#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Payload {
        dreg: u32,
        base: u32,
        off: u32,
        len: u32,
    },
    Meta {
        key: u32,
        dreg: Option<u32>,
        sreg: Option<u32>,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        flags: u32,
    },
    Value {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    Numgen {
        dreg: u32,
        modulus: u32,
        offset: u32,
    },
    Fib {
        dreg: u32,
        flags: u32,
    },
    Dnat {
        reg_addr: u32,
        reg_proto: u32,
    },
    Masq,
    Reject,
    Dynset {
        set: String,
        sreg: u32,
    },
    /// expressions that change nothing a walk reads (byteorder, counter)
    Ignored,
}

fn data_value(v: &[u8]) -> Option<Vec<u8>> {
    attr(v, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

fn decode_expr(e: &[u8]) -> Result<Expr, String> {
    let name = attr(e, NFTA_EXPR_NAME).map(text).unwrap_or_default();
    let d = attr(e, NFTA_EXPR_DATA).unwrap_or(&[]);
    let u = |ty: u16| attr(d, ty).and_then(be32);
    let need = |ty: u16| u(ty).ok_or_else(|| format!("{name} without attribute {ty}"));
    Ok(match name.as_str() {
        "payload" => Expr::Payload {
            dreg: need(1)?,
            base: need(2)?,
            off: need(3)?,
            len: need(4)?,
        },
        "meta" => Expr::Meta {
            key: need(2)?,
            dreg: u(1),
            sreg: u(3),
        },
        "ct" => Expr::Ct {
            key: need(2)?,
            dreg: need(1)?,
        },
        "cmp" => Expr::Cmp {
            sreg: need(1)?,
            op: need(2)?,
            data: attr(d, 3).and_then(data_value).ok_or("cmp without data")?,
        },
        "bitwise" => Expr::Bitwise {
            sreg: need(1)?,
            mask: attr(d, 4)
                .and_then(data_value)
                .ok_or("bitwise without mask")?,
            xor: attr(d, 5)
                .and_then(data_value)
                .ok_or("bitwise without xor")?,
        },
        "lookup" => Expr::Lookup {
            set: attr(d, 1).map(text).ok_or("lookup without a set")?,
            sreg: need(2)?,
            dreg: u(3),
            flags: u(5).unwrap_or(0),
        },
        "immediate" => {
            let dreg = need(1)?;
            let data = attr(d, 2).ok_or("immediate without data")?;
            if let Some(v) = attr(data, NFTA_DATA_VERDICT) {
                let code = attr(v, NFTA_VERDICT_CODE)
                    .and_then(be32)
                    .ok_or("verdict without a code")? as i32;
                let chain = attr(v, NFTA_VERDICT_CHAIN).map(text);
                Expr::Verdict(match (code, chain) {
                    (NF_ACCEPT, _) => Verdict::Accept,
                    (NF_DROP, _) => Verdict::Drop,
                    (NFT_RETURN, _) => Verdict::Return,
                    (NFT_JUMP, Some(c)) => Verdict::Jump(c),
                    (NFT_GOTO, Some(c)) => Verdict::Goto(c),
                    (c, _) => return Err(format!("verdict code {c}")),
                })
            } else {
                Expr::Value {
                    dreg,
                    data: data_value(data).ok_or("immediate without a value")?,
                }
            }
        }
        "numgen" => Expr::Numgen {
            dreg: need(1)?,
            modulus: need(2)?,
            offset: u(4).unwrap_or(0),
        },
        "fib" => {
            if need(2)? != NFT_FIB_RESULT_ADDRTYPE {
                return Err("fib with a result other than the address type".into());
            }
            Expr::Fib {
                dreg: need(1)?,
                flags: need(3)?,
            }
        }
        "nat" => {
            if need(1)? != NFT_NAT_DNAT {
                return Err("nat other than dnat".into());
            }
            Expr::Dnat {
                reg_addr: need(3)?,
                reg_proto: need(5)?,
            }
        }
        "masq" => Expr::Masq,
        "reject" => Expr::Reject,
        "dynset" => Expr::Dynset {
            set: attr(d, 1).map(text).ok_or("dynset without a set")?,
            sreg: need(4)?,
        },
        "byteorder" | "counter" => Expr::Ignored,
        other => return Err(format!("expression {other:?}")),
    })
}

/// What a register holds while a rule's expressions are read in order.
#[derive(Clone, Debug, PartialEq)]
enum Reg {
    Field(Field),
    /// the first `len` bytes of an address (a byte-aligned prefix match)
    Prefix(Field, usize),
    /// an address with a mask applied (any other prefix)
    Masked(Field, Vec<u8>),
    Numgen(u32, u32),
    Mark,
    MarkMasked(u32, u32),
    CtKey(u32),
    CtBits(u32, u32),
    FibType(bool),
    Iifname,
    Value(Vec<u8>),
}

/// Registers as 32-bit slots: `reg 1` (128-bit) is slot 8, as the kernel maps them.
fn slot(reg: u32) -> u32 {
    if (1..=4).contains(&reg) {
        NFT_REG32_00 + (reg - 1) * 4
    } else {
        reg
    }
}

fn ne32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn addr_from(family: Family, bytes: &[u8]) -> Option<IpAddr> {
    let mut full = vec![0u8; family.addr_len() as usize];
    full.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(match family {
        Family::V4 => IpAddr::from(<[u8; 4]>::try_from(full.as_slice()).ok()?),
        Family::V6 => IpAddr::from(<[u8; 16]>::try_from(full.as_slice()).ok()?),
    })
}

struct Decoder<'a> {
    family: Family,
    interval: &'a dyn Fn(&str) -> bool,
    regs: BTreeMap<u32, Reg>,
    stmts: Vec<Stmt>,
    /// a map lookup waiting for its `dnat`
    map: Option<(Vec<Field>, String)>,
}

impl Decoder<'_> {
    fn put(&mut self, reg: u32, r: Reg) {
        self.regs.insert(slot(reg), r);
    }

    fn take(&mut self, reg: u32) -> Result<Reg, String> {
        self.regs
            .remove(&slot(reg))
            .ok_or_else(|| format!("register {reg} read before it was written"))
    }

    /// The concatenation loaded from `reg` on: every loaded register from there up, in
    /// order (ours load exactly the components of the key they look up).
    fn concat(&mut self, reg: u32, map: bool) -> Result<Vec<Field>, String> {
        let from = slot(reg);
        let regs = std::mem::take(&mut self.regs);
        let mut fields = Vec::new();
        for (s, r) in regs {
            if s < from {
                continue;
            }
            fields.push(match r {
                Reg::Field(f) => f,
                // `numgen random mod N` picks an index of a map; `mod 1 offset T` is a
                // constant tag in a session-affinity key.
                Reg::Numgen(m, 0) if map => Field::Numgen(m),
                Reg::Numgen(1, t) => Field::Tag(t),
                other => return Err(format!("{other:?} in a concatenation")),
            });
        }
        if fields.is_empty() {
            return Err("a lookup of an empty key".into());
        }
        Ok(fields)
    }

    fn field_of_payload(&self, base: u32, off: u32, len: u32) -> Result<Reg, String> {
        let (s, d) = match self.family {
            Family::V4 => (12, 16),
            Family::V6 => (8, 24),
        };
        let alen = self.family.addr_len();
        Ok(match (base, off) {
            (NFT_PAYLOAD_NETWORK_HEADER, o) if (o == s || o == d) && len <= alen => {
                let f = if o == s { Field::Saddr } else { Field::Daddr };
                if len == alen {
                    Reg::Field(f)
                } else {
                    Reg::Prefix(f, len as usize)
                }
            }
            (NFT_PAYLOAD_TRANSPORT_HEADER, 2) if len == 2 => Reg::Field(Field::ThDport),
            _ => return Err(format!("payload base {base} offset {off} length {len}")),
        })
    }

    fn cmp(&mut self, sreg: u32, op: u32, data: &[u8]) -> Result<(), String> {
        let negate = match op {
            NFT_CMP_EQ => false,
            NFT_CMP_NEQ => true,
            o => return Err(format!("comparison operator {o}")),
        };
        let reg = self.take(sreg)?;
        let alen = self.family.addr_len() as u8;
        let cidr = |f: Field, bytes: &[u8], prefix: u8| -> Result<Stmt, String> {
            let a = addr_from(self.family, bytes).ok_or("an address of the wrong length")?;
            let net = ipnet::IpNet::new(a, prefix).map_err(|e| e.to_string())?;
            Ok(Stmt::Cidr {
                field: f,
                net,
                negate,
            })
        };
        let s = match reg {
            Reg::CtBits(NFT_CT_STATE, CT_STATE_NEW_BIT) if negate && ne32(data) == Some(0) => {
                Stmt::CtStateNew
            }
            Reg::CtBits(NFT_CT_STATUS, IPS_DST_NAT) if negate && ne32(data) == Some(0) => {
                Stmt::CtStatusDnat
            }
            Reg::MarkMasked(m, 0) if !negate && ne32(data) == Some(0) => Stmt::MarkClear(m),
            Reg::Field(f @ (Field::Saddr | Field::Daddr)) => cidr(f, data, alen * 8)?,
            Reg::Prefix(f, n) if data.len() == n => cidr(f, data, (n * 8) as u8)?,
            Reg::Masked(f, mask) => {
                let bits = mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
                cidr(f, data, bits)?
            }
            Reg::Iifname => Stmt::Iifname {
                name: text(data),
                prefix: data.len() < IFNAMSIZ,
            },
            Reg::FibType(saddr) if ne32(data) == Some(RTN_LOCAL) => {
                Stmt::FibLocal { saddr, negate }
            }
            Reg::Field(Field::L4Proto) if !negate && data.len() == 1 => Stmt::L4Proto(data[0]),
            Reg::Field(Field::ThDport) if !negate && data.len() == 2 => {
                Stmt::Dport(u16::from_be_bytes([data[0], data[1]]))
            }
            Reg::Numgen(modulus, 0) if !negate => Stmt::NumgenEq {
                modulus,
                value: ne32(data).ok_or("a numgen comparison with a short value")?,
            },
            other => return Err(format!("a comparison of {other:?}")),
        };
        self.stmts.push(s);
        Ok(())
    }

    fn expr(&mut self, e: Expr) -> Result<(), String> {
        match e {
            Expr::Payload {
                dreg,
                base,
                off,
                len,
            } => {
                let r = self.field_of_payload(base, off, len)?;
                self.put(dreg, r);
            }
            Expr::Meta {
                key, dreg: Some(d), ..
            } => {
                let r = match key {
                    NFT_META_L4PROTO_KEY => Reg::Field(Field::L4Proto),
                    NFT_META_MARK => Reg::Mark,
                    NFT_META_IIFNAME => Reg::Iifname,
                    k => return Err(format!("meta key {k}")),
                };
                self.put(d, r);
            }
            Expr::Meta {
                key: NFT_META_MARK,
                dreg: None,
                sreg: Some(s),
            } => match self.take(s)? {
                Reg::MarkMasked(mask, xor) if mask == !xor => self.stmts.push(Stmt::MarkSetOr(xor)),
                Reg::MarkMasked(u32::MAX, xor) => self.stmts.push(Stmt::MarkSetXor(xor)),
                other => return Err(format!("meta mark set from {other:?}")),
            },
            Expr::Meta { key, .. } => return Err(format!("meta statement key {key}")),
            Expr::Ct { key, dreg } => self.put(dreg, Reg::CtKey(key)),
            Expr::Bitwise { sreg, mask, xor } => {
                let r = match self.take(sreg)? {
                    Reg::Mark => Reg::MarkMasked(
                        ne32(&mask).ok_or("short mark mask")?,
                        ne32(&xor).ok_or("short mark xor")?,
                    ),
                    Reg::CtKey(k) => Reg::CtBits(k, ne32(&mask).ok_or("short ct mask")?),
                    Reg::Field(f @ (Field::Saddr | Field::Daddr)) => Reg::Masked(f, mask),
                    other => return Err(format!("a bitwise operation on {other:?}")),
                };
                self.put(sreg, r);
            }
            Expr::Cmp { sreg, op, data } => self.cmp(sreg, op, &data)?,
            Expr::Lookup {
                set,
                sreg,
                dreg: Some(_),
                flags: 0,
            } => {
                let fields = self.concat(sreg, true)?;
                self.map = Some((fields, set));
            }
            Expr::Lookup {
                set,
                sreg,
                dreg: None,
                flags,
            } => {
                let fields = self.concat(sreg, false)?;
                let negate = flags & NFT_LOOKUP_F_INV != 0;
                self.stmts.push(if (self.interval)(&set) {
                    Stmt::LookupRange {
                        fields,
                        set,
                        negate,
                    }
                } else {
                    Stmt::Lookup {
                        fields,
                        set,
                        negate,
                    }
                });
            }
            Expr::Lookup { .. } => return Err("an inverted map lookup".into()),
            Expr::Value { dreg, data } => self.put(dreg, Reg::Value(data)),
            Expr::Verdict(v) => self.stmts.push(Stmt::Verdict(v)),
            Expr::Numgen {
                dreg,
                modulus,
                offset,
            } => self.put(dreg, Reg::Numgen(modulus, offset)),
            Expr::Fib { dreg, flags } => {
                self.put(dreg, Reg::FibType(flags & NFTA_FIB_F_SADDR != 0));
            }
            Expr::Dnat {
                reg_addr,
                reg_proto,
            } => {
                if let Some((fields, map)) = self.map.take() {
                    self.stmts.push(Stmt::DnatMap { fields, map });
                } else {
                    let (Reg::Value(a), Reg::Value(p)) =
                        (self.take(reg_addr)?, self.take(reg_proto)?)
                    else {
                        return Err("dnat from registers that hold no constant".into());
                    };
                    let addr = addr_from(self.family, &a).ok_or("dnat to a short address")?;
                    let port = p.get(..2).ok_or("dnat to a short port")?;
                    self.stmts
                        .push(Stmt::Dnat(addr, u16::from_be_bytes([port[0], port[1]])));
                }
            }
            Expr::Masq => self.stmts.push(Stmt::Masquerade),
            Expr::Reject => self.stmts.push(Stmt::Reject),
            Expr::Dynset { set, sreg } => {
                let fields = self.concat(sreg, false)?;
                self.stmts.push(Stmt::Update { fields, set });
            }
            Expr::Ignored => {}
        }
        Ok(())
    }
}

/// Decodes the expressions of one rule (the payload of `NFTA_RULE_EXPRESSIONS`).
/// `interval(set)` says whether a set is an interval set (its lookups are
/// `LookupRange`).
pub fn decode_rule(
    family: Family,
    expressions: &[u8],
    interval: &dyn Fn(&str) -> bool,
) -> Result<Rule, String> {
    let mut d = Decoder {
        family,
        interval,
        regs: BTreeMap::new(),
        stmts: Vec::new(),
        map: None,
    };
    for (_, e) in attrs(expressions) {
        d.expr(decode_expr(e)?)?;
    }
    if d.map.is_some() {
        return Err("a map lookup without a dnat".into());
    }
    Ok(Rule(d.stmts))
}

/// A rule message's chain, expressions and digest.
pub fn rule_parts(msg: &[u8]) -> Option<(String, String, &[u8], Option<u64>)> {
    let b = body(msg);
    Some((
        attr(b, NFTA_RULE_TABLE).map(text)?,
        attr(b, NFTA_RULE_CHAIN).map(text)?,
        attr(b, NFTA_RULE_EXPRESSIONS).unwrap_or(&[]),
        attr(b, NFTA_RULE_USERDATA).and_then(parse_rule_digest),
    ))
}

/// The component types of a key type number (each component 6 bits, first one highest).
fn key_types(id: u32, family: Family, interval: bool) -> Option<Vec<KeyType>> {
    let mut out = Vec::new();
    let mut id = id;
    while id != 0 {
        let addr = if interval {
            KeyType::Net
        } else {
            KeyType::Addr
        };
        out.push(match (id & ((1 << TYPE_BITS) - 1), family) {
            (TYPE_IPADDR, Family::V4) | (TYPE_IP6ADDR, Family::V6) => addr,
            (TYPE_INET_PROTOCOL, _) => KeyType::Proto,
            (TYPE_INET_SERVICE, _) => KeyType::Port,
            (TYPE_INTEGER, _) => KeyType::Index,
            _ => return None,
        });
        id >>= TYPE_BITS;
    }
    out.reverse();
    Some(out)
}

fn hook_of(n: u32) -> Option<Hook> {
    Some(match n {
        0 => Hook::Prerouting,
        1 => Hook::Input,
        2 => Hook::Forward,
        3 => Hook::Output,
        4 => Hook::Postrouting,
        _ => return None,
    })
}

/// Reads our table of `family` as IR; `None` if it does not exist.
pub fn read_ir(conn: &mut Conn, family: Family) -> Result<Option<ReadBack>, Error> {
    if !table_names(conn, family)?.iter().any(|n| n == TABLE_NAME) {
        return Ok(None);
    }
    let fam = family.nfproto();
    let mut req = Vec::new();
    req.extend_from_slice(&((4 + TABLE_NAME.len() as u16 + 1).to_ne_bytes()));
    req.extend_from_slice(&1u16.to_ne_bytes());
    req.extend_from_slice(TABLE_NAME.as_bytes());
    req.push(0);
    while req.len() % 4 != 0 {
        req.push(0);
    }
    let mut table = Table::new(family);
    let mut problems = Vec::new();

    for m in conn.dump(NFT_MSG_GETSET, fam, &req)? {
        let Some(s) = super::ffi::Set::parse(&m) else {
            continue;
        };
        if s.table() != TABLE_NAME {
            continue;
        }
        let flags = s.flags().unwrap_or(0);
        let interval = flags & NFT_SET_INTERVAL != 0;
        let (kt, _) = s.key();
        let (dt, _) = s.data_type();
        let key = kt.and_then(|k| key_types(k, family, interval));
        let data = match dt {
            Some(d) => key_types(d, family, false),
            None => Some(Vec::new()),
        };
        let (Some(key), Some(data)) = (key, data) else {
            problems.push(format!(
                "set {}: a key or value type we do not write",
                s.name()
            ));
            continue;
        };
        let timeout = (flags & NFT_SET_TIMEOUT != 0)
            .then(|| u32::try_from(s.timeout_ms().unwrap_or(0) / 1000).unwrap_or(u32::MAX));
        let decl = SetDecl {
            name: s.name(),
            key,
            data,
            comment: "",
            timeout,
            counter: s.expr_names().iter().any(|n| n == "counter"),
        };
        let mut elements = BTreeMap::new();
        if timeout.is_none() {
            for el in set_elements(conn, family, &decl.name)? {
                let k = decode_tuple(&decl.key, family, &el.key, &el.key_end);
                let v = if decl.is_map() {
                    decode_tuple(&decl.data, family, &el.data, &[])
                } else {
                    Some(Vec::new())
                };
                let (Some(k), Some(v)) = (k, v) else {
                    problems.push(format!("set {}: an element we cannot decode", decl.name));
                    continue;
                };
                elements.insert(
                    Key::from(k),
                    ElementData {
                        data: v.into(),
                        comment: decode_comment(&el.userdata).map(std::sync::Arc::from),
                    },
                );
            }
        }
        table.sets.push(Set {
            decl,
            elements: std::sync::Arc::new(elements),
        });
    }

    for m in conn.dump(NFT_MSG_GETCHAIN, fam, &req)? {
        let b = body(&m);
        if attr(b, NFTA_CHAIN_TABLE).map(text).as_deref() != Some(TABLE_NAME) {
            continue;
        }
        let Some(name) = attr(b, NFTA_CHAIN_NAME).map(text) else {
            continue;
        };
        let kind = match attr(b, NFTA_CHAIN_HOOK) {
            None => ChainKind::Regular,
            Some(h) => {
                let hook = attr(h, NFTA_HOOK_HOOKNUM).and_then(be32).and_then(hook_of);
                let prio = attr(h, NFTA_HOOK_PRIORITY).and_then(be32);
                let kind = match attr(b, NFTA_CHAIN_TYPE).map(text).as_deref() {
                    Some("nat") => Some(ChainType::Nat),
                    Some("filter") => Some(ChainType::Filter),
                    _ => None,
                };
                match (hook, prio, kind) {
                    (Some(hook), Some(p), Some(kind)) => ChainKind::Base {
                        kind,
                        hook,
                        priority: p as i32,
                    },
                    _ => {
                        problems.push(format!("chain {name}: a hook we do not use"));
                        continue;
                    }
                }
            }
        };
        table.chains.push(Chain {
            name,
            kind,
            rules: Vec::new(),
        });
    }

    let interval_sets: Vec<String> = table
        .sets
        .iter()
        .filter(|s| s.decl.is_interval())
        .map(|s| s.decl.name.clone())
        .collect();
    let interval = |s: &str| interval_sets.iter().any(|n| n == s);
    let mut position: BTreeMap<String, usize> = BTreeMap::new();
    for m in conn.dump(NFT_MSG_GETRULE, fam, &req)? {
        let Some((tname, chain, exprs, digest)) = rule_parts(&m) else {
            continue;
        };
        if tname != TABLE_NAME {
            continue;
        }
        let n = position.entry(chain.clone()).or_default();
        *n += 1;
        let at = format!("rule {} of chain {chain}", *n);
        let rule = match decode_rule(family, exprs, &interval) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{at}: cannot read it back ({e}); left out"));
                continue;
            }
        };
        let written = crate::ruleset::render::rule_digest(&rule, family);
        if digest != Some(written) {
            problems.push(format!(
                "{at}: reads back as `{}`, which is not the rule this proxy wrote there \
                 (another program changed it?); left out",
                crate::ruleset::render::rule(&rule, family)
            ));
            continue;
        }
        if let Some(c) = table.chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push(rule);
        }
    }
    Ok(Some(ReadBack { table, problems }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_invert_the_encoder() {
        use crate::netlink::encode::key_type;
        for (ts, interval) in [
            (vec![KeyType::Addr], false),
            (vec![KeyType::Addr, KeyType::Proto, KeyType::Port], false),
            (
                vec![KeyType::Net, KeyType::Proto, KeyType::Port, KeyType::Net],
                true,
            ),
            (
                vec![KeyType::Addr, KeyType::Proto, KeyType::Port, KeyType::Index],
                false,
            ),
        ] {
            for f in Family::ALL {
                let (id, _) = key_type(&ts, f);
                assert_eq!(key_types(id, f, interval), Some(ts.clone()), "{ts:?} {f:?}");
            }
        }
    }

    /// Every rule the builder makes, for random clusters and configurations, encodes
    /// to netlink and decodes back to itself (the kernel dumps rules in the same
    /// attribute layout as we send them).
    #[test]
    fn every_built_rule_decodes_back_to_itself() {
        use crate::ruleset::diff::Op;
        use crate::ruleset::{build, BuildConfig, PodInterface};
        use crate::synthetic::{random_entry, random_node, Rng};
        let mut checked = 0;
        for seed in 1..40u64 {
            let mut rng = Rng::new(seed);
            let mut model = crate::model::ProxyModel {
                node: random_node(),
                service_cidrs: vec![
                    "10.96.0.0/16".parse().unwrap(),
                    "fd00:96::/108".parse().unwrap(),
                ],
                ..Default::default()
            };
            for i in 0..12 {
                let e = random_entry(&mut rng, i);
                model.services.insert(e.port.name.clone(), e);
            }
            let cfg = BuildConfig {
                masquerade_mark: 1 << (rng.below(31) as u32),
                masquerade_all: rng.one_in(4),
                cluster_cidrs: if rng.one_in(2) {
                    vec![
                        "10.0.0.0/9".parse().unwrap(),
                        "fd00:10::/61".parse().unwrap(),
                    ]
                } else {
                    vec![]
                },
                pod_interface: match rng.below(3) {
                    0 => Some(PodInterface {
                        name: "cbr0".into(),
                        prefix: false,
                    }),
                    1 => Some(PodInterface {
                        name: "veth".into(),
                        prefix: true,
                    }),
                    _ => None,
                },
                nodeport_ips: random_node().ips,
                // Every other seed in the rule order of `--service-counters`.
                service_counters: seed % 2 == 0,
            };
            let rs = build(&model, &cfg);
            for t in &rs.tables {
                let interval = |s: &str| t.set(s).is_some_and(|s| s.decl.is_interval());
                for c in &t.chains {
                    for r in &c.rules {
                        let batch = crate::netlink::encode::encode(&[Op::AddRule(
                            t.family,
                            c.name.clone(),
                            r.clone(),
                        )])
                        .unwrap();
                        let mut off = 0;
                        let mut found = false;
                        while off + 16 <= batch.bytes.len() {
                            let b = &batch.bytes[off..];
                            let len = u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize;
                            let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
                            if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
                                let (_, chain, exprs, digest) = rule_parts(&b[..len]).unwrap();
                                assert_eq!(chain, c.name);
                                let back = decode_rule(t.family, exprs, &interval)
                                    .unwrap_or_else(|e| panic!("{r:?}: {e}"));
                                assert_eq!(&back, r, "seed {seed} chain {}", c.name);
                                assert_eq!(
                                    digest,
                                    Some(crate::ruleset::render::rule_digest(r, t.family))
                                );
                                found = true;
                                checked += 1;
                            }
                            off += (len + 3) & !3;
                        }
                        assert!(found, "no rule message for {r:?}");
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} rules checked");
    }
}
