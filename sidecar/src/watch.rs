//! `leakwarden watch`: the daemon.
//!
//! One loop ([`Daemon::run`]) owns everything and does its work in named steps: [`Daemon::scan`]
//! (on an interval, when an orphan meets a rule's `orphaned_for`, and — coalesced, at most every
//! [`OWNER_RESCAN_GAP`] — when a watched owner exits), [`Daemon::enforce`] (verdicts → kills on
//! owned tasks), [`Daemon::stale`] (stale and killed trees' directories, off the loop),
//! [`Daemon::watch_owners`] (a pidfd per tree owner), [`Daemon::reload`] (SIGHUP or a changed
//! policy file), and zombie reaping when it is PID 1 or a subreaper.
//!
//! Nothing it waits for can stop it: a scan runs on its own thread with a deadline (a read that
//! blocks behind a hung mount is already given up inside it; a whole scan that overruns is left
//! behind and the next starts afresh), stale-directory work too; every task it starts is owned
//! and ended on shutdown; every wait has a deadline. `/healthz` turns 503 when no scan has
//! completed for a while, so a wedged sidecar is restarted, not trusted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::analysis::{Analysis, Tracker};
use crate::enforce::{self, Enforced, Enforcer};
use crate::http;
use crate::metrics::Metrics;
use crate::policy::{Action, Policy, PolicyError};
use crate::proc::ProcFs;
use crate::reload::{PolicySource, Reload};
use crate::snapshot::{ScanError, Scanner};
use crate::stale::KilledProfile;

/// Stale profile directories are looked for every five scan intervals, within these bounds.
const STALE_EVERY_MIN: Duration = Duration::from_secs(1);
const STALE_EVERY_MAX: Duration = Duration::from_secs(30);
/// One stale-directory run may take this long.
const STALE_DEADLINE: Duration = Duration::from_secs(20);
/// How often the renderer refreshes `/metrics` when nothing else happens (for `process_*`).
const RENDER_EVERY: Duration = Duration::from_secs(2);
/// How long shutdown waits for kills under way.
const KILL_DRAIN: Duration = Duration::from_secs(10);
/// Owner exits arriving closer together than this share one rescan.
pub const OWNER_RESCAN_GAP: Duration = Duration::from_millis(250);
/// Stale directories a run reports to the status page, at most.
const STALE_SHOWN: usize = 100;
/// Killed trees' profiles waiting for a stale run, at most.
const KILLED_QUEUE_MAX: usize = 256;

/// What one stale-directory run did.
struct StaleRun {
    removed: u64,
    failed: u64,
    found: usize,
    dirs: Vec<crate::cleanup::StaleDir>,
}

fn policy_source(cfg: &Config) -> String {
    cfg.policy
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in default".into())
}

/// `watch` settings (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Option<PathBuf>,
    pub listen: SocketAddr,
    pub interval: Duration,
    /// Forces dry-run whatever the policy says.
    pub dry_run: bool,
    pub subreaper: bool,
    pub pod_attribution: bool,
    pub proc_root: PathBuf,
}

impl Config {
    /// A scan that runs longer than this is given up and the next one starts afresh.
    pub fn scan_deadline(&self) -> Duration {
        (self.interval * 10).clamp(Duration::from_secs(10), Duration::from_secs(120))
    }
}

/// Errors that stop `watch` before it runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What scans between them remember: the scanner's cache and the analysis history.
struct Core {
    scanner: Scanner,
    tracker: Tracker,
}

impl Core {
    fn new(cfg: &Config) -> Self {
        let mut scanner = Scanner::new(ProcFs::new(&cfg.proc_root));
        scanner.pod_attribution = cfg.pod_attribution;
        Core {
            scanner,
            tracker: Tracker::new().with_proc_root(&cfg.proc_root),
        }
    }
}

