//! Kernel benchmark (root): commit time through netlink against `nft -f` of the same
//! change, measured in the same run, in network namespaces the benchmark creates.
//!
//! For each scale (default 1k, 10k, 30k services × 10 endpoints; override with
//! `KNP_BENCH_SCALES=10000`): a full load, then single updates on top of it — one
//! endpoint changed, one service added, one service deleted, 100 endpoint changes in one
//! sync. Each figure is printed with its ratio to the nft baseline.
//!
//!     sudo cargo bench --bench kernel_commit

#![allow(unsafe_code)] // setns(2) to move this thread into the benchmark namespace

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_nft_proxy::model::ProxyModel;
use kube_nft_proxy::netlink::{encode, Kernel};
use kube_nft_proxy::ruleset::diff::{diff, Known, Op};
use kube_nft_proxy::ruleset::ir::Ruleset;
use kube_nft_proxy::ruleset::{build, render, BuildConfig};
use kube_nft_proxy::synthetic;

const ENDPOINTS: usize = 10;
const REPEAT: usize = 15;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("knp-bench-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)),
            "cannot create network namespace {name}"
        );
        Ns(name)
    }

    /// Moves the calling thread into this namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.0)).expect("open netns");
        use std::os::fd::AsRawFd;
        // Safety: a valid namespace fd; only this thread's namespace changes.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns failed: {}", std::io::Error::last_os_error());
    }

    /// Runs `nft -f -` with `script` in this namespace; returns the wall time.
    fn nft(&self, script: &str) -> Duration {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let st = child.wait().expect("wait nft");
        let d = start.elapsed();
        assert!(st.success(), "nft -f failed");
        d
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ops_between(old: &Ruleset, new: &Ruleset) -> Vec<Op> {
    let mut ops = Vec::new();
    for t in &new.tables {
        let o = old.table(t.family).expect("same families");
        diff(
            Some(Known {
                table: o,
                rules_known: true,
            }),
            t,
            &mut ops,
        );
    }
    ops
}

struct Update {
    name: &'static str,
    netlink: Vec<Duration>,
    nft: Vec<Duration>,
    ops: usize,
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("KNP_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("kernel benchmark needs root");
        }
        println!("kernel_commit: skipped (needs root)");
        return;
    }
    let scales: Vec<usize> = std::env::var("KNP_BENCH_SCALES")
        .unwrap_or_else(|_| "1000,10000,30000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let cfg = BuildConfig {
        cluster_cidrs: vec!["10.128.0.0/9".parse().expect("cidr")],
        ..Default::default()
    };
    println!("kernel_commit: {ENDPOINTS} endpoints per service; medians of {REPEAT}; ratio = netlink commit / nft -f of the same change (lower is better)");
    for n in scales {
        run_scale(n, &cfg);
    }
}

