//! Kubernetes objects → service ports and endpoints. Plain data: no I/O, no async.

pub mod convert;
pub mod objects;
#[cfg(test)]
mod reference;
pub mod state;
pub mod types;

pub use convert::{special_address, NodeInfo, Problem, Problems};
pub use objects::{EndpointSlice, Node, Service, ServiceCidr};
pub use state::{ClusterState, Object, ProxyModel, ServiceEntry};
pub use types::*;
