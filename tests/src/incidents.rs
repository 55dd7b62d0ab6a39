//! Helpers for the incident replays (`tests/tests/incident_replays.rs`, issue 8).
//!
//! Each incident is a script, `tests/incidents/<name>/replay.sh`, run through
//! `tests/incidents/replay.sh NAME` exactly as `make incident NAME=…` runs it. The script builds
//! the scenario in a private PID namespace whose PID 1 is the sidecar, and writes what it observed
//! at each key moment into `LW_INCIDENT_OUT`: the sidecar's `/metrics`, `scan --format json`,
//! `cleanup` output and exit codes, the alerts a real Prometheus fired, a `ps` of the namespace
//! after the cleanup, and `timings.env` (epoch seconds of the fault, the detection, the cleanup).
//! [`Replay`] reads those artifacts for the assertions, and checks the host afterwards: no process
//! of the scenario, no work directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sidecar::sample;
use crate::{bin, workspace_root};

/// A finished replay and its artifacts.
pub struct Replay {
    pub name: String,
    pub out: tempfile::TempDir,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    /// The replay's work directory (removed by the script when it ends).
    pub workdir: PathBuf,
}

/// Why a replay cannot run here (printed as SKIP), if it cannot.
pub fn cannot_run(needs: &[&str]) -> Option<String> {
    if !crate::can_unshare() {
        return Some("cannot create PID namespaces (needs root)".into());
    }
    for n in needs {
        let found = if n.starts_with('/') {
            Path::new(n).exists()
        } else {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(n).exists()))
                .unwrap_or(false)
        };
        if !found {
            return Some(format!("{n} not installed (make deps)"));
        }
    }
    None
}

/// Run `tests/incidents/replay.sh NAME` with the workspace's binaries; panics (with the whole
/// output) unless it ends with PASS.
pub fn replay(name: &str) -> Replay {
    replay_env(name, &[])
}

pub fn replay_env(name: &str, env: &[(&str, &str)]) -> Replay {
    let out = tempfile::Builder::new()
        .prefix(&format!("lw-incident-out-{name}-"))
        .tempdir()
        .expect("tempdir");
    let bin_dir = bin("leakwarden").parent().expect("bin dir").to_path_buf();
    let script = workspace_root().join("tests/incidents/replay.sh");
    let mut c = Command::new(&script);
    c.arg(name)
        .env("LW_BIN_DIR", &bin_dir)
        .env("LW_INCIDENT_OUT", out.path())
        .env_remove("LW_KEEP");
    for (k, v) in env {
        c.env(k, v);
    }
    let start = Instant::now();
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let workdir = std::fs::read_to_string(out.path().join("workdir"))
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_default();
    let r = Replay {
        name: name.to_string(),
        out,
        stdout,
        stderr,
        took,
        workdir,
    };
    // What a person sees, for the test log.
    eprintln!("{}", r.stdout);
    assert!(
        o.status.success() && r.stdout.trim_end().ends_with("PASS"),
        "replay {name} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- sidecar log (tail) ---\n{}",
        o.status,
        r.stdout,
        r.stderr,
        r.tail("sidecar.log", 40)
    );
    r
}

impl Replay {
    pub fn path(&self, file: &str) -> PathBuf {
        self.out.path().join(file)
    }

    pub fn has(&self, file: &str) -> bool {
        self.path(file).exists()
    }

    /// An artifact's text (panics when missing).
    pub fn file(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file))
            .unwrap_or_else(|e| panic!("{}: artifact {file}: {e}\n{}", self.name, self.listing()))
    }

    fn tail(&self, file: &str, n: usize) -> String {
        let t = std::fs::read_to_string(self.path(file)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn listing(&self) -> String {
        std::fs::read_dir(self.out.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// An artifact parsed as JSON.
    pub fn json(&self, file: &str) -> serde_json::Value {
        let t = self.file(file);
        serde_json::from_str(&t)
            .unwrap_or_else(|e| panic!("{}: {file} is not JSON: {e}\n{t}", self.name))
    }

    /// A sample from a saved `/metrics` (sum over the series whose labels include `labels`).
    pub fn metric(&self, file: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.file(file), name, labels)
    }

    /// `timings.env`: mark → epoch seconds.
    pub fn marks(&self) -> BTreeMap<String, f64> {
        self.file("timings.env")
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Seconds from mark `a` to mark `b` (panics if either is missing).
    pub fn between(&self, a: &str, b: &str) -> f64 {
        let m = self.marks();
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("{}: no mark {k} in {m:?}", self.name))
        };
        get(b) - get(a)
    }

    /// Exit code of the `cleanup` run saved as `name`.
    pub fn cleanup_code(&self, name: &str) -> i32 {
        self.file(&format!("cleanup-{name}.code"))
            .trim()
            .parse()
            .unwrap_or(-1)
    }

    /// The JSON report of the `cleanup --format json` run saved as `name`.
    pub fn cleanup_json(&self, name: &str) -> serde_json::Value {
        self.json(&format!("cleanup-{name}.out"))
    }

    /// The alerts of `alertname` that were firing (empty when Prometheus was not there).
    pub fn alerts(&self, alertname: &str) -> Vec<serde_json::Value> {
        let f = format!("alert-{alertname}.json");
        if !self.has(&f) || self.file(&f).trim().is_empty() {
            return Vec::new();
        }
        self.json(&f).as_array().cloned().unwrap_or_default()
    }

    /// After the replay: the namespace held nothing but the sidecar (`ps-after.txt` empty), the
    /// work directory is gone, and no process on the host carries the work directory or any of
    /// `needles` in its command line.
    pub fn assert_nothing_left(&self, needles: &[&str]) {
        if self.has("ps-after.txt") {
            let ps = self.file("ps-after.txt");
            assert!(
                ps.trim().is_empty(),
                "{}: processes left in the namespace after cleanup:\n{ps}",
                self.name
            );
        }
        if self.has("work-after.txt") {
            let w = self.file("work-after.txt");
            assert!(
                w.trim().is_empty(),
                "{}: left in the work directory after cleanup:\n{w}",
                self.name
            );
        }
        assert!(
            !self.workdir.as_os_str().is_empty(),
            "{}: no workdir recorded",
            self.name
        );
        crate::wait_for(
            "the replay's work directory to be removed",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || (!self.workdir.exists()).then_some(()),
        );
        let wd = self.workdir.display().to_string();
        let mut all: Vec<&str> = needles.to_vec();
        all.push(&wd);
        let left = crate::wait_for(
            "the replay's processes to be gone from the host",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let l = host_processes_matching(&all);
                l.is_empty().then_some(l)
            },
        );
        assert!(left.is_empty());
    }
}

/// Host processes (pid, cmdline) whose command line contains any of `needles`.
pub fn host_processes_matching(needles: &[&str]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| !n.is_empty() && cmd.contains(n)) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Members of the scan's trees, flattened: (pid, family, role).
pub fn tree_members(scan: &serde_json::Value) -> Vec<(i64, String, String)> {
    crate::sidecar::arr(scan, "trees")
        .iter()
        .flat_map(|t| crate::sidecar::arr(t, "members"))
        .map(|m| {
            (
                m["pid"].as_i64().unwrap_or(0),
                m["family"].as_str().unwrap_or("").to_string(),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
