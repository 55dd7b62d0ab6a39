//! leakwarden-runner: runs headless Chromium sessions (CDP, `chromiumoxide`) so that a session
//! can fail in every way a browser fails and still leave nothing behind — no process, no file
//! descriptor, no profile directory.
//!
//! What it owns and how (see DESIGN.md, "The runner's guarantees"):
//! - every browser it starts: spawned from one long-lived thread (`launcher.rs`) in its own
//!   process group with a parent-death signal, in its own directory under the run directory
//!   (`rundir.rs`), closed and verified by `browser.rs`;
//! - every child that loses its parent: the runner is a child subreaper and reaps them
//!   (`reaper.rs`);
//! - every task: sessions, launches, closes and servers run under task trackers and
//!   cancellation tokens; nothing is detached.
//!
//! [`run`] is the whole program minus argument parsing and logging set-up (`main.rs`).

pub mod admission;
pub mod breaker;
pub mod browser;
pub mod config;
pub mod exec;
pub mod faults;
pub mod guard;
pub mod http;
pub mod job;
pub mod jobnet;
pub mod kill;
pub mod launcher;
pub mod metrics;
pub mod netopts;
pub mod pool;
pub mod proc;
pub mod reaper;
pub mod rundir;
pub mod serve;
pub mod session;
pub mod signal;
pub mod site;
pub mod summary;
mod sys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::browser::Spec;
use crate::config::Config;
use crate::launcher::{Launcher, Owned};
use crate::metrics::Metrics;
use crate::proc::Procfs;
use crate::signal::Shutdown;
use crate::summary::{Records, Summary};

/// How long the embedded servers get to finish their connections at exit.
const SERVICE_STOP_GRACE: Duration = Duration::from_secs(3);

/// Run the configured job to completion (or until `shutdown`), clean up everything, and return
/// the summary.
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let procfs = Procfs::default();

    let abandon = cfg
        .job
        .faults
        .iter()
        .any(|f| f.fault == faults::Fault::Abandon);
    // The `abandon` fault names a directory after the session's index.
    let abandon_max = abandon.then(|| cfg.job.sessions.saturating_sub(1));
    let (dir, stale_removed) = prepare_run_dir(&cfg.run_root, &procfs, &metrics, abandon_max)?;
    let run_path = dir.path().to_path_buf();
    // The guard removes the directory should the runner be SIGKILLed.
    let run_guard = guard::spawn_or_warn(&run_path);
    // Declared after the guard, so dropped before it on every early exit: the directory is gone
    // by the time the guard wakes.
    let run_dir = dir;
    tracing::info!(run_dir = %run_path.display(), job = %cfg.job.name, sessions = cfg.job.sessions, concurrency = cfg.job.concurrency, "run starting");

    if abandon {
        // A subreaper would adopt the abandoned browsers, and a live runner would still own
        // them: they must become the real orphans a buggy bot leaves, for the sidecar to catch.
        tracing::warn!("fault `abandon`: the runner is not a child subreaper in this run");
    } else {
        reaper::become_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
    }
    let owned = Owned::default();
    let launcher = Launcher::start(owned.clone()).context("starting the launcher thread")?;
    let launch_handle = launcher.handle().context("launcher thread has no handle")?;

    // Services and helpers: reaper, embedded site, metrics endpoint. From here on every exit
    // stops them and waits for them; the run directory removes itself when dropped.
    let services = Services::new();
    services.tasks.spawn(reaper::run(
        procfs.clone(),
        owned.clone(),
        services.reaper_stop.clone(),
    ));
    let (site_url, artifacts) = match start_services(&cfg, &metrics, &services, &run_path).await {
        Ok(v) => v,
        Err(e) => {
            services.stop().await;
            return Err(e);
        }
    };

    let total = cfg.job.sessions;
    let job = Arc::new(cfg.job.clone());
    // Each session's record (~1 KB) is kept only if `--summary-json` will write it; the table
    // needs the counts alone.
    let records = if cfg.summary_json.is_some() {
        Records::default()
    } else {
        Records::counts_only()
    };
    let progress_stop = CancellationToken::new();
    services.tasks.spawn(summary::progress(
        records.clone(),
        total,
        metrics.clone(),
        started,
        progress_stop.clone(),
    ));
    let env = exec::JobEnv {
        launcher: launch_handle,
        owned: owned.clone(),
        procfs: procfs.clone(),
        site: site_url,
        metrics: metrics.clone(),
        chromium: cfg.chromium.clone(),
        chromium_args: cfg.chromium_args.clone(),
        launch_timeout: cfg.launch_timeout,
        gauges: true,
    };
    let plan = exec::JobPlan {
        job: job.clone(),
        pool: cfg.pool.clone(),
        dir: run_path.clone(),
        artifacts,
        // The run directory's name is unique per run (pid and start time).
        id: run_path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches(rundir::PREFIX)
                    .to_string()
            })
            .unwrap_or_default(),
        cookies: cfg.cookies.clone(),
    };
    let done = exec::execute(&env, &plan, &records, &shutdown).await;
    drop(env);
    reaper::reap_pass(&procfs, &owned);
    let run_dir_removed = match run_dir.remove() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(dir = %run_path.display(), error = %e, "cleanup leak: run directory not removed");
            metrics.cleanup_leaks.inc();
            false
        }
    };
    if let Some(g) = run_guard {
        g.finish().await;
    }
    // Every browser is gone: the launcher thread may exit now (its exit fires pdeathsig).
    tokio::task::spawn_blocking(move || launcher.join())
        .await
        .ok();

    progress_stop.cancel();
    services.stop().await;

    let mut summary = summary::build(
        &job.name,
        &run_path.display().to_string(),
        total,
        job.concurrency,
        done.wall,
        records.take(),
        done.stats,
        done.extra_leaks,
        stale_removed,
        run_dir_removed,
        shutdown.intake.is_cancelled(),
    );
    summary.runner_cpu_seconds = Some(summary::own_cpu_seconds());
    Ok(summary)
}

