//! Starts real `tracemesh collector` processes on port 0 and talks to them
//! over real sockets: the ready line gives the addresses, plain HTTP/1.1 and
//! gRPC clients send, and the store is read with the collector crate's own
//! read API.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, SpanReader, Trace};

/// Generous: the machine may be loaded (2 cores, debug build).
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A running collector process.
pub struct Collector {
    child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Bound addresses from the ready line.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Zipkin.
    pub zipkin: SocketAddr,
    /// `/metrics`.
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

impl Collector {
    /// Starts `tracemesh collector --data-dir DIR` on port 0 everywhere,
    /// plus `extra` flags, and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let local = "127.0.0.1:0".to_owned();
        let mut args: Vec<String> = vec![
            "collector".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        for flag in ["--otlp-grpc", "--otlp-http", "--zipkin", "--http"] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), local.clone()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
            .args(&args)
            .env("RUST_LOG", "warn,tracemesh_collector=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracemesh collector");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("collector ready") {
                    let _ = ready_tx.send(line.clone());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let line = match ready_rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("collector not ready; log:\n{}", log.lock().unwrap());
            }
        };
        Self {
            child,
            data_dir: data_dir.to_owned(),
            otlp_grpc: field(&line, "otlp_grpc").expect("otlp_grpc address"),
            otlp_http: field(&line, "otlp_http").expect("otlp_http address"),
            zipkin: field(&line, "zipkin").expect("zipkin address"),
            http: field(&line, "http").expect("http address"),
            log,
        }
    }

    /// Its resident memory, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(
            exit.success(),
            "collector exited with {exit}; log:\n{}",
            self.log()
        );
        self.log()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> String {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
        self.log()
    }

    /// `http://` URL of its OTLP/gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.otlp_grpc)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let response = http_request(self.http, "GET", "/metrics", &[], &[]);
        assert_eq!(response.status, 200);
        String::from_utf8(response.body).unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name` (with its labels, as rendered) in a
/// `/metrics` text; panics when absent.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {metrics}"))
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens the store read-only and waits until `trace_id` has `spans` spans.
pub fn wait_for_trace(data_dir: &Path, trace_id: TraceId, spans: usize) -> Trace {
    eventually(&format!("trace {trace_id} with {spans} spans"), || {
        let reader = SpanReader::open(data_dir).ok()?;
        let trace = reader.trace(trace_id).ok()??;
        (trace.spans.len() >= spans).then_some(trace)
    })
}

/// Spans in the store matching `query` (opened read-only, now).
pub fn count(data_dir: &Path, query: &SpanQuery) -> u64 {
    SpanReader::open(data_dir)
        .and_then(|r| r.count(query))
        .unwrap_or(0)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A fresh random trace id.
pub fn random_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    for chunk in id.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    TraceId(id)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A batch of `spans` spans of one trace for `service`, started at `start`.
pub fn batch(
    service: &str,
    trace_id: TraceId,
    spans: usize,
    start: u64,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: trace_id.0.to_vec(),
                        span_id: ((i as u64 + 1) | (fastrand::u64(..) << 16))
                            .to_be_bytes()
                            .to_vec(),
                        name: format!("op-{}", i % 4),
                        kind: 2,
                        start_time_unix_nano: start + i as u64,
                        end_time_unix_nano: start + i as u64 + 1_000_000,
                        attributes: vec![
                            string("http.request.method", "GET"),
                            string("batch.index", &i.to_string()),
                        ],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A multi-thread runtime for a test's async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
