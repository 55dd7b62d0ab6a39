//! Injected faults: the affected session ends failed or retried within its timeout, the run
//! goes on, and cleanup leaves nothing. Real Chromium, private PID namespace.

use std::time::Duration;

use leakwarden_tests::runner::{
    assert_nothing_left, job_file, outcomes, prerequisites, processes_naming, run_dir_prefix,
    test_dir, RunnerRun,
};

/// Short timeouts so a hung step ends quickly; two sessions, the second one faulted.
const FAST_JOB: &str = r#"
name: fault-test
sessions: 2
concurrency: 1
retries: 1
timeouts: { step: 4s, session: 20s }
steps:
  - navigate: /
  - navigate: /rows
  - evaluate: "document.querySelectorAll('tr').length"
  - screenshot: {}
"#;

const SESSION_TIMEOUT_SECS: u64 = 20;

fn fault_run(fault: &str) {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let job = job_file(dir.path(), "job.yaml", FAST_JOB);
    let spec = format!("{fault}:0.5");
    let run = RunnerRun::start_in(dir, &[job.to_str().unwrap(), "--fault", &spec]);
    let rc = run.wait_exit(Duration::from_secs(150));
    let s = run.summary();
    assert_eq!(s["faults_injected"][fault], 1, "{s:#}\n{}", run.logs());
    let records = s["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "the run went on: {s:#}");
    let faulted = records.iter().find(|r| r["index"] == 1).unwrap();
    let outcome = faulted["outcome"].as_str().unwrap();
    assert!(
        outcome == "retried" || outcome == "failed",
        "the faulted session ends failed or retried, not {outcome}: {s:#}\n{}",
        run.logs()
    );
    assert!(
        faulted["attempts"].as_u64().unwrap() >= 2 || outcome == "failed",
        "{s:#}"
    );
    // Its first attempt ended within the session timeout (the retry adds one more session).
    assert!(
        faulted["duration_ms"].as_u64().unwrap() < 2 * SESSION_TIMEOUT_SECS * 1000 + 10_000,
        "{s:#}"
    );
    let other = records.iter().find(|r| r["index"] == 0).unwrap();
    assert!(
        other["outcome"] == "ok" || other["outcome"] == "retried",
        "the session without a fault succeeds: {s:#}"
    );
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}\n{}", run.logs());
    assert!(
        rc == 0 || (rc == 2 && outcome == "failed"),
        "exit {rc}\n{}",
        run.logs()
    );
    assert_nothing_left(&run);
    run.finish();
}

#[test]
fn runner_fault_crash_renderer_chromium() {
    fault_run("crash");
}

#[test]
fn runner_fault_hang_page_chromium() {
    fault_run("hang-page");
}

#[test]
fn runner_fault_hang_server_chromium() {
    fault_run("hang-server");
}

#[test]
fn runner_fault_kill_browser_chromium() {
    fault_run("kill-browser");
}

/// `abandon` behaves like a buggy bot on purpose: the session succeeds, its browser keeps
/// running after the runner exits (for the sidecar to catch), with a warning in the log. The
/// namespace's end takes it down afterwards.
#[test]
fn runner_fault_abandon_leaves_a_browser_for_the_sidecar_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let job = job_file(dir.path(), "job.yaml", FAST_JOB);
    let run = RunnerRun::start_in(dir, &[job.to_str().unwrap(), "--fault", "abandon:0.5"]);
    let rc = run.wait_exit(Duration::from_secs(120));
    assert_eq!(rc, 0, "{}", run.logs());
    let s = run.summary();
    let (ok, retried, ..) = outcomes(&s);
    assert_eq!(ok + retried, 2, "{s:#}\n{}", run.logs());
    assert_eq!(s["faults_injected"]["abandon"], 1, "{s:#}");
    assert!(run.stderr().contains("fault `abandon`"), "{}", run.logs());
    let procs = processes_naming(&run_dir_prefix(&run.root));
    assert!(
        procs.iter().any(|(_, c)| c.contains(".abandoned-")),
        "the abandoned browser is still running: {procs:#?}\n{}",
        run.logs()
    );
    assert!(
        procs.iter().all(|(_, c)| c.contains(".abandoned-")),
        "only the abandoned browser is left: {procs:#?}"
    );
    run.finish();
}
