//! Families, roles, trees and owners: pure functions of one [`Snapshot`].
//!
//! A *tree* is what must end together:
//! - a browser and every process of its profile (`--user-data-dir`), wherever they were
//!   reparented to (renderers, zygotes, utilities, stragglers);
//! - the two `chrome_crashpad_handler` processes of that browser. They `setsid()` and are
//!   parented by PID 1 from their first second and carry no profile, so they are *tied* to their
//!   browser by the caller ([`Ties`]: by the unix socket they share, or by start time);
//! - chromedriver and every browser it started (one tree, keyed by the driver);
//! - for a generic family, a process and its same-family descendants.
//!
//! The *owner* of a tree is its root's parent outside it: the bot, worker or runner that launched
//! it, or the init whose payload it is. Whether a tree is owned at all is judged in
//! [`crate::detect::orphans`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::policy::FamilyKind;
use crate::snapshot::{Proc, Snapshot};

/// What keys a tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum TreeKey {
    /// A browser profile directory.
    Profile(PathBuf),
    /// A chromedriver (pid, start) and the browsers it started.
    Driver(i32, u64),
    /// Any other family process heading its own tree (pid, start).
    Root(i32, u64),
}

/// crashpad handler identity → browser identity.
pub type Ties = HashMap<(i32, u64), (i32, u64)>;

/// One tree's shape in a snapshot: indices into `snapshot.procs`.
#[derive(Debug, Clone)]
pub struct Tree {
    pub key: TreeKey,
    /// Family members, root first.
    pub members: Vec<usize>,
    /// Members whose parent is not a member (the root, stragglers) — excluding crashpad handlers,
    /// whose parent is always PID 1.
    pub top: Vec<usize>,
    /// crashpad handlers in the tree.
    pub crashpad: Vec<usize>,
    /// Non-family descendants of members (killed with the tree, not counted in its figures).
    pub extra: Vec<usize>,
    pub root: usize,
    pub family: String,
    pub families: BTreeSet<String>,
    pub profile_dir: Option<PathBuf>,
}

impl Tree {
    pub fn rss_bytes(&self, s: &Snapshot) -> u64 {
        self.members.iter().map(|&i| s.procs[i].rss_bytes).sum()
    }
    pub fn fds(&self, s: &Snapshot) -> u64 {
        self.members
            .iter()
            .map(|&i| s.procs[i].fds.unwrap_or(0))
            .sum()
    }
    pub fn threads(&self, s: &Snapshot) -> u64 {
        self.members.iter().map(|&i| s.procs[i].threads).sum()
    }
    /// The member with the most open FDs (FD limits are per process).
    pub fn max_fd_member(&self, s: &Snapshot) -> Option<usize> {
        self.members
            .iter()
            .copied()
            .max_by_key(|&i| s.procs[i].fds.unwrap_or(0))
    }
    pub fn age(&self, s: &Snapshot) -> std::time::Duration {
        self.members
            .iter()
            .map(|&i| s.procs[i].age)
            .max()
            .unwrap_or_default()
    }
}

/// Tie crashpad handlers to browsers by start time, for handlers the socket tie could not place:
/// each handler goes to the browser main process of the *same uid and cgroup* (a handler
/// inherits both from its browser) that started most recently before it, within
/// `window_ticks` — so a handler is never tied across users, containers or pods. Returns ties
/// for handlers not already in `known`.
pub fn tie_by_start_time(s: &Snapshot, known: &Ties, window_ticks: u64) -> Ties {
    let browsers: Vec<&Proc> = s
        .procs
        .iter()
        .filter(|p| p.info.as_deref().is_some_and(|i| i.is_browser_root()) && !p.is_zombie())
        .collect();
    let mut out = Ties::new();
    for h in &s.procs {
        let Some(info) = h.info.as_deref() else {
            continue;
        };
        if info.kind != FamilyKind::Crashpad || known.contains_key(&h.id()) {
            continue;
        }
        // Allow a little slack before the browser (tick rounding).
        let cgroup = |p: &Proc| p.info.as_deref().and_then(|i| i.cgroup.clone());
        let best = browsers
            .iter()
            .filter(|b| b.uid == h.uid && cgroup(b) == cgroup(h))
            .filter(|b| {
                b.start_ticks <= h.start_ticks + 1 && h.start_ticks <= b.start_ticks + window_ticks
            })
            .max_by_key(|b| b.start_ticks);
        if let Some(b) = best {
            out.insert(h.id(), b.id());
        }
    }
    out
}

