//! The alerting and recording rules under `alerts/`: rendered by the mixin (`mixin/generate.py`
//! from `mixin/config.yaml`) and identical to what it renders now; promtool accepts them, their
//! unit tests pass, and every alert follows the house style (monitoring-mixin): `for:`, a
//! `severity` label, summary/description/runbook_url annotations, a runbook section, unit tests
//! that show it both firing and not firing, aggregations `by (cluster, namespace, pod, …)` and
//! texts that name the pod and node rather than a pod IP. A configuration given to the generator
//! reaches every rule and dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use leakwarden_tests::ops::{files_ending, read_yaml, rule_files, rules_of, tool, venv_tool};
use leakwarden_tests::{describe, run, workspace_root};

/// `mixin/generate.py ARGS…` with the tools' venv Python (PyYAML, grafana-foundation-sdk).
fn mixin(args: &[&str]) -> Command {
    let mut cmd = Command::new(venv_tool("python"));
    cmd.arg(workspace_root().join("mixin/generate.py"))
        .args(args);
    cmd
}

#[test]
fn checked_in_rules_dashboards_and_manifests_are_what_the_mixin_renders() {
    let mut cmd = mixin(&["--check"]);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
}

/// The check above must be able to fail: a hand edit to a rendered file is caught.
#[test]
fn the_mixin_check_catches_a_hand_edited_rendered_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = mixin(&["--out", dir.path().to_str().expect("utf-8 path")]);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    let rules = dir.path().join("alerts/leakwarden.rules.yaml");
    let text = std::fs::read_to_string(&rules).expect("rendered rules");
    std::fs::write(&rules, text.replacen("for: 5m", "for: 6m", 1)).expect("edit");
    let mut cmd = mixin(&["--check", "--out", dir.path().to_str().expect("utf-8 path")]);
    let out = run(&mut cmd);
    assert!(!out.status.success(), "{}", describe(&cmd, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alerts/leakwarden.rules.yaml"),
        "{}",
        describe(&cmd, &out)
    );
}

