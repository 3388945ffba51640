//! kube-nft-proxy: a per-node Kubernetes service proxy that programs nftables through
//! netlink. See `DESIGN.md` in the shared folder and the README for the architecture.
#![deny(unsafe_code)]

pub mod allocator;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod daemon;
pub mod error_text;
pub mod explain;
pub mod health;
pub mod host;
pub mod kubeproxyconfig;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod netlink;
pub mod proxier;
pub mod quarantine;
pub mod ruleset;
pub mod source;
pub mod synthetic;
pub mod topology;
pub mod trace;
