//! The terminate-then-kill engine both programs use — the one way either of them ends a process:
//!
//! 1. refuse PID ≤ 1 and the calling process itself;
//! 2. `pidfd_open(pid)`, then re-read the start time: a PID that now names another process is
//!    skipped ([`Outcome::IdentityChanged`]), one already gone too ([`Outcome::Gone`]);
//! 3. ask the caller's [`Guard`] with fresh facts read *now* (the protect list of a policy reads
//!    the full command line and the executable at this moment, not what a scan cached);
//! 4. SIGTERM through the pidfd, wait for exit on it until `grace` runs out (with a zero grace,
//!    SIGKILL at once);
//! 5. SIGKILL what is left, `process_mrelease`, wait again up to `kill_wait`.
//!
//! Waits run for all targets at once, so one grace period covers a whole tree.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::Signal;
use tokio::io::unix::AsyncFd;

use crate::pidfd::{self, Identity, OpenError};
use crate::proc::ProcFs;

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
    /// PID ≤ 1, ourselves, or refused by the guard; nothing was signalled.
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

    /// True when the target no longer runs (by our hand or its own).
    pub fn not_running(&self) -> bool {
        matches!(
            self,
            Outcome::Terminated | Outcome::Killed | Outcome::Gone | Outcome::IdentityChanged
        )
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

/// The last word before a signal: called with the target's pidfd open and its identity checked,
/// on a blocking thread (it may read `/proc`). `Err(reason)` refuses the signal
/// ([`Outcome::Protected`]); a guard that cannot tell should refuse.
pub trait Guard: Send + Sync {
    fn check(&self, procfs: &ProcFs, id: Identity) -> Result<(), String>;
}

/// Refuses nothing beyond PID ≤ 1 and the caller itself (which the engine always refuses).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGuard;

impl Guard for NoGuard {
    fn check(&self, _: &ProcFs, _: Identity) -> Result<(), String> {
        Ok(())
    }
}

/// The engine. Holds no descriptors between calls.
#[derive(Debug, Clone)]
pub struct Engine {
    procfs: ProcFs,
    self_pid: i32,
}

impl Engine {
    /// An engine reading identities under `procfs`'s root (the same root the targets were judged
    /// under: a PID means nothing in another PID namespace's view).
    pub fn new(procfs: ProcFs) -> Self {
        Engine {
            procfs,
            self_pid: std::process::id() as i32,
        }
    }

    /// Never signal this PID either (a sidecar whose /proc root is another namespace's view
    /// knows itself there under another number).
    pub fn with_self_pid(mut self, pid: i32) -> Self {
        self.self_pid = pid;
        self
    }

    pub fn procfs(&self) -> &ProcFs {
        &self.procfs
    }

    /// End every target: see the module documentation. One outcome per target, in order.
    pub async fn terminate(
        &self,
        targets: &[Identity],
        grace: Duration,
        kill_wait: Duration,
        guard: Arc<dyn Guard>,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; targets.len()];
        let mut live: Vec<(usize, AsyncFd<OwnedFd>)> = Vec::new();
        // Opening reads /proc and asks the guard, which may read more: off the async threads.
        let me = self.clone();
        let ts = targets.to_vec();
        let opened = tokio::task::spawn_blocking(move || {
            ts.iter().map(|t| me.open(*t, &*guard)).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            (0..targets.len())
                .map(|_| Err(Outcome::Failed(format!("opening pidfds: {e}"))))
                .collect()
        });
        for (i, r) in opened.into_iter().enumerate() {
            match r.and_then(|fd| {
                pidfd::async_pidfd(fd)
                    .map_err(|e| Outcome::Failed(format!("registering pidfd: {e}")))
            }) {
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
            let deadline = deadline_after(grace);
            wait_exits(&mut live, &mut outcomes, deadline, Outcome::Terminated).await;
            signal_all(&mut live, &mut outcomes, Signal::KILL);
        }
        for (_, fd) in &live {
            pidfd::mrelease(fd.get_ref());
        }
        let deadline = deadline_after(kill_wait);
        wait_exits(&mut live, &mut outcomes, deadline, Outcome::Killed).await;
        for (i, _) in live.drain(..) {
            outcomes[i] = Some(Outcome::Failed(format!(
                "still running {:.1}s after SIGKILL",
                kill_wait.as_secs_f64()
            )));
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Failed("no outcome recorded".into())))
            .collect()
    }

    fn open(&self, t: Identity, guard: &dyn Guard) -> Result<OwnedFd, Outcome> {
        if t.pid == self.self_pid {
            return Err(Outcome::Protected);
        }
        let fd = match pidfd::open_checked(&self.procfs, t) {
            Ok(fd) => fd,
            Err(OpenError::Refused(_)) => return Err(Outcome::Protected),
            Err(OpenError::Gone) => return Err(Outcome::Gone),
            Err(OpenError::Reused) => return Err(Outcome::IdentityChanged),
            Err(OpenError::Failed(why)) => return Err(Outcome::Failed(why)),
        };
        if let Err(why) = guard.check(&self.procfs, t) {
            tracing::debug!(pid = t.pid, %why, "the guard refused a signal");
            return Err(Outcome::Protected);
        }
        // The guard read /proc after our identity check: if the process exited and its PID was
        // reused meanwhile, the guard judged the newcomer. Check once more; the pidfd still names
        // the judged process, so a mismatch means ours is gone.
        match self.procfs.start_ticks(t.pid) {
            Ok(Some(s)) if s == t.start_ticks => {}
            Ok(_) => return Err(Outcome::Gone),
            Err(e) => return Err(Outcome::Failed(format!("re-reading stat: {e}"))),
        }
        Ok(fd)
    }
}

