//! Which directories live browsers use, by identity (device + inode), not by name.
//!
//! A `--user-data-dir` is a path in the *browser's* view: relative to its working directory, or
//! absolute in its root — which, in another container, is not ours; through a symlinked parent,
//! a bind mount or an `emptyDir` mounted elsewhere, the same directory has other names here. So
//! each live family process's profile is opened through that process's own root and cwd
//! (`/proc/PID/root/…`, `/proc/PID/cwd/…`) and identified by what it *is*. Its ancestors are in
//! use too (a run directory holding profiles), and so is the directory its `SingletonSocket` link
//! points into (Chromium's singleton directory in its TMPDIR).
//!
//! What cannot be resolved for a process that still lives (permission denied, a hung mount)
//! fails closed: every candidate with the same final name counts as in use.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{openat, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::fsops::{self, DirId};
use crate::snapshot::Snapshot;

/// Ancestors followed up from a profile (a run directory two levels up is the common case).
const MAX_ANCESTORS: usize = 32;

/// What live processes use.
#[derive(Debug, Default)]
pub struct InUse {
    /// Profiles and the singleton directories their sockets live in.
    pub exact: HashSet<DirId>,
    /// Directories that hold a live profile somewhere below them.
    pub ancestors: HashSet<DirId>,
    /// Final names of profiles that could not be resolved.
    pub names: HashSet<Vec<u8>>,
    /// Profiles that could not be resolved (counted in the caller's metrics and logs).
    pub unresolved: usize,
}

impl InUse {
    pub fn covers(&self, id: DirId, name: &[u8]) -> bool {
        self.exact.contains(&id) || self.ancestors.contains(&id) || self.names.contains(name)
    }
}

/// Resolve every live family process's profile in `s` (PIDs under `proc_root`), skipping the
/// processes in `except` (a tree just killed, whose directory is being judged).
pub fn resolve(s: &Snapshot, proc_root: &Path, except: &HashSet<(i32, u64)>) -> InUse {
    let mut out = InUse::default();
    let mut seen: HashSet<((u64, u64), PathBuf)> = HashSet::new();
    for p in &s.procs {
        if p.is_zombie() || except.contains(&p.id()) {
            continue;
        }
        let Some(d) = p.info.as_deref().and_then(|i| i.user_data_dir.as_ref()) else {
            continue;
        };
        // Many processes of one browser name the same profile: resolve it once per view (the
        // same text names different directories in two containers).
        let view =
            proc_root
                .join(p.pid.to_string())
                .join(if d.is_absolute() { "root" } else { "cwd" });
        let key = std::fs::metadata(&view)
            .map(|m| {
                (
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                )
            })
            .unwrap_or((0, p.pid as u64));
        if !seen.insert((key, d.clone())) {
            continue;
        }
        match open_in_view(proc_root, p.pid, d) {
            Ok(fd) => {
                add_with_ancestors(&mut out, fd.as_fd());
                if let Some(sd) = singleton_dir(proc_root, p.pid, fd.as_fd()) {
                    out.exact.insert(sd);
                }
            }
            // Gone (its process exited since the scan), or no such directory any more: nothing
            // of it to protect.
            Err(Errno::NOENT) | Err(Errno::SRCH) | Err(Errno::NOTDIR) => {}
            Err(e) => {
                tracing::warn!(pid = p.pid, profile = %d.display(), error = %e, "cannot resolve a live browser's profile; directories of that name count as in use");
                out.unresolved += 1;
                if let Some(n) = d.file_name() {
                    out.names.insert(n.as_encoded_bytes().to_vec());
                }
            }
        }
    }
    out
}

/// Open `dir` as process `pid` sees it: absolute in its root, relative to its cwd.
pub fn open_in_view(proc_root: &Path, pid: i32, dir: &Path) -> rustix::io::Result<OwnedFd> {
    let base = proc_root.join(pid.to_string());
    let path = if dir.is_absolute() {
        base.join("root").join(dir.strip_prefix("/").unwrap_or(dir))
    } else {
        base.join("cwd").join(dir)
    };
    // Following links here is what the browser itself did when it opened its profile.
    openat(
        CWD,
        &path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn add_with_ancestors(out: &mut InUse, fd: std::os::fd::BorrowedFd<'_>) {
    let Ok(m) = fsops::stat_fd(fd) else { return };
    out.exact.insert(m.id);
    let mut cur: Option<OwnedFd> = None;
    let mut last = m.id;
    for _ in 0..MAX_ANCESTORS {
        let from = cur.as_ref().map(|f| f.as_fd()).unwrap_or(fd);
        let Ok(up) = openat(
            from,
            c"..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(um) = fsops::stat_fd(up.as_fd()) else {
            return;
        };
        if um.id == last {
            return; // "/": its own parent
        }
        out.ancestors.insert(um.id);
        last = um.id;
        cur = Some(up);
    }
}

/// The directory a profile's `SingletonSocket` link points into, resolved in the browser's root.
fn singleton_dir(
    proc_root: &Path,
    pid: i32,
    profile: std::os::fd::BorrowedFd<'_>,
) -> Option<DirId> {
    let target = rustix::fs::readlinkat(profile, c"SingletonSocket", Vec::new()).ok()?;
    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
    let parent = target.parent()?;
    let fd = open_in_view(proc_root, pid, parent).ok()?;
    fsops::stat_fd(fd.as_fd()).ok().map(|m| m.id)
}
