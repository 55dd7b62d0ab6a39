//! Rule evaluation and enforcement.
//!
//! [`evaluate`] is a pure function: policy + [`Facts`] (what one analysis knows about each family
//! process and each tree, flattened to plain numbers) + nothing else → [`Verdict`]s. It decides,
//! it does not act, so every rule is unit-tested on synthetic facts.
//!
//! [`Enforcer`] acts on verdicts: protection (PID 1, the sidecar, the policy's `protect`), dry-run,
//! the kill rate limit, a set of kills in flight (a tree being killed is not judged again until the
//! kill ends), then the pidfd kill engine ([`crate::kill`]). Every decision becomes an audit event
//! and an outcome the caller counts in `leakwarden_kills_total{rule,outcome}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::kill::{self, Outcome, Target};
use crate::policy::units::{format_duration, format_size};
use crate::policy::{Action, Matcher, Policy, Resource, Rule};

/// What an analysis knows, flattened for rule evaluation.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub processes: Vec<ProcFacts>,
    pub trees: Vec<TreeFacts>,
}

/// One family process.
#[derive(Debug, Clone)]
pub struct ProcFacts {
    pub target: Target,
    pub family: String,
    pub role: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub uid: u32,
    /// Time since the process started.
    pub age: Duration,
    /// Time since it was first seen without an owner; `None` while it has one.
    pub orphaned_for: Option<Duration>,
    pub rss_bytes: u64,
    /// Open FDs; `None` when unreadable (no rule on FDs holds for it).
    pub fds: Option<u64>,
    /// Soft RLIMIT_NOFILE, when read.
    pub fd_soft_limit: Option<u64>,
    pub threads: u64,
    /// Unreaped zombie children, and for how long it has had at least one.
    pub zombie_children: u32,
    pub zombies_for: Option<Duration>,
    /// For how long the leak detector has said "growing", per resource (its tree's verdict).
    pub growing_for: HashMap<Resource, Duration>,
    /// Index into [`Facts::trees`].
    pub tree: Option<usize>,
}

/// One tree: a browser with its helpers, a driver with its browsers, or a generic family subtree.
#[derive(Debug, Clone)]
pub struct TreeFacts {
    /// Family of the tree's root (`chromium`, `chromedriver`, …).
    pub family: String,
    /// Every process to end when the tree is killed: members, crashpad handlers, the profile's
    /// stragglers.
    pub members: Vec<Target>,
    /// Families present in the tree (a driver tree holds chromedriver, chromium and crashpad).
    pub families: Vec<String>,
    /// The role of the tree's root (`browser`, `driver`, `crashpad-handler`, …): what a
    /// `kill-tree` rule's `role:` selects.
    pub role: Option<String>,
    pub profile_dir: Option<PathBuf>,
    /// Age of the tree's oldest member.
    pub age: Duration,
    pub orphaned_for: Option<Duration>,
    pub rss_bytes: u64,
    pub fds: u64,
    pub growing_for: HashMap<Resource, Duration>,
}

/// A rule's decision about one process or tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: String,
    pub action: Action,
    pub grace: Duration,
    pub subject: Subject,
    /// Who would be signalled (empty for `report`).
    pub targets: Vec<Target>,
    /// Human-readable: which conditions held, with their values.
    pub reason: String,
}

/// What a verdict is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Index into [`Facts::processes`].
    Process(usize),
    /// Index into [`Facts::trees`].
    Tree(usize),
}

