//! The runner service under load and under bad clients: admission (slots, a FIFO queue, 429
//! beyond it), the token, clients that send garbage, a 100 MB frame, or stop reading — each ends
//! only its own session — and metrics that pass `promtool check metrics`.
//! See: issue 13 ("Admission", "the endpoint under a bad client").

use std::process::Stdio;
use std::time::{Duration, Instant};

use leakwarden_tests::runner::{metric, prerequisites};
use leakwarden_tests::serve::{
    clients_installed, ended, http, node, python_client, run_client, stop_and_assert_nothing_left,
    ServeRun,
};

fn ready() -> bool {
    prerequisites() && clients_installed()
}

/// 20 clients, 100 ms apart (each once the one before reached the gate; the served hold their
/// sessions until all have arrived), against 4 slots and a queue of 8: the first 12 are served
/// in their arrival order (4 at once, then the queue in waves), the last 8 get 429 with
/// Retry-After; /readyz reports saturation meanwhile; nothing is left.
#[test]
fn serve_twenty_clients_four_slots_queue_eight_serve_twelve_in_order_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[
        "--max-sessions",
        "4",
        "--queue",
        "8",
        "--queue-timeout",
        "60s",
    ]);
    let client = node(
        "admission.js",
        &[&run.ws_url(), &run.site(), "20", "100", "3000"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn clients");
    let saturated = leakwarden_tests::wait_for(
        &format!("/readyz reporting saturation\n{}", run.logs()),
        Duration::from_secs(30),
        Duration::from_millis(50),
        || match run.get("/readyz") {
            Some((503, b)) if b.contains("\"saturated\":true") => Some(b),
            _ => None,
        },
    );
    eprintln!("readyz while saturated: {saturated}");
    let out = client.wait_with_output().expect("clients");
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("clients print a JSON array");
    eprintln!("{}", serde_json::to_string(&all).unwrap_or_default());
    let served: Vec<&serde_json::Value> = all.iter().filter(|c| c["status"] == 101).collect();
    let rejected: Vec<&serde_json::Value> = all.iter().filter(|c| c["status"] == 429).collect();
    assert_eq!(served.len(), 12, "{all:#?}\n{}", run.logs());
    assert_eq!(rejected.len(), 8, "{all:#?}");
    // Served: the first 12 to arrive, each with a working browser, numbered in arrival order.
    let served_idx: Vec<u64> = served.iter().filter_map(|c| c["i"].as_u64()).collect();
    assert_eq!(served_idx, (0..12).collect::<Vec<u64>>(), "{all:#?}");
    assert!(served.iter().all(|c| c["ok"] == true), "{all:#?}");
    let ids: Vec<u64> = served
        .iter()
        .filter_map(|c| c["session"].as_u64())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "sessions started in arrival order: {ids:?}"
    );
    for c in &rejected {
        let ra: u64 = c["retryAfter"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((1..=60).contains(&ra), "Retry-After: {c}");
    }
    let m = run.metrics();
    assert_eq!(
        metric(
            &m,
            "leakwarden_runner_sessions_rejected_total{reason=\"queue_full\"}"
        ),
        Some(8.0),
        "{m}"
    );
    leakwarden_tests::wait_for(
        "12 sessions ended",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (ended(&run, "closed") == 12.0).then_some(()),
    );
    let m = run.metrics();
    assert_eq!(
        metric(&m, "leakwarden_runner_cleanup_leaks_total"),
        Some(0.0)
    );
    assert!(
        metric(&m, "leakwarden_runner_session_queue_seconds_count").unwrap_or(0.0) >= 12.0,
        "{m}"
    );
    stop_and_assert_nothing_left(run);
}

fn bad_client(run: &ServeRun, mode: &str) -> serde_json::Value {
    run_client(
        &mut node("bad_client.js", &[&run.ws_url(), mode]),
        Duration::from_secs(60),
    )
}

/// Garbage, a binary frame, a 100 MB frame, a client that stops reading: each ends its own
/// session (and its browser is cleaned up), while a well-behaved puppeteer session running at
/// the same time finishes normally.
#[test]
fn serve_bad_clients_end_only_their_own_sessions_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&["--write-timeout", "2s"]);
    let good = |run: &ServeRun| {
        node(
            "puppeteer_session.js",
            &[&run.ws_url(), &run.site(), "close"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn good client")
    };
    let good_ok = |child: std::process::Child| {
        let out = child.wait_with_output().expect("good client");
        assert!(
            out.status.success(),
            "a well-behaved session failed next to a bad client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or(""),
        )
        .expect("good client JSON");
        assert_eq!(v["rows"], 200, "{v}");
    };

    let mut protocol_errors = 0.0;
    for (mode, code) in [("garbage", 1002), ("binary", 1002), ("huge", 1009)] {
        let g = good(&run);
        let t = Instant::now();
        let v = bad_client(&run, mode);
        eprintln!("{mode}: {v} after {:?}", t.elapsed());
        if mode == "huge" {
            // The service closes with 1009 as soon as the frame's header announces 100 MB; the
            // client may see that, or a reset while it is still writing the payload.
            assert!(
                [1009, 1006].contains(&v["code"].as_i64().unwrap_or(0)),
                "{v}"
            );
        } else {
            assert_eq!(v["code"], code, "{mode}: {v}");
        }
        protocol_errors += 1.0;
        good_ok(g);
        leakwarden_tests::wait_for(
            &format!("{mode} counted as a protocol error\n{}", run.logs()),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || (ended(&run, "protocol_error") == protocol_errors).then_some(()),
        );
    }
    let pid = run.pid().expect("service pid");
    let rss_before = leakwarden_tests::serve::rss_and_fds(pid).0;

    // A client that stops reading while 160 MB of replies are due: its session ends after the
    // write timeout; the service buffers at most one message for it.
    let mut flood = node("bad_client.js", &[&run.ws_url(), "noread"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn noread client");
    let g = good(&run);
    good_ok(g);
    leakwarden_tests::wait_for(
        &format!(
            "the non-reading client's session ended as slow_client\n{}",
            run.logs()
        ),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (ended(&run, "slow_client") == 1.0).then_some(()),
    );
    let rss_after = leakwarden_tests::serve::rss_and_fds(pid).0;
    eprintln!(
        "service RSS around the non-reading client: {} → {} KiB",
        rss_before >> 10,
        rss_after >> 10
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "the service held a non-reader's replies: {} → {} KiB",
        rss_before >> 10,
        rss_after >> 10
    );
    let _ = flood.kill();
    let _ = flood.wait();
    leakwarden_tests::wait_for(
        "the four good sessions ended (closed)",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (ended(&run, "closed") == 4.0).then_some(()),
    );
    let m = run.metrics();
    assert_eq!(
        metric(&m, "leakwarden_runner_cleanup_leaks_total"),
        Some(0.0),
        "{m}"
    );
    stop_and_assert_nothing_left(run);
}

/// With --token, discovery and sessions need it; the token in the endpoint URL works for both
/// puppeteer (browserWSEndpoint) and Playwright for Python (connect_over_cdp on http://…?token=).
#[test]
fn serve_token_is_required_and_carried_by_the_endpoint_url_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&["--token", "s3cret-t0ken"]);
    assert_eq!(run.get("/json/version").map(|(c, _)| c), Some(401));
    assert_eq!(
        run.get("/json/version?token=wrong").map(|(c, _)| c),
        Some(401)
    );
    assert_eq!(
        http(
            run.port,
            "/json/version",
            &["Authorization: Bearer s3cret-t0ken"]
        )
        .map(|(c, _)| c),
        Some(200)
    );
    let (code, body) = run
        .get("/json/version?token=s3cret-t0ken")
        .expect("version");
    assert_eq!(code, 200);
    assert!(
        body.contains("/devtools/browser?token=s3cret-t0ken"),
        "the query carries over: {body}"
    );
    // Probes and metrics stay open.
    assert_eq!(run.get("/readyz").map(|(c, _)| c), Some(200));
    assert_eq!(run.get("/metrics").map(|(c, _)| c), Some(200));
    let bad = std::process::Command::new("node")
        .current_dir(leakwarden_tests::serve::clients_dir())
        .arg("puppeteer_session.js")
        .args([&run.ws_url(), &run.site()])
        .output()
        .expect("node");
    assert!(!bad.status.success(), "a session without the token");
    let ws = format!("{}?token=s3cret-t0ken", run.ws_url());
    let v = run_client(
        &mut node("puppeteer_session.js", &[&ws, &run.site()]),
        Duration::from_secs(60),
    );
    assert_eq!(v["rows"], 200, "{v}");
    let url = format!("{}?token=s3cret-t0ken", run.http_url());
    let v = run_client(
        &mut python_client("playwright_session.py", &[&url, &run.site()]),
        Duration::from_secs(90),
    );
    assert_eq!(v["rows"], 200, "{v}");
    assert!(
        metric(
            &run.metrics(),
            "leakwarden_runner_sessions_rejected_total{reason=\"unauthorized\"}"
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    stop_and_assert_nothing_left(run);
}

/// The service's /metrics, with every family populated by real sessions, passes
/// `promtool check metrics`.
#[test]
fn serve_metrics_pass_promtool_chromium() {
    if !ready() {
        return;
    }
    let Ok(promtool) = which("promtool") else {
        eprintln!("skipping: no promtool (run ./scripts/install-deps.sh)");
        return;
    };
    let run = ServeRun::start(&["--max-sessions", "1", "--queue", "0"]);
    let v = run_client(
        &mut node("puppeteer_session.js", &[&run.ws_url(), &run.site()]),
        Duration::from_secs(60),
    );
    assert_eq!(v["rows"], 200);
    leakwarden_tests::wait_for(
        "the session ended",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (ended(&run, "closed") == 1.0).then_some(()),
    );
    let text = run.metrics();
    for name in [
        "leakwarden_runner_sessions_ended_total{reason=\"closed\"} 1",
        "leakwarden_runner_sessions_rejected_total{reason=\"queue_full\"} 0",
        "leakwarden_runner_pool_starts_total{kind=\"warm\"} 1",
        "leakwarden_runner_session_duration_seconds_count 1",
        "leakwarden_runner_session_queue_seconds_bucket",
        "leakwarden_runner_sessions_max 1",
        "leakwarden_runner_cdp_messages_total{from=\"client\"}",
        "leakwarden_runner_cleanup_leaks_total 0",
        "leakwarden_runner_pool_ready_browsers",
        "leakwarden_runner_draining 0",
    ] {
        assert!(text.contains(name), "missing {name}\n{text}");
    }
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop_and_assert_nothing_left(run);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .ok_or(())
}
