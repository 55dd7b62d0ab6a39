//! The kill engine: the one place in leakwarden that signals a process.
//!
//! A PID alone names nothing: between the scan that judged a process and the signal, the process
//! can exit and its PID be given to another. So every kill goes:
//!
//! 1. refuse PID ≤ 1, the sidecar itself, and PIDs the caller protects;
//! 2. `pidfd_open(pid)` — from here on the fd names one process, whatever happens to the PID;
//! 3. re-read `/proc/PID/stat` and compare the start time with the judged one: if the process the
//!    pidfd names is not the judged process, drop it (`IdentityChanged`). The pidfd was opened
//!    before this read, so a reuse after the read cannot fool us;
//! 4. `pidfd_send_signal(SIGTERM)`, wait for exit on the pidfd (it becomes readable when the
//!    process exits) until `grace` runs out;
//! 5. `pidfd_send_signal(SIGKILL)` to what is left, then `process_mrelease(pidfd)` so a large
//!    victim's memory is freed at once (as earlyoom does), and wait again with a deadline.
//!
//! Signals are never sent by PID or process group (`kill(2)`): no `kill(0, …)`, no `kill(-1, …)`.
//! Every target's result is an audit event (target `leakwarden::audit`) and an [`Outcome`] the
//! caller counts in `leakwarden_kills_total{rule,outcome}`.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

/// How long to wait for a process to go after SIGKILL before calling the kill failed. A SIGKILLed
/// process normally exits in milliseconds; one stuck in uninterruptible sleep (D state) may not.
pub const SIGKILL_WAIT: Duration = Duration::from_secs(5);

/// A process as judged by a scan: its PID and its start time (clock ticks after boot, field 22 of
/// `/proc/PID/stat`). Together they name one process for the life of the system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub pid: i32,
    pub start_ticks: u64,
    /// For the audit log only.
    pub comm: String,
    /// For the audit log only.
    pub family: Option<String>,
}

/// What happened to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited after SIGTERM within the grace period.
    Terminated,
    /// Needed SIGKILL.
    Killed,
    /// Already gone when we came to it (nothing was signalled).
    Gone,
    /// The PID now names another process (different start time); nothing was signalled.
    IdentityChanged,
    /// PID 1, the sidecar itself, or protected by the caller; nothing was signalled.
    Protected,
    /// Would have been signalled, but the policy is in dry-run mode.
    DryRun,
    /// Not attempted: the kill rate limit was reached.
    RateLimited,
    /// Signalling failed or the process survived SIGKILL; the message says why.
    Failed(String),
}

impl Outcome {
    /// The `outcome` label value of `leakwarden_kills_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Terminated => "terminated",
            Outcome::Killed => "killed",
            Outcome::Gone | Outcome::IdentityChanged => "skipped",
            Outcome::Protected => "protected",
            Outcome::DryRun => "dry_run",
            Outcome::RateLimited => "rate_limited",
            Outcome::Failed(_) => "failed",
        }
    }

    /// True when the target no longer runs because of us.
    pub fn ended(&self) -> bool {
        matches!(self, Outcome::Terminated | Outcome::Killed)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Gone => f.write_str("skipped (already gone)"),
            Outcome::IdentityChanged => f.write_str("skipped (PID reused by another process)"),
            Outcome::Failed(why) => write!(f, "failed ({why})"),
            other => f.write_str(other.label()),
        }
    }
}

/// Why the kill is happening, for the audit log.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub rule: &'a str,
    pub action: &'a str,
    pub reason: &'a str,
}

