//! `leakwarden`: arguments → configuration (exit 64 on a bad one) → run → exit code.
//!
//! Exit codes: 0 success (`cleanup`: nothing found); 1 runtime error; 2 `cleanup` found something
//! in dry-run; 3 `cleanup` acted; 64 bad usage or configuration (invalid policy, bad flag).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use leakwarden::cleanup::EXIT_USAGE;
use leakwarden::policy::{self, units::parse_duration};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "leakwarden",
    version,
    about = "Finds orphaned and leaking browser process trees, exports Prometheus metrics, kills by policy"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `leakwarden=debug`.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run as a daemon: scan, export metrics, enforce the policy.
    Watch {
        /// Policy file (YAML). Default: the built-in policy (`leakwarden policy default`).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Address for /metrics, /healthz, /readyz.
        #[arg(long, default_value = "0.0.0.0:9847")]
        listen: SocketAddr,
        /// Scan interval (`5s`, `500ms`, `1m`).
        #[arg(long, default_value = "5s", value_parser = duration_arg)]
        interval: Duration,
        /// Decide and log, never signal or remove (overrides the policy).
        #[arg(long)]
        dry_run: bool,
        /// Become a child subreaper and reap the zombies of orphans reparented to us.
        #[arg(long)]
        subreaper: bool,
        /// Attribute processes to Kubernetes pods by cgroup path (node/DaemonSet mode).
        #[arg(long)]
        pod_attribution: bool,
        /// Where /proc is (for a host /proc mounted elsewhere).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// One scan: trees, orphans, zombies, leak suspects, stale directories.
    Scan {
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// One-shot cleanup by policy; dry-run unless --kill.
    Cleanup {
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Act: kill and remove. Without it nothing is signalled or removed.
        #[arg(long)]
        kill: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate a policy file: exit 0 if valid, else a located error and exit 64.
    Check { file: PathBuf },
    /// Print the built-in default policy.
    Default,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    if let Err(e) = init_logging(cli.log_format, &cli.log_level) {
        eprintln!("leakwarden: {e}");
        return ExitCode::from(EXIT_USAGE as u8);
    }
    let code = match run(cli.cmd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leakwarden: {e:#}");
            1
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("bad --log-level {level:?}: {e}"))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (https://no-color.org): logs
/// redirected to a file or read by journald carry no escape codes.
fn colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn load_policy(path: Option<&std::path::Path>) -> Result<policy::Policy, i32> {
    match path {
        None => Ok(policy::builtin()),
        Some(p) => policy::load(p).map_err(|e| {
            eprintln!("leakwarden: invalid policy: {e}");
            EXIT_USAGE
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?)
}

fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Policy {
            cmd: PolicyCmd::Default,
        } => {
            print!("{}", policy::DEFAULT_POLICY_YAML);
            Ok(0)
        }
        Cmd::Policy {
            cmd: PolicyCmd::Check { file },
        } => match policy::load(&file) {
            Ok(p) => {
                println!(
                    "{}: valid ({} families, {} rules{})",
                    file.display(),
                    p.families.len(),
                    p.rules.len(),
                    if p.dry_run { ", dry-run" } else { "" }
                );
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(EXIT_USAGE)
            }
        },
        Cmd::Scan {
            policy,
            format,
            proc_root,
        } => {
            let p = match load_policy(policy.as_deref()) {
                Ok(p) => p,
                Err(c) => return Ok(c),
            };
            let r = leakwarden::oneshot::scan(&p, &proc_root)?;
            print!(
                "{}",
                if format == Format::Json {
                    r.to_json()
                } else {
                    r.to_table()
                }
            );
            Ok(0)
        }
        Cmd::Cleanup {
            policy,
            kill,
            format,
            proc_root,
        } => {
            let p = match load_policy(policy.as_deref()) {
                Ok(p) => p,
                Err(c) => return Ok(c),
            };
            let r = runtime()?.block_on(leakwarden::oneshot::cleanup(&p, &proc_root, kill))?;
            print!(
                "{}",
                leakwarden::cleanup::render(&r, format == Format::Json)
            );
            Ok(r.exit_code())
        }
        Cmd::Watch {
            policy,
            listen,
            interval,
            dry_run,
            subreaper,
            pod_attribution,
            proc_root,
        } => {
            let cfg = leakwarden::watch::Config {
                policy,
                listen,
                interval,
                dry_run,
                subreaper,
                pod_attribution,
                proc_root,
            };
            // Each scan's snapshot replaces the last: give it back to the kernel when dropped
            // (before any thread exists, as glibc asks).
            if !leakwarden_core::alloc::return_freed_memory() {
                tracing::debug!("allocator not tunable here; resident size follows its defaults");
            }
            let rt = runtime()?;
            rt.block_on(async move {
                let token = CancellationToken::new();
                let signals = tokio::spawn(shutdown_signal(token.clone()));
                let r = leakwarden::watch::run(cfg, token.clone()).await;
                token.cancel();
                signals.abort();
                match r {
                    Ok(()) => Ok(0),
                    Err(e) if e.downcast_ref::<leakwarden::watch::StartError>().is_some() => {
                        eprintln!("leakwarden: {e}");
                        Ok(EXIT_USAGE)
                    }
                    Err(e) => Err(e),
                }
            })
        }
    }
}

/// SIGTERM or SIGINT cancels the token (and says which arrived).
async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    token.cancel();
}
