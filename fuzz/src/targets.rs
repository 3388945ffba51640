#![allow(dead_code)] // each AFL binary uses one of the targets
//! The fuzz targets' bodies, shared by the AFL binaries (`src/bin/`) and by the
//! project's corpus replay test (`tests/fuzz_corpus.rs`), so that every input in the
//! corpus and every crash once found is checked by `cargo test` too.
//!
//! Each target panics on a broken property, not only on a crash: AFL records a panic
//! as a crash.

use kube_nft_proxy::kubeproxyconfig;
use kube_nft_proxy::source::manifests::{parse_into, Loaded};
use serde::Deserialize;

/// The manifest loader on arbitrary text. Properties: no panic; and when the whole
/// stream parses as YAML and nothing was refused, loading it document by document
/// (which the loader does so that one bad document cannot hide the others) gives the
/// same objects as parsing the stream in one go.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = Loaded::default();
    parse_into(text, "fuzz.yaml", &mut out);
    let trimmed = text.trim_start();
    if !out.problems.is_empty() || trimmed.starts_with('{') || trimmed.starts_with('[') {
        return;
    }
    let mut whole = Loaded::default();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => {}
            // Round-trip each document through JSON text: the loader's JSON path ends
            // in the same object conversion as its YAML path.
            Ok(v) => parse_into(&v.to_string(), "fuzz.json", &mut whole),
            Err(_) => return,
        }
    }
    if !whole.problems.is_empty() {
        return;
    }
    assert_eq!(
        format!("{:?}", whole.objects),
        format!("{:?}", out.objects),
        "document-by-document loading differs from whole-stream parsing for {text:?}"
    );
}

/// The KubeProxyConfiguration parser on arbitrary text. Properties: no panic; and what
/// it accepts, written back with `to_yaml` (as `--write-config-to` does), parses to
/// an equal value, as `to_yaml`'s documentation promises.
pub fn kubeproxyconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((cfg, _unknown)) = kubeproxyconfig::parse(text) else {
        return;
    };
    let _ = cfg.to_args();
    let _ = cfg.warnings();
    let yaml = kubeproxyconfig::to_yaml(&cfg);
    match kubeproxyconfig::parse(&yaml) {
        Ok((again, _)) => assert_eq!(again, cfg, "to_yaml does not round-trip:\n{yaml}"),
        Err(e) => panic!("to_yaml wrote what parse refuses ({e}):\n{yaml}"),
    }
}
