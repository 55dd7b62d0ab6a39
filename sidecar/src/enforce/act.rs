//! Acting on verdicts: protection, dry-run, duplicates, the rate limit, kills in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::{is_protected, Facts, Subject, Verdict};
use crate::kill::{self, Outcome, Target};
use crate::policy::{Action, Policy};
use crate::stale::KilledProfile;

/// A rolling one-minute limit on kill actions.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    recent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            recent: VecDeque::new(),
        }
    }

    pub fn set_limit(&mut self, per_minute: u32) {
        self.per_minute = per_minute;
    }

    /// Take one slot if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.per_minute {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Acts on verdicts. Holds the rate limiter, the set of targets whose kill is in flight, and the
/// decisions already recorded, so it lives as long as the watch loop.
#[derive(Debug)]
pub struct Enforcer {
    engine: kill::Engine,
    limiter: RateLimiter,
    in_flight: HashSet<(i32, u64)>,
    proc_root: PathBuf,
    /// Decisions that signal nothing (dry_run, protected, rate_limited), by rule and target: a
    /// verdict that holds scan after scan is one decision, recorded (audit event, counter) once,
    /// not once per scan. Forgotten when the verdict stops holding or the decision changes.
    recorded: HashMap<(String, (i32, u64)), &'static str>,
}

/// A decision is new unless the same rule decided the same outcome for the same target before.
fn is_new(
    recorded: &mut HashMap<(String, (i32, u64)), &'static str>,
    rule: &str,
    t: &Target,
    label: &'static str,
) -> bool {
    recorded.insert((rule.to_string(), (t.pid, t.start_ticks)), label) != Some(label)
}

/// One acted-on verdict: what was decided and what happened to each target.
#[derive(Debug, Clone)]
pub struct Enforced {
    pub verdict: Verdict,
    pub outcomes: Vec<(Target, Outcome)>,
    /// A killed tree's profile directory, opened before the kill: removed by the caller once
    /// every target is confirmed gone ([`Enforced::tree_gone`]).
    pub profile: Option<Arc<KilledProfile>>,
}

impl Enforced {
    /// Every target of a kill ended (or was already gone): nothing of the tree runs.
    pub fn tree_gone(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|(_, o)| o.not_running())
    }
}

impl Enforcer {
    /// An enforcer for targets judged under `proc_root` (the scanner's root).
    pub fn new(policy: &Policy, proc_root: &std::path::Path) -> Self {
        Self {
            engine: kill::Engine::new(proc_root, policy.protect.clone()),
            limiter: RateLimiter::new(policy.max_kills_per_minute),
            in_flight: HashSet::new(),
            proc_root: proc_root.to_path_buf(),
            recorded: HashMap::new(),
        }
    }

    /// Take a new policy's limits and protect list (on reload).
    pub fn update(&mut self, policy: &Policy) {
        self.limiter.set_limit(policy.max_kills_per_minute);
        self.engine = kill::Engine::new(&self.proc_root, policy.protect.clone());
    }

    /// Decide what to do with each acting verdict, without signalling yet: protection, dry-run,
    /// duplicates, rate limit. Returns the plans to execute (`kill`) and the decisions already
    /// final (recorded as audit events here).
    pub fn plan(
        &mut self,
        policy: &Policy,
        facts: &Facts,
        verdicts: &[Verdict],
        dry_run: bool,
    ) -> (Vec<Plan>, Vec<Enforced>) {
        let now = Instant::now();
        let protected: HashSet<(i32, u64)> = facts
            .processes
            .iter()
            .filter(|p| is_protected(policy, p))
            .map(|p| (p.target.pid, p.target.start_ticks))
            .collect();
        let mut claimed: HashSet<(i32, u64)> = HashSet::new();
        let mut seen: HashSet<(String, (i32, u64))> = HashSet::new();
        let mut plans = Vec::new();
        let mut done = Vec::new();
        for v in verdicts {
            if v.action == Action::Report {
                continue;
            }
            for t in &v.targets {
                seen.insert((v.rule.clone(), (t.pid, t.start_ticks)));
            }
            let ctx = kill::Context {
                rule: &v.rule,
                action: v.action.as_str(),
                reason: &v.reason,
            };
            // One action per target per round; a target whose kill is under way is left alone.
            let targets: Vec<Target> = v
                .targets
                .iter()
                .filter(|t| {
                    let id = (t.pid, t.start_ticks);
                    !self.in_flight.contains(&id) && !claimed.contains(&id)
                })
                .cloned()
                .collect();
            if targets.is_empty() {
                continue;
            }
            let (keep, prot): (Vec<Target>, Vec<Target>) = targets
                .into_iter()
                .partition(|t| t.pid > 1 && !protected.contains(&(t.pid, t.start_ticks)));
            let prot: Vec<Target> = prot
                .into_iter()
                .filter(|t| is_new(&mut self.recorded, &v.rule, t, "protected"))
                .collect();
            if !prot.is_empty() {
                let o = self.engine.record(&ctx, &prot, Outcome::Protected);
                done.push(Enforced {
                    verdict: v.clone(),
                    outcomes: prot.into_iter().zip(o).collect(),
                    profile: None,
                });
            }
            if keep.is_empty() {
                continue;
            }
            for t in &keep {
                claimed.insert((t.pid, t.start_ticks));
            }
            let outcome = if dry_run {
                Some(Outcome::DryRun)
            } else if !self.limiter.try_take(now) {
                Some(Outcome::RateLimited)
            } else {
                None
            };
            match outcome {
                Some(o) => {
                    let label = o.label();
                    let keep: Vec<Target> = keep
                        .into_iter()
                        .filter(|t| is_new(&mut self.recorded, &v.rule, t, label))
                        .collect();
                    if keep.is_empty() {
                        continue;
                    }
                    let o = self.engine.record(&ctx, &keep, o);
                    done.push(Enforced {
                        verdict: v.clone(),
                        outcomes: keep.into_iter().zip(o).collect(),
                        profile: None,
                    });
                }
                None => {
                    for t in &keep {
                        self.in_flight.insert((t.pid, t.start_ticks));
                        self.recorded
                            .remove(&(v.rule.clone(), (t.pid, t.start_ticks)));
                    }
                    // A tree's profile goes with it: open it now, while its browser can still
                    // say where it is.
                    let profile = match (&v.subject, policy.stale_profiles.remove) {
                        (Subject::Tree(ti), true) => facts.trees.get(*ti).and_then(|t| {
                            let (dir, pid) = (t.profile_dir.as_ref()?, t.profile_pid?);
                            KilledProfile::capture(&self.proc_root, pid, dir).map(Arc::new)
                        }),
                        _ => None,
                    };
                    plans.push(Plan {
                        engine: self.engine.clone(),
                        verdict: v.clone(),
                        targets: keep,
                        profile,
                    });
                }
            }
        }
        self.recorded.retain(|k, _| seen.contains(k));
        (plans, done)
    }