/// Apply every rule to the facts. `kill-tree` rules are judged per tree (tree age, tree RSS, the
/// tree's orphan time); `report` and `terminate` rules per process. A process matched by several
/// rules gets one verdict per rule; [`Enforcer`] acts once per target.
pub fn evaluate(policy: &Policy, facts: &Facts) -> Vec<Verdict> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        match rule.action {
            Action::KillTree => {
                for (ti, tree) in facts.trees.iter().enumerate() {
                    if !rule.family.is_empty()
                        && !rule.family.iter().any(|f| tree.families.contains(f))
                    {
                        continue;
                    }
                    if !rule.role.is_empty()
                        && !tree.role.as_ref().is_some_and(|r| rule.role.contains(r))
                    {
                        continue;
                    }
                    if let Some(reason) = tree_conditions(rule, tree, facts, ti) {
                        out.push(Verdict {
                            rule: rule.name.clone(),
                            action: rule.action,
                            grace: rule.grace.0,
                            subject: Subject::Tree(ti),
                            targets: tree.members.clone(),
                            reason,
                        });
                    }
                }
            }
            Action::Report | Action::Terminate => {
                for (pi, p) in facts.processes.iter().enumerate() {
                    if !rule.family.is_empty() && !rule.family.contains(&p.family) {
                        continue;
                    }
                    if !rule.role.is_empty()
                        && !p.role.as_ref().is_some_and(|r| rule.role.contains(r))
                    {
                        continue;
                    }
                    if let Some(reason) = proc_conditions(rule, p) {
                        out.push(Verdict {
                            rule: rule.name.clone(),
                            action: rule.action,
                            grace: rule.grace.0,
                            subject: Subject::Process(pi),
                            targets: if rule.action == Action::Terminate {
                                vec![p.target.clone()]
                            } else {
                                Vec::new()
                            },
                            reason,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Collects "condition (value)" fragments; any failed condition makes the whole rule fail.
struct Reasons(Vec<String>);

impl Reasons {
    fn check(&mut self, ok: bool, text: impl FnOnce() -> String) -> bool {
        if ok {
            self.0.push(text());
        }
        ok
    }
}

fn proc_conditions(rule: &Rule, p: &ProcFacts) -> Option<String> {
    let w = &rule.when;
    let mut r = Reasons(Vec::new());
    if let Some(min) = w.orphaned_for {
        let ok = p.orphaned_for.is_some_and(|d| d >= min.0);
        if !r.check(ok, || {
            format!("orphaned for {} (≥ {min})", fd(p.orphaned_for))
        }) {
            return None;
        }
    }
    if let Some(min) = w.age {
        if !r.check(p.age >= min.0, || {
            format!("age {} (≥ {min})", format_duration(p.age))
        }) {
            return None;
        }
    }
    if let Some(max) = w.rss_above {
        if !r.check(p.rss_bytes > max.0, || {
            format!("RSS {} (> {max})", format_size(p.rss_bytes))
        }) {
            return None;
        }
    }
    if let Some(max) = w.fds_above {
        let fds = p.fds.unwrap_or(0);
        if !r.check(p.fds.is_some_and(|n| n > max), || {
            format!("{fds} open FDs (> {max})")
        }) {
            return None;
        }
    }
    if let Some(max) = w.fd_ratio_above {
        let ratio = p
            .fd_soft_limit
            .filter(|l| *l > 0)
            .zip(p.fds)
            .map(|(l, n)| n as f64 / l as f64);
        let ok = ratio.is_some_and(|x| x > max);
        if !r.check(ok, || {
            format!(
                "{} of {} FDs ({:.0}% > {:.0}%)",
                p.fds.unwrap_or(0),
                p.fd_soft_limit.unwrap_or(0),
                ratio.unwrap_or(0.0) * 100.0,
                max * 100.0
            )
        }) {
            return None;
        }
    }
    if let Some(leak) = &w.leak {
        let g = p.growing_for.get(&leak.resource).copied();
        let ok = g.is_some_and(|d| d >= leak.for_.0);
        if !r.check(ok, || {
            format!(
                "{} growing for {} (≥ {})",
                leak.resource.as_str(),
                fd(g),
                leak.for_
            )
        }) {
            return None;
        }
    }
    if let Some(z) = &w.zombie_parent {
        let ok = p.zombie_children >= z.min_zombies && p.zombies_for.is_some_and(|d| d >= z.for_.0);
        if !r.check(ok, || {
            format!(
                "{} zombie children for {} (≥ {} for ≥ {})",
                p.zombie_children,
                fd(p.zombies_for),
                z.min_zombies,
                z.for_
            )
        }) {
            return None;
        }
    }
    Some(r.0.join(", "))
}

fn tree_conditions(rule: &Rule, t: &TreeFacts, facts: &Facts, ti: usize) -> Option<String> {
    let w = &rule.when;
    let mut r = Reasons(Vec::new());
    if let Some(min) = w.orphaned_for {
        let ok = t.orphaned_for.is_some_and(|d| d >= min.0);
        if !r.check(ok, || {
            format!("tree orphaned for {} (≥ {min})", fd(t.orphaned_for))
        }) {
            return None;
        }
    }
    if let Some(min) = w.age {
        if !r.check(t.age >= min.0, || {
            format!("tree age {} (≥ {min})", format_duration(t.age))
        }) {
            return None;
        }
    }
    if let Some(max) = w.rss_above {
        if !r.check(t.rss_bytes > max.0, || {
            format!("tree RSS {} (> {max})", format_size(t.rss_bytes))
        }) {
            return None;
        }
    }
    if let Some(max) = w.fds_above {
        if !r.check(t.fds > max, || {
            format!("tree holds {} FDs (> {max})", t.fds)
        }) {
            return None;
        }
    }
    if let Some(max) = w.fd_ratio_above {
        // Per process: the tree qualifies when any member is near its own limit.
        let worst = facts
            .processes
            .iter()
            .filter(|p| p.tree == Some(ti))
            .filter_map(|p| {
                p.fd_soft_limit
                    .filter(|l| *l > 0)
                    .zip(p.fds)
                    .map(|(l, n)| n as f64 / l as f64)
            })
            .fold(None::<f64>, |m, x| Some(m.map_or(x, |m| m.max(x))));
        let ok = worst.is_some_and(|x| x > max);
        if !r.check(ok, || {
            format!(
                "a member at {:.0}% of its FD limit (> {:.0}%)",
                worst.unwrap_or(0.0) * 100.0,
                max * 100.0
            )
        }) {
            return None;
        }
    }
    if let Some(leak) = &w.leak {
        let g = t.growing_for.get(&leak.resource).copied();
        let ok = g.is_some_and(|d| d >= leak.for_.0);
        if !r.check(ok, || {
            format!(
                "tree {} growing for {} (≥ {})",
                leak.resource.as_str(),
                fd(g),
                leak.for_
            )
        }) {
            return None;
        }
    }
    if let Some(z) = &w.zombie_parent {
        let worst = facts
            .processes
            .iter()
            .filter(|p| p.tree == Some(ti) && p.zombie_children >= z.min_zombies)
            .filter_map(|p| p.zombies_for)
            .max();
        let ok = worst.is_some_and(|d| d >= z.for_.0);
        if !r.check(ok, || {
            format!(
                "a member with ≥ {} zombies for {}",
                z.min_zombies,
                fd(worst)
            )
        }) {
            return None;
        }
    }
    Some(r.0.join(", "))
}

fn fd(d: Option<Duration>) -> String {
    d.map(format_duration).unwrap_or_else(|| "-".into())
}

/// True when a protect matcher (or the built-in protection) covers the process.
pub fn is_protected(policy: &Policy, p: &ProcFacts) -> bool {
    p.target.pid <= 1
        || p.target.pid == std::process::id() as i32
        || policy
            .protect
            .iter()
            .any(|m: &Matcher| m.matches(&p.comm, p.exe.as_deref(), p.cmdline.as_deref(), p.uid))
}

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

/// Acts on verdicts. Holds the rate limiter and the set of targets whose kill is in flight, so
/// it lives as long as the watch loop.
#[derive(Debug)]
pub struct Enforcer {
    engine: kill::Engine,
    limiter: RateLimiter,
    in_flight: HashSet<(i32, u64)>,
    proc_root: PathBuf,
}

/// One acted-on verdict: what was decided and what happened to each target.
#[derive(Debug, Clone)]
pub struct Enforced {
    pub verdict: Verdict,
    pub outcomes: Vec<(Target, Outcome)>,
}

impl Enforcer {
    /// An enforcer for targets judged under `proc_root` (the scanner's root).
    pub fn new(policy: &Policy, proc_root: &std::path::Path) -> Self {
        Self {
            engine: kill::Engine::new(proc_root, policy.protect.clone()),
            limiter: RateLimiter::new(policy.max_kills_per_minute),
            in_flight: HashSet::new(),
            proc_root: proc_root.to_path_buf(),
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
        let mut plans = Vec::new();
        let mut done = Vec::new();
        for v in verdicts {
            if v.action == Action::Report {
                continue;
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
            if !prot.is_empty() {
                let o = self.engine.record(&ctx, &prot, Outcome::Protected);
                done.push(Enforced {
                    verdict: v.clone(),
                    outcomes: prot.into_iter().zip(o).collect(),
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
                    let o = self.engine.record(&ctx, &keep, o);
                    done.push(Enforced {
                        verdict: v.clone(),
                        outcomes: keep.into_iter().zip(o).collect(),
                    });
                }
                None => {
                    for t in &keep {
                        self.in_flight.insert((t.pid, t.start_ticks));
                    }
                    plans.push(Plan {
                        engine: self.engine.clone(),
                        verdict: v.clone(),
                        targets: keep,
                    });
                }
            }
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;
    use std::path::Path;

    fn pol(yaml: &str) -> Policy {
        policy::parse(yaml, Path::new("t.yaml")).unwrap()
    }

    fn target(pid: i32) -> Target {
        Target {
            pid,
            start_ticks: 1000 + pid as u64,
            comm: "chromium".into(),
            family: Some("chromium".into()),
        }
    }

    fn proc_(pid: i32, family: &str) -> ProcFacts {
        ProcFacts {
            target: target(pid),
            family: family.into(),
            role: None,
            comm: family.into(),
            exe: None,
            cmdline: Some(format!("{family} --flag")),
            uid: 0,
            age: Duration::from_secs(600),
            orphaned_for: None,
            rss_bytes: 100 << 20,
            fds: Some(50),
            fd_soft_limit: Some(1024),
            threads: 10,
            zombie_children: 0,
            zombies_for: None,
            growing_for: HashMap::new(),
            tree: Some(0),
        }
    }

    fn tree(members: &[i32], orphaned: Option<u64>) -> TreeFacts {
        TreeFacts {
            family: "chromium".into(),
            members: members.iter().map(|p| target(*p)).collect(),
            families: vec!["chromium".into(), "crashpad".into()],
            role: Some("browser".into()),
            profile_dir: Some("/tmp/profile".into()),
            age: Duration::from_secs(600),
            orphaned_for: orphaned.map(Duration::from_secs),
            rss_bytes: 900 << 20,
            fds: 300,
            growing_for: HashMap::new(),
        }
    }

    #[test]
    fn builtin_policy_kills_an_orphaned_tree_whole_and_not_one_with_a_live_launcher() {
        let p = policy::builtin();
        let facts = Facts {
            processes: vec![
                proc_(10, "chromium"),
                proc_(11, "chromium"),
                proc_(20, "chromium"),
            ],
            trees: vec![tree(&[10, 11, 12], Some(45)), tree(&[20, 21], None)],
        };
        let v: Vec<_> = evaluate(&p, &facts)
            .into_iter()
            .filter(|v| v.action == Action::KillTree)
            .collect();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].subject, Subject::Tree(0));
        assert_eq!(
            v[0].targets.iter().map(|t| t.pid).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert!(v[0].reason.contains("orphaned for 45s"), "{}", v[0].reason);
    }

    #[test]
    fn orphaned_for_below_threshold_does_not_fire() {
        let p = policy::builtin();
        let facts = Facts {
            processes: vec![],
            trees: vec![tree(&[10], Some(29))],
        };
        assert!(evaluate(&p, &facts)
            .iter()
            .all(|v| v.action != Action::KillTree));
    }

    #[test]
    fn all_conditions_must_hold() {
        let p = pol("rules:\n  - name: big-old\n    when: {rss_above: 1GiB, age: 5m}\n    action: terminate\n");
        let mut a = proc_(10, "chromium");
        a.rss_bytes = 2 << 30;
        let mut b = proc_(11, "chromium");
        b.rss_bytes = 2 << 30;
        b.age = Duration::from_secs(60);
        let c = proc_(12, "chromium");
        let facts = Facts {
            processes: vec![a, b, c],
            trees: vec![],
        };
        let v = evaluate(&p, &facts);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].targets[0].pid, 10);
        assert!(v[0].reason.contains("RSS 2.0GiB"), "{}", v[0].reason);
    }

    #[test]
    fn family_and_role_filters_apply() {
        let p = pol("rules:\n  - name: r\n    family: chromium\n    role: renderer\n    when: {fds_above: 10}\n    action: report\n");
        let mut a = proc_(10, "chromium");
        a.role = Some("renderer".into());
        let mut b = proc_(11, "chromium");
        b.role = Some("gpu-process".into());
        let c = proc_(12, "chromedriver");
        let v = evaluate(
            &p,
            &Facts {
                processes: vec![a, b, c],
                trees: vec![],
            },
        );
        assert_eq!(
            v.iter().map(|v| v.subject.clone()).collect::<Vec<_>>(),
            [Subject::Process(0)]
        );
        assert!(v[0].targets.is_empty(), "report signals nobody");
    }

    #[test]
    fn fd_ratio_leak_and_zombie_conditions() {
        let p = pol(concat!(
            "rules:\n",
            "  - name: ratio\n    when: {fd_ratio_above: 0.8}\n    action: report\n",
            "  - name: leak\n    when: {leak: {resource: fds, for: 2m}}\n    action: terminate\n",
            "  - name: zombies\n    when: {zombie_parent: {min_zombies: 3, for: 30s}}\n    action: terminate\n",
        ));
        let mut a = proc_(10, "chromium");
        a.fds = Some(900);
        a.growing_for
            .insert(Resource::Fds, Duration::from_secs(121));
        let mut b = proc_(11, "chromium");
        b.growing_for.insert(Resource::Fds, Duration::from_secs(60));
        b.zombie_children = 3;
        b.zombies_for = Some(Duration::from_secs(31));
        let mut c = proc_(12, "chromium");
        c.fd_soft_limit = None; // unknown limit never matches a ratio
        c.fds = Some(100_000);
        c.zombie_children = 2;
        c.zombies_for = Some(Duration::from_secs(100));
        let v = evaluate(
            &p,
            &Facts {
                processes: vec![a, b, c],
                trees: vec![],
            },
        );
        let got: Vec<(&str, i32)> = v
            .iter()
            .map(|v| {
                let Subject::Process(i) = v.subject else {
                    panic!()
                };
                (v.rule.as_str(), 10 + i as i32)
            })
            .collect();
        assert_eq!(got, [("ratio", 10), ("leak", 10), ("zombies", 11)]);
    }

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
}
