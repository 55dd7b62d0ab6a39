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

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::kill::Target;
use crate::policy::{Action, Resource};

mod act;
mod evaluate;

pub use act::{Enforced, Enforcer, Plan, RateLimiter};
pub use evaluate::{evaluate, is_protected};

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
    /// A member that names `profile_dir` as its `--user-data-dir` (the browser): the profile is
    /// opened through its view before a kill, so it can go with the tree.
    pub profile_pid: Option<i32>,
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

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::kill::Target;
    use crate::policy::{self, Policy};
    use std::path::Path;

    pub fn pol(yaml: &str) -> Policy {
        policy::parse(yaml, Path::new("t.yaml")).unwrap()
    }

    pub fn target(pid: i32) -> Target {
        Target {
            pid,
            start_ticks: 1000 + pid as u64,
            comm: "chromium".into(),
            family: Some("chromium".into()),
        }
    }

    pub fn proc_(pid: i32, family: &str) -> ProcFacts {
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

    pub fn tree(members: &[i32], orphaned: Option<u64>) -> TreeFacts {
        TreeFacts {
            family: "chromium".into(),
            members: members.iter().map(|p| target(*p)).collect(),
            families: vec!["chromium".into(), "crashpad".into()],
            role: Some("browser".into()),
            profile_dir: Some("/tmp/profile".into()),
            profile_pid: None,
            age: Duration::from_secs(600),
            orphaned_for: orphaned.map(Duration::from_secs),
            rss_bytes: 900 << 20,
            fds: 300,
            growing_for: HashMap::new(),
        }
    }
}
