//! `deploy/kubernetes`: a kustomize base, components and overlays. Every overlay renders with
//! `kubectl kustomize` (kustomize's own code, as `kubectl apply -k` runs it) and what it renders
//! passes `kubernetes-validate --strict`; the Prometheus Operator's objects are checked field by
//! field against the operator's CRD schema (a vendored subset, tests/fixtures/crds/); every pod
//! passes the Pod Security level its namespace claims, and that level is the strictest it can
//! be. What each overlay promises beyond that: `ops_overlays.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use leakwarden_tests::kube::{find, is_operator_kind, k8s, render, OVERLAYS};
use leakwarden_tests::ops::venv_tool;
use leakwarden_tests::podsecurity::{pod_spec, violations, Level};
use leakwarden_tests::{describe, run, workspace_root};
use serde_json::{json, Value};

/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from 1.29;
/// validate against that and a current version.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

#[test]
fn the_overlays_are_exactly_these() {
    let present: BTreeSet<String> = std::fs::read_dir(k8s().join("overlays"))
        .expect("overlays/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let expected: BTreeSet<String> = OVERLAYS.iter().map(|(o, _)| o.to_string()).collect();
    assert_eq!(
        present, expected,
        "a new overlay needs its Pod Security level here"
    );
}

/// Every YAML file of a component or the base is one its kustomization uses: nothing lies
/// around that `kubectl apply -k` would silently leave out.
#[test]
fn every_manifest_file_is_used_by_its_kustomization() {
    let mut problems = Vec::new();
    let mut dirs = vec![k8s().join("base")];
    for e in std::fs::read_dir(k8s().join("components"))
        .expect("components/")
        .flatten()
    {
        dirs.push(e.path());
    }
    for dir in dirs {
        let k = std::fs::read_to_string(dir.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" && !k.contains(&name) {
                problems.push(format!(
                    "{}: {name} is in no resources or patches",
                    dir.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_overlay_renders_and_passes_kubernetes_validate_strict() {
    let validate = venv_tool("kubernetes-validate");
    let dir = tempfile::tempdir().expect("tempdir");
    for (overlay, _) in OVERLAYS {
        let objs = render(overlay);
        assert!(!objs.is_empty(), "{overlay} renders nothing");
        // One file per object: kubernetes-validate reports per file.
        let mut files = Vec::new();
        for (i, o) in objs.iter().enumerate() {
            let f = dir.path().join(format!("{overlay}-{i}.yaml"));
            std::fs::write(&f, serde_norway::to_string(o).expect("yaml")).expect("write");
            files.push(f);
        }
        for version in KUBERNETES_VERSIONS {
            let mut cmd = Command::new(&validate);
            cmd.args(["--strict", "-k", version]).args(&files);
            let out = run(&mut cmd);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "{overlay} on {version}: {}",
                describe(&cmd, &out)
            );
            // It has no schema for custom resources and only warns: those are checked against
            // the operator's schema below. Anything else must pass.
            for line in all.lines().filter(|l| l.starts_with("WARN")) {
                assert!(
                    ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
                        .iter()
                        .any(|k| line.contains(&format!("kind {k}"))),
                    "{overlay} on {version}: unexpected warning: {line}"
                );
            }
            let passed = all.lines().filter(|l| l.contains(" passed ")).count();
            let builtin = objs.iter().filter(|o| !is_operator_kind(o)).count();
            assert_eq!(
                passed, builtin,
                "{overlay} on {version}: not every object passed\n{all}"
            );
        }
    }
}

/// `tests/fixtures/crds/check.py` over `objs`: (exit code, output).
fn check_operator_objects(objs: &[Value]) -> (i32, String) {
    let mut child = Command::new(venv_tool("python"))
        .arg(workspace_root().join("tests/fixtures/crds/check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start check.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(objs).expect("json").as_bytes())
        .expect("write objects");
    let out = child.wait_with_output().expect("check.py");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn operator_objects_match_the_operators_crd_schema_field_by_field() {
    let mut kinds = BTreeSet::new();
    for (overlay, _) in OVERLAYS {
        let objs: Vec<Value> = render(overlay)
            .into_iter()
            .filter(is_operator_kind)
            .collect();
        for o in &objs {
            kinds.insert(o["kind"].as_str().unwrap_or("?").to_owned());
        }
        let (code, out) = check_operator_objects(&objs);
        assert_eq!(code, 0, "{overlay}:\n{out}");
    }
    let expected: BTreeSet<String> = ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
        .map(String::from)
        .into();
    assert_eq!(kinds, expected);

    // And it catches what the operator would reject or silently drop.
    let objs: Vec<Value> = render("node")
        .into_iter()
        .filter(is_operator_kind)
        .collect();
    let mut pm = find(&objs, "PodMonitor", "leakwarden-sidecars").clone();
    let endpoints = pm["spec"]["podMetricsEndpoints"].take();
    pm["spec"]["podMetricEndpoints"] = endpoints;
    let mut sm = find(&objs, "ServiceMonitor", "leakwarden-node").clone();
    sm["spec"]["endpoints"][0]["relabelings"][0]["action"] = json!("rewrite");
    let mut pr = find(&objs, "PrometheusRule", "leakwarden").clone();
    pr["spec"]["groups"][0]["rules"][1]["for"] = json!("5 minutes");
    let (code, out) = check_operator_objects(&[pm, sm, pr]);
    assert_eq!(code, 1, "{out}");
    for expect in [
        "PodMonitor/leakwarden-sidecars: spec: Additional properties are not allowed ('podMetricEndpoints'",
        "ServiceMonitor/leakwarden-node: spec/endpoints/0/relabelings/0/action: 'rewrite' is not one of",
        "PrometheusRule/leakwarden: spec/groups/0/rules/1/for: '5 minutes' does not match",
    ] {
        assert!(out.contains(expect), "expected {expect:?} in\n{out}");
    }
}

/// Workloads of a rendered overlay, by namespace: (what, pod spec).
fn pods(objs: &[Value]) -> Vec<(String, String, Value)> {
    objs.iter()
        .filter_map(|o| {
            let spec = pod_spec(o)?.clone();
            let ns = o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            Some((
                ns,
                format!(
                    "{}/{}",
                    o["kind"].as_str()?,
                    o["metadata"]["name"].as_str()?
                ),
                spec,
            ))
        })
        .collect()
}

#[test]
fn every_pod_passes_the_pod_security_level_its_namespace_claims_and_no_stricter_one() {
    let mut problems = Vec::new();
    for (overlay, expected) in OVERLAYS {
        let objs = render(overlay);
        let claims: BTreeMap<String, Level> = objs
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .map(|o| {
                let label = o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                    .as_str()
                    .unwrap_or("");
                let level = Level::parse(label)
                    .unwrap_or_else(|| panic!("{overlay}: enforce label {label:?}"));
                (
                    o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    level,
                )
            })
            .collect();
        assert_eq!(claims.len(), 1, "{overlay}: one namespace: {claims:?}");
        let (ns, claim) = claims.iter().next().expect("namespace");
        if *claim != expected {
            problems.push(format!(
                "{overlay}: claims {claim:?}, expected {expected:?}"
            ));
        }
        let workloads = pods(&objs);
        assert!(!workloads.is_empty(), "{overlay}: no pods");
        let mut fails_baseline = false;
        for (wns, what, spec) in &workloads {
            assert_eq!(wns, ns, "{overlay}: {what} outside the overlay's namespace");
            for v in violations(spec, *claim) {
                problems.push(format!("{overlay}: {what} breaks {claim:?}: {v}"));
            }
            fails_baseline |= !violations(spec, Level::Baseline).is_empty();
        }
        if *claim == Level::Privileged && !fails_baseline {
            problems.push(format!(
                "{overlay}: claims privileged, but its pods pass baseline"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker above must be able to say no: each change below, made alone to the restricted
/// overlay's pod, breaks `restricted` (and the first four `baseline` too).
#[test]
fn the_pod_security_check_rejects_each_forbidden_setting() {
    let objs = render("restricted");
    let pod = pod_spec(find(&objs, "Deployment", "browser-bot"))
        .expect("pod")
        .clone();
    assert!(violations(&pod, Level::Restricted).is_empty());
    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation, bool); 9] = [
        ("hostPID", |p| p["hostPID"] = json!(true), true),
        (
            "hostPath volume",
            |p| {
                p["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "h", "hostPath": {"path": "/"}}))
            },
            true,
        ),
        (
            "SYS_PTRACE",
            |p| {
                p["initContainers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["SYS_PTRACE"])
            },
            true,
        ),
        (
            "privileged",
            |p| p["containers"][0]["securityContext"]["privileged"] = json!(true),
            true,
        ),
        (
            "runAsNonRoot false",
            |p| p["initContainers"][0]["securityContext"]["runAsNonRoot"] = json!(false),
            false,
        ),
        (
            "allowPrivilegeEscalation",
            |p| p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true),
            false,
        ),
        (
            "no drop ALL",
            |p| p["initContainers"][0]["securityContext"]["capabilities"]["drop"] = json!([]),
            false,
        ),
        (
            "seccomp Unconfined",
            |p| {
                p["initContainers"][0]["securityContext"]["seccompProfile"]["type"] =
                    json!("Unconfined")
            },
            true,
        ),
        (
            "runAsUser 0",
            |p| p["containers"][0]["securityContext"]["runAsUser"] = json!(0),
            false,
        ),
    ];
    for (what, mutate, baseline_too) in cases {
        let mut p = pod.clone();
        mutate(&mut p);
        assert!(
            !violations(&p, Level::Restricted).is_empty(),
            "{what} passes restricted"
        );
        assert_eq!(
            !violations(&p, Level::Baseline).is_empty(),
            baseline_too,
            "{what} vs baseline: {:?}",
            violations(&p, Level::Baseline)
        );
    }
}
