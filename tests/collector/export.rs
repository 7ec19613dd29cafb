//! Export: a second collector receives the first one's spans over OTLP;
//! while the second is down the first keeps ingesting, and delivers once
//! it is back.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::harness::{
    Collector, batch, eventually, now_nanos, random_trace_id, runtime, wait_for_trace,
};

fn send(url: String, trace_id: tracemesh_collector::ids::TraceId) {
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        client
            .export(batch("exported", trace_id, 20, now_nanos()))
            .await
            .unwrap();
    });
}

#[test]
fn spans_reach_a_second_collector_even_across_its_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = Collector::start(dir_b.path(), &["--commit-interval", "100ms"]);
    let b_grpc = b.otlp_grpc.to_string();
    let a = Collector::start(
        dir_a.path(),
        &[
            "--commit-interval",
            "100ms",
            "--export-otlp-grpc",
            &b.grpc_url(),
        ],
    );

    let first = random_trace_id();
    send(a.grpc_url(), first);
    let at_a = wait_for_trace(dir_a.path(), first, 20);
    let at_b = wait_for_trace(dir_b.path(), first, 20);
    assert_eq!(
        at_a.spans, at_b.spans,
        "the second collector stores the same spans"
    );

    b.stop();
    let second = random_trace_id();
    send(a.grpc_url(), second);
    wait_for_trace(dir_a.path(), second, 20);

    let b = Collector::start(
        dir_b.path(),
        &["--commit-interval", "100ms", "--otlp-grpc", &b_grpc],
    );
    let delivered = wait_for_trace(dir_b.path(), second, 20);
    assert_eq!(delivered.spans.len(), 20);
    let metrics = eventually("exporter counted the delivery", || {
        let metrics = a.metrics();
        metrics
            .lines()
            .any(|l| {
                l.starts_with("tracemesh_collector_exporter_sent_spans_total") && l.ends_with(" 40")
            })
            .then_some(metrics)
    });
    let dropped = metrics
        .lines()
        .filter(|l| l.starts_with("tracemesh_collector_exporter_dropped_spans_total{"))
        .any(|l| !l.ends_with(" 0"));
    assert!(
        !dropped,
        "nothing dropped within the queue limit: {metrics}"
    );
    a.stop();
    b.stop();
}

/// A collector on `data_dir` with one exporter, `exporter` (a YAML flow
/// mapping of the config file's `exporters` list), its config file written
/// in `config_dir`.
fn exporting(
    data_dir: &std::path::Path,
    config_dir: &std::path::Path,
    exporter: &str,
) -> Collector {
    let config = config_dir.join("collector.yaml");
    std::fs::write(&config, format!("exporters:\n- {exporter}\n")).unwrap();
    Collector::start(
        data_dir,
        &[
            "--commit-interval",
            "100ms",
            "--config",
            config.to_str().unwrap(),
        ],
    )
}

/// A relay in front of `behind` whose first connection can be silenced:
/// nothing passes either way, but both sockets stay open (so TCP still
/// acknowledges what is sent), as when a receiver's node goes without a
/// FIN or RST. Later connections pass bytes. Returns its address, the
/// silencer and the count of connections accepted.
async fn silenceable_relay(
    behind: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<tokio::sync::Notify>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let silence = Arc::new(tokio::sync::Notify::new());
    let accepted = Arc::new(AtomicUsize::new(0));
    let (silenced, counted) = (silence.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            let silenced = silenced.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(behind).await.unwrap();
                let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                if !first {
                    let _ = relay.await;
                    return;
                }
                tokio::select! {
                    _ = relay => return,
                    () = silenced.notified() => {}
                }
                std::future::pending::<()>().await;
                drop((client, server));
            });
        }
    });
    (front, silence, accepted)
}

/// A connection to the receiver that stops answering is pinged once an
/// export has waited on it with no response frame for half the exporter's
/// timeout (at least a second), and closed unanswered:
/// spans sent after it reach the receiver over a new connection. Before,
/// every attempt on it timed out for as long as it stayed open.
#[test]
fn spans_go_on_over_a_new_connection_when_the_old_one_answers_nothing() {
    use std::sync::atomic::Ordering;
    let (dir_a, dir_b, dir_config) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let b = Collector::start(dir_b.path(), &["--commit-interval", "100ms"]);
    let relays = runtime();
    let (front, silence, accepted) = relays.block_on(silenceable_relay(b.otlp_grpc));
    let a = exporting(
        dir_a.path(),
        dir_config.path(),
        &format!(
            "{{protocol: otlp_grpc, endpoint: \"http://{front}\", timeout: 1s, compression: none}}"
        ),
    );

    let first = random_trace_id();
    send(a.grpc_url(), first);
    wait_for_trace(dir_b.path(), first, 20);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    silence.notify_one();
    let second = random_trace_id();
    send(a.grpc_url(), second);
    let delivered = wait_for_trace(dir_b.path(), second, 20);
    assert_eq!(delivered.spans.len(), 20);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "over a new connection");
    a.stop();
    b.stop();
}

/// Spans a backend answers as rejected (OTLP's partial success, with a
/// success status) are lost: counted as failed, not as sent, over both
/// protocols. The backend is a second collector that keeps one hour where
/// the first keeps seven days, so it refuses the spans of three hours ago
/// that the first accepted, and takes the recent ones of the same request.
#[test]
fn spans_a_backend_rejects_are_counted_failed_not_sent() {
    for protocol in ["otlp_grpc", "otlp_http"] {
        let (dir_a, dir_b, dir_config) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let b = Collector::start(
            dir_b.path(),
            &[
                "--commit-interval",
                "100ms",
                "--partition",
                "1h",
                "--retention",
                "1h",
            ],
        );
        let endpoint = match protocol {
            "otlp_grpc" => b.otlp_grpc,
            _ => b.otlp_http,
        };
        let a = exporting(
            dir_a.path(),
            dir_config.path(),
            &format!(
                "{{protocol: {protocol}, endpoint: \"http://{endpoint}\", compression: none}}"
            ),
        );

        let (recent, old) = (random_trace_id(), random_trace_id());
        let three_hours = 3 * 3600 * 1_000_000_000;
        let mut request = batch("exported", recent, 20, now_nanos());
        request
            .resource_spans
            .extend(batch("exported", old, 20, now_nanos() - three_hours).resource_spans);
        runtime().block_on(async {
            let mut client = TraceServiceClient::connect(a.grpc_url()).await.unwrap();
            let answer = client.export(request).await.unwrap().into_inner();
            assert_eq!(
                answer.partial_success, None,
                "the first collector takes all 40"
            );
        });
        wait_for_trace(dir_b.path(), recent, 20);
        let counted = |metrics: &str, name: &str| {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let metrics = eventually(&format!("{protocol}: the rejected spans counted"), || {
            let metrics = a.metrics();
            (counted(&metrics, "tracemesh_collector_exporter_failed_spans_total") == 20.0)
                .then_some(metrics)
        });
        assert_eq!(
            counted(&metrics, "tracemesh_collector_exporter_sent_spans_total"),
            20.0,
            "{protocol}: only the spans the backend kept are sent: {metrics}"
        );
        let log = a.stop();
        assert!(
            log.contains("backend rejected data")
                && log.contains("older than the retention window"),
            "{protocol}: the loss is logged with the backend's reason: {log}"
        );
        b.stop();
    }
}
