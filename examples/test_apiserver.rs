//! Runs the in-memory test API server (`tests/support/apiserver.rs`) so a person can point a
//! proxy (or kubectl) at it over plain HTTP:
//!
//! ```text
//! cargo run --release --example test_apiserver -- --listen 127.0.0.1:6443 --objects FILE.json
//! ```
//!
//! `FILE.json` is a `List` (`{"kind":"List","items":[...]}`, any `*List` kind, or a bare JSON
//! array) of Services, EndpointSlices, ServiceCIDRs and Nodes. Objects of other kinds are
//! skipped with a warning. It prints a kubeconfig to use, then reads commands on stdin:
//!
//! ```text
//! apply FILE.json             create or replace the objects of a List or single-object file
//! delete KIND NAMESPACE NAME  delete an object (NAMESPACE "-" for cluster-scoped kinds)
//! list KIND                   print namespace/name@resourceVersion of every object of a kind
//! bookmark | close-watches | abort-watches | compact
//! fail 500|429|403 [COUNT]    answer the next COUNT (default: every) requests with an error
//! clear                       stop failing requests
//! delay MILLISECONDS          delay every answer
//! stop | start                stop listening / listen again on the same port
//! ```

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use apiserver::{ApiServer, Config, Fault, KINDS};
use serde_json::Value;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: test_apiserver [--listen ADDR:PORT] [--objects FILE.json] \
                     [--bookmark-interval SECONDS]";

fn main() -> ExitCode {
    let mut config = Config::default();
    let mut objects_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let result = match arg.as_str() {
            "--listen" => value("--listen").and_then(|v| {
                v.parse::<SocketAddr>()
                    .map(|a| config.listen = a)
                    .map_err(|e| format!("--listen {v}: {e}"))
            }),
            "--objects" => value("--objects").map(|v| objects_file = Some(v)),
            "--bookmark-interval" => value("--bookmark-interval").and_then(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .map(|s| config.bookmark_interval = Duration::from_secs_f64(s))
                    .ok_or_else(|| format!("--bookmark-interval {v}: not a positive number"))
            }),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other}\n{USAGE}")),
        };
        if let Err(e) = result {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }

    let server = match ApiServer::start_with(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(file) = &objects_file {
        if let Err(e) = apply_file(&server, file) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let url = server.url();
    println!(
        "test API server on {url} (resourceVersion {})",
        server.resource_version()
    );
    println!("kubeconfig:");
    println!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n\
         users:\n- name: test\n  user:\n    token: test\ncontexts:\n- name: test\n  context:\n    \
         cluster: test\n    user: test\ncurrent-context: test"
    );
    println!("commands on stdin: apply FILE | delete KIND NS NAME | list KIND | bookmark | close-watches | abort-watches | compact | fail 500|429|403 [N] | clear | delay MS | stop | start");

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Err(e) = command(&server, &words) {
            eprintln!("{e}");
        }
    }
    // stdin closed (e.g. run in the background): keep serving until killed.
    loop {
        std::thread::park();
    }
}

fn command(server: &ApiServer, words: &[&str]) -> Result<(), String> {
    match words {
        [] => {}
        ["apply", file] => apply_file(server, file)?,
        ["delete", kind, ns, name] => {
            check_kind(kind)?;
            let ns = if *ns == "-" { "" } else { ns };
            match server.delete(kind, ns, name) {
                Some(_) => println!("deleted, resourceVersion {}", server.resource_version()),
                None => return Err(format!("no {kind} {ns}/{name}")),
            }
        }
        ["list", kind] => {
            check_kind(kind)?;
            for obj in server.objects(kind) {
                let meta = &obj["metadata"];
                println!(
                    "{}/{}@{}",
                    meta["namespace"].as_str().unwrap_or(""),
                    meta["name"].as_str().unwrap_or(""),
                    meta["resourceVersion"].as_str().unwrap_or("")
                );
            }
        }
        ["bookmark"] => server.bookmark_now(),
        ["close-watches"] => server.close_watches(),
        ["abort-watches"] => server.abort_watches(),
        ["compact"] => server.compact(),
        ["fail", code, rest @ ..] => {
            let fault = match *code {
                "500" => Fault::InternalError,
                "429" => Fault::TooManyRequests,
                "403" => Fault::Forbidden,
                _ => return Err("fail 500|429|403 [COUNT]".into()),
            };
            match rest {
                [] => server.fail_all(fault),
                [n] => server.fail_next(n.parse().map_err(|_| "COUNT: a number")?, fault),
                _ => return Err("fail 500|429|403 [COUNT]".into()),
            }
        }
        ["clear"] => server.clear_faults(),
        ["delay", ms] => {
            let ms: u64 = ms.parse().map_err(|_| "delay MILLISECONDS")?;
            server.set_delay(Duration::from_millis(ms));
        }
        ["stop"] => server.stop(),
        ["start"] => server.start_again().map_err(|e| format!("start: {e}"))?,
        _ => return Err(format!("unknown command: {}", words.join(" "))),
    }
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), String> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(format!("unknown kind {kind}; known: {}", KINDS.join(", ")))
    }
}

/// Applies the objects of a List file (or a bare array, or a single object).
fn apply_file(server: &ApiServer, file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(ref o) if o.get("items").is_some_and(Value::is_array) => {
            o["items"].as_array().cloned().unwrap_or_default()
        }
        Value::Object(_) => vec![value],
        _ => return Err(format!("{file}: expected a List, an array or an object")),
    };
    let mut applied = 0;
    for (i, obj) in items.into_iter().enumerate() {
        let kind = obj["kind"].as_str().unwrap_or("");
        let has_name = obj["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if !KINDS.contains(&kind) || !has_name {
            eprintln!("{file}: item {i}: skipped (kind {kind:?}; needs one of {KINDS:?} and metadata.name)");
            continue;
        }
        server.apply(obj);
        applied += 1;
    }
    println!(
        "{file}: applied {applied} objects, resourceVersion {}",
        server.resource_version()
    );
    Ok(())
}
