//! `leakwarden-runner serve` with the real clients people run their bots on — puppeteer-core,
//! Playwright for Node and for Python — driving the system Chromium through the endpoint, the
//! service in a private PID namespace. Whatever the client does, its session's browser is
//! closed and verified, and nothing is left.
//! See: issue 13 ("Runner, part 2: leak-proof browsers for the clients people already have").

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use leakwarden_tests::runner::{metric, prerequisites, signal, wait_for_empty};
use leakwarden_tests::serve::{
    browser_group, browser_processes, clients_installed, ended, node, python_client, rss_and_fds,
    run_client, start_holding, stop_and_assert_nothing_left, ServeRun,
};
use rustix::process::Signal;

fn ready() -> bool {
    prerequisites() && clients_installed()
}

fn assert_session_result(v: &serde_json::Value) {
    assert_eq!(v["title"], "Late title", "{v}");
    assert_eq!(v["rows"], 200, "{v}");
    assert!(
        v["version"].as_str().unwrap_or("").contains("156"),
        "the browser's own version: {v}"
    );
}

#[test]
fn serve_puppeteer_connect_by_ws_endpoint_and_browser_url_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let v = run_client(
        &mut node(
            "puppeteer_session.js",
            &[&run.ws_url(), &run.site(), "close"],
        ),
        Duration::from_secs(60),
    );
    assert_session_result(&v);
    let v = run_client(
        &mut node(
            "puppeteer_session.js",
            &[&run.http_url(), &run.site(), "disconnect"],
        ),
        Duration::from_secs(60),
    );
    assert_session_result(&v);
    // Both sessions are over and their browsers verified gone (the metric counts after that).
    leakwarden_tests::wait_for(
        "two sessions ended",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || (ended(&run, "closed") == 2.0).then_some(()),
    );
    let m = run.metrics();
    assert_eq!(
        metric(&m, "leakwarden_runner_cleanup_leaks_total"),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, "leakwarden_runner_pool_starts_total{kind=\"warm\"}").unwrap_or(0.0) >= 1.0,
        "a warm pool serves the first connection at once: {m}"
    );
    stop_and_assert_nothing_left(run);
}

#[test]
fn serve_playwright_node_connect_over_cdp_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let v = run_client(
        &mut node("playwright_session.js", &[&run.http_url(), &run.site()]),
        Duration::from_secs(60),
    );
    assert_session_result(&v);
    leakwarden_tests::wait_for(
        "the session ended",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || run.sessions().is_empty().then_some(()),
    );
    stop_and_assert_nothing_left(run);
}

#[test]
fn serve_playwright_python_connect_over_cdp_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let v = run_client(
        &mut python_client("playwright_session.py", &[&run.http_url(), &run.site()]),
        Duration::from_secs(90),
    );
    assert_session_result(&v);
    leakwarden_tests::wait_for(
        "the session ended",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || run.sessions().is_empty().then_some(()),
    );
    stop_and_assert_nothing_left(run);
}

/// SIGKILL a client mid-navigation; its browser's processes and directory must be gone within
/// 2 s of that.
fn client_killed_mid_navigation(run: &ServeRun, client: std::process::Command) -> Duration {
    let mut child = start_holding(client);
    let sessions = run.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}\n{}", run.logs());
    let dir = PathBuf::from(sessions[0]["dir"].as_str().expect("dir"));
    let group = browser_group(&dir).expect("the session's browser runs");
    assert!(
        !browser_processes(&dir, &[group]).is_empty(),
        "the browser runs"
    );
    // The slow page is loading now.
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id() as i32, Signal::KILL);
    let killed = Instant::now();
    let _ = child.wait();
    loop {
        let left = browser_processes(&dir, &[group]);
        if left.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "still there 10 s after the client died: {left:#?}, dir exists: {}\n{}",
            dir.exists(),
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = killed.elapsed();
    eprintln!("client SIGKILLed: its browser and directory were gone after {took:?}");
    took
}

