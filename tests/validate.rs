//! `tracemesh validate` on plain Istio files, as `istioctl validate -f`:
//! a corpus of Istio's own valid and invalid resources of every kind, a
//! samples directory in one call, standard input, JSON and `List`s, exit
//! status, and the same words in the text and JSON outputs.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::agent::binary;
use serde_json::Value;

fn corpus(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/istio")
        .join(part)
}

/// Runs `tracemesh validate ARGS` with `stdin`: (exit code, stdout).
fn run(args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(binary())
        .arg("validate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn run_json(args: &[&str], stdin: &str) -> (i32, Value) {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (code, out) = run(&all, stdin);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

/// Every document of every YAML/JSON file under `dir`: (file, 1-based
/// document index, the document).
fn documents(dir: &Path) -> Vec<(String, usize, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            out.push((file.display().to_string(), i + 1, value));
        }
    }
    out
}

/// The report's findings of `severity` (`error`, `warning`).
fn findings<'a>(report: &'a Value, severity: &str) -> Vec<&'a Value> {
    report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == severity)
        .collect()
}

fn errors(report: &Value) -> Vec<&Value> {
    findings(report, "error")
}

/// The fields the errors name, sorted.
fn error_fields(report: &Value) -> Vec<&str> {
    let mut fields: Vec<&str> = errors(report)
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    fields
}

#[test]
fn every_valid_corpus_file_is_valid_as_a_plain_file() {
    let dir = corpus("valid");
    let (code, report) = run_json(&[dir.to_str().unwrap()], "");
    assert_eq!(code, 0, "{report:#}");
    assert!(errors(&report).is_empty(), "{report:#}");
    let files = report["files"].as_array().unwrap();
    assert!(files.len() >= 8, "{report:#}");
    for file in files {
        assert_eq!(file["status"], "valid", "{file}");
        assert_eq!(file["agent"], false, "plain files need no Agent document");
    }
    // Kinds the agent does not use are checked, then skipped with a warning.
    let skipped: Vec<&str> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["message"].as_str())
        .filter(|m| m.ends_with("is not used by the agent; skipped"))
        .collect();
    for kind in ["WorkloadGroup", "EnvoyFilter", "ProxyConfig"] {
        assert!(
            skipped.iter().any(|m| m.contains(&format!(" {kind} "))),
            "{kind} is validated and skipped: {skipped:?}"
        );
    }
}

