//! A browser driven over `--remote-debugging-pipe`: the runner service's browsers.
//!
//! Chromium reads CDP commands from fd 3 and writes replies and events to fd 4, each message a
//! JSON text ended by a NUL byte. No TCP port is opened, so nothing on the host — another
//! client of the service, another local user — can reach a browser except through the one
//! WebSocket connection the service gave it to. When the runner closes its ends, Chromium exits
//! by itself, which is one more way a browser cannot outlive its session.
//!
//! Everything else is the runner's usual lifecycle (`browser/mod.rs`): spawned from the launcher
//! thread in its own process group with a parent-death signal, a directory `<run dir>/b<N>/`
//! with its profile (`p`), `TMPDIR` (`t`), `XDG_CONFIG_HOME` (`c`) and downloads (`d`), and a
//! close that signals, reaps, verifies in `/proc` and removes the directory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustix::pipe::PipeFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use super::{destroy, flags, stderr_tail, CloseReport, Env, Spec};

/// CDP ids the runner uses for its own commands. Clients count up from 1; Chromium takes ids as
/// 32-bit integers, so the top of that range never meets a client's.
pub const INTERNAL_ID_BASE: u64 = 2_140_000_000;

/// How much is read from the pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("CDP pipe: {0}")]
    Io(#[from] io::Error),
    #[error("CDP message from the browser exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the browser closed its CDP pipe")]
    Closed,
    #[error("no reply to {method} within {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("{method} failed: {reply}")]
    Failed { method: &'static str, reply: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Tmpdir(#[from] super::TmpdirTooLong),
    #[error("preparing {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("creating the CDP pipes: {0}")]
    Pipes(io::Error),
    #[error("spawning {chromium}: {source}")]
    Spawn {
        chromium: PathBuf,
        source: io::Error,
    },
    #[error("browser b{id} did not answer over its CDP pipe ({cause}); stderr: {stderr}")]
    Handshake {
        id: u64,
        cause: PipeError,
        stderr: String,
    },
}

/// Reads NUL-terminated CDP messages from the browser, never holding more than `max` bytes of
/// one message. Cancel-safe: what was read stays in the buffer.
pub struct CdpReader {
    rx: pipe::Receiver,
    buf: BytesMut,
    /// Bytes of `buf` already searched for the terminator.
    scanned: usize,
    max: usize,
}

impl CdpReader {
    pub fn new(rx: pipe::Receiver, max: usize) -> Self {
        Self {
            rx,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scanned: 0,
            max,
        }
    }

    /// The next message, `Ok(None)` at end of file.
    pub async fn next(&mut self) -> Result<Option<Bytes>, PipeError> {
        loop {
            if let Some(msg) = split_message(&mut self.buf, &mut self.scanned) {
                return Ok(Some(msg));
            }
            if self.buf.len() > self.max {
                return Err(PipeError::TooLarge { limit: self.max });
            }
            self.buf.reserve(READ_CHUNK);
            if self.rx.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Take one complete message (without its NUL) off the front of `buf`; `scanned` remembers how
/// far an earlier call searched, so a large message arriving in pieces is scanned once.
pub fn split_message(buf: &mut BytesMut, scanned: &mut usize) -> Option<Bytes> {
    let from = (*scanned).min(buf.len());
    match buf[from..].iter().position(|&b| b == 0) {
        Some(i) => {
            let msg = buf.split_to(from + i).freeze();
            let _ = buf.split_to(1);
            *scanned = 0;
            Some(msg)
        }
        None => {
            *scanned = buf.len();
            None
        }
    }
}

/// Both directions of one browser's CDP pipe.
pub struct CdpPipe {
    pub tx: pipe::Sender,
    pub rx: CdpReader,
}

impl CdpPipe {
    /// Send one message (it must not contain a NUL byte: valid JSON never does).
    ///
    /// One write for the message and its separator: two writes cost a second syscall here and
    /// could wake Chromium's reader twice for one message (measured: per-message proxy overhead).
    pub async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut framed = Vec::with_capacity(msg.len() + 1);
        framed.extend_from_slice(msg);
        framed.push(0);
        self.tx.write_all(&framed).await
    }

    /// Send a command of the runner's own and wait for its reply, dropping events meanwhile
    /// (only used while no client is attached).
    pub async fn call(
        &mut self,
        id: u64,
        method: &'static str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, PipeError> {
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        let exchange = async {
            self.send(msg.to_string().as_bytes()).await?;
            loop {
                let Some(raw) = self.rx.next().await? else {
                    return Err(PipeError::Closed);
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw) else {
                    continue;
                };
                if v.get("id").and_then(|i| i.as_u64()) != Some(id) {
                    continue;
                }
                return match v.get("result") {
                    Some(r) => Ok(r.clone()),
                    None => Err(PipeError::Failed {
                        method,
                        reply: truncate(&String::from_utf8_lossy(&raw), 300),
                    }),
                };
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PipeError::Timeout { method, timeout })?
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One Chromium process on a CDP pipe.
pub struct PipeBrowser {
    pub id: u64,
    pub pid: i32,
    start_time: u64,
    pidfd: Option<OwnedFd>,
    pub dir: PathBuf,
    /// Where the browser's downloads go (`<dir>/d`), unless a session points them elsewhere.
    pub downloads: PathBuf,
    /// Cancelled when the browser process has exited (seen on its pidfd).
    pub dead: CancellationToken,
    pub launched_at: Instant,
    /// `Browser.getVersion` as the browser answered it at launch.
    pub version: serde_json::Value,
    pipe: Option<CdpPipe>,
}

impl PipeBrowser {
    /// Spawn Chromium in `dir` with a CDP pipe and check that it answers. On failure everything
    /// started is cleaned up.
    pub async fn launch(
        id: u64,
        dir: PathBuf,
        spec: &Spec,
        env: &Env,
        max_message: usize,
        extra_args: &[String],
    ) -> Result<Self, LaunchError> {
        let profile = dir.join("p");
        let tmp = dir.join("t");
        let config = dir.join("c");
        let downloads = dir.join("d");
        super::check_tmpdir(&tmp)?;
        for d in [&profile, &tmp, &config, &downloads] {
            std::fs::create_dir_all(d).map_err(|source| LaunchError::Dir {
                path: d.clone(),
                source,
            })?;
        }
        let log = dir.join("stderr.log");
        let stderr =
            std::fs::File::create(&log).map_err(|source| LaunchError::Dir { path: log, source })?;
        // (ours, theirs) for each direction; all close-on-exec until the child moves its ends.
        let (their_read, our_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| LaunchError::Pipes(e.into()))?;
        let (our_read, their_write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| LaunchError::Pipes(e.into()))?;
        let mut cmd = Command::new(&spec.chromium);
        cmd.args(flags(&[spec.extra_args.as_slice(), extra_args].concat()))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let spawned = env
            .launcher
            .spawn_with_pipes(cmd, (their_read.as_fd(), their_write.as_fd()))
            .await
            .map_err(|source| LaunchError::Spawn {
                chromium: spec.chromium.clone(),
                source,
            });
        // The child has its copies (or there is no child): ours must go, or the browser would
        // never see end of file on its command pipe.
        drop(their_read);
        drop(their_write);
        let spawned = spawned?;
        let start_time = env
            .procfs
            .stat(spawned.pid)
            .ok()
            .flatten()
            .map(|s| s.start_ticks)
            .unwrap_or(0);
        let dead = CancellationToken::new();
        if let Some(fd) = spawned.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()) {
            let dead = dead.clone();
            env.tasks.spawn(async move {
                if let Ok(afd) = leakwarden_core::pidfd::async_pidfd(fd) {
                    let _ = afd.readable().await;
                }
                dead.cancel();
            });
        }
        let handshake = async {
            let tx = pipe::Sender::from_owned_fd(our_write)?;
            let rx = pipe::Receiver::from_owned_fd(our_read)?;
            let mut pipe = CdpPipe {
                tx,
                rx: CdpReader::new(rx, max_message),
            };
            let version = tokio::select! {
                v = pipe.call(INTERNAL_ID_BASE, "Browser.getVersion", serde_json::json!({}), spec.launch_timeout) => v?,
                _ = dead.cancelled() => return Err(PipeError::Closed),
            };
            Ok::<_, PipeError>((pipe, version))
        };
        match handshake.await {
            Ok((pipe, version)) => Ok(PipeBrowser {
                id,
                pid: spawned.pid,
                start_time,
                pidfd: spawned.pidfd,
                downloads,
                dir,
                dead,
                launched_at: Instant::now(),
                version,
                pipe: Some(pipe),
            }),
            Err(cause) => {
                let stderr = stderr_tail(&dir);
                let _ = destroy(
                    spawned.pid,
                    start_time,
                    spawned.pidfd.as_ref(),
                    &dir,
                    spec,
                    env,
                    false,
                )
                .await;
                Err(LaunchError::Handshake { id, cause, stderr })
            }
        }
    }

    /// The CDP pipe, for the one session this browser serves. `None` once taken.
    pub fn take_pipe(&mut self) -> Option<CdpPipe> {
        self.pipe.take()
    }

    /// Give the pipe back after the session, so closing can ask the browser politely.
    pub fn put_pipe(&mut self, pipe: CdpPipe) {
        self.pipe = Some(pipe);
    }

    /// The pipe while no session holds it (the runner's own set-up calls).
    pub fn pipe_mut(&mut self) -> Option<&mut CdpPipe> {
        self.pipe.as_mut()
    }

    /// The directory named on every process of this browser (profile, crashpad database).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Close and clean up: `Browser.close` over the pipe (when the browser is alive and the pipe
    /// still here), close the pipe, then the usual wait → signal → reap → verify → remove.
    pub async fn close(mut self, spec: &Spec, env: &Env) -> CloseReport {
        let polite = !self.dead.is_cancelled();
        if let Some(mut pipe) = self.pipe.take() {
            if polite {
                let msg = format!(
                    r#"{{"id":{},"method":"Browser.close"}}"#,
                    INTERNAL_ID_BASE + 1
                );
                let _ = tokio::time::timeout(spec.close_timeout, pipe.send(msg.as_bytes())).await;
            }
            // End of file on its command pipe makes Chromium exit too.
            drop(pipe);
        }
        destroy(
            self.pid,
            self.start_time,
            self.pidfd.as_ref(),
            &self.dir,
            spec,
            env,
            true,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_split_at_nul() {
        let mut buf = BytesMut::from(&b"{\"a\":1}\0{\"b\""[..]);
        let mut scanned = 0;
        assert_eq!(
            split_message(&mut buf, &mut scanned).as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(split_message(&mut buf, &mut scanned), None);
        assert_eq!(scanned, 4);
        buf.extend_from_slice(b":2}\0");
        assert_eq!(
            split_message(&mut buf, &mut scanned).as_deref(),
            Some(&b"{\"b\":2}"[..])
        );
        assert!(buf.is_empty());
    }

    proptest! {
        /// However the bytes arrive, the messages come out whole and in order.
        #[test]
        fn any_chunking_yields_the_same_messages(
            msgs in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..50), 0..8),
            cuts in proptest::collection::vec(1usize..40, 0..20),
        ) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend_from_slice(m);
                stream.push(0);
            }
            let mut buf = BytesMut::new();
            let mut scanned = 0;
            let mut out = Vec::new();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < stream.len() {
                let n = cuts.next().unwrap_or(stream.len()).min(stream.len() - at);
                buf.extend_from_slice(&stream[at..at + n]);
                at += n;
                while let Some(m) = split_message(&mut buf, &mut scanned) {
                    out.push(m.to_vec());
                }
            }
            prop_assert_eq!(out, msgs);
            prop_assert!(buf.is_empty());
        }
    }
}
