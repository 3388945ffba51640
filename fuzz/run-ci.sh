#!/usr/bin/env bash
# Coverage-guided fuzzing of the manifest loader and the KubeProxyConfiguration parser
# with AFL++ through cargo-afl, on the stable toolchain. A bounded run for CI:
#
#   bash fuzz/run-ci.sh            # each target FUZZ_SECONDS (default 25) seconds
#   FUZZ_SECONDS=3600 bash fuzz/run-ci.sh manifests   # one target, longer
#
# Fails (exit 1) if AFL records a crash (a panic: the targets assert properties) or a
# hang (an input that takes over FUZZ_TIMEOUT_MS to load). Findings are copied to
# fuzz/findings/TARGET/; replay one with `fuzz/target/release/TARGET < FILE`. Add a
# fixed finding to fuzz/corpus/TARGET/ so that `cargo test` replays it for ever
# (tests/fuzz_corpus.rs).
#
# Needs: cargo-afl (installed here from crates.io if missing; installing it also builds
# AFL++ for this toolchain, about a minute), make and a C compiler.
#
# The instrumented build is the cost: every dependency (k8s-openapi, kube, tokio, ...)
# is built with AFL's coverage passes and one codegen unit. cargo-afl optimizes at
# opt-level 3 by default; here the default is AFL_OPT_LEVEL=0, which on a fresh machine
# took 147 s of CPU instead of 585 s, and ran about as many executions per second (the
# fork server dominates) with the same coverage in 25 s. For long runs set
# AFL_OPT_LEVEL=3 (a full rebuild). Later runs reuse fuzz/target.
set -euo pipefail
cd "$(dirname "$0")"
# The paths below (target/release/TARGET) are this workspace's own target directory,
# whatever the caller's CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="$PWD/target"
export AFL_OPT_LEVEL=${AFL_OPT_LEVEL:-0}

seconds=${FUZZ_SECONDS:-25}
timeout_ms=${FUZZ_TIMEOUT_MS:-2000}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifests kubeproxyconfig)

if ! cargo afl --version >/dev/null 2>&1; then
  cargo install cargo-afl --locked --version 0.18.2
fi
# Builds AFL++ for this toolchain once; says "already built" (and exits non-zero)
# after that.
if ! out=$(cargo afl config --build 2>&1); then
  if ! grep -q "already built" <<<"$out"; then
    echo "$out" >&2
    exit 1
  fi
fi

cargo afl build --release --locked

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 \
  AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1
status=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  echo "fuzzing $t for ${seconds}s"
  cargo afl fuzz -V "$seconds" -t "$timeout_ms" -i "corpus/$t" -o "$work" \
    -x dict/yaml.dict -- "target/release/$t" >"$work/log" 2>&1 || {
    tail -30 "$work/log" >&2
    status=1
  }
  stats="$work/default/fuzzer_stats"
  if [ -f "$stats" ]; then
    grep -E '^(execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs) ' "$stats" |
      sed "s/^/  $t: /"
  fi
  found=0
  for kind in crashes hangs; do
    for f in "$work/default/$kind"/id:*; do
      [ -e "$f" ] || continue
      found=1
      mkdir -p "findings/$t"
      cp "$f" "findings/$t/$kind-$(basename "$f" | tr ':,' '__')"
    done
  done
  if [ "$found" = 1 ]; then
    echo "$t: AFL found crashes or hangs, copied to fuzz/findings/$t/" >&2
    status=1
  fi
  rm -rf "$work"
done
exit "$status"
