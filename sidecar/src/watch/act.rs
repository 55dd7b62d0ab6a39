//! Acting on a scan: the policy's verdicts (kills on owned tasks) and stale directories (off the
//! loop, one run at a time, within a deadline).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    Daemon, KILLED_QUEUE_MAX, STALE_DEADLINE, STALE_EVERY_MAX, STALE_EVERY_MIN, STALE_SHOWN,
};
use crate::analysis::Analysis;
use crate::enforce::{self, Enforced};
use crate::policy::{Action, Policy};

/// What one stale-directory run did.
pub(super) struct StaleRun {
    removed: u64,
    failed: u64,
    found: usize,
    dirs: Vec<crate::cleanup::StaleDir>,
}

impl Daemon {
    /// Judge the analysis by the policy: report lines (once per verdict), recorded decisions,
    /// kills on owned tasks.
    pub(super) fn enforce(&mut self, a: &Analysis) {
        let facts = a.facts();
        let verdicts = enforce::evaluate(&self.policy, &facts);
        let dry = self.dry_run();
        let mut seen_reports = HashSet::new();
        for v in verdicts.iter().filter(|v| v.action == Action::Report) {
            let (pid, start) = subject_id(&facts, v);
            let key = (v.rule.clone(), pid, start);
            seen_reports.insert(key.clone());
            if self.reported.insert(key) {
                tracing::warn!(target: "leakwarden::audit", rule = %v.rule, action = "report", pid, reason = %v.reason, "report: {}", v.reason);
            }
        }
        self.reported.retain(|k| seen_reports.contains(k));
        let (plans, done) = self.enforcer.plan(&self.policy, &facts, &verdicts, dry);
        for e in &done {
            for (_, o) in &e.outcomes {
                self.metrics.kill(&e.verdict.rule, o);
            }
            self.board
                .kills(&e.verdict.rule, e.verdict.action.as_str(), &e.outcomes);
        }
        for p in plans {
            self.kills.spawn(p.execute());
        }
        self.orphan_deadline = next_orphan_deadline(&self.policy, &facts)
            .map(|d| tokio::time::Instant::now() + d + Duration::from_millis(20));
    }

    pub(super) fn kill_done(&mut self, done: Result<Enforced, tokio::task::JoinError>) {
        match done {
            Ok(e) => {
                self.enforcer.finished(&e);
                for (_, o) in &e.outcomes {
                    self.metrics.kill(&e.verdict.rule, o);
                }
                self.board
                    .kills(&e.verdict.rule, e.verdict.action.as_str(), &e.outcomes);
                if let Some(p) = e.profile.as_ref().filter(|_| e.tree_gone()) {
                    if self.killed.len() < KILLED_QUEUE_MAX {
                        self.killed.push(p.clone());
                        // Remove it at the next scan rather than waiting for the stale timer.
                        self.last_stale = None;
                    }
                }
                self.render_now.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "a kill task failed"),
        }
    }

    /// Start a stale-directory run off the loop (one at a time), every few intervals or at once
    /// after a kill: killed trees' profiles first, then the stale directories.
    pub(super) fn stale(&mut self, a: &Arc<Analysis>) {
        let every = (self.cfg.interval * 5).clamp(STALE_EVERY_MIN, STALE_EVERY_MAX);
        if self.stale_job.is_some() || self.last_stale.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_stale = Some(Instant::now());
        let act = !self.dry_run() && self.policy.stale_profiles.remove;
        let killed = std::mem::take(&mut self.killed);
        let (policy, a, proc_root) = (self.policy.clone(), a.clone(), self.cfg.proc_root.clone());
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("lw-stale".into())
            .spawn(move || {
                let deadline = Instant::now() + STALE_DEADLINE;
                let (mut removed, mut failed) = (0, 0);
                if act {
                    for p in &killed {
                        let d = p.remove(&policy, &a.snapshot, &proc_root, deadline);
                        audit_dir(&d.path, &d.result);
                        match d.result.as_str() {
                            "removed" => removed += 1,
                            r if r.starts_with("failed") => failed += 1,
                            _ => {}
                        }
                    }
                }
                let mut f = crate::stale::find(&policy, &a.snapshot, &proc_root, false, deadline);
                let found = f.dirs.len();
                if act {
                    let (r, x) = f.remove_all(deadline);
                    removed += r;
                    failed += x;
                    for d in &f.dirs {
                        audit_dir(&d.path, &d.result);
                    }
                }
                let mut dirs = f.dirs;
                dirs.truncate(STALE_SHOWN);
                let _ = tx.send(StaleRun {
                    removed,
                    failed,
                    found,
                    dirs,
                });
            });
        match spawned {
            Ok(_) => self.stale_job = Some(rx),
            Err(e) => tracing::error!(error = %e, "cannot start a stale-directory run"),
        }
    }

