//! Envoy's ext_authz HTTP protocol. The check is an HTTP request to the
//! authorizer with the client request's method and `pathPrefix` + path (and
//! query); it carries `host`, `content-length` (of the body sent, 0 without
//! one) and `authorization` always, the request headers
//! `includeRequestHeadersInCheck` names and the fixed
//! `includeAdditionalHeadersInCheck`; with `includeRequestBodyInCheck` its
//! body is the body read ahead (and `x-envoy-auth-partial-body` goes along
//! when `includeRequestHeadersInCheck` names it). A 200 answer allows: its headers
//! named by `headersToUpstreamOnAllow` are set on the upstream request,
//! `x-envoy-auth-headers-to-remove` lists headers to remove from it, and
//! those named by `headersToDownstreamOnAllow` go on the client's response.
//! A 5xx answer is a failure of the authorizer (as in Envoy); any other
//! status denies, and the client gets that status, the body and the headers
//! `headersToDownstreamOnDeny` names (all when it names none).

use std::sync::Arc;

use ::http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use ::http::{HeaderName, HeaderValue, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::stats::ExtAuthzStats;
use super::upstream::{AuthzConnector, AuthzUpstream};
use super::{
    AllowEdits, CheckOutcome, CheckRequest, DeniedResponse, ExtAuthzError, HttpAuthzSettings,
    PARTIAL_BODY, matches_any,
};

/// Envoy's header listing what to remove from the upstream request.
const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// Most bytes of an authorizer's answer read (a denial's body for the client).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// hyper's pooled client of one authorizer endpoint.
type EndpointClient = Client<AuthzConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client of one authorizer: a pool per endpoint, as
/// Envoy keeps one per host.
pub struct HttpAuthzClient {
    /// The provider's settings.
    pub settings: Arc<HttpAuthzSettings>,
    /// Where the checks go.
    pub upstream: Arc<AuthzUpstream>,
    stats: Arc<ExtAuthzStats>,
    clients: Box<[std::sync::OnceLock<EndpointClient>]>,
}

impl std::fmt::Debug for HttpAuthzClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuthzClient")
            .field("settings", &self.settings)
            .field("upstream", &self.upstream.describe())
            .finish_non_exhaustive()
    }
}

impl HttpAuthzClient {
    /// A client of `upstream`; connections open on the first check, TLS
    /// failures are counted in `stats`.
    pub fn new(
        settings: Arc<HttpAuthzSettings>,
        upstream: Arc<AuthzUpstream>,
        stats: Arc<ExtAuthzStats>,
    ) -> Self {
        let clients = (0..upstream.endpoints())
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Self {
            settings,
            upstream,
            stats,
            clients,
        }
    }

    fn client(&self, endpoint: usize) -> Option<&EndpointClient> {
        let client = self.clients.get(endpoint)?.get_or_init(|| {
            let connector =
                AuthzConnector::new(self.upstream.clone(), endpoint, false, self.stats.clone());
            Client::builder(TokioExecutor::new()).build(connector)
        });
        Some(client)
    }

    /// The check request for `request`.
    pub fn check_request(
        &self,
        request: &CheckRequest<'_>,
    ) -> Result<Request<Full<Bytes>>, ExtAuthzError> {
        let settings = &self.settings;
        let uri = format!(
            "http://{}{}{}",
            settings.common.target, settings.path_prefix, request.path_and_query
        );
        let mut builder = Request::builder().method(request.method).uri(uri);
        let headers = builder
            .headers_mut()
            .ok_or_else(|| ExtAuthzError::Protocol("invalid check request".into()))?;
        for (name, value) in request.headers {
            let always = name == AUTHORIZATION;
            if always || matches_any(&settings.include_request_headers, name.as_str()) {
                if name == HOST || name == CONTENT_LENGTH || name == PARTIAL_BODY {
                    continue;
                }
                headers.append(name.clone(), value.clone());
            }
        }
        if let Ok(host) = HeaderValue::from_str(request.host) {
            headers.insert(HOST, host);
        }
        for (name, value) in &settings.additional_headers {
            headers.insert(name.clone(), value.clone());
        }
        if request.body.is_some()
            && matches_any(&settings.include_request_headers, PARTIAL_BODY.as_str())
        {
            headers.insert(
                PARTIAL_BODY,
                HeaderValue::from_static(if request.body_partial {
                    "true"
                } else {
                    "false"
                }),
            );
        }
        let body = request.body.map(Bytes::copy_from_slice).unwrap_or_default();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        builder
            .body(Full::new(body))
            .map_err(|e| ExtAuthzError::Protocol(e.to_string()))
    }

    /// Sends the check to endpoint `endpoint` and reads the answer (without
    /// the timeout, which the caller applies).
    pub(super) async fn check(
        &self,
        request: &CheckRequest<'_>,
        endpoint: usize,
    ) -> Result<CheckOutcome, ExtAuthzError> {
        let check = self.check_request(request)?;
        let client = self
            .client(endpoint)
            .ok_or_else(|| ExtAuthzError::Transport(format!("no endpoint {endpoint}")))?;
        let response = client
            .request(check)
            .await
            .map_err(|e| ExtAuthzError::Transport(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ExtAuthzError::Transport(e.to_string()))?
            .to_bytes();
        self.outcome(parts.status, &parts.headers, body)
    }

    /// What the authorizer's answer means.
    pub fn outcome(
        &self,
        status: StatusCode,
        headers: &::http::HeaderMap,
        body: Bytes,
    ) -> Result<CheckOutcome, ExtAuthzError> {
        let settings = &self.settings;
        if status.is_server_error() {
            return Err(ExtAuthzError::Protocol(format!(
                "the authorizer answered {status}"
            )));
        }
        let pick = |patterns: &[crate::model::authz::Pattern], all_when_empty: bool| {
            headers
                .iter()
                .filter(|(name, _)| {
                    let hop = matches!(
                        name.as_str(),
                        "content-length" | "transfer-encoding" | "connection" | "host"
                    );
                    !hop && if patterns.is_empty() {
                        all_when_empty
                    } else {
                        matches_any(patterns, name.as_str())
                    }
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        if status == StatusCode::OK {
            let upstream_remove = headers
                .get_all(HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|h| HeaderName::try_from(h.trim().to_ascii_lowercase()).ok())
                .filter(|h| h != HOST)
                .collect();
            return Ok(CheckOutcome::Allow(AllowEdits {
                upstream_set: pick(&settings.headers_to_upstream_on_allow, false),
                upstream_append: Vec::new(),
                upstream_remove,
                downstream_add: pick(&settings.headers_to_downstream_on_allow, false),
            }));
        }
        Ok(CheckOutcome::Deny(DeniedResponse {
            status,
            headers: pick(&settings.headers_to_downstream_on_deny, true),
            body,
        }))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
