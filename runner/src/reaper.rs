//! Child subreaper and the reaper of inherited zombies.
//!
//! The runner marks itself `PR_SET_CHILD_SUBREAPER`, so a browser's descendants that lose their
//! parent (zygotes, utility processes, the crashpad handlers that double-fork) are reparented to
//! the runner instead of PID 1 and cannot escape while it lives. The price: their zombies are
//! the runner's to reap. This reaper waits only for specific pids — zombie children found in
//! `/proc/self/task/*/children` that the runner does not wait for itself (the browsers, waited
//! for through pidfds; see `launcher.rs`) — never `waitpid(-1)`, which would steal exit statuses
//! from any other owner of a child.

use std::time::Duration;

use rustix::process::{Pid, WaitId, WaitIdOptions};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::launcher::Owned;
use crate::proc::Procfs;

/// Belt and braces: SIGCHLD is the trigger, the interval catches anything coalesced.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// One pass: reap every zombie child that is not owned. Returns how many were reaped.
pub fn reap_pass(procfs: &Procfs, owned: &Owned) -> usize {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let set = owned.lock();
    let Ok(children) = procfs.children(me) else {
        return 0;
    };
    let mut reaped = 0;
    for pid in children {
        if set.contains(&pid) {
            continue;
        }
        let zombie = matches!(procfs.stat(pid), Ok(Some(s)) if s.state == 'Z');
        if !zombie {
            continue;
        }
        let Some(p) = Pid::from_raw(pid) else {
            continue;
        };
        if let Ok(Some(_)) = rustix::process::waitid(
            WaitId::Pid(p),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            reaped += 1;
        }
    }
    reaped
}

/// Runs until `stop` is cancelled, then makes one last pass.
pub async fn run(procfs: Procfs, owned: Owned, stop: CancellationToken) {
    let mut sigchld = signal(SignalKind::child()).ok();
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = async {
                match sigchld.as_mut() {
                    Some(s) => { s.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        let n = reap_pass(&procfs, &owned);
        if n > 0 {
            tracing::debug!(reaped = n, "reaped inherited zombies");
        }
    }
    reap_pass(&procfs, &owned);
}
