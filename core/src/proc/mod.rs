//! Reading `/proc`. The root is a parameter (tests point it at a fixture tree); parsers are pure
//! functions over bytes ([`parse`]); file access is here and classifies errors: a process that
//! vanished mid-read ([`ReadError::Gone`]) is expected and skipped, a permission denied drops a
//! field or the process and is counted, a read that blocks ([`ReadError::Blocked`], see
//! [`guarded`]) is given up on — never a panic. Every read is bounded in size.

pub mod guarded;
pub mod parse;

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};

pub use parse::*;

/// The most bytes read from one `/proc` file (a command line can be up to `ARG_MAX`; nothing a
/// decision needs lies beyond this).
pub const READ_MAX: usize = 1 << 20;

/// Why one process (or one of its files) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("process gone")]
    Gone,
    #[error("permission denied")]
    Denied,
    #[error("malformed {file}")]
    Malformed { file: &'static str },
    #[error("read did not finish within its deadline")]
    Blocked,
    #[error("{0}")]
    Io(io::Error),
}

impl ReadError {
    /// The `reason` label of a skipped-process counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Gone => "vanished",
            ReadError::Denied => "permission_denied",
            ReadError::Malformed { .. } => "malformed",
            ReadError::Blocked => "blocked",
            ReadError::Io(_) => "io_error",
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ReadError::Gone,
            io::ErrorKind::PermissionDenied => ReadError::Denied,
            _ if e.raw_os_error() == Some(libc::ESRCH) => ReadError::Gone,
            _ => ReadError::Io(e),
        }
    }
}

/// Read at most `cap` bytes of `path` into `buf` (cleared first).
pub fn read_bounded(path: &Path, buf: &mut Vec<u8>, cap: usize) -> io::Result<()> {
    buf.clear();
    let f = File::open(path)?;
    f.take(cap as u64).read_to_end(buf)?;
    Ok(())
}

/// Access to one `/proc` tree.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    /// The root, opened once: the per-process reads of a scan go through it with short relative
    /// paths built on the stack (no allocation, no re-walk of the root's path).
    root_fd: Option<Arc<OwnedFd>>,
    /// `stat(/proc/PID/fd).st_size` is the open-FD count (Linux ≥ 6.2); decided once.
    fd_size_is_count: bool,
}

/// `PID/file\0` in a stack buffer.
struct RelPath {
    buf: [u8; 64],
    len: usize,
}

impl RelPath {
    fn new(pid: i32, file: &str) -> Option<RelPath> {
        let mut buf = [0u8; 64];
        let mut digits = [0u8; 12];
        let mut n = pid.unsigned_abs();
        let mut d = 0;
        loop {
            digits[d] = b'0' + (n % 10) as u8;
            d += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut len = 0;
        for i in (0..d).rev() {
            buf[len] = digits[i];
            len += 1;
        }
        if !file.is_empty() {
            let f = file.as_bytes();
            if len + 1 + f.len() + 1 > buf.len() || f.contains(&0) {
                return None;
            }
            buf[len] = b'/';
            len += 1;
            buf[len..len + f.len()].copy_from_slice(f);
            len += f.len();
        }
        buf[len] = 0;
        Some(RelPath { buf, len: len + 1 })
    }
    fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[..self.len]).unwrap_or(c".")
    }
}

