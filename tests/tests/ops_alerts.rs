//! The alerting and recording rules under `alerts/`: promtool accepts them, their unit tests
//! pass, and every alert follows the house style (monitoring-mixin): `for:`, a `severity` label,
//! summary/description/runbook_url annotations, a runbook section, and unit tests that show it
//! both firing and not firing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use leakwarden_tests::ops::{files_ending, read_yaml, rule_files, rules_of, tool};
use leakwarden_tests::{describe, run, workspace_root};

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
