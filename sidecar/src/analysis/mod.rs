//! From snapshots to findings: trees with owners, orphans ("orphaned since"), zombies per parent,
//! and leak verdicts over per-tree and per-family series. The [`Tracker`] holds the little history
//! this needs between scans (who a process's first parent was, since when it is orphaned, which
//! crashpad handler belongs to which browser, the series); everything it derives is an
//! immutable [`Analysis`].
//!
//! How "orphaned" is judged: a top-level process of a tree whose parent changed while we watched
//! was reparented — its launcher died — orphaned since the scan (or pidfd event) that saw it.
//! Otherwise the snapshot alone decides ([`crate::detect::orphans`]: a live launcher, an init's
//! payload, a container's process or a service's main process is owned; what an init adopted, or
//! whose group or session leader is gone, is orphaned since its own start — the earliest its
//! launcher can have died). A tree is orphaned when every top-level member is. crashpad handlers
//! are judged with their browser ([`crashpad`]).

mod crashpad;
mod facts;
mod families;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::detect::leaks::{LeakParams, Series, Verdict};
use crate::detect::orphans::{self, Client, Why};
use crate::family::{self, Ties, Tree, TreeKey};
use crate::policy::{Policy, Resource};
use crate::proc::ProcFs;
use crate::snapshot::Snapshot;

use views::{leak_views, ser_opt_secs, thread_limit};

/// Crashpad handlers start within this long after their browser.
const CRASHPAD_TIE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct LeakView {
    pub resource: Resource,
    pub verdict: Verdict,
    /// How long the verdict has been "growing".
    #[serde(serialize_with = "ser_opt_secs")]
    pub growing_for: Option<Duration>,
    /// Projected time until the limit is reached at the fitted slope.
    #[serde(serialize_with = "ser_opt_secs")]
    pub time_to_limit: Option<Duration>,
    pub limit: Option<f64>,
    /// What the limit is (`cgroup memory.max`, `host memory`, `RLIMIT_NOFILE`).
    pub limit_source: Option<&'static str>,
}

/// One tree and what is known about it.
#[derive(Debug, Clone)]
pub struct TreeView {
    pub tree: Tree,
    /// Why it is owned or orphaned (the judgement of its heads; see [`crate::detect::orphans`]).
    pub why: Why,
    pub owner: Option<usize>,
    pub owner_subtree_rss: Option<u64>,
    pub orphaned_for: Option<Duration>,
    pub age: Duration,
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
    pub leaks: Vec<LeakView>,
    pub pod_uid: Option<String>,
}

/// A process with unreaped zombie children.
#[derive(Debug, Clone)]
pub struct ZombieParent {
    pub parent: usize,
    pub zombies: u32,
    pub for_: Duration,
}

/// Per-family totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FamilyView {
    pub name: String,
    pub processes: u64,
    pub orphans: u64,
    pub trees: u64,
    pub orphan_trees: u64,
    pub rss_bytes: u64,
    pub fds: u64,
    /// Processes whose FD count could not be read (not in `fds`).
    pub fds_unknown: u64,
    pub threads: u64,
    pub oldest_orphan_age_seconds: f64,
    pub fd_limit_ratio_max: f64,
    /// Growing trees per resource.
    pub leak_suspects: BTreeMap<&'static str, u64>,
    /// Shortest projected time to limit among growing trees, per resource (seconds).
    pub time_to_limit_seconds: BTreeMap<&'static str, f64>,
    /// The family's totals themselves growing, per resource.
    pub growing: BTreeMap<&'static str, bool>,
}

/// Per-pod totals (DaemonSet mode).
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub processes: u64,
    pub orphans: u64,
    pub rss_bytes: u64,
}

/// Everything one scan found.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub snapshot: Arc<Snapshot>,
    pub trees: Vec<TreeView>,
    pub zombie_parents: Vec<ZombieParent>,
    pub zombies_total: u64,
    pub families: Vec<FamilyView>,
    pub pods: BTreeMap<(String, String), PodView>,
    /// Owners of trees that are not orphaned: watched with pidfds between scans.
    pub owners: Vec<(i32, u64)>,
}

#[derive(Debug, Default)]
struct TreeSeries {
    mem: Series,
    fds: Series,
    threads: Series,
    growing_since: [Option<Instant>; 3],
    seen: u64,
}

