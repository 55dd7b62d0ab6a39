//! Filesystem work on ground anyone can write to (`/tmp`), done so that nothing there can stop
//! or steer it:
//!
//! - every directory is reached from its parent's descriptor (`openat`) with `O_NOFOLLOW` and
//!   `O_DIRECTORY`: a symlink is never followed, a FIFO never opened for reading (`O_DIRECTORY`
//!   refuses it without blocking), and each step is checked against the identity (device +
//!   inode) judged before;
//! - nothing crosses a mount point (`statx` mount ids): a directory mounted inside a stale one is
//!   neither walked nor emptied;
//! - liveness checks never block: a `.lock` is `flock`ed with `LOCK_NB` after checking it is a
//!   regular file, a `SingletonSocket` is connected to non-blocking, only when it is a socket
//!   itself (never through a symlink);
//! - every walk is bounded in depth, entries and time ([`Budget`]).

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Instant, SystemTime};

use rustix::fs::{
    openat, statx, unlinkat, AtFlags, Dir, FileType, FlockOperation, Mode, OFlags, StatxFlags, CWD,
};
use rustix::io::Errno;

/// A directory's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

/// What `statx` says about one entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub id: DirId,
    pub kind: FileType,
    pub mnt: u64,
    pub mtime: SystemTime,
    pub size: u64,
    pub uid: u32,
}

/// Deepest directory nesting a walk enters.
pub const MAX_DEPTH: u32 = 64;

/// Limits of one walk: entries visited and a deadline.
#[derive(Debug)]
pub struct Budget {
    pub entries: usize,
    pub deadline: Instant,
}

impl Budget {
    /// Take one entry; `false` when the entries or the time are spent.
    pub fn take(&mut self) -> bool {
        if self.entries == 0 || Instant::now() >= self.deadline {
            return false;
        }
        self.entries -= 1;
        true
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

fn meta_of(st: &rustix::fs::Statx) -> Meta {
    let mtime = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(st.stx_mtime.tv_sec).unwrap_or(0),
            st.stx_mtime.tv_nsec,
        );
    Meta {
        id: DirId {
            dev: (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor),
            ino: st.stx_ino,
        },
        kind: FileType::from_raw_mode(st.stx_mode.into()),
        mnt: st.stx_mnt_id,
        mtime,
        size: st.stx_size,
        uid: st.stx_uid,
    }
}

fn want() -> StatxFlags {
    StatxFlags::TYPE
        | StatxFlags::INO
        | StatxFlags::MTIME
        | StatxFlags::SIZE
        | StatxFlags::UID
        | StatxFlags::MNT_ID
}

/// `statx` of an entry of `dir`, never following a symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Meta> {
    statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, want()).map(|s| meta_of(&s))
}

/// `statx` of an open descriptor.
pub fn stat_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Meta> {
    statx(fd, c"", AtFlags::EMPTY_PATH, want()).map(|s| meta_of(&s))
}

/// An open directory, checked to be a directory and not a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    openat(dir, name, dir_flags(), Mode::empty())
}

/// A root the operator named: opened by its path (a root may itself be a symlink the operator
/// chose, like /tmp → /private/tmp), then used only through its descriptor.
pub fn open_root(path: &Path) -> rustix::io::Result<(OwnedFd, Meta)> {
    let fd = openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let m = stat_fd(fd.as_fd())?;
    Ok((fd, m))
}

/// Names of the entries of an open directory (without `.` and `..`), at most `max`.
pub fn list(dir: BorrowedFd<'_>, budget: &mut Budget) -> rustix::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    let mut d = Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        if !budget.take() {
            break;
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

/// Is the directory in use by a process we cannot see (another PID namespace)? Its `.lock` is
/// held (the runner flocks one for its life), or its `SingletonSocket` accepts connections (a
/// live Chromium listens there). `Err` when it cannot be told — callers treat that as in use.
pub fn held_here(dir: BorrowedFd<'_>) -> Result<bool, String> {
    if lock_held(dir, c".lock")? {
        return Ok(true);
    }
    socket_alive(dir, c"SingletonSocket")
}

/// `flock` check on a regular file named `name` in `dir`; a name that is anything else (a FIFO
/// an attacker put there, a symlink) cannot be checked.
fn lock_held(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool, String> {
    let m = match stat_at(dir, name) {
        Ok(m) => m,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(format!("stat .lock: {e}")),
    };
    if m.kind != FileType::RegularFile {
        return Err(format!("its .lock is a {:?}, not a file", m.kind));
    }
    let f = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| format!("open .lock: {e}"))?;
    if stat_fd(f.as_fd()).map(|x| x.id) != Ok(m.id) {
        return Err(".lock changed while checked".into());
    }
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(format!("flock .lock: {e}")),
    }
}

