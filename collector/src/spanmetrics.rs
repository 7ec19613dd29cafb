//! Metrics derived from spans at ingest, with the OpenTelemetry Collector's
//! names so existing dashboards work: RED per service/operation/kind/status
//! (the `spanmetrics` connector, namespace `traces.span.metrics`) and
//! service-graph edges (the `servicegraph` connector), pairing a CLIENT (or
//! PRODUCER) span with the SERVER (or CONSUMER) span whose parent it is.
//!
//! The connector's families count every span, of every kind; a service's
//! own numbers are in `tracemesh_service_*`: the requests it served (its
//! SERVER spans, Istio's `reporter="destination"`, `direction="inbound"`)
//! and, labelled apart, the calls it made (its CLIENT spans less retry
//! attempts, `direction="outbound"`), by outcome as
//! [`crate::outcome::Outcome`] defines it (errors are 5xx and local
//! failures, 4xx are `client_error`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::attributes;
use crate::ids::{SpanId, TraceId};
use crate::metrics::histogram_vec;
use crate::outcome::{Outcome, RESEND_COUNT};
use crate::store::SpanRef;

/// The spanmetrics connector's default buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10000.0, 15000.0,
];

/// The servicegraph connector's default buckets, in seconds.
const EDGE_BUCKETS_S: [f64; 16] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// How long half an edge waits for its other half.
const EDGE_WAIT: Duration = Duration::from_secs(10);

/// Half-edges kept waiting, at most.
const MAX_PENDING_EDGES: usize = 100_000;

/// RED label sets kept, at most (a cardinality guard).
const MAX_SERIES: usize = 10_000;

const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUSES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

type Handles = (IntCounter, Histogram);

/// Handles by kind (0-5) and status (0-2) of one operation.
type ByKindAndStatus = [[Option<Handles>; 3]; 6];

/// A service operation's request handles: by direction (inbound,
/// outbound), the counter per outcome and the duration histogram.
type ByDirection = [([Option<IntCounter>; 3], Option<Histogram>); 2];

const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
const OUTCOMES: [Outcome; 3] = [Outcome::Success, Outcome::ClientError, Outcome::Error];

struct HalfEdge {
    service: String,
    peer_service: Option<String>,
    duration: f64,
    failed: bool,
    messaging: bool,
    client: bool,
    seen: Instant,
}

/// A span's `http.response.status_code`.
fn http_status(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<u16> {
    attributes::get_int(&span.attributes, "http.response.status_code")
        .and_then(|c| u16::try_from(c).ok())
}

/// The span-derived metric families and the state that feeds them. Owned
/// by the indexer thread: no lock.
pub struct SpanMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
    requests: IntCounterVec,
    failed: IntCounterVec,
    server_seconds: HistogramVec,
    client_seconds: HistogramVec,
    unpaired: IntCounterVec,
    dropped: IntCounterVec,
    handles: HashMap<String, HashMap<String, ByKindAndStatus>>,
    service_requests: IntCounterVec,
    service_duration: HistogramVec,
    service_handles: HashMap<String, HashMap<String, ByDirection>>,
    series: usize,
    pending: HashMap<(TraceId, SpanId), HalfEdge>,
}