/// The engine. Cheap to construct; holds no open descriptors between calls.
#[derive(Debug, Clone)]
pub struct Engine {
    proc_root: PathBuf,
    self_pid: i32,
    protected: HashSet<i32>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            self_pid: std::process::id() as i32,
            protected: HashSet::new(),
        }
    }

    /// Never signal these PIDs (besides PID ≤ 1 and the sidecar itself, always refused).
    pub fn protect_pids(mut self, pids: impl IntoIterator<Item = i32>) -> Self {
        self.protected.extend(pids);
        self
    }

    fn is_protected(&self, pid: i32) -> bool {
        pid <= 1 || pid == self.self_pid || self.protected.contains(&pid)
    }

    /// End every target: SIGTERM all, wait up to `grace`, SIGKILL what is left. With a zero
    /// grace, SIGKILL at once. Returns one outcome per target, in order, and logs each as an
    /// audit event.
    pub async fn kill(
        &self,
        ctx: &Context<'_>,
        targets: &[Target],
        grace: Duration,
    ) -> Vec<Outcome> {
        let started = Instant::now();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; targets.len()];
        let mut live: Vec<(usize, AsyncFd<OwnedFd>)> = Vec::new();

        for (i, t) in targets.iter().enumerate() {
            match self.open_verified(t) {
                Ok(fd) => live.push((i, fd)),
                Err(o) => outcomes[i] = Some(o),
            }
        }

        let first = if grace.is_zero() {
            Signal::KILL
        } else {
            Signal::TERM
        };
        signal_all(&mut live, &mut outcomes, first);
        if first == Signal::TERM {
            let deadline = tokio::time::Instant::now() + grace;
            wait_exits(&mut live, &mut outcomes, deadline, Outcome::Terminated).await;
            signal_all(&mut live, &mut outcomes, Signal::KILL);
        }
        for (_, fd) in &live {
            sys::process_mrelease(fd.get_ref());
        }
        let deadline = tokio::time::Instant::now() + SIGKILL_WAIT;
        wait_exits(&mut live, &mut outcomes, deadline, Outcome::Killed).await;
        for (i, _) in live.drain(..) {
            outcomes[i] = Some(Outcome::Failed(format!(
                "still running {}s after SIGKILL",
                SIGKILL_WAIT.as_secs()
            )));
        }

        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Failed("no outcome recorded".into())))
            .collect();
        for (t, o) in targets.iter().zip(&outcomes) {
            audit(ctx, t, o, started.elapsed());
        }
        outcomes
    }

    /// Record, without signalling, what would have been done (dry-run, rate limit, protection).
    pub fn record(&self, ctx: &Context<'_>, targets: &[Target], outcome: Outcome) -> Vec<Outcome> {
        targets
            .iter()
            .map(|t| {
                let o = if self.is_protected(t.pid) {
                    Outcome::Protected
                } else {
                    outcome.clone()
                };
                audit(ctx, t, &o, Duration::ZERO);
                o
            })
            .collect()
    }

    /// Open a pidfd on the target and check that it names the judged process.
    fn open_verified(&self, t: &Target) -> Result<AsyncFd<OwnedFd>, Outcome> {
        if self.is_protected(t.pid) {
            return Err(Outcome::Protected);
        }
        let pid = Pid::from_raw(t.pid).ok_or(Outcome::Protected)?;
        let fd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => return Err(Outcome::Gone),
            Err(e) => return Err(Outcome::Failed(format!("pidfd_open: {e}"))),
        };
        // Read the start time *after* opening the pidfd: if it matches now, the pidfd names the
        // judged process (a PID is only reused once its old owner has been reaped).
        match read_start_ticks(&self.proc_root, t.pid) {
            Ok(Some(ticks)) if ticks == t.start_ticks => {}
            Ok(Some(_)) => return Err(Outcome::IdentityChanged),
            Ok(None) => return Err(Outcome::Gone),
            Err(e) => {
                return Err(Outcome::Failed(format!(
                    "re-reading /proc/{}/stat: {e}",
                    t.pid
                )))
            }
        }
        async_pidfd(fd).map_err(|e| Outcome::Failed(format!("registering pidfd: {e}")))
    }
}

