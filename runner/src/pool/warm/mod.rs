//! The runner service's pool: browsers launched ahead of the sessions that will use them, each
//! given to exactly one session and closed (and verified) when that session ends. Never reused:
//! a browser that served one client carries that client's cookies, cache and processes.
//!
//! A launch costs Chromium's start-up (hundreds of milliseconds of wall time, about a second of
//! CPU); keeping `warm` browsers ready takes it off a client's connect path. The pool refills in
//! the background whenever a browser is taken, within three bounds:
//! - at most `max_live` browsers alive (serving, ready or launching);
//! - memory admission per session: a launch waits until the memory promised to every live
//!   browser — for a session, the larger of `memory_reserve` and what its whole process tree
//!   (browser, renderers, GPU and utility processes) really uses, sampled every
//!   [`SAMPLE_EVERY`] — and not in use yet, plus one more reserve, fits in the host's (or
//!   cgroup's) headroom measured now (never a budget from the start: the host changes);
//! - the launch circuit breaker (`breaker.rs`).
//!
//! Every launch and close is a task on the pool's tracker; a [`Lease`] dropped without
//! [`Lease::finish`] still closes its browser.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::{Breaker, Permit};
use crate::browser::pipe::PipeBrowser;
use crate::browser::{CloseReport, Env, Spec};
use crate::metrics::Metrics;

mod admit;

/// How often the memory of every leased browser's process tree is measured.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Launches at once: each is about a second of CPU, and more in parallel only slows them all
/// down on a small machine.
const MAX_PARALLEL_LAUNCHES: usize = 2;
/// Beyond the launch and close timeouts, what shutdown allows before it stops waiting.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// Browsers to keep launched and ready.
    pub warm: usize,
    /// Browsers alive at most: serving, ready and launching.
    pub max_live: usize,
    pub memory_reserve: u64,
    /// Largest CDP message accepted from a browser.
    pub max_message: usize,
    pub breaker_threshold: u32,
    pub breaker_base: Duration,
    pub breaker_max: Duration,
}

/// How a session got its browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// One was ready.
    Warm,
    /// It waited for a launch.
    Cold,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("the pool is shutting down")]
    Closed,
    #[error("no browser within the deadline (memory admission: {memory})")]
    Timeout {
        /// The wait was for memory, not for a launch in progress.
        memory: bool,
    },
}

struct Leased {
    pid: i32,
    rss: u64,
}

struct State {
    ready: VecDeque<PipeBrowser>,
    launching: usize,
    leased: HashMap<u64, Leased>,
    /// Tickets of the sessions waiting in `acquire`, in arrival order.
    queue: VecDeque<u64>,
    next_ticket: u64,
    breaker: Breaker,
    /// A launch is waiting for memory right now.
    memory_blocked: bool,
    closed: bool,
    next_id: u64,
}

pub struct WarmPool {
    cfg: WarmConfig,
    spec: Spec,
    env: Env,
    run_dir: PathBuf,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    changed: Notify,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// `Browser.getVersion` of the first browser launched (for `/json/version`).
    version: Mutex<Option<serde_json::Value>>,
    launched_once: CancellationToken,
}

