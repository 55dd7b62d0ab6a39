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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::enforce::{Enforced, Enforcer};
use crate::http;
use crate::metrics::Metrics;
use crate::policy::{Action, Policy, PolicyError};
use crate::reload::{PolicySource, Reload};
use crate::stale::KilledProfile;

mod act;
mod owners;
mod scan;

use act::{recv_opt, StaleRun};
use owners::{reap_zombies, Owners};
use scan::{Core, ScanJob};

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

/// Run until `shutdown` is cancelled. Start-up errors (bad policy, address in use) come back as
/// [`StartError`] inside the `anyhow::Error`, so `main` can map them to exit 64.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut d = Daemon::start(cfg).await?;
    d.run(shutdown).await;
    d.stop().await;
    Ok(())
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

    fn dry_run(&self) -> bool {
        self.cfg.dry_run || self.policy.dry_run
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
