//! A Zipkin v2 JSON batch lands in the store with the right ids, kind, tags
//! and service.

use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, SpanReader};

use crate::harness::{
    Collector, HttpResponse, eventually, http_request, now_nanos, random_trace_id, sample,
    wait_for_trace,
};

/// POSTs a Zipkin v2 JSON batch to the collector's Zipkin receiver.
fn post_spans(collector: &Collector, body: &str) -> HttpResponse {
    http_request(
        collector.zipkin,
        "POST",
        "/api/v2/spans",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn zipkin_v2_json_is_stored_with_ids_kind_tags_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let micros = now_nanos() / 1000;
    let body = format!(
        r#"[{{"traceId":"5af7183fb1d4cf5f","parentId":"6b221d5bc9e6496c","id":"352bff9a74ca9ad2","kind":"CLIENT","name":"get /api",
             "timestamp":{micros},"duration":1431,"localEndpoint":{{"serviceName":"frontend","ipv4":"192.168.99.1"}},
             "remoteEndpoint":{{"serviceName":"backend","ipv4":"172.19.0.2","port":8080}},
             "annotations":[{{"timestamp":{},"value":"wire send"}}],
             "tags":{{"http.method":"GET","http.path":"/api","error":"timeout"}}}},
            {{"traceId":"5af7183fb1d4cf5f","parentId":"352bff9a74ca9ad2","id":"7c9f1e2a3b4d5e6f","kind":"SERVER","name":"get /api",
             "timestamp":{},"duration":1000,"localEndpoint":{{"serviceName":"backend"}},"tags":{{"http.status_code":"504"}}}}]"#,
        micros + 10,
        micros + 100
    );
    let response = post_spans(&collector, &body);
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );

    let trace_id: TraceId = "00000000000000005af7183fb1d4cf5f".parse().unwrap();
    let trace = wait_for_trace(&collector.data_dir, trace_id, 2);
    let client = trace
        .spans
        .iter()
        .find(|s| s.span.kind == 3)
        .expect("client span");
    assert_eq!(
        client.span.span_id,
        vec![0x35, 0x2b, 0xff, 0x9a, 0x74, 0xca, 0x9a, 0xd2]
    );
    assert_eq!(
        client.span.parent_span_id,
        vec![0x6b, 0x22, 0x1d, 0x5b, 0xc9, 0xe6, 0x49, 0x6c]
    );
    assert_eq!(client.span.start_time_unix_nano, micros * 1000);
    assert_eq!(
        client.span.end_time_unix_nano - client.span.start_time_unix_nano,
        1_431_000
    );
    assert_eq!(
        tracemesh_collector::attributes::service_name(client.resource.as_ref()),
        "frontend"
    );
    assert_eq!(
        tracemesh_collector::attributes::get_str(&client.span.attributes, "http.method"),
        Some("GET")
    );
    assert_eq!(
        tracemesh_collector::attributes::get_str(&client.span.attributes, "peer.service"),
        Some("backend")
    );
    assert_eq!(
        client.span.status.as_ref().unwrap().code,
        2,
        "the error tag sets status ERROR"
    );
    assert_eq!(client.span.events[0].name, "wire send");
    let server = trace
        .spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("server span");
    assert_eq!(
        tracemesh_collector::attributes::service_name(server.resource.as_ref()),
        "backend"
    );

    let reader = SpanReader::open(&collector.data_dir).unwrap();
    let by_tag = SpanQuery {
        service: Some("backend".into()),
        tags: vec![("http.status_code".into(), "504".into())],
        ..Default::default()
    };
    assert_eq!(reader.count(&by_tag).unwrap(), 1);
    // the client/server pair is a service-graph edge
    let metrics = collector.metrics();
    assert!(metrics.contains(r#"traces_service_graph_request_total{client="frontend",connection_type="",server="backend"} 1"#), "{metrics}");
    collector.stop();
}

#[test]
fn zipkin_ids_shorter_than_16_hex_digits_are_zero_padded_as_zipkin_does() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let micros = now_nanos() / 1000;
    let body = format!(
        r#"[{{"traceId":"af7183fb1d4cf5f","id":"52bff9a74ca9ad2","kind":"CLIENT","name":"get /api",
             "timestamp":{micros},"duration":1431,"localEndpoint":{{"serviceName":"frontend"}}}},
            {{"traceId":"af7183fb1d4cf5f","parentId":"52bff9a74ca9ad2","id":"7c9f","kind":"SERVER",
             "name":"get /api","timestamp":{},"duration":1000,"localEndpoint":{{"serviceName":"backend"}}}}]"#,
        micros + 100
    );
    let response = post_spans(&collector, &body);
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let trace_id: TraceId = "00000000000000000af7183fb1d4cf5f".parse().unwrap();
    let trace = wait_for_trace(&collector.data_dir, trace_id, 2);
    let server = trace
        .spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("server span");
    assert_eq!(server.span.span_id, vec![0, 0, 0, 0, 0, 0, 0x7c, 0x9f]);
    assert_eq!(
        server.span.parent_span_id,
        vec![0x05, 0x2b, 0xff, 0x9a, 0x74, 0xca, 0x9a, 0xd2]
    );
    // Too long, non-hex and empty ids are still refused.
    for bad in [
        r#"[{"traceId":"5af7183fb1d4cf5f5af7183fb1d4cf5f0","id":"352bff9a74ca9ad2"}]"#,
        r#"[{"traceId":"5af7183fb1d4cf5f","id":"352bff9a74ca9ad20"}]"#,
        r#"[{"traceId":"5af7183fb1d4cf5g","id":"352bff9a74ca9ad2"}]"#,
        r#"[{"traceId":"","id":"352bff9a74ca9ad2"}]"#,
        r#"[{"traceId":"0000","id":"352bff9a74ca9ad2"}]"#,
    ] {
        let response = post_spans(&collector, bad);
        assert_eq!(response.status, 400, "{bad}");
    }
}

