//! From snapshots to findings: trees with owners, orphans ("orphaned since"), zombies per parent,
//! and leak verdicts over per-tree and per-family series. The [`Tracker`] holds the little history
//! this needs between scans (who a process's first parent was, since when it is orphaned, the
//! series); everything it derives is an immutable [`Analysis`].
//!
//! How "orphaned" is judged: a family process whose parent is PID 0 (it lives outside our PID
//! namespace, e.g. a container's entrypoint) is owned. One whose parent changed while we watched
//! was reparented: its launcher died, orphaned since the scan (or pidfd event) that saw it. One
//! first seen under an init or subreaper ([`crate::family::REAPERS`]) is orphaned since its own start
//! time — the one-shot `cleanup` and a freshly started sidecar have no history, and the start time
//! is the earliest its launcher can have died. A tree is orphaned when every top-level member is.
//! crashpad handlers are judged with their browser; one without a browser is orphaned since it was
//! first seen alone (since its start, on the first scan).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::detect::leaks::{self, LeakParams, Series, Trend, Verdict};
use crate::enforce::{Facts, ProcFacts, TreeFacts};
use crate::family::{self, Ties, Tree, TreeKey};
use crate::kill::Target;
use crate::policy::{FamilyKind, Policy, Resource};
use crate::proc::ProcFs;
use crate::snapshot::Snapshot;

/// Crashpad handlers start within this long after their browser.
const CRASHPAD_TIE_WINDOW: Duration = Duration::from_secs(2);

