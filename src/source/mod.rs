//! Where cluster objects come from.

pub mod kube;
pub mod manifests;
