//! Kernel benchmark (root): commit time through netlink against `nft -f` of the same
//! change, measured in the same run, in network namespaces the benchmark creates.
//!
//! For each scale (default 1k, 10k, 30k services × 10 endpoints; override with
//! `KNP_BENCH_SCALES=10000`): a full load, then single updates on top of it — one
//! endpoint changed, one service added, one service deleted, 100 endpoint changes in one
//! sync. Each figure is printed with its ratio to the nft baseline; the full load also
//! with the kernel memory it adds (`/proc/meminfo` SUnreclaim + VmallocUsed, read once
//! the figures stop moving) against `nft -f` of the same text.
//!
//! Then a cluster with 301 distinct endpoint counts (`KNP_BENCH_CLASSES=30000`, its
//! number of Services; `0` skips it): Services 0..301 have 1..=301 endpoints, the rest
//! 1 to 10 each, so frontends fill every power-of-two class up to `pick-512` and 292
//! exact-count sets. Single changes on top of it: an endpoint added so that a Service
//! moves to the next class (4 → 5 endpoints: `pick-4` → `pick-8`), that endpoint
//! removed again (back to `pick-4`; its `pick-8` membership stays until the next
//! change), a Service added and deleted. Same baseline.
//!
//! Then the kernel memory per Service of upstream's shape against ours
//! (`KNP_BENCH_UPSTREAM=3000` Services × 10 endpoints; `0` skips it).
//!
//! Then `--service-counters` (`KNP_BENCH_COUNTERS`, a number of Services; default the
//! largest scale, `0` skips it): the same cluster loaded into two namespaces, without
//! and with counters; the single changes above committed to both alternately, each with
//! its ratio to the same change without counters; and one scrape of the counters (the
//! daemon's path: dump of the counted sets, sums by Service port, text) against a dump
//! of the same sets without counters.
//!
//! Then session affinity (`KNP_BENCH_AFFINITY=300`, the number of ClientIP Services
//! of 10 endpoints; `0` skips it): the full load through netlink against the same
//! Services as an upstream-shaped ruleset (a chain and a dynamic timeout set per
//! endpoint) through `nft -f`, and the kernel memory each load adds (`/proc/meminfo`
//! SUnreclaim + VmallocUsed, and Slab), as ratios. Also `nft -f` of our own text; the
//! new-connection cost of a Service without affinity with those Services beside it
//! against the same Service alone (real TCP connects through the ClusterIP); and, at the
//! largest scale with that many of its Services given ClientIP affinity, an affinity
//! Service's endpoint replaced and one added.
//!
//!     sudo cargo bench --bench kernel_commit

#![allow(unsafe_code)] // setns(2) to move this thread into the benchmark namespace

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_nft_proxy::counters;
use kube_nft_proxy::model::ProxyModel;
use kube_nft_proxy::netlink::{encode, Kernel};
use kube_nft_proxy::ruleset::build::{self as builder, names};
use kube_nft_proxy::ruleset::diff::{diff, diff_keeping, touches_rules, Known, Op};
use kube_nft_proxy::ruleset::ir::{Family, Ruleset};
use kube_nft_proxy::ruleset::{build, render, BuildConfig};
use kube_nft_proxy::synthetic;

const ENDPOINTS: usize = 10;
const REPEAT: usize = 15;

struct Ns(String);

/// Moves the calling thread into the namespace `name`.
fn enter_ns(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
    use std::os::fd::AsRawFd;
    // Safety: a valid namespace fd; only this thread's namespace changes.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns failed: {}", std::io::Error::last_os_error());
}

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
        enter_ns(&self.0);
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
    for &n in &scales {
        run_scale(n, &cfg);
    }
    let counted: usize = std::env::var("KNP_BENCH_COUNTERS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| scales.iter().copied().max().unwrap_or(0));
    if counted > 0 {
        run_counters(counted, &cfg);
    }
    let classes: usize = std::env::var("KNP_BENCH_CLASSES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(30000);
    if classes > 0 {
        run_classes(classes, &cfg);
    }
    let upstream: usize = std::env::var("KNP_BENCH_UPSTREAM")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3000);
    if upstream > 0 {
        run_upstream_memory(upstream, &cfg);
    }
    let affinity: usize = std::env::var("KNP_BENCH_AFFINITY")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(300);
    if affinity > 0 {
        run_affinity(affinity, &cfg);
        if let Some(&n) = scales.iter().max() {
            run_affinity_at_scale(n, affinity.min(n), &cfg);
        }
    }
}

