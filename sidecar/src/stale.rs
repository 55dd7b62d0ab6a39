//! Stale browser profile and scratch directories: entries of the policy's roots (default: TMPDIR
//! or /tmp, plus the parent of every `--user-data-dir` seen) whose name matches a stale pattern,
//! that no live process uses, unmodified for longer than `older_than`.
//!
//! "Uses" means: it is (or contains, or lies inside) the `--user-data-dir` of a live family
//! process; it holds the target of a live profile's `SingletonSocket` link (Chromium's
//! `org.chromium.Chromium.XXXXXX` singleton directory); or it is a `leakwarden-run-PID-START`
//! directory of a runner that still runs.
//!
//! Processes in other PID namespaces are invisible to the sidecar, so a directory is also in use
//! when it says so across namespaces: its Chromium `SingletonSocket` (in the directory or one
//! level down, as in a run directory holding profiles) accepts a connection — a live browser
//! listens there — or its `.lock` is `flock`ed (the runner holds one for its whole life).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::analysis::Analysis;
use crate::cleanup::StaleDir;
use crate::policy::Policy;

/// Size walks stop after this many entries (the size is then a lower bound).
const SIZE_WALK_MAX: usize = 20_000;

/// Find stale directories. `with_sizes` also sums their sizes (for `cleanup` output).
pub fn find(policy: &Policy, a: &Analysis, with_sizes: bool) -> Vec<StaleDir> {
    let sp = &policy.stale_profiles;
    let mut roots: BTreeSet<PathBuf> = sp.roots.iter().map(PathBuf::from).collect();
    if roots.is_empty() {
        roots.insert(std::env::temp_dir());
        roots.insert(PathBuf::from("/tmp"));
    }
    let mut in_use: Vec<PathBuf> = Vec::new();
    for p in &a.snapshot.procs {
        if let Some(d) = p.info.as_deref().and_then(|i| i.user_data_dir.as_ref()) {
            if !in_use.contains(d) {
                in_use.push(d.clone());
                if let Some(parent) = d.parent() {
                    if parent.as_os_str().len() > 1 {
                        roots.insert(parent.to_path_buf());
                    }
                }
                if let Ok(t) = std::fs::read_link(d.join("SingletonSocket")) {
                    if let Some(sd) = t.parent() {
                        in_use.push(sd.to_path_buf());
                    }
                }
            }
        }
    }
    let live: BTreeSet<(i32, u64)> = a.snapshot.procs.iter().map(|p| p.id()).collect();
    let now = SystemTime::now();
    let mut out = Vec::new();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !sp.patterns.iter().any(|p| p.is_match(name)) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let path = e.path();
            if in_use
                .iter()
                .any(|u| u.starts_with(&path) || path.starts_with(u))
            {
                continue;
            }
            if let Some(id) = run_dir_owner(name) {
                if live.contains(&id) {
                    continue;
                }
            }
            if in_use_elsewhere(&path) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            if age < sp.older_than.0 {
                continue;
            }
            out.push(StaleDir {
                bytes: with_sizes.then(|| dir_size(&path)),
                path,
                age_seconds: age.as_secs(),
                result: "would remove".into(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

/// A live process outside our view holds it: a listening `SingletonSocket` here or one level down,
/// or a held `.lock`.
pub fn in_use_elsewhere(dir: &Path) -> bool {
    if lock_held(&dir.join(".lock")) || socket_alive(&dir.join("SingletonSocket")) {
        return true;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().take(1000).any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir())
            && (socket_alive(&e.path().join("SingletonSocket"))
                || lock_held(&e.path().join(".lock")))
    })
}

fn lock_held(path: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    match std::fs::File::open(path) {
        // Someone holds it exclusively: our non-blocking shared lock fails.
        Ok(f) => flock(&f, FlockOperation::NonBlockingLockShared).is_err(),
        Err(_) => false,
    }
}

fn socket_alive(path: &Path) -> bool {
    // Follows the profile's symlink to the socket in the browser's TMPDIR.
    match std::fs::metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        }
        _ => false,
    }
}

/// `leakwarden-run-<pid>-<start ticks>` → the runner's identity.
pub fn run_dir_owner(name: &str) -> Option<(i32, u64)> {
    let rest = name.strip_prefix("leakwarden-run-")?;
    let (pid, start) = rest.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut n = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            n += 1;
            if n > SIZE_WALK_MAX {
                return total;
            }
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.len();
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_singleton_socket_or_a_held_lock_means_in_use() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("org.chromium.Chromium.abc");
        std::fs::create_dir(&dir).unwrap();
        assert!(!in_use_elsewhere(&dir));
        let listener = std::os::unix::net::UnixListener::bind(dir.join("SingletonSocket")).unwrap();
        assert!(in_use_elsewhere(&dir));
        drop(listener);
        assert!(
            !in_use_elsewhere(&dir),
            "a socket file nobody listens on is stale"
        );
        let run = d.path().join("leakwarden-run-1-2");
        std::fs::create_dir_all(run.join("profile-1")).unwrap();
        let lock = std::fs::File::create(run.join(".lock")).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(in_use_elsewhere(&run));
        drop(lock);
        assert!(!in_use_elsewhere(&run));
    }

    #[test]
    fn run_dir_names() {
        assert_eq!(run_dir_owner("leakwarden-run-123-456"), Some((123, 456)));
        assert_eq!(run_dir_owner("leakwarden-run-x"), None);
    }
}
