//! The browser pool: few browsers, a fresh context per session.
//!
//! Launching Chromium costs about a second of CPU; a browser context costs milliseconds and
//! isolates cookies, storage and cache just the same. So sessions share browsers — up to
//! `contexts_per_browser` at once — and a browser is recycled after `recycle_after` sessions or
//! `max_age`, or at once after a session on it failed (a crashed or hung renderer is not worth
//! trusting). Its replacement is launched ahead while the last sessions finish, so no session
//! waits for a launch in steady state.
//!
//! Bounds: a semaphore of `browsers + 1` permits bounds live browsers (the `+ 1` is the
//! launch-ahead); a launch waits for memory admission (`admission.rs`) and for the circuit
//! breaker (`breaker.rs`). Launches and closes run as tasks owned by the pool's tracker, so a
//! session cancelled while waiting never leaves a half-launched browser behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission;
use crate::breaker::{Breaker, Permit};
use crate::browser::{Browser, CloseReport, Env, Spec};
use crate::launcher::Mode;
use crate::metrics::Metrics;

pub mod warm;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Browsers serving at once.
    pub browsers: usize,
    pub contexts_per_browser: usize,
    pub recycle_after: u64,
    pub max_age: Duration,
    /// Memory a browser is expected to need; a launch waits until this much is available.
    pub memory_reserve: u64,
    pub breaker_threshold: u32,
    pub breaker_base: Duration,
    pub breaker_max: Duration,
}

struct Slot {
    browser: Arc<Browser>,
    active: usize,
    started: u64,
    retiring: bool,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn usable(&self, cfg: &PoolConfig, now: Instant) -> bool {
        !self.retiring
            && !self.browser.dead.is_cancelled()
            && self.started < cfg.recycle_after
            && now.duration_since(self.browser.launched_at) < cfg.max_age
    }
}

struct State {
    slots: Vec<Slot>,
    launching: usize,
    breaker: Breaker,
    /// Opens when sessions keep failing (a failing target): new sessions wait, a half-open trial
    /// session tests the target, a success closes it.
    target: Breaker,
    closed: bool,
    next_id: u64,
}

/// Totals for the summary.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub browsers_launched: u64,
    pub launch_failures: u64,
    pub browsers_closed: u64,
    pub processes_signalled: u64,
    pub leaked_processes: u64,
    pub dirs_left: u64,
    /// Closes whose verification could not read /proc (each also a leak).
    pub unverified: u64,
}

pub struct Pool {
    cfg: PoolConfig,
    spec: Spec,
    env: Env,
    run_dir: std::path::PathBuf,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    changed: Notify,
    live: Arc<Semaphore>,
    /// Pool-owned launch and close tasks.
    tasks: TaskTracker,
    /// Cancels launch waits (breaker backoff, admission) at shutdown.
    stop: CancellationToken,
    /// Sessions not started yet: launch-ahead only when there is work left.
    pub demand: AtomicU64,
    stats: Mutex<PoolStats>,
    /// Memory available when the run started: at most this / `memory_reserve` browsers live.
    mem_budget: Option<u64>,
}

/// A browser lent to one session.
pub struct Lease {
    pub browser: Arc<Browser>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the pool is shutting down")]
    Closed,
}

impl Pool {
    pub fn new(
        cfg: PoolConfig,
        spec: Spec,
        env: Env,
        run_dir: std::path::PathBuf,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let breaker = Breaker::new(cfg.breaker_threshold, cfg.breaker_base, cfg.breaker_max);
        let target = Breaker::new(cfg.breaker_threshold, cfg.breaker_base, cfg.breaker_max);
        let mem_budget = admission::headroom(&env.procfs);
        Arc::new(Self {
            live: Arc::new(Semaphore::new(cfg.browsers + 1)),
            cfg,
            spec,
            env,
            run_dir,
            metrics,
            state: Mutex::new(State {
                slots: Vec::new(),
                launching: 0,
                breaker,
                target,
                closed: false,
                next_id: 1,
            }),
            changed: Notify::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            demand: AtomicU64::new(0),
            stats: Mutex::new(PoolStats::default()),
            mem_budget,
        })
    }

    /// Report how a session ended, for the target circuit breaker.
    pub fn session_outcome(&self, ok: bool) {
        let mut st = self.lock();
        if ok {
            st.target.success();
        } else {
            st.target.failure(Instant::now());
        }
        self.set_circuit_gauge(&st);
    }