#[test]
fn serve_puppeteer_client_sigkilled_mid_navigation_leaves_nothing_within_2s_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let took = client_killed_mid_navigation(&run, node("hold.js", &[&run.ws_url(), &run.site()]));
    assert!(
        took <= Duration::from_secs(2),
        "browser and directory gone {took:?} after the client's SIGKILL\n{}",
        run.logs()
    );
    leakwarden_tests::wait_for(
        "the session counted as disconnected",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || (ended(&run, "disconnected") == 1.0).then_some(()),
    );
    stop_and_assert_nothing_left(run);
}

#[test]
fn serve_python_client_sigkilled_mid_navigation_leaves_nothing_within_2s_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let took = client_killed_mid_navigation(
        &run,
        python_client("hold.py", &[&run.http_url(), &run.site()]),
    );
    // Playwright for Python talks through a Node driver process, which holds the WebSocket;
    // it exits as soon as its parent's pipe closes, and that is the disconnect.
    assert!(
        took <= Duration::from_secs(2),
        "browser and directory gone {took:?} after the client's SIGKILL\n{}",
        run.logs()
    );
    stop_and_assert_nothing_left(run);
}

#[test]
fn serve_one_client_cannot_list_or_attach_to_anothers_targets_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let v = run_client(
        &mut node("isolation.js", &[&run.ws_url(), &run.site()]),
        Duration::from_secs(60),
    );
    eprintln!("{v:#}");
    assert_eq!(v["seenByB"], 0, "B saw A's page: {v:#}");
    assert!(
        v["bPuppeteerUrls"].as_array().is_some_and(|a| a
            .iter()
            .all(|u| !u.as_str().unwrap_or("").contains("secret"))),
        "{v:#}"
    );
    for what in ["attach", "activate", "close"] {
        assert!(
            v[what].as_str().unwrap_or("").starts_with("failed"),
            "B could {what} A's page: {v:#}"
        );
    }
    assert_eq!(v["aStillThere"], true, "{v:#}");
    // The discovery endpoints list no one's targets, and no path reaches a page by id.
    assert_eq!(
        run.get("/json/list")
            .map(|(c, b)| (c, b.trim().to_string())),
        Some((200, "[]".into()))
    );
    assert_eq!(
        run.get("/json").map(|(c, b)| (c, b.trim().to_string())),
        Some((200, "[]".into()))
    );
    let page = format!("/devtools/page/{}", v["aTargetId"].as_str().unwrap_or(""));
    assert_eq!(run.get(&page).map(|(c, _)| c), Some(404));
    stop_and_assert_nothing_left(run);
}

/// 100 sessions, back to back in two streams (the service's default has four slots and two warm
/// browsers): after the first 20 (pools, buffers, allocator warm), the service's RSS, open
/// descriptors and tokio tasks stay where they were through the next 80.
#[test]
fn serve_hundred_sessions_in_a_row_keep_rss_fds_and_tasks_flat_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let pid = run.pid().expect("service pid");
    let quiet = |run: &ServeRun| {
        leakwarden_tests::wait_for(
            "the pool refilled and no session is open",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let r: serde_json::Value = run
                    .get("/readyz")
                    .and_then(|(_, b)| serde_json::from_str(&b).ok())?;
                (r["ready_browsers"] == 2
                    && r["launching_browsers"] == 0
                    && r["active_sessions"] == 0)
                    .then_some(())
            },
        );
        std::thread::sleep(Duration::from_millis(500));
        let (rss, fds) = rss_and_fds(pid);
        let tasks = metric(&run.metrics(), "leakwarden_runner_tasks_alive").unwrap_or(-1.0);
        (rss, fds, tasks)
    };
    let v = run_client(
        &mut node("many.js", &[&run.ws_url(), &run.site(), "20", "2"]),
        Duration::from_secs(240),
    );
    assert_eq!(v["ok"], 20, "{v}");
    let (rss1, fds1, tasks1) = quiet(&run);
    let v = run_client(
        &mut node("many.js", &[&run.ws_url(), &run.site(), "80", "2"]),
        Duration::from_secs(600),
    );
    assert_eq!(v["ok"], 80, "{v}");
    let (rss2, fds2, tasks2) = quiet(&run);
    eprintln!(
        "after 20 sessions: rss {} KiB, fds {fds1}, tasks {tasks1}; after 100: rss {} KiB, fds {fds2}, tasks {tasks2}",
        rss1 >> 10,
        rss2 >> 10
    );
    assert!(
        fds2 <= fds1 + 2,
        "FDs grew: {fds1} → {fds2}\n{}",
        run.logs()
    );
    assert!(tasks2 <= tasks1 + 2.0, "tasks grew: {tasks1} → {tasks2}");
    assert!(
        rss2 <= rss1 + (8 << 20),
        "RSS grew by more than 8 MiB over 80 sessions: {} → {} KiB",
        rss1 >> 10,
        rss2 >> 10
    );
    let m = run.metrics();
    assert_eq!(
        metric(&m, "leakwarden_runner_cleanup_leaks_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        ended(&run, "closed") + ended(&run, "disconnected"),
        100.0,
        "{m}"
    );
    stop_and_assert_nothing_left(run);
}

