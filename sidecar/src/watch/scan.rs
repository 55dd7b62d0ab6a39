//! Scans on one long-lived thread, each within the scan deadline.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Config, Daemon};
use crate::analysis::{Analysis, Tracker};
use crate::policy::Policy;
use crate::proc::ProcFs;
use crate::snapshot::{ScanError, Scanner};

/// What scans between them remember: the scanner's cache and the analysis history.
pub(super) struct Core {
    scanner: Scanner,
    tracker: Tracker,
}

impl Core {
    pub(super) fn new(cfg: &Config) -> Self {
        let mut scanner = Scanner::new(ProcFs::new(&cfg.proc_root));
        scanner.pod_attribution = cfg.pod_attribution;
        Core {
            scanner,
            tracker: Tracker::new().with_proc_root(&cfg.proc_root),
        }
    }
}

/// One scan's work, handed to the scan thread.
pub(super) type ScanJob = (
    Box<Core>,
    Arc<Policy>,
    oneshot::Sender<(Box<Core>, Result<Analysis, ScanError>)>,
);

/// The long-lived thread scans run on (one thread, so one allocator arena: a fresh thread per
/// scan scatters each snapshot over new arenas and the resident size grows with them).
fn scan_worker() -> std::io::Result<std::sync::mpsc::Sender<ScanJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<ScanJob>();
    std::thread::Builder::new()
        .name("lw-scan".into())
        .spawn(move || {
            while let Ok((mut core, pol, reply)) = rx.recv() {
                let r = core.scanner.scan(&pol).map(|snap| {
                    let snap = Arc::new(snap);
                    core.tracker.analyze(snap, &pol)
                });
                // The loop gave up on this scan (deadline): the worker is abandoned with it.
                if reply.send((core, r)).is_err() {
                    break;
                }
            }
        })?;
    Ok(tx)
}

impl Daemon {
    /// One scan on its own thread, within the scan deadline.
    pub(super) async fn scan(&mut self) -> Option<Arc<Analysis>> {
        self.last_scan = Some(Instant::now());
        self.owner_rescan = None;
        let mut core = match self.core.take() {
            Some(c) => c,
            None => Box::new(Core::new(&self.cfg)),
        };
        core.scanner.set_policy_generation(self.generation);
        let (tx, rx) = oneshot::channel();
        if self.worker.is_none() {
            match scan_worker() {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the scan thread");
                    self.metrics.scan_failures.inc();
                    self.core = Some(core);
                    return None;
                }
            }
        }
        let sent = self
            .worker
            .as_ref()
            .map(|w| w.send((core, self.policy.clone(), tx)));
        if let Some(Err(std::sync::mpsc::SendError((core, _, _)))) = sent {
            tracing::error!("the scan thread is gone; starting another");
            self.worker = None;
            self.core = Some(core);
            self.metrics.scan_failures.inc();
            return None;
        }
        let deadline = self.cfg.scan_deadline();
        let (core, result) = match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(x)) => x,
            Ok(Err(_)) => {
                self.worker = None;
                tracing::error!("the scan thread ended without a result");
                self.metrics.scan_failures.inc();
                return None;
            }
            Err(_) => {
                // Left behind with its thread: it finishes (or not) on its own; the next scan
                // starts afresh on a new thread (without history: ownership is judged from the
                // snapshot alone).
                self.worker = None;
                tracing::error!(?deadline, "a scan overran its deadline; starting afresh");
                self.metrics.scan_failures.inc();
                self.metrics
                    .daemon
                    .deadline_exceeded
                    .with_label_values(&["scan"])
                    .inc();
                return None;
            }
        };
        self.core = Some(core);
        let a = match result {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!(error = %e, "scan failed");
                self.metrics.scan_failures.inc();
                return None;
            }
        };
        self.metrics.observe(&a);
        self.state.scan_completed();
        if !self.ready_sent {
            self.ready_sent = true;
            if let Some(n) = &self.notifier {
                n.send("READY=1\nSTATUS=scanning");
            }
        }
        tracing::debug!(elapsed = ?a.snapshot.duration, procs = a.snapshot.procs.len(), "scan done");
        Some(a)
    }
}
