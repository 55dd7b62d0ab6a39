//! The one-shot commands: `scan` (look) and `cleanup` (look, judge, and with `--kill` act).
//!
//! With no history, ownership is judged from one snapshot ([`crate::detect::orphans`]); an
//! orphan's "orphaned for" counts from its start time. A tree whose launcher is alive, an init's
//! payload, a container's process or a service's main process is never orphaned, whatever its
//! age.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analysis::{Analysis, Tracker};
use crate::cleanup::{self, Report, StaleDir};
use crate::enforce::{self, Enforcer};
use crate::policy::Policy;
use crate::proc::ProcFs;
use crate::report::ScanReport;
use crate::snapshot::{ScanError, Scanner};

/// How long the stale-directory part of one command may take.
const STALE_DEADLINE: Duration = Duration::from_secs(20);

/// One scan and analysis.
pub fn analyze_once(policy: &Policy, proc_root: &Path) -> Result<Analysis, ScanError> {
    let mut scanner = Scanner::new(ProcFs::new(proc_root));
    let snap = scanner.scan(policy)?;
    Ok(Tracker::new()
        .with_proc_root(proc_root)
        .analyze(Arc::new(snap), policy))
}

/// `leakwarden scan`.
pub fn scan(policy: &Policy, proc_root: &Path) -> Result<ScanReport, ScanError> {
    let a = analyze_once(policy, proc_root)?;
    let stale = crate::stale::find(
        policy,
        &a.snapshot,
        proc_root,
        true,
        Instant::now() + STALE_DEADLINE,
    );
    Ok(ScanReport::new(&a, stale.dirs))
}

/// `leakwarden cleanup`: verdicts, and with `kill` the kills, the killed trees' profile
/// directories (once their kill is confirmed) and the stale directories.
pub async fn cleanup(policy: &Policy, proc_root: &Path, kill: bool) -> Result<Report, ScanError> {
    let a = analyze_once(policy, proc_root)?;
    let dry = cleanup::effective_dry_run(policy, kill);
    let facts = a.facts();
    let verdicts = enforce::evaluate(policy, &facts);
    let mut enforcer = Enforcer::new(policy, proc_root);
    let (plans, mut done) = enforcer.plan(policy, &facts, &verdicts, dry);
    let acted = !plans.is_empty();
    let mut set = tokio::task::JoinSet::new();
    for p in plans {
        set.spawn(p.execute());
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(e) => done.push(e),
            Err(e) => tracing::error!(error = %e, "a kill task failed"),
        }
    }
    // After kills, judge directories on a fresh look: the killed trees no longer use theirs.
    let after = if acted {
        analyze_once(policy, proc_root)?
    } else {
        a
    };
    let deadline = Instant::now() + STALE_DEADLINE;
    let mut dirs: Vec<StaleDir> = Vec::new();
    if !dry {
        for e in &done {
            if let Some(p) = e.profile.as_ref().filter(|_| e.tree_gone()) {
                dirs.push(p.remove(policy, &after.snapshot, proc_root, deadline));
            }
        }
    }
    let mut stale = crate::stale::find(policy, &after.snapshot, proc_root, true, deadline);
    if !dry && policy.stale_profiles.remove {
        stale.remove_all(deadline);
    }
    for d in stale.dirs {
        if !dirs.iter().any(|k| k.path == d.path) {
            dirs.push(d);
        }
    }
    Ok(Report::new(&facts, &verdicts, &done, dry, dirs))
}