/// Wait until `n` sessions are open; the directory of the newest.
fn newest_session_dir(run: &ServeRun, n: usize) -> PathBuf {
    let s = leakwarden_tests::wait_for(
        &format!("{n} open sessions\n{}", run.logs()),
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let s = run.sessions();
            (s.len() == n).then_some(s)
        },
    );
    PathBuf::from(s[n - 1]["dir"].as_str().expect("dir"))
}

/// Poll until nothing of the browser in `dir` is left; how long that took.
fn gone(run: &ServeRun, dir: &std::path::Path, groups: &[i32]) -> Duration {
    let t = Instant::now();
    loop {
        let left = browser_processes(dir, groups);
        if left.is_empty() && !dir.exists() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "left 10 s after its session ended: {left:#?}\n{}",
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that goes quiet is ended at --idle-timeout; one that keeps sending, at
/// --session-timeout. Both get a close frame saying why, and their browsers are gone within 2 s.
#[test]
fn serve_idle_and_session_timeouts_end_sessions_and_clean_up_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&["--idle-timeout", "2s", "--session-timeout", "4s"]);
    let spawn = |mode: &str| {
        node("idle.js", &[&run.ws_url(), mode])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client")
    };
    let idle = spawn("idle");
    let idle_dir = newest_session_dir(&run, 1);
    let idle_group = browser_group(&idle_dir).expect("browser runs");
    let busy = spawn("busy");
    let busy_dir = newest_session_dir(&run, 2);
    let busy_group = browser_group(&busy_dir).expect("browser runs");

    let idle = idle.wait_with_output().expect("idle client");
    let took = gone(&run, &idle_dir, &[idle_group]);
    let v: serde_json::Value = serde_json::from_slice(&idle.stdout).expect("idle client JSON");
    eprintln!("idle client: {v}; browser gone {took:?} after the close");
    assert_eq!(v["code"], 1008, "{v}");
    assert_eq!(v["reason"], "idle timeout", "{v}");
    let ms = v["ms"].as_u64().unwrap_or(0);
    assert!((1900..4000).contains(&ms), "closed after {ms} ms: {v}");
    assert!(took <= Duration::from_secs(2), "{took:?}\n{}", run.logs());

    let busy = busy.wait_with_output().expect("busy client");
    let took = gone(&run, &busy_dir, &[busy_group]);
    let v: serde_json::Value = serde_json::from_slice(&busy.stdout).expect("busy client JSON");
    eprintln!("busy client: {v}; browser gone {took:?} after the close");
    assert_eq!(v["code"], 1008, "{v}");
    assert_eq!(v["reason"], "session timeout", "{v}");
    let ms = v["ms"].as_u64().unwrap_or(0);
    assert!((3900..6000).contains(&ms), "closed after {ms} ms: {v}");
    assert!(took <= Duration::from_secs(2), "{took:?}\n{}", run.logs());

    // Counted once the session's close has finished, which may be just after the client saw
    // its close frame: wait for the count rather than read it once.
    for reason in ["idle", "timeout"] {
        leakwarden_tests::wait_for(
            &format!("the {reason} end counted once"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || (ended(&run, reason) == 1.0).then_some(()),
        );
    }
    stop_and_assert_nothing_left(run);
}

/// SIGTERM with a session open: new connections are refused (503) and /readyz says so; the open
/// session gets --drain-timeout, then is ended; the service exits 0 with nothing left.
#[test]
fn serve_sigterm_with_a_session_open_drains_and_exits_0_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&["--drain-timeout", "2s"]);
    let mut client = start_holding(node("hold.js", &[&run.ws_url(), &run.site()]));
    let dir = newest_session_dir(&run, 1);
    run.signal(Signal::TERM);
    let t = Instant::now();
    leakwarden_tests::wait_for(
        "readyz reports draining",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            matches!(run.get("/readyz"), Some((503, b)) if b.contains("\"draining\":true"))
                .then_some(())
        },
    );
    let refused = leakwarden_tests::serve::http(
        run.port,
        "/devtools/browser",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    );
    assert_eq!(
        refused.map(|(c, _)| c),
        Some(503),
        "a new session while draining"
    );
    let rc = run.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    assert_eq!(rc, 0, "exit code\n{}", run.logs());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "the open session had its 2 s drain, then the service exited: {took:?}\n{}",
        run.logs()
    );
    assert!(!dir.exists());
    assert!(
        run.stderr().contains("end=\"killed\""),
        "the open session was ended by the service\n{}",
        run.logs()
    );
    let _ = client.kill();
    let _ = client.wait();
    let procs = wait_for_empty(|| run.processes_left(), Duration::from_secs(5));
    assert!(
        procs.is_empty(),
        "processes left: {procs:#?}\n{}",
        run.logs()
    );
    let dirs = leakwarden_tests::runner::dirs_under(&run.root);
    assert!(
        dirs.is_empty(),
        "directories left: {dirs:?}\n{}",
        run.logs()
    );
    run.finish();
}

