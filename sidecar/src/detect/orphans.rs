//! Who owns a browser, judged from one snapshot — what the one-shot `cleanup` and a freshly
//! started `watch` have, and what a running `watch` uses for a process it first sees already
//! under an init. (A `watch` that saw a process's parent change judges that first: reparented.)
//!
//! A top-level process of a tree (a browser, a driver, a straggler whose parent is outside the
//! tree) is judged by its parent, in this order:
//!
//! 1. **parent outside our view** (PPID 0, or a parent not in the snapshot): owned — a
//!    container's entrypoint seen from a pod sidecar, or a launcher in a parent namespace;
//! 2. **parent is not an init or subreaper**: owned by it — its launcher is alive; this includes
//!    a PID 1 that is an application (`node app.js` as a container's command);
//! 3. **parent only adopts** (`pause`, the sidecar itself): these never start a browser, so
//!    anything under them was reparented — orphaned since its start;
//! 4. **its process group or session leader is gone** (a PGID or SID naming a process that no
//!    longer exists, or is a zombie, other than itself): whoever created its group or session —
//!    its launcher or the launcher's shell — has died: orphaned since its start. An init's own
//!    payload never looks like this: tini makes its child a group leader, dumb-init a session
//!    leader, runc and systemd make their processes session leaders;
//! 5. **a container runtime** (`containerd-shim…`, `conmon`) is its parent: a container's main
//!    process (or an `exec`'d one) as a node-wide sidecar sees it — owned;
//! 6. **a single-child init** (`tini`, `dumb-init`, `docker-init`, `catatonit`): these start
//!    exactly one child, at their own start, and exit when it does. That child is the payload —
//!    owned; it is the init's *oldest* child, started within [`PAYLOAD_WINDOW`] of the init. Any
//!    other child was adopted — orphaned since its start;
//! 7. **a supervisor** (`systemd`, `init`, `s6-svscan`, `runsvdir`): owned when it leads its own
//!    session (a unit's main process: systemd `setsid()`s what it starts), else adopted —
//!    orphaned since its start.
//!
//! What stays ambiguous, and falls on the side of not killing: a leftover that made itself a
//! session leader (puppeteer and Playwright launch browsers with `setsid`) under a container
//! runtime or under systemd; a leftover whose group and session leaders live outside our PID
//! namespace (PGID/SID read 0) started within [`PAYLOAD_WINDOW`] of a single-child init as its
//! oldest child — impossible while the init's real payload lives, and the init exits with it.
//! A running `watch` still sees such trees orphaned when it saw their parent change.
//!
//! crashpad handlers carry no profile and hang off an init from their first second: they are
//! judged with the browser they are tied to. One tied to nothing is judged by the other end of
//! its client socket ([`crashpad_client`]): a live client (an Electron app, an editor, a test
//! runner shipping its own handler) owns it; a handler whose client end is closed lingers —
//! orphaned; when sock_diag cannot tell, it is owned.

use std::time::Duration;

use serde::Serialize;

use crate::snapshot::{Proc, Snapshot};

/// A single-child init forks its payload within this long of its own start (milliseconds, in
/// practice; generous for a loaded host).
pub const PAYLOAD_WINDOW: Duration = Duration::from_secs(5);

/// What kind of reaper a parent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaper {
    /// Adopts orphans, never starts a browser (`pause`, the sidecar).
    AdoptOnly,
    /// A container runtime's per-container parent.
    Runtime,
    /// Starts exactly one child, its payload, at its own start.
    SingleChild,
    /// Starts many services over time.
    Supervisor,
}

/// The kind of reaper a process with this `comm` is, if any.
pub fn reaper(comm: &str) -> Option<Reaper> {
    match comm {
        "pause" | "leakwarden" => Some(Reaper::AdoptOnly),
        "conmon" | "docker-containe" => Some(Reaper::Runtime),
        c if c.starts_with("containerd-shim") => Some(Reaper::Runtime),
        "tini" | "tini-static" | "dumb-init" | "docker-init" | "catatonit" => {
            Some(Reaper::SingleChild)
        }
        "systemd" | "init" | "s6-svscan" | "runsvdir" => Some(Reaper::Supervisor),
        _ => None,
    }
}

/// Why a process is owned or orphaned. The text is what `scan` and `cleanup` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Owned: its parent lives outside our PID namespace (PPID 0) or out of view.
    ParentOutside,
    /// Owned: its parent is a live launcher, not an init.
    LauncherAlive,
    /// Owned: the one child a single-child init started.
    Payload,
    /// Owned: a container runtime's child.
    ContainerProcess,
    /// Owned: a session leader under a supervisor (a unit's main process).
    UnitMainProcess,
    /// Owned: a crashpad handler whose client end is alive (an app of its own).
    CrashpadClientAlive,
    /// Owned: a crashpad handler tied to nothing whose client could not be checked.
    CrashpadUnknown,
    /// Orphaned: seen to change parent while watched.
    Reparented,
    /// Orphaned: under an init that never starts browsers.
    AdoptedByReaper,
    /// Orphaned: the process group or session leader that made it is gone.
    LeaderGone,
    /// Orphaned: under a single-child init, and not its payload.
    AdoptedByInit,
    /// Orphaned: under a supervisor, and not a session leader.
    AdoptedBySupervisor,
    /// Orphaned: a crashpad handler whose browser is gone.
    CrashpadBrowserGone,
    /// Orphaned: a crashpad handler whose client end is closed.
    CrashpadClientGone,
}

