//! Reading `/proc`: the few facts the runner needs about processes it may have started, through
//! the shared reader and parsers of [`leakwarden_core::proc`] (one copy for both programs). This
//! module only adapts them to the runner's questions: "which processes belong to this browser"
//! ([`Procfs::find`]) and "how much memory is available".
//!
//! A process is identified by (pid, start time): every signal the runner sends is preceded by a
//! check that the start time still matches (see `kill.rs`).

use std::io;
use std::path::{Path, PathBuf};

use leakwarden_core::proc::{ProcFs, ReadError};

pub use leakwarden_core::proc::{cmdline_contains, Stat};

/// Why a scan of `/proc` is incomplete.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot list {root}: {source}")]
    List { root: PathBuf, source: io::Error },
    #[error("{count} process(es) could not be read (first: /proc/{pid}/{file}: {source})")]
    Unreadable {
        count: usize,
        pid: i32,
        file: &'static str,
        source: ReadError,
    },
}

/// What [`Procfs::find`] found, and whether it saw every process.
#[derive(Debug, Default)]
pub struct Scan {
    /// The processes found (all of them only when `unverified` is `None`).
    pub found: Vec<Stat>,
    /// Set when some of `/proc` could not be read: then `found` may miss processes, and an
    /// empty `found` does not mean "nothing left".
    pub unverified: Option<ScanError>,
}

/// Record one more process that could not be read (the first one's error is kept).
fn note_unreadable(err: &mut Option<ScanError>, pid: i32, file: &'static str, e: ReadError) {
    match err {
        Some(ScanError::Unreadable { count, .. }) => *count += 1,
        Some(ScanError::List { .. }) => {}
        None => {
            *err = Some(ScanError::Unreadable {
                count: 1,
                pid,
                file,
                source: e,
            })
        }
    }
}