/// A Zipkin shared span (B3's default: the callee's SERVER half carries
/// the CLIENT half's id) is one call from the client's service to the
/// server's, in the dependency graph and in the trace, where the server
/// half is the client's child, as Jaeger reads it. (The server half used
/// to replace the client half at ingest: no edge.)
#[test]
fn a_zipkin_shared_span_is_one_call_client_to_server() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let micros = now_nanos() / 1000;
    let body = format!(
        r#"[{{"traceId":"aaaa000000000001","id":"0000000000000011","name":"c","kind":"CLIENT",
             "timestamp":{micros},"duration":2000,"localEndpoint":{{"serviceName":"sA"}}}},
            {{"traceId":"aaaa000000000001","id":"0000000000000011","name":"c","kind":"SERVER","shared":true,
             "timestamp":{},"duration":1500,"localEndpoint":{{"serviceName":"sB"}}}}]"#,
        micros + 100
    );
    let response = post_spans(&collector, &body);
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let trace_id: TraceId = "0000000000000000aaaa000000000001".parse().unwrap();
    wait_for_trace(&collector.data_dir, trace_id, 2);
    let metrics = collector.metrics();
    assert!(
        metrics.contains(
            r#"traces_service_graph_request_total{client="sA",connection_type="",server="sB"} 1"#
        ),
        "{metrics}"
    );
    let read = http_request(
        collector.http,
        "GET",
        "/api/traces/aaaa000000000001",
        &[],
        b"",
    );
    assert_eq!(read.status, 200);
    let trace: serde_json::Value = serde_json::from_slice(&read.body).unwrap();
    let spans = trace["data"][0]["spans"].as_array().unwrap().clone();
    let processes = &trace["data"][0]["processes"];
    let service =
        |s: &serde_json::Value| processes[s["processID"].as_str().unwrap()]["serviceName"].clone();
    let client = spans
        .iter()
        .find(|s| service(s) == "sA")
        .expect("client half");
    let server = spans
        .iter()
        .find(|s| service(s) == "sB")
        .expect("server half");
    assert_eq!(client["spanID"], "0000000000000011");
    assert_ne!(server["spanID"], client["spanID"]);
    assert_eq!(server["references"][0]["refType"], "CHILD_OF");
    assert_eq!(server["references"][0]["spanID"], "0000000000000011");
    collector.stop();
}

