//! Helpers for the sidecar's end-to-end tests (`tests/tests/sidecar_*.rs`): a private PID
//! namespace whose PID 1 looks like a container init ([`Ns`]), fixture processes started inside it
//! ([`Fixture`], the `lw-fixture` binary), a running `leakwarden watch` with its `/metrics`
//! ([`Watch`]), one-shot `scan`/`cleanup`, and a parser for the Prometheus text format.
//!
//! Every process a test starts lives inside its namespace; dropping the [`Ns`] SIGKILLs the
//! `unshare` process by PID, and `--kill-child` then takes the whole namespace down with it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{bin, describe, run, wait_for};

/// The real tini (Debian package `tini`, installed by `make deps`).
pub const TINI: &str = "/usr/bin/tini";
/// The real dumb-init (Debian package `dumb-init`).
pub const DUMB_INIT: &str = "/usr/bin/dumb-init";

/// Lines a child wrote to a pipe, collected by a background thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(r: impl Read + Send + 'static) -> Self {
        let l = Lines::default();
        let l2 = l.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                l2.0.lock().unwrap().push(line);
            }
        });
        l
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }
}

/// A private PID namespace (`unshare --pid --fork --mount-proc --kill-child`) and a temporary
/// directory for the test's files (symlinks, policies, profiles).
pub struct Ns {
    unshare: Child,
    /// Host PID of the namespace's PID 1.
    pub init: i32,
    pub dir: tempfile::TempDir,
    /// stderr of PID 1 (when PID 1 is the sidecar).
    pub init_stderr: Option<Lines>,
}

impl Ns {
    /// A namespace whose PID 1 is the real `tini` (Debian package) with `sleep infinity` as its
    /// payload, as in a container image with `ENTRYPOINT ["tini", "--"]`: orphans of the test's
    /// processes are adopted by it (and their zombies reaped).
    pub fn new() -> Ns {
        let dir = tempdir();
        let mut c = crate::in_pid_namespace(TINI);
        c.args(["--", "sleep", "infinity"]);
        Ns::start(c, dir, false)
    }

    /// A namespace whose PID 1 is `sleep infinity` run through a symlink named `pause` (comm
    /// `pause`, like a pod's infrastructure container, which starts nothing): it never reaps, so
    /// zombies stay visible.
    pub fn non_reaping() -> Ns {
        let dir = tempdir();
        let pause = dir.path().join("pause");
        std::os::unix::fs::symlink("/usr/bin/sleep", &pause).expect("symlink pause");
        let mut c = crate::in_pid_namespace(&pause);
        c.arg("infinity");
        Ns::start(c, dir, false)
    }

    /// A namespace whose PID 1 is `leakwarden watch ARGS` (it then reaps every orphan's zombie).
    /// Write the policy into `dir` first with [`write_in`].
    pub fn with_sidecar_init(dir: tempfile::TempDir, args: &[&str]) -> (Ns, Watch) {
        let mut c = crate::in_pid_namespace(bin("leakwarden"));
        c.args(["watch", "--listen", "127.0.0.1:0"]).args(args);
        let ns = Ns::start(c, dir, true);
        let log = ns.init_stderr.clone().unwrap();
        let addr = wait_listen(&log);
        let w = Watch {
            child: None,
            addr,
            log,
            ns_pid: 1,
        };
        w.wait_ready();
        (ns, w)
    }

