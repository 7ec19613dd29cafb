//! A real Prometheus (Debian's `prometheus` package) on a free loopback
//! port with its storage in a temp dir, and the few HTTP API calls the
//! dashboard test needs.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::http_request;

/// Generous: a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API.
    pub address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _storage: tempfile::TempDir,
}

/// Why a query failed.
#[derive(Debug)]
pub struct QueryError(pub String);

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Percent-encodes a query parameter.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts `prometheus --config.file=CONFIG` and waits until it is ready.
    /// The port is picked free just before; should another process take it
    /// first, Prometheus exits and another port is tried.
    pub fn start(config: &Path) -> Prometheus {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let storage = tempfile::tempdir().unwrap();
            let address = free_port();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", storage.path().display()))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run prometheus (Debian package `prometheus`; .ci/run installs it)");
            let log = Arc::new(Mutex::new(Vec::new()));
            let sink = log.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            let mut prometheus = Prometheus {
                child,
                address,
                log,
                _storage: storage,
            };
            if prometheus.wait_ready() {
                return prometheus;
            }
            failures.push(prometheus.log());
        }
        panic!("prometheus did not start:\n{}", failures.join("\n---\n"));
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if std::net::TcpStream::connect(self.address).is_ok()
                && http_request(self.address, "GET", "/-/ready", &[], b"").status == 200
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// What it logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn get(&self, path: &str) -> Result<Value, QueryError> {
        let response = http_request(self.address, "GET", path, &[], b"");
        let json: Value = serde_json::from_slice(&response.body).map_err(|e| {
            QueryError(format!(
                "{path}: status {} and no JSON ({e}): {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ))
        })?;
        if json["status"] != "success" {
            return Err(QueryError(format!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or("?")
            )));
        }
        Ok(json["data"].clone())
    }

    /// Waits until every target is up and has been scraped at least twice;
    /// returns the targets' scrape URLs.
    pub fn wait_for_two_scrapes(&self, expected_targets: usize) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        loop {
            let data = self.get("/api/v1/targets?state=active").unwrap();
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for target in &targets {
                if target["health"] == "up" {
                    seen.entry(target["scrapeUrl"].as_str().unwrap_or("?").to_owned())
                        .or_default()
                        .insert(target["lastScrape"].as_str().unwrap_or("").to_owned());
                }
            }
            let twice = seen.values().filter(|s| s.len() >= 2).count();
            if targets.len() == expected_targets && twice == expected_targets {
                return seen.into_keys().collect();
            }
            assert!(
                Instant::now() < deadline,
                "targets not scraped twice: {targets:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// An instant query; the result's series.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, QueryError> {
        let data = self.get(&format!("/api/v1/query?query={}", encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of a `label_values([metric, ]label)` variable query.
    pub fn label_values(&self, query: &str) -> Vec<String> {
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unsupported variable query {query:?}"));
        let (matcher, label) = match inner.rsplit_once(',') {
            Some((metric, label)) => (Some(metric.trim()), label.trim()),
            None => (None, inner.trim()),
        };
        let path = match matcher {
            Some(m) => format!("/api/v1/label/{label}/values?match[]={}", encode(m)),
            None => format!("/api/v1/label/{label}/values"),
        };
        let data = self.get(&path).unwrap();
        data.as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
