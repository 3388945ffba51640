//! Reads our tables back from the kernel: which chains and sets exist, and every
//! element of every set, so that a full sync can diff exactly against the kernel.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::consts::*;
use super::encode::{key_type, parse_rule_digest, set_userdata};
use super::ffi;
use super::socket::Conn;
use super::Error;
use crate::ruleset::ir::*;

/// One set as the kernel holds it.
#[derive(Clone, Debug)]
pub struct RawSet {
    /// name
    pub name: String,
    /// key type number and length
    pub key: (u32, u32),
    /// data type number and length (0, 0 for a plain set)
    pub data: (u32, u32),
    /// user data
    pub userdata: Vec<u8>,
    /// set flags (NFT_SET_*)
    pub flags: u32,
    /// the names of the set's own expressions (`counter` for a counted set)
    pub exprs: Vec<String>,
    /// every element
    pub elements: Vec<RawElement>,
}

/// One element as the kernel holds it.
pub use super::ffi::ElemData as RawElement;

/// Our table of one family as the kernel holds it.
#[derive(Clone, Debug, Default)]
pub struct RawTable {
    /// chain names, in kernel order
    pub chains: Vec<String>,
    /// per chain, the digest of each rule in order (None: a rule without our digest)
    pub rule_digests: BTreeMap<String, Vec<Option<u64>>>,
    /// sets
    pub sets: Vec<RawSet>,
}

fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
    let len = 4 + val.len();
    let mut v = Vec::with_capacity((len + 3) & !3);
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(val);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The names of every table of `family`.
pub fn table_names(conn: &mut Conn, family: Family) -> Result<Vec<String>, Error> {
    Ok(conn
        .dump(NFT_MSG_GETTABLE, family.nfproto(), &[])?
        .iter()
        .filter_map(|m| ffi::Table::parse(m))
        .map(|t| t.name())
        .collect())
}

/// The nftables generation id of the current network namespace: it moves by one with
/// every committed transaction, whoever commits it, and never otherwise.
pub fn generation(conn: &mut Conn) -> Result<u32, Error> {
    for m in conn.dump(NFT_MSG_GETGEN, 0, &[])? {
        // nlmsghdr (16) + nfgenmsg (4), then attributes: NFTA_GEN_ID (1) is a be32.
        let mut off = 20;
        while off + 4 <= m.len() {
            let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]) & 0x3fff;
            if len < 4 || off + len > m.len() {
                break;
            }
            if ty == 1 && len == 8 {
                return Ok(u32::from_be_bytes([
                    m[off + 4],
                    m[off + 5],
                    m[off + 6],
                    m[off + 7],
                ]));
            }
            off += (len + 3) & !3;
        }
    }
    Err(Error::Recv(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the kernel's answer to GETGEN carries no generation id",
    )))
}

/// Reads our table of `family`; `None` if it does not exist.
pub fn read_table(conn: &mut Conn, family: Family) -> Result<Option<RawTable>, Error> {
    read_table_with(conn, family, true)
}

/// Reads our table's chains, rules and sets without their elements (a few dumps of
/// small objects, whatever the number of Services); `None` if it does not exist.
pub fn read_structure(conn: &mut Conn, family: Family) -> Result<Option<RawTable>, Error> {
    read_table_with(conn, family, false)
}

fn read_table_with(
    conn: &mut Conn,
    family: Family,
    elements: bool,
) -> Result<Option<RawTable>, Error> {
    let fam = family.nfproto();
    if !table_names(conn, family)?.iter().any(|n| n == TABLE_NAME) {
        return Ok(None);
    }
    let mut out = RawTable::default();
    for m in conn.dump(NFT_MSG_GETCHAIN, fam, &attr(1, &strz(TABLE_NAME)))? {
        if let Some(c) = ffi::Chain::parse(&m) {
            if c.table() == TABLE_NAME {
                out.chains.push(c.name());
            }
        }
    }
    for m in conn.dump(NFT_MSG_GETRULE, fam, &attr(1, &strz(TABLE_NAME)))? {
        if let Some(r) = ffi::Rule::parse(&m) {
            if r.table() == TABLE_NAME {
                out.rule_digests
                    .entry(r.chain())
                    .or_default()
                    .push(parse_rule_digest(&r.userdata()));
            }
        }
    }
    out.sets = set_decls(conn, family)?;
    for set in &mut out.sets {
        if !elements || set.flags & NFT_SET_TIMEOUT != 0 {
            // Dynamic (affinity) sets are filled by the packet path; never diffed.
            continue;
        }
        set.elements = set_elements(conn, family, &set.name)?;
    }
    Ok(Some(out))
}

