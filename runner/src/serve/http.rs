//! The service's HTTP endpoints, on one port, through the shared hardened front end
//! ([`leakwarden_core::http`]; WebSocket connections leave it once upgraded, so its connection
//! cap and eviction apply to plain requests only — sessions are bounded by admission):
//!
//! | path | what |
//! |---|---|
//! | `GET /json/version` (and `/json/version/`) | discovery, as Chromium answers it; `webSocketDebuggerUrl` carries the request's query (token, session options) |
//! | `GET /json`, `/json/list` | `[]`: no target of any session is listed to anyone |
//! | `GET /devtools/browser[/…]` + WebSocket upgrade | a new session (a browser of its own); `X-Leakwarden-Session` in the 101 names it |
//! | `GET /sessions` | open sessions: id, browser pid, directory, warm or cold start |
//! | `POST /jobs`, `GET /jobs[/ID]`, `DELETE /jobs/ID` | the job API (`jobs.rs`) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when a session could start now or soon (a browser has launched, a slot or a queue place is free, not draining), else 503; JSON body with the counts |
//!
//! With `--token`, everything but `/metrics`, `/healthz` and `/readyz` needs it (401 otherwise).
//! Rejections: 429 + `Retry-After` when every slot and queue place is taken or the queue deadline
//! passed; 503 + `Retry-After` when memory admission or failing launches left no browser, or
//! while draining.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::agent::Agent;
use super::auth::{authorized, parse_query};
use super::gate::{Rejected, Slot};
use super::metrics::{End, Reject};
use super::session::{relay, ws_config};
use super::{Service, SessionInfo};
use crate::browser::pipe::CdpPipe;
use crate::netopts::{cookies_from_state, state_from_cookies, SessionOptions};
use crate::pool::warm::{AcquireError, Lease};

/// Request line and headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// From the 101 response to the upgraded connection being handed over.
const UPGRADE_WAIT: Duration = Duration::from_secs(10);
/// Each of the service's own CDP calls at a session's start and end.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

type Body = Full<Bytes>;

pub fn start(
    listener: TcpListener,
    svc: Arc<Service>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let cfg = leakwarden_core::http::Config {
        header_timeout: HEADER_TIMEOUT,
        // Sessions are long-lived WebSockets; they leave the front end once upgraded, and a
        // plain request is bounded by the header deadline.
        connection_deadline: None,
        ..leakwarden_core::http::Config::scrape_endpoint()
    };
    let stats = Arc::new(leakwarden_core::http::Stats::default());
    tracker.spawn(leakwarden_core::http::serve(
        listener,
        cfg,
        stats,
        move |req| route(svc.clone(), req),
        stop,
    ));
}

