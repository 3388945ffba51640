//! `explain` from the kernel and `explain` from the objects agree on every conformance
//! flow (issue 10, acceptance 2).
//!
//! The shared runner's `--explain` mode programs each case's node namespace with our
//! binary (`--manifests FILE --once`) and then asks `explain` (reading the kernel) about
//! every flow. Here the runner is given a wrapper instead of the binary: on `--once` it
//! keeps a copy of the manifests and the flags, per network namespace; on `explain` it
//! runs our binary twice, once reading the kernel and once with those manifests and
//! flags, and fails the flow (exit 3, both answers on stderr) when the verdict, the
//! endpoints or the masquerade flag differ. Otherwise it prints the kernel's answer,
//! which the runner then judges against upstream's expectation as usual. So every flow
//! passes only when both sources agree and both are right.
//!
//! A negative control runs one case with the objects side given `--masquerade-all`,
//! which changes the masquerade flag of some flows: the wrapper must catch it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_privileged, TempDir, BIN};

const WRAPPER: &str = r#"#!/bin/bash
# Our binary, with `explain` answered from the kernel and from the objects and compared.
set -u
state="$KNP_AGREE_STATE/$(ip netns identify $$ 2>/dev/null || echo default)"
if [ "${1:-}" = explain ]; then
    shift
    kernel=$("$KNP_AGREE_BIN" explain "$@") || { echo "$kernel"; exit 1; }
    mapfile -t flags < "$state.flags"
    objects=$("$KNP_AGREE_BIN" explain "$@" --manifests "$state.json" "${flags[@]}" ${KNP_AGREE_PERTURB:-}) \
        || { echo "objects: $objects" >&2; exit 1; }
    if ! python3 - "$kernel" "$objects" <<'EOF'
import json, sys
k, o = (json.loads(a) for a in sys.argv[1:3])
pick = lambda d: (d["verdict"], sorted(d["endpoints"]), d["masquerade"])
sys.exit(0 if pick(k) == pick(o) else 1)
EOF
    then
        echo "kernel and objects disagree: kernel $kernel objects $objects" >&2
        exit 3
    fi
    echo "$kernel"
    exit 0
fi
# A sync: keep the manifests and the flags (everything but --manifests FILE and --once).
args=("$@")
: > "$state.flags"
i=0
while [ $i -lt ${#args[@]} ]; do
    a="${args[$i]}"
    if [ "$a" = --manifests ]; then
        i=$((i + 1)); cp "${args[$i]}" "$state.json"
    elif [ "$a" != --once ]; then
        printf '%s\n' "$a" >> "$state.flags"
    fi
    i=$((i + 1))
done
exec "$KNP_AGREE_BIN" "$@"
"#;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance")
}

fn json_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

/// Runs the shared runner in `--explain` mode through the wrapper; returns
/// (passed, failed, output).
fn run_flows(tmp: &TempDir, cases: &[String], perturb: &str) -> (usize, usize, String) {
    let wrapper = tmp.path().join("knp-agree");
    std::fs::write(&wrapper, WRAPPER).expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the wrapper");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir state");
    let out = Command::new(shared().join("run-flows"))
        .arg("--explain")
        .args(["--jobs", "2", "--bin"])
        .arg(&wrapper)
        .args(cases)
        .env("KNP_AGREE_BIN", BIN)
        .env("KNP_AGREE_STATE", &state)
        .env("KNP_AGREE_PERTURB", perturb)
        .output()
        .expect("run run-flows");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" passed, ") && l.contains(" failed"))
        .unwrap_or_else(|| panic!("no summary from run-flows:\n{text}"));
    let num = |word: &str| -> usize {
        let words: Vec<&str> = summary
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .collect();
        let i = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no {word} in {summary:?}"));
        words[i - 1].parse().expect("a count")
    };
    (num("passed"), num("failed"), text)
}

#[test]
fn explain_from_kernel_and_from_objects_agree_on_every_conformance_flow() {
    if !require_privileged() {
        return;
    }
    let tmp = TempDir::new("explain-agree");
    let mut cases = json_files(&shared().join("cases"));
    cases.extend(json_files(&shared().join("repros")));
    cases.extend(json_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases"),
    ));
    let (passed, failed, text) = run_flows(&tmp, &cases, "");
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed, 0, "flows failed:\n{}", fails.join("\n"));
    // The shared cases hold 350-odd flows; fewer means cases were not run.
    assert!(passed >= 300, "only {passed} flows passed:\n{text}");
}

#[test]
fn a_disagreement_between_kernel_and_objects_fails_the_flow() {
    if !require_privileged() {
        return;
    }
    let tmp = TempDir::new("explain-disagree");
    // Every ClusterIP flow from outside the pod network changes its masquerade flag
    // with --masquerade-all on the objects side only.
    let case = json_files(&shared().join("cases"))
        .into_iter()
        .find(|c| c.ends_with("TestOverallNFTablesRules.json"))
        .expect("the shared case TestOverallNFTablesRules.json");
    let (_, failed, text) = run_flows(&tmp, &[case], "--masquerade-all");
    assert!(
        failed > 0
            && text
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains("exit 3")),
        "the wrapper let a disagreement through:\n{text}"
    );
}