    pub(super) fn stale_done(&mut self, r: Option<Result<StaleRun, oneshot::error::RecvError>>) {
        match r {
            Some(Ok(StaleRun {
                removed,
                failed,
                found,
                dirs,
            })) => {
                self.board.stale(dirs);
                self.metrics.stale_dirs.set(found as i64);
                let c = &self.metrics.stale_removed;
                c.with_label_values(&["removed"]).inc_by(removed);
                c.with_label_values(&["failed"]).inc_by(failed);
                self.render_now.notify_one();
            }
            Some(Err(_)) => tracing::error!("a stale-directory run ended without a result"),
            None => {
                // Its deadline passed (see recv_opt): left behind.
                tracing::error!("a stale-directory run overran its deadline; left behind");
                self.metrics
                    .daemon
                    .deadline_exceeded
                    .with_label_values(&["stale_dirs"])
                    .inc();
            }
        }
    }
}

fn audit_dir(path: &std::path::Path, result: &str) {
    if result == "removed" {
        tracing::info!(target: "leakwarden::audit", path = %path.display(), "removed stale profile directory");
    } else {
        tracing::warn!(target: "leakwarden::audit", path = %path.display(), result, "profile directory not removed");
    }
}

/// The result of a stale run, or `None` once its deadline (plus a margin) has passed; pending
/// while no run is under way.
pub(super) async fn recv_opt(
    job: &mut Option<oneshot::Receiver<StaleRun>>,
) -> Option<Result<StaleRun, oneshot::error::RecvError>> {
    match job {
        Some(rx) => tokio::time::timeout(STALE_DEADLINE + Duration::from_secs(10), rx)
            .await
            .ok(),
        None => std::future::pending().await,
    }
}

/// How long until the first orphaned tree or process meets the `orphaned_for` of an acting rule.
fn next_orphan_deadline(policy: &Policy, facts: &enforce::Facts) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    for r in &policy.rules {
        if r.action == Action::Report {
            continue;
        }
        let Some(need) = r.when.orphaned_for.map(|d| d.0) else {
            continue;
        };
        let orphan_times = facts
            .trees
            .iter()
            .filter_map(|t| t.orphaned_for)
            .chain(facts.processes.iter().filter_map(|p| p.orphaned_for));
        for o in orphan_times {
            if let Some(left) = need.checked_sub(o).filter(|d| !d.is_zero()) {
                best = Some(best.map_or(left, |b| b.min(left)));
            }
        }
    }
    best
}

fn subject_id(facts: &enforce::Facts, v: &enforce::Verdict) -> (i32, u64) {
    match v.subject {
        enforce::Subject::Process(i) => facts
            .processes
            .get(i)
            .map(|p| (p.target.pid, p.target.start_ticks))
            .unwrap_or_default(),
        enforce::Subject::Tree(i) => facts
            .trees
            .get(i)
            .and_then(|t| t.members.first())
            .map(|m| (m.pid, m.start_ticks))
            .unwrap_or_default(),
    }
}
