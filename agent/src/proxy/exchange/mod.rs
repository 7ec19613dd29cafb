//! One request from arrival to the last response byte: its record (what
//! telemetry reports), its span, and its in-flight resources. Completing it
//! records the Istio metrics, ends the span, writes the access log line and
//! gives the resources back — once, whether the response finished, the
//! agent answered itself, or the client went away.

mod in_flight;

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use opentelemetry::trace::SpanContext;

use super::attempts::AttemptRecord;
use super::body::{Received, ResponseBody, ResponseObserver};
use super::local_reply::{
    self, DIRECT_RESPONSE_DETAILS, DecidedBy, LocalReply, RESPONSE_CODE_DETAILS_HEADER,
};
use super::pool::UpstreamPeer;
use super::progress::{BodyFailure, RequestProgress, RouteDeadline};
use super::reset_reason::ResetReason;
use super::stream_idle::StreamClock;
use super::tap::Tap;
use super::upgrade::{Ended, EndedBy, Splice};
use super::{Direction, Downstream, Worker, headers};
use crate::flags::ResponseFlags;
use crate::model::Snapshot;
use crate::model::access::{Allowed, Denied, with_item};
use crate::model::capture::OutboundTrafficMode;
use crate::model::clock::now_ms;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::live::{ActiveRequest, EjectionReason, Slot};
use crate::model::peer::PeerInfo;
use crate::model::route::{
    ALLOW_ANY_ROUTE_NAME, BLOCK_ALL_ROUTE_NAME, DEFAULT_ROUTE_NAME, Matched,
};
use crate::model::service::ServiceName;
use crate::model::telemetry::{Side, TelemetryPolicy};
use crate::telemetry::grpc_messages::GrpcMessages;
use crate::telemetry::hop_span::HopSpan;
use crate::telemetry::metrics::Observed;
use crate::telemetry::peer_metadata::PEER_METADATA;
use crate::telemetry::record::{self, Details, LogFields, RequestFacts, RequestRecord};
use crate::telemetry::span::{Kind, Sampling};

/// Envoy's details of a response the upstream sent.
const VIA_UPSTREAM: &str = "via_upstream";
/// Envoy's details of a stream its downstream ended before it was over.
const DOWNSTREAM_REMOTE_DISCONNECT: &str = "downstream_remote_disconnect";
use in_flight::InFlight;

/// The body of every response the agent sends downstream.
pub type ProxyBody = ResponseBody<Box<Exchange>>;

/// One request in flight.
pub struct Exchange {
    worker: Rc<Worker>,
    record: RequestRecord,
    span: HopSpan,
    held: InFlight,
    request_body: Option<Rc<RequestProgress>>,
    /// Headers every response to the request carries (rate-limit status).
    extra_headers: Option<HeaderMap>,
    /// Local replies carry their details in a header.
    reply_details: bool,
    /// The Telemetry's access logs for this side, when it sets them (else
    /// the Agent's own log applies).
    access_logs: Option<(Arc<TelemetryPolicy>, Side)>,
    done: bool,
    /// The request is a HEAD: the agent's own answers send no body.
    head: bool,
    /// The `Content-Length` of the upstream's answer, in bytes, when its
    /// head declared one.
    declared_length: Option<u64>,
    /// Keeps the connection from counting as idle until the request is
    /// over; says whether the connection was cut for a stalled client.
    stream: super::activity::Stream,
}

thread_local! {
    static UNKNOWN_PEER: Arc<PeerInfo> = Arc::new(PeerInfo::unknown());
}