impl Why {
    pub fn orphaned(self) -> bool {
        matches!(
            self,
            Why::Reparented
                | Why::AdoptedByReaper
                | Why::LeaderGone
                | Why::AdoptedByInit
                | Why::AdoptedBySupervisor
                | Why::CrashpadBrowserGone
                | Why::CrashpadClientGone
        )
    }

    pub fn text(self) -> &'static str {
        match self {
            Why::ParentOutside => "its parent is outside this PID namespace",
            Why::LauncherAlive => "its launcher is alive",
            Why::Payload => "the payload its init started",
            Why::ContainerProcess => "a container's process (its parent is the runtime)",
            Why::UnitMainProcess => "a service's main process (session leader under a supervisor)",
            Why::CrashpadClientAlive => "a crashpad handler whose client is alive",
            Why::CrashpadUnknown => "a crashpad handler whose client could not be checked",
            Why::Reparented => "its parent changed while watched: its launcher died",
            Why::AdoptedByReaper => "adopted by an init that starts no browsers",
            Why::LeaderGone => "the process group or session leader that started it is gone",
            Why::AdoptedByInit => "adopted by its init (not the init's payload)",
            Why::AdoptedBySupervisor => "adopted by a supervisor (not a service's main process)",
            Why::CrashpadBrowserGone => "a crashpad handler whose browser is gone",
            Why::CrashpadClientGone => "a crashpad handler whose client is gone",
        }
    }
}

/// Judge one top-level process from the snapshot alone (see the module documentation).
pub fn judge(s: &Snapshot, p: &Proc) -> Why {
    let Some(parent) = (p.ppid > 0).then(|| s.get(p.ppid)).flatten() else {
        return Why::ParentOutside;
    };
    let Some(kind) = reaper(&parent.comm) else {
        return Why::LauncherAlive;
    };
    if kind == Reaper::AdoptOnly {
        return Why::AdoptedByReaper;
    }
    if leader_gone(s, p, p.pgid) || leader_gone(s, p, p.sid) {
        return Why::LeaderGone;
    }
    match kind {
        Reaper::AdoptOnly => Why::AdoptedByReaper,
        Reaper::Runtime => Why::ContainerProcess,
        Reaper::SingleChild => {
            if is_payload(s, parent, p) {
                Why::Payload
            } else {
                Why::AdoptedByInit
            }
        }
        Reaper::Supervisor => {
            if p.sid == p.pid {
                Why::UnitMainProcess
            } else {
                Why::AdoptedBySupervisor
            }
        }
    }
}

/// A group or session id that names a visible process which is gone (or a zombie), other than
/// `p` itself. 0 means "led from outside our PID namespace": not evidence.
fn leader_gone(s: &Snapshot, p: &Proc, leader: i32) -> bool {
    leader > 0 && leader != p.pid && s.get(leader).is_none_or(Proc::is_zombie)
}

/// `p` is the oldest live child of the single-child init `init`, started within
/// [`PAYLOAD_WINDOW`] of it.
fn is_payload(s: &Snapshot, init: &Proc, p: &Proc) -> bool {
    let oldest = s
        .children_of(init.pid)
        .iter()
        .map(|&i| &s.procs[i])
        .filter(|c| !c.is_zombie())
        .min_by_key(|c| (c.start_ticks, c.pid));
    let window = PAYLOAD_WINDOW.as_secs() * s.clk_tck;
    oldest.is_some_and(|o| o.pid == p.pid)
        && p.start_ticks >= init.start_ticks
        && p.start_ticks - init.start_ticks <= window
}

/// The state of an untied crashpad handler's client, from its sockets' peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Alive,
    Gone,
    Unknown,
}

