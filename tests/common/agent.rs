//! Runs the real `tracemesh agent` binary on a config written to a temp dir,
//! waits for its "agent ready" line and reads the bound addresses from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{Process, field};

/// A running agent process; killed when dropped. Its admin address, admin
/// API, output and process id are read through [`Process`].
pub struct Agent {
    process: Process,
    /// Outbound HTTP listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Outbound TCP listeners.
    pub outbound_tcp: Vec<SocketAddr>,
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

impl Agent {
    /// Starts an agent on `yaml` and waits until it is ready.
    pub fn start(yaml: &str) -> Agent {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("agent did not start: {e}"))
    }

    /// Starts an agent; `Err` carries its stderr when it exits instead.
    pub fn try_start(yaml: &str) -> Result<Agent, String> {
        Self::try_start_with(yaml, |_| Command::new(binary()))
    }

    /// Starts an agent with `env` added to its environment and waits until
    /// it is ready.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Agent {
        Self::try_start_with(yaml, |_| {
            let mut command = Command::new(binary());
            command.envs(env.iter().copied());
            command
        })
        .unwrap_or_else(|e| panic!("agent did not start: {e}"))
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
        let (process, line) = Process::start_until_ready(command)?;
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
            outbound_tcp,
            process,
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

    /// Waits up to 30 s until the agent has loaded config version
    /// `version` (its `tracemesh_agent_config_version` gauge).
    pub async fn wait_for_config_version(&self, version: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .metrics()
            .await
            .sum("tracemesh_agent_config_version", &[])
            < version
        {
            assert!(
                Instant::now() < deadline,
                "config version {version} never loaded: {:?}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the config file in one step, as editors and ConfigMap
    /// updates do.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
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

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// Waits up to `limit` for the agent to exit (after
    /// [`Process::send_sigterm`]), and returns its status.
    pub fn wait_exit(self, limit: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(limit)
    }
}

impl std::ops::Deref for Agent {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
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
