//! `cargo xtask`: the README's two commands, `cargo xtask demo` and `cargo xtask test`.
//!
//! Each first makes sure the machine has the system packages the build needs (pkg-config
//! and the development files of libnftnl and libmnl, which the `-sys` crates' build
//! scripts look up) and, for `test`, the tools the kernel tests and the conformance
//! runner call (`nft`, `ip`, `conntrack`, `python3`, `sysctl`, `setpriv`, iptables'
//! and ipset's tools). What is missing is
//! installed with apt-get when running as root on a system that has it; otherwise the one
//! command to run is printed and nothing is compiled. Then the real cargo command runs and
//! its exit code is passed through.
//!
//! Looking at the machine (`probe`, `Host::detect`) is kept apart from deciding what to
//! do about it (`decide`, `hint`), so the decisions are unit-tested without touching it.
//!
//! This crate has no dependencies on purpose: it must build on a machine that has only
//! the Rust toolchain, and running it must not compile the proxy's C-backed crates.

use std::env;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

/// The demo: the proxy's main job on the cluster shipped in `demo/`, printed as nft text.
/// The README shows the same command for people who have the packages; a test keeps the
/// two identical.
const DEMO_ARGS: &[&str] = &[
    "run",
    "--release",
    "--",
    "--manifests",
    "demo/cluster.yaml",
    "--dry-run",
    "--hostname-override",
    "demo-node",
    "--cluster-cidr",
    "10.244.0.0/16,fd00:244::/48",
];

/// The README's test command; extra arguments are appended (a test name filter,
/// `--locked`, `-- --nocapture`).
const TEST_ARGS: &[&str] = &["test", "--release"];

/// Oldest libnftnl the build accepts. `nftnl-sys` asks pkg-config for at least the
/// version named by the feature the root Cargo.toml enables (`nftnl-1-2-0`); checking it
/// here turns an old distribution's build-script panic into one sentence. A test keeps
/// this in step with Cargo.toml.
const LIBNFTNL_MIN_VERSION: &str = "1.2.0";

/// Names of requirements to treat as missing (comma-separated), to try the install path
/// on a machine that has everything.
const ENV_ASSUME_MISSING: &str = "KNP_XTASK_ASSUME_MISSING";
/// `1`: behave as a non-root user would (print the command instead of installing).
const ENV_ASSUME_NOT_ROOT: &str = "KNP_XTASK_ASSUME_NOT_ROOT";

/// How to tell whether a requirement is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// A program, looked up the way the tests start it (on PATH), plus the sbin
    /// directories: Debian puts `nft` and `conntrack` there, and a non-root PATH does
    /// not include them, so without them a non-root user would be told to install
    /// something they have.
    Program(&'static str),
    /// A pkg-config module, as the `-sys` build scripts look it up.
    Library {
        module: &'static str,
        min_version: Option<&'static str>,
    },
}

/// The package that provides a requirement, per package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packages {
    apt: &'static str,
    dnf: &'static str,
    pacman: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Requirement {
    /// The name used in messages and in `KNP_XTASK_ASSUME_MISSING`.
    name: &'static str,
    probe: Probe,
    packages: Packages,
}

/// What `cargo build` needs beyond the Rust toolchain. pkg-config comes first: the
/// library checks go through it.
const BUILD: &[Requirement] = &[
    Requirement {
        name: "pkg-config",
        probe: Probe::Program("pkg-config"),
        packages: Packages {
            apt: "pkg-config",
            dnf: "pkgconf-pkg-config",
            pacman: "pkgconf",
        },
    },
    Requirement {
        name: "libnftnl",
        probe: Probe::Library {
            module: "libnftnl",
            min_version: Some(LIBNFTNL_MIN_VERSION),
        },
        packages: Packages {
            apt: "libnftnl-dev",
            dnf: "libnftnl-devel",
            pacman: "libnftnl",
        },
    },
    Requirement {
        name: "libmnl",
        probe: Probe::Library {
            module: "libmnl",
            min_version: None,
        },
        packages: Packages {
            apt: "libmnl-dev",
            dnf: "libmnl-devel",
            pacman: "libmnl",
        },
    },
];

