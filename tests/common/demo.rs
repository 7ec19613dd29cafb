//! Runs the real `tracemesh demo` binary on free ports with its store in a
//! temp dir, and reads its machine-readable `demo ready` and `demo done`
//! lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generous: a debug build on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running demo.
pub struct Demo {
    child: Child,
    /// Everything it printed on stdout so far.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Everything it logged on stderr so far.
    stderr: Arc<Mutex<Vec<String>>>,
    /// The `demo ready` line's fields (`ui`, `productpage`, `data_dir`, `prometheus_config`).
    pub ready: HashMap<String, String>,
    ready_at: u64,
    done_at: Arc<Mutex<u64>>,
    dir: Option<tempfile::TempDir>,
}

/// A demo that has exited.
pub struct Finished {
    /// Its stdout, line by line.
    pub stdout: Vec<String>,
    /// The `demo done` line's fields (`requests`, `qps`, `p99_ms`, ...).
    pub done: HashMap<String, f64>,
    /// When the `demo ready` line came (the load starts right after), ns
    /// since the epoch.
    pub ready_at: u64,
    /// When the `demo done` line came (right after the load's last
    /// answer), ns since the epoch.
    pub done_at: u64,
    dir: tempfile::TempDir,
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pump(
    reader: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<String>>,
    done_at: Arc<Mutex<u64>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if line.starts_with("demo ready ")
                && let Some(tx) = &ready
            {
                let _ = tx.send(line.clone());
            }
            if line.starts_with("demo done ") {
                *done_at.lock().unwrap() = now_nanos();
            }
            lines.lock().unwrap().push(line);
        }
    });
}

impl Demo {
    /// Starts `tracemesh demo --ui-port 0 --data-dir <temp> ARGS` and waits
    /// for its ready line.
    pub fn start(args: &[&str]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
            .args(["demo", "--ui-port", "0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracemesh demo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let done_at = Arc::new(Mutex::new(0));
        pump(
            child.stdout.take().unwrap(),
            stdout.clone(),
            Some(tx),
            done_at.clone(),
        );
        pump(
            child.stderr.take().unwrap(),
            stderr.clone(),
            None,
            Arc::new(Mutex::new(0)),
        );
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "demo not ready\nstdout:\n{}\nstderr:\n{}",
                    stdout.lock().unwrap().join("\n"),
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        Demo {
            child,
            stdout,
            stderr,
            ready: fields(&line),
            ready_at: now_nanos(),
            done_at,
            dir: Some(dir),
        }
    }

    /// The demo's data directory (its span store).
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.ready["data_dir"])
    }

    /// The demo's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (what Ctrl-C or a service manager sends) and waits
    /// for a clean stop.
    pub fn terminate(self, limit: Duration) -> Finished {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(limit)
    }

    /// Waits for the demo to end by itself (its `--duration`), and checks
    /// that it stopped cleanly.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("demo still running after {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The pumps end at EOF, right after the exit.
        let stdout = loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.iter().any(|l| l == "demo stopped") || !status.success() {
                break lines;
            }
            if std::time::Instant::now() > deadline {
                panic!("no 'demo stopped' line\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "demo exited with {status}\n{}",
            self.log()
        );
        let done = stdout
            .iter()
            .find(|l| l.starts_with("demo done "))
            .map(|l| {
                fields(l)
                    .into_iter()
                    .map(|(k, v)| (k, v.parse().unwrap()))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no 'demo done' line\n{}", self.log()));
        Finished {
            stdout,
            done,
            ready_at: self.ready_at,
            done_at: *self.done_at.lock().unwrap(),
            dir: self.dir.take().unwrap(),
        }
    }

    fn log(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    /// The span store the demo left.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The temp dir holding everything.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}
