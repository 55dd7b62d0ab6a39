//! The warm pool's memory admission and its sampler, and browsers launched for one session
//! with flags of their own (see the parent module's documentation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{AcquireError, Lease, Leased, Start, WarmPool, SAMPLE_EVERY};
use crate::admission;

impl WarmPool {
    /// A browser launched for one session with flags of its own (a session's `--proxy-server`):
    /// never from or into the warm pool, always a cold start, within the same live bound,
    /// memory admission and breaker. A launch that finishes after `deadline` is closed.
    pub async fn acquire_dedicated(
        self: &Arc<Self>,
        deadline: Instant,
        extra_args: Vec<String>,
    ) -> Result<Lease, AcquireError> {
        let id = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                let live = st.ready.len() + st.launching + st.leased.len();
                if live < self.cfg.max_live {
                    st.launching += 1;
                    let id = st.next_id;
                    st.next_id += 1;
                    break id;
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.stop.cancelled() => return Err(AcquireError::Closed),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(AcquireError::Timeout { memory: false });
                }
            }
        };
        self.metrics.active_browsers.inc();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = self.clone();
        // A task of the pool's, so that a caller giving up cannot drop a half-launched browser.
        self.tasks.spawn(async move {
            let b = pool.launch_inner(id, &extra_args).await;
            let mut st = pool.lock();
            st.launching -= 1;
            match b {
                Some(b) => {
                    st.leased.insert(b.id, Leased { pid: b.pid, rss: 0 });
                    drop(st);
                    if let Err(b) = tx.send(b) {
                        // Nobody waits for it any more.
                        pool.spawn_close(b, true);
                    }
                }
                None => {
                    pool.metrics.active_browsers.dec();
                    drop(st);
                }
            }
            pool.changed.notify_waiters();
        });
        let memory = || self.lock().memory_blocked;
        tokio::select! {
            r = rx => match r {
                Ok(b) => {
                    self.metrics.pool_cold_starts.inc();
                    Ok(Lease { pool: self.clone(), browser: Some(b), start: Start::Cold })
                }
                Err(_) => Err(AcquireError::Timeout { memory: memory() }),
            },
            _ = tokio::time::sleep_until(deadline.into()) => Err(AcquireError::Timeout { memory: memory() }),
        }
    }

    /// Memory admission for one more browser (see the module documentation): what is promised
    /// to every live browser and not in use yet, plus one more reserve, must fit in the
    /// headroom measured now.
    pub(super) async fn memory_fits(&self) -> bool {
        let reserve = self.cfg.memory_reserve;
        let (pending, live) = {
            let st = self.lock();
            // A leased browser's tree is measured: only the rest of its reserve is pending.
            let sessions = admission::unmaterialized(st.leased.values().map(|l| (reserve, l.rss)));
            // Ready and launching browsers (this launch aside) will grow by a session's worth.
            let others = (st.ready.len() + st.launching.saturating_sub(1)) as u64 * reserve;
            (
                sessions + others,
                st.ready.len() + st.launching + st.leased.len(),
            )
        };
        // The first browser always may start: a service that can start none is useless, and
        // its launch failing says more than waiting forever.
        if live <= 1 {
            return true;
        }
        let procfs = self.env.procfs.clone();
        let headroom = tokio::task::spawn_blocking(move || admission::headroom(&procfs))
            .await
            .ok()
            .flatten();
        headroom.is_none_or(|h| admission::fits(h, pending, reserve))
    }

    /// Measure each leased browser's process tree (its process group) every [`SAMPLE_EVERY`].
    pub(super) async fn sample_memory(self: Arc<Self>) {
        let page = leakwarden_core::proc::clock_ticks_and_page_size().1;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            let groups: Vec<i32> = self.lock().leased.values().map(|l| l.pid).collect();
            if groups.is_empty() {
                continue;
            }
            let procfs = self.env.procfs.clone();
            let sums = tokio::task::spawn_blocking(move || {
                let mut sums: HashMap<i32, u64> = groups.iter().map(|&g| (g, 0)).collect();
                for pid in procfs.pids().unwrap_or_default() {
                    if let Ok(Some(s)) = procfs.stat(pid) {
                        if let Some(v) = sums.get_mut(&s.pgid) {
                            *v += s.rss_pages * page;
                        }
                    }
                }
                sums
            })
            .await
            .unwrap_or_default();
            let mut st = self.lock();
            for l in st.leased.values_mut() {
                if let Some(&rss) = sums.get(&l.pid) {
                    l.rss = rss;
                }
            }
        }
    }
}
