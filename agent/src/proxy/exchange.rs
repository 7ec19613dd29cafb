//! One request's record from arrival to the last response byte: its span,
//! its route and endpoint, status and flags. Completing it records the Istio
//! metrics, ends the span and writes the access log line — once, whether the
//! response finished, the agent answered itself, or the client went away.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body::Frame;
use hyper::body::Incoming;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use super::body::{RequestProgress, ResponseBody};
use super::local_reply::LocalReply;
use super::pool::Reusable;
use super::{Direction, Downstream, Worker};
use crate::flags::ResponseFlags;
use crate::model::cluster::{ActiveRequest, Cluster, Endpoint};
use crate::model::service::ServiceName;
use crate::model::{Identity, Snapshot};
use crate::telemetry::access_log::{AccessLogEntry, rfc3339_millis};
use crate::telemetry::metrics::{ByAddress, PeerLabels, Reporter, RequestKey};
use crate::telemetry::peer_metadata::{PEER_METADATA, PeerInfo};
use crate::trace_context;

/// Request facts kept only for the access log.
struct LogFields {
    method: String,
    path: String,
    authority: Option<String>,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    request_id: Option<String>,
    traceparent: Option<String>,
    details: Option<&'static str>,
}

/// The record of one request.
pub struct Exchange {
    worker: Rc<Worker>,
    identity: Arc<Identity>,
    direction: Direction,
    downstream: (std::net::SocketAddr, std::net::SocketAddr),
    start: Instant,
    start_time: SystemTime,
    span: Span,
    recording: bool,
    version: Version,
    grpc: bool,
    route: Option<Arc<str>>,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<Arc<Endpoint>>,
    active: Option<ActiveRequest>,
    peer: Arc<PeerInfo>,
    unrouted_service: Option<Arc<ServiceName>>,
    status: u16,
    grpc_status: Option<u16>,
    flags: ResponseFlags,
    request_body: Option<Rc<RequestProgress>>,
    response_bytes: u64,
    upstream_time: Option<std::time::Duration>,
    connection: Option<Reusable>,
    log: Option<Box<LogFields>>,
    done: bool,
}

