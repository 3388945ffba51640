//! kube-proxy's ipsets (IPVS mode's `KUBE-CLUSTER-IP`, `KUBE-LOOP-BACK`,
//! `KUBE-NODE-PORT-TCP`, ...), destroyed over ipset's netlink protocol (nfnetlink
//! subsystem `NFNL_SUBSYS_IPSET`, linux/netfilter/ipset/ip_set.h).
//!
//! A set that a rule still references cannot be destroyed (`IPSET_ERR_BUSY`), so this
//! runs after kube-proxy's iptables rules are gone. An nftables rule (iptables-nft's
//! `-m set` is an `xt_set` match inside one) lets go of its set only after the
//! transaction that deleted it has been committed and an RCU grace period has passed,
//! so a busy set is tried again for a short while before it is reported.

#![forbid(unsafe_code)]

use std::time::Duration;

use super::nl::{self, Attrs, Socket};

/// `NFNL_SUBSYS_IPSET` (linux/netfilter/nfnetlink.h).
pub const NFNL_SUBSYS_IPSET: u16 = 6;
/// `IPSET_PROTOCOL`: the protocol version we speak.
pub const IPSET_PROTOCOL: u8 = 7;
/// `IPSET_PROTOCOL_MIN`: what kernels before protocol 7 (Linux 5.4 and older) speak;
/// every message we send means the same in both.
pub const IPSET_PROTOCOL_MIN: u8 = 6;
/// `IPSET_CMD_DESTROY`.
pub const IPSET_CMD_DESTROY: u16 = 3;
/// `IPSET_CMD_LIST`.
pub const IPSET_CMD_LIST: u16 = 7;
/// `IPSET_ATTR_PROTOCOL`: u8, required in every message.
pub const IPSET_ATTR_PROTOCOL: u16 = 1;
/// `IPSET_ATTR_SETNAME`: string.
pub const IPSET_ATTR_SETNAME: u16 = 2;
/// `IPSET_ATTR_FLAGS`: be32.
pub const IPSET_ATTR_FLAGS: u16 = 6;
/// `IPSET_FLAG_LIST_SETNAME`: list the names only.
pub const IPSET_FLAG_LIST_SETNAME: u32 = 1 << 1;
/// `IPSET_ERR_PROTOCOL`: the kernel does not speak that protocol version.
pub const IPSET_ERR_PROTOCOL: i32 = 4097;
/// `IPSET_ERR_BUSY`: the set is referenced.
pub const IPSET_ERR_BUSY: i32 = 4100;

/// How long a set still referenced is tried again (rounds × pause).
const BUSY_ROUNDS: usize = 40;
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// `struct nfgenmsg` as ipset's own tool sends it: family `AF_INET`, version
/// `NFNETLINK_V0`, resource id 0.
fn nfgenmsg() -> Vec<u8> {
    vec![libc::AF_INET as u8, 0, 0, 0]
}

fn msg_type(cmd: u16) -> u16 {
    (NFNL_SUBSYS_IPSET << 8) | cmd
}

/// The payload of the dump request for every set's name.
pub fn list_names_request(protocol: u8) -> Vec<u8> {
    let mut p = nfgenmsg();
    p.extend(
        Attrs::new()
            .u8(IPSET_ATTR_PROTOCOL, protocol)
            .be32(IPSET_ATTR_FLAGS, IPSET_FLAG_LIST_SETNAME)
            .into_bytes(),
    );
    p
}

/// The payload of the request that destroys the set `name`. (Without a name, the
/// kernel would destroy every set: `name` is never empty here.)
pub fn destroy_request(protocol: u8, name: &str) -> Vec<u8> {
    let mut p = nfgenmsg();
    p.extend(
        Attrs::new()
            .u8(IPSET_ATTR_PROTOCOL, protocol)
            .str(IPSET_ATTR_SETNAME, name)
            .into_bytes(),
    );
    p
}

/// The set name in one message of a list dump.
pub fn parse_name(reply: &[u8]) -> Option<String> {
    nl::find(reply.get(4..)?, IPSET_ATTR_SETNAME).map(nl::string)
}

/// What the ipset step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// the kernel has no ipset support
    pub no_ipset: bool,
    /// sets destroyed
    pub destroyed: Vec<String>,
    /// sets that could not be destroyed, and why
    pub failed: Vec<String>,
}