impl Exchange {
    /// Starts the record: reads the caller's trace context and starts this
    /// hop's span as its child (or a new trace's root).
    pub fn begin<B>(
        worker: &Rc<Worker>,
        down: &Downstream,
        snapshot: &Snapshot,
        req: &Request<B>,
    ) -> Box<Self> {
        // The workload's Telemetry: sampling of new traces, reporting, tags.
        let side = match down.direction {
            Direction::Inbound => Side::Server,
            Direction::Outbound => Side::Client,
        };
        let telemetry = &snapshot.telemetry;
        let side_policy = telemetry.side(side);
        let tracing = side_policy.tracing.as_ref();
        let sampling = Sampling::of(telemetry, side, worker.spans.ratio());
        // An ingress gateway is where a request enters the mesh: its span
        // is the trace's SERVER root (Istio's gateway starts the trace).
        let kind = match (down.direction, &down.gateway) {
            (Direction::Inbound, _) | (Direction::Outbound, Some(_)) => Kind::Server,
            (Direction::Outbound, None) => Kind::Client,
        };
        // One reading of each clock: the span starts when the record does.
        let (start, start_time) = (Instant::now(), SystemTime::now());
        let span = HopSpan::start(&worker.spans, kind, req.headers(), sampling, start_time);
        let tls = down.tls.as_ref();
        let peer = match down.direction {
            Direction::Inbound => req.headers().get(PEER_METADATA).and_then(|v| {
                let principal = tls.and_then(|t| t.principal.as_deref());
                worker.announced_peer(v.as_bytes(), principal, snapshot)
            }),
            Direction::Outbound => None,
        };
        let record = RequestRecord {
            local: snapshot.identity.clone(),
            direction: down.direction,
            downstream_remote: down.peer,
            downstream_local: down.local,
            downstream_principal: tls.and_then(|t| t.principal.clone()),
            requested_server_name: tls.and_then(|t| t.sni.clone()),
            start,
            start_time,
            version: req.version(),
            grpc: record::is_grpc(req.headers()),
            route: None,
            route_reference: None,
            http_route: None,
            cluster: None,
            endpoint: None,
            attempts: 0,
            // Without believable metadata, what the caller's certificate
            // says (its namespace), as Istio's populatePeerInfo.
            peer: peer
                .or_else(|| {
                    (down.direction == Direction::Inbound)
                        .then(|| tls.and_then(|t| t.peer.clone()))
                        .flatten()
                })
                .unwrap_or_else(|| UNKNOWN_PEER.with(Clone::clone)),
            unrouted_service: None,
            upstream_principal: None,
            upstream_local: None,
            transport_failure: None,
            status: 0,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            details: None,
            audited: None,
            dry_run: None,
            access_policy: None,
            request_bytes: 0,
            response_bytes: 0,
            grpc_request_messages: 0,
            grpc_response_messages: GrpcMessages::default(),
            upstream_time: None,
            log: match &side_policy.access_logs {
                Some(logs) => logs.iter().any(|l| !l.disabled),
                None => worker.shared.access_log.is_some(),
            }
            .then(|| {
                // As the gateway appends it before anything logs it.
                let forwarded_for = (down.gateway.is_some())
                    .then(|| headers::forwarded_for_with(req.headers(), down.peer.ip()));
                Box::new(LogFields::of(req, forwarded_for))
            }),
            facts: side_policy
                .reads_requests()
                .then(|| Box::new(RequestFacts::of(req, tls.is_some()))),
        };
        let mut exchange = Box::new(Self {
            worker: worker.clone(),
            record,
            span,
            held: InFlight::default(),
            request_body: None,
            extra_headers: None,
            reply_details: snapshot.bootstrap.telemetry.reply_details,
            access_logs: side_policy
                .access_logs
                .is_some()
                .then(|| (telemetry.clone(), side)),
            done: false,
            head: req.method() == http::Method::HEAD,
            declared_length: None,
            stream: down.activity.start(),
        });
        let Self { span, record, .. } = &mut *exchange;
        span.describe_request(req, record, &snapshot.capture.service_ports);
        if let Some(tracing) = tracing {
            span.add_custom_tags(tracing, req.headers());
        }
        exchange
    }

    /// Whether the request is gRPC.
    pub fn is_grpc(&self) -> bool {
        self.record.grpc
    }

    /// Whether this hop's spans are reported (its side's Telemetry does not
    /// set `disableSpanReporting`): mirrors' spans follow it.
    pub fn reports_spans(&self) -> bool {
        self.span.reports()
    }

    /// This hop's span context (the parent of mirrors).
    pub fn span_context(&self) -> SpanContext {
        self.span.context()
    }

