//! The client / node / backends topology of the packet tests:
//!
//! ```text
//!  client                    node (the proxy runs here)            backends
//!  eth0 CLIENT/24 ------ to-client GATEWAY/24
//!  default via GATEWAY       to-backends 10.0.2.1/24 ---- eth0 10.0.2.10/24, .11, ...
//!                            ip_forward=1                 default via 10.0.2.1
//!                            default via 10.0.2.254 (no such host)
//! ```
//!
//! With `dual_stack`, also fd00:10:1::/64 on the client side and fd00:10:2::/64 on the
//! backend side. The node's default route points at an address nobody holds: a packet
//! the proxy does not handle goes nowhere (a timeout), never to a backend by accident.

// Shared test support: not every test crate uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use super::{veth, NetNs};

pub const NODE_NAME: &str = "node1";
/// The node's address on the backend network: its InternalIP (primary node IP).
pub const NODE_IP: &str = "10.0.2.1";
pub const NODE_IP6: &str = "fd00:10:2::1";
pub const CLUSTER_CIDR: &str = "10.0.0.0/16";
pub const CLUSTER_CIDR6: &str = "fd00:10::/32";
pub const CLIENT6: &str = "fd00:10:1::2";
pub const GATEWAY6: &str = "fd00:10:1::1";

/// The client's IPv4 network: its address and the node's address (/24) facing it.
#[derive(Clone, Copy)]
pub struct Net {
    pub client: &'static str,
    pub gateway: &'static str,
}

/// A pod client (inside `--cluster-cidr`).
pub const POD_CLIENT: Net = Net {
    client: "10.0.1.2",
    gateway: "10.0.1.1",
};

/// How to build a [`Topology`].
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    /// the client's IPv4 network
    pub net: Net,
    /// IPv4 addresses of the backends namespace (/24, on the node's network)
    pub backends: &'a [&'a str],
    /// `net.ipv4.icmp_ratelimit=0` on the node, so that no refusal (an ICMP error the
    /// node sends) is swallowed by its rate limit (a burst of 6, then 1/s)
    pub no_icmp_ratelimit: bool,
    /// `ip link set lo up` on the node once more, after its routes
    pub node_lo_up: bool,
    /// IPv6 addresses of the backends namespace; `Some` makes the topology dual-stack
    pub backends6: Option<&'a [&'a str]>,
}

impl<'a> Setup<'a> {
    /// A pod client, IPv4 only, ICMP rate limit off, on `backends`.
    pub fn new(backends: &'a [&'a str]) -> Setup<'a> {
        Setup {
            net: POD_CLIENT,
            backends,
            no_icmp_ratelimit: true,
            node_lo_up: false,
            backends6: None,
        }
    }
}

pub struct Topology {
    pub client: NetNs,
    pub node: NetNs,
    pub backends: NetNs,
    pub dual_stack: bool,
}

impl Topology {
    /// Builds the three namespaces; a dual-stack setup adds the IPv6 networks (and
    /// waits until duplicate address detection is over, so every address is usable).
    pub fn new(tag: &str, setup: Setup<'_>) -> Topology {
        let net = setup.net;
        let t = Topology {
            client: NetNs::new(&format!("{tag}-c")),
            node: NetNs::new(&format!("{tag}-n")),
            backends: NetNs::new(&format!("{tag}-b")),
            dual_stack: setup.backends6.is_some(),
        };
        veth(&t.client, "eth0", &t.node, "to-client");
        veth(&t.node, "to-backends", &t.backends, "eth0");

        t.client
            .ip(&["addr", "add", &format!("{}/24", net.client), "dev", "eth0"]);
        t.client
            .ip(&["route", "add", "default", "via", net.gateway]);

        t.node.ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            "to-client",
        ]);
        t.node.ip(&[
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "to-backends",
        ]);
        t.node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.0.2.254",
            "dev",
            "to-backends",
        ]);
        if setup.node_lo_up {
            t.node.ip(&["link", "set", "lo", "up"]);
        }
        t.node.sysctl("net.ipv4.ip_forward=1");
        if setup.no_icmp_ratelimit {
            t.node.sysctl("net.ipv4.icmp_ratelimit=0");
        }

        for b in setup.backends {
            t.backends
                .ip(&["addr", "add", &format!("{b}/24"), "dev", "eth0"]);
        }
        t.backends.ip(&["route", "add", "default", "via", NODE_IP]);

        if let Some(backends6) = setup.backends6 {
            let add6 = |ns: &NetNs, addr: &str, dev: &str| {
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
            };
            add6(&t.client, CLIENT6, "eth0");
            t.client
                .ip(&["-6", "route", "add", "default", "via", GATEWAY6]);
            add6(&t.node, GATEWAY6, "to-client");
            add6(&t.node, NODE_IP6, "to-backends");
            t.node.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:10:2::254",
                "dev",
                "to-backends",
            ]);
            t.node.sysctl("net.ipv6.conf.all.forwarding=1");
            t.node.sysctl("net.ipv6.icmp.ratelimit=0");
            for b in backends6 {
                add6(&t.backends, b, "eth0");
            }
            t.backends
                .ip(&["-6", "route", "add", "default", "via", NODE_IP6]);
            // The link-local addresses still go through DAD.
            for ns in [&t.client, &t.node, &t.backends] {
                wait_no_tentative(ns);
            }
        }
        t
    }

    /// Runs the proxy once in the node namespace on `manifests`, with the pod networks
    /// of the families in use as `--cluster-cidr`.
    pub fn program(&self, manifests: &str) {
        let cidrs = if self.dual_stack {
            format!("{CLUSTER_CIDR},{CLUSTER_CIDR6}")
        } else {
            CLUSTER_CIDR.to_string()
        };
        self.node.proxy(&[
            "--manifests",
            manifests,
            "--once",
            "--hostname-override",
            NODE_NAME,
            "--cluster-cidr",
            &cidrs,
        ]);
    }

    /// The node's ruleset, for failure messages.
    pub fn ruleset(&self) -> String {
        self.node.run(&["nft", "list", "ruleset"])
    }
}

/// Waits (bounded: 10 s) until no IPv6 address of `ns` is tentative.
pub fn wait_no_tentative(ns: &NetNs) {
    for _ in 0..100 {
        if ns
            .ip(&["-6", "addr", "show", "tentative"])
            .trim()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{}: IPv6 addresses still tentative after 10 s:\n{}",
        ns.name(),
        ns.ip(&["-6", "addr", "show"])
    );
}
