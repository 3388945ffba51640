//! Where the daemon's memory goes: resident set size after each stage of building the
//! desired state for a synthetic cluster, in one process.
//!
//!     cargo run --release --example rss_stages -- 30000

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kube_nft_proxy::model::{ClusterState, Problems, ProxyModel};
use kube_nft_proxy::ruleset::incremental::Incremental;
use kube_nft_proxy::ruleset::BuildConfig;
use kube_nft_proxy::synthetic;

/// Counts the bytes the program holds on the heap: RSS keeps what the allocator has
/// not returned, so it blurs the stages; live bytes do not.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1048576.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30000);
    let base = rss_mib();
    println!(
        "{n} services x 10 endpoints; VmRSS and live heap in MiB (delta to the previous stage)"
    );
    let mut last = (base, live_mib());
    let mut stage = |name: &str| {
        let now = (rss_mib(), live_mib());
        println!(
            "{name:<44} rss {:>7.1} ({:+.1})  heap {:>7.1} ({:+.1})",
            now.0,
            now.0 - last.0,
            now.1,
            now.1 - last.1
        );
        last = now;
    };
    stage("start");
    let state = ClusterState::from_objects(synthetic::objects(n, 10, 0));
    stage("cluster state (lean objects)");
    let model = ProxyModel::compute(&state, "bench-node", &mut Problems::default());
    stage("proxy model (service ports + endpoints)");
    let inc = Incremental::full(&model, &BuildConfig::default());
    stage("incremental ruleset (table + contributions)");
    let text = kube_nft_proxy::ruleset::render::ruleset(inc.ruleset());
    stage("rendered nft text (transient, /debug/rules)");
    drop(text);
    let batch = kube_nft_proxy::netlink::encode(&{
        let mut ops = Vec::new();
        for t in &inc.ruleset().tables {
            kube_nft_proxy::ruleset::diff::diff(None, t, &mut ops);
        }
        ops
    })
    .expect("our own ruleset encodes");
    stage("full-load ops + netlink batch (transient)");
    println!("batch {:.1} MiB", batch.bytes.len() as f64 / 1048576.0);
    drop(batch);
    stage("after dropping the batch");
    std::hint::black_box((&state, &model, &inc));
}
