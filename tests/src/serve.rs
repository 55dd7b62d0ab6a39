//! Helpers for the runner service's end-to-end tests (`tests/tests/runner_serve*.rs`).
//!
//! `leakwarden-runner serve` runs inside a private PID namespace whose PID 1 is a small shell
//! (as in `runner.rs`): after the service exits, the test can still look for what it left. The
//! clients are the real ones, installed by `scripts/install-deps.sh`: puppeteer-core and
//! playwright-core under `tests/clients/node_modules`, Playwright for Python in
//! `target/tools/venv`. Client scripts live in `tests/clients/`.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::{free_port, signal, test_dir};
use crate::{bin, in_pid_namespace, wait_for, workspace_root};

const INIT: &str = r#"rc_file="$1"; shift; "$@"; echo $? > "$rc_file.tmp"; mv "$rc_file.tmp" "$rc_file"; read -r _ || true"#;

pub struct ServeRun {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: Option<tempfile::TempDir>,
    /// `--run-dir` of the service.
    pub root: PathBuf,
    pub port: u16,
    pub site_port: u16,
    rc_file: PathBuf,
    stderr: PathBuf,
}

impl ServeRun {
    /// Start `leakwarden-runner serve --listen 127.0.0.1:<free> --run-dir <tmp> --site-port
    /// <free> ARGS…` in a private PID namespace and wait until `/readyz` says ready.
    pub fn start(args: &[&str]) -> ServeRun {
        Self::start_in(test_dir(), args)
    }

    /// Like [`ServeRun::start`], over an existing test directory (a restart over the same
    /// `--run-dir`).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> ServeRun {
        let root = dir.path().to_path_buf();
        let port = free_port();
        let site_port = free_port();
        let n = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
        let rc_file = root.join(format!("rc-{n}"));
        let stderr = root.join(format!("stderr-{n}.txt"));
        let mut cmd = in_pid_namespace("sh");
        cmd.arg("-c").arg(INIT).arg("sh").arg(&rc_file);
        cmd.arg(bin("leakwarden-runner")).arg("serve");
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        cmd.arg("--run-dir").arg(&root);
        cmd.arg("--site-port").arg(site_port.to_string());
        cmd.args(args);
        cmd.env("RUST_LOG", "info,leakwarden_runner=debug");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn unshare");
        let stdin = child.stdin.take();
        let run = ServeRun {
            child,
            stdin,
            dir: Some(dir),
            root,
            port,
            site_port,
            rc_file,
            stderr,
        };
        run.wait_ready(Duration::from_secs(60));
        run
    }

    pub fn wait_ready(&self, deadline: Duration) {
        wait_for(
            &format!("service ready\n{}", self.logs()),
            deadline,
            Duration::from_millis(100),
            || {
                if self.exited() {
                    panic!("service exited at start\n{}", self.logs());
                }
                matches!(self.get("/readyz"), Some((200, _))).then_some(())
            },
        )
    }

    /// `http://127.0.0.1:<port>`: what `browserURL` / `connect_over_cdp` take.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:<port>/devtools/browser`: what `browserWSEndpoint` takes.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/devtools/browser", self.port)
    }

    /// The embedded test site.
    pub fn site(&self) -> String {
        format!("http://127.0.0.1:{}", self.site_port)
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http(self.port, path, &[])
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    pub fn sessions(&self) -> Vec<serde_json::Value> {
        self.get("/sessions")
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    pub fn exited(&self) -> bool {
        self.rc_file.exists()
    }

    pub fn wait_exit(&self, deadline: Duration) -> i32 {
        wait_for(
            &format!("service exit\n{}", self.logs()),
            deadline,
            Duration::from_millis(50),
            || {
                std::fs::read_to_string(&self.rc_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            },
        )
    }

    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" DEBUG ") || l.contains("session"))
            .collect();
        format!(
            "--- service stderr (tail) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Host pid of the service process.
    pub fn pid(&self) -> Option<i32> {
        crate::runner::descendants(self.child.id() as i32)
            .into_iter()
            .find(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == "leakwarden-runn")
                    .unwrap_or(false)
            })
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("no service process\n{}", self.logs()));
        signal(pid, sig);
    }

    /// Browser directories (`b<N>`) in the service's run directory.
    pub fn browser_dirs(&self) -> Vec<PathBuf> {
        crate::runner::dirs_under(&self.root)
            .into_iter()
            .flat_map(|run| {
                std::fs::read_dir(run)
                    .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Processes (host view) that name the service's run directories.
    pub fn processes_left(&self) -> Vec<(i32, String)> {
        crate::runner::processes_naming(&crate::runner::run_dir_prefix(&self.root))
    }

    /// Stop the namespace and return the test directory.
    pub fn finish(mut self) -> tempfile::TempDir {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("dir")
    }
}

impl Drop for ServeRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:port with extra header lines → (status, body).
pub fn http(port: u16, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    request(port, "GET", path, headers, b"", Duration::from_secs(10))
}

/// Any request on 127.0.0.1:port → (status, body), waiting at most `wait` for the answer.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
    wait: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .ok()?;
    // A server may answer (413) before the whole body is written: read the answer anyway.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The process group of the browser whose profile is in `dir` (host view), while it runs.
pub fn browser_group(dir: &Path) -> Option<i32> {
    let needle = format!("{}/", dir.display());
    crate::runner::processes_naming(&needle)
        .into_iter()
        .find(|(_, c)| !c.contains("--type="))
        .and_then(|(p, _)| pgid(p))
}

/// Every process of one session's browser, host view: those naming its directory, and every
/// member of `groups` (a renderer's command line need not name the profile; zombies have none).
pub fn browser_processes(dir: &Path, groups: &[i32]) -> Vec<(i32, String)> {
    let needle = format!("{}/", dir.display());
    let named = crate::runner::processes_naming(&needle);
    let mut groups: Vec<i32> = groups.to_vec();
    groups.extend(named.iter().filter_map(|(p, _)| pgid(*p)));
    let mut out = named;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if out.iter().any(|(p, _)| *p == pid) {
            continue;
        }
        if pgid(pid).is_some_and(|g| groups.contains(&g)) {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&c).replace('\0', " ")));
        }
    }
    out
}

fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Resident memory (bytes) and open descriptors of a host pid.
pub fn rss_and_fds(pid: i32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

pub fn clients_dir() -> PathBuf {
    workspace_root().join("tests/clients")
}

fn python() -> PathBuf {
    workspace_root().join("target/tools/venv/bin/python")
}

/// Whether the real clients are installed; prints how to install them when not.
pub fn clients_installed() -> bool {
    let node = clients_dir().join("node_modules");
    let ok = node.join("puppeteer-core").is_dir()
        && node.join("playwright-core").is_dir()
        && Command::new(python())
            .args(["-c", "import playwright"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !ok {
        eprintln!("skipping: CDP clients not installed (run ./scripts/install-deps.sh)");
    }
    ok
}

/// `node tests/clients/<script> ARGS…`.
pub fn node(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.arg(clients_dir().join(script)).args(args);
    c.current_dir(clients_dir()).env("TMPDIR", clients_tmp());
    c
}

/// The clients' TMPDIR: Playwright keeps an artifacts directory there that a SIGKILLed client
/// (on purpose, in some tests) cannot remove; it stays under target/, not in the machine's /tmp.
fn clients_tmp() -> PathBuf {
    let d = workspace_root().join("target/tmp/clients");
    let _ = std::fs::create_dir_all(&d);
    d
}

/// `target/tools/venv/bin/python tests/clients/<script> ARGS…`.
pub fn python_client(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.arg(clients_dir().join(script)).args(args);
    c.env("TMPDIR", clients_tmp());
    c
}

/// Run a client to completion (bounded) and parse the JSON object its last stdout line is.
pub fn run_client(cmd: &mut Command, deadline: Duration) -> serde_json::Value {
    let out = crate::runner::run_with_deadline(cmd, deadline);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}",
        crate::describe(cmd, &out)
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the client: {}", crate::describe(cmd, &out)))
}

/// SIGTERM the service: it drains, exits 0, and leaves no process and no directory.
pub fn stop_and_assert_nothing_left(run: ServeRun) {
    run.signal(rustix::process::Signal::TERM);
    let rc = run.wait_exit(Duration::from_secs(60));
    assert_eq!(rc, 0, "exit code\n{}", run.logs());
    let procs = crate::runner::wait_for_empty(|| run.processes_left(), Duration::from_secs(5));
    assert!(
        procs.is_empty(),
        "processes left: {procs:#?}\n{}",
        run.logs()
    );
    let dirs = crate::runner::dirs_under(&run.root);
    assert!(
        dirs.is_empty(),
        "directories left: {dirs:?}\n{}",
        run.logs()
    );
    run.finish();
}

pub fn ended(run: &ServeRun, reason: &str) -> f64 {
    crate::runner::metric(
        &run.metrics(),
        &format!("leakwarden_runner_sessions_ended_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

/// Start a client that prints "navigating" mid-session; return it once it has.
pub fn start_holding(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn client");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("navigating") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("the client never got to its navigation");
    }
    child
}