    /// Adds response flags (DI, URX, …).
    pub fn add_flags(&mut self, flags: ResponseFlags) {
        self.record.flags.insert(flags);
    }

    /// Access control let the request in: records the policy (or CUSTOM
    /// provider) that allowed it and the AUDIT policy that matched, and
    /// keeps the headers the external authorizer adds to the response.
    pub fn set_allowed(&mut self, allowed: &Allowed) {
        self.record.audited = allowed.audited.as_ref().map(ToString::to_string);
        self.record.dry_run.clone_from(&allowed.dry_run);
        self.record.access_policy = allowed.source.as_ref().map(ToString::to_string);
        let downstream = &allowed.ext_authz_edits.downstream_add;
        if !downstream.is_empty() {
            let extra = self.extra_headers.get_or_insert_with(HeaderMap::new);
            for (name, value) in downstream {
                extra.append(name.clone(), value.clone());
            }
        }
    }

    /// Access control refused the request: the status, headers and body it
    /// decided (the external authorizer's for CUSTOM, Envoy's for RBAC and
    /// JWT), its flag (UAEX, RBAC), and details naming what decided. A gRPC
    /// caller gets a trailers-only gRPC response, as Envoy sends it.
    pub fn access_denied(mut self: Box<Self>, denied: Denied) -> Response<ProxyBody> {
        self.record.flags.insert(denied.flag);
        self.record.access_policy = denied.source.as_ref().map(ToString::to_string);
        self.record.dry_run = denied.dry_run;
        let (mut response, body) = local_reply::custom_response(
            denied.status,
            denied.body,
            self.record.grpc,
            self.record.flags,
        );
        for (name, value) in denied.headers {
            response.headers_mut().append(name, value);
        }
        let content_type = http::header::CONTENT_TYPE;
        if !self.record.grpc && !body.is_empty() && !response.headers().contains_key(&content_type)
        {
            let text = HeaderValue::from_static("text/plain");
            response.headers_mut().insert(content_type, text);
        }
        if self.reply_details
            && let Ok(value) = HeaderValue::from_str(&denied.details)
        {
            response
                .headers_mut()
                .insert(RESPONSE_CODE_DETAILS_HEADER, value);
        }
        self.record.details = Some(denied.details.into());
        if self.record.grpc {
            self.record.grpc_status = Some(record::grpc_status_for(denied.status).into());
        }
        self.reply(response, body)
    }

    /// Headers every response to this request carries (rate-limit status).
    pub fn add_response_headers(&mut self, headers: HeaderMap) {
        self.extra_headers
            .get_or_insert_with(HeaderMap::new)
            .extend(headers);
    }

    /// Records the route decision: the rule that matched (outbound) and
    /// how, and the cluster it sends to.
    pub fn set_route(
        &mut self,
        matched: Option<Matched<'_>>,
        cluster: &Arc<Cluster>,
        catch_all: bool,
    ) {
        if matched.is_none() {
            // A route Istio makes itself: inbound to the app, or a service
            // without rules (`default`); ALLOW_ANY's catch-all
            // (`allow_any`), to the original destination or an egress
            // proxy.
            let name = if catch_all {
                &ALLOW_ANY_ROUTE_NAME
            } else {
                &DEFAULT_ROUTE_NAME
            };
            self.record.route = Some(Arc::clone(name));
        }
        self.set_matched(matched);
        self.record.cluster = Some(cluster.clone());
    }

    /// Records the rule that matched (its name, its `Kind:namespace/name[rule]`
    /// reference, `http.route`): a route answered without a cluster
    /// (redirect, direct response) is logged and traced by its rule too.
    pub fn set_matched(&mut self, matched: Option<Matched<'_>>) {
        if let Some(matched) = matched {
            self.record.route = matched.route_name.cloned();
            self.record.route_reference = matched.rule.reference.clone();
            self.record.http_route = matched.route_template.cloned();
        }
    }

    /// A fault delay of `delay` is being injected (Envoy's DI).
    pub fn delaying(&mut self, delay: Duration) {
        self.add_flags(ResponseFlags::FAULT_DELAY);
        let rule = self.record.route_reference.as_deref();
        self.span.note_fault_delay(delay, rule);
    }

