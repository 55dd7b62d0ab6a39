//! Signals to the runner: SIGTERM drains and exits 0 with nothing left; SIGKILL takes the
//! browsers down with it (parent-death signal) and its guard removes the run directory; with
//! the guard killed too, the next start removes the directory the dead run left. Real Chromium,
//! private PID namespace.

use std::time::{Duration, Instant};

use leakwarden_tests::runner::{
    assert_nothing_left, dirs_under, free_port, http_get, metric, outcomes, prerequisites, signal,
    wait_for_empty, RunnerRun,
};
use leakwarden_tests::wait_for;
use rustix::process::Signal;

const DRAIN_SECS: u64 = 5;

#[test]
fn runner_sigterm_mid_run_drains_and_exits_zero_chromium() {
    if !prerequisites() {
        return;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let run = RunnerRun::start(&[
        "--sessions",
        "200",
        "--listen",
        &listen,
        "--drain-timeout",
        &format!("{DRAIN_SECS}s"),
    ]);
    // Mid-run: a few sessions done, browsers up.
    let text = wait_for(
        &format!("sessions under way\n{}", run.logs()),
        Duration::from_secs(90),
        Duration::from_millis(200),
        || {
            let t = http_get(port, "/metrics")?;
            let done = metric(&t, "leakwarden_runner_sessions_total{outcome=\"ok\"}")?;
            (done >= 2.0).then_some(t)
        },
    );
    assert_eq!(http_get(port, "/healthz").as_deref(), Some("ok\n"));
    for name in [
        "leakwarden_runner_active_browsers",
        "leakwarden_runner_active_sessions",
        "leakwarden_runner_queue_depth",
        "leakwarden_runner_circuit_state",
        "leakwarden_runner_tasks_alive",
        "leakwarden_runner_cleanup_leaks_total",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
    promtool_check(&text);

    let pid = run.runner_pid().expect("runner pid");
    let t0 = Instant::now();
    signal(pid, Signal::TERM);
    let rc = run.wait_exit(Duration::from_secs(DRAIN_SECS + 30));
    let took = t0.elapsed();
    assert_eq!(rc, 0, "SIGTERM exits 0\n{}", run.logs());
    // The drain deadline, plus closing browsers (bounded by the close timeouts).
    assert!(
        took < Duration::from_secs(DRAIN_SECS + 20),
        "took {took:?}\n{}",
        run.logs()
    );
    let s = run.summary();
    assert_eq!(s["interrupted"], true, "{s:#}");
    let (ok, retried, failed, timeout, _cancelled) = outcomes(&s);
    assert!(ok + retried >= 2 && failed + timeout == 0, "{s:#}");
    assert!(s["not_started"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    assert_nothing_left(&run);
    run.finish();
}

/// `promtool check metrics` on a scrape, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed; skipping the metrics lint");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run of 500 sessions at concurrency 2, once its browsers are up.
fn busy_run() -> RunnerRun {
    let run = RunnerRun::start(&["--sessions", "500", "--concurrency", "2"]);
    wait_for(
        &format!("browser processes\n{}", run.logs()),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (run.processes_left().len() >= 5).then_some(()),
    );
    run
}

/// SIGKILL of the runner: its browsers die with it — the parent-death signal SIGKILLs each
/// browser process, and its children (zygotes, GPU, utility, renderers, crashpad handlers) exit
/// once their browser is gone — and its guard (`lw-run-guard`) removes the run directory.
/// Checked while the namespace is still alive, so the namespace's own end hides nothing. When
/// the guard is killed too, the next start removes the dead run's directory.
#[test]
fn runner_sigkill_browsers_die_with_it_and_its_guard_removes_the_directory_chromium() {
    if !prerequisites() {
        return;
    }
    let run = busy_run();
    // Let a session or two get under way.
    std::thread::sleep(Duration::from_millis(1500));
    let before = run.processes_left();
    let pid = run.runner_pid().expect("runner pid");
    let t = Instant::now();
    signal(pid, Signal::KILL);
    let left = wait_for_empty(|| run.processes_left(), Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "processes outlived the SIGKILLed runner: {left:#?}\n(before: {} processes)\n{}",
        before.len(),
        run.logs()
    );
    let dirs = wait_for_empty(|| dirs_under(&run.root), Duration::from_secs(10));
    assert!(dirs.is_empty(), "the guard left {dirs:?}\n{}", run.logs());
    eprintln!(
        "after the runner's SIGKILL: processes and directory gone after {:?}",
        t.elapsed()
    );
    assert!(
        run.stderr()
            .contains("lw-run-guard: the runner is gone; removed"),
        "{}",
        run.logs()
    );
    run.finish();
}

/// SIGKILL of the runner and of its guard (a kill of the whole cgroup): the dead run's directory
/// stays, and the next start over the same root removes it.
#[test]
fn runner_and_guard_sigkilled_next_start_removes_the_directory_chromium() {
    if !prerequisites() {
        return;
    }
    let run = busy_run();
    let guard = run
        .processes_left()
        .into_iter()
        .find(|(_, c)| c.contains(" guard "))
        .map(|(p, _)| p)
        .unwrap_or_else(|| panic!("no guard among the run's processes\n{}", run.logs()));
    signal(guard, Signal::KILL);
    signal(run.runner_pid().expect("runner pid"), Signal::KILL);
    let left = wait_for_empty(|| run.processes_left(), Duration::from_secs(20));
    assert!(left.is_empty(), "{left:#?}\n{}", run.logs());
    let dirs = dirs_under(&run.root);
    assert_eq!(
        dirs.len(),
        1,
        "the dead run's directory, with its guard killed: {dirs:?}"
    );
    let dir = run.finish();

    // The next start removes it.
    let next = RunnerRun::start_in(dir, &["--sessions", "1"]);
    let rc = next.wait_exit(Duration::from_secs(90));
    assert_eq!(rc, 0, "{}", next.logs());
    let s = next.summary();
    assert_eq!(s["cleanup"]["stale_run_dirs_removed"], 1, "{s:#}");
    assert!(!dirs[0].exists(), "{} removed", dirs[0].display());
    assert_nothing_left(&next);
    next.finish();
}
