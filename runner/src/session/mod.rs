//! One session: a fresh browser context, the job's steps, and closing the context — whatever
//! happens in between.
//!
//! The steps run as one future raced against the session deadline, the shutdown token, and the
//! browser's death; each step also has its own timeout. Losing a race drops the steps' future,
//! which abandons its in-flight CDP calls (really cancelled, not left running); the context is
//! then disposed with its own deadline, outside the race. A panic in a step is caught and is a
//! failed attempt like any other. A failed attempt retires its browser.
//!
//! An attempt whose browser dies under it while it injected no fault of its own ends in
//! [`AttemptError::Collateral`], naming the cause (a neighbour's `kill-browser`, or the browser
//! itself): the session runs it again on another browser without spending a retry (`exec.rs`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::page::{CaptureScreenshotFormat, PrintToPdfParams};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::browser::Browser;
use crate::faults::Fault;
use crate::job::{resolve_url, Job, Step};
use crate::metrics::Collateral;
use crate::pool::{AcquireError, Pool, Verdict};

mod values;
pub use values::{
    artifact_name, artifact_prefix, StepValue, Values, MAX_SESSION_VALUES_BYTES, MAX_VALUE_BYTES,
};

/// What a session needs besides the pool.
pub struct SessionEnv {
    pub job: Arc<Job>,
    pub site: String,
    pub artifacts: PathBuf,
    /// `<job name>-<job id>` (see [`artifact_prefix`]), the start of every artifact's name.
    pub artifact_prefix: String,
    /// The job's network options (the proxy itself is the contexts', see `Spec`).
    pub network: crate::netopts::Network,
    /// Cookies every session starts with.
    pub cookies: Vec<chromiumoxide::cdp::browser_protocol::network::CookieParam>,
    /// Save each attempt's cookies beside its artifacts.
    pub save_state: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Which attempt of which session is running, and where its `evaluate` values go.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub index: u64,
    pub attempt: u32,
    pub values: &'a Values,
}

#[derive(Debug)]
pub enum AttemptError {
    Failed(String),
    Timeout,
    Cancelled,
    /// The browser was lost under the attempt to a cause that was not the attempt's own:
    /// another session's injected fault, or a browser that died while this attempt injected
    /// nothing. The session runs the attempt again elsewhere, without spending a retry.
    Collateral {
        cause: Collateral,
        message: String,
    },
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Failed(m) => f.write_str(m),
            AttemptError::Timeout => f.write_str("session timeout"),
            AttemptError::Cancelled => f.write_str("cancelled by shutdown"),
            AttemptError::Collateral { message, .. } => f.write_str(message),
        }
    }
}

/// What one run of an attempt did.
#[derive(Debug)]
pub struct Ran {
    pub result: Result<(), AttemptError>,
    /// `b<N>` (a browser of the pool), `detached` (the `abandon` fault's), or none.
    pub browser: Option<String>,
}

impl Ran {
    fn without_browser(result: Result<(), AttemptError>) -> Self {
        Ran {
            result,
            browser: None,
        }
    }
}

/// After a step failed without the browser being seen dead, how long to wait for its death
/// before calling the failure the session's own: a killed browser's CDP connection can close a
/// moment before its pidfd says it exited.
const DEATH_GRACE: Duration = Duration::from_secs(1);

/// Which of the job's targets session `index` uses (its circuit breaker's key).
pub fn target_of(job: &Job, index: u64) -> usize {
    (index % job.targets.len().max(1) as u64) as usize
}

