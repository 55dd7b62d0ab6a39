//! Executing one job: its sessions on a pool of browsers of its own, then every browser closed,
//! verified, and the job's directory swept. Shared by `run` (one job, the whole process) and
//! the service's job API (`POST /jobs`, many jobs over a service's lifetime), which each own
//! what lives longer than a job: the launcher thread, the reaper, the run directory, the site.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::browser::{Env, Spec};
use crate::faults::FaultPlan;
use crate::job::Job;
use crate::launcher::{LaunchHandle, Owned};
use crate::metrics::{Metrics, Outcome};
use crate::pool::{Pool, PoolConfig, PoolStats};
use crate::proc::Procfs;
use crate::session::{self, Attempt, AttemptError, SessionEnv, Values};
use crate::signal::Shutdown;
use crate::summary::{Records, SessionRecord};

/// What outlives a job.
#[derive(Clone)]
pub struct JobEnv {
    pub launcher: LaunchHandle,
    pub owned: Owned,
    pub procfs: Procfs,
    /// Base URL of the embedded site (`{site}` in targets).
    pub site: String,
    pub metrics: Arc<Metrics>,
    pub chromium: PathBuf,
    pub chromium_args: Vec<String>,
    pub launch_timeout: Duration,
    /// Whether the job's sessions move the run-wide gauges (active sessions, queue depth):
    /// `run` yes; a job inside the service no (there those gauges are the service's own
    /// sessions).
    pub gauges: bool,
}

/// One job to execute.
pub struct JobPlan {
    pub job: Arc<Job>,
    pub pool: PoolConfig,
    /// Where the job's browsers get their directories (`<dir>/b<N>/`).
    pub dir: PathBuf,
    pub artifacts: PathBuf,
    /// With the job's name, the start of every artifact's name.
    pub id: String,
    /// The job's storage state cookies (read by the caller: a file for `run`, a name in the
    /// service's `--state-dir`).
    pub cookies: Vec<serde_json::Value>,
}

/// What executing a job did.
#[derive(Debug, Clone, Copy)]
pub struct Executed {
    pub wall: Duration,
    pub stats: PoolStats,
    /// Processes found still naming the job's directory after every browser was closed.
    pub extra_leaks: u64,
}

/// Run every session of the job (until `shutdown`: `intake` stops new sessions, `hard`
/// cancels those in flight), then close and verify every browser. Records land in `records`
/// as sessions finish.
pub async fn execute(
    env: &JobEnv,
    plan: &JobPlan,
    records: &Records,
    shutdown: &Shutdown,
) -> Executed {
    let started = Instant::now();
    let job = plan.job.clone();
    let metrics = env.metrics.clone();
    let mut spec = Spec::new(env.chromium.clone());
    spec.extra_args = env.chromium_args.clone();
    spec.launch_timeout = env.launch_timeout;
    // chromiumoxide evicts its own requests after this; our step timeouts fire first.
    spec.request_timeout = job.step_timeout + Duration::from_secs(5);
    spec.context_proxy = job
        .network
        .proxy
        .clone()
        .map(|p| (p, job.network.proxy_bypass.clone()));
    spec.request_intercept = job.network.credentials().is_some();
    let browser_tasks = TaskTracker::new();
    let benv = Env {
        launcher: env.launcher.clone(),
        owned: env.owned.clone(),
        procfs: env.procfs.clone(),
        tasks: browser_tasks.clone(),
    };
    let pool = Pool::new(
        plan.pool.clone(),
        spec,
        benv,
        plan.dir.clone(),
        metrics.clone(),
    );
    let total = job.sessions;
    let faults = Arc::new(FaultPlan::new(job.faults.clone()));
    let senv = Arc::new(SessionEnv {
        job: job.clone(),
        site: env.site.clone(),
        artifacts: plan.artifacts.clone(),
        artifact_prefix: session::artifact_prefix(&job.name, &plan.id),
        network: job.network.clone(),
        cookies: crate::jobnet::cookie_params(&plan.cookies),
        save_state: job.state.is_some(),
        metrics: metrics.clone(),
    });
    let next = Arc::new(AtomicU64::new(0));
    pool.demand.store(total, Ordering::Relaxed);
    if env.gauges {
        metrics.queue_depth.set(total as i64);
    }
    let workers = TaskTracker::new();
    for _ in 0..job.concurrency.max(1) {
        let (pool, senv, faults, records, next, metrics, shutdown) = (
            pool.clone(),
            senv.clone(),
            faults.clone(),
            records.clone(),
            next.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let gauges = env.gauges;
        workers.spawn(async move {
            loop {
                if shutdown.intake.is_cancelled() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let left = total - i - 1;
                pool.demand.store(left, Ordering::Relaxed);
                if gauges {
                    metrics.queue_depth.set(left as i64);
                    metrics.active_sessions.inc();
                }
                let rec = run_session(&pool, &senv, &faults, i, &shutdown.hard, &metrics).await;
                if gauges {
                    metrics.active_sessions.dec();
                }
                records.push(rec);
            }
        });
    }
    workers.close();
    workers.wait().await;
    if env.gauges {
        metrics.queue_depth.set(0);
    }
    pool.demand.store(0, Ordering::Relaxed);
    let wall = started.elapsed();

    // Every browser of the job, then whatever still names the job's directory.
    pool.shutdown().await;
    let stats = pool.stats();
    browser_tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), browser_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("browser tasks still running after cleanup");
    }
    let extra_leaks = crate::sweep_run_dir(&env.procfs, &plan.dir, pool.spec(), &metrics).await;
    if extra_leaks > 0 {
        metrics.cleanup_leaks.inc_by(extra_leaks);
    }
    Executed {
        wall,
        stats,
        extra_leaks,
    }
}

async fn run_session(
    pool: &Arc<Pool>,
    senv: &SessionEnv,
    plan: &FaultPlan,
    index: u64,
    cancel: &CancellationToken,
    metrics: &Metrics,
) -> SessionRecord {
    let started = Instant::now();
    let faults = plan.for_session(index);
    let retries = senv.job.retries;
    let mut attempts = 0;
    let mut last_error = None;
    let mut outcome = Outcome::Failed;
    let values = Values::default();
    for attempt in 0..=retries {
        attempts += 1;
        // The values of the attempt that decided the outcome: the last one.
        values.take();
        let these = if attempt == 0 { faults.as_slice() } else { &[] };
        let t = Instant::now();
        let at = Attempt {
            index,
            attempt,
            values: &values,
        };
        let r = session::attempt(pool, senv, at, these, cancel).await;
        metrics.session_duration.observe(t.elapsed().as_secs_f64());
        match r {
            Ok(()) => {
                outcome = if attempt == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Retried
                };
                last_error = None;
                break;
            }
            Err(AttemptError::Cancelled) => {
                outcome = Outcome::Cancelled;
                last_error = Some(AttemptError::Cancelled.to_string());
                break;
            }
            Err(e) => {
                outcome = if matches!(e, AttemptError::Timeout) {
                    Outcome::Timeout
                } else {
                    Outcome::Failed
                };
                let will_retry = attempt < retries && !cancel.is_cancelled();
                tracing::warn!(session = index, attempt, error = %e, will_retry, "session attempt failed");
                last_error = Some(e.to_string());
                if cancel.is_cancelled() {
                    outcome = Outcome::Cancelled;
                    break;
                }
            }
        }
    }
    metrics.session(outcome).inc();
    SessionRecord {
        index,
        outcome,
        attempts,
        duration_ms: started.elapsed().as_millis() as u64,
        faults,
        error: last_error,
        values: values.take(),
    }
}
