//! The HTTP endpoints (hyper 1, HTTP/1.1):
//!
//! - `GET /metrics` — Prometheus text format, the last rendering made by the background renderer
//!   (a scrape copies bytes; it never scans).
//! - `GET /healthz` — 200 while the process serves.
//! - `GET /readyz` — 200 once the first complete scan is done, 503 before.
//!
//! Every connection has a header-read timeout and a whole-connection deadline; at most
//! [`MAX_CONNECTIONS`] are served at once (more wait in the kernel's backlog). Connections are
//! tasks in a `JoinSet` owned by the server, aborted on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// What the endpoints serve.
#[derive(Debug, Default)]
pub struct State {
    metrics: RwLock<Bytes>,
    ready: AtomicBool,
}

impl State {
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

/// Bind the listener (so a bad address fails at start-up, before any scan).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks as we go.
        while conns.try_join_next().is_some() {}
        let state = state.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            if tokio::time::timeout(CONNECTION_DEADLINE, conn)
                .await
                .is_err()
            {
                tracing::debug!("connection deadline reached");
            }
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
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
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "first scan not done\n"),
        "/" => text(StatusCode::OK, "leakwarden: /metrics /healthz /readyz\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
