//! The embedded site the default job runs against, served on 127.0.0.1 by the runner itself so
//! a run needs no network.
//!
//! | path          | what                                                           |
//! |---------------|----------------------------------------------------------------|
//! | `/`           | index: links to every page and a search form                    |
//! | `/search?q=`  | the form's target; echoes the query in `#result`                |
//! | `/rows`       | a table of 200 rows (`#row-0` … `#row-199`)                      |
//! | `/late-title` | sets its title from JavaScript after 200 ms, then adds `#ready`  |
//! | `/slow?ms=N`  | answers after N ms (default 1500, at most 30000)                 |
//! | `/heavy`      | about 1 MB of DOM (5,000 styled rows)                            |
//! | `/hang`       | never answers (until the runner shuts down): the `hang-server` fault |
//! | `/media`      | an image (`#px`, `/pixel.png`): shows whether images were blocked |
//! | `/pixel.png`  | a 1×1 PNG                                                      |
//! | `/download`   | a small text file as an attachment (`report.txt`)              |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const ROWS: usize = 200;
const HEAVY_ROWS: usize = 5000;
const SLOW_DEFAULT_MS: u64 = 1500;
const SLOW_MAX_MS: u64 = 30_000;
/// A 1×1 transparent PNG.
const PIXEL: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0xd, 0xa, 0x1a, 0xa, 0x0, 0x0, 0x0, 0xd, 0x49, 0x48, 0x44, 0x52, 0x0,
    0x0, 0x0, 0x1, 0x0, 0x0, 0x0, 0x1, 0x8, 0x6, 0x0, 0x0, 0x0, 0x1f, 0x15, 0xc4, 0x89, 0x0, 0x0,
    0x0, 0xb, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x0, 0x2, 0x0, 0x0, 0x5, 0x0, 0x1,
    0x7a, 0x5e, 0xab, 0x3f, 0x0, 0x0, 0x0, 0x0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];
const MEDIA: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Media</title></head><body><h1>Media</h1><img id=\"px\" src=\"/pixel.png\" width=\"10\" height=\"10\"></body></html>";

/// A hung request is released at shutdown at the latest; this bounds it otherwise.
const HANG_MAX: Duration = Duration::from_secs(600);

struct Pages {
    index: Bytes,
    rows: Bytes,
    late: Bytes,
    heavy: Bytes,
}

impl Pages {
    fn build() -> Self {
        let index = page(
            "leakwarden test site",
            r#"<h1>leakwarden test site</h1>
<nav><a id="rows" href="/rows">200 rows</a> · <a id="late" href="/late-title">late title</a> ·
<a id="slow" href="/slow">slow</a> · <a id="heavy" href="/heavy">heavy</a></nav>
<form id="search" action="/search" method="get">
<input id="q" name="q" autocomplete="off"> <button id="go" type="submit">Search</button>
</form>"#,
        );
        let mut rows = String::from("<h1>Rows</h1><table id=\"rows\">");
        for i in 0..ROWS {
            rows.push_str(&format!(
                "<tr id=\"row-{i}\"><td>{i}</td><td>item {i}</td><td>{}</td></tr>",
                i * i
            ));
        }
        rows.push_str("</table><a id=\"home\" href=\"/\">home</a>");
        let late = page(
            "Loading…",
            r#"<h1>Late title</h1>
<script>
setTimeout(() => {
  document.title = "Late title";
  const d = document.createElement("div");
  d.id = "ready";
  d.textContent = "ready";
  document.body.appendChild(d);
}, 200);
</script>"#,
        );
        let mut heavy = String::from(
            "<style>.r{display:flex;gap:4px;padding:2px;border-bottom:1px solid #ddd}.r:nth-child(odd){background:#f4f4f4}</style><h1>Heavy</h1><div id=\"heavy\">",
        );
        for i in 0..HEAVY_ROWS {
            heavy.push_str(&format!(
                "<div class=\"r\" id=\"h-{i}\"><span>{i}</span><span>lorem ipsum dolor sit amet {i}</span><b>{}</b><i>consectetur adipiscing elit sed do eiusmod</i></div>",
                i * 7
            ));
        }
        heavy.push_str("</div>");
        Self {
            index: Bytes::from(index),
            rows: Bytes::from(page("Rows", &rows)),
            late: Bytes::from(late),
            heavy: Bytes::from(page("Heavy", &heavy)),
        }
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body>{body}</body></html>"
    )
}

