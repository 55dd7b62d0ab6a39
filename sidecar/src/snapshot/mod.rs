//! One pass over /proc → an immutable [`Snapshot`].
//!
//! Per process the scanner reads `stat` (pid, ppid, pgid, sid, state, comm, threads, start time,
//! RSS), the owner of `/proc/PID` (uid) and `stat(/proc/PID/fd)` (the open-FD count on Linux ≥ 6.2;
//! a directory listing on older kernels). That is the whole per-process cost of a steady-state
//! scan. cmdline, exe and cgroup are read only for processes that may belong to a policy family,
//! once per identity: they are cached by (pid, start time, comm), which survives between scans and
//! is pruned of processes that are gone. A process is named by (pid, start time) everywhere, so
//! a reused PID is a new process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::policy::{FamilyKind, Policy};
use crate::proc::{self, guarded::Guarded, MemInfo, ProcFs, ReadError};

/// Processes younger than this are not cached: a zygote-forked renderer shows the zygote's
/// command line until it rewrites its own.
const CACHE_MIN_AGE: Duration = Duration::from_secs(2);
/// The soft RLIMIT_NOFILE of a family process is re-read at least this often. It is read at every
/// scan while the process is young (younger than [`CACHE_MIN_AGE`]: Chromium, Go and Java raise
/// their own soft limit as they start, and `prlimit … -- PROGRAM` sets it just before its exec),
/// after it changes its comm (an exec), and while its FDs are at least [`LIMIT_NEAR`] (or the
/// policy's lowest `fd_ratio_above`, if lower) of the limit last read: a ratio rule never acts
/// on a limit older than one scan.
const LIMIT_TTL: Duration = Duration::from_secs(30);
/// See [`LIMIT_TTL`].
const LIMIT_NEAR: f64 = 0.5;
/// Command lines are kept for display up to this length (matching uses the whole line, and the
/// kill engine's protect check re-reads it whole at signal time).
const CMDLINE_DISPLAY_MAX: usize = 4096;
/// A `/proc/PID/cmdline` read that takes longer than this is given up (the process holds its
/// memory-map lock, e.g. stuck behind a hung mount) and the process is skipped as `blocked`.
const CMDLINE_DEADLINE: Duration = Duration::from_millis(500);
/// At most this many reader threads may be stuck in such reads at once.
const MAX_STUCK_READERS: usize = 4;
/// A process whose cmdline read blocked is read again after this long, then after twice as
/// long each time it blocks again, up to [`BLOCKED_RETRY_MAX`]: a read that was only slow (a
/// host under heavy load, or every reader slot taken by a hung mount for a while) must not
/// exempt a leaking browser from its policy for the rest of its life.
const BLOCKED_RETRY_FIRST: Duration = Duration::from_secs(10);
const BLOCKED_RETRY_MAX: Duration = Duration::from_secs(600);

/// Open FDs over the soft RLIMIT_NOFILE: what `fd_ratio_above` judges, what
/// `leakwarden_fd_limit_ratio_max` exports, and what has the scanner re-read a limit. `None` when
/// either is unknown or the limit is 0.
pub fn fd_ratio(fds: Option<u64>, soft_limit: Option<u64>) -> Option<f64> {
    soft_limit
        .filter(|l| *l > 0)
        .zip(fds)
        .map(|(l, n)| n as f64 / l as f64)
}

/// A family process's soft RLIMIT_NOFILE as last read.
#[derive(Debug, Clone, Copy)]
struct Limit {
    read_at: Instant,
    soft: Option<u64>,
    /// The comm it was read under (an exec changes it, and may change the limit).
    comm: u64,
    /// The scan that last saw the process.
    seen: u64,
}

/// An identity whose cmdline read blocked: when to read it again.
#[derive(Debug, Clone, Copy)]
struct BlockedRead {
    seen: u64,
    retry_at: Instant,
    backoff: Duration,
}

/// What never changes while a process runs one program: who it is in the policy's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Index into the policy's families.
    pub family: usize,
    pub family_name: String,
    pub kind: FamilyKind,
    /// Chromium's `--type=` (renderer, gpu-process, utility, zygote, …); [`ROLE_BROWSER`] for a
    /// browser's main process, [`ROLE_DRIVER`] for a driver, [`ROLE_CRASHPAD`] for a handler;
    /// `None` for a generic family's process.
    pub role: Option<String>,
    pub user_data_dir: Option<PathBuf>,
    /// Arguments joined by spaces, truncated.
    pub cmdline: String,
    pub exe: Option<String>,
    /// Unified cgroup path.
    pub cgroup: Option<String>,
    pub pod_uid: Option<String>,
}