fn run_scale(n: usize, cfg: &BuildConfig) {
    let ns_nl = Ns::new("nl");
    let ns_nft = Ns::new("nft");
    ns_nl.enter();
    let mut kernel = Kernel::open().expect("netlink socket");

    let mut model: ProxyModel = synthetic::model(n, ENDPOINTS);
    let t0 = Instant::now();
    let mut cur = build(&model, cfg);
    let build_time = t0.elapsed();
    let elements: usize = cur.tables.iter().map(|t| t.element_count()).sum();

    // Full load.
    let mut ops = Vec::new();
    for t in &cur.tables {
        diff(None, t, &mut ops);
    }
    let t0 = Instant::now();
    let batch = encode(&ops);
    let encode_time = t0.elapsed();
    let t0 = Instant::now();
    kernel.commit(&batch, &ops).expect("full load commit");
    let commit_full = t0.elapsed();
    let text = render::ruleset(&cur);
    let nft_full = ns_nft.nft(&text);
    println!(
        "\n== {n} services x {ENDPOINTS} endpoints: {elements} set elements, build {:.1} ms, batch {:.1} MiB in {} messages, encode {:.1} ms",
        ms(build_time),
        batch.bytes.len() as f64 / (1 << 20) as f64,
        batch.messages,
        ms(encode_time)
    );
    println!(
        "full load        netlink commit {:>9.2} ms | nft -f {:>9.2} ms | ratio {:.3}",
        ms(commit_full),
        ms(nft_full),
        commit_full.as_secs_f64() / nft_full.as_secs_f64()
    );
    if n <= 2000 {
        let list = |ns: &Ns| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "nft",
                    "list",
                    "table",
                    "ip",
                    "kube-nft-proxy",
                ])
                .output()
                .expect("nft list")
                .stdout
        };
        assert_eq!(
            list(&ns_nl),
            list(&ns_nft),
            "netlink and nft -f loaded different tables"
        );
        println!("(checked: nft list of both namespaces is identical)");
    }

    let mut updates = vec![
        Update {
            name: "endpoint changed",
            netlink: vec![],
            nft: vec![],
            ops: 0,
        },
        Update {
            name: "service added",
            netlink: vec![],
            nft: vec![],
            ops: 0,
        },
        Update {
            name: "service deleted",
            netlink: vec![],
            nft: vec![],
            ops: 0,
        },
        Update {
            name: "100 endpoints changed",
            netlink: vec![],
            nft: vec![],
            ops: 0,
        },
    ];
    let mut apply = |which: usize, model: &ProxyModel, cur: &mut Ruleset, kernel: &mut Kernel| {
        let new = build(model, cfg);
        let ops = ops_between(cur, &new);
        let script = render::script(&ops);
        let batch = encode(&ops);
        let t0 = Instant::now();
        kernel.commit(&batch, &ops).expect("update commit");
        let nl = t0.elapsed();
        let nf = ns_nft.nft(&script);
        let u = &mut updates[which];
        u.netlink.push(nl);
        u.nft.push(nf);
        u.ops = ops.len();
        *cur = new;
    };
    for r in 0..REPEAT {
        // One endpoint changed (same count), then changed back.
        let k = synthetic::entry(r * 7 % n, ENDPOINTS).port.name;
        let new_ip = synthetic::endpoint(n + 1000 + r, 0).ip;
        let old_ip = model.services[&k].endpoints[0].ip;
        model.services.get_mut(&k).expect("service").endpoints[0].ip = new_ip;
        apply(0, &model, &mut cur, &mut kernel);
        model.services.get_mut(&k).expect("service").endpoints[0].ip = old_ip;
        apply(0, &model, &mut cur, &mut kernel);
        // A service added, then deleted.
        let e = synthetic::entry(n + r, ENDPOINTS);
        let key = e.port.name.clone();
        model.services.insert(key.clone(), e);
        apply(1, &model, &mut cur, &mut kernel);
        model.services.remove(&key);
        apply(2, &model, &mut cur, &mut kernel);
        // 100 endpoints changed in one sync, then back.
        let keys: Vec<_> = (0..100.min(n))
            .map(|i| synthetic::entry((i * 97 + r) % n, ENDPOINTS).port.name)
            .collect();
        let saved: Vec<_> = keys
            .iter()
            .map(|k| model.services[k].endpoints[1].ip)
            .collect();
        for (i, k) in keys.iter().enumerate() {
            model.services.get_mut(k).expect("service").endpoints[1].ip =
                synthetic::endpoint(n + 5000 + i, 1).ip;
        }
        apply(3, &model, &mut cur, &mut kernel);
        for (k, ip) in keys.iter().zip(saved) {
            model.services.get_mut(k).expect("service").endpoints[1].ip = ip;
        }
        apply(3, &model, &mut cur, &mut kernel);
    }
    for u in updates {
        let nl = median(u.netlink);
        let nf = median(u.nft);
        println!(
            "{:<16} netlink commit {:>9.3} ms | nft -f {:>9.2} ms | ratio {:.4}  ({} ops)",
            u.name,
            ms(nl),
            ms(nf),
            nl.as_secs_f64() / nf.as_secs_f64(),
            u.ops
        );
    }
}
