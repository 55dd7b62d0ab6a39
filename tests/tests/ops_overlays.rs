//! What each overlay of `deploy/kubernetes` promises, on what `kubectl kustomize` renders
//! (`ops_kustomize.rs` validates it): a node DaemonSet in dry run that survives memory pressure,
//! an injected native sidecar, a capability-free one, monitors that find the pods and ports with
//! the job and node labels the mixin expects, the labels kube-prometheus-stack selects on,
//! policies leakwarden accepts, a node-pinned cleanup CronJob whose exit codes mean what the
//! systemd timer's do.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use leakwarden_tests::kube::{find, is_operator_kind, names, render, OVERLAYS};
use leakwarden_tests::podsecurity::pod_spec;
use leakwarden_tests::{bin, describe, run};
use serde_json::{json, Value};

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

/// Guaranteed QoS: every container requests exactly its limits, for CPU and memory.
fn guaranteed(pod: &Value) -> Result<(), String> {
    for c in ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
    {
        let r = &c["resources"];
        for res in ["cpu", "memory"] {
            if r["limits"][res].is_null() || r["requests"][res] != r["limits"][res] {
                return Err(format!(
                    "{}: {res} requests {} limits {}",
                    c["name"], r["requests"][res], r["limits"][res]
                ));
            }
        }
    }
    Ok(())
}

/// The policy inside a ConfigMap, parsed.
fn policy_of(cm: &Value) -> Value {
    serde_norway::from_str(
        cm["data"]["policy.yaml"]
            .as_str()
            .expect("data.policy.yaml"),
    )
    .expect("policy YAML")
}

#[test]
fn node_daemonset_starts_in_dry_run_and_survives_memory_pressure() {
    let objs = render("node");
    let ds = find(&objs, "DaemonSet", "leakwarden-node");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    guaranteed(pod).unwrap_or_else(|e| panic!("not Guaranteed: {e}"));
    let c = container(pod, "containers", "leakwarden");
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--pod-attribution"), "{args:?}");
    // NODE_NAME was set and never read: the `node` label comes from the scrape instead.
    assert!(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["name"] != "NODE_NAME"),
        "{}",
        c["env"]
    );

    let mount = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "policy")
        .expect("policy volume");
    let cm = find(
        &objs,
        "ConfigMap",
        mount["configMap"]["name"].as_str().expect("configMap"),
    );
    let policy = policy_of(cm);
    assert_eq!(policy["dry_run"], true, "the node policy starts in dry run");
    for r in policy["rules"].as_array().into_iter().flatten() {
        assert!(
            r["when"].get("age").is_none(),
            "no max-age rule until the operator opts in: {r}"
        );
    }
    // The quota that lets the critical class be used outside kube-system where it is limited.
    let quota = objs
        .iter()
        .find(|o| o["kind"] == "ResourceQuota")
        .expect("ResourceQuota");
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"],
        json!(["system-node-critical"])
    );
}

#[test]
fn example_gets_an_injected_native_sidecar_beside_its_workload() {
    let objs = render("example");
    let pod = pod_spec(find(&objs, "Deployment", "browser-bot")).expect("pod");
    assert_eq!(pod["shareProcessNamespace"], true);
    let sidecar = container(pod, "initContainers", "leakwarden");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["args"][0], "watch");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    let caps: BTreeSet<&str> = sidecar["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        caps,
        BTreeSet::from(["KILL", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    // The workload's TMPDIR volume is the sidecar's /tmp: stale profiles are in its sight.
    let runner = container(pod, "containers", "runner");
    let tmp_of = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/tmp")
            .map(|m| m["name"].clone())
    };
    assert_eq!(tmp_of(sidecar), tmp_of(runner));
    assert!(tmp_of(runner).is_some());
    let cm = find(&objs, "ConfigMap", "leakwarden-policy");
    assert_eq!(
        policy_of(cm)["dry_run"],
        false,
        "a pod sidecar sees only its pod: it enforces"
    );
}

#[test]
fn restricted_sidecar_runs_as_the_workloads_uid_without_capabilities() {
    let objs = render("restricted");
    let pod = pod_spec(find(&objs, "Deployment", "browser-bot")).expect("pod");
    let sidecar = container(pod, "initContainers", "leakwarden");
    let runner = container(pod, "containers", "runner");
    let sc = &sidecar["securityContext"];
    assert_eq!(
        sc["runAsUser"], runner["securityContext"]["runAsUser"],
        "same uid: it may signal and read what the workload starts"
    );
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sc["capabilities"].get("add").is_none(), "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
}

/// Does `selector` (matchLabels) select `labels`?
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

fn relabel_targets(endpoint: &Value) -> BTreeMap<String, Value> {
    endpoint["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["targetLabel"].as_str().unwrap_or("").to_owned(),
                r.clone(),
            )
        })
        .collect()
}