/// The declarations of the sets of our table (no elements), in kernel order.
pub fn set_decls(conn: &mut Conn, family: Family) -> Result<Vec<RawSet>, Error> {
    let mut out = Vec::new();
    for m in conn.dump(
        NFT_MSG_GETSET,
        family.nfproto(),
        &attr(1, &strz(TABLE_NAME)),
    )? {
        if let Some(s) = ffi::Set::parse(&m) {
            if s.table() == TABLE_NAME {
                let (kt, kl) = s.key();
                let (dt, dl) = s.data_type();
                out.push(RawSet {
                    name: s.name(),
                    key: (kt.unwrap_or(0), kl.unwrap_or(0)),
                    data: (dt.unwrap_or(0), dl.unwrap_or(0)),
                    flags: s.flags().unwrap_or(0),
                    exprs: s.expr_names(),
                    userdata: s.userdata(),
                    elements: Vec::new(),
                });
            }
        }
    }
    Ok(out)
}

/// Every element of one set of our table.
pub fn set_elements(conn: &mut Conn, family: Family, set: &str) -> Result<Vec<RawElement>, Error> {
    let mut req = attr(1, &strz(TABLE_NAME));
    req.extend(attr(2, &strz(set)));
    let mut out = Vec::new();
    for m in conn.dump(NFT_MSG_GETSETELEM, family.nfproto(), &req)? {
        if let Some(s) = ffi::Set::parse_elems(&m) {
            out.extend(s.elems());
        }
    }
    Ok(out)
}

/// The keys of a set's raw elements decoded as `types` (undecodable ones left out).
pub fn decode_keys(types: &[KeyType], family: Family, elements: &[RawElement]) -> Vec<Key> {
    elements
        .iter()
        .filter_map(|e| decode_tuple(types, family, &e.key, &e.key_end))
        .map(Key::from)
        .collect()
}

fn addr_at(family: Family, b: &[u8]) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
        Family::V6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Ipv6Addr::from(a).into()
        }
    }
}

/// The network whose first and last addresses are `start` and `end`, if any.
fn net_of(start: IpAddr, end: IpAddr) -> Option<ipnet::IpNet> {
    let (s, e, bits) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u32::from(s) as u128, u32::from(e) as u128, 32),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
        _ => return None,
    };
    let host = s ^ e;
    if host & (host.wrapping_add(1)) != 0 || s & host != 0 {
        return None;
    }
    let prefix = bits - host.count_ones() as u8;
    ipnet::IpNet::new(start, prefix).ok()
}

pub(crate) fn decode_tuple(
    types: &[KeyType],
    family: Family,
    bytes: &[u8],
    end: &[u8],
) -> Option<Vec<Value>> {
    let concat = types.len() > 1;
    let mut off = 0usize;
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let (len, v) = match t {
            KeyType::Addr => {
                let n = family.addr_len() as usize;
                (n, Value::Addr(addr_at(family, bytes.get(off..off + n)?)))
            }
            KeyType::Net => {
                let n = family.addr_len() as usize;
                let s = addr_at(family, bytes.get(off..off + n)?);
                let e = addr_at(family, end.get(off..off + n)?);
                (n, Value::Net(net_of(s, e)?))
            }
            KeyType::Proto => (1, Value::Proto(*bytes.get(off)?)),
            KeyType::Port => {
                let b = bytes.get(off..off + 2)?;
                (2, Value::Port(u16::from_be_bytes([b[0], b[1]])))
            }
            KeyType::Index => {
                let b = bytes.get(off..off + 4)?;
                (
                    4,
                    Value::Index(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                )
            }
        };
        out.push(v);
        off += if concat { (len + 3) & !3 } else { len };
    }
    (off == bytes.len()).then_some(out)
}

/// Where the comment is in an element's user data (nft's TLV type 0, up to its NUL).
fn comment_range(ud: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut off = 0;
    while off + 2 <= ud.len() {
        let (ty, len) = (ud[off], ud[off + 1] as usize);
        let v = ud.get(off + 2..off + 2 + len)?;
        if ty == 0 {
            let n = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return Some(off + 2..off + 2 + n);
        }
        off += 2 + len;
    }
    None
}

/// The comment in an element's user data (nft's TLV type 0), if any.
pub fn decode_comment(ud: &[u8]) -> Option<String> {
    let r = comment_range(ud)?;
    Some(String::from_utf8_lossy(&ud[r]).into_owned())
}

