//! `leakwarden scan` output: one analysis as JSON for scripts or as tables for people. Process
//! names are printed sanitized (control characters as `?`): a hostile `comm` cannot forge lines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::{Analysis, FamilyView, LeakView};
use crate::cleanup::{sanitize, StaleDir};
use crate::detect::leaks::Trend;
use crate::detect::orphans::Why;
use crate::family::TreeKey;
use crate::policy::units::{format_duration, format_size};

#[derive(Debug, Serialize)]
pub struct ScanReport {
    pub taken_at_unix: f64,
    pub scan_seconds: f64,
    pub processes_scanned: usize,
    pub skipped: std::collections::BTreeMap<&'static str, u64>,
    pub families: Vec<FamilyView>,
    pub trees: Vec<TreeOut>,
    pub orphans: Vec<ProcOut>,
    pub zombies_total: u64,
    pub zombie_parents: Vec<ZombieOut>,
    pub leak_suspects: Vec<SuspectOut>,
    pub stale_dirs: Vec<StaleDir>,
}

#[derive(Debug, Serialize)]
pub struct ProcOut {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub family: Option<String>,
    pub role: Option<String>,
    pub rss_bytes: u64,
    pub fds: Option<u64>,
    pub threads: u64,
    pub age_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphaned_for_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct OwnerOut {
    pub pid: i32,
    pub comm: String,
    pub cmdline: Option<String>,
    pub subtree_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TreeOut {
    pub key: TreeKey,
    pub family: String,
    pub families: Vec<String>,
    pub profile_dir: Option<String>,
    pub root_pid: i32,
    pub processes: usize,
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
    pub age_seconds: f64,
    pub orphaned: bool,
    pub orphaned_for_seconds: Option<f64>,
    /// Why it is owned or orphaned (`payload`, `launcher_alive`, `adopted_by_init`, …).
    pub why: Why,
    /// The same, for people.
    pub why_text: &'static str,
    pub owner: Option<OwnerOut>,
    pub pod_uid: Option<String>,
    pub members: Vec<ProcOut>,
    pub leaks: Vec<LeakView>,
}

#[derive(Debug, Serialize)]
pub struct ZombieOut {
    pub parent_pid: i32,
    pub parent_comm: String,
    pub zombies: u32,
    pub for_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct SuspectOut {
    pub family: String,
    pub root_pid: i32,
    pub root_comm: String,
    pub resource: &'static str,
    pub current: f64,
    pub slope_per_hour: f64,
    pub growing_for_seconds: Option<f64>,
    pub time_to_limit_seconds: Option<f64>,
    pub limit_source: Option<&'static str>,
}

impl ScanReport {
    pub fn new(a: &Analysis, stale_dirs: Vec<StaleDir>) -> Self {
        let s = &a.snapshot;
        let proc_out = |i: usize, orphaned: Option<std::time::Duration>| {
            let p = &s.procs[i];
            ProcOut {
                pid: p.pid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                family: p.family().map(str::to_string),
                role: p.info.as_deref().and_then(|x| x.role.clone()),
                rss_bytes: p.rss_bytes,
                fds: p.fds,
                threads: p.threads,
                age_seconds: p.age.as_secs_f64(),
                orphaned_for_seconds: orphaned.map(|d| d.as_secs_f64()),
            }
        };
        let mut trees = Vec::new();
        let mut orphans = Vec::new();
        let mut suspects = Vec::new();
        for v in &a.trees {
            let t = &v.tree;
            if let Some(d) = v.orphaned_for {
                orphans.extend(t.members.iter().map(|&i| proc_out(i, Some(d))));
            }
            let root = &s.procs[t.root];
            for l in &v.leaks {
                if l.verdict.trend == Trend::Growing {
                    suspects.push(SuspectOut {
                        family: t.family.clone(),
                        root_pid: root.pid,
                        root_comm: root.comm.clone(),
                        resource: l.resource.as_str(),
                        current: l.verdict.current,
                        slope_per_hour: l.verdict.slope_per_second * 3600.0,
                        growing_for_seconds: l.growing_for.map(|d| d.as_secs_f64()),
                        time_to_limit_seconds: l.time_to_limit.map(|d| d.as_secs_f64()),
                        limit_source: l.limit_source,
                    });
                }
            }
            trees.push(TreeOut {
                key: t.key.clone(),
                family: t.family.clone(),
                families: t.families.iter().cloned().collect(),
                profile_dir: t.profile_dir.as_ref().map(|p| p.display().to_string()),
                root_pid: root.pid,
                processes: t.members.len(),
                rss_bytes: v.rss_bytes,
                fds: v.fds,
                threads: v.threads,
                age_seconds: v.age.as_secs_f64(),
                orphaned: v.orphaned_for.is_some(),
                orphaned_for_seconds: v.orphaned_for.map(|d| d.as_secs_f64()),
                why: v.why,
                why_text: v.why.text(),
                owner: v.owner.map(|o| {
                    let op = &s.procs[o];
                    OwnerOut {
                        pid: op.pid,
                        comm: op.comm.clone(),
                        cmdline: op.info.as_deref().map(|i| i.cmdline.clone()),
                        subtree_rss_bytes: v.owner_subtree_rss.unwrap_or(0),
                    }
                }),
                pod_uid: v.pod_uid.clone(),
                members: t.members.iter().map(|&i| proc_out(i, None)).collect(),
                leaks: v.leaks.clone(),
            });
        }
        ScanReport {
            taken_at_unix: s
                .taken_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            scan_seconds: s.duration.as_secs_f64(),
            processes_scanned: s.procs.len(),
            skipped: s.skipped.by_reason().into_iter().collect(),
            families: a.families.clone(),
            trees,
            orphans,
            zombies_total: a.zombies_total,
            zombie_parents: a
                .zombie_parents
                .iter()
                .map(|z| ZombieOut {
                    parent_pid: s.procs[z.parent].pid,
                    parent_comm: s.procs[z.parent].comm.clone(),
                    zombies: z.zombies,
                    for_seconds: z.for_.as_secs_f64(),
                })
                .collect(),
            leak_suspects: suspects,
            stale_dirs,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            + "\n"
    }

    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scanned {} processes in {:.1} ms",
            self.processes_scanned,
            self.scan_seconds * 1000.0
        );
        let mut rows = vec![vec![
            "FAMILY".to_string(),
            "PROCS".into(),
            "TREES".into(),
            "ORPHANS".into(),
            "RSS".into(),
            "FDS".into(),
            "THREADS".into(),
        ]];
        for f in &self.families {
            rows.push(vec![
                f.name.clone(),
                f.processes.to_string(),
                f.trees.to_string(),
                f.orphans.to_string(),
                format_size(f.rss_bytes),
                f.fds.to_string(),
                f.threads.to_string(),
            ]);
        }
        table(&mut o, &rows);
        o.push('\n');
        if self.trees.is_empty() {
            o.push_str("no trees\n");
        } else {
            let mut rows = vec![vec![
                "TREE".to_string(),
                "ROOT".into(),
                "PROCS".into(),
                "RSS".into(),
                "FDS".into(),
                "AGE".into(),
                "STATUS".into(),
                "OWNER".into(),
            ]];
            for t in &self.trees {
                let what = t
                    .profile_dir
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", t.family, t.root_pid));
                rows.push(vec![
                    sanitize(&what),
                    t.root_pid.to_string(),
                    t.processes.to_string(),
                    format_size(t.rss_bytes),
                    t.fds.to_string(),
                    secs(t.age_seconds),
                    match t.orphaned_for_seconds {
                        Some(d) => format!("ORPHANED {}", secs(d)),
                        None => match t.why {
                            Why::Payload => "owned (init payload)".into(),
                            Why::ContainerProcess => "owned (container)".into(),
                            Why::UnitMainProcess => "owned (service)".into(),
                            Why::ParentOutside => "owned (outside)".into(),
                            Why::CrashpadClientAlive => "owned (app)".into(),
                            Why::CrashpadUnknown => "owned (unknown)".into(),
                            _ => "owned".into(),
                        },
                    },
                    t.owner
                        .as_ref()
                        .map(|o| {
                            format!(
                                "{} {} (subtree {})",
                                o.pid,
                                sanitize(&o.comm),
                                format_size(o.subtree_rss_bytes)
                            )
                        })
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            table(&mut o, &rows);
        }
        o.push('\n');
        let _ = writeln!(
            o,
            "orphans: {}   zombies: {}   leak suspects: {}   stale dirs: {}",
            self.orphans.len(),
            self.zombies_total,
            self.leak_suspects.len(),
            self.stale_dirs.len()
        );
        if !self.zombie_parents.is_empty() {
            let mut rows = vec![vec![
                "ZOMBIE PARENT".to_string(),
                "PID".into(),
                "ZOMBIES".into(),
                "FOR".into(),
            ]];
            for z in &self.zombie_parents {
                rows.push(vec![
                    sanitize(&z.parent_comm),
                    z.parent_pid.to_string(),
                    z.zombies.to_string(),
                    secs(z.for_seconds),
                ]);
            }
            table(&mut o, &rows);
        }
        if !self.leak_suspects.is_empty() {
            let mut rows = vec![vec![
                "LEAK SUSPECT".to_string(),
                "PID".into(),
                "RESOURCE".into(),
                "NOW".into(),
                "SLOPE/h".into(),
                "TIME TO LIMIT".into(),
            ]];
            for l in &self.leak_suspects {
                rows.push(vec![
                    format!("{} {}", l.family, sanitize(&l.root_comm)),
                    l.root_pid.to_string(),
                    l.resource.to_string(),
                    format!("{:.0}", l.current),
                    format!("{:+.0}", l.slope_per_hour),
                    l.time_to_limit_seconds
                        .map(|t| format!("{} ({})", secs(t), l.limit_source.unwrap_or("")))
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            table(&mut o, &rows);
        }
        for d in &self.stale_dirs {
            let _ = writeln!(
                o,
                "stale: {} (unmodified {}s)",
                sanitize(&d.path.display().to_string()),
                d.age_seconds
            );
        }
        o
    }
}

fn secs(s: f64) -> String {
    format_duration(std::time::Duration::from_secs_f64(s.max(0.0).round()))
}

fn table(o: &mut String, rows: &[Vec<String>]) {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|x| x.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{:<w$}  ", cell, w = widths[c]);
            }
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
}
