//! Helpers for the tests of `deploy/kubernetes` (`ops_kustomize.rs`, `ops_overlays.rs`): the
//! overlays with the Pod Security level each must claim, rendering one with `kubectl kustomize`,
//! and finding objects in what it renders.

use std::path::PathBuf;

use serde_json::Value;

use crate::ops::kustomize;
use crate::podsecurity::Level;
use crate::workspace_root;

/// Every overlay and the Pod Security level its namespace must claim: the strictest its pods
/// pass (a `privileged` claim is checked to be needed: its pods fail `baseline`).
pub const OVERLAYS: [(&str, Level); 5] = [
    ("node", Level::Privileged),
    ("example", Level::Privileged),
    ("restricted", Level::Restricted),
    ("kube-prometheus-stack", Level::Privileged),
    ("cleanup-cronjob", Level::Privileged),
];

pub fn k8s() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// What `kubectl kustomize deploy/kubernetes/overlays/OVERLAY` renders.
pub fn render(overlay: &str) -> Vec<Value> {
    kustomize(&k8s().join("overlays").join(overlay))
}

/// The object of `kind` named `name`; panics listing what there is.
pub fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", names(objs)))
}

/// `KIND/NAME` of each object.
pub fn names(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// A Prometheus Operator object (ServiceMonitor, PodMonitor, PrometheusRule).
pub fn is_operator_kind(o: &Value) -> bool {
    o["apiVersion"]
        .as_str()
        .unwrap_or("")
        .starts_with("monitoring.coreos.com/")
}