    /// Records the configured host a request without a cluster was
    /// addressed to, so `destination_service` names it.
    pub fn set_unrouted_host(&mut self, host: &str) {
        let namespace = &self.record.local.namespace;
        self.record.unrouted_service = Some(self.worker.service_named(host, namespace));
    }

    /// A request no route takes (404 NR at a gateway): labelled
    /// `BlackHoleCluster` and `unknown`, as a sidecar labels one, never as
    /// the workload's own service.
    pub fn set_unrouted(&mut self) {
        let service = ServiceName::outside_registry(OutboundTrafficMode::RegistryOnly);
        self.record.unrouted_service = Some(service);
    }

    /// Records that the request's destination is outside the registry
    /// under `mode` (a captured one a sidecar passes through or refuses):
    /// labelled as Istio's catch-all cluster, never by its host, under its
    /// catch-all route.
    pub fn set_outside_registry(&mut self, mode: OutboundTrafficMode) {
        self.record.unrouted_service = Some(ServiceName::outside_registry(mode));
        // Istio's catch-all routes: `block_all` refuses, `allow_any` passes.
        let route = match mode {
            OutboundTrafficMode::RegistryOnly => &BLOCK_ALL_ROUTE_NAME,
            OutboundTrafficMode::AllowAny => &ALLOW_ANY_ROUTE_NAME,
        };
        self.record.route = Some(Arc::clone(route));
    }