    /// A namespace whose PID 1 is `program ARGS` (a real init with a real payload, e.g.
    /// `tini -- chromium …`; `args` gets the test's directory), with TMPDIR and HOME in the
    /// test's directory; its output is discarded.
    pub fn with_init(
        program: impl AsRef<std::ffi::OsStr>,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Ns {
        let dir = tempdir();
        let mut c = crate::in_pid_namespace(program);
        c.args(args(dir.path()))
            .env("TMPDIR", dir.path())
            .env("HOME", dir.path())
            .stderr(Stdio::null());
        Ns::start(c, dir, false)
    }

    /// A namespace nested in this one — a container on a node — whose PID 1 is `program ARGS`.
    /// Its processes are also in this namespace's /proc (under other PIDs): a sidecar run here
    /// has the node's view of them.
    pub fn nested(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Ns {
        let dir = tempdir();
        let mut c = self.cmd("unshare");
        c.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(program)
            .args(args(dir.path()))
            .env("TMPDIR", dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let nsenter = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let depth = ns_pid_chain(self.init).len();
        let top = nsenter.id() as i32;
        let init = wait_for(
            "the nested namespace's PID 1",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                // nsenter → unshare (in this namespace) → the nested PID 1.
                let mut frontier = vec![top];
                for _ in 0..4 {
                    let mut next = Vec::new();
                    for p in frontier {
                        let chain = ns_pid_chain(p);
                        if chain.len() == depth + 1 && chain.last() == Some(&1) {
                            return Some(p);
                        }
                        next.extend(host_children(p));
                    }
                    frontier = next;
                }
                None
            },
        );
        Ns {
            unshare: nsenter,
            init,
            dir,
            init_stderr: None,
        }
    }

    fn start(mut c: Command, dir: tempfile::TempDir, capture: bool) -> Ns {
        c.stdin(Stdio::null()).stdout(Stdio::null());
        if capture {
            c.stderr(Stdio::piped());
        }
        let mut unshare = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let init_stderr = unshare.stderr.take().map(Lines::follow);
        let up = unshare.id();
        let init = wait_for(
            "the namespace's PID 1",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                std::fs::read_to_string(format!("/proc/{up}/task/{up}/children"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok())
                    .filter(|p| Path::new(&format!("/proc/{p}/root/proc/1")).exists())
            },
        );
        Ns {
            unshare,
            init,
            dir,
            init_stderr,
        }
    }

    /// A command that runs `program` inside the namespace (`nsenter --pid --mount`): it sees PPID
    /// 0, like a container's entrypoint; its orphans go to the namespace's PID 1.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.init.to_string())
            .args(["--pid", "--mount", "--"])
            .arg(program)
            // Whatever a test starts keeps its scratch files (Chromium's singleton and
            // chromedriver's profile directories among them) in the test's directory.
            .env("TMPDIR", self.dir.path())
            .env("HOME", self.dir.path());
        c
    }

    /// The namespace's /proc, seen from the host.
    pub fn proc(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/proc", self.init))
    }

    /// A path in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<dir>/<name>` → the lw-fixture binary (so comm is `name`).
    pub fn fixture_link(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        if !p.exists() {
            std::os::unix::fs::symlink(bin("lw-fixture"), &p).expect("symlink lw-fixture");
        }
        p
    }

    /// Write a policy (or any file) into the test's directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        write_in(&self.dir, name, text)
    }

    /// State letter of a namespace PID (`None` when it does not exist).
    pub fn state(&self, pid: i32) -> Option<String> {
        let st = std::fs::read_to_string(self.proc().join(pid.to_string()).join("stat")).ok()?;
        let i = st.rfind(')')?;
        st[i + 1..].split_whitespace().next().map(str::to_string)
    }

    /// The process runs (exists and is not a zombie).
    pub fn alive(&self, pid: i32) -> bool {
        matches!(self.state(pid), Some(s) if s != "Z" && s != "X")
    }

