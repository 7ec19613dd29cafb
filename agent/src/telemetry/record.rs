//! The record of one proxied request: the plain facts every report of it is
//! made from — its Istio metrics, its span's attributes, its access log
//! line. The request path fills it in as the request goes; nothing in it is
//! a telemetry SDK type, so any encoder (the metric cache, the access log,
//! a span exporter) can read it.

use crate::telemetry::grpc_messages::GrpcMessages;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, Request, Version};

use super::access_log::{AccessLogEntry, rfc3339_millis};
use super::metrics::{ByAddress, PeerLabels, Reporter, RequestKey};
use crate::flags::ResponseFlags;
use crate::host::request_authority;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::expr::{Attributes, ResponseAttributes};
use crate::model::peer::PeerInfo;
use crate::model::service::ServiceName;
use crate::model::{Direction, Identity};

/// Envoy's `response_code_details`: why the response is what it is
/// (`via_upstream`, `route_not_found`, `rbac_access_denied_matched_policy[…]`,
/// …), extended with the resource and rule that decided it
/// (`response_timeout{VirtualService:default/reviews[r1]}`; docs/envoy-differences.md).
pub type Details = Cow<'static, str>;

/// Everything reported about one request.
#[derive(Debug)]
pub struct RequestRecord {
    /// This agent.
    pub local: Arc<Identity>,
    /// The listener it came in on.
    pub direction: Direction,
    /// The client's address.
    pub downstream_remote: SocketAddr,
    /// The address the client connected to.
    pub downstream_local: SocketAddr,
    /// The client's verified SPIFFE identity (inbound mTLS).
    pub downstream_principal: Option<Arc<str>>,
    /// The SNI the client asked for (inbound mTLS).
    pub requested_server_name: Option<Arc<str>>,
    /// When it arrived (for the duration).
    pub start: Instant,
    /// When it arrived (wall clock, for the access log).
    pub start_time: SystemTime,
    /// The client's protocol version.
    pub version: Version,
    /// Whether it is gRPC (by content type).
    pub grpc: bool,
    /// The VirtualService rule's name, when one routed it (Envoy's route
    /// name).
    pub route: Option<Arc<str>>,
    /// The VirtualService rule that routed it, as details name it
    /// (`VirtualService:<namespace>/<name>[<rule>]`).
    pub route_reference: Option<Arc<str>>,
    /// The matched path template (OpenTelemetry's `http.route`), when the
    /// rule's match names one.
    pub http_route: Option<Arc<str>>,
    /// The cluster it was sent to.
    pub cluster: Option<Arc<Cluster>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<Arc<Endpoint>>,
    /// Attempts made (retries + 1; 0 when none was sent).
    pub attempts: u32,
    /// The other side, as metric labels name it.
    pub peer: Arc<PeerInfo>,
    /// The service an unrouted request was addressed to (Istio falls back
    /// to the Host header for `destination_service`).
    pub unrouted_service: Option<Arc<ServiceName>>,
    /// The server's SPIFFE identity on the upstream mTLS connection.
    pub upstream_principal: Option<Arc<str>>,
    /// The local address of the upstream connection that answered (Envoy's
    /// `%UPSTREAM_LOCAL_ADDRESS%`).
    pub upstream_local: Option<SocketAddr>,
    /// Why the upstream TLS handshake failed, when it did.
    pub transport_failure: Option<&'static str>,
    /// The response status (0: none was sent).
    pub status: u16,
    /// The gRPC status, from headers or trailers ([`grpc_status`]: `-1`
    /// for one that is no number).
    pub grpc_status: Option<i64>,
    /// Envoy's response flags.
    pub flags: ResponseFlags,
    /// Why the response is what it is (`via_upstream` when the upstream
    /// answered), and what decided it.
    pub details: Option<Details>,
    /// The AUDIT AuthorizationPolicy that matched (`namespace/name[rule]`),
    /// when one did: Envoy's `access_log_hint`, shown in the access log.
    pub audited: Option<String>,
    /// What the dry-run AuthorizationPolicies (`istio.io/dry-run`) would
    /// have decided, when any applies: `denied by namespace/name[rule]`,
    /// `allowed by …`, `allowed`, or `denied: no dry-run ALLOW policy
    /// matched` (Istio's shadow engine result and effective policy id).
    pub dry_run: Option<String>,
    /// The policy that decided access (`namespace/name[rule]`, with
    /// ` provider=<name>` for CUSTOM), when one did.
    pub access_policy: Option<String>,
    /// Request body bytes forwarded.
    pub request_bytes: u64,
    /// Response body bytes sent back.
    pub response_bytes: u64,
    /// The gRPC messages of the request's body (a gRPC request's only).
    pub grpc_request_messages: u64,
    /// The gRPC messages of the response's body.
    pub grpc_response_messages: GrpcMessages,
    /// How long the upstream took to answer (headers).
    pub upstream_time: Option<Duration>,
    /// Request facts only the access log reads, when it is on.
    pub log: Option<Box<LogFields>>,
    /// What the Telemetry's expressions read once the request is over, kept
    /// only when the side has some.
    pub facts: Option<Box<RequestFacts>>,
}