fn signal_all(
    live: &mut Vec<(usize, AsyncFd<OwnedFd>)>,
    outcomes: &mut [Option<Outcome>],
    sig: Signal,
) {
    live.retain(|(i, fd)| match pidfd_send_signal(fd.get_ref(), sig) {
        Ok(()) => true,
        // Exited between our checks and the signal: it is gone, and not by our hand.
        Err(Errno::SRCH) => {
            outcomes[*i] = Some(if sig == Signal::KILL {
                Outcome::Terminated
            } else {
                Outcome::Gone
            });
            false
        }
        Err(e) => {
            outcomes[*i] = Some(Outcome::Failed(format!("pidfd_send_signal: {e}")));
            false
        }
    });
}

/// Wait until each pidfd is readable (its process exited) or the deadline passes; those that
/// exited get `exited_as` and leave `live`.
async fn wait_exits(
    live: &mut Vec<(usize, AsyncFd<OwnedFd>)>,
    outcomes: &mut [Option<Outcome>],
    deadline: tokio::time::Instant,
    exited_as: Outcome,
) {
    let mut pending = std::mem::take(live);
    let results = futures::future::join_all(pending.iter().map(|(_, fd)| async move {
        tokio::time::timeout_at(deadline, fd.readable())
            .await
            .is_ok()
    }))
    .await;
    for ((i, fd), exited) in pending.drain(..).zip(results) {
        if exited {
            outcomes[i] = Some(exited_as.clone());
        } else {
            live.push((i, fd));
        }
    }
}

fn audit(ctx: &Context<'_>, t: &Target, o: &Outcome, elapsed: Duration) {
    let detail = match o {
        Outcome::Failed(why) => why.as_str(),
        _ => "",
    };
    tracing::info!(
        target: "leakwarden::audit",
        event = "kill",
        rule = ctx.rule,
        action = ctx.action,
        outcome = o.label(),
        detail,
        pid = t.pid,
        start_ticks = t.start_ticks,
        comm = ?t.comm,
        family = t.family.as_deref().unwrap_or(""),
        reason = ctx.reason,
        elapsed_ms = elapsed.as_millis() as u64,
        "{} pid {} ({:?}): {}",
        ctx.action,
        t.pid,
        t.comm,
        o
    );
}

/// Start time (field 22, clock ticks after boot) of `/proc/PID/stat`; `None` if the process is
/// gone. comm (field 2) may hold spaces and parentheses: fields are counted after the last `)`.
pub fn read_start_ticks(proc_root: &Path, pid: i32) -> std::io::Result<Option<u64>> {
    let text = match std::fs::read(proc_root.join(pid.to_string()).join("stat")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_start_ticks(&text)
        .map(Some)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed stat"))
}

fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After ")": state is field 3, so start time (field 22) is the 20th token.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Register a pidfd with tokio's reactor: it becomes readable when the process exits. Shared
/// with the watch loop, which holds pidfds on tree owners between scans.
pub fn async_pidfd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    sys::register(fd)
}