    /// Every process in the namespace: (pid, comm, cmdline joined by spaces, state).
    pub fn procs(&self) -> Vec<NsProc> {
        let mut v = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.proc()) else {
            return v;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm"))
                .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_string())
                .unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let Some(state) = self.state(pid) else {
                continue;
            };
            v.push(NsProc {
                pid,
                comm,
                cmdline,
                state,
            });
        }
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Parent PID of a namespace PID.
    pub fn ppid(&self, pid: i32) -> Option<i32> {
        self.status_field(pid, "PPid").and_then(|s| s.parse().ok())
    }

    /// Live (not zombie) Chromium and crashpad processes in the namespace, sorted.
    pub fn chromium_pids(&self) -> Vec<i32> {
        self.procs()
            .into_iter()
            .filter(|p| is_chromium_family(p) && p.state != "Z")
            .map(|p| p.pid)
            .collect()
    }

    /// Start one real headless Chromium (`chrome`, e.g. /usr/bin/chromium) from a launcher shell
    /// (`sh -c 'chromium … & wait'`, its TMPDIR and HOME the test's directory), and wait until
    /// it runs with its two crashpad handlers and a renderer.
    pub fn start_chromium(&self, chrome: &Path, profile: &str) -> RealChromium {
        let prof = self.path(profile);
        let script = format!(
            "{} --headless --no-sandbox --disable-background-networking --disable-component-update \
             --no-first-run --disable-sync --disable-gpu --disable-dev-shm-usage \
             --user-data-dir={} about:blank & wait",
            chrome.display(),
            prof.display()
        );
        let mut c = self.cmd("sh");
        c.args(["-c", &script])
            .env("TMPDIR", self.dir.path())
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let before = self.chromium_pids();
        let launcher = c.spawn().expect("start the launcher");
        let profile_arg = format!("--user-data-dir={}", prof.display());
        wait_for(
            "Chromium with two crashpad handlers and a renderer",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let ps: Vec<NsProc> = self
                    .procs()
                    .into_iter()
                    .filter(|p| p.state != "Z" && !before.contains(&p.pid))
                    .collect();
                let crashpad = ps
                    .iter()
                    .filter(|p| p.comm.starts_with("chrome_crashpad"))
                    .count();
                let renderer = ps.iter().any(|p| {
                    p.comm == "chromium"
                        && p.cmdline.contains("--type=renderer")
                        && p.cmdline.contains(&profile_arg)
                });
                (crashpad >= 2 && renderer).then_some(())
            },
        );
        let sh = self
            .procs()
            .into_iter()
            .find(|p| p.comm == "sh" && p.cmdline.contains(&prof.display().to_string()))
            .expect("the launcher shell")
            .pid;
        let browser = self
            .procs()
            .into_iter()
            .find(|p| {
                !p.cmdline.contains("--type=")
                    && p.cmdline.contains(&profile_arg)
                    && self.ppid(p.pid) == Some(sh)
            })
            .expect("the browser process")
            .pid;
        RealChromium {
            launcher,
            sh,
            browser,
            profile: prof,
        }
    }

    /// Open FDs of a namespace PID, counted by listing /proc/PID/fd.
    pub fn fd_count(&self, pid: i32) -> usize {
        std::fs::read_dir(self.proc().join(pid.to_string()).join("fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A field of /proc/PID/status (`Threads`, `VmRSS`, …).
    pub fn status_field(&self, pid: i32, field: &str) -> Option<String> {
        let s = std::fs::read_to_string(self.proc().join(pid.to_string()).join("status")).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }

    /// The host PID of a namespace PID (from `NSpid` in the host's /proc, same PID namespace).
    pub fn host_pid(&self, ns_pid: i32) -> Option<i32> {
        let want = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)).ok()?;
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(hp) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let Some(ns) = st.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
                continue;
            };
            let ids: Vec<i32> = ns
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            if ids.len() >= 2
                && ids.last() == Some(&ns_pid)
                && std::fs::read_link(e.path().join("ns/pid")).ok().as_ref() == Some(&want)
            {
                return Some(hp);
            }
        }
        None
    }

    /// Send `sig` to a namespace PID, through a pidfd on its host PID (checked, after opening
    /// the pidfd, to still be that namespace PID). Panics if it is not found.
    pub fn kill(&self, ns_pid: i32, sig: i32) {
        use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
        let hp = self
            .host_pid(ns_pid)
            .unwrap_or_else(|| panic!("namespace pid {ns_pid} not found"));
        let fd = pidfd_open(Pid::from_raw(hp).expect("pid > 0"), PidfdFlags::empty())
            .unwrap_or_else(|e| panic!("pidfd_open({hp}): {e}"));
        assert_eq!(
            self.host_pid(ns_pid),
            Some(hp),
            "namespace pid {ns_pid} changed"
        );
        let sig = Signal::from_named_raw(sig).expect("a named signal");
        pidfd_send_signal(&fd, sig).unwrap_or_else(|e| panic!("pidfd_send_signal({hp}): {e}"));
    }

    /// Start `lw-fixture ARGS` (or the program `prog`, e.g. a fixture symlink) inside the
    /// namespace and wait for its `ready` line.
    pub fn fixture(&self, args: &[&str]) -> Fixture {
        self.fixture_prog(&bin("lw-fixture"), args)
    }

    pub fn fixture_prog(&self, prog: &Path, args: &[&str]) -> Fixture {
        let mut c = self.cmd(prog);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading so the fixture never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{c:?}: no ready line within 30 s"));
        let pids: Vec<i32> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("{c:?}: expected `ready …`, got {line:?}"))
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        Fixture {
            nsenter: child,
            pids,
        }
    }

    /// A fake browser tree under a launcher: `lw-fixture launch <dir>/chromium
    /// --user-data-dir=<dir>/<profile>` (the fake browser and its 3 children: gpu-process,
    /// utility, renderer). Returns the launcher and the browser tree's PIDs.
    pub fn fake_tree(&self, profile: &str) -> FakeTree {
        let chromium = self.fixture_link("chromium");
        let prof = self.path(profile);
        let f = self.fixture(&[
            "launch",
            chromium.to_str().unwrap(),
            &format!("--user-data-dir={}", prof.display()),
        ]);
        assert_eq!(
            f.pids.len(),
            5,
            "launcher, browser and 3 children: {:?}",
            f.pids
        );
        let launcher = f.pids[0];
        let browser = f.pids[1];
        let mut tree = f.pids[1..].to_vec();
        tree.sort();
        FakeTree {
            launcher: f,
            launcher_pid: launcher,
            browser,
            tree,
            profile: prof,
        }
    }

    /// Children of a namespace PID.
    pub fn children(&self, pid: i32) -> Vec<i32> {
        let dir = self.proc().join(pid.to_string()).join("task");
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for t in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    v.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        v.sort();
        v
    }

    /// `leakwarden scan --policy P --format json` inside the namespace.
    pub fn scan(&self, policy: &Path) -> serde_json::Value {
        let mut c = self.cmd(bin("leakwarden"));
        c.args(["scan", "--format", "json", "--policy"]).arg(policy);
        let out = run(&mut c);
        assert!(out.status.success(), "{}", describe(&c, &out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("scan JSON: {e}\n{}", describe(&c, &out)))
    }

    /// `leakwarden scan --policy P` (table) inside the namespace.
    pub fn scan_table(&self, policy: &Path) -> String {
        let mut c = self.cmd(bin("leakwarden"));
        c.args(["scan", "--format", "table", "--policy"])
            .arg(policy);
        let out = run(&mut c);
        assert!(out.status.success(), "{}", describe(&c, &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `leakwarden cleanup --policy P [EXTRA]` inside the namespace: (exit code, stdout, stderr).
    pub fn cleanup(&self, policy: &Path, extra: &[&str]) -> (i32, String, String) {
        let mut c = self.cmd(bin("leakwarden"));
        c.args(["cleanup", "--policy"]).arg(policy).args(extra);
        let out = run(&mut c);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `leakwarden watch --listen 127.0.0.1:0 ARGS` inside the namespace, ready to scrape.
    pub fn watch(&self, args: &[&str]) -> Watch {
        self.watch_with(&[], args)
    }

    /// `PREFIX… leakwarden watch --listen 127.0.0.1:0 ARGS` (a prefix that execs its command:
    /// `setpriv …`, `prlimit … --`).
    pub fn watch_with(&self, prefix: &[&str], args: &[&str]) -> Watch {
        let mut c = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = self.cmd(p);
                c.args(rest).arg(bin("leakwarden"));
                c
            }
            None => self.cmd(bin("leakwarden")),
        };
        c.args(["watch", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let log = Lines::follow(child.stderr.take().unwrap());
        let addr = wait_listen(&log);
        let ns_pid = wait_for(
            "the sidecar in the namespace",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                self.procs()
                    .into_iter()
                    .find(|p| p.comm == "leakwarden" && p.cmdline.contains(" watch "))
                    .map(|p| p.pid)
            },
        );
        let w = Watch {
            child: Some(child),
            addr,
            log,
            ns_pid,
        };
        w.wait_ready();
        w
    }
}

impl Default for Ns {
    fn default() -> Self {
        Ns::new()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // SIGKILL the unshare process we started (not yet reaped, so its PID is still ours);
        // --kill-child then kills the namespace's PID 1 and with it everything inside.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// A real headless Chromium started by a launcher shell (`sh -c 'chromium … & wait'`) inside a
/// namespace; see [`Ns::start_chromium`].
pub struct RealChromium {
    pub launcher: Child,
    /// The launcher shell's namespace PID.
    pub sh: i32,
    /// The browser process's namespace PID.
    pub browser: i32,
    pub profile: PathBuf,
}

impl RealChromium {
    /// SIGKILL the launcher and wait until the browser is reparented to PID 1.
    pub fn orphan(&mut self, ns: &Ns) {
        ns.kill(self.sh, libc::SIGKILL);
        let _ = self.launcher.wait();
        wait_for(
            "the browser to be reparented to PID 1",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || (ns.ppid(self.browser) == Some(1)).then_some(()),
        );
    }
}

/// A Chromium or crashpad process (by comm).
pub fn is_chromium_family(p: &NsProc) -> bool {
    matches!(p.comm.as_str(), "chromium" | "msedge" | "brave")
        || p.comm.starts_with("chrome_crashpad")
}

/// `NSpid` of a host PID: its PID in every namespace, outermost first.
pub fn ns_pid_chain(host_pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("NSpid:").map(|v| {
                    v.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Children of a host PID.
pub fn host_children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

/// The flags the tests start a quiet headless Chromium with (as root: `--no-sandbox`).
pub fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--user-data-dir={}", profile.display()),
        "about:blank".into(),
    ])
    .collect()
}

/// A process in the namespace.
#[derive(Debug, Clone)]
pub struct NsProc {
    pub pid: i32,
    pub comm: String,
    pub cmdline: String,
    pub state: String,
}

/// A fixture started with [`Ns::fixture`]: `pids` are the numbers of its `ready` line
/// (namespace PIDs first).
pub struct Fixture {
    pub nsenter: Child,
    pub pids: Vec<i32>,
}

impl Fixture {
    pub fn pid(&self) -> i32 {
        self.pids[0]
    }
}

/// A fake browser tree under a launcher.
pub struct FakeTree {
    pub launcher: Fixture,
    pub launcher_pid: i32,
    pub browser: i32,
    /// The browser and its three children (sorted).
    pub tree: Vec<i32>,
    pub profile: PathBuf,
}

impl FakeTree {
    /// SIGKILL the launcher and wait until the browser is adopted by PID 1.
    pub fn orphan(&mut self, ns: &Ns) {
        ns.kill(self.launcher_pid, libc::SIGKILL);
        let _ = self.launcher.nsenter.wait();
        wait_for(
            "the fake browser to be reparented to PID 1",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || (ns.ppid(self.browser) == Some(1)).then_some(()),
        );
    }
}

/// A running `leakwarden watch`.
pub struct Watch {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Its stderr (log lines).
    pub log: Lines,
    /// Its PID inside the namespace.
    pub ns_pid: i32,
}

impl Watch {
    fn wait_ready(&self) {
        wait_for(
            "the sidecar's /readyz",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                http_get(&self.addr, "/readyz")
                    .ok()
                    .filter(|(code, _)| *code == 200)
            },
        );
    }

    /// The `/metrics` body (panics on an HTTP error).
    pub fn metrics(&self) -> String {
        match http_get(&self.addr, "/metrics") {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("/metrics: HTTP {code}: {body}\nlog:\n{}", self.log.text()),
            Err(e) => panic!("/metrics: {e}\nlog:\n{}", self.log.text()),
        }
    }

    /// Sum of the samples of `name` whose labels include `labels` (None when there is none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.metrics(), name, labels)
    }

    /// The audit events (`--log-format json` lines whose target is `leakwarden::audit`).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.log
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "leakwarden::audit")
            .collect()
    }

    /// Wait until `metric(name, labels)` satisfies `ok`; returns the value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        deadline: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let v = self.metric(name, labels);
            if seen.last() != Some(&v) {
                seen.push(v);
            }
            if let Some(v) = v {
                if ok(v) {
                    return v;
                }
            }
            if start.elapsed() > deadline {
                let m = self.metrics();
                let rel: Vec<&str> = m.lines().filter(|l| l.contains(name)).collect();
                panic!(
                    "timed out after {deadline:?} waiting for {name}{labels:?} (values seen: {seen:?}); now:\n{}\nlog:\n{}",
                    rel.join("\n"),
                    self.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // The sidecar itself dies with the namespace; end our nsenter and reap it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listen(log: &Lines) -> String {
    let re = regex::Regex::new(r"127\.0\.0\.1:(\d+)").unwrap();
    wait_for(
        "the sidecar's listen address in its log",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            log.all().iter().find_map(|l| {
                if !l.contains("watching") {
                    return None;
                }
                re.captures(l)
                    .and_then(|c| c[1].parse::<u16>().ok())
                    .filter(|&p| p != 0)
                    .map(|p| format!("127.0.0.1:{p}"))
            })
        },
    )
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lw-sidecar-test-")
        .tempdir()
        .expect("tempdir")
}

/// Write `text` to `dir/name`.
pub fn write_in(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A minimal HTTP/1.1 GET: (status code, body). Handles chunked bodies.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// Parse one sample line of the Prometheus text format: (name, labels, value).
pub fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut chars = rest[1..].char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 2);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let _ = chars.next(); // opening quote
                    let mut val = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|x| x.1) {
                                Some('n') => val.push('\n'),
                                Some(o) => val.push(o),
                                None => {}
                            },
                            '"' => break,
                            o => val.push(o),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), val);
                }
                o => key.push(o),
            }
        }
        rest = &rest[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        o => o.parse().ok()?,
    };
    Some((name, labels, v))
}

