//! The service's job API (`POST /jobs`, `GET /jobs/ID`, `DELETE /jobs/ID`) with real Chromium:
//! the jobs `run` takes, their `evaluate` values in the per-session records (also for
//! `run --summary-json`), artifact names that carry the job and the session, nothing left.
//! See: issue 13, item 2 ("A job API on the same service").

use std::time::Duration;

use leakwarden_tests::runner::{job_file, outcomes, prerequisites, test_dir, RunnerRun};
use leakwarden_tests::serve::{request, stop_and_assert_nothing_left, ServeRun};

const JOB: &str = r##"
name: api job
sessions: 3
concurrency: 2
retries: 0
steps:
  - navigate: /late-title
  - wait_for: "#ready"
  - evaluate: "({ title: document.title, n: 7 })"
  - navigate: /rows
  - evaluate: "document.querySelectorAll('tr').length"
  - screenshot: {}
"##;

fn post(run: &ServeRun, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = request(
        run.port,
        "POST",
        path,
        &[],
        body.as_bytes(),
        Duration::from_secs(120),
    )
    .expect("answer");
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text })),
    )
}

fn get(run: &ServeRun, path: &str) -> (u16, serde_json::Value) {
    let (code, text) = run.get(path).expect("answer");
    (code, serde_json::from_str(&text).unwrap_or_default())
}

fn artifacts(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn serve_job_api_runs_a_job_and_keeps_evaluate_values_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let shots = dir.path().join("shots");
    let run = ServeRun::start_in(dir, &["--artifacts", shots.to_str().unwrap()]);

    // Asynchronous: 202 at once, then GET while it runs, until done.
    let (code, v) = post(&run, "/jobs?wait=false", JOB);
    assert_eq!(code, 202, "{v:#}");
    assert_eq!(v["state"], "running", "{v:#}");
    let id = v["id"].as_str().expect("id").to_string();
    let mut saw_running = false;
    let done = leakwarden_tests::wait_for(
        "the job finished",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let (code, v) = get(&run, &format!("/jobs/{id}"));
            assert_eq!(code, 200, "{v:#}");
            if v["state"] == "running" {
                saw_running = true;
                None
            } else {
                Some(v)
            }
        },
    );
    assert!(saw_running);
    assert_eq!(done["state"], "done", "{done:#}");
    let s = &done["summary"];
    assert_eq!(outcomes(s), (3, 0, 0, 0, 0), "{s:#}");
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    assert_eq!(s["cleanup"]["run_dir_removed"], true, "{s:#}");
    for r in s["records"].as_array().expect("records") {
        let values = r["values"].as_array().expect("values");
        assert_eq!(values.len(), 2, "{r:#}");
        assert_eq!(values[0]["step"], 3);
        assert_eq!(values[0]["value"]["title"], "Late title", "{r:#}");
        assert_eq!(values[0]["value"]["n"], 7);
        assert_eq!(values[1]["step"], 5);
        assert_eq!(values[1]["value"], 200, "{r:#}");
    }

    // Synchronous, the same job again, as JSON: the answer is the finished job.
    let as_json = serde_json::to_string(&serde_json::json!({
        "name": "api job",
        "sessions": 2,
        "concurrency": 1,
        "retries": 0,
        "steps": [{"navigate": "/rows"}, {"evaluate": "document.title"}, {"screenshot": {}}],
    }))
    .unwrap();
    let (code, v) = post(&run, "/jobs", &as_json);
    assert_eq!(code, 200, "{v:#}");
    assert_eq!(v["state"], "done");
    assert_eq!(outcomes(&v["summary"]), (2, 0, 0, 0, 0), "{v:#}");
    assert_eq!(v["summary"]["records"][1]["values"][0]["value"], "Rows");

    // Two jobs with one name in one directory: names carry the job and the session.
    let files = artifacts(&shots);
    assert_eq!(files.len(), 5, "{files:?}");
    let first: Vec<&String> = files
        .iter()
        .filter(|f| f.contains(&format!("-{id}-")))
        .collect();
    assert_eq!(first.len(), 3, "{files:?}");
    for (i, f) in first.iter().enumerate() {
        assert!(
            f.starts_with("api_job-j1-") && f.ends_with(&format!("-s0000{i}-a0-step6.png")),
            "{f}"
        );
    }
    let (code, list) = get(&run, "/jobs");
    assert_eq!(code, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list:#}");
    stop_and_assert_nothing_left(run);
}

#[test]
fn serve_job_api_refuses_bad_jobs_and_cancels_chromium() {
    if !prerequisites() {
        return;
    }
    let run = ServeRun::start(&["--max-jobs", "1"]);
    // A located error, as `run` prints it.
    let (code, v) = post(
        &run,
        "/jobs",
        "sessions: 1\nsteps:\n  - navigate: /\n  - clik: a\n",
    );
    assert_eq!(code, 400, "{v:#}");
    let e = v["error"].as_str().unwrap_or("");
    assert!(e.starts_with("job:4:") && e.contains("clik"), "{v:#}");
    let (code, v) = post(
        &run,
        "/jobs",
        "faults: [abandon]\nsteps:\n  - navigate: /\n",
    );
    assert_eq!(code, 400, "{v:#}");
    let (code, v) = post(&run, "/jobs", "concurrency: 64\nsteps:\n  - navigate: /\n");
    assert_eq!(code, 400, "{v:#}");
    let big = format!(
        "name: x\n#{}\nsteps:\n  - navigate: /\n",
        "y".repeat(2 << 20)
    );
    let (code, _) = post(&run, "/jobs", &big);
    assert_eq!(code, 413);

    // A long job, cancelled: no new sessions, those in flight stopped, browsers closed.
    let (code, v) = post(
        &run,
        "/jobs?wait=false",
        "sessions: 50\nconcurrency: 2\nretries: 0\nsteps:\n  - navigate: /slow?ms=3000\n",
    );
    assert_eq!(code, 202, "{v:#}");
    let id = v["id"].as_str().unwrap().to_string();
    // --max-jobs 1: a second job waits for none; it is refused.
    let (code, _) = post(&run, "/jobs?wait=false", JOB);
    assert_eq!(code, 429);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = request(
        run.port,
        "DELETE",
        &format!("/jobs/{id}"),
        &[],
        b"",
        Duration::from_secs(10),
    )
    .expect("answer");
    assert_eq!(code, 202);
    let v = leakwarden_tests::wait_for(
        "the job cancelled",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (_, v) = get(&run, &format!("/jobs/{id}"));
            (v["state"] != "running").then_some(v)
        },
    );
    assert_eq!(v["state"], "cancelled", "{v:#}");
    let s = &v["summary"];
    assert!(s["not_started"].as_u64().unwrap_or(0) >= 40, "{s:#}");
    assert_eq!(s["cleanup"]["leaks"], 0, "{s:#}");
    stop_and_assert_nothing_left(run);
}

/// `run --summary-json` keeps the values too.
#[test]
fn runner_summary_json_keeps_evaluate_values_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir();
    let job = job_file(dir.path(), "job.yaml", JOB);
    let run = RunnerRun::start_in(dir, &[job.to_str().unwrap()]);
    let rc = run.wait_exit(Duration::from_secs(120));
    assert_eq!(rc, 0, "{}", run.logs());
    let s = run.summary();
    assert_eq!(outcomes(&s), (3, 0, 0, 0, 0), "{s:#}");
    for r in s["records"].as_array().expect("records") {
        assert_eq!(r["values"][0]["value"]["title"], "Late title", "{r:#}");
        assert_eq!(r["values"][1]["value"], 200, "{r:#}");
    }
    run.finish();
}