/// What the kernel tests (`nft`, `ip`, `conntrack`, `setpriv`, `iptables-*-restore`,
/// `ipset`) and the conformance runner (`python3`, and `sysctl`, which container base
/// images lack) call, on top of [`BUILD`].
const TEST_TOOLS: &[Requirement] = &[
    Requirement {
        name: "nft",
        probe: Probe::Program("nft"),
        packages: Packages {
            apt: "nftables",
            dnf: "nftables",
            pacman: "nftables",
        },
    },
    Requirement {
        name: "ip",
        probe: Probe::Program("ip"),
        packages: Packages {
            apt: "iproute2",
            dnf: "iproute",
            pacman: "iproute2",
        },
    },
    Requirement {
        name: "conntrack",
        probe: Probe::Program("conntrack"),
        packages: Packages {
            apt: "conntrack",
            dnf: "conntrack-tools",
            pacman: "conntrack-tools",
        },
    },
    Requirement {
        name: "python3",
        probe: Probe::Program("python3"),
        packages: Packages {
            apt: "python3",
            dnf: "python3",
            pacman: "python",
        },
    },
    Requirement {
        name: "setpriv",
        probe: Probe::Program("setpriv"),
        packages: Packages {
            apt: "util-linux",
            dnf: "util-linux",
            pacman: "util-linux",
        },
    },
    Requirement {
        name: "sysctl",
        probe: Probe::Program("sysctl"),
        packages: Packages {
            apt: "procps",
            dnf: "procps-ng",
            pacman: "procps-ng",
        },
    },
    // The takeover tests load kube-proxy's leftovers with iptables' and ipset's own
    // tools (tests/migration_iptables.rs); the proxy itself needs none of them.
    Requirement {
        name: "iptables-nft",
        probe: Probe::Program("iptables-nft-restore"),
        packages: Packages {
            apt: "iptables",
            dnf: "iptables-nft",
            pacman: "iptables",
        },
    },
    Requirement {
        name: "iptables-legacy",
        probe: Probe::Program("iptables-legacy-restore"),
        packages: Packages {
            apt: "iptables",
            dnf: "iptables-legacy",
            pacman: "iptables",
        },
    },
    Requirement {
        name: "ipset",
        probe: Probe::Program("ipset"),
        packages: Packages {
            apt: "ipset",
            dnf: "ipset",
            pacman: "ipset",
        },
    },
];

/// What probing found for one requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Present,
    Missing,
    /// Installed, but older than the build accepts; the distribution's package will not
    /// be newer, so installing does not help.
    TooOld {
        found: String,
        needed: &'static str,
    },
    /// A library that could not be checked because pkg-config itself is missing;
    /// installing its package is harmless if it is there already.
    Unchecked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    Apt,
    Dnf,
    Pacman,
}

impl Manager {
    const ALL: [Manager; 3] = [Manager::Apt, Manager::Dnf, Manager::Pacman];

    fn program(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            Manager::Dnf => "dnf",
            Manager::Pacman => "pacman",
        }
    }

    fn package(self, p: &Packages) -> &'static str {
        match self {
            Manager::Apt => p.apt,
            Manager::Dnf => p.dnf,
            Manager::Pacman => p.pacman,
        }
    }

    /// The install command line, with `sudo` in front of each command when not root.
    fn command_line(self, packages: &[&str], root: bool) -> String {
        let sudo = if root { "" } else { "sudo " };
        let list = packages.join(" ");
        match self {
            Manager::Apt => format!(
                "{sudo}apt-get update && {sudo}apt-get install -y --no-install-recommends {list}"
            ),
            Manager::Dnf => format!("{sudo}dnf install -y {list}"),
            Manager::Pacman => format!("{sudo}pacman -S --needed {list}"),
        }
    }
}

/// The facts about the machine that decide between installing and printing a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Host {
    root: bool,
    manager: Option<Manager>,
}

/// What to do before running cargo.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Ready,
    /// Root with apt-get: install these Debian packages.
    AptInstall(Vec<&'static str>),
    /// Cannot install from here: print this and stop.
    Stop(String),
}

