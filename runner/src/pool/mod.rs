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
//! breaker (`breaker.rs`), a session for its target's breaker and for memory for its renderer.
//! Launches and closes run as tasks owned by the pool's tracker, so a session cancelled while
//! waiting never leaves a half-launched browser behind.
//!
//! What a session holds is RAII: a [`Lease`] gives its browser back when dropped, whatever way
//! the session ended, and a [`TargetPermit`] that was the half-open trial reports a failure when
//! dropped without an outcome — so neither a panic nor a dropped future can keep a browser busy
//! or a breaker jammed. Once the drain starts (SIGTERM) no browser is launched; every wait in
//! [`Pool::shutdown`] has a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
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

/// How often the memory of every browser's process tree (and the headroom) is measured.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Beyond the launch and close timeouts, what shutdown allows for reaping, verification and
/// directory removal before it stops waiting (and says so).
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

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
    /// RSS of the browser's process group at the last sample (0 before the first).
    rss: u64,
    /// The session whose injected `kill-browser` fault killed this browser: for the others on
    /// it, the loss is collateral.
    killed_by: Option<u64>,
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

/// One admitted launch's promise, withdrawn when the launch ends (or its future is dropped).
struct Admitted<'a>(&'a Pool);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.admitted = st.admitted.saturating_sub(1);
    }
}

struct State {
    slots: Vec<Slot>,
    launching: usize,
    /// Launches past memory admission and not yet a slot: their reserve is promised. (A launch
    /// still waiting for admission promises nothing: counting those let 13 waiting launches
    /// promise more than the host has, so no session on the running browsers fitted and every
    /// one of them waited until its deadline — the concurrency-crash replay.)
    admitted: usize,
    breaker: Breaker,
    /// One per target of the job (by its index in `targets`), opening when sessions on that
    /// target keep failing: new sessions for it wait, a half-open trial session tests it, a
    /// success closes it. Sessions for other targets go on.
    targets: HashMap<usize, Breaker>,
    /// Memory headroom at the last measurement (`None`: unreadable, everything is admitted).
    headroom: Option<u64>,
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
    /// Pool-owned launch, close and sampling tasks.
    tasks: TaskTracker,
    /// Cancels launch waits (breaker backoff, admission) at shutdown.
    stop: CancellationToken,
    /// Cancelled when the drain starts: no browser is launched after it, and a session that
    /// would have to wait for one gets none.
    drain: CancellationToken,
    /// Sessions not started yet: launch-ahead only when there is work left.
    pub demand: AtomicU64,
    stats: Mutex<PoolStats>,
}

/// How a session ended, as its target's circuit breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The session succeeded: the target works.
    Ok,
    /// The session failed on its own: counts against the target.
    Failed,
    /// The session ended in a way that says nothing about the target: an injected fault, a
    /// shutdown, a browser lost to a neighbour.
    NotTheTarget,
}

/// Leave from a target's circuit breaker to run one session on it. [`TargetPermit::report`]
/// says how the session went; a half-open trial dropped without a report counts as a failure,
/// so it can never stay "in flight" and keep every later session waiting.
pub struct TargetPermit {
    pool: Arc<Pool>,
    target: usize,
    trial: bool,
    reported: bool,
}

impl TargetPermit {
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    pub fn report(mut self, verdict: Verdict) {
        self.reported = true;
        self.pool.target_report(self.target, self.trial, verdict);
    }
}

impl Drop for TargetPermit {
    fn drop(&mut self) {
        if !self.reported && self.trial {
            tracing::warn!(
                target_index = self.target,
                "a target's half-open trial session ended without an outcome; counted as a failure"
            );
            self.pool.target_report(self.target, true, Verdict::Failed);
        }
    }
}

/// A browser lent to one session. [`Lease::finish`] gives it back with the session's outcome;
/// a lease dropped without that (a panic, a dropped future) gives it back too, as unhealthy, and
/// its target permit reports as described at [`TargetPermit`].
pub struct Lease {
    pool: Arc<Pool>,
    pub browser: Arc<Browser>,
    permit: Option<TargetPermit>,
    returned: bool,
}

