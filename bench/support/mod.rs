//! What the benchmarks share: a release `tracemesh collector` on port 0
//! and reading its `/metrics`.

// Each bench uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running collector and its bound addresses.
pub struct Started {
    /// The process.
    pub child: Child,
    /// OTLP/gRPC.
    pub grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// `--http`: `/metrics` and the query API.
    pub http: SocketAddr,
}

/// The `tracemesh` binary benchmarked: this build's, or `BENCH_TRACEMESH`
/// (another build, to measure before and after a change in one run).
pub fn tracemesh() -> String {
    std::env::var("BENCH_TRACEMESH").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tracemesh").into())
}

/// Starts `tracemesh collector --data-dir DATA` on port 0 everywhere, plus
/// `extra` flags, and waits for its ready line.
pub fn start_collector<'a>(data: &Path, extra: impl IntoIterator<Item = &'a str>) -> Started {
    let mut child = Command::new(tracemesh())
        .args(["collector", "--data-dir"])
        .arg(data)
        .args([
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
            "--zipkin",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn,tracemesh_collector=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the collector (cargo bench builds it)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("collector ready"))
        .expect("ready line");
    std::thread::spawn(move || for _ in lines {});
    let addr = |key: &str| -> SocketAddr {
        ready
            .split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{key}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    Started {
        grpc: addr("otlp_grpc"),
        otlp_http: addr("otlp_http"),
        http: addr("http"),
        child,
    }
}

/// One sample from the collector's `/metrics` (0 when absent).
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = stream.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Whether this is `cargo bench` measuring: `cargo test --all-targets` runs
/// bench targets too, and then they only say how to run them.
pub fn measuring(bench: &str) -> bool {
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        println!("{bench} bench: run with `cargo bench --bench {bench}`");
    }
    measuring
}

/// A numeric knob from the environment, `default` when unset or unparsable.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
