//! Replays the fuzz corpus (`fuzz/corpus/TARGET/`) through the fuzz targets' own
//! bodies, so every seed and every fixed finding stays checked by `cargo test` without
//! AFL. The fuzzing itself: `bash fuzz/run-ci.sh`.

#[path = "../fuzz/src/targets.rs"]
mod targets;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{dir:?}: {e}")).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        eprintln!("{target}: {}", path.display());
        run(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus in {dir:?}");
}

#[test]
fn manifests_corpus() {
    replay("manifests", targets::manifests);
}

#[test]
fn kubeproxyconfig_corpus() {
    replay("kubeproxyconfig", targets::kubeproxyconfig);
}
