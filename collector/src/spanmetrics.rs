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
//!
//! Label values come from what clients send (`service.name`, span names,
//! `peer.service`), so every family is capped as the OpenTelemetry metrics
//! SDK caps an instrument's cardinality: a family holds at most
//! `max_series_per_metric` label sets, the first ones seen, and never
//! forgets them (the four edge families of the service graph admit the
//! same edges, so each holds at most that many); a measurement of any further label set goes to the
//! family's overflow series, labelled only `otel_metric_overflow="true"`
//! (the SDK's `otel.metric.overflow` attribute under Prometheus' name
//! rules), so sums over a family stay equal to what was measured. Each
//! measurement folded is counted in
//! `tracemesh_collector_metric_series_overflow_total{metric}`, and the first
//! one of each family is logged at WARN ([`crate::events::series_folded`]).
//! A label set is looked up without allocating; strings are copied only
//! when one is admitted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc, Metric};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

use crate::attributes;
use crate::events;
use crate::ids::{SpanId, TraceId};
use crate::metrics::{Metrics, histogram_vec};
use crate::outcome::{MIRROR, Outcome, RESEND_COUNT};
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

/// The default `max_series_per_metric`: label sets (series) each
/// span-derived metric family holds besides its overflow series. With all
/// ten families full, about 70 MiB of memory and a 60 MiB `/metrics` (the
/// four histogram families are most of both).
pub const DEFAULT_MAX_SERIES: usize = 5_000;

/// The largest `max_series_per_metric` accepted.
pub const MAX_SERIES_BOUND: usize = 1 << 20;

/// The label of a family's overflow series, OpenTelemetry's
/// `otel.metric.overflow` attribute (metrics SDK, "Cardinality limits")
/// with the `.` Prometheus does not allow in a label name made `_`.
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

const KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUSES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

/// The servicegraph connector's `connection_type` values.
const CONNECTIONS: [&str; 3] = ["", "messaging_system", "virtual_node"];
const DIRECT: usize = 0;
const MESSAGING: usize = 1;
const VIRTUAL_NODE: usize = 2;

type Handles = (IntCounter, Histogram);

/// Handles by kind (0-5) and status (0-2) of one operation.
type ByKindAndStatus = [[Option<Handles>; 3]; 6];

/// A service operation's request handles: by direction (inbound,
/// outbound), the counter per outcome and the duration histogram.
type ByDirection = [([Option<IntCounter>; 3], Option<Histogram>); 2];

const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
const OUTCOMES: [Outcome; 3] = [Outcome::Success, Outcome::ClientError, Outcome::Error];

/// One service-graph edge's handles. An edge's failed-request series
/// appears with its first failure and its server-duration series with its
/// first paired server span (an edge to a `virtual_node` has none).
struct EdgeHandles {
    requests: IntCounter,
    failed: Option<IntCounter>,
    client: Histogram,
    server: Option<Histogram>,
}

/// An edge's handles by connection type ([`CONNECTIONS`]).
type ByConnection = [Option<EdgeHandles>; 3];

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

/// A capped metric family: the labelled series, the overflow series that
/// takes the measurements of label sets past the cap, and the count of
/// those measurements.
struct Capped<V, M> {
    /// The family's name, the `metric` label of the folded count.
    name: &'static str,
    family: V,
    overflow: M,
    /// `tracemesh_collector_metric_series_overflow_total{metric=name}`.
    folded: IntCounter,
}

impl<V, M> Capped<V, M> {
    /// The overflow series, for one measurement whose label set is past
    /// the cap of `cap` series: counted, and logged if it is the first.
    fn fold(&self, cap: usize) -> &M {
        events::series_folded(self.name, cap, &self.folded);
        &self.overflow
    }
}

type CappedCounter = Capped<IntCounterVec, IntCounter>;
type CappedHistogram = Capped<HistogramVec, Histogram>;

/// A family as the registry sees it: its labelled series, then its
/// overflow series once a measurement was folded into it (an overflow
/// series that never took anything is not shown).
struct WithOverflow<V, M> {
    family: V,
    overflow: M,
    folded: IntCounter,
}

