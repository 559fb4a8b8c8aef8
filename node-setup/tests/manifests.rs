//! Every Kubernetes manifest of the repo (runtimeclass/ and node-setup/)
//! parses as its Kubernetes API type, with no field the API would drop (a
//! misspelt field fails), and the workloads use the `wasmhybrid`
//! RuntimeClass.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("runtimeclass"), repo().join("node-setup")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() && !p.ends_with("target") {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Parses `doc` as `T` and checks that serializing it back keeps every
/// field of the document.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &serde_json::Value, what: &str) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).expect("serialize");
    assert_subset(doc, &back, what, "");
    t
}

fn assert_subset(doc: &serde_json::Value, back: &serde_json::Value, what: &str, path: &str) {
    match (doc, back) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                let bv = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{what}: unknown field {p}"));
                assert_subset(v, bv, what, &p);
            }
        }
        (serde_json::Value::Array(a), serde_json::Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: {path}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(x, y, what, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn assert_wasmhybrid(spec: Option<&PodSpec>, what: &str) {
    let spec = spec.unwrap_or_else(|| panic!("{what}: no pod spec"));
    assert_eq!(
        spec.runtime_class_name.as_deref(),
        Some("wasmhybrid"),
        "{what}"
    );
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let files = yaml_files();
    assert!(files.len() >= 5, "manifests found: {files:?}");
    let mut kinds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let doc = serde_json::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let what = format!("{} document {i}", file.display());
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no kind"))
                .to_string();
            match kind.as_str() {
                "RuntimeClass" => {
                    let rc: RuntimeClass = typed(&doc, &what);
                    assert_eq!(rc.handler, "wasmhybrid", "{what}");
                    let selector = rc
                        .scheduling
                        .and_then(|s| s.node_selector)
                        .unwrap_or_default();
                    assert_eq!(
                        selector.get("wasmhybrid.io/ready").map(String::as_str),
                        Some("true"),
                        "{what}"
                    );
                }
                "Deployment" => {
                    let d: Deployment = typed(&doc, &what);
                    assert_wasmhybrid(
                        d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
                        &what,
                    );
                }
                "Job" => {
                    let j: Job = typed(&doc, &what);
                    assert_wasmhybrid(
                        j.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
                        &what,
                    );
                }
                "Pod" => {
                    let p: Pod = typed(&doc, &what);
                    assert_wasmhybrid(p.spec.as_ref(), &what);
                }
                "Service" => {
                    let _: Service = typed(&doc, &what);
                }
                "DaemonSet" => {
                    let ds: DaemonSet = typed(&doc, &what);
                    let spec = ds
                        .spec
                        .and_then(|s| s.template.spec)
                        .unwrap_or_else(|| panic!("{what}: no pod spec"));
                    assert_eq!(spec.host_pid, Some(true), "{what}: nsenter needs hostPID");
                    let init = &spec.init_containers.unwrap_or_default()[0];
                    let args = init.args.clone().unwrap_or_default();
                    assert_eq!(args, ["install", "--host-root", "/host"], "{what}");
                    assert!(
                        init.env
                            .iter()
                            .flatten()
                            .any(|e| e.name == "NODE_NAME" && e.value_from.is_some()),
                        "{what}: NODE_NAME from the downward API"
                    );
                }
                "ServiceAccount" => {
                    let _: ServiceAccount = typed(&doc, &what);
                }
                "ClusterRole" => {
                    let role: ClusterRole = typed(&doc, &what);
                    for rule in role.rules.unwrap_or_default() {
                        assert!(
                            rule.verbs.iter().all(|v| v == "get" || v == "patch"),
                            "{what}: least privilege"
                        );
                    }
                }
                "ClusterRoleBinding" => {
                    let _: ClusterRoleBinding = typed(&doc, &what);
                }
                other => panic!("{what}: no check for kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for needed in [
        "RuntimeClass",
        "Deployment",
        "Service",
        "Job",
        "Pod",
        "DaemonSet",
        "ClusterRole",
    ] {
        assert!(kinds.iter().any(|k| k == needed), "no {needed} manifest");
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"runtimeClasName": "wasmhybrid", "containers": [{"name": "a", "image": "b"}]}
    });
    let result = std::panic::catch_unwind(|| typed::<Pod>(&doc, "typo"));
    assert!(result.is_err(), "runtimeClasName was accepted");
}
