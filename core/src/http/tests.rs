use std::io::{Read, Write};
use std::net::TcpStream as StdStream;

use bytes::Bytes;
use http_body_util::Full;

use super::*;

async fn start(
    cfg: Config,
) -> (
    String,
    Arc<Stats>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let l = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let h = tokio::spawn(serve(
        l,
        cfg,
        stats.clone(),
        |req: Request<Incoming>| async move {
            Response::new(Full::new(Bytes::from(format!("path={}", req.uri().path()))))
        },
        stop.clone(),
    ));
    (addr, stats, stop, h)
}

/// GET on a fresh connection, on a plain thread (the test's runtime serves).
fn get(addr: &str) -> std::io::Result<String> {
    let mut s = StdStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn cfg(max: usize) -> Config {
    Config {
        max_connections: max,
        header_timeout: Duration::from_millis(600),
        connection_deadline: Some(Duration::from_secs(10)),
        drain: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_past_a_full_house_of_idle_and_slow_clients() {
    let (addr, stats, stop, h) = start(cfg(16)).await;
    let a = addr.clone();
    let body = tokio::task::spawn_blocking(move || {
        // 40 clients that connect and send nothing, 10 that send a header byte at a time.
        let idle: Vec<StdStream> = (0..40)
            .filter_map(|_| StdStream::connect(&a).ok())
            .collect();
        let mut slow: Vec<StdStream> = (0..10)
            .filter_map(|_| StdStream::connect(&a).ok())
            .collect();
        for s in &mut slow {
            let _ = s.write_all(b"GET /metr");
        }
        let r = get(&a);
        drop((idle, slow));
        r
    })
    .await
    .expect("join")
    .expect("the request is answered");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("path=/metrics"), "{body}");
    assert!(
        stats.evicted.load(Ordering::Relaxed) > 0,
        "quiet connections made room"
    );
    stop.cancel();
    h.await.expect("server ends");
    assert_eq!(stats.open.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (addr, _stats, stop, h) = start(cfg(16)).await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = StdStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        // EOF (0) or a reset: either way the server hung up, well before our 10 s.
        let t = Instant::now();
        let r = s.read(&mut buf);
        (r.map(|n| n == 0).unwrap_or(true), t.elapsed())
    })
    .await
    .expect("join");
    assert!(closed.0, "the server closed the connection");
    assert!(
        closed.1 < Duration::from_secs(9),
        "closed by the header timeout, not ours"
    );
    stop.cancel();
    h.await.expect("server ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_get_an_error_not_a_hang() {
    let (addr, _stats, stop, h) = start(cfg(16)).await;
    let replies = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for req in [
            b"\x00\xff\xfe garbage\r\n\r\n".to_vec(),
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20)).into_bytes(),
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(500)).into_bytes(),
        ] {
            let mut s = StdStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(&req);
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        out
    })
    .await
    .expect("join");
    for r in &replies {
        assert!(!r.starts_with("HTTP/1.1 200"), "{r:.80}");
    }
    stop.cancel();
    h.await.expect("server ends");
}
