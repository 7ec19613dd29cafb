//! The spans the tests send, with every number the answers must show:
//! a shop (frontend → cart → db) whose cart fails every tenth call, and a
//! `calc` service whose span durations are known for the quantile check.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::Value;
use tracemesh_collector::ids::TraceId;

use crate::harness::{Collector, eventually, http_request, now_nanos};

/// Shop traces sent.
pub const SHOP_TRACES: usize = 200;
/// Every n-th cart call fails (503, flag UF).
pub const FAIL_EVERY: usize = 10;
/// Spans of the `calc` service.
pub const CALC_SPANS: usize = 2000;
const MS: u64 = 1_000_000;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", service), s("k8s.namespace.name", "shop")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn id(trace: usize, n: u64) -> Vec<u8> {
    (((trace as u64 + 1) << 8) | n).to_be_bytes().to_vec()
}

/// The cart call of shop trace `t` lasts `t + 1` ms.
pub fn cart_duration(t: usize) -> u64 {
    (t as u64 + 1) * MS
}

/// `calc` span `k` lasts 1 ms × 1.003^k (neighbours 0.3% apart).
pub fn calc_duration(k: usize) -> u64 {
    (1e6 * 1.003f64.powi(k as i32)).round() as u64
}

/// What was sent.
pub struct Sent {
    /// Shop trace ids, by index.
    pub shop: Vec<TraceId>,
    /// Start of the first span, ns.
    pub base: u64,
}

/// Span `n` of trace number `t`, child of span `parent` (0: a root),
/// over `(start, duration)`.
fn span(
    trace: &TraceId,
    (t, n, parent): (usize, u64, u64),
    name: &str,
    kind: i32,
    (start, duration): (u64, u64),
) -> Span {
    Span {
        trace_id: trace.0.to_vec(),
        span_id: id(t, n),
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            id(t, parent)
        },
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + duration,
        ..Default::default()
    }
}

/// The requests: children's services first (db and cart, then frontend),
/// as separate exporters would deliver them.
pub fn requests(base: u64) -> (Vec<ExportTraceServiceRequest>, Sent) {
    let mut shop = Vec::new();
    let (mut frontend, mut cart, mut db) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..SHOP_TRACES {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xab;
        bytes[8..].copy_from_slice(&(t as u64 + 1).to_be_bytes());
        let trace = TraceId(bytes);
        shop.push(trace);
        let start = base + t as u64 * 100 * MS;
        let work = cart_duration(t);
        let failed = t % FAIL_EVERY == 0;
        frontend.push(span(
            &trace,
            (t, 1, 0),
            "GET /cart",
            2,
            (start, work + 4 * MS),
        ));
        frontend.push(span(
            &trace,
            (t, 2, 1),
            "GET cart",
            3,
            (start + MS, work + 2 * MS),
        ));
        let mut server = span(
            &trace,
            (t, 3, 2),
            "GET /cart/items",
            2,
            (start + 2 * MS, work),
        );
        server.attributes = vec![
            s("http.request.method", "GET"),
            s("http.route", "/cart/items"),
            i("http.response.status_code", if failed { 503 } else { 200 }),
            s("tracemesh.response_flags", if failed { "UF" } else { "-" }),
            s("customer.tier", if t % 4 == 0 { "gold" } else { "silver" }),
        ];
        if failed {
            server.status = Some(Status {
                code: 2,
                message: "upstream connect error".into(),
            });
        }
        server.events = vec![Event {
            time_unix_nano: start + 2 * MS + 10_000,
            name: "cache miss".into(),
            attributes: vec![s("cache.key", "items")],
            ..Default::default()
        }];
        cart.push(server);
        cart.push(span(
            &trace,
            (t, 4, 3),
            "SELECT",
            3,
            (start + 2 * MS + 100_000, MS / 2),
        ));
        db.push(span(
            &trace,
            (t, 5, 4),
            "query",
            2,
            (start + 2 * MS + 150_000, 400_000),
        ));
    }
    let calc = (0..CALC_SPANS)
        .map(|k| {
            let mut bytes = [0u8; 16];
            bytes[0] = 0xcc;
            bytes[8..].copy_from_slice(&(k as u64 + 1).to_be_bytes());
            span(
                &TraceId(bytes),
                (k, 1, 0),
                "compute",
                2,
                (base + k as u64 * 10_000, calc_duration(k)),
            )
        })
        .collect();
    let first = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("db", db), resource_spans("cart", cart)],
    };
    let second = ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans("frontend", frontend),
            resource_spans("calc", calc),
        ],
    };
    (vec![first, second], Sent { shop, base })
}

