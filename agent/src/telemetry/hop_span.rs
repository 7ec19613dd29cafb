//! This hop's span (SERVER inbound, CLIENT outbound) and a CLIENT span per
//! retry attempt under it. The span's identity is fixed when the request
//! arrives (the next hop is told it); everything it reports is read from
//! the request's [`RequestRecord`] when it ends. Attributes follow the
//! OpenTelemetry HTTP conventions and are built only for recorded spans.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::trace::{Span, Tracer};

use super::record::RequestRecord;
use crate::host::{request_authority, split_host_port};
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::{Direction, Identity};
use crate::trace_context::{self, Decision};

/// The spans of one request.
pub struct HopSpan {
    span: Span,
    /// The caller's span, parent of `span` (B3's parent-span fields).
    caller_span: Option<SpanId>,
    recording: bool,
    /// The CLIENT span of the retry attempt in flight.
    attempt: Option<Span>,
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// Istio's name of a span: the service's FQDN and port.
fn service_span_name(cluster: &Cluster) -> String {
    format!("{}:{}/*", cluster.service.host, cluster.port)
}

impl HopSpan {
    /// Starts this hop's span, a child of the caller's context (or a root),
    /// recorded as the caller decided (the sampler reads the decision from
    /// the parent context).
    pub fn start(tracer: &Tracer, direction: Direction, headers: &HeaderMap) -> Self {
        let caller = trace_context::extract(headers);
        let mut parent = Context::new();
        if let Some((trace_id, span_id)) = caller.parent {
            let flags = match caller.decision.sampled() {
                Some(true) => TraceFlags::SAMPLED,
                _ => TraceFlags::NOT_SAMPLED,
            };
            let remote = SpanContext::new(trace_id, span_id, flags, true, caller.trace_state);
            parent = parent.with_remote_span_context(remote);
        }
        // A parent's flags carry a decision; the sampler only needs telling
        // when the caller decided without ids (B3 `0`/`1`/`d`) or sent ids
        // without a decision (B3 "defer") — rare, so the common path
        // allocates nothing more.
        if caller.parent.is_some() == (caller.decision == Decision::Defer) {
            parent = parent.with_value(caller.decision);
        }
        let kind = match direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let builder = tracer
            .span_builder("")
            .with_kind(kind)
            .with_start_time(SystemTime::now());
        let span = tracer.build_with_context(builder, &parent);
        Self {
            recording: span.is_recording(),
            span,
            caller_span: caller.parent.map(|(_, span_id)| span_id),
            attempt: None,
        }
    }

    /// Whether the span is recorded (sampled): only then are attributes built.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// This hop's span context (the parent of mirrors).
    pub fn context(&self) -> SpanContext {
        self.span.span_context().clone()
    }

    /// Writes this hop's trace context into the headers for the next hop.
    pub fn inject(&self, headers: &mut HeaderMap) {
        trace_context::inject(headers, self.span.span_context(), self.caller_span);
    }

    /// The request as it arrived: its attributes and (inbound) its name.
    /// Inbound, the span is named after the service and the port the caller
    /// addressed it on, else the original destination — Istio's names, the
    /// same on both sides of a call and in every run.
    pub fn describe_request<B>(&mut self, req: &Request<B>, record: &RequestRecord) {
        if !self.recording {
            return;
        }
        let headers = req.headers();
        let (host, port) = split_host_port(request_authority(req).unwrap_or(""));
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_owned()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new(
                "url.scheme",
                req.uri().scheme_str().unwrap_or("http").to_owned(),
            ),
            KeyValue::new("network.protocol.version", protocol_version(req.version())),
            KeyValue::new("server.address", host.to_owned()),
        ];
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(ua) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        let peer = record.downstream_remote;
        if record.direction == Direction::Inbound {
            attributes.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
            attributes.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
            attributes.push(KeyValue::new("client.address", peer.ip().to_string()));
        }
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        self.span.set_attributes(attributes);
        let name = match record.direction {
            Direction::Inbound => {
                let addressed = port.filter(|_| addresses_service(host, &record.local));
                let port = addressed.unwrap_or(record.downstream_local.port());
                format!("{}:{port}/*", record.local.service.host)
            }
            Direction::Outbound => format!("{host}:{}/*", port.unwrap_or(80)),
        };
        self.span.update_name(name);
    }

    /// A retry is about to go out, as the VirtualService `rule` (details'
    /// `Kind:namespace/name[rule]`) asks: an event on this hop's span.
    pub fn note_retry(&mut self, attempt: u32, reason: &'static str, rule: Option<&str>) {
        if self.recording {
            let mut attributes = vec![
                KeyValue::new("http.request.resend_count", i64::from(attempt)),
                KeyValue::new("reason", reason),
            ];
            attributes.extend(policy(rule, None));
            self.span.add_event("retry", attributes);
        }
    }

    /// A fault delay of `delay` from the VirtualService `rule` begins.
    pub fn note_fault_delay(&mut self, delay: Duration, rule: Option<&str>) {
        if self.recording {
            let mut attributes = vec![KeyValue::new("duration_ms", millis(delay))];
            attributes.extend(policy(rule, Some("fault.delay")));
            self.span.add_event("fault_delay", attributes);
        }
    }

    /// The attempt waited `waited` for a pooled connection, held back by
    /// the DestinationRule `rule`'s `limit` (a field path): an event at the
    /// end of the wait.
    pub fn note_pool_wait(&mut self, limit: &'static str, waited: Duration, rule: Option<&str>) {
        if self.recording {
            let mut attributes = vec![
                KeyValue::new("tracemesh.limit", limit),
                KeyValue::new("duration_ms", millis(waited)),
            ];
            attributes.extend(policy(rule, Some(limit)));
            self.span.add_event("connection_pool_wait", attributes);
        }
    }