/// The unsafe calls, each with its reason.
#[allow(unsafe_code)]
mod sys {
    use std::os::fd::{AsRawFd, OwnedFd};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
        // names the same pidfd until the AsyncFd is dropped; OwnedFd::as_raw_fd is stable.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
    }

    /// Ask the kernel to reap a SIGKILLed process's memory now rather than when it finishes
    /// exiting. Best effort: older kernels (< 5.15) answer ENOSYS, and a process already gone
    /// answers ESRCH; neither matters.
    pub fn process_mrelease(pidfd: &OwnedFd) {
        // SAFETY: process_mrelease takes an fd and a flags word (must be 0); no memory is passed.
        let _ = unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0u32) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    fn spawn(cmd: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn target_of(child: &Child) -> Target {
        let pid = child.id() as i32;
        let start_ticks = read_start_ticks(Path::new("/proc"), pid).unwrap().unwrap();
        Target {
            pid,
            start_ticks,
            comm: "sh".into(),
            family: None,
        }
    }

    fn ctx() -> Context<'static> {
        Context {
            rule: "test",
            action: "terminate",
            reason: "unit test",
        }
    }

    fn exited(child: &mut Child) -> bool {
        // Give the reaper a moment: the pidfd is readable at exit, before we reap.
        for _ in 0..50 {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn start_time_is_parsed_after_the_last_paren() {
        let stat = b"42 (a) (b) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        let stat = b"42 (new\nline) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 55 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(55));
        assert_eq!(parse_start_ticks(b"42 (truncated"), None);
        assert_eq!(parse_start_ticks(b"42 (x) S 1 2"), None);
    }

    #[tokio::test]
    async fn sigterm_ends_a_cooperative_process() {
        let mut child = spawn("exec sleep 60");
        let t = target_of(&child);
        let out = Engine::new()
            .kill(&ctx(), &[t], Duration::from_secs(5))
            .await;
        assert_eq!(out, vec![Outcome::Terminated]);
        assert!(exited(&mut child));
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_sigkilled_after_grace() {
        let mut child = spawn("trap '' TERM; while :; do sleep 0.05; done");
        std::thread::sleep(Duration::from_millis(100)); // let the trap be installed
        let t = target_of(&child);
        let begun = Instant::now();
        let out = Engine::new()
            .kill(&ctx(), &[t], Duration::from_millis(300))
            .await;
        assert_eq!(out, vec![Outcome::Killed]);
        assert!(begun.elapsed() >= Duration::from_millis(300));
        assert!(exited(&mut child));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_different_start_time_means_another_process_and_nothing_is_signalled() {
        let mut child = spawn("exec sleep 60");
        let mut t = target_of(&child);
        // The judged process had this PID but another start time: the PID was reused.
        t.start_ticks += 1;
        let out = Engine::new().kill(&ctx(), &[t], Duration::ZERO).await;
        assert_eq!(out, vec![Outcome::IdentityChanged]);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the live process must survive"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn pid_1_self_and_protected_pids_are_never_signalled() {
        let mut child = spawn("exec sleep 60");
        let t = target_of(&child);
        let me = Target {
            pid: std::process::id() as i32,
            start_ticks: read_start_ticks(Path::new("/proc"), std::process::id() as i32)
                .unwrap()
                .unwrap(),
            comm: "self".into(),
            family: None,
        };
        let init = Target {
            pid: 1,
            start_ticks: 0,
            comm: "init".into(),
            family: None,
        };
        let zero = Target {
            pid: 0,
            start_ticks: 0,
            comm: "group".into(),
            family: None,
        };
        let neg = Target {
            pid: -5,
            start_ticks: 0,
            comm: "group".into(),
            family: None,
        };
        let engine = Engine::new().protect_pids([t.pid]);
        let out = engine
            .kill(&ctx(), &[init, me, zero, neg, t], Duration::ZERO)
            .await;
        assert!(out.iter().all(|o| *o == Outcome::Protected), "{out:?}");
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_process_already_gone_is_skipped() {
        let mut child = spawn("exit 0");
        let t = target_of(&child);
        child.wait().unwrap();
        let out = Engine::new().kill(&ctx(), &[t], Duration::ZERO).await;
        assert_eq!(out, vec![Outcome::Gone]);
    }

    #[tokio::test]
    async fn many_targets_are_ended_together_within_one_grace() {
        let mut kids: Vec<Child> = (0..8).map(|_| spawn("exec sleep 60")).collect();
        let targets: Vec<Target> = kids.iter().map(target_of).collect();
        let begun = Instant::now();
        let out = Engine::new()
            .kill(&ctx(), &targets, Duration::from_secs(5))
            .await;
        assert!(out.iter().all(|o| *o == Outcome::Terminated), "{out:?}");
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "waits run in parallel"
        );
        for k in &mut kids {
            assert!(exited(k));
        }
    }

    #[test]
    fn record_does_not_signal_and_labels_outcomes() {
        let mut child = spawn("exec sleep 60");
        let t = target_of(&child);
        let out = Engine::new().record(&ctx(), &[t], Outcome::DryRun);
        assert_eq!(out[0].label(), "dry_run");
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