/// Run until `shutdown` is cancelled. Start-up errors (bad policy, address in use) come back as
/// [`StartError`] inside the `anyhow::Error`, so `main` can map them to exit 64.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut d = Daemon::start(cfg).await?;
    d.run(shutdown).await;
    d.stop().await;
    Ok(())
}

/// The pidfds held on tree owners, and what could not be watched.
struct Owners {
    tx: mpsc::Sender<(i32, u64)>,
    rx: mpsc::Receiver<(i32, u64)>,
    watchers: HashMap<(i32, u64), AbortHandle>,
    tasks: JoinSet<()>,
    /// At most this many pidfds (a share of RLIMIT_NOFILE).
    cap: usize,
}

/// One scan's work, handed to the scan thread.
type ScanJob = (
    Box<Core>,
    Arc<Policy>,
    oneshot::Sender<(Box<Core>, Result<Analysis, ScanError>)>,
);

/// The long-lived thread scans run on (one thread, so one allocator arena: a fresh thread per
/// scan scatters each snapshot over new arenas and the resident size grows with them).
fn scan_worker() -> std::io::Result<std::sync::mpsc::Sender<ScanJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<ScanJob>();
    std::thread::Builder::new()
        .name("lw-scan".into())
        .spawn(move || {
            while let Ok((mut core, pol, reply)) = rx.recv() {
                let r = core.scanner.scan(&pol).map(|snap| {
                    let snap = Arc::new(snap);
                    core.tracker.analyze(snap, &pol)
                });
                // The loop gave up on this scan (deadline): the worker is abandoned with it.
                if reply.send((core, r)).is_err() {
                    break;
                }
            }
        })?;
    Ok(tx)
}

struct Daemon {
    cfg: Config,
    /// The scan thread; replaced when a scan overruns its deadline.
    worker: Option<std::sync::mpsc::Sender<ScanJob>>,
    source: PolicySource,
    policy: Arc<Policy>,
    generation: u64,
    metrics: Metrics,
    state: Arc<http::State>,
    render_now: Arc<Notify>,
    services: JoinSet<()>,
    services_stop: CancellationToken,
    core: Option<Box<Core>>,
    enforcer: Enforcer,
    kills: JoinSet<Enforced>,
    owners: Owners,
    reported: HashSet<(String, i32, u64)>,
    last_stale: Option<Instant>,
    stale_job: Option<oneshot::Receiver<StaleRun>>,
    killed: Vec<Arc<KilledProfile>>,
    /// When an orphaned tree will meet a rule's `orphaned_for`: scan then, not at the next tick.
    orphan_deadline: Option<tokio::time::Instant>,
    /// A coalesced owner-exit rescan, when one is due.
    owner_rescan: Option<tokio::time::Instant>,
    last_scan: Option<Instant>,
    reaps: bool,
    /// What the status page shows, and when it was last rendered.
    board: crate::status::Board,
    board_rendered: Option<Instant>,
    /// systemd's notification socket (`Type=notify`), and whether READY=1 was sent.
    notifier: Option<crate::notify::Notifier>,
    ready_sent: bool,
}

