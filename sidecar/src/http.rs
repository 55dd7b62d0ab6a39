//! The HTTP endpoints (hyper 1, HTTP/1.1):
//!
//! - `GET /metrics` — Prometheus text format, the last rendering made by the background renderer
//!   (a scrape copies bytes; it never scans).
//! - `GET /healthz` — 200 while scans complete; 503 once none has completed for three intervals
//!   plus the scan deadline (a wedged sidecar should be restarted, not trusted).
//! - `GET /readyz` — 200 once the first complete scan is done, 503 before.
//! - `GET /` — the status page (HTML, no script, refreshes itself); `GET /api/v1/status` — the
//!   same as JSON (see [`crate::status`]).
//!
//! Served by the shared front end ([`leakwarden_core::http`]): connections are accepted at once
//! whatever else is open, headers must arrive within 3 s, the quietest idle connection makes room
//! at the cap (a quarter of `RLIMIT_NOFILE`, 64…1024), so idle or slow clients cannot starve a
//! scrape or a probe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use leakwarden_core::http::{Config, Stats};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use leakwarden_core::http::bind;

/// What the endpoints serve.
#[derive(Debug)]
pub struct State {
    metrics: RwLock<Bytes>,
    /// The status page and its JSON (see [`crate::status`]), rendered after scans.
    status: RwLock<(Bytes, Bytes)>,
    ready: AtomicBool,
    /// What the front end did (connections evicted, refused, …), for the metrics.
    pub http: Arc<Stats>,
    started: Instant,
    /// Milliseconds after `started` of the last completed scan (0: none yet).
    last_scan_ms: AtomicU64,
    /// Unhealthy when no scan completed for this long.
    stale_after: Duration,
}

impl Default for State {
    fn default() -> Self {
        Self::new(
            Duration::from_secs(5),
            Duration::from_secs(50),
            Arc::default(),
        )
    }
}

impl State {
    /// State for a daemon scanning every `interval`, each scan within `scan_deadline`, whose
    /// front-end counters are `http` (the ones [`crate::metrics::Metrics`] exports).
    pub fn new(interval: Duration, scan_deadline: Duration, http: Arc<Stats>) -> Self {
        State {
            metrics: RwLock::default(),
            status: RwLock::default(),
            ready: AtomicBool::new(false),
            http,
            started: Instant::now(),
            last_scan_ms: AtomicU64::new(0),
            stale_after: interval * 3 + scan_deadline,
        }
    }
    /// A scan completed: healthy, and ready from now on.
    pub fn scan_completed(&self) {
        let ms = self.started.elapsed().as_millis().max(1) as u64;
        self.last_scan_ms.store(ms, Ordering::Release);
        self.set_ready();
    }
    /// Scans are completing (or the first one is still within its time).
    pub fn is_healthy(&self) -> bool {
        let last = Duration::from_millis(self.last_scan_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last) <= self.stale_after
    }
    pub fn set_status(&self, html: Vec<u8>, json: Vec<u8>) {
        if let Ok(mut s) = self.status.write() {
            *s = (Bytes::from(html), Bytes::from(json));
        }
    }
    fn status(&self) -> (Bytes, Bytes) {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }
    pub fn set_metrics(&self, text: Vec<u8>) {
        if let Ok(mut m) = self.metrics.write() {
            *m = Bytes::from(text);
        }
    }
    pub fn metrics(&self) -> Bytes {
        self.metrics.read().map(|m| m.clone()).unwrap_or_default()
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Serve until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let stats = state.http.clone();
    leakwarden_core::http::serve(
        listener,
        Config::scrape_endpoint(),
        stats,
        move |req| {
            let state = state.clone();
            async move { route(&state, req) }
        },
        shutdown,
    )
    .await;
}

fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = code;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(state.metrics()));
            if let Ok(v) = "text/plain; version=0.0.4; charset=utf-8".parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/healthz" if state.is_healthy() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no scan completed recently: the sidecar is wedged\n",
        ),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "first scan not done\n"),
        "/" | "/api/v1/status" => {
            let (html, json) = state.status();
            let (body, ctype) = match req.uri().path() {
                "/" => (html, "text/html; charset=utf-8"),
                _ => (json, "application/json"),
            };
            if body.is_empty() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "first scan not done\n");
            }
            let mut r = Response::new(Full::new(body));
            if let Ok(v) = ctype.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            // Process names and paths are on it: no framing, no sniffing.
            for (k, v) in [
                ("x-content-type-options", "nosniff"),
                (
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
                ("x-frame-options", "DENY"),
            ] {
                if let Ok(v) = v.parse() {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