impl SpanMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let red = ["service_name", "span_name", "span_kind", "status_code"];
        let edge = ["client", "server", "connection_type"];
        let metrics = Self {
            calls: IntCounterVec::new(
                Opts::new(
                    "traces_span_metrics_calls_total",
                    "Spans, by service, operation, kind and status.",
                ),
                &red,
            )?,
            duration: histogram_vec(
                "traces_span_metrics_duration_milliseconds",
                "Span durations in milliseconds.",
                &red,
                &DURATION_BUCKETS_MS,
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "traces_service_graph_request_total",
                    "Requests between two services.",
                ),
                &edge,
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "traces_service_graph_request_failed_total",
                    "Failed requests between two services.",
                ),
                &edge,
            )?,
            server_seconds: histogram_vec(
                "traces_service_graph_request_server_seconds",
                "Request durations seen by the server.",
                &edge,
                &EDGE_BUCKETS_S,
            )?,
            client_seconds: histogram_vec(
                "traces_service_graph_request_client_seconds",
                "Request durations seen by the client.",
                &edge,
                &EDGE_BUCKETS_S,
            )?,
            unpaired: IntCounterVec::new(
                Opts::new(
                    "traces_service_graph_unpaired_spans_total",
                    "Client or server spans whose other side never arrived.",
                ),
                &["client", "server"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "traces_service_graph_dropped_spans_total",
                    "Spans not paired because too many were waiting.",
                ),
                &["client", "server"],
            )?,
            handles: HashMap::new(),
            service_requests: IntCounterVec::new(
                Opts::new(
                    "tracemesh_service_requests_total",
                    "Requests a service served (direction=\"inbound\": its SERVER spans) and \
                     calls it made (direction=\"outbound\": its CLIENT spans, retry attempts \
                     left out), by operation and outcome (error: 5xx or a local failure; \
                     client_error: 4xx).",
                ),
                &["service_name", "operation", "direction", "outcome"],
            )?,
            service_duration: histogram_vec(
                "tracemesh_service_request_duration_milliseconds",
                "Duration of the requests a service served (direction=\"inbound\") and of \
                 the calls it made (direction=\"outbound\"), in milliseconds.",
                &["service_name", "operation", "direction"],
                &DURATION_BUCKETS_MS,
            )?,
            service_handles: HashMap::new(),
            series: 0,
            pending: HashMap::new(),
        };
        registry.register(Box::new(metrics.calls.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.server_seconds.clone()))?;
        registry.register(Box::new(metrics.client_seconds.clone()))?;
        registry.register(Box::new(metrics.unpaired.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.service_requests.clone()))?;
        registry.register(Box::new(metrics.service_duration.clone()))?;
        Ok(metrics)
    }

    /// Records one span.
    pub fn observe(&mut self, span: SpanRef<'_>, now: Instant) {
        let s = span.span;
        let service = attributes::service_name(span.resource);
        let kind = (s.kind.clamp(0, 5)) as usize;
        let status = s.status.as_ref().map_or(0, |st| st.code.clamp(0, 2)) as usize;
        let nanos = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
        if let Some((calls, duration)) = self.red_handles(service, &s.name, kind, status) {
            calls.inc();
            duration.observe(nanos as f64 / 1e6);
        }
        let direction = match kind {
            2 => Some(0),
            3 if attributes::get(&s.attributes, RESEND_COUNT).is_none() => Some(1),
            _ => None,
        };
        if let Some(direction) = direction {
            let outcome = Outcome::of(s.status.as_ref().map_or(0, |st| st.code), http_status(s));
            if let Some((requests, duration)) =
                self.service_handles(service, &s.name, direction, outcome)
            {
                requests.inc();
                duration.observe(nanos as f64 / 1e6);
            }
        }
        let (Some(trace_id), Some(span_id)) = (
            TraceId::from_bytes(&s.trace_id),
            SpanId::from_bytes(&s.span_id),
        ) else {
            return;
        };
        let client = match kind {
            3 | 4 => true,
            2 | 5 => false,
            _ => return,
        };
        let key = if client {
            (trace_id, span_id)
        } else {
            match SpanId::from_bytes(&s.parent_span_id) {
                Some(parent) => (trace_id, parent),
                None => return,
            }
        };
        let half = HalfEdge {
            service: service.to_owned(),
            peer_service: client
                .then(|| attributes::get_str(&s.attributes, "peer.service").map(str::to_owned))
                .flatten(),
            duration: nanos as f64 / 1e9,
            // Errors as everywhere: 5xx and local failures, not 4xx.
            failed: Outcome::of(s.status.as_ref().map_or(0, |st| st.code), http_status(s))
                == Outcome::Error,
            messaging: kind == 4 || kind == 5,
            client,
            seen: now,
        };
        match self.pending.remove(&key) {
            Some(other) if other.client != client => {
                let (c, sv) = if client {
                    (&half, &other)
                } else {
                    (&other, &half)
                };
                self.edge(c, sv);
            }
            Some(other) => {
                self.pending.insert(key, other);
            }
            None if self.pending.len() >= MAX_PENDING_EDGES => {
                let (c, sv) = if client {
                    (half.service.as_str(), "")
                } else {
                    ("", half.service.as_str())
                };
                self.dropped.with_label_values(&[c, sv]).inc();
            }
            None => {
                self.pending.insert(key, half);
            }
        }
    }

    fn red_handles(
        &mut self,
        service: &str,
        name: &str,
        kind: usize,
        status: usize,
    ) -> Option<Handles> {
        if let Some(handles) = self
            .handles
            .get(service)
            .and_then(|ops| ops.get(name))
            .and_then(|k| k[kind][status].as_ref())
        {
            return Some(handles.clone());
        }
        if self.series >= MAX_SERIES {
            return None;
        }
        let labels = [service, name, KINDS[kind], STATUSES[status]];
        let handles = (
            self.calls.with_label_values(&labels),
            self.duration.with_label_values(&labels),
        );
        let slot = self
            .handles
            .entry(service.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default();
        slot[kind][status] = Some(handles.clone());
        self.series += 1;
        Some(handles)
    }

    fn service_handles(
        &mut self,
        service: &str,
        name: &str,
        direction: usize,
        outcome: Outcome,
    ) -> Option<(IntCounter, Histogram)> {
        let at = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some((counters, histogram)) = self
            .service_handles
            .get(service)
            .and_then(|ops| ops.get(name))
            .map(|d| &d[direction])
            && let (Some(counter), Some(histogram)) = (&counters[at], histogram)
        {
            return Some((counter.clone(), histogram.clone()));
        }
        if self.series >= MAX_SERIES {
            return None;
        }
        let slot = &mut self
            .service_handles
            .entry(service.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()[direction];
        let counter = self.service_requests.with_label_values(&[
            service,
            name,
            DIRECTIONS[direction],
            outcome.as_str(),
        ]);
        slot.0[at] = Some(counter.clone());
        let histogram = match &slot.1 {
            Some(histogram) => histogram.clone(),
            None => {
                let histogram = self.service_duration.with_label_values(&[
                    service,
                    name,
                    DIRECTIONS[direction],
                ]);
                slot.1 = Some(histogram.clone());
                histogram
            }
        };
        self.series += 1;
        Some((counter, histogram))
    }

    fn edge(&self, client: &HalfEdge, server: &HalfEdge) {
        let connection = if client.messaging || server.messaging {
            "messaging_system"
        } else {
            ""
        };
        let labels = [client.service.as_str(), server.service.as_str(), connection];
        self.requests.with_label_values(&labels).inc();
        if client.failed || server.failed {
            self.failed.with_label_values(&labels).inc();
        }
        self.client_seconds
            .with_label_values(&labels)
            .observe(client.duration);
        self.server_seconds
            .with_label_values(&labels)
            .observe(server.duration);
    }

    /// Expires half-edges that waited too long: a client span naming a
    /// `peer.service` makes an edge to that (uninstrumented) peer, the rest
    /// are counted as unpaired.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<(TraceId, SpanId)> = self
            .pending
            .iter()
            .filter(|(_, h)| now.duration_since(h.seen) >= EDGE_WAIT)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            let Some(half) = self.pending.remove(&key) else {
                continue;
            };
            match (&half.peer_service, half.client) {
                (Some(peer), true) => {
                    let labels = [half.service.as_str(), peer.as_str(), "virtual_node"];
                    self.requests.with_label_values(&labels).inc();
                    if half.failed {
                        self.failed.with_label_values(&labels).inc();
                    }
                    self.client_seconds
                        .with_label_values(&labels)
                        .observe(half.duration);
                }
                (_, true) => self
                    .unpaired
                    .with_label_values(&[half.service.as_str(), ""])
                    .inc(),
                (_, false) => self
                    .unpaired
                    .with_label_values(&["", half.service.as_str()])
                    .inc(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    fn resource(service: &str) -> Resource {
        Resource {
            attributes: vec![attributes::string("service.name", service)],
            ..Default::default()
        }
    }

    fn observe(metrics: &mut SpanMetrics, resource: &Resource, span: &Span, now: Instant) {
        metrics.observe(
            SpanRef {
                resource: Some(resource),
                resource_schema_url: "",
                scope: None,
                scope_schema_url: "",
                span,
            },
            now,
        );
    }

    #[test]
    fn red_and_service_graph_edges() {
        let registry = Registry::new();
        let mut metrics = SpanMetrics::new(&registry).unwrap();
        let now = Instant::now();
        let client = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET /cart".into(),
            kind: 3,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_030_000_000,
            ..Default::default()
        };
        let server = Span {
            span_id: vec![3; 8],
            parent_span_id: vec![2; 8],
            kind: 2,
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            start_time_unix_nano: 1_005_000_000,
            end_time_unix_nano: 1_025_000_000,
            ..client.clone()
        };
        observe(&mut metrics, &resource("frontend"), &client, now);
        observe(&mut metrics, &resource("cart"), &server, now);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"traces_span_metrics_calls_total{service_name="cart",span_kind="SPAN_KIND_SERVER",span_name="GET /cart",status_code="STATUS_CODE_ERROR"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"traces_service_graph_request_total{client="frontend",connection_type="",server="cart"} 1"#), "{text}");
        assert!(text.contains(r#"traces_service_graph_request_failed_total{client="frontend",connection_type="",server="cart"} 1"#), "{text}");
        assert!(text.contains(r#"traces_span_metrics_duration_milliseconds_bucket{service_name="frontend",span_kind="SPAN_KIND_CLIENT",span_name="GET /cart",status_code="STATUS_CODE_UNSET",le="50"} 1"#), "{text}");

        let lonely = Span {
            span_id: vec![9; 8],
            attributes: vec![attributes::string("peer.service", "postgres")],
            ..client
        };
        observe(&mut metrics, &resource("cart"), &lonely, now);
        metrics.expire(now + EDGE_WAIT);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains(r#"traces_service_graph_request_total{client="cart",connection_type="virtual_node",server="postgres"} 1"#), "{text}");
    }

    #[test]
    fn service_numbers_count_requests_served_and_calls_made_apart() {
        let registry = Registry::new();
        let mut metrics = SpanMetrics::new(&registry).unwrap();
        let now = Instant::now();
        let span = |id: u8, kind: i32, code: i64, status: i32| Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_003_000_000,
            attributes: vec![attributes::int("http.response.status_code", code)],
            status: Some(Status {
                code: status,
                message: String::new(),
            }),
            ..Default::default()
        };
        let page = resource("productpage");
        observe(&mut metrics, &page, &span(1, 2, 200, 0), now);
        observe(&mut metrics, &page, &span(2, 2, 429, 2), now);
        observe(&mut metrics, &page, &span(3, 3, 503, 2), now);
        let mut retry = span(4, 3, 200, 0);
        retry.attributes.push(attributes::int(RESEND_COUNT, 1));
        observe(&mut metrics, &page, &retry, now);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let line = |direction: &str, outcome: &str| {
            format!(
                r#"tracemesh_service_requests_total{{direction="{direction}",operation="reviews.default.svc.cluster.local:9080/*",outcome="{outcome}",service_name="productpage"}}"#
            )
        };
        assert!(
            text.contains(&(line("inbound", "success") + " 1")),
            "{text}"
        );
        assert!(
            text.contains(&(line("inbound", "client_error") + " 1")),
            "{text}"
        );
        assert!(text.contains(&(line("outbound", "error") + " 1")), "{text}");
        assert!(
            !text.contains(&line("outbound", "success")),
            "a retry is not a call: {text}"
        );
        assert!(text.contains(r#"tracemesh_service_request_duration_milliseconds_count{direction="inbound",operation="reviews.default.svc.cluster.local:9080/*",service_name="productpage"} 2"#), "{text}");
    }
}