impl Info {
    /// A browser's main process (Chromium without `--type=`), which owns its profile.
    pub fn is_browser_root(&self) -> bool {
        self.kind == FamilyKind::Browser && self.role.as_deref() == Some(ROLE_BROWSER)
    }
}

/// The role of a browser's main process (Chromium's helpers carry `--type=`, it carries none).
pub const ROLE_BROWSER: &str = "browser";
/// The role of a driver process (chromedriver).
pub const ROLE_DRIVER: &str = "driver";
/// The role of a crashpad handler.
pub const ROLE_CRASHPAD: &str = "crashpad-handler";

/// One process in a snapshot.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub start_ticks: u64,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: char,
    pub comm: String,
    pub uid: u32,
    pub rss_bytes: u64,
    /// `None` when the fd directory could not be read (another user's process without
    /// CAP_SYS_PTRACE).
    pub fds: Option<u64>,
    pub threads: u64,
    /// Time since the process started.
    pub age: Duration,
    /// Set for family members.
    pub info: Option<Arc<Info>>,
    /// Soft RLIMIT_NOFILE (family members only).
    pub fd_soft_limit: Option<u64>,
}

impl Proc {
    pub fn id(&self) -> (i32, u64) {
        (self.pid, self.start_ticks)
    }
    pub fn family(&self) -> Option<&str> {
        self.info.as_deref().map(|i| i.family_name.as_str())
    }
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Processes skipped during one scan, by reason; `fds_unreadable` counts processes kept without
/// an FD count (another user's `fd/` without CAP_SYS_PTRACE), whose FDs are then unknown — never
/// taken as 0.
#[derive(Debug, Clone, Default)]
pub struct Skipped {
    pub vanished: u64,
    pub permission_denied: u64,
    pub malformed: u64,
    pub io_error: u64,
    pub blocked: u64,
    pub fds_unreadable: u64,
}

impl Skipped {
    fn add(&mut self, e: &ReadError) {
        match e {
            ReadError::Gone => self.vanished += 1,
            ReadError::Denied => self.permission_denied += 1,
            ReadError::Malformed { .. } => self.malformed += 1,
            ReadError::Io(_) => self.io_error += 1,
            ReadError::Blocked => self.blocked += 1,
        }
    }
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("vanished", self.vanished),
            ("permission_denied", self.permission_denied),
            ("malformed", self.malformed),
            ("io_error", self.io_error),
            ("blocked", self.blocked),
            ("fds_unreadable", self.fds_unreadable),
        ]
    }
}

/// One scan's view of the process table. Immutable once built.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    pub taken_instant: Instant,
    pub duration: Duration,
    /// Sorted by PID: a lookup is a binary search (no PID → index map: at 20,000 processes that
    /// map alone was half a megabyte per snapshot).
    pub procs: Vec<Proc>,
    /// Children of each PID (indices into `procs`), built once per scan.
    children: HashMap<i32, Vec<usize>>,
    pub skipped: Skipped,
    pub mem: MemInfo,
    /// comm of PID 1 in this PID namespace, if visible.
    pub init_comm: Option<String>,
    pub clk_tck: u64,
}

impl Snapshot {
    pub fn get(&self, pid: i32) -> Option<&Proc> {
        self.index_of(pid).map(|i| &self.procs[i])
    }
    pub fn index_of(&self, pid: i32) -> Option<usize> {
        self.procs.binary_search_by_key(&pid, |p| p.pid).ok()
    }
    /// Indices of the children of `pid`.
    pub fn children_of(&self, pid: i32) -> &[usize] {
        self.children.get(&pid).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Build from parts (tests and fixtures).
    pub fn from_procs(mut procs: Vec<Proc>, mem: MemInfo) -> Self {
        let children = indices(&mut procs);
        let init_comm = procs.iter().find(|p| p.pid == 1).map(|p| p.comm.clone());
        Snapshot {
            taken_at: SystemTime::now(),
            taken_instant: Instant::now(),
            duration: Duration::ZERO,
            procs,
            children,
            skipped: Skipped::default(),
            mem,
            init_comm,
            clk_tck: 100,
        }
    }
}

#[derive(Debug)]
/// One identity's classification. Kept small: a node has tens of thousands of processes, almost
/// all of them no family's, and each has an entry.
struct Cached {
    /// A hash of the comm the classification was made for (`exec` changes it).
    comm: u64,
    info: Option<Arc<Info>>,
    seen: u64,
}

fn comm_hash(comm: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(comm)
}

/// Errors that fail a whole scan (not one process).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot list {root}: {source}")]
    List {
        root: PathBuf,
        source: std::io::Error,
    },
}

