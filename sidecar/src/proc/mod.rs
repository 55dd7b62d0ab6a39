//! Reading `/proc`. The root is a parameter (tests point it at a fixture tree); parsers are pure
//! functions over bytes; file access is separate and classifies errors: a process that vanished
//! mid-read ([`ReadError::Gone`]) is expected and skipped, a permission denied drops a field or
//! the process and is counted, never a panic.

pub mod sockdiag;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("process is gone")]
    Gone,
    #[error("permission denied")]
    Denied,
    #[error("malformed {file}")]
    Malformed { file: &'static str },
    #[error("{0}")]
    Io(io::Error),
}

impl ReadError {
    /// The `reason` label of `leakwarden_skipped_processes_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Gone => "vanished",
            ReadError::Denied => "permission_denied",
            ReadError::Malformed { .. } => "malformed",
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

/// The fields of `/proc/PID/stat` the sidecar uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub threads: u64,
    /// Kernel flags (field 9); `PF_KTHREAD` marks kernel threads.
    pub flags: u64,
    /// Clock ticks after boot.
    pub start_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Parse `/proc/PID/stat`. comm (field 2) may hold anything but NUL — spaces, parentheses,
/// newlines — so it is taken between the first `(` and the *last* `)`, and the other fields are
/// counted after that.
pub fn parse_stat(buf: &[u8]) -> Option<Stat> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = String::from_utf8_lossy(buf.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(buf.get(close + 1..)?).ok()?;
    let mut it = rest.split_ascii_whitespace();
    // Field 3 is the first token after ')'.
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?; // 4
    let pgid = it.next()?.parse().ok()?; // 5
    let sid = it.next()?.parse().ok()?; // 6
    let mut it = it.skip(2); // fields 7, 8
    let flags = it.next()?.parse().ok()?; // 9
    let mut it = it.skip(10); // fields 10..=19
    let threads = it.next()?.parse().ok()?; // 20
    let start_ticks = it.nth(1)?.parse().ok()?; // 22 (21 is itrealvalue)
    let rss_pages: i64 = it.nth(1)?.parse().ok()?; // 24 (23 is vsize)
    Some(Stat {
        comm,
        state,
        ppid,
        pgid,
        sid,
        threads,
        flags,
        start_ticks,
        rss_pages: rss_pages.max(0) as u64,
    })
}

/// Kernel thread flag in `/proc/PID/stat` field 9.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// `/proc/PID/cmdline` as arguments. Normally NUL-separated; a process that rewrote its title
/// (Chromium's zygote-forked children do, setproctitle-style) shows one space-separated string,
/// which is split on spaces so its flags can still be read.
pub fn parse_cmdline(buf: &[u8]) -> Vec<String> {
    let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let buf = &buf[..end];
    if buf.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = buf
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.len() == 1 && args[0].contains(" --") {
        args = args[0].split(' ').map(str::to_string).collect();
    }
    args
}

/// The soft "Max open files" limit from `/proc/PID/limits` (`None` if unlimited or unreadable).
pub fn parse_nofile_soft(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let rest = line.get("Max open files".len()..)?;
    rest.split_ascii_whitespace().next()?.parse().ok()
}

/// The pod UID from a cgroup path (`…kubepods…pod<UID>…`), with `_` turned back into `-` (the
/// systemd cgroup driver writes `pod1234_abcd_…`).
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        if !path.contains("kubepods") {
            continue;
        }
        for seg in path.split('/') {
            let seg = seg.strip_suffix(".slice").unwrap_or(seg);
            if let Some(idx) = seg.rfind("pod") {
                let uid = &seg[idx + 3..];
                let uid = uid.replace('_', "-");
                if uid.len() >= 32 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Some(uid);
                }
            }
        }
    }
    None
}

/// The unified-hierarchy cgroup path of a process (`0::/path`).
pub fn parse_cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Socket inode of an fd link target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `/proc/meminfo` facts, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "MemTotal:" => m.total = v * 1024,
            "MemAvailable:" => m.available = v * 1024,
            _ => {}
        }
    }
    m
}

