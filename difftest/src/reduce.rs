//! Shrinking a failing case: drop steps, Services, endpoints, ports, Service
//! fields, flows and proxy options one piece at a time, keeping a change only
//! while run-flows still reports a failure. After each change the model
//! re-derives every expectation from the remaining objects, so the reduced case
//! states upstream behaviour for exactly what is left.

use crate::casefile::{Case, Flow};
use crate::runner::{run_flows, Outcome};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Reducer<'a> {
    pub runner: &'a Path,
    pub bin: &'a Path,
    pub work: PathBuf,
    pub runs: usize,
    /// Expected verdict of every flow of the input, by `state/flow`: a
    /// candidate must keep them, so that it still shows the same disagreement
    /// instead of drifting to an unrelated (or unobservable) one.
    pub verdicts: BTreeMap<String, String>,
}

impl Reducer<'_> {
    /// Failing `state/flow` names of a candidate, or None when it passes.
    fn failures(&mut self, case: &Case) -> Result<Option<Vec<String>>, String> {
        let mut c = case.clone();
        c.recompute()?;
        if c.flows_per_state().iter().all(|f| f.is_empty()) {
            return Ok(None);
        }
        let names: Vec<String> = std::iter::once("initial".to_string())
            .chain(c.steps.iter().map(|s| s.name.clone()))
            .collect();
        for (state, flows) in names.iter().zip(c.flows_per_state()) {
            for f in flows {
                let key = format!("{state}/{}", f.name);
                if self.verdicts.get(&key).is_some_and(|v| *v != f.verdict) {
                    return Ok(None);
                }
            }
        }
        let path = self.work.join("candidate.json");
        c.save(&path)?;
        self.runs += 1;
        let out: Vec<Outcome> = run_flows(self.runner, self.bin, 1, &[path], &mut |_| {})?;
        let failed: Vec<String> = out
            .iter()
            .filter(|o| o.status == "FAIL")
            .map(|o| o.state_flow().to_string())
            .collect();
        Ok(if failed.is_empty() {
            None
        } else {
            Some(failed)
        })
    }

    fn try_keep(&mut self, best: &mut Case, cand: Case) -> Result<bool, String> {
        if cand == *best {
            return Ok(false);
        }
        if let Some(_f) = self.failures(&cand)? {
            *best = cand;
            eprintln!("  reduced (run {})", self.runs);
            return Ok(true);
        }
        Ok(false)
    }

    pub fn reduce(&mut self, input: &Case) -> Result<Case, String> {
        let mut best = input.clone();
        best.recompute()?;
        let names: Vec<String> = std::iter::once("initial".to_string())
            .chain(best.steps.iter().map(|s| s.name.clone()))
            .collect();
        for (state, flows) in names.iter().zip(best.flows_per_state()) {
            for f in flows {
                self.verdicts
                    .insert(format!("{state}/{}", f.name), f.verdict.clone());
            }
        }
        let failed = self
            .failures(&best)?
            .ok_or("the case does not fail; nothing to reduce")?;
        // Keep only failing flows, and no state after the last one that fails.
        let keep =
            |f: &Flow, state: &str| failed.iter().any(|x| x == &format!("{state}/{}", f.name));
        best.flows.retain(|f| keep(f, "initial"));
        let names: Vec<String> = best.steps.iter().map(|s| s.name.clone()).collect();
        for (st, name) in best.steps.iter_mut().zip(&names) {
            st.flows.retain(|f| keep(f, name));
        }
        while best.steps.last().is_some_and(|s| s.flows.is_empty()) {
            best.steps.pop();
        }
        loop {
            let before = best.clone();
            self.pass_steps(&mut best)?;
            self.pass_flows(&mut best)?;
            self.pass_services(&mut best)?;
            self.pass_slices(&mut best)?;
            self.pass_objects(&mut best)?;
            self.pass_proxy(&mut best)?;
            if best == before {
                break;
            }
        }
        best.description = format!("reduced: {}", input.description);
        best.recompute()?;
        Ok(best)
    }

    fn pass_steps(&mut self, best: &mut Case) -> Result<(), String> {
        // Collapse: start directly in the last state (not an incremental bug?).
        if !best.steps.is_empty() {
            let states = best.states();
            let mut c = best.clone();
            if let Some((_, objs)) = states.last() {
                c.objects = objs.clone();
            }
            c.flows = best.steps.iter().flat_map(|s| s.flows.clone()).collect();
            c.steps.clear();
            if self.try_keep(best, c)? {
                return Ok(());
            }
        }
        let mut i = 0;
        while i < best.steps.len() {
            let mut c = best.clone();
            let removed = c.steps.remove(i);
            if let Some(prev) = i.checked_sub(1).and_then(|p| c.steps.get_mut(p)) {
                prev.flows.extend(removed.flows.clone());
            } else if i == 0 {
                c.flows.extend(removed.flows.clone());
            }
            if !self.try_keep(best, c)? {
                i += 1;
            }
        }
        Ok(())
    }

    fn pass_flows(&mut self, best: &mut Case) -> Result<(), String> {
        let mut slots: Vec<(usize, usize)> = Vec::new();
        for (si, flows) in best.flows_per_state().iter().enumerate() {
            slots.extend((0..flows.len()).map(|fi| (si, fi)));
        }
        // From the end, so that earlier indexes stay valid after a removal.
        for (si, fi) in slots.into_iter().rev() {
            let mut c = best.clone();
            if si == 0 {
                c.flows.remove(fi);
            } else {
                c.steps[si - 1].flows.remove(fi);
            }
            self.try_keep(best, c)?;
        }
        Ok(())
    }

    fn pass_services(&mut self, best: &mut Case) -> Result<(), String> {
        let mut names: Vec<(String, String)> = Vec::new();
        for (_, objs) in best.states() {
            for o in objs {
                if o.get("kind").and_then(Value::as_str) == Some("Service") {
                    let ns = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let n = o
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let k = (ns.to_string(), n.to_string());
                    if !names.contains(&k) {
                        names.push(k);
                    }
                }
            }
        }
        for (ns, name) in names {
            let belongs = |o: &Value| {
                let ons = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let on = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let svc = o
                    .pointer("/metadata/labels/kubernetes.io~1service-name")
                    .and_then(Value::as_str);
                ons == ns && (on == name || svc == Some(name.as_str()))
            };
            let mut c = best.clone();
            c.objects.retain(|o| !belongs(o));
            for s in &mut c.steps {
                s.apply.retain(|o| !belongs(o));
                s.delete.retain(|d| {
                    !(d.namespace == ns
                        && (d.name == name || d.name.starts_with(&format!("{name}-"))))
                });
            }
            self.try_keep(best, c)?;
        }
        Ok(())
    }

    fn pass_slices(&mut self, best: &mut Case) -> Result<(), String> {
        let is_slice = |o: &Value| o.get("kind").and_then(Value::as_str) == Some("EndpointSlice");
        let mut i = 0;
        while i < best.objects.len() {
            let mut c = best.clone();
            if is_slice(&c.objects[i]) {
                c.objects.remove(i);
                if self.try_keep(best, c)? {
                    continue;
                }
            }
            i += 1;
        }
        for si in 0..best.steps.len() {
            let mut i = 0;
            while i < best.steps[si].apply.len() {
                let mut c = best.clone();
                if is_slice(&c.steps[si].apply[i]) {
                    c.steps[si].apply.remove(i);
                    if self.try_keep(best, c)? {
                        continue;
                    }
                }
                i += 1;
            }
        }
        Ok(())
    }

    /// Every way to make one object smaller, applied to one object at a time.
    fn pass_objects(&mut self, best: &mut Case) -> Result<(), String> {
        let count =
            |c: &Case| c.objects.len() + c.steps.iter().map(|s| s.apply.len()).sum::<usize>();
        let mut idx = 0;
        while idx < count(best) {
            let mut variant = 0;
            loop {
                let mut c = best.clone();
                let Some(obj) = object_mut(&mut c, idx) else {
                    break;
                };
                match shrink(obj, variant) {
                    None => break,
                    Some(false) => variant += 1,
                    Some(true) => {
                        if !self.try_keep(best, c)? {
                            variant += 1;
                        }
                    }
                }
            }
            idx += 1;
        }
        Ok(())
    }

    fn pass_proxy(&mut self, best: &mut Case) -> Result<(), String> {
        let edits: Vec<(&str, Value)> = vec![
            ("masqueradeAll", json!(false)),
            ("detectLocal", json!({"mode": "None"})),
            ("nodePortAddresses", Value::Null),
            ("serviceCIDRs", json!([])),
        ];
        for (k, v) in edits {
            if best.proxy.get(k) == Some(&v) {
                continue;
            }
            let mut c = best.clone();
            c.proxy[k] = v;
            self.try_keep(best, c)?;
        }
        Ok(())
    }
}

