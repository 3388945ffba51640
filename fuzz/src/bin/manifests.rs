//! AFL target: the manifest loader (see `targets::manifests`).
#[path = "../targets.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| targets::manifests(data));
}
