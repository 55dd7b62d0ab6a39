//! `leakwarden-runner serve` arguments → [`ServeConfig`]. Errors name the flag; `main` exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{
    parse_dur, parse_size, resolve_chromium, resolve_run_root, ConfigError, LogFormat,
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the CDP endpoint, /json/version, /metrics, /healthz, /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9222")]
    pub listen: SocketAddr,
    /// Clients must present this token (`?token=…` or `Authorization: Bearer …`). Prefer
    /// --token-file: a command line is readable by every local user.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the token from this file (trailing whitespace removed).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Sessions (browsers serving clients) at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_sessions: usize,
    /// Connections that may wait (first come, first served) when every session slot is taken;
    /// beyond that, HTTP 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queue: usize,
    /// How long a connection may wait for a slot and its browser before it is turned away.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_dur)]
    pub queue_timeout: Duration,
    /// Browsers kept launched and ready, so a connection does not wait for Chromium to start.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub warm: usize,
    /// End a session when its client has sent nothing, with no command in flight, this long.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_dur)]
    pub idle_timeout: Duration,
    /// End a session this long after it started, whatever it is doing.
    #[arg(long, value_name = "DUR", default_value = "15m", value_parser = parse_dur)]
    pub session_timeout: Duration,
    /// End a session whose client does not take a message within this (it stopped reading).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_dur)]
    pub write_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open sessions may continue before they are closed.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_dur)]
    pub drain_timeout: Duration,
    /// Largest WebSocket message (and frame) a client may send; a larger one ends its session.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_size: u64,
    /// Memory one session is expected to need at least (its browser and renderers); a browser
    /// is launched only when this fits (see README, "Admission").
    #[arg(long, value_name = "SIZE", default_value = "300MiB", value_parser = parse_size)]
    pub browser_memory: u64,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Chromium binary (default: /usr/lib/chromium/chromium, else /usr/bin/chromium).
    #[arg(long, value_name = "PATH")]
    pub chromium: Option<PathBuf>,
    /// Extra Chromium argument (with its leading `--`). Repeatable.
    #[arg(long = "chromium-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub chromium_args: Vec<String>,
    /// Directory under which the run directory `leakwarden-run-<pid>-<start>/` is created
    /// (default: $TMPDIR or /tmp). Dead runs' directories there are removed at start.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Time allowed from spawning Chromium to its first CDP reply.
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = parse_dur)]
    pub launch_timeout: Duration,
    /// Port of the embedded test site on 127.0.0.1 (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub site_port: u16,
    /// Jobs (POST /jobs) running at once; beyond that, 429.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub max_jobs: usize,
    /// Where jobs' screenshots and PDFs and sessions' downloads go (default: the run
    /// directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Where named storage states live (`?state=NAME` → `DIR/NAME.json`: cookies loaded at the
    /// session's start, saved at its end). Without it, `state` is refused.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Largest CDP message taken from a browser: a full-page screenshot of a long page is tens of
/// megabytes of base64; this bounds what one browser can make the service hold.
pub const MAX_BROWSER_MESSAGE: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_sessions: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    pub warm: usize,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    pub write_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_message_size: usize,
    pub browser_memory: u64,
    pub log_format: LogFormat,
    pub chromium: PathBuf,
    pub chromium_args: Vec<String>,
    pub run_root: PathBuf,
    pub launch_timeout: Duration,
    pub site_port: u16,
    pub max_jobs: usize,
    pub artifacts: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl ServeArgs {
    pub fn into_config(self) -> Result<ServeConfig, ConfigError> {
        let token = match (self.token, self.token_file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| ConfigError(format!("--token-file {}: {e}", f.display())))?
                    .trim_end()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.is_empty()) {
            return Err(ConfigError("--token: must not be empty".into()));
        }
        if self.max_sessions == 0 {
            return Err(ConfigError("--max-sessions: must be at least 1".into()));
        }
        for (flag, d) in [
            ("--queue-timeout", self.queue_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--session-timeout", self.session_timeout),
            ("--write-timeout", self.write_timeout),
            ("--launch-timeout", self.launch_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{flag}: must be longer than 0")));
            }
        }
        let max_message_size = usize::try_from(self.max_message_size)
            .ok()
            .filter(|&n| (1024..=MAX_BROWSER_MESSAGE).contains(&n))
            .ok_or_else(|| {
                ConfigError(format!(
                    "--max-message-size: between 1KiB and {}MiB",
                    MAX_BROWSER_MESSAGE >> 20
                ))
            })?;
        Ok(ServeConfig {
            listen: self.listen,
            token,
            max_sessions: self.max_sessions,
            queue: self.queue,
            queue_timeout: self.queue_timeout,
            warm: self.warm.min(self.max_sessions),
            idle_timeout: self.idle_timeout,
            session_timeout: self.session_timeout,
            write_timeout: self.write_timeout,
            drain_timeout: self.drain_timeout,
            max_message_size,
            browser_memory: self.browser_memory,
            log_format: self.log_format,
            chromium: resolve_chromium(self.chromium)?,
            chromium_args: self.chromium_args,
            run_root: resolve_run_root(self.run_dir)?,
            launch_timeout: self.launch_timeout,
            site_port: self.site_port,
            max_jobs: self.max_jobs,
            artifacts: self.artifacts.as_deref().map(crate::config::absolute),
            state_dir: self.state_dir.as_deref().map(crate::config::absolute),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn args(v: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut all = vec!["leakwarden-runner", "serve", "--chromium", "/bin/sh"];
        all.extend_from_slice(v);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Serve(a) => a.into_config(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9222");
        assert_eq!((c.max_sessions, c.queue, c.warm), (4, 16, 2));
        assert_eq!(c.max_message_size, 16 << 20);
        assert!(c.token.is_none());
        let c = args(&["--max-sessions", "1", "--warm", "5"]).unwrap();
        assert_eq!(c.warm, 1, "never more warm browsers than sessions");
    }

    #[test]
    fn errors_name_the_flag() {
        for (a, flag) in [
            (&["--max-sessions", "0"][..], "--max-sessions"),
            (&["--idle-timeout", "0s"], "--idle-timeout"),
            (&["--max-message-size", "10"], "--max-message-size"),
            (&["--token", ""], "--token"),
            (&["--token-file", "/nonexistent/t"], "--token-file"),
        ] {
            let e = args(a).unwrap_err();
            assert!(e.0.starts_with(flag), "{a:?}: {e}");
        }
    }

    #[test]
    fn token_file_is_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "abc\n").unwrap();
        let c = args(&["--token-file", f.to_str().unwrap()]).unwrap();
        assert_eq!(c.token.as_deref(), Some("abc"));
    }
}