fn errno(e: rustix::io::Errno) -> ReadError {
    ReadError::from(io::Error::from(e))
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        // Our own fd directory always holds at least the descriptors std opened; if st_size
        // reads 0 the kernel does not count, so fall back to listing.
        let fd_size_is_count = std::fs::metadata("/proc/self/fd")
            .map(|m| m.size() > 0)
            .unwrap_or(false);
        let root = root.into();
        let root_fd = openat(
            rustix::fs::CWD,
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(Arc::new);
        Self {
            root,
            root_fd,
            fd_size_is_count,
        }
    }

    /// Read `PID/file` through the root's descriptor into `buf`, at most `cap` bytes.
    fn read_rel(
        &self,
        pid: i32,
        file: &str,
        buf: &mut Vec<u8>,
        cap: usize,
    ) -> Result<(), ReadError> {
        buf.clear();
        let (Some(root), Some(rel)) = (self.root_fd.as_ref(), RelPath::new(pid, file)) else {
            read_bounded(&self.pid_path(pid, file), buf, cap)?;
            return Ok(());
        };
        let fd = openat(
            root.as_fd(),
            rel.as_cstr(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(errno)?;
        loop {
            if buf.len() >= cap {
                buf.truncate(cap);
                return Ok(());
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(1024);
            }
            let n = rustix::io::read(&fd, rustix::buffer::spare_capacity(buf)).map_err(errno)?;
            if n == 0 {
                buf.truncate(cap);
                return Ok(());
            }
        }
    }

    /// `statx` of `PID/file` (empty: the PID's directory) through the root's descriptor.
    fn stat_rel(&self, pid: i32, file: &str) -> Result<rustix::fs::Stat, ReadError> {
        match (self.root_fd.as_ref(), RelPath::new(pid, file)) {
            (Some(root), Some(rel)) => {
                statat(root.as_fd(), rel.as_cstr(), AtFlags::empty()).map_err(errno)
            }
            _ => rustix::fs::stat(self.pid_path(pid, file)).map_err(errno),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn fd_fast_path(&self) -> bool {
        self.fd_size_is_count
    }

    /// `<root>/<pid>/<file>` (`file` may be empty).
    pub fn pid_path(&self, pid: i32, file: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        if !file.is_empty() {
            p.push(file);
        }
        p
    }

    /// The numeric entries of the root.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::with_capacity(512);
        if let Some(root) = self.root_fd.as_ref() {
            let dir = openat(
                root.as_fd(),
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut d = rustix::fs::Dir::read_from(&dir)?;
            while let Some(e) = d.read() {
                let e = e?;
                let name = e.file_name().to_bytes();
                if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
                    continue;
                }
                if let Some(pid) = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok())
                {
                    if pid > 0 {
                        out.push(pid);
                    }
                }
            }
            return Ok(out);
        }
        for e in std::fs::read_dir(&self.root)? {
            let Ok(e) = e else { continue };
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if pid > 0 {
                    out.push(pid);
                }
            }
        }
        Ok(out)
    }

    /// Read a small file of a process into `buf` (cleared first), at most [`READ_MAX`] bytes.
    pub fn read_into(&self, pid: i32, file: &str, buf: &mut Vec<u8>) -> Result<(), ReadError> {
        self.read_rel(pid, file, buf, READ_MAX)
    }

    pub fn stat(&self, pid: i32, buf: &mut Vec<u8>) -> Result<Stat, ReadError> {
        self.read_into(pid, "stat", buf)?;
        if buf.is_empty() {
            return Err(ReadError::Gone);
        }
        parse_stat(buf).ok_or(ReadError::Malformed { file: "stat" })
    }

    /// `stat` of one process; `Ok(None)` when it is gone (a vanished process is expected).
    pub fn stat_opt(&self, pid: i32) -> Result<Option<Stat>, ReadError> {
        let mut buf = Vec::with_capacity(512);
        match self.stat(pid, &mut buf) {
            Ok(s) => Ok(Some(s)),
            Err(ReadError::Gone) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Start time of a process; `Ok(None)` when it is gone.
    pub fn start_ticks(&self, pid: i32) -> Result<Option<u64>, ReadError> {
        Ok(self.stat_opt(pid)?.map(|s| s.start_ticks))
    }

    /// Effective UID of the process (owner of /proc/PID).
    pub fn uid(&self, pid: i32) -> Result<u32, ReadError> {
        Ok(self.stat_rel(pid, "")?.st_uid)
    }

    /// Open FD count: one `stat()` on Linux ≥ 6.2, else a directory listing.
    pub fn fd_count(&self, pid: i32) -> Result<u64, ReadError> {
        if self.fd_size_is_count {
            return Ok(self.stat_rel(pid, "fd")?.st_size.max(0) as u64);
        }
        let path = self.pid_path(pid, "fd");
        let mut n = 0u64;
        for e in std::fs::read_dir(&path)? {
            e?;
            n += 1;
        }
        Ok(n)
    }

    pub fn cmdline(&self, pid: i32, buf: &mut Vec<u8>) -> Result<Vec<String>, ReadError> {
        self.read_into(pid, "cmdline", buf)?;
        Ok(parse_cmdline(buf))
    }

    /// The raw (NUL-separated) command line; `Ok(None)` when the process is gone.
    pub fn cmdline_raw(&self, pid: i32) -> Result<Option<Vec<u8>>, ReadError> {
        let mut buf = Vec::new();
        match self.read_into(pid, "cmdline", &mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(ReadError::Gone) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn exe(&self, pid: i32) -> Result<String, ReadError> {
        Ok(std::fs::read_link(self.pid_path(pid, "exe"))?
            .to_string_lossy()
            .into_owned())
    }

    pub fn cgroup(&self, pid: i32) -> Result<String, ReadError> {
        let mut buf = Vec::new();
        self.read_into(pid, "cgroup", &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    pub fn status(&self, pid: i32) -> Result<Status, ReadError> {
        let mut buf = Vec::new();
        self.read_into(pid, "status", &mut buf)?;
        Ok(parse_status(&String::from_utf8_lossy(&buf)))
    }

    pub fn nofile(&self, pid: i32) -> Result<NofileLimits, ReadError> {
        let mut buf = Vec::new();
        self.read_into(pid, "limits", &mut buf)?;
        Ok(parse_limits(&String::from_utf8_lossy(&buf)))
    }

    /// Socket inodes among the process's open FDs: (fd, inode).
    pub fn socket_inodes(&self, pid: i32) -> Result<Vec<(u32, u64)>, ReadError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.pid_path(pid, "fd"))? {
            let Ok(e) = e else { continue };
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(target) = std::fs::read_link(e.path()) {
                if let Some(ino) = target.to_str().and_then(socket_inode) {
                    out.push((fd, ino));
                }
            }
        }
        Ok(out)
    }

    /// Direct children of `pid`: `/proc/PID/task/*/children` where the kernel has it
    /// (`CONFIG_PROC_CHILDREN`), else a scan of every process's parent.
    pub fn children(&self, pid: i32) -> Result<Vec<i32>, ReadError> {
        let mut out = Vec::new();
        let mut any_children_file = false;
        for e in std::fs::read_dir(self.pid_path(pid, "task"))? {
            let Ok(e) = e else { continue };
            let mut buf = Vec::new();
            match read_bounded(&e.path().join("children"), &mut buf, READ_MAX) {
                Ok(()) => {
                    any_children_file = true;
                    out.extend(
                        String::from_utf8_lossy(&buf)
                            .split_ascii_whitespace()
                            .filter_map(|p| p.parse::<i32>().ok()),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !any_children_file {
            out = self.children_by_scan(pid)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Children of `pid` found by reading every process's `stat` (kernels without
    /// `CONFIG_PROC_CHILDREN`).
    pub fn children_by_scan(&self, pid: i32) -> Result<Vec<i32>, ReadError> {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(512);
        for p in self.pids()? {
            match self.stat(p, &mut buf) {
                Ok(s) if s.ppid == pid => out.push(p),
                Ok(_) | Err(ReadError::Gone) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn uptime_seconds(&self) -> io::Result<f64> {
        let mut buf = Vec::new();
        read_bounded(&self.root.join("uptime"), &mut buf, 4096)?;
        parse_uptime(&String::from_utf8_lossy(&buf))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed uptime"))
    }

    pub fn meminfo(&self) -> io::Result<MemInfo> {
        let mut buf = Vec::new();
        read_bounded(&self.root.join("meminfo"), &mut buf, 64 * 1024)?;
        Ok(parse_meminfo(&String::from_utf8_lossy(&buf)))
    }
}

/// Memory limit and usage of a cgroup v2 path (`memory.max`, `memory.current`), if limited.
pub fn cgroup_memory(cgroup_root: &Path, path: &str) -> Option<(u64, u64)> {
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    let max: u64 = read_small(&dir.join("memory.max"))?.trim().parse().ok()?; // "max" → None
    let cur: u64 = read_small(&dir.join("memory.current"))?
        .trim()
        .parse()
        .ok()?;
    Some((max, cur))
}

/// A small text file (cgroup and sysctl values), at most 4 KiB.
pub fn read_small(path: &Path) -> Option<String> {
    let mut buf = Vec::new();
    read_bounded(path, &mut buf, 4096).ok()?;
    String::from_utf8(buf).ok()
}

/// Clock ticks per second and page size of this system.
pub fn clock_ticks_and_page_size() -> (u64, u64) {
    let page = rustix::param::page_size() as u64;
    let hz = rustix::param::clock_ticks_per_second();
    (if hz == 0 { 100 } else { hz }, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_reads() {
        let fs = ProcFs::new("/proc");
        let me = std::process::id() as i32;
        let mut buf = Vec::new();
        let s = fs.stat(me, &mut buf).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(s.threads >= 1);
        assert!(fs.fd_count(me).expect("own fds") >= 3);
        assert!(!fs.cmdline(me, &mut buf).expect("cmdline").is_empty());
        assert!(fs.status(me).expect("status").ns_pid.contains(&me));
        assert!(fs.nofile(me).expect("limits").soft.is_some());
        assert!(matches!(fs.stat(i32::MAX, &mut buf), Err(ReadError::Gone)));
        assert_eq!(fs.stat_opt(i32::MAX).expect("gone is not an error"), None);
    }

    #[test]
    fn children_from_the_kernel_and_by_scan_agree() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fs = ProcFs::new("/proc");
        let me = std::process::id() as i32;
        let kid = c.id() as i32;
        assert!(fs.children(me).expect("children").contains(&kid));
        assert!(fs.children_by_scan(me).expect("scan").contains(&kid));
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn a_fixture_root_is_honoured_and_bad_files_are_classified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("1/task/1")).expect("mkdir");
        std::fs::write(
            p.join("1/stat"),
            "1 (init) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 0",
        )
        .expect("write");
        std::fs::create_dir_all(p.join("10/task/10")).expect("mkdir");
        std::fs::write(
            p.join("10/stat"),
            "10 (chromium) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 0",
        )
        .expect("write");
        std::fs::create_dir_all(p.join("11/task/11")).expect("mkdir");
        std::fs::write(p.join("11/stat"), "garbage").expect("write");
        std::fs::write(p.join("meminfo"), "MemAvailable: 4 kB\n").expect("write");
        std::fs::create_dir_all(p.join("self")).expect("mkdir");
        let fs = ProcFs::new(p);
        let mut pids = fs.pids().expect("pids");
        pids.sort();
        assert_eq!(pids, [1, 10, 11], "non-numeric entries are not processes");
        let mut buf = Vec::new();
        assert_eq!(fs.stat(10, &mut buf).expect("stat").start_ticks, 77);
        assert!(matches!(
            fs.stat(11, &mut buf),
            Err(ReadError::Malformed { .. })
        ));
        assert_eq!(fs.meminfo().expect("meminfo").available, 4096);
        // No `children` files (a kernel without CONFIG_PROC_CHILDREN): the scan finds the
        // malformed process an error, not "no children".
        assert!(fs.children(1).is_err());
        std::fs::remove_dir_all(p.join("11")).expect("rm");
        assert_eq!(fs.children(1).expect("by scan"), [10]);
    }
}
