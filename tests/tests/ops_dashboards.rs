//! The Grafana dashboards under `dashboards/`: rendered by the mixin (`mixin/dashboards.py`, with
//! grafana-foundation-sdk; `ops_alerts.rs` checks they are current), current schema, a
//! `datasource` variable and cluster/namespace/pod/instance variables, a unit and a description on
//! every panel, shipped also as ConfigMaps for Grafana's sidecar; every PromQL expression in them
//! (and in `alerts/`) parses in a real Prometheus, every metric name they use exists in the real
//! programs' `/metrics`, and every series the programs export is on some panel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use leakwarden_tests::ops::{
    files_ending, promql_names, read_yaml, recorded_names, rule_files, rules_of, scrape_programs,
    substitute_grafana_vars, Prometheus,
};
use leakwarden_tests::workspace_root;

const MIN_SCHEMA_VERSION: u64 = 39;

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    let files = files_ending(&workspace_root().join("dashboards"), ".json");
    assert!(
        files.len() >= 2,
        "expected the sidecar and runner dashboards"
    );
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read dashboard");
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
            (f, v)
        })
        .collect()
}

/// Panels, with the panels of collapsed rows.
fn panels(d: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        out.extend(p["panels"].as_array().cloned().unwrap_or_default());
    }
    out
}

/// A variable's query text (Grafana stores it as a string or as `{query: ...}`).
fn variable_query(v: &serde_json::Value) -> Option<String> {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["query"].as_str())
        .map(str::to_owned)
}

/// `label_values(EXPR, label)` is Grafana's, not PromQL: the PromQL in it is EXPR.
fn promql_of_variable(q: &str) -> Option<String> {
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (expr, _label) = inner.rsplit_once(',')?;
    Some(expr.trim().to_owned())
}

