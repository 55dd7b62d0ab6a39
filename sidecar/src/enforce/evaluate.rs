//! [`evaluate`]: policy + facts → verdicts. Pure: it decides, it does not act.

use std::time::Duration;

use super::{Facts, ProcFacts, Subject, TreeFacts, Verdict};
use crate::policy::units::{format_duration, format_size};
use crate::policy::{Action, Matcher, Policy, Rule};
use crate::snapshot::fd_ratio;

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
        let ratio = fd_ratio(p.fds, p.fd_soft_limit);
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
            .filter_map(|p| fd_ratio(p.fds, p.fd_soft_limit))
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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::policy::{self, Resource};

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
    fn role_selects_trees_for_kill_tree_rules_by_their_roots_role() {
        // The shipped max-age example: kill browser trees, not chromedriver's.
        let p = pol(concat!(
            "rules:\n  - name: browser-max-age\n    family: [chromium, chromedriver, crashpad]\n",
            "    role: browser\n    when: {age: 1h}\n    action: kill-tree\n",
        ));
        let mut driver = tree(&[30, 31], None);
        driver.family = "chromedriver".into();
        driver.families = vec!["chromedriver".into(), "chromium".into()];
        driver.role = Some("driver".into());
        driver.age = Duration::from_secs(7200);
        let mut browser = tree(&[10, 11], None);
        browser.age = Duration::from_secs(7200);
        let v = evaluate(
            &p,
            &Facts {
                processes: vec![],
                trees: vec![driver, browser],
            },
        );
        assert_eq!(
            v.iter().map(|v| v.subject.clone()).collect::<Vec<_>>(),
            [Subject::Tree(1)],
            "only the browser's tree"
        );
    }
}
