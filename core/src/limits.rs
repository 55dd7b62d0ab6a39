//! `RLIMIT_NOFILE`: raised to the hard limit at start (a systemd service gets a soft limit of
//! 1,024 by default, which a sidecar holding a pidfd per watched process and serving hundreds of
//! connections can exhaust), and the budgets that depend on it.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft and hard `RLIMIT_NOFILE` after trying to raise the soft one to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit was raised by this call.
    pub raised: bool,
}

/// A limit that reads "unlimited" is counted as this many descriptors.
const UNLIMITED_AS: u64 = 1 << 20;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (children inherit it: call this only in a
/// process whose children should have it too, or before spawning none).
pub fn raise_nofile() -> Nofile {
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(UNLIMITED_AS);
    let hard = cur.maximum.unwrap_or(UNLIMITED_AS);
    if soft >= hard {
        return Nofile {
            soft,
            hard,
            raised: false,
        };
    }
    let want = Rlimit {
        current: cur.maximum,
        maximum: cur.maximum,
    };
    match setrlimit(Resource::Nofile, want) {
        Ok(()) => Nofile {
            soft: hard,
            hard,
            raised: true,
        },
        Err(_) => Nofile {
            soft,
            hard,
            raised: false,
        },
    }
}

/// The soft `RLIMIT_NOFILE` now.
pub fn nofile_soft() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(UNLIMITED_AS)
}

/// A share of the soft limit for one use (`fraction` of it, at least `min`, at most `max`).
pub fn budget(fraction: f64, min: usize, max: usize) -> usize {
    let n = (nofile_soft() as f64 * fraction) as usize;
    n.clamp(min, max.max(min))
}

/// Test support (both programs' EMFILE tests): lower the soft `RLIMIT_NOFILE` to `headroom`
/// above the descriptors open now, then open `/dev/null` until `EMFILE`. The process is out of
/// descriptors while the returned files live. Panics on anything but `EMFILE`: for tests only.
#[doc(hidden)]
pub fn exhaust_descriptors(headroom: u64) -> Vec<std::fs::File> {
    let open_now = std::fs::read_dir("/proc/self/fd").expect("fd dir").count() as u64;
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_now + headroom),
            maximum: lim.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return fillers,
            Err(e) => panic!("filling descriptors: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let a = raise_nofile();
        assert_eq!(a.soft, a.hard);
        let b = raise_nofile();
        assert!(!b.raised);
        assert_eq!(nofile_soft(), b.soft);
        assert!(budget(0.5, 16, 64) >= 16);
        assert!(budget(0.5, 16, 64) <= 64);
    }
}
