//! kube-proxy's IPVS mode binds every Service address to a dummy interface,
//! `kube-ipvs0`; it is removed over rtnetlink, by name, as upstream's cleanup does
//! (`DeleteDummyDevice`), whatever kind of link holds the name.

#![forbid(unsafe_code)]

use super::nl::{self, Attrs, Socket};

/// The interface kube-proxy's IPVS mode creates (`DefaultDummyDevice`).
pub const KUBE_IPVS0: &str = "kube-ipvs0";

/// `RTM_DELLINK` (linux/rtnetlink.h).
pub const RTM_DELLINK: u16 = 17;
/// `RTM_GETLINK`.
pub const RTM_GETLINK: u16 = 18;
/// `IFLA_IFNAME` (linux/if_link.h): the interface's name, a NUL-terminated string.
pub const IFLA_IFNAME: u16 = 3;
/// `IFLA_LINKINFO`: nested, with `IFLA_INFO_KIND` (1), the link's kind.
pub const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;

/// `struct ifinfomsg` with every field 0 (family `AF_UNSPEC`, index 0: the kernel then
/// looks the link up by `IFLA_IFNAME`).
const IFINFOMSG_ANY: [u8; 16] = [0; 16];

/// A request about the link named `name`: `struct ifinfomsg` (16 bytes of zeros), then
/// `IFLA_IFNAME`.
pub fn by_name(name: &str) -> Vec<u8> {
    let mut p = IFINFOMSG_ANY.to_vec();
    p.extend(Attrs::new().str(IFLA_IFNAME, name).into_bytes());
    p
}

/// The kind (`dummy`, `bridge`, ...) of the link named `name`, `Some("")` for a link
/// without one, `None` if there is no such link.
pub fn kind(sock: &mut Socket, name: &str) -> Result<Option<String>, nl::Error> {
    match sock.request(
        &format!("RTM_GETLINK {name}"),
        RTM_GETLINK,
        0,
        &by_name(name),
    ) {
        Ok(replies) => Ok(Some(
            replies
                .iter()
                .filter_map(|r| r.get(IFINFOMSG_ANY.len()..))
                .filter_map(|a| nl::find(a, IFLA_LINKINFO))
                .filter_map(|li| nl::find(li, IFLA_INFO_KIND))
                .map(nl::string)
                .next()
                .unwrap_or_default(),
        )),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the link named `name`; `false` if there was none.
pub fn delete(sock: &mut Socket, name: &str) -> Result<bool, nl::Error> {
    match sock.request(
        &format!("RTM_DELLINK {name}"),
        RTM_DELLINK,
        0,
        &by_name(name),
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole `RTM_DELLINK` message for `kube-ipvs0`, from linux/netlink.h,
    /// linux/rtnetlink.h and linux/if_link.h (little-endian host).
    #[test]
    fn dellink_by_name_bytes() {
        let msg = nl::message(
            RTM_DELLINK,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            7,
            &by_name(KUBE_IPVS0),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // struct nlmsghdr
            &[48, 0, 0, 0][..],   // nlmsg_len: 16 + 16 + 16
            &[17, 0],             // nlmsg_type: RTM_DELLINK
            &[0x05, 0],           // nlmsg_flags: NLM_F_REQUEST | NLM_F_ACK
            &[7, 0, 0, 0],        // nlmsg_seq
            &[0, 0, 0, 0],        // nlmsg_pid: 0, the kernel
            // struct ifinfomsg
            &[0],                 // ifi_family: AF_UNSPEC
            &[0],                 // __ifi_pad
            &[0, 0],              // ifi_type
            &[0, 0, 0, 0],        // ifi_index: 0, look up by name
            &[0, 0, 0, 0],        // ifi_flags
            &[0, 0, 0, 0],        // ifi_change
            // IFLA_IFNAME: nla_len 15 (4 + "kube-ipvs0" + NUL), nla_type 3, padded to 16
            &[15, 0, 3, 0],
            b"kube-ipvs0\0",
            &[0],
        ]
        .concat();
        if cfg!(target_endian = "little") {
            assert_eq!(msg, expected);
        }
        assert_eq!(msg.len(), 48);
    }
}