/// Run one attempt of session `index`.
pub async fn attempt(
    pool: &Arc<Pool>,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    cancel: &CancellationToken,
) -> Ran {
    let index = at.index;
    let deadline = tokio::time::Instant::now() + env.job.session_timeout;
    if faults.contains(&Fault::Abandon) {
        return Ran {
            result: abandoned(pool, env, at, faults, cancel, deadline).await,
            browser: Some("detached".into()),
        };
    }
    let lease = tokio::select! {
        _ = cancel.cancelled() => return Ran::without_browser(Err(AttemptError::Cancelled)),
        _ = tokio::time::sleep_until(deadline) => return Ran::without_browser(Err(AttemptError::Timeout)),
        // The pool refuses only once it is closing or draining: this attempt is cancelled.
        l = pool.acquire(target_of(&env.job, index)) => match l {
            Ok(l) => l,
            Err(AcquireError::Closed | AcquireError::Draining) => {
                return Ran::without_browser(Err(AttemptError::Cancelled))
            }
        },
    };
    let browser = lease.browser.clone();
    let limit = setup_timeout(&env.job);
    let ctx_slot: Arc<Mutex<Option<BrowserContextId>>> = Arc::default();
    // Take the context prepared ahead first, then prepare the next one: the other way round a
    // session takes back the context it has just started itself.
    let warm = match browser.take_warm() {
        Some(h) => claim_warm(pool, &browser, h, cancel, deadline, limit, index).await,
        None => None,
    };
    if let Some((ctx, _)) = &warm {
        *ctx_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
    }
    if pool.demand.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        browser.start_warm(limit);
    }
    let injected = AtomicBool::new(false);
    let result = race(
        steps(
            &browser,
            pool,
            env,
            at,
            faults,
            warm,
            ctx_slot.clone(),
            &injected,
        ),
        &browser,
        cancel,
        deadline,
    )
    .await;
    let ctx = ctx_slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let t = std::time::Instant::now();
    let disposed = match ctx {
        Some(ctx) if !browser.dead.is_cancelled() => {
            match tokio::time::timeout(pool.spec().close_timeout, browser.dispose_context(&ctx))
                .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(session = index, error = %e, "closing context failed; retiring browser");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        session = index,
                        "closing context timed out; retiring browser"
                    );
                    false
                }
            }
        }
        Some(_) => false,
        // No context was created (or we lost track of it while it was being created).
        None => result.is_ok(),
    };
    tracing::debug!(
        session = index,
        ms = t.elapsed().as_secs_f64() * 1e3,
        "context closed"
    );
    let injected = injected.load(std::sync::atomic::Ordering::Relaxed);
    // Whose failure was it? A browser that died under an attempt that injected nothing was
    // lost to something else: a neighbour's fault, or a crash of the browser itself.
    let result = match result {
        Err(e @ (AttemptError::Failed(_) | AttemptError::Timeout)) if !injected => {
            let dead = browser.dead.is_cancelled()
                || (!disposed
                    && tokio::time::timeout(DEATH_GRACE, browser.dead.cancelled())
                        .await
                        .is_ok());
            if dead {
                Err(collateral(pool, &browser, &e))
            } else {
                Err(e)
            }
        }
        r => r,
    };
    lease.finish(result.is_ok() && disposed, verdict(&result, injected));
    Ran {
        result,
        browser: Some(format!("b{}", browser.id)),
    }
}

/// What an attempt's end says about its target (for the target's circuit breaker): only a
/// failure of the attempt's own, with no fault injected, counts against it.
pub fn verdict(result: &Result<(), AttemptError>, injected: bool) -> Verdict {
    match result {
        Ok(()) => Verdict::Ok,
        Err(AttemptError::Failed(_) | AttemptError::Timeout) if !injected => Verdict::Failed,
        // An injected fault, a shutdown or a neighbour's doing says nothing about the target.
        Err(_) => Verdict::NotTheTarget,
    }
}

/// Name the cause of a browser lost under an attempt (while its lease still holds the slot).
fn collateral(pool: &Pool, browser: &Browser, e: &AttemptError) -> AttemptError {
    match pool.fault_killer(browser) {
        Some(s) => AttemptError::Collateral {
            cause: Collateral::NeighbourFault,
            message: format!(
                "browser b{} killed by session {s}'s injected kill-browser fault ({e})",
                browser.id
            ),
        },
        None => AttemptError::Collateral {
            cause: Collateral::BrowserDied,
            message: format!(
                "browser b{} died under this session, not by a fault it injected ({e})",
                browser.id
            ),
        },
    }
}

type WarmTask = tokio::task::JoinHandle<anyhow::Result<(BrowserContextId, Page)>>;

