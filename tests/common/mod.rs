//! Shared helpers for the privileged kernel tests: the root/tool check, network
//! namespaces that delete themselves, threads that run inside a namespace, scratch
//! directories and running the proxy binary.
//!
//! Every command that could change kernel state runs inside a namespace the test
//! created (`ip -n NS ...` or `ip netns exec NS ...`); nothing here touches the host's
//! own ruleset, routes or sysctls.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod backends;
pub mod manifests;
pub mod monitor;
pub mod takeover;
pub mod topology;
pub mod transitions;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// The proxy binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_kube-nft-proxy");

/// Unique suffixes for names within this test process (tests run in parallel).
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `pid-counter`: unique among the tests of this process and among concurrently
/// running test processes.
pub fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn tool_works(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a privileged test can run here: root, with `nft` and `ip` available.
///
/// If not: with `KNP_REQUIRE_PRIVILEGED=1` this panics (the test fails); otherwise it
/// prints "skipping: needs root ..." and returns false, and the test returns early.
pub fn require_privileged() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (euid 0)");
    }
    if !tool_works("nft", "--version") {
        missing.push("`nft` (nftables)");
    }
    if !tool_works("ip", "-V") {
        missing.push("`ip` (iproute2)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if std::env::var("KNP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("KNP_REQUIRE_PRIVILEGED=1 but this privileged test cannot run: missing {why}");
    }
    eprintln!("skipping: needs root, nft and ip (missing {why})");
    false
}

/// Runs a command, panics with its output if it cannot start or exits non-zero, and
/// returns its stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    expect_success(cmd, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn expect_success(cmd: &Command, out: &Output) {
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace created for one test; deleted on drop (also when the test
/// panics). Sockets created inside it keep it alive until they are closed, so join the
/// threads that use it before it goes out of scope.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `knp-{tag}-{pid}-{n}` with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("knp-{tag}-{}", unique_suffix());
        check(Command::new("ip").args(["netns", "add", &name]));
        // From here on, Drop removes it whatever happens.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME args...`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace; panics unless it succeeds; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        check(&mut self.command(args))
    }

    /// Runs `args` inside the namespace with `input` on stdin; panics unless it
    /// succeeds; returns stdout.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> String {
        let mut cmd = self.command(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing stdin of {cmd:?}: {e}"));
        drop(stdin);
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
        expect_success(&cmd, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NAME args...`; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl of this namespace (`key=value`).
    pub fn sysctl(&self, key_value: &str) {
        self.run(&["sysctl", "-q", "-w", key_value]);
    }

    /// `nft list table FAMILY kube-nft-proxy` in this namespace.
    pub fn list_table(&self, family: &str) -> String {
        self.run(&["nft", "list", "table", family, "kube-nft-proxy"])
    }

    /// Runs the proxy binary inside this namespace with `args`; panics unless it exits 0.
    /// Returns stdout.
    pub fn proxy(&self, args: &[&str]) -> String {
        let mut all = vec![BIN];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Opens the namespace's nsfs file (for `setns`).
    fn open(&self) -> File {
        let path = format!("/var/run/netns/{}", self.name);
        File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"))
    }

    /// Runs `f` on a new thread that lives in this namespace: sockets it creates belong
    /// to the namespace (and stay there whatever thread uses them later).
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open();
        let name = self.name.clone();
        std::thread::spawn(move || {
            // SAFETY: `file` is an open nsfs file; setns only changes this thread's
            // network namespace, which no other thread observes.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                panic!("setns({name}): {}", io::Error::last_os_error());
            }
            drop(file);
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// Connects two namespaces with a veth pair (`if_a` in `a`, `if_b` in `b`), both up.
/// Interface names only need to be unique within their namespace. The pair is created
/// directly inside `a`, never in the host's namespace.
pub fn veth(a: &NetNs, if_a: &str, b: &NetNs, if_b: &str) {
    a.ip(&[
        "link",
        "add",
        if_a,
        "type",
        "veth",
        "peer",
        "name",
        if_b,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", if_a, "up"]);
    b.ip(&["link", "set", if_b, "up"]);
}

/// A scratch directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/knp-{tag}-{pid}-{n}`.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("knp-{tag}-{}", unique_suffix()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory (replacing it atomically: write, then rename) and
    /// returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let tmp = self.path.join(format!(".{name}.tmp"));
        let dst = self.path.join(name);
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
        std::fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("rename {tmp:?}: {e}"));
        dst.to_str().expect("utf-8 temp path").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Joins a thread and re-raises its panic (with its original message) in the caller.
pub fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}