#[test]
fn monitors_find_the_pods_and_ports_they_scrape_with_job_and_node_labels() {
    // PodMonitor: injected pods in every namespace, the sidecar's and the runner's port.
    let objs = render("example");
    let pm = find(&objs, "PodMonitor", "leakwarden-sidecars");
    assert_eq!(pm["spec"]["namespaceSelector"], json!({"any": true}));
    let d = find(&objs, "Deployment", "browser-bot");
    assert!(selects(
        &pm["spec"]["selector"]["matchLabels"],
        &d["spec"]["template"]["metadata"]["labels"]
    ));
    let pod = pod_spec(d).expect("pod");
    let ports: BTreeSet<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut jobs = BTreeSet::new();
    for e in pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints")
    {
        assert!(
            ports.contains(e["port"].as_str().unwrap_or("")),
            "{} not in {ports:?}",
            e["port"]
        );
        let t = relabel_targets(e);
        jobs.insert(t["job"]["replacement"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            t["node"]["sourceLabels"],
            json!(["__meta_kubernetes_pod_node_name"])
        );
    }
    assert_eq!(
        jobs,
        BTreeSet::from(["leakwarden".to_owned(), "leakwarden-runner".to_owned()])
    );

    // ServiceMonitor: the DaemonSet's Service, whose port the DaemonSet's pods name.
    let objs = render("node");
    let sm = find(&objs, "ServiceMonitor", "leakwarden-node");
    let svc = objs
        .iter()
        .find(|o| {
            o["kind"] == "Service"
                && selects(
                    &sm["spec"]["selector"]["matchLabels"],
                    &o["metadata"]["labels"],
                )
        })
        .expect("a Service the ServiceMonitor selects");
    let ds = find(&objs, "DaemonSet", "leakwarden-node");
    assert!(selects(
        &svc["spec"]["selector"],
        &ds["spec"]["template"]["metadata"]["labels"]
    ));
    let e = &sm["spec"]["endpoints"][0];
    assert_eq!(e["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"],
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    );
    let t = relabel_targets(e);
    assert_eq!(t["job"]["replacement"], "leakwarden");
    assert_eq!(
        t["node"]["sourceLabels"],
        json!(["__meta_kubernetes_pod_node_name"])
    );
}

#[test]
fn kube_prometheus_stack_overlay_carries_what_the_stack_selects_on() {
    let objs = render("kube-prometheus-stack");
    let mut operator = 0;
    for o in objs.iter().filter(|o| is_operator_kind(o)) {
        operator += 1;
        assert_eq!(
            o["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{}",
            o["metadata"]["name"]
        );
    }
    assert_eq!(operator, 3, "{:?}", names(&objs));
    let boards: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(boards.len(), 2, "the sidecar and runner dashboards");
    // And the safe default workload: the node DaemonSet, in dry run.
    let ds = find(&objs, "DaemonSet", "leakwarden-node");
    let cm_name = ds["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        .as_str()
        .expect("policy");
    assert_eq!(
        policy_of(find(&objs, "ConfigMap", cm_name))["dry_run"],
        true
    );
}

#[test]
fn every_policy_configmap_is_a_policy_leakwarden_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = BTreeSet::new();
    for (overlay, _) in OVERLAYS {
        for cm in render(overlay)
            .iter()
            .filter(|o| o["kind"] == "ConfigMap" && o["data"].get("policy.yaml").is_some())
        {
            let name = cm["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            let file = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&file, cm["data"]["policy.yaml"].as_str().unwrap_or("")).expect("write");
            let mut cmd = Command::new(bin("leakwarden"));
            cmd.args(["policy", "check"]).arg(&file);
            let out = run(&mut cmd);
            assert!(
                out.status.success(),
                "{overlay}: {name}: {}",
                describe(&cmd, &out)
            );
            checked.insert(name);
        }
    }
    let expected: BTreeSet<String> = ["leakwarden-node-policy", "leakwarden-policy"]
        .map(String::from)
        .into();
    assert_eq!(checked, expected);
}

/// The CronJob's script treats `cleanup`'s exit codes as the systemd unit's SuccessExitStatus=2 3
/// does: run it with `leakwarden` replaced by a stub that exits with each code.
#[test]
fn cleanup_cronjob_is_node_pinned_in_the_host_pid_namespace_and_maps_exit_codes() {
    let objs = render("cleanup-cronjob");
    let cj = find(&objs, "CronJob", "leakwarden-cleanup");
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
    let pod = pod_spec(cj).expect("pod");
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["nodeSelector"],
        json!({"leakwarden.io/cleanup": "true"})
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["restartPolicy"], "Never");
    guaranteed(pod).unwrap_or_else(|e| panic!("not Guaranteed: {e}"));
    let c = container(pod, "containers", "cleanup");
    assert_eq!(c["command"], json!(["/bin/sh", "-c"]));
    let script = c["args"][0].as_str().expect("script");
    assert!(
        script.contains("/usr/local/bin/leakwarden cleanup --kill"),
        "{script}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let stub = dir.path().join("leakwarden");
    std::fs::write(&stub, "#!/bin/sh\nexit \"$STUB_EXIT\"\n").expect("stub");
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script = script.replace("/usr/local/bin/leakwarden", &stub.to_string_lossy());
    for (code, expect) in [(0, 0), (2, 0), (3, 0), (1, 1), (64, 64)] {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&script)
            .env("STUB_EXIT", code.to_string());
        let out = run(&mut cmd);
        assert_eq!(
            out.status.code(),
            Some(expect),
            "cleanup exit {code}: {}",
            describe(&cmd, &out)
        );
    }
}