    /// Writes this hop's trace context into the headers for the next hop.
    pub fn inject_trace_context(&mut self, headers: &mut HeaderMap) {
        self.span.inject(headers);
        if let Some(log) = self.record.log.as_mut() {
            log.traceparent = headers
                .get(crate::trace_context::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
    }

    /// Tracks the request body's progress (bytes, completion) and holds the
    /// kept copy until the request is over.
    pub fn track_request_body(&mut self, progress: Rc<RequestProgress>, tap: Option<Tap>) {
        self.request_body = Some(progress);
        self.held.hold_tap(tap);
    }

    /// The peer announced in an upstream response (outbound), replacing the
    /// endpoint-label guess when it can be believed (mTLS to the upstream,
    /// or a match with the registry).
    pub fn set_peer_from_header(&mut self, value: &[u8], snapshot: &Snapshot) {
        let principal = self.record.upstream_principal.as_deref();
        if let Some(peer) = self.worker.announced_peer(value, principal, snapshot) {
            self.record.peer = peer;
        }
    }

    /// Answers locally with `reply`; its details name the resource that
    /// decided it, as far as the record knows it.
    pub fn local_reply(mut self: Box<Self>, reply: LocalReply) -> Response<ProxyBody> {
        self.record.flags.insert(reply.flags);
        let details = self.details(reply.details, reply.decided_by);
        self.local_reply_because(reply, details)
    }

    /// Answers locally with `reply`, for the reason `details` says (a
    /// policy the record does not hold: authorization, rate limits).
    pub fn local_reply_because(
        mut self: Box<Self>,
        reply: LocalReply,
        details: Details,
    ) -> Response<ProxyBody> {
        self.record.flags.insert(reply.flags);
        let retried = self.record.attempts > 1;
        let (mut response, body) = reply.response(self.record.grpc, self.record.flags, retried);
        self.set_reply_details(&mut response, details);
        if reply.is_unsent() {
            // The client is gone: no response head is ever encoded, and
            // Envoy records response_code 0 (as for an HTTP/2 reset).
            return self.reply_recorded_as(response, body, 0);
        }
        if self.record.grpc {
            self.record.grpc_status = Some(reply.grpc_code().into());
        }
        self.reply(response, body)
    }

    /// Records `details` as the reply's, and writes them into its header
    /// when the agent is configured to.
    fn set_reply_details(&mut self, response: &mut Response<()>, details: Details) {
        if self.reply_details
            && let Ok(value) = HeaderValue::from_str(&details)
        {
            response
                .headers_mut()
                .insert(RESPONSE_CODE_DETAILS_HEADER, value);
        }
        self.record.details = Some(details);
    }

    /// Envoy's details `base`, extended with what decided the outcome:
    /// retries given up (URX) and the VirtualService rule, a DestinationRule
    /// limit, or its outlier detection when it ejected the hosts.
    fn details(&self, base: &'static str, decided_by: DecidedBy) -> Details {
        let record = &self.record;
        let rule = record.route_reference.as_deref();
        let destination_rule = record
            .cluster
            .as_deref()
            .and_then(|c| c.destination_rule.as_deref());
        let gave_up = record
            .flags
            .contains(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        let mut items: Vec<String> = Vec::new();
        if gave_up {
            items.push("upstream_retry_limit_exceeded".to_owned());
        }
        if gave_up || decided_by == DecidedBy::Route {
            items.extend(rule.map(str::to_owned));
        }
        match (decided_by, destination_rule) {
            (DecidedBy::Limit(field), Some(dr)) => items.push(format!("{dr}[{field}]")),
            (DecidedBy::Outlier, Some(dr)) if self.hosts_ejected() => {
                items.push(format!("{dr}[outlierDetection]"));
            }
            _ => {}
        }
        if items.is_empty() {
            return Cow::Borrowed(base);
        }
        with_item(base, &items.join(",")).into()
    }

    /// Whether outlier detection has ejected any of the cluster's hosts.
    fn hosts_ejected(&self) -> bool {
        let now = now_ms();
        self.record
            .cluster
            .as_deref()
            .is_some_and(|c| c.endpoints.iter().any(|e| e.state.is_ejected(now)))
    }

    /// Answers with a response the agent made (local replies, redirects,
    /// direct responses).
    pub fn reply(self: Box<Self>, response: Response<()>, body: Bytes) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        self.reply_recorded_as(response, body, status)
    }

    /// Answers with `response`, recording `status` (0 for a reply no
    /// client reads).
    fn reply_recorded_as(
        mut self: Box<Self>,
        response: Response<()>,
        body: Bytes,
        status: u16,
    ) -> Response<ProxyBody> {
        self.record.status = status;
        let (mut parts, ()) = response.into_parts();
        // A HEAD is answered with the length of the body a GET would get
        // and no body: one left unsent would never end, and the request
        // would be logged as the client's disconnect (DC).
        let body = if self.head && !body.is_empty() {
            parts
                .headers
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(body.len()));
            Bytes::new()
        } else {
            body
        };
        if let Some(extra) = self.extra_headers.take() {
            parts.headers.extend(extra);
        }
        if let Some(facts) = self.record.facts.as_mut() {
            facts.response_headers = parts.headers.clone();
        }
        Response::from_parts(parts, ResponseBody::full(body, self))
    }

    /// The answer to a CORS preflight (Envoy's details: `cors_response`).
    pub fn cors_preflight(mut self: Box<Self>, response: Response<()>) -> Response<ProxyBody> {
        self.record.details = Some(Cow::Borrowed(super::cors::PREFLIGHT_DETAILS));
        self.reply(response, Bytes::new())
    }

    /// A response of `status` with `body` (VirtualService `directResponse`).
    pub fn direct(self: Box<Self>, status: StatusCode, body: Bytes) -> Response<ProxyBody> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if !body.is_empty() {
            let text = http::HeaderValue::from_static("text/plain");
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, text);
        }
        self.route_reply(response, body)
    }

    /// An answer the matched route itself gives (a `redirect` or a
    /// `directResponse`): Envoy's router sends both as a local reply whose
    /// details are `direct_response` (`Filter::decodeHeaders`), here
    /// extended with the rule, as every reply a route decides.
    pub fn route_reply(
        mut self: Box<Self>,
        mut response: Response<()>,
        body: Bytes,
    ) -> Response<ProxyBody> {
        let details = self.details(DIRECT_RESPONSE_DETAILS, DecidedBy::Route);
        self.set_reply_details(&mut response, details);
        self.reply(response, body)
    }

    /// Streams the upstream's response back (its body gives an HTTP/1.1
    /// connection back to its pool once read whole); `deadline` cuts the
    /// body off, and so does the stream's idle `clock` (`None`: no stream
    /// idle timeout).
    pub fn respond(
        mut self: Box<Self>,
        mut parts: http::response::Parts,
        body: Received,
        upstream_time: Duration,
        deadline: RouteDeadline,
        clock: Option<Rc<StreamClock>>,
    ) -> Response<ProxyBody> {
        self.upstream_head(&mut parts, upstream_time);
        // Read for an HTTP/1.x client alone (see `answered_whole`).
        if self.record.version < http::Version::HTTP_2 {
            self.declared_length = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
        }
        Response::from_parts(parts, ResponseBody::upstream(body, self, deadline, clock))
    }

    /// Passes the upstream's `101` back and splices the upgraded stream.
    /// The request is not over while it is upgraded, as in Envoy: it holds
    /// its endpoint's and cluster's active request until the splice ends,
    /// and is recorded then (metrics, span, access log) with the bytes
    /// that passed each way and how it ended (DC, UC, SI).
    pub fn switch_protocols(
        mut self: Box<Self>,
        mut parts: http::response::Parts,
        upstream_time: Duration,
        splice: Splice,
    ) -> Response<ProxyBody> {
        self.upstream_head(&mut parts, upstream_time);
        // Held by the splice until it ends, the request would keep its
        // downstream connection from ever counting as idle, and a 101 its
        // client never reads from its connection would wait for good.
        self.stream.leave_connection();
        splice.start(move |ended| self.upgrade_ended(ended));
        Response::from_parts(parts, ResponseBody::recorded_elsewhere())
    }

    /// Records the head of the upstream's answer.
    fn upstream_head(&mut self, parts: &mut http::response::Parts, upstream_time: Duration) {
        self.record.status = parts.status.as_u16();
        self.record.upstream_time = Some(upstream_time);
        self.record.details = Some(self.details(VIA_UPSTREAM, DecidedBy::Agent));
        if self.record.grpc {
            self.record.grpc_status = record::grpc_status(&parts.headers);
        }
        if let Some(extra) = self.extra_headers.take() {
            parts.headers.extend(extra);
        }
        if let Some(facts) = self.record.facts.as_mut() {
            facts.response_headers = parts.headers.clone();
        }
    }

    /// The upgraded stream ended: the request is over, with Envoy's flag
    /// and details for the side that ended it (as Envoy 1.40 logs a
    /// WebSocket: DC `downstream_remote_disconnect`, UC
    /// `upstream_reset_after_response_started{connection_termination}`).
    fn upgrade_ended(mut self: Box<Self>, ended: Ended) {
        self.record.request_bytes = ended.received;
        self.record.response_bytes = ended.sent;
        match ended.by {
            EndedBy::Downstream => {
                self.add_flags(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                self.record.details = Some(Cow::Borrowed(DOWNSTREAM_REMOTE_DISCONNECT));
            }
            EndedBy::Upstream => self.on_reset(ResetReason::ConnectionTermination),
            EndedBy::Idle => self.on_stream_idle(),
        }
        self.complete();
    }

    /// Records metrics, ends the span, writes the access log and gives the
    /// in-flight resources back. Idempotent.
    fn complete(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let duration = self.record.start.elapsed();
        let record = &mut self.record;
        // A request the agent answered itself sent no context on: its log
        // line names this hop's span instead, so the two still match.
        if let Some(log) = record.log.as_mut()
            && log.traceparent.is_none()
        {
            let context = self.span.context();
            let value = crate::trace_context::traceparent(
                context.trace_id(),
                context.span_id(),
                context.is_sampled(),
            );
            log.traceparent = value.to_str().ok().map(str::to_owned);
        }
        // (An upgraded stream's bytes after the 101 are counted already.)
        record.request_bytes += self.request_body.as_ref().map_or(0, |p| p.bytes());
        record.grpc_request_messages =
            (self.request_body.as_ref()).map_or(0, |p| p.grpc_messages());
        let shared = &self.worker.shared;
        let attributes = record.attributes();
        let mut key = record.metric_key();
        if let Some(attrs) = &attributes {
            key.tags = shared
                .metrics
                .request_tags(key.peers.reporter.side(), attrs);
        }
        self.worker.caches.borrow_mut().metrics.record(
            &shared.metrics,
            &key,
            &Observed {
                duration_ms: duration.as_secs_f64() * 1000.0,
                request_bytes: record.request_bytes,
                response_bytes: record.response_bytes,
                request_messages: record.grpc_request_messages,
                response_messages: record.grpc_response_messages.count(),
            },
        );
        // Ended by the monotonic clock's duration, not a second wall-clock
        // reading: the span lasts what the metrics say it lasted. (A retry's
        // span keeps the wall clock: only a step of it during the request
        // would show the two apart.)
        self.span.finish(record, record.start_time + duration);
        let flags = record.flags.as_str();
        match &self.access_logs {
            // The Telemetry's providers, each with its filter.
            Some((telemetry, side)) => {
                let logs = telemetry.side(*side).access_logs.iter().flatten();
                for log in logs {
                    let wanted = match (&log.filter, &attributes) {
                        (None, _) => !log.disabled,
                        (Some(_), Some(attrs)) => log.logs(attrs),
                        (Some(_), None) => false,
                    };
                    let sink = log.file().and_then(|path| shared.access_logs.get(path));
                    if let (true, Some(sink), Some(entry)) =
                        (wanted, sink, record.access_log_entry(&flags, duration))
                    {
                        let (format, omit_empty) = log.format();
                        sink.write_as(&entry, format, omit_empty);
                    }
                }
            }
            None => {
                if let (Some(access_log), Some(entry)) = (
                    &shared.access_log,
                    record.access_log_entry(&flags, duration),
                ) {
                    access_log.write(&entry);
                }
            }
        }
        self.held.release();
    }
}

