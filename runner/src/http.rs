//! The runner's own HTTP endpoint (`--listen`):
//!
//! - `GET /metrics` — Prometheus text format (see `metrics.rs`).
//! - `GET /healthz` — `ok` while the runner runs.
//!
//! Headers must arrive within 10 s and a connection lives at most 60 s, so a stuck scraper
//! cannot hold tasks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_MAX: Duration = Duration::from_secs(60);

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (code, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(metrics.render()),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until `stop`.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    accept_loop(listener, tracker, stop, Some(CONNECTION_MAX), move |req| {
        let r = respond(&metrics, &req);
        async move { Ok::<_, Infallible>(r) }
    });
}

/// Accept HTTP/1 connections until `stop`, each a task on `tracker` answered by `handle`, with a
/// header-read timeout, an optional whole-connection deadline, and a graceful close on `stop`.
/// Shared by `/metrics` and the embedded site.
pub fn accept_loop<H, Fut>(
    listener: TcpListener,
    tracker: &TaskTracker,
    stop: CancellationToken,
    deadline: Option<Duration>,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let conn_tracker = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let handle = handle.clone();
            let stop = stop.clone();
            conn_tracker.spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service_fn(handle));
                tokio::pin!(conn);
                let deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = deadline => {}
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                    }
                }
            });
        }
    });
}
