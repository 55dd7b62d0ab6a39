//! `leakwarden cleanup`: one scan, the policy's verdicts printed (what, why, which rule, what
//! would be done), acting only when told `--kill`. The command people run by hand or from cron
//! instead of `pkill -9 -f chrome`.
//!
//! Exit codes (also in README.md):
//! - 0 — nothing found, or nothing left: what was found had ended or been removed by someone
//!   else (the daemon acting on the same tree) before this run got to it;
//! - 2 — found, nothing done (dry-run: no `--kill`, or the policy's `dry_run`; or a guard
//!   refused every kill);
//! - 3 — acted: every kill and removal succeeded;
//! - 1 — an error: a kill or a removal failed, or the scan failed;
//! - 64 — bad usage or an invalid policy.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::enforce::{Enforced, Facts, Subject, Verdict};
use crate::kill::Outcome;
use crate::policy::units::format_size;
use crate::policy::{Action, Policy};

pub const EXIT_NOTHING: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_FOUND_DRY_RUN: i32 = 2;
pub const EXIT_ACTED: i32 = 3;
pub const EXIT_USAGE: i32 = 64;

/// A stale profile directory and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct StaleDir {
    pub path: PathBuf,
    pub bytes: Option<u64>,
    pub age_seconds: u64,
    /// `would remove`, `removed`, or `failed: …`.
    pub result: String,
}

/// Everything one cleanup decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub items: Vec<Item>,
    pub stale_dirs: Vec<StaleDir>,
}

/// One verdict as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub rule: String,
    pub action: String,
    pub what: String,
    pub family: String,
    pub pids: Vec<i32>,
    pub reason: String,
    /// `reported`, `would kill 11`, `killed 11/11`, …
    pub result: String,
    pub outcomes: Vec<OutcomeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRow {
    pub pid: i32,
    pub comm: String,
    pub outcome: String,
}

impl Report {
    /// Build the report from verdicts and what was done about them (`enforced` holds the
    /// acting verdicts' outcomes, in any order).
    pub fn new(
        facts: &Facts,
        verdicts: &[Verdict],
        enforced: &[Enforced],
        dry_run: bool,
        stale_dirs: Vec<StaleDir>,
    ) -> Self {
        let mut items = Vec::new();
        for v in verdicts {
            let (what, family, pids) = describe_subject(facts, v);
            let outs: Vec<&(crate::kill::Target, Outcome)> = enforced
                .iter()
                .filter(|e| e.verdict.rule == v.rule && e.verdict.subject == v.subject)
                .flat_map(|e| e.outcomes.iter())
                .collect();
            let result = if v.action == Action::Report {
                "reported".to_string()
            } else if outs.is_empty() {
                // Every target already claimed by an earlier rule this round.
                "handled by an earlier rule".to_string()
            } else {
                summarize(&outs)
            };
            items.push(Item {
                rule: v.rule.clone(),
                action: v.action.as_str().to_string(),
                what,
                family,
                pids,
                reason: v.reason.clone(),
                result,
                outcomes: outs
                    .iter()
                    .map(|(t, o)| OutcomeRow {
                        pid: t.pid,
                        comm: t.comm.clone(),
                        outcome: o.to_string(),
                    })
                    .collect(),
            });
        }
        Report {
            dry_run,
            items,
            stale_dirs,
        }
    }

