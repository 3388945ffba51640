//! Command-line entry point: parse, wire, run.

use std::io::Write;
use std::process::ExitCode;

use kube_nft_proxy::config::ProxyConfig;
use kube_nft_proxy::{daemon, proxier};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// One line on stderr. A failure to write it is ignored: there is nowhere left to
/// report it, and `eprintln!` would panic instead.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "kube-nft-proxy: {msg}");
}

/// Writes the program's output to stdout. A reader that went away (`--dry-run | head`)
/// ends the program quietly with success, as Unix tools do; any other failure (a full
/// disk) is one line on stderr and a failure exit. `print!` would panic on both.
fn write_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("cannot write the output to stdout: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs the API-server modes (daemon, or `--dry-run` against the cluster).
fn run_async(dry_run: bool, cfg: ProxyConfig) -> ExitCode {
    // Two workers: a sync blocks one (see `daemon::run_with`); the other keeps the health
    // and metrics endpoints and the watchers answering.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        if dry_run {
            daemon::dry_run(&cfg).await.map(Some)
        } else {
            daemon::run(cfg).await.map(|()| None)
        }
    });
    match result {
        Ok(Some(text)) => write_stdout(&text),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            report(&proxier::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Subcommands first: their flags are not kube-proxy's.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("explain") {
        return kube_nft_proxy::explain::main(&argv[2..]);
    }
    if argv.get(1).map(String::as_str) == Some("trace") {
        return kube_nft_proxy::trace::main(&argv[2..]);
    }
    let (cli, notes) = match kube_nft_proxy::config::parse_args(std::env::args().collect()) {
        Ok(x) => x,
        Err(kube_nft_proxy::config::ArgsError::Clap(e)) => e.exit(),
        Err(kube_nft_proxy::config::ArgsError::Config(e)) => {
            report(&e.to_string());
            return ExitCode::from(2);
        }
    };
    let level = match cli.verbosity {
        0 | 1 => tracing::Level::INFO,
        2 | 3 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Our own logs at the chosen level; libraries (kube, hyper) only from -v 4 on.
    let lib_level = if cli.verbosity >= 4 {
        level
    } else {
        tracing::Level::WARN
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("kube_nft_proxy", level)
        .with_default(lib_level);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if cli.logging_format == "json" {
        tracing_subscriber::registry()
            .with(fmt.json())
            .with(filter)
            .init();
    } else {
        tracing_subscriber::registry().with(fmt).with(filter).init();
    }
    // Each once, at start-up.
    for n in &notes {
        tracing::warn!("{n}");
    }
    let cfg = match ProxyConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            report(&e.to_string());
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &cfg.write_config_to {
        let text = kube_nft_proxy::kubeproxyconfig::to_yaml(&cfg.to_kube_proxy_config());
        return match std::fs::write(path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(&format!("cannot write {}: {e}", path.display()));
                ExitCode::FAILURE
            }
        };
    }
    let api = cfg.manifests.is_empty();
    let result = if cfg.init_only {
        // kube-proxy's --init-only: the privileged step (conntrack sysctls, with
        // kube-proxy's defaults unless set), so that the proxy itself needs only
        // CAP_NET_ADMIN.
        kube_nft_proxy::conntrack::apply_settings(&cfg.conntrack.clone().unwrap_or_default());
        Ok(())
    } else if cfg.cleanup {
        proxier::cleanup().map(|n| tracing::info!(tables = n, "deleted our tables"))
    } else if api && !cfg.once {
        if !cfg.dry_run {
            if let Some(c) = &cfg.conntrack {
                kube_nft_proxy::conntrack::apply_settings(c);
            }
        }
        return run_async(cfg.dry_run, cfg);
    } else if cfg.dry_run {
        match proxier::dry_run(&cfg) {
            Ok(text) => return write_stdout(&text),
            Err(e) => Err(e),
        }
    } else if cfg.once {
        proxier::once(&cfg).map(|r| {
            tracing::info!(
                ops = r.ops,
                elements = r.service_ports,
                elapsed_ms = r.duration.as_secs_f64() * 1e3,
                "programmed"
            )
        })
    } else {
        proxier::run_files(&cfg)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&proxier::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