/// The context and page prepared ahead (`Browser::start_warm`), waited for within `limit`,
/// the deadline, shutdown and the browser's life. If the session gives up on it, a task of the
/// browser's tracker still waits for it and disposes the context it brings: a context nobody
/// disposes keeps its renderer until the browser recycles.
async fn claim_warm(
    pool: &Pool,
    browser: &Arc<Browser>,
    mut task: WarmTask,
    cancel: &CancellationToken,
    deadline: tokio::time::Instant,
    limit: Duration,
    index: u64,
) -> Option<(BrowserContextId, Page)> {
    tokio::select! {
        r = &mut task => return match r {
            Ok(Ok(ready)) => Some(ready),
            Ok(Err(e)) => {
                tracing::debug!(session = index, error = %e, "warm context unusable; creating one");
                None
            }
            Err(_) => None,
        },
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep_until(deadline) => {}
        _ = tokio::time::sleep(limit) => {}
        _ = browser.dead.cancelled() => {}
    }
    let b = browser.clone();
    let close = pool.spec().close_timeout;
    pool.env().tasks.spawn(async move {
        if let Ok(Ok((ctx, _page))) = task.await {
            let _ = tokio::time::timeout(close, b.dispose_context(&ctx)).await;
        }
    });
    None
}

/// Race the steps against shutdown, the deadline and the browser's death; catch panics.
async fn race(
    steps: impl std::future::Future<Output = anyhow::Result<()>>,
    browser: &Browser,
    cancel: &CancellationToken,
    deadline: tokio::time::Instant,
) -> Result<(), AttemptError> {
    tokio::select! {
        r = std::panic::AssertUnwindSafe(steps).catch_unwind() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AttemptError::Failed(format!("{e:#}"))),
            Err(panic) => Err(AttemptError::Failed(format!("step panicked: {}", panic_message(&panic)))),
        },
        _ = cancel.cancelled() => Err(AttemptError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => Err(AttemptError::Timeout),
        _ = browser.dead.cancelled() => Err(AttemptError::Failed("browser process died".into())),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    browser: &Browser,
    pool: &Pool,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    warm: Option<(BrowserContextId, Page)>,
    ctx_slot: Arc<Mutex<Option<BrowserContextId>>>,
    injected: &AtomicBool,
) -> anyhow::Result<()> {
    let index = at.index;
    let limit = setup_timeout(&env.job);
    let t = std::time::Instant::now();
    let (ctx, page) = match warm {
        Some((ctx, page)) => (ctx, page),
        None => {
            let ctx = within(limit, "create context", browser.new_context()).await?;
            *ctx_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
            let page = within(limit, "new page", browser.new_page(&ctx)).await?;
            (ctx, page)
        }
    };
    let name = |what: &str| {
        env.artifacts.join(format!(
            "{}-s{:05}-a{}-{what}",
            env.artifact_prefix, at.index, at.attempt
        ))
    };
    let applied = within(
        limit,
        "session options",
        crate::jobnet::apply(
            browser,
            &ctx,
            &page,
            &env.network,
            &env.cookies,
            name("downloads"),
        ),
    )
    .await?;
    tracing::debug!(
        session = index,
        ms = t.elapsed().as_secs_f64() * 1e3,
        "context and page ready"
    );
    let result = run_steps(&page, Some((pool, browser)), env, at, faults, injected).await;
    let state_out = env.save_state.then(|| name("state.json"));
    let finished = within(
        limit,
        "session end",
        crate::jobnet::finish(applied, browser, &ctx, state_out.as_deref()),
    )
    .await;
    match (result, finished) {
        (Err(e), _) => Err(e),
        (Ok(()), r) => r,
    }
}

/// Creating a context and its page is the runner's work, not a job step: it gets at least
/// `MIN_SETUP_TIMEOUT` even when a job's steps are short (the first page of a fresh browser
/// starts a renderer, slow on a loaded machine).
const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn setup_timeout(job: &Job) -> Duration {
    job.step_timeout.max(MIN_SETUP_TIMEOUT)
}

