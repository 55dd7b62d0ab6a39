//! The runner's own HTTP endpoint (`--listen`):
//!
//! - `GET /metrics` — Prometheus text format (see `metrics.rs`).
//! - `GET /healthz` — `ok` while the runner runs.
//!
//! Headers must arrive within 10 s and a connection lives at most 60 s, so a stuck scraper
//! cannot hold tasks; idle clients cannot starve a scrape (see [`accept_loop`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
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

/// Serve HTTP/1 until `stop` through the shared, hardened front end
/// ([`leakwarden_core::http`]: connections accepted at once, a header deadline, the quietest idle
/// connection evicted at the cap, back-off when out of descriptors), as a task on `tracker`,
/// each request answered by `handle`. `deadline` bounds a whole connection (`None`: the site's
/// `/hang` must hang until the client gives up). Shared by `/metrics` and the embedded site.
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
    let cfg = leakwarden_core::http::Config {
        header_timeout: HEADER_READ_TIMEOUT,
        connection_deadline: deadline,
        ..leakwarden_core::http::Config::scrape_endpoint()
    };
    let stats = std::sync::Arc::new(leakwarden_core::http::Stats::default());
    tracker.spawn(leakwarden_core::http::serve(
        listener,
        cfg,
        stats,
        move |req| {
            let f = handle(req);
            async move {
                match f.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        },
        stop,
    ));
}