    /// Forget the in-flight marks of a finished plan.
    pub fn finished(&mut self, e: &Enforced) {
        for (t, _) in &e.outcomes {
            self.in_flight.remove(&(t.pid, t.start_ticks));
        }
    }
}

/// A kill to carry out; runs on its own task so a long grace period never delays a scan.
#[derive(Debug)]
pub struct Plan {
    engine: kill::Engine,
    pub verdict: Verdict,
    pub targets: Vec<Target>,
    profile: Option<Arc<KilledProfile>>,
}

impl Plan {
    pub async fn execute(self) -> Enforced {
        let ctx = kill::Context {
            rule: &self.verdict.rule,
            action: self.verdict.action.as_str(),
            reason: &self.verdict.reason,
        };
        let outcomes = self
            .engine
            .kill(&ctx, &self.targets, self.verdict.grace)
            .await;
        Enforced {
            outcomes: self.targets.iter().cloned().zip(outcomes).collect(),
            verdict: self.verdict,
            profile: self.profile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::evaluate;
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn rate_limiter_allows_n_per_rolling_minute() {
        let mut r = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(r.try_take(t0));
        assert!(r.try_take(t0));
        assert!(!r.try_take(t0 + Duration::from_secs(59)));
        assert!(r.try_take(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn protected_dry_run_and_rate_limited_targets_are_not_planned() {
        let p = pol("max_kills_per_minute: 1\nprotect:\n  - cmdline: 'keep-me'\nrules:\n  - name: r\n    when: {age: 1s}\n    action: terminate\n");
        let mut keep = proc_(10, "chromium");
        keep.cmdline = Some("chromium keep-me".into());
        let facts = Facts {
            processes: vec![
                keep,
                proc_(11, "chromium"),
                proc_(12, "chromium"),
                proc_(1, "chromium"),
            ],
            trees: vec![],
        };
        let v = evaluate(&p, &facts);
        assert_eq!(v.len(), 4);

        let mut e = Enforcer::new(&p, std::path::Path::new("/proc"));
        let (plans, done) = e.plan(&p, &facts, &v, true);
        assert!(plans.is_empty());
        let labels: Vec<(i32, &str)> = done
            .iter()
            .flat_map(|d| d.outcomes.iter().map(|(t, o)| (t.pid, o.label())))
            .collect();
        assert_eq!(
            labels,
            [
                (10, "protected"),
                (11, "dry_run"),
                (12, "dry_run"),
                (1, "protected")
            ]
        );

        let mut e = Enforcer::new(&p, std::path::Path::new("/proc"));
        let (plans, done) = e.plan(&p, &facts, &v, false);
        assert_eq!(
            plans.iter().map(|p| p.targets[0].pid).collect::<Vec<_>>(),
            [11]
        );
        let labels: Vec<(i32, &str)> = done
            .iter()
            .flat_map(|d| d.outcomes.iter().map(|(t, o)| (t.pid, o.label())))
            .collect();
        assert_eq!(
            labels,
            [(10, "protected"), (12, "rate_limited"), (1, "protected")]
        );

        // In flight: the same verdicts next round plan nothing new for 11.
        let (plans2, _) = e.plan(&p, &facts, &v, false);
        assert!(plans2.iter().all(|p| p.targets.iter().all(|t| t.pid != 11)));
    }

    #[test]
    fn a_standing_decision_is_recorded_once_not_once_per_scan() {
        let p = pol("rules:\n  - name: r\n    when: {age: 1s}\n    action: terminate\n");
        let facts = Facts {
            processes: vec![proc_(11, "chromium"), proc_(12, "chromium")],
            trees: vec![],
        };
        let v = evaluate(&p, &facts);
        let mut e = Enforcer::new(&p, std::path::Path::new("/proc"));
        let count = |done: &[Enforced]| done.iter().map(|d| d.outcomes.len()).sum::<usize>();
        let (_, done) = e.plan(&p, &facts, &v, true);
        assert_eq!(count(&done), 2, "first scan: two dry-run decisions");
        for _ in 0..5 {
            let (_, done) = e.plan(&p, &facts, &v, true);
            assert_eq!(
                count(&done),
                0,
                "the same decisions again: nothing new to count"
            );
        }
        // The verdict stops holding for one scan, then holds again: a new decision.
        let (_, done) = e.plan(&p, &facts, &[], true);
        assert_eq!(count(&done), 0);
        let (_, done) = e.plan(&p, &facts, &v, true);
        assert_eq!(count(&done), 2);
    }
}
