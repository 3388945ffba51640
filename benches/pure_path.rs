//! Pure-path benchmark (no kernel): objects → model → IR → diff → encoded batch, for a
//! full build and for one changed EndpointSlice, at 1k, 10k and 30k services × 10
//! endpoints (`KNP_BENCH_SCALES` overrides). After criterion's own figures, a summary
//! prints each stage and the ratio of the one-slice path to the full build measured in
//! the same run.
//!
//!     cargo bench --bench pure_path

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use kube_nft_proxy::model::{ClusterState, Object, Problems, ProxyModel};
use kube_nft_proxy::netlink::encode;
use kube_nft_proxy::ruleset::diff::{diff, Known, Op};
use kube_nft_proxy::ruleset::incremental::Incremental;
use kube_nft_proxy::ruleset::ir::Ruleset;
use kube_nft_proxy::ruleset::{build, BuildConfig};
use kube_nft_proxy::synthetic;
use std::collections::BTreeSet;

const ENDPOINTS: usize = 10;

fn scales() -> Vec<usize> {
    std::env::var("KNP_BENCH_SCALES")
        .unwrap_or_else(|_| "1000,10000,30000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn model_of(state: &ClusterState) -> ProxyModel {
    ProxyModel::compute(state, "bench-node", &mut Problems::default())
}

fn ops(old: Option<&Ruleset>, new: &Ruleset) -> Vec<Op> {
    let mut out = Vec::new();
    for t in &new.tables {
        let o = old.and_then(|o| o.table(t.family));
        diff(
            o.map(|table| Known {
                table,
                rules_known: true,
            }),
            t,
            &mut out,
        );
    }
    out
}

/// objects → model → IR → diff → batch; returns the batch size so nothing is elided.
fn full(objs: &[Object], cfg: &BuildConfig) -> usize {
    let state = ClusterState::from_objects(objs.iter().cloned());
    let rs = build(&model_of(&state), cfg);
    encode(&ops(None, &rs)).expect("encode").bytes.len()
}

/// The daemon's partial-sync path for one changed slice; returns the batch size.
fn one_slice(
    state: &mut ClusterState,
    model: &mut ProxyModel,
    inc: &mut Incremental,
    changed: &[Object],
    cfg: &BuildConfig,
) -> usize {
    let mut dirty = BTreeSet::new();
    for o in changed.iter().skip(1).cloned() {
        if let Some(s) = state.service_of(&o) {
            dirty.insert(s);
        }
        state.upsert(o);
    }
    let ports = model.update_services(state, &dirty, &mut Problems::default());
    let ops = inc
        .update(model, &ports, false)
        .expect("plain endpoint change stays incremental");
    let _ = cfg;
    encode(&ops.pre).expect("encode").bytes.len() + encode(&ops.ops).expect("encode").bytes.len()
}

fn bench(c: &mut Criterion) {
    let cfg = BuildConfig::default();
    for n in scales() {
        let objs = synthetic::objects(n, ENDPOINTS, 0);
        let mut g = c.benchmark_group(format!("pure/{n}x{ENDPOINTS}"));
        g.sample_size(10);
        g.bench_function("full build", |b| b.iter(|| full(&objs, &cfg)));
        // One changed slice, as the daemon handles it: update the state, recompute the
        // one Service, update the incremental ruleset, encode the delta. Alternates
        // between two versions of the slice so every iteration is a real change.
        let mut state = ClusterState::from_objects(objs.iter().cloned());
        let mut model = model_of(&state);
        let mut inc = Incremental::full(&model, &cfg);
        let versions = [
            synthetic::objects(1, ENDPOINTS, 7),
            synthetic::objects(1, ENDPOINTS, 0),
        ];
        let mut flip = 0;
        g.bench_function("one slice changed", |b| {
            b.iter(|| {
                flip ^= 1;
                one_slice(&mut state, &mut model, &mut inc, &versions[flip], &cfg)
            })
        });
        g.finish();
    }
}

fn median_of(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[runs / 2]
}

fn summary() {
    let cfg = BuildConfig::default();
    println!("\npure path summary (median of 5; ratio = one-slice path / full build)");
    for n in scales() {
        let objs = synthetic::objects(n, ENDPOINTS, 0);
        let mut state = ClusterState::default();
        let t_state = median_of(5, || {
            state = ClusterState::from_objects(objs.iter().cloned())
        });
        let mut model = ProxyModel::default();
        let t_model = median_of(5, || model = model_of(&state));
        let mut rs = build(&model, &cfg);
        let t_ir = median_of(5, || rs = build(&model, &cfg));
        let mut o = Vec::new();
        let t_diff = median_of(5, || o = ops(None, &rs));
        let t_enc = median_of(5, || {
            encode(&o).expect("encode");
        });
        let full_t = t_state + t_model + t_ir + t_diff + t_enc;
        let versions = [
            synthetic::objects(1, ENDPOINTS, 9),
            synthetic::objects(1, ENDPOINTS, 0),
        ];
        let mut inc = Incremental::full(&model, &cfg);
        let mut flip = 0;
        let t_one = median_of(5, || {
            flip ^= 1;
            one_slice(&mut state, &mut model, &mut inc, &versions[flip], &cfg);
        });
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{n:>6} x {ENDPOINTS}: full {:.1} ms (objects {:.1}, model {:.1}, IR {:.1}, diff {:.1}, encode {:.1}) | one slice changed {:.3} ms | ratio {:.5}",
            ms(full_t), ms(t_state), ms(t_model), ms(t_ir), ms(t_diff), ms(t_enc), ms(t_one),
            t_one.as_secs_f64() / full_t.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    summary();
}
