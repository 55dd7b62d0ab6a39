//! `leakwarden-runner serve`: a CDP endpoint that puppeteer (`puppeteer.connect`) and Playwright
//! (`connect_over_cdp`) use unchanged, where every WebSocket connection is a session with a
//! browser of its own and the runner's guarantees.
//!
//! - Each connection gets one browser from a warm pool (`pool/warm.rs`), launched ahead, used by
//!   that connection only, closed and verified when the session ends. The browser speaks CDP over
//!   a pipe (`browser/pipe.rs`): it has no debugging port, so the WebSocket is the only way in.
//! - Admission (`gate.rs`): `--max-sessions` at once, `--queue` waiting in arrival order until
//!   `--queue-timeout`, then 429 with `Retry-After`; memory admission per session in the pool.
//! - Session end (`session.rs`), whatever the client does: close frame, `Browser.close`,
//!   disconnect, idle, session timeout, protocol violation, a client that stops reading, the
//!   browser exiting, shutdown — then the browser is closed and verified (0 processes, 0
//!   directories), and the slot goes to the next connection in the queue.
//! - SIGTERM: no new sessions (503), queued connections turned away, open sessions get
//!   `--drain-timeout`, then are closed; every browser is verified gone; exit 0.
//! - SIGKILL: the browsers die with the service; its guard (`guard.rs`) removes the run
//!   directory.
//!
//! Endpoints are listed in `http.rs`. Everything runs under task trackers: the HTTP front end
//! and helpers (`services`), sessions (`Service::sessions`), launches and closes (the pool's).

pub mod agent;
pub mod auth;
pub mod cdp;
pub mod config;
pub mod gate;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::browser::{Env, Spec};
use crate::launcher::{Launcher, Owned};
use crate::metrics::Metrics;
use crate::pool::warm::{WarmConfig, WarmPool};
use crate::proc::Procfs;
use crate::signal::Shutdown;
use crate::{reaper, site};
use config::{ServeConfig, MAX_BROWSER_MESSAGE};
use gate::Gate;
use metrics::ServiceMetrics;
use session::Limits;

/// A session as `/sessions` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub browser_pid: i32,
    /// The session's directory: profile `p/`, TMPDIR `t/`, downloads `d/`.
    pub dir: String,
    pub start: crate::pool::warm::Start,
    pub started_unix_ms: u64,
}

/// Everything the endpoint's handlers share.
pub struct Service {
    pub cfg: ServeConfig,
    pub pool: Arc<WarmPool>,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    pub smetrics: ServiceMetrics,
    /// Session tasks.
    pub sessions: TaskTracker,
    /// Ends every session now (after the drain deadline, or a second signal).
    pub kill: CancellationToken,
    /// No new sessions (SIGTERM received).
    pub draining: CancellationToken,
    pub live: Mutex<BTreeMap<u64, SessionInfo>>,
    /// The embedded test site's base URL.
    pub site: String,
    /// The address actually bound.
    pub local: SocketAddr,
    pub limits: Limits,
    pub jobs: Arc<jobs::Jobs>,
}

/// What a service run left, for the exit code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub leaks: u64,
}