/// Reads /proc into snapshots, keeping the per-identity cache between scans.
#[derive(Debug)]
pub struct Scanner {
    fs: ProcFs,
    clk_tck: u64,
    page: u64,
    cache: HashMap<(i32, u64), Cached>,
    /// Soft RLIMIT_NOFILE of family members.
    limits: HashMap<(i32, u64), Limit>,
    /// Set per scan: FDs at this share of the cached limit have it re-read ([`LIMIT_TTL`]).
    limit_near: f64,
    policy_generation: u64,
    scan_no: u64,
    buf: Vec<u8>,
    /// cmdline reads, with a deadline.
    guarded: Guarded,
    /// Identities whose cmdline read blocked: skipped as `blocked` until their retry is due.
    blocked: HashMap<(i32, u64), BlockedRead>,
    /// The first retry's delay ([`BLOCKED_RETRY_FIRST`]; tests shorten it).
    blocked_retry: Duration,
    /// Set per scan: processes kept without an FD count.
    fds_unreadable: u64,
    /// Read cgroup paths of family members and derive pod UIDs (DaemonSet mode).
    pub pod_attribution: bool,
}

impl Scanner {
    pub fn new(fs: ProcFs) -> Self {
        let (clk_tck, page) = proc::clock_ticks_and_page_size();
        Scanner {
            fs,
            clk_tck,
            page,
            cache: HashMap::new(),
            limits: HashMap::new(),
            limit_near: LIMIT_NEAR,
            policy_generation: 0,
            scan_no: 0,
            buf: Vec::with_capacity(1024),
            guarded: Guarded::new(CMDLINE_DEADLINE, MAX_STUCK_READERS),
            blocked: HashMap::new(),
            blocked_retry: BLOCKED_RETRY_FIRST,
            fds_unreadable: 0,
            pod_attribution: false,
        }
    }

    pub fn fs(&self) -> &ProcFs {
        &self.fs
    }

    /// Forget cached classifications (call when the policy's families change).
    pub fn set_policy_generation(&mut self, generation: u64) {
        if generation != self.policy_generation {
            self.cache.clear();
            self.policy_generation = generation;
        }
    }

    /// Number of identities in the cache (self-test of pruning).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// One full scan.
    pub fn scan(&mut self, policy: &Policy) -> Result<Snapshot, ScanError> {
        let started = Instant::now();
        let taken_at = SystemTime::now();
        self.scan_no += 1;
        let pids = self.fs.pids().map_err(|source| ScanError::List {
            root: self.fs.root().to_path_buf(),
            source,
        })?;
        let uptime = self.fs.uptime_seconds().unwrap_or(0.0);
        let mem = self.fs.meminfo().unwrap_or_default();
        let read_all = policy.needs_exe_or_cmdline_for_all();
        self.limit_near = policy
            .rules
            .iter()
            .filter_map(|r| r.when.fd_ratio_above)
            .fold(LIMIT_NEAR, f64::min);
        let mut procs = Vec::with_capacity(pids.len());
        let mut skipped = Skipped::default();
        self.fds_unreadable = 0;
        for pid in pids {
            match self.read_one(pid, policy, read_all, uptime) {
                Ok(Some(p)) => procs.push(p),
                Ok(None) => {}
                Err(e) => skipped.add(&e),
            }
        }
        let scan_no = self.scan_no;
        self.cache.retain(|_, c| c.seen == scan_no);
        self.limits.retain(|_, l| l.seen == scan_no);
        self.blocked.retain(|_, b| b.seen == scan_no);
        skipped.fds_unreadable = self.fds_unreadable;
        let children = indices(&mut procs);
        let init_comm = procs.iter().find(|p| p.pid == 1).map(|p| p.comm.clone());
        Ok(Snapshot {
            taken_at,
            taken_instant: started,
            duration: started.elapsed(),
            procs,
            children,
            skipped,
            mem,
            init_comm,
            clk_tck: self.clk_tck,
        })
    }

