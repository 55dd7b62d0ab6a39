//! An analysis flattened for rule evaluation ([`crate::enforce::evaluate`]).

use std::collections::HashMap;
use std::time::Duration;

use super::{Analysis, LeakView, ZombieParent};
use crate::enforce::{Facts, ProcFacts, TreeFacts};
use crate::kill::Target;
use crate::policy::Resource;
use crate::snapshot::Snapshot;

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
                role: s.procs[v.tree.root]
                    .info
                    .as_deref()
                    .and_then(|i| i.role.clone()),
                profile_dir: v.tree.profile_dir.clone(),
                profile_pid: v.tree.profile_dir.as_ref().and_then(|d| {
                    v.tree.members.iter().map(|&i| &s.procs[i]).find_map(|p| {
                        let named = p.info.as_deref()?.user_data_dir.as_ref()? == d;
                        (named && !p.is_zombie()).then_some(p.pid)
                    })
                }),
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
                fds: p.fds,
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
