//! Attribute costs: a span with 100,000 attributes is handled in linear
//! time, OpenTelemetry's span limits (count, key length, value length)
//! bound what one span may carry, recording what they dropped in
//! `dropped_attributes_count`, and a new `service.name` per span does not
//! add series to the span-derived metrics past their cap.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::harness::{Collector, batch, now_nanos, random_trace_id, runtime, wait_for_trace};

fn kv(key: String, value: String) -> KeyValue {
    KeyValue {
        key,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn export(collector: &Collector, request: ExportTraceServiceRequest) -> Duration {
    let url = collector.grpc_url();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url)
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let started = Instant::now();
        client.export(request).await.unwrap();
        started.elapsed()
    })
}

fn config(dir: &std::path::Path, limits: &str) -> String {
    let path = dir.join("collector.yaml");
    std::fs::write(
        &path,
        format!("commit_interval: 100ms\nmax_request_size: 32MiB\nspan_limits: {{{limits}}}\n"),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn a_span_with_100k_attributes_is_handled_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    // Limits raised past the span: every attribute goes through indexing.
    let config = config(dir.path(), "attribute_count_limit: 200000");
    let collector = Collector::start(&dir.path().join("data"), &["--config", &config]);
    let trace = random_trace_id();
    let mut request = batch("many-attributes", trace, 1, now_nanos());
    request.resource_spans[0].scope_spans[0].spans[0].attributes = (0..100_000)
        .map(|i| kv(format!("attribute.{i}"), format!("value {i}")))
        .collect();
    let took = export(&collector, request);
    // Quadratic key merging took 17-24 s in a release build; linear takes
    // well under a second. Wide margin for a loaded debug build.
    assert!(took < Duration::from_secs(20), "acknowledged in {took:?}");
    let stored = wait_for_trace(&dir.path().join("data"), trace, 1);
    assert_eq!(stored.spans[0].span.attributes.len(), 100_000);
    collector.stop();
}

#[test]
fn span_limits_drop_and_count_what_a_span_may_not_carry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config(dir.path(), "");
    let collector = Collector::start(&data, &["--config", &config]);
    let idle = collector.rss();

    // 100,000 attributes on one span: the first 128 are kept.
    let many = random_trace_id();
    let mut request = batch("limited", many, 1, now_nanos());
    request.resource_spans[0].scope_spans[0].spans[0].attributes = (0..100_000)
        .map(|i| kv(format!("attribute.{i}"), "v".into()))
        .collect();
    export(&collector, request);
    // Nine 1 MiB keys and a 1 MiB value: the keys are dropped, the value cut.
    let big = random_trace_id();
    let mut request = batch("limited", big, 1, now_nanos());
    let attributes = &mut request.resource_spans[0].scope_spans[0].spans[0].attributes;
    for i in 0..9u8 {
        attributes.push(kv(
            char::from(b'a' + i).to_string().repeat(1 << 20),
            "v".into(),
        ));
    }
    attributes.push(kv("long.value".into(), "x".repeat(1 << 20)));
    export(&collector, request);

    let stored = wait_for_trace(&data, many, 1);
    let span = &stored.spans[0].span;
    assert_eq!(span.attributes.len(), 128);
    assert_eq!(span.dropped_attributes_count, 100_000 - 128);
    let stored = wait_for_trace(&data, big, 1);
    let span = &stored.spans[0].span;
    assert_eq!(span.dropped_attributes_count, 9);
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == "long.value")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    assert!(
        matches!(value, Some(any_value::Value::StringValue(v)) if v.len() == 16 * 1024),
        "the value is cut to 16 KiB"
    );
    // Nine 1 MiB keys took the collector to 1.25 GB before they were dropped.
    let grown = collector.rss().saturating_sub(idle);
    assert!(grown < 400 << 20, "grew {} MiB", grown >> 20);
    let metrics = collector.metrics();
    for (limit, count) in [
        ("attribute_count", 100_000 - 128),
        ("attribute_key_length", 9),
        ("attribute_value_length", 1),
    ] {
        let line = format!("tracemesh_collector_span_limited_total{{limit=\"{limit}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    collector.stop();
}

/// The samples of `name` on `/metrics`: how many carry labels other than
/// the overflow label, the overflow series' value, and the sum of all.
fn census(metrics: &str, name: &str) -> (usize, Option<f64>, f64) {
    let mut labelled = 0;
    let mut overflow = None;
    let mut sum = 0.0;
    for line in metrics.lines() {
        let Some((labels, value)) = line
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('{')?.rsplit_once("} "))
        else {
            continue;
        };
        let value: f64 = value.parse().unwrap();
        sum += value;
        if labels == r#"otel_metric_overflow="true""# {
            overflow = Some(value);
        } else {
            labelled += 1;
        }
    }
    (labelled, overflow, sum)
}

