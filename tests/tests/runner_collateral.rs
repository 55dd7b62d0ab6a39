//! A session is not failed by its neighbours (issue 16): when the browser it shares dies by
//! another session's fault, it runs again on another browser without spending its retry; and
//! the retry of a session whose first attempt ran on an `abandon` browser runs on a browser of
//! the pool, which is closed and verified like any other. Real Chromium, private PID namespace.
//! Assertions read the summary's records (attempts, collateral restarts, runs), never timings.

use std::time::Duration;

use leakwarden_tests::runner::{
    assert_nothing_left, job_file, prerequisites, processes_naming, run_dir_prefix, test_dir,
    RunnerRun,
};

/// Four sessions at once on one browser of four contexts (the default); after its first step
/// (when `kill-browser` strikes, in session 3) each of the others is still sleeping in the
/// browser.
const SHARED_JOB: &str = r#"
name: collateral
sessions: 4
concurrency: 4
retries: 1
timeouts: { step: 15s, session: 60s }
steps:
  - navigate: /
  - sleep: 4s
  - navigate: /rows
  - evaluate: "document.querySelectorAll('tr').length"
"#;

fn record(s: &serde_json::Value, index: u64) -> &serde_json::Value {
    s["records"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["index"] == index))
        .unwrap_or_else(|| panic!("no record of session {index}: {s:#}"))
}

/// See: issue 16.
#[test]
fn runner_kill_browser_of_one_session_costs_its_three_neighbours_no_retry_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let job = job_file(dir.path(), "job.yaml", SHARED_JOB);
    // Ratio 0.25 of 4 sessions: session 3 only.
    let run = RunnerRun::start_in(
        dir,
        &[job.to_str().unwrap(), "--fault", "kill-browser:0.25"],
    );
    let rc = run.wait_exit(Duration::from_secs(240));
    let s = run.summary();
    let logs = run.logs();
    assert_eq!(rc, 0, "every session succeeds: {s:#}\n{logs}");
    assert_eq!(s["faults_injected"]["kill-browser"], 1, "{s:#}");

    // The killer spent its retry on its own fault.
    let killer = record(&s, 3);
    assert_eq!(killer["outcome"], "retried", "{s:#}\n{logs}");
    assert_eq!(killer["attempts"], 2, "{s:#}");
    assert_eq!(killer["collateral_restarts"], 0, "{s:#}");
    let killed = killer["runs"][0]["browser"]
        .as_str()
        .expect("the killer's browser");

    // Its three neighbours lost the same browser, ran again elsewhere, and succeeded on their
    // first attempt.
    for i in 0..3 {
        let r = record(&s, i);
        assert_eq!(r["outcome"], "ok", "session {i}: {s:#}\n{logs}");
        assert_eq!(r["attempts"], 1, "session {i} spent no retry: {s:#}");
        assert_eq!(r["collateral_restarts"], 1, "session {i}: {s:#}\n{logs}");
        let runs = r["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "session {i}: {s:#}");
        assert_eq!(runs[0]["browser"], killed, "session {i} shared it: {s:#}");
        assert_eq!(
            runs[0]["collateral"], "neighbour_fault",
            "session {i}: {s:#}"
        );
        let why = runs[0]["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("session 3") && why.contains("kill-browser"),
            "the cause is named: {why}"
        );
        assert_ne!(runs[1]["browser"], killed, "session {i}: {s:#}");
        assert!(runs[1]["error"].is_null(), "session {i}: {s:#}");
    }
    assert_eq!(s["collateral_restarts"], 3, "{s:#}");
    assert_eq!(s["attempts"], 5, "{s:#}");
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}\n{logs}");
    assert_nothing_left(&run);
    run.finish();
}

/// Two sessions; session 1 gets `abandon` and `crash`, so its first attempt fails on its own
/// detached browser and its retry has to run somewhere.
const ABANDON_JOB: &str = r#"
name: abandon-retry
sessions: 2
concurrency: 1
retries: 1
timeouts: { step: 4s, session: 20s }
steps:
  - navigate: /
  - navigate: /rows
  - evaluate: "document.querySelectorAll('tr').length"
"#;

/// See: issue 16 ("its retry must run on a pooled, supervised browser").
#[test]
fn runner_retry_after_abandon_runs_on_a_pooled_supervised_browser_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let job = job_file(dir.path(), "job.yaml", ABANDON_JOB);
    let run = RunnerRun::start_in(
        dir,
        &[
            job.to_str().unwrap(),
            "--fault",
            "abandon:0.5",
            "--fault",
            "crash:0.5",
        ],
    );
    let rc = run.wait_exit(Duration::from_secs(150));
    let s = run.summary();
    let logs = run.logs();
    assert_eq!(rc, 0, "{s:#}\n{logs}");
    let r = record(&s, 1);
    let faults = r["faults"].as_array().expect("faults");
    assert!(
        faults.contains(&"abandon".into()) && faults.contains(&"crash".into()),
        "{s:#}"
    );
    assert_eq!(r["outcome"], "retried", "{s:#}\n{logs}");
    assert_eq!(r["attempts"], 2, "{s:#}");
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{s:#}");
    assert_eq!(runs[0]["browser"], "detached", "{s:#}");
    assert!(runs[0]["error"].is_string(), "the crash failed it: {s:#}");
    let retried_on = runs[1]["browser"].as_str().unwrap_or_default();
    assert!(
        retried_on.starts_with('b'),
        "the retry ran on a browser of the pool, not {retried_on:?}: {s:#}"
    );
    // Supervised: every browser of the pool was closed and verified, nothing of it is left;
    // only the abandoned browser still runs (the sidecar's to catch).
    assert_eq!(
        s["browsers_launched"], s["cleanup"]["browsers_closed"],
        "{s:#}"
    );
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}\n{logs}");
    let procs = processes_naming(&run_dir_prefix(&run.root));
    assert!(
        !procs.is_empty() && procs.iter().all(|(_, c)| c.contains(".abandoned-")),
        "only the abandoned browser is left: {procs:#?}\n{logs}"
    );
    run.finish();
}