    /// The exit code this report calls for.
    pub fn exit_code(&self) -> i32 {
        let any_failed = self
            .items
            .iter()
            .flat_map(|i| i.outcomes.iter())
            .any(|o| o.outcome.starts_with("failed"))
            || self
                .stale_dirs
                .iter()
                .any(|d| d.result.starts_with("failed"));
        let acted = self
            .items
            .iter()
            .flat_map(|i| i.outcomes.iter())
            .any(|o| o.outcome == "terminated" || o.outcome == "killed")
            || self.stale_dirs.iter().any(|d| d.result == "removed");
        // Everything found had ended (or its PID was reused) or been removed by someone else —
        // the daemon acting on the same tree — before this run got to it: nothing is left.
        let all_gone = self
            .items
            .iter()
            .flat_map(|i| i.outcomes.iter())
            .all(|o| o.outcome.starts_with("skipped ("))
            && self.items.iter().all(|i| !i.outcomes.is_empty())
            && self.stale_dirs.iter().all(|d| d.result.starts_with("gone"));
        if any_failed {
            EXIT_ERROR
        } else if acted {
            EXIT_ACTED
        } else if (self.items.is_empty() && self.stale_dirs.is_empty()) || all_gone {
            EXIT_NOTHING
        } else {
            EXIT_FOUND_DRY_RUN
        }
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        if self.items.is_empty() && self.stale_dirs.is_empty() {
            s.push_str("nothing to clean up\n");
            return s;
        }
        let mut rows = vec![[
            "RULE".to_string(),
            "ACTION".into(),
            "WHAT".into(),
            "WHY".into(),
            "RESULT".into(),
        ]];
        for i in &self.items {
            rows.push([
                i.rule.clone(),
                i.action.clone(),
                i.what.clone(),
                i.reason.clone(),
                i.result.clone(),
            ]);
        }
        for d in &self.stale_dirs {
            rows.push([
                "stale-profile-dir".into(),
                "remove".into(),
                sanitize(&d.path.display().to_string()),
                format!(
                    "no live process uses it; unmodified for {}s{}",
                    d.age_seconds,
                    d.bytes
                        .map(|b| format!(", {}", format_size(b)))
                        .unwrap_or_default()
                ),
                d.result.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
                    .min(70)
            })
            .collect();
        for r in &rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c == 4 {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{:<w$}  ", cell, w = widths[c]);
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        if self.dry_run {
            s.push_str("\ndry-run: nothing was signalled or removed; run with --kill to act\n");
        }
        s
    }
}

fn describe_subject(facts: &Facts, v: &Verdict) -> (String, String, Vec<i32>) {
    match v.subject {
        Subject::Tree(i) => match facts.trees.get(i) {
            Some(t) => {
                let profile = t
                    .profile_dir
                    .as_ref()
                    .map(|p| format!(" {}", sanitize(&p.display().to_string())))
                    .unwrap_or_default();
                (
                    format!(
                        "{} tree{} ({} processes, {})",
                        t.family,
                        profile,
                        t.members.len(),
                        format_size(t.rss_bytes)
                    ),
                    t.family.clone(),
                    t.members.iter().map(|m| m.pid).collect(),
                )
            }
            None => ("tree".into(), String::new(), Vec::new()),
        },
        Subject::Process(i) => match facts.processes.get(i) {
            Some(p) => (
                format!(
                    "pid {} {}{}",
                    p.target.pid,
                    sanitize(&p.comm),
                    p.role
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
                p.family.clone(),
                vec![p.target.pid],
            ),
            None => ("process".into(), String::new(), Vec::new()),
        },
    }
}

fn summarize(outs: &[&(crate::kill::Target, Outcome)]) -> String {
    let n = outs.len();
    let count = |f: &dyn Fn(&Outcome) -> bool| outs.iter().filter(|(_, o)| f(o)).count();
    let ended = count(&|o| o.ended());
    let dry = count(&|o| *o == Outcome::DryRun);
    let limited = count(&|o| *o == Outcome::RateLimited);
    let failed = count(&|o| matches!(o, Outcome::Failed(_)));
    let protected = count(&|o| *o == Outcome::Protected);
    let skipped = count(&|o| matches!(o, Outcome::Gone | Outcome::IdentityChanged));
    let mut parts = Vec::new();
    if dry > 0 {
        parts.push(format!("would kill {dry}"));
    }
    if ended > 0 {
        parts.push(format!("killed {ended}/{n}"));
    }
    if skipped > 0 {
        parts.push(format!("{skipped} already gone"));
    }
    if limited > 0 {
        parts.push(format!("{limited} rate-limited"));
    }
    if protected > 0 {
        parts.push(format!("{protected} protected"));
    }
    if failed > 0 {
        parts.push(format!("{failed} FAILED"));
    }
    parts.join(", ")
}

/// Make a name safe to print on one terminal line: comm and paths may hold newlines and escapes.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Print the report in the chosen format.
pub fn render(report: &Report, json: bool) -> String {
    if json {
        serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            + "\n"
    } else {
        report.to_table()
    }
}

/// The policy's effective dry-run for `cleanup`: dry unless `--kill`, and always dry when the
/// policy says so.
pub fn effective_dry_run(policy: &Policy, kill: bool) -> bool {
    !kill || policy.dry_run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_control_characters() {
        assert_eq!(sanitize("a\nb\x1b[31m"), "a?b?[31m");
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let empty = Report {
            dry_run: true,
            items: vec![],
            stale_dirs: vec![],
        };
        assert_eq!(empty.exit_code(), EXIT_NOTHING);
        let item = |outcome: &str| Item {
            rule: "r".into(),
            action: "kill-tree".into(),
            what: "w".into(),
            family: "chromium".into(),
            pids: vec![5],
            reason: "why".into(),
            result: String::new(),
            outcomes: vec![OutcomeRow {
                pid: 5,
                comm: "chromium".into(),
                outcome: outcome.into(),
            }],
        };
        let r = |o: &str| Report {
            dry_run: false,
            items: vec![item(o)],
            stale_dirs: vec![],
        };
        assert_eq!(r("dry_run").exit_code(), EXIT_FOUND_DRY_RUN);
        assert_eq!(r("killed").exit_code(), EXIT_ACTED);
        assert_eq!(r("failed (EPERM)").exit_code(), EXIT_ERROR);
        // Another killer (the daemon) got there first: nothing was left, not "found, nothing done".
        assert_eq!(r("skipped (already gone)").exit_code(), EXIT_NOTHING);
        assert_eq!(r("protected (uid 0)").exit_code(), EXIT_FOUND_DRY_RUN);
        let gone_dir = Report {
            dry_run: false,
            items: vec![],
            stale_dirs: vec![StaleDir {
                path: "/tmp/p".into(),
                bytes: None,
                age_seconds: 0,
                result: "gone: already removed".into(),
            }],
        };
        assert_eq!(gone_dir.exit_code(), EXIT_NOTHING);
        let dry_items_without_outcomes = Report {
            dry_run: true,
            items: vec![Item {
                outcomes: vec![],
                ..item("x")
            }],
            stale_dirs: vec![],
        };
        assert_eq!(dry_items_without_outcomes.exit_code(), EXIT_FOUND_DRY_RUN);
        assert!(r("killed").to_table().contains("RULE"));
    }
}
