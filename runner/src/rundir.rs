//! The run directory: every file a run creates lives under
//! `<root>/leakwarden-run-<pid>-<starttime>/` (root: `--run-dir`, default `$TMPDIR` or `/tmp`).
//!
//! Each run marks its directory with `leakwarden-run.json` (pid, start time, pid namespace) and
//! holds an exclusive `flock` on its `.lock` file for its whole life. The lock is the liveness
//! test other runs use: the kernel drops it when the run dies however it dies, and it works
//! across PID namespaces, where a pid means nothing. At start a run removes the directories of
//! dead runs — but never one that a live process still names on its command line (a browser
//! that outlived its runner is the sidecar's to kill first).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::proc::{cmdline_contains, Procfs};

pub const PREFIX: &str = "leakwarden-run-";
const MARKER: &str = "leakwarden-run.json";
const LOCK: &str = ".lock";
/// A directory without a lock file may be one being created right now; leave young ones alone.
const UNLOCKED_MIN_AGE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub pid: i32,
    pub start_time: u64,
    /// `/proc/self/ns/pid` link text, e.g. `pid:[4026531836]`.
    pub pid_ns: String,
    pub started_unix: u64,
    pub version: String,
}

/// This run's directory. Holds the lock until dropped, and is removed when dropped (an early
/// error, a panic) unless [`RunDir::remove`] already did it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
    removed: bool,
}

impl RunDir {
    pub fn create(root: &Path, procfs: &Procfs) -> io::Result<Self> {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let start_time = procfs
            .stat(me)?
            .map(|s| s.start_ticks)
            .ok_or_else(|| io::Error::other("cannot read own /proc stat"))?;
        let path = root.join(format!("{PREFIX}{me}-{start_time}"));
        std::fs::create_dir_all(root)?;
        let created = match std::fs::create_dir(&path) {
            Ok(()) => true,
            // Same pid and start time: only a previous incarnation of this very process.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        let locked = File::create(path.join(LOCK)).and_then(|lock| {
            flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
            Ok(lock)
        });
        let lock = match locked {
            Ok(l) => l,
            Err(e) => {
                if created {
                    let _ = std::fs::remove_dir_all(&path);
                }
                return Err(e);
            }
        };
        let marker = Marker {
            pid: me,
            start_time,
            pid_ns: own_pid_ns(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let dir = Self {
            path,
            _lock: lock,
            removed: false,
        };
        // From here a failure drops `dir`, which removes what was created.
        write_marker(&dir.path, &marker)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove everything and check that it is gone; the lock goes with the last file handle.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        remove_verified(&self.path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        match remove_verified(&self.path) {
            Ok(()) => tracing::debug!(dir = %self.path.display(), "run directory removed"),
            Err(e) => {
                tracing::error!(dir = %self.path.display(), error = %e, "cleanup leak: run directory not removed")
            }
        }
    }
}

/// `remove_dir_all`, then verify: the path must be gone (already gone counts as removed).
fn remove_verified(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            "still present after removal",
        )),
        Err(e) => Err(e),
    }
}

pub fn write_marker(dir: &Path, marker: &Marker) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
    std::fs::write(dir.join(MARKER), json)
}

fn own_pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What start-up cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaleCleanup {
    pub removed: Vec<PathBuf>,
    /// Dead runs' directories still named by a live process: left for the sidecar.
    pub in_use: Vec<PathBuf>,
    /// Set when `/proc` could not be read completely: then whether a live process names a dead
    /// run's directory cannot be told, and every one is left (in `in_use`).
    pub unverified: Option<String>,
}

