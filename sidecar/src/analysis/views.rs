//! Leak views of one tree or family: the verdict per resource, for how long it has been
//! "growing", and the projected time to the resource's limit.

use std::time::{Duration, Instant};

use super::{res_index, LeakView, TreeSeries};
use crate::detect::leaks::{self, LeakParams, Trend};
use crate::policy::Resource;

/// The ceiling a tree's threads grow towards: its cgroup's `pids.max` (tasks, i.e. threads), else
/// the kernel's `threads-max`; as headroom over what everything else uses now.
pub(super) fn thread_limit(
    cgroup: Option<&str>,
    cgroup_root: &std::path::Path,
    tree_threads: u64,
    host_threads: u64,
) -> Option<(f64, &'static str)> {
    let read =
        |p: std::path::PathBuf| -> Option<u64> { crate::proc::read_small(&p)?.trim().parse().ok() };
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

pub(super) fn leak_views(
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

pub(super) fn ser_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
