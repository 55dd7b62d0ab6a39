//! The whole monitoring stack, end to end, on loopback inside a private PID namespace: a real
//! Prometheus (scraping the sidecar and the runner every second, evaluating `alerts/`), a real
//! Alertmanager, the sidecar (`leakwarden watch`) and the runner with the `abandon` fault.
//!
//! The runner abandons a browser; the sidecar sees it orphaned; `LeakwardenOrphanedBrowsers`
//! fires and reaches Alertmanager; the sidecar's policy kills the orphaned tree
//! (`leakwarden_kills_total` rises, orphans drop to 0); the alert resolves and leaves
//! Alertmanager. Everything is asserted through the HTTP APIs, with bounded polling.
//!
//! To fire within seconds instead of minutes, the rules Prometheus loads are `alerts/*.rules.yaml`
//! with every `for:` rewritten to 1s (see `fast_rules`); the expressions, labels and annotations
//! are the real ones. The policy's `orphaned_for` (15 s) leaves the alert time to fire first.
//! `tests/e2e/stack.sh` is the namespace's PID 1 and starts the processes.

use std::path::Path;
use std::time::{Duration, Instant};

use leakwarden_tests::ops::{free_port, get_json, rule_files, tool, url_encode, Daemon};
use leakwarden_tests::{bin, can_unshare, in_pid_namespace, workspace_root};

const ALERT: &str = "LeakwardenOrphanedBrowsers";
/// How long the policy lets a tree stay orphaned before killing it: long enough for scrape
/// (1 s) + rule evaluation (1 s) + `for: 1s` + the push to Alertmanager, with margin.
const ORPHANED_FOR: &str = "15s";