/// Group family members into trees.
pub fn build_trees(s: &Snapshot, ties: &Ties) -> Vec<Tree> {
    let n = s.procs.len();
    let mut keys: Vec<Option<TreeKey>> = vec![None; n];
    for i in 0..n {
        if s.procs[i].info.is_some() && keys[i].is_none() {
            resolve(s, ties, i, &mut keys, 0);
        }
    }
    let mut by_key: HashMap<TreeKey, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some(k) = k {
            by_key.entry(k.clone()).or_default().push(i);
        }
    }
    let mut trees: Vec<Tree> = by_key
        .into_iter()
        .map(|(key, members)| shape(s, key, members, &keys))
        .collect();
    trees.sort_by(|a, b| a.key.cmp(&b.key));
    trees
}

fn resolve(
    s: &Snapshot,
    ties: &Ties,
    i: usize,
    keys: &mut Vec<Option<TreeKey>>,
    depth: u32,
) -> Option<TreeKey> {
    if let Some(k) = &keys[i] {
        return Some(k.clone());
    }
    let p = &s.procs[i];
    let info = p.info.as_deref()?;
    if depth > 64 {
        return Some(TreeKey::Root(p.pid, p.start_ticks));
    }
    let key = if info.kind == FamilyKind::Crashpad {
        match ties
            .get(&p.id())
            .and_then(|b| s.index_of(b.0).filter(|&j| s.procs[j].start_ticks == b.1))
        {
            Some(j) if j != i => {
                resolve(s, ties, j, keys, depth + 1).unwrap_or(TreeKey::Root(p.pid, p.start_ticks))
            }
            _ => TreeKey::Root(p.pid, p.start_ticks),
        }
    } else {
        let parent_key = s
            .index_of(p.ppid)
            .filter(|&j| j != i && s.procs[j].info.is_some() && !s.procs[j].is_zombie())
            .and_then(|j| resolve(s, ties, j, keys, depth + 1));
        match (&parent_key, info.kind) {
            (Some(k @ TreeKey::Driver(..)), _) => k.clone(),
            (_, FamilyKind::Driver) => TreeKey::Driver(p.pid, p.start_ticks),
            _ => match (&info.user_data_dir, parent_key) {
                (Some(d), _) => TreeKey::Profile(d.clone()),
                (None, Some(k)) => k,
                (None, None) => TreeKey::Root(p.pid, p.start_ticks),
            },
        }
    };
    keys[i] = Some(key.clone());
    Some(key)
}

fn shape(s: &Snapshot, key: TreeKey, mut members: Vec<usize>, keys: &[Option<TreeKey>]) -> Tree {
    let in_tree = |j: usize| keys[j].as_ref() == Some(&key);
    let kind = |i: usize| s.procs[i].info.as_deref().map(|x| x.kind);
    let mut top = Vec::new();
    let mut crashpad = Vec::new();
    for &i in &members {
        if kind(i) == Some(FamilyKind::Crashpad) {
            crashpad.push(i);
        } else if !s.procs[i].ppid.eq(&0) && s.index_of(s.procs[i].ppid).is_some_and(&in_tree) {
            // parent in the tree: not top-level
        } else {
            top.push(i);
        }
    }
    let role_none = |i: usize| {
        s.procs[i]
            .info
            .as_deref()
            .is_some_and(|x| x.role.is_none() || x.is_browser_root())
    };
    let root = top
        .iter()
        .copied()
        .find(|&i| kind(i) == Some(FamilyKind::Driver))
        .or_else(|| top.iter().copied().find(|&i| role_none(i)))
        .or_else(|| top.iter().copied().max_by_key(|&i| s.procs[i].age))
        .or_else(|| members.iter().copied().max_by_key(|&i| s.procs[i].age))
        .unwrap_or(0);
    members.sort_by_key(|&i| (i != root, s.procs[i].start_ticks, s.procs[i].pid));
    let mut families = BTreeSet::new();
    let mut profile_dir = None;
    for &i in &members {
        if let Some(info) = s.procs[i].info.as_deref() {
            families.insert(info.family_name.clone());
            if profile_dir.is_none() {
                profile_dir = info.user_data_dir.clone();
            }
        }
    }
    if let TreeKey::Profile(d) = &key {
        profile_dir = Some(d.clone());
    }
    // Non-family descendants of members (bounded walk; a set, not a list search, so a tree with
    // thousands of descendants costs linear time).
    let mut extra = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut stack: Vec<i32> = members.iter().map(|&i| s.procs[i].pid).collect();
    let mut guard = 0;
    while let Some(pid) = stack.pop() {
        guard += 1;
        if guard > 10_000 {
            break;
        }
        for &c in s.children_of(pid) {
            if s.procs[c].info.is_none() && seen.insert(c) {
                extra.push(c);
                stack.push(s.procs[c].pid);
            }
        }
    }
    let family = s.procs[root]
        .info
        .as_deref()
        .map(|x| x.family_name.clone())
        .unwrap_or_default();
    Tree {
        key,
        members,
        top,
        crashpad,
        extra,
        root,
        family,
        families,
        profile_dir,
    }
}

