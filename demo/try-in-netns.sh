#!/usr/bin/env bash
# Programs the demo cluster into a throwaway network namespace, lists the result, and
# removes the namespace again. Needs root; never touches the host's own ruleset.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${KNP_BIN:-target/release/kube-nft-proxy}
[ -x "$bin" ] || cargo build --release
ns="knp-demo-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$bin" --manifests demo/cluster.yaml --once \
  --hostname-override demo-node --cluster-cidr 10.244.0.0/16,fd00:244::/48
ip netns exec "$ns" nft list table ip kube-nft-proxy
