//! This hop's span (SERVER inbound, CLIENT outbound) and a CLIENT span per
//! retry attempt under it. The span's identity is fixed when the request
//! arrives (the next hop is told it); everything it reports is read from
//! the request's [`RequestRecord`] when it ends. Attributes follow the
//! OpenTelemetry HTTP conventions and are built only for recorded spans.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Version};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

use super::otlp_wire::Value;
use super::record::{RequestRecord, X_REQUEST_ID};
use super::span::{Kind, Parent, Sampling, Span};
use super::spans::WorkerSpans;
use crate::flags::ResponseFlags;
use crate::host::{request_authority, split_host_port};
use crate::model::capture::ServicePorts;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::telemetry::TracingPolicy;
use crate::model::{Direction, Identity};
use crate::trace_context::{self, Decision};

/// The spans of one request.
pub struct HopSpan {
    span: Span,
    /// The caller's span, parent of `span` (B3's parent-span fields).
    caller_span: Option<SpanId>,
    recording: bool,
    /// Spans are reported (Telemetry `disableSpanReporting` is not set):
    /// retry attempts' spans follow this hop's.
    report: bool,
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
fn service_span_name(cluster: &Cluster) -> impl FnOnce(&mut String) + '_ {
    move |name| host_port_name(name, &cluster.service.host, cluster.port)
}

/// Writes Istio's span name `host:port/*` (no formatting machinery: this
/// runs once or twice per request).
fn host_port_name(name: &mut String, host: &str, port: u16) {
    name.push_str(host);
    name.push(':');
    name.push_str(itoa::Buffer::new().format(port));
    name.push_str("/*");
}

impl HopSpan {
    /// Starts this hop's span (SERVER where requests arrive: inbound, and
    /// at an ingress gateway; CLIENT outbound), a child of the caller's context (or a root),
    /// recorded as the caller decided (the sampler reads the decision from
    /// the parent context), starting at `start`.
    pub fn start(
        spans: &Rc<WorkerSpans>,
        kind: Kind,
        headers: &HeaderMap,
        sampling: Sampling,
        start: SystemTime,
    ) -> Self {
        let caller = trace_context::extract(headers);
        let remote = caller.parent.map(|(trace_id, span_id)| {
            let flags = match caller.decision.sampled() {
                Some(true) => TraceFlags::SAMPLED,
                _ => TraceFlags::NOT_SAMPLED,
            };
            SpanContext::new(trace_id, span_id, flags, true, caller.trace_state)
        });
        // A parent's flags carry a decision; the sampler only needs telling
        // when the caller decided without ids (B3 `0`/`1`/`d`) or sent ids
        // without a decision (B3 "defer").
        let decision = (caller.parent.is_some() == (caller.decision == Decision::Defer))
            .then_some(caller.decision);
        let parent = Parent {
            context: remote.as_ref(),
            decision,
        };
        let span = Span::start_with(spans, kind, parent, start, sampling);
        Self {
            recording: span.is_recording(),
            report: sampling.report,
            span,
            caller_span: caller.parent.map(|(_, span_id)| span_id),
            attempt: None,
        }
    }

    /// Whether the span is recorded (sampled): only then are attributes built.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Whether spans are reported (Telemetry's `disableSpanReporting` unset).
    pub fn reports(&self) -> bool {
        self.report
    }

    /// This hop's span context (the parent of mirrors).
    pub fn context(&self) -> SpanContext {
        self.span.context().clone()
    }