/// A request as the Telemetry's expressions read it after the fact.
#[derive(Debug)]
pub struct RequestFacts {
    method: http::Method,
    path: String,
    host: String,
    scheme: &'static str,
    headers: http::HeaderMap,
    /// The response's headers, once there is a response.
    pub response_headers: http::HeaderMap,
}

impl RequestFacts {
    /// Keeps what the expressions may read of `req`.
    pub fn of<B>(req: &Request<B>, tls: bool) -> Self {
        Self {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            host: crate::host::request_authority(req).unwrap_or("").to_owned(),
            scheme: if tls { "https" } else { "http" },
            headers: req.headers().clone(),
            response_headers: http::HeaderMap::new(),
        }
    }
}

/// Request facts kept only for the access log.
#[derive(Debug)]
pub struct LogFields {
    method: String,
    path: String,
    authority: Option<String>,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    request_id: Option<String>,
    /// The `traceparent` sent to the next hop, or for a request the agent
    /// answered itself, this hop's span's.
    pub traceparent: Option<String>,
}

impl LogFields {
    /// The fields of `req`, as it arrived; `forwarded_for` is its
    /// `x-forwarded-for` as this hop forwards it, when the hop appends
    /// the client to it (Envoy's connection manager appends before any
    /// filter runs, so its log line shows the appended value).
    pub fn of<B>(req: &Request<B>, forwarded_for: Option<String>) -> Self {
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
            forwarded_for: forwarded_for.or_else(|| header("x-forwarded-for")),
            request_id: header("x-request-id"),
            traceparent: None,
        }
    }
}

/// Whether a request is gRPC, by content type as Envoy's
/// `Grpc::Common::hasGrpcContentType` decides: exactly `application/grpc`
/// or `application/grpc+<codec>`. gRPC-Web (`application/grpc-web…`) is
/// not: it is HTTP/1.1-compatible traffic, sent as the port's protocol says.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
}

/// The gRPC status in response headers or trailers, as Envoy's
/// `Grpc::Common::getGrpcStatus` reads it (absl's `SimpleAtoi` into an
/// unsigned number: spaces around it and a `+` allowed): none when the
/// header is absent or empty, `-1` (Envoy's `InvalidCode`) when it is no
/// such number.
pub fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get(GRPC_STATUS)?.as_bytes();
    if value.is_empty() {
        return None;
    }
    let text = value.trim_ascii();
    let digits = text.strip_prefix(b"+").unwrap_or(text);
    let number = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
        .and_then(|n| i64::try_from(n).ok());
    Some(number.unwrap_or(-1))
}

/// The `grpc_response_status` Istio reports for a gRPC request, as Envoy's
/// `Grpc::Common::getGrpcStatus(trailers, headers, info)` reads it: the
/// answer's own status (one above 16, user-defined, is `-1`, Envoy's
/// `InvalidCode`), else inferred from the HTTP `status` sent
/// (`httpToGrpcStatus`: a 503 without a gRPC status is 14, a 200 is 2),
/// else none (0: nothing was sent).
pub fn reported_grpc_status(grpc_status: Option<i64>, status: u16) -> Option<i32> {
    const MAXIMUM_KNOWN: i64 = 16;
    match grpc_status {
        Some(code @ 0..=MAXIMUM_KNOWN) => Some(code as i32),
        Some(_) => Some(-1),
        None if status == 0 => None,
        None => Some(i32::from(grpc_status_for(status))),
    }
}

