//! Hostile input and hostile output through the real binary (issue 9, points 2, 3, 7
//! and 9): one bad YAML document, nesting bombs, bad directory entries, stdin in watch
//! mode, and a stdout that is closed or full.
//!
//! Every run has a deadline: a hang (a FIFO opened for reading, a parser taking
//! quadratic time) fails the test instead of stalling the suite.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{require_privileged, NetNs, TempDir, BIN};

const SVC_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web-a, namespace: ns}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: TCP}]}\n";
const SVC_B: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web-b, namespace: ns}\nspec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80, protocol: TCP}]}\n";

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Waits for `child` at most `limit`; kills it and panics on a timeout.
fn wait(mut child: Child, limit: Duration, what: &str) -> Run {
    let start = Instant::now();
    // Drain the pipes on threads so a child writing a lot cannot block on them.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Run {
                    status,
                    stdout: t_out.join().unwrap_or_default(),
                    stderr: t_err.join().unwrap_or_default(),
                    elapsed: start.elapsed(),
                }
            }
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: still running after {limit:?} (killed)");
            }
            Err(e) => panic!("{what}: waiting: {e}"),
        }
    }
}

/// `--dry-run --manifests PATHS` with a deadline.
fn dry_run(paths: &[&str], limit: Duration) -> Run {
    let child = Command::new(BIN)
        .arg("--dry-run")
        .arg("--hostname-override")
        .arg("node-a")
        .arg("--manifests")
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    wait(child, limit, &format!("--dry-run --manifests {paths:?}"))
}

fn assert_programs_both(r: &Run, what: &str) {
    assert!(r.status.success(), "{what}: {}\n{}", r.status, r.stderr);
    for ip in ["10.96.0.10", "10.96.0.11"] {
        assert!(
            r.stdout.contains(ip),
            "{what}: {ip} missing from the ruleset; stderr:\n{}",
            r.stderr
        );
    }
}

/// Point 2: a document that fails (in an unrelated ConfigMap) is skipped with a
/// warning naming file, document and reason; the documents after it still load.
#[test]
fn a_bad_document_does_not_drop_the_rest_of_the_file() {
    let dir = TempDir::new("baddoc");
    let bombs = [
        ("syntax-error", "data: {x: [unclosed}\n", "did not find expected"),
        ("tag", "data: !vault {x: 1}\n", "invalid type"),
        ("number", "data: {x: 123456789012345678901234567890}\n", "out of range"),
        (
            "alias-bomb",
            "metadata: {name: lol}\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
            "repetition limit",
        ),
    ];
    for (name, body, reason) in bombs {
        let text = format!("{SVC_A}---\napiVersion: v1\nkind: ConfigMap\n{body}---\n{SVC_B}");
        let path = dir.write(&format!("{name}.yaml"), &text);
        let r = dry_run(&[&path], Duration::from_secs(20));
        assert_programs_both(&r, name);
        assert!(
            r.stderr.contains(&format!("{path} document 2")) && r.stderr.contains(reason),
            "{name}: the warning must name the file, the document and the reason:\n{}",
            r.stderr
        );
    }
}