/// History kept between scans.
#[derive(Debug)]
pub struct Tracker {
    t0: Instant,
    scans: u64,
    first_ppid: HashMap<(i32, u64), i32>,
    orphan_since: HashMap<(i32, u64), SystemTime>,
    zombie_since: HashMap<(i32, u64), SystemTime>,
    ties: Ties,
    /// Handlers that were tied to a browser at some scan (alone later: their browser is gone).
    ever_tied: HashSet<(i32, u64)>,
    /// Untied handlers: when their sockets were last looked at, and what their client is.
    socket_tried: HashMap<(i32, u64), Instant>,
    clients: HashMap<(i32, u64), Client>,
    series: HashMap<TreeKey, TreeSeries>,
    family_series: HashMap<String, TreeSeries>,
    cgroup_root: PathBuf,
    fs: ProcFs,
    /// NETLINK_SOCK_DIAG answered (it does not in another network namespace's view).
    sock_diag: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

fn res_index(r: Resource) -> usize {
    match r {
        Resource::Memory => 0,
        Resource::Fds => 1,
        Resource::Threads => 2,
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            t0: Instant::now(),
            scans: 0,
            first_ppid: HashMap::new(),
            orphan_since: HashMap::new(),
            zombie_since: HashMap::new(),
            ties: Ties::new(),
            ever_tied: HashSet::new(),
            socket_tried: HashMap::new(),
            clients: HashMap::new(),
            series: HashMap::new(),
            family_series: HashMap::new(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            fs: ProcFs::new("/proc"),
            sock_diag: true,
        }
    }

    /// Read sockets under another /proc root (the scanner's).
    pub fn with_proc_root(mut self, root: &std::path::Path) -> Self {
        self.fs = ProcFs::new(root);
        self
    }

    /// Test hook: use another cgroup root.
    pub fn with_cgroup_root(mut self, root: PathBuf) -> Self {
        self.cgroup_root = root;
        self
    }

    /// Analyse one snapshot (call once per scan, in order).
    pub fn analyze(&mut self, snap: Arc<Snapshot>, policy: &Policy) -> Analysis {
        self.scans += 1;
        let s = &*snap;
        let now = s.taken_at;
        let t = s
            .taken_instant
            .saturating_duration_since(self.t0)
            .as_secs_f64();
        self.prune(s);

        // crashpad ties: keep known ones, place new handlers by socket, then by start time.
        let by_socket = self.crashpad_sockets(s);
        self.ties.extend(by_socket);
        let window = CRASHPAD_TIE_WINDOW.as_secs() * s.clk_tck;
        let new_ties = family::tie_by_start_time(s, &self.ties, window);
        self.ties.extend(new_ties);
        self.ever_tied.extend(self.ties.keys().copied());
        let trees = family::build_trees(s, &self.ties);

        let judged = self.judge(s, &trees, now);

        // Leak series and views per tree.
        let params = LeakParams {
            window: policy.leak.window.0,
            min_samples: policy.leak.min_samples,
            alpha: policy.leak.alpha,
            min_relative_slope_per_hour: policy.leak.min_relative_slope_per_hour,
        };
        let scan_no = self.scans;
        let host_threads: u64 = s.procs.iter().map(|p| p.threads).sum();
        let mut views = Vec::with_capacity(trees.len());
        let mut owners = Vec::new();
        for tree in trees {
            let heads: &[usize] = if tree.top.is_empty() {
                &tree.crashpad
            } else {
                &tree.top
            };
            // Orphaned when every head is; since the latest of their orphan times.
            let mut since: Option<SystemTime> = None;
            let mut why = None;
            let mut all_orphaned = !heads.is_empty();
            for i in heads {
                match judged.get(i) {
                    Some((w, Some(t))) => {
                        if since.is_none_or(|x| *t >= x) {
                            since = Some(*t);
                            why = Some(*w);
                        }
                    }
                    Some((w, None)) => {
                        all_orphaned = false;
                        why.get_or_insert(*w);
                        if !w.orphaned() {
                            why = Some(*w);
                        }
                    }
                    None => all_orphaned = false,
                }
            }
            let orphaned_for = if all_orphaned {
                since.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
            } else {
                None
            };
            let why = match (orphaned_for, why) {
                (Some(_), Some(w)) => w,
                (None, Some(w)) if !w.orphaned() => w,
                _ => Why::LauncherAlive,
            };
            let owner = if orphaned_for.is_none() {
                family::owner(s, &tree)
            } else {
                None
            };
            if let Some(o) = owner {
                owners.push(s.procs[o].id());
            }
            let rss = tree.rss_bytes(s);
            let fds = tree.fds(s);
            let threads = tree.threads(s);
            let maxfd = tree.max_fd_member(s);
            let max_fds = maxfd.and_then(|i| s.procs[i].fds);
            let fd_limit = maxfd.and_then(|i| s.procs[i].fd_soft_limit);
            let ser = self.series.entry(tree.key.clone()).or_default();
            ser.seen = scan_no;
            ser.mem.push(t, rss as f64, params.window);
            // An unknown FD count is no sample (it is not 0).
            if let Some(n) = max_fds {
                ser.fds.push(t, n as f64, params.window);
            }
            ser.threads.push(t, threads as f64, params.window);
            let root_info = s.procs[tree.root].info.clone();
            let cgroup = root_info.as_deref().and_then(|i| i.cgroup.as_deref());
            let mem_limit = cgroup
                .and_then(|cg| crate::proc::cgroup_memory(&self.cgroup_root, cg))
                .map(|(max, cur)| {
                    (
                        rss as f64 + max.saturating_sub(cur) as f64,
                        "cgroup memory.max",
                    )
                })
                .or_else(|| {
                    (s.mem.available > 0)
                        .then_some((rss as f64 + s.mem.available as f64, "host memory"))
                });
            let leaks_v = leak_views(
                ser,
                &params,
                s.taken_instant,
                [
                    mem_limit,
                    fd_limit.map(|l| (l as f64, "RLIMIT_NOFILE")),
                    thread_limit(cgroup, &self.cgroup_root, threads, host_threads),
                ],
            );
            let pod_uid = root_info.as_deref().and_then(|i| i.pod_uid.clone());
            views.push(TreeView {
                owner_subtree_rss: owner.map(|o| family::subtree_rss(s, o)),
                age: tree.age(s),
                tree,
                why,
                owner,
                orphaned_for,
                rss_bytes: rss,
                fds,
                threads,
                leaks: leaks_v,
                pod_uid,
            });
        }
        self.series.retain(|_, v| v.seen == scan_no);

        let (zombie_parents, zombies_total) = self.zombies(s, now);
        let (families, pods) = self.families(s, policy, &views, &params, t);

        Analysis {
            snapshot: snap.clone(),
            trees: views,
            zombie_parents,
            zombies_total,
            families,
            pods,
            owners,
        }
    }

    /// Forget whatever is about processes that are gone.
    fn prune(&mut self, s: &Snapshot) {
        let live: HashSet<(i32, u64)> = s.procs.iter().map(|p| p.id()).collect();
        self.first_ppid.retain(|k, _| live.contains(k));
        self.orphan_since.retain(|k, _| live.contains(k));
        self.zombie_since.retain(|k, _| live.contains(k));
        self.ever_tied.retain(|k| live.contains(k));
        self.socket_tried.retain(|k, _| live.contains(k));
        self.clients.retain(|k, _| live.contains(k));
        self.ties
            .retain(|h, b| live.contains(h) && live.contains(b));
    }

    /// Judge every tree's heads: (why, orphaned since) per process index.
    fn judge(
        &mut self,
        s: &Snapshot,
        trees: &[Tree],
        now: SystemTime,
    ) -> HashMap<usize, (Why, Option<SystemTime>)> {
        let start_time = |age: Duration| now.checked_sub(age).unwrap_or(now);
        let mut out = HashMap::new();
        for tree in trees {
            for &i in &tree.top {
                let p = &s.procs[i];
                let id = p.id();
                let known = self.first_ppid.contains_key(&id);
                let first = *self.first_ppid.entry(id).or_insert(p.ppid);
                let why = if known && first != p.ppid {
                    Why::Reparented
                } else {
                    orphans::judge(s, p)
                };
                let since = if why.orphaned() {
                    Some(*self.orphan_since.entry(id).or_insert_with(|| {
                        if why == Why::Reparented {
                            now
                        } else {
                            start_time(p.age)
                        }
                    }))
                } else {
                    self.orphan_since.remove(&id);
                    None
                };
                out.insert(i, (why, since));
            }
            if tree.top.is_empty() {
                // crashpad handlers without a browser in the tree.
                for &i in &tree.crashpad {
                    let p = &s.procs[i];
                    let id = p.id();
                    let why = if self.ever_tied.contains(&id) {
                        Why::CrashpadBrowserGone
                    } else {
                        match self.clients.get(&id) {
                            Some(Client::Alive) => Why::CrashpadClientAlive,
                            Some(Client::Gone) => Why::CrashpadClientGone,
                            _ => Why::CrashpadUnknown,
                        }
                    };
                    let since = if why.orphaned() {
                        Some(*self.orphan_since.entry(id).or_insert_with(|| {
                            if why == Why::CrashpadBrowserGone {
                                now
                            } else {
                                start_time(p.age)
                            }
                        }))
                    } else {
                        self.orphan_since.remove(&id);
                        None
                    };
                    out.insert(i, (why, since));
                }
            }
        }
        out
    }

    /// Zombies per parent, and how long each parent has had them.
    fn zombies(&mut self, s: &Snapshot, now: SystemTime) -> (Vec<ZombieParent>, u64) {
        let mut zcount: HashMap<i32, u32> = HashMap::new();
        for p in &s.procs {
            if p.is_zombie() {
                *zcount.entry(p.ppid).or_default() += 1;
            }
        }
        let zombies_total = zcount.values().map(|&n| n as u64).sum();
        let mut zombie_parents = Vec::new();
        let mut zparents: HashSet<(i32, u64)> = HashSet::new();
        for (ppid, n) in zcount {
            if let Some(pi) = s.index_of(ppid) {
                let id = s.procs[pi].id();
                zparents.insert(id);
                let since = *self.zombie_since.entry(id).or_insert(now);
                zombie_parents.push(ZombieParent {
                    parent: pi,
                    zombies: n,
                    for_: now.duration_since(since).unwrap_or_default(),
                });
            }
        }
        self.zombie_since.retain(|k, _| zparents.contains(k));
        zombie_parents.sort_by_key(|z| std::cmp::Reverse(z.zombies));
        (zombie_parents, zombies_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::testutil::*;
    use crate::policy::{self, FamilyKind};
    use crate::proc::MemInfo;

    fn chromium(pid: i32, ppid: i32, start: u64, args: &str) -> crate::snapshot::Proc {
        fam(
            proc_(pid, ppid, "chromium", start),
            "chromium",
            FamilyKind::Browser,
            args,
        )
    }

    fn snap(procs: Vec<crate::snapshot::Proc>) -> Arc<Snapshot> {
        Arc::new(Snapshot::from_procs(
            procs,
            MemInfo {
                total: 8 << 30,
                available: 4 << 30,
            },
        ))
    }

    #[test]
    fn launcher_death_is_seen_as_reparenting() {
        let p = policy::builtin();
        let mut tr = Tracker::new();
        let a = tr.analyze(
            snap(vec![
                proc_(1, 0, "bash", 1),
                proc_(10, 1, "python3", 100),
                chromium(20, 10, 200, "chromium --user-data-dir=/tmp/p1"),
                chromium(
                    21,
                    20,
                    201,
                    "chromium --type=renderer --user-data-dir=/tmp/p1",
                ),
            ]),
            &p,
        );
        assert_eq!(a.trees.len(), 1);
        assert!(a.trees[0].orphaned_for.is_none());
        assert_eq!(a.owners, [(10, 100)]);
        // The launcher is SIGKILLed; the browser now hangs off PID 1 (here a shell, not a
        // known init: only the observed change of parent tells).
        let b = tr.analyze(
            snap(vec![
                proc_(1, 0, "bash", 1),
                chromium(20, 1, 200, "chromium --user-data-dir=/tmp/p1"),
                chromium(
                    21,
                    20,
                    201,
                    "chromium --type=renderer --user-data-dir=/tmp/p1",
                ),
            ]),
            &p,
        );
        assert!(b.trees[0].orphaned_for.is_some());
        assert_eq!(b.families[0].orphans, 2);
        assert_eq!(b.families[0].orphan_trees, 1);
        let f = b.facts();
        assert_eq!(f.trees[0].members.len(), 2);
    }

    #[test]
    fn a_browser_launched_by_a_non_init_pid1_is_owned_and_under_an_init_is_orphaned() {
        let p = policy::builtin();
        let a = Tracker::new().analyze(
            snap(vec![
                proc_(1, 0, "node", 1),
                chromium(20, 1, 200, "chromium --user-data-dir=/tmp/p1"),
            ]),
            &p,
        );
        assert!(a.trees[0].orphaned_for.is_none());
        let b = Tracker::new().analyze(
            snap(vec![
                proc_(1, 0, "pause", 1),
                chromium(20, 1, 200, "chromium --user-data-dir=/tmp/p1"),
            ]),
            &p,
        );
        // No history: orphaned since its start (age 100 s in the fixture).
        let d = b.trees[0].orphaned_for.expect("orphaned");
        assert!(d >= Duration::from_secs(99), "{d:?}");
    }

    #[test]
    fn ppid_zero_is_an_entrypoint_not_an_orphan() {
        let a = Tracker::new().analyze(
            snap(vec![chromium(
                20,
                0,
                200,
                "chromium --user-data-dir=/tmp/p1",
            )]),
            &policy::builtin(),
        );
        assert!(a.trees[0].orphaned_for.is_none());
    }

    #[test]
    fn zombies_are_counted_per_parent() {
        let mut z1 = proc_(11, 10, "true", 110);
        z1.state = 'Z';
        let mut z2 = proc_(12, 10, "true", 111);
        z2.state = 'Z';
        let a = Tracker::new().analyze(
            snap(vec![
                proc_(1, 0, "init", 1),
                proc_(10, 1, "bad-parent", 100),
                z1,
                z2,
            ]),
            &policy::builtin(),
        );
        assert_eq!(a.zombies_total, 2);
        assert_eq!(a.zombie_parents.len(), 1);
        assert_eq!(a.zombie_parents[0].zombies, 2);
        let f = a.facts();
        assert_eq!(
            f.processes.len(),
            1,
            "the non-family zombie parent is judged too"
        );
        assert_eq!(f.processes[0].zombie_children, 2);
    }
}