    /// Writes this hop's trace context into the headers for the next hop.
    /// A hop whose spans are not reported (`disableSpanReporting`) writes
    /// nothing: the caller's context goes on unchanged, as Envoy leaves it
    /// when Istio configures no tracing for the side, so the next hop's
    /// spans hang off a span that is reported.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if !self.report {
            return;
        }
        trace_context::inject(headers, self.span.context(), self.caller_span);
    }

    /// The request as it arrived: its attributes and (inbound) its name.
    /// Inbound, the span is named after the service and the port the caller
    /// addressed it on; when the Host names no port of the service (an
    /// ingress gateway passes the client's), the service port `ports`
    /// declares for the port the request arrived on, as Istio's inbound
    /// route decorator names it (`<fqdn>:<service port>/*`); the arrival
    /// port only when the service declares no ports here. Istio's names,
    /// the same on both sides of a call and in every run.
    pub fn describe_request<B>(
        &mut self,
        req: &Request<B>,
        record: &RequestRecord,
        ports: &ServicePorts,
    ) {
        if !self.recording {
            return;
        }
        let headers = req.headers();
        let (host, port) = split_host_port(request_authority(req).unwrap_or(""));
        let span = &mut self.span;
        span.set("http.request.method", Value::Str(req.method().as_str()));
        span.set("url.path", Value::Str(req.uri().path()));
        span.set(
            "url.scheme",
            Value::Str(req.uri().scheme_str().unwrap_or("http")),
        );
        span.set(
            "network.protocol.version",
            Value::Str(protocol_version(req.version())),
        );
        span.set("server.address", Value::Str(host));
        if let Some(port) = port {
            span.set("server.port", Value::Int(i64::from(port)));
        }
        if let Some(ua) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            span.set("user_agent.original", Value::Str(ua));
        }
        let peer = record.downstream_remote;
        if record.direction == Direction::Inbound {
            span.set_display("network.peer.address", peer.ip());
            span.set("network.peer.port", Value::Int(i64::from(peer.port())));
            span.set_display("client.address", peer.ip());
        }
        if let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
            span.set("guid:x-request-id", Value::Str(id));
        }
        span.set_name(|name| match record.direction {
            Direction::Inbound => {
                let arrival = record.downstream_local.port();
                // The Host's port only when it is one the service
                // declares (when it declares any): the caller writes
                // the Host, and a name per made-up port would grow.
                let port = port
                    .filter(|&p| addresses_service(host, &record.local) && ports.may_name(p))
                    .or_else(|| ports.addressed(arrival))
                    .unwrap_or(arrival);
                host_port_name(name, &record.local.service.host, port);
            }
            Direction::Outbound => host_port_name(name, host, port.unwrap_or(80)),
        });
    }

    /// The Telemetry's `customTags` of this side: literal, request header
    /// (or its default) and environment values, as span attributes.
    pub fn add_custom_tags(&mut self, tracing: &TracingPolicy, headers: &HeaderMap) {
        if !self.recording {
            return;
        }
        for (name, value) in tracing.tags(headers) {
            self.span.set(name, Value::Str(value));
        }
    }

    /// A retry is about to go out, as the VirtualService `rule` (details'
    /// `Kind:namespace/name[rule]`) asks: an event on this hop's span.
    pub fn note_retry(&mut self, attempt: u32, reason: &'static str, rule: Option<&str>) {
        if self.recording {
            let policy = policy(rule, None);
            let mut attributes = vec![
                ("http.request.resend_count", Value::Int(i64::from(attempt))),
                ("reason", Value::Str(reason)),
            ];
            attributes.extend(
                policy
                    .as_deref()
                    .map(|p| ("tracemesh.policy", Value::Str(p))),
            );
            self.span.add_event("retry", &attributes);
        }
    }

    /// A fault delay of `delay` from the VirtualService `rule` begins.
    pub fn note_fault_delay(&mut self, delay: Duration, rule: Option<&str>) {
        if self.recording {
            let policy = policy(rule, Some("fault.delay"));
            let mut attributes = vec![("duration_ms", Value::Double(millis(delay)))];
            attributes.extend(
                policy
                    .as_deref()
                    .map(|p| ("tracemesh.policy", Value::Str(p))),
            );
            self.span.add_event("fault_delay", &attributes);
        }
    }

    /// The attempt waited `waited` for a pooled connection, held back by
    /// the DestinationRule `rule`'s `limit` (a field path): an event at the
    /// end of the wait.
    pub fn note_pool_wait(&mut self, limit: &'static str, waited: Duration, rule: Option<&str>) {
        if self.recording {
            let policy = policy(rule, Some(limit));
            let mut attributes = vec![
                ("tracemesh.limit", Value::Str(limit)),
                ("duration_ms", Value::Double(millis(waited))),
            ];
            attributes.extend(
                policy
                    .as_deref()
                    .map(|p| ("tracemesh.policy", Value::Str(p))),
            );
            self.span.add_event("connection_pool_wait", &attributes);
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
            let policy = policy(rule, Some("outlierDetection"));
            let mut attributes = vec![
                ("tracemesh.upstream", Value::Str(&endpoint.address_text)),
                ("reason", Value::Str(reason)),
                ("duration_ms", Value::Double(millis(duration))),
            ];
            attributes.extend(
                policy
                    .as_deref()
                    .map(|p| ("tracemesh.policy", Value::Str(p))),
            );
            self.span.add_event("outlier_ejection", &attributes);
        }
    }

    /// Starts the CLIENT span of retry number `attempt` and names it as the
    /// parent in the attempt's headers.
    pub fn start_attempt(
        &mut self,
        spans: &Rc<WorkerSpans>,
        attempt: u32,
        cluster: Option<&Cluster>,
        endpoint: &Endpoint,
        headers: &mut HeaderMap,
    ) {
        let parent = Parent {
            context: Some(self.span.context()),
            decision: None,
        };
        let sampling = Sampling {
            ratio: spans.ratio(),
            report: self.report,
        };
        let mut span = Span::start_with(spans, Kind::Client, parent, SystemTime::now(), sampling);
        match cluster {
            Some(cluster) => span.set_name(service_span_name(cluster)),
            None => span.set_name(|name| {
                use std::fmt::Write as _;
                let _ = write!(name, "retry {attempt}");
            }),
        }
        trace_context::inject(headers, span.context(), Some(self.span.context().span_id()));
        span.set("http.request.resend_count", Value::Int(i64::from(attempt)));
        span.set("tracemesh.upstream", Value::Str(&endpoint.address_text));
        self.attempt = Some(span);
    }

    /// Ends the current retry span with the attempt's outcome.
    pub fn end_attempt(&mut self, status: Option<u16>, failure: Option<&'static str>) {
        let Some(mut span) = self.attempt.take() else {
            return;
        };
        if let Some(status) = status {
            span.set("http.response.status_code", Value::Int(i64::from(status)));
            if status >= 500 {
                span.set_error(status.to_string());
            }
        }
        if let Some(failure) = failure {
            span.set_error(failure);
        }
        span.end(SystemTime::now());
    }

    /// Ends this hop's span at `end` with what `record` says happened.
    pub fn finish(&mut self, record: &RequestRecord, end: SystemTime) {
        if !self.recording {
            return;
        }
        let outbound = record.direction == Direction::Outbound;
        let span = &mut self.span;
        if let Some(template) = &record.http_route {
            span.set("http.route", Value::Str(template));
        }
        if let Some(name) = &record.route {
            span.set("tracemesh.route_name", Value::Str(name));
        }
        if let Some(details) = &record.details {
            span.set("tracemesh.response_code_details", Value::Str(details));
        }
        if let (true, Some(cluster)) = (outbound, &record.cluster) {
            span.set_name(service_span_name(cluster));
        }
        let flags = record.flags.as_str();
        span.set("tracemesh.response_flags", Value::Str(&flags));
        span.set(
            "http.request.body.size",
            Value::Int(record.request_bytes as i64),
        );
        span.set(
            "http.response.body.size",
            Value::Int(record.response_bytes as i64),
        );
        if record.status != 0 {
            span.set(
                "http.response.status_code",
                Value::Int(i64::from(record.status)),
            );
        }
        if let Some(status) = record.grpc_status {
            span.set("rpc.grpc.status_code", Value::Int(status));
        }
        if record.attempts > 1 {
            span.set(
                "tracemesh.retry.attempts",
                Value::Int(i64::from(record.attempts)),
            );
        }
        if record.audited.is_some() {
            span.set("tracemesh.authz.audit", Value::Bool(true));
        }
        if let Some(verdict) = &record.dry_run {
            span.set("tracemesh.authz.dry_run", Value::Str(verdict));
        }
        if let Some(policy) = &record.access_policy {
            span.set("tracemesh.authz.policy", Value::Str(policy));
        }
        if let Some(peer) = record.tls_peer() {
            let key = if outbound {
                "tracemesh.destination.principal"
            } else {
                "tracemesh.source.principal"
            };
            span.set(key, Value::Str(peer));
            span.set(
                "tracemesh.connection_security_policy",
                Value::Str("mutual_tls"),
            );
        }
        if let Some(reason) = record.transport_failure {
            span.set("tracemesh.upstream.tls_failure", Value::Str(reason));
        }
        if let Some(cluster) = &record.cluster {
            span.set("tracemesh.upstream_cluster", Value::Str(&cluster.name));
            if outbound {
                span.set("peer.service", Value::Str(&cluster.service.name));
            }
        }
        if let Some(endpoint) = &record.endpoint {
            if outbound {
                span.set("network.peer.address", Value::Str(&endpoint.address_text));
            }
            span.set("tracemesh.upstream", Value::Str(&endpoint.address_text));
        }
        if failed(span.kind(), record.status, record.flags) {
            let error_type = if record.flags.is_failure() {
                flags.into_owned()
            } else {
                record.status.to_string()
            };
            span.set("error.type", Value::Str(&error_type));
            span.set_error(error_type);
        }
        span.end_at(end);
    }
}

