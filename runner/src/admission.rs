//! Memory admission: a browser is launched only if the memory it will need fits.
//!
//! The headroom is the smaller of the host's `MemAvailable` and, when the runner's cgroup has a
//! limit, `memory.max - memory.current`. A launch is admitted when the headroom minus the
//! memory already promised to browsers that are still starting is at least the per-browser
//! reserve (`--browser-memory`). When it is not, the launch waits and the rejection is counted.

use std::path::{Path, PathBuf};

use crate::proc::Procfs;

/// Pure decision: does one more browser fit?
pub fn fits(headroom: u64, pending: u64, reserve: u64) -> bool {
    headroom.saturating_sub(pending) >= reserve
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