impl ResponseObserver for Exchange {
    /// Counts a response frame (bytes, gRPC status in trailers).
    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.record.response_bytes += data.len() as u64;
            if self.record.grpc {
                self.record.grpc_response_messages.feed(data);
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.record.grpc_status = record::grpc_status(trailers).or(self.record.grpc_status);
        }
    }

    fn on_reset(&mut self, reason: ResetReason) {
        let request_failure = self.request_body.as_ref().and_then(|p| p.failure());
        if request_failure == Some(BodyFailure::StreamIdle) {
            // The upstream stream was reset because the client's body hit
            // the stream idle timeout mid-response: that is why it ended.
            self.on_stream_idle();
            return;
        }
        if request_failure == Some(BodyFailure::Overload) {
            self.on_overload();
            return;
        }
        // Envoy's flag and words for a reset after the response began.
        self.add_flags(reason.flag());
        let details = reason.details_after_response_started();
        self.record.details = Some(self.details(details, DecidedBy::Agent));
    }

    fn on_timeout(&mut self) {
        self.add_flags(ResponseFlags::UPSTREAM_TIMEOUT);
    }

    fn on_stream_idle(&mut self) {
        // Envoy's record of it: the status already sent, flag SI, details
        // `stream_idle_timeout`.
        self.add_flags(ResponseFlags::STREAM_IDLE_TIMEOUT);
        let details = LocalReply::STREAM_IDLE_TIMEOUT.details;
        self.record.details = Some(self.details(details, DecidedBy::Agent));
    }

    fn on_overload(&mut self) {
        // Envoy's record of an overload action's reset: flag OM.
        self.add_flags(ResponseFlags::OVERLOAD_MANAGER);
        let details = LocalReply::OVERLOAD.details;
        self.record.details = Some(self.details(details, DecidedBy::Agent));
    }

    fn on_end(&mut self) {
        self.complete();
    }
}

