//! The Kubernetes manifests in `examples/kubernetes/` (docs/transparent.md):
//! valid against Kubernetes' own schemas, checked offline by PyPI's
//! `kubernetes-validate` (no cluster); the agent config they carry loads;
//! the init container's flags are `tracemesh iptables`'s.
//!
//! Without `kubernetes-validate` the schema check skips and says why —
//! except under `CI=true`, where `.ci/run` installs it and it must run.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::agent::binary;
use serde::Deserialize;

/// The Kubernetes version the manifests target: native sidecars
/// (`restartPolicy: Always` init containers) are on by default since 1.29.
const KUBERNETES: &str = "1.32.0";

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn documents(path: &PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let probe = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let why =
            "kubernetes-validate is not installed (pip install kubernetes-validate; .ci/run does)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true requires the manifests to be checked"
        );
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = writeln!(std::io::stderr(), "skipping the schema check: {why}");
        return;
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES,
        ])
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate refused the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_agent_configs_load_and_the_init_flags_are_tracemesh_iptables_flags() {
    let mut agents = 0;
    let mut inits = 0;
    for path in manifests() {
        for doc in documents(&path) {
            match doc["kind"].as_str() {
                Some("ConfigMap") => {
                    for (key, text) in doc["data"].as_object().into_iter().flatten() {
                        let text = text.as_str().unwrap();
                        if !text.contains("kind: Agent") {
                            continue;
                        }
                        agents += 1;
                        let mut child = Command::new(binary())
                            .args(["validate", "-o", "json", "-"])
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .spawn()
                            .unwrap();
                        child
                            .stdin
                            .take()
                            .unwrap()
                            .write_all(text.as_bytes())
                            .unwrap();
                        let out = child.wait_with_output().unwrap();
                        let report: serde_json::Value =
                            serde_json::from_slice(&out.stdout).unwrap();
                        assert!(out.status.success(), "{} {key}: {report:#}", path.display());
                        assert_eq!(
                            report["files"][0]["agent"], true,
                            "checked as an agent's config"
                        );
                    }
                }
                Some("Deployment") => {
                    let spec = &doc["spec"]["template"]["spec"];
                    for init in spec["initContainers"].as_array().into_iter().flatten() {
                        let args: Vec<&str> = init["args"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str())
                            .collect();
                        if args.first() != Some(&"iptables") {
                            continue;
                        }
                        inits += 1;
                        let out = Command::new(binary())
                            .args(&args)
                            .arg("--dry-run")
                            .output()
                            .unwrap();
                        assert!(
                            out.status.success(),
                            "{args:?}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        let caps = &init["securityContext"]["capabilities"]["add"];
                        assert_eq!(caps, &serde_json::json!(["NET_ADMIN", "NET_RAW"]));
                    }
                    let sidecar = spec["initContainers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["args"][0] == "agent")
                        .expect("the agent as a native sidecar");
                    assert_eq!(sidecar["restartPolicy"], "Always");
                    assert_eq!(
                        sidecar["securityContext"]["runAsUser"], 1337,
                        "the uid the rules leave alone"
                    );
                    for app in spec["containers"].as_array().into_iter().flatten() {
                        assert_ne!(
                            app["securityContext"]["runAsUser"], 1337,
                            "an app as 1337 would escape capture"
                        );
                    }
                }
                _ => {}
            }
        }
    }
    assert!(
        agents > 0 && inits > 0,
        "{agents} agent configs, {inits} init containers"
    );
}
