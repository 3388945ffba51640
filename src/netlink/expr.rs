//! IR statements → nftnl expressions.
//!
//! The nftnl crate covers only part of what we need (no concatenations, maps with data,
//! numgen or register choice), so every expression is built here from libnftnl's
//! generic setters. The register layout copies nft's (first component in `reg 1`, the
//! next ones in the 32-bit registers that follow), so that `nft list` shows our rules
//! exactly as it shows the same text loaded with `nft -f`.

#![forbid(unsafe_code)]

use nftnl_sys as sys;

use super::consts::*;
use super::ffi::{EncodeError, Expr, ExprKind, Rule};
use crate::ruleset::ir::{Family, Field, Stmt, Verdict};

/// A libnftnl rule being filled with expressions.
pub struct RawRule(Rule);

type R = Result<(), EncodeError>;

impl RawRule {
    /// A rule for `table`/`chain` of `family`.
    pub fn new(family: Family, table: &str, chain: &str) -> Result<RawRule, EncodeError> {
        let mut r = Rule::new()?;
        r.set_family(family.nfproto() as u32)?;
        r.set_table(table)?;
        r.set_chain(chain)?;
        Ok(RawRule(r))
    }

    /// Attaches user data (copied).
    pub fn set_userdata(&mut self, ud: &[u8]) -> R {
        self.0.set_userdata(ud)
    }

    /// The rule, for building its message.
    pub fn rule(&mut self) -> &mut Rule {
        &mut self.0
    }

