//! run-flows case files: the subset of the format (see
//! ../shared/conformance/README.md and run-flows' `load_case`) that the tester
//! writes and reads, plus `states()` which replays steps exactly like run-flows'
//! `apply_step` (delete by kind/namespace/name, then apply = replace or add).

use crate::model::{Model, Query, Role, Verdict};
use crate::net::parse_ip;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub name: String,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "sourceIP")]
    pub source_ip: String,
    #[serde(default = "external")]
    pub source_role: String,
    #[serde(rename = "destIP")]
    pub dest_ip: String,
    pub dest_port: u16,
    #[serde(default)]
    pub output: String,
    pub verdict: String,
    #[serde(default)]
    pub masq: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
}

fn tcp() -> String {
    "TCP".into()
}
fn external() -> String {
    "external".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjRef {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

impl ObjRef {
    pub fn of(o: &Value) -> ObjRef {
        let s = |p: &str| {
            o.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        ObjRef {
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<ObjRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apply: Vec<Value>,
    #[serde(default)]
    pub flows: Vec<Flow>,
}

/// One scenario: a case without subtests, or one subtest of a case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Case {
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub source: Value,
    #[serde(default = "nftables")]
    pub backend: String,
    #[serde(default)]
    pub description: String,
    pub proxy: Value,
    #[serde(default)]
    pub objects: Vec<Value>,
    #[serde(default)]
    pub flows: Vec<Flow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

fn nftables() -> String {
    "nftables".into()
}

impl Case {
    pub fn load(path: &Path) -> Result<Case, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| format!("encode case: {e}"))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// The object list of every state ("initial", then one per step), as
    /// run-flows computes it.
    pub fn states(&self) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        let mut current: BTreeMap<ObjRef, Value> = BTreeMap::new();
        let mut order: Vec<ObjRef> = Vec::new();
        for o in &self.objects {
            let k = ObjRef::of(o);
            if !current.contains_key(&k) {
                order.push(k.clone());
            }
            current.insert(k, o.clone());
        }
        let snapshot = |current: &BTreeMap<ObjRef, Value>, order: &Vec<ObjRef>| {
            order
                .iter()
                .filter_map(|k| current.get(k).cloned())
                .collect::<Vec<_>>()
        };
        out.push(("initial".to_string(), snapshot(&current, &order)));
        for st in &self.steps {
            for d in &st.delete {
                current.remove(d);
                order.retain(|k| k != d);
            }
            for o in &st.apply {
                let k = ObjRef::of(o);
                if !current.contains_key(&k) {
                    order.push(k.clone());
                }
                current.insert(k, o.clone());
            }
            out.push((st.name.clone(), snapshot(&current, &order)));
        }
        out
    }

    /// Flows of every state, in the order of `states()`.
    pub fn flows_per_state(&self) -> Vec<&Vec<Flow>> {
        let mut v = vec![&self.flows];
        v.extend(self.steps.iter().map(|s| &s.flows));
        v
    }

    /// Re-derive every flow's expectation from the objects with the model.
    pub fn recompute(&mut self) -> Result<(), String> {
        let states = self.states();
        let proxy = self.proxy.clone();
        for (i, (_, objects)) in states.iter().enumerate() {
            let model = Model::new(&proxy, objects)?;
            let flows = if i == 0 {
                &mut self.flows
            } else {
                &mut self.steps[i - 1].flows
            };
            for f in flows.iter_mut() {
                let q = flow_query(f)?;
                set_expectation(f, &model.predict(&q));
            }
        }
        Ok(())
    }
}

pub fn flow_query(f: &Flow) -> Result<Query, String> {
    Ok(Query {
        source: parse_ip(&f.source_ip)?,
        role: Role::parse(&f.source_role)?,
        protocol: f.protocol.to_uppercase(),
        dest: parse_ip(&f.dest_ip)?,
        dport: f.dest_port,
    })
}

pub fn set_expectation(f: &mut Flow, v: &Verdict) {
    f.verdict = v.name().to_string();
    match v {
        Verdict::Dnat { endpoints, masq } => {
            f.endpoints = endpoints.iter().cloned().collect();
            f.masq = *masq;
            f.output = f.endpoints.join(", ");
        }
        Verdict::None => {
            f.endpoints.clear();
            f.masq = false;
            f.output = String::new();
        }
        other => {
            f.endpoints.clear();
            f.masq = false;
            f.output = other.name().to_string();
        }
    }
}