/// Serve until `shutdown`, drain, clean up everything, and report.
pub async fn serve(
    cfg: ServeConfig,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<Report> {
    let procfs = Procfs::default();
    let (dir, _) = crate::prepare_run_dir(&cfg.run_root, &procfs, &metrics, None)?;
    let run_path = dir.path().to_path_buf();
    let run_guard = crate::guard::spawn_or_warn(&run_path);
    // Declared after the guard, so dropped before it on every early exit: the directory is gone
    // by the time the guard wakes.
    let run_dir = dir;
    reaper::become_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
    let owned = Owned::default();
    let launcher = Launcher::start(owned.clone()).context("starting the launcher thread")?;
    let launch_handle = launcher.handle().context("launcher thread has no handle")?;

    // From here on every exit stops the helper tasks and waits for them (the run directory
    // removes itself when dropped). Everything that can fail on the outside world (ports,
    // directories) comes before the first browser is launched.
    let services = crate::Services::new();
    services.tasks.spawn(reaper::run(
        procfs.clone(),
        owned.clone(),
        services.reaper_stop.clone(),
    ));
    let setup = async {
        let site_addr = site::start(cfg.site_port, &services.tasks, services.stop.clone())
            .await
            .context("starting the embedded site")?;
        let listener = leakwarden_core::http::bind(cfg.listen)
            .await
            .with_context(|| format!("--listen {}", cfg.listen))?;
        let local = listener.local_addr().context("--listen: local address")?;
        let smetrics = ServiceMetrics::register(&metrics.registry)?;
        let artifacts = match &cfg.artifacts {
            Some(d) => d.clone(),
            None => run_path.join("artifacts"),
        };
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("--artifacts {}", artifacts.display()))?;
        if let Some(d) = &cfg.state_dir {
            std::fs::create_dir_all(d).with_context(|| format!("--state-dir {}", d.display()))?;
        }
        anyhow::Ok((site_addr, listener, local, smetrics, artifacts))
    };
    let (site_addr, listener, local, smetrics, artifacts) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            services.stop().await;
            return Err(e);
        }
    };

    let mut spec = Spec::new(cfg.chromium.clone());
    spec.extra_args = cfg.chromium_args.clone();
    spec.launch_timeout = cfg.launch_timeout;
    let browser_tasks = TaskTracker::new();
    let env = Env {
        launcher: launch_handle.clone(),
        owned: owned.clone(),
        procfs: procfs.clone(),
        tasks: browser_tasks.clone(),
    };
    let pool = WarmPool::new(
        WarmConfig {
            warm: cfg.warm,
            max_live: cfg.max_sessions + cfg.warm,
            memory_reserve: cfg.browser_memory,
            max_message: MAX_BROWSER_MESSAGE,
            breaker_threshold: 3,
            breaker_base: Duration::from_secs(1),
            breaker_max: Duration::from_secs(30),
        },
        spec.clone(),
        env,
        run_path.clone(),
        metrics.clone(),
    );
    smetrics.max_sessions.set(cfg.max_sessions as i64);
    smetrics.max_queue.set(cfg.queue as i64);
    let limits = Limits {
        idle_timeout: cfg.idle_timeout,
        session_timeout: cfg.session_timeout,
        write_timeout: cfg.write_timeout,
        max_message_size: cfg.max_message_size,
    };
    let jobs = Arc::new(jobs::Jobs::new(
        crate::exec::JobEnv {
            launcher: launch_handle.clone(),
            owned: owned.clone(),
            procfs: procfs.clone(),
            site: format!("http://{site_addr}"),
            metrics: metrics.clone(),
            chromium: cfg.chromium.clone(),
            chromium_args: cfg.chromium_args.clone(),
            launch_timeout: cfg.launch_timeout,
            gauges: false,
        },
        run_path.clone(),
        artifacts,
        cfg.max_jobs,
        cfg.max_sessions,
        cfg.browser_memory,
        cfg.state_dir.clone(),
        shutdown.clone(),
    ));
    let svc = Arc::new(Service {
        gate: Gate::new(cfg.max_sessions, cfg.queue),
        cfg,
        pool: pool.clone(),
        metrics: metrics.clone(),
        smetrics,
        sessions: TaskTracker::new(),
        kill: shutdown.hard.clone(),
        draining: shutdown.intake.clone(),
        live: Mutex::new(BTreeMap::new()),
        site: format!("http://{site_addr}"),
        local,
        limits,
        jobs: jobs.clone(),
    });
    http::start(
        listener,
        svc.clone(),
        &services.tasks,
        services.stop.clone(),
    );
    tracing::info!(
        endpoint = %format!("ws://{local}/devtools/browser"),
        discovery = %format!("http://{local}/json/version"),
        site = %svc.site,
        run_dir = %run_path.display(),
        max_sessions = svc.cfg.max_sessions,
        queue = svc.cfg.queue,
        warm = svc.cfg.warm,
        "serving CDP sessions"
    );

    // Run until SIGTERM/SIGINT; then drain.
    shutdown.intake.cancelled().await;
    svc.smetrics.draining.set(1);
    svc.gate.close();
    let open = svc.live.lock().unwrap_or_else(|p| p.into_inner()).len();
    tracing::info!(
        open,
        drain = ?svc.cfg.drain_timeout,
        "draining: no new sessions; open sessions may finish"
    );
    svc.sessions.close();
    jobs.tasks.close();
    let everything = async {
        svc.sessions.wait().await;
        jobs.tasks.wait().await;
    };
    tokio::pin!(everything);
    let finished = tokio::select! {
        _ = &mut everything => true,
        _ = shutdown.hard.cancelled() => false,
    };
    // Whatever is still open ends now (`kill` is `shutdown.hard`); each session closes and
    // verifies its browser before its task ends, each job its pool.
    shutdown.hard.cancel();
    if !finished {
        everything.await;
    }
    pool.shutdown().await;
    browser_tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), browser_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("browser tasks still running after cleanup");
    }
    let extra = crate::sweep_run_dir(&procfs, &run_path, &spec, &metrics).await;
    if extra > 0 {
        metrics.cleanup_leaks.inc_by(extra);
    }
    reaper::reap_pass(&procfs, &owned);
    if let Err(e) = run_dir.remove() {
        tracing::error!(dir = %run_path.display(), error = %e, "cleanup leak: run directory not removed");
        metrics.cleanup_leaks.inc();
    }
    // The directory is gone: the guard, seeing end of file, finds nothing to do and exits.
    if let Some(g) = run_guard {
        g.finish().await;
    }
    tokio::task::spawn_blocking(move || launcher.join())
        .await
        .ok();
    services.stop().await;
    let leaks = metrics.cleanup_leaks.get();
    tracing::info!(leaks, "service stopped");
    Ok(Report { leaks })
}
