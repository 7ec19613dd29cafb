//! The exchange's spans: this hop's (SERVER inbound, CLIENT outbound), and a
//! CLIENT span per retry attempt under it. Attributes follow the
//! OpenTelemetry HTTP conventions; they are built only for recorded spans.

use std::time::SystemTime;

use http::{HeaderMap, Request, Version};
use hyper::body::Incoming;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::trace::{Span, Tracer};

use super::Exchange;
use super::record::request_authority;
use crate::model::cluster::Endpoint;
use crate::proxy::{Direction, Downstream};
use crate::trace_context::{self, Decision};

/// Starts this hop's span, a child of the caller's context (or a root),
/// recorded as the caller decided (the sampler reads the decision from the
/// parent context). Also returns the caller's span id (B3's parent field).
pub(super) fn start(
    tracer: &Tracer,
    direction: Direction,
    headers: &HeaderMap,
) -> (Span, Option<SpanId>) {
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
    // A parent's flags carry a decision; the sampler only needs telling when
    // the caller decided without ids (B3 `0`/`1`/`d`) or sent ids without a
    // decision (B3 "defer") — rare, so the common path allocates nothing more.
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
    (span, caller.parent.map(|(_, span_id)| span_id))
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

impl Exchange {
    pub(super) fn start_attributes(&mut self, req: &Request<Incoming>, down: &Downstream) {
        let headers = req.headers();
        let (host, port) = crate::host::split_host_port(request_authority(req).unwrap_or(""));
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
        if self.direction == Direction::Inbound {
            attributes.push(KeyValue::new(
                "network.peer.address",
                down.peer.ip().to_string(),
            ));
            attributes.push(KeyValue::new(
                "network.peer.port",
                i64::from(down.peer.port()),
            ));
            attributes.push(KeyValue::new("client.address", down.peer.ip().to_string()));
        }
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        self.span.set_attributes(attributes);
        // Istio's names: the service's FQDN and declared port, the same on
        // both sides of a call and in every run. Inbound, the port the
        // caller addressed the service on, else the original destination.
        let name = match self.direction {
            Direction::Inbound => {
                let service = &self.identity.service;
                let addressed = port.filter(|_| {
                    host == service.host
                        || host == service.name
                        || host
                            .strip_prefix(service.name.as_str())
                            .and_then(|rest| rest.strip_prefix('.'))
                            .is_some_and(|rest| {
                                rest.strip_prefix(service.namespace.as_str())
                                    .is_some_and(|r| r.is_empty() || r.starts_with('.'))
                            })
                });
                format!(
                    "{}:{}/*",
                    service.host,
                    addressed.unwrap_or(self.downstream.1.port())
                )
            }
            Direction::Outbound => format!("{host}:{}/*", port.unwrap_or(80)),
        };
        self.span.update_name(name);
    }

    /// The name of an outbound span once its cluster is known: the
    /// service's FQDN and port, as the server span of the call names it.
    fn outbound_name(&self) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|cluster| format!("{}:{}/*", cluster.service.host, cluster.port))
    }

    pub(super) fn route_attributes(&mut self, rule_name: Option<&std::sync::Arc<str>>) {
        if let Some(name) = rule_name {
            self.span
                .set_attribute(KeyValue::new("http.route", name.to_string()));
        }
        if self.direction == Direction::Outbound
            && let Some(name) = self.outbound_name()
        {
            self.span.update_name(name);
        }
    }

    /// A retry is about to go out: an event on this hop's span.
    pub fn note_retry(&mut self, attempt: u32, reason: &'static str) {
        if self.recording {
            let attributes = vec![
                KeyValue::new("http.request.resend_count", i64::from(attempt)),
                KeyValue::new("reason", reason),
            ];
            self.span.add_event("retry", attributes);
        }
    }

    /// Starts the CLIENT span of retry number `attempt` and names it as the
    /// parent in the attempt's headers.
    pub fn start_retry_span(&mut self, attempt: u32, endpoint: &Endpoint, headers: &mut HeaderMap) {
        let name = self
            .outbound_name()
            .unwrap_or_else(|| format!("retry {attempt}"));
        let tracer = &self.worker.shared.tracer;
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
        self.retry_span = Some(span);
    }

    /// Ends the current retry span with the attempt's outcome.
    pub fn end_retry_span(&mut self, status: Option<u16>, failure: Option<&'static str>) {
        let Some(mut span) = self.retry_span.take() else {
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

    pub(super) fn end_span(&mut self, request_bytes: u64) {
        let mut attributes = vec![
            KeyValue::new("tracemesh.response_flags", self.flags.as_str().into_owned()),
            KeyValue::new("http.request.body.size", request_bytes as i64),
            KeyValue::new("http.response.body.size", self.response_bytes as i64),
        ];
        if self.status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(self.status),
            ));
        }
        if let Some(status) = self.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(status)));
        }
        if self.attempts > 1 {
            attributes.push(KeyValue::new(
                "tracemesh.retry.attempts",
                i64::from(self.attempts),
            ));
        }
        if self.audited {
            attributes.push(KeyValue::new("tracemesh.authz.audit", true));
        }
        let tls_peer = match self.direction {
            Direction::Inbound => self
                .downstream_tls
                .as_ref()
                .and_then(|t| t.principal.clone()),
            Direction::Outbound => self.upstream_peer.clone(),
        };
        if let Some(peer) = tls_peer {
            let key = if self.direction == Direction::Inbound {
                "tracemesh.source.principal"
            } else {
                "tracemesh.destination.principal"
            };
            attributes.push(KeyValue::new(key, peer.to_string()));
            attributes.push(KeyValue::new(
                "tracemesh.connection_security_policy",
                "mutual_tls",
            ));
        }
        if let Some(reason) = self.transport_failure {
            attributes.push(KeyValue::new("tracemesh.upstream.tls_failure", reason));
        }
        if let Some(cluster) = &self.cluster {
            attributes.push(KeyValue::new(
                "tracemesh.upstream_cluster",
                cluster.name.clone(),
            ));
            if self.direction == Direction::Outbound {
                attributes.push(KeyValue::new("peer.service", cluster.service.name.clone()));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            let address = StringValue::from(endpoint.address_text.clone());
            if self.direction == Direction::Outbound {
                attributes.push(KeyValue::new("network.peer.address", address.clone()));
            }
            attributes.push(KeyValue::new("tracemesh.upstream", address));
        }
        let client = self.direction == Direction::Outbound;
        let failed = self.flags.is_failure()
            || self.status >= 500
            || (client && self.status >= 400)
            || self.status == 0;
        if failed {
            let error_type = if !self.flags.is_failure() {
                self.status.to_string()
            } else {
                self.flags.as_str().into_owned()
            };
            attributes.push(KeyValue::new("error.type", error_type.clone()));
            self.span.set_status(Status::error(error_type));
        }
        self.span.set_attributes(attributes);
        self.span.end_with_timestamp(SystemTime::now());
    }
}