async fn route(svc: Arc<Service>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let jobs = path == "/jobs" || path.starts_with("/jobs/");
    if req.method() != hyper::Method::GET && !jobs {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match path.as_str() {
        "/metrics" => return metrics(&svc),
        "/healthz" => return text(StatusCode::OK, "ok\n"),
        "/readyz" => return readyz(&svc),
        _ => {}
    }
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !authorized(svc.cfg.token.as_deref(), &query, auth) {
        svc.smetrics.rejected(Reject::Unauthorized).inc();
        let mut r = text(StatusCode::UNAUTHORIZED, "token required\n");
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if jobs {
        return svc.jobs.handle(req).await;
    }
    match path.as_str() {
        "/json/version" | "/json/version/" => version(&svc, &req),
        "/json" | "/json/" | "/json/list" | "/json/list/" => json(StatusCode::OK, "[]".into()),
        "/sessions" => {
            let live: Vec<SessionInfo> = svc
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            json(
                StatusCode::OK,
                serde_json::to_string(&live).unwrap_or_else(|_| "[]".into()),
            )
        }
        p if p == "/devtools/browser" || p.starts_with("/devtools/browser/") => {
            upgrade(svc, req).await
        }
        p if p.starts_with("/devtools/") || p.starts_with("/json/") => text(
            StatusCode::NOT_FOUND,
            "each WebSocket connection to /devtools/browser is a session with a browser of its own; pages are reached through it\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn metrics(svc: &Service) -> Response<Body> {
    let (_, queued) = svc.gate.counts();
    svc.metrics.queue_depth.set(queued as i64);
    let mut r = Response::new(Full::new(Bytes::from(svc.metrics.render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn readyz(svc: &Service) -> Response<Body> {
    let (active, queued) = svc.gate.counts();
    let (ready_browsers, launching, _) = svc.pool.counts();
    let draining = svc.draining.is_cancelled();
    let launched = svc.pool.launched_once().is_cancelled();
    let saturated = active >= svc.gate.max() && queued >= svc.gate.queue_capacity();
    let ready = launched && !draining && !saturated;
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "saturated": saturated,
        "active_sessions": active,
        "max_sessions": svc.gate.max(),
        "queued": queued,
        "queue_capacity": svc.gate.queue_capacity(),
        "arrivals": svc.gate.arrivals(),
        "ready_browsers": ready_browsers,
        "launching_browsers": launching,
    });
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body.to_string(),
    )
}

/// The Host the client used, when it is a plain host[:port]; else the bound address.
fn host(svc: &Service, req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| svc.local.to_string())
}

fn version(svc: &Service, req: &Request<Incoming>) -> Response<Body> {
    let v = svc.pool.version().unwrap_or_default();
    let field = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let query = req
        .uri()
        .query()
        .filter(|q| !q.is_empty())
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    // Chromium writes `537.36 (@<revision>)`; chromedriver parses it.
    let webkit = v
        .get("userAgent")
        .and_then(|u| u.as_str())
        .and_then(|u| u.split("AppleWebKit/").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(|w| {
            let rev = v.get("revision").and_then(|r| r.as_str()).unwrap_or("");
            serde_json::Value::from(format!("{w} ({rev})"))
        })
        .unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({
        "Browser": field("product"),
        "Protocol-Version": v.get("protocolVersion").cloned().unwrap_or_else(|| "1.3".into()),
        "User-Agent": field("userAgent"),
        "V8-Version": field("jsVersion"),
        "WebKit-Version": webkit,
        "webSocketDebuggerUrl": format!("ws://{}/devtools/browser{query}", host(svc, req)),
    });
    json(StatusCode::OK, body.to_string())
}

/// `Sec-WebSocket-Key` of a valid upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let has = |name: hyper::header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has(hyper::header::UPGRADE, "websocket") || !has(hyper::header::CONNECTION, "upgrade") {
        return None;
    }
    if h.get(hyper::header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return None;
    }
    h.get(hyper::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
}

fn reject(svc: &Service, why: Reject) -> Response<Body> {
    svc.smetrics.rejected(why).inc();
    let (code, body) = match why {
        Reject::QueueFull => (
            StatusCode::TOO_MANY_REQUESTS,
            "every session slot is taken and the queue is full\n",
        ),
        Reject::QueueTimeout => (
            StatusCode::TOO_MANY_REQUESTS,
            "no session slot freed before the queue deadline\n",
        ),
        Reject::Memory => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not enough memory for another session's browser\n",
        ),
        Reject::NoBrowser => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no browser could be launched in time\n",
        ),
        Reject::Draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        Reject::Unauthorized => (StatusCode::UNAUTHORIZED, "token required\n"),
    };
    let mut r = text(code, body);
    if let Ok(v) = HeaderValue::from_str(&retry_after(svc).to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    tracing::debug!(reason = why.as_str(), "connection rejected");
    r
}

/// Seconds until a slot is likely free: the mean session duration so far times the queue's
/// length in rounds of `max_sessions`, 1…60 s (5 s before any session has ended).
fn retry_after(svc: &Service) -> u64 {
    let h = &svc.metrics.session_duration;
    let (n, sum) = (h.get_sample_count(), h.get_sample_sum());
    if n == 0 {
        return 5;
    }
    let (_, queued) = svc.gate.counts();
    let rounds = (queued as f64 + 1.0) / svc.gate.max() as f64;
    ((sum / n as f64) * rounds).ceil().clamp(1.0, 60.0) as u64
}

async fn upgrade(svc: Arc<Service>, mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = websocket_key(&req) else {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "connect a CDP client here (a WebSocket upgrade)\n",
        );
    };
    let opts = match SessionOptions::from_query(&parse_query(req.uri().query().unwrap_or(""))) {
        Ok(o) => o,
        Err(e) => return bad_request(format!("{e}\n")),
    };
    if opts.state.is_some() && svc.cfg.state_dir.is_none() {
        return bad_request("state: the service has no --state-dir\n".into());
    }
    if svc.draining.is_cancelled() {
        return reject(&svc, Reject::Draining);
    }
    let arrived = Instant::now();
    let deadline = arrived + svc.cfg.queue_timeout;
    let slot = match svc.gate.enter(deadline).await {
        Ok(s) => s,
        Err(Rejected::QueueFull) => return reject(&svc, Reject::QueueFull),
        Err(Rejected::QueueTimeout) => return reject(&svc, Reject::QueueTimeout),
        Err(Rejected::Closed) => return reject(&svc, Reject::Draining),
    };
    let browser = match &opts.network.proxy {
        // A proxy is the browser's own flag: a browser launched for this session.
        Some(proxy) => {
            let mut args = vec![format!("--proxy-server={proxy}")];
            if let Some(b) = &opts.network.proxy_bypass {
                args.push(format!("--proxy-bypass-list={b}"));
            }
            svc.pool.acquire_dedicated(deadline, args).await
        }
        None => svc.pool.acquire(deadline).await,
    };
    let mut lease = match browser {
        Ok(l) => l,
        Err(AcquireError::Timeout { memory: true }) => return reject(&svc, Reject::Memory),
        Err(AcquireError::Timeout { memory: false }) => return reject(&svc, Reject::NoBrowser),
        Err(AcquireError::Closed) => return reject(&svc, Reject::Draining),
    };
    svc.smetrics
        .queue_wait
        .observe(arrived.elapsed().as_secs_f64());
    // Sessions are numbered in admission order (first come, first served).
    let id = slot.seq();
    let Some(b) = lease.browser() else {
        return reject(&svc, Reject::NoBrowser);
    };
    let info = SessionInfo {
        id,
        browser_pid: b.pid,
        dir: b.dir.display().to_string(),
        start: lease.start,
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    tracing::info!(session = id, browser_pid = info.browser_pid, start = ?info.start, waited_ms = arrived.elapsed().as_millis() as u64, "session starting");
    svc.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, info);
    svc.metrics.active_sessions.inc();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let s = svc.clone();
    svc.sessions
        .spawn(async move { run_session(s, id, slot, lease, on_upgrade, opts).await });

    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        h.insert("x-leakwarden-session", v);
    }
    r
}

async fn run_session(
    svc: Arc<Service>,
    id: u64,
    slot: Slot,
    mut lease: Lease,
    on_upgrade: hyper::upgrade::OnUpgrade,
    opts: SessionOptions,
) {
    let started = Instant::now();
    let downloads = svc
        .jobs
        .artifacts
        .join(format!("session-{}-s{id}-downloads", svc.jobs.service_id));
    if let Err(e) = std::fs::create_dir_all(&downloads) {
        tracing::warn!(dir = %downloads.display(), error = %e, "creating the session's downloads directory");
    }
    let state_file = opts
        .state
        .as_ref()
        .zip(svc.cfg.state_dir.as_ref())
        .map(|(name, dir)| dir.join(format!("{name}.json")));
    let relayed = match tokio::time::timeout(UPGRADE_WAIT, on_upgrade).await {
        Ok(Ok(upgraded)) => {
            let io = TokioAdapter::new(TokioIo::new(upgraded));
            let mut ws =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config(&svc.limits)))
                    .await;
            let taken = lease.browser().map(|b| (b.dead.clone(), b.take_pipe()));
            match taken {
                Some((dead, Some(mut pipe))) => {
                    let cookies = state_file.as_deref().map(load_state).unwrap_or_default();
                    let started_agent = Agent::start(
                        &mut pipe,
                        opts.network.clone(),
                        downloads.clone(),
                        cookies,
                        AGENT_TIMEOUT,
                    )
                    .await;
                    let r = match started_agent {
                        Ok(mut agent) => {
                            let r = relay(
                                &mut ws,
                                &mut pipe,
                                &mut agent,
                                &dead,
                                &svc.kill,
                                svc.limits,
                                &svc.smetrics,
                            )
                            .await;
                            Some(r)
                        }
                        Err(e) => {
                            tracing::warn!(session = id, error = %e, "applying the session's options failed; ending it");
                            Some(super::session::Relayed {
                                end: End::BrowserExited,
                                from_client: 0,
                                from_browser: 0,
                            })
                        }
                    };
                    if let (Some(f), Some(r)) = (&state_file, r) {
                        if r.end != End::BrowserExited {
                            save_state(&mut pipe, f).await;
                        }
                    }
                    if let Some(b) = lease.browser() {
                        b.put_pipe(pipe);
                    }
                    r
                }
                _ => None,
            }
        }
        _ => None,
    };
    let end = relayed.map_or(End::Disconnected, |r| r.end);
    let duration = started.elapsed();
    let t = Instant::now();
    let report = lease.finish().await;
    // An empty downloads directory is no artifact.
    let _ = std::fs::remove_dir(&downloads);
    drop(slot);
    svc.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    svc.metrics.active_sessions.dec();
    svc.smetrics.ended(end).inc();
    svc.metrics.session_duration.observe(duration.as_secs_f64());
    tracing::info!(
        session = id,
        end = end.as_str(),
        seconds = duration.as_secs_f64(),
        from_client = relayed.map_or(0, |r| r.from_client),
        from_browser = relayed.map_or(0, |r| r.from_browser),
        cleanup_ms = t.elapsed().as_millis() as u64,
        leaks = report.leaks(),
        "session ended; browser closed and verified"
    );
}

/// Cookies of a storage state file; a missing or unreadable one starts the session empty.
fn load_state(path: &std::path::Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => cookies_from_state(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "storage state unreadable; starting without it");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "storage state unreadable; starting without it");
            Vec::new()
        }
    }
}

/// Save the browser's cookies as a storage state file (written aside, then renamed in).
async fn save_state(pipe: &mut CdpPipe, path: &std::path::Path) {
    let id = crate::browser::pipe::INTERNAL_ID_BASE + 5;
    let cookies = match pipe
        .call(
            id,
            "Storage.getCookies",
            serde_json::json!({}),
            AGENT_TIMEOUT,
        )
        .await
    {
        Ok(r) => r.get("cookies").cloned().unwrap_or_default(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "reading cookies for the storage state");
            return;
        }
    };
    let text = state_from_cookies(&cookies).to_string();
    let tmp = path.with_extension("json.tmp");
    let r = tokio::fs::write(&tmp, text).await;
    let r = match r {
        Ok(()) => tokio::fs::rename(&tmp, path).await,
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(file = %path.display(), error = %e, "saving the storage state");
    }
}

fn bad_request(body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