#[test]
fn every_invalid_document_is_refused_with_its_field() {
    let dir = corpus("invalid");
    let (code, report) = run_json(&[dir.to_str().unwrap()], "");
    assert_eq!(code, 1, "{report:#}");
    // A header value is often a credential: no error repeats one.
    assert!(
        !report.to_string().contains("NOT-IN-ANY-ERROR"),
        "a header value leaked into an error: {report:#}"
    );
    let errors = errors(&report);
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    let docs = documents(&dir);
    for (file, index, doc) in &docs {
        let expected = doc["metadata"]["annotations"]["tracemesh.io/expect-field"]
            .as_str()
            .unwrap_or_else(|| panic!("{file} document {index} names the field it expects"));
        let found: Vec<&&Value> = errors
            .iter()
            .filter(|e| e["file"].as_str() == Some(file) && e["document"] == *index)
            .collect();
        assert!(
            found
                .iter()
                .any(|e| e["field"].as_str().is_some_and(|f| f.starts_with(expected))),
            "{file} document {index} ({}): expected an error at {expected}, got {found:#?}",
            doc["metadata"]["name"]
        );
        assert!(
            found.iter().all(|e| e["line"].as_u64().is_some()),
            "every error names its line: {found:#?}"
        );
        *per_kind
            .entry(doc["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    println!(
        "invalid documents per kind: {per_kind:?} ({} in all)",
        docs.len()
    );
    assert!(
        per_kind.len() >= 13,
        "every kind has invalid documents: {per_kind:?}"
    );
}

#[test]
fn the_samples_directory_validates_in_one_call() {
    let dir = corpus("samples");
    let (code, out) = run(&[dir.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.contains("files:") && last.contains(" 0 invalid, 0 unreadable (0 errors"),
        "{out}"
    );
    assert!(
        out.contains("apps/v1 Deployment is not used by the agent; skipped"),
        "{out}"
    );
    assert!(
        out.contains("httpbin-gateway.json: valid"),
        "JSON files are read: {out}"
    );
    assert!(out.contains("httpbin-circuit-breaker.yml: valid"), "{out}");
}

/// The forms of the issue that refused users' files: an IPv6 address in a
/// flow sequence, quoted port keys, a ServiceEntry without ports, fields
/// added to Istio's API recently.
#[test]
fn files_users_have_load_unchanged() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dual, namespace: default}
spec:
  hosts: [dual.example.com]
  addresses: [1.2.3.4, 2001:db8::]
  resolution: NONE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: quoted, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  portLevelMtls:
    "8080": {mode: DISABLE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: keepalive, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {http2KeepAlive: {interval: 30s, timeout: 5s}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: domains, namespace: default}
spec:
  rules:
  - from: [{source: {trustDomains: [cluster.local]}}]
"#;
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["files"][0]["file"], "<stdin>");
    let warned: Vec<&str> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    // The IPv6 address in a flow sequence is read, and enforced: capture
    // maps ServiceEntry addresses to their service, so nothing is warned.
    assert!(!warned.contains(&"spec.addresses"), "{report:#}");
    // A recent field, read and enforced (PINGs on upstream HTTP/2
    // connections): nothing to warn.
    assert!(
        !warned.contains(&"spec.trafficPolicy.connectionPool.http.http2KeepAlive"),
        "{report:#}"
    );
}

/// `kubectl get -o yaml` prints a `List`; its items are named by index.
#[test]
fn kubernetes_lists_are_read_item_by_item() {
    let yaml = r#"apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: ok, namespace: default, uid: 1b2c, resourceVersion: "77"}
  spec:
    hosts: [reviews]
    http: [{route: [{destination: {host: reviews}}]}]
  status: {}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: broken, namespace: default}
  spec:
    hosts: [reviews]
    http:
    - route:
      - {destination: {host: reviews, subset: v1}, weight: 0}
      - {destination: {host: reviews, subset: v2}, weight: 0}
"#;
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "{report:#}");
    let e = errors[0];
    assert_eq!(e["document"], 1);
    assert_eq!(e["item"], 1);
    assert_eq!(e["resource"], "VirtualService default/broken");
    assert_eq!(e["field"], "spec.http[0].route");
    assert_eq!(e["line"], 18, "the line of the field in the file");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("weights are relative"),
        "says what to write instead: {e}"
    );
}

#[test]
fn exit_status_says_valid_invalid_or_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("nested/bad.yaml");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&good, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n").unwrap();
    std::fs::write(&bad, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews, subsets: [{name: A}]}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a config").unwrap();
    let (g, b) = (good.to_str().unwrap(), bad.to_str().unwrap());
    assert_eq!(run(&[g], "").0, 0);
    assert_eq!(
        run(&["-f", g, "-f", b], "").0,
        1,
        "istioctl's -f spelling, repeated"
    );
    let (code, out) = run(&[dir.path().to_str().unwrap()], "");
    assert_eq!(code, 1, "a directory is read recursively: {out}");
    assert!(
        out.contains("nested/bad.yaml: invalid (1 error)") && !out.contains("notes.txt"),
        "{out}"
    );
    assert!(
        out.contains("2 files: 1 valid, 1 invalid, 0 unreadable"),
        "{out}"
    );
    let missing = dir.path().join("missing.yaml");
    let (code, out) = run(&[g, missing.to_str().unwrap(), b], "");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("missing.yaml: unreadable"), "{out}");
    assert_eq!(run(&[], "").0, 2, "no input named");
}

