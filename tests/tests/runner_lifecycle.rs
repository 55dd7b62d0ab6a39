//! The runner's lifecycle end to end, with real Chromium in a private PID namespace: runs
//! complete and leave no process and no directory behind.

use std::time::Duration;

use leakwarden_tests::runner::{
    assert_nothing_left, job_file, outcomes, prerequisites, run_with_deadline, test_dir, RunnerRun,
};
use leakwarden_tests::{bin, describe};

/// Issue 9's smoke form: its bench job (the embedded default job), the runner alone, 5 sessions
/// at concurrency 1, nothing left.
/// See: issue 9 ("a fast smoke form of its job … is part of make test").
#[test]
fn runner_smoke_five_sessions_leave_nothing_chromium() {
    if !prerequisites() {
        return;
    }
    let run = RunnerRun::start(&["--sessions", "5", "--concurrency", "1"]);
    let rc = run.wait_exit(Duration::from_secs(120));
    assert_eq!(rc, 0, "exit code\n{}", run.logs());
    let s = run.summary();
    assert_eq!(outcomes(&s), (5, 0, 0, 0, 0), "{s:#}");
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    assert_eq!(s["cleanup"]["run_dir_removed"], true, "{s:#}");
    assert!(s["browsers_launched"].as_u64().unwrap() >= 1);
    assert_nothing_left(&run);
    run.finish();
}

/// The default job at its default concurrency, with browser recycling forced (a browser serves
/// at most 3 sessions), so closing and launch-ahead happen mid-run.
#[test]
fn runner_default_job_with_recycling_leaves_nothing_chromium() {
    if !prerequisites() {
        return;
    }
    let run = RunnerRun::start(&["--sessions", "8", "--recycle-after", "3"]);
    let rc = run.wait_exit(Duration::from_secs(180));
    assert_eq!(rc, 0, "exit code\n{}", run.logs());
    let s = run.summary();
    let (ok, retried, ..) = outcomes(&s);
    assert_eq!(ok + retried, 8, "{s:#}");
    assert!(
        s["browsers_launched"].as_u64().unwrap() >= 3,
        "8 sessions with recycle-after 3 need at least 3 browsers: {s:#}"
    );
    assert_eq!(
        s["browsers_launched"], s["cleanup"]["browsers_closed"],
        "every browser launched was closed: {s:#}"
    );
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    assert_nothing_left(&run);
    run.finish();
}

/// Every step kind against the embedded site, artifacts written where the job says.
#[test]
fn runner_every_step_kind_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let shots = dir.path().join("shots");
    let job = job_file(
        dir.path(),
        "steps.yaml",
        &format!(
            r##"
name: every-step
sessions: 2
concurrency: 1
retries: 0
timeouts: {{ step: 10s, session: 40s }}
artifacts: {}
steps:
  - navigate: /
  - type: {{ selector: "#q", text: "leak" }}
  - click: "#go"
  - wait_for: "#result"
  - evaluate: "document.querySelector('#result').textContent.includes('leak') || Promise.reject('no result')"
  - pdf: {{}}
  - navigate: /slow?ms=200
  - navigate: /heavy
  - screenshot: {{ full_page: false }}
  - sleep: 50ms
"##,
            shots.display()
        ),
    );
    let run = RunnerRun::start_in(dir, &[job.to_str().unwrap()]);
    let rc = run.wait_exit(Duration::from_secs(120));
    assert_eq!(rc, 0, "exit code\n{}", run.logs());
    let s = run.summary();
    assert_eq!(outcomes(&s), (2, 0, 0, 0, 0), "{s:#}");
    let files: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".png")).count(),
        2,
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".pdf")).count(),
        2,
        "{files:?}"
    );
    assert_nothing_left(&run);
    run.finish();
}

/// A bad job file: exit 64, one line naming file, line and column; nothing started.
#[test]
fn runner_bad_job_exits_64_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(
        dir.path(),
        "bad.yaml",
        "sessions: 2\nsteps:\n  - navigate: /\n  - clik: \"#go\"\n",
    );
    let mut cmd = std::process::Command::new(bin("leakwarden-runner"));
    cmd.arg("run").arg(&job);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(64), "{}", describe(&cmd, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{}", describe(&cmd, &out));
    assert!(
        err.contains(&format!("{}:4:", job.display())) && err.contains("clik"),
        "{}",
        describe(&cmd, &out)
    );

    let mut cmd = std::process::Command::new(bin("leakwarden-runner"));
    cmd.args(["run", "--concurrency", "0"]);
    let out = run_with_deadline(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(64), "{}", describe(&cmd, &out));
}

/// A browser that cannot start: launches fail, the circuit breaker opens (backoff instead of a
/// launch loop), sessions fail within their timeout, the run ends with exit 2 and no leak.
#[test]
fn runner_launch_failures_open_the_breaker_and_fail_sessions() {
    if !leakwarden_tests::can_unshare() {
        eprintln!("skipping: cannot create PID namespaces");
        return;
    }
    let dir = test_dir();
    let job = job_file(
        dir.path(),
        "job.yaml",
        "sessions: 2\nconcurrency: 1\nretries: 0\ntimeouts: { step: 2s, session: 4s }\nsteps:\n  - navigate: /\n",
    );
    let run = RunnerRun::start_in(dir, &[job.to_str().unwrap(), "--chromium", "/bin/false"]);
    let rc = run.wait_exit(Duration::from_secs(60));
    assert_eq!(rc, 2, "{}", run.logs());
    let s = run.summary();
    let (ok, retried, failed, timeout, _) = outcomes(&s);
    assert_eq!((ok, retried, failed + timeout), (0, 0, 2), "{s:#}");
    let failures = s["launch_failures"].as_u64().unwrap();
    // Without the breaker a launch loop would fail hundreds of times in 8 s; with it, the
    // third failure opens the circuit and the backoff doubles from 1 s.
    assert!(
        (3..=8).contains(&failures),
        "launch failures {failures}: {s:#}\n{}",
        run.logs()
    );
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    assert_nothing_left(&run);
    run.finish();
}