/// Whether a request is gRPC (by content type, as Envoy decides).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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
        let incoming = trace_context::extract(req.headers());
        let parent = match incoming {
            Some(ctx) => {
                let flags = if ctx.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::NOT_SAMPLED
                };
                let state = req
                    .headers()
                    .get(trace_context::TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default();
                let remote = SpanContext::new(ctx.trace_id, ctx.span_id, flags, true, state);
                Context::new().with_remote_span_context(remote)
            }
            None => Context::new(),
        };
        let kind = match down.direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let tracer = &worker.shared.tracer;
        let builder = tracer
            .span_builder("")
            .with_kind(kind)
            .with_start_time(SystemTime::now());
        let span = tracer.build_with_context(builder, &parent);
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
            version: req.version(),
            grpc: is_grpc(req.headers()),
            route: None,
            cluster: None,
            endpoint: None,
            active: None,
            peer: peer.unwrap_or_else(|| UNKNOWN_PEER.with(Clone::clone)),
            unrouted_service: None,
            status: 0,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            request_body: None,
            response_bytes: 0,
            upstream_time: None,
            connection: None,
            log: None,
            done: false,
        });
        if exchange.recording {
            exchange.start_attributes(req, down);
        }
        if worker.shared.access_log.is_some() {
            exchange.log = Some(Box::new(log_fields(req)));
        }
        exchange
    }

    fn start_attributes(&mut self, req: &Request<Incoming>, down: &Downstream) {
        let headers = req.headers();
        let authority = request_authority(req);
        let (host, port) = crate::host::split_host_port(authority.unwrap_or(""));
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
        let name = match self.direction {
            Direction::Inbound => format!(
                "{}:{}/*",
                self.identity.service.host,
                self.downstream.1.port()
            ),
            Direction::Outbound => format!("{host}:{}/*", port.unwrap_or(80)),
        };
        self.span.update_name(name);
    }

    /// Whether the request is gRPC.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Records the route decision.
    pub fn set_route(&mut self, rule_name: Option<&Arc<str>>, cluster: &Arc<Cluster>) {
        self.route = rule_name.cloned();
        self.cluster = Some(cluster.clone());
        if self.recording
            && let Some(name) = rule_name
        {
            self.span
                .set_attribute(KeyValue::new("http.route", name.to_string()));
            self.span.update_name(name.to_string());
        }
    }

    /// Records the host a request without a cluster was addressed to, so
    /// `destination_service` names it (as Istio falls back to the Host header).
    pub fn set_unrouted_host(&mut self, host: &str) {
        let namespace = self.identity.namespace.clone();
        self.unrouted_service = Some(self.worker.unknown_service(host, &namespace));
    }

    /// Records the endpoint picked; it counts as busy until completion.
    pub fn set_endpoint(&mut self, endpoint: &Arc<Endpoint>) {
        self.active = Some(endpoint.state.start_request());
        if self.direction == Direction::Outbound {
            self.peer = endpoint.peer.clone();
        }
        self.endpoint = Some(endpoint.clone());
    }

    /// Writes this hop's trace context into the headers for the next hop.
    pub fn inject_trace_context(&mut self, headers: &mut HeaderMap) {
        let sc = self.span.span_context();
        trace_context::inject(headers, sc.trace_id(), sc.span_id(), sc.trace_flags());
        if let Some(log) = self.log.as_mut() {
            log.traceparent = headers
                .get(trace_context::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
    }

    /// Tracks the request body's progress (bytes, completion).
    pub fn track_request_body(&mut self, progress: Rc<RequestProgress>) {
        self.request_body = Some(progress);
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
        let (response, body) = reply.response(self.grpc);
        self.status = response.status().as_u16();
        if self.grpc {
            self.grpc_status = Some(super::local_reply::grpc_status_for(reply.status));
        }
        let (parts, ()) = response.into_parts();
        Response::from_parts(parts, ResponseBody::full(body, self))
    }

    /// Streams the upstream's response back; `connection` goes back to its
    /// pool once the response is complete.
    pub fn respond(
        mut self: Box<Self>,
        parts: http::response::Parts,
        body: Incoming,
        upstream_started: Instant,
        connection: Option<Reusable>,
    ) -> Response<ResponseBody> {
        self.status = parts.status.as_u16();
        self.upstream_time = Some(upstream_started.elapsed());
        if self.grpc {
            self.grpc_status = grpc_status(&parts.headers);
        }
        self.connection = connection;
        Response::from_parts(parts, ResponseBody::upstream(body, self))
    }

    /// Counts a response frame (bytes, gRPC status in trailers).
    pub fn on_response_frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.response_bytes += data.len() as u64;
        } else if let Some(trailers) = frame.trailers_ref() {
            self.grpc_status = grpc_status(trailers).or(self.grpc_status);
        }
    }

    /// The upstream reset the response midway.
    pub fn on_upstream_reset(&mut self) {
        self.flags.insert(ResponseFlags::UPSTREAM_REMOTE_RESET);
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
            self.flags.is_empty() && self.request_body.as_ref().is_none_or(|p| p.is_done());
        if let Some(connection) = self.connection.take()
            && reusable
        {
            connection.release();
        }
        self.active = None;
    }

    fn record_metrics(&self, duration_ms: f64, request_bytes: u64) {
        let local = self.identity.peer.clone();
        let (reporter, source, destination, security) = match self.direction {
            Direction::Outbound => (Reporter::Source, local, self.peer.clone(), "unknown"),
            Direction::Inbound => (Reporter::Destination, self.peer.clone(), local, "none"),
        };
        let service = match (&self.cluster, &self.unrouted_service) {
            (Some(cluster), _) => cluster.service.clone(),
            (None, Some(service)) => service.clone(),
            (None, None) => self.identity.service.clone(),
        };
        let key = RequestKey {
            peers: PeerLabels {
                reporter,
                source: ByAddress(source),
                destination: ByAddress(destination),
                service: ByAddress(service),
                security,
            },
            grpc: self.grpc,
            code: self.status,
            grpc_status: self.grpc_status,
            flags: self.flags,
        };
        let metrics = &self.worker.shared.metrics;
        let mut caches = self.worker.caches.borrow_mut();
        caches.metrics.record(
            metrics,
            &key,
            duration_ms,
            request_bytes,
            self.response_bytes,
        );
    }

    fn end_span(&mut self, request_bytes: u64) {
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
            let address = endpoint.address.to_string();
            if self.direction == Direction::Outbound {
                attributes.push(KeyValue::new("network.peer.address", address.clone()));
            }
            attributes.push(KeyValue::new("tracemesh.upstream", address));
        }
        let client = self.direction == Direction::Outbound;
        let failed = !self.flags.is_empty()
            || self.status >= 500
            || (client && self.status >= 400)
            || self.status == 0;
        if failed {
            let error_type = if self.flags.is_empty() {
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

    fn write_access_log(&self, log: &LogFields, duration_ms: u64, request_bytes: u64) {
        let Some(access_log) = &self.worker.shared.access_log else {
            return;
        };
        let flags = self.flags.as_str();
        access_log.write(&AccessLogEntry {
            start_time: rfc3339_millis(self.start_time),
            route_name: self.route.as_deref(),
            method: &log.method,
            path: &log.path,
            protocol: protocol_name(self.version),
            response_code: self.status,
            response_flags: &flags,
            response_code_details: log.details,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: request_bytes,
            bytes_sent: self.response_bytes,
            duration: duration_ms,
            upstream_service_time: self.upstream_time.map(|t| t.as_millis().to_string()),
            x_forwarded_for: log.forwarded_for.as_deref(),
            user_agent: log.user_agent.as_deref(),
            request_id: log.request_id.as_deref(),
            authority: log.authority.as_deref(),
            upstream_host: self.endpoint.as_ref().map(|e| e.address.to_string()),
            upstream_cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
            upstream_local_address: None,
            downstream_local_address: self.downstream.1.to_string(),
            downstream_remote_address: self.downstream.0.to_string(),
            requested_server_name: None,
            traceparent: log.traceparent.as_deref(),
        });
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

thread_local! {
    static UNKNOWN_PEER: Arc<PeerInfo> = Arc::new(PeerInfo::unknown());
}

/// The authority a request names: the absolute URI's, else `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn log_fields(req: &Request<Incoming>) -> LogFields {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    LogFields {
        method: req.method().as_str().to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        authority: request_authority(req).map(str::to_owned),
        user_agent: header("user-agent"),
        forwarded_for: header("x-forwarded-for"),
        request_id: header("x-request-id"),
        traceparent: None,
        details: None,
    }
}