/// Errors and warnings read the same in both outputs: the text line is the
/// JSON record's parts in order.
#[test]
fn text_and_json_say_the_same() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n  exportTo: [\".\"]\n  http:\n  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 1, retryRemoteLocalities: true}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec: {host: reviews, subsets: [{name: Bad}]}\n";
    let (_, text) = run(&["-"], yaml);
    let (_, report) = run_json(&["-"], yaml);
    let diagnostics = report["diagnostics"].as_array().unwrap();
    assert!(diagnostics.len() >= 3, "{report:#}");
    for d in diagnostics {
        let line = format!(
            "{}: <stdin>: document {} ({}, line {}): {}: {}",
            d["severity"].as_str().unwrap(),
            d["document"],
            d["resource"].as_str().unwrap(),
            d["line"],
            d["field"].as_str().unwrap(),
            d["message"].as_str().unwrap(),
        );
        assert!(text.lines().any(|l| l == line), "{line}\nnot in\n{text}");
    }
}

/// A file with an Agent document is checked as that agent's config: the
/// agent's context counts (ISTIO_MUTUAL needs the Agent's identity).
#[test]
fn an_agent_file_is_checked_in_the_agents_context() {
    let yaml = "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: productpage-v1, namespace: default}\nspec:\n  service: productpage\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n";
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["files"][0]["agent"], true);
    let errors = errors(&report);
    assert!(
        errors
            .iter()
            .any(|e| e["field"] == "spec.trafficPolicy.tls.mode"
                && e["message"].as_str().unwrap().contains("spec.identity")),
        "{report:#}"
    );
    // The same DestinationRule alone is a valid Istio resource.
    let plain = yaml.split("---\n").nth(1).unwrap();
    assert_eq!(run(&["-"], plain).0, 0);
}

#[test]
fn a_gateway_file_is_checked_in_the_gateways_context() {
    let bookinfo = std::fs::read_to_string(
        corpus("samples").join("bookinfo/networking/bookinfo-gateway.yaml"),
    )
    .unwrap();
    let boot = "apiVersion: tracemesh.io/v1\nkind: IngressGateway\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  labels: {istio: ingressgateway}\n  credentialDirectory: /nonexistent/credentials\n---\n";
    let (code, report) = run_json(&["-"], &format!("{boot}{bookinfo}"));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["files"][0]["gateway"], true);
    assert_eq!(report["files"][0]["agent"], false);
    // An HTTPS server whose credential is not on disk names the file.
    let https = "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: secure}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n    tls: {mode: SIMPLE, credentialName: bookinfo-credential}\n";
    let (code, report) = run_json(&["-"], &format!("{boot}{bookinfo}{https}"));
    assert_eq!(code, 1, "{report:#}");
    assert!(
        errors(&report)
            .iter()
            .any(|e| e["field"] == "spec.servers[0].tls"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("/nonexistent/credentials/istio-system/bookinfo-credential/tls.crt")),
        "{report:#}"
    );
}

/// A refused mesh config is reported by its own error alone: the
/// AuthorizationPolicy and Telemetry that name its providers are not also
/// told that no such provider exists (its providers are unknown, not
/// missing). Here the error is Envoy's: `includeRequestBodyInCheck` needs
/// `maxRequestBytes`, and the message says it is required.
#[test]
fn a_refused_mesh_config_is_reported_by_its_own_error_alone() {
    let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: reviews-v1, namespace: default}
spec:
  service: reviews
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp:
        service: authz.default.svc.cluster.local
        port: 8000
        includeRequestBodyInCheck: {allowPartialMessage: true}
    - {name: otel, opentelemetry: {service: otel.default.svc.cluster.local, port: 4317}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: default}
spec:
  tracing: [{providers: [{name: otel}]}]
"#;
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "the mesh config's error alone: {report:#}");
    let error = errors[0];
    assert_eq!(error["document"], 2, "{error:#}");
    assert_eq!(
        error["field"],
        "data.mesh.extensionProviders[0].envoyExtAuthzHttp.includeRequestBodyInCheck.maxRequestBytes"
    );
    assert!(
        error["message"].as_str().unwrap().contains("is required"),
        "{error:#}"
    );
    // The line inside the `mesh: |-` block where the field is missing:
    // `includeRequestBodyInCheck`'s own, not the `mesh:` line.
    let line = yaml
        .lines()
        .position(|l| l.contains("includeRequestBodyInCheck"))
        .unwrap()
        + 1;
    assert_eq!(error["line"], line, "{error:#}");
    assert!(
        !report.to_string().contains("no extension provider"),
        "{report:#}"
    );
}