impl Daemon {
    async fn start(cfg: Config) -> anyhow::Result<Daemon> {
        let (source, policy) =
            PolicySource::open(cfg.policy.as_deref()).map_err(StartError::from)?;
        let policy = Arc::new(policy);
        let listener = http::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().ok();
        // A sidecar holding a pidfd per owner and serving many connections needs more than a
        // systemd service's default 1,024 descriptors.
        let nofile = leakwarden_core::limits::raise_nofile();
        let metrics = Metrics::register(Registry::new()).context("registering metrics")?;
        metrics.policy_ok.set(1);
        for o in ["success", "rejected"] {
            metrics.reloads.with_label_values(&[o]);
        }
        for o in ["removed", "failed"] {
            metrics.stale_removed.with_label_values(&[o]);
        }
        precreate_kill_series(&metrics, &policy);
        let dry = cfg.dry_run || policy.dry_run;
        metrics.daemon.dry_run.set(i64::from(dry));
        let state = Arc::new(http::State::new(
            cfg.interval,
            cfg.scan_deadline(),
            metrics.http.clone(),
        ));
        state.set_metrics(metrics.render());
        let render_now = Arc::new(Notify::new());
        let services_stop = CancellationToken::new();
        let mut services = JoinSet::new();
        services.spawn(http::serve(listener, state.clone(), services_stop.clone()));
        services.spawn(render_loop(
            metrics.clone(),
            state.clone(),
            render_now.clone(),
            services_stop.clone(),
        ));
        if cfg.subreaper {
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                .context("PR_SET_CHILD_SUBREAPER")?;
        }
        let reaps = cfg.subreaper || std::process::id() == 1;
        tracing::info!(
            listen = ?local,
            interval = ?cfg.interval,
            policy = %cfg.policy.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in default".into()),
            dry_run = dry,
            subreaper = cfg.subreaper,
            nofile = nofile.soft,
            "leakwarden watching"
        );
        let mut board = crate::status::Board::default();
        board.set_policy(&policy, policy_source(&cfg), dry);
        let (tx, rx) = mpsc::channel(256);
        let owners = Owners {
            tx,
            rx,
            watchers: HashMap::new(),
            tasks: JoinSet::new(),
            cap: leakwarden_core::limits::budget(0.5, 64, 65_536),
        };
        Ok(Daemon {
            worker: None,
            enforcer: Enforcer::new(&policy, &cfg.proc_root),
            core: Some(Box::new(Core::new(&cfg))),
            cfg,
            source,
            policy,
            generation: 1,
            metrics,
            state,
            render_now,
            services,
            services_stop,
            kills: JoinSet::new(),
            owners,
            reported: HashSet::new(),
            last_stale: None,
            stale_job: None,
            killed: Vec::new(),
            orphan_deadline: None,
            owner_rescan: None,
            last_scan: None,
            reaps,
            notifier: crate::notify::Notifier::from_env(),
            ready_sent: false,
            board,
            board_rendered: None,
        })
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        let (mut sighup, mut sigchld) =
            match (signal(SignalKind::hangup()), signal(SignalKind::child())) {
                (Ok(h), Ok(c)) => (h, c),
                _ => {
                    tracing::error!("cannot install SIGHUP/SIGCHLD handlers");
                    return;
                }
            };
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut policy_poll = tokio::time::interval(Duration::from_secs(2));
        policy_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // systemd's watchdog: pinged from this loop, and only while scans complete.
        let mut watchdog = crate::notify::watchdog_every()
            .filter(|_| self.notifier.is_some())
            .map(tokio::time::interval);
        loop {
            let scan_now = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => true,
                _ = sleep_until_opt(self.orphan_deadline) => {
                    self.orphan_deadline = None;
                    true
                }
                _ = sleep_until_opt(self.owner_rescan) => {
                    self.owner_rescan = None;
                    true
                }
                Some(id) = self.owners.rx.recv() => self.owner_exited(id),
                _ = sighup.recv() => {
                    tracing::info!("SIGHUP: reloading the policy");
                    self.reload(true);
                    false
                }
                _ = policy_poll.tick() => {
                    self.reload(false);
                    false
                }
                Some(done) = self.kills.join_next() => {
                    self.kill_done(done);
                    false
                }
                r = recv_opt(&mut self.stale_job) => {
                    self.stale_job = None;
                    self.stale_done(r);
                    false
                }
                _ = recv_signal(&mut sigchld, self.reaps) => false,
                _ = tick_opt(&mut watchdog) => {
                    if self.ready_sent && self.state.is_healthy() {
                        if let Some(n) = &self.notifier {
                            n.send("WATCHDOG=1");
                        }
                    }
                    false
                }
                Some(_) = self.owners.tasks.join_next(), if !self.owners.tasks.is_empty() => false,
            };
            if self.reaps {
                reap_zombies(&self.metrics);
            }
            if scan_now {
                self.scan_and_act().await;
            }
        }
    }

    /// A watched owner exited: rescan now, or — if the last scan was just now — once the gap
    /// has passed, however many more exit meanwhile.
    fn owner_exited(&mut self, id: (i32, u64)) -> bool {
        tracing::debug!(pid = id.0, "a tree's owner exited");
        self.owners.watchers.remove(&id);
        while let Ok(id) = self.owners.rx.try_recv() {
            self.owners.watchers.remove(&id);
        }
        match self.last_scan.map(|t| t.elapsed()) {
            Some(since) if since < OWNER_RESCAN_GAP => {
                let due = tokio::time::Instant::now() + (OWNER_RESCAN_GAP - since);
                self.owner_rescan = Some(self.owner_rescan.map_or(due, |d| d.min(due)));
                false
            }
            _ => true,
        }
    }

    async fn scan_and_act(&mut self) {
        let Some(a) = self.scan().await else { return };
        self.enforce(&a);
        self.stale(&a);
        self.watch_owners(&a);
        // The status page, at most every RENDER_EVERY: a request never scans or renders.
        if self
            .board_rendered
            .is_none_or(|t| t.elapsed() >= RENDER_EVERY)
        {
            self.board_rendered = Some(Instant::now());
            let (html, json) = self.board.render(&a);
            self.state.set_status(html, json);
        }
        self.render_now.notify_one();
    }

    /// One scan on its own thread, within the scan deadline.
    async fn scan(&mut self) -> Option<Arc<Analysis>> {
        self.last_scan = Some(Instant::now());
        self.owner_rescan = None;
        let mut core = match self.core.take() {
            Some(c) => c,
            None => Box::new(Core::new(&self.cfg)),
        };
        core.scanner.set_policy_generation(self.generation);
        let (tx, rx) = oneshot::channel();
        if self.worker.is_none() {
            match scan_worker() {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the scan thread");
                    self.metrics.scan_failures.inc();
                    self.core = Some(core);
                    return None;
                }
            }
        }
        let sent = self
            .worker
            .as_ref()
            .map(|w| w.send((core, self.policy.clone(), tx)));
        if let Some(Err(std::sync::mpsc::SendError((core, _, _)))) = sent {
            tracing::error!("the scan thread is gone; starting another");
            self.worker = None;
            self.core = Some(core);
            self.metrics.scan_failures.inc();
            return None;
        }
        let deadline = self.cfg.scan_deadline();
        let (core, result) = match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(x)) => x,
            Ok(Err(_)) => {
                self.worker = None;
                tracing::error!("the scan thread ended without a result");
                self.metrics.scan_failures.inc();
                return None;
            }
            Err(_) => {
                // Left behind with its thread: it finishes (or not) on its own; the next scan
                // starts afresh on a new thread (without history: ownership is judged from the
                // snapshot alone).
                self.worker = None;
                tracing::error!(?deadline, "a scan overran its deadline; starting afresh");
                self.metrics.scan_failures.inc();
                self.metrics
                    .daemon
                    .deadline_exceeded
                    .with_label_values(&["scan"])
                    .inc();
                return None;
            }
        };
        self.core = Some(core);
        let a = match result {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!(error = %e, "scan failed");
                self.metrics.scan_failures.inc();
                return None;
            }
        };
        self.metrics.observe(&a);
        self.state.scan_completed();
        if !self.ready_sent {
            self.ready_sent = true;
            if let Some(n) = &self.notifier {
                n.send("READY=1\nSTATUS=scanning");
            }
        }
        tracing::debug!(elapsed = ?a.snapshot.duration, procs = a.snapshot.procs.len(), "scan done");
        Some(a)
    }

    /// Judge the analysis by the policy: report lines (once per verdict), recorded decisions,
    /// kills on owned tasks.
    fn enforce(&mut self, a: &Analysis) {
        let facts = a.facts();
        let verdicts = enforce::evaluate(&self.policy, &facts);
        let dry = self.dry_run();
        let mut seen_reports = HashSet::new();
        for v in verdicts.iter().filter(|v| v.action == Action::Report) {
            let (pid, start) = subject_id(&facts, v);
            let key = (v.rule.clone(), pid, start);
            seen_reports.insert(key.clone());
            if self.reported.insert(key) {
                tracing::warn!(target: "leakwarden::audit", rule = %v.rule, action = "report", pid, reason = %v.reason, "report: {}", v.reason);
            }
        }
        self.reported.retain(|k| seen_reports.contains(k));
        let (plans, done) = self.enforcer.plan(&self.policy, &facts, &verdicts, dry);
        for e in &done {
            for (_, o) in &e.outcomes {
                self.metrics.kill(&e.verdict.rule, o);
            }
            self.board
                .kills(&e.verdict.rule, e.verdict.action.as_str(), &e.outcomes);
        }
        for p in plans {
            self.kills.spawn(p.execute());
        }
        self.orphan_deadline = next_orphan_deadline(&self.policy, &facts)
            .map(|d| tokio::time::Instant::now() + d + Duration::from_millis(20));
    }

    fn dry_run(&self) -> bool {
        self.cfg.dry_run || self.policy.dry_run
    }

    fn kill_done(&mut self, done: Result<Enforced, tokio::task::JoinError>) {
        match done {
            Ok(e) => {
                self.enforcer.finished(&e);
                for (_, o) in &e.outcomes {
                    self.metrics.kill(&e.verdict.rule, o);
                }
                self.board
                    .kills(&e.verdict.rule, e.verdict.action.as_str(), &e.outcomes);
                if let Some(p) = e.profile.as_ref().filter(|_| e.tree_gone()) {
                    if self.killed.len() < KILLED_QUEUE_MAX {
                        self.killed.push(p.clone());
                        // Remove it at the next scan rather than waiting for the stale timer.
                        self.last_stale = None;
                    }
                }
                self.render_now.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "a kill task failed"),
        }
    }

    /// Start a stale-directory run off the loop (one at a time), every few intervals or at once
    /// after a kill: killed trees' profiles first, then the stale directories.
    fn stale(&mut self, a: &Arc<Analysis>) {
        let every = (self.cfg.interval * 5).clamp(STALE_EVERY_MIN, STALE_EVERY_MAX);
        if self.stale_job.is_some() || self.last_stale.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_stale = Some(Instant::now());
        let act = !self.dry_run() && self.policy.stale_profiles.remove;
        let killed = std::mem::take(&mut self.killed);
        let (policy, a, proc_root) = (self.policy.clone(), a.clone(), self.cfg.proc_root.clone());
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("lw-stale".into())
            .spawn(move || {
                let deadline = Instant::now() + STALE_DEADLINE;
                let (mut removed, mut failed) = (0, 0);
                if act {
                    for p in &killed {
                        let d = p.remove(&policy, &a.snapshot, &proc_root, deadline);
                        audit_dir(&d.path, &d.result);
                        match d.result.as_str() {
                            "removed" => removed += 1,
                            r if r.starts_with("failed") => failed += 1,
                            _ => {}
                        }
                    }
                }
                let mut f = crate::stale::find(&policy, &a.snapshot, &proc_root, false, deadline);
                let found = f.dirs.len();
                if act {
                    let (r, x) = f.remove_all(deadline);
                    removed += r;
                    failed += x;
                    for d in &f.dirs {
                        audit_dir(&d.path, &d.result);
                    }
                }
                let mut dirs = f.dirs;
                dirs.truncate(STALE_SHOWN);
                let _ = tx.send(StaleRun {
                    removed,
                    failed,
                    found,
                    dirs,
                });
            });
        match spawned {
            Ok(_) => self.stale_job = Some(rx),
            Err(e) => tracing::error!(error = %e, "cannot start a stale-directory run"),
        }
    }

    fn stale_done(&mut self, r: Option<Result<StaleRun, oneshot::error::RecvError>>) {
        match r {
            Some(Ok(StaleRun {
                removed,
                failed,
                found,
                dirs,
            })) => {
                self.board.stale(dirs);
                self.metrics.stale_dirs.set(found as i64);
                let c = &self.metrics.stale_removed;
                c.with_label_values(&["removed"]).inc_by(removed);
                c.with_label_values(&["failed"]).inc_by(failed);
                self.render_now.notify_one();
            }
            Some(Err(_)) => tracing::error!("a stale-directory run ended without a result"),
            None => {
                // Its deadline passed (see recv_opt): left behind.
                tracing::error!("a stale-directory run overran its deadline; left behind");
                self.metrics
                    .daemon
                    .deadline_exceeded
                    .with_label_values(&["stale_dirs"])
                    .inc();
            }
        }
    }

    /// Hold a pidfd on every owner of a tree, up to the budget; count the rest.
    fn watch_owners(&mut self, a: &Analysis) {
        let want: HashSet<(i32, u64)> = a.owners.iter().copied().collect();
        self.owners.watchers.retain(|id, h| {
            let keep = want.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        let mut unwatched = 0i64;
        for id in want {
            if self.owners.watchers.contains_key(&id) {
                continue;
            }
            if self.owners.watchers.len() >= self.owners.cap {
                unwatched += 1;
                continue;
            }
            if let Some(h) = watch_owner(
                &self.cfg.proc_root,
                id,
                self.owners.tx.clone(),
                &mut self.owners.tasks,
            ) {
                self.owners.watchers.insert(id, h);
            }
        }
        let d = &self.metrics.daemon;
        d.owners_watched.set(self.owners.watchers.len() as i64);
        d.owners_unwatched.set(unwatched);
    }

    fn reload(&mut self, forced: bool) {
        match self.source.check(forced) {
            Reload::Unchanged => {}
            Reload::Loaded(p) => {
                self.policy = Arc::new(*p);
                self.enforcer.update(&self.policy);
                precreate_kill_series(&self.metrics, &self.policy);
                self.generation += 1;
                self.metrics.policy_ok.set(1);
                self.metrics.daemon.dry_run.set(i64::from(self.dry_run()));
                self.metrics.reloads.with_label_values(&["success"]).inc();
                tracing::info!("policy reloaded");
            }
            Reload::Rejected(e) => {
                self.metrics.policy_ok.set(0);
                self.metrics.reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(error = %e, "new policy rejected; the previous policy stays in force");
            }
        }
    }

    /// Kills under way finish (a half-done kill-tree is worse than a slow exit), within a bound;
    /// then every task is ended.
    async fn stop(mut self) {
        tracing::info!("shutting down");
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1");
        }
        self.owners.tasks.abort_all();
        let metrics = self.metrics.clone();
        let kills = &mut self.kills;
        let drain = async {
            while let Some(r) = kills.join_next().await {
                if let Ok(e) = r {
                    for (_, o) in &e.outcomes {
                        metrics.kill(&e.verdict.rule, o);
                    }
                }
            }
        };
        if tokio::time::timeout(KILL_DRAIN, drain).await.is_err() {
            tracing::warn!("kills still under way at shutdown; aborting them");
            self.kills.abort_all();
        }
        self.services_stop.cancel();
        let services = &mut self.services;
        let stop = async { while services.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), stop)
            .await
            .is_err()
        {
            self.services.abort_all();
        }
        while self.owners.tasks.join_next().await.is_some() {}
    }
}

