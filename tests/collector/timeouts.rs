//! Listener timeouts: connections that never finish their request head,
//! request bodies that stall and connections that send nothing are closed
//! after the configured timeouts, on every listener, instead of being held
//! for minutes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Collector, batch, http_request, now_nanos, random_trace_id, sample};
use prost::Message;

/// Opens a connection and sends `bytes`, leaving the request unfinished.
fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
}

/// Waits until the server closes `stream` (EOF or reset) and returns what
/// it sent before closing; panics past `deadline`.
fn closed_by_server(mut stream: TcpStream, deadline: Instant) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection still open at the deadline");
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

#[test]
fn unfinished_heads_stalled_bodies_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        "listen_timeouts:\n  read_header_timeout: 2s\n  read_body_timeout: 2s\n  idle_timeout: 2s\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let collector = Collector::start(&dir.path().join("data"), &["--config", &config]);
    let idle_rss = collector.rss();

    let started = Instant::now();
    let head =
        b"POST /v1/traces HTTP/1.1\r\nhost: collector\r\ncontent-type: application/x-protobuf\r\n";
    let heads: Vec<TcpStream> = (0..2000).map(|_| open(collector.otlp_http, head)).collect();
    let body = b"POST /v1/traces HTTP/1.1\r\nhost: collector\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000000\r\n\r\n0123456789";
    let bodies: Vec<TcpStream> = (0..1000).map(|_| open(collector.otlp_http, body)).collect();
    let mut silent: Vec<TcpStream> = [
        collector.otlp_http,
        collector.otlp_grpc,
        collector.zipkin,
        collector.http,
    ]
    .into_iter()
    .map(|addr| open(addr, b""))
    .collect();
    // An HTTP/2 client that opens its connection and then acknowledges
    // nothing: the idle close's GOAWAY and PING go unanswered.
    silent.push(open(collector.otlp_grpc, H2_OPENING));
    let grown = collector.rss().saturating_sub(idle_rss);

    // 2 s timeouts; a wide margin for a loaded machine. Without timeouts
    // these were held for minutes.
    let deadline = started + Duration::from_secs(60);
    for stream in heads {
        closed_by_server(stream, deadline);
    }
    for stream in bodies {
        let answer = closed_by_server(stream, deadline);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    for stream in silent {
        closed_by_server(stream, deadline);
    }
    assert!(
        grown < 300 << 20,
        "3000 pending connections took {} MiB",
        grown >> 20
    );

    let metrics = collector.metrics();
    assert!(
        sample(
            &metrics,
            r#"tracemesh_collector_listener_timeouts_total{timeout="read_header"}"#
        ) >= 2000.0
    );
    assert!(
        sample(
            &metrics,
            r#"tracemesh_collector_listener_timeouts_total{timeout="idle"}"#
        ) >= 3.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tracemesh_collector_spans_refused_total{reason="timeout",receiver="otlp_http"}"#
        ),
        1000.0
    );
    // Still serving.
    let request = batch("after-timeouts", random_trace_id(), 3, now_nanos()).encode_to_vec();
    let r = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &request,
    );
    assert_eq!(r.status, 200);
    // Stopping with such a client connected ends all the same (once the
    // collector has answered its preface: the connection is HTTP/2).
    let mut silent = open(collector.otlp_grpc, H2_OPENING);
    let mut settings = [0u8; 9];
    silent
        .read_exact(&mut settings)
        .expect("the server's SETTINGS");
    assert_eq!(settings[3], 4, "a SETTINGS frame first");
    stops(collector);
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Stops `collector`, failing if that takes past a minute (an idle
/// connection's graceful close is bounded at 5 s).
fn stops(collector: Collector) {
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        collector.stop();
        let _ = done.send(());
    });
    stopped
        .recv_timeout(Duration::from_secs(60))
        .expect("the collector stopped");
}