impl Lease {
    /// Give the browser back. `healthy: false` retires it (closed once its other sessions end).
    pub fn finish(mut self, healthy: bool, verdict: Verdict) {
        self.returned = true;
        self.pool.give_back(&self.browser, healthy);
        if let Some(p) = self.permit.take() {
            p.report(verdict);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned {
            tracing::warn!(
                browser = self.browser.id,
                "a lease was dropped without being given back; retiring its browser"
            );
            self.pool.give_back(&self.browser, false);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the pool is shutting down")]
    Closed,
    #[error("draining: no new browser is started")]
    Draining,
}

/// What one look at the pool found for a waiting session.
enum Pick {
    Got(Arc<Browser>),
    Wait,
    Closed,
    Draining,
}

impl Pool {
    pub fn new(
        cfg: PoolConfig,
        spec: Spec,
        env: Env,
        run_dir: std::path::PathBuf,
        metrics: Arc<Metrics>,
        drain: CancellationToken,
    ) -> Arc<Self> {
        let breaker = Breaker::new(cfg.breaker_threshold, cfg.breaker_base, cfg.breaker_max);
        let headroom = admission::headroom(&env.procfs);
        let pool = Arc::new(Self {
            live: Arc::new(Semaphore::new(cfg.browsers + 1)),
            cfg,
            spec,
            env,
            run_dir,
            metrics,
            state: Mutex::new(State {
                slots: Vec::new(),
                launching: 0,
                admitted: 0,
                breaker,
                targets: HashMap::new(),
                headroom,
                closed: false,
                next_id: 1,
            }),
            changed: Notify::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            drain,
            demand: AtomicU64::new(0),
            stats: Mutex::new(PoolStats::default()),
        });
        pool.tasks
            .spawn(sample_memory(Arc::downgrade(&pool), pool.stop.clone()));
        pool
    }

    fn new_breaker(&self) -> Breaker {
        Breaker::new(
            self.cfg.breaker_threshold,
            self.cfg.breaker_base,
            self.cfg.breaker_max,
        )
    }

    fn target_report(&self, target: usize, trial: bool, verdict: Verdict) {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(br) = st.targets.get_mut(&target) {
            match verdict {
                Verdict::Ok => br.success(),
                Verdict::Failed => br.failure_of(trial, now),
                Verdict::NotTheTarget if trial => br.release_trial(),
                Verdict::NotTheTarget => {}
            }
        }
        self.set_circuit_gauge(&st);
        drop(st);
        self.changed.notify_waiters();
    }

    fn set_circuit_gauge(&self, st: &State) {
        let now = Instant::now();
        let g = st
            .targets
            .values()
            .map(|b| b.state(now).gauge())
            .fold(st.breaker.state(now).gauge(), i64::max);
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

    /// Record that session `session`'s injected fault is about to kill `browser` (before the
    /// signal: its neighbours judge their loss as soon as the browser is dead).
    pub fn note_fault_kill(&self, browser: &Browser, session: u64) {
        let mut st = self.lock();
        if let Some(s) = st.slots.iter_mut().find(|s| s.browser.id == browser.id) {
            s.killed_by = Some(session);
        }
    }

    /// The session whose injected fault killed `browser`, if one did.
    pub fn fault_killer(&self, browser: &Browser) -> Option<u64> {
        self.lock()
            .slots
            .iter()
            .find(|s| s.browser.id == browser.id)
            .and_then(|s| s.killed_by)
    }

    /// Leave from `target`'s circuit breaker: at once while it is closed, after its backoff
    /// while it is open, and as the single trial while it is half-open.
    pub async fn target_permit(
        self: &Arc<Self>,
        target: usize,
    ) -> Result<TargetPermit, AcquireError> {
        loop {
            let permit = {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                if self.drain.is_cancelled() {
                    return Err(AcquireError::Draining);
                }
                let fresh = self.new_breaker();
                let p = st
                    .targets
                    .entry(target)
                    .or_insert(fresh)
                    .permit(Instant::now());
                self.set_circuit_gauge(&st);
                p
            };
            match permit {
                Permit::Go { trial } => {
                    return Ok(TargetPermit {
                        pool: self.clone(),
                        target,
                        trial,
                        reported: false,
                    })
                }
                Permit::Wait(d) => {
                    tokio::select! {
                        _ = self.stop.cancelled() => return Err(AcquireError::Closed),
                        _ = self.drain.cancelled() => return Err(AcquireError::Draining),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
    }

    /// A browser with a free context slot for a session on `target`; launches one if needed.
    /// Cancel-safe: dropping the future while it waits leaves nothing behind (a trial permit it
    /// held reports a failure).
    pub async fn acquire(self: &Arc<Self>, target: usize) -> Result<Lease, AcquireError> {
        let permit = self.target_permit(target).await?;
        let mut rejected = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pick = {
                let mut st = self.lock();
                self.pick(&mut st, &mut rejected)
            };
            match pick {
                Pick::Got(browser) => {
                    return Ok(Lease {
                        pool: self.clone(),
                        browser,
                        permit: Some(permit),
                        returned: false,
                    })
                }
                Pick::Closed => {
                    permit.report(Verdict::NotTheTarget);
                    return Err(AcquireError::Closed);
                }
                Pick::Draining => {
                    permit.report(Verdict::NotTheTarget);
                    return Err(AcquireError::Draining);
                }
                Pick::Wait => {}
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.drain.cancelled(), if !self.drain.is_cancelled() => {}
                _ = self.stop.cancelled() => {}
                // Memory admission: the headroom changes without telling anyone.
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }

    fn pick(self: &Arc<Self>, st: &mut State, rejected: &mut bool) -> Pick {
        if st.closed {
            return Pick::Closed;
        }
        self.retire_unusable(st);
        let now = Instant::now();
        let cpb = self.cfg.contexts_per_browser;
        // The least busy usable browser: spreads sessions when there are several.
        let best = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.usable(&self.cfg, now) && s.active < cpb)
            .min_by_key(|(_, s)| s.active)
            .map(|(i, _)| i);
        if let Some(i) = best {
            if self.session_fits(st, i) {
                let slot = &mut st.slots[i];
                slot.active += 1;
                slot.started += 1;
                if slot.started >= self.cfg.recycle_after {
                    slot.retiring = true;
                }
                let browser = slot.browser.clone();
                self.maybe_launch(st);
                return Pick::Got(browser);
            }
            if !*rejected {
                *rejected = true;
                self.metrics.admission_rejections_memory.inc();
                tracing::debug!(
                    headroom_mib = st.headroom.unwrap_or(0) >> 20,
                    "not enough memory for another session's renderer; waiting"
                );
            }
        }
        // Draining: a session that would need a browser nobody is launching gets none.
        if self.drain.is_cancelled()
            && st.launching == 0
            && !st.slots.iter().any(|s| s.usable(&self.cfg, now))
        {
            return Pick::Draining;
        }
        self.maybe_launch(st);
        Pick::Wait
    }

    /// Memory admission for one more session on slot `i` (see `admission.rs`).
    fn session_fits(&self, st: &State, i: usize) -> bool {
        let Some(headroom) = st.headroom else {
            return true;
        };
        // The first session always may start: a runner that can run none is useless.
        if st.slots.iter().all(|s| s.active == 0) {
            return true;
        }
        let reserve = self.cfg.memory_reserve;
        let s = &st.slots[i];
        let before = admission::promised(reserve, s.active).saturating_sub(s.rss);
        let after = admission::promised(reserve, s.active + 1).saturating_sub(s.rss);
        admission::fits(headroom, self.unmaterialized(st), after - before)
    }

    /// Memory promised to every browser (admitted launches included) and not yet in use.
    fn unmaterialized(&self, st: &State) -> u64 {
        let reserve = self.cfg.memory_reserve;
        admission::unmaterialized(
            st.slots
                .iter()
                .map(|s| (admission::promised(reserve, s.active), s.rss)),
        ) + st.admitted as u64 * reserve
    }

    /// Give a browser back. `healthy: false` retires it (closed once its other sessions end).
    fn give_back(self: &Arc<Self>, browser: &Arc<Browser>, healthy: bool) {
        let mut st = self.lock();
        if let Some(slot) = st
            .slots
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.browser, browser))
        {
            slot.active = slot.active.saturating_sub(1);
            if !healthy {
                slot.retiring = true;
            }
        }
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
    /// replacement ahead of time — only while sessions remain to be started. Never once the
    /// drain has started.
    fn maybe_launch(self: &Arc<Self>, st: &mut State) {
        if st.closed || self.drain.is_cancelled() {
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
            Some(browser) => {
                // Shut down while launching: close it right away.
                let retiring = st.closed;
                let slot = Slot {
                    browser: Arc::new(browser),
                    active: 0,
                    started: 0,
                    retiring,
                    rss: 0,
                    killed_by: None,
                    _permit: permit,
                };
                if retiring {
                    self.spawn_close(slot);
                } else {
                    st.slots.push(slot);
                }
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

    /// Wait while the launch breaker is open or memory does not fit; `false` when the wait
    /// was ended by shutdown or the drain.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.drain.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn launch_inner(&self, id: u64) -> Option<Browser> {
        // Circuit breaker.
        let trial = loop {
            if self.drain.is_cancelled() {
                return None;
            }
            let permit = {
                let mut st = self.lock();
                let p = st.breaker.permit(Instant::now());
                self.set_circuit_gauge(&st);
                p
            };
            match permit {
                Permit::Go { trial } => break trial,
                Permit::Wait(d) => {
                    if !self.pause(d).await {
                        return None;
                    }
                }
            }
        };
        // A launch trial handed out and then given up (shutdown, drain) goes to the next launch.
        let give_up = || {
            if trial {
                self.lock().breaker.release_trial();
            }
        };
        // Memory admission: what is promised to the other browsers and not in use yet, plus one
        // reserve, must fit in the headroom measured now. Checked and promised under one lock,
        // so launches waiting together are admitted one at a time.
        let mut rejected = false;
        loop {
            if self.drain.is_cancelled() {
                give_up();
                return None;
            }
            let procfs = self.env.procfs.clone();
            let headroom = tokio::task::spawn_blocking(move || admission::headroom(&procfs))
                .await
                .ok()
                .flatten();
            let refused = {
                let mut st = self.lock();
                st.headroom = headroom;
                let pending = self.unmaterialized(&st);
                // The first browser always may start.
                let first = st.slots.is_empty() && st.admitted == 0;
                match headroom {
                    Some(h) if !first && !admission::fits(h, pending, self.cfg.memory_reserve) => {
                        Some((h, pending))
                    }
                    _ => {
                        st.admitted += 1;
                        None
                    }
                }
            };
            let Some((h, pending)) = refused else { break };
            if !rejected {
                rejected = true;
                self.metrics.admission_rejections_memory.inc();
                tracing::warn!(
                    available_mib = h >> 20,
                    promised_mib = pending >> 20,
                    reserve_mib = self.cfg.memory_reserve >> 20,
                    "not enough memory for another browser; waiting"
                );
            }
            if !self.pause(Duration::from_secs(1)).await {
                give_up();
                return None;
            }
        }
        // Promised above (no await since): withdrawn when the launch ends.
        let admitted = Admitted(self);
        let started = Instant::now();
        let dir = self.run_dir.join(format!("b{id}"));
        let launched = Browser::launch(id, dir, &self.spec, &self.env, Mode::Owned).await;
        drop(admitted);
        match launched {
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

    /// How long closing one browser may take at most (CDP close, exit, two rounds of
    /// SIGTERM/SIGKILL, verification), plus slack.
    fn close_budget(&self) -> Duration {
        let s = &self.spec;
        s.close_timeout
            + s.exit_wait
            + (s.term_grace + s.kill_wait) * 2
            + s.verify_deadline
            + SHUTDOWN_SLACK
    }

    /// Close every browser and wait for all pool tasks. Call after every session has ended.
    /// Bounded: launches in flight get their launch timeout, closes their close budget; a
    /// browser still lent after that (a lease that was never given back) is closed anyway.
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
        let deadline = tokio::time::Instant::now() + self.spec.launch_timeout + self.close_budget();
        // Launches finish (bounded by the launch timeout) and close what they started.
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = {
                let mut st = self.lock();
                self.retire_unusable(&mut st);
                st.launching > 0 || !st.slots.is_empty()
            };
            if !busy {
                break;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let mut st = self.lock();
                    let lent: usize = st.slots.iter().map(|s| s.active).sum();
                    tracing::error!(
                        lent,
                        launching = st.launching,
                        "pool shutdown deadline passed: closing browsers still lent to sessions"
                    );
                    for s in st.slots.iter_mut() {
                        s.active = 0;
                    }
                    self.retire_unusable(&mut st);
                    break;
                }
            }
        }
        self.tasks.close();
        if tokio::time::timeout(self.close_budget(), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                "pool tasks (launches, closes) still running after the shutdown deadline"
            );
        }
    }
}

/// Measure each browser's process tree (its process group) and the headroom every
/// [`SAMPLE_EVERY`], and wake sessions waiting for memory. Holds the pool weakly: it ends with
/// the pool's `stop`, or when the pool is gone.
async fn sample_memory(pool: Weak<Pool>, stop: CancellationToken) {
    let page = leakwarden_core::proc::clock_ticks_and_page_size().1;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let groups: Vec<i32> = pool.lock().slots.iter().map(|s| s.browser.pid).collect();
        let procfs = pool.env.procfs.clone();
        let (sums, headroom) = tokio::task::spawn_blocking(move || {
            let mut sums: HashMap<i32, u64> = groups.iter().map(|&g| (g, 0)).collect();
            if !sums.is_empty() {
                for pid in procfs.pids().unwrap_or_default() {
                    if let Ok(Some(s)) = procfs.stat(pid) {
                        if let Some(v) = sums.get_mut(&s.pgid) {
                            *v += s.rss_pages * page;
                        }
                    }
                }
            }
            (sums, admission::headroom(&procfs))
        })
        .await
        .unwrap_or_default();
        {
            let mut st = pool.lock();
            st.headroom = headroom;
            for s in st.slots.iter_mut() {
                if let Some(&rss) = sums.get(&s.browser.pid) {
                    s.rss = rss;
                }
            }
        }
        pool.changed.notify_waiters();
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! A pool for unit tests: a real launcher thread, a temporary run directory, and (for the
    //! tests that start Chromium) a private PID namespace to run in.

    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::launcher::{Launcher, Owned};
    use crate::proc::Procfs;

    const CHROMIUM: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

    pub(crate) struct Kit {
        pub pool: Arc<Pool>,
        pub metrics: Arc<Metrics>,
        launcher: Option<Launcher>,
        pub dir: tempfile::TempDir,
    }

    /// `browsers` browsers of 4 contexts; breaker backoff from 1 ms (or `backoff`); a memory
    /// reserve of one byte (admission always fits).
    pub(crate) fn config(browsers: usize, backoff: Duration) -> PoolConfig {
        PoolConfig {
            browsers,
            contexts_per_browser: 4,
            recycle_after: 100,
            max_age: Duration::from_secs(600),
            memory_reserve: 1,
            breaker_threshold: 3,
            breaker_base: backoff,
            breaker_max: backoff * 4,
        }
    }

    /// Call inside a Tokio runtime.
    pub(crate) fn kit(cfg: PoolConfig, chromium: PathBuf, drain: CancellationToken) -> Kit {
        let mut spec = Spec::new(chromium);
        spec.launch_timeout = Duration::from_secs(30);
        kit_with_spec(cfg, spec, drain)
    }

    /// [`kit`] with a launch spec of the test's own.
    pub(crate) fn kit_with_spec(cfg: PoolConfig, spec: Spec, drain: CancellationToken) -> Kit {
        let owned = Owned::default();
        let launcher = Launcher::start(owned.clone()).expect("launcher thread");
        let env = Env {
            launcher: launcher.handle().expect("launcher handle"),
            owned,
            procfs: Procfs::default(),
            tasks: TaskTracker::new(),
        };
        // Short: Chromium's socket paths live under it.
        let dir = tempfile::Builder::new()
            .prefix("lwp-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let metrics =
            Arc::new(Metrics::register(prometheus::Registry::new()).expect("metrics register"));
        let pool = Pool::new(
            cfg,
            spec,
            env,
            dir.path().to_path_buf(),
            metrics.clone(),
            drain,
        );
        Kit {
            pool,
            metrics,
            launcher: Some(launcher),
            dir,
        }
    }

    impl Kit {
        /// Shut the pool down, wait for the browsers' own tasks, end the launcher thread.
        pub(crate) async fn finish(mut self) -> PoolStats {
            self.pool.shutdown().await;
            let stats = self.pool.stats();
            let tasks = self.pool.env().tasks.clone();
            tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
            if let Some(l) = self.launcher.take() {
                let _ = tokio::task::spawn_blocking(move || l.join()).await;
            }
            stats
        }
    }

    /// Tests that start Chromium also kill it: they run again, as PID 1, in a private PID
    /// namespace, where nothing but their own processes can be reached. Outside the namespace
    /// this runs `test` (its full path) there, asserts that it passed, and returns `None`; inside
    /// it returns the Chromium to use. `None` as well (skipped, said on stderr) without Chromium
    /// or without the right to create a PID namespace.
    pub(crate) fn in_private_pid_namespace(test: &str) -> Option<PathBuf> {
        let Some(chromium) = CHROMIUM.iter().map(PathBuf::from).find(|p| p.exists()) else {
            eprintln!("skipped: no Chromium");
            return None;
        };
        if std::env::var_os("LW_TEST_IN_PIDNS").is_some() {
            return Some(chromium);
        }
        let can = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !can {
            eprintln!("skipped: cannot create a PID namespace");
            return None;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("LW_TEST_IN_PIDNS", "1")
            .output()
            .expect("running unshare");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "in the PID namespace:\n{text}");
        assert!(
            text.contains("1 passed"),
            "the test did not run in the namespace:\n{text}"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{config, in_private_pid_namespace, kit, kit_with_spec, Kit};
    use super::*;
    use std::path::PathBuf;

    /// Generous: only a failing test waits this long.
    const PATIENCE: Duration = Duration::from_secs(120);

    fn no_chromium() -> std::path::PathBuf {
        "/nonexistent/chromium".into()
    }

    impl Pool {
        fn target_trial_in_flight(&self, target: usize) -> bool {
            self.lock()
                .targets
                .get(&target)
                .is_some_and(|b| b.trial_in_flight())
        }
    }

    /// A lease on target 0's browser, within [`PATIENCE`].
    async fn leased(k: &super::testkit::Kit) -> Lease {
        tokio::time::timeout(PATIENCE, k.pool.acquire(0))
            .await
            .expect("a browser in time")
            .expect("a lease")
    }

    /// Issue 14, item 1: the half-open trial was handed to a session before it had a browser;
    /// a session that gave up waiting for one never reported, and its target stayed half-open
    /// with the trial "in flight" for good.
    #[tokio::test]
    async fn a_trial_session_that_gives_up_waiting_for_a_browser_does_not_jam_its_target() {
        // No browsers at all: a session waits in `acquire` until it gives up.
        let k = kit(
            config(0, Duration::from_millis(1)),
            no_chromium(),
            CancellationToken::new(),
        );
        for _ in 0..3 {
            k.pool
                .target_permit(0)
                .await
                .expect("closed circuit")
                .report(Verdict::Failed);
        }
        let pool = k.pool.clone();
        let waiting = tokio::spawn(async move { pool.acquire(0).await.map(|_| ()) });
        tokio::time::timeout(PATIENCE, async {
            while !k.pool.target_trial_in_flight(0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the waiting session took the half-open trial");
        // The session gives up (its deadline, its shutdown): the future is dropped.
        waiting.abort();
        let _ = waiting.await;
        assert!(!k.pool.target_trial_in_flight(0));
        let next = tokio::time::timeout(PATIENCE, k.pool.target_permit(0)).await;
        assert!(
            matches!(next, Ok(Ok(ref p)) if p.is_trial()),
            "the next session gets the next trial"
        );
        drop(next);
        k.finish().await;
    }

    #[tokio::test]
    async fn a_trial_permit_dropped_unreported_counts_as_a_failure() {
        let k = kit(
            config(0, Duration::from_millis(1)),
            no_chromium(),
            CancellationToken::new(),
        );
        for _ in 0..3 {
            k.pool
                .target_permit(0)
                .await
                .expect("closed")
                .report(Verdict::Failed);
        }
        let trial = tokio::time::timeout(PATIENCE, k.pool.target_permit(0))
            .await
            .expect("half-open after the backoff")
            .expect("permit");
        assert!(trial.is_trial());
        drop(trial);
        assert!(!k.pool.target_trial_in_flight(0));
        // Open again (for longer), then half-open with a new trial.
        let again = tokio::time::timeout(PATIENCE, k.pool.target_permit(0))
            .await
            .expect("a new trial after the longer backoff")
            .expect("permit");
        assert!(again.is_trial());
        again.report(Verdict::Ok);
        assert!(!k.pool.target_permit(0).await.expect("closed").is_trial());
        k.finish().await;
    }

    /// Issue 14, item 10: one breaker for every target let one dead target stall the sessions of
    /// healthy ones, and counted injected faults and cancellations as target failures.
    #[tokio::test]
    async fn a_failing_target_opens_only_its_own_breaker() {
        let k = kit(
            config(0, Duration::from_secs(3600)),
            no_chromium(),
            CancellationToken::new(),
        );
        for _ in 0..3 {
            k.pool
                .target_permit(0)
                .await
                .expect("closed")
                .report(Verdict::Failed);
        }
        // Target 0 is open for an hour; target 1 is served at once.
        let healthy = tokio::time::timeout(PATIENCE, k.pool.target_permit(1)).await;
        assert!(
            matches!(healthy, Ok(Ok(ref p)) if !p.is_trial()),
            "a healthy target is not stalled by a failing one"
        );
        drop(healthy);
        assert_eq!(
            k.metrics.circuit_state.get(),
            2,
            "the gauge shows the worst"
        );
        // Faults, cancellations and neighbours' doings do not count.
        for _ in 0..5 {
            k.pool
                .target_permit(2)
                .await
                .expect("closed")
                .report(Verdict::NotTheTarget);
        }
        assert!(!k
            .pool
            .target_permit(2)
            .await
            .expect("still closed")
            .is_trial());
        k.finish().await;
    }

    /// Issue 14, item 5: after SIGTERM no new browser may start. A session waiting for one
    /// when the drain starts gets none (and is cancelled).
    #[tokio::test]
    async fn no_browser_is_launched_once_the_drain_has_started() {
        let drain = CancellationToken::new();
        let k = kit(
            config(1, Duration::from_millis(1)),
            no_chromium(),
            drain.clone(),
        );
        k.pool.demand.store(5, Ordering::Relaxed);
        drain.cancel();
        let r = tokio::time::timeout(PATIENCE, k.pool.acquire(0))
            .await
            .expect("a draining pool answers");
        assert!(matches!(r, Err(AcquireError::Draining)));
        let stats = k.finish().await;
        assert_eq!(stats.browsers_launched + stats.launch_failures, 0);
    }

    /// Issue 14, item 3: `Lease` had no `Drop`; a lease lost outside the session's
    /// `catch_unwind` kept its browser busy and `shutdown` polled forever.
    #[test]
    fn a_lease_dropped_without_finish_gives_its_browser_back_chromium() {
        let Some(chromium) = in_private_pid_namespace(
            "pool::tests::a_lease_dropped_without_finish_gives_its_browser_back_chromium",
        ) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let k = kit(
                config(1, Duration::from_millis(1)),
                chromium,
                CancellationToken::new(),
            );
            let lease = leased(&k).await;
            drop(lease);
            // Given back as unhealthy: retired and closed while the pool still runs.
            tokio::time::timeout(PATIENCE, async {
                while k.pool.stats().browsers_closed == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("the browser of the dropped lease was closed");
            let stats = tokio::time::timeout(PATIENCE, k.finish())
                .await
                .expect("shutdown returns");
            // (The pool may have launched a replacement meanwhile: closed with the rest.)
            assert_eq!(stats.browsers_closed, stats.browsers_launched, "{stats:?}");
            assert_eq!(stats.leaked_processes + stats.dirs_left, 0, "{stats:?}");
        });
    }

    /// Issue 14, item 3: every shutdown wait has a deadline — even a lease that is never given
    /// back (here: forgotten) does not keep `shutdown` waiting, and its browser is closed.
    #[test]
    fn shutdown_closes_a_browser_whose_lease_never_came_back_chromium() {
        let Some(chromium) = in_private_pid_namespace(
            "pool::tests::shutdown_closes_a_browser_whose_lease_never_came_back_chromium",
        ) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let k = kit(
                config(1, Duration::from_millis(1)),
                chromium,
                CancellationToken::new(),
            );
            let lease = leased(&k).await;
            std::mem::forget(lease);
            let stats = tokio::time::timeout(PATIENCE * 2, k.finish())
                .await
                .expect("shutdown returns by its deadline");
            assert_eq!(stats.browsers_closed, 1);
            assert_eq!(stats.leaked_processes + stats.dirs_left, 0, "{stats:?}");
        });
    }

    /// The browser's contexts, as Chromium lists them.
    async fn contexts(b: &Browser) -> Vec<String> {
        use chromiumoxide::cdp::browser_protocol::target::GetBrowserContextsParams;
        let r = tokio::time::timeout(PATIENCE, b.cdp.execute(GetBrowserContextsParams::default()))
            .await
            .expect("Target.getBrowserContexts answered in time")
            .expect("Target.getBrowserContexts");
        r.result
            .browser_context_ids
            .iter()
            .map(|c| c.inner().clone())
            .collect()
    }

    /// Issue 14, item 8: the warm-up ran `createBrowserContext` and the page under one timeout;
    /// when it fired after the context had been created, the context and its renderer stayed in
    /// a healthy browser until it recycled. Limits from 1 ms to 2 s: the short ones end before
    /// the context exists, the long ones with a page, and those in between (a context takes a
    /// few ms here, its page a renderer start: 50–300 ms) after the context and before the page
    /// — the case that leaked. Whatever the limit, a warm-up that failed leaves no context.
    #[test]
    fn a_warm_up_that_times_out_leaves_no_context_behind_chromium() {
        let Some(chromium) = in_private_pid_namespace(
            "pool::tests::a_warm_up_that_times_out_leaves_no_context_behind_chromium",
        ) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let k = kit(
                config(1, Duration::from_millis(1)),
                chromium,
                CancellationToken::new(),
            );
            let lease = leased(&k).await;
            let browser = lease.browser.clone();
            assert_eq!(contexts(&browser).await, Vec::<String>::new());
            let (mut timed_out, mut ready) = (0, 0);
            for ms in [
                1u64, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 2048,
            ] {
                browser.start_warm(Duration::from_millis(ms));
                let task = browser.take_warm().expect("a warm-up was started");
                match tokio::time::timeout(PATIENCE, task)
                    .await
                    .expect("the warm-up ends")
                    .expect("the warm-up task did not panic")
                {
                    Ok((ctx, _page)) => {
                        ready += 1;
                        browser.dispose_context(&ctx).await.expect("dispose");
                    }
                    Err(e) => {
                        timed_out += 1;
                        assert!(e.to_string().contains("timed out"), "{e:#}");
                    }
                }
                let left = contexts(&browser).await;
                assert!(left.is_empty(), "limit {ms} ms left contexts {left:?}");
            }
            assert!(
                timed_out > 0 && ready > 0,
                "{timed_out} timed out, {ready} ready"
            );
            lease.finish(true, Verdict::Ok);
            let stats = tokio::time::timeout(PATIENCE, k.finish())
                .await
                .expect("shutdown returns");
            assert_eq!(stats.leaked_processes + stats.dirs_left, 0, "{stats:?}");
        });
    }

    /// A kit of one-browser pools and, outside its pool, one browser launched with the kit's
    /// spec (30 s launch timeout, `extra_args`) in the kit's directory.
    async fn one_browser(chromium: PathBuf, extra_args: &[&str]) -> (Kit, Spec, Browser) {
        let mut spec = Spec::new(chromium);
        spec.launch_timeout = Duration::from_secs(30);
        spec.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let k = kit_with_spec(
            config(1, Duration::from_millis(1)),
            spec.clone(),
            CancellationToken::new(),
        );
        let browser = tokio::time::timeout(
            PATIENCE,
            Browser::launch(1, k.dir.path().join("b1"), &spec, k.pool.env(), Mode::Owned),
        )
        .await
        .expect("launched in time")
        .expect("launched");
        (k, spec, browser)
    }

    /// With Chromium 156's defaults every new context got two `browser_ui` targets
    /// (`chrome://omnibox-popup.top-chrome/…`) in a WebUI renderer of their own: a second
    /// renderer per session, about 40 % of a bench session's CPU. A session's context has its
    /// page and nothing else, also when the user passes a `--disable-features` list of their own
    /// (Chromium reads only the last one); and the page collects no performance metrics.
    #[test]
    fn a_sessions_context_holds_only_its_page_chromium() {
        let Some(chromium) = in_private_pid_namespace(
            "pool::tests::a_sessions_context_holds_only_its_page_chromium",
        ) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            use chromiumoxide::cdp::browser_protocol::target::GetTargetsParams;
            let (k, spec, browser) =
                one_browser(chromium, &["--disable-features=Translate,SomethingElse"]).await;
            let env = k.pool.env();
            let ctx = browser.new_context().await.expect("context");
            let page = browser.new_page(&ctx).await.expect("page");
            // chromiumoxide turns the Performance domain on for every page; ours is off (an
            // agent that is off reports no metrics).
            let metrics = page
                .execute(
                    chromiumoxide::cdp::browser_protocol::performance::GetMetricsParams::default(),
                )
                .await
                .expect("Performance.getMetrics")
                .result
                .metrics;
            assert!(
                metrics.is_empty(),
                "Performance is on: {} metrics",
                metrics.len()
            );
            // The popup's targets, when they come, come with the context's first page.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let targets = browser
                .cdp
                .execute(GetTargetsParams::default())
                .await
                .expect("Target.getTargets")
                .result
                .target_infos;
            let of_ctx: Vec<(String, String)> = targets
                .iter()
                .filter(|t| t.browser_context_id.as_ref() == Some(&ctx))
                .map(|t| (t.r#type.clone(), t.url.clone()))
                .collect();
            assert_eq!(
                of_ctx,
                vec![("page".to_string(), "about:blank".to_string())],
                "all targets: {targets:?}"
            );
            let report = browser.close(&spec, env).await;
            assert_eq!(report.leaks(), 0, "{report:?}");
            tokio::time::timeout(PATIENCE, k.finish())
                .await
                .expect("shutdown returns");
        });
    }

    /// Chromium keeps a spare renderer process started ahead for the context used last, for
    /// its next navigation. A session's context is new each time, so the spare was never the
    /// one used: it started, and was thrown away with its context — two renderer starts per
    /// session for nothing (three renderers where one page needs one; 13 % of a bench
    /// session's CPU). While a session's page is open, its browser runs that page's renderer
    /// and no other.
    #[test]
    fn a_session_starts_its_pages_renderer_and_no_spare_chromium() {
        let Some(chromium) = in_private_pid_namespace(
            "pool::tests::a_session_starts_its_pages_renderer_and_no_spare_chromium",
        ) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let (k, spec, browser) = one_browser(chromium, &[]).await;
            let env = k.pool.env();
            let site_stop = CancellationToken::new();
            let site_tasks = TaskTracker::new();
            let site = crate::site::start(0, &site_tasks, site_stop.clone())
                .await
                .expect("site");
            // In this PID namespace every renderer is this browser's.
            let renderers = || {
                let (cmdlines, err) = crate::proc::Procfs::new("/proc").cmdlines(0);
                assert!(err.is_none(), "{err:?}");
                cmdlines
                    .iter()
                    .filter(|c| c.windows(15).any(|w| w == b"--type=renderer"))
                    .count()
            };
            for session in 0..3 {
                let ctx = browser.new_context().await.expect("context");
                let page = browser.new_page(&ctx).await.expect("page");
                for path in ["/", "/rows"] {
                    tokio::time::timeout(PATIENCE, page.goto(format!("http://{site}{path}")))
                        .await
                        .expect("navigated in time")
                        .expect("navigated");
                }
                // A spare is started once a navigation has taken a process; give it time.
                tokio::time::sleep(Duration::from_millis(500)).await;
                // At most two: the page's, and that of the default context's first tab
                // (about:blank; it may start later than the page on a loaded machine).
                let n = renderers();
                assert!(n <= 2, "session {session}: {n} renderers");
                browser.dispose_context(&ctx).await.expect("dispose");
            }
            let report = browser.close(&spec, env).await;
            assert_eq!(report.leaks(), 0, "{report:?}");
            site_stop.cancel();
            site_tasks.close();
            tokio::time::timeout(PATIENCE, site_tasks.wait())
                .await
                .expect("the site stops");
            tokio::time::timeout(PATIENCE, k.finish())
                .await
                .expect("shutdown returns");
        });
    }
}