/// One shrinking edit of an object; false when it does not apply.
type Edit = Box<dyn Fn(&mut Value) -> bool>;

fn object_mut(c: &mut Case, idx: usize) -> Option<&mut Value> {
    let n = c.objects.len();
    if idx < n {
        return c.objects.get_mut(idx);
    }
    let mut k = idx - n;
    for s in &mut c.steps {
        if k < s.apply.len() {
            return s.apply.get_mut(k);
        }
        k -= s.apply.len();
    }
    None
}

/// Apply the `variant`-th shrinking edit to an object: None when there are no
/// more edits, Some(false) when this one does not apply.
fn shrink(o: &mut Value, variant: usize) -> Option<bool> {
    let mut edits: Vec<Edit> = Vec::new();
    match o.get("kind").and_then(Value::as_str) {
        Some("EndpointSlice") => {
            let n = o
                .get("endpoints")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                edits.push(Box::new(move |o: &mut Value| {
                    remove_index(o, "/endpoints", i)
                }));
            }
            let np = o.get("ports").and_then(Value::as_array).map_or(0, Vec::len);
            if np > 1 {
                for i in 0..np {
                    edits.push(Box::new(move |o: &mut Value| remove_index(o, "/ports", i)));
                }
            }
        }
        Some("Service") => {
            let np = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if np > 1 {
                for i in 0..np {
                    edits.push(Box::new(move |o: &mut Value| {
                        remove_index(o, "/spec/ports", i)
                    }));
                }
            }
            for key in ["externalIPs", "loadBalancerSourceRanges", "sessionAffinity"] {
                edits.push(Box::new(move |o: &mut Value| remove_key(o, "/spec", key)));
            }
            for key in ["externalIPs", "loadBalancerSourceRanges"] {
                let n = o
                    .pointer(&format!("/spec/{key}"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if n > 1 {
                    for i in 0..n {
                        edits.push(Box::new(move |o: &mut Value| {
                            remove_index(o, &format!("/spec/{key}"), i)
                        }));
                    }
                }
            }
            let ni = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if ni > 1 {
                for i in 0..ni {
                    edits.push(Box::new(move |o: &mut Value| {
                        remove_index(o, "/status/loadBalancer/ingress", i)
                    }));
                }
            }
            for key in ["internalTrafficPolicy", "externalTrafficPolicy"] {
                edits.push(Box::new(move |o: &mut Value| set_cluster(o, key)));
            }
        }
        _ => {}
    }
    edits.get(variant).map(|e| e(o))
}

fn remove_index(o: &mut Value, ptr: &str, i: usize) -> bool {
    match o.pointer_mut(ptr).and_then(Value::as_array_mut) {
        Some(a) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

fn remove_key(o: &mut Value, ptr: &str, key: &str) -> bool {
    let removed = o
        .pointer_mut(ptr)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(key))
        .is_some();
    if removed && key == "sessionAffinity" {
        remove_key(o, ptr, "sessionAffinityConfig");
    }
    removed
}

fn set_cluster(o: &mut Value, key: &str) -> bool {
    match o.pointer_mut(&format!("/spec/{key}")) {
        Some(v) if v == "Local" => {
            *v = json!("Cluster");
            true
        }
        _ => false,
    }
}
