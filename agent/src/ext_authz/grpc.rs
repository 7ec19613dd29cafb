//! Envoy's ext_authz gRPC protocol: `envoy.service.auth.v3.Authorization/Check`.
//! The check carries the caller and this workload (addresses and
//! identities) and the request: id (`x-request-id`), method, every header
//! (pseudo-headers included, repeated ones joined with `,`, as Envoy sends
//! them), path with query, host, scheme, size, protocol and, when the
//! provider asks, the body read ahead (`body` as UTF-8, `raw_body` with
//! `packAsBytes`) and `x-envoy-auth-partial-body` among the headers. An `OK` status allows with the answer's header
//! edits; any other status denies with its `denied_response` (403 when it
//! names no status). A gRPC failure of the call itself is a failure of the
//! authorizer.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use ::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use super::stats::ExtAuthzStats;
use super::upstream::{AuthzConnector, AuthzUpstream};

use super::proto::auth::attribute_context::{HttpRequest, Peer, Request};
use super::proto::auth::authorization_client::AuthorizationClient;
use super::proto::auth::check_response::HttpResponse;
use super::proto::auth::{AttributeContext, CheckRequest as ProtoCheck, CheckResponse};
use super::proto::core::{Address, HeaderValueOption, SocketAddress, address, socket_address};
use super::{
    AllowEdits, CheckOutcome, CheckRequest, DeniedResponse, ExtAuthzError, GrpcAuthzSettings,
};

/// A client of one gRPC authorizer: an HTTP/2 channel per endpoint, as
/// Envoy keeps a connection pool per host.
#[derive(Debug)]
pub struct GrpcAuthzClient {
    /// The provider's settings.
    pub settings: Arc<GrpcAuthzSettings>,
    /// Where the checks go.
    pub upstream: Arc<AuthzUpstream>,
    stats: Arc<ExtAuthzStats>,
    channels: Box<[OnceLock<Result<Channel, String>>]>,
}

impl GrpcAuthzClient {
    /// A client of `upstream`; a channel connects on the first check to its
    /// endpoint, TLS failures are counted in `stats`.
    pub fn new(
        settings: Arc<GrpcAuthzSettings>,
        upstream: Arc<AuthzUpstream>,
        stats: Arc<ExtAuthzStats>,
    ) -> Self {
        let channels = (0..upstream.endpoints()).map(|_| OnceLock::new()).collect();
        Self {
            settings,
            upstream,
            stats,
            channels,
        }
    }

    fn channel(&self, endpoint: usize) -> Result<Channel, ExtAuthzError> {
        let slot = self
            .channels
            .get(endpoint)
            .ok_or_else(|| ExtAuthzError::Transport(format!("no endpoint {endpoint}")))?;
        let made = slot.get_or_init(|| {
            let connector =
                AuthzConnector::new(self.upstream.clone(), endpoint, true, self.stats.clone());
            Endpoint::from_shared(format!("http://{}", self.settings.common.target))
                .map(|e| e.connect_with_connector_lazy(connector))
                .map_err(|e| e.to_string())
        });
        made.clone().map_err(ExtAuthzError::Transport)
    }

    /// Sends the check to endpoint `endpoint` (without the timeout, which
    /// the caller applies).
    pub(super) async fn check(
        &self,
        request: &CheckRequest<'_>,
        endpoint: usize,
    ) -> Result<CheckOutcome, ExtAuthzError> {
        let check = check_request(request, self.settings.common.body);
        let mut client = AuthorizationClient::new(self.channel(endpoint)?);
        let answer = client
            .check(check)
            .await
            .map_err(|status| ExtAuthzError::Transport(format!("{status}")))?;
        Ok(outcome(answer.into_inner()))
    }
}

fn peer(address: SocketAddr, principal: Option<&str>) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                protocol: 0,
                address: address.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    address.port(),
                ))),
            })),
        }),
        principal: principal.unwrap_or_default().to_owned(),
        ..Peer::default()
    }
}

