//! Signalling: the one place the runner sends signals, through the shared pidfd engine
//! ([`leakwarden_core::pidfd`], [`leakwarden_core::kill`]).
//!
//! Every signal goes to a pidfd opened before checking that the process still has the start time
//! it had when it was found, so a reused pid is never signalled. Nothing here calls `kill(2)`
//! with a pid or a process group.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use leakwarden_core::kill::{Engine, NoGuard};
use leakwarden_core::pidfd::{self, Identity};
use rustix::process::Signal;

use crate::proc::{Procfs, Stat};

fn id(s: &Stat) -> Identity {
    Identity {
        pid: s.pid,
        start_ticks: s.start_ticks,
    }
}

/// Open a pidfd for `target` if it is still the same process (pid and start time). `None` when
/// it is gone, or its pid now belongs to someone else.
pub fn open_checked(procfs: &Procfs, target: &Stat) -> Option<OwnedFd> {
    pidfd::open_checked(procfs.core(), id(target)).ok()
}

/// Send `sig` through a pidfd; a process that already exited is not an error.
pub fn send(fd: &OwnedFd, sig: Signal) -> bool {
    pidfd::send(fd, sig).is_ok()
}

/// Wait until the process behind `fd` has exited (the pidfd becomes readable), or `timeout`.
/// Returns whether it exited. A zombie counts as exited.
pub async fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    pidfd::wait_exit(fd, timeout).await
}

/// SIGTERM every target, wait up to `grace` for all of them, SIGKILL those left and wait up to
/// `kill_wait`. Returns the targets that still had not exited (a leak the caller reports).
pub async fn terminate(
    procfs: &Procfs,
    targets: &[Stat],
    grace: Duration,
    kill_wait: Duration,
) -> Vec<Stat> {
    if targets.is_empty() {
        return Vec::new();
    }
    let ids: Vec<Identity> = targets.iter().map(id).collect();
    let outcomes = Engine::new(procfs.core().clone())
        .terminate(&ids, grace, kill_wait, Arc::new(NoGuard))
        .await;
    targets
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| !o.not_running())
        .map(|(t, o)| {
            tracing::debug!(pid = t.pid, comm = %t.comm, outcome = %o, "not ended");
            t.clone()
        })
        .collect()
}
