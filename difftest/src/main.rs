//! `difftest`: randomized differential testing of kube-nft-proxy against an
//! executable model of upstream kube-proxy (nftables mode), with real packets
//! through ../shared/conformance/run-flows.
//!
//!     difftest --seeds A..B --bin PATH [--jobs N] [--out DIR] [--runner PATH] [--keep]
//!     difftest --reduce CASE.json --bin PATH [--runner PATH]
//!     difftest --print SEED

mod casefile;
mod generator;
mod model;
mod net;
mod prng;
mod reduce;
mod runner;

#[cfg(test)]
mod agreement;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage:
  difftest --seeds A..B --bin PATH [--jobs N] [--out DIR] [--runner PATH] [--keep]
  difftest --reduce CASE.json --bin PATH [--runner PATH]
  difftest --print SEED
A..B is Rust-style (B excluded); A..=B includes B; a single number is one seed.";

#[derive(Default)]
struct Args {
    seeds: Option<(u64, u64)>,
    bin: Option<PathBuf>,
    jobs: usize,
    out: Option<PathBuf>,
    runner: Option<PathBuf>,
    reduce: Option<PathBuf>,
    print: Option<u64>,
    keep: bool,
}

fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("bad seed range {s:?}"))
    };
    if let Some((a, b)) = s.split_once("..=") {
        return Ok((num(a)?, num(b)?));
    }
    if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b <= a {
            return Err(format!("empty seed range {s:?}"));
        }
        return Ok((a, b - 1));
    }
    let n = num(s)?;
    Ok((n, n))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        jobs: 2,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => a.seeds = Some(parse_seeds(&val("--seeds")?)?),
            "--bin" => a.bin = Some(PathBuf::from(val("--bin")?)),
            "--jobs" => {
                a.jobs = val("--jobs")?
                    .parse()
                    .map_err(|_| "--jobs needs a number".to_string())?
            }
            "--out" => a.out = Some(PathBuf::from(val("--out")?)),
            "--runner" => a.runner = Some(PathBuf::from(val("--runner")?)),
            "--reduce" => a.reduce = Some(PathBuf::from(val("--reduce")?)),
            "--print" => {
                a.print = Some(
                    val("--print")?
                        .parse()
                        .map_err(|_| "--print needs a seed".to_string())?,
                )
            }
            "--keep" => a.keep = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn runner_path(a: &Args) -> Result<PathBuf, String> {
    match &a.runner {
        Some(p) => Ok(p.clone()),
        None => runner::default_runner().ok_or_else(|| {
            "cannot find ../shared/conformance/run-flows; pass --runner".to_string()
        }),
    }
}

fn abs(p: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Generate, run and report a batch of seeds. Returns whether everything passed.
fn run_batch(a: &Args, (first, last): (u64, u64)) -> Result<bool, String> {
    let bin = abs(a.bin.as_ref().ok_or("--bin is required")?)?;
    let runner = runner_path(a)?;
    let out = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("difftest-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let mut files = Vec::new();
    let mut flows = 0;
    for seed in first..=last {
        let case = generator::generate(seed).map_err(|e| format!("seed {seed}: {e}"))?;
        flows += case
            .flows_per_state()
            .iter()
            .map(|f| f.len())
            .sum::<usize>();
        let path = out.join(format!("seed-{seed}.json"));
        case.save(&path)?;
        files.push(path);
    }
    eprintln!(
        "difftest: seeds {first}..={last}: {} cases, {flows} flows, run-flows {}",
        files.len(),
        runner.display()
    );
    let outcomes = runner::run_flows(&runner, &bin, a.jobs.max(1), &files, &mut |line| {
        if line.starts_with("FAIL ") {
            println!("{line}");
        }
    })?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed: BTreeMap<String, Vec<&runner::Outcome>> = BTreeMap::new();
    for o in &outcomes {
        *counts.entry(o.status.as_str()).or_default() += 1;
        if o.status == "FAIL" {
            failed.entry(o.case().to_string()).or_default().push(o);
        }
    }
    for (case, fails) in &failed {
        let seed = case.trim_start_matches("seed-");
        println!(
            "seed {seed}: {} failing flow(s); case kept at {}",
            fails.len(),
            out.join(format!("{case}.json")).display()
        );
        for f in fails {
            println!("    {}: {}", f.state_flow(), f.detail);
        }
        println!(
            "    reduce: difftest --reduce {} --bin {}",
            out.join(format!("{case}.json")).display(),
            bin.display()
        );
    }
    if !a.keep {
        for p in &files {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            if !failed.contains_key(&stem) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let passed = counts.get("PASS").copied().unwrap_or(0);
    let nfailed = counts.get("FAIL").copied().unwrap_or(0);
    let skipped = counts.get("SKIP").copied().unwrap_or(0);
    if outcomes.len() != flows {
        return Err(format!(
            "run-flows reported {} results for {flows} flows",
            outcomes.len()
        ));
    }
    if skipped > 0 {
        println!("{passed} passed, {nfailed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {nfailed} failed");
    }
    Ok(nfailed == 0)
}

fn reduce_case(a: &Args, path: &Path) -> Result<(), String> {
    let bin = abs(a.bin.as_ref().ok_or("--bin is required")?)?;
    let runner = runner_path(a)?;
    let case = casefile::Case::load(path)?;
    let work = std::env::temp_dir().join(format!("difftest-reduce-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let mut r = reduce::Reducer {
        runner: &runner,
        bin: &bin,
        work: work.clone(),
        runs: 0,
        verdicts: Default::default(),
    };
    let result = r.reduce(&case);
    let _ = std::fs::remove_dir_all(&work);
    let min = result?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "case".into());
    let dest = path.with_file_name(format!("{stem}.min.json"));
    min.save(&dest)?;
    println!("reduced after {} runs: {}", r.runs, dest.display());
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("difftest: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = if let Some(seed) = a.print {
        generator::generate(seed)
            .and_then(|c| {
                serde_json::to_string_pretty(&c)
                    .map(|t| println!("{t}"))
                    .map_err(|e| e.to_string())
            })
            .map(|_| true)
    } else if let Some(p) = &a.reduce {
        reduce_case(&a, p).map(|_| true)
    } else if let Some(range) = a.seeds {
        run_batch(&a, range)
    } else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("difftest: {e}");
            ExitCode::from(2)
        }
    }
}
