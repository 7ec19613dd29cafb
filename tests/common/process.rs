//! A running `tracemesh agent` or `tracemesh gateway` process: spawned,
//! waited on until it prints its ready line, its stderr and stdout kept as
//! lines, killed when dropped. The test agent and the test gateway wrap it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tracemesh process that said it is ready; killed when dropped.
pub struct Process {
    child: Child,
    /// Its admin listener (`admin=` in the ready line).
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// The value of `key=` in a ready line.
pub(super) fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[start..].split(' ').next()?.to_owned())
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

impl Process {
    /// Spawns `command` (a `tracemesh agent` or `gateway`) and waits up to
    /// 60 s for its ready line (`agent ready` or `gateway ready`), which it
    /// returns with the process; `Err` carries its stderr when it exits
    /// instead. Logs at `info` unless `command` sets `RUST_LOG`.
    pub fn start_until_ready(mut command: Command) -> Result<(Process, String), String> {
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
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
        let admin = field(&line, "admin")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("admin in {line}"));
        let process = Process {
            child,
            admin,
            stderr,
            stdout,
        };
        Ok((process, line))
    }

    /// Lines the process wrote to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Lines the process wrote to stdout so far (access log).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout has at least `n` lines (or 20 s pass).
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

    /// Waits up to 60 s for a stderr line holding one of `texts`, and
    /// returns it (panics, showing stderr, when none comes).
    pub fn wait_stderr_line(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = self.stderr();
            if let Some(line) = lines
                .into_iter()
                .find(|l| texts.iter().any(|t| l.contains(t)))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {texts:?} in {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs an admin path; asserts it answers 200.
    pub async fn admin_get(&self, path: &str) -> String {
        let (status, body) = super::client::raw_get(self.admin, path).await;
        assert_eq!(status, 200, "admin {path}: {body}");
        body
    }

    /// The process's metrics, parsed (and so checked) as Prometheus text.
    pub async fn metrics(&self) -> super::metrics::Scrape {
        super::metrics::Scrape::parse(&self.admin_get("/metrics").await)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGTERM and returns at once: the process drains meanwhile.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM: {status}");
    }

    /// Waits up to `limit` for the process to exit, and returns its status.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running {limit:?} after it was told to stop:\n{}",
                self.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
