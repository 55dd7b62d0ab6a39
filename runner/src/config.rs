//! Command line → [`Config`]. Arguments land in a plain clap struct; [`RunArgs::into_config`]
//! validates across flags and the job file and builds what the run uses. Every error names the
//! flag or the file position, and `main` exits 64 (`EX_USAGE`) with that one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::faults::FaultSpec;
use crate::job::{self, Job};
use crate::pool::PoolConfig;

/// Runs headless Chromium sessions that leave nothing behind.
#[derive(Debug, Parser)]
#[command(name = "leakwarden-runner", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job (or the embedded default job against the embedded site).
    Run(Box<RunArgs>),
    /// Print the embedded default job (a starting point for your own JOB.yaml).
    DefaultJob,
    /// Serve CDP clients (puppeteer, Playwright) a fresh browser per WebSocket connection,
    /// with the runner's guarantees on every one (see README, "Runner service").
    Serve(Box<crate::serve::config::ServeArgs>),
    /// (Internal) the run-directory guard of `run` and `serve`; see `guard.rs`.
    #[command(hide = true)]
    Guard { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job file (YAML). Without it, the embedded default job runs.
    pub job: Option<PathBuf>,
    /// Number of sessions (overrides the job's `sessions`).
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Sessions at once (overrides the job's `concurrency`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Serve /metrics and /healthz on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Inject a fault: crash | hang-page | hang-server | kill-browser | abandon, with an optional
    /// `:RATIO` of sessions (default 1). Repeatable.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<FaultSpec>,
    /// Write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Chromium binary (default: /usr/lib/chromium/chromium, else /usr/bin/chromium).
    #[arg(long, value_name = "PATH")]
    pub chromium: Option<PathBuf>,
    /// Directory under which the run directory `leakwarden-run-<pid>-<start>/` is created
    /// (default: $TMPDIR or /tmp). Dead runs' directories there are removed at start.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Where screenshots and PDFs go (default: the run directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// On SIGTERM/SIGINT, how long sessions in flight may take to finish.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_dur)]
    pub drain_timeout: Duration,
    /// Memory one browser is expected to need; a launch waits until this much is available.
    #[arg(long, value_name = "SIZE", default_value = "300MiB", value_parser = parse_size)]
    pub browser_memory: u64,
    /// Recycle a browser after this many sessions.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub recycle_after: u64,
    /// Recycle a browser after this age.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_dur)]
    pub max_browser_age: Duration,
    /// Sessions that share one browser at once (each in its own context).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub contexts_per_browser: usize,
    /// Time allowed from spawning Chromium to a CDP connection.
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = parse_dur)]
    pub launch_timeout: Duration,
    /// Port of the embedded site on 127.0.0.1 (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub site_port: u16,
    /// Extra Chromium argument (with its leading `--`). Repeatable.
    #[arg(long = "chromium-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub chromium_args: Vec<String>,
}

pub fn parse_dur(s: &str) -> Result<Duration, String> {
    job::parse_duration(s)
}

/// `4096`, `100MB`, `512MiB`, `2GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("invalid size `{s}` (e.g. 300MiB, 1GiB)"))?;
    let mult: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "unknown size unit `{u}` (B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` too large"))
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub job: Job,
    pub listen: Option<SocketAddr>,
    pub summary_json: Option<PathBuf>,
    pub log_format: LogFormat,
    pub chromium: PathBuf,
    pub chromium_args: Vec<String>,
    pub run_root: PathBuf,
    pub artifacts: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub launch_timeout: Duration,
    pub site_port: u16,
    pub pool: PoolConfig,
    /// Cookies of the job's `state` file.
    pub cookies: Vec<serde_json::Value>,
}

