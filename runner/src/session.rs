//! One session: a fresh browser context, the job's steps, and closing the context — whatever
//! happens in between.
//!
//! The steps run as one future raced against the session deadline, the shutdown token, and the
//! browser's death; each step also has its own timeout. Losing a race drops the steps' future,
//! which abandons its in-flight CDP calls (really cancelled, not left running); the context is
//! then disposed with its own deadline, outside the race. A panic in a step is caught and is a
//! failed attempt like any other. A failed attempt retires its browser.

use std::path::PathBuf;
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
use crate::pool::{Lease, Pool};

/// What a session needs besides the pool.
pub struct SessionEnv {
    pub job: Arc<Job>,
    pub site: String,
    pub artifacts: PathBuf,
    /// `<job name>-<job id>` (see [`artifact_prefix`]), the start of every artifact's name.
    pub artifact_prefix: String,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Which attempt of which session is running, and where its `evaluate` values go.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub index: u64,
    pub attempt: u32,
    pub values: &'a Values,
}

/// Largest `evaluate` value kept, serialized (a page decides what it returns).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest total of one session's kept values.
pub const MAX_SESSION_VALUES_BYTES: usize = 1024 * 1024;

/// What one `evaluate` step returned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepValue {
    /// The step's number in the job (1-based).
    pub step: usize,
    pub value: serde_json::Value,
}

/// The `evaluate` values of one attempt, bounded: a value over [`MAX_VALUE_BYTES`] or past
/// [`MAX_SESSION_VALUES_BYTES`] in all is kept as `{"truncated": true, "bytes": N}`.
#[derive(Debug, Default)]
pub struct Values(Mutex<(Vec<StepValue>, usize)>);

impl Values {
    pub fn push(&self, step: usize, value: serde_json::Value) {
        let bytes = serde_json::to_string(&value).map(|s| s.len()).unwrap_or(0);
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let value = if bytes > MAX_VALUE_BYTES || g.1 + bytes > MAX_SESSION_VALUES_BYTES {
            serde_json::json!({ "truncated": true, "bytes": bytes })
        } else {
            g.1 += bytes;
            value
        };
        g.0.push(StepValue { step, value });
    }

    pub fn take(&self) -> Vec<StepValue> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = 0;
        std::mem::take(&mut g.0)
    }
}

#[derive(Debug)]
pub enum AttemptError {
    Failed(String),
    Timeout,
    Cancelled,
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Failed(m) => f.write_str(m),
            AttemptError::Timeout => f.write_str("session timeout"),
            AttemptError::Cancelled => f.write_str("cancelled by shutdown"),
        }
    }
}