/// Non-blocking connect to a unix socket named `name` in `dir` (reached through
/// `/proc/self/fd/N/`, so the path is short and its parents are not re-resolved). Only a socket
/// itself is tried, never a symlink.
fn socket_alive(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool, String> {
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let m = match stat_at(dir, name) {
        Ok(m) => m,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(format!("stat SingletonSocket: {e}")),
    };
    if m.kind == FileType::Symlink {
        // A profile's link to its singleton directory: judged there, by identity.
        return Ok(false);
    }
    if m.kind != FileType::Socket {
        return Err(format!("its SingletonSocket is a {:?}", m.kind));
    }
    let fdnum = std::os::fd::AsRawFd::as_raw_fd(&dir);
    let path = format!("/proc/self/fd/{fdnum}/{}", name.to_string_lossy());
    let addr = SocketAddrUnix::new(path.as_str()).map_err(|e| format!("socket path: {e}"))?;
    let s = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    match connect(&s, &addr) {
        Ok(()) => Ok(true),
        // A listener with a full backlog: someone is there.
        Err(Errno::AGAIN) | Err(Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(format!("connect SingletonSocket: {e}")),
    }
}

/// Remove the directory `name` of `parent` and everything in it, never following a symlink,
/// never leaving `mnt` (a mount inside is left alone, and the removal then fails), checking the
/// directory is still `expect`. Returns the first problem met; what could be removed is.
pub fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &CStr,
    expect: Option<DirId>,
    mnt: u64,
    budget: &mut Budget,
) -> Result<(), String> {
    remove_rec(parent, name, expect, mnt, 0, budget)
}

fn remove_rec(
    parent: BorrowedFd<'_>,
    name: &CStr,
    expect: Option<DirId>,
    mnt: u64,
    depth: u32,
    budget: &mut Budget,
) -> Result<(), String> {
    let show = || name.to_string_lossy().into_owned();
    if depth > MAX_DEPTH {
        return Err(format!("{} nests deeper than {MAX_DEPTH}", show()));
    }
    // Gone already (another remover — the daemon and `cleanup --kill` can both act on one
    // killed tree — got there first): that is what removing wanted. Only ENOENT counts so: a
    // symlink or a non-directory in its place (ELOOP, ENOTDIR) is still refused.
    let fd = match open_dir_at(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(format!("open {}: {e}", show())),
    };
    let m = stat_fd(fd.as_fd()).map_err(|e| format!("stat {}: {e}", show()))?;
    if m.mnt != mnt {
        return Err(format!("{} is a mount point: left alone", show()));
    }
    if expect.is_some_and(|e| e != m.id) {
        return Err(format!("{} changed since it was judged", show()));
    }
    let mut first: Option<String> = None;
    for child in list(fd.as_fd(), budget).map_err(|e| format!("list {}: {e}", show()))? {
        if !budget.take() {
            return Err("walk budget spent".into());
        }
        let r = match stat_at(fd.as_fd(), &child) {
            Ok(c) if c.kind == FileType::Directory => {
                remove_rec(fd.as_fd(), &child, Some(c.id), mnt, depth + 1, budget)
            }
            Ok(_) => match unlinkat(fd.as_fd(), child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(format!("unlink {}: {e}", child.to_string_lossy())),
            },
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(format!("stat {}: {e}", child.to_string_lossy())),
        };
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    drop(fd);
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => first.map_or(Ok(()), Err),
        Err(e) => Err(first.unwrap_or_else(|| format!("rmdir {}: {e}", show()))),
    }
}

/// Bytes of regular files under a directory (same mount only), a lower bound when the budget
/// runs out.
pub fn size_of(dir: BorrowedFd<'_>, mnt: u64, depth: u32, budget: &mut Budget) -> u64 {
    let Ok(names) = list(dir, budget) else {
        return 0;
    };
    let mut total = 0;
    for n in names {
        match stat_at(dir, &n) {
            Ok(m) if m.kind == FileType::Directory && m.mnt == mnt && depth < MAX_DEPTH => {
                if let Ok(fd) = open_dir_at(dir, &n) {
                    total += size_of(fd.as_fd(), mnt, depth + 1, budget);
                }
            }
            Ok(m) if m.kind == FileType::RegularFile => total += m.size,
            _ => {}
        }
    }
    total
}

/// A path's file name as a C string (none for `..`, `/` or a name with a NUL).
pub fn c_name(name: &OsStr) -> Option<CString> {
    if name.is_empty() || name == ".." || name == "." {
        return None;
    }
    CString::new(name.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    fn budget() -> Budget {
        Budget {
            entries: 100_000,
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    #[test]
    fn remove_tree_never_follows_a_symlink_out_of_the_tree() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("precious"), "data").expect("write");
        let stale = d.path().join("stale");
        std::fs::create_dir_all(stale.join("sub")).expect("mkdir");
        std::fs::write(stale.join("sub/f"), "x").expect("write");
        symlink(&victim, stale.join("link-to-victim")).expect("symlink");
        symlink(victim.join("precious"), stale.join("sub/link-to-file")).expect("symlink");
        let (root, m) = open_root(d.path()).expect("root");
        remove_tree(root.as_fd(), c"stale", None, m.mnt, &mut budget()).expect("removed");
        assert!(!stale.exists());
        assert_eq!(
            std::fs::read_to_string(victim.join("precious")).expect("kept"),
            "data"
        );
    }

    #[test]
    fn a_symlink_named_like_a_directory_is_not_opened_as_one() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("victim")).expect("mkdir");
        symlink(d.path().join("victim"), d.path().join("evil")).expect("symlink");
        let (root, m) = open_root(d.path()).expect("root");
        assert!(open_dir_at(root.as_fd(), c"evil").is_err());
        assert!(remove_tree(root.as_fd(), c"evil", None, m.mnt, &mut budget()).is_err());
        assert!(d.path().join("victim").exists());
    }

    #[test]
    fn a_fifo_lock_and_a_full_socket_do_not_block_and_count_as_in_use() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("org.chromium.Chromium.x");
        std::fs::create_dir(&dir).expect("mkdir");
        rustix::fs::mkfifoat(CWD, dir.join(".lock"), Mode::from_raw_mode(0o600)).expect("mkfifo");
        let fd = openat(CWD, &dir, dir_flags(), Mode::empty()).expect("open");
        let t = Instant::now();
        assert!(
            held_here(fd.as_fd()).is_err(),
            "a FIFO .lock cannot be checked"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        std::fs::remove_file(dir.join(".lock")).expect("rm");
        // A listener with a backlog of 0 that never accepts, filled until a connect would block.
        use rustix::net::{bind, connect, listen, socket_with, AddressFamily, SocketAddrUnix};
        use rustix::net::{SocketFlags, SocketType};
        let path = dir.join("SingletonSocket");
        let addr = SocketAddrUnix::new(path.as_path()).expect("addr");
        let l = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        bind(&l, &addr).expect("bind");
        listen(&l, 0).expect("listen");
        let mut held = Vec::new();
        for _ in 0..64 {
            let s = socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
            .expect("socket");
            let full = connect(&s, &addr).is_err();
            held.push(s);
            if full {
                break;
            }
        }
        let t = Instant::now();
        assert_eq!(held_here(fd.as_fd()), Ok(true));
        assert!(t.elapsed() < Duration::from_secs(2));
        drop((l, held));
        assert_eq!(held_here(fd.as_fd()), Ok(false), "nobody listens any more");
    }

    #[test]
    fn two_removers_racing_over_one_tree_both_succeed() {
        // The daemon and `cleanup --kill` can both kill a tree and remove its profile at once:
        // what the other remover took first is gone, which is what removing wanted. (It once
        // failed with `unlink CURRENT: No such file or directory`.)
        for round in 0..5 {
            let d = tempfile::tempdir().expect("tempdir");
            let p = d.path().join("profile");
            for i in 0..20 {
                let sub = p.join(format!("d{i}/e"));
                std::fs::create_dir_all(&sub).expect("mkdir");
                for j in 0..40 {
                    std::fs::write(sub.join(format!("f{j}")), "x").expect("write");
                }
            }
            let (root, m) = open_root(d.path()).expect("root");
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2)
                    .map(|_| {
                        let root = root.as_fd();
                        s.spawn(move || remove_tree(root, c"profile", None, m.mnt, &mut budget()))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("remover panicked"))
                    .collect()
            });
            assert!(
                results.iter().all(Result::is_ok),
                "round {round}: {results:?}"
            );
            assert!(!p.exists());
        }
        // Already gone: nothing to do, not a failure.
        let d = tempfile::tempdir().expect("tempdir");
        let (root, m) = open_root(d.path()).expect("root");
        assert_eq!(
            remove_tree(root.as_fd(), c"gone", None, m.mnt, &mut budget()),
            Ok(())
        );
    }

    #[test]
    fn the_walk_budget_bounds_the_work() {
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..50 {
            std::fs::write(d.path().join(format!("f{i}")), "x").expect("write");
        }
        let (root, _) = open_root(d.path()).expect("root");
        let mut b = Budget {
            entries: 10,
            deadline: Instant::now() + Duration::from_secs(10),
        };
        assert_eq!(list(root.as_fd(), &mut b).expect("list").len(), 10);
        let mut spent = Budget {
            entries: 100,
            deadline: Instant::now(),
        };
        assert!(list(root.as_fd(), &mut spent).expect("list").is_empty());
    }
}
