//! The Prometheus side of the demo: every scrape target (each sidecar's
//! admin `/metrics`, the collector's `/metrics`), written as file-based
//! service discovery next to the scrape config shipped in `dashboards/`,
//! so `prometheus --config.file=<data-dir>/prometheus/prometheus.yml`
//! scrapes the running demo as it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::topology::NAMESPACE;

/// The scrape config for the demo (`dashboards/prometheus.yml`).
const PROMETHEUS_CONFIG: &str = include_str!("../../dashboards/prometheus.yml");

/// One scrape target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The workload, or `None` for the collector.
    pub workload: Option<&'static str>,
    /// `host:port` serving `/metrics`.
    pub address: SocketAddr,
}

/// One group of Prometheus' file-based service discovery.
#[derive(Serialize)]
struct Group<'a> {
    targets: [String; 1],
    labels: Labels<'a>,
}

#[derive(Serialize)]
struct Labels<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<&'a str>,
    namespace: &'a str,
}

/// Writes `prometheus.yml`, `agents.json` and `collector.json` into `dir`;
/// returns the config's path.
pub fn write(dir: &Path, targets: &[Target]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let groups = |collector: bool| -> Vec<Group<'_>> {
        targets
            .iter()
            .filter(|t| t.workload.is_none() == collector)
            .map(|t| Group {
                targets: [t.address.to_string()],
                labels: Labels {
                    workload: t.workload,
                    namespace: NAMESPACE,
                },
            })
            .collect()
    };
    for (file, collector) in [("agents.json", false), ("collector.json", true)] {
        let path = dir.join(file);
        let json = serde_json::to_string_pretty(&groups(collector))?;
        std::fs::write(&path, json).with_context(|| format!("write {}", path.display()))?;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, PROMETHEUS_CONFIG)
        .with_context(|| format!("write {}", config.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_split_by_job_and_labelled_by_workload() {
        let dir = tempfile::tempdir().unwrap();
        let targets = [
            Target {
                workload: Some("productpage-v1"),
                address: "127.0.0.1:15000".parse().unwrap(),
            },
            Target {
                workload: None,
                address: "127.0.0.1:16686".parse().unwrap(),
            },
        ];
        let config = write(dir.path(), &targets).unwrap();
        assert!(
            std::fs::read_to_string(config)
                .unwrap()
                .contains("agents.json")
        );
        let agents: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("agents.json")).unwrap())
                .unwrap();
        assert_eq!(agents[0]["targets"][0], "127.0.0.1:15000");
        assert_eq!(agents[0]["labels"]["workload"], "productpage-v1");
        let collector: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("collector.json")).unwrap())
                .unwrap();
        assert_eq!(collector[0]["targets"][0], "127.0.0.1:16686");
        assert!(collector[0]["labels"].get("workload").is_none());
    }
}
