//! Executing one job: its sessions on a pool of browsers of its own, then every browser closed,
//! verified, and the job's directory swept. Shared by `run` (one job, the whole process) and
//! the service's job API (`POST /jobs`, many jobs over a service's lifetime), which each own
//! what lives longer than a job: the launcher thread, the reaper, the run directory, the site.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::summary::{Records, RunRecord, SessionRecord};

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
        shutdown.intake.clone(),
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
                let rec = run_session(&pool, &senv, &faults, i, &shutdown, &metrics).await;
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

/// Collateral losses (a browser lost to a cause not the session's own) a session may have
/// before they count as its own failures, spending retries: a browser that keeps dying still
/// ends the session, with the cause named.
pub const MAX_COLLATERAL_RESTARTS: u32 = 3;

/// One session: its attempts (the first with its faults, then up to `retries` retries) and the
/// collateral restarts between them. Once the drain has started (`shutdown.intake`), no new
/// attempt starts: a session that would have retried or restarted ends cancelled.
async fn run_session(
    pool: &Arc<Pool>,
    senv: &SessionEnv,
    plan: &FaultPlan,
    index: u64,
    shutdown: &Shutdown,
    metrics: &Metrics,
) -> SessionRecord {
    let started = Instant::now();
    let faults = plan.for_session(index);
    let retries = senv.job.retries;
    // The attempt being run (0 = the first), and the collateral restarts so far.
    let mut attempt: u32 = 0;
    let mut collateral: u32 = 0;
    let mut runs = Vec::new();
    let mut last_error;
    let outcome;
    let values = Values::default();
    loop {
        // The values of the run that decided the outcome: the last one.
        values.take();
        // A collateral restart runs the same attempt again: the first keeps its faults (it
        // was lost before it injected any).
        let these = if attempt == 0 { faults.as_slice() } else { &[] };
        let t = Instant::now();
        let at = Attempt {
            index,
            // Every run gets its own number (artifact names).
            attempt: attempt + collateral,
            values: &values,
        };
        let ran = session::attempt(pool, senv, at, these, &shutdown.hard).await;
        metrics.session_duration.observe(t.elapsed().as_secs_f64());
        let mut run = RunRecord {
            browser: ran.browser,
            ..RunRecord::default()
        };
        let e = match ran.result {
            Ok(()) => {
                runs.push(run);
                outcome = if attempt == 0 {
                    Outcome::Ok
                } else {
                    Outcome::Retried
                };
                last_error = None;
                break;
            }
            Err(e) => e,
        };
        run.error = Some(e.to_string());
        last_error = Some(e.to_string());
        if let AttemptError::Collateral { cause, .. } = &e {
            run.collateral = Some(*cause);
        }
        runs.push(run);
        let draining = shutdown.intake.is_cancelled() || shutdown.hard.is_cancelled();
        match e {
            AttemptError::Cancelled => {
                outcome = Outcome::Cancelled;
                break;
            }
            AttemptError::Collateral { cause, message } if collateral < MAX_COLLATERAL_RESTARTS => {
                if draining {
                    tracing::info!(session = index, error = %message, "browser lost to a cause not this session's; not restarted: shutting down");
                    outcome = Outcome::Cancelled;
                    break;
                }
                collateral += 1;
                metrics.collateral(cause).inc();
                tracing::info!(session = index, attempt, restart = collateral, cause = cause.as_str(), error = %message, "browser lost to a cause not this session's; running the attempt again on another browser (no retry spent)");
            }
            e => {
                if let AttemptError::Collateral { message, .. } = &e {
                    last_error = Some(format!(
                        "{message} (after {MAX_COLLATERAL_RESTARTS} collateral restarts it counts as the session's own failure)"
                    ));
                }
                let will_retry = attempt < retries && !draining;
                tracing::warn!(session = index, attempt, error = %e, will_retry, "session attempt failed");
                if shutdown.hard.is_cancelled() {
                    outcome = Outcome::Cancelled;
                    break;
                }
                if attempt >= retries {
                    outcome = if matches!(e, AttemptError::Timeout) {
                        Outcome::Timeout
                    } else {
                        Outcome::Failed
                    };
                    break;
                }
                if draining {
                    // Its retry is what the shutdown took.
                    outcome = Outcome::Cancelled;
                    break;
                }
                attempt += 1;
            }
        }
    }
    metrics.session(outcome).inc();
    SessionRecord {
        index,
        outcome,
        attempts: attempt + 1,
        collateral_restarts: collateral,
        duration_ms: started.elapsed().as_millis() as u64,
        faults,
        error: last_error,
        values: values.take(),
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::testkit::{config, kit};

    /// Generous: only a failing test waits this long.
    const PATIENCE: Duration = Duration::from_secs(120);

    fn session_env(retries: u32, metrics: Arc<Metrics>) -> SessionEnv {
        let mut job = crate::job::default_job().expect("default job");
        job.retries = retries;
        job.session_timeout = Duration::from_secs(60);
        SessionEnv {
            network: job.network.clone(),
            job: Arc::new(job),
            site: "http://127.0.0.1:9".into(),
            artifacts: std::env::temp_dir(),
            artifact_prefix: "t".into(),
            cookies: Vec::new(),
            save_state: false,
            metrics,
        }
    }

    /// Issue 14, item 5: the retry loop checked only the hard-cancel token, so after SIGTERM a
    /// failed attempt was retried (and the retry could launch a browser). A session in flight
    /// when the drain starts makes no new attempt.
    #[tokio::test]
    async fn a_session_in_flight_when_the_drain_starts_is_not_retried() {
        let shutdown = Shutdown::new();
        // Every launch fails: the session's first attempt waits for a browser.
        let k = kit(
            config(1, Duration::from_millis(1)),
            "/nonexistent/chromium".into(),
            shutdown.intake.clone(),
        );
        k.pool.demand.store(1, Ordering::Relaxed);
        let senv = Arc::new(session_env(3, k.metrics.clone()));
        let faults = FaultPlan::new(Vec::new());
        let (pool, env, metrics, sd) = (
            k.pool.clone(),
            senv.clone(),
            k.metrics.clone(),
            shutdown.clone(),
        );
        let session =
            tokio::spawn(async move { run_session(&pool, &env, &faults, 0, &sd, &metrics).await });
        // The attempt is under way once a launch for it has been tried.
        tokio::time::timeout(PATIENCE, async {
            while k.pool.stats().launch_failures == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the attempt asked for a browser");
        shutdown.intake.cancel();
        let rec = tokio::time::timeout(PATIENCE, session)
            .await
            .expect("the session ends with the drain, not after its retries")
            .expect("session task");
        assert_eq!(rec.attempts, 1, "{rec:?}");
        assert_eq!(rec.outcome, Outcome::Cancelled, "{rec:?}");
        assert_eq!(rec.runs.len(), 1, "{rec:?}");
        k.finish().await;
    }

    #[tokio::test]
    async fn a_session_that_starts_during_the_drain_makes_one_attempt_and_launches_nothing() {
        let shutdown = Shutdown::new();
        shutdown.intake.cancel();
        let k = kit(
            config(1, Duration::from_millis(1)),
            "/nonexistent/chromium".into(),
            shutdown.intake.clone(),
        );
        k.pool.demand.store(1, Ordering::Relaxed);
        let senv = session_env(3, k.metrics.clone());
        let rec = tokio::time::timeout(
            PATIENCE,
            run_session(
                &k.pool,
                &senv,
                &FaultPlan::new(Vec::new()),
                0,
                &shutdown,
                &k.metrics,
            ),
        )
        .await
        .expect("no waiting during a drain");
        assert_eq!((rec.attempts, rec.outcome), (1, Outcome::Cancelled));
        let stats = k.finish().await;
        assert_eq!(stats.browsers_launched + stats.launch_failures, 0);
    }
}