    fn read_one(
        &mut self,
        pid: i32,
        policy: &Policy,
        read_all: bool,
        uptime: f64,
    ) -> Result<Option<Proc>, ReadError> {
        let st = self.fs.stat(pid, &mut self.buf)?;
        // Kernel threads hold no memory or files and never match. (Not "PID 2 and its children":
        // inside a PID namespace PID 2 is an ordinary process.)
        if st.flags & proc::PF_KTHREAD != 0 {
            return Ok(None);
        }
        let uid = self.fs.uid(pid)?;
        let fds = if st.state == 'Z' {
            Some(0)
        } else {
            match self.fs.fd_count(pid) {
                Ok(n) => Some(n),
                Err(ReadError::Denied) => {
                    self.fds_unreadable += 1;
                    None
                }
                Err(e) => return Err(e),
            }
        };
        let age_s = (uptime - st.start_ticks as f64 / self.clk_tck as f64).max(0.0);
        let age = Duration::from_secs_f64(age_s);
        let key = (pid, st.start_ticks);
        let scan_no = self.scan_no;
        if let Some(b) = self.blocked.get_mut(&key) {
            b.seen = scan_no;
            if Instant::now() < b.retry_at {
                return Err(ReadError::Blocked);
            }
            // Due: read it again below.
        }
        // A zombie keeps pid, start time and comm but is no longer a member of anything: it
        // holds no memory, cannot be signalled, and only its parent can make it go.
        if st.state == 'Z' {
            self.cache.remove(&key);
        }
        let comm = comm_hash(&st.comm);
        let cached = match self.cache.get_mut(&key) {
            Some(c) if c.comm == comm => {
                c.seen = scan_no;
                Some(c.info.clone())
            }
            _ => None,
        };
        let info = match cached {
            Some(info) => info,
            None => {
                if st.state == 'Z' {
                    None
                } else {
                    let info = match self.classify(pid, &st.comm, uid, policy, read_all) {
                        Ok(info) => {
                            if self.blocked.remove(&key).is_some() {
                                tracing::info!(pid, comm = ?st.comm, "its command line answered again; judging it");
                            }
                            info
                        }
                        Err(ReadError::Blocked) => {
                            let backoff = match self.blocked.get(&key) {
                                Some(b) => (b.backoff * 2).min(BLOCKED_RETRY_MAX),
                                None => self.blocked_retry,
                            };
                            tracing::warn!(pid, comm = ?st.comm, retry_in = ?backoff, "reading its command line blocked; skipping this process until the retry");
                            self.blocked.insert(
                                key,
                                BlockedRead {
                                    seen: scan_no,
                                    retry_at: Instant::now() + backoff,
                                    backoff,
                                },
                            );
                            return Err(ReadError::Blocked);
                        }
                        Err(e) => return Err(e),
                    };
                    if age >= CACHE_MIN_AGE {
                        self.cache.insert(
                            key,
                            Cached {
                                comm,
                                info: info.clone(),
                                seen: scan_no,
                            },
                        );
                    }
                    info
                }
            }
        };
        let fd_soft_limit = if info.is_some() {
            self.limit(pid, key, comm, age, fds)
        } else {
            None
        };
        Ok(Some(Proc {
            pid,
            start_ticks: st.start_ticks,
            ppid: st.ppid,
            pgid: st.pgid,
            sid: st.sid,
            state: st.state,
            comm: st.comm,
            uid,
            rss_bytes: st.rss_pages * self.page,
            fds,
            threads: st.threads,
            age,
            info,
            fd_soft_limit,
        }))
    }

