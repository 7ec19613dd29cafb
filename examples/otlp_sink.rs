//! A minimal OTLP/gRPC trace endpoint for benchmarks: accepts every export,
//! keeps nothing but counts, so proxies under test pay the full cost of
//! exporting spans while the sink itself costs next to nothing.
//!
//! `cargo run --release --example otlp_sink -- [ADDR]` (default
//! 127.0.0.1:4317). Prints `otlp sink ready addr=...` when listening, the
//! span count per `service.name` every second it changes, and the final
//! count on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// Spans received per `service.name`.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    fn render(&self) -> (u64, String) {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let total = counts.values().sum();
        let per_service: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
        (total, per_service.join(" "))
    }
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "unknown".to_owned());
            let spans: usize = resource_spans
                .scope_spans
                .iter()
                .map(|s| s.spans.len())
                .sum();
            *counts.entry(service).or_default() += spans as u64;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp sink ready addr={}", listener.local_addr()?);
    let counts = Counts::default();
    let reporter = counts.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (total, per_service) = reporter.render();
            if total != last {
                eprintln!("otlp sink spans={total} {per_service}");
                last = total;
            }
        }
    });
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    // Proxies batch spans; let a batch of any size through.
    let service = TraceServiceServer::new(counts.clone()).max_decoding_message_size(64 << 20);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await?;
    let (total, per_service) = counts.render();
    eprintln!("otlp sink stopped spans={total} {per_service}");
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
