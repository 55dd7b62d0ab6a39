//! `leakwarden watch`: the daemon.
//!
//! One loop owns everything: it scans on an interval (and at once when a watched owner exits),
//! analyses, sets the gauges, evaluates the policy and hands kills to owned tasks, reloads the
//! policy on SIGHUP or when its file changes, removes stale profile directories, and reaps
//! zombies when it is PID 1 or a subreaper. Every task it starts lives in a `JoinSet` it owns and
//! is ended on shutdown; every wait has a deadline.
//!
//! Between scans it holds a pidfd on the owner (launcher) of every tree: when one becomes
//! readable the owner has exited, and the loop rescans at once, so an orphan is seen within
//! milliseconds of its launcher's death however long the interval.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};
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

/// Stale profile directories are looked for every five scan intervals, within these bounds.
const STALE_EVERY_MIN: Duration = Duration::from_secs(1);
const STALE_EVERY_MAX: Duration = Duration::from_secs(30);
/// How often the renderer refreshes `/metrics` when nothing else happens (for `process_*`).
const RENDER_EVERY: Duration = Duration::from_secs(2);
/// How long shutdown waits for kills under way.
const KILL_DRAIN: Duration = Duration::from_secs(10);

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

struct Core {
    scanner: Scanner,
    tracker: Tracker,
}