    /// The soft RLIMIT_NOFILE of a family process: the cached value unless it must be re-read
    /// (see [`LIMIT_TTL`]).
    fn limit(
        &mut self,
        pid: i32,
        key: (i32, u64),
        comm: u64,
        age: Duration,
        fds: Option<u64>,
    ) -> Option<u64> {
        let now = Instant::now();
        let scan_no = self.scan_no;
        let near = self.limit_near;
        if let Some(l) = self.limits.get_mut(&key) {
            l.seen = scan_no;
            // The ratio a rule judges (a limit of 0 is read again too).
            let near_limit = (fds.is_some() && l.soft == Some(0))
                || fd_ratio(fds, l.soft).is_some_and(|x| x >= near);
            let stale = l.comm != comm
                || age < CACHE_MIN_AGE
                || near_limit
                || now.duration_since(l.read_at) >= LIMIT_TTL;
            if !stale {
                return l.soft;
            }
        }
        let soft = self.fs.nofile(pid).ok().and_then(|l| l.soft);
        self.limits.insert(
            key,
            Limit {
                read_at: now,
                soft,
                comm,
                seen: scan_no,
            },
        );
        soft
    }

    /// Which family, if any, a process belongs to. Reads cmdline/exe only when a matcher needs
    /// them (or when any family matcher cannot be decided from comm alone). `Err(Blocked)` when
    /// the command line could not be read within its deadline.
    fn classify(
        &mut self,
        pid: i32,
        comm: &str,
        uid: u32,
        policy: &Policy,
        read_all: bool,
    ) -> Result<Option<Arc<Info>>, ReadError> {
        let candidate = read_all
            || policy
                .families
                .iter()
                .flat_map(|f| f.matchers.iter())
                .any(|m| m.comm.as_ref().is_some_and(|c| c.is_match(comm)));
        if !candidate {
            return Ok(None);
        }
        let args = match self
            .guarded
            .read(self.fs.pid_path(pid, "cmdline"), proc::READ_MAX)
        {
            Ok(b) => proc::parse_cmdline(&b),
            Err(ReadError::Blocked) => return Err(ReadError::Blocked),
            Err(_) => Vec::new(),
        };
        let full = args.join(" ");
        let needs_exe = policy
            .families
            .iter()
            .flat_map(|f| f.matchers.iter())
            .any(|m| m.exe.is_some());
        let exe = if needs_exe {
            self.fs.exe(pid).ok()
        } else {
            None
        };
        let Some((fi, fam)) = policy.families.iter().enumerate().find(|(_, f)| {
            f.matchers
                .iter()
                .any(|m| m.matches(comm, exe.as_deref(), Some(&full), uid))
        }) else {
            return Ok(None);
        };
        let cmdline = truncate(full, CMDLINE_DISPLAY_MAX);
        let mut role = None;
        let mut user_data_dir = None;
        for a in &args {
            if let Some(v) = a.strip_prefix("--type=") {
                role = Some(v.to_string());
            } else if let Some(v) = a.strip_prefix("--user-data-dir=") {
                if !v.is_empty() {
                    user_data_dir = Some(PathBuf::from(v));
                }
            }
        }
        match fam.kind {
            FamilyKind::Crashpad => role = Some(ROLE_CRASHPAD.to_string()),
            FamilyKind::Browser if role.is_none() => role = Some(ROLE_BROWSER.to_string()),
            FamilyKind::Driver => role = Some(ROLE_DRIVER.to_string()),
            _ => {}
        }
        let cgroup = self
            .fs
            .cgroup(pid)
            .ok()
            .and_then(|t| proc::parse_cgroup_v2_path(&t).or(Some(t)));
        let pod_uid = if self.pod_attribution {
            cgroup.as_deref().and_then(proc::pod_uid_from_cgroup)
        } else {
            None
        };
        Ok(Some(Arc::new(Info {
            family: fi,
            family_name: fam.name.clone(),
            kind: fam.kind,
            role,
            user_data_dir,
            cmdline,
            exe,
            cgroup,
            pod_uid,
        })))
    }
}

/// Sort by PID (a `/proc` listing already is; a fixture directory need not be) and map each
/// parent PID to its children's indices: one pass, so every later question about parents and
/// children is a lookup (per-scan work stays linear in the number of processes).
fn indices(procs: &mut [Proc]) -> HashMap<i32, Vec<usize>> {
    if !procs.is_sorted_by_key(|p| p.pid) {
        procs.sort_by_key(|p| p.pid);
    }
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        if p.pid != p.ppid {
            children.entry(p.ppid).or_default().push(i);
        }
    }
    children
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests;
