//! Running ../shared/conformance/run-flows on generated case files and reading
//! its `PASS|FAIL|SKIP case/subtest/state/flow: expected ... got ...` lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: String,
    /// `case/subtest/state/flow`
    pub label: String,
    /// `expected ... got ...`
    pub detail: String,
}

impl Outcome {
    pub fn case(&self) -> &str {
        self.label.split('/').next().unwrap_or("")
    }
    /// The state and flow name (`state/flow`), i.e. the label without case and subtest.
    pub fn state_flow(&self) -> &str {
        let mut it = self.label.splitn(3, '/');
        it.next();
        it.next();
        it.next().unwrap_or("")
    }
}

fn parse_line(line: &str) -> Option<Outcome> {
    let (status, rest) = line.split_once(' ')?;
    if !matches!(status, "PASS" | "FAIL" | "SKIP") {
        return None;
    }
    // Flow names never contain ": expected "; the label ends right before it.
    let (label, detail) = rest.split_once(": expected ")?;
    Some(Outcome {
        status: status.to_string(),
        label: label.to_string(),
        detail: format!("expected {detail}"),
    })
}

/// The default run-flows: `../shared/conformance/run-flows` relative to the
/// repository root, looked up from the working directory upwards and, as a
/// fallback, from where this crate was built.
pub fn default_runner() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in starts {
        for dir in start.ancestors() {
            let cand = dir.join("../shared/conformance/run-flows");
            if dir.join("Cargo.toml").is_file() && cand.is_file() {
                return Some(cand);
            }
        }
    }
    None
}

/// Run run-flows once on `files`. `echo` gets every output line as it arrives.
pub fn run_flows(
    runner: &Path,
    bin: &Path,
    jobs: usize,
    files: &[PathBuf],
    echo: &mut dyn FnMut(&str),
) -> Result<Vec<Outcome>, String> {
    let mut cmd = Command::new(runner);
    cmd.arg("--bin")
        .arg(bin)
        .arg("--jobs")
        .arg(jobs.to_string())
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", runner.display()))?;
    let stdout = child.stdout.take().ok_or("run-flows: no stdout")?;
    let mut outcomes = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading run-flows output: {e}"))?;
        echo(&line);
        if let Some(o) = parse_line(&line) {
            outcomes.push(o);
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for run-flows: {e}"))?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != 1 {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "run-flows exited with status {code}: {}",
            err.trim()
        ));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let o = parse_line("FAIL seed-3/-/step 1: svc2 added/after 1: pod 10.0.0.2 to ns1/svc1 TCP/80 clusterIP: expected DROP got DNAT {10.180.0.1:80} masq=false").unwrap();
        assert_eq!(o.status, "FAIL");
        assert_eq!(o.case(), "seed-3");
        assert_eq!(
            o.state_flow(),
            "step 1: svc2 added/after 1: pod 10.0.0.2 to ns1/svc1 TCP/80 clusterIP"
        );
        assert!(o.detail.starts_with("expected DROP got DNAT"));
        assert!(parse_line("3 passed, 0 failed, 0 skipped").is_none());
        assert!(parse_line("    verbose info").is_none());
    }
}
