//! A job session's network and state options (`netopts.rs`), applied through chromiumoxide to
//! the session's browser context and page:
//!
//! - the proxy is the context's own (`Target.createBrowserContext{proxyServer}`, in
//!   `browser/mod.rs`), so sessions sharing a browser can use different proxies;
//! - downloads go to `<artifacts>/<job>-<id>-s<session>-a<attempt>-downloads/` (removed when
//!   empty);
//! - the job's storage state cookies are set in the context at the start; with `state:` in the
//!   job, each attempt's cookies are saved as `<…>-s<session>-a<attempt>-state.json`;
//! - proxy credentials: chromiumoxide's own `Page::authenticate` (its handler answers the
//!   challenge); blocked requests: the Fetch domain on the session's page, each paused request
//!   answered by a task the session owns (dropped with it).
//!
//! Not covered in jobs: requests of out-of-process iframes and workers (Fetch is per target;
//! the service's sessions attach to those too, see `serve/agent.rs`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chromiumoxide::auth::Credentials;
use chromiumoxide::cdp::browser_protocol::browser::{
    BrowserContextId, SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::fetch::{
    ContinueRequestParams, EnableParams, EventRequestPaused, FailRequestParams, RequestPattern,
};
use chromiumoxide::cdp::browser_protocol::network::{CookieParam, ErrorReason};
use chromiumoxide::cdp::browser_protocol::storage::{GetCookiesParams, SetCookiesParams};
use chromiumoxide::Page;
use futures::StreamExt;
use tokio::task::JoinSet;

use crate::browser::Browser;
use crate::netopts::Network;

/// What a session applied; dropping it stops its Fetch task.
pub struct Applied {
    downloads: PathBuf,
    _tasks: JoinSet<()>,
}

/// Cookies of a storage state in CDP's shape; those CDP would not take are dropped, with a
/// warning.
pub fn cookie_params(cookies: &[serde_json::Value]) -> Vec<CookieParam> {
    cookies
        .iter()
        .filter_map(|c| match serde_json::from_value::<CookieParam>(c.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "storage state: a cookie CDP would not take; skipped");
                None
            }
        })
        .collect()
}

pub async fn apply(
    browser: &Browser,
    ctx: &BrowserContextId,
    page: &Page,
    network: &Network,
    cookies: &[CookieParam],
    downloads: PathBuf,
) -> anyhow::Result<Applied> {
    tokio::fs::create_dir_all(&downloads)
        .await
        .with_context(|| format!("creating {}", downloads.display()))?;
    let mut dl = SetDownloadBehaviorParams::new(SetDownloadBehaviorBehavior::Allow);
    dl.browser_context_id = Some(ctx.clone());
    dl.download_path = Some(downloads.display().to_string());
    browser.cdp.execute(dl).await?;
    if !cookies.is_empty() {
        let mut set = SetCookiesParams::new(cookies.to_vec());
        set.browser_context_id = Some(ctx.clone());
        browser.cdp.execute(set).await?;
    }
    let mut tasks = JoinSet::new();
    if network.needs_fetch() {
        let mut paused = page.event_listener::<EventRequestPaused>().await?;
        match network.credentials() {
            // chromiumoxide answers proxy challenges itself (its handler sees them before any
            // listener does) and, with the browser's request interception on (`Spec`), pauses
            // every request and leaves them to the task below.
            Some((u, p)) => {
                page.authenticate(Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                })
                .await?;
            }
            None => {
                let patterns: Vec<RequestPattern> = network
                    .fetch_patterns()
                    .into_iter()
                    .filter_map(|p| serde_json::from_value(p).ok())
                    .collect();
                let enable = EnableParams {
                    patterns: Some(patterns),
                    handle_auth_requests: Some(false),
                };
                page.execute(enable).await?;
            }
        }
        let (page, network) = (page.clone(), network.clone());
        tasks.spawn(async move {
            while let Some(ev) = paused.next().await {
                let r = if network.blocks(&ev.request.url, ev.resource_type.as_ref()) {
                    page.execute(FailRequestParams::new(
                        ev.request_id.clone(),
                        ErrorReason::BlockedByClient,
                    ))
                    .await
                    .map(|_| ())
                } else {
                    page.execute(ContinueRequestParams::new(ev.request_id.clone()))
                        .await
                        .map(|_| ())
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "answering a paused request");
                }
            }
        });
    }
    Ok(Applied {
        downloads,
        _tasks: tasks,
    })
}

/// End of an attempt: save the context's cookies (when asked), drop an empty downloads
/// directory.
pub async fn finish(
    applied: Applied,
    browser: &Browser,
    ctx: &BrowserContextId,
    state_out: Option<&Path>,
) -> anyhow::Result<()> {
    let Applied { downloads, _tasks } = applied;
    drop(_tasks);
    let _ = tokio::fs::remove_dir(&downloads).await;
    if let Some(path) = state_out {
        let get = GetCookiesParams {
            browser_context_id: Some(ctx.clone()),
        };
        let cookies = browser.cdp.execute(get).await?.result.cookies;
        let v = serde_json::to_value(&cookies)?;
        tokio::fs::write(path, crate::netopts::state_from_cookies(&v).to_string())
            .await
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