/// Decides what to do about the requirements that are not present.
fn decide(found: &[(Requirement, Status)], host: Host) -> Action {
    let too_old: Vec<String> = found
        .iter()
        .filter_map(|(r, s)| match s {
            Status::TooOld { found, needed } => Some(format!(
                "{} {found} is installed, the build needs >= {needed}",
                r.name
            )),
            _ => None,
        })
        .collect();
    if !too_old.is_empty() {
        return Action::Stop(format!(
            "{}.\nThe distribution's package is too old (Debian 12 and Ubuntu 22.04 have a new enough one); \
             install a newer one or point PKG_CONFIG_PATH at one.",
            too_old.join("; ")
        ));
    }
    let wanted: Vec<&Requirement> = found
        .iter()
        .filter(|(_, s)| matches!(s, Status::Missing | Status::Unchecked))
        .map(|(r, _)| r)
        .collect();
    if wanted.is_empty() {
        return Action::Ready;
    }
    match host.manager {
        Some(Manager::Apt) if host.root => Action::AptInstall(packages(&wanted, Manager::Apt)),
        _ => Action::Stop(hint(&wanted, host)),
    }
}

/// Package names for `wanted`, in order, each once.
fn packages(wanted: &[&Requirement], manager: Manager) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in wanted {
        let p = manager.package(&r.packages);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The message printed when xtask cannot install what is missing itself: what is
/// missing, and the one command that installs it.
fn hint(wanted: &[&Requirement], host: Host) -> String {
    let names: Vec<&str> = wanted.iter().map(|r| r.name).collect();
    let mut msg = format!("missing: {}\n", names.join(", "));
    match host.manager {
        Some(m) => {
            msg.push_str(
                "install with this command, then run the same cargo xtask command again:\n\n    ",
            );
            msg.push_str(&m.command_line(&packages(wanted, m), host.root));
        }
        None => {
            // No package manager we know the names for: name the Debian packages, which
            // the user can map to their distribution's.
            msg.push_str(
                "install these (Debian package names; the library ones are the development packages), \
                 then run the same cargo xtask command again:\n\n    ",
            );
            msg.push_str(&packages(wanted, Manager::Apt).join(" "));
        }
    }
    msg
}

/// Names from `KNP_XTASK_ASSUME_MISSING`: comma-separated, blanks ignored.
fn parse_assume_missing(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where to look for `name`: PATH, then the sbin directories (see [`Probe::Program`]).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// The pkg-config program the build scripts will use: the `pkg-config` crate honours
/// `PKG_CONFIG`, so the check does too.
fn pkg_config() -> OsString {
    env::var_os("PKG_CONFIG").unwrap_or_else(|| "pkg-config".into())
}

/// Runs a command quietly; `None` if it could not start.
fn quiet(cmd: &mut Command) -> Option<std::process::Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

fn probe(req: &Requirement, assume_missing: &[String], pkg_config_ok: bool) -> Status {
    if assume_missing.iter().any(|n| n == req.name) {
        return Status::Missing;
    }
    match req.probe {
        Probe::Program("pkg-config") => {
            // The build runs `$PKG_CONFIG` (default `pkg-config`), so check that, not
            // merely a file on PATH.
            match quiet(Command::new(pkg_config()).arg("--version")) {
                Some(out) if out.status.success() => Status::Present,
                _ => Status::Missing,
            }
        }
        Probe::Program(name) => match find_program(name) {
            Some(_) => Status::Present,
            None => Status::Missing,
        },
        Probe::Library { .. } if !pkg_config_ok => Status::Unchecked,
        Probe::Library {
            module,
            min_version,
        } => {
            let exists = quiet(Command::new(pkg_config()).args(["--exists", module]));
            if !exists.is_some_and(|o| o.status.success()) {
                return Status::Missing;
            }
            let Some(needed) = min_version else {
                return Status::Present;
            };
            let new_enough = quiet(
                Command::new(pkg_config()).args([&format!("--atleast-version={needed}"), module]),
            );
            if new_enough.is_some_and(|o| o.status.success()) {
                return Status::Present;
            }
            let found = quiet(Command::new(pkg_config()).args(["--modversion", module]))
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "an unknown version".to_owned());
            Status::TooOld { found, needed }
        }
    }
}

/// Probes `reqs` in order; libraries are only checked once pkg-config is known to work.
fn probe_all(reqs: &[Requirement], assume_missing: &[String]) -> Vec<(Requirement, Status)> {
    let mut pkg_config_ok = false;
    reqs.iter()
        .map(|r| {
            let s = probe(r, assume_missing, pkg_config_ok);
            if r.probe == Probe::Program("pkg-config") {
                pkg_config_ok = s == Status::Present;
            }
            (*r, s)
        })
        .collect()
}

impl Host {
    fn detect() -> Host {
        let not_root = env::var(ENV_ASSUME_NOT_ROOT).as_deref() == Ok("1");
        Host {
            root: !not_root && euid_is_root(),
            manager: Manager::ALL
                .into_iter()
                .find(|m| find_program(m.program()).is_some()),
        }
    }
}

/// Whether we run as root, asked of `id -u` (no libc binding: this crate has no
/// dependencies). If `id` cannot run, assume not root: the worst case is a printed
/// command instead of an install.
fn euid_is_root() -> bool {
    quiet(Command::new("id").arg("-u"))
        .is_some_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The workspace root: the demo's paths are relative to it. Cargo sets
/// `CARGO_MANIFEST_DIR` for `cargo run`; the compile-time value is the fallback.
fn workspace_root() -> PathBuf {
    let xtask_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    xtask_dir
        .parent()
        .map_or(xtask_dir.clone(), Path::to_path_buf)
}

/// The cargo that runs us (`CARGO`), so a `cargo +toolchain xtask` stays on that
/// toolchain.
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Prints a message on stderr, its first line marked as ours. Later lines are printed as
/// they are, so a command in them can be copied whole.
fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Runs a command in the foreground; `Err` carries the message if it could not start.
fn run(cmd: &mut Command) -> Result<ExitStatus, String> {
    cmd.status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))
}