/// Zipkin's server decodes the whole list before it stores anything, and
/// a span it cannot decode fails the request: a batch is stored whole or
/// not at all. One bad span (an id, a tag that is no string, a time the
/// store does not keep) refuses its batch with a 400 naming the span and
/// its field, and none of the batch's spans is stored, so the sender that
/// sends the batch again (fixed, or retried) has each span once. (The
/// good spans used to be stored beside the 400.)
#[test]
fn a_batch_with_one_bad_span_is_refused_whole_and_none_of_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let trace = random_trace_id();
    let micros = now_nanos() / 1000;
    let span = |id: &str, extra: &str| {
        format!(
            r#"{{"traceId":"{trace}","id":"{id}","name":"op","timestamp":{micros},"duration":10,
                 "localEndpoint":{{"serviceName":"batch"}}{extra}}}"#
        )
    };
    let year_ahead = micros + 365 * 86_400 * 1_000_000;
    let mut answers = Vec::new();
    for (second, field) in [
        (
            span("00000000000000a2", "").replace(&trace.to_string(), "xyz"),
            "zipkin span [1]: traceId",
        ),
        (
            span("00000000000000a2", r#","tags":{"retries":3}"#),
            "zipkin span [1]: invalid JSON at tags.retries",
        ),
        (
            span("00000000000000a2", "").replace(
                &format!(r#""timestamp":{micros}"#),
                &format!(r#""timestamp":{year_ahead}"#),
            ),
            "zipkin span [1]: timestamp",
        ),
    ] {
        let body = format!(
            "[{},{second},{}]",
            span("00000000000000a1", ""),
            span("00000000000000a3", "")
        );
        let response = post_spans(&collector, &body);
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert_eq!(response.status, 400, "{text}");
        answers.push((field, text));
    }
    // Sent again, fixed: stored, each span once.
    let body = format!(
        "[{},{},{}]",
        span("00000000000000a1", ""),
        span("00000000000000a2", ""),
        span("00000000000000a3", "")
    );
    let response = post_spans(&collector, &body);
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    // a2 came with the last batch only: once it is read, so is every
    // batch before it.
    let stored = eventually("the fixed batch indexed", || {
        let trace = wait_for_trace(&collector.data_dir, trace, 3);
        trace
            .spans
            .iter()
            .any(|s| s.span.span_id == [0, 0, 0, 0, 0, 0, 0, 0xa2])
            .then_some(trace)
    });
    let mut ids: Vec<u8> = stored.spans.iter().map(|s| s.span.span_id[7]).collect();
    ids.sort();
    assert_eq!(ids, [0xa1, 0xa2, 0xa3], "each span once");
    for (field, text) in answers {
        assert!(
            text.contains("1 of 3 span(s) invalid, none of the batch stored")
                && text.contains(field),
            "{field}: {text}"
        );
    }
    let metrics = collector.metrics();
    assert_eq!(
        sample(
            &metrics,
            r#"tracemesh_collector_spans_refused_total{reason="malformed",receiver="zipkin"}"#
        ),
        6.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tracemesh_collector_spans_refused_total{reason="out_of_range",receiver="zipkin"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tracemesh_collector_spans_accepted_total{receiver="zipkin"}"#
        ),
        3.0
    );
    collector.stop();
}

/// A span without a time (no `timestamp`, no annotation) is stamped with
/// the time the collector received it, which the clock skew allowance
/// does not bound: it is kept with `max_clock_skew` zero too. (It was
/// refused, with its batch, as ahead of the collector's clock: the bounds
/// were read before the stamp.)
#[test]
fn a_span_stamped_on_receipt_is_kept_with_no_clock_skew_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(
        dir.path(),
        &["--commit-interval", "200ms", "--max-clock-skew", "0s"],
    );
    let trace = random_trace_id();
    for id in 1..=20 {
        let body = format!(
            r#"[{{"traceId":"{trace}","id":"{id:016x}","name":"op","localEndpoint":{{"serviceName":"stamped"}}}}]"#
        );
        let response = post_spans(&collector, &body);
        assert_eq!(
            response.status,
            202,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    assert_eq!(
        wait_for_trace(&collector.data_dir, trace, 20).spans.len(),
        20
    );
    collector.stop();
}

/// What Zipkin's own collector accepts is accepted: an empty body (a
/// reporter's flush with nothing in it) is 202 with nothing stored, and a
/// field sent as `null` is absent. Both were refused with 400, the second
/// with every span of its batch.
#[test]
fn an_empty_body_and_null_fields_are_accepted_as_zipkin_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &["--commit-interval", "200ms"]);
    let response = post_spans(&collector, "");
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );

    let micros = now_nanos() / 1000;
    let body = format!(
        r#"[{{"traceId":"5af7183fb1d4cf60","id":"352bff9a74ca9ad3","parentId":null,"kind":"SERVER","name":"get /",
             "timestamp":{micros},"duration":10,"localEndpoint":{{"serviceName":"frontend"}},"remoteEndpoint":null,
             "annotations":null,"tags":null,"shared":null}}]"#
    );
    let response = post_spans(&collector, &body);
    assert_eq!(
        response.status,
        202,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let trace_id: TraceId = "00000000000000005af7183fb1d4cf60".parse().unwrap();
    let trace = wait_for_trace(&collector.data_dir, trace_id, 1);
    let stored = &trace.spans[0];
    assert!(stored.span.events.is_empty() && stored.span.parent_span_id.is_empty());
    assert_eq!(
        tracemesh_collector::attributes::service_name(stored.resource.as_ref()),
        "frontend"
    );
    collector.stop();
}