/// SIGKILL the service with a session open: its browsers die with it (parent-death signal, and
/// end of file on their CDP pipes), and its guard removes the run directory; a restart over the
/// same --run-dir finds nothing to sweep and serves again.
#[test]
fn serve_sigkilled_takes_its_browsers_along_and_its_guard_removes_the_directory_chromium() {
    if !ready() {
        return;
    }
    let run = ServeRun::start(&[]);
    let mut client = start_holding(node("hold.js", &[&run.ws_url(), &run.site()]));
    let dead_run = leakwarden_tests::runner::dirs_under(&run.root);
    assert_eq!(dead_run.len(), 1);
    run.signal(Signal::KILL);
    let t = Instant::now();
    let procs = wait_for_empty(|| run.processes_left(), Duration::from_secs(10));
    assert!(
        procs.is_empty(),
        "browsers outlived the SIGKILLed service: {procs:#?}"
    );
    let browsers_gone = t.elapsed();
    let dirs = wait_for_empty(
        || leakwarden_tests::runner::dirs_under(&run.root),
        Duration::from_secs(10),
    );
    assert!(dirs.is_empty(), "the guard left {dirs:?}\n{}", run.logs());
    eprintln!(
        "after the service's SIGKILL: every browser gone after {browsers_gone:?}, its directory after {:?}",
        t.elapsed()
    );
    assert!(
        run.stderr()
            .contains("lw-run-guard: the runner is gone; removed"),
        "{}",
        run.logs()
    );
    let _ = client.kill();
    let _ = client.wait();
    let dir = run.finish();
    let again = ServeRun::start_in(dir, &[]);
    let v = run_client(
        &mut node("puppeteer_session.js", &[&again.ws_url(), &again.site()]),
        Duration::from_secs(60),
    );
    assert_eq!(v["rows"], 200);
    stop_and_assert_nothing_left(again);
}