/// An IPv4-mapped IPv6 block in an AuthorizationPolicy never matches (IPv4
/// peers are matched as IPv4, as Envoy matches them): valid, but warned,
/// with the IPv4 block to write instead.
#[test]
fn an_ipv4_mapped_block_is_warned_with_what_to_write() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: fence, namespace: default}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {ipBlocks: [\"::ffff:127.0.0.9/128\", \"10.0.0.0/8\"]}}]\n";
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 0, "{report:#}");
    let warnings = findings(&report, "warning");
    assert_eq!(warnings.len(), 1, "{report:#}");
    assert_eq!(
        warnings[0]["field"],
        "spec.rules[0].from[0].source.ipBlocks[0]"
    );
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("write \"127.0.0.9/32\""),
        "{report:#}"
    );
}

/// YAML that does not parse inside a `mesh: |` block is reported at
/// `data.mesh`, with the line of the fault in the file.
#[test]
fn bad_yaml_in_a_mesh_block_names_its_line_in_the_file() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    rootNamespace: istio-system\n    extensionProviders: [a, b: c: d]\n    x: 1\n";
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "{report:#}");
    assert_eq!(errors[0]["field"], "data.mesh");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the mesh config is not YAML"),
        "{message}"
    );
    assert!(message.contains("(line 7,"), "{message}");
}

/// Every fault of a document is named at once, not only serde's first:
/// here three fields of an Agent document.
#[test]
fn every_fault_of_a_document_is_named_at_once() {
    let yaml = "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: reviews-v1, namespace: default}\nspec:\n  service: reviews\n  downstream: {idleTimeout: -1s, streamIdleTimeout: -1s}\n  concurrency: x\n";
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    let fields = error_fields(&report);
    assert_eq!(
        fields,
        [
            "spec.concurrency",
            "spec.downstream.idleTimeout",
            "spec.downstream.streamIdleTimeout"
        ],
        "{report:#}"
    );
    // A required field of the wrong type is named once, not again as missing.
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: [reviews]\n";
    let (code, report) = run_json(&["-"], rule);
    assert_eq!(code, 1, "{report:#}");
    let errors = errors(&report);
    assert_eq!(errors.len(), 1, "{report:#}");
    assert_eq!(errors[0]["field"], "spec.host");
}

/// A VirtualService destination that leads nowhere for the traffic its
/// rule takes is warned with the reason, not as an unknown service: a
/// subset no DestinationRule defines, a port the service lacks, a
/// multi-port service with no port named for a TCP port it lacks; an
/// IPv4-mapped subnet in a TCP match, which never matches; `sourceSubnet`,
/// which Istio's sidecars ignore.
#[test]
fn destinations_that_lead_nowhere_are_warned_with_the_reason() {
    let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: sleep-v1, namespace: default}
spec:
  service: sleep
  labels: {app: sleep, version: v1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}, {number: 9001, name: tcp-2, protocol: TCP}, {number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alt, namespace: default}
