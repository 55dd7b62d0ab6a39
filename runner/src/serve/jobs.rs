//! The job API: the jobs `run` takes, run by the service.
//!
//! | request | what |
//! |---|---|
//! | `POST /jobs` (body: a job, YAML or JSON, at most [`MAX_JOB_BYTES`]) | run it; answers when it is done with its status and summary (`?wait=false`: 202 at once, with its id) |
//! | `GET /jobs` | every job the service remembers (running, and the last [`KEEP_FINISHED`] finished) |
//! | `GET /jobs/ID` | one job: state, sessions so far (with their `evaluate` values), the summary once done |
//! | `DELETE /jobs/ID` | cancel it: no new sessions, those in flight cancelled, browsers closed |
//!
//! A job runs on browsers of its own (the runner's context pool, `pool/mod.rs`), in
//! `<run dir>/j<N>/`, removed when it ends; its artifacts go to `--artifacts` (default
//! `<run dir>/artifacts`) named `<job name>-j<N>-<service id>-s<session>-a<attempt>-step<n>.<ext>`,
//! so jobs and service restarts sharing a directory never overwrite each other. At most
//! `--max-jobs` run at once (429 beyond); a job's concurrency is at most `--max-sessions`. On
//! SIGTERM running jobs start no new sessions and follow the service's drain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exec::{self, JobEnv, JobPlan};
use crate::faults::Fault;
use crate::job::{self, Job};
use crate::pool::PoolConfig;
use crate::signal::Shutdown;
use crate::summary::{self, Records, Summary};

/// Largest job body accepted.
pub const MAX_JOB_BYTES: usize = 1 << 20;
/// Finished jobs remembered for `GET /jobs/ID`.
pub const KEEP_FINISHED: usize = 100;
/// A job's body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Sessions sharing one browser of a job (each in its own context), as `run` does by default.
const CONTEXTS_PER_BROWSER: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Done,
    Cancelled,
}

struct Entry {
    id: String,
    name: String,
    planned: u64,
    started: Instant,
    records: Records,
    state: Mutex<State>,
    summary: Mutex<Option<Summary>>,
    /// Cancels this job alone (DELETE).
    cancel: Shutdown,
    done: CancellationToken,
}

/// What `GET /jobs/ID` answers.
#[derive(Serialize)]
pub struct Status {
    pub id: String,
    pub job: String,
    pub state: State,
    pub sessions_planned: u64,
    pub sessions_finished: usize,
    pub sessions: BTreeMap<&'static str, u64>,
    pub elapsed_seconds: f64,
    pub artifacts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// While running: the sessions finished so far (the summary has them all once done).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<crate::summary::SessionRecord>,
}

pub struct Jobs {
    env: JobEnv,
    /// The service's run directory: jobs get `j<N>/` in it.
    run_dir: PathBuf,
    pub artifacts: PathBuf,
    /// The service's own id (`<pid>-<start time>`), in artifact names.
    pub service_id: String,
    max_jobs: usize,
    max_concurrency: usize,
    browser_memory: u64,
    state_dir: Option<PathBuf>,
    next: AtomicU64,
    table: Mutex<BTreeMap<u64, Arc<Entry>>>,
    pub tasks: TaskTracker,
    drain: Shutdown,
}

type Body = Full<Bytes>;

fn json(code: StatusCode, v: impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(code, serde_json::json!({ "error": message.into() }))
}

