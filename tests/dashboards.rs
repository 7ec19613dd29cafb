#![allow(clippy::unwrap_used)]
//! The Grafana dashboards in `dashboards/` against a real Prometheus
//! scraping a real `tracemesh demo`: every PromQL expression of every panel
//! must parse and return series; every dashboard must be valid Grafana
//! dashboard JSON; the provisioning files must name both data sources.

mod common;
#[path = "dashboards/grafana.rs"]
mod grafana;
#[path = "collector/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "dashboards/prometheus.rs"]
mod prometheus;

use std::collections::HashSet;
use std::time::Duration;

use common::demo::Demo;
use grafana::Expression;
use prometheus::Prometheus;

#[test]
fn dashboards_are_valid_grafana_json() {
    let dashboards = grafana::load_all();
    let files: Vec<String> = dashboards
        .iter()
        .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        [
            "collector.json",
            "mesh.json",
            "service.json",
            "workload.json"
        ]
    );
    let problems: Vec<String> = dashboards.iter().flat_map(|d| d.problems()).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let uids: HashSet<&str> = dashboards
        .iter()
        .map(|d| d.json["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids.len(), dashboards.len(), "dashboard uids must differ");
    // Every query variable is one this test (and Grafana) can resolve.
    for dashboard in &dashboards {
        for variable in dashboard.query_variables() {
            assert!(
                variable.query.starts_with("label_values("),
                "{}: {variable:?}",
                dashboard.path.display()
            );
        }
    }
}

#[test]
fn provisioning_names_prometheus_and_tracemesh_as_jaeger() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/provisioning");
    let read = |file: &str| -> serde_json::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    let sources = read("datasources.yaml");
    let sources = sources["datasources"].as_array().unwrap();
    let by_type = |kind: &str| sources.iter().find(|s| s["type"] == kind).unwrap().clone();
    assert!(
        by_type("prometheus")["url"]
            .as_str()
            .unwrap()
            .ends_with(":9090")
    );
    let jaeger = by_type("jaeger");
    assert!(jaeger["url"].as_str().unwrap().ends_with(":16686"));
    assert_eq!(jaeger["uid"], "tracemesh");
    let providers = read("dashboards.yaml");
    assert_eq!(providers["providers"][0]["type"], "file");
    assert!(providers["providers"][0]["options"]["path"].is_string());
}

/// Every value combination of the variables `expr` uses.
fn assignments(
    expr: &Expression,
    values: &std::collections::HashMap<String, Vec<String>>,
) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for name in expr.variables() {
        let options = values
            .get(&name)
            .unwrap_or_else(|| panic!("{}: ${name} has no values", expr.name));
        let mut next = Vec::new();
        for partial in &out {
            for value in options {
                let mut assignment = partial.clone();
                assignment.push((name.clone(), value.clone()));
                next.push(assignment);
            }
        }
        out = next;
    }
    out
}

#[test]
fn every_panel_query_returns_series_from_the_running_demo() {
    // The external OTLP backend the demo's collector exports to, so the
    // exporter panels have an exporter to show.
    let backend_dir = tempfile::tempdir().unwrap();
    let backend = harness::Collector::start(backend_dir.path(), &[]);
    let demo = Demo::start(&[
        "--qps",
        "20",
        "--scenario",
        "failing-reviews-v3",
        "--export-otlp-grpc",
        &format!("http://{}", backend.otlp_grpc),
    ]);
    let config = demo.data_dir().join("prometheus/prometheus.yml");
    let prometheus = Prometheus::start(&config);
    // Seven sidecars, the ingress gateway and the collector.
    let targets = prometheus.wait_for_two_scrapes(9);
    assert!(
        targets.iter().all(|t| t.ends_with("/metrics")),
        "{targets:?}"
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for dashboard in grafana::load_all() {
        let values = dashboard
            .query_variables()
            .into_iter()
            .map(|v| {
                let values = prometheus.label_values(&v.query);
                assert!(!values.is_empty(), "${} has no values", v.name);
                (v.name, values)
            })
            .collect();
        for expr in dashboard.expressions() {
            checked += 1;
            let mut series = false;
            for assignment in assignments(&expr, &values) {
                let promql = expr.substitute(&assignment);
                match prometheus.query(&promql) {
                    Ok(result) if !result.is_empty() => {
                        series = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        failures.push(format!("{}: {promql}: {}", expr.name, error.0));
                        series = true;
                        break;
                    }
                }
            }
            if !series {
                failures.push(format!("{}: no series for {}", expr.name, expr.expr));
            }
        }
    }
    assert!(checked >= 60, "only {checked} expressions");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(prometheus);
    let finished = demo.terminate(Duration::from_secs(120));
    assert!(finished.stdout.iter().any(|l| l == "stopping"));
    backend.stop();
}
