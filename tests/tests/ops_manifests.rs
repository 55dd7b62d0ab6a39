//! `deploy/`: Kubernetes manifests valid offline (`kubernetes-validate --strict` against a version
//! with native sidecars), the custom resources (ServiceMonitor, PrometheusRule) checked field by
//! field and against what they refer to, the PrometheusRule generated from `alerts/` and accepted
//! by promtool, the policy ConfigMap accepted by `leakwarden policy check`, the systemd unit
//! verified by `systemd-analyze`, and the Dockerfile's stages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use leakwarden_tests::ops::{files_ending, read_yaml, rule_files, tool, venv_tool};
use leakwarden_tests::{bin, describe, run, workspace_root};

/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from 1.29;
/// validate against that and a current version.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

fn k8s_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// Every Kubernetes object in every manifest (multi-document files split), with its file.
fn objects() -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for f in manifests() {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        // Documents are separated by `---` lines (only at column 0 in our files).
        for doc in text.split("\n---\n") {
            let v: serde_json::Value =
                serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

/// The manifests: every YAML file under deploy/kubernetes except kustomize's own.
fn manifests() -> Vec<PathBuf> {
    files_ending(&k8s_dir(), ".yaml")
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect()
}

fn object(kind: &str, name: &str) -> serde_json::Value {
    objects()
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/kubernetes"))
}

/// Does `selector` (a matchLabels-style map) select an object with `labels`?
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let validate = venv_tool("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new(&validate);
        cmd.args(["--strict", "-k", version]).args(manifests());
        let out = run(&mut cmd);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}", describe(&cmd, &out));
        // Custom resources have no schema there and only warn; anything else must pass.
        for line in all.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                line.contains("kind ServiceMonitor") || line.contains("kind PrometheusRule"),
                "unexpected warning: {line}\n{}",
                describe(&cmd, &out)
            );
        }
        let passed = all.lines().filter(|l| l.contains(" passed ")).count();
        let builtin = objects()
            .iter()
            .filter(|(_, o)| !o["apiVersion"].as_str().unwrap_or("").contains("coreos"))
            .count();
        assert_eq!(passed, builtin, "not every object passed\n{all}");
    }
}

#[test]
fn kustomization_lists_exactly_the_manifests() {
    let k = read_yaml(&k8s_dir().join("kustomization.yaml"));
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs files");
}