impl WarmPool {
    pub fn new(
        cfg: WarmConfig,
        spec: Spec,
        env: Env,
        run_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let breaker = Breaker::new(cfg.breaker_threshold, cfg.breaker_base, cfg.breaker_max);
        let pool = Arc::new(Self {
            cfg,
            spec,
            env,
            run_dir,
            metrics,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                launching: 0,
                leased: HashMap::new(),
                queue: VecDeque::new(),
                next_ticket: 0,
                breaker,
                memory_blocked: false,
                closed: false,
                next_id: 1,
            }),
            changed: Notify::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            version: Mutex::new(None),
            launched_once: CancellationToken::new(),
        });
        {
            let mut st = pool.lock();
            pool.maybe_launch(&mut st);
        }
        let p = pool.clone();
        pool.tasks.spawn(async move { p.sample_memory().await });
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The browser's own `Browser.getVersion`, once one has launched.
    pub fn version(&self) -> Option<serde_json::Value> {
        self.version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Cancelled once a browser has launched successfully (readiness).
    pub fn launched_once(&self) -> &CancellationToken {
        &self.launched_once
    }

    /// (ready, launching, leased) right now.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.ready.len(), st.launching, st.leased.len())
    }

    /// A browser for one session: a ready one at once, or the next one launched, until
    /// `deadline`. Waiting sessions are served in arrival order. Cancel-safe.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, AcquireError> {
        let mut start = Start::Warm;
        // A place in line, taken only once it has to wait (and counted as wanting a launch).
        let mut queued: Option<Queued> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let memory = {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                let my_turn = match &queued {
                    None => st.queue.is_empty(),
                    Some(q) => st.queue.front() == Some(&q.ticket),
                };
                while let Some(b) = my_turn.then(|| st.ready.pop_front()).flatten() {
                    if b.dead.is_cancelled() {
                        tracing::warn!(
                            browser = b.id,
                            "a ready browser died before it was used; closing it"
                        );
                        self.spawn_close(b, false);
                        continue;
                    }
                    if let Some(mut q) = queued.take() {
                        q.armed = false;
                        st.queue.pop_front();
                    }
                    st.leased.insert(b.id, Leased { pid: b.pid, rss: 0 });
                    self.metrics.pool_ready.set(st.ready.len() as i64);
                    match start {
                        Start::Warm => self.metrics.pool_warm_starts.inc(),
                        Start::Cold => self.metrics.pool_cold_starts.inc(),
                    }
                    self.maybe_launch(&mut st);
                    let more = !st.ready.is_empty() && !st.queue.is_empty();
                    drop(st);
                    if more {
                        // The next in line may take the next ready browser.
                        self.changed.notify_waiters();
                    }
                    return Ok(Lease {
                        pool: self.clone(),
                        browser: Some(b),
                        start,
                    });
                }
                if queued.is_none() {
                    let ticket = st.next_ticket;
                    st.next_ticket += 1;
                    st.queue.push_back(ticket);
                    queued = Some(Queued {
                        pool: self.clone(),
                        ticket,
                        armed: true,
                    });
                }
                self.maybe_launch(&mut st);
                st.memory_blocked
            };
            start = Start::Cold;
            tokio::select! {
                _ = &mut notified => {}
                _ = self.stop.cancelled() => return Err(AcquireError::Closed),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(AcquireError::Timeout { memory });
                }
            }
        }
    }

    /// Launch while fewer browsers are ready or on their way than wanted (the warm target plus
    /// one per waiting session), within the live bound.
    fn maybe_launch(self: &Arc<Self>, st: &mut State) {
        if st.closed {
            return;
        }
        loop {
            let live = st.ready.len() + st.launching + st.leased.len();
            let wanted = self.cfg.warm + st.queue.len();
            if st.ready.len() + st.launching >= wanted
                || live >= self.cfg.max_live
                || st.launching >= MAX_PARALLEL_LAUNCHES
            {
                return;
            }
            st.launching += 1;
            let id = st.next_id;
            st.next_id += 1;
            let pool = self.clone();
            self.metrics.active_browsers.inc();
            self.tasks.spawn(async move { pool.launch(id).await });
        }
    }

    async fn launch(self: Arc<Self>, id: u64) {
        let browser = self.launch_inner(id, &[]).await;
        let mut st = self.lock();
        st.launching -= 1;
        match browser {
            Some(b) if !st.closed => {
                st.ready.push_back(b);
                self.metrics.pool_ready.set(st.ready.len() as i64);
            }
            Some(b) => self.spawn_close(b, false),
            None => {
                self.metrics.active_browsers.dec();
                // A failed launch is retried through the breaker's backoff.
                self.maybe_launch(&mut st);
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    async fn launch_inner(&self, id: u64, extra_args: &[String]) -> Option<PipeBrowser> {
        loop {
            let permit = {
                let mut st = self.lock();
                let p = st.breaker.permit(Instant::now());
                self.metrics
                    .circuit_state
                    .set(st.breaker.state(Instant::now()).gauge());
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
        let mut blocked = false;
        while !self.memory_fits().await {
            if !blocked {
                self.metrics.admission_rejections_memory.inc();
                tracing::warn!(
                    reserve_mib = self.cfg.memory_reserve >> 20,
                    "not enough memory for another session's browser; waiting"
                );
            }
            blocked = true;
            self.lock().memory_blocked = true;
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if blocked {
            self.lock().memory_blocked = false;
        }
        let started = Instant::now();
        let dir = self.run_dir.join(format!("b{id}"));
        match PipeBrowser::launch(
            id,
            dir,
            &self.spec,
            &self.env,
            self.cfg.max_message,
            extra_args,
        )
        .await
        {
            Ok(b) => {
                let mut st = self.lock();
                st.breaker.success();
                self.metrics
                    .circuit_state
                    .set(st.breaker.state(Instant::now()).gauge());
                drop(st);
                self.metrics
                    .launch_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.browsers_launched.inc();
                {
                    let mut v = self.version.lock().unwrap_or_else(|p| p.into_inner());
                    if v.is_none() {
                        *v = Some(b.version.clone());
                    }
                }
                self.launched_once.cancel();
                tracing::debug!(
                    browser = id,
                    pid = b.pid,
                    ms = started.elapsed().as_millis() as u64,
                    "browser launched (pipe)"
                );
                Some(b)
            }
            Err(e) => {
                let mut st = self.lock();
                st.breaker.failure(Instant::now());
                self.metrics
                    .circuit_state
                    .set(st.breaker.state(Instant::now()).gauge());
                drop(st);
                self.metrics.launch_failures.inc();
                tracing::error!(browser = id, error = %e, "browser launch failed");
                None
            }
        }
    }

    fn spawn_close(self: &Arc<Self>, browser: PipeBrowser, leased: bool) {
        let pool = self.clone();
        self.tasks.spawn(async move {
            pool.close(browser, leased).await;
        });
    }

    async fn close(self: &Arc<Self>, browser: PipeBrowser, leased: bool) -> CloseReport {
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
        self.metrics.active_browsers.dec();
        tracing::debug!(
            browser = id,
            signalled = report.signalled,
            leaks = report.leaks(),
            ms = started.elapsed().as_millis() as u64,
            "browser closed"
        );
        {
            let mut st = self.lock();
            if leased {
                st.leased.remove(&id);
            }
            self.maybe_launch(&mut st);
        }
        self.changed.notify_waiters();
        report
    }

    /// Close every ready browser, wait for launches and leases to end, then for every task.
    /// Call after every session has ended.
    pub async fn shutdown(self: &Arc<Self>) {
        let ready: Vec<PipeBrowser> = {
            let mut st = self.lock();
            st.closed = true;
            st.ready.drain(..).collect()
        };
        self.metrics.pool_ready.set(0);
        self.stop.cancel();
        self.changed.notify_waiters();
        for b in ready {
            self.spawn_close(b, false);
        }
        // Bounded: launches in flight get their launch timeout, closes their close budget. A
        // lease still out after that belongs to a session that never ended; it is not waited
        // for (the caller's own cleanup sweeps the run directory), but said.
        let s = &self.spec;
        let close_budget = s.close_timeout
            + s.exit_wait
            + (s.term_grace + s.kill_wait) * 2
            + s.verify_deadline
            + SHUTDOWN_SLACK;
        let deadline = tokio::time::Instant::now() + s.launch_timeout + close_budget;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (launching, leased) = {
                let st = self.lock();
                (st.launching, st.leased.len())
            };
            if launching == 0 && leased == 0 {
                break;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::error!(launching, leased, "warm pool shutdown deadline passed with browsers still launching or lent");
                    break;
                }
            }
        }
        self.tasks.close();
        if tokio::time::timeout(close_budget, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("warm pool tasks still running after the shutdown deadline");
        }
    }
}

/// A session's place in line in `acquire`; leaving (also when its future is dropped while
/// waiting) lets the next one through.
struct Queued {
    pool: Arc<WarmPool>,
    ticket: u64,
    armed: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.armed {
            {
                let mut st = self.pool.lock();
                if let Some(i) = st.queue.iter().position(|&t| t == self.ticket) {
                    st.queue.remove(i);
                }
            }
            self.pool.changed.notify_waiters();
        }
    }
}

/// One browser lent to one session. [`Lease::finish`] closes it; dropping the lease without
/// that closes it too, in the background.
pub struct Lease {
    pool: Arc<WarmPool>,
    browser: Option<PipeBrowser>,
    pub start: Start,
}

impl Lease {
    pub fn browser(&mut self) -> Option<&mut PipeBrowser> {
        self.browser.as_mut()
    }

    /// Close the browser and verify; the report says what was left.
    pub async fn finish(mut self) -> CloseReport {
        match self.browser.take() {
            Some(b) => self.pool.close(b, true).await,
            None => CloseReport::default(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(b) = self.browser.take() {
            self.pool.spawn_close(b, true);
        }
    }
}
