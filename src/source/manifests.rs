//! Objects from files, directories or stdin: YAML (multi-document) or JSON (single
//! objects or a `List`), as `kubectl get -o yaml|json` prints them.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{Object, Problem};

/// Errors reading manifests (a file that cannot be read at all).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path could not be read.
    #[error("cannot read {path}")]
    Read {
        /// the path
        path: PathBuf,
        /// the cause
        #[source]
        source: std::io::Error,
    },
}

/// Objects read, and problems with individual documents or objects.
#[derive(Debug, Default)]
pub struct Loaded {
    /// the objects we understand
    pub objects: Vec<Object>,
    /// documents or objects that were skipped, with the reason
    pub problems: Vec<Problem>,
}

/// The files a path stands for: a file itself, or a directory's `.yaml`, `.yml` and
/// `.json` files in name order.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>, Error> {
    if path.as_os_str() == "-" {
        return Ok(vec![path.to_path_buf()]);
    }
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every path (`-` is stdin).
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Error> {
    let mut out = Loaded::default();
    for p in paths {
        for file in expand(p)? {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|source| Error::Read {
                        path: file.clone(),
                        source,
                    })?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|source| Error::Read {
                    path: file.clone(),
                    source,
                })?
            };
            parse_into(&text, &file.display().to_string(), &mut out);
        }
    }
    Ok(out)
}

/// Parses one file's text (YAML or JSON) into objects.
pub fn parse_into(text: &str, origin: &str, out: &mut Loaded) {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => add_value(v, origin, out),
            Err(e) => out.problems.push(Problem {
                object: origin.to_string(),
                reason: format!("not valid JSON: {e}; file skipped"),
            }),
        }
        return;
    }
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        use serde::Deserialize;
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => add_value(v, origin, out),
            Err(e) => {
                out.problems.push(Problem {
                    object: format!("{origin} document {}", i + 1),
                    reason: format!("not valid YAML: {e}; skipped"),
                });
                // A syntax error leaves the YAML stream unusable after it.
                break;
            }
        }
    }
}

fn add_value(v: Value, origin: &str, out: &mut Loaded) {
    if let Value::Array(items) = v {
        for i in items {
            add_value(i, origin, out);
        }
        return;
    }
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        if let Some(Value::Array(items)) = v.get("items").cloned() {
            for i in items {
                add_value(i, origin, out);
            }
        }
        return;
    }
    let api = v
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = format!(
        "{kind} {}/{}",
        v.pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or(""),
        v.pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
    );
    let parsed = match (api.as_str(), kind.as_str()) {
        ("v1", "Service") => serde_json::from_value(v).map(|o| Some(Object::Service(Box::new(o)))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            serde_json::from_value(v).map(|o| Some(Object::EndpointSlice(Box::new(o))))
        }
        ("v1", "Node") => serde_json::from_value(v).map(|o| Some(Object::Node(Box::new(o)))),
        ("networking.k8s.io/v1", "ServiceCIDR") => {
            serde_json::from_value(v).map(|o| Some(Object::ServiceCidr(Box::new(o))))
        }
        _ => {
            tracing::debug!(object = %name, origin, "ignoring object of a kind the proxy does not watch");
            Ok(None)
        }
    };
    match parsed {
        Ok(Some(o)) => out.objects.push(o),
        Ok(None) => {}
        Err(e) => out.problems.push(Problem {
            object: format!("{name} ({origin})"),
            reason: format!("malformed: {e}; skipped"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_multi_doc_and_json_list() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: \"eighty\"}]}\n";
        let mut out = Loaded::default();
        parse_into(yaml, "t.yaml", &mut out);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(out.problems[0].object.contains("Service /b"));

        let json = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}},
            {"apiVersion":"networking.k8s.io/v1","kind":"ServiceCIDR","metadata":{"name":"c"},"spec":{"cidrs":["10.96.0.0/12"]}}]}"#;
        let mut out = Loaded::default();
        parse_into(json, "t.json", &mut out);
        assert_eq!(out.objects.len(), 2);
        let mut out = Loaded::default();
        parse_into("{not json", "bad.json", &mut out);
        assert_eq!(out.problems.len(), 1);
    }
}