#[test]
fn span_derived_metrics_fold_new_services_past_their_cap_into_an_overflow_series() {
    // A million service names made /metrics 106 MB (the service graph's
    // series were never capped), and past the span metrics' cap a new
    // service's spans were counted nowhere.
    const CAP: usize = 20;
    let services = 10 * CAP;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!("commit_interval: 100ms\nmax_series_per_metric: {CAP}\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let collector = Collector::start(&data, &["--config", &config.display().to_string()]);
    // Each service calls its own server: a CLIENT and a SERVER span, paired
    // into a service-graph edge.
    let trace = random_trace_id();
    let start = now_nanos();
    let resource_spans = (0..services)
        .flat_map(|i| {
            let client_id = (2 * i as u64 + 1).to_be_bytes().to_vec();
            let span = |kind: i32, span_id: Vec<u8>, parent_span_id: Vec<u8>| Span {
                trace_id: trace.0.to_vec(),
                span_id,
                parent_span_id,
                name: "GET /".into(),
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000,
                ..Default::default()
            };
            [
                (
                    format!("client-{i}"),
                    span(3, client_id.clone(), Vec::new()),
                ),
                (
                    format!("server-{i}"),
                    span(2, (2 * i as u64 + 2).to_be_bytes().to_vec(), client_id),
                ),
            ]
        })
        .map(|(service, span)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name".into(), service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    export(&collector, ExportTraceServiceRequest { resource_spans });

    let spans = 2 * services;
    // Spans are in the span metrics before their commit makes them
    // searchable.
    wait_for_trace(&data, trace, spans);
    let metrics = collector.metrics();
    for (name, total) in [
        ("traces_span_metrics_calls_total", spans),
        ("traces_span_metrics_duration_milliseconds_count", spans),
        ("tracemesh_service_requests_total", spans),
        ("traces_service_graph_request_total", services),
        (
            "traces_service_graph_request_server_seconds_count",
            services,
        ),
    ] {
        let (labelled, overflow, sum) = census(&metrics, name);
        assert_eq!(labelled, CAP, "{name}: series held at the cap");
        assert_eq!(
            overflow,
            Some((total - CAP) as f64),
            "{name}: the rest folded"
        );
        assert_eq!(sum, total as f64, "{name}: nothing lost");
        let folded = format!(
            r#"tracemesh_collector_metric_series_overflow_total{{metric="{}"}} {}"#,
            name.trim_end_matches("_count"),
            total - CAP
        );
        assert!(metrics.contains(&folded), "{folded} in {metrics}");
    }
    let log = collector.stop();
    let warnings = |metric: &str| {
        log.lines()
            .filter(|l| {
                l.contains("WARN")
                    && l.contains("metric series cap reached")
                    && l.contains(&format!(r#"metric="{metric}""#))
            })
            .count()
    };
    assert_eq!(warnings("traces_span_metrics_calls_total"), 1, "{log}");
    assert_eq!(warnings("traces_service_graph_request_total"), 1, "{log}");
}
