//! Per-family and per-pod totals of one scan, and the families' own leak series.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{FamilyView, PodView, Tracker, TreeView};
use crate::detect::leaks::{self, LeakParams, Trend};
use crate::policy::{Policy, Resource};
use crate::snapshot::Snapshot;

impl Tracker {
    pub(super) fn families(
        &mut self,
        s: &Snapshot,
        policy: &Policy,
        views: &[TreeView],
        params: &LeakParams,
        t: f64,
    ) -> (Vec<FamilyView>, BTreeMap<(String, String), PodView>) {
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
            match p.fds {
                Some(n) => f.fds += n,
                None => f.fds_unknown += 1,
            }
            f.threads += p.threads;
            if let Some(r) = crate::snapshot::fd_ratio(p.fds, p.fd_soft_limit) {
                f.fd_limit_ratio_max = f.fd_limit_ratio_max.max(r);
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
        let index: HashMap<String, usize> = families
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        for v in views {
            let Some(&fi) = index.get(&v.tree.family) else {
                continue;
            };
            let f = &mut families[fi];
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
        let scan_no = self.scans;
        for f in &mut families {
            let ser = self.family_series.entry(f.name.clone()).or_default();
            ser.seen = scan_no;
            ser.mem.push(t, f.rss_bytes as f64, params.window);
            // Unknown FD counts make the family's total unknown: no sample.
            if f.fds_unknown == 0 {
                ser.fds.push(t, f.fds as f64, params.window);
            }
            ser.threads.push(t, f.threads as f64, params.window);
            for r in Resource::ALL {
                let series = match r {
                    Resource::Memory => &ser.mem,
                    Resource::Fds => &ser.fds,
                    Resource::Threads => &ser.threads,
                };
                let samples: Vec<(f64, f64)> = series.samples().collect();
                let verdict = leaks::analyze(&samples, params);
                f.growing
                    .insert(r.as_str(), verdict.trend == Trend::Growing);
                f.leak_suspects.entry(r.as_str()).or_default();
            }
        }
        self.family_series.retain(|_, v| v.seen == scan_no);
        (families, pods)
    }
}
