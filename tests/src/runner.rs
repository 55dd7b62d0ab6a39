//! Helpers for the runner's end-to-end tests (`tests/tests/runner_*.rs`).
//!
//! A test runs `leakwarden-runner` inside a private PID namespace whose PID 1 is a small shell:
//! the shell runs the runner, records its exit code, and then stays alive until the test lets it
//! go. So after the runner exits the test can still look for anything the runner left — before
//! the namespace's end would kill it and hide the evidence. Everything of a run is found by its
//! run directory root (a fresh temporary directory per test): every browser process names
//! `<root>/leakwarden-run-…` on its command line (profile, crashpad database).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, in_pid_namespace, wait_for};

/// Namespace init: run the runner, write its exit code, wait for stdin to close.
const INIT: &str = r#"rc_file="$1"; shift; "$@"; echo $? > "$rc_file.tmp"; mv "$rc_file.tmp" "$rc_file"; read -r _ || true"#;

pub struct RunnerRun {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Temporary directory of the test: job files, summary, stdout/stderr, and the run
    /// directories (it is the `--run-dir`).
    dir: Option<tempfile::TempDir>,
    /// `--run-dir` of the run.
    pub root: PathBuf,
    pub summary_path: PathBuf,
    rc_file: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
}

/// A fresh temporary directory for one test. Short on purpose: the run directory inside it must
/// leave room for Chromium's unix socket paths (see the runner's `MAX_TMPDIR_LEN`).
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lwr-")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

impl RunnerRun {
    /// Start `leakwarden-runner run --run-dir <root> --summary-json <file> ARGS…` in a private
    /// PID namespace. `args` may use `{dir}` for the test's temporary directory.
    pub fn start(args: &[&str]) -> RunnerRun {
        Self::start_in(test_dir(), args)
    }

    /// Like [`RunnerRun::start`], in an existing test directory (a second run over the same root).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> RunnerRun {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).ok();
        let root = dir.path().to_path_buf();
        let n = std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let summary_path = dir.path().join(format!("summary-{n}.json"));
        let rc_file = dir.path().join(format!("rc-{n}"));
        let stdout = dir.path().join(format!("stdout-{n}.txt"));
        let stderr = dir.path().join(format!("stderr-{n}.txt"));
        let mut cmd = in_pid_namespace("sh");
        cmd.arg("-c").arg(INIT).arg("sh").arg(&rc_file);
        cmd.arg(bin("leakwarden-runner"));
        cmd.arg("run").arg("--run-dir").arg(&root);
        cmd.arg("--summary-json").arg(&summary_path);
        let d = dir.path().display().to_string();
        for a in args {
            cmd.arg(a.replace("{dir}", &d));
        }
        cmd.env("RUST_LOG", "info,leakwarden_runner=debug");
        cmd.stdin(Stdio::piped())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn unshare");
        let stdin = child.stdin.take();
        RunnerRun {
            child,
            stdin,
            dir: Some(dir),
            root,
            summary_path,
            rc_file,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// The runner's exit code, once it has exited (the namespace is still alive).
    pub fn wait_exit(&self, deadline: Duration) -> i32 {
        wait_for(
            &format!("runner exit\n{}", self.logs()),
            deadline,
            Duration::from_millis(50),
            || {
                std::fs::read_to_string(&self.rc_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            },
        )
    }

    pub fn exited(&self) -> bool {
        self.rc_file.exists()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- runner stdout ---\n{}\n--- runner stderr (tail) ---\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            tail(
                &std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                60
            )
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn summary(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.summary_path)
            .unwrap_or_else(|e| panic!("no summary ({e})\n{}", self.logs()));
        serde_json::from_str(&text).expect("summary is JSON")
    }

    /// Host pid of the runner process (a descendant of the namespace's `unshare`).
    pub fn runner_pid(&self) -> Option<i32> {
        descendants(self.child.id() as i32)
            .into_iter()
            .find(|&p| comm(p).as_deref() == Some("leakwarden-runn"))
    }

    /// Let the namespace init exit (which ends the namespace) and reap it.
    pub fn finish(mut self) -> tempfile::TempDir {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.dir.take().expect("dir");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("dir")
    }

    /// Processes (host pids and command lines) that name this run's directories.
    pub fn processes_left(&self) -> Vec<(i32, String)> {
        processes_naming(&run_dir_prefix(&self.root))
    }

    /// Run directories under the root.
    pub fn dirs_left(&self) -> Vec<PathBuf> {
        dirs_under(&self.root)
    }
}

impl Drop for RunnerRun {
    fn drop(&mut self) {
        // Whatever happened, take the namespace down (--kill-child ends everything in it).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `<root>/leakwarden-run-`: what every browser of a run names, and nothing else does.
pub fn run_dir_prefix(root: &Path) -> String {
    format!("{}/leakwarden-run-", root.display())
}

/// Host processes whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        if c.contains(needle) {
            out.push((pid, c));
        }
    }
    out
}

pub fn dirs_under(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("leakwarden-run-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// All host descendants of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .filter_map(|p| ppid(p).map(|pp| (p, pp)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &all {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Send a signal to one host pid through a pidfd (never `kill(2)` by number after a delay).
pub fn signal(pid: i32, sig: rustix::process::Signal) {
    let p = rustix::process::Pid::from_raw(pid).expect("pid > 0");
    let fd =
        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).expect("pidfd_open");
    rustix::process::pidfd_send_signal(&fd, sig).expect("pidfd_send_signal");
}

/// A free port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` from 127.0.0.1:port; the body, if the server answered.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Value of an unlabelled or fully written sample line (`name{labels} value`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Write a job file into `dir` and return its path.
pub fn job_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("write job");
    p
}

/// Skip (with a message) when the machine cannot run these tests.
pub fn prerequisites() -> bool {
    if crate::chromium().is_none() {
        eprintln!("skipping: no Chromium (run ./scripts/install-deps.sh)");
        return false;
    }
    if !crate::can_unshare() {
        eprintln!("skipping: cannot create PID namespaces (needs root)");
        return false;
    }
    true
}

/// Assert that nothing of the run is left: no process naming its directories (checked while
/// the namespace is still alive) and no run directory.
pub fn assert_nothing_left(run: &RunnerRun) {
    let procs = wait_for_empty(|| run.processes_left(), Duration::from_secs(5));
    assert!(
        procs.is_empty(),
        "processes left behind: {procs:#?}\n{}",
        run.logs()
    );
    let dirs = run.dirs_left();
    assert!(
        dirs.is_empty(),
        "directories left behind: {dirs:?}\n{}",
        run.logs()
    );
}

/// Poll `f` until it returns an empty list or `deadline` passes; returns the last value.
pub fn wait_for_empty<T>(mut f: impl FnMut() -> Vec<T>, deadline: Duration) -> Vec<T> {
    let start = Instant::now();
    loop {
        let v = f();
        if v.is_empty() || start.elapsed() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `outcome` counts from the summary.
pub fn outcomes(summary: &serde_json::Value) -> (u64, u64, u64, u64, u64) {
    let s = &summary["sessions"];
    let g = |k: &str| s[k].as_u64().unwrap_or(0);
    (
        g("ok"),
        g("retried"),
        g("failed"),
        g("timeout"),
        g("cancelled"),
    )
}

/// Run a command to completion with a hard deadline, killing it (by its own pid) if it overruns.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            signal(id as i32, rustix::process::Signal::KILL);
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
    }
}
