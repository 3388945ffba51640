//! kube-proxy's IPVS virtual servers, removed over generic netlink (family "IPVS",
//! linux/ip_vs.h).
//!
//! Upstream's cleanup flushes every virtual server (`IPVS_CMD_FLUSH`). We list them
//! (`IPVS_CMD_GET_SERVICE`) and delete each of kube-proxy's (`IPVS_CMD_DEL_SERVICE`)
//! instead, because the takeover runs on every start of a long-lived daemon, not once
//! by hand: a flush would also take the virtual servers of other programs on the node
//! (keepalived, kube-vip) that kube-proxy itself was told to leave alone with
//! `--ipvs-exclude-cidrs`. A virtual server is kube-proxy's when it has an address
//! (kube-proxy never creates firewall-mark services) outside those CIDRs: the same
//! test kube-proxy's IPVS mode applied on each sync before deleting a virtual server
//! it did not want (`cleanLegacyService`). The caller only comes here when
//! `kube-ipvs0` exists, i.e. when kube-proxy's IPVS mode ran on this node since boot.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::nl::{self, Attrs, Socket};

/// `GENL_ID_CTRL` (linux/genetlink.h): the controller, which resolves family names.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID`: u16.
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`: string.
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// The version libnl puts in its controller requests (the kernel does not check it).
const CTRL_VERSION: u8 = 1;

/// `IPVS_GENL_NAME`.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;
/// `IPVS_CMD_NEW_SERVICE`: the command of each message of a service dump.
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
/// `IPVS_CMD_DEL_SERVICE`.
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
/// `IPVS_CMD_GET_SERVICE`.
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
/// `IPVS_CMD_ATTR_SERVICE`: the nested service attributes.
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
/// `IPVS_SVC_ATTR_AF`: u16 address family.
pub const IPVS_SVC_ATTR_AF: u16 = 1;
/// `IPVS_SVC_ATTR_PROTOCOL`: u16 IP protocol.
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
/// `IPVS_SVC_ATTR_ADDR`: `union nf_inet_addr`, 16 bytes.
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
/// `IPVS_SVC_ATTR_PORT`: be16.
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
/// `IPVS_SVC_ATTR_FWMARK`: u32.
pub const IPVS_SVC_ATTR_FWMARK: u16 = 5;

/// One IPVS virtual server as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    /// address family (`AF_INET`, `AF_INET6`)
    pub af: u16,
    /// IP protocol (0 with a firewall mark)
    pub protocol: u16,
    /// `union nf_inet_addr` as the kernel sent it
    pub addr: [u8; 16],
    /// port
    pub port: u16,
    /// firewall mark, for a firewall-mark service
    pub fwmark: Option<u32>,
}

impl VirtualServer {
    /// The virtual address (none for a firewall-mark service or an unknown family).
    pub fn ip(&self) -> Option<IpAddr> {
        if self.fwmark.is_some() {
            return None;
        }
        match i32::from(self.af) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
    }

    /// As ipvsadm prints it (`TCP 172.30.0.10:80`, `FWM 7`).
    pub fn describe(&self) -> String {
        if let Some(m) = self.fwmark {
            return format!("FWM {m}");
        }
        let proto = match self.protocol {
            6 => "TCP".to_string(),
            17 => "UDP".to_string(),
            132 => "SCTP".to_string(),
            p => format!("protocol {p}"),
        };
        match self.ip() {
            Some(IpAddr::V6(a)) => format!("{proto} [{a}]:{}", self.port),
            Some(a) => format!("{proto} {a}:{}", self.port),
            None => format!("{proto} family {}:{}", self.af, self.port),
        }
    }

    /// Whether kube-proxy's IPVS mode would have deleted it once it no longer wanted
    /// it: it has an address, outside `exclude` (`--ipvs-exclude-cidrs`).
    pub fn is_kube_proxys(&self, exclude: &[IpNet]) -> bool {
        self.ip()
            .is_some_and(|ip| !exclude.iter().any(|n| n.contains(&ip)))
    }
}

/// `struct genlmsghdr`: command, version, 2 reserved bytes.
fn genl(cmd: u8, version: u8) -> Vec<u8> {
    vec![cmd, version, 0, 0]
}

/// The payload of the controller request that resolves the "IPVS" family.
pub fn get_family_request() -> Vec<u8> {
    let mut p = genl(CTRL_CMD_GETFAMILY, CTRL_VERSION);
    p.extend(
        Attrs::new()
            .str(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME)
            .into_bytes(),
    );
    p
}

/// The family id in the controller's answer.
pub fn parse_family_id(reply: &[u8]) -> Option<u16> {
    nl::find(reply.get(4..)?, CTRL_ATTR_FAMILY_ID).and_then(nl::get_u16)
}

/// The payload of the dump request for every virtual server.
pub fn get_services_request() -> Vec<u8> {
    genl(IPVS_CMD_GET_SERVICE, IPVS_GENL_VERSION)
}

/// One message of a service dump, or `None` if it is not one.
pub fn parse_service(reply: &[u8]) -> Option<VirtualServer> {
    if *reply.first()? != IPVS_CMD_NEW_SERVICE {
        return None;
    }
    let svc = nl::find(reply.get(4..)?, IPVS_CMD_ATTR_SERVICE)?;
    let af = nl::find(svc, IPVS_SVC_ATTR_AF).and_then(nl::get_u16)?;
    if let Some(mark) = nl::find(svc, IPVS_SVC_ATTR_FWMARK).and_then(nl::get_u32) {
        return Some(VirtualServer {
            af,
            protocol: 0,
            addr: [0; 16],
            port: 0,
            fwmark: Some(mark),
        });
    }
    let protocol = nl::find(svc, IPVS_SVC_ATTR_PROTOCOL).and_then(nl::get_u16)?;
    let raw = nl::find(svc, IPVS_SVC_ATTR_ADDR)?;
    let mut addr = [0u8; 16];
    let n = raw.len().min(16);
    addr[..n].copy_from_slice(&raw[..n]);
    let port = nl::find(svc, IPVS_SVC_ATTR_PORT)?;
    let port = u16::from_be_bytes(port.get(..2)?.try_into().ok()?);
    Some(VirtualServer {
        af,
        protocol,
        addr,
        port,
        fwmark: None,
    })
}

/// The payload of the request that deletes `v`: the attributes that identify a
/// service (`ip_vs_genl_parse_service` with `full_entry` false).
pub fn del_service_request(v: &VirtualServer) -> Vec<u8> {
    let mut svc = Attrs::new().u16(IPVS_SVC_ATTR_AF, v.af);
    svc = match v.fwmark {
        Some(m) => svc.u32(IPVS_SVC_ATTR_FWMARK, m),
        None => svc
            .u16(IPVS_SVC_ATTR_PROTOCOL, v.protocol)
            .bytes(IPVS_SVC_ATTR_ADDR, &v.addr)
            .be16(IPVS_SVC_ATTR_PORT, v.port),
    };
    let mut p = genl(IPVS_CMD_DEL_SERVICE, IPVS_GENL_VERSION);
    // The kernel's own dumps nest without NLA_F_NESTED (nla_nest_start_noflag), and
    // so does libnl, which ipvsadm uses.
    p.extend(Attrs::new().nested(IPVS_CMD_ATTR_SERVICE, svc).into_bytes());
    p
}

/// What the IPVS step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// the kernel has no "IPVS" generic netlink family (no IPVS support loaded)
    pub no_ipvs: bool,
    /// virtual servers deleted
    pub deleted: usize,
    /// virtual servers left in place (firewall marks, excluded CIDRs), described
    pub kept: Vec<String>,
    /// deletions the kernel refused
    pub failed: Vec<String>,
}

/// The family id of "IPVS", `None` if the kernel has no such family.
pub fn family_id(sock: &mut Socket) -> Result<Option<u16>, nl::Error> {
    match sock.request(
        "CTRL_CMD_GETFAMILY IPVS",
        GENL_ID_CTRL,
        0,
        &get_family_request(),
    ) {
        Ok(replies) => Ok(replies.iter().find_map(|r| parse_family_id(r))),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes kube-proxy's virtual servers (see the module's documentation).
pub fn remove(exclude: &[IpNet]) -> Result<Outcome, nl::Error> {
    let mut sock = Socket::open(mnl::Bus::Generic)?;
    let Some(id) = family_id(&mut sock)? else {
        return Ok(Outcome {
            no_ipvs: true,
            ..Outcome::default()
        });
    };
    let services: Vec<VirtualServer> = sock
        .request(
            "IPVS_CMD_GET_SERVICE",
            id,
            nl::NLM_F_DUMP,
            &get_services_request(),
        )?
        .iter()
        .filter_map(|r| parse_service(r))
        .collect();
    let mut out = Outcome::default();
    for v in services {
        if !v.is_kube_proxys(exclude) {
            out.kept.push(v.describe());
            continue;
        }
        match sock.request(
            &format!("IPVS_CMD_DEL_SERVICE {}", v.describe()),
            id,
            0,
            &del_service_request(&v),
        ) {
            Ok(_) => out.deleted += 1,
            // Gone meanwhile: what we wanted.
            Err(e) if e.errno() == Some(libc::ESRCH) => {}
            Err(e) => out.failed.push(crate::error_text::error_chain(&e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes below are written from the uapi headers linux/netlink.h
    // (struct nlmsghdr, struct nlattr), linux/genetlink.h (struct genlmsghdr, the
    // controller's commands and attributes) and linux/ip_vs.h (commands and service
    // attributes), for a little-endian host; multi-byte fields say their order.

    fn le() -> bool {
        cfg!(target_endian = "little")
    }

    #[test]
    fn resolving_the_ipvs_family() {
        let msg = nl::message(
            GENL_ID_CTRL,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            1,
            &get_family_request(),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[32, 0, 0, 0][..],  // nlmsg_len: 16 + 4 + 12
            &[0x10, 0],          // nlmsg_type: GENL_ID_CTRL
            &[0x05, 0],          // NLM_F_REQUEST | NLM_F_ACK
            &[1, 0, 0, 0],       // nlmsg_seq
            &[0, 0, 0, 0],       // nlmsg_pid
            &[3, 1, 0, 0],       // genlmsghdr: CTRL_CMD_GETFAMILY, version 1, reserved
            &[9, 0, 2, 0],       // nla_len 9 (4 + "IPVS\0"), CTRL_ATTR_FAMILY_NAME
            b"IPVS\0",
            &[0, 0, 0],          // padding to 4
        ]
        .concat();
        if le() {
            assert_eq!(msg, expected);
        }
        // The controller's answer: genlmsghdr (CTRL_CMD_NEWFAMILY = 1), then
        // CTRL_ATTR_FAMILY_NAME and CTRL_ATTR_FAMILY_ID (u16 host order, padded).
        #[rustfmt::skip]
        let reply: Vec<u8> = [
            &[1, 2, 0, 0][..],
            &[9, 0, 2, 0], b"IPVS\0", &[0, 0, 0],
            &[6, 0, 1, 0], &0x22u16.to_ne_bytes(), &[0, 0],
        ]
        .concat();
        assert_eq!(parse_family_id(&reply), Some(0x22));
    }

    #[test]
    fn listing_every_virtual_server() {
        let msg = nl::message(
            0x22,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_DUMP,
            2,
            &get_services_request(),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[20, 0, 0, 0][..],  // nlmsg_len: 16 + 4
            &[0x22, 0],          // nlmsg_type: the id the controller gave "IPVS"
            &[0x05, 0x03],       // NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP (0x300)
            &[2, 0, 0, 0],
            &[0, 0, 0, 0],
            &[4, 1, 0, 0],       // genlmsghdr: IPVS_CMD_GET_SERVICE, IPVS_GENL_VERSION
        ]
        .concat();
        if le() {
            assert_eq!(msg, expected);
        }
    }

    /// One message of the kernel's service dump (`ip_vs_genl_fill_service`) for
    /// `TCP 172.30.0.10:80 rr`, as the kernel writes it, parsed and turned into the
    /// deletion of the same service.
    #[test]
    fn a_dumped_service_is_deleted_by_its_identity() {
        #[rustfmt::skip]
        let dumped: Vec<u8> = [
            &[IPVS_CMD_NEW_SERVICE, 1, 0, 0][..],     // genlmsghdr
            &[84, 0, 1, 0],                           // IPVS_CMD_ATTR_SERVICE, no NLA_F_NESTED
            &[6, 0, 1, 0], &2u16.to_ne_bytes(), &[0, 0],         // IPVS_SVC_ATTR_AF: AF_INET
            &[6, 0, 2, 0], &6u16.to_ne_bytes(), &[0, 0],         // IPVS_SVC_ATTR_PROTOCOL: TCP
            &[20, 0, 3, 0], &[172, 30, 0, 10], &[0; 12],         // IPVS_SVC_ATTR_ADDR: 16 bytes
            &[6, 0, 4, 0], &[0, 80], &[0, 0],                    // IPVS_SVC_ATTR_PORT: be16 80
            &[7, 0, 6, 0], b"rr\0", &[0],                        // IPVS_SVC_ATTR_SCHED_NAME
            &[12, 0, 7, 0], &[0; 8],                             // IPVS_SVC_ATTR_FLAGS: flags, mask
            &[8, 0, 8, 0], &0u32.to_ne_bytes(),                  // IPVS_SVC_ATTR_TIMEOUT
            &[8, 0, 9, 0], &u32::MAX.to_ne_bytes(),              // IPVS_SVC_ATTR_NETMASK
        ]
        .concat();
        assert_eq!(dumped.len(), 4 + 84);
        let v = parse_service(&dumped).expect("a service");
        assert_eq!(v.ip(), Some("172.30.0.10".parse().unwrap()));
        assert_eq!(v.describe(), "TCP 172.30.0.10:80");
        let msg = nl::message(
            0x22,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            3,
            &del_service_request(&v),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[68, 0, 0, 0][..],  // nlmsg_len: 16 + 4 + 48
            &[0x22, 0],
            &[0x05, 0],          // NLM_F_REQUEST | NLM_F_ACK
            &[3, 0, 0, 0],
            &[0, 0, 0, 0],
            &[3, 1, 0, 0],       // genlmsghdr: IPVS_CMD_DEL_SERVICE, IPVS_GENL_VERSION
            &[48, 0, 1, 0],      // IPVS_CMD_ATTR_SERVICE (nested, as the kernel dumps it)
            &[6, 0, 1, 0], &[2, 0], &[0, 0],               // AF: AF_INET, u16
            &[6, 0, 2, 0], &[6, 0], &[0, 0],               // PROTOCOL: IPPROTO_TCP, u16
            &[20, 0, 3, 0], &[172, 30, 0, 10], &[0; 12],   // ADDR: union nf_inet_addr
            &[6, 0, 4, 0], &[0, 80], &[0, 0],              // PORT: be16
        ]
        .concat();
        if le() {
            assert_eq!(msg, expected);
        }
    }

    #[test]
    fn ipv6_and_firewall_mark_services() {
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0xfd, 0x00]);
        addr[15] = 10;
        let v6 = VirtualServer {
            af: libc::AF_INET6 as u16,
            protocol: 17,
            addr,
            port: 53,
            fwmark: None,
        };
        assert_eq!(v6.describe(), "UDP [fd00::a]:53");
        let fwm = VirtualServer {
            af: libc::AF_INET as u16,
            protocol: 0,
            addr: [0; 16],
            port: 0,
            fwmark: Some(7),
        };
        assert!(
            !fwm.is_kube_proxys(&[]),
            "kube-proxy never makes fwmark services"
        );
        let p = del_service_request(&fwm);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[3, 1, 0, 0][..],
            &[20, 0, 1, 0],
            &[6, 0, 1, 0], &2u16.to_ne_bytes(), &[0, 0],   // AF_INET
            &[8, 0, 5, 0], &7u32.to_ne_bytes(),            // IPVS_SVC_ATTR_FWMARK
        ]
        .concat();
        assert_eq!(p, expected);
    }

    #[test]
    fn excluded_cidrs_are_not_kube_proxys() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, 5]);
        let v = VirtualServer {
            af: libc::AF_INET as u16,
            protocol: 6,
            addr,
            port: 6443,
            fwmark: None,
        };
        assert!(v.is_kube_proxys(&[]));
        assert!(v.is_kube_proxys(&["10.0.0.0/8".parse().unwrap()]));
        assert!(!v.is_kube_proxys(&["192.0.2.0/24".parse().unwrap()]));
    }

    #[test]
    fn messages_of_other_commands_are_not_services() {
        assert_eq!(parse_service(&[IPVS_CMD_DEL_SERVICE, 1, 0, 0]), None);
        assert_eq!(parse_service(&[]), None);
    }
}