/// Judge a handler's client from the inodes of its sockets and a unix socket table (inode →
/// peer inode, as NETLINK_SOCK_DIAG reports it): alive when one of its sockets has a peer that
/// still exists; gone when it has sockets and none has a live peer; unknown without sockets.
pub fn crashpad_client(own_sockets: &[u64], peers: &std::collections::HashMap<u32, u32>) -> Client {
    let mut any = false;
    for &ino in own_sockets {
        let Some(&peer) = peers.get(&(ino as u32)) else {
            continue;
        };
        any = true;
        if peer != 0 && peers.contains_key(&peer) {
            return Client::Alive;
        }
    }
    if any {
        Client::Gone
    } else {
        Client::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::testutil::*;
    use crate::proc::MemInfo;

    fn snap(procs: Vec<Proc>) -> Snapshot {
        Snapshot::from_procs(procs, MemInfo::default())
    }

    fn leader(mut p: Proc, pgid: i32, sid: i32) -> Proc {
        p.pgid = pgid;
        p.sid = sid;
        p
    }

    fn why(s: &Snapshot, pid: i32) -> Why {
        judge(s, s.get(pid).expect("pid in snapshot"))
    }

    #[test]
    fn tinis_first_child_is_its_payload_and_a_later_child_was_adopted() {
        // tini (start 100) → chromium payload (start 101, own group as tini makes it);
        // a leftover (start 900, own session: puppeteer setsid()s) adopted later.
        let s = snap(vec![
            leader(proc_(1, 0, "tini", 100), 1, 1),
            leader(proc_(7, 1, "chromium", 101), 7, 1),
            leader(proc_(50, 1, "chromium", 900), 50, 50),
        ]);
        assert_eq!(why(&s, 7), Why::Payload);
        assert_eq!(why(&s, 50), Why::AdoptedByInit);
    }

    #[test]
    fn a_first_child_started_long_after_its_init_is_not_a_payload() {
        let s = snap(vec![
            leader(proc_(1, 0, "dumb-init", 100), 1, 1),
            leader(proc_(50, 1, "chromium", 100 + 60 * 100), 50, 50),
        ]);
        assert_eq!(why(&s, 50), Why::AdoptedByInit);
    }

    #[test]
    fn a_gone_group_or_session_leader_means_its_launcher_died() {
        // Both under a runtime (which would otherwise own them): one's session leader (the
        // shell that launched it, pid 30) is gone, the other's is a zombie.
        let mut z = proc_(31, 40, "bash", 300);
        z.state = 'Z';
        let s = snap(vec![
            proc_(40, 1, "containerd-shim", 10),
            leader(proc_(60, 40, "chromium", 600), 30, 30),
            z,
            leader(proc_(61, 40, "chromium", 601), 61, 31),
            leader(proc_(62, 40, "chromium", 602), 62, 62),
        ]);
        assert_eq!(why(&s, 60), Why::LeaderGone);
        assert_eq!(why(&s, 61), Why::LeaderGone);
        assert_eq!(why(&s, 62), Why::ContainerProcess);
    }

    #[test]
    fn pgid_and_sid_0_are_not_evidence() {
        let s = snap(vec![
            leader(proc_(1, 0, "tini", 100), 0, 0),
            leader(proc_(2, 1, "chromium", 100), 2, 0),
        ]);
        assert_eq!(why(&s, 2), Why::Payload);
    }

    #[test]
    fn supervisors_own_session_leaders_and_adopt_the_rest() {
        let s = snap(vec![
            leader(proc_(1, 0, "systemd", 1), 1, 1),
            leader(proc_(300, 1, "chromedriver", 50_000), 300, 300),
            leader(proc_(301, 1, "chromium", 60_000), 301, 1),
        ]);
        assert_eq!(why(&s, 300), Why::UnitMainProcess);
        assert_eq!(why(&s, 301), Why::AdoptedBySupervisor);
    }

    #[test]
    fn pause_adopts_an_application_pid_1_owns_and_ppid_0_is_outside() {
        let s = snap(vec![
            proc_(1, 0, "pause", 1),
            leader(proc_(20, 1, "chromium", 2), 20, 20),
        ]);
        assert_eq!(why(&s, 20), Why::AdoptedByReaper);
        let s = snap(vec![proc_(1, 0, "node", 1), proc_(20, 1, "chromium", 2)]);
        assert_eq!(why(&s, 20), Why::LauncherAlive);
        let s = snap(vec![proc_(20, 0, "chromium", 2)]);
        assert_eq!(why(&s, 20), Why::ParentOutside);
    }

    #[test]
    fn reaper_kinds() {
        assert_eq!(reaper("containerd-shim"), Some(Reaper::Runtime));
        assert_eq!(reaper("tini"), Some(Reaper::SingleChild));
        assert_eq!(reaper("bash"), None);
        assert!(!Why::Payload.orphaned());
        assert!(Why::LeaderGone.orphaned());
    }

    #[test]
    fn crashpad_client_from_socket_peers() {
        // 10 ↔ 11 (both alive); 20 → 21 (21 closed: absent); 30 with peer 0.
        let peers = [(10u32, 11u32), (11, 10), (20, 21), (30, 0)]
            .into_iter()
            .collect();
        assert_eq!(crashpad_client(&[10], &peers), Client::Alive);
        assert_eq!(crashpad_client(&[20, 30], &peers), Client::Gone);
        assert_eq!(crashpad_client(&[99], &peers), Client::Unknown);
        assert_eq!(crashpad_client(&[], &peers), Client::Unknown);
    }
}
