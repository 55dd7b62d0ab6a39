//! crashpad handlers: tying each to its browser, and judging the ones tied to nothing.
//!
//! A handler `setsid()`s and hangs off an init from its first second, carrying no profile. The
//! first handler's `--initial-client-fd` is a socket whose peer is one of its browser's sockets;
//! the second handler's client socket peers with the first handler. NETLINK_SOCK_DIAG gives the
//! peers ([`crate::proc::sockdiag`]), queried only when a handler appears that is not tied yet.
//! Where it cannot see (another network namespace), a handler is tied by start time to the
//! browser of the *same uid and cgroup* that started most recently before it.
//!
//! A handler tied to no browser is judged by its client ([`orphans::crashpad_client`]): an
//! Electron app or a test runner ships its own handler, whose client is that app.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Tracker;
use crate::detect::orphans::{self, Client};
use crate::family::Ties;
use crate::policy::FamilyKind;
use crate::snapshot::{Proc, Snapshot};

/// An untied handler's client is looked at again after this long (its client may have exited
/// while it lingers).
const CLIENT_RECHECK: Duration = Duration::from_secs(30);

fn kind(p: &Proc) -> Option<FamilyKind> {
    p.info.as_deref().map(|i| i.kind)
}

impl Tracker {
    /// Tie new crashpad handlers to browsers through the unix sockets they share, and judge the
    /// clients of those left untied. Handlers already tried are not tried again (except for the
    /// periodic client re-check), so an Electron app's handler costs one dump, not one per scan.
    pub(super) fn crashpad_sockets(&mut self, s: &Snapshot) -> Ties {
        let mut out = Ties::new();
        let now = Instant::now();
        let fresh: Vec<&Proc> = s
            .procs
            .iter()
            .filter(|p| kind(p) == Some(FamilyKind::Crashpad) && !p.is_zombie())
            .filter(|p| !self.ties.contains_key(&p.id()))
            .filter(|p| {
                self.socket_tried
                    .get(&p.id())
                    .is_none_or(|t| now.duration_since(*t) >= CLIENT_RECHECK)
            })
            .collect();
        if fresh.is_empty() {
            return out;
        }
        for h in &fresh {
            self.socket_tried.insert(h.id(), now);
        }
        let peers = if self.sock_diag {
            match crate::proc::sockdiag::unix_peers(Duration::from_secs(1)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::info!(error = %e, "NETLINK_SOCK_DIAG unavailable; tying crashpad handlers by start time");
                    self.sock_diag = false;
                    None
                }
            }
        } else {
            None
        };
        let Some(peers) = peers else {
            for h in &fresh {
                self.clients.insert(h.id(), Client::Unknown);
            }
            return out;
        };
        let mut owner_of: HashMap<u32, (i32, u64)> = HashMap::new();
        for p in &s.procs {
            let is_owner = p
                .info
                .as_deref()
                .is_some_and(|i| i.is_browser_root() || i.kind == FamilyKind::Crashpad);
            if is_owner && !p.is_zombie() {
                for (_, ino) in self.fs.socket_inodes(p.pid).unwrap_or_default() {
                    owner_of.insert(ino as u32, p.id());
                }
            }
        }
        let is_fresh = |id: &(i32, u64)| fresh.iter().any(|h| h.id() == *id);
        let mut via_handler: Vec<((i32, u64), (i32, u64))> = Vec::new();
        let mut sockets: HashMap<(i32, u64), Vec<u64>> = HashMap::new();
        for h in &fresh {
            let own: Vec<u64> = self
                .fs
                .socket_inodes(h.pid)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, ino)| ino)
                .collect();
            for &ino in &own {
                let Some(&peer) = peers.get(&(ino as u32)) else {
                    continue;
                };
                let Some(&o) = owner_of.get(&peer) else {
                    continue;
                };
                if o == h.id() {
                    continue;
                }
                if is_fresh(&o) || self.ties.contains_key(&o) {
                    via_handler.push((h.id(), o));
                } else if s.get(o.0).is_some_and(|b| b.uid == h.uid) {
                    out.insert(h.id(), o);
                    break;
                }
            }
            sockets.insert(h.id(), own);
        }
        for (h, other) in via_handler {
            if out.contains_key(&h) {
                continue;
            }
            if let Some(b) = out.get(&other).or_else(|| self.ties.get(&other)).copied() {
                out.insert(h, b);
            }
        }
        for h in &fresh {
            if out.contains_key(&h.id()) {
                self.clients.remove(&h.id());
                continue;
            }
            let own = sockets.get(&h.id()).map(Vec::as_slice).unwrap_or(&[]);
            self.clients
                .insert(h.id(), orphans::crashpad_client(own, &peers));
        }
        out
    }
}