/// Kernel memory figures of `/proc/meminfo`, in kB: Slab, SUnreclaim, VmallocUsed.
#[derive(Clone, Copy, Default)]
struct Mem {
    slab: i64,
    unreclaimable: i64,
    vmalloc: i64,
}

impl Mem {
    /// What nftables objects cost: unreclaimable slab (kmalloc, large kmalloc pages)
    /// plus vmalloc (kvmalloc's fallback).
    fn kernel(&self) -> i64 {
        self.unreclaimable + self.vmalloc
    }

    fn read() -> Mem {
        let text = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
        let mut m = Mem::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(k), Some(v)) = (w.next(), w.next()) else {
                continue;
            };
            let v: i64 = v.parse().unwrap_or(0);
            match k {
                "Slab:" => m.slab = v,
                "SUnreclaim:" => m.unreclaimable = v,
                "VmallocUsed:" => m.vmalloc = v,
                _ => {}
            }
        }
        m
    }

    /// Median of seven readings 30 ms apart (the figures are global to the machine).
    fn reading() -> Mem {
        let v: Vec<Mem> = (0..7)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(30));
                Mem::read()
            })
            .collect();
        let med = |f: fn(&Mem) -> i64| {
            let mut x: Vec<i64> = v.iter().map(f).collect();
            x.sort();
            x[x.len() / 2]
        };
        Mem {
            slab: med(|m| m.slab),
            unreclaimable: med(|m| m.unreclaimable),
            vmalloc: med(|m| m.vmalloc),
        }
    }

    /// A reading once the kernel's memory has stopped moving: tearing down a large
    /// namespace (the scale runs before this) frees memory for seconds afterwards
    /// (RCU, deferred work), which would otherwise show as a negative cost. Waits until
    /// three readings 300 ms apart agree within 1 MB, at most 60 s.
    fn settled() -> Mem {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Mem::reading();
        let mut calm = 0;
        while calm < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let now = Mem::reading();
            let moved = (now.kernel() - last.kernel())
                .abs()
                .max((now.slab - last.slab).abs());
            calm = if moved < 1024 { calm + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Change from `before` to now, once deferred work has settled.
    fn since(before: Mem) -> Mem {
        std::thread::sleep(Duration::from_secs(1));
        let after = Mem::settled();
        Mem {
            slab: after.slab - before.slab,
            unreclaimable: after.unreclaimable - before.unreclaimable,
            vmalloc: after.vmalloc - before.vmalloc,
        }
    }
}

/// The Services of `model` as upstream kube-proxy's nftables mode shapes them, reduced
/// to ClusterIP DNAT: a verdict map to a chain per Service, `numgen` over an anonymous
/// verdict map to a chain per endpoint that DNATs. With ClientIP affinity (`timeout`),
/// the Service chain first sends recorded clients to their endpoint, and each endpoint
/// has a dynamic timeout set (no declared size) that its chain updates.
fn upstream_script(model: &ProxyModel, timeout: Option<u32>) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("table ip kube-proxy {\n");
    let mut services = Vec::new();
    for (i, e) in model.services.values().enumerate() {
        let n = e.endpoints.len();
        for (j, ep) in e.endpoints.iter().enumerate() {
            let update = match timeout {
                Some(t) => {
                    let _ = writeln!(
                        s,
                        "\tset affinity-{i}-{j} {{ type ipv4_addr; flags dynamic,timeout; timeout {t}s; }}"
                    );
                    format!("\t\tupdate @affinity-{i}-{j} {{ ip saddr }}\n")
                }
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "\tchain endpoint-{i}-{j} {{\n{update}\t\tmeta l4proto tcp dnat to {}:{}\n\t}}",
                ep.ip, ep.port
            );
        }
        let _ = writeln!(s, "\tchain service-{i} {{");
        if timeout.is_some() {
            for j in 0..n {
                let _ = writeln!(s, "\t\tip saddr @affinity-{i}-{j} goto endpoint-{i}-{j}");
            }
        }
        let vmap: Vec<String> = (0..n)
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        let _ = writeln!(
            s,
            "\t\tnumgen random mod {n} vmap {{ {} }}\n\t}}",
            vmap.join(", ")
        );
        services.push(format!(
            "{} . tcp . {} : goto service-{i}",
            e.port.cluster_ips[0], e.port.port
        ));
    }
    let _ = writeln!(
        s,
        "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = {{ {} }}\n\t}}",
        services.join(", ")
    );
    s.push_str(
        "\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n",
    );
    s.push_str("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n");
    s.push_str("\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n}\n");
    s
}

