//! Clients of an external authorizer, as Envoy's ext_authz filter speaks to
//! one for Istio's `CUSTOM` AuthorizationPolicies: the HTTP protocol
//! ([`http`]) and the `envoy.service.auth.v3.Authorization/Check` gRPC
//! service ([`grpc`]). Each check is bounded by the provider's `timeout`;
//! what an unreachable authorizer means (`failOpen`, `statusOnError`) is
//! decided here, once, for both.

pub mod grpc;
pub mod http;
pub mod stats;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;

use crate::model::authz::Pattern;

/// The generated `envoy.service.auth.v3` types and the gRPC client and
/// server, in modules named after their protobuf packages.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub use envoy::config::core::v3 as core;
    pub use envoy::service::auth::v3 as auth;
}

/// Istio's default check timeout for both protocols (600s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The most `maxRequestBytes` may be (16 MiB): a body read ahead for a
/// check is held whole per request, so the agent bounds it where Envoy
/// takes any `uint32`; a larger value is a config error.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// `includeRequestBodyInCheck` (Envoy's `with_request_body`): the request
/// path reads the body ahead before the check, only for requests a CUSTOM
/// policy sends to this provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySettings {
    /// Most bytes read ahead and sent (1 to [`MAX_REQUEST_BYTES`]).
    pub max_request_bytes: usize,
    /// A longer body is sent cut to `max_request_bytes`; without it a
    /// longer body gets Envoy's 413 `Payload Too Large`, even with `failOpen`.
    pub allow_partial_message: bool,
    /// gRPC: the body as bytes (`raw_body`).
    pub pack_as_bytes: bool,
}

/// What every provider has: where the authorizer is and what its failure means.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// The provider's name (recorded as the deciding provider).
    pub provider: String,
    /// The provider's `service` as written: `namespace/host` or `host`
    /// (looked up in the service registry, short names in that namespace,
    /// else the mesh's root namespace).
    pub service: String,
    /// The provider's `port`.
    pub port: u16,
    /// `host:port` of the authorizer as written (the `service`'s host): the
    /// authority of the checks, dialed by DNS when the registry does not
    /// know the host.
    pub target: String,
    /// Longest a check may take.
    pub timeout: Duration,
    /// Let the request through when the authorizer fails.
    pub fail_open: bool,
    /// The status sent when it fails and `failOpen` is false (default 403).
    pub status_on_error: StatusCode,
    /// Buffer and send the body.
    pub body: Option<BodySettings>,
}

/// An `envoyExtAuthzHttp` provider, compiled.
#[derive(Debug, Clone)]
pub struct HttpAuthzSettings {
    /// Target, timeout, failure handling, body.
    pub common: CommonSettings,
    /// Prepended to the request's path (`pathPrefix`).
    pub path_prefix: String,
    /// Request headers sent besides the ones Envoy always sends
    /// (`includeRequestHeadersInCheck`, lower case; `*` as prefix/suffix).
    pub include_request_headers: Vec<Pattern>,
    /// Fixed headers added to the check (`includeAdditionalHeadersInCheck`).
    pub additional_headers: Vec<(HeaderName, HeaderValue)>,
    /// Authorizer headers copied upstream on allow.
    pub headers_to_upstream_on_allow: Vec<Pattern>,
    /// Authorizer headers sent downstream on deny (empty: all).
    pub headers_to_downstream_on_deny: Vec<Pattern>,
    /// Authorizer headers added to the downstream response on allow.
    pub headers_to_downstream_on_allow: Vec<Pattern>,
}

/// An `envoyExtAuthzGrpc` provider, compiled.
#[derive(Debug, Clone)]
pub struct GrpcAuthzSettings {
    /// Target, timeout, failure handling, body.
    pub common: CommonSettings,
}