/// The helper tasks of a run or a service (reaper, embedded site, HTTP endpoints, progress)
/// and what stops them. [`Services::stop`] is called on every way out, early errors included,
/// so no task outlives its run.
pub(crate) struct Services {
    pub tasks: TaskTracker,
    /// Stops the servers and the progress line.
    pub stop: CancellationToken,
    /// Stops the reaper (last: it reaps what the others leave).
    pub reaper_stop: CancellationToken,
}

impl Services {
    pub fn new() -> Self {
        Self {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            reaper_stop: CancellationToken::new(),
        }
    }

    /// Stop every task and wait for them, at most [`SERVICE_STOP_GRACE`].
    pub async fn stop(self) {
        self.stop.cancel();
        self.reaper_stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(SERVICE_STOP_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "embedded servers did not stop in time"
            );
        }
    }
}

/// A safety net for a panic: the tasks are told to stop (the runtime's shutdown ends them).
/// Every ordinary way out calls [`Services::stop`] and waits.
impl Drop for Services {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reaper_stop.cancel();
    }
}

/// The embedded site, the `--listen` endpoint and the artifacts directory: the steps of a run's
/// start that fail on the outside world (a port in use, a directory that cannot be made).
/// Returns the site's URL and the artifacts directory.
async fn start_services(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    services: &Services,
    run_path: &std::path::Path,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    let site_addr = site::start(cfg.site_port, &services.tasks, services.stop.clone())
        .await
        .context("starting the embedded site")?;
    let site_url = format!("http://{site_addr}");
    tracing::info!(site = %site_url, "embedded site");
    if let Some(addr) = cfg.listen {
        let listener = http::bind(addr)
            .await
            .with_context(|| format!("--listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        http::serve(
            listener,
            metrics.clone(),
            &services.tasks,
            services.stop.clone(),
        );
    }
    let artifacts = match &cfg.artifacts {
        Some(d) => config::absolute(d),
        None => run_path.join("artifacts"),
    };
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    Ok((site_url, artifacts))
}

/// Remove the directories of dead runs under `root`, then create this run's directory and check
/// that browser temp paths under it stay short enough for Chromium's unix sockets. Returns the
/// directory and how many dead runs' directories were removed.
pub(crate) fn prepare_run_dir(
    root: &std::path::Path,
    procfs: &Procfs,
    metrics: &Metrics,
    abandon_max: Option<u64>,
) -> anyhow::Result<(rundir::RunDir, u64)> {
    let stale = rundir::remove_dead_runs(root, procfs, None);
    for d in &stale.removed {
        tracing::info!(dir = %d.display(), "removed the directory of a dead run");
    }
    match &stale.unverified {
        Some(e) if !stale.in_use.is_empty() => {
            tracing::warn!(error = %e, dirs = stale.in_use.len(), "/proc could not be read completely, so whether a live process still uses the dead runs' directories cannot be told; leaving them");
        }
        _ => {
            for d in &stale.in_use {
                tracing::warn!(dir = %d.display(), "a dead run's directory is still used by a live process; leaving it to the sidecar");
            }
        }
    }
    metrics
        .stale_run_dirs_removed
        .inc_by(stale.removed.len() as u64);
    let run_dir = rundir::RunDir::create(root, procfs)
        .with_context(|| format!("creating the run directory under {}", root.display()))?;
    let longest = browser::longest_tmpdir(run_dir.path(), abandon_max);
    if longest > browser::MAX_TMPDIR_LEN {
        let _ = run_dir.remove();
        anyhow::bail!(
            "--run-dir {} is too long: browser temp directories would reach {longest} bytes, and Chromium's unix socket paths allow {} there; use a shorter --run-dir",
            root.display(),
            browser::MAX_TMPDIR_LEN
        );
    }
    Ok((run_dir, stale.removed.len() as u64))
}

/// Last line of defence: any process still naming the run directory is terminated and counted.
/// A scan that could not read all of `/proc` counts as one leak (nothing proves the run clean)
/// and in `leakwarden_runner_cleanup_unverified_total`; what it did find is still terminated.
pub(crate) async fn sweep_run_dir(
    procfs: &Procfs,
    run_dir: &std::path::Path,
    spec: &Spec,
    metrics: &Metrics,
) -> u64 {
    let mut needle = run_dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let p = procfs.clone();
    let scan = match tokio::task::spawn_blocking(move || p.find(None, &needle, me)).await {
        Ok(s) => s,
        Err(e) => proc::Scan {
            found: Vec::new(),
            unverified: Some(proc::ScanError::List {
                root: procfs.root().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }),
        },
    };
    let unverified = match &scan.unverified {
        Some(e) => {
            tracing::error!(dir = %run_dir.display(), error = %e, "cleanup unverified: /proc could not be read, so nothing proves this run's processes gone");
            metrics.cleanup_unverified.inc();
            1
        }
        None => 0,
    };
    let left: Vec<proc::Stat> = scan.found.into_iter().filter(|s| s.state != 'Z').collect();
    if left.is_empty() {
        return unverified;
    }
    for s in &left {
        tracing::error!(pid = s.pid, comm = %s.comm, "cleanup leak: process of this run still alive after every browser was closed");
    }
    kill::terminate(procfs, &left, spec.term_grace, spec.kill_wait).await;
    left.len() as u64 + unverified
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The final sweep over a `/proc` it cannot read completely counts a leak and an unverified
    /// cleanup; before the fix the scan's error read as "nothing left" (0).
    // See: issue 14, item 2.
    #[tokio::test]
    async fn a_sweep_that_cannot_read_proc_is_not_clean() {
        let fake_proc = proc::fixture_with_unreadable();
        let run_dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::register(prometheus::Registry::new()).expect("metrics");
        let spec = Spec::new("/nonexistent/chromium".into());
        let left = sweep_run_dir(
            &Procfs::new(fake_proc.path()),
            run_dir.path(),
            &spec,
            &metrics,
        )
        .await;
        assert_eq!(left, 1, "the unverified sweep is one leak");
        assert_eq!(metrics.cleanup_unverified.get(), 1);
    }
}