impl AttemptRecord for Exchange {
    fn attempt(&mut self, _attempt: u32, endpoint: &Arc<Endpoint>, active: ActiveRequest) {
        self.held.hold_endpoint(active);
        self.record.attempts += 1;
        if self.record.direction == Direction::Outbound {
            self.record.peer = endpoint.peer.clone();
        }
        self.record.endpoint = Some(endpoint.clone());
    }

    fn hold_request_slot(&mut self, slot: Slot) {
        self.held.hold_request_slot(slot);
    }

    fn sending_retry(&mut self, attempt: u32, endpoint: &Endpoint, headers: &mut HeaderMap) {
        let cluster = self.record.cluster.as_deref();
        self.span
            .start_attempt(&self.worker.spans, attempt, cluster, endpoint, headers);
    }

    fn answered(&mut self, status: u16, peer: UpstreamPeer) {
        self.span.end_attempt(Some(status), None);
        self.record.upstream_principal = peer.identity.map(|p| self.worker.intern_principal(&p));
        self.record.upstream_local = peer.local;
    }

    fn failed(&mut self, reason: &'static str, transport: Option<&'static str>) {
        self.span.end_attempt(None, Some(reason));
        if transport.is_some() {
            self.record.transport_failure = transport;
        }
    }

    fn retrying(&mut self, retry: u32, reason: &'static str) {
        let rule = self.record.route_reference.as_deref();
        self.span.note_retry(retry, reason, rule);
    }

