//! The status page (`GET /`) and its data (`GET /api/v1/status`), for hosts without Grafana.
//!
//! Rendered after each scan into bytes the HTTP server copies ([`crate::http::State`]): a request
//! never scans. The page is plain server-rendered HTML that refreshes itself — no script at all —
//! and every string a process controls (comm, command line, paths) is escaped ([`html::esc`]).

mod html;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::analysis::Analysis;
use crate::cleanup::StaleDir;
use crate::kill::{Outcome, Target};
use crate::policy::Policy;
use crate::report::ScanReport;

/// Kill events kept for the page.
const KILLS_KEPT: usize = 50;
/// History kept per family for the sparklines.
const HISTORY: Duration = Duration::from_secs(3600);
/// At most one history point per this long (a day of 5 s scans would be 720 points an hour).
const HISTORY_STEP: Duration = Duration::from_secs(10);

/// One kill decision as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct KillEvent {
    pub at_unix: f64,
    pub rule: String,
    pub action: String,
    pub pid: i32,
    pub comm: String,
    pub family: Option<String>,
    pub outcome: String,
}

/// One point of a family's history.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub at_unix: f64,
    pub rss_bytes: u64,
    pub fds: u64,
}

/// The policy in force, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub source: String,
    pub dry_run: bool,
    pub families: Vec<String>,
    pub rules: Vec<RuleSummary>,
    pub stale_roots: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleSummary {
    pub name: String,
    pub action: String,
    pub families: Vec<String>,
    pub when: serde_json::Value,
}

/// Everything `/api/v1/status` returns.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub generated_at_unix: f64,
    pub policy: &'a PolicySummary,
    pub scan: ScanReport,
    pub recent_kills: Vec<&'a KillEvent>,
    pub history: &'a BTreeMap<String, VecDeque<Point>>,
}

/// What the page remembers between scans.
#[derive(Debug, Default)]
pub struct Board {
    kills: VecDeque<KillEvent>,
    history: BTreeMap<String, VecDeque<Point>>,
    stale: Vec<StaleDir>,
    policy: Option<PolicySummary>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Board {
    /// The policy in force changed (start, reload, dry-run).
    pub fn set_policy(&mut self, p: &Policy, source: String, dry_run: bool) {
        self.policy = Some(PolicySummary {
            source,
            dry_run,
            families: p.families.iter().map(|f| f.name.clone()).collect(),
            rules: p
                .rules
                .iter()
                .map(|r| RuleSummary {
                    name: r.name.clone(),
                    action: r.action.as_str().to_string(),
                    families: r.family.clone(),
                    when: serde_json::to_value(&r.when).unwrap_or_default(),
                })
                .collect(),
            stale_roots: crate::stale::roots(p)
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
        });
    }

    /// Outcomes of a kill decision.
    pub fn kills(&mut self, rule: &str, action: &str, outcomes: &[(Target, Outcome)]) {
        let now = unix(SystemTime::now());
        for (t, o) in outcomes {
            self.kills.push_front(KillEvent {
                at_unix: now,
                rule: rule.to_string(),
                action: action.to_string(),
                pid: t.pid,
                comm: t.comm.clone(),
                family: t.family.clone(),
                outcome: o.to_string(),
            });
        }
        self.kills.truncate(KILLS_KEPT);
    }

    /// The latest stale-directory findings.
    pub fn stale(&mut self, dirs: Vec<StaleDir>) {
        self.stale = dirs;
    }

    /// A scan completed: take its family totals into the history; render page and JSON.
    pub fn render(&mut self, a: &Analysis) -> (Vec<u8>, Vec<u8>) {
        let at = unix(a.snapshot.taken_at);
        for f in &a.families {
            let h = self.history.entry(f.name.clone()).or_default();
            if h.back()
                .is_none_or(|p| at - p.at_unix >= HISTORY_STEP.as_secs_f64())
            {
                h.push_back(Point {
                    at_unix: at,
                    rss_bytes: f.rss_bytes,
                    fds: f.fds,
                });
            }
            while h
                .front()
                .is_some_and(|p| at - p.at_unix > HISTORY.as_secs_f64())
            {
                h.pop_front();
            }
        }
        let names: Vec<&String> = a.families.iter().map(|f| &f.name).collect();
        self.history.retain(|k, _| names.contains(&k));
        let empty = PolicySummary {
            source: String::new(),
            dry_run: false,
            families: Vec::new(),
            rules: Vec::new(),
            stale_roots: Vec::new(),
        };
        let status = Status {
            version: env!("CARGO_PKG_VERSION"),
            generated_at_unix: at,
            policy: self.policy.as_ref().unwrap_or(&empty),
            scan: ScanReport::new(a, self.stale.clone()),
            recent_kills: self.kills.iter().collect(),
            history: &self.history,
        };
        let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
        let page = html::page(&status).into_bytes();
        (page, json)
    }
}