    fn set_circuit_gauge(&self, st: &State) {
        let now = Instant::now();
        let g = st
            .breaker
            .state(now)
            .gauge()
            .max(st.target.state(now).gauge());
        self.metrics.circuit_state.set(g);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// A browser with a free context slot; launches one if needed. Cancel-safe: dropping the
    /// future while it waits leaves nothing behind.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        // The target circuit: while open, sessions wait; half-open lets one trial through.
        loop {
            let permit = {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                let p = st.target.permit(Instant::now());
                self.set_circuit_gauge(&st);
                p
            };
            match permit {
                Permit::Go { .. } => break,
                Permit::Wait(d) => {
                    tokio::select! {
                        _ = self.stop.cancelled() => return Err(AcquireError::Closed),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                self.retire_unusable(&mut st);
                let now = Instant::now();
                let cpb = self.cfg.contexts_per_browser;
                // The least busy usable browser: spreads sessions when there are several.
                let pick = st
                    .slots
                    .iter_mut()
                    .filter(|s| s.usable(&self.cfg, now) && s.active < cpb)
                    .min_by_key(|s| s.active);
                if let Some(slot) = pick {
                    slot.active += 1;
                    slot.started += 1;
                    if slot.started >= self.cfg.recycle_after {
                        slot.retiring = true;
                    }
                    let browser = slot.browser.clone();
                    self.maybe_launch(&mut st);
                    return Ok(Lease { browser });
                }
                self.maybe_launch(&mut st);
            }
            notified.await;
        }
    }

    /// Give a browser back. `healthy: false` retires it (closed once its other sessions end).
    pub fn release(self: &Arc<Self>, lease: Lease, healthy: bool) {
        let mut st = self.lock();
        if let Some(slot) = st
            .slots
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.browser, &lease.browser))
        {
            slot.active = slot.active.saturating_sub(1);
            if !healthy {
                slot.retiring = true;
            }
        }
        drop(lease);
        self.retire_unusable(&mut st);
        self.maybe_launch(&mut st);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Mark browsers that can take no more sessions as retiring and close idle retired ones.
    fn retire_unusable(self: &Arc<Self>, st: &mut State) {
        let now = Instant::now();
        for s in st.slots.iter_mut() {
            if !s.usable(&self.cfg, now) {
                s.retiring = true;
            }
        }
        let mut i = 0;
        while i < st.slots.len() {
            if st.slots[i].retiring && st.slots[i].active == 0 {
                let slot = st.slots.swap_remove(i);
                self.spawn_close(slot);
            } else {
                i += 1;
            }
        }
    }

    /// Launch when the usable browsers (plus those launching) are fewer than wanted. A browser
    /// with no more than one round of sessions left does not count, which launches its
    /// replacement ahead of time — only while sessions remain to be started.
    fn maybe_launch(self: &Arc<Self>, st: &mut State) {
        if st.closed {
            return;
        }
        let now = Instant::now();
        let cpb = self.cfg.contexts_per_browser as u64;
        let demand = self.demand.load(Ordering::Relaxed);
        let lasting = st
            .slots
            .iter()
            .filter(|s| s.usable(&self.cfg, now))
            .filter(|s| demand == 0 || self.cfg.recycle_after.saturating_sub(s.started) > cpb)
            .count();
        let waiting_for_capacity = st
            .slots
            .iter()
            .filter(|s| s.usable(&self.cfg, now))
            .all(|s| s.active >= self.cfg.contexts_per_browser);
        let wanted = self.cfg.browsers;
        if lasting + st.launching >= wanted {
            return;
        }
        // Nothing to do for a new browser when no session waits and none is left to start.
        if demand == 0 && !waiting_for_capacity {
            return;
        }
        if self.live.available_permits() == 0 {
            return;
        }
        let Ok(permit) = self.live.clone().try_acquire_owned() else {
            return;
        };
        st.launching += 1;
        let id = st.next_id;
        st.next_id += 1;
        let pool = self.clone();
        self.tasks
            .spawn(async move { pool.launch(id, permit).await });
    }

    async fn launch(self: Arc<Self>, id: u64, permit: OwnedSemaphorePermit) {
        self.metrics.active_browsers.inc();
        let result = self.launch_inner(id).await;
        let mut st = self.lock();
        st.launching -= 1;
        match result {
            Some(browser) if !st.closed => {
                st.slots.push(Slot {
                    browser: Arc::new(browser),
                    active: 0,
                    started: 0,
                    retiring: false,
                    _permit: permit,
                });
            }
            Some(browser) => {
                // Shut down while launching: close it right away.
                let slot = Slot {
                    browser: Arc::new(browser),
                    active: 0,
                    started: 0,
                    retiring: true,
                    _permit: permit,
                };
                self.spawn_close(slot);
            }
            None => {
                self.metrics.active_browsers.dec();
                drop(permit);
            }
        }
        self.set_circuit_gauge(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    async fn launch_inner(&self, id: u64) -> Option<Browser> {
        // Circuit breaker.
        loop {
            let permit = {
                let mut st = self.lock();
                let p = st.breaker.permit(Instant::now());
                self.set_circuit_gauge(&st);
                p
            };
            match permit {
                Permit::Go { .. } => break,
                Permit::Wait(d) => {
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        // Memory admission. Other launches in flight have not shown up in MemAvailable yet.
        loop {
            let (pending, total) = {
                let st = self.lock();
                (
                    (st.launching.saturating_sub(1)) as u64 * self.cfg.memory_reserve,
                    (st.slots.len() + st.launching) as u64,
                )
            };
            // Budget: every live browser may grow to `memory_reserve`; the first always may start.
            if let Some(b) = self.mem_budget {
                if total > 1 && total * self.cfg.memory_reserve > b {
                    self.metrics.admission_rejections_memory.inc();
                    tracing::debug!(
                        browsers = total,
                        budget_mib = b >> 20,
                        reserve_mib = self.cfg.memory_reserve >> 20,
                        "another browser would exceed the memory budget; waiting"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            let procfs = self.env.procfs.clone();
            let headroom = tokio::task::spawn_blocking(move || admission::headroom(&procfs))
                .await
                .ok()
                .flatten();
            match headroom {
                Some(h) if !admission::fits(h, pending, self.cfg.memory_reserve) => {
                    self.metrics.admission_rejections_memory.inc();
                    tracing::warn!(
                        available_mib = h >> 20,
                        reserve_mib = self.cfg.memory_reserve >> 20,
                        "not enough memory for another browser; waiting"
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                _ => break,
            }
        }
        let started = Instant::now();
        let dir = self.run_dir.join(format!("b{id}"));
        match Browser::launch(id, dir, &self.spec, &self.env, Mode::Owned).await {
            Ok(b) => {
                self.lock().breaker.success();
                self.metrics
                    .launch_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.browsers_launched.inc();
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .browsers_launched += 1;
                tracing::debug!(
                    browser = id,
                    pid = b.pid,
                    ms = started.elapsed().as_millis() as u64,
                    "browser launched"
                );
                Some(b)
            }
            Err(e) => {
                self.lock().breaker.failure(Instant::now());
                self.metrics.launch_failures.inc();
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .launch_failures += 1;
                tracing::error!(
                    browser = id,
                    error = format!("{e:#}"),
                    "browser launch failed"
                );
                None
            }
        }
    }

    fn spawn_close(self: &Arc<Self>, slot: Slot) {
        let pool = self.clone();
        self.tasks.spawn(async move {
            let Slot {
                browser, _permit, ..
            } = slot;
            let report = pool.close_browser(browser).await;
            drop(_permit);
            pool.metrics.active_browsers.dec();
            let mut s = pool.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.browsers_closed += 1;
            s.processes_signalled += report.signalled as u64;
            s.leaked_processes += report.leaked_processes.len() as u64;
            s.dirs_left += u64::from(report.dir_left);
            s.unverified += u64::from(report.unverified.is_some());
            drop(s);
            pool.changed.notify_waiters();
        });
    }

    async fn close_browser(&self, browser: Arc<Browser>) -> CloseReport {
        let started = Instant::now();
        let id = browser.id;
        let report = browser.close(&self.spec, &self.env).await;
        self.metrics
            .cleanup_duration
            .observe(started.elapsed().as_secs_f64());
        if report.leaks() > 0 {
            self.metrics.cleanup_leaks.inc_by(report.leaks());
        }
        if report.unverified.is_some() {
            self.metrics.cleanup_unverified.inc();
        }
        tracing::debug!(
            browser = id,
            signalled = report.signalled,
            leaks = report.leaks(),
            ms = started.elapsed().as_millis() as u64,
            "browser closed"
        );
        report
    }

    /// A browser outside the pool for the `abandon` fault: detached, never closed by us.
    pub async fn launch_detached(&self, tag: u64) -> anyhow::Result<Browser> {
        let name = format!(
            "{}.abandoned-{tag}",
            self.run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let dir = self
            .run_dir
            .parent()
            .unwrap_or(std::path::Path::new("/tmp"))
            .join(name);
        std::fs::create_dir_all(&dir)?;
        if let Some(m) = crate::rundir::read_marker(&self.run_dir) {
            let _ = crate::rundir::write_marker(&dir, &m);
        }
        Browser::launch(10_000 + tag, dir, &self.spec, &self.env, Mode::Detached).await
    }

    /// Close every browser and wait for all pool tasks. Call after every session has ended.
    pub async fn shutdown(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            st.closed = true;
            for s in st.slots.iter_mut() {
                s.retiring = true;
            }
            self.retire_unusable(&mut st);
        }
        self.stop.cancel();
        self.changed.notify_waiters();
        // Launches finish (bounded by the launch timeout) and close what they started.
        loop {
            let busy = {
                let st = self.lock();
                st.launching > 0 || !st.slots.is_empty()
            };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut st = self.lock();
            self.retire_unusable(&mut st);
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}
