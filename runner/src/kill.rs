//! Signalling through pidfds: the one place the runner sends signals.
//!
//! Every signal goes to a pidfd opened after checking that the process still has the start time
//! it had when it was found, so a reused pid is never signalled. Nothing here calls `kill(2)`
//! with a pid or a process group.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::proc::{Procfs, Stat};

/// Open a pidfd for `target` if it is still the same process (pid and start time). `None` when
/// it is gone, or its pid now belongs to someone else.
pub fn open_checked(procfs: &Procfs, target: &Stat) -> Option<OwnedFd> {
    let pid = Pid::from_raw(target.pid)?;
    let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
    // Checked after opening: if the start time still matches now, the pidfd refers to it.
    match procfs.stat(target.pid) {
        Ok(Some(now)) if now.start_time == target.start_time => Some(fd),
        _ => None,
    }
}

/// Send `sig` through a pidfd; a process that already exited is not an error.
pub fn send(fd: &OwnedFd, sig: Signal) -> bool {
    pidfd_send_signal(fd.as_fd(), sig).is_ok()
}

/// Wait until the process behind `fd` has exited (the pidfd becomes readable), or `timeout`.
/// Returns whether it exited. A zombie counts as exited.
pub async fn wait_exit(fd: &OwnedFd, timeout: Duration) -> bool {
    let Ok(dup) = fd.try_clone() else {
        return false;
    };
    let Ok(afd) = crate::sys::async_pidfd(dup) else {
        return false;
    };
    tokio::time::timeout(timeout, afd.readable()).await.is_ok()
}

/// SIGTERM every target, wait up to `grace` for all of them, SIGKILL those left and wait up to
/// `kill_wait`. Returns the targets that still had not exited (a leak the caller reports).
pub async fn terminate(
    procfs: &Procfs,
    targets: &[Stat],
    grace: Duration,
    kill_wait: Duration,
) -> Vec<Stat> {
    let opened: Vec<(Stat, OwnedFd)> = targets
        .iter()
        .filter_map(|t| open_checked(procfs, t).map(|fd| (t.clone(), fd)))
        .collect();
    if opened.is_empty() {
        return Vec::new();
    }
    for (_, fd) in &opened {
        send(fd, Signal::TERM);
    }
    let mut left = wait_all(opened, grace).await;
    if left.is_empty() {
        return Vec::new();
    }
    for (stat, fd) in &left {
        tracing::debug!(pid = stat.pid, comm = %stat.comm, "SIGKILL after grace");
        send(fd, Signal::KILL);
    }
    left = wait_all(left, kill_wait).await;
    left.into_iter().map(|(s, _)| s).collect()
}

async fn wait_all(procs: Vec<(Stat, OwnedFd)>, timeout: Duration) -> Vec<(Stat, OwnedFd)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut left = Vec::new();
    for (stat, fd) in procs {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !wait_exit(&fd, remaining).await {
            left.push((stat, fd));
        }
    }
    left
}