/// Access to one /proc tree.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    /// `stat(/proc/PID/fd).st_size` is the open-FD count (Linux ≥ 6.2); decided once.
    fd_size_is_count: bool,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        // Our own fd directory always holds stdin..stderr or at least the directory handle we
        // open here; if st_size reads 0 the kernel does not count, so fall back to listing.
        let fd_size_is_count = std::fs::metadata("/proc/self/fd")
            .map(|m| m.size() > 0)
            .unwrap_or(false);
        Self {
            root,
            fd_size_is_count,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn fd_fast_path(&self) -> bool {
        self.fd_size_is_count
    }

    fn pid_path(&self, pid: i32, file: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        if !file.is_empty() {
            p.push(file);
        }
        p
    }

    /// The numeric entries of the root.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::with_capacity(512);
        for e in std::fs::read_dir(&self.root)? {
            let Ok(e) = e else { continue };
            let name = e.file_name();
            if let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) {
                out.push(pid);
            }
        }
        Ok(out)
    }

    /// Read a small file into `buf` (cleared first).
    pub fn read_into(&self, pid: i32, file: &str, buf: &mut Vec<u8>) -> Result<(), ReadError> {
        buf.clear();
        let mut f = File::open(self.pid_path(pid, file))?;
        f.read_to_end(buf)?;
        Ok(())
    }

    pub fn stat(&self, pid: i32, buf: &mut Vec<u8>) -> Result<Stat, ReadError> {
        self.read_into(pid, "stat", buf)?;
        if buf.is_empty() {
            return Err(ReadError::Gone);
        }
        parse_stat(buf).ok_or(ReadError::Malformed { file: "stat" })
    }

    /// Effective UID of the process (owner of /proc/PID).
    pub fn uid(&self, pid: i32) -> Result<u32, ReadError> {
        Ok(std::fs::metadata(self.pid_path(pid, ""))?.uid())
    }

    /// Open FD count: one `stat()` on Linux ≥ 6.2, else a directory listing.
    pub fn fd_count(&self, pid: i32) -> Result<u64, ReadError> {
        let path = self.pid_path(pid, "fd");
        if self.fd_size_is_count {
            return Ok(std::fs::metadata(&path)?.size());
        }
        Ok(std::fs::read_dir(&path)?.count() as u64)
    }

    pub fn cmdline(&self, pid: i32, buf: &mut Vec<u8>) -> Result<Vec<String>, ReadError> {
        self.read_into(pid, "cmdline", buf)?;
        Ok(parse_cmdline(buf))
    }

    pub fn exe(&self, pid: i32) -> Result<String, ReadError> {
        Ok(std::fs::read_link(self.pid_path(pid, "exe"))?
            .to_string_lossy()
            .into_owned())
    }

    pub fn cgroup(&self, pid: i32) -> Result<String, ReadError> {
        Ok(std::fs::read_to_string(self.pid_path(pid, "cgroup"))?)
    }

    pub fn nofile_soft(&self, pid: i32) -> Result<Option<u64>, ReadError> {
        Ok(parse_nofile_soft(&std::fs::read_to_string(
            self.pid_path(pid, "limits"),
        )?))
    }

    /// Socket inodes among the process's open FDs.
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

    pub fn uptime_seconds(&self) -> io::Result<f64> {
        let text = std::fs::read_to_string(self.root.join("uptime"))?;
        text.split_ascii_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed uptime"))
    }

    pub fn meminfo(&self) -> io::Result<MemInfo> {
        Ok(parse_meminfo(&std::fs::read_to_string(
            self.root.join("meminfo"),
        )?))
    }
}

/// Memory limit and usage of a cgroup v2 path (`memory.max`, `memory.current`), if limited.
pub fn cgroup_memory(cgroup_root: &Path, path: &str) -> Option<(u64, u64)> {
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" → None
    let cur: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((max, cur))
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

    fn stat_line(comm: &str) -> Vec<u8> {
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 7 0 123456 \
             1000000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
        .into_bytes()
    }

    #[test]
    fn stat_plain() {
        let s = parse_stat(&stat_line("chromium")).expect("parses");
        assert_eq!(s.comm, "chromium");
        assert_eq!((s.state, s.ppid, s.pgid, s.sid), ('S', 1, 4242, 4242));
        assert_eq!((s.threads, s.start_ticks, s.rss_pages), (7, 123456, 2560));
        assert_eq!(s.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn stat_comm_with_parentheses_and_spaces() {
        let s = parse_stat(&stat_line("a) (b")).expect("parses");
        assert_eq!(s.comm, "a) (b");
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_ticks, 123456);
    }

    #[test]
    fn stat_comm_with_newline_and_closing_paren_last() {
        let s = parse_stat(&stat_line("x\ny) S 9 9 9")).expect("parses");
        assert_eq!(s.comm, "x\ny) S 9 9 9");
        assert_eq!((s.ppid, s.threads), (1, 7));
    }

    #[test]
    fn stat_malformed_is_none_not_panic() {
        for bad in [
            &b""[..],
            b"12",
            b"12 (x",
            b"12 x) S",
            b") (",
            b"1 (a) S 1 2",
            b"1 (a) S x 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 1 0 1 1 1",
        ] {
            assert!(
                parse_stat(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(parse_cmdline(b"a\0--b=c d\0"), ["a", "--b=c d"]);
        assert_eq!(parse_cmdline(b"rewritten title"), ["rewritten title"]);
        assert_eq!(
            parse_cmdline(
                b"/usr/lib/chromium/chromium --type=renderer --user-data-dir=/tmp/p\0\0\0"
            ),
            [
                "/usr/lib/chromium/chromium",
                "--type=renderer",
                "--user-data-dir=/tmp/p"
            ]
        );
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn limits_nofile() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile_soft(t), Some(1024));
        assert_eq!(
            parse_nofile_soft("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn pod_uid_cgroupfs_and_systemd_drivers() {
        let a = "0::/kubepods/burstable/pod6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60/abc123\n";
        assert_eq!(
            pod_uid_from_cgroup(a).as_deref(),
            Some("6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60")
        );
        let b = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6b2f7e2c_3c5d_4a4e_9f0a_1b2c3d4e5f60.slice/cri-containerd-abc.scope\n";
        assert_eq!(
            pod_uid_from_cgroup(b).as_deref(),
            Some("6b2f7e2c-3c5d-4a4e-9f0a-1b2c3d4e5f60")
        );
        assert_eq!(
            pod_uid_from_cgroup("0::/user.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn meminfo_and_sockets() {
        let m =
            parse_meminfo("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    8000 kB\n");
        assert_eq!(m.total, 16000 * 1024);
        assert_eq!(m.available, 8000 * 1024);
        assert_eq!(socket_inode("socket:[8994]"), Some(8994));
        assert_eq!(socket_inode("pipe:[1]"), None);
    }

    #[test]
    fn own_process_reads() {
        let fs = ProcFs::new("/proc");
        let me = std::process::id() as i32;
        let mut buf = Vec::new();
        let s = fs.stat(me, &mut buf).expect("own stat");
        assert!(s.threads >= 1);
        assert!(fs.fd_count(me).expect("own fds") >= 3);
        assert!(!fs.cmdline(me, &mut buf).expect("cmdline").is_empty());
        assert!(matches!(fs.stat(i32::MAX, &mut buf), Err(ReadError::Gone)));
    }
}