impl Scan {
    /// Nothing found, and the scan saw everything.
    pub fn is_verified_empty(&self) -> bool {
        self.unverified.is_none() && self.found.is_empty()
    }
}

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
    pub fn new(root: impl Into<PathBuf>) -> Self {
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
    ///
    /// Never fails: a scan that could not read everything (the listing, or a process's `stat`
    /// or `cmdline` — EMFILE, the failure this project exists for, is the likely one) lists
    /// what it did read and says why it is [`Scan::unverified`]. Such a scan proves nothing:
    /// callers count it, log it and never report it clean. A process that
    /// vanished mid-scan is simply not listed; one whose files we may not read (`hidepid`)
    /// belongs to another user and so cannot be one we started.
    pub fn find(&self, pgid: Option<i32>, needle: &[u8], exclude: i32) -> Scan {
        let mut scan = Scan::default();
        let pids = match self.pids() {
            Ok(p) => p,
            Err(source) => {
                scan.unverified = Some(ScanError::List {
                    root: self.root().to_path_buf(),
                    source,
                });
                return scan;
            }
        };
        for pid in pids {
            if pid == exclude {
                continue;
            }
            let stat = match self.inner.stat_opt(pid) {
                Ok(Some(s)) => s,
                Ok(None) | Err(ReadError::Denied) => continue,
                Err(e) => {
                    note_unreadable(&mut scan.unverified, pid, "stat", e);
                    continue;
                }
            };
            let in_group = matches!(pgid, Some(g) if g > 1 && stat.pgid == g);
            let mentions = !in_group
                && match self.inner.cmdline_raw(pid) {
                    Ok(c) => c.is_some_and(|c| cmdline_contains(&c, needle)),
                    Err(ReadError::Denied) => false,
                    Err(e) => {
                        note_unreadable(&mut scan.unverified, pid, "cmdline", e);
                        false
                    }
                };
            if in_group || mentions {
                scan.found.push(stat);
            }
        }
        scan
    }

    /// The command lines of every process but `exclude`, for "does any process name this
    /// directory" questions. The error, when set, says the list is incomplete: then the answer
    /// is "cannot tell", never "no". Processes that vanished or belong to another user
    /// (`hidepid`) are skipped, as in [`Procfs::find`].
    pub fn cmdlines(&self, exclude: i32) -> (Vec<Vec<u8>>, Option<ScanError>) {
        let mut out = Vec::new();
        let mut err = None;
        let pids = match self.pids() {
            Ok(p) => p,
            Err(source) => {
                let root = self.root().to_path_buf();
                return (out, Some(ScanError::List { root, source }));
            }
        };
        for pid in pids.into_iter().filter(|&p| p != exclude) {
            match self.inner.cmdline_raw(pid) {
                Ok(Some(c)) => out.push(c),
                Ok(None) | Err(ReadError::Denied) => {}
                Err(e) => note_unreadable(&mut err, pid, "cmdline", e),
            }
        }
        (out, err)
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
/// A fixture process whose `cmdline` cannot be read (a directory: EISDIR, which as root
/// stands in for EACCES/EMFILE) beside a browser process that can.
pub(crate) fn fixture_with_unreadable() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("10")).unwrap();
    std::fs::write(
        p.join("10/stat"),
        "10 (chromium) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 0",
    )
    .unwrap();
    std::fs::write(p.join("10/cmdline"), b"chromium\0--user-data-dir=/x/b1/p\0").unwrap();
    std::fs::create_dir_all(p.join("12/cmdline")).unwrap();
    std::fs::write(
        p.join("12/stat"),
        "12 (chromium) S 1 12 12 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 79 0 0 0",
    )
    .unwrap();
    dir
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
        let scan = p.find(None, b"/x/b1/", 1);
        assert!(scan.unverified.is_none(), "{:?}", scan.unverified);
        let found = scan.found;
        assert_eq!(found.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![10]);
        assert_eq!(p.mem_available().unwrap(), Some(4096));
        assert_eq!(p.stat(99).unwrap(), None);
    }

    // See: issue 14, item 2 ("a failed /proc scan is reported as a clean cleanup").
    #[test]
    fn an_unreadable_process_makes_the_scan_unverified_not_empty() {
        let dir = fixture_with_unreadable();
        let p = Procfs::new(dir.path());
        let scan = p.find(None, b"/x/b1/", 1);
        // What could be read is still found (the stragglers step kills it) ...
        assert_eq!(scan.found.iter().map(|s| s.pid).collect::<Vec<_>>(), [10]);
        // ... but the scan does not claim to have seen everything.
        match &scan.unverified {
            Some(ScanError::Unreadable {
                count: 1,
                pid: 12,
                file: "cmdline",
                ..
            }) => {}
            other => panic!("expected one unreadable process, got {other:?}"),
        }
        assert!(!scan.is_verified_empty());
        let (cmdlines, err) = p.cmdlines(1);
        assert_eq!(cmdlines.len(), 1);
        assert!(err.is_some(), "an incomplete list of command lines says so");

        // A group member is found from its stat alone; its cmdline is not needed.
        std::fs::remove_dir_all(dir.path().join("12")).unwrap();
        let scan = p.find(Some(10), b"/nothing/", 1);
        assert!(scan.unverified.is_none(), "{:?}", scan.unverified);
        assert_eq!(scan.found.len(), 1);
    }

    #[test]
    fn an_unlistable_root_is_unverified() {
        let scan = Procfs::new("/nonexistent-proc-root").find(None, b"/x/", 1);
        assert!(matches!(scan.unverified, Some(ScanError::List { .. })));
        assert!(!scan.is_verified_empty());
    }

    /// Set in the child process of [`scan_out_of_descriptors_is_unverified`].
    const EMFILE_CHILD: &str = "LW_RUNNER_SCAN_EMFILE_CHILD";

    /// The failure this project exists for, for real: a process out of descriptors (EMFILE)
    /// scans `/proc` for a browser's processes. The scan must say "unverified", not "nothing
    /// found". EMFILE is provoked in a child (this test binary run again for [`emfile_child`])
    /// whose soft `RLIMIT_NOFILE` is lowered and filled to the last descriptor.
    // See: issue 14, item 2.
    #[test]
    fn scan_out_of_descriptors_is_unverified() {
        let exe = std::env::current_exe().expect("current_exe");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "proc::tests::emfile_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("lw-scan find=unverified cmdlines=unverified"),
            "{stdout}"
        );
        assert!(stdout.contains("os error 24"), "EMFILE named: {stdout}");
    }

    /// The child's part of [`scan_out_of_descriptors_is_unverified`]; does nothing when run as
    /// an ordinary test.
    #[test]
    fn emfile_child() {
        if std::env::var_os(EMFILE_CHILD).is_none() {
            return;
        }
        let p = Procfs::default();
        let me = std::process::id() as i32;
        let fillers = leakwarden_core::limits::exhaust_descriptors(8);
        let scan = p.find(None, b"/no-such-browser-dir/", me);
        let (_, cmdlines_err) = p.cmdlines(me);
        drop(fillers);
        let word = |unverified: bool| if unverified { "unverified" } else { "clean" };
        println!(
            "lw-scan find={} cmdlines={}",
            word(scan.unverified.is_some()),
            word(cmdlines_err.is_some())
        );
        if let Some(e) = scan.unverified {
            println!("lw-scan error: {e}");
        }
    }
}
