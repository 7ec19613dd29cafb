//! Runs the real `tracemesh agent` binary on a config written to a temp dir,
//! waits for its "agent ready" line and reads the bound addresses from it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running agent process; killed when dropped.
pub struct Agent {
    child: Child,
    /// Outbound HTTP listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Outbound TCP listeners.
    pub outbound_tcp: Vec<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The config file.
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

/// The tracemesh binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tracemesh")
}

/// Writes `yaml` to a fresh temp dir and returns (dir, path).
pub fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

fn pump<R: std::io::Read + Send + 'static>(
    reader: R,
    lines: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &ready
                && (line.contains("agent ready") || line.contains("gateway ready"))
            {
                let _ = tx.send(line.clone());
            }
            lines.lock().unwrap().push(line);
        }
    });
}

pub(super) fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[start..].split(' ').next()?.to_owned())
}

impl Agent {
    /// Starts an agent on `yaml` and waits until it is ready.
    pub fn start(yaml: &str) -> Agent {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("agent did not start: {e}"))
    }

    /// Starts an agent; `Err` carries its stderr when it exits instead.
    pub fn try_start(yaml: &str) -> Result<Agent, String> {
        Self::try_start_with(yaml, |_| Command::new(binary()))
    }

    /// Starts an agent in a network-namespace pod under the proxy uid/gid
    /// (`tracemesh iptables` leaves its connections alone), as a sidecar
    /// container runs it. Its admin address is the pod's loopback.
    pub fn start_in(pod: &super::pods::Pod, uid: u32, yaml: &str) -> Agent {
        Self::try_start_with(yaml, |dir| {
            // The agent's uid reads its config (and the certificates there).
            let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
            pod.command_as(uid, uid, binary())
        })
        .unwrap_or_else(|e| panic!("agent in {} did not start: {e}", pod.name))
    }

    fn try_start_with(yaml: &str, command: impl FnOnce(&Path) -> Command) -> Result<Agent, String> {
        let (dir, path) = write_config(yaml);
        let mut command = command(dir.path());
        command.args(["agent", "--config"]).arg(&path);
        let Started {
            child,
            line,
            stderr,
            stdout,
        } = start_until_ready(command)?;
        let addr = |key| {
            field(&line, key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {line}"))
        };
        let outbound_tcp = field(&line, "outbound_tcp")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("tcp addr"))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Agent {
            outbound: addr("outbound"),
            inbound: addr("inbound"),
            admin: addr("admin"),
            outbound_tcp,
            child,
            stderr,
            stdout,
            config: path,
            _dir: dir,
        })
    }

    /// The JSON access-log line the agent wrote for the request to `path`
    /// (waits up to 30 s for it).
    pub fn access_log_line(&self, path: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.stdout().iter().find_map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).ok()?;
                (entry["path"] == path).then_some(entry)
            });
            if let Some(entry) = found {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "no access log line for {path}: {:?}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the config file in one step, as editors and ConfigMap
    /// updates do.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Lines the agent wrote to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Lines the agent wrote to stdout so far (access log).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout has at least `n` lines.
    pub fn wait_stdout_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.stdout();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes the agent has read through system calls so far (`rchar` in
    /// `/proc/PID/io`: files and sockets alike).
    pub fn bytes_read(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).expect("/proc/PID/io");
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar")
    }

    /// GETs an admin path.
    pub async fn admin_get(&self, path: &str) -> String {
        let (status, body) = super::client::raw_get(self.admin, path).await;
        assert_eq!(status, 200, "admin {path}: {body}");
        body
    }

    /// The agent's metrics, parsed (and so checked) as Prometheus text.
    pub async fn metrics(&self) -> super::metrics::Scrape {
        super::metrics::Scrape::parse(&self.admin_get("/metrics").await)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracemesh process that said it is ready.
pub(super) struct Started {
    pub child: Child,
    /// Its ready line (`agent ready` or `gateway ready`).
    pub line: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// Spawns `command` (a `tracemesh agent` or `gateway`) and waits up to 60 s
/// for its ready line; `Err` carries its stderr when it exits instead.
pub(super) fn start_until_ready(mut command: Command) -> Result<Started, String> {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tracemesh");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    pump(child.stderr.take().unwrap(), stderr.clone(), Some(tx));
    pump(child.stdout.take().unwrap(), stdout.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            break line;
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100)); // let the pump drain stderr
            return Err(format!(
                "exited with {status}:\n{}",
                stderr.lock().unwrap().join("\n")
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "no ready line:\n{}",
                stderr.lock().unwrap().join("\n")
            ));
        }
    };
    Ok(Started {
        child,
        line,
        stderr,
        stdout,
    })
}

/// Runs `tracemesh validate` on `yaml`: (success, stdout).
pub fn validate(yaml: &str) -> (bool, String) {
    let (_dir, path) = write_config(yaml);
    validate_file(&path)
}

/// Runs `tracemesh validate` on a file: (success, stdout).
pub fn validate_file(path: &Path) -> (bool, String) {
    let out = Command::new(binary())
        .arg("validate")
        .arg(path)
        .output()
        .expect("run validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
