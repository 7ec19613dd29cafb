//! What a completed exchange leaves behind: Istio metrics and the access log.

use http::{HeaderMap, Request, Version};
use hyper::body::Incoming;

use super::Exchange;
use crate::proxy::Direction;
use crate::telemetry::access_log::{AccessLogEntry, rfc3339_millis};
use crate::telemetry::metrics::{ByAddress, PeerLabels, Reporter, RequestKey};

/// Request facts kept only for the access log.
pub(super) struct LogFields {
    method: String,
    path: String,
    authority: Option<String>,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    request_id: Option<String>,
    pub(super) traceparent: Option<String>,
    pub(super) details: Option<&'static str>,
}

impl LogFields {
    pub(super) fn of(req: &Request<Incoming>) -> Self {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
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
}

/// The authority a request names: the absolute URI's, else `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// The gRPC status in response headers or trailers.
pub(super) fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

impl Exchange {
    pub(super) fn record_metrics(&self, duration_ms: f64, request_bytes: u64) {
        let local = self.identity.peer.clone();
        let ours = || Some(ByAddress(self.identity.principal.clone()));
        let (reporter, source, destination, security, principals) = match self.direction {
            // The client side cannot tell; Istio reports `unknown` there too.
            Direction::Outbound => {
                let theirs = self.upstream_peer.clone().map(ByAddress);
                let principals = [theirs.is_some().then(ours).flatten(), theirs];
                (
                    Reporter::Source,
                    local,
                    self.peer.clone(),
                    "unknown",
                    principals,
                )
            }
            Direction::Inbound => match self
                .downstream_tls
                .as_ref()
                .and_then(|t| t.principal.clone())
            {
                Some(theirs) => (
                    Reporter::Destination,
                    self.peer.clone(),
                    local,
                    "mutual_tls",
                    [Some(ByAddress(theirs)), ours()],
                ),
                None => (
                    Reporter::Destination,
                    self.peer.clone(),
                    local,
                    "none",
                    [None, None],
                ),
            },
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
                principals,
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

    pub(super) fn write_access_log(&self, log: &LogFields, duration_ms: u64, request_bytes: u64) {
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
            upstream_transport_failure_reason: self.transport_failure,
            bytes_received: request_bytes,
            bytes_sent: self.response_bytes,
            duration: duration_ms,
            upstream_service_time: self.upstream_time.map(|t| t.as_millis().to_string()),
            x_forwarded_for: log.forwarded_for.as_deref(),
            user_agent: log.user_agent.as_deref(),
            request_id: log.request_id.as_deref(),
            authority: log.authority.as_deref(),
            upstream_host: self.endpoint.as_ref().map(|e| e.address_text.to_string()),
            upstream_cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
            upstream_local_address: None,
            downstream_local_address: self.downstream.1.to_string(),
            downstream_remote_address: self.downstream.0.to_string(),
            requested_server_name: self.downstream_tls.as_ref().and_then(|t| t.sni.as_deref()),
            traceparent: log.traceparent.as_deref(),
        });
    }
}
