use std::io::{Read, Write};
use std::net::TcpStream as StdStream;

use bytes::Bytes;
use http_body_util::Full;
use proptest::prelude::*;

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

// === what strangers send ===

/// Bytes a client may send: anything at all, or something shaped like a request with every
/// part open to abuse (methods, targets, versions, line endings, duplicate and contradictory
/// framing headers, bodies that do not match them).
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("POST".to_string()),
        Just("CONNECT".to_string()),
        Just("OPTIONS".to_string()),
        "[A-Z]{0,12}",
        "[ -~]{0,12}",
    ];
    let target = prop_oneof![
        Just("/metrics".to_string()),
        Just("/healthz".to_string()),
        Just("*".to_string()),
        Just("http://x/metrics".to_string()),
        "/[ -~]{0,80}",
        "[^\r\n]{0,40}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1".to_string()),
        Just("HTTP/1.0".to_string()),
        Just("HTTP/2.0".to_string()),
        Just("HTTP/1.1 HTTP/1.1".to_string()),
        "[ -~]{0,12}",
    ];
    let eol = prop_oneof![Just("\r\n"), Just("\n"), Just("\r"), Just("")];
    let header = prop_oneof![
        "[0-9]{1,25}".prop_map(|v| format!("Content-Length: {v}")),
        Just("Content-Length: -1".to_string()),
        Just("Content-Length: 5, 6".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip, chunked".to_string()),
        Just("Connection: keep-alive".to_string()),
        Just("Connection: close".to_string()),
        Just("Connection: upgrade\r\nUpgrade: websocket".to_string()),
        Just("Expect: 100-continue".to_string()),
        Just("Host: x".to_string()),
        "[!-~]{0,30}: [ -~]{0,60}",
        "[^\r\n]{0,60}",
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        Just(b"ffffffffffffffff\r\nx".to_vec()),
        Just(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    let shaped = (
        method,
        target,
        version,
        eol.clone(),
        proptest::collection::vec(header, 0..8),
        eol,
        body,
    )
        .prop_map(|(m, t, v, eol, headers, end, body)| {
            let mut out = format!("{m} {t} {v}{eol}").into_bytes();
            for h in headers {
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(&body);
            out
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), shaped]
}

/// How the bytes are delivered: cut at arbitrary points, each piece after a pause, and maybe
/// only the first few pieces (none at all: connect and say nothing), the connection then left
/// open or half-closed.
#[derive(Debug, Clone)]
struct Delivery {
    cuts: Vec<usize>,
    pauses_ms: Vec<u64>,
    send_pieces: Option<usize>,
    half_close: bool,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        proptest::collection::vec(any::<usize>(), 0..6),
        proptest::collection::vec(0u64..40, 7),
        proptest::option::of(0usize..7),
        any::<bool>(),
    )
        .prop_map(|(cuts, pauses_ms, send_pieces, half_close)| Delivery {
            cuts,
            pauses_ms,
            send_pieces,
            half_close,
        })
}

/// Send `bytes` as `d` says; returns the stream, still open unless half-closed.
fn deliver(addr: &str, bytes: &[u8], d: &Delivery) -> std::io::Result<StdStream> {
    let mut s = StdStream::connect(addr)?;
    let mut cuts: Vec<usize> = d.cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
    let n = d.send_pieces.map_or(pieces.len(), |k| k.min(pieces.len()));
    for (i, piece) in pieces.iter().take(n).enumerate() {
        std::thread::sleep(Duration::from_millis(d.pauses_ms[i % d.pauses_ms.len()]));
        // The server may already have answered and closed: that is its right.
        if s.write_all(piece).is_err() {
            break;
        }
    }
    if d.half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    Ok(s)
}

/// Whether the server ends the connection within `within` (EOF or a reset, whatever it sent
/// before).
fn ends_within(mut s: StdStream, within: Duration) -> bool {
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Panics on the server's threads, counted by a hook (connection tasks' panics are caught by
/// tokio and would otherwise go unseen).
fn count_panics_on(thread_prefix: &'static str) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current()
            .name()
            .is_some_and(|t| t.starts_with(thread_prefix))
        {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        prev(info);
    }));
    n
}

/// Arbitrary bytes, split at arbitrary points, sent slowly or not at all: the server never
/// panics, answers a well-behaved client during every one of them, and ends every abusive
/// connection by itself (header timeout, connection deadline, an error response or eviction).
#[test]
fn arbitrary_requests_sent_in_pieces_never_stop_the_server() {
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    const THREADS: &str = "lw-http-fuzz";
    let panics = count_panics_on(THREADS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = Config {
        max_connections: 16,
        header_timeout: Duration::from_millis(400),
        connection_deadline: Some(Duration::from_secs(3)),
        drain: Duration::from_millis(200),
    };
    let (addr, stats, stop, server) = rt.block_on(start(cfg));
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 48,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let enders = std::sync::Mutex::new(Vec::new());
    let result = runner.run(&(request_bytes(), delivery()), |(bytes, d)| {
        let a = addr.clone();
        let abuser = std::thread::spawn(move || deliver(&a, &bytes, &d));
        let good = get(&addr);
        prop_assert!(
            good.as_ref()
                .is_ok_and(|b| b.starts_with("HTTP/1.1 200") && b.ends_with("path=/metrics")),
            "a well-behaved client was not answered: {:?}",
            good
        );
        if let Ok(Ok(s)) = abuser.join() {
            // Timeout + deadline + slack: every path ends well before.
            let ender = std::thread::spawn(move || ends_within(s, Duration::from_secs(8)));
            if let Ok(mut v) = enders.lock() {
                v.push(ender);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let never_ended = enders
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.join().unwrap_or(false))
        .filter(|ended| !ended)
        .count();
    assert_eq!(never_ended, 0, "connections the server never ended");
    assert!(!server.is_finished(), "the accept loop ended early");
    let open = wait_open_zero(&stats);
    assert_eq!(open, 0, "connections still counted open");
    stop.cancel();
    rt.block_on(server).expect("the accept loop does not panic");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a server thread panicked");
}

/// Poll `stats.open` down to zero (bounded); returns the last value seen.
fn wait_open_zero(stats: &Stats) -> usize {
    let t = Instant::now();
    loop {
        let open = stats.open.load(Ordering::Relaxed);
        if open == 0 || t.elapsed() > Duration::from_secs(10) {
            return open;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A handler that panics (a bug, say, triggered by some request) kills its connection, and
/// must give its slot back: otherwise every such request leaks one, and once the leaked slots
/// fill the cap every newcomer is refused.
#[test]
fn a_panicking_handler_gives_its_connection_slot_back() {
    const THREADS: &str = "lw-http-boom";
    let _panics = count_panics_on(THREADS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, stats, stop, server) = rt.block_on(async {
        let l = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let h = tokio::spawn(serve(
            l,
            cfg(4),
            stats.clone(),
            |req: Request<Incoming>| async move {
                if req.uri().path() == "/boom" {
                    panic!("handler bug");
                }
                Response::new(Full::new(Bytes::from("ok")))
            },
            stop.clone(),
        ));
        (addr, stats, stop, h)
    });
    for _ in 0..12 {
        let mut s = StdStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
    let body = get(&addr).expect("answered after a dozen panics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert_eq!(
        wait_open_zero(&stats),
        0,
        "slots of panicked connections leaked"
    );
    stop.cancel();
    rt.block_on(server).expect("the accept loop survives");
}

// === out of descriptors ===

/// Set in the child process of [`accept_backs_off_when_out_of_descriptors`].
const EMFILE_CHILD: &str = "LW_HTTP_EMFILE_CHILD";

/// How often the accept loop may fail in [`EMFILE_WINDOW`] with descriptors exhausted. With
/// the back-off (10 ms doubling to 1 s) it fails about 8 times; spinning, it fails hundreds of
/// thousands of times.
const EMFILE_MAX_ERRORS: u64 = 100;
const EMFILE_WINDOW: Duration = Duration::from_secs(2);

/// The accept loop, out of descriptors (`EMFILE`), backs off instead of spinning, and serves
/// again once descriptors are free. `EMFILE` is provoked deterministically in a child process
/// (this test binary run again for [`emfile_child`]) whose soft `RLIMIT_NOFILE` is lowered and
/// then filled to the last descriptor; the clients live here, with descriptors to spare.
#[test]
fn accept_backs_off_when_out_of_descriptors() {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "http::tests::emfile_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run the child");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let next = |prefix: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("the child never said {prefix:?}"));
            // libtest may print "test … ... " ahead of the child's first line.
            if let Some(i) = line.find(prefix) {
                return line[i + prefix.len()..].trim().to_string();
            }
        }
    };
    let addr = next("lw-emfile-full ");
    // The kernel completes these handshakes into the backlog; the child cannot accept them.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || get(&a))
        })
        .collect();
    let errors: u64 = next("lw-emfile-errors ").parse().expect("a count");
    let answers: Vec<_> = clients
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let accepted: u64 = next("lw-emfile-accepted ").parse().expect("a count");
    let status = child.wait().expect("child exits");
    eprintln!("EMFILE: {errors} accept errors in {EMFILE_WINDOW:?}, then {accepted} accepted");
    assert!(status.success(), "the child failed: {status}");
    assert!(errors >= 1, "EMFILE was not provoked");
    assert!(
        errors <= EMFILE_MAX_ERRORS,
        "{errors} accept errors in {EMFILE_WINDOW:?}: the loop spins"
    );
    for a in &answers {
        assert!(
            a.as_ref().is_ok_and(|b| b.starts_with("HTTP/1.1 200")),
            "served once descriptors were free: {a:?}"
        );
    }
}

/// The child's part of [`accept_backs_off_when_out_of_descriptors`]; does nothing when run as
/// an ordinary test.
#[test]
fn emfile_child() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, stats, stop, server) = rt.block_on(start(cfg(16)));
    // Room for a few more descriptors than now, then fill them: the next accept gets EMFILE.
    let fillers = crate::limits::exhaust_descriptors(16);
    println!("lw-emfile-full {addr}");
    // The parent connects now; count what the loop does with no descriptor to accept into.
    let wait_for_first_error = Instant::now();
    while stats.accept_errors.load(Ordering::Relaxed) == 0
        && wait_for_first_error.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Errors from the first one to the end of the window.
    std::thread::sleep(EMFILE_WINDOW);
    println!(
        "lw-emfile-errors {}",
        stats.accept_errors.load(Ordering::Relaxed)
    );
    drop(fillers);
    let t = Instant::now();
    while stats.accepted.load(Ordering::Relaxed) < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the answers go out before the server stops.
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "lw-emfile-accepted {}",
        stats.accepted.load(Ordering::Relaxed)
    );
    stop.cancel();
    rt.block_on(server).expect("server ends");
}
