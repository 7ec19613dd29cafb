//! One request's record from arrival to the last response byte: its span,
//! its route and endpoint, status and flags. Completing it records the Istio
//! metrics, ends the span and writes the access log line — once, whether the
//! response finished, the agent answered itself, or the client went away.

mod record;
mod span;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Frame;
use hyper::body::Incoming;
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::Span;

use super::body::{RequestProgress, ResponseBody};
use super::local_reply::LocalReply;
use super::pool::Lease;
use super::tap::Tap;
use super::{Direction, Downstream, Worker};
use crate::flags::ResponseFlags;
use crate::model::cluster::{Cluster, Endpoint};
use crate::model::live::{ActiveRequest, Slot};
use crate::model::service::ServiceName;
use crate::model::{Identity, Snapshot};
use crate::telemetry::peer_metadata::{PEER_METADATA, PeerInfo};
use crate::trace_context;

pub use record::request_authority;

/// The record of one request.
pub struct Exchange {
    worker: Rc<Worker>,
    identity: Arc<Identity>,
    direction: Direction,
    downstream: (std::net::SocketAddr, std::net::SocketAddr),
    start: Instant,
    start_time: SystemTime,
    span: Span,
    /// The caller's span, parent of `span` (B3's parent-span fields).
    caller_span: Option<opentelemetry::trace::SpanId>,
    recording: bool,
    retry_span: Option<Span>,
    attempts: u32,
    version: Version,
    grpc: bool,
    route: Option<Arc<str>>,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<Arc<Endpoint>>,
    active: Option<ActiveRequest>,
    request_slot: Option<Slot>,
    peer: Arc<PeerInfo>,
    unrouted_service: Option<Arc<ServiceName>>,
    status: u16,
    grpc_status: Option<u16>,
    flags: ResponseFlags,
    audited: bool,
    extra_headers: Option<HeaderMap>,
    request_body: Option<Rc<RequestProgress>>,
    tap: Option<Tap>,
    response_bytes: u64,
    upstream_time: Option<std::time::Duration>,
    connection: Option<Lease>,
    log: Option<Box<record::LogFields>>,
    /// The server's identity on the upstream mTLS connection (outbound).
    upstream_peer: Option<Arc<str>>,
    /// Why the upstream TLS handshake failed, when it did.
    transport_failure: Option<&'static str>,
    /// The caller's mTLS proof (inbound).
    downstream_tls: Option<crate::tls::PeerTls>,
    done: bool,
}

/// Whether a request is gRPC (by content type, as Envoy decides).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

thread_local! {
    static UNKNOWN_PEER: Arc<PeerInfo> = Arc::new(PeerInfo::unknown());
}

impl Exchange {
    /// Starts the record: reads the caller's trace context and starts this
    /// hop's span as its child (or a new trace's root).
    pub fn begin(
        worker: &Rc<Worker>,
        down: &Downstream,
        snapshot: &Snapshot,
        req: &Request<Incoming>,
    ) -> Box<Self> {
        let (span, caller_span) = span::start(&worker.shared.tracer, down.direction, req.headers());
        let peer = match down.direction {
            Direction::Inbound => req
                .headers()
                .get(PEER_METADATA)
                .and_then(|v| worker.peer_from_header(v.as_bytes())),
            Direction::Outbound => None,
        };
        let mut exchange = Box::new(Self {
            worker: worker.clone(),
            identity: snapshot.identity.clone(),
            direction: down.direction,
            downstream: (down.peer, down.local),
            start: Instant::now(),
            start_time: SystemTime::now(),
            recording: span.is_recording(),
            span,
            caller_span,
            retry_span: None,
            attempts: 0,
            version: req.version(),
            grpc: is_grpc(req.headers()),
            route: None,
            cluster: None,
            endpoint: None,
            active: None,
            request_slot: None,
            peer: peer.unwrap_or_else(|| UNKNOWN_PEER.with(Clone::clone)),
            unrouted_service: None,
            status: 0,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            audited: false,
            extra_headers: None,
            request_body: None,
            tap: None,
            response_bytes: 0,
            upstream_time: None,
            connection: None,
            log: None,
            upstream_peer: None,
            transport_failure: None,
            downstream_tls: down.tls.clone(),
            done: false,
        });
        if exchange.recording {
            exchange.start_attributes(req, down);
        }
        if worker.shared.access_log.is_some() {
            exchange.log = Some(Box::new(record::LogFields::of(req)));
        }
        exchange
    }

    /// Whether the request is gRPC.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// This hop's span context (the parent of mirrors).
    pub fn span_context(&self) -> SpanContext {
        self.span.span_context().clone()
    }

    /// Adds response flags (DI, URX, …).
    pub fn add_flags(&mut self, flags: ResponseFlags) {
        self.flags.insert(flags);
    }

    /// An AUDIT AuthorizationPolicy matched.
    pub fn set_audited(&mut self) {
        self.audited = true;
    }

    /// Headers every response to this request carries (rate-limit status).
    pub fn add_response_headers(&mut self, headers: HeaderMap) {
        self.extra_headers
            .get_or_insert_with(HeaderMap::new)
            .extend(headers);
    }

    /// Records the route decision.
    pub fn set_route(&mut self, rule_name: Option<&Arc<str>>, cluster: &Arc<Cluster>) {
        self.route = rule_name.cloned();
        self.cluster = Some(cluster.clone());
        if self.recording {
            self.route_attributes(rule_name);
        }
    }

    /// Records the host a request without a cluster was addressed to, so
    /// `destination_service` names it (as Istio falls back to the Host header).
    pub fn set_unrouted_host(&mut self, host: &str) {
        let namespace = self.identity.namespace.clone();
        self.unrouted_service = Some(self.worker.unknown_service(host, &namespace));
    }