/// Kernel memory per Service of the upstream shape ([`upstream_script`], no affinity)
/// against ours, at `n` Services × 10 endpoints: both loaded into fresh namespaces,
/// ours through netlink. Not at 30k: nft loads upstream's shape in one transaction in
/// time quadratic in its anonymous verdict maps (`notes/netlink.md`: 30–75 s at 10k × 3).
fn run_upstream_memory(n: usize, cfg: &BuildConfig) {
    let model: ProxyModel = synthetic::model(n, ENDPOINTS);
    let rs = build(&model, cfg);
    let mut ops = Vec::new();
    for t in &rs.tables {
        diff(None, t, &mut ops);
    }
    let batch = encode(&ops).expect("encode");
    let upstream = upstream_script(&model, None);
    let ns_up = Ns::new("mem-upstream");
    let ns_nl = Ns::new("mem-nl");
    let before = Mem::settled();
    let up_time = ns_up.nft(&upstream);
    let up_mem = Mem::since(before);
    ns_nl.enter();
    let mut kernel = Kernel::open().expect("netlink socket");
    let before = Mem::settled();
    let t0 = Instant::now();
    kernel.commit(&batch, &ops).expect("full load commit");
    let nl_time = t0.elapsed();
    let nl_mem = Mem::since(before);
    let per = |m: &Mem| m.kernel() as f64 / n as f64;
    println!("\n== kernel memory, {n} services x {ENDPOINTS} endpoints (ClusterIP), against the upstream shape");
    println!(
        "upstream shape, nft -f       load {:>8.1} ms | kernel memory {:>7.1} MB = {:.2} KB per Service",
        ms(up_time),
        up_mem.kernel() as f64 / 1024.0,
        per(&up_mem)
    );
    println!(
        "ours, netlink commit         load {:>8.1} ms | kernel memory {:>7.1} MB = {:.2} KB per Service | ratio {:.2}",
        ms(nl_time),
        nl_mem.kernel() as f64 / 1024.0,
        per(&nl_mem),
        nl_mem.kernel() as f64 / up_mem.kernel().max(1) as f64
    );
    drop((ns_up, ns_nl));
}

