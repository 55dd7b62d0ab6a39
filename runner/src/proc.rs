//! Reading `/proc`: the few facts the runner needs about processes it may have started.
//!
//! Parsers are pure functions over bytes; file access is separate and takes the `/proc` root as a
//! parameter so tests can point it at a fixture. A process is identified by (pid, start time):
//! every signal the runner sends is preceded by a check that the start time still matches.

use std::io;
use std::path::{Path, PathBuf};

/// The fields of `/proc/PID/stat` the runner uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Clock ticks after boot (field 22). With the pid, the identity of a process.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. `comm` sits between the first `(` and the *last* `)`: it may itself
/// contain spaces and parentheses.
pub fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let text = std::str::from_utf8(bytes).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    // Fields after comm, starting with field 3 (state) at index 0.
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        pid,
        comm,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// Whether a NUL-separated `cmdline` contains `needle` anywhere (arguments included).
pub fn cmdline_contains(cmdline: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Parses `MemAvailable:` from `/proc/meminfo`, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Access to one `/proc` tree.
#[derive(Debug, Clone)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Procfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `stat` of one process; `Ok(None)` when it is gone (a vanished process is expected).
    pub fn stat(&self, pid: i32) -> io::Result<Option<Stat>> {
        match std::fs::read(self.root.join(pid.to_string()).join("stat")) {
            Ok(b) => Ok(parse_stat(&b)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn cmdline(&self, pid: i32) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.root.join(pid.to_string()).join("cmdline")) {
            Ok(b) => Ok(Some(b)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every numeric entry of the root.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(pid);
            }
        }
        Ok(out)
    }

    /// Processes that belong to a browser: members of process group `pgid` (when given and > 1)
    /// or processes whose command line mentions `needle` (the browser's directory: its
    /// `--user-data-dir`, and the crashpad handlers' `--database`, which the runner points there
    /// through `XDG_CONFIG_HOME`). `exclude` (the runner itself) is never listed. Zombies are
    /// listed only through the process group: their command line is empty.
    pub fn find(&self, pgid: Option<i32>, needle: &[u8], exclude: i32) -> io::Result<Vec<Stat>> {
        let mut out = Vec::new();
        for pid in self.pids()? {
            if pid == exclude {
                continue;
            }
            let Some(stat) = self.stat(pid)? else {
                continue;
            };
            let in_group = matches!(pgid, Some(g) if g > 1 && stat.pgid == g);
            let mentions = !in_group
                && self
                    .cmdline(pid)?
                    .is_some_and(|c| cmdline_contains(&c, needle));
            if in_group || mentions {
                out.push(stat);
            }
        }
        Ok(out)
    }

    /// Pids of the direct children of `pid` (all its threads), from `/proc/PID/task/*/children`.
    pub fn children(&self, pid: i32) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        let tasks = self.root.join(pid.to_string()).join("task");
        for entry in std::fs::read_dir(tasks)? {
            let entry = entry?;
            match std::fs::read_to_string(entry.path().join("children")) {
                Ok(s) => out.extend(
                    s.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                ),
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// `MemAvailable` in bytes.
    pub fn mem_available(&self) -> io::Result<Option<u64>> {
        let s = std::fs::read_to_string(self.root.join("meminfo"))?;
        Ok(parse_mem_available(&s))
    }
}

fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let line = b"4242 (my (weird) comm) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (weird) comm");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgid, 4242);
        assert_eq!(s.sid, 4242);
        assert_eq!(s.start_time, 98765);
    }

    #[test]
    fn stat_zombie_and_malformed() {
        let z = b"7 (chromium) Z 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0 0";
        let s = parse_stat(z).unwrap();
        assert_eq!((s.state, s.pgid, s.start_time), ('Z', 0, 555));
        assert!(parse_stat(b"").is_none());
        assert!(parse_stat(b"12 (x").is_none());
        assert!(parse_stat(b"12 (x) S 1").is_none());
    }

    #[test]
    fn cmdline_search_spans_arguments() {
        let c = b"/usr/lib/chromium/chromium\0--user-data-dir=/tmp/r/b1/profile\0";
        assert!(cmdline_contains(c, b"/tmp/r/b1/"));
        assert!(!cmdline_contains(c, b"/tmp/r/b2/"));
        assert!(!cmdline_contains(c, b""));
    }

    #[test]
    fn meminfo_available() {
        let m = "MemTotal:       24684648 kB\nMemFree:        23838104 kB\nMemAvailable:   24334776 kB\n";
        assert_eq!(parse_mem_available(m), Some(24334776 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn fixture_root_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("10")).unwrap();
        std::fs::write(
            dir.path().join("10/stat"),
            "10 (chromium) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 0",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10/cmdline"),
            b"chromium\0--user-data-dir=/x/b1/p\0",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("11")).unwrap();
        std::fs::write(
            dir.path().join("11/stat"),
            "11 (bash) S 1 11 11 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 78 0 0 0",
        )
        .unwrap();
        std::fs::write(dir.path().join("11/cmdline"), b"bash\0").unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemAvailable: 4 kB\n").unwrap();
        let p = Procfs::new(dir.path());
        let found = p.find(None, b"/x/b1/", 1).unwrap();
        assert_eq!(found.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![10]);
        assert_eq!(p.mem_available().unwrap(), Some(4096));
        assert_eq!(p.stat(99).unwrap(), None);
    }
}