/// The parent of the tree's root when it is outside the tree: who launched it (or, for an init's
/// payload, the init). `None` when the root hangs off PID 0 (a parent outside our PID namespace)
/// or nothing. Only asked of trees judged owned ([`crate::detect::orphans`]).
pub fn owner(s: &Snapshot, tree: &Tree) -> Option<usize> {
    let p = &s.procs[tree.root];
    let j = s.index_of(p.ppid)?;
    if tree.members.contains(&j) {
        return None;
    }
    Some(j)
}

/// RSS of a process and all its descendants.
pub fn subtree_rss(s: &Snapshot, root: usize) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    let mut guard = 0;
    while let Some(i) = stack.pop() {
        guard += 1;
        if guard > 100_000 {
            break;
        }
        total += s.procs[i].rss_bytes;
        stack.extend(
            s.children_of(s.procs[i].pid)
                .iter()
                .copied()
                .filter(|&c| c != i),
        );
    }
    total
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::policy::FamilyKind;
    use crate::snapshot::{Info, Proc};

    pub fn proc_(pid: i32, ppid: i32, comm: &str, start: u64) -> Proc {
        Proc {
            pid,
            start_ticks: start,
            ppid,
            pgid: pid,
            sid: pid,
            state: 'S',
            comm: comm.into(),
            uid: 0,
            rss_bytes: 100 << 20,
            fds: Some(20),
            threads: 5,
            age: Duration::from_secs(100),
            info: None,
            fd_soft_limit: Some(1024),
        }
    }

    pub fn fam(mut p: Proc, family: &str, kind: FamilyKind, args: &str) -> Proc {
        let mut role = None;
        let mut udd = None;
        for a in args.split(' ') {
            if let Some(v) = a.strip_prefix("--type=") {
                role = Some(v.to_string());
            }
            if let Some(v) = a.strip_prefix("--user-data-dir=") {
                udd = Some(v.into());
            }
        }
        match kind {
            FamilyKind::Crashpad => role = Some("crashpad-handler".into()),
            FamilyKind::Browser if role.is_none() => role = Some("browser".into()),
            FamilyKind::Driver => role = Some("driver".into()),
            _ => {}
        }
        p.info = Some(Arc::new(Info {
            family: 0,
            family_name: family.into(),
            kind,
            role,
            user_data_dir: udd,
            cmdline: args.into(),
            exe: None,
            cgroup: None,
            pod_uid: None,
        }));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::proc::MemInfo;

    fn chromium(pid: i32, ppid: i32, start: u64, args: &str) -> Proc {
        fam(
            proc_(pid, ppid, "chromium", start),
            "chromium",
            FamilyKind::Browser,
            args,
        )
    }

    /// A headless session as measured: launcher → browser → zygotes → renderers, two crashpad
    /// handlers under PID 1.
    fn session() -> Snapshot {
        Snapshot::from_procs(
            vec![
                proc_(1, 0, "pause", 1),
                proc_(10, 1, "python3", 100),
                chromium(20, 10, 200, "chromium --user-data-dir=/tmp/p1"),
                fam(
                    proc_(21, 1, "chrome_crashpad", 201),
                    "crashpad",
                    FamilyKind::Crashpad,
                    "x",
                ),
                fam(
                    proc_(22, 1, "chrome_crashpad", 202),
                    "crashpad",
                    FamilyKind::Crashpad,
                    "x",
                ),
                chromium(
                    23,
                    20,
                    203,
                    "chromium --type=zygote --user-data-dir=/tmp/p1",
                ),
                chromium(24, 23, 204, "chromium --type=gpu-process"),
                chromium(
                    25,
                    23,
                    205,
                    "chromium --type=renderer --user-data-dir=/tmp/p1",
                ),
                proc_(26, 25, "cat", 206),
                // A decoy: another program whose name merely contains chromium.
                proc_(30, 1, "chromium-notes", 300),
            ],
            MemInfo::default(),
        )
    }

    #[test]
    fn one_session_is_one_tree_with_its_crashpad_handlers() {
        let s = session();
        let ties = tie_by_start_time(&s, &Ties::new(), 200);
        assert_eq!(ties.len(), 2);
        let trees = build_trees(&s, &ties);
        assert_eq!(trees.len(), 1, "{trees:?}");
        let t = &trees[0];
        assert_eq!(t.key, TreeKey::Profile("/tmp/p1".into()));
        let pids: Vec<i32> = t.members.iter().map(|&i| s.procs[i].pid).collect();
        assert_eq!(pids, [20, 21, 22, 23, 24, 25]);
        assert_eq!(s.procs[t.root].pid, 20);
        assert_eq!(t.crashpad.len(), 2);
        assert_eq!(
            t.top.iter().map(|&i| s.procs[i].pid).collect::<Vec<_>>(),
            [20]
        );
        assert_eq!(
            t.extra.iter().map(|&i| s.procs[i].pid).collect::<Vec<_>>(),
            [26]
        );
        assert_eq!(owner(&s, t).map(|i| s.procs[i].pid), Some(10));
        assert!(t.families.contains("crashpad"));
    }

    #[test]
    fn driver_and_its_browsers_are_one_tree() {
        let s = Snapshot::from_procs(
            vec![
                proc_(1, 0, "systemd", 1),
                proc_(5, 1, "python3", 50),
                fam(proc_(10, 5, "chromedriver", 100), "chromedriver", FamilyKind::Driver, "chromedriver --port=0"),
                chromium(11, 10, 110, "chromium --user-data-dir=/tmp/org.chromium.Chromium.scoped_dir.abc"),
                chromium(12, 11, 111, "chromium --type=renderer --user-data-dir=/tmp/org.chromium.Chromium.scoped_dir.abc"),
            ],
            MemInfo::default(),
        );
        let trees = build_trees(&s, &Ties::new());
        assert_eq!(trees.len(), 1);
        assert_eq!(trees[0].key, TreeKey::Driver(10, 100));
        assert_eq!(trees[0].members.len(), 3);
        assert_eq!(s.procs[trees[0].root].pid, 10);
        assert_eq!(owner(&s, &trees[0]).map(|i| s.procs[i].pid), Some(5));
    }

    #[test]
    fn reparented_stragglers_stay_in_their_profile_tree() {
        let s = Snapshot::from_procs(
            vec![
                proc_(1, 0, "systemd", 1),
                chromium(20, 1, 200, "chromium --user-data-dir=/tmp/p1"),
                chromium(
                    25,
                    1,
                    205,
                    "chromium --type=renderer --user-data-dir=/tmp/p1",
                ),
                chromium(40, 1, 400, "chromium --user-data-dir=/tmp/p2"),
            ],
            MemInfo::default(),
        );
        let trees = build_trees(&s, &Ties::new());
        assert_eq!(trees.len(), 2);
        assert_eq!(trees[0].top.len(), 2);
        // The root's parent (here the init) is its owner if the tree is judged owned at all.
        assert_eq!(owner(&s, &trees[0]).map(|i| s.procs[i].pid), Some(1));
    }

    #[test]
    fn an_unmatched_crashpad_handler_is_its_own_tree() {
        let s = Snapshot::from_procs(
            vec![
                proc_(1, 0, "init", 1),
                fam(
                    proc_(21, 1, "chrome_crashpad", 5000),
                    "crashpad",
                    FamilyKind::Crashpad,
                    "x",
                ),
                chromium(20, 1, 200, "chromium --user-data-dir=/tmp/p1"),
            ],
            MemInfo::default(),
        );
        let ties = tie_by_start_time(&s, &Ties::new(), 200);
        assert!(
            ties.is_empty(),
            "handler started long after the only browser"
        );
        assert_eq!(build_trees(&s, &ties).len(), 2);
    }

    #[test]
    fn subtree_rss_sums_descendants() {
        let s = session();
        let i = s.index_of(10).unwrap();
        // python3 + browser + zygote + gpu + renderer + cat = 6 × 100 MiB
        assert_eq!(subtree_rss(&s, i), 6 * (100 << 20));
    }
}