fn run_affinity(n: usize, cfg: &BuildConfig) {
    const TIMEOUT: u32 = 10800;
    let mut model: ProxyModel = synthetic::model(n, ENDPOINTS);
    for e in model.services.values_mut() {
        e.port.affinity_timeout = Some(TIMEOUT);
    }
    let sets = n * ENDPOINTS;
    let rs = build(&model, cfg);
    let mut ops = Vec::new();
    for t in &rs.tables {
        diff(None, t, &mut ops);
    }
    let batch = encode(&ops).expect("encode");
    let upstream = upstream_script(&model, Some(TIMEOUT));
    let ours_text = render::ruleset(&rs);

    // Three loads of each shape, each into a fresh namespace; medians. Kernel memory
    // is global to the machine, so one reading can be off by a few MB (measured: a
    // single run once gave 1.73x where others gave 1.4x).
    const REPS: usize = 3;
    let mut runs: [Vec<(Duration, Mem)>; 3] = Default::default();
    for rep in 0..REPS {
        let ns_up = Ns::new(&format!("aff-upstream-{rep}"));
        let ns_nl = Ns::new(&format!("aff-nl-{rep}"));
        let ns_text = Ns::new(&format!("aff-text-{rep}"));

        let before = Mem::settled();
        let up_time = ns_up.nft(&upstream);
        runs[0].push((up_time, Mem::since(before)));

        ns_nl.enter();
        let mut kernel = Kernel::open().expect("netlink socket");
        let before = Mem::settled();
        let t0 = Instant::now();
        kernel.commit(&batch, &ops).expect("affinity load commit");
        let nl_time = t0.elapsed();
        runs[1].push((nl_time, Mem::since(before)));

        let before = Mem::settled();
        let text_time = ns_text.nft(&ours_text);
        runs[2].push((text_time, Mem::since(before)));
        drop((kernel, ns_up, ns_nl, ns_text));
    }
    let median = |v: &[(Duration, Mem)]| {
        let mut t: Vec<Duration> = v.iter().map(|x| x.0).collect();
        t.sort();
        let mut m: Vec<Mem> = v.iter().map(|x| x.1).collect();
        m.sort_by_key(|m| m.kernel());
        (t[t.len() / 2], m[m.len() / 2])
    };
    let (up_time, up_mem) = median(&runs[0]);
    let (nl_time, nl_mem) = median(&runs[1]);
    let (text_time, text_mem) = median(&runs[2]);

    let mb = |kb: i64| kb as f64 / 1024.0;
    let per_set = |m: &Mem| m.kernel() as f64 / sets as f64;
    println!(
        "\n== session affinity: {n} ClientIP services x {ENDPOINTS} endpoints = {sets} affinity sets ({} messages)",
        batch.messages
    );
    let line = |what: &str, t: Duration, m: &Mem| {
        println!(
            "{what:<28} load {:>8.1} ms (ratio {:.3}) | kernel memory {:>7.1} MB = {:>6.2} KB per affinity endpoint (ratio {:.2}) | Slab {:+.1} MB",
            ms(t),
            t.as_secs_f64() / up_time.as_secs_f64(),
            mb(m.kernel()),
            per_set(m),
            m.kernel() as f64 / up_mem.kernel().max(1) as f64,
            mb(m.slab)
        );
    };
    line("upstream shape, nft -f", up_time, &up_mem);
    line("ours, netlink commit", nl_time, &nl_mem);
    line("ours, nft -f of our text", text_time, &text_mem);
    println!("(medians of {REPS} loads each; ratios against the upstream shape through nft -f; lower is better)");
    let conn_ratio = affinity_data_plane(n, cfg);
    println!(
        "issue 14 targets: load {:.3} of upstream (<= 0.5), kernel memory {:.2}x upstream (<= 2), new connection without affinity {:.3}x (<= 1.05)",
        nl_time.as_secs_f64() / up_time.as_secs_f64(),
        nl_mem.kernel() as f64 / up_mem.kernel().max(1) as f64,
        conn_ratio
    );
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
    let batch = encode(&ops).expect("encode");
    let encode_time = t0.elapsed();
    let text = render::ruleset(&cur);
    let before = Mem::settled();
    let t0 = Instant::now();
    kernel.commit(&batch, &ops).expect("full load commit");
    let commit_full = t0.elapsed();
    let nl_mem = Mem::since(before);
    let before = Mem::settled();
    let nft_full = ns_nft.nft(&text);
    let nft_mem = Mem::since(before);
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
    let kb_per = |m: &Mem, count: usize| m.kernel() as f64 / count as f64;
    println!(
        "kernel memory    netlink load {:>7.1} MB = {:.2} KB per Service ({:.3} KB per endpoint) | nft -f {:>7.1} MB = {:.2} KB per Service | ratio {:.2}",
        nl_mem.kernel() as f64 / 1024.0,
        kb_per(&nl_mem, n),
        kb_per(&nl_mem, n * ENDPOINTS),
        nft_mem.kernel() as f64 / 1024.0,
        kb_per(&nft_mem, n),
        nl_mem.kernel() as f64 / nft_mem.kernel().max(1) as f64
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
        let batch = encode(&ops).expect("encode");
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

/// New-connection cost of a Service without affinity, with and without `n` ClientIP
/// Services beside it: two namespaces, each with its own rules, a listener on the
/// Service's endpoint addresses and a client that connects to the ClusterIP through the
/// nat output hook (closing with RST, so no TIME_WAIT piles up). The two are measured
/// alternately, round by round, so a slow phase of the machine hits both alike.
/// Returns the median over rounds of the ratio with / alone.
fn affinity_data_plane(n: usize, cfg: &BuildConfig) -> f64 {
    const ROUNDS: usize = 20;
    const ROUND: Duration = Duration::from_millis(300);
    const PLAIN: usize = 10;
    let plain = synthetic::model(PLAIN, ENDPOINTS);
    let mut with = synthetic::model(PLAIN + n, ENDPOINTS);
    for e in with.services.values_mut() {
        if e.port.name.name != "svc0" {
            e.port.affinity_timeout = Some(10800);
        }
    }
    let target = synthetic::entry(0, ENDPOINTS);
    let vip = target.port.cluster_ips[0];
    let nss: Vec<Ns> = [("dp-plain", &plain), ("dp-affinity", &with)]
        .into_iter()
        .map(|(tag, model)| {
            let ns = Ns::new(tag);
            let run = |args: &[&str]| {
                let ok = Command::new("ip")
                    .args(["netns", "exec", &ns.0])
                    .args(args)
                    .status()
                    .map(|s| s.success());
                assert!(matches!(ok, Ok(true)), "{args:?} failed in {}", ns.0);
            };
            run(&["ip", "link", "set", "lo", "up"]);
            for e in &target.endpoints {
                run(&["ip", "addr", "add", &format!("{}/32", e.ip), "dev", "lo"]);
            }
            run(&["ip", "route", "add", "10.96.0.0/12", "dev", "lo"]);
            let rs = build(model, cfg);
            let mut ops = Vec::new();
            for t in &rs.tables {
                diff(None, t, &mut ops);
            }
            std::thread::scope(|s| {
                s.spawn(|| {
                    ns.enter();
                    let mut k = Kernel::open().expect("netlink socket");
                    k.apply(&ops).expect("data-plane load");
                });
            });
            ns
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listeners: Vec<_> = nss
        .iter()
        .map(|ns| {
            let (name, stop) = (ns.0.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || {
                enter_ns(&name);
                let l = std::net::TcpListener::bind(("0.0.0.0", 8080)).expect("listen");
                let _ = tx.send(());
                // Blocking accept: a listener that polls can sleep through a burst on
                // these 2 busy cores, and a full accept queue drops SYNs (a 1 s stall
                // for the client, which is not what is measured). Detached at the end.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = l.accept();
                }
            });
            let _ = rx.recv();
            h
        })
        .collect();
    let dst = std::net::SocketAddr::new(vip, 80);
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut failed = [0usize; 2];
    let mut ratios = Vec::new();
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for round in 0..=ROUNDS {
        // Alternate which namespace goes first, and compare within a round: a slow
        // phase of the machine then hits both series alike.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut medians = [0.0; 2];
        for k in order {
            let ns = &nss[k];
            let name = ns.0.clone();
            let got = std::thread::spawn(move || {
                enter_ns(&name);
                let mut v = Vec::new();
                let mut lost = 0usize;
                let start = Instant::now();
                while start.elapsed() < ROUND {
                    let t0 = Instant::now();
                    match std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                        Ok(s) => {
                            v.push(t0.elapsed().as_secs_f64() * 1e6);
                            rst_close(s);
                        }
                        Err(_) => lost += 1,
                    }
                }
                (v, lost)
            })
            .join()
            .expect("client thread");
            let (got, lost) = got;
            failed[k] += lost;
            // Round 0 warms caches and conntrack up.
            if round > 0 {
                let mut got = got;
                medians[k] = p50(&mut got);
                lat[k].extend(got);
            }
        }
        if round > 0 {
            ratios.push(medians[1] / medians[0]);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(listeners);
    // A connection that fails is counted, not timed; more than one in a thousand means
    // the rules lose connections, which no latency figure may hide.
    for k in 0..2 {
        assert!(
            failed[k] * 1000 <= lat[k].len(),
            "{} of {} connections failed in {}",
            failed[k],
            lat[k].len(),
            nss[k].0
        );
    }
    let (a, b) = (p50(&mut lat[0]), p50(&mut lat[1]));
    let ratio = p50(&mut ratios);
    println!(
        "new connection to a Service without affinity: {a:.1} µs alone ({} connections, {} failed), {b:.1} µs with {n} ClientIP Services ({}, {} failed); ratio {ratio:.3} (median over {ROUNDS} rounds of the ratio of the round's medians)",
        lat[0].len(),
        failed[0],
        lat[1].len(),
        failed[1],
    );
    ratio
}

/// Closes with RST (SO_LINGER 0): the client's ports never wait in TIME_WAIT.
fn rst_close(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Safety: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Commit cost of single changes of a ClientIP Service at scale: `n` Services of which
/// `affinity` have ClientIP affinity; an affinity Service's endpoint replaced (same
/// count) and one added (its chain grows), each undone after, next to `nft -f` of the
/// same change.
fn run_affinity_at_scale(n: usize, affinity: usize, cfg: &BuildConfig) {
    let ns_nl = Ns::new("affscale-nl");
    let ns_nft = Ns::new("affscale-nft");
    let mut model: ProxyModel = synthetic::model(n, ENDPOINTS);
    let keys: Vec<_> = (0..affinity)
        .map(|i| {
            synthetic::entry(i * (n / affinity.max(1)).max(1) % n, ENDPOINTS)
                .port
                .name
        })
        .collect();
    for k in &keys {
        if let Some(e) = model.services.get_mut(k) {
            e.port.affinity_timeout = Some(10800);
        }
    }
    let mut cur = build(&model, cfg);
    let mut ops = Vec::new();
    for t in &cur.tables {
        diff(None, t, &mut ops);
    }
    let mut times: [(Vec<Duration>, Vec<Duration>, usize); 2] = Default::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            ns_nl.enter();
            let mut kernel = Kernel::open().expect("netlink socket");
            kernel.apply(&ops).expect("full load");
            ns_nft.nft(&render::ruleset(&cur));
            for r in 0..REPEAT {
                let k = &keys[r * 13 % keys.len()];
                for (which, slot) in times.iter_mut().enumerate() {
                    let saved = model.services[k].endpoints.clone();
                    let e = model.services.get_mut(k).expect("service");
                    if which == 0 {
                        e.endpoints[0].ip = synthetic::endpoint(n + 1000 + r, 0).ip;
                    } else {
                        e.endpoints.push(synthetic::endpoint(n + 2000 + r, 0));
                    }
                    for step in 0..2 {
                        if step == 1 {
                            model.services.get_mut(k).expect("service").endpoints = saved.clone();
                        }
                        let new = build(&model, cfg);
                        let ops = ops_between(&cur, &new);
                        let batch = encode(&ops).expect("encode");
                        let t0 = Instant::now();
                        kernel.commit(&batch, &ops).expect("affinity update commit");
                        slot.0.push(t0.elapsed());
                        slot.1.push(ns_nft.nft(&render::script(&ops)));
                        slot.2 = ops.len();
                        cur = new;
                    }
                }
            }
        });
    });
    println!(
        "\n== {n} services x {ENDPOINTS} endpoints, {affinity} of them with ClientIP affinity"
    );
    for (name, (nl, nf, ops)) in ["affinity endpoint replaced", "affinity endpoint added"]
        .iter()
        .zip(times)
    {
        let (nl, nf) = (median(nl), median(nf));
        println!(
            "{name:<28} netlink commit {:>9.3} ms | nft -f {:>9.2} ms | ratio {:.4}  ({ops} ops)",
            ms(nl),
            ms(nf),
            nl.as_secs_f64() / nf.as_secs_f64(),
        );
    }
}

/// The endpoint count of Service `i` in [`run_classes`]' cluster.
fn class_count(i: usize) -> usize {
    if i < 301 {
        i + 1
    } else {
        1 + i % 10
    }
}

fn run_classes(n: usize, cfg: &BuildConfig) {
    assert!(n > 400, "KNP_BENCH_CLASSES must exceed 400 services");
    let ns_nl = Ns::new("cl-nl");
    let ns_nft = Ns::new("cl-nft");
    ns_nl.enter();
    let mut kernel = Kernel::open().expect("netlink socket");
    let mut model = synthetic::model(0, 0);
    for i in 0..n {
        let e = synthetic::entry(i, class_count(i));
        model.services.insert(e.port.name.clone(), e);
    }
    let desired = build(&model, cfg);
    let t = desired.table(Family::V4).expect("an IPv4 table");
    let count = |prefix: &str| {
        t.sets
            .iter()
            .filter(|s| builder::class_of(&s.decl.name, prefix).is_some())
            .count()
    };
    let (picks, exact) = (count(names::PICK_PREFIX), count(names::FRONTENDS_PREFIX));
    let mut ops = Vec::new();
    for t in &desired.tables {
        diff(None, t, &mut ops);
    }
    let batch = encode(&ops).expect("encode");
    let t0 = Instant::now();
    kernel.commit(&batch, &ops).expect("full load commit");
    let full = t0.elapsed();
    let nft_full = ns_nft.nft(&render::ruleset(&desired));
    let elements: usize = desired.tables.iter().map(|t| t.element_count()).sum();
    println!(
        "\n== {n} services with 301 distinct endpoint counts ({picks} pick-P classes, {exact} exact-count sets, {elements} set elements)"
    );
    println!(
        "full load        netlink commit {:>9.2} ms | nft -f {:>9.2} ms | ratio {:.3}",
        ms(full),
        ms(nft_full),
        full.as_secs_f64() / nft_full.as_secs_f64()
    );
    // What the kernel holds: the desired table plus what a diff kept for one sync.
    let mut held = desired;
    let mut updates: Vec<Update> = [
        "endpoint added, class 4 -> 8",
        "endpoint removed, class 8 -> 4",
        "service added",
        "service deleted",
    ]
    .into_iter()
    .map(|name| Update {
        name,
        netlink: vec![],
        nft: vec![],
        ops: 0,
    })
    .collect();
    let mut apply = |which: usize, model: &ProxyModel, held: &mut Ruleset, kernel: &mut Kernel| {
        let new = build(model, cfg);
        let (mut ops, mut kept) = (Vec::new(), Vec::new());
        for t in &new.tables {
            let o = held.table(t.family).expect("same families");
            diff_keeping(
                Some(Known {
                    table: o,
                    rules_known: true,
                }),
                t,
                &mut ops,
                &mut kept,
            );
        }
        assert!(
            !ops.iter().any(touches_rules),
            "{}: a single change touched rules",
            updates[which].name
        );
        let script = render::script(&ops);
        let batch = encode(&ops).expect("encode");
        let t0 = Instant::now();
        kernel.commit(&batch, &ops).expect("update commit");
        let nl = t0.elapsed();
        let nf = ns_nft.nft(&script);
        let u = &mut updates[which];
        u.netlink.push(nl);
        u.nft.push(nf);
        u.ops = ops.len();
        *held = new;
        for (family, set, key, value) in kept {
            let s = held
                .tables
                .iter_mut()
                .filter(|t| t.family == family)
                .flat_map(|t| t.sets.iter_mut())
                .find(|s| s.decl.name == set);
            if let Some(s) = s {
                std::sync::Arc::make_mut(&mut s.elements).insert(key, value);
            }
        }
    };
    for r in 0..REPEAT {
        // A Service of 4 endpoints (class 4) gets a fifth (class 8, exact count 5).
        let i = 303 + 10 * r;
        let k = synthetic::entry(i, class_count(i)).port.name;
        assert_eq!(model.services[&k].endpoints.len(), 4);
        let extra = synthetic::endpoint(n + r, 0);
        model
            .services
            .get_mut(&k)
            .expect("service")
            .endpoints
            .push(extra);
        apply(0, &model, &mut held, &mut kernel);
        model.services.get_mut(&k).expect("service").endpoints.pop();
        apply(1, &model, &mut held, &mut kernel);
        // A Service added (7 endpoints), then deleted.
        let e = synthetic::entry(n + r, 7);
        let key = e.port.name.clone();
        model.services.insert(key.clone(), e);
        apply(2, &model, &mut held, &mut kernel);
        model.services.remove(&key);
        apply(3, &model, &mut held, &mut kernel);
    }
    for u in updates {
        let nl = median(u.netlink);
        let nf = median(u.nft);
        println!(
            "{:<30} netlink commit {:>9.3} ms | nft -f {:>9.2} ms | ratio {:.4}  ({} ops)",
            u.name,
            ms(nl),
            ms(nf),
            nl.as_secs_f64() / nf.as_secs_f64(),
            u.ops
        );
    }
}

/// `--service-counters` at `n` Services × [`ENDPOINTS`] endpoints (see the top of the
/// file): single changes with and without counters, and one scrape.
fn run_counters(n: usize, base: &BuildConfig) {
    let cfgs = [
        base.clone(),
        BuildConfig {
            service_counters: true,
            ..base.clone()
        },
    ];
    let nss = [Ns::new("ctr-off"), Ns::new("ctr-on")];
    let mut model: ProxyModel = synthetic::model(n, ENDPOINTS);
    let mut kernels = Vec::new();
    let mut cur = Vec::new();
    for (ns, cfg) in nss.iter().zip(&cfgs) {
        // A netlink socket stays in the namespace it was opened in.
        ns.enter();
        let mut kernel = Kernel::open().expect("netlink socket");
        let rs = build(&model, cfg);
        let mut ops = Vec::new();
        for t in &rs.tables {
            diff(None, t, &mut ops);
        }
        kernel.apply(&ops).expect("full load");
        kernels.push(kernel);
        cur.push(rs);
    }
    let counted_elements: usize = cur[1]
        .tables
        .iter()
        .flat_map(|t| &t.sets)
        .filter(|s| s.decl.counter)
        .map(|s| s.elements.len())
        .sum();
    let names = ["endpoint changed", "service added", "service deleted"];
    // [change][off, on]: commit times; ops of the last commit with counters
    let mut times: Vec<[Vec<Duration>; 2]> = names.iter().map(|_| Default::default()).collect();
    let mut ops_on = [0usize; 3];
    let mut commit = |which: usize, model: &ProxyModel, order: [usize; 2]| {
        for k in order {
            let new = build(model, &cfgs[k]);
            let ops = ops_between(&cur[k], &new);
            assert!(
                !ops.iter().any(touches_rules),
                "{}: a single change touched rules",
                names[which]
            );
            let batch = encode(&ops).expect("encode");
            let t0 = Instant::now();
            kernels[k].commit(&batch, &ops).expect("update commit");
            times[which][k].push(t0.elapsed());
            if k == 1 {
                ops_on[which] = ops.len();
            }
            cur[k] = new;
        }
    };
    for r in 0..REPEAT {
        // Which namespace commits first alternates: a slow phase hits both alike.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let k = synthetic::entry(r * 7 % n, ENDPOINTS).port.name;
        let old_ip = model.services[&k].endpoints[0].ip;
        model.services.get_mut(&k).expect("service").endpoints[0].ip =
            synthetic::endpoint(n + 1000 + r, 0).ip;
        commit(0, &model, order);
        model.services.get_mut(&k).expect("service").endpoints[0].ip = old_ip;
        commit(0, &model, order);
        let e = synthetic::entry(n + r, ENDPOINTS);
        let key = e.port.name.clone();
        model.services.insert(key.clone(), e);
        commit(1, &model, order);
        model.services.remove(&key);
        commit(2, &model, order);
    }
    // One scrape as the daemon does it, against dumping the same sets without counters.
    let mut totals = counters::Totals::default();
    let mut scrape = Vec::new();
    // read (netlink dumps, parsed), sums by Service port, text
    let mut parts: [Vec<Duration>; 3] = Default::default();
    let mut plain = Vec::new();
    let (mut series, mut bytes, mut read) = (0, 0, 0);
    for r in 0..REPEAT {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let t0 = Instant::now();
            if k == 1 {
                let readings = counters::read(&mut kernels[1]).expect("read the counters");
                let t_read = t0.elapsed();
                // A dump can list an element twice (a hash table resizing meanwhile);
                // counted outside the timed part.
                read = readings
                    .iter()
                    .map(|r| r.id)
                    .collect::<std::collections::HashSet<u64>>()
                    .len();
                let t1 = Instant::now();
                let out = totals.update(readings);
                let t_sums = t1.elapsed();
                bytes = counters::render(&out).len();
                let t_text = t1.elapsed() - t_sums;
                series = out.len();
                scrape.push(t_read + t_sums + t_text);
                for (p, t) in parts.iter_mut().zip([t_read, t_sums, t_text]) {
                    p.push(t);
                }
            } else {
                let mut elements = std::collections::HashSet::new();
                for family in Family::ALL {
                    for set in kernels[0].set_decls(family).expect("set declarations") {
                        if builder::counted(&set.name).is_some() {
                            let dump = kernels[0].set_elements(family, &set.name).expect("dump");
                            elements.extend(dump.into_iter().map(|e| (set.name.clone(), e.key)));
                        }
                    }
                }
                assert_eq!(
                    elements.len(),
                    counted_elements,
                    "the dump without counters"
                );
                plain.push(t0.elapsed());
            }
        }
    }
    assert_eq!(
        read, counted_elements,
        "the scrape read every counted element"
    );
    println!(
        "\n== --service-counters, {n} services x {ENDPOINTS} endpoints: {counted_elements} counted elements; medians of {REPEAT}; ratio = with counters / without (same run)"
    );
    for (i, name) in names.iter().enumerate() {
        let [off, on] = times[i].clone();
        let (off, on) = (median(off), median(on));
        println!(
            "{name:<18} without {:>7.3} ms | with counters {:>7.3} ms | ratio {:.3}  ({} ops)",
            ms(off),
            ms(on),
            on.as_secs_f64() / off.as_secs_f64(),
            ops_on[i]
        );
    }
    let (s, p) = (median(scrape), median(plain));
    let [r, u, t] = parts.map(median);
    println!(
        "one scrape         {:>7.2} ms ({series} series, {:.0} KiB of text; read {:.2} ms, sums {:.2} ms, text {:.2} ms) | dump of the same sets without counters {:>7.2} ms | ratio {:.2}",
        ms(s),
        bytes as f64 / 1024.0,
        ms(r),
        ms(u),
        ms(t),
        ms(p),
        s.as_secs_f64() / p.as_secs_f64()
    );
    drop(nss);
}