/// Point 7: nesting past any Kubernetes object is refused before parsing, in linear
/// time (today a 200 KB flow of `[` takes minutes), and the file's other documents load.
#[test]
fn deep_nesting_is_refused_fast() {
    let dir = TempDir::new("nest");
    let text = format!(
        "{SVC_A}---\napiVersion: v1\nkind: ConfigMap\ndata: {}\n---\n{SVC_B}",
        "[".repeat(200_000)
    );
    let path = dir.write("deep.yaml", &text);
    let r = dry_run(&[&path], Duration::from_secs(10));
    assert_programs_both(&r, "nested [");
    assert!(
        r.stderr.contains("nested deeper"),
        "no warning about the nesting:\n{}",
        r.stderr
    );
    eprintln!("200 KB of nested [: {:?}", r.elapsed);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        rc,
        0,
        "mkfifo {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Directories: a FIFO, a subdirectory, a dangling symlink and a file that is not UTF-8
/// are each skipped with a warning; the FIFO is never opened (that would block until a
/// writer shows up); the good files load.
#[test]
fn bad_directory_entries_are_skipped() {
    let dir = TempDir::new("baddir");
    dir.write("a.yaml", SVC_A);
    dir.write("z.yaml", SVC_B);
    mkfifo(&dir.path().join("fifo.yaml"));
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    std::os::unix::fs::symlink("/nonexistent/x.yaml", dir.path().join("dangling.yaml"))
        .expect("symlink");
    std::fs::write(dir.path().join("latin1.yaml"), b"kind: \xe9t\xe9\n").expect("write");
    let d = dir.path().to_str().expect("utf-8 temp path");
    let r = dry_run(&[d], Duration::from_secs(10));
    assert_programs_both(&r, "directory");
    for entry in ["fifo.yaml", "sub.yaml", "dangling.yaml", "latin1.yaml"] {
        assert!(
            r.stderr.contains(entry),
            "no warning naming {entry}:\n{}",
            r.stderr
        );
    }
}

/// Point 9: `--dry-run | head -1`. The reader is gone before the proxy writes: the
/// write fails with EPIPE, and the proxy ends quietly with success (no panic, exit 0).
#[test]
fn closed_stdout_ends_quietly() {
    let dir = TempDir::new("epipe");
    let path = dir.write("svc.yaml", SVC_A);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(BIN)
        .args([
            "--dry-run",
            "--hostname-override",
            "node-a",
            "--manifests",
            &path,
        ])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let r = wait(
        child,
        Duration::from_secs(20),
        "--dry-run into a closed pipe",
    );
    assert!(
        r.status.success() && !r.stderr.contains("panicked"),
        "{} with stderr:\n{}",
        r.status,
        r.stderr
    );
}

/// Point 9: stdout on a full disk: a one-line error and a failure exit, not a panic.
#[test]
fn full_stdout_is_one_line_error() {
    let dir = TempDir::new("enospc");
    let path = dir.write("svc.yaml", SVC_A);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let child = Command::new(BIN)
        .args([
            "--dry-run",
            "--hostname-override",
            "node-a",
            "--manifests",
            &path,
        ])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let r = wait(child, Duration::from_secs(20), "--dry-run > /dev/full");
    assert_eq!(r.status.code(), Some(1), "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("kube-nft-proxy:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains("No space left"), "{}", r.stderr);
}

/// Point 3: `--manifests -` in watch mode. stdin is read once and kept: the full
/// resync after `--sync-period` must not see an empty cluster and delete the Service.
/// Runs the binary in a network namespace of its own (root, nft, ip).
#[test]
fn stdin_in_watch_mode_is_read_once_and_kept() {
    if !require_privileged() {
        return;
    }
    let ns = NetNs::new("stdin");
    let mut child = ns
        .command(&[
            BIN,
            "--hostname-override",
            "node-a",
            "--sync-period",
            "1s",
            "--manifests",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(SVC_A.as_bytes()).expect("write stdin");
        // Dropped here: the proxy sees EOF, as with `kubectl get -o yaml | kube-nft-proxy`.
    }
    let listing = || {
        ns.command(&["nft", "list", "table", "ip", "kube-nft-proxy"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut programmed = false;
    while Instant::now() < deadline {
        if listing().contains("10.96.0.10") {
            programmed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several full resyncs (sync period 1 s) later the Service must still be there.
    let mut kept = programmed;
    if programmed {
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            if !listing().contains("10.96.0.10") {
                kept = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = child.kill();
    let r = wait(child, Duration::from_secs(10), "the proxy after kill");
    assert!(programmed, "never programmed; stderr:\n{}", r.stderr);
    assert!(
        kept,
        "the Service was deleted at a resync (stdin read again as an empty cluster); stderr:\n{}",
        r.stderr
    );
}
