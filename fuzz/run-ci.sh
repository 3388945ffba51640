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
# Needs: cargo-afl (installed here from crates.io if missing) and its AFL++ build
# (`cargo afl config --build`, made once per toolchain, about a minute), make and a C
# compiler. The first instrumented build of the project takes several minutes; later
# ones reuse fuzz/target.
set -euo pipefail
cd "$(dirname "$0")"

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