/// Remove the directories of dead runs under `root`.
pub fn remove_dead_runs(root: &Path, procfs: &Procfs, own: Option<&Path>) -> StaleCleanup {
    let mut out = StaleCleanup::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    let mut candidates = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        if Some(path.as_path()) == own {
            continue;
        }
        // Never follow a symlink planted under a shared /tmp.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        if is_dead(&path, procfs) {
            candidates.push(path);
        }
    }
    if candidates.is_empty() {
        return out;
    }
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // "Could not check" is "in use": a directory is never removed under a process we missed.
    let (cmdlines, unverified) = procfs.cmdlines(me);
    out.unverified = unverified.map(|e| e.to_string());
    for path in candidates {
        let needle = path.as_os_str().as_encoded_bytes();
        if out.unverified.is_some() || cmdlines.iter().any(|c| cmdline_contains(c, needle)) {
            out.in_use.push(path);
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            out.removed.push(path);
        }
    }
    out
}

/// A run is alive while its lock is held. Without a lock file (an abandoned browser's directory,
/// or a run from before locks), the marker decides: alive if that pid still has that start time
/// in our PID namespace; unknowable otherwise, so young directories are left alone.
fn is_dead(dir: &Path, procfs: &Procfs) -> bool {
    match File::open(dir.join(LOCK)) {
        Ok(f) => return flock(&f, FlockOperation::NonBlockingLockShared).is_ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return false,
    }
    if let Some(m) = read_marker(dir) {
        if m.pid_ns == own_pid_ns() {
            let alive = matches!(procfs.stat(m.pid), Ok(Some(s)) if s.start_ticks == m.start_time);
            if alive {
                return false;
            }
        }
    }
    let age = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    age >= UNLOCKED_MIN_AGE
}

pub fn read_marker(dir: &Path) -> Option<Marker> {
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_run_is_kept_and_dead_run_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let procfs = Procfs::default();
        let live = RunDir::create(root.path(), &procfs).unwrap();
        assert!(read_marker(live.path()).is_some());

        // A dead run: lock file present but nobody holds it.
        let dead = root.path().join(format!("{PREFIX}999999-1"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), b"").unwrap();
        std::fs::create_dir_all(dead.join("b1/profile")).unwrap();

        // Not ours: an unrelated directory.
        std::fs::create_dir(root.path().join("other")).unwrap();

        let res = remove_dead_runs(root.path(), &procfs, None);
        assert_eq!(res.removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().exists(), "a locked run is alive");
        assert!(root.path().join("other").exists());
        live.remove().unwrap();
    }

    #[test]
    fn young_unlocked_directory_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let young = root.path().join(format!("{PREFIX}1-2.abandoned-1"));
        std::fs::create_dir(&young).unwrap();
        let res = remove_dead_runs(root.path(), &Procfs::default(), None);
        assert!(res.removed.is_empty());
        assert!(young.exists());
    }

    /// "Could not check" is "in use": with a `/proc` it cannot read completely, start-up
    /// cleanup keeps a dead run's directory (a live process it missed may still use it).
    /// Before the fix the unreadable command line was skipped and the directory removed.
    // See: issue 14, item 2.
    #[test]
    fn dead_run_is_kept_when_proc_cannot_be_read() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(format!("{PREFIX}999999-1"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), b"").unwrap();
        let fake_proc = crate::proc::fixture_with_unreadable();
        let res = remove_dead_runs(root.path(), &Procfs::new(fake_proc.path()), None);
        assert!(res.removed.is_empty(), "{res:?}");
        assert_eq!(res.in_use, vec![dead.clone()]);
        assert!(res.unverified.is_some());
        assert!(dead.exists());
    }

    /// An early error (a port in use, an artifacts directory that cannot be made) drops the
    /// run directory without `remove`: it must not stay behind. Before the fix it did.
    // See: issue 14, item 7.
    #[test]
    fn a_dropped_run_dir_removes_itself() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::create(root.path(), &Procfs::default()).unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir_all(path.join("b1/p")).unwrap();
        assert!(path.exists());
        drop(dir);
        assert!(!path.exists(), "{} left behind", path.display());
        // `remove` then drop: removed once, no error.
        let dir = RunDir::create(root.path(), &Procfs::default()).unwrap();
        let path = dir.path().to_path_buf();
        dir.remove().unwrap();
        assert!(!path.exists());
    }
}