/// The flags of a request the agent refused on the client's account: its
/// 4xx answer is the client's error, not the service's.
const REFUSED_THE_CLIENT: ResponseFlags = ResponseFlags::RBAC_DENIED
    .with(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE)
    .with(ResponseFlags::RATE_LIMITED)
    .with(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR)
    .with(ResponseFlags::NO_ROUTE)
    .with(ResponseFlags::FAULT_ABORT)
    .with(ResponseFlags::STREAM_IDLE_TIMEOUT)
    .with(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);

/// The flags of an upgraded stream's end by either side.
const UPGRADE_ENDS: ResponseFlags = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION
    .with(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);

/// Whether a span of `kind` whose request was answered `status` (0: no
/// answer) with `flags` failed, as its status says. No answer or a 5xx is
/// an error on both kinds (Envoy's tracer marks these alone), and so is a
/// failure the agent recorded (a response cut mid-body, whatever its
/// status). A 4xx is an error on a CLIENT span; on a SERVER span it is the
/// client's error, not this hop's (OpenTelemetry's HTTP conventions leave
/// its status unset), so a request the agent refused on the client's
/// account — denied (RBAC 403), rate limited (429), a refused head (400),
/// no route (404) — keeps its flags in `tracemesh.response_flags` and is
/// no error; a 4xx with an upstream failure beside it (a 404 cut mid-body)
/// is one. An upgraded stream (a `101`: a WebSocket) ends when either
/// side closes it, flagged DC or UC as Envoy flags it: that is its normal
/// end, no error (Envoy's tracer does not mark it either); cut by the
/// stream idle timeout (SI), it failed, as any stream so cut.
fn failed(kind: Kind, status: u16, flags: ResponseFlags) -> bool {
    let flags = match status {
        101 => flags.except(UPGRADE_ENDS),
        _ => flags,
    };
    let answered_4xx = (400..500).contains(&status);
    status == 0
        || status >= 500
        || match kind {
            Kind::Client => answered_4xx || flags.is_failure(),
            Kind::Server if answered_4xx => flags.except(REFUSED_THE_CLIENT).is_failure(),
            Kind::Server => flags.is_failure(),
        }
}

