//! Memory admission: a browser is launched, and a session started on one, only if the memory
//! it will need fits.
//!
//! The headroom is the smaller of the host's `MemAvailable` and, when the runner's cgroup has a
//! limit, `memory.max - memory.current`, measured again before every launch and every
//! `pool::SAMPLE_EVERY` (never a figure from the run's start: the host changes under a long
//! run). Each browser is promised the per-browser reserve (`--browser-memory`, which covers its
//! first session) plus a renderer's share of it for every further session at once
//! ([`promised`]); what a browser's process tree already uses is in the headroom already, so
//! only the part of the promise not in use yet ([`unmaterialized`]) is set against it. A launch
//! or a session is admitted when the headroom minus that is at least what it adds ([`fits`]).
//! When it is not, it waits and the rejection is counted.

use std::path::{Path, PathBuf};

use crate::proc::Procfs;

/// Pure decision: does one more browser fit?
pub fn fits(headroom: u64, pending: u64, reserve: u64) -> bool {
    headroom.saturating_sub(pending) >= reserve
}

/// A session beyond a browser's first costs one renderer: this fraction of the browser's
/// reserve (75 MiB of the default 300 MiB; a renderer of the embedded job's pages measures
/// 60–100 MiB of RSS).
pub const RENDERER_SHARE: u64 = 4;

/// Memory promised to a browser running `sessions` sessions at once.
pub fn promised(reserve: u64, sessions: usize) -> u64 {
    reserve + sessions.saturating_sub(1) as u64 * (reserve / RENDERER_SHARE)
}

/// Memory promised and not in use yet: per browser, `(promised, measured RSS)`.
pub fn unmaterialized(browsers: impl Iterator<Item = (u64, u64)>) -> u64 {
    browsers.map(|(p, rss)| p.saturating_sub(rss)).sum()
}

/// Headroom under a cgroup v2 limit; `None` when there is no limit (`max`) or no cgroup file.
pub fn cgroup_headroom(memory_max: &str, memory_current: &str) -> Option<u64> {
    let max = memory_max.trim();
    if max == "max" {
        return None;
    }
    let max: u64 = max.parse().ok()?;
    let cur: u64 = memory_current.trim().parse().ok()?;
    Some(max.saturating_sub(cur))
}

/// Finds the runner's cgroup v2 directory from `/proc/self/cgroup` (`0::/path`).
pub fn own_cgroup_dir(proc_self_cgroup: &str, mount: &Path) -> Option<PathBuf> {
    let line = proc_self_cgroup.lines().find(|l| l.starts_with("0::"))?;
    let rel = line.trim_start_matches("0::").trim_start_matches('/');
    Some(mount.join(rel))
}

/// Reads the current headroom. `None` if nothing could be read (then everything is admitted).
pub fn headroom(procfs: &Procfs) -> Option<u64> {
    let host = procfs.mem_available().ok().flatten();
    let cg = std::fs::read_to_string(procfs.root().join("self/cgroup"))
        .ok()
        .and_then(|s| own_cgroup_dir(&s, Path::new("/sys/fs/cgroup")))
        .and_then(|dir| {
            let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
            let cur = std::fs::read_to_string(dir.join("memory.current")).ok()?;
            cgroup_headroom(&max, &cur)
        });
    match (host, cg) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn fits_accounts_for_browsers_still_starting() {
        assert!(fits(1000 * MIB, 0, 300 * MIB));
        assert!(fits(600 * MIB, 300 * MIB, 300 * MIB));
        assert!(!fits(599 * MIB, 300 * MIB, 300 * MIB));
        assert!(!fits(100 * MIB, 300 * MIB, 300 * MIB), "no underflow");
    }

    /// Issue 14, item 9: `--contexts-per-browser 16` used to add 16 renderers to one admitted
    /// browser unchecked (admission counted browsers only).
    #[test]
    fn sessions_on_one_browser_are_promised_memory_and_stop_fitting() {
        let reserve = 300 * MIB;
        // One browser measured at 250 MiB, 1 GiB of headroom left.
        let headroom = 1024 * MIB;
        let mut admitted = 1;
        loop {
            let before = promised(reserve, admitted);
            let after = promised(reserve, admitted + 1);
            let pending = unmaterialized([(before, 250 * MIB)].into_iter());
            let need = after.saturating_sub(250 * MIB) - before.saturating_sub(250 * MIB);
            if !fits(headroom, pending, need) || admitted == 16 {
                break;
            }
            admitted += 1;
        }
        assert!(
            admitted < 16,
            "16 sessions on one browser fit in 1 GiB: {admitted}"
        );
        // 50 MiB of the browser's promise not in use yet, 75 MiB per further renderer:
        // (1024 − 50) ÷ 75 → 12 more sessions.
        assert_eq!(admitted, 13);
        assert_eq!(promised(reserve, 1), reserve);
        assert_eq!(promised(reserve, 0), reserve);
        assert_eq!(promised(reserve, 3), reserve + 2 * 75 * MIB);
    }

    #[test]
    fn memory_in_use_is_not_promised_twice() {
        // A browser already above its promise adds nothing pending.
        assert_eq!(unmaterialized([(300 * MIB, 400 * MIB)].into_iter()), 0);
        assert_eq!(
            unmaterialized([(300 * MIB, 100 * MIB), (375 * MIB, 0)].into_iter()),
            575 * MIB
        );
    }

    #[test]
    fn cgroup_limit_parsing() {
        assert_eq!(cgroup_headroom("max\n", "123\n"), None);
        assert_eq!(cgroup_headroom("1000\n", "400\n"), Some(600));
        assert_eq!(cgroup_headroom("1000\n", "4000\n"), Some(0));
        assert_eq!(cgroup_headroom("junk", "1"), None);
    }

    #[test]
    fn cgroup_dir_from_proc_self_cgroup() {
        let p = own_cgroup_dir("0::/system.slice/x.service\n", Path::new("/sys/fs/cgroup"));
        assert_eq!(
            p,
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/x.service"))
        );
        assert_eq!(own_cgroup_dir("1:cpu:/a\n", Path::new("/m")), None);
    }
}