impl Jobs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        env: JobEnv,
        run_dir: PathBuf,
        artifacts: PathBuf,
        max_jobs: usize,
        max_concurrency: usize,
        browser_memory: u64,
        state_dir: Option<PathBuf>,
        drain: Shutdown,
    ) -> Self {
        let service_id = run_dir
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches(crate::rundir::PREFIX)
                    .to_string()
            })
            .unwrap_or_default();
        Self {
            env,
            run_dir,
            artifacts,
            service_id,
            max_jobs,
            max_concurrency,
            browser_memory,
            state_dir,
            next: AtomicU64::new(1),
            table: Mutex::new(BTreeMap::new()),
            tasks: TaskTracker::new(),
            drain,
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let n: u64 = id.strip_prefix('j')?.parse().ok()?;
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n)
            .cloned()
    }

    fn status(&self, e: &Entry) -> Status {
        // Read under the summary's lock: a finishing job moves its records into its summary
        // under the same lock, so a status sees them in one place or the other, never neither.
        let slot = e.summary.lock().unwrap_or_else(|p| p.into_inner());
        let summary = slot.clone();
        // A finished job's summary has every record and the counts: its status needs the counts.
        let (records, sessions, finished) = match &summary {
            Some(s) => (Vec::new(), s.sessions.clone(), s.finished()),
            None => {
                let (records, tally) = e.records.snapshot_with_tally();
                (records, tally.by_name(), tally.finished)
            }
        };
        drop(slot);
        Status {
            id: e.id.clone(),
            job: e.name.clone(),
            state: *e.state.lock().unwrap_or_else(|p| p.into_inner()),
            sessions_planned: e.planned,
            sessions_finished: usize::try_from(finished).unwrap_or(usize::MAX),
            sessions,
            elapsed_seconds: e.started.elapsed().as_secs_f64(),
            artifacts: self.artifacts.display().to_string(),
            records,
            summary,
        }
    }

    /// Route `/jobs…` (already authorized).
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (hyper::Method::POST, "/jobs") => self.post(req).await,
            (hyper::Method::GET, "/jobs") => {
                let all: Vec<Status> = self
                    .table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|e| {
                        let mut s = self.status(e);
                        s.records.clear();
                        s.summary = None;
                        s
                    })
                    .collect();
                json(StatusCode::OK, all)
            }
            (m, p) if p.starts_with("/jobs/") => {
                let Some(e) = self.get(&p["/jobs/".len()..]) else {
                    return error(StatusCode::NOT_FOUND, "no such job");
                };
                match m {
                    hyper::Method::GET => json(StatusCode::OK, self.status(&e)),
                    hyper::Method::DELETE => {
                        e.cancel.intake.cancel();
                        e.cancel.hard.cancel();
                        json(StatusCode::ACCEPTED, self.status(&e))
                    }
                    _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE"),
                }
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "POST /jobs, GET /jobs[/ID]"),
        }
    }

    async fn post(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if self.drain.intake.is_cancelled() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        let wait = !super::auth::parse_query(req.uri().query().unwrap_or(""))
            .iter()
            .any(|(k, v)| k == "wait" && matches!(v.as_str(), "false" | "0" | "no"));
        let body = Limited::new(req.into_body(), MAX_JOB_BYTES);
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the job did not arrive in time",
                )
            }
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a job is at most {MAX_JOB_BYTES} bytes"),
                )
            }
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            Ok(Ok(c)) => c.to_bytes(),
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return error(
                StatusCode::BAD_REQUEST,
                "a job is UTF-8 text (YAML or JSON)",
            );
        };
        let job = match job::parse(text, "job") {
            Ok(j) => j,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let cookies = match self.admissible(&job) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let Some(entry) = self.start(job, cookies) else {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{} jobs are running (--max-jobs)", self.max_jobs),
            );
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("10"),
            );
            return r;
        };
        if !wait {
            return json(StatusCode::ACCEPTED, self.status(&entry));
        }
        entry.done.cancelled().await;
        json(StatusCode::OK, self.status(&entry))
    }

    /// What the service refuses to run for a stranger.
    fn admissible(&self, job: &Job) -> Result<Vec<serde_json::Value>, String> {
        if job.faults.iter().any(|f| f.fault == Fault::Abandon) {
            return Err(
                "fault `abandon` leaves browsers behind on purpose; not in the service".into(),
            );
        }
        if job.concurrency > self.max_concurrency {
            return Err(format!(
                "concurrency {} is above --max-sessions {}",
                job.concurrency, self.max_concurrency
            ));
        }
        // A stranger's job names a state; it never reads a path of its choosing.
        let Some(name) = &job.state else {
            return Ok(Vec::new());
        };
        if !crate::netopts::valid_state_name(name) {
            return Err("state: a name of letters, digits, _ and - (the service's --state-dir holds the files)".into());
        }
        let Some(dir) = &self.state_dir else {
            return Err("state: the service has no --state-dir".into());
        };
        match std::fs::read_to_string(dir.join(format!("{name}.json"))) {
            Ok(text) => {
                crate::netopts::cookies_from_state(&text).map_err(|e| format!("state {name}: {e}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("state {name}: {e}")),
        }
    }

    /// Start the job, unless `--max-jobs` are running (checked and taken under one lock).
    fn start(self: &Arc<Self>, job: Job, cookies: Vec<serde_json::Value>) -> Option<Arc<Entry>> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.values().filter(|e| !e.done.is_cancelled()).count() >= self.max_jobs {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("j{n}");
        let cancel = Shutdown {
            intake: self.drain.intake.child_token(),
            hard: self.drain.hard.child_token(),
        };
        let entry = Arc::new(Entry {
            id: id.clone(),
            name: job.name.clone(),
            planned: job.sessions,
            started: Instant::now(),
            records: Records::default(),
            state: Mutex::new(State::Running),
            summary: Mutex::new(None),
            cancel,
            done: CancellationToken::new(),
        });
        {
            t.insert(n, entry.clone());
            // Forget the oldest finished jobs beyond the bound.
            let finished: Vec<u64> = t
                .iter()
                .filter(|(_, e)| e.done.is_cancelled())
                .map(|(k, _)| *k)
                .collect();
            for k in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                t.remove(k);
            }
        }
        drop(t);
        let cpb = CONTEXTS_PER_BROWSER.min(job.concurrency).max(1);
        let plan = JobPlan {
            pool: PoolConfig {
                browsers: job.concurrency.div_ceil(cpb),
                contexts_per_browser: cpb,
                recycle_after: 100,
                max_age: Duration::from_secs(600),
                memory_reserve: self.browser_memory,
                breaker_threshold: 3,
                breaker_base: Duration::from_secs(1),
                breaker_max: Duration::from_secs(30),
            },
            dir: self.run_dir.join(&id),
            artifacts: self.artifacts.clone(),
            id: format!("{id}-{}", self.service_id),
            job: Arc::new(job),
            cookies,
        };
        let jobs = self.clone();
        let e = entry.clone();
        tracing::info!(job = %id, name = %e.name, sessions = e.planned, concurrency = plan.job.concurrency, "job starting");
        self.tasks.spawn(async move { jobs.run(e, plan).await });
        Some(entry)
    }

    async fn run(self: Arc<Self>, e: Arc<Entry>, plan: JobPlan) {
        if let Err(err) = std::fs::create_dir_all(&plan.dir) {
            tracing::error!(job = %e.id, error = %err, "creating the job's directory");
        }
        let done = exec::execute(&self.env, &plan, &e.records, &e.cancel).await;
        let dir_removed = match std::fs::remove_dir_all(&plan.dir) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => {
                tracing::error!(dir = %plan.dir.display(), error = %err, "cleanup leak: job directory not removed");
                self.env.metrics.cleanup_leaks.inc();
                false
            }
        };
        let interrupted = e.cancel.intake.is_cancelled();
        // The records move into the summary (kept once, not twice, for each finished job the
        // service remembers), under the lock `status` reads them under.
        let mut slot = e.summary.lock().unwrap_or_else(|p| p.into_inner());
        let summary = summary::build(
            &plan.job.name,
            &plan.dir.display().to_string(),
            plan.job.sessions,
            plan.job.concurrency,
            done.wall,
            e.records.take(),
            done.stats,
            done.extra_leaks,
            0,
            dir_removed,
            interrupted,
        );
        tracing::info!(job = %e.id, ok = summary.sessions["ok"], failed = summary.sessions["failed"], leaks = summary.cleanup.leaks, seconds = done.wall.as_secs_f64(), "job finished");
        *slot = Some(summary);
        drop(slot);
        *e.state.lock().unwrap_or_else(|p| p.into_inner()) = if interrupted {
            State::Cancelled
        } else {
            State::Done
        };
        e.done.cancel();
    }
}
