//! Unit tests: the model must reproduce the upstream expectations recorded in
//! ../shared/conformance (repros/*.json entirely; cases/*.json where in scope).

use crate::casefile::{flow_query, Case, Flow};
use crate::model::Model;
use crate::net::parse_ip;
use serde_json::Value;
use std::path::PathBuf;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
}

/// Scenarios of a file: the case itself, or each of its subtests.
fn scenarios(path: &PathBuf) -> Vec<(String, Case)> {
    let text = std::fs::read_to_string(path).expect("read case");
    let doc: Value = serde_json::from_str(&text).expect("parse case");
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    match doc.get("subtests").and_then(Value::as_array) {
        Some(subs) => subs
            .iter()
            .map(|s| {
                let sub: Case = serde_json::from_value(s.clone()).expect("subtest");
                let n = s.get("name").and_then(Value::as_str).unwrap_or("-");
                (format!("{name}/{n}"), sub)
            })
            .collect(),
        None => vec![(name, serde_json::from_value(doc).expect("case"))],
    }
}

/// Compare, ignoring masq for hairpin flows (run-flows judges those only on
/// the client's own endpoint, which is always masqueraded).
fn key(f: &Flow) -> String {
    let k = expectation_key(f);
    let src = parse_ip(&f.source_ip).ok();
    let hairpin = f.endpoints.iter().any(|e| {
        let host = e.rsplit_once(':').map_or(e.as_str(), |(h, _)| h);
        parse_ip(host.trim_start_matches('[').trim_end_matches(']')).ok() == src
    });
    if hairpin {
        k.replace(" masq=true", "").replace(" masq=false", "")
    } else {
        k
    }
}

/// Mismatches between the model and a scenario's recorded expectations.
fn mismatches(label: &str, case: &Case, skip: &[&str], compared: &mut usize) -> Vec<String> {
    let mut out = Vec::new();
    let states = case.states();
    for ((state, objects), flows) in states.iter().zip(case.flows_per_state()) {
        let model = Model::new(&case.proxy, objects).expect("model");
        for f in flows {
            if skip.iter().any(|s| f.name.contains(s)) || f.source_role == "localhost" {
                continue;
            }
            let q = flow_query(f).expect("query");
            *compared += 1;
            let mut mine = f.clone();
            crate::casefile::set_expectation(&mut mine, &model.predict(&q));
            if key(&mine) != key(f) {
                out.push(format!(
                    "{label}/{state}/{}: file {} model {}",
                    f.name,
                    key(f),
                    key(&mine)
                ));
            }
        }
    }
    out
}

#[test]
fn model_agrees_with_every_repro() {
    let dir = conformance_dir().join("repros");
    let mut all = Vec::new();
    let mut n = 0;
    let mut compared = 0;
    for e in std::fs::read_dir(&dir).expect("repros dir") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        for (label, case) in scenarios(&p) {
            n += 1;
            all.extend(mismatches(&label, &case, &[], &mut compared));
        }
    }
    assert!(n >= 8, "expected the repro files, found {n}");
    assert!(compared >= 80, "only {compared} repro flows compared");
    assert!(all.is_empty(), "model disagrees:\n{}", all.join("\n"));
}

/// Upstream's own test cases. Every file is checked; the flows named in
/// `EXCLUDED` are out of the model's scope (listed with the reason).
const EXCLUDED: &[(&str, &str)] = &[];

#[test]
fn model_agrees_with_upstream_cases() {
    let dir = conformance_dir().join("cases");
    let mut all = Vec::new();
    let mut compared = 0;
    for e in std::fs::read_dir(&dir).expect("cases dir") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        for (label, case) in scenarios(&p) {
            let skip: Vec<&str> = EXCLUDED
                .iter()
                .filter(|(c, _)| label.starts_with(c.split('#').next().unwrap_or(c)))
                .map(|(c, _)| c.split('#').nth(1).unwrap_or(""))
                .collect();
            all.extend(mismatches(&label, &case, &skip, &mut compared));
        }
    }
    assert!(compared >= 250, "only {compared} upstream flows compared");
    assert!(all.is_empty(), "model disagrees:\n{}", all.join("\n"));
}

/// The expectation as one comparable string (ACCEPT and "" count as NONE,
/// endpoint order and IP spelling do not matter).
pub fn expectation_key(f: &Flow) -> String {
    let verdict = match f.verdict.as_str() {
        "" | "ACCEPT" | "NONE" => "NONE",
        v => v,
    };
    if verdict != "DNAT" {
        return verdict.to_string();
    }
    let mut eps: Vec<String> = f
        .endpoints
        .iter()
        .map(|e| canonical_hostport(e).unwrap_or_else(|| e.clone()))
        .collect();
    eps.sort();
    eps.dedup();
    format!("DNAT {{{}}} masq={}", eps.join(", "), f.masq)
}

fn canonical_hostport(e: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        e.rsplit_once(':')?
    };
    let ip = parse_ip(host).ok()?;
    let port: u16 = port.parse().ok()?;
    Some(crate::net::hostport(&ip, port))
}