async fn render_loop(
    metrics: Metrics,
    state: Arc<http::State>,
    notify: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        state.set_metrics(metrics.render());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(RENDER_EVERY) => {}
            _ = notify.notified() => {}
        }
    }
}

fn audit_dir(path: &std::path::Path, result: &str) {
    if result == "removed" {
        tracing::info!(target: "leakwarden::audit", path = %path.display(), "removed stale profile directory");
    } else {
        tracing::warn!(target: "leakwarden::audit", path = %path.display(), result, "profile directory not removed");
    }
}

/// Every acting rule's `leakwarden_kills_total` series exist from the start (at 0), so dashboards
/// and `increase()` see the first kill.
fn precreate_kill_series(metrics: &Metrics, policy: &Policy) {
    for r in policy.rules.iter().filter(|r| r.action != Action::Report) {
        for o in [
            "killed",
            "terminated",
            "skipped",
            "dry_run",
            "rate_limited",
            "failed",
            "protected",
        ] {
            metrics.kills.with_label_values(&[r.name.as_str(), o]);
        }
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The result of a stale run, or `None` once its deadline (plus a margin) has passed; pending
/// while no run is under way.
async fn recv_opt(
    job: &mut Option<oneshot::Receiver<StaleRun>>,
) -> Option<Result<StaleRun, oneshot::error::RecvError>> {
    match job {
        Some(rx) => tokio::time::timeout(STALE_DEADLINE + Duration::from_secs(10), rx)
            .await
            .ok(),
        None => std::future::pending().await,
    }
}

async fn tick_opt(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn recv_signal(s: &mut Signal, enabled: bool) {
    if enabled {
        s.recv().await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// How long until the first orphaned tree or process meets the `orphaned_for` of an acting rule.
fn next_orphan_deadline(policy: &Policy, facts: &enforce::Facts) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    for r in &policy.rules {
        if r.action == Action::Report {
            continue;
        }
        let Some(need) = r.when.orphaned_for.map(|d| d.0) else {
            continue;
        };
        let orphan_times = facts
            .trees
            .iter()
            .filter_map(|t| t.orphaned_for)
            .chain(facts.processes.iter().filter_map(|p| p.orphaned_for));
        for o in orphan_times {
            if let Some(left) = need.checked_sub(o).filter(|d| !d.is_zero()) {
                best = Some(best.map_or(left, |b| b.min(left)));
            }
        }
    }
    best
}

fn subject_id(facts: &enforce::Facts, v: &enforce::Verdict) -> (i32, u64) {
    match v.subject {
        enforce::Subject::Process(i) => facts
            .processes
            .get(i)
            .map(|p| (p.target.pid, p.target.start_ticks))
            .unwrap_or_default(),
        enforce::Subject::Tree(i) => facts
            .trees
            .get(i)
            .and_then(|t| t.members.first())
            .map(|m| (m.pid, m.start_ticks))
            .unwrap_or_default(),
    }
}

/// Open a pidfd on an owner and spawn a task that reports its exit. `None` if it is already
/// gone or is not the process we judged (PID reused).
fn watch_owner(
    proc_root: &std::path::Path,
    id: (i32, u64),
    tx: mpsc::Sender<(i32, u64)>,
    set: &mut JoinSet<()>,
) -> Option<AbortHandle> {
    let fs = ProcFs::new(proc_root);
    let fd = leakwarden_core::pidfd::open_checked(
        &fs,
        leakwarden_core::pidfd::Identity {
            pid: id.0,
            start_ticks: id.1,
        },
    )
    .ok()?;
    let afd = crate::kill::async_pidfd(fd).ok()?;
    Some(set.spawn(async move {
        if afd.readable().await.is_ok() {
            let _ = tx.send(id).await;
        }
    }))
}

/// Reap every exited child (we are PID 1 or a subreaper: orphans' zombies are ours). The sidecar
/// starts no children of its own, so waiting for any child races nobody.
fn reap_zombies(metrics: &Metrics) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    while let Ok(Some(_)) = waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
        metrics.zombies_reaped.inc();
    }
}