impl<V: Collector, M: Metric> Collector for WithOverflow<V, M> {
    fn desc(&self) -> Vec<&Desc> {
        self.family.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.family.collect();
        if self.folded.get() > 0
            && let Some(family) = families.first_mut()
        {
            family.mut_metric().push(self.overflow.metric());
        }
        families
    }
}

impl<V: Collector + Clone + 'static, M: Metric + 'static> Capped<V, M> {
    /// Registers `family` with `overflow` as its overflow series, and
    /// starts its folded count at zero.
    fn register(
        metrics: &Metrics,
        name: &'static str,
        family: V,
        overflow: M,
    ) -> Result<Self, prometheus::Error> {
        let folded = metrics.metric_series_overflow.with_label_values(&[name]);
        metrics.registry.register(Box::new(WithOverflow {
            family: family.clone(),
            overflow: overflow.clone(),
            folded: folded.clone(),
        }))?;
        Ok(Self {
            name,
            family,
            overflow,
            folded,
        })
    }
}

fn counter(
    metrics: &Metrics,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<CappedCounter, prometheus::Error> {
    Capped::register(
        metrics,
        name,
        IntCounterVec::new(Opts::new(name, help), labels)?,
        IntCounter::with_opts(Opts::new(name, help).const_label(OVERFLOW_LABEL, "true"))?,
    )
}

fn histogram(
    metrics: &Metrics,
    name: &'static str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<CappedHistogram, prometheus::Error> {
    Capped::register(
        metrics,
        name,
        histogram_vec(name, help, labels, buckets)?,
        Histogram::with_opts(
            HistogramOpts::new(name, help)
                .const_label(OVERFLOW_LABEL, "true")
                .buckets(buckets.to_vec()),
        )?,
    )
}

/// A service-graph counter labelled `client` and `server` of which one is
/// always empty (`traces_service_graph_unpaired_spans_total`,
/// `traces_service_graph_dropped_spans_total`): its handles by service,
/// client side and server side.
struct SideCounter {
    capped: CappedCounter,
    handles: HashMap<String, [Option<IntCounter>; 2]>,
    series: usize,
}

impl SideCounter {
    fn new(capped: CappedCounter) -> Self {
        Self {
            capped,
            handles: HashMap::new(),
            series: 0,
        }
    }

    /// Counts one span of `service`, a client's or a server's.
    fn inc(&mut self, service: &str, client: bool, cap: usize) {
        let side = usize::from(!client);
        if let Some(counter) = self.handles.get(service).and_then(|h| h[side].as_ref()) {
            counter.inc();
        } else if self.series < cap {
            let labels = if client { [service, ""] } else { ["", service] };
            let counter = self.capped.family.with_label_values(&labels);
            counter.inc();
            self.handles.entry(service.to_owned()).or_default()[side] = Some(counter);
            self.series += 1;
        } else {
            self.capped.fold(cap).inc();
        }
    }
}

/// The span-derived metric families and the state that feeds them. Owned
/// by the indexer thread: no lock.
pub struct SpanMetrics {
    /// Label sets each family holds at most, besides its overflow series.
    max_series: usize,
    calls: CappedCounter,
    duration: CappedHistogram,
    /// RED handles by service and operation; `red_series` label sets.
    handles: HashMap<String, HashMap<String, ByKindAndStatus>>,
    red_series: usize,
    service_requests: CappedCounter,
    service_duration: CappedHistogram,
    /// `tracemesh_service_*` handles by service and operation; the
    /// counter's and the histogram's label sets are counted apart.
    service_handles: HashMap<String, HashMap<String, ByDirection>>,
    service_request_series: usize,
    service_duration_series: usize,
    requests: CappedCounter,
    failed: CappedCounter,
    server_seconds: CappedHistogram,
    client_seconds: CappedHistogram,
    /// Service-graph handles by client, server and connection type; every
    /// edge family holds at most the `edge_series` edges admitted.
    edge_handles: HashMap<String, HashMap<String, ByConnection>>,
    edge_series: usize,
    unpaired: SideCounter,
    dropped: SideCounter,
    pending: HashMap<(TraceId, SpanId), HalfEdge>,
}

impl SpanMetrics {
    /// Creates the families, each holding at most `max_series` label sets
    /// besides its overflow series (clamped to 1..=[`MAX_SERIES_BOUND`]),
    /// and registers them in `metrics`' registry.
    pub fn new(metrics: &Metrics, max_series: usize) -> Result<Self, prometheus::Error> {
        let red = ["service_name", "span_name", "span_kind", "status_code"];
        let edge = ["client", "server", "connection_type"];
        Ok(Self {
            max_series: max_series.clamp(1, MAX_SERIES_BOUND),
            calls: counter(
                metrics,
                "traces_span_metrics_calls_total",
                "Spans, by service, operation, kind and status.",
                &red,
            )?,
            duration: histogram(
                metrics,
                "traces_span_metrics_duration_milliseconds",
                "Span durations in milliseconds.",
                &red,
                &DURATION_BUCKETS_MS,
            )?,
            handles: HashMap::new(),
            red_series: 0,
            requests: counter(
                metrics,
                "traces_service_graph_request_total",
                "Requests between two services.",
                &edge,
            )?,
            failed: counter(
                metrics,
                "traces_service_graph_request_failed_total",
                "Failed requests between two services.",
                &edge,
            )?,
            server_seconds: histogram(
                metrics,
                "traces_service_graph_request_server_seconds",
                "Request durations seen by the server.",
                &edge,
                &EDGE_BUCKETS_S,
            )?,
            client_seconds: histogram(
                metrics,
                "traces_service_graph_request_client_seconds",
                "Request durations seen by the client.",
                &edge,
                &EDGE_BUCKETS_S,
            )?,
            edge_handles: HashMap::new(),
            edge_series: 0,
            unpaired: SideCounter::new(counter(
                metrics,
                "traces_service_graph_unpaired_spans_total",
                "Client or server spans whose other side never arrived.",
                &["client", "server"],
            )?),
            dropped: SideCounter::new(counter(
                metrics,
                "traces_service_graph_dropped_spans_total",
                "Spans not paired because too many were waiting.",
                &["client", "server"],
            )?),
            service_requests: counter(
                metrics,
                "tracemesh_service_requests_total",
                "Requests a service served (direction=\"inbound\": its SERVER spans) and \
                 calls it made (direction=\"outbound\": its CLIENT spans, retry attempts \
                 and mirrored copies left out), by operation and outcome (error: 5xx or a \
                 local failure; client_error: 4xx).",
                &["service_name", "operation", "direction", "outcome"],
            )?,
            service_duration: histogram(
                metrics,
                "tracemesh_service_request_duration_milliseconds",
                "Duration of the requests a service served (direction=\"inbound\") and of \
                 the calls it made (direction=\"outbound\"), in milliseconds.",
                &["service_name", "operation", "direction"],
                &DURATION_BUCKETS_MS,
            )?,
            service_handles: HashMap::new(),
            service_request_series: 0,
            service_duration_series: 0,
            pending: HashMap::new(),
        })
    }

    /// Records one span.
    pub fn observe(&mut self, span: SpanRef<'_>, now: Instant) {
        let s = span.span;
        let service = attributes::service_name(span.resource);
        let kind = (s.kind.clamp(0, 5)) as usize;
        let status = s.status.as_ref().map_or(0, |st| st.code.clamp(0, 2)) as usize;
        let nanos = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
        let (calls, duration) = self.red_handles(service, &s.name, kind, status);
        calls.inc();
        duration.observe(nanos as f64 / 1e6);
        let direction = match kind {
            2 => Some(0),
            // A retry attempt is part of a call already counted; a
            // mirrored copy is no call the service made (its answer never
            // reaches the caller).
            3 if attributes::get(&s.attributes, RESEND_COUNT).is_none()
                && attributes::get(&s.attributes, MIRROR).is_none() =>
            {
                Some(1)
            }
            _ => None,
        };
        if let Some(direction) = direction {
            let outcome = Outcome::of(s.status.as_ref().map_or(0, |st| st.code), http_status(s));
            let (requests, duration) = self.service_handles(service, &s.name, direction, outcome);
            requests.inc();
            duration.observe(nanos as f64 / 1e6);
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
                let connection = if c.messaging || sv.messaging {
                    MESSAGING
                } else {
                    DIRECT
                };
                self.edge(
                    &c.service,
                    &sv.service,
                    connection,
                    c.failed || sv.failed,
                    c.duration,
                    Some(sv.duration),
                );
            }
            Some(other) => {
                self.pending.insert(key, other);
            }
            None if self.pending.len() >= MAX_PENDING_EDGES => {
                self.dropped.inc(&half.service, client, self.max_series);
            }
            None => {
                self.pending.insert(key, half);
            }
        }
    }

    /// The RED handles of a label set: its own, or the overflow series'.
    fn red_handles(&mut self, service: &str, name: &str, kind: usize, status: usize) -> Handles {
        if let Some(handles) = self
            .handles
            .get(service)
            .and_then(|ops| ops.get(name))
            .and_then(|k| k[kind][status].as_ref())
        {
            return handles.clone();
        }
        let cap = self.max_series;
        if self.red_series >= cap {
            return (
                self.calls.fold(cap).clone(),
                self.duration.fold(cap).clone(),
            );
        }
        let labels = [service, name, KINDS[kind], STATUSES[status]];
        let handles = (
            self.calls.family.with_label_values(&labels),
            self.duration.family.with_label_values(&labels),
        );
        let slot = self
            .handles
            .entry(service.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default();
        slot[kind][status] = Some(handles.clone());
        self.red_series += 1;
        handles
    }

    /// The `tracemesh_service_*` handles of a label set: its own, or the
    /// overflow series', each family by its own cap.
    fn service_handles(
        &mut self,
        service: &str,
        name: &str,
        direction: usize,
        outcome: Outcome,
    ) -> (IntCounter, Histogram) {
        let at = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        let known = self
            .service_handles
            .get(service)
            .and_then(|ops| ops.get(name))
            .map(|d| &d[direction]);
        let counter = known.and_then(|(counters, _)| counters[at].clone());
        let histogram = known.and_then(|(_, histogram)| histogram.clone());
        if let (Some(counter), Some(histogram)) = (&counter, &histogram) {
            return (counter.clone(), histogram.clone());
        }
        let cap = self.max_series;
        let counter = match counter {
            Some(counter) => counter,
            None if self.service_request_series < cap => {
                let counter = self.service_requests.family.with_label_values(&[
                    service,
                    name,
                    DIRECTIONS[direction],
                    outcome.as_str(),
                ]);
                self.service_slot(service, name, direction).0[at] = Some(counter.clone());
                self.service_request_series += 1;
                counter
            }
            None => self.service_requests.fold(cap).clone(),
        };
        let histogram = match histogram {
            Some(histogram) => histogram,
            None if self.service_duration_series < cap => {
                let histogram = self.service_duration.family.with_label_values(&[
                    service,
                    name,
                    DIRECTIONS[direction],
                ]);
                self.service_slot(service, name, direction).1 = Some(histogram.clone());
                self.service_duration_series += 1;
                histogram
            }
            None => self.service_duration.fold(cap).clone(),
        };
        (counter, histogram)
    }

    /// Where an admitted `tracemesh_service_*` label set's handles go
    /// (the strings are copied once per label set admitted).
    fn service_slot(
        &mut self,
        service: &str,
        name: &str,
        direction: usize,
    ) -> &mut ([Option<IntCounter>; 3], Option<Histogram>) {
        &mut self
            .service_handles
            .entry(service.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()[direction]
    }

    /// Records one request between `client` and `server`: into the edge's
    /// series, or, when the edge is new and the service graph holds its cap
    /// of edges, into every edge family's overflow series.
    fn edge(
        &mut self,
        client: &str,
        server: &str,
        connection: usize,
        failed: bool,
        client_seconds: f64,
        server_seconds: Option<f64>,
    ) {
        let labels = [client, server, CONNECTIONS[connection]];
        let cap = self.max_series;
        let known = self
            .edge_handles
            .get_mut(client)
            .and_then(|servers| servers.get_mut(server))
            .and_then(|c| c[connection].as_mut());
        let handles = match known {
            Some(handles) => handles,
            None if self.edge_series < cap => {
                self.edge_series += 1;
                let slot = &mut self
                    .edge_handles
                    .entry(client.to_owned())
                    .or_default()
                    .entry(server.to_owned())
                    .or_default()[connection];
                slot.insert(EdgeHandles {
                    requests: self.requests.family.with_label_values(&labels),
                    failed: None,
                    client: self.client_seconds.family.with_label_values(&labels),
                    server: None,
                })
            }
            None => {
                self.requests.fold(cap).inc();
                if failed {
                    self.failed.fold(cap).inc();
                }
                self.client_seconds.fold(cap).observe(client_seconds);
                if let Some(seconds) = server_seconds {
                    self.server_seconds.fold(cap).observe(seconds);
                }
                return;
            }
        };
        handles.requests.inc();
        if failed {
            handles
                .failed
                .get_or_insert_with(|| self.failed.family.with_label_values(&labels))
                .inc();
        }
        handles.client.observe(client_seconds);
        if let Some(seconds) = server_seconds {
            handles
                .server
                .get_or_insert_with(|| self.server_seconds.family.with_label_values(&labels))
                .observe(seconds);
        }
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
                (Some(peer), true) => self.edge(
                    &half.service,
                    peer,
                    VIRTUAL_NODE,
                    half.failed,
                    half.duration,
                    None,
                ),
                (_, client) => self.unpaired.inc(&half.service, client, self.max_series),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
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
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, DEFAULT_MAX_SERIES).unwrap();
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
        let text = collector.render();
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
        let text = collector.render();
        assert!(text.contains(r#"traces_service_graph_request_total{client="cart",connection_type="virtual_node",server="postgres"} 1"#), "{text}");
    }

    #[test]
    fn service_numbers_count_requests_served_and_calls_made_apart() {
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, DEFAULT_MAX_SERIES).unwrap();
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
        let mut mirror = span(5, 3, 503, 2);
        mirror.attributes.push(KeyValue {
            key: MIRROR.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BoolValue(true)),
            }),
            ..Default::default()
        });
        observe(&mut metrics, &page, &mirror, now);
        let text = collector.render();
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
        assert!(
            text.contains(&(line("outbound", "error") + " 1")),
            "a failed mirrored copy is not a failed call: {text}"
        );
        assert!(
            !text.contains(&line("outbound", "success")),
            "a retry is not a call: {text}"
        );
        assert!(text.contains(r#"tracemesh_service_request_duration_milliseconds_count{direction="inbound",operation="reviews.default.svc.cluster.local:9080/*",service_name="productpage"} 2"#), "{text}");
    }

    /// The samples of `name` in `text`, as (labels, value).
    fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.rsplit_once("} ")?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// The labelled series and the overflow series of `name`, and the sum
    /// of all of them.
    fn census(text: &str, name: &str) -> (usize, Option<f64>, f64) {
        let all = samples(text, name);
        let overflow = all
            .iter()
            .find(|(labels, _)| labels == r#"otel_metric_overflow="true""#)
            .map(|(_, v)| *v);
        let labelled = all
            .iter()
            .filter(|(labels, _)| !labels.contains(OVERFLOW_LABEL))
            .count();
        (labelled, overflow, all.iter().map(|(_, v)| v).sum())
    }

    fn folded(text: &str, metric: &str) -> f64 {
        let line =
            format!(r#"tracemesh_collector_metric_series_overflow_total{{metric="{metric}"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or_else(|| panic!("{line} not in {text}"))
    }

    fn server_span(id: u64, error: bool) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: id.to_be_bytes().to_vec(),
            name: "GET /".into(),
            kind: 2,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_003_000_000,
            status: Some(Status {
                code: if error { 2 } else { 0 },
                message: String::new(),
            }),
            ..Default::default()
        }
    }

    const CAP: usize = 50;

    #[test]
    fn label_sets_past_the_cap_are_folded_into_one_overflow_series_per_metric() {
        // Before: past its cap a family made no series for a new service
        // and counted its spans nowhere (5,000 of 100,000 spans counted).
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, CAP).unwrap();
        let now = Instant::now();
        let services = 10 * CAP;
        for i in 0..services {
            let span = server_span(i as u64 + 1, i % 5 == 1);
            observe(&mut metrics, &resource(&format!("svc-{i}")), &span, now);
        }
        // A label set admitted before the cap keeps its own series.
        observe(
            &mut metrics,
            &resource("svc-0"),
            &server_span(1, false),
            now,
        );
        let text = collector.render();
        let spans = services as f64 + 1.0;
        let folded_spans = (services - CAP) as f64;
        for name in [
            "traces_span_metrics_calls_total",
            "traces_span_metrics_duration_milliseconds_count",
            "tracemesh_service_requests_total",
            "tracemesh_service_request_duration_milliseconds_count",
        ] {
            let (labelled, overflow, total) = census(&text, name);
            assert_eq!(labelled, CAP, "{name}: series held at the cap");
            assert_eq!(overflow, Some(folded_spans), "{name}: one overflow series");
            assert_eq!(total, spans, "{name}: every span counted once");
        }
        // The overflow histogram has its buckets and only the overflow label.
        assert!(text.contains(r#"traces_span_metrics_duration_milliseconds_bucket{otel_metric_overflow="true",le="4"} 450"#), "{text}");
        assert!(
            text.contains(r#"traces_span_metrics_calls_total{service_name="svc-0",span_kind="SPAN_KIND_SERVER",span_name="GET /",status_code="STATUS_CODE_UNSET"} 2"#),
            "{text}"
        );
        for metric in [
            "traces_span_metrics_calls_total",
            "traces_span_metrics_duration_milliseconds",
            "tracemesh_service_requests_total",
            "tracemesh_service_request_duration_milliseconds",
        ] {
            assert_eq!(folded(&text, metric), folded_spans, "{metric}");
        }
        for metric in [
            "traces_service_graph_request_total",
            "traces_service_graph_unpaired_spans_total",
        ] {
            assert_eq!(folded(&text, metric), 0.0, "{metric} starts at zero");
        }
    }

    #[test]
    fn the_overflow_series_appears_only_once_something_is_folded() {
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, CAP).unwrap();
        let now = Instant::now();
        for i in 0..CAP {
            let span = server_span(i as u64 + 1, false);
            observe(&mut metrics, &resource(&format!("svc-{i}")), &span, now);
        }
        let text = collector.render();
        assert!(!text.contains("{otel_metric_overflow="), "{text}");
        assert_eq!(folded(&text, "traces_span_metrics_calls_total"), 0.0);
        let span = server_span(CAP as u64 + 1, false);
        observe(&mut metrics, &resource("one-too-many"), &span, now);
        let text = collector.render();
        assert!(
            text.contains(r#"traces_span_metrics_calls_total{otel_metric_overflow="true"} 1"#),
            "{text}"
        );
        assert!(!text.contains("one-too-many"), "{text}");
    }

    #[test]
    fn service_graph_series_are_capped_and_totals_kept() {
        // Before: one unpaired (and dropped) series per client service,
        // kept forever: a million service names made /metrics 106 MB.
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, CAP).unwrap();
        let now = Instant::now();
        let services = 10 * CAP;
        let mut id = 0u64;
        let mut span_id = || {
            id += 1;
            id.to_be_bytes().to_vec()
        };
        for i in 0..services {
            // A paired call, a failed one every fourth.
            let client = Span {
                trace_id: vec![1; 16],
                span_id: span_id(),
                name: "call".into(),
                kind: 3,
                end_time_unix_nano: 2_000_000,
                ..Default::default()
            };
            let server = Span {
                span_id: span_id(),
                parent_span_id: client.span_id.clone(),
                kind: 2,
                status: Some(Status {
                    code: if i % 4 == 0 { 2 } else { 0 },
                    message: String::new(),
                }),
                ..client.clone()
            };
            observe(
                &mut metrics,
                &resource(&format!("client-{i}")),
                &client,
                now,
            );
            observe(
                &mut metrics,
                &resource(&format!("server-{i}")),
                &server,
                now,
            );
            // A client span to an uninstrumented peer, one with no other
            // side, and a server span whose client never came.
            let peer = Span {
                span_id: span_id(),
                attributes: vec![attributes::string("peer.service", format!("peer-{i}"))],
                ..client.clone()
            };
            observe(&mut metrics, &resource(&format!("client-{i}")), &peer, now);
            let lonely = Span {
                span_id: span_id(),
                ..client.clone()
            };
            observe(
                &mut metrics,
                &resource(&format!("lonely-{i}")),
                &lonely,
                now,
            );
            let orphan = Span {
                span_id: span_id(),
                parent_span_id: span_id(),
                ..server.clone()
            };
            observe(
                &mut metrics,
                &resource(&format!("orphan-{i}")),
                &orphan,
                now,
            );
        }
        metrics.expire(now + EDGE_WAIT);
        let text = collector.render();
        let edges = 2.0 * services as f64;
        for (name, total) in [
            ("traces_service_graph_request_total", edges),
            (
                "traces_service_graph_request_failed_total",
                (services / 4) as f64,
            ),
            ("traces_service_graph_request_client_seconds_count", edges),
            (
                "traces_service_graph_request_server_seconds_count",
                services as f64,
            ),
            (
                "traces_service_graph_unpaired_spans_total",
                2.0 * services as f64,
            ),
        ] {
            let (labelled, overflow, sum) = census(&text, name);
            assert!(labelled <= CAP, "{name}: {labelled} series");
            assert!(overflow.is_some(), "{name}: an overflow series");
            assert_eq!(sum, total, "{name}: every request or span counted once");
        }
        assert_eq!(census(&text, "traces_service_graph_request_total").0, CAP);
        assert_eq!(
            census(&text, "traces_service_graph_unpaired_spans_total").0,
            CAP
        );
        assert_eq!(
            folded(&text, "traces_service_graph_request_total"),
            edges - CAP as f64
        );
        assert_eq!(
            folded(&text, "traces_service_graph_unpaired_spans_total"),
            (2 * services - CAP) as f64
        );
    }

    #[test]
    fn dropped_spans_are_capped_by_service_too() {
        let collector = Metrics::new().unwrap();
        let mut metrics = SpanMetrics::new(&collector, CAP).unwrap();
        let now = Instant::now();
        let client = |id: u64| Span {
            trace_id: vec![3; 16],
            span_id: id.to_be_bytes().to_vec(),
            name: "call".into(),
            kind: 3,
            ..Default::default()
        };
        let filler = resource("filler");
        for id in 1..=MAX_PENDING_EDGES as u64 {
            observe(&mut metrics, &filler, &client(id), now);
        }
        let services = 10 * CAP;
        for i in 0..services {
            let id = (MAX_PENDING_EDGES + 1 + i) as u64;
            observe(
                &mut metrics,
                &resource(&format!("svc-{i}")),
                &client(id),
                now,
            );
        }
        let text = collector.render();
        let (labelled, overflow, total) = census(&text, "traces_service_graph_dropped_spans_total");
        assert_eq!(labelled, CAP);
        assert_eq!(overflow, Some((services - CAP) as f64));
        assert_eq!(total, services as f64);
    }
}