/// Every set's name; `None` if the kernel has no ipset. Also returns the protocol
/// version the kernel accepted.
fn list_names(sock: &mut Socket) -> Result<Option<(u8, Vec<String>)>, nl::Error> {
    for protocol in [IPSET_PROTOCOL, IPSET_PROTOCOL_MIN] {
        match sock.request(
            "IPSET_CMD_LIST",
            msg_type(IPSET_CMD_LIST),
            nl::NLM_F_DUMP,
            &list_names_request(protocol),
        ) {
            Ok(replies) => {
                let names = replies.iter().filter_map(|r| parse_name(r)).collect();
                return Ok(Some((protocol, names)));
            }
            Err(e) if e.errno() == Some(IPSET_ERR_PROTOCOL) => continue,
            // nfnetlink has no handler for the subsystem: no ipset in this kernel.
            Err(e) if e.errno() == Some(libc::EINVAL) || e.errno() == Some(libc::ENOENT) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Destroys every set whose name `wanted` accepts.
pub fn remove(wanted: impl Fn(&str) -> bool) -> Result<Outcome, nl::Error> {
    let mut sock = Socket::open(mnl::Bus::Netfilter)?;
    let Some((protocol, names)) = list_names(&mut sock)? else {
        return Ok(Outcome {
            no_ipset: true,
            ..Outcome::default()
        });
    };
    let mut todo: Vec<String> = names
        .into_iter()
        .filter(|n| !n.is_empty() && wanted(n))
        .collect();
    let mut out = Outcome::default();
    for round in 0..BUSY_ROUNDS {
        let mut busy = Vec::new();
        for name in todo {
            match sock.request(
                &format!("IPSET_CMD_DESTROY {name}"),
                msg_type(IPSET_CMD_DESTROY),
                0,
                &destroy_request(protocol, &name),
            ) {
                Ok(_) => out.destroyed.push(name),
                // Gone meanwhile: what we wanted.
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                Err(e) if e.errno() == Some(IPSET_ERR_BUSY) || e.errno() == Some(libc::EBUSY) => {
                    busy.push((name, e))
                }
                Err(e) => out
                    .failed
                    .push(format!("{name}: {}", crate::error_text::error_chain(&e))),
            }
        }
        if busy.is_empty() {
            if round > 0 {
                tracing::debug!(rounds = round + 1, "every ipset destroyed");
            }
            break;
        }
        if round + 1 == BUSY_ROUNDS {
            for (name, _) in busy {
                out.failed.push(format!(
                    "{name}: still referenced after kube-proxy's rules were removed (by a rule that is not kube-proxy's?)"
                ));
            }
            break;
        }
        tracing::debug!(
            round,
            busy = busy.len(),
            "ipsets still referenced; trying again"
        );
        todo = busy.into_iter().map(|(n, _)| n).collect();
        std::thread::sleep(BUSY_PAUSE);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes from linux/netlink.h, linux/netfilter/nfnetlink.h (struct
    // nfgenmsg, NFNL_SUBSYS_IPSET) and linux/netfilter/ipset/ip_set.h, little-endian.

    #[test]
    fn destroy_names_the_set_and_the_protocol() {
        let msg = nl::message(
            msg_type(IPSET_CMD_DESTROY),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            5,
            &destroy_request(IPSET_PROTOCOL, "KUBE-CLUSTER-IP"),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[48, 0, 0, 0][..],   // nlmsg_len: 16 + 4 + 8 + 20
            &[0x03, 0x06],        // nlmsg_type: NFNL_SUBSYS_IPSET << 8 | IPSET_CMD_DESTROY
            &[0x05, 0],           // NLM_F_REQUEST | NLM_F_ACK
            &[5, 0, 0, 0],
            &[0, 0, 0, 0],
            &[2, 0, 0, 0],        // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0 (be16)
            &[5, 0, 1, 0], &[7], &[0, 0, 0],            // IPSET_ATTR_PROTOCOL: 7
            &[20, 0, 2, 0], b"KUBE-CLUSTER-IP\0",       // IPSET_ATTR_SETNAME
        ]
        .concat();
        if cfg!(target_endian = "little") {
            assert_eq!(msg, expected);
        }
    }

    #[test]
    fn listing_asks_for_names_only() {
        let msg = nl::message(
            msg_type(IPSET_CMD_LIST),
            nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_DUMP,
            6,
            &list_names_request(IPSET_PROTOCOL_MIN),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[36, 0, 0, 0][..],   // nlmsg_len: 16 + 4 + 8 + 8
            &[0x07, 0x06],        // IPSET_CMD_LIST
            &[0x05, 0x03],        // NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP
            &[6, 0, 0, 0],
            &[0, 0, 0, 0],
            &[2, 0, 0, 0],
            &[5, 0, 1, 0], &[6], &[0, 0, 0],            // IPSET_ATTR_PROTOCOL: 6
            &[8, 0, 6, 0], &[0, 0, 0, 2],               // IPSET_ATTR_FLAGS: be32 LIST_SETNAME
        ]
        .concat();
        if cfg!(target_endian = "little") {
            assert_eq!(msg, expected);
        }
        // One message of the kernel's answer: nfgenmsg, protocol, name.
        #[rustfmt::skip]
        let reply: Vec<u8> = [
            &[2, 0, 0, 0][..],
            &[5, 0, 1, 0], &[7], &[0, 0, 0],
            &[19, 0, 2, 0], b"KUBE-LOOP-BACK\0", &[0],
        ]
        .concat();
        assert_eq!(parse_name(&reply).as_deref(), Some("KUBE-LOOP-BACK"));
    }
}
