//! Reading `/proc`: the few facts the runner needs about processes it may have started, through
//! the shared reader and parsers of [`leakwarden_core::proc`] (one copy for both programs). This
//! module only adapts them to the runner's questions: "which processes belong to this browser"
//! ([`Procfs::find`]) and "how much memory is available".
//!
//! A process is identified by (pid, start time): every signal the runner sends is preceded by a
//! check that the start time still matches (see `kill.rs`).

use std::io;
use std::path::Path;

use leakwarden_core::proc::{ProcFs, ReadError};

pub use leakwarden_core::proc::{cmdline_contains, Stat};

/// Access to one `/proc` tree.
#[derive(Debug, Clone, Default)]
pub struct Procfs {
    inner: ProcFs,
}

fn io_err(e: ReadError) -> io::Error {
    match e {
        ReadError::Io(e) => e,
        ReadError::Denied => io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"),
        other => io::Error::other(other.to_string()),
    }
}

impl Procfs {
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self {
            inner: ProcFs::new(root),
        }
    }

    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// The shared reader underneath.
    pub fn core(&self) -> &ProcFs {
        &self.inner
    }

    /// `stat` of one process; `Ok(None)` when it is gone (a vanished process is expected).
    pub fn stat(&self, pid: i32) -> io::Result<Option<Stat>> {
        self.inner.stat_opt(pid).map_err(io_err)
    }

    pub fn cmdline(&self, pid: i32) -> io::Result<Option<Vec<u8>>> {
        self.inner.cmdline_raw(pid).map_err(io_err)
    }

    /// Every numeric entry of the root.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        self.inner.pids()
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

    /// Pids of the direct children of `pid` (all its threads), from `/proc/PID/task/*/children`,
    /// or from every process's parent where the kernel lacks those files.
    pub fn children(&self, pid: i32) -> io::Result<Vec<i32>> {
        self.inner.children(pid).map_err(io_err)
    }

    /// `MemAvailable` in bytes.
    pub fn mem_available(&self) -> io::Result<Option<u64>> {
        let m = self.inner.meminfo()?;
        // Missing (or a 0 that no running system reports) reads as unknown.
        Ok((m.available > 0).then_some(m.available))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