/// The `CheckRequest` for `request`.
pub fn check_request(request: &CheckRequest<'_>, body: Option<super::BodySettings>) -> ProtoCheck {
    let mut headers = std::collections::HashMap::new();
    headers.insert(":authority".to_owned(), request.host.to_owned());
    headers.insert(":method".to_owned(), request.method.to_owned());
    headers.insert(":path".to_owned(), request.path_and_query.to_owned());
    headers.insert(":scheme".to_owned(), request.scheme.to_owned());
    for name in request
        .headers
        .keys()
        .filter(|n| **n != super::PARTIAL_BODY)
    {
        let joined: Vec<&str> = request
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        headers.insert(name.as_str().to_owned(), joined.join(","));
    }
    let pack = body.is_some_and(|b| b.pack_as_bytes);
    if request.body.is_some() {
        let partial = if request.body_partial {
            "true"
        } else {
            "false"
        };
        headers.insert(super::PARTIAL_BODY.as_str().to_owned(), partial.to_owned());
    }
    let (text, raw) = match request.body {
        Some(bytes) if pack => (String::new(), bytes.to_vec()),
        Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), Vec::new()),
        None => (String::new(), Vec::new()),
    };
    let id = request
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ProtoCheck {
        attributes: Some(AttributeContext {
            source: Some(peer(request.source, request.source_principal)),
            destination: Some(peer(
                request.destination,
                Some(request.destination_principal),
            )),
            request: Some(Request {
                time: Some(prost_types::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(HttpRequest {
                    id,
                    method: request.method.to_owned(),
                    headers,
                    path: request.path_and_query.to_owned(),
                    host: request.host.to_owned(),
                    scheme: request.scheme.to_owned(),
                    size: request.body_len.map_or(-1, |n| n as i64),
                    protocol: request.protocol.to_owned(),
                    body: text,
                    raw_body: raw,
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

/// Headers to set or append.
type HeaderList = Vec<(HeaderName, HeaderValue)>;

/// Header edits of a `HeaderValueOption` list: (set, append).
fn options(list: &[HeaderValueOption]) -> (HeaderList, HeaderList) {
    let (mut set, mut append) = (Vec::new(), Vec::new());
    for option in list {
        let Some(header) = &option.header else {
            continue;
        };
        let value = if header.raw_value.is_empty() {
            HeaderValue::from_str(&header.value)
        } else {
            HeaderValue::from_bytes(&header.raw_value)
        };
        let (Ok(name), Ok(value)) = (HeaderName::try_from(header.key.to_ascii_lowercase()), value)
        else {
            continue;
        };
        // `append` defaults to false in ext_authz answers; `append_action`
        // 0 (APPEND_IF_EXISTS_OR_ADD) only counts when `append` is unset.
        if option.append.unwrap_or_default() {
            append.push((name, value));
        } else {
            set.push((name, value));
        }
    }
    (set, append)
}

/// What a `CheckResponse` means.
pub fn outcome(answer: CheckResponse) -> CheckOutcome {
    let ok = answer.status.as_ref().is_none_or(|s| s.code == 0);
    if ok {
        let mut edits = AllowEdits::default();
        if let Some(HttpResponse::OkResponse(ok)) = answer.http_response {
            (edits.upstream_set, edits.upstream_append) = options(&ok.headers);
            edits.upstream_remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok())
                .filter(|h| h != ::http::header::HOST)
                .collect();
            let (add, append) = options(&ok.response_headers_to_add);
            edits.downstream_add = add.into_iter().chain(append).collect();
        }
        return CheckOutcome::Allow(edits);
    }
    let mut denied = DeniedResponse {
        status: StatusCode::FORBIDDEN,
        headers: Vec::new(),
        body: Bytes::new(),
    };
    if let Some(HttpResponse::DeniedResponse(d)) = answer.http_response {
        if let Some(status) = d
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|s| s.as_u16() >= 200)
        {
            denied.status = status;
        }
        let (set, append) = options(&d.headers);
        denied.headers = set.into_iter().chain(append).collect();
        denied.body = Bytes::from(d.body);
    }
    CheckOutcome::Deny(denied)
}
