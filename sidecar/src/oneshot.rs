//! The one-shot commands: `scan` (look) and `cleanup` (look, judge, and with `--kill` act).
//!
//! With no history, "orphaned for" is judged from the process's start time: a tree whose every
//! top-level process hangs off an init or subreaper is taken to be orphaned since it started
//! (see [`crate::analysis`]). A tree whose launcher is alive is never orphaned, whatever its age.

use std::path::Path;
use std::sync::Arc;

use crate::analysis::{Analysis, Tracker};
use crate::cleanup::{self, Report};
use crate::enforce::{self, Enforcer};
use crate::policy::Policy;
use crate::proc::ProcFs;
use crate::report::ScanReport;
use crate::snapshot::{ScanError, Scanner};

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
    let stale = crate::stale::find(policy, &a, true);
    Ok(ScanReport::new(&a, stale))
}

/// `leakwarden cleanup`: verdicts, and with `kill` the kills and stale-directory removals.
pub async fn cleanup(policy: &Policy, proc_root: &Path, kill: bool) -> Result<Report, ScanError> {
    let a = analyze_once(policy, proc_root)?;
    let dry = cleanup::effective_dry_run(policy, kill);
    let facts = a.facts();
    let verdicts = enforce::evaluate(policy, &facts);
    let mut enforcer = Enforcer::new(policy, proc_root);
    let (plans, mut done) = enforcer.plan(policy, &facts, &verdicts, dry);
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
    let mut stale = crate::stale::find(policy, &a, true);
    if !dry && policy.stale_profiles.remove {
        for d in &mut stale {
            d.result = match cleanup::remove_dir(&d.path) {
                Ok(()) => "removed".into(),
                Err(e) => format!("failed: {e}"),
            };
        }
    }
    Ok(Report::new(&facts, &verdicts, &done, dry, stale))
}