/// The `tracemesh.policy` attribute of an event: `rule`, narrowed to one
/// of its fields when `field` says which (`rule[field]`).
fn policy(rule: Option<&str>, field: Option<&str>) -> Option<String> {
    let rule = rule?;
    Some(match field {
        Some(field) => format!("{rule}[{field}]"),
        None => rule.to_owned(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_answering_4xx_has_not_failed_a_client_getting_one_has() {
        let rbac = ResponseFlags::RBAC_DENIED;
        let cut = ResponseFlags::UPSTREAM_CONNECTION_TERMINATION;
        for (kind, status, flags, want) in [
            (Kind::Server, 200, ResponseFlags::NONE, false),
            (Kind::Server, 403, rbac, false),
            (Kind::Server, 429, ResponseFlags::RATE_LIMITED, false),
            (
                Kind::Server,
                400,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                false,
            ),
            (Kind::Server, 404, ResponseFlags::NONE, false),
            (Kind::Server, 404, ResponseFlags::NO_ROUTE, false),
            (Kind::Server, 404, cut, true),
            (
                Kind::Server,
                403,
                ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                false,
            ),
            (Kind::Server, 200, cut, true),
            (
                Kind::Server,
                0,
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                true,
            ),
            (Kind::Server, 503, ResponseFlags::UPSTREAM_OVERFLOW, true),
            (Kind::Server, 500, ResponseFlags::NONE, true),
            (Kind::Server, 200, ResponseFlags::FAULT_DELAY, false),
            (Kind::Client, 200, ResponseFlags::NONE, false),
            (Kind::Client, 403, rbac, true),
            (Kind::Client, 404, ResponseFlags::NONE, true),
            (Kind::Client, 200, cut, true),
            (Kind::Client, 200, ResponseFlags::FAULT_DELAY, false),
            (Kind::Client, 0, ResponseFlags::NONE, true),
            (
                Kind::Server,
                101,
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                false,
            ),
            (
                Kind::Client,
                101,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                false,
            ),
            (Kind::Client, 101, ResponseFlags::STREAM_IDLE_TIMEOUT, true),
            (
                Kind::Server,
                200,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                true,
            ),
        ] {
            assert_eq!(
                failed(kind, status, flags),
                want,
                "{kind:?} {status} {}",
                flags.as_str()
            );
        }
    }
}
