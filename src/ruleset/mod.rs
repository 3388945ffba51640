//! The ruleset: IR, builder, nft text render and diff.

pub mod build;
pub mod diff;
pub mod fake;
pub mod incremental;
pub mod ir;
pub mod render;

pub use build::{build, BuildConfig, PodInterface};
pub use ir::{Family, Ruleset, Table};