    /// Records the endpoint of the current attempt; it counts as busy until
    /// the next attempt or completion.
    pub fn set_endpoint(&mut self, endpoint: &Arc<Endpoint>) {
        self.active = Some(endpoint.state.start_request());
        self.attempts += 1;
        if self.direction == Direction::Outbound {
            self.peer = endpoint.peer.clone();
        }
        self.endpoint = Some(endpoint.clone());
    }

    /// The server's identity on the upstream connection (mTLS).
    pub fn set_upstream_peer(&mut self, peer: Option<Arc<str>>) {
        self.upstream_peer = peer.map(|p| self.worker.intern_principal(&p));
    }

    /// The upstream TLS handshake failed for `reason`.
    pub fn set_transport_failure(&mut self, reason: &'static str) {
        self.transport_failure = Some(reason);
    }

    /// Holds the cluster's request slot of the current attempt.
    pub fn hold_request_slot(&mut self, slot: Slot) {
        self.request_slot = Some(slot);
    }

    /// Writes this hop's trace context into the headers for the next hop.
    pub fn inject_trace_context(&mut self, headers: &mut HeaderMap) {
        trace_context::inject(headers, self.span.span_context(), self.caller_span);
        if let Some(log) = self.log.as_mut() {
            log.traceparent = headers
                .get(trace_context::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
    }

    /// How the client's request body failed, if it did.
    pub fn request_body_failure(&self) -> Option<super::body::BodyFailure> {
        self.request_body.as_ref().and_then(|p| p.failure())
    }

    /// Tracks the request body's progress (bytes, completion).
    pub fn track_request_body(&mut self, progress: Rc<RequestProgress>, tap: Option<Tap>) {
        self.request_body = Some(progress);
        self.tap = tap;
    }

    /// The peer announced in an upstream response (outbound), replacing the
    /// endpoint-label guess.
    pub fn set_peer_from_header(&mut self, value: &[u8]) {
        if let Some(peer) = self.worker.peer_from_header(value) {
            self.peer = peer;
        }
    }

    /// Answers locally with `reply`.
    pub fn local_reply(mut self: Box<Self>, reply: LocalReply) -> Response<ResponseBody> {
        self.flags.insert(reply.flags);
        if let Some(log) = self.log.as_mut() {
            log.details = Some(reply.details);
        }
        let (response, body) = reply.response(self.grpc, self.flags);
        if self.grpc {
            self.grpc_status = Some(reply.grpc_code());
        }
        self.reply(response, body)
    }

    /// Answers with a response the agent made (local replies, redirects,
    /// direct responses).
    pub fn reply(
        mut self: Box<Self>,
        response: Response<()>,
        body: Bytes,
    ) -> Response<ResponseBody> {
        self.status = response.status().as_u16();
        let (mut parts, ()) = response.into_parts();
        if let Some(extra) = self.extra_headers.take() {
            parts.headers.extend(extra);
        }
        Response::from_parts(parts, ResponseBody::full(body, self))
    }

    /// A response of `status` with `body` (VirtualService `directResponse`).
    pub fn direct(self: Box<Self>, status: StatusCode, body: Bytes) -> Response<ResponseBody> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if !body.is_empty() {
            let text = http::HeaderValue::from_static("text/plain");
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, text);
        }
        self.reply(response, body)
    }

    /// Streams the upstream's response back; `connection` goes back to its
    /// pool once the response is complete, `deadline` cuts the body off.
    pub fn respond(
        mut self: Box<Self>,
        mut parts: http::response::Parts,
        body: Incoming,
        upstream_time: std::time::Duration,
        connection: Option<Lease>,
        deadline: Option<tokio::time::Instant>,
    ) -> Response<ResponseBody> {
        self.status = parts.status.as_u16();
        self.upstream_time = Some(upstream_time);
        if self.grpc {
            self.grpc_status = record::grpc_status(&parts.headers);
        }
        if let Some(extra) = self.extra_headers.take() {
            parts.headers.extend(extra);
        }
        self.connection = connection;
        Response::from_parts(parts, ResponseBody::upstream(body, self, deadline))
    }

    /// Counts a response frame (bytes, gRPC status in trailers).
    pub fn on_response_frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.response_bytes += data.len() as u64;
        } else if let Some(trailers) = frame.trailers_ref() {
            self.grpc_status = record::grpc_status(trailers).or(self.grpc_status);
        }
    }

    /// The upstream reset the response midway.
    pub fn on_upstream_reset(&mut self) {
        self.flags.insert(ResponseFlags::UPSTREAM_REMOTE_RESET);
    }

    /// The route timeout fired while the response was streaming.
    pub fn on_timeout_mid_response(&mut self) {
        self.flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
    }

    /// Records metrics, ends the span and writes the access log. Idempotent.
    pub fn complete(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let duration = self.start.elapsed();
        let request_bytes = self.request_body.as_ref().map_or(0, |p| p.bytes());
        self.record_metrics(duration.as_secs_f64() * 1000.0, request_bytes);
        if self.recording {
            self.end_span(request_bytes);
        }
        if let Some(log) = self.log.take() {
            self.write_access_log(&log, duration.as_millis() as u64, request_bytes);
        }
        let reusable =
            !self.flags.is_failure() && self.request_body.as_ref().is_none_or(|p| p.is_done());
        if let Some(connection) = self.connection.take()
            && reusable
        {
            connection.release();
        }
        if let Some(tap) = self.tap.take() {
            tap.release();
        }
        self.active = None;
        self.request_slot = None;
    }
}

impl Drop for Exchange {
    /// Dropped before completing: the client went away (Envoy's DC).
    fn drop(&mut self) {
        if !self.done {
            self.flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            self.complete();
        }
    }
}
