//! The benchmark scripts under `tests/bench/` still run: tiny parameters, the debug binaries, and
//! no assertion about timings — only that each script finishes and writes a row per program or
//! trial. `make bench`, `make soak` and `tests/bench/detect-latency.sh` produce the real figures
//! (BENCHMARKS.md).

use std::path::Path;
use std::process::Command;

use leakwarden_tests::{bin, can_unshare, describe, run, workspace_root};

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn script(name: &str, out: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg(workspace_root().join("tests/bench").join(name))
        .env("LW", bin("leakwarden"))
        .env("LW_FIXTURE", bin("lw-fixture"))
        .env("BENCH_OUT", out);
    c
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn bench_script_side_by_side_runs() {
    if !have("prometheus-process-exporter") || !have("prometheus-node-exporter") {
        eprintln!("skipped: exporters not installed (scripts/install-deps.sh)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut c = script("sidecar-vs-peers.sh", out.path());
    c.arg("20")
        .env("LW_BENCH_SECONDS", "1")
        .env("LW_BENCH_SCRAPES", "3")
        .env("LW_BENCH_SKIP_CRITERION", "1");
    let o = run(&mut c);
    assert!(o.status.success(), "{}", describe(&c, &o));
    let r = rows(&out.path().join("sidecar-vs-peers.tsv"));
    let progs: Vec<&str> = r.iter().map(|row| row[2].as_str()).collect();
    assert_eq!(progs, ["lw", "pe", "pe-lean", "ne"], "{}", describe(&c, &o));
    for row in &r {
        assert!(
            row[3].parse::<f64>().is_ok() && row[7].parse::<u64>().is_ok(),
            "CPU and RSS figures: {row:?}"
        );
    }
    let md = std::fs::read_to_string(out.path().join("sidecar-vs-peers.md")).unwrap();
    assert!(md.contains("### Ratios"), "{md}");
}

#[test]
fn detect_latency_script_runs() {
    if !can_unshare() {
        eprintln!("skipped: cannot create a PID namespace");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut c = script("detect-latency.sh", out.path());
    c.args(["2", "1s"]);
    let o = run(&mut c);
    assert!(o.status.success(), "{}", describe(&c, &o));
    let r = rows(&out.path().join("detect-latency.tsv"));
    assert_eq!(r.len(), 2, "{}", describe(&c, &o));
    for row in &r {
        assert!(row[2].parse::<f64>().is_ok(), "latency: {row:?}");
    }
}
