//! `deploy/` outside the overlays (`ops_kustomize.rs` renders and checks those): the
//! PrometheusRule carries exactly the groups of `alerts/` and promtool accepts its spec; the
//! systemd units — the daemon and the scheduled cleanup (service + timer) — are hardened alike
//! and pass `systemd-analyze verify`; the Dockerfile's stages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use leakwarden_tests::ops::{read_yaml, rule_files, tool};
use leakwarden_tests::{bin, describe, run, workspace_root};

fn prometheus_rule() -> serde_json::Value {
    read_yaml(&workspace_root().join("deploy/kubernetes/components/monitoring/prometheusrule.yaml"))
}

#[test]
fn prometheusrule_carries_the_groups_of_alerts() {
    // Same groups as alerts/, parsed (not only the same text); that both are current is
    // ops_alerts.rs's mixin check.
    let rule = prometheus_rule();
    assert_eq!(rule["kind"], "PrometheusRule");
    let mut groups = Vec::new();
    for f in rule_files() {
        groups.extend(
            read_yaml(&f)["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert!(!groups.is_empty());
    assert_eq!(rule["spec"]["groups"], serde_json::Value::Array(groups));
}

#[test]
fn prometheusrule_spec_passes_promtool() {
    let rule = prometheus_rule();
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    for g in groups {
        for r in g["rules"].as_array().expect("group rules") {
            assert!(
                r["alert"].is_string() ^ r["record"].is_string(),
                "a rule is exactly one of alert or record: {r}"
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spec.rules.yaml");
    let spec = serde_json::json!({ "groups": groups });
    std::fs::write(&file, serde_norway::to_string(&spec).expect("yaml")).expect("write");
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(["check", "rules"]).arg(&file);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
}

fn unit_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn unit(name: &str) -> (String, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(workspace_root().join("deploy/systemd").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let s = unit_settings(&text);
    (text, s)
}

/// `systemd-analyze verify` on `units` (file name → text), copied to a temp dir with the
/// binary path pointed at the one just built (verify insists that ExecStart's binary exists).
fn verify(units: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = bin("leakwarden");
    let mut paths = Vec::new();
    for (name, text) in units {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            text.replace("/usr/local/bin/leakwarden", &built.to_string_lossy()),
        )
        .expect("write unit");
        paths.push(p);
    }
    let mut cmd = Command::new(tool("systemd-analyze"));
    cmd.arg("verify").args(&paths);
    let out = run(&mut cmd);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        describe(&cmd, &out)
    );
    out
}

#[test]
fn systemd_daemon_unit_is_hardened_notifies_and_verifies() {
    let (text, s) = unit("leakwarden.service");
    let caps: BTreeSet<&str> = s["CapabilityBoundingSet"].split_whitespace().collect();
    assert_eq!(
        caps,
        BTreeSet::from(["CAP_KILL", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"])
    );
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("Type", "notify"),
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(s.contains_key("WatchdogSec"), "WatchdogSec");
    assert!(
        s["ExecStart"].starts_with("/usr/local/bin/leakwarden watch"),
        "ExecStart runs `leakwarden watch`"
    );
    verify(&[("leakwarden.service", &text)]);
}

/// The settings that make the daemon's sandbox: the cleanup service must have every one with the
/// same value (it runs the same engine with the same privileges), except the address families,
/// where it needs less (no listener).
const SANDBOX: [&str; 27] = [
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "ReadWritePaths",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "UMask",
    "MemoryMax",
    "TasksMax",
    "OOMScoreAdjust",
    "RestrictAddressFamilies",
    "ExecStart",
];

#[test]
fn systemd_cleanup_service_and_timer_are_hardened_like_the_daemon_and_verify() {
    let (_, daemon) = unit("leakwarden.service");
    let (service_text, service) = unit("leakwarden-cleanup.service");
    let (timer_text, timer) = unit("leakwarden-cleanup.timer");
    let mut problems = Vec::new();
    for key in SANDBOX {
        let (d, c) = (daemon.get(key), service.get(key));
        match key {
            "RestrictAddressFamilies" => {
                let d: BTreeSet<&str> = d
                    .map(|v| v.split_whitespace().collect())
                    .unwrap_or_default();
                let c: BTreeSet<&str> = c
                    .map(|v| v.split_whitespace().collect())
                    .unwrap_or_default();
                if c.is_empty() || !c.is_subset(&d) {
                    problems.push(format!(
                        "{key}: {c:?} is not a subset of the daemon's {d:?}"
                    ));
                }
            }
            "ExecStart"
                if !c
                    .is_some_and(|v| v.starts_with("/usr/local/bin/leakwarden cleanup --kill")) =>
            {
                problems.push(format!(
                    "ExecStart {c:?} is not `leakwarden cleanup --kill`"
                ));
            }
            "ExecStart" => {}
            _ if d.is_none() => problems.push(format!("{key}: not in the daemon's unit")),
            _ if c != d => problems.push(format!("{key}: {c:?}, the daemon has {d:?}")),
            _ => {}
        }
    }
    for (k, v) in [("Type", "oneshot"), ("SuccessExitStatus", "2 3")] {
        if service.get(k).map(String::as_str) != Some(v) {
            problems.push(format!("{k}: {:?}, expected {v}", service.get(k)));
        }
    }
    for k in ["WatchdogSec", "Restart"] {
        if service.contains_key(k) {
            problems.push(format!("{k} in a one-shot service"));
        }
    }
    for k in ["OnBootSec", "OnUnitInactiveSec"] {
        if !timer.contains_key(k) {
            problems.push(format!("timer: no {k}"));
        }
    }
    if timer.get("WantedBy").map(String::as_str) != Some("timers.target") {
        problems.push("timer: not WantedBy=timers.target".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The timer names no Unit=: it starts the service of its own name, which verify resolves.
    verify(&[
        ("leakwarden-cleanup.service", &service_text),
        ("leakwarden-cleanup.timer", &timer_text),
    ]);
}

/// `systemd-analyze verify` must be able to fail for the tests above to mean anything: a
/// misspelt key in the cleanup unit is reported.
#[test]
fn systemd_analyze_verify_reports_a_misspelt_key() {
    let (text, _) = unit("leakwarden-cleanup.service");
    let broken = text.replace("SuccessExitStatus=", "SucessExitStatus=");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("leakwarden-cleanup.service");
    std::fs::write(
        &p,
        broken.replace(
            "/usr/local/bin/leakwarden",
            &bin("leakwarden").to_string_lossy(),
        ),
    )
    .expect("write");
    let mut cmd = Command::new(tool("systemd-analyze"));
    cmd.arg("verify").arg(&p);
    let out = run(&mut cmd);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SucessExitStatus"),
        "{}",
        describe(&cmd, &out)
    );
}

#[test]
fn dockerfile_builds_both_binaries_into_slim_images() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    let mut stages = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["FROM", image, "AS", name] => {
                current = (*name).to_owned();
                stages.insert(current.clone(), (image.to_string(), Vec::<String>::new()));
            }
            [instr, ..] if !instr.starts_with('#') => {
                if let Some((_, lines)) = stages.get_mut(&current) {
                    lines.push(line.to_owned());
                }
            }
            _ => {}
        }
    }
    for s in ["builder", "leakwarden", "runner"] {
        assert!(stages.contains_key(s), "stage {s}: {:?}", stages.keys());
    }
    assert!(stages["builder"].0.starts_with("rust:"));
    assert!(stages["leakwarden"].0.contains("-slim"));
    assert_eq!(
        stages["runner"].0, "leakwarden",
        "runner builds on the slim image"
    );
    let body = |s: &str| stages[s].1.join("\n");
    assert!(body("builder").contains("--bin leakwarden --bin leakwarden-runner"));
    assert!(
        body("leakwarden").contains("COPY --from=builder /out/leakwarden /out/leakwarden-runner")
    );
    assert!(body("runner").contains("chromium"));
    for s in ["leakwarden", "runner"] {
        let user = stages[s]
            .1
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or("0");
        assert!(
            !user.starts_with('0') && !user.starts_with("root"),
            "{s} runs as {user}"
        );
    }
    // Every file the builder copies from the context exists.
    for l in &stages["builder"].1 {
        if let Some(rest) = l.strip_prefix("COPY ") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    *src == "." || Path::new(&root).join(src).exists(),
                    "COPY {src}: not in the repository"
                );
            }
        }
    }
}
