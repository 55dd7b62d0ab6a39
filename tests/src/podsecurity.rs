//! The Kubernetes Pod Security Standards (`baseline`, `restricted`; policy version "latest" as of
//! Kubernetes 1.33), checked offline on the pod template of a rendered object — what the
//! `pod-security.kubernetes.io/enforce` label of a namespace makes the API server enforce. Written
//! from <https://kubernetes.io/docs/concepts/security/pod-security-standards/>, control by control;
//! `tests/tests/ops_kustomize.rs` checks every overlay's pods against the level its namespace
//! claims, and that the checker rejects what it must.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// The value of a `pod-security.kubernetes.io/enforce` label.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

/// The pod spec inside a workload object, wherever its kind keeps it.
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    let spec = &obj["spec"];
    let p = match obj["kind"].as_str()? {
        "Pod" => spec,
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            &spec["template"]["spec"]
        }
        "CronJob" => &spec["jobTemplate"]["spec"]["template"]["spec"],
        _ => return None,
    };
    p.is_object().then_some(p)
}

/// Capabilities `baseline` lets a container add.
const BASELINE_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

/// Every way `pod` breaks `level` (empty: it passes). Each message names the control.
pub fn violations(pod: &Value, level: Level) -> Vec<String> {
    let mut v = Vec::new();
    if level == Level::Privileged {
        return v;
    }
    let psc = &pod["securityContext"];
    // === baseline ===
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[ns] == true {
            v.push(format!("host namespaces: {ns}"));
        }
    }
    if psc["windowsOptions"]["hostProcess"] == true {
        v.push("HostProcess: pod".into());
    }
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        if vol.get("hostPath").is_some() {
            v.push(format!("hostPath volume {}", vol["name"]));
        }
    }
    let check_common = |sc: &Value, who: &str, v: &mut Vec<String>| {
        if sc["seccompProfile"]["type"] == "Unconfined" {
            v.push(format!("seccomp: {who} Unconfined"));
        }
        if let Some(t) = sc["appArmorProfile"]["type"].as_str() {
            if t != "RuntimeDefault" && t != "Localhost" {
                v.push(format!("AppArmor: {who} {t}"));
            }
        }
        let se = &sc["seLinuxOptions"];
        if !SELINUX_TYPES.contains(&se["type"].as_str().unwrap_or("")) {
            v.push(format!("SELinux: {who} type {}", se["type"]));
        }
        if se.get("user").is_some() || se.get("role").is_some() {
            v.push(format!("SELinux: {who} sets user or role"));
        }
    };
    check_common(psc, "pod", &mut v);
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            v.push(format!("sysctls: {name}"));
        }
    }
    for c in containers(pod) {
        let who = format!("container {}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            v.push(format!("privileged: {who}"));
        }
        if sc["windowsOptions"]["hostProcess"] == true {
            v.push(format!("HostProcess: {who}"));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or("");
            if !BASELINE_CAPS.contains(&cap) {
                v.push(format!("capabilities: {who} adds {cap}"));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_u64().unwrap_or(0) != 0 {
                v.push(format!("host ports: {who} {}", p["hostPort"]));
            }
        }
        if let Some(pm) = sc["procMount"].as_str() {
            if pm != "Default" {
                v.push(format!("/proc mount: {who} {pm}"));
            }
        }
        check_common(sc, &who, &mut v);
    }
    if level == Level::Baseline {
        return v;
    }
    // === restricted ===
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = vol
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| *k != "name")
            .collect();
        for k in kinds {
            if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                v.push(format!("volume types: {} is {k}", vol["name"]));
            }
        }
    }
    if psc["runAsUser"] == 0 {
        v.push("running as non-root user: pod runAsUser 0".into());
    }
    let pod_seccomp = psc["seccompProfile"]["type"].as_str();
    for c in containers(pod) {
        let who = format!("container {}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!(
                "privilege escalation: {who} does not set allowPrivilegeEscalation: false"
            ));
        }
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(b) => b,
            None => psc["runAsNonRoot"] == true,
        };
        if !non_root {
            v.push(format!(
                "running as non-root: {who} (runAsNonRoot is not true)"
            ));
        }
        if sc["runAsUser"] == 0 {
            v.push(format!("running as non-root user: {who} runAsUser 0"));
        }
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault") | Some("Localhost")) {
            v.push(format!(
                "seccomp: {who} has no RuntimeDefault or Localhost profile"
            ));
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all {
            v.push(format!("capabilities: {who} does not drop ALL"));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                v.push(format!(
                    "capabilities: {who} adds {cap} (restricted allows NET_BIND_SERVICE only)"
                ));
            }
        }
    }
    v
}