/// Like [`decode_comment`], in the user data's own allocation (a scrape of the
/// counters takes the comment of every counted element).
pub fn take_comment(mut ud: Vec<u8>) -> Option<String> {
    let r = comment_range(&ud)?;
    ud.truncate(r.end);
    ud.drain(..r.start);
    Some(
        String::from_utf8(ud)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// The expressions the kernel holds on a set we declared: a counter for a counted set,
/// none otherwise. A set whose expressions differ (counters turned on or off since it
/// was created, or added by someone else) is another declaration: the diff re-creates it.
pub fn set_exprs(decl: &SetDecl) -> Vec<String> {
    if decl.counter {
        vec!["counter".to_string()]
    } else {
        Vec::new()
    }
}

/// Turns a raw table into the IR shape the diff expects (as exactly known). Sets whose
/// layout does not match the desired declaration of the same name are given a
/// placeholder declaration so that the diff replaces them. A chain whose rule digests
/// equal the desired chain's gets the desired rules; any other chain comes back empty,
/// which differs from every chain we build, so the diff refills it.
pub fn to_known(raw: &RawTable, family: Family, desired: &Table) -> Table {
    let mut t = Table::new(family);
    for name in &raw.chains {
        let want = desired.chain(name);
        let verified = want.is_some_and(|c| {
            let have = raw.rule_digests.get(name).map(Vec::as_slice).unwrap_or(&[]);
            have.len() == c.rules.len()
                && c.rules
                    .iter()
                    .zip(have)
                    .all(|(r, d)| *d == Some(crate::ruleset::render::rule_digest(r, family)))
        });
        t.chains.push(Chain {
            name: name.clone(),
            kind: want.map(|c| c.kind).unwrap_or(ChainKind::Regular),
            rules: if verified {
                want.map(|c| c.rules.clone()).unwrap_or_default()
            } else if raw.rule_digests.get(name).is_some_and(|d| !d.is_empty()) {
                crate::ruleset::diff::unknown_rules()
            } else {
                Vec::new()
            },
        });
    }
    for rs in &raw.sets {
        let matching = desired.set(&rs.name).map(|s| &s.decl).filter(|d| {
            key_type(&d.key, family) == rs.key
                && (if d.is_map() {
                    key_type(&d.data, family)
                } else {
                    (0, 0)
                }) == rs.data
                && set_userdata(d, family) == rs.userdata
                && d.timeout.is_some() == (rs.flags & NFT_SET_TIMEOUT != 0)
                && rs.exprs == set_exprs(d)
        });
        let Some(decl) = matching else {
            t.sets.push(Set {
                decl: SetDecl {
                    name: rs.name.clone(),
                    key: vec![],
                    data: vec![],
                    comment: "unknown layout",
                    timeout: None,
                    counter: false,
                },
                elements: Default::default(),
            });
            continue;
        };
        let mut elements = BTreeMap::new();
        let mut bad = false;
        for el in &rs.elements {
            let Some(key) = decode_tuple(&decl.key, family, &el.key, &el.key_end) else {
                bad = true;
                break;
            };
            let data = if decl.is_map() {
                match decode_tuple(&decl.data, family, &el.data, &[]) {
                    Some(v) => v,
                    None => {
                        bad = true;
                        break;
                    }
                }
            } else {
                Vec::new()
            };
            elements.insert(
                Key::from(key),
                ElementData {
                    data: data.into(),
                    comment: decode_comment(&el.userdata).map(Arc::from),
                },
            );
        }
        let decl = if bad {
            // Undecodable elements: replace the whole set.
            SetDecl {
                name: rs.name.clone(),
                key: vec![],
                data: vec![],
                comment: "unknown layout",
                timeout: None,
                counter: false,
            }
        } else {
            decl.clone()
        };
        t.sets.push(Set {
            decl,
            elements: Arc::new(if bad { BTreeMap::new() } else { elements }),
        });
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_come_out_of_user_data() {
        let ud = crate::netlink::encode::comment_udata("shop/web:http node port");
        assert_eq!(
            decode_comment(&ud).as_deref(),
            Some("shop/web:http node port")
        );
        assert_eq!(take_comment(ud).as_deref(), Some("shop/web:http node port"));
        // Another TLV first, then the comment.
        let mut ud = vec![0xd1, 2, 7, 7];
        ud.extend(crate::netlink::encode::comment_udata("a/b"));
        assert_eq!(take_comment(ud).as_deref(), Some("a/b"));
        assert_eq!(take_comment(vec![0xd1, 1, 0]), None);
        assert_eq!(
            take_comment(vec![0, 9, b'x']),
            None,
            "a length past the end"
        );
    }

    #[test]
    fn intervals_back_to_networks() {
        let n = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            net_of(n("203.0.113.0"), n("203.0.113.127")),
            Some("203.0.113.0/25".parse().unwrap())
        );
        assert_eq!(
            net_of(n("10.0.0.1"), n("10.0.0.1")),
            Some("10.0.0.1/32".parse().unwrap())
        );
        assert_eq!(net_of(n("10.0.0.1"), n("10.0.0.2")), None);
        assert_eq!(
            net_of(n("fd00::"), n("fd00::ffff")),
            Some("fd00::/112".parse().unwrap())
        );
    }
}