#[test]
fn prometheusrule_is_generated_from_alerts_and_up_to_date() {
    let mut cmd = Command::new(workspace_root().join("deploy/gen-prometheusrule.sh"));
    cmd.arg("--check");
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));

    // Same groups as alerts/, parsed (not only the same text).
    let rule = object("PrometheusRule", "leakwarden");
    let mut groups = Vec::new();
    for f in rule_files() {
        groups.extend(
            read_yaml(&f)["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert_eq!(rule["spec"]["groups"], serde_json::Value::Array(groups));
}

#[test]
fn prometheusrule_has_required_fields_and_its_spec_passes_promtool() {
    let rule = object("PrometheusRule", "leakwarden");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    assert!(!groups.is_empty());
    for g in groups {
        assert!(g["name"].is_string(), "group without name: {g}");
        for r in g["rules"].as_array().expect("group rules") {
            assert!(r["expr"].is_string(), "rule without expr: {r}");
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

#[test]
fn servicemonitor_scrapes_named_service_ports_with_the_jobs_the_alerts_expect() {
    let sm = object("ServiceMonitor", "leakwarden");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let selector = &sm["spec"]["selector"]["matchLabels"];
    let services: Vec<serde_json::Value> = objects()
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == "Service" && selects(selector, &o["metadata"]["labels"]))
        .collect();
    assert!(
        services.len() >= 2,
        "the ServiceMonitor selects {services:?}"
    );
    let ports: BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut jobs = BTreeSet::new();
    let endpoints = sm["spec"]["endpoints"].as_array().expect("spec.endpoints");
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint port name");
        assert!(
            ports.contains(port),
            "endpoint port {port} is on no selected Service: {ports:?}"
        );
        for r in e["relabelings"].as_array().into_iter().flatten() {
            if r["targetLabel"] == "job" {
                jobs.insert(r["replacement"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = ["leakwarden", "leakwarden-runner"].map(String::from).into();
    assert_eq!(jobs, expected, "job labels set by the endpoints");

    // Each Service selects the pods of a workload, and targets ports those pods name.
    for s in &services {
        let workloads: Vec<serde_json::Value> = objects()
            .into_iter()
            .map(|(_, o)| o)
            .filter(|o| {
                selects(
                    &s["spec"]["selector"],
                    &o["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            workloads.len(),
            1,
            "Service {} selects {workloads:?}",
            s["metadata"]["name"]
        );
        let pod = &workloads[0]["spec"]["template"]["spec"];
        let container_ports: BTreeSet<&str> = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| pod[k].as_array().into_iter().flatten())
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = p["targetPort"].as_str().unwrap_or("");
            assert!(
                container_ports.contains(target),
                "Service {} targets port {target}, not named by its pods ({container_ports:?})",
                s["metadata"]["name"]
            );
        }
    }
}

/// The capabilities the sidecar may hold, each explained in pod-sidecar.yaml.
const ALLOWED_CAPS: [&str; 3] = ["KILL", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn check_sidecar_container(c: &serde_json::Value, problems: &mut Vec<String>) {
    let name = c["name"].as_str().unwrap_or("?");
    let sc = &c["securityContext"];
    if sc["allowPrivilegeEscalation"] != false {
        problems.push(format!("{name}: allowPrivilegeEscalation must be false"));
    }
    if sc["readOnlyRootFilesystem"] != true {
        problems.push(format!("{name}: readOnlyRootFilesystem must be true"));
    }
    if sc["privileged"] == true {
        problems.push(format!("{name}: privileged"));
    }
    if sc["capabilities"]["drop"] != serde_json::json!(["ALL"]) {
        problems.push(format!("{name}: must drop ALL capabilities"));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        if !ALLOWED_CAPS.contains(&cap.as_str().unwrap_or("")) {
            problems.push(format!("{name}: capability {cap} beyond {ALLOWED_CAPS:?}"));
        }
    }
    let probe = |kind: &str| {
        (
            c[kind]["httpGet"]["path"].as_str().unwrap_or("").to_owned(),
            c[kind]["httpGet"]["port"].clone(),
        )
    };
    let port_named = c["ports"][0]["name"].clone();
    if c["ports"][0]["containerPort"] != 9847 {
        problems.push(format!("{name}: metrics port must be 9847"));
    }
    for (kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let (p, port) = probe(kind);
        if p != path || (port != port_named && port != 9847) {
            problems.push(format!("{name}: {kind} must GET {path} on 9847"));
        }
    }
    if c["resources"]["requests"]["memory"].is_null()
        || c["resources"]["limits"]["memory"].is_null()
    {
        problems.push(format!("{name}: memory request and limit"));
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    if args.first() != Some(&"watch") {
        problems.push(format!("{name}: args must start with `watch`: {args:?}"));
    }
}

#[test]
fn pod_sidecar_is_a_native_sidecar_with_probes_and_a_narrow_security_context() {
    let d = object("Deployment", "browser-bot");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["shareProcessNamespace"], true);
    let inits = pod["initContainers"].as_array().expect("initContainers");
    let sidecar = inits
        .iter()
        .find(|c| c["name"] == "leakwarden")
        .expect("leakwarden init container");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let mut problems = Vec::new();
    check_sidecar_container(sidecar, &mut problems);
    for c in pod["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        if sc["runAsNonRoot"] != true || sc["capabilities"]["drop"] != serde_json::json!(["ALL"]) {
            problems.push(format!("workload {}: runAsNonRoot, drop ALL", c["name"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn daemonset_runs_in_the_host_pid_namespace_with_pod_attribution() {
    let ds = object("DaemonSet", "leakwarden-node");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(pod["tolerations"].as_array().is_some_and(|t| !t.is_empty()));
    let c = &pod["containers"][0];
    let mut problems = Vec::new();
    check_sidecar_container(c, &mut problems);
    assert!(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a == "--pod-attribution"),
        "--pod-attribution"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn policy_configmap_is_a_policy_leakwarden_accepts() {
    let cm = object("ConfigMap", "leakwarden-policy");
    let policy = cm["data"]["policy.yaml"]
        .as_str()
        .expect("data.policy.yaml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).expect("write");
    let mut cmd = Command::new(bin("leakwarden"));
    cmd.args(["policy", "check"]).arg(&file);
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

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let path = workspace_root().join("deploy/systemd/leakwarden.service");
    let text = std::fs::read_to_string(&path).expect("read unit");
    let s = unit_settings(&text);
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
    ] {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(
        s["ExecStart"].starts_with("/usr/local/bin/leakwarden watch"),
        "ExecStart runs `leakwarden watch`"
    );

    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: skipping `systemd-analyze verify` only");
        return;
    };
    // verify insists that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("leakwarden.service");
    let built = bin("leakwarden");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/leakwarden", &built.to_string_lossy()),
    )
    .expect("write unit");
    let mut cmd = Command::new(analyze);
    cmd.arg("verify").arg(&unit);
    let out = run(&mut cmd);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        describe(&cmd, &out)
    );
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
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
