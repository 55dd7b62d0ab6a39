//! Tree owners watched through pidfds (an exit triggers a rescan at once, coalesced), and zombie
//! reaping as PID 1 or a subreaper.

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{Daemon, OWNER_RESCAN_GAP};
use crate::analysis::Analysis;
use crate::metrics::Metrics;
use crate::proc::ProcFs;

/// The pidfds held on tree owners, and what could not be watched.
pub(super) struct Owners {
    pub(super) tx: mpsc::Sender<(i32, u64)>,
    pub(super) rx: mpsc::Receiver<(i32, u64)>,
    pub(super) watchers: HashMap<(i32, u64), AbortHandle>,
    pub(super) tasks: JoinSet<()>,
    /// At most this many pidfds (a share of RLIMIT_NOFILE).
    pub(super) cap: usize,
}

impl Daemon {
    /// A watched owner exited: rescan now, or — if the last scan was just now — once the gap
    /// has passed, however many more exit meanwhile.
    pub(super) fn owner_exited(&mut self, id: (i32, u64)) -> bool {
        tracing::debug!(pid = id.0, "a tree's owner exited");
        self.owners.watchers.remove(&id);
        while let Ok(id) = self.owners.rx.try_recv() {
            self.owners.watchers.remove(&id);
        }
        match self.last_scan.map(|t| t.elapsed()) {
            Some(since) if since < OWNER_RESCAN_GAP => {
                let due = tokio::time::Instant::now() + (OWNER_RESCAN_GAP - since);
                self.owner_rescan = Some(self.owner_rescan.map_or(due, |d| d.min(due)));
                false
            }
            _ => true,
        }
    }

    /// Hold a pidfd on every owner of a tree, up to the budget; count the rest.
    pub(super) fn watch_owners(&mut self, a: &Analysis) {
        let want: HashSet<(i32, u64)> = a.owners.iter().copied().collect();
        self.owners.watchers.retain(|id, h| {
            let keep = want.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        let mut unwatched = 0i64;
        for id in want {
            if self.owners.watchers.contains_key(&id) {
                continue;
            }
            if self.owners.watchers.len() >= self.owners.cap {
                unwatched += 1;
                continue;
            }
            if let Some(h) = watch_owner(
                &self.cfg.proc_root,
                id,
                self.owners.tx.clone(),
                &mut self.owners.tasks,
            ) {
                self.owners.watchers.insert(id, h);
            }
        }
        let d = &self.metrics.daemon;
        d.owners_watched.set(self.owners.watchers.len() as i64);
        d.owners_unwatched.set(unwatched);
    }
}

/// Open a pidfd on an owner and spawn a task that reports its exit. `None` if it is already
/// gone or is not the process we judged (PID reused).
fn watch_owner(
    proc_root: &std::path::Path,
    id: (i32, u64),
    tx: mpsc::Sender<(i32, u64)>,
    set: &mut JoinSet<()>,
) -> Option<AbortHandle> {
    let fs = ProcFs::new(proc_root);
    let fd = leakwarden_core::pidfd::open_checked(
        &fs,
        leakwarden_core::pidfd::Identity {
            pid: id.0,
            start_ticks: id.1,
        },
    )
    .ok()?;
    let afd = crate::kill::async_pidfd(fd).ok()?;
    Some(set.spawn(async move {
        if afd.readable().await.is_ok() {
            let _ = tx.send(id).await;
        }
    }))
}

/// Reap every exited child (we are PID 1 or a subreaper: orphans' zombies are ours). The sidecar
/// starts no children of its own, so waiting for any child races nobody.
pub(super) fn reap_zombies(metrics: &Metrics) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    while let Ok(Some(_)) = waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
        metrics.zombies_reaped.inc();
    }
}