/// The exit code to pass on for a child's status (128 + signal if it was killed).
fn exit_code(status: ExitStatus) -> ExitCode {
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(127)));
    }
    ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    )
}

fn apt_install(packages: &[&str], why: &[&str]) -> Result<(), String> {
    say(&format!(
        "missing {}: installing {} with apt-get",
        why.join(", "),
        packages.join(" ")
    ));
    let steps: [Vec<&str>; 2] = [
        vec!["update"],
        ["install", "-y", "--no-install-recommends"]
            .into_iter()
            .chain(packages.iter().copied())
            .collect(),
    ];
    for args in steps {
        say(&format!("running: apt-get {}", args.join(" ")));
        let status = run(Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        if !status.success() {
            return Err(format!("apt-get {} failed ({status})", args[0]));
        }
    }
    Ok(())
}

/// Makes sure `reqs` are present, installing them if we can. `Err`: the message to print
/// before stopping (nothing has been compiled).
fn ensure(reqs: &[Requirement]) -> Result<(), String> {
    let assume_missing = env::var(ENV_ASSUME_MISSING)
        .map(|v| parse_assume_missing(&v))
        .unwrap_or_default();
    for name in &assume_missing {
        // A misspelt name would otherwise make the override silently do nothing.
        if !BUILD.iter().chain(TEST_TOOLS).any(|r| r.name == *name) {
            say(&format!(
                "{ENV_ASSUME_MISSING}: no requirement named {name:?}; see --help"
            ));
        }
    }
    let found = probe_all(reqs, &assume_missing);
    match decide(&found, Host::detect()) {
        Action::Ready => Ok(()),
        Action::Stop(msg) => Err(msg),
        Action::AptInstall(pkgs) => {
            apt_install(&pkgs, &not_present(&found))?;
            // Check again: a package that installed but still does not provide what the
            // build looks up (or an override that keeps it "missing") must stop here, not
            // in a build script.
            let still = not_present(&probe_all(reqs, &assume_missing));
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "still missing after apt-get install: {}",
                    still.join(", ")
                ))
            }
        }
    }
}

/// Names of the requirements that probing did not find present.
fn not_present(found: &[(Requirement, Status)]) -> Vec<&'static str> {
    found
        .iter()
        .filter(|(_, s)| *s != Status::Present)
        .map(|(r, _)| r.name)
        .collect()
}

const USAGE: &str = "\
cargo xtask: set up this machine for kube-nft-proxy, then build and run it

usage:
  cargo xtask demo [PROXY ARGS...]
      check for pkg-config, libnftnl and libmnl (installing them as root where apt-get
      exists; otherwise printing the command to run, and stopping), then run the demo:
      cargo run --release -- --manifests demo/cluster.yaml --dry-run ... [PROXY ARGS...]
  cargo xtask test [CARGO TEST ARGS...]
      the same checks plus nft, ip, conntrack, python3, setpriv, sysctl, iptables and
      ipset, then run the tests:
      cargo test --release [CARGO TEST ARGS...]