    /// Outlier detection of the DestinationRule `rule` ejected `endpoint`
    /// for `duration`, because it crossed `reason` (the threshold's field).
    pub fn note_ejection(
        &mut self,
        endpoint: &Endpoint,
        reason: &'static str,
        duration: Duration,
        rule: Option<&str>,
    ) {
        if self.recording {
            let mut attributes = vec![
                KeyValue::new(
                    "tracemesh.upstream",
                    StringValue::from(endpoint.address_text.clone()),
                ),
                KeyValue::new("reason", reason),
                KeyValue::new("duration_ms", millis(duration)),
            ];
            attributes.extend(policy(rule, Some("outlierDetection")));
            self.span.add_event("outlier_ejection", attributes);
        }
    }

    /// Starts the CLIENT span of retry number `attempt` and names it as the
    /// parent in the attempt's headers.
    pub fn start_attempt(
        &mut self,
        tracer: &Tracer,
        attempt: u32,
        cluster: Option<&Cluster>,
        endpoint: &Endpoint,
        headers: &mut HeaderMap,
    ) {
        let name = cluster.map_or_else(|| format!("retry {attempt}"), service_span_name);
        let builder = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(SystemTime::now());
        let parent = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut span = tracer.build_with_context(builder, &parent);
        trace_context::inject(
            headers,
            span.span_context(),
            Some(self.span.span_context().span_id()),
        );
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.resend_count", i64::from(attempt)),
                KeyValue::new(
                    "tracemesh.upstream",
                    StringValue::from(endpoint.address_text.clone()),
                ),
            ]);
        }
        self.attempt = Some(span);
    }

    /// Ends the current retry span with the attempt's outcome.
    pub fn end_attempt(&mut self, status: Option<u16>, failure: Option<&'static str>) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(status.to_string()));
            }
        }
        if let Some(failure) = failure {
            span.set_status(Status::error(failure));
        }
        span.end_with_timestamp(SystemTime::now());
    }

    /// Ends this hop's span with what `record` says happened.
    pub fn finish(&mut self, record: &RequestRecord) {
        if !self.recording {
            return;
        }
        let outbound = record.direction == Direction::Outbound;
        if let Some(template) = &record.http_route {
            let template = StringValue::from(template.clone());
            self.span
                .set_attribute(KeyValue::new("http.route", template));
        }
        if let Some(name) = &record.route {
            let name = StringValue::from(name.clone());
            self.span
                .set_attribute(KeyValue::new("tracemesh.route_name", name));
        }
        if let Some(details) = &record.details {
            self.span.set_attribute(KeyValue::new(
                "tracemesh.response_code_details",
                details.to_string(),
            ));
        }
        if let (true, Some(cluster)) = (outbound, &record.cluster) {
            self.span.update_name(service_span_name(cluster));
        }
        let mut attributes = vec![
            KeyValue::new(
                "tracemesh.response_flags",
                record.flags.as_str().into_owned(),
            ),
            KeyValue::new("http.request.body.size", record.request_bytes as i64),
            KeyValue::new("http.response.body.size", record.response_bytes as i64),
        ];
        if record.status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(record.status),
            ));
        }
        if let Some(status) = record.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(status)));
        }
        if record.attempts > 1 {
            attributes.push(KeyValue::new(
                "tracemesh.retry.attempts",
                i64::from(record.attempts),
            ));
        }
        if record.audited {
            attributes.push(KeyValue::new("tracemesh.authz.audit", true));
        }
        if let Some(peer) = record.tls_peer() {
            let key = if outbound {
                "tracemesh.destination.principal"
            } else {
                "tracemesh.source.principal"
            };
            attributes.push(KeyValue::new(key, peer.to_string()));
            attributes.push(KeyValue::new(
                "tracemesh.connection_security_policy",
                "mutual_tls",
            ));
        }
        if let Some(reason) = record.transport_failure {
            attributes.push(KeyValue::new("tracemesh.upstream.tls_failure", reason));
        }
        if let Some(cluster) = &record.cluster {
            attributes.push(KeyValue::new(
                "tracemesh.upstream_cluster",
                cluster.name.clone(),
            ));
            if outbound {
                attributes.push(KeyValue::new("peer.service", cluster.service.name.clone()));
            }
        }
        if let Some(endpoint) = &record.endpoint {
            let address = StringValue::from(endpoint.address_text.clone());
            if outbound {
                attributes.push(KeyValue::new("network.peer.address", address.clone()));
            }
            attributes.push(KeyValue::new("tracemesh.upstream", address));
        }
        if record.failed() {
            let error_type = if record.flags.is_failure() {
                record.flags.as_str().into_owned()
            } else {
                record.status.to_string()
            };
            attributes.push(KeyValue::new("error.type", error_type.clone()));
            self.span.set_status(Status::error(error_type));
        }
        self.span.set_attributes(attributes);
        self.span.end_with_timestamp(SystemTime::now());
    }
}

/// The `tracemesh.policy` attribute of an event: `rule`, narrowed to one
/// of its fields when `field` says which.
fn policy(rule: Option<&str>, field: Option<&str>) -> Option<KeyValue> {
    let rule = rule?;
    let value = match field {
        Some(field) => format!("{rule}[{field}]"),
        None => rule.to_owned(),
    };
    Some(KeyValue::new("tracemesh.policy", value))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Whether `host` names this agent's service (its FQDN, short name, or
/// `name.namespace[.…]`).
fn addresses_service(host: &str, local: &Identity) -> bool {
    let service = &local.service;
    host == service.host
        || host == service.name
        || host
            .strip_prefix(service.name.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| {
                rest.strip_prefix(service.namespace.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('.'))
            })
}