    fn add(&mut self, e: Expr) -> R {
        self.0.add_expr(e);
        Ok(())
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) -> R {
        self.add(
            Expr::new(ExprKind::Payload)?
                .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)?
                .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base)?
                .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)?
                .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)?,
        )
    }

    fn cmp(&mut self, sreg: u32, op: u32, data: &[u8]) -> R {
        self.add(
            Expr::new(ExprKind::Cmp)?
                .u32(sys::NFTNL_EXPR_CMP_SREG, sreg)?
                .u32(sys::NFTNL_EXPR_CMP_OP, op)?
                .data(sys::NFTNL_EXPR_CMP_DATA, data)?,
        )
    }

    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) -> R {
        self.add(
            Expr::new(ExprKind::Bitwise)?
                .u32(sys::NFTNL_EXPR_BITWISE_SREG, reg)?
                .u32(sys::NFTNL_EXPR_BITWISE_DREG, reg)?
                .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)?
                .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)?
                .data(sys::NFTNL_EXPR_BITWISE_XOR, xor)?,
        )
    }

    fn meta_load(&mut self, key: u32, dreg: u32) -> R {
        self.add(
            Expr::new(ExprKind::Meta)?
                .u32(sys::NFTNL_EXPR_META_KEY, key)?
                .u32(sys::NFTNL_EXPR_META_DREG, dreg)?,
        )
    }

    fn ct_load(&mut self, key: u32, dreg: u32) -> R {
        self.add(
            Expr::new(ExprKind::Ct)?
                .u32(sys::NFTNL_EXPR_CT_KEY, key)?
                .u32(sys::NFTNL_EXPR_CT_DREG, dreg)?,
        )
    }

    fn ct_bit(&mut self, key: u32, bit: u32) -> R {
        self.ct_load(key, NFT_REG_1)?;
        self.bitwise(NFT_REG_1, &bit.to_ne_bytes(), &0u32.to_ne_bytes())?;
        self.cmp(NFT_REG_1, NFT_CMP_NEQ, &0u32.to_ne_bytes())
    }

    /// Loads one field into `reg`; returns its padded length in bytes.
    fn load(&mut self, f: Field, family: Family, reg: u32) -> Result<u32, EncodeError> {
        let (saddr_off, daddr_off) = match family {
            Family::V4 => (12, 16),
            Family::V6 => (8, 24),
        };
        Ok(match f {
            Field::Saddr => {
                self.payload(
                    NFT_PAYLOAD_NETWORK_HEADER,
                    saddr_off,
                    family.addr_len(),
                    reg,
                )?;
                family.addr_len()
            }
            Field::Daddr => {
                self.payload(
                    NFT_PAYLOAD_NETWORK_HEADER,
                    daddr_off,
                    family.addr_len(),
                    reg,
                )?;
                family.addr_len()
            }
            Field::L4Proto => {
                self.meta_load(NFT_META_L4PROTO, reg)?;
                4
            }
            Field::ThDport => {
                self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg)?;
                4
            }
            Field::Numgen(m) => {
                self.numgen(reg, m, 0)?;
                4
            }
            Field::Tag(t) => {
                self.numgen(reg, 1, t)?;
                4
            }
        })
    }

    fn numgen(&mut self, reg: u32, modulus: u32, offset: u32) -> Result<(), EncodeError> {
        self.add(
            Expr::new(ExprKind::Numgen)?
                .u32(sys::NFTNL_EXPR_NG_DREG, reg)?
                .u32(sys::NFTNL_EXPR_NG_MODULUS, modulus)?
                .u32(sys::NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)?
                .u32(sys::NFTNL_EXPR_NG_OFFSET, offset)?,
        )
    }

    /// Loads a concatenation the way nft does: the first component into `reg 1`, each
    /// further one into the 32-bit register where the previous one ended. Returns the
    /// total length.
    fn load_concat(
        &mut self,
        fields: &[Field],
        family: Family,
        interval: bool,
    ) -> Result<u32, EncodeError> {
        let mut off = 0;
        for (i, f) in fields.iter().enumerate() {
            let reg = if i == 0 {
                NFT_REG_1
            } else {
                NFT_REG32_00 + off / 4
            };
            off += self.load(*f, family, reg)?;
            if interval && *f == Field::L4Proto {
                // nft 1.0.6 converts host-order components for interval concatenations;
                // for the 1-byte protocol this is the byteorder expression it emits.
                self.add(
                    Expr::new(ExprKind::Byteorder)?
                        .u32(sys::NFTNL_EXPR_BYTEORDER_SREG, reg)?
                        .u32(sys::NFTNL_EXPR_BYTEORDER_DREG, reg)?
                        .u32(sys::NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON)?
                        .u32(sys::NFTNL_EXPR_BYTEORDER_LEN, 1)?
                        .u32(sys::NFTNL_EXPR_BYTEORDER_SIZE, 2)?,
                )?;
            }
        }
        Ok(off)
    }

    fn lookup(&mut self, set: &str, sreg: u32, dreg: Option<u32>, negate: bool) -> R {
        let mut e = Expr::new(ExprKind::Lookup)?
            .u32(sys::NFTNL_EXPR_LOOKUP_SREG, sreg)?
            .str(sys::NFTNL_EXPR_LOOKUP_SET, set)?;
        if let Some(d) = dreg {
            e = e.u32(sys::NFTNL_EXPR_LOOKUP_DREG, d)?;
        }
        if negate {
            e = e.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV)?;
        }
        self.add(e)
    }

    fn mark_set(&mut self, mask: u32, xor: u32) -> R {
        self.meta_load(NFT_META_MARK, NFT_REG_1)?;
        self.bitwise(NFT_REG_1, &mask.to_ne_bytes(), &xor.to_ne_bytes())?;
        self.add(
            Expr::new(ExprKind::Meta)?
                .u32(sys::NFTNL_EXPR_META_KEY, NFT_META_MARK)?
                .u32(sys::NFTNL_EXPR_META_SREG, NFT_REG_1)?,
        )
    }

    /// `dnat` to the address in `addr_reg` and the port in `proto_reg`.
    fn dnat(&mut self, family: Family, addr_reg: u32, proto_reg: u32) -> R {
        self.add(
            Expr::new(ExprKind::Nat)?
                .u32(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT)?
                .u32(sys::NFTNL_EXPR_NAT_FAMILY, family.nfproto() as u32)?
                .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_reg)?
                .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MAX, addr_reg)?
                .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg)?
                .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MAX, proto_reg)?
                .u32(
                    sys::NFTNL_EXPR_NAT_FLAGS,
                    NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
                )?,
        )
    }

    fn verdict(&mut self, v: &Verdict) -> R {
        let (code, chain) = match v {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
        };
        let mut e = Expr::new(ExprKind::Immediate)?
            .u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT)?
            .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32)?;
        if let Some(c) = chain {
            e = e.str(sys::NFTNL_EXPR_IMM_CHAIN, c)?;
        }
        self.add(e)
    }

    /// Appends the expressions of one statement.
    pub fn stmt(&mut self, s: &Stmt, family: Family) -> R {
        match s {
            Stmt::CtStateNew => self.ct_bit(NFT_CT_STATE, CT_STATE_NEW_BIT),
            Stmt::CtStatusDnat => self.ct_bit(NFT_CT_STATUS, IPS_DST_NAT),
            Stmt::Cidr { field, net, negate } => {
                // Like nft: a byte-aligned prefix loads and compares only the bytes it
                // covers; any other prefix loads the whole address and masks it.
                let aligned = net.prefix_len() % 8 == 0;
                let bytes = if aligned {
                    net.prefix_len() as usize / 8
                } else {
                    family.addr_len() as usize
                };
                if bytes == 0 {
                    // A /0 matches every address: nothing to check (nft emits nothing).
                    return Ok(());
                }
                let (saddr_off, daddr_off) = match family {
                    Family::V4 => (12, 16),
                    Family::V6 => (8, 24),
                };
                let off = if *field == Field::Saddr {
                    saddr_off
                } else {
                    daddr_off
                };
                self.payload(NFT_PAYLOAD_NETWORK_HEADER, off, bytes as u32, NFT_REG_1)?;
                let octets = |a: std::net::IpAddr| match a {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                if !aligned {
                    self.bitwise(NFT_REG_1, &octets(net.netmask()), &vec![0u8; bytes])?;
                }
                let op = if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
                self.cmp(NFT_REG_1, op, &octets(net.network())[..bytes])
            }
            Stmt::Iifname { name, prefix } => {
                // As nft: an exact name is compared with its NUL padding to IFNAMSIZ;
                // a prefix (`"veth*"`) only on its own bytes, without a NUL.
                let mut data = name.as_bytes().to_vec();
                if data.len() >= IFNAMSIZ {
                    return Err(EncodeError::ValueTooLong {
                        what: "interface name",
                        len: data.len(),
                        max: IFNAMSIZ - 1,
                    });
                }
                if !prefix {
                    data.resize(IFNAMSIZ, 0);
                }
                self.meta_load(NFT_META_IIFNAME, NFT_REG_1)?;
                self.cmp(NFT_REG_1, NFT_CMP_EQ, &data)
            }
            Stmt::Lookup {
                fields,
                set,
                negate,
            } => {
                self.load_concat(fields, family, false)?;
                self.lookup(set, NFT_REG_1, None, *negate)
            }
            Stmt::LookupRange {
                fields,
                set,
                negate,
            } => {
                self.load_concat(fields, family, true)?;
                self.lookup(set, NFT_REG_1, None, *negate)
            }
            Stmt::FibLocal { saddr, negate } => {
                let flags = if *saddr {
                    NFTA_FIB_F_SADDR
                } else {
                    NFTA_FIB_F_DADDR
                };
                self.add(
                    Expr::new(ExprKind::Fib)?
                        .u32(sys::NFTNL_EXPR_FIB_DREG, NFT_REG_1)?
                        .u32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)?
                        .u32(sys::NFTNL_EXPR_FIB_FLAGS, flags)?,
                )?;
                let op = if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
                self.cmp(NFT_REG_1, op, &RTN_LOCAL.to_ne_bytes())
            }
            Stmt::MarkClear(m) => {
                self.meta_load(NFT_META_MARK, NFT_REG_1)?;
                self.bitwise(NFT_REG_1, &m.to_ne_bytes(), &0u32.to_ne_bytes())?;
                self.cmp(NFT_REG_1, NFT_CMP_EQ, &0u32.to_ne_bytes())
            }
            Stmt::MarkSetOr(m) => self.mark_set(!m, *m),
            Stmt::MarkSetXor(m) => self.mark_set(u32::MAX, *m),
            Stmt::DnatMap { fields, map } => {
                self.load_concat(fields, family, false)?;
                self.lookup(map, NFT_REG_1, Some(NFT_REG_1), false)?;
                let proto_reg = NFT_REG32_00 + family.addr_len() / 4;
                self.dnat(family, NFT_REG_1, proto_reg)
            }
            Stmt::L4Proto(p) => {
                self.meta_load(NFT_META_L4PROTO, NFT_REG_1)?;
                self.cmp(NFT_REG_1, NFT_CMP_EQ, &[*p])
            }
            Stmt::Dport(p) => {
                self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG_1)?;
                self.cmp(NFT_REG_1, NFT_CMP_EQ, &p.to_be_bytes())
            }
            Stmt::NumgenEq { modulus, value } => {
                self.load(Field::Numgen(*modulus), family, NFT_REG_1)?;
                self.cmp(NFT_REG_1, NFT_CMP_EQ, &value.to_ne_bytes())
            }
            Stmt::Update { fields, set } => {
                self.load_concat(fields, family, false)?;
                self.add(
                    Expr::new(ExprKind::Dynset)?
                        .u32(sys::NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1)?
                        .u32(sys::NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE)?
                        .str(sys::NFTNL_EXPR_DYNSET_SET_NAME, set)?,
                )
            }
            Stmt::Dnat(addr, port) => {
                let a = match addr {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                self.add(
                    Expr::new(ExprKind::Immediate)?
                        .u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_1)?
                        .data(sys::NFTNL_EXPR_IMM_DATA, &a)?,
                )?;
                self.add(
                    Expr::new(ExprKind::Immediate)?
                        .u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_1 + 1)?
                        .data(sys::NFTNL_EXPR_IMM_DATA, &port.to_be_bytes())?,
                )?;
                self.dnat(family, NFT_REG_1, NFT_REG_1 + 1)
            }
            Stmt::Masquerade => self.add(
                Expr::new(ExprKind::Masq)?
                    .u32(sys::NFTNL_EXPR_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY)?,
            ),
            Stmt::Reject => {
                let code = match family {
                    Family::V4 => ICMP_PORT_UNREACH,
                    Family::V6 => ICMPV6_PORT_UNREACH,
                };
                self.add(
                    Expr::new(ExprKind::Reject)?
                        .u32(sys::NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH)?
                        .u8(sys::NFTNL_EXPR_REJECT_CODE, code)?,
                )
            }
            Stmt::Verdict(v) => self.verdict(v),
        }
    }
}