/// Leak state of one resource of one tree or family.
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

    /// Tie new crashpad handlers to browsers through the unix sockets they share: the first
    /// handler's client socket peers with a browser socket, the second's with the first handler.
    fn tie_by_socket(&mut self, s: &Snapshot) -> Ties {
        let mut out = Ties::new();
        let kind =
            |p: &crate::snapshot::Proc| p.info.as_deref().map(|i| (i.kind, i.role.is_none()));
        let handlers: Vec<&crate::snapshot::Proc> = s
            .procs
            .iter()
            .filter(|p| kind(p).is_some_and(|k| k.0 == FamilyKind::Crashpad))
            .filter(|p| !self.ties.contains_key(&p.id()))
            .collect();
        if handlers.is_empty() || !self.sock_diag {
            return out;
        }
        let peers = match crate::proc::sockdiag::unix_peers(Duration::from_secs(1)) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "NETLINK_SOCK_DIAG unavailable; tying crashpad handlers by start time");
                self.sock_diag = false;
                return out;
            }
        };
        let mut owner_of: HashMap<u32, (i32, u64)> = HashMap::new();
        for p in &s.procs {
            let Some((k, is_root)) = kind(p) else {
                continue;
            };
            if (k == FamilyKind::Browser && is_root) || k == FamilyKind::Crashpad {
                for (_, ino) in self.fs.socket_inodes(p.pid).unwrap_or_default() {
                    owner_of.insert(ino as u32, p.id());
                }
            }
        }
        let is_handler = |id: &(i32, u64)| handlers.iter().any(|h| h.id() == *id);
        let mut via_handler: Vec<((i32, u64), (i32, u64))> = Vec::new();
        for h in &handlers {
            for (_, ino) in self.fs.socket_inodes(h.pid).unwrap_or_default() {
                let Some(peer) = peers.get(&(ino as u32)) else {
                    continue;
                };
                let Some(&o) = owner_of.get(peer) else {
                    continue;
                };
                if o == h.id() {
                    continue;
                }
                if is_handler(&o) || self.ties.contains_key(&o) {
                    via_handler.push((h.id(), o));
                } else {
                    out.insert(h.id(), o);
                    break;
                }
            }
        }
        for (h, other) in via_handler {
            if out.contains_key(&h) {
                continue;
            }
            if let Some(b) = out.get(&other).or_else(|| self.ties.get(&other)).copied() {
                out.insert(h, b);
            }
        }
        out
    }

    /// Analyse one snapshot (call once per scan, in order).
    pub fn analyze(&mut self, snap: Arc<Snapshot>, policy: &Policy) -> Analysis {
        self.scans += 1;
        let first_scan = self.scans == 1;
        let s = &*snap;
        let now = s.taken_at;
        let t = s
            .taken_instant
            .saturating_duration_since(self.t0)
            .as_secs_f64();
        let live: HashSet<(i32, u64)> = s.procs.iter().map(|p| p.id()).collect();
        self.first_ppid.retain(|k, _| live.contains(k));
        self.orphan_since.retain(|k, _| live.contains(k));
        self.zombie_since.retain(|k, _| live.contains(k));
        self.ties
            .retain(|h, b| live.contains(h) && live.contains(b));

        // crashpad ties: keep known ones, place new handlers by start time.
        let by_socket = self.tie_by_socket(s);
        self.ties.extend(by_socket);
        let window = CRASHPAD_TIE_WINDOW.as_secs() * s.clk_tck;
        let new_ties = family::tie_by_start_time(s, &self.ties, window);
        self.ties.extend(new_ties);
        let trees = family::build_trees(s, &self.ties);

        let init_is_reaper = s.init_comm.as_deref().is_some_and(family::is_reaper_comm);
        let start_time = |age: Duration| now.checked_sub(age).unwrap_or(now);

        // Orphan judgement per top-level member.
        let mut proc_orphan: HashMap<usize, SystemTime> = HashMap::new();
        for tree in &trees {
            for &i in &tree.top {
                let p = &s.procs[i];
                let id = p.id();
                let known = self.first_ppid.contains_key(&id);
                let first = *self.first_ppid.entry(id).or_insert(p.ppid);
                let parent = s.get(p.ppid);
                let orphaned = if p.ppid == 0 || parent.is_none() {
                    false
                } else if known && first != p.ppid {
                    true
                } else if p.ppid == 1 {
                    init_is_reaper
                } else {
                    parent.is_some_and(|q| family::is_reaper_comm(&q.comm))
                };
                if orphaned {
                    let since = *self.orphan_since.entry(id).or_insert_with(|| {
                        if known && first != p.ppid {
                            now
                        } else {
                            start_time(p.age)
                        }
                    });
                    proc_orphan.insert(i, since);
                } else {
                    self.orphan_since.remove(&id);
                }
            }
            if tree.top.is_empty() {
                // crashpad handlers whose browser is gone.
                for &i in &tree.crashpad {
                    let p = &s.procs[i];
                    let since = *self.orphan_since.entry(p.id()).or_insert_with(|| {
                        if first_scan {
                            start_time(p.age)
                        } else {
                            now
                        }
                    });
                    proc_orphan.insert(i, since);
                }
            }
        }

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
            let heads: Vec<usize> = if tree.top.is_empty() {
                tree.crashpad.clone()
            } else {
                tree.top.clone()
            };
            let since = heads
                .iter()
                .map(|i| proc_orphan.get(i).copied())
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max());
            let orphaned_for = since.map(|t| now.duration_since(t).unwrap_or(Duration::ZERO));
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
            let max_fds = maxfd.and_then(|i| s.procs[i].fds).unwrap_or(0);
            let fd_limit = maxfd.and_then(|i| s.procs[i].fd_soft_limit);
            let ser = self.series.entry(tree.key.clone()).or_default();
            ser.seen = scan_no;
            ser.mem.push(t, rss as f64, params.window);
            ser.fds.push(t, max_fds as f64, params.window);
            ser.threads.push(t, threads as f64, params.window);
            let root_info = s.procs[tree.root].info.clone();
            let mem_limit = root_info
                .as_deref()
                .and_then(|i| i.cgroup.as_deref())
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
                    thread_limit(
                        root_info.as_deref().and_then(|i| i.cgroup.as_deref()),
                        &self.cgroup_root,
                        threads,
                        host_threads,
                    ),
                ],
            );
            let pod_uid = root_info.as_deref().and_then(|i| i.pod_uid.clone());
            views.push(TreeView {
                owner_subtree_rss: owner.map(|o| family::subtree_rss(s, o)),
                age: tree.age(s),
                tree,
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

        // Zombies per parent.
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

        // Families.
        let mut families: Vec<FamilyView> = policy
            .families
            .iter()
            .map(|f| FamilyView {
                name: f.name.clone(),
                ..Default::default()
            })
            .collect();
        let mut pods: BTreeMap<(String, String), PodView> = BTreeMap::new();
        let orphan_member: HashMap<usize, Duration> = views
            .iter()
            .filter_map(|v| v.orphaned_for.map(|d| (v, d)))
            .flat_map(|(v, d)| v.tree.members.iter().map(move |&i| (i, d)))
            .collect();
        for (i, p) in s.procs.iter().enumerate() {
            let Some(info) = p.info.as_deref() else {
                continue;
            };
            let Some(f) = families.get_mut(info.family) else {
                continue;
            };
            f.processes += 1;
            f.rss_bytes += p.rss_bytes;
            f.fds += p.fds.unwrap_or(0);
            f.threads += p.threads;
            if let (Some(n), Some(l)) = (p.fds, p.fd_soft_limit) {
                if l > 0 {
                    f.fd_limit_ratio_max = f.fd_limit_ratio_max.max(n as f64 / l as f64);
                }
            }
            let orphan = orphan_member.get(&i);
            if let Some(d) = orphan {
                f.orphans += 1;
                f.oldest_orphan_age_seconds = f.oldest_orphan_age_seconds.max(d.as_secs_f64());
            }
            if let Some(uid) = &info.pod_uid {
                let e = pods
                    .entry((uid.clone(), info.family_name.clone()))
                    .or_default();
                e.processes += 1;
                e.rss_bytes += p.rss_bytes;
                if orphan.is_some() {
                    e.orphans += 1;
                }
            }
        }
        for v in &views {
            let Some(f) = families.iter_mut().find(|f| f.name == v.tree.family) else {
                continue;
            };
            f.trees += 1;
            if v.orphaned_for.is_some() {
                f.orphan_trees += 1;
            }
            for l in &v.leaks {
                let r = l.resource.as_str();
                let e = f.leak_suspects.entry(r).or_default();
                if l.verdict.trend == Trend::Growing {
                    *e += 1;
                    if let Some(ttl) = l.time_to_limit {
                        let x = f.time_to_limit_seconds.entry(r).or_insert(f64::INFINITY);
                        *x = x.min(ttl.as_secs_f64());
                    }
                }
            }
        }
        for f in &mut families {
            let ser = self.family_series.entry(f.name.clone()).or_default();
            ser.seen = scan_no;
            ser.mem.push(t, f.rss_bytes as f64, params.window);
            ser.fds.push(t, f.fds as f64, params.window);
            ser.threads.push(t, f.threads as f64, params.window);
            for r in Resource::ALL {
                let series = match r {
                    Resource::Memory => &ser.mem,
                    Resource::Fds => &ser.fds,
                    Resource::Threads => &ser.threads,
                };
                let samples: Vec<(f64, f64)> = series.samples().collect();
                let verdict = leaks::analyze(&samples, &params);
                f.growing
                    .insert(r.as_str(), verdict.trend == Trend::Growing);
                f.leak_suspects.entry(r.as_str()).or_default();
            }
        }
        self.family_series.retain(|_, v| v.seen == scan_no);

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

    /// Test hook: use another cgroup root.
    pub fn with_cgroup_root(mut self, root: PathBuf) -> Self {
        self.cgroup_root = root;
        self
    }
}

/// The ceiling a tree's threads grow towards: its cgroup's `pids.max` (tasks, i.e. threads), else
/// the kernel's `threads-max`; as headroom over what everything else uses now.
fn thread_limit(
    cgroup: Option<&str>,
    cgroup_root: &std::path::Path,
    tree_threads: u64,
    host_threads: u64,
) -> Option<(f64, &'static str)> {
    let read = |p: std::path::PathBuf| -> Option<u64> {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    if let Some(cg) = cgroup {
        let dir = cgroup_root.join(cg.trim_start_matches('/'));
        if let (Some(max), Some(cur)) = (read(dir.join("pids.max")), read(dir.join("pids.current")))
        {
            return Some((
                (tree_threads + max.saturating_sub(cur)) as f64,
                "cgroup pids.max",
            ));
        }
    }
    let max = read(std::path::PathBuf::from("/proc/sys/kernel/threads-max"))?;
    Some((
        (tree_threads + max.saturating_sub(host_threads)) as f64,
        "kernel.threads-max",
    ))
}

fn leak_views(
    ser: &mut TreeSeries,
    params: &LeakParams,
    now: Instant,
    limits: [Option<(f64, &'static str)>; 3],
) -> Vec<LeakView> {
    let mut out = Vec::with_capacity(3);
    for r in Resource::ALL {
        let k = res_index(r);
        let series = match r {
            Resource::Memory => &ser.mem,
            Resource::Fds => &ser.fds,
            Resource::Threads => &ser.threads,
        };
        let samples: Vec<(f64, f64)> = series.samples().collect();
        let verdict = leaks::analyze(&samples, params);
        let growing = verdict.trend == Trend::Growing;
        if growing {
            ser.growing_since[k].get_or_insert(now);
        } else {
            ser.growing_since[k] = None;
        }
        let (limit, source) = match limits[k] {
            Some((l, s)) => (Some(l), Some(s)),
            None => (None, None),
        };
        let time_to_limit = if growing {
            limit.and_then(|l| leaks::time_to_limit(verdict.current, verdict.slope_per_second, l))
        } else {
            None
        };
        out.push(LeakView {
            resource: r,
            verdict,
            growing_for: ser.growing_since[k].map(|s| now.saturating_duration_since(s)),
            time_to_limit,
            limit,
            limit_source: source,
        });
    }
    out
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn target(s: &Snapshot, i: usize) -> Target {
    let p = &s.procs[i];
    Target {
        pid: p.pid,
        start_ticks: p.start_ticks,
        comm: p.comm.clone(),
        family: p.family().map(str::to_string),
    }
}

impl Analysis {
    /// Flatten for rule evaluation ([`crate::enforce::evaluate`]).
    pub fn facts(&self) -> Facts {
        let s = &*self.snapshot;
        let mut tree_of: HashMap<usize, usize> = HashMap::new();
        let mut trees = Vec::with_capacity(self.trees.len());
        for (ti, v) in self.trees.iter().enumerate() {
            for &m in &v.tree.members {
                tree_of.insert(m, ti);
            }
            let mut members: Vec<Target> = v.tree.members.iter().map(|&i| target(s, i)).collect();
            members.extend(v.tree.extra.iter().map(|&i| target(s, i)));
            trees.push(TreeFacts {
                family: v.tree.family.clone(),
                members,
                families: v.tree.families.iter().cloned().collect(),
                profile_dir: v.tree.profile_dir.clone(),
                age: v.age,
                orphaned_for: v.orphaned_for,
                rss_bytes: v.rss_bytes,
                fds: v.fds,
                growing_for: growing_map(&v.leaks),
            });
        }
        let zombies: HashMap<usize, &ZombieParent> =
            self.zombie_parents.iter().map(|z| (z.parent, z)).collect();
        let mut processes = Vec::new();
        for (i, p) in s.procs.iter().enumerate() {
            let z = zombies.get(&i);
            if p.info.is_none() && z.is_none() {
                continue;
            }
            let ti = tree_of.get(&i).copied();
            let tv = ti.and_then(|t| self.trees.get(t));
            let info = p.info.as_deref();
            processes.push(ProcFacts {
                target: target(s, i),
                family: info.map(|x| x.family_name.clone()).unwrap_or_default(),
                role: info.and_then(|x| x.role.clone()),
                comm: p.comm.clone(),
                exe: info.and_then(|x| x.exe.clone()),
                cmdline: info.map(|x| x.cmdline.clone()),
                uid: p.uid,
                age: p.age,
                orphaned_for: tv.and_then(|t| t.orphaned_for),
                rss_bytes: p.rss_bytes,
                fds: p.fds.unwrap_or(0),
                fd_soft_limit: p.fd_soft_limit,
                threads: p.threads,
                zombie_children: z.map(|z| z.zombies).unwrap_or(0),
                zombies_for: z.map(|z| z.for_),
                growing_for: tv.map(|t| growing_map(&t.leaks)).unwrap_or_default(),
                tree: ti,
            });
        }
        Facts { processes, trees }
    }

    /// Number of family processes that are members of orphaned trees.
    pub fn orphan_processes(&self) -> u64 {
        self.families.iter().map(|f| f.orphans).sum()
    }
}

fn growing_map(leaks: &[LeakView]) -> HashMap<Resource, Duration> {
    leaks
        .iter()
        .filter_map(|l| l.growing_for.map(|d| (l.resource, d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::testutil::*;
    use crate::policy;
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
