//! Stale browser profile and scratch directories — found and removed without trusting anything
//! in a directory anyone can write to.
//!
//! **Where**: only inside the roots the policy names (`stale_profiles.roots`; default: the
//! sidecar's TMPDIR and /tmp). A `--user-data-dir` elsewhere (a logged-in profile under a home
//! directory) is never a root: it is data, not scratch.
//!
//! **What**: an entry directly inside a root whose name matches a stale pattern, that is a real
//! directory (not a symlink) on the root's own mount, that no live process uses, unmodified for
//! `older_than`. "Uses" is judged on identity ([`inuse`]): the profile of every live family
//! process opened through that process's own root and cwd, its ancestors, and its singleton
//! directory; the run directory of a live runner; and, for processes we cannot see (another PID
//! namespace), a held `.lock` or a `SingletonSocket` that accepts connections, in the directory
//! or one level down. Anything that cannot be checked counts as in use.
//!
//! **A killed tree's profile** goes with it ([`KilledProfile`]): captured (opened) before the
//! kill while its browser can still tell where it is, and removed after the kill is confirmed —
//! only when it lies inside a root and nothing else uses it.
//!
//! **How**: by directory descriptors ([`fsops`]): no symlink followed, no mount crossed, every
//! walk bounded in entries and time.

pub mod fsops;
pub mod inuse;

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{openat, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::cleanup::StaleDir;
use crate::policy::Policy;
use crate::snapshot::Snapshot;
use fsops::{Budget, DirId, Meta};

/// Entries one run looks at, in all (listing, checks, sizes, removals).
const WALK_ENTRIES: usize = 200_000;
/// Subdirectories of a candidate checked for a live `.lock`/`SingletonSocket`.
const SUBDIR_CHECKS: usize = 1_000;
/// Levels followed up from a killed profile to find the root it lies in.
const MAX_ROOT_DEPTH: usize = 32;

/// A root, opened.
struct Root {
    path: PathBuf,
    fd: OwnedFd,
    meta: Meta,
}

/// A stale directory found, with what is needed to remove exactly it.
struct Found {
    root: usize,
    name: CString,
    id: DirId,
}

/// One run's findings: the directories (as reported) and the handles to remove them.
pub struct Findings {
    pub dirs: Vec<StaleDir>,
    found: Vec<Found>,
    roots: Vec<Root>,
    /// The deadline passed before the run was through.
    pub timed_out: bool,
    /// Live profiles that could not be resolved (their names counted as in use).
    pub unresolved: usize,
}

/// The roots of a policy: as named, or TMPDIR and /tmp.
pub fn roots(policy: &Policy) -> Vec<PathBuf> {
    let mut r: Vec<PathBuf> = policy
        .stale_profiles
        .roots
        .iter()
        .map(PathBuf::from)
        .collect();
    if r.is_empty() {
        r.push(std::env::temp_dir());
        r.push(PathBuf::from("/tmp"));
    }
    r.sort();
    r.dedup();
    r
}

fn open_roots(policy: &Policy) -> Vec<Root> {
    let mut out: Vec<Root> = Vec::new();
    for path in roots(policy) {
        match fsops::open_root(&path) {
            Ok((fd, meta)) if !out.iter().any(|r| r.meta.id == meta.id) => {
                out.push(Root { path, fd, meta })
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(root = %path.display(), error = %e, "stale-profile root not opened")
            }
        }
    }
    out
}

/// Find stale directories. `with_sizes` also sums their sizes (for `cleanup` output). Processes
/// in `except` do not count as users (a tree being killed).
pub fn find(
    policy: &Policy,
    s: &Snapshot,
    proc_root: &Path,
    with_sizes: bool,
    deadline: Instant,
) -> Findings {
    let sp = &policy.stale_profiles;
    let in_use = inuse::resolve(s, proc_root, &HashSet::new());
    let live: HashSet<(i32, u64)> = s.procs.iter().map(|p| p.id()).collect();
    let roots = open_roots(policy);
    let mut budget = Budget {
        entries: WALK_ENTRIES,
        deadline,
    };
    let now = SystemTime::now();
    let mut found = Vec::new();
    let mut dirs = Vec::new();
    for (ri, root) in roots.iter().enumerate() {
        if in_use.exact.contains(&root.meta.id) {
            continue; // a root that is itself a live profile: everything in it is in use
        }
        let Ok(names) = fsops::list(root.fd.as_fd(), &mut budget) else {
            continue;
        };
        for name in names {
            if Instant::now() >= deadline {
                break;
            }
            let text = String::from_utf8_lossy(name.as_bytes());
            if !sp.patterns.iter().any(|p| p.is_match(&text)) {
                continue;
            }
            let Ok(m) = fsops::stat_at(root.fd.as_fd(), &name) else {
                continue;
            };
            if m.kind != FileType::Directory || m.mnt != root.meta.mnt {
                continue; // a symlink, a file, or a mount point: not ours
            }
            if !sp.owners.is_empty() && !sp.owners.contains(&m.uid) {
                continue; // another user's
            }
            if in_use.covers(m.id, name.as_bytes()) {
                continue;
            }
            if run_dir_owner(&text).is_some_and(|id| live.contains(&id)) {
                continue;
            }
            let age = now.duration_since(m.mtime).unwrap_or(Duration::ZERO);
            if age < sp.older_than.0 {
                continue;
            }
            let Ok(fd) = fsops::open_dir_at(root.fd.as_fd(), &name) else {
                continue;
            };
            if fsops::stat_fd(fd.as_fd()).map(|x| x.id) != Ok(m.id) {
                continue; // replaced between the two looks
            }
            if used_elsewhere(fd.as_fd(), &mut budget) {
                continue;
            }
            let bytes = with_sizes.then(|| fsops::size_of(fd.as_fd(), m.mnt, 0, &mut budget));
            dirs.push(StaleDir {
                path: root.path.join(std::ffi::OsStr::from_bytes(name.as_bytes())),
                bytes,
                age_seconds: age.as_secs(),
                result: "would remove".into(),
            });
            found.push(Found {
                root: ri,
                name,
                id: m.id,
            });
        }
    }
    Findings {
        dirs,
        found,
        roots,
        timed_out: Instant::now() >= deadline,
        unresolved: in_use.unresolved,
    }
}

/// A process we cannot see holds it: a held `.lock` or a listening `SingletonSocket` here or
/// one level down. What cannot be checked counts as held.
fn used_elsewhere(dir: std::os::fd::BorrowedFd<'_>, budget: &mut Budget) -> bool {
    match fsops::held_here(dir) {
        Ok(false) => {}
        Ok(true) | Err(_) => return true,
    }
    let mut b = Budget {
        entries: SUBDIR_CHECKS.min(budget.entries),
        deadline: budget.deadline,
    };
    let Ok(names) = fsops::list(dir, &mut b) else {
        return true;
    };
    for n in names {
        match fsops::stat_at(dir, &n) {
            Ok(m) if m.kind == FileType::Directory => {
                let Ok(sub) = fsops::open_dir_at(dir, &n) else {
                    return true;
                };
                match fsops::held_here(sub.as_fd()) {
                    Ok(false) => {}
                    Ok(true) | Err(_) => return true,
                }
            }
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    false
}

impl Findings {
    /// Remove every directory found; each `StaleDir`'s result says what happened. Returns
    /// (removed, failed).
    pub fn remove_all(&mut self, deadline: Instant) -> (u64, u64) {
        let (mut ok, mut failed) = (0, 0);
        let mut budget = Budget {
            entries: WALK_ENTRIES,
            deadline,
        };
        for (d, f) in self.dirs.iter_mut().zip(&self.found) {
            let Some(root) = self.roots.get(f.root) else {
                continue;
            };
            match fsops::remove_tree(
                root.fd.as_fd(),
                &f.name,
                Some(f.id),
                root.meta.mnt,
                &mut budget,
            ) {
                Ok(()) => {
                    d.result = "removed".into();
                    ok += 1;
                }
                Err(e) => {
                    d.result = format!("failed: {e}");
                    failed += 1;
                }
            }
        }
        (ok, failed)
    }
}

/// A killed tree's profile directory, opened before the kill through its browser's view.
#[derive(Debug)]
pub struct KilledProfile {
    /// As the browser named it (for messages).
    pub path: PathBuf,
    fd: OwnedFd,
    id: DirId,
    name: CString,
}

impl KilledProfile {
    /// Open the profile `dir` of process `pid` (the tree's browser) as it sees it. `None` when it
    /// cannot be opened.
    pub fn capture(proc_root: &Path, pid: i32, dir: &Path) -> Option<Self> {
        let name = fsops::c_name(dir.file_name()?)?;
        let fd = inuse::open_in_view(proc_root, pid, dir).ok()?;
        let id = fsops::stat_fd(fd.as_fd()).ok()?.id;
        Some(KilledProfile {
            path: dir.to_path_buf(),
            fd,
            id,
            name,
        })
    }

    /// After the kill is confirmed: remove the directory if it lies inside one of the policy's
    /// roots and no live process (in the fresh snapshot `s`) uses it. The result says why not.
    pub fn remove(
        &self,
        policy: &Policy,
        s: &Snapshot,
        proc_root: &Path,
        deadline: Instant,
    ) -> StaleDir {
        let result = self.try_remove(policy, s, proc_root, deadline);
        StaleDir {
            path: self.path.clone(),
            bytes: None,
            age_seconds: 0,
            result: match result {
                Ok(()) => "removed".into(),
                Err(Why::Gone) => "gone: already removed".into(),
                Err(Why::Kept(why)) => format!("kept: {why}"),
                Err(Why::Failed(why)) => format!("failed: {why}"),
            },
        }
    }

    fn try_remove(
        &self,
        policy: &Policy,
        s: &Snapshot,
        proc_root: &Path,
        deadline: Instant,
    ) -> Result<(), Why> {
        let parent = openat(
            &self.fd,
            c"..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // A removed directory has no `..`: another remover (the daemon, or `cleanup --kill`
            // acting on the same killed tree) was first.
            Errno::NOENT => Why::Gone,
            e => Why::Failed(format!("opening its parent: {e}")),
        })?;
        let pm = fsops::stat_fd(parent.as_fd()).map_err(|e| Why::Failed(e.to_string()))?;
        let roots = open_roots(policy);
        if !inside_a_root(parent.as_fd(), pm.id, &roots) {
            return Err(Why::Kept(
                "outside the stale-profile roots (a persistent profile is data)".into(),
            ));
        }
        match fsops::stat_at(parent.as_fd(), &self.name) {
            Ok(m) if m.id == self.id && m.kind == FileType::Directory && m.mnt == pm.mnt => {
                let owners = &policy.stale_profiles.owners;
                if !owners.is_empty() && !owners.contains(&m.uid) {
                    return Err(Why::Kept(format!(
                        "owned by uid {}, not one the policy allows",
                        m.uid
                    )));
                }
            }
            Ok(_) => return Err(Why::Kept("its name now names something else".into())),
            Err(Errno::NOENT) => return Err(Why::Gone),
            Err(e) => return Err(Why::Failed(format!("stat: {e}"))),
        }
        let in_use = inuse::resolve(s, proc_root, &HashSet::new());
        if in_use.covers(self.id, self.name.as_bytes()) {
            return Err(Why::Kept("a live process uses it".into()));
        }
        let fd = fsops::open_dir_at(parent.as_fd(), &self.name).map_err(|e| match e {
            Errno::NOENT => Why::Gone,
            e => Why::Failed(format!("open: {e}")),
        })?;
        let mut budget = Budget {
            entries: WALK_ENTRIES,
            deadline,
        };
        if used_elsewhere(fd.as_fd(), &mut budget) {
            return Err(Why::Kept("in use (a held lock or a live socket)".into()));
        }
        drop(fd);
        fsops::remove_tree(
            parent.as_fd(),
            &self.name,
            Some(self.id),
            pm.mnt,
            &mut budget,
        )
        .map_err(Why::Failed)
    }
}

enum Why {
    /// Removed by someone else meanwhile: nothing left to do, and nothing failed.
    Gone,
    Kept(String),
    Failed(String),
}

/// The directory `dir` (identity `id`) is a root or lies below one.
fn inside_a_root(dir: std::os::fd::BorrowedFd<'_>, id: DirId, roots: &[Root]) -> bool {
    let is_root = |x: DirId| roots.iter().any(|r| r.meta.id == x);
    if is_root(id) {
        return true;
    }
    let mut cur: Option<OwnedFd> = None;
    let mut last = id;
    for _ in 0..MAX_ROOT_DEPTH {
        let from = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let Ok(up) = openat(
            from,
            c"..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let Ok(m) = fsops::stat_fd(up.as_fd()) else {
            return false;
        };
        if m.id == last {
            return false;
        }
        if is_root(m.id) {
            return true;
        }
        last = m.id;
        cur = Some(up);
    }
    false
}

/// `leakwarden-run-<pid>-<start ticks>` → the runner's identity.
pub fn run_dir_owner(name: &str) -> Option<(i32, u64)> {
    let rest = name.strip_prefix("leakwarden-run-")?;
    let (pid, start) = rest.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_names() {
        assert_eq!(run_dir_owner("leakwarden-run-123-456"), Some((123, 456)));
        // An abandoned browser's directory is not its runner's run directory.
        assert_eq!(run_dir_owner("leakwarden-run-123-456.abandoned-2"), None);
        assert_eq!(run_dir_owner("leakwarden-run-x"), None);
    }
}