/// `kill`: the pool and browser a `kill-browser` fault kills (none for a detached browser).
/// `injected` turns true once a fault is injected: from then on, a failure is the attempt's own.
async fn run_steps(
    page: &Page,
    kill: Option<(&Pool, &Browser)>,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    injected: &AtomicBool,
) -> anyhow::Result<()> {
    let index = at.index;
    let job = &env.job;
    let target = &job.targets[target_of(job, index)];
    for (n, step) in job.steps.iter().enumerate() {
        let t = std::time::Instant::now();
        within(
            job.step_timeout,
            step.kind(),
            exec(page, step, target, env, at, n),
        )
        .await
        .with_context(|| format!("step {} ({})", n + 1, step.kind()))?;
        tracing::debug!(
            session = index,
            step = n + 1,
            kind = step.kind(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            "step done"
        );
        // Faults strike mid-session: after the first step.
        if n == 0 {
            for &fault in faults {
                injected.store(true, std::sync::atomic::Ordering::Relaxed);
                inject(fault, page, kill, env, index).await?;
            }
        }
    }
    Ok(())
}

async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("{what} timed out after {limit:?}")),
    }
}

/// JavaScript that resolves once `selector` matches (one CDP round trip, however long it waits).
fn wait_for_js(selector: &str) -> String {
    let sel = serde_json::to_string(selector).unwrap_or_else(|_| "\"\"".into());
    format!(
        "new Promise(r => {{ const f = () => document.querySelector({sel}) ? r(true) : setTimeout(f, 20); f(); }})"
    )
}