    fn gave_up(&mut self) {
        self.add_flags(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    }

    fn retry_overflowed(&mut self) {
        self.add_flags(ResponseFlags::UPSTREAM_OVERFLOW);
    }

    fn ejected(
        &mut self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        reason: EjectionReason,
        duration: Duration,
    ) {
        let metrics = &self.worker.shared.metrics;
        metrics
            .outlier_ejections
            .with_label_values(&[&cluster.name])
            .inc();
        let reason = reason.field();
        tracing::info!(cluster = %cluster.name, endpoint = %endpoint.address, reason, ?duration, "endpoint ejected");
        let rule = cluster.destination_rule.as_deref();
        self.span.note_ejection(endpoint, reason, duration, rule);
    }

    fn waited_for_connection(&mut self, limit: &'static str, waited: Duration) {
        let cluster = self.record.cluster.as_deref();
        let rule = cluster.and_then(|c| c.destination_rule.as_deref());
        self.span.note_pool_wait(limit, waited, rule);
    }
}

impl Exchange {
    /// Whether an HTTP/1.x client was sent the whole answer: one that by
    /// HTTP has no body (RFC 9110 §6.4.1, §15.2: to a HEAD, and any 1xx,
    /// 204 or 304) once hyper took its head (it drops the body then; a
    /// client gone before the head is flushed is not seen, as Envoy's
    /// stream is complete once it encoded the head), and one whose head
    /// declared a `Content-Length` once that many bytes were. hyper's HTTP/1 server
    /// then drops the body unread, whatever the upstream's stream still had
    /// to send: an HTTP/2 upstream may end it after the last byte with an
    /// empty DATA frame or trailers (which HTTP/1.1 cannot carry with a
    /// length). Envoy logs such an answer as answered (`200 -`), not as the
    /// client's disconnect. (An HTTP/2 client's stream carries the
    /// upstream's end, and is read to it.)
    fn answered_whole(&self) -> bool {
        let status = self.record.status;
        let bodiless = self.head || (100..200).contains(&status) || status == 204 || status == 304;
        status != 0
            && self.record.version < http::Version::HTTP_2
            && (bodiless || self.declared_length == Some(self.record.response_bytes))
    }
}

impl Drop for Exchange {
    /// Dropped before completing: the client went away (Envoy's DC), or
    /// stopped reading and its connection was cut after the stream idle
    /// timeout (SI, as Envoy records it) — unless the answer was whole once
    /// it was sent ([`Self::answered_whole`]).
    fn drop(&mut self) {
        if !self.done {
            if self.answered_whole() {
                // Over: recorded as answered.
            } else if self.stream.was_cut_stalled() {
                self.on_stream_idle();
            } else {
                // Envoy's `resetAllStreams` on the client's close: DC and
                // `downstream_remote_disconnect`, over any details before.
                self.add_flags(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                self.record.details = Some(Cow::Borrowed(DOWNSTREAM_REMOTE_DISCONNECT));
            }
            self.complete();
        }
    }
}
