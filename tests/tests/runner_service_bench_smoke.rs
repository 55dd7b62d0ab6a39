//! The fast form of `make bench-service` (tests/bench/runner-service-vs-peers.sh): 2 sessions at
//! concurrency 1 with puppeteer-core, against `leakwarden-runner serve` (this build's debug
//! binary) and against puppeteer launching Chromium itself, the client-SIGKILL scenario and a
//! short proxy-overhead measurement — every cell in a PID namespace of its own. It checks that
//! the pipeline produces its tables, not any timing; and that the service left nothing.
//! browserless is left out here: it is a 770 MB npm install (the full bench does it).

use std::process::Command;
use std::time::Duration;

use leakwarden_tests::runner::run_with_deadline;
use leakwarden_tests::serve::clients_installed;
use leakwarden_tests::{bin, can_unshare, chromium, describe, workspace_root};

#[test]
fn service_bench_smoke_produces_its_tables_and_leaves_nothing_chromium() {
    if !can_unshare() || chromium().is_none() || !clients_installed() {
        eprintln!("SKIP: needs root, Chromium and the CDP clients");
        return;
    }
    let out = tempfile::Builder::new()
        .prefix("lwsb")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut cmd = Command::new(workspace_root().join("tests/bench/runner-service-vs-peers.sh"));
    cmd.env("BENCH_RUNNER", bin("leakwarden-runner"))
        .env("BENCH_OUT", out.path())
        .env("BENCH_SESSIONS", "2")
        .env("BENCH_REPS", "1")
        .env("BENCH_CONCURRENCY", "1")
        .env("BENCH_CLIENTS", "puppeteer")
        .env("BENCH_TARGETS", "leakwarden launch")
        .env("BENCH_SCENARIOS", "kill-client")
        .env("BENCH_LATE", "3")
        .env("BENCH_OVERHEAD", "200")
        .env("BENCH_PORT", "18741")
        .env("BENCH_SERVICE_PORT", "18742");
    let output = run_with_deadline(&mut cmd, Duration::from_secs(280));
    assert!(output.status.success(), "{}", describe(&cmd, &output));
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("results.json")).expect("results.json"),
    )
    .expect("results parse");
    let rows = results["throughput"].as_array().expect("throughput rows");
    assert_eq!(rows.len(), 2, "{results:#}");
    for r in rows {
        assert_eq!(r["failed"], 0, "{r:#}");
        assert!(r["spm_median"].as_f64().unwrap_or(0.0) > 0.0, "{r:#}");
    }
    let lw = &results["leftovers"];
    for key in ["leakwarden:clean", "leakwarden:kill-client"] {
        assert_eq!(
            lw[key]["left_2s"],
            serde_json::json!([0, 0]),
            "{key}: {lw:#}"
        );
        assert_eq!(
            lw[key]["left_late"],
            serde_json::json!([0, 0]),
            "{key}: {lw:#}"
        );
    }
    assert!(
        results["overhead"]["leakwarden"]["overhead_median_us"].is_number(),
        "{results:#}\n{}",
        describe(&cmd, &output)
    );
    let md = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(md.contains("leakwarden-runner serve"), "{md}");
}
