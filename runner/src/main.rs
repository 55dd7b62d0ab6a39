//! `leakwarden-runner`: arguments → configuration (exit 64 on a bad one), logging, run, exit code.
//!
//! Exit codes: 0 every session succeeded (possibly after retries, or was cancelled by a
//! shutdown signal) and cleanup left nothing; 2 some session failed; 3 cleanup found leaks;
//! 1 the run could not start or broke down; 64 bad arguments or job file. `serve` exits 0 after
//! a drain that left nothing, 3 when cleanup found a leak, 1 when it could not start, 64 on bad
//! arguments.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use leakwarden_runner::config::{Cli, Command, LogFormat};
use leakwarden_runner::metrics::Metrics;
use leakwarden_runner::signal::{self, Shutdown};
use tokio_util::sync::CancellationToken;

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let args = match cli.command {
        Command::DefaultJob => {
            print!("{}", leakwarden_runner::job::DEFAULT_JOB);
            return ExitCode::SUCCESS;
        }
        Command::Run(a) => a,
        Command::Guard { dir } => {
            return ExitCode::from(leakwarden_runner::guard::run(dir));
        }
        Command::Serve(a) => {
            let cfg = match a.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("leakwarden-runner: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            init_logging(cfg.log_format);
            return match serve(cfg) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("leakwarden-runner: error: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
    };
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leakwarden-runner: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(cfg.log_format);
    match run(cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("leakwarden-runner: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: leakwarden_runner::config::Config) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leakwarden-runner")
        .build()?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::register(prometheus::Registry::new())?);
        let shutdown = Shutdown::new();
        let done = CancellationToken::new();
        signal::install(shutdown.clone(), cfg.drain_timeout, done.clone())?;
        let summary_path = cfg.summary_json.clone();
        let summary = leakwarden_runner::run(cfg, metrics, shutdown).await;
        done.cancel();
        let summary = summary?;
        print!("{}", summary.table());
        if let Some(p) = summary_path {
            let json = serde_json::to_vec_pretty(&summary)?;
            std::fs::write(&p, json)
                .map_err(|e| anyhow::anyhow!("--summary-json {}: {e}", p.display()))?;
        }
        let failed = summary.sessions["failed"] + summary.sessions["timeout"];
        Ok(if summary.cleanup.leaks > 0 {
            3
        } else if failed > 0 {
            2
        } else {
            0
        })
    })
}

/// The service until SIGTERM/SIGINT: 0 when its drain left nothing, 3 when cleanup found a leak.
fn serve(cfg: leakwarden_runner::serve::config::ServeConfig) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leakwarden-runner")
        .build()?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::register(prometheus::Registry::new())?);
        let shutdown = Shutdown::new();
        let done = CancellationToken::new();
        signal::install(shutdown.clone(), cfg.drain_timeout, done.clone())?;
        let report = leakwarden_runner::serve::serve(cfg, metrics, shutdown).await;
        done.cancel();
        Ok(if report?.leaks > 0 { 3 } else { 0 })
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // chromiumoxide logs every CDP message it does not know and every closed socket; off unless
    // asked for with RUST_LOG.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,chromiumoxide=off,tungstenite=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