/// One place holds the configuration: selectors, the cluster label, the runbook base URL,
/// thresholds and `for:` durations given in one override file reach every rendered rule and
/// dashboard, and the result still passes promtool.
#[test]
fn a_configuration_override_reaches_every_rule_and_dashboard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = dir.path().join("my.yaml");
    std::fs::write(
        &overrides,
        r#"selectors: {sidecar: 'job="lw-node"', runner: 'job="lw-bots"'}
cluster_label: k8s_cluster
runbook_url: https://runbooks.example/leakwarden.md
alerts:
  LeakwardenOrphanedBrowsers: {for: 7m, severity: critical}
  LeakwardenZombiesAccumulating: {zombies: 42}
"#,
    )
    .expect("write overrides");
    let out_dir = dir.path().join("out");
    let mut cmd = mixin(&[
        "--config",
        overrides.to_str().expect("utf-8"),
        "--out",
        out_dir.to_str().expect("utf-8"),
    ]);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));

    let rules_path = out_dir.join("alerts/leakwarden.rules.yaml");
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(["check", "rules"]).arg(&rules_path);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));

    let rules = rules_of(&read_yaml(&rules_path));
    let by = regex::Regex::new(r"\bby \(([^)]*)\)").expect("regex");
    let mut problems = Vec::new();
    for r in &rules {
        let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
        let expr = r["expr"].as_str().unwrap_or("");
        if expr.contains(r#"job="leakwarden""#) || expr.contains(r#"job="leakwarden-runner""#) {
            problems.push(format!("{name}: default job selector left in {expr}"));
        }
        for c in by.captures_iter(expr) {
            if !c[1].starts_with("k8s_cluster") {
                problems.push(format!(
                    "{name}: by ({}) without the configured cluster label",
                    &c[1]
                ));
            }
        }
        if let Some(url) = r["annotations"]["runbook_url"].as_str() {
            if !url.starts_with("https://runbooks.example/leakwarden.md#") {
                problems.push(format!("{name}: runbook_url {url}"));
            }
        }
    }
    let orphaned = rules
        .iter()
        .find(|r| r["alert"] == "LeakwardenOrphanedBrowsers")
        .expect("alert");
    assert_eq!(orphaned["for"], "7m");
    assert_eq!(orphaned["labels"]["severity"], "critical");
    assert!(orphaned["annotations"]["description"]
        .as_str()
        .unwrap_or("")
        .contains("for more than 7 minutes"));
    let zombies = rules
        .iter()
        .find(|r| r["alert"] == "LeakwardenZombiesAccumulating")
        .expect("alert");
    assert!(
        zombies["expr"].as_str().unwrap_or("").ends_with("> 42"),
        "{zombies}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The PrometheusRule carries the same groups; the dashboards the same selectors and label.
    let pr =
        read_yaml(&out_dir.join("deploy/kubernetes/components/monitoring/prometheusrule.yaml"));
    assert_eq!(pr["spec"]["groups"], read_yaml(&rules_path)["groups"]);
    for f in files_ending(&out_dir.join("dashboards"), ".json") {
        let text = std::fs::read_to_string(&f).expect("dashboard");
        assert!(
            text.contains("k8s_cluster=~"),
            "{}: no k8s_cluster filter",
            f.display()
        );
        assert!(
            !text.contains(r#"job=\"leakwarden"#),
            "{}: default job selector",
            f.display()
        );
        assert!(
            text.contains(r#"job=\"lw-"#),
            "{}: configured job selector",
            f.display()
        );
    }
}

/// Aggregations name what they keep — `by (cluster, namespace, pod, …)` — so recorded series and
/// alerts carry the same labels whatever a scrape adds; `without` would keep anything.
#[test]
fn every_aggregation_keeps_cluster_namespace_and_pod() {
    let by = regex::Regex::new(r"\bby \(([^)]*)\)").expect("regex");
    let without = regex::Regex::new(r"\bwithout\s*\(").expect("regex");
    let mut problems = Vec::new();
    for f in rule_files() {
        for r in rules_of(&read_yaml(&f)) {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            let expr = r["expr"].as_str().unwrap_or("");
            if without.is_match(expr) {
                problems.push(format!("{name}: `without` in {expr}"));
            }
            for c in by.captures_iter(expr) {
                let labels: Vec<&str> = c[1].split(',').map(str::trim).collect();
                // `count by (cluster)` (LeakwardenRunnerAbsent) counts targets per cluster.
                let ok =
                    labels.starts_with(&["cluster", "namespace", "pod"]) || labels == ["cluster"];
                if !ok {
                    problems.push(format!("{name}: by ({}) in {expr}", &c[1]));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A pod IP (`instance` in Kubernetes) tells an on-call person nothing: texts name the pod, its
/// namespace and node, and fall back to `instance` only where there is no pod or node (a systemd
/// host). The only other use of `instance` is to look up the alert's own target in a `query`.
#[test]
fn alert_texts_name_namespace_pod_and_node_not_the_instance() {
    let fallback = "{{ else }}{{ $labels.instance }}{{ end }}";
    let mut problems = Vec::new();
    for (name, rule) in alerts() {
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or("");
            let rest = text
                .replace(fallback, "")
                .replace("$labels.instance $labels.job", "");
            if rest.contains("$labels.instance") {
                problems.push(format!("{name}: {key} names $labels.instance: {text}"));
            }
            if text.contains(fallback)
                && !(text.contains("$labels.pod") && text.contains("$labels.node"))
            {
                problems.push(format!(
                    "{name}: {key} falls back to instance without naming pod and node"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn mixin_config_names_every_alert_and_nothing_else() {
    let config = read_yaml(&workspace_root().join("mixin/config.yaml"));
    let configured: BTreeSet<String> = config["alerts"]
        .as_object()
        .expect("alerts: in mixin/config.yaml")
        .keys()
        .cloned()
        .collect();
    let rendered: BTreeSet<String> = alerts().keys().cloned().collect();
    assert_eq!(configured, rendered);
}

#[test]
fn promtool_checks_every_rule_file() {
    let files = rule_files();
    assert!(!files.is_empty(), "no alerts/*.rules.yaml");
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(["check", "rules"]).args(&files);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
}

#[test]
fn promtool_unit_tests_pass() {
    let tests = files_ending(&workspace_root().join("alerts/tests"), ".test.yaml");
    assert!(!tests.is_empty(), "no alerts/tests/*.test.yaml");
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(["test", "rules"]).args(&tests);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
}

/// Alert name → its rule, over every rule file.
fn alerts() -> BTreeMap<String, serde_json::Value> {
    let mut all = BTreeMap::new();
    for f in rule_files() {
        for r in rules_of(&read_yaml(&f)) {
            if let Some(name) = r["alert"].as_str() {
                let dup = all.insert(name.to_owned(), r.clone());
                assert!(dup.is_none(), "alert {name} defined twice");
            }
        }
    }
    assert!(!all.is_empty(), "no alerts found");
    all
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_for_severity_annotations_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(workspace_root().join("alerts/runbook.md"))
        .expect("alerts/runbook.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let mut problems = Vec::new();
    for (name, rule) in alerts() {
        if !name.starts_with("Leakwarden") || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!(
                "{name}: name is not PascalCase with the Leakwarden prefix"
            ));
        }
        if rule["for"].as_str().is_none_or(|s| s.trim().is_empty()) {
            problems.push(format!("{name}: no `for:`"));
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["info", "warning", "critical"].contains(&severity) {
            problems.push(format!(
                "{name}: severity {severity:?} is not info|warning|critical"
            ));
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule["annotations"][key]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no {key} annotation"));
            }
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        match url.split_once("alerts/runbook.md#") {
            Some((_, a)) if sections.contains(a) && a == name.to_lowercase() => {}
            _ => problems.push(format!(
                "{name}: runbook_url {url:?} does not point at a `## {name}` section of alerts/runbook.md"
            )),
        }
    }
    // And no runbook section for an alert that no longer exists.
    let names: BTreeSet<String> = alerts().keys().map(|n| n.to_lowercase()).collect();
    for s in &sections {
        if s.starts_with("leakwarden") && !names.contains(s) {
            problems.push(format!("runbook section #{s} has no alert"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_firing_and_a_non_firing_unit_test() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for f in files_ending(&workspace_root().join("alerts/tests"), ".test.yaml") {
        let doc = read_yaml(&f);
        for t in doc["tests"].as_array().into_iter().flatten() {
            for a in t["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or("").to_owned();
                let fires = a["exp_alerts"].as_array().is_some_and(|v| !v.is_empty());
                if fires {
                    // Full labels and annotations, as promtool compares them.
                    for e in a["exp_alerts"].as_array().into_iter().flatten() {
                        assert!(
                            e["exp_annotations"].is_object(),
                            "{}: a firing case of {name} asserts no annotations",
                            f.display()
                        );
                    }
                    firing.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    let mut missing = Vec::new();
    for name in alerts().keys() {
        if !firing.contains(name) {
            missing.push(format!("{name}: no unit test where it fires"));
        }
        if !quiet.contains(name) {
            missing.push(format!("{name}: no unit test where it does not fire"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Groups are evaluated concurrently, the rules of one group in order: an alert that reads a
/// recorded series from another group (or from later in its own) sees it one evaluation late,
/// and its `for:` boundary moves (this made the promtool tests flaky once).
#[test]
fn alerts_only_use_recording_rules_defined_before_them_in_their_group() {
    let recorded = leakwarden_tests::ops::recorded_names();
    let mut problems = Vec::new();
    for f in rule_files() {
        let doc = read_yaml(&f);
        for g in doc["groups"].as_array().into_iter().flatten() {
            let mut before = BTreeSet::new();
            for r in g["rules"].as_array().into_iter().flatten() {
                if let Some(name) = r["record"].as_str() {
                    before.insert(name.to_owned());
                    continue;
                }
                let expr = r["expr"].as_str().unwrap_or("");
                for n in leakwarden_tests::ops::promql_names(expr) {
                    if recorded.contains(&n) && !before.contains(&n) {
                        problems.push(format!(
                            "{}: alert {} uses {n}, recorded outside its group or after it",
                            f.display(),
                            r["alert"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