/// Run until `shutdown` is cancelled. Start-up errors (bad policy, address in use) come back as
/// [`StartError`] inside the `anyhow::Error`, so `main` can map them to exit 64.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (mut source, policy) =
        PolicySource::open(cfg.policy.as_deref()).map_err(StartError::from)?;
    let mut policy = Arc::new(policy);
    let listener = http::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().ok();
    let metrics = Metrics::register(Registry::new()).context("registering metrics")?;
    metrics.policy_ok.set(1);
    for o in ["success", "rejected"] {
        metrics.reloads.with_label_values(&[o]);
    }
    for o in ["removed", "failed"] {
        metrics.stale_removed.with_label_values(&[o]);
    }
    precreate_kill_series(&metrics, &policy);
    let state = Arc::new(http::State::new(metrics.http.clone()));
    state.set_metrics(metrics.render());
    let render_now = Arc::new(Notify::new());

    let tasks_token = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(http::serve(listener, state.clone(), tasks_token.clone()));
    {
        let (metrics, state, notify, token) = (
            metrics.clone(),
            state.clone(),
            render_now.clone(),
            tasks_token.clone(),
        );
        tasks.spawn(async move {
            loop {
                state.set_metrics(metrics.render());
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(RENDER_EVERY) => {}
                    _ = notify.notified() => {}
                }
            }
        });
    }

    if cfg.subreaper {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .context("PR_SET_CHILD_SUBREAPER")?;
    }
    let reaps = cfg.subreaper || std::process::id() == 1;

    tracing::info!(
        listen = ?local,
        interval = ?cfg.interval,
        policy = %cfg.policy.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in default".into()),
        dry_run = cfg.dry_run || policy.dry_run,
        subreaper = cfg.subreaper,
        "leakwarden watching"
    );

    let mut scanner = Scanner::new(ProcFs::new(&cfg.proc_root));
    scanner.pod_attribution = cfg.pod_attribution;
    let mut core = Some(Core {
        scanner,
        tracker: Tracker::new().with_proc_root(&cfg.proc_root),
    });
    let mut generation = 1u64;
    let mut enforcer = Enforcer::new(&policy, &cfg.proc_root);
    let mut kills: JoinSet<Enforced> = JoinSet::new();
    let (owner_tx, mut owner_rx) = mpsc::channel::<(i32, u64)>(256);
    let mut watchers: HashMap<(i32, u64), AbortHandle> = HashMap::new();
    let mut watcher_tasks: JoinSet<()> = JoinSet::new();
    let mut reported: HashSet<(String, i32, u64)> = HashSet::new();
    let mut last_stale: Option<Instant> = None;
    // When an orphaned tree will meet a rule's `orphaned_for`: scan then, not at the next tick.
    let mut deadline: Option<tokio::time::Instant> = None;

    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut policy_poll = tokio::time::interval(Duration::from_secs(2));
    policy_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let mut scan_now = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => scan_now = true,
            _ = sleep_until_opt(deadline) => {
                deadline = None;
                scan_now = true;
            }
            Some(id) = owner_rx.recv() => {
                tracing::debug!(pid = id.0, "a tree's owner exited; rescanning now");
                watchers.remove(&id);
                // Coalesce a burst of exits into one scan.
                while let Ok(id) = owner_rx.try_recv() {
                    watchers.remove(&id);
                }
                scan_now = true;
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the policy");
                reload(&mut source, true, &mut policy, &mut enforcer, &mut generation, &metrics);
            }
            _ = policy_poll.tick() => {
                reload(&mut source, false, &mut policy, &mut enforcer, &mut generation, &metrics);
            }
            Some(done) = kills.join_next() => {
                match done {
                    Ok(e) => {
                        enforcer.finished(&e);
                        for (_, o) in &e.outcomes {
                            metrics.kill(&e.verdict.rule, o);
                        }
                        render_now.notify_one();
                    }
                    Err(e) => tracing::error!(error = %e, "a kill task failed"),
                }
            }
            _ = sigchld.recv(), if reaps => {}
            Some(_) = watcher_tasks.join_next(), if !watcher_tasks.is_empty() => {}
        }
        if reaps {
            reap_zombies(&metrics);
        }
        if !scan_now {
            continue;
        }
        let Some(mut c) = core.take() else { break };
        c.scanner.set_policy_generation(generation);
        let pol = policy.clone();
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let r: Result<Analysis, ScanError> = c.scanner.scan(&pol).map(|snap| {
                let snap = Arc::new(snap);
                c.tracker.analyze(snap, &pol)
            });
            (c, r)
        })
        .await;
        let (c, result) = match joined {
            Ok(x) => x,
            Err(e) => {
                // The scan panicked: the scanner state is lost; start afresh next tick.
                tracing::error!(error = %e, "scan task failed");
                metrics.scan_failures.inc();
                let mut scanner = Scanner::new(ProcFs::new(&cfg.proc_root));
                scanner.pod_attribution = cfg.pod_attribution;
                core = Some(Core {
                    scanner,
                    tracker: Tracker::new().with_proc_root(&cfg.proc_root),
                });
                continue;
            }
        };
        core = Some(c);
        let a = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "scan failed");
                metrics.scan_failures.inc();
                continue;
            }
        };
        metrics.observe(&a);
        tracing::debug!(elapsed = ?started.elapsed(), procs = a.snapshot.procs.len(), "scan done");
        state.set_ready();

        // Policy.
        let facts = a.facts();
        let verdicts = enforce::evaluate(&policy, &facts);
        let dry = cfg.dry_run || policy.dry_run;
        let mut seen_reports = HashSet::new();
        for v in verdicts.iter().filter(|v| v.action == Action::Report) {
            let (pid, start) = subject_id(&facts, v);
            let key = (v.rule.clone(), pid, start);
            seen_reports.insert(key.clone());
            if reported.insert(key) {
                tracing::warn!(target: "leakwarden::audit", rule = %v.rule, action = "report", pid, reason = %v.reason, "report: {}", v.reason);
            }
        }
        reported.retain(|k| seen_reports.contains(k));
        let (plans, done) = enforcer.plan(&policy, &facts, &verdicts, dry);
        for e in &done {
            for (_, o) in &e.outcomes {
                metrics.kill(&e.verdict.rule, o);
            }
        }
        for p in plans {
            kills.spawn(p.execute());
        }

        deadline = next_orphan_deadline(&policy, &facts)
            .map(|d| tokio::time::Instant::now() + d + Duration::from_millis(20));

        // Stale profile directories.
        let stale_every = (cfg.interval * 5).clamp(STALE_EVERY_MIN, STALE_EVERY_MAX);
        if last_stale.is_none_or(|t| t.elapsed() >= stale_every) {
            last_stale = Some(Instant::now());
            let stale = crate::stale::find(&policy, &a, false);
            metrics.stale_dirs.set(stale.len() as i64);
            if !dry && policy.stale_profiles.remove {
                for d in &stale {
                    match crate::cleanup::remove_dir(&d.path) {
                        Ok(()) => {
                            tracing::info!(target: "leakwarden::audit", path = %d.path.display(), "removed stale profile directory");
                            metrics.stale_removed.with_label_values(&["removed"]).inc();
                        }
                        Err(e) => {
                            tracing::warn!(target: "leakwarden::audit", path = %d.path.display(), error = %e, "could not remove stale profile directory");
                            metrics.stale_removed.with_label_values(&["failed"]).inc();
                        }
                    }
                }
            }
        }

        // Owners to watch.
        let want: HashSet<(i32, u64)> = a.owners.iter().copied().collect();
        watchers.retain(|id, h| {
            let keep = want.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        for id in want {
            if watchers.contains_key(&id) {
                continue;
            }
            if let Some(h) = watch_owner(&cfg.proc_root, id, owner_tx.clone(), &mut watcher_tasks) {
                watchers.insert(id, h);
            }
        }
        render_now.notify_one();
    }

    tracing::info!("shutting down");
    watcher_tasks.abort_all();
    // Kills under way finish (a half-done kill-tree is worse than a slow exit), within a bound.
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
        kills.abort_all();
    }
    tasks_token.cancel();
    let stop = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    while watcher_tasks.join_next().await.is_some() {}
    Ok(())
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
            if o < need {
                let left = need - o;
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

fn reload(
    source: &mut PolicySource,
    forced: bool,
    policy: &mut Arc<Policy>,
    enforcer: &mut Enforcer,
    generation: &mut u64,
    metrics: &Metrics,
) {
    match source.check(forced) {
        Reload::Unchanged => {}
        Reload::Loaded(p) => {
            *policy = Arc::new(*p);
            enforcer.update(policy);
            precreate_kill_series(metrics, policy);
            *generation += 1;
            metrics.policy_ok.set(1);
            metrics.reloads.with_label_values(&["success"]).inc();
            tracing::info!("policy reloaded");
        }
        Reload::Rejected(e) => {
            metrics.policy_ok.set(0);
            metrics.reloads.with_label_values(&["rejected"]).inc();
            tracing::error!(error = %e, "new policy rejected; the previous policy stays in force");
        }
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
    let pid = rustix::process::Pid::from_raw(id.0)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // The pidfd names whatever has this PID now: check it is still the owner we judged.
    if crate::kill::read_start_ticks(proc_root, id.0).ok()?? != id.1 {
        return None;
    }
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