fn signal_all(
    live: &mut Vec<(usize, AsyncFd<OwnedFd>)>,
    outcomes: &mut [Option<Outcome>],
    sig: Signal,
) {
    live.retain(|(i, fd)| match pidfd::send(fd.get_ref(), sig) {
        Ok(()) => true,
        // Exited between our checks and this signal: gone, and not by our hand — unless this is
        // the SIGKILL after a SIGTERM, which it then obeyed.
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
    let pending = std::mem::take(live);
    let results = futures::future::join_all(pending.iter().map(|(_, fd)| async move {
        tokio::time::timeout_at(deadline, fd.readable())
            .await
            .is_ok()
    }))
    .await;
    for ((i, fd), exited) in pending.into_iter().zip(results) {
        if exited {
            outcomes[i] = Some(exited_as.clone());
        } else {
            live.push((i, fd));
        }
    }
}

/// `now + wait`, saturating: a caller's wait (a policy's grace) must never panic the clock
/// arithmetic. A wait too long to represent is a wait of a century, which is forever here.
fn deadline_after(wait: Duration) -> tokio::time::Instant {
    const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(FOREVER))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::Instant;

    /// A grace nobody can represent (`Duration::MAX`) waits "forever"; `Instant + Duration`
    /// panicked on it.
    #[test]
    fn an_unrepresentable_wait_is_forever_not_a_panic() {
        let far = deadline_after(Duration::MAX);
        let year = Duration::from_secs(365 * 86_400);
        assert!(far > tokio::time::Instant::now() + year);
        let soon = deadline_after(Duration::from_secs(1));
        assert!(soon <= tokio::time::Instant::now() + Duration::from_secs(1));
    }

    fn spawn(cmd: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .process_group(0)
            .spawn()
            .expect("spawn")
    }

    fn id_of(c: &Child) -> Identity {
        let pid = c.id() as i32;
        let start_ticks = ProcFs::default()
            .start_ticks(pid)
            .expect("stat")
            .expect("alive");
        Identity { pid, start_ticks }
    }

    fn exited(child: &mut Child) -> bool {
        for _ in 0..100 {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    const KW: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn sigterm_ends_a_cooperative_process() {
        let mut c = spawn("exec sleep 60");
        let out = Engine::new(ProcFs::default())
            .terminate(&[id_of(&c)], Duration::from_secs(5), KW, Arc::new(NoGuard))
            .await;
        assert_eq!(out, vec![Outcome::Terminated]);
        assert!(exited(&mut c));
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_sigkilled_after_grace() {
        let mut c = spawn("trap '' TERM; while :; do sleep 0.05; done");
        std::thread::sleep(Duration::from_millis(150)); // let the trap be installed
        let begun = Instant::now();
        let out = Engine::new(ProcFs::default())
            .terminate(
                &[id_of(&c)],
                Duration::from_millis(300),
                KW,
                Arc::new(NoGuard),
            )
            .await;
        assert_eq!(out, vec![Outcome::Killed]);
        assert!(begun.elapsed() >= Duration::from_millis(300));
        assert!(exited(&mut c));
    }

    struct Deny;
    impl Guard for Deny {
        fn check(&self, _: &ProcFs, _: Identity) -> Result<(), String> {
            Err("test says no".into())
        }
    }

    #[tokio::test]
    async fn the_guard_the_init_ourselves_and_a_reused_pid_are_never_signalled() {
        let mut c = spawn("exec sleep 60");
        let id = id_of(&c);
        let me = Identity {
            pid: std::process::id() as i32,
            start_ticks: ProcFs::default()
                .start_ticks(std::process::id() as i32)
                .expect("stat")
                .expect("self"),
        };
        let e = Engine::new(ProcFs::default());
        let out = e
            .terminate(
                &[
                    Identity {
                        pid: 1,
                        start_ticks: 0,
                    },
                    Identity {
                        pid: 0,
                        start_ticks: 0,
                    },
                    me,
                    id,
                ],
                Duration::ZERO,
                KW,
                Arc::new(Deny),
            )
            .await;
        assert!(out.iter().all(|o| *o == Outcome::Protected), "{out:?}");
        let reused = Identity {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        let out = e
            .terminate(&[reused], Duration::ZERO, KW, Arc::new(NoGuard))
            .await;
        assert_eq!(out, vec![Outcome::IdentityChanged]);
        assert!(c.try_wait().ok().flatten().is_none(), "it must survive");
        let _ = c.kill();
        let _ = c.wait();
        let out = e
            .terminate(&[id], Duration::ZERO, KW, Arc::new(NoGuard))
            .await;
        assert_eq!(out, vec![Outcome::Gone]);
    }

    #[tokio::test]
    async fn many_targets_are_ended_together_within_one_grace() {
        let mut kids: Vec<Child> = (0..8).map(|_| spawn("exec sleep 60")).collect();
        let ids: Vec<Identity> = kids.iter().map(id_of).collect();
        let begun = Instant::now();
        let out = Engine::new(ProcFs::default())
            .terminate(&ids, Duration::from_secs(5), KW, Arc::new(NoGuard))
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
}