/// TCP connections ratings → mongodb as the agents report them: each a
/// root CLIENT span of ratings naming `peer.service` (every
/// `TCP_FAIL_EVERY`th refused, `UF`) and a root SERVER span of mongodb; and
/// one HTTP call productpage → ratings whose CLIENT span also names
/// `peer.service` but has its SERVER child.
pub fn tcp_requests(base: u64) -> ExportTraceServiceRequest {
    let trace = |t: usize| {
        let mut bytes = [0u8; 16];
        bytes[0] = 0x7c;
        bytes[8..].copy_from_slice(&(t as u64 + 1).to_be_bytes());
        TraceId(bytes)
    };
    let (mut ratings, mut mongodb) = (Vec::new(), Vec::new());
    for t in 0..TCP_CONNECTIONS {
        let start = base + t as u64 * 10 * MS;
        let failed = t % TCP_FAIL_EVERY == 0;
        let mut client = span(&trace(t), (t, 1, 0), "mongodb:27017/*", 3, (start, MS));
        client.attributes = vec![
            s("network.transport", "tcp"),
            s("peer.service", "mongodb"),
            s("tracemesh.response_flags", if failed { "UF" } else { "-" }),
        ];
        if failed {
            client.status = Some(Status {
                code: 2,
                message: "UF".into(),
            });
        } else {
            let mut server = span(
                &trace(t + 1000),
                (t, 2, 0),
                "mongodb:27017/*",
                2,
                (start, MS),
            );
            server.attributes = vec![s("network.transport", "tcp")];
            mongodb.push(server);
        }
        ratings.push(client);
    }
    let http = trace(5000);
    let mut call = span(&http, (5000, 1, 0), "ratings:9080/*", 3, (base, 2 * MS));
    call.attributes = vec![s("peer.service", "ratings")];
    let served = span(&http, (5000, 2, 1), "ratings:9080/*", 2, (base, MS));
    ratings.push(served);
    ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans("ratings", ratings),
            resource_spans("mongodb", mongodb),
            resource_spans("productpage", vec![call]),
        ],
    }
}

/// TCP connections in [`tcp_requests`].
pub const TCP_CONNECTIONS: usize = 20;
/// Every this many TCP connections one is refused.
pub const TCP_FAIL_EVERY: usize = 5;

/// Sends `request` over OTLP/HTTP (protobuf).
pub fn send(collector: &Collector, request: &ExportTraceServiceRequest) {
    let response = http_request(
        collector.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &request.encode_to_vec(),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

/// GET on the query API: status and JSON body.
pub fn get(collector: &Collector, path: &str) -> (u16, Value) {
    let response = http_request(collector.http, "GET", path, &[], &[]);
    let body = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "{path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&response.body)
        )
    });
    (response.status, body)
}

/// Starts a collector, sends the data set and waits until every span is
/// searchable.
pub fn start(dir: &std::path::Path) -> (Collector, Sent) {
    let collector = Collector::start(dir, &["--commit-interval", "200ms"]);
    let base = now_nanos() - 5 * 60 * 1_000_000_000;
    let (requests, sent) = requests(base);
    for request in &requests {
        send(&collector, request);
    }
    let expected = [
        ("calc", CALC_SPANS),
        ("cart", 2 * SHOP_TRACES),
        ("db", SHOP_TRACES),
        ("frontend", 2 * SHOP_TRACES),
    ];
    for (service, spans) in expected {
        eventually(&format!("{spans} spans of {service} indexed"), || {
            let (_, body) = get(
                &collector,
                &format!("/api/v1/latency?service={service}&kind=all&since=1h"),
            );
            (body["count"].as_u64() == Some(spans as u64)).then_some(())
        });
    }
    (collector, sent)
}

/// The `monitor` service's server spans for the Monitor tab's windows,
/// from the minute starting at `minute` (ns, a multiple of 60 s): 100
/// spans of 1 ms in it, 100 spans of 10.0–19.9 ms the next minute, none
/// the one after, and 3 spans of 500 ms the minute after that. Returns
/// the request and every span's (start, duration) in ns.
pub fn monitor_requests(minute: u64) -> (ExportTraceServiceRequest, Vec<(u64, u64)>) {
    const MINUTE: u64 = 60_000 * MS;
    let mut sent = Vec::new();
    for k in 0..100u64 {
        sent.push((minute + k * 100 * MS, MS));
        sent.push((minute + MINUTE + k * 100 * MS, 10 * MS + k * MS / 10));
    }
    for k in 0..3u64 {
        sent.push((minute + 3 * MINUTE + k * 1_000 * MS, 500 * MS));
    }
    let mut trace = [0u8; 16];
    trace[0] = 0x3e;
    let trace = TraceId(trace);
    let spans = sent
        .iter()
        .enumerate()
        .map(|(n, &at)| span(&trace, (9000, n as u64 + 1, 0), "GET /watch", 2, at))
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("monitor", spans)],
    };
    (request, sent)
}
