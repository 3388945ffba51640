//! Where cluster objects come from.

pub mod manifests;