environment:
  KNP_XTASK_ASSUME_MISSING=a,b   treat these as missing (pkg-config, libnftnl, libmnl, nft,
                                 ip, conntrack, python3, setpriv, sysctl, iptables-nft,
                                 iptables-legacy, ipset) to try the install path
  KNP_XTASK_ASSUME_NOT_ROOT=1    act as a non-root user: print the command, install nothing
  PKG_CONFIG                     the pkg-config to check with, as the build scripts use it";

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let task = args.next();
    let rest: Vec<OsString> = args.collect();
    let (reqs, base): (Vec<Requirement>, &[&str]) = match task.as_ref().and_then(|t| t.to_str()) {
        Some("demo") => (BUILD.to_vec(), DEMO_ARGS),
        Some("test") => ([BUILD, TEST_TOOLS].concat(), TEST_ARGS),
        Some("help" | "-h" | "--help") => {
            // Ignore a closed stdout (`cargo xtask --help | head`): nothing left to say.
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !cfg!(target_os = "linux") {
        say("kube-nft-proxy programs Linux nftables and builds only on Linux");
        return ExitCode::FAILURE;
    }
    if let Err(msg) = ensure(&reqs) {
        say(&msg);
        return ExitCode::FAILURE;
    }
    let mut cmd = Command::new(cargo());
    cmd.args(base).args(&rest).current_dir(workspace_root());
    match run(&mut cmd) {
        Ok(status) => exit_code(status),
        Err(msg) => {
            say(&msg);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> Requirement {
        *BUILD
            .iter()
            .chain(TEST_TOOLS)
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no requirement {name}"))
    }

    /// Every requirement present except the named ones, which have `status`.
    fn found(names: &[&str], status: Status) -> Vec<(Requirement, Status)> {
        BUILD
            .iter()
            .chain(TEST_TOOLS)
            .map(|r| {
                let s = if names.contains(&r.name) {
                    status.clone()
                } else {
                    Status::Present
                };
                (*r, s)
            })
            .collect()
    }

    const ROOT_APT: Host = Host {
        root: true,
        manager: Some(Manager::Apt),
    };
    const USER_APT: Host = Host {
        root: false,
        manager: Some(Manager::Apt),
    };

    #[test]
    fn nothing_missing_is_ready_whoever_runs_it() {
        for host in [
            ROOT_APT,
            USER_APT,
            Host {
                root: false,
                manager: None,
            },
        ] {
            assert_eq!(decide(&found(&[], Status::Missing), host), Action::Ready);
        }
    }

    #[test]
    fn root_with_apt_installs_the_debian_packages_of_what_is_missing() {
        let f = found(&["libnftnl", "nft", "conntrack"], Status::Missing);
        assert_eq!(
            decide(&f, ROOT_APT),
            Action::AptInstall(vec!["libnftnl-dev", "nftables", "conntrack"])
        );
    }

    #[test]
    fn every_requirement_missing_maps_to_every_debian_package() {
        let all: Vec<&str> = BUILD.iter().chain(TEST_TOOLS).map(|r| r.name).collect();
        assert_eq!(
            decide(&found(&all, Status::Missing), ROOT_APT),
            Action::AptInstall(vec![
                "pkg-config",
                "libnftnl-dev",
                "libmnl-dev",
                "nftables",
                "iproute2",
                "conntrack",
                "python3",
                "util-linux",
                "procps",
                "iptables",
                "ipset"
            ])
        );
    }

    #[test]
    fn without_pkg_config_the_libraries_are_installed_too() {
        // What probe_all reports on a bare machine: pkg-config missing, so the
        // libraries cannot be checked.
        let mut f = found(&["libnftnl", "libmnl"], Status::Unchecked);
        f[0].1 = Status::Missing;
        assert_eq!(f[0].0.name, "pkg-config");
        assert_eq!(
            decide(&f, ROOT_APT),
            Action::AptInstall(vec!["pkg-config", "libnftnl-dev", "libmnl-dev"])
        );
    }

    #[test]
    fn non_root_with_apt_gets_the_one_sudo_line() {
        let f = found(&["pkg-config", "libmnl", "ip"], Status::Missing);
        let Action::Stop(msg) = decide(&f, USER_APT) else {
            panic!("non-root must not install");
        };
        assert_eq!(
            msg,
            "missing: pkg-config, libmnl, ip\n\
             install with this command, then run the same cargo xtask command again:\n\n    \
             sudo apt-get update && sudo apt-get install -y --no-install-recommends pkg-config libmnl-dev iproute2"
        );
    }

    #[test]
    fn other_package_managers_get_their_own_names() {
        let wanted = [req("libnftnl"), req("conntrack"), req("python3")];
        let wanted: Vec<&Requirement> = wanted.iter().collect();
        let dnf = hint(
            &wanted,
            Host {
                root: false,
                manager: Some(Manager::Dnf),
            },
        );
        assert!(
            dnf.ends_with("sudo dnf install -y libnftnl-devel conntrack-tools python3"),
            "{dnf}"
        );
        let pacman = hint(
            &wanted,
            Host {
                root: true,
                manager: Some(Manager::Pacman),
            },
        );
        assert!(
            pacman.ends_with("\n    pacman -S --needed libnftnl conntrack-tools python"),
            "{pacman}"
        );
    }

    #[test]
    fn root_without_apt_is_told_the_command_or_the_debian_names() {
        let f = found(&["libnftnl", "nft"], Status::Missing);
        let Action::Stop(msg) = decide(
            &f,
            Host {
                root: true,
                manager: Some(Manager::Dnf),
            },
        ) else {
            panic!("only apt-get is run by xtask");
        };
        assert!(
            msg.ends_with("dnf install -y libnftnl-devel nftables"),
            "{msg}"
        );
        let Action::Stop(msg) = decide(
            &f,
            Host {
                root: true,
                manager: None,
            },
        ) else {
            panic!("nothing to install with");
        };
        assert!(msg.ends_with("\n    libnftnl-dev nftables"), "{msg}");
    }

    #[test]
    fn a_too_old_library_stops_even_as_root() {
        let f = found(
            &["libnftnl"],
            Status::TooOld {
                found: "1.1.9".into(),
                needed: LIBNFTNL_MIN_VERSION,
            },
        );
        let Action::Stop(msg) = decide(&f, ROOT_APT) else {
            panic!("installing the same old package does not help");
        };
        assert!(
            msg.starts_with("libnftnl 1.1.9 is installed, the build needs >= 1.2.0."),
            "{msg}"
        );
    }

    #[test]
    fn assume_missing_list_parses_loosely() {
        assert_eq!(
            parse_assume_missing(" nft,,libmnl ,"),
            vec!["nft".to_owned(), "libmnl".to_owned()]
        );
        assert!(parse_assume_missing("").is_empty());
    }

    #[test]
    fn assumed_missing_is_missing_without_probing() {
        let assume = parse_assume_missing("pkg-config,nft");
        let f = probe_all(&[req("pkg-config"), req("libmnl"), req("nft")], &assume);
        assert_eq!(f[0].1, Status::Missing);
        assert_eq!(f[1].1, Status::Unchecked, "no pkg-config, no library check");
        assert_eq!(f[2].1, Status::Missing);
    }

    #[test]
    fn min_libnftnl_version_is_the_one_cargo_toml_asks_for() {
        let feature = format!("\"nftnl-{}\"", LIBNFTNL_MIN_VERSION.replace('.', "-"));
        assert!(
            include_str!("../../Cargo.toml").contains(&feature),
            "root Cargo.toml no longer enables nftnl-sys feature {feature}: update LIBNFTNL_MIN_VERSION"
        );
    }

    #[test]
    fn readme_shows_the_commands_xtask_runs() {
        let readme = include_str!("../../README.md");
        for args in [DEMO_ARGS, TEST_ARGS] {
            let line = format!("    cargo {}\n", args.join(" "));
            assert!(
                readme.contains(&line),
                "README.md lacks the direct command `{}`",
                line.trim()
            );
        }
        for cmd in ["    cargo xtask demo\n", "    cargo xtask test\n"] {
            assert!(readme.contains(cmd), "README.md lacks `{}`", cmd.trim());
        }
    }
}
