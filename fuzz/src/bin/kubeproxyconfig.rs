//! AFL target: the KubeProxyConfiguration parser (see `targets::kubeproxyconfig`).
#[path = "../targets.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| targets::kubeproxyconfig(data));
}