fn html(body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn typed(
    body: Bytes,
    ctype: &'static str,
    disposition: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    if let Some(d) = disposition {
        r.headers_mut().insert(
            hyper::header::CONTENT_DISPOSITION,
            hyper::header::HeaderValue::from_static(d),
        );
    }
    r
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('+', " ")
}

/// Requests of `/hang` in flight (a test watches it return to 0).
type Hanging = Arc<AtomicUsize>;

/// Counts a hung request while it lives; dropped when the hang ends, however it ends.
struct HangGuard(Hanging);

impl HangGuard {
    fn new(h: &Hanging) -> Self {
        h.fetch_add(1, Ordering::AcqRel);
        Self(h.clone())
    }
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle(
    pages: Arc<Pages>,
    hanging: Hanging,
    stop: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query();
    Ok(match req.uri().path() {
        "/" => html(pages.index.clone()),
        "/rows" => html(pages.rows.clone()),
        "/late-title" => html(pages.late.clone()),
        "/heavy" => html(pages.heavy.clone()),
        "/search" => {
            let q = escape(query_param(query, "q").unwrap_or(""));
            html(Bytes::from(page(
                "Search",
                &format!("<div id=\"result\">You searched for: {q}</div>"),
            )))
        }
        "/slow" => {
            let ms = query_param(query, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(SLOW_DEFAULT_MS)
                .min(SLOW_MAX_MS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = stop.cancelled() => {}
            }
            html(Bytes::from(page(
                "Slow",
                &format!("<p id=\"slow\">after {ms} ms</p>"),
            )))
        }
        "/hang" => {
            let _counted = HangGuard::new(&hanging);
            tokio::select! {
                _ = tokio::time::sleep(HANG_MAX) => {}
                _ = stop.cancelled() => {}
            }
            status(StatusCode::SERVICE_UNAVAILABLE)
        }
        "/media" => html(Bytes::from_static(MEDIA.as_bytes())),
        "/pixel.png" => typed(Bytes::from_static(PIXEL), "image/png", None),
        "/download" => typed(
            Bytes::from_static(b"leakwarden report\n"),
            "text/plain",
            Some("attachment; filename=\"report.txt\""),
        ),
        "/favicon.ico" => status(StatusCode::NO_CONTENT),
        _ => status(StatusCode::NOT_FOUND),
    })
}

/// Bind 127.0.0.1:`port` (0: any) and serve until `stop`; connections are tracked by `tracker`.
pub async fn start(
    port: u16,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    Ok(start_counted(port, tracker, stop).await?.0)
}

/// [`start`], also returning the count of `/hang` requests in flight.
async fn start_counted(
    port: u16,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, Hanging)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let pages = Arc::new(Pages::build());
    let hanging = Hanging::default();
    let counted = hanging.clone();
    // No connection deadline: `/hang` must hang until the client gives up (the hang-server fault).
    let svc_stop = stop.clone();
    crate::http::accept_loop(listener, tracker, stop, None, move |req| {
        handle(pages.clone(), counted.clone(), svc_stop.clone(), req)
    });
    Ok((addr, hanging))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_pages_and_hangs_until_shutdown() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let addr = start(0, &tracker, stop.clone()).await.unwrap();
        let index = get(addr, "/").await;
        assert!(index.starts_with("HTTP/1.1 200"), "{index}");
        assert!(index.contains("<form id=\"search\""));
        let rows = get(addr, "/rows").await;
        assert_eq!(rows.matches("<tr id=\"row-").count(), ROWS);
        assert!(get(addr, "/late-title").await.contains("Late title"));
        assert!(get(addr, "/search?q=a+%3Cb")
            .await
            .contains("You searched for: a %3Cb"));
        assert!(get(addr, "/heavy").await.len() > 500_000);
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/slow?ms=10").await.contains("after 10 ms"));
        assert!(get(addr, "/media").await.contains("/pixel.png"));
        assert!(get(addr, "/pixel.png").await.contains("image/png"));
        assert!(get(addr, "/download")
            .await
            .contains("attachment; filename=\"report.txt\""));

        let hang = tokio::spawn(get(addr, "/hang"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!hang.is_finished(), "/hang must not answer");
        stop.cancel();
        let out = tokio::time::timeout(Duration::from_secs(5), hang)
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }

    /// Wait (bounded) until `hanging` reads `want`.
    async fn until(hanging: &Hanging, want: usize, what: &str) {
        let t = std::time::Instant::now();
        while hanging.load(Ordering::Acquire) != want {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{what}: {} hung request(s) in flight, expected {want}",
                hanging.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A `/hang` whose client went away ends then — not after `HANG_MAX` (600 s), holding a task
    /// and a descriptor — whether the client kept the connection alive (a browser) or asked
    /// to close it (`Connection: close`, HTTP/1.0 tools).
    // See: issue 14, item 11 (the `hang-server` fault).
    #[tokio::test]
    async fn a_hang_ends_when_its_client_goes_away() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let (addr, hanging) = start_counted(0, &tracker, stop.clone()).await.unwrap();
        for (what, extra) in [
            ("keep-alive client", ""),
            ("Connection: close client", "Connection: close\r\n"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET /hang HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
                .await
                .unwrap();
            until(&hanging, 1, what).await;
            drop(s);
            until(&hanging, 0, what).await;
        }
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }
}