/// Sum of the samples named `name` whose labels include every pair of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for l in text.lines() {
        let Some((n, ls, v)) = parse_sample(l) else {
            continue;
        };
        if n == name
            && labels
                .iter()
                .all(|(k, val)| ls.get(*k).map(String::as_str) == Some(*val))
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The `stale_profiles` part every test policy carries, so the sidecar only ever looks at the
/// test's own directory, never the machine's /tmp.
pub fn stale_roots(dir: &Path) -> String {
    format!(
        "stale_profiles:\n  roots: ['{}']\n  older_than: 1h\n",
        dir.display()
    )
}

/// A fake-browser family: comm `chromium` exactly (the fixture symlink), trees by profile.
pub const FAKE_CHROMIUM_FAMILY: &str =
    "  - name: chromium\n    kind: browser\n    match:\n      - comm: '^chromium$'\n";

/// The built-in default policy with its kill rule's `orphaned_for` set to `orphaned_for` (a
/// one-shot `cleanup` judges it from the start time), scoped to the test's directory for stale
/// profiles.
pub fn default_policy_for_test(ns: &Ns, orphaned_for: &str) -> PathBuf {
    let mut c = Command::new(bin("leakwarden"));
    c.args(["policy", "default"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", describe(&c, &out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("orphaned_for: 30s"),
        "default policy changed:\n{text}"
    );
    let text = text.replace(
        "orphaned_for: 30s",
        &format!("orphaned_for: {orphaned_for}"),
    ) + "\n";
    ns.write("default-policy.yaml", &(text + &stale_roots(ns.dir.path())))
}

/// The JSON array `v[key]` (empty when missing).
pub fn arr<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The entry of `families[]` named `name`.
pub fn family<'a>(scan: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    arr(scan, "families")
        .iter()
        .find(|f| f["name"].as_str() == Some(name))
}

/// PIDs of a tree's members.
pub fn member_pids(tree: &serde_json::Value) -> Vec<i32> {
    let mut v: Vec<i32> = arr(tree, "members")
        .iter()
        .filter_map(|m| m["pid"].as_i64().map(|p| p as i32))
        .collect();
    v.sort();
    v
}

/// Skip (return true and say so) when PID namespaces cannot be created here.
pub fn skip_without_unshare() -> bool {
    if crate::can_unshare() {
        false
    } else {
        eprintln!("SKIP: cannot create PID namespaces (needs root)");
        true
    }
}