/// The request as the authorizer is told about it.
#[derive(Debug, Clone, Copy)]
pub struct CheckRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `Host` / `:authority`.
    pub host: &'a str,
    /// Path and query, as received (normalized).
    pub path_and_query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body read ahead, at most `maxRequestBytes` of it, when the
    /// provider asks for it (`includeRequestBodyInCheck`).
    pub body: Option<&'a [u8]>,
    /// `body` is the start of a longer body (`allowPartialMessage`); told
    /// to the authorizer as Envoy does, in `x-envoy-auth-partial-body`.
    pub body_partial: bool,
    /// The body's full length, when known (`content-length`).
    pub body_len: Option<u64>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// The caller's address.
    pub source: SocketAddr,
    /// This workload's address.
    pub destination: SocketAddr,
    /// The caller's verified identity (mTLS), when any.
    pub source_principal: Option<&'a str>,
    /// This workload's identity.
    pub destination_principal: &'a str,
    /// SNI of the TLS session, when any.
    pub sni: Option<&'a str>,
}

/// What the authorizer said.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// Let the request through with these edits.
    Allow(AllowEdits),
    /// Answer the client with this response.
    Deny(DeniedResponse),
}

/// Header edits an allowing authorizer asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowEdits {
    /// Set on the upstream request (replacing a header of the same name).
    pub upstream_set: Vec<(HeaderName, HeaderValue)>,
    /// Appended to the upstream request.
    pub upstream_append: Vec<(HeaderName, HeaderValue)>,
    /// Removed from the upstream request.
    pub upstream_remove: Vec<HeaderName>,
    /// Added to the response sent downstream.
    pub downstream_add: Vec<(HeaderName, HeaderValue)>,
}

/// The response a denying authorizer asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct DeniedResponse {
    /// Status (the authorizer's, default 403).
    pub status: StatusCode,
    /// Headers for the client.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body for the client.
    pub body: Bytes,
}

/// Why a check got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExtAuthzError {
    /// No answer within the provider's timeout.
    #[error("the authorizer did not answer within {0:?}")]
    Timeout(Duration),
    /// The authorizer could not be reached or broke the exchange.
    #[error("the authorizer could not be reached: {0}")]
    Transport(String),
    /// The authorizer answered something that is not a check response.
    #[error("the authorizer's answer is not a check response: {0}")]
    Protocol(String),
}

/// A client of one provider: its protocol, its counters and its failure log.
#[derive(Debug)]
pub struct ExtAuthzClient {
    protocol: Protocol,
    stats: stats::ProviderStats,
}

#[derive(Debug)]
enum Protocol {
    Http(Box<http::HttpAuthzClient>),
    Grpc(grpc::GrpcAuthzClient),
}

/// How a check ended, with the failure handling applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Allow (with edits) or deny (with the response).
    pub outcome: CheckOutcome,
    /// Envoy's response code details: `ext_authz_ok`, `ext_authz_denied`,
    /// `ext_authz_error` (denied because the authorizer failed),
    /// `ext_authz_failure_mode_allowed` (let through because of `failOpen`).
    pub details: &'static str,
}

impl ExtAuthzClient {
    /// A client for HTTP settings, dialing the target as written (DNS),
    /// counting in unregistered counters.
    pub fn http(settings: Arc<HttpAuthzSettings>) -> Self {
        let upstream = upstream::AuthzUpstream::dns(&settings.common.target);
        Self::http_at(settings, Arc::new(upstream), &Arc::default())
    }

    /// A client for HTTP settings, checking at `upstream`, counting in `stats`.
    pub fn http_at(
        settings: Arc<HttpAuthzSettings>,
        upstream: Arc<upstream::AuthzUpstream>,
        stats: &Arc<stats::ExtAuthzStats>,
    ) -> Self {
        let provider = stats.provider(&settings.common.provider);
        let client = http::HttpAuthzClient::new(settings, upstream, stats.clone());
        Self {
            protocol: Protocol::Http(Box::new(client)),
            stats: provider,
        }
    }