async fn exec(
    page: &Page,
    step: &Step,
    target: &str,
    env: &SessionEnv,
    at: Attempt<'_>,
    n: usize,
) -> anyhow::Result<()> {
    match step {
        Step::Navigate(url) => {
            page.goto(resolve_url(target, url, &env.site)).await?;
        }
        Step::WaitFor(sel) => {
            // A navigation (e.g. from the click before) destroys the document the promise runs
            // in; wait in the new one. The step timeout bounds the loop.
            loop {
                match page.evaluate_expression(wait_for_js(sel)).await {
                    Ok(_) => break,
                    Err(e) if navigated_away(&e) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Step::Click(sel) => {
            page.find_element(sel.as_str()).await?.click().await?;
        }
        Step::Type(t) => {
            page.find_element(t.selector.as_str())
                .await?
                .click()
                .await?
                .type_str(&t.text)
                .await?;
        }
        Step::Evaluate(expr) => {
            let v = page.evaluate_expression(expr.as_str()).await?;
            tracing::debug!(session = at.index, value = ?v.value(), "evaluate");
            at.values
                .push(n + 1, v.value().cloned().unwrap_or(serde_json::Value::Null));
        }
        Step::Screenshot(s) => {
            let mut params = ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(s.full_page)
                .build();
            // The same pixels, compressed with a faster zlib level: a larger file for less of
            // the browser's CPU per screenshot.
            params.cdp_params.optimize_for_speed = Some(true);
            let png = page.screenshot(params).await?;
            write_artifact(env, at, n, "png", png).await?;
        }
        Step::Pdf(_) => {
            let pdf = page.pdf(PrintToPdfParams::default()).await?;
            write_artifact(env, at, n, "pdf", pdf).await?;
        }
        Step::Sleep(d) => tokio::time::sleep(d.0).await,
    }
    Ok(())
}

/// CDP errors that mean "the document changed under the call", not "the page is broken".
fn navigated_away(e: &chromiumoxide::error::CdpError) -> bool {
    let m = e.to_string();
    m.contains("navigated or closed")
        || m.contains("Execution context was destroyed")
        || m.contains("Cannot find context")
}

/// `<artifacts>/<job>-<job id>-s<index>-a<attempt>-step<n>.<ext>`: the job's name and id
/// keep runs that share an artifacts directory from overwriting each other's files.
async fn write_artifact(
    env: &SessionEnv,
    at: Attempt<'_>,
    n: usize,
    ext: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    if bytes.is_empty() {
        bail!("empty {ext}");
    }
    let path = env.artifacts.join(artifact_name(
        &env.artifact_prefix,
        at.index,
        at.attempt,
        n,
        ext,
    ));
    tokio::fs::write(&path, bytes)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// Make the fault happen. Each returns an error when the fault took effect the way it does
/// (the page is gone, hung, or the browser dead), so the attempt fails by its real cause.
async fn inject(
    fault: Fault,
    page: &Page,
    kill: Option<(&Pool, &Browser)>,
    env: &SessionEnv,
    index: u64,
) -> anyhow::Result<()> {
    env.metrics.fault(fault).inc();
    let limit = env.job.step_timeout;
    tracing::info!(fault = %fault, "injecting fault");
    match fault {
        Fault::Crash => {
            within(limit, "navigation to chrome://crash", async {
                page.goto("chrome://crash").await?;
                Ok(())
            })
            .await?;
            // The tab answered after its renderer crashed: check it really is gone.
            within(limit, "evaluate after crash", async {
                page.evaluate_expression("1").await?;
                Ok(())
            })
            .await?;
            bail!("renderer crash was injected but the page still answers")
        }
        Fault::HangPage => {
            within(limit, "hung page script", async {
                page.evaluate_expression("(() => { for (;;) {} })()")
                    .await?;
                Ok(())
            })
            .await?;
            bail!("hung page returned")
        }
        Fault::HangServer => {
            let url = format!("{}/hang", env.site);
            within(limit, "navigation to a hung server", async {
                page.goto(url).await?;
                Ok(())
            })
            .await?;
            bail!("hung server answered")
        }
        Fault::KillBrowser => {
            let Some((pool, b)) = kill else {
                bail!("no browser to kill")
            };
            // Before the signal: the neighbours judge their loss as soon as the browser is dead.
            pool.note_fault_kill(b, index);
            if !b.kill_for_fault() {
                bail!("could not signal the browser");
            }
            // The session now fails on the browser's death (seen on its pidfd).
            b.dead.cancelled().await;
            bail!("browser killed")
        }
        Fault::Abandon => Ok(()),
    }
}

/// The `abandon` fault: a detached browser of its own, used and then left running.
async fn abandoned(
    pool: &Arc<Pool>,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    cancel: &CancellationToken,
    deadline: tokio::time::Instant,
) -> Result<(), AttemptError> {
    let index = at.index;
    env.metrics.fault(Fault::Abandon).inc();
    let browser = tokio::select! {
        _ = cancel.cancelled() => return Err(AttemptError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(AttemptError::Timeout),
        b = pool.launch_detached(index) => b.map_err(|e| AttemptError::Failed(format!("{e:#}")))?,
    };
    tracing::warn!(
        session = index,
        pid = browser.pid,
        dir = %browser.dir.display(),
        "fault `abandon`: leaving this browser running with its profile; the sidecar should catch it"
    );
    let others: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|f| *f != Fault::Abandon)
        .collect();
    let injected = AtomicBool::new(false);
    let body = async {
        let ctx = within(
            env.job.step_timeout,
            "create context",
            browser.new_context(),
        )
        .await?;
        let page = within(env.job.step_timeout, "new page", browser.new_page(&ctx)).await?;
        run_steps(&page, None, env, at, &others, &injected).await
    };
    let result = race(body, &browser, cancel, deadline).await;
    // No cleanup: drop the CDP connection only.
    browser.close(pool.spec(), pool.env()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, item 10: injected faults and cancellations used to count as target failures.
    #[test]
    fn only_a_sessions_own_failure_counts_against_its_target() {
        let failed = || Err(AttemptError::Failed("step 2 (wait_for) timed out".into()));
        assert_eq!(verdict(&Ok(()), false), Verdict::Ok);
        assert_eq!(verdict(&failed(), false), Verdict::Failed);
        assert_eq!(verdict(&Err(AttemptError::Timeout), false), Verdict::Failed);
        assert_eq!(verdict(&failed(), true), Verdict::NotTheTarget);
        assert_eq!(
            verdict(&Err(AttemptError::Timeout), true),
            Verdict::NotTheTarget
        );
        assert_eq!(
            verdict(&Err(AttemptError::Cancelled), false),
            Verdict::NotTheTarget
        );
        let lost = Err(AttemptError::Collateral {
            cause: Collateral::NeighbourFault,
            message: "browser b1 killed by session 3's injected kill-browser fault".into(),
        });
        assert_eq!(verdict(&lost, false), Verdict::NotTheTarget);
    }

    #[test]
    fn sessions_spread_over_the_targets() {
        let mut job = crate::job::default_job().expect("default job");
        job.targets = vec!["a".into(), "b".into(), "c".into()];
        assert_eq!(target_of(&job, 0), 0);
        assert_eq!(target_of(&job, 4), 1);
        job.targets.clear();
        assert_eq!(target_of(&job, 7), 0, "no division by zero");
    }
}
