//! `nft monitor` in a test's namespace: which transactions changed the ruleset.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::NetNs;

/// `nft monitor` running in a namespace: every change to the ruleset, as nft prints it,
/// with a `# new generation N by process P (NAME)` line closing each transaction.
/// Killed on drop.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    marks: usize,
}

impl Monitor {
    /// Starts the monitor and waits until it reports changes.
    pub fn start(ns: &NetNs) -> Monitor {
        let mut cmd = ns.command(&["nft", "monitor"]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        // Ends when the monitor is killed (end of its output).
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut m = Monitor {
            child,
            lines,
            reader: Some(reader),
            marks: 0,
        };
        m.sync(ns);
        m
    }

    /// Makes a marker change (adds and deletes the test's own table
    /// `inet knp-monitor-mark-N`) and waits (bounded) until the monitor has reported
    /// it: from then on it reports every change, and every change made before the
    /// marker has been reported. Retries while the monitor is still subscribing.
    pub fn sync(&mut self, ns: &NetNs) {
        for _ in 0..50 {
            self.marks += 1;
            let name = format!("knp-monitor-mark-{}", self.marks);
            ns.run(&["nft", "add", "table", "inet", &name]);
            ns.run(&["nft", "delete", "table", "inet", &name]);
            let wanted = format!("delete table inet {name}");
            for _ in 0..20 {
                if self.lines().iter().any(|l| l.trim() == wanted) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!(
            "nft monitor never reported a marker change; it printed:\n{}",
            self.lines().join("\n")
        );
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The changes reported so far, one entry per committed transaction, without the
    /// markers' transactions.
    pub fn transactions(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut current = Vec::new();
        for line in self.lines() {
            let line = line.trim().to_string();
            if line.starts_with("# new generation") {
                let marker = current
                    .iter()
                    .any(|l: &String| l.contains(" inet knp-monitor-mark-"));
                if !marker {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
            } else if !line.is_empty() {
                current.push(line);
            }
        }
        out
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