/// Run one attempt of session `index`.
pub async fn attempt(
    pool: &Arc<Pool>,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    cancel: &CancellationToken,
) -> Result<(), AttemptError> {
    let index = at.index;
    let deadline = tokio::time::Instant::now() + env.job.session_timeout;
    if faults.contains(&Fault::Abandon) {
        return abandoned(pool, env, at, faults, cancel, deadline).await;
    }
    let lease = tokio::select! {
        _ = cancel.cancelled() => return Err(AttemptError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(AttemptError::Timeout),
        l = pool.acquire() => l.map_err(|e| AttemptError::Failed(e.to_string()))?,
    };
    let browser = lease.browser.clone();
    if pool.demand.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        browser.start_warm(setup_timeout(&env.job));
    }
    let ctx_slot: Arc<Mutex<Option<BrowserContextId>>> = Arc::default();
    let result = race(
        steps(&browser, env, at, faults, ctx_slot.clone()),
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
    pool.session_outcome(result.is_ok());
    pool.release(Lease { browser }, result.is_ok() && disposed);
    drop(lease);
    result
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

async fn steps(
    browser: &Browser,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
    ctx_slot: Arc<Mutex<Option<BrowserContextId>>>,
) -> anyhow::Result<()> {
    let index = at.index;
    let limit = setup_timeout(&env.job);
    let t = std::time::Instant::now();
    let warm = match browser.take_warm() {
        Some(w) => match w.await {
            Ok(Ok(ready)) => Some(ready),
            Ok(Err(e)) => {
                tracing::debug!(session = index, error = %e, "warm context unusable; creating one");
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    let (ctx, page) = match warm {
        Some((ctx, page)) => {
            *ctx_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
            (ctx, page)
        }
        None => {
            let ctx = within(limit, "create context", browser.new_context()).await?;
            *ctx_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
            let page = within(limit, "new page", browser.new_page(&ctx)).await?;
            (ctx, page)
        }
    };
    let _ = ctx;
    tracing::debug!(
        session = index,
        ms = t.elapsed().as_secs_f64() * 1e3,
        "context and page ready"
    );
    run_steps(&page, Some(browser), env, at, faults).await
}

/// Creating a context and its page is the runner's work, not a job step: it gets at least
/// `MIN_SETUP_TIMEOUT` even when a job's steps are short (the first page of a fresh browser
/// starts a renderer, slow on a loaded machine).
const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn setup_timeout(job: &Job) -> Duration {
    job.step_timeout.max(MIN_SETUP_TIMEOUT)
}

async fn run_steps(
    page: &Page,
    browser: Option<&Browser>,
    env: &SessionEnv,
    at: Attempt<'_>,
    faults: &[Fault],
) -> anyhow::Result<()> {
    let index = at.index;
    let job = &env.job;
    let target = &job.targets[(index % job.targets.len() as u64) as usize];
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
                inject(fault, page, browser, env).await?;
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
            let png = page
                .screenshot(
                    ScreenshotParams::builder()
                        .format(CaptureScreenshotFormat::Png)
                        .full_page(s.full_page)
                        .build(),
                )
                .await?;
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

pub fn artifact_name(prefix: &str, index: u64, attempt: u32, n: usize, ext: &str) -> String {
    format!("{prefix}-s{index:05}-a{attempt}-step{}.{ext}", n + 1)
}

/// `<job name>-<job id>` made safe for a file name: letters, digits, `.`, `_` and `-` only, at
/// most 64 bytes of the name.
pub fn artifact_prefix(job: &str, id: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let name = clean(job, 64);
    let name = if name.is_empty() || name.starts_with('.') {
        format!("job{name}")
    } else {
        name
    };
    format!("{name}-{}", clean(id, 64))
}

/// Make the fault happen. Each returns an error when the fault took effect the way it does
/// (the page is gone, hung, or the browser dead), so the attempt fails by its real cause.
async fn inject(
    fault: Fault,
    page: &Page,
    browser: Option<&Browser>,
    env: &SessionEnv,
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
            let Some(b) = browser else {
                bail!("no browser to kill")
            };
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
    let body = async {
        let ctx = within(
            env.job.step_timeout,
            "create context",
            browser.new_context(),
        )
        .await?;
        let page = within(env.job.step_timeout, "new page", browser.new_page(&ctx)).await?;
        run_steps(&page, None, env, at, &others).await
    };
    let result = race(body, &browser, cancel, deadline).await;
    // No cleanup: drop the CDP connection only.
    browser.close(pool.spec(), pool.env()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_kept_and_bounded() {
        let v = Values::default();
        v.push(3, serde_json::json!({"title": "x", "n": 2}));
        v.push(5, serde_json::Value::String("y".repeat(MAX_VALUE_BYTES)));
        let got = v.take();
        assert_eq!(got[0].step, 3);
        assert_eq!(got[0].value["n"], 2);
        assert_eq!(got[1].value["truncated"], true);
        assert!(v.take().is_empty());
        // The session's total is bounded too.
        for i in 0..40 {
            v.push(
                i,
                serde_json::Value::String("z".repeat(MAX_VALUE_BYTES - 10)),
            );
        }
        let kept: usize = v
            .take()
            .iter()
            .filter(|s| s.value.is_string())
            .map(|s| s.value.as_str().map_or(0, str::len))
            .sum();
        assert!(kept <= MAX_SESSION_VALUES_BYTES, "{kept}");
    }

    #[test]
    fn artifact_names_carry_job_and_session() {
        assert_eq!(
            artifact_name(
                &artifact_prefix("nightly crawl", "j7-4242-99"),
                12,
                1,
                4,
                "png"
            ),
            "nightly_crawl-j7-4242-99-s00012-a1-step5.png"
        );
        assert_eq!(artifact_prefix("../etc", "1"), "job.._etc-1");
    }

    proptest! {
        /// Whatever a job is named (a stranger writes jobs for the service), its artifacts stay
        /// plain file names inside the artifacts directory.
        #[test]
        fn artifact_prefix_is_a_plain_file_name(name in ".{0,100}", id in ".{0,30}") {
            let p = artifact_prefix(&name, &id);
            prop_assert!(!p.contains('/') && !p.contains('\0'));
            prop_assert!(!p.starts_with('.'));
            prop_assert!(p.len() <= 64 + 3 + 1 + 64 + 4);
        }
    }
}
