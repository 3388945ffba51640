//! Kernel constants from `linux/netfilter/nf_tables.h` and friends (stable uapi).

#![forbid(unsafe_code)]

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_GETSET: u16 = 10;
pub const NFT_MSG_DELSET: u16 = 11;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_GETSETELEM: u16 = 13;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFT_MSG_GETTABLE: u16 = 1;
/// NFT_MSG_GETGEN: the ruleset generation id
pub const NFT_MSG_GETGEN: u16 = 16;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG32_00: u32 = 8;

pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub const NFT_META_MARK: u32 = 3;
/// `meta iifname`: the input interface's name, IFNAMSIZ bytes
pub const NFT_META_IIFNAME: u32 = 6;
/// IFNAMSIZ: an interface name with its terminating NUL
pub const IFNAMSIZ: usize = 16;
pub const NFT_META_L4PROTO: u32 = 16;

pub const NFT_CT_STATE: u32 = 0;
pub const NFT_CT_STATUS: u32 = 2;
/// `ct state new`: NF_CT_STATE_BIT(IP_CT_NEW)
pub const CT_STATE_NEW_BIT: u32 = 1 << 3;
/// IPS_DST_NAT
pub const IPS_DST_NAT: u32 = 1 << 5;

pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;

pub const NFT_LOOKUP_F_INV: u32 = 1;

pub const NFT_NG_RANDOM: u32 = 1;

pub const NFT_NAT_DNAT: u32 = 1;
pub const NF_NAT_RANGE_MAP_IPS: u32 = 1;
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;

pub const NFT_REJECT_ICMP_UNREACH: u32 = 0;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMPV6_PORT_UNREACH: u8 = 4;

pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_SADDR: u32 = 1;
pub const NFTA_FIB_F_DADDR: u32 = 2;
pub const RTN_LOCAL: u32 = 2;

pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

pub const NFT_SET_MAP: u32 = 0x8;
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_CONCAT: u32 = 0x80;
pub const NFT_BYTEORDER_HTON: u32 = 1;
pub const NFT_SET_TIMEOUT: u32 = 0x10;
pub const NFT_SET_EVAL: u32 = 0x20;
pub const NFT_DYNSET_OP_UPDATE: u32 = 1;

/// nft's datatype numbers (`enum datatypes` in nft's datatype.h), used to build set key
/// types that `nft list` prints by name.
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
/// Bits per component in a concatenated type.
pub const TYPE_BITS: u32 = 6;

pub const NETLINK_EXT_ACK: libc::c_int = 11;
pub const NETLINK_CAP_ACK: libc::c_int = 10;