/// Every PromQL expression of every dashboard, named by where it is.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (f, d) in dashboards() {
        let file = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("{file}: panel {:?}", p["title"]), e.to_owned()));
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] == "query" {
                let q = variable_query(v).unwrap_or_default();
                let e = promql_of_variable(&q)
                    .unwrap_or_else(|| panic!("{file}: variable {} query {q:?}", v["name"]));
                out.push((format!("{file}: variable {}", v["name"]), e));
            }
        }
    }
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    rule_files()
        .iter()
        .flat_map(|f| rules_of(&read_yaml(f)))
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            (
                format!("rule {name}"),
                r["expr"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Grafana's dashboard sidecar (kube-prometheus-stack, the grafana Helm chart) loads ConfigMaps
/// labelled `grafana_dashboard: "1"`: one per dashboard, holding exactly `dashboards/<uid>.json`,
/// and the component lists them all.
#[test]
fn dashboards_ship_as_configmaps_for_grafanas_sidecar() {
    let dir = workspace_root().join("deploy/kubernetes/components/grafana-dashboards");
    let listed: BTreeSet<String> = read_yaml(&dir.join("kustomization.yaml"))["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let mut shipped = BTreeMap::new();
    for f in files_ending(&dir, ".yaml") {
        if f.ends_with("kustomization.yaml") {
            continue;
        }
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        assert!(
            listed.contains(&name),
            "{name} is not in the component's resources"
        );
        let cm = read_yaml(&f);
        assert_eq!(cm["kind"], "ConfigMap", "{name}");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{name}");
        let data = cm["data"].as_object().expect("data");
        assert_eq!(data.len(), 1, "{name}: one dashboard per ConfigMap");
        for (key, text) in data {
            let board: serde_json::Value =
                serde_json::from_str(text.as_str().unwrap_or("")).expect("dashboard JSON");
            shipped.insert(key.clone(), board);
        }
    }
    let files: BTreeMap<String, serde_json::Value> = dashboards()
        .into_iter()
        .map(|(f, d)| {
            (
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                d,
            )
        })
        .collect();
    assert_eq!(
        shipped, files,
        "the ConfigMaps hold exactly dashboards/*.json"
    );
}

#[test]
fn every_dashboard_has_current_schema_variables_units_and_descriptions() {
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for (f, d) in dashboards() {
        let file = f.display().to_string();
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        if schema < MIN_SCHEMA_VERSION {
            problems.push(format!(
                "{file}: schemaVersion {schema} < {MIN_SCHEMA_VERSION}"
            ));
        }
        if !uids.insert(d["uid"].as_str().unwrap_or("").to_owned()) {
            problems.push(format!("{file}: uid missing or not unique"));
        }
        let vars: BTreeMap<String, serde_json::Value> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap_or("").to_owned(), v.clone()))
            .collect();
        match vars.get("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problems.push(format!(
                "{file}: no `datasource` variable of type datasource, query prometheus"
            )),
        }
        for name in ["cluster", "namespace", "pod"] {
            match vars.get(name) {
                Some(v) if v["type"] == "query" && v["includeAll"] == true => {}
                _ => problems.push(format!(
                    "{file}: no `{name}` query variable with includeAll"
                )),
            }
        }
        for p in panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("?");
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{file}: panel {title:?} has no unit"));
            }
            if p["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{file}: panel {title:?} has no description"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: panel {title:?} does not use $datasource"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{file}: panel {title:?} has no query"));
            }
            for t in targets {
                if t["expr"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{file}: panel {title:?} has a target without expr"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_and_rule_expression_parses_in_a_real_prometheus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(dir.path(), "global:\n  scrape_interval: 15s\n");
    let mut problems = Vec::new();
    let exprs: Vec<_> = dashboard_exprs().into_iter().chain(alert_exprs()).collect();
    assert!(exprs.len() > 30, "suspiciously few expressions: {exprs:?}");
    for (where_, expr) in &exprs {
        let q = substitute_grafana_vars(expr);
        let answer = prom.query(&q);
        if answer["status"] != "success" {
            problems.push(format!("{where_}: {q}\n  → {}", answer["error"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Series that exist only in states this test cannot create on a development machine: the
/// programs register them, but a labelled metric without a child is not exposed. For these the
/// name must at least be registered in the programs' source, as a string literal.
const STATE_DEPENDENT: [(&str, &str); 4] = [
    (
        "leakwarden_leak_time_to_limit_seconds",
        "only while a leak is projected to reach a limit (minutes of growth)",
    ),
    (
        "leakwarden_pod_processes",
        "--pod-attribution on a Kubernetes node",
    ),
    (
        "leakwarden_pod_orphan_processes",
        "--pod-attribution on a Kubernetes node",
    ),
    (
        "leakwarden_pod_resident_memory_bytes",
        "--pod-attribution on a Kubernetes node",
    ),
];

/// Whether `"name"` appears in a Rust source file of the sidecar or the runner.
fn registered_in_source(name: &str) -> bool {
    let quoted = format!("\"{name}\"");
    ["sidecar/src", "runner/src"].iter().any(|d| {
        let mut stack = vec![workspace_root().join(d)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(
                    std::fs::read_dir(&p)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else if p.extension().is_some_and(|e| e == "rs")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(&quoted))
            {
                return true;
            }
        }
        false
    })
}

/// `leakwarden_*` names in alert annotations (templates that `query` a series).
fn annotation_names() -> Vec<(String, String)> {
    let re = regex::Regex::new(r"leakwarden_[a-z0-9_]+").expect("regex");
    rule_files()
        .iter()
        .flat_map(|f| rules_of(&read_yaml(f)))
        .flat_map(|r| {
            let alert = r["alert"].as_str().unwrap_or("?").to_owned();
            let texts: Vec<String> = r["annotations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "runbook_url")
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect();
            texts
                .iter()
                .flat_map(|t| {
                    re.find_iter(t)
                        .map(|m| m.as_str().to_owned())
                        .collect::<Vec<_>>()
                })
                .map(|n| (format!("annotation of {alert}"), n))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A histogram's series are its name plus `_bucket`, `_sum`, `_count`.
fn base_name(n: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s))
        .unwrap_or(n)
}

/// Names are checked against what the programs really export, not against a list in this test:
/// a renamed metric breaks this test, not a dashboard in production. Starts the runner (real
/// Chromium) next to the sidecar, hence `browser` in the name (the nextest group of heavy tests).
#[test]
fn metric_names_in_dashboards_and_alerts_exist_in_a_browser_run_metrics() {
    // A short path: the runner refuses a TMPDIR whose Chromium socket paths would not fit.
    let dir = tempfile::Builder::new()
        .prefix("lw")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let (exported, raw) = scrape_programs(dir.path());
    let recorded = recorded_names();
    let mut used: Vec<(String, String)> = Vec::new();
    for (where_, expr) in dashboard_exprs().into_iter().chain(alert_exprs()) {
        for name in promql_names(&expr) {
            used.push((where_.clone(), name));
        }
    }
    used.extend(annotation_names());
    let mut problems = BTreeSet::new();
    let mut not_seen = BTreeSet::new();
    for (where_, name) in used {
        if name.contains(':') {
            if !recorded.contains(&name) {
                problems.insert(format!(
                    "{where_}: {name} is recorded by no rule in alerts/"
                ));
            }
        } else if !exported.contains(&name) {
            match STATE_DEPENDENT.iter().find(|(n, _)| *n == name) {
                Some((_, why)) if registered_in_source(&name) => {
                    not_seen.insert(format!("{name} ({why})"));
                }
                _ => {
                    problems.insert(format!("{where_}: {name}"));
                }
            }
        }
    }
    for n in &not_seen {
        eprintln!("not exposed in this run, registered in the source: {n}");
    }
    // And the other way round: every leakwarden series the programs export is on some panel
    // (variables do not count: a name only in a variable query is shown nowhere).
    let on_panels: BTreeSet<String> = dashboard_exprs()
        .into_iter()
        .filter(|(where_, _)| where_.contains(": panel "))
        .flat_map(|(_, e)| promql_names(&e))
        .map(|n| base_name(&n).to_owned())
        .collect();
    for name in &exported {
        let base = base_name(name);
        if base.starts_with("leakwarden_") && !on_panels.contains(base) {
            problems.insert(format!("exported but on no dashboard panel: {base}"));
        }
    }
    assert!(
        problems.is_empty(),
        "metric names used but not exported by the programs (nor recorded by alerts/), or exported but shown nowhere:\n{}\n\n{raw}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}