    /// A client for gRPC settings, dialing the target as written (DNS),
    /// counting in unregistered counters.
    pub fn grpc(settings: Arc<GrpcAuthzSettings>) -> Self {
        let upstream = upstream::AuthzUpstream::dns(&settings.common.target);
        Self::grpc_at(settings, Arc::new(upstream), &Arc::default())
    }

    /// A client for gRPC settings, checking at `upstream`, counting in `stats`.
    pub fn grpc_at(
        settings: Arc<GrpcAuthzSettings>,
        upstream: Arc<upstream::AuthzUpstream>,
        stats: &Arc<stats::ExtAuthzStats>,
    ) -> Self {
        let provider = stats.provider(&settings.common.provider);
        let client = grpc::GrpcAuthzClient::new(settings, upstream, stats.clone());
        Self {
            protocol: Protocol::Grpc(client),
            stats: provider,
        }
    }

    /// The provider's common settings.
    pub fn settings(&self) -> &CommonSettings {
        match &self.protocol {
            Protocol::Http(c) => &c.settings.common,
            Protocol::Grpc(c) => &c.settings.common,
        }
    }

    /// Whether the provider speaks gRPC (`envoyExtAuthzGrpc`), the only
    /// kind Istio asks about TCP connections.
    pub fn is_grpc(&self) -> bool {
        matches!(self.protocol, Protocol::Grpc(_))
    }

    /// Where the checks go.
    pub fn upstream(&self) -> &upstream::AuthzUpstream {
        match &self.protocol {
            Protocol::Http(c) => &c.upstream,
            Protocol::Grpc(c) => &c.upstream,
        }
    }

    /// Counts a request of a workload with a CUSTOM policy of this
    /// provider that no rule of it matched (Envoy's `disabled`).
    pub fn count_disabled(&self) {
        self.stats.disabled.inc();
    }

    /// Asks the authorizer, within its timeout; an error is what the
    /// authorizer's failure means (`failOpen`, `statusOnError`). Every
    /// outcome is counted; failures are logged at most once per
    /// [`stats::FAILURE_LOG_INTERVAL`].
    pub async fn check(&self, request: &CheckRequest<'_>) -> Verdict {
        let settings = self.settings();
        let asked = async {
            let picked = self.upstream().pick()?;
            match &self.protocol {
                Protocol::Http(c) => c.check(request, picked.index).await,
                Protocol::Grpc(c) => c.check(request, picked.index).await,
            }
        };
        let answer = match tokio::time::timeout(settings.timeout, asked).await {
            Ok(answer) => answer,
            Err(_) => Err(ExtAuthzError::Timeout(settings.timeout)),
        };
        match answer {
            Ok(outcome @ CheckOutcome::Allow(_)) => {
                self.stats.ok.inc();
                Verdict {
                    outcome,
                    details: "ext_authz_ok",
                }
            }
            Ok(outcome @ CheckOutcome::Deny(_)) => {
                self.stats.denied.inc();
                Verdict {
                    outcome,
                    details: "ext_authz_denied",
                }
            }
            Err(error) => {
                self.stats.error.inc();
                self.stats
                    .failures
                    .failed(&settings.provider, &error, settings.fail_open);
                if settings.fail_open {
                    self.stats.failure_mode_allowed.inc();
                    Verdict {
                        outcome: CheckOutcome::Allow(AllowEdits::default()),
                        details: "ext_authz_failure_mode_allowed",
                    }
                } else {
                    Verdict {
                        outcome: CheckOutcome::Deny(DeniedResponse {
                            status: settings.status_on_error,
                            headers: Vec::new(),
                            body: Bytes::new(),
                        }),
                        details: "ext_authz_error",
                    }
                }
            }
        }
    }
}

/// Envoy's header telling the authorizer whether the body it got is cut
/// (`true`) or whole (`false`); a client's own is never passed on.
pub const PARTIAL_BODY: HeaderName = HeaderName::from_static("x-envoy-auth-partial-body");

fn matches_any(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}