/// The rules of `alerts/` with every `for:` set to 1s (indentation kept).
fn fast_rules(text: &str) -> String {
    text.lines()
        .map(|l| {
            let body = l.trim_start();
            if body.starts_with("for:") {
                format!("{}for: 1s", &l[..l.len() - body.len()])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

/// Alertmanager's active alerts named `name`.
fn am_alerts(am: &str, name: &str) -> Option<Vec<serde_json::Value>> {
    let v = get_json(am, "/api/v2/alerts?active=true").ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect(),
    )
}

/// Prometheus's alerts named `name` in `state` (pending, firing).
fn prom_alerts(prom: &str, name: &str, state: &str) -> Option<usize> {
    let v = get_json(prom, "/api/v1/alerts").ok()?;
    Some(
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == state)
            .count(),
    )
}

#[test]
fn monitoring_stack_alerts_on_an_abandoned_browser_and_resolves_after_the_kill() {
    assert!(
        can_unshare(),
        "this test runs the stack in a private PID namespace: run it as root"
    );
    // Fail early, with the installer's name, if a tool is missing.
    for t in ["prometheus", "prometheus-alertmanager"] {
        tool(t);
    }
    // A short path: the runner refuses a TMPDIR whose Chromium socket paths would not fit.
    let dir = tempfile::Builder::new()
        .prefix("lw")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let d = dir.path();
    let addr = || format!("127.0.0.1:{}", free_port());
    let (prom_addr, am_addr, sidecar_addr, runner_addr) = (addr(), addr(), addr(), addr());

    std::fs::create_dir_all(d.join("rules")).expect("mkdir rules");
    for f in rule_files() {
        let text = std::fs::read_to_string(&f).expect("read rules");
        let name = f.file_name().expect("file name").to_owned();
        std::fs::write(d.join("rules").join(name), fast_rules(&text)).expect("write rules");
    }
    write(
        d,
        "prometheus.yml",
        &format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}/*.yaml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{am_addr}"]
scrape_configs:
  - job_name: leakwarden
    static_configs:
      - targets: ["{sidecar_addr}"]
  - job_name: leakwarden-runner
    static_configs:
      - targets: ["{runner_addr}"]
"#,
            rules = d.join("rules").display()
        ),
    );
    write(
        d,
        "alertmanager.yml",
        "route:\n  receiver: none\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: none\n",
    );
    // Stale-profile roots: the test's own directory only (a sidecar in a PID namespace cannot
    // see browsers outside it; on a shared /tmp their directories would look stale).
    write(
        d,
        "policy.yaml",
        &format!(
            "rules:\n  - name: orphaned-browser-tree\n    family: [chromium, chromedriver, crashpad]\n    \
             when:\n      orphaned_for: {ORPHANED_FOR}\n    action: kill-tree\n    grace: 2s\n\
             stale_profiles:\n  roots: [{}]\n",
            d.join("tmp").display()
        ),
    );

    // PID 1 runs under the name `tini` (a symlink to the driver script: a script's comm is the
    // name it was exec'd by), as a container init would: the sidecar judges a browser it first
    // sees under a known init as orphaned — the runner's abandoned browser is double-forked there.
    let init = d.join("tini");
    std::os::unix::fs::symlink(workspace_root().join("tests/e2e/stack.sh"), &init)
        .expect("symlink the driver as tini");
    let mut cmd = in_pid_namespace(&init);
    cmd.env("DIR", d)
        .env("LEAKWARDEN", bin("leakwarden"))
        .env("RUNNER", bin("leakwarden-runner"))
        .env("PROM_ADDR", &prom_addr)
        .env("AM_ADDR", &am_addr)
        .env("SIDECAR_ADDR", &sidecar_addr)
        .env("RUNNER_ADDR", &runner_addr)
        // Two sessions, the second abandoned: its browser is double-forked to the namespace's
        // PID 1, an orphan from its first second.
        .env(
            "RUNNER_ARGS",
            "--sessions 2 --concurrency 1 --fault abandon:0.5",
        );
    let mut stack = Daemon::spawn("stack", &mut cmd, d);
    let logs = |stack: &Daemon| {
        let mut s = stack.log();
        for f in ["prometheus", "alertmanager", "sidecar", "runner"] {
            let text = std::fs::read_to_string(d.join(format!("{f}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s += &format!("\n--- {f}.log (last lines) ---\n");
            s += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        }
        s
    };
    // Prometheus is the stack's; this handle only queries it.
    let prom = PromClient(prom_addr.clone());

    let step = |stack: &mut Daemon, what: &str, secs: u64, f: &mut dyn FnMut() -> bool| {
        let start = Instant::now();
        loop {
            if let Some(s) = stack.exited() {
                panic!(
                    "the stack exited ({s}) while waiting for {what}\n{}",
                    logs(stack)
                );
            }
            if f() {
                eprintln!("[{:>5.1}s] {what}", start.elapsed().as_secs_f64());
                return;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "timed out after {secs}s waiting for {what}\n{}",
                    logs(stack)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };

    step(
        &mut stack,
        "Prometheus scraping the sidecar",
        60,
        &mut || prom.scalar(r#"up{job="leakwarden"}"#) == Some(1.0),
    );
    step(&mut stack, "Alertmanager ready", 30, &mut || {
        am_alerts(&am_addr, ALERT).is_some()
    });
    assert_eq!(
        prom.scalar("sum(leakwarden_orphan_processes)"),
        Some(0.0),
        "orphans before the runner started\n{}",
        logs(&stack)
    );

    let t0 = Instant::now();
    write(d, "go", "");
    step(
        &mut stack,
        "the runner abandoning a browser",
        90,
        &mut || {
            prom.scalar(r#"sum(leakwarden_runner_faults_injected_total{fault="abandon"})"#)
                .is_some_and(|v| v >= 1.0)
        },
    );
    step(
        &mut stack,
        "orphaned processes in Prometheus",
        90,
        &mut || {
            prom.scalar("sum(leakwarden_orphan_processes)")
                .is_some_and(|v| v > 0.0)
        },
    );
    let orphaned_at = t0.elapsed();
    step(
        &mut stack,
        "the orphan alert firing in Prometheus",
        30,
        &mut || prom_alerts(&prom_addr, ALERT, "firing").is_some_and(|n| n > 0),
    );
    let mut fired: Vec<serde_json::Value> = Vec::new();
    step(
        &mut stack,
        "the orphan alert in Alertmanager",
        30,
        &mut || {
            fired = am_alerts(&am_addr, ALERT).unwrap_or_default();
            !fired.is_empty()
        },
    );
    let alerted_at = t0.elapsed();
    let a = &fired[0];
    assert_eq!(a["labels"]["severity"], "warning", "{a}");
    assert_eq!(a["labels"]["job"], "leakwarden", "{a}");
    assert!(
        a["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("#leakwardenorphanedbrowsers")),
        "{a}"
    );
    assert!(
        a["annotations"]["description"]
            .as_str()
            .is_some_and(|t| t.contains("orphaned")),
        "{a}"
    );
    // Alerting came before the kill: the policy waits ORPHANED_FOR.
    assert_eq!(
        prom.scalar(r#"sum(leakwarden_kills_total{outcome=~"killed|terminated"})"#)
            .unwrap_or(0.0),
        0.0,
        "killed before the alert reached Alertmanager; raise ORPHANED_FOR\n{}",
        logs(&stack)
    );

    step(
        &mut stack,
        "the sidecar killing the orphans",
        90,
        &mut || {
            prom.scalar(
            r#"sum(leakwarden_kills_total{rule="orphaned-browser-tree", outcome=~"killed|terminated"})"#,
        )
        .is_some_and(|v| v >= 1.0)
            && prom.scalar("sum(leakwarden_orphan_processes)") == Some(0.0)
            && prom.scalar("sum(leakwarden_processes)") == Some(0.0)
        },
    );
    let killed_at = t0.elapsed();
    step(
        &mut stack,
        "the alert resolved in Prometheus",
        30,
        &mut || {
            prom_alerts(&prom_addr, ALERT, "firing") == Some(0)
                && prom_alerts(&prom_addr, ALERT, "pending") == Some(0)
        },
    );
    step(
        &mut stack,
        "the alert gone from Alertmanager",
        60,
        &mut || am_alerts(&am_addr, ALERT).is_some_and(|v| v.is_empty()),
    );
    let resolved_at = t0.elapsed();
    // No kill failed along the way.
    assert_eq!(
        prom.scalar(r#"sum(leakwarden_kills_total{outcome="failed"})"#)
            .unwrap_or(0.0),
        0.0,
        "{}",
        logs(&stack)
    );
    eprintln!(
        "runner started → orphan seen {:.1}s → in Alertmanager {:.1}s → killed {:.1}s → resolved {:.1}s",
        orphaned_at.as_secs_f64(),
        alerted_at.as_secs_f64(),
        killed_at.as_secs_f64(),
        resolved_at.as_secs_f64()
    );
    // Dropping `stack` SIGKILLs unshare; --kill-child takes the namespace, and everything in it,
    // down with it.
}

/// Queries a Prometheus this test does not own (the stack started it).
struct PromClient(String);

impl PromClient {
    fn scalar(&self, expr: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let v = get_json(&self.0, &path).ok()?;
        let r = v["data"]["result"].as_array()?;
        if r.is_empty() {
            return None;
        }
        Some(
            r.iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

#[test]
fn fast_rules_only_shorten_for() {
    let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x > 0\n        for: 5m\n";
    let fast = fast_rules(text);
    assert!(fast.contains("        for: 1s"));
    assert!(!fast.contains("5m"));
    assert!(fast.contains("expr: x > 0"));
}