/// Envoy's mapping of an HTTP status to a gRPC status
/// (`Grpc::Utility::httpToGrpcStatus`), for local replies to gRPC callers
/// and for answers that carry no gRPC status.
pub fn grpc_status_for(status: impl Into<u16>) -> u16 {
    match status.into() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `grpc-status`, read from every upstream answer (a name given as a
/// `HeaderName` is not parsed again on each lookup, as a `&str` is).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `x-request-id`: the request's id, as Envoy assigns and reports it.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

impl RequestRecord {
    /// The service the request was for: its cluster's, the unrouted
    /// host's, else this workload's.
    pub fn service(&self) -> Arc<ServiceName> {
        match (&self.cluster, &self.unrouted_service) {
            (Some(cluster), _) => cluster.service.clone(),
            (None, Some(service)) => service.clone(),
            (None, None) => self.local.service.clone(),
        }
    }

    /// The verified identity of the other side, on mTLS: the caller's
    /// inbound, the server's outbound.
    pub fn tls_peer(&self) -> Option<&Arc<str>> {
        match self.direction {
            Direction::Inbound => self.downstream_principal.as_ref(),
            Direction::Outbound => self.upstream_principal.as_ref(),
        }
    }

    /// The request and its response as the Telemetry's expressions see
    /// them, when the facts were kept.
    pub fn attributes(&self) -> Option<Attributes<'_>> {
        let facts = self.facts.as_deref()?;
        Some(Attributes {
            request: true,
            method: facts.method.as_str(),
            path: &facts.path,
            host: &facts.host,
            scheme: facts.scheme,
            protocol: protocol_name(self.version),
            request_headers: &facts.headers,
            request_size: self.request_bytes,
            response: (self.status != 0).then(|| ResponseAttributes {
                code: self.status,
                code_details: self.details.as_deref().unwrap_or(""),
                grpc_status: self.grpc_status,
                headers: &facts.response_headers,
                size: self.response_bytes,
            }),
            source: self.downstream_remote,
            destination: self.downstream_local,
            mtls: self.downstream_principal.is_some(),
            sni: self.requested_server_name.as_deref(),
        })
    }

    /// The labels of `istio_requests_total` and its siblings.
    pub fn metric_key(&self) -> RequestKey {
        let local = self.local.peer.clone();
        let ours = || Some(ByAddress(self.local.principal.clone()));
        let (reporter, source, destination, security, principals) = match self.direction {
            // The client side cannot tell; Istio reports `unknown` there too.
            Direction::Outbound => {
                let theirs = self.upstream_principal.clone().map(ByAddress);
                let principals = [theirs.is_some().then(ours).flatten(), theirs];
                (
                    Reporter::Source,
                    local,
                    self.peer.clone(),
                    "unknown",
                    principals,
                )
            }
            Direction::Inbound => match self.downstream_principal.clone() {
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
        RequestKey {
            peers: PeerLabels {
                reporter,
                source: ByAddress(source),
                destination: ByAddress(destination),
                service: ByAddress(self.service()),
                security,
                principals,
            },
            grpc: self.grpc,
            code: self.status,
            grpc_status: self
                .grpc
                .then(|| reported_grpc_status(self.grpc_status, self.status))
                .flatten(),
            flags: self.flags,
            tags: Box::default(),
        }
    }

    /// The access log line, when the log is on; `flags` is
    /// `self.flags.as_str()`, made once by the caller.
    pub fn access_log_entry<'a>(
        &'a self,
        flags: &'a str,
        duration: Duration,
    ) -> Option<AccessLogEntry<'a>> {
        let log = self.log.as_deref()?;
        Some(AccessLogEntry {
            start_time: rfc3339_millis(self.start_time),
            route_name: self.route.as_deref(),
            method: Some(&log.method),
            path: Some(&log.path),
            protocol: Some(protocol_name(self.version)),
            response_code: self.status,
            response_flags: flags,
            response_code_details: self.details.as_deref(),
            authorization_policy: self.access_policy.as_deref(),
            access_log_hint: self.audited.is_some(),
            audit_policy: self.audited.as_deref(),
            authz_dry_run: self.dry_run.as_deref(),
            connection_termination_details: None,
            upstream_transport_failure_reason: self.transport_failure,
            bytes_received: self.request_bytes,
            bytes_sent: self.response_bytes,
            duration: duration.as_millis() as u64,
            upstream_service_time: self.upstream_time.map(|t| t.as_millis().to_string()),
            x_forwarded_for: log.forwarded_for.as_deref(),
            user_agent: log.user_agent.as_deref(),
            request_id: log.request_id.as_deref(),
            authority: log.authority.as_deref(),
            upstream_host: self.endpoint.as_ref().map(|e| e.address_text.to_string()),
            upstream_cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
            upstream_local_address: self.upstream_local.map(|a| a.to_string()),
            downstream_local_address: self.downstream_local.to_string(),
            downstream_remote_address: self.downstream_remote.to_string(),
            requested_server_name: self.requested_server_name.as_deref(),
            traceparent: log.traceparent.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Envoy's `getGrpcStatus(trailers, headers, info)`: the answer's
    /// own status, `-1` past the known ones, else inferred from the HTTP
    /// status sent, else none.
    #[test]
    fn the_reported_grpc_status_is_envoys() {
        assert_eq!(reported_grpc_status(Some(5), 200), Some(5));
        assert_eq!(reported_grpc_status(Some(99), 200), Some(-1));
        assert_eq!(reported_grpc_status(None, 503), Some(14));
        assert_eq!(reported_grpc_status(None, 404), Some(12));
        assert_eq!(reported_grpc_status(None, 200), Some(2));
        assert_eq!(reported_grpc_status(None, 0), None);
    }

    /// `grpc-status` as Envoy's `getGrpcStatus` reads it.
    #[test]
    fn a_grpc_status_is_read_as_envoy_reads_it() {
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_STATUS, value.parse().unwrap());
            grpc_status(&headers)
        };
        for (value, want) in [
            ("0", Some(0)),
            ("14", Some(14)),
            ("+5", Some(5)),
            (" 7 ", Some(7)),
            ("05", Some(5)),
            ("99", Some(99)),
            ("", None),
            ("abc", Some(-1)),
            ("-3", Some(-1)),
            ("1e1", Some(-1)),
            ("+", Some(-1)),
            ("99999999999999999999", Some(-1)),
        ] {
            assert_eq!(read(value), want, "{value:?}");
        }
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_is_its_content_type_and_its_codecs_only() {
        let with = |content_type: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
            is_grpc(&headers)
        };
        assert!(with("application/grpc") && with("application/grpc+proto"));
        assert!(!with("application/grpc-web") && !with("application/grpc-web-text"));
        assert!(!with("application/grpcx") && !is_grpc(&HeaderMap::new()));
    }
}
