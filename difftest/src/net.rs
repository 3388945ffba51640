//! IP address and CIDR helpers shared by the model and the generator.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parse an IP literal the way kube-proxy does (`netutils.ParseIPSloppy`):
/// IPv4 octets with leading zeros are read as decimal. Upstream test data
/// keeps such quirks, so the model must accept them.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let t = text.trim();
    if !t.contains(':') && t.contains('.') {
        let mut octets = [0u8; 4];
        let parts: Vec<&str> = t.split('.').collect();
        if parts.len() != 4 {
            return Err(format!("bad IPv4 address {t:?}"));
        }
        for (i, p) in parts.iter().enumerate() {
            octets[i] = p
                .parse::<u8>()
                .map_err(|_| format!("bad IPv4 address {t:?}"))?;
        }
        return Ok(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    t.parse::<IpAddr>()
        .map_err(|_| format!("bad IP address {t:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

pub fn family(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let (a, p) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr = parse_ip(a)?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| format!("bad prefix in {t:?}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("prefix too long in {t:?}"));
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn family(&self) -> Family {
        family(&self.addr)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                prefix_eq(&n.octets(), &i.octets(), self.prefix as usize)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                prefix_eq(&n.octets(), &i.octets(), self.prefix as usize)
            }
            _ => false,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let full = bits / 8;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// `ip:port`, or `[ip]:port` for IPv6, as run-flows prints endpoints.
pub fn hostport(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The IPv6 twin of an IPv4 address used by the generator: the address
/// embedded in `fd00:4::/96`, the scheme of the IPv6 repro in
/// ../shared/conformance/repros (10.180.3.1 -> fd00:4::ab4:301).
pub fn v6_twin(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(
        0xfd00,
        4,
        0,
        0,
        0,
        0,
        u16::from(o[0]) << 8 | u16::from(o[1]),
        u16::from(o[2]) << 8 | u16::from(o[3]),
    )
}

/// A CIDR's IPv6 twin: same embedding, prefix shifted by 96 bits.
pub fn v6_twin_cidr(c: &Cidr) -> Cidr {
    match c.addr {
        IpAddr::V4(a) => Cidr {
            addr: IpAddr::V6(v6_twin(a)),
            prefix: c.prefix + 96,
        },
        IpAddr::V6(_) => *c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_and_cidr() {
        assert_eq!(parse_ip("010.000.1.02").unwrap().to_string(), "10.0.1.2");
        let c = Cidr::parse(" 203.0.113.0/25").unwrap();
        assert!(c.contains(&parse_ip("203.0.113.2").unwrap()));
        assert!(!c.contains(&parse_ip("203.0.113.130").unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains(&parse_ip("fd00::1").unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&parse_ip("fd00::1").unwrap()));
        assert_eq!(
            v6_twin("10.180.3.1".parse().unwrap()).to_string(),
            "fd00:4::ab4:301"
        );
        let c6 = v6_twin_cidr(&Cidr::parse("10.0.0.0/8").unwrap());
        assert_eq!(c6.to_string(), "fd00:4::a00:0/104");
    }
}