/// A configuration error: one line, exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const CHROMIUM_CANDIDATES: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut job = match &self.job {
            Some(p) => job::load(p).map_err(|e| ConfigError(e.to_string()))?,
            None => job::default_job().map_err(|e| ConfigError(e.to_string()))?,
        };
        if let Some(n) = self.sessions {
            job.sessions = n;
        }
        if let Some(c) = self.concurrency {
            if c == 0 {
                return Err(ConfigError("--concurrency: must be at least 1".into()));
            }
            job.concurrency = c;
        }
        job.faults.extend(self.faults);
        if self.contexts_per_browser == 0 {
            return Err(ConfigError(
                "--contexts-per-browser: must be at least 1".into(),
            ));
        }
        if self.recycle_after == 0 {
            return Err(ConfigError("--recycle-after: must be at least 1".into()));
        }
        let chromium = resolve_chromium(self.chromium)?;
        let run_root = resolve_run_root(self.run_dir)?;
        let artifacts = self.artifacts.or_else(|| job.artifacts.clone());
        let cookies = match &job.state {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| ConfigError(format!("state: {f}: {e}")))?;
                crate::netopts::cookies_from_state(&text)
                    .map_err(|e| ConfigError(format!("state: {f}: {e}")))?
            }
            None => Vec::new(),
        };
        let cpb = self.contexts_per_browser.min(job.concurrency).max(1);
        let browsers = job.concurrency.div_ceil(cpb);
        Ok(Config {
            pool: PoolConfig {
                browsers,
                contexts_per_browser: cpb,
                recycle_after: self.recycle_after,
                max_age: self.max_browser_age,
                memory_reserve: self.browser_memory,
                breaker_threshold: 3,
                breaker_base: Duration::from_secs(1),
                breaker_max: Duration::from_secs(30),
            },
            job,
            listen: self.listen,
            summary_json: self.summary_json,
            log_format: self.log_format,
            chromium,
            chromium_args: self.chromium_args,
            run_root,
            artifacts,
            drain_timeout: self.drain_timeout,
            launch_timeout: self.launch_timeout,
            site_port: self.site_port,
            cookies,
        })
    }
}

/// `--chromium`, or the first Chromium installed where Debian puts it.
pub fn resolve_chromium(given: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    match given {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(ConfigError(format!(
            "--chromium: {} does not exist",
            p.display()
        ))),
        None => CHROMIUM_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ConfigError(
                    "no Chromium found at /usr/lib/chromium/chromium or /usr/bin/chromium; install it (make deps) or pass --chromium PATH".into(),
                )
            }),
    }
}

/// `--run-dir`, else `$TMPDIR`, else `/tmp`; absolute.
pub fn resolve_run_root(given: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let run_root = given
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    if !run_root.is_absolute() {
        return Err(ConfigError(format!(
            "--run-dir: {} must be an absolute path (it is matched against browser command lines)",
            run_root.display()
        )));
    }
    Ok(run_root)
}

/// Absolute form of a path given on the command line.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["leakwarden-runner", "run", "--chromium", "/bin/sh"];
        all.extend_from_slice(v);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(a) => a.into_config(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_give_one_browser_for_small_concurrency() {
        let c = args(&["--concurrency", "2"]).unwrap();
        assert_eq!(c.job.name, "default");
        assert_eq!(c.pool.browsers, 1);
        assert_eq!(c.pool.contexts_per_browser, 2);
        let c = args(&["--concurrency", "6", "--contexts-per-browser", "4"]).unwrap();
        assert_eq!((c.pool.browsers, c.pool.contexts_per_browser), (2, 4));
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(args(&["--concurrency", "0"])
            .unwrap_err()
            .0
            .starts_with("--concurrency"));
        assert!(args(&["--run-dir", "rel"])
            .unwrap_err()
            .0
            .starts_with("--run-dir"));
        let e = match Cli::try_parse_from(["x", "run", "--chromium", "/nope/chrome"])
            .unwrap()
            .command
        {
            Command::Run(a) => a.into_config().unwrap_err(),
            _ => unreachable!(),
        };
        assert!(e.0.starts_with("--chromium"), "{e}");
        assert!(Cli::try_parse_from(["x", "run", "--fault", "boom"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300MiB"), Ok(300 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn job_file_errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, "steps:\n  - navigate: /\n    extra: 1\n").unwrap();
        let e = args(&[p.to_str().unwrap()]).unwrap_err();
        assert!(e.0.starts_with(&format!("{}:3:", p.display())), "{e}");
    }
}