spec:
  hosts: [alt.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 7000, name: tcp, protocol: TCP}, {number: 7001, name: tcp-2, protocol: TCP}]
  endpoints: [{address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo, namespace: default}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  http:
  - route: [{destination: {host: tcp-echo, port: {number: 8081}}}]
  tcp:
  - match: [{port: 9000, destinationSubnets: ["::ffff:127.0.0.5/128"]}]
    route: [{destination: {host: tcp-echo, subset: v9}}]
  - match: [{port: 9000, sourceSubnet: 10.0.0.0/8}]
    route: [{destination: {host: tcp-echo, port: {number: 9999}, subset: v1}}]
  - route: [{destination: {host: alt}}]
"#;
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 0, "{report:#}");
    let warned = |field: &str, text: &str| {
        let found = findings(&report, "warning").into_iter().any(|w| {
            w["field"] == field && w["message"].as_str().unwrap_or_default().contains(text)
        });
        assert!(found, "no warning at {field} saying {text:?}: {report:#}");
    };
    warned(
        "spec.tcp[0].route[0].destination",
        "subset \"v9\" of tcp-echo.default.svc.cluster.local is not defined by a DestinationRule; connections are closed",
    );
    warned(
        "spec.tcp[1].route[0].destination",
        "tcp-echo.default.svc.cluster.local has no port 9999 (its ports: ",
    );
    warned(
        "spec.tcp[2].route[0].destination",
        "alt.default.svc.cluster.local has several ports (7000, 7001) and none is 9000; name one in destination.port; connections are closed",
    );
    warned(
        "spec.http[0].route[0].destination",
        "tcp-echo.default.svc.cluster.local has no port 8081",
    );
    warned(
        "spec.tcp[0].match[0].destinationSubnets[0]",
        "write \"127.0.0.5/32\"",
    );
    // Istio's sidecars ignore sourceSubnet; so does the agent, and says so.
    warned(
        "spec.tcp[1].match[0].sourceSubnet",
        "accepted but not enforced",
    );
}

/// The cap on stalled HTTP/2 streams is named when out of range.
#[test]
fn a_cap_on_stalled_streams_out_of_range_is_named() {
    for cap in ["0", "1048577"] {
        let yaml = format!(
            "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {{name: reviews-v1, namespace: default}}\nspec:\n  service: reviews\n  overload: {{maxStalledStreams: {cap}}}\n"
        );
        let (code, report) = run_json(&["-"], &yaml);
        assert_eq!(code, 1, "{report:#}");
        let errors = errors(&report);
        assert_eq!(errors.len(), 1, "{report:#}");
        assert_eq!(errors[0]["field"], "spec.overload.maxStalledStreams");
        let message = errors[0]["message"].as_str().unwrap();
        assert!(message.contains("between 1 and 1048576"), "{message}");
    }
}

/// The IngressGateway's `downstream` and `overload` are checked as the
/// Agent's, and named in the gateway's document.
#[test]
fn a_gateways_bounds_out_of_range_are_named() {
    let yaml = "apiVersion: tracemesh.io/v1\nkind: IngressGateway\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  labels: {istio: ingressgateway}\n  downstream: {streamIdleTimeout: 48h}\n  overload: {maxStalledStreams: 0}\n";
    let (code, report) = run_json(&["-"], yaml);
    assert_eq!(code, 1, "{report:#}");
    let fields = error_fields(&report);
    assert_eq!(
        fields,
        [
            "spec.downstream.streamIdleTimeout",
            "spec.overload.maxStalledStreams"
        ],
        "{report:#}"
    );
    for error in errors(&report) {
        assert_eq!(
            error["resource"], "IngressGateway istio-system/istio-ingressgateway",
            "{report:#}"
        );
        assert_eq!(error["document"], 1, "{report:#}");
    }
}

/// A DestinationRule's TLS files must hold what they name: an empty,
/// truncated or non-PEM file is an error naming the field and the file.
/// (It was accepted, and every connection it secured then failed: a CA
/// bundle caught half-written by a reload broke traffic until its write
/// ended, where the config in force should have stayed.)
#[test]
fn tls_files_that_hold_no_certificate_or_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("empty.pem", ""),
        ("text.pem", "not a certificate\n"),
        (
            "truncated.pem",
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        // In an agent's file, where the rule's files are read.
        let yaml = format!(
            "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {{name: app-v1, namespace: default}}\nspec:\n  service: app\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec:\n  host: api.example.com\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: \"{}\"}}}}\n",
            file.display()
        );
        let (code, report) = run_json(&["-"], &yaml);
        assert_eq!(code, 1, "{name}: {report}");
        assert_eq!(
            error_fields(&report),
            ["spec.trafficPolicy.tls.caCertificates"],
            "{name}: {report}"
        );
        let message = errors(&report)[0]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(name), "{name}: {message}");
    }
}
