//! Policy reloading for `watch`: on SIGHUP, and when the policy file changes (polled by its
//! modification time, size and inode each scan — no inotify dependency, and it works on the
//! symlink swaps a Kubernetes ConfigMap mount does). An invalid new policy is logged and counted,
//! and the last good policy stays in force.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::{self, Policy, PolicyError};

/// Identity of one version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // metadata() follows symlinks: a ConfigMap update swaps the `..data` link, and the target's
    // inode changes.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Where the policy comes from: a file, or the built-in default.
#[derive(Debug)]
pub struct PolicySource {
    path: Option<PathBuf>,
    last: Option<Stamp>,
}

/// What a reload check found.
#[derive(Debug)]
pub enum Reload {
    /// Nothing changed.
    Unchanged,
    /// A new valid policy.
    Loaded(Box<Policy>),
    /// The file changed (or SIGHUP came) but the new text is invalid: keep the old policy.
    Rejected(PolicyError),
}

impl PolicySource {
    /// Load the initial policy. An invalid initial policy is an error (exit 64 at start-up).
    pub fn open(path: Option<&Path>) -> Result<(Self, Policy), PolicyError> {
        match path {
            None => Ok((
                Self {
                    path: None,
                    last: None,
                },
                policy::builtin(),
            )),
            Some(p) => {
                let last = stamp(p);
                let pol = policy::load(p)?;
                Ok((
                    Self {
                        path: Some(p.to_path_buf()),
                        last,
                    },
                    pol,
                ))
            }
        }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reload if `forced` (SIGHUP) or the file changed since the last load attempt.
    pub fn check(&mut self, forced: bool) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let now = stamp(path);
        if !forced && now == self.last {
            return Reload::Unchanged;
        }
        // Remember this version even if it is invalid, so a bad file is reported once, not at
        // every scan; the next edit (or SIGHUP) tries again.
        self.last = now;
        match policy::load(path) {
            Ok(p) => Reload::Loaded(Box::new(p)),
            Err(e) => Reload::Rejected(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_edit_is_rejected_and_a_good_one_loaded() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("policy.yaml");
        std::fs::write(&f, "dry_run: true\n").unwrap();
        let (mut src, pol) = PolicySource::open(Some(&f)).unwrap();
        assert!(pol.dry_run);
        assert!(matches!(src.check(false), Reload::Unchanged));

        std::fs::write(&f, "dry_run: true\nrules:\n  - name: x\n    whenn: {}\n").unwrap();
        match src.check(true) {
            Reload::Rejected(e) => assert!(e.to_string().contains("policy.yaml:4:"), "{e}"),
            other => panic!("expected rejection, got {other:?}"),
        }
        // Reported once: the same bad version is not re-read without a change or SIGHUP.
        assert!(matches!(src.check(false), Reload::Unchanged));

        std::fs::write(&f, "dry_run: false\nmax_kills_per_minute: 7\n").unwrap();
        match src.check(true) {
            Reload::Loaded(p) => assert_eq!(p.max_kills_per_minute, 7),
            other => panic!("expected a new policy, got {other:?}"),
        }
    }

    #[test]
    fn built_in_policy_never_reloads() {
        let (mut src, pol) = PolicySource::open(None).unwrap();
        assert_eq!(pol.families.len(), 3);
        assert!(matches!(src.check(true), Reload::Unchanged));
    }
}
