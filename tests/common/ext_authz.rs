//! A small external authorizer speaking Envoy's real ext_authz protocols —
//! HTTP and the `envoy.service.auth.v3.Authorization/Check` gRPC service —
//! with the policy an OPA deployment typically holds: a request with
//! `x-user: alice` is allowed (the authorizer adds `x-authz-user: alice` for
//! the upstream and `x-authz-checked: yes` for the client, and asks for
//! `x-remove-me` to be removed); any other is denied with 403 (gRPC: the
//! status in `x-deny-status`, else 403), `x-denied-by: test-authz` and the
//! body `denied by test-authz`. `x-delay-ms` makes it wait that long first;
//! `x-fail: 1` makes the HTTP authorizer answer 500 (an authorizer failure).
//! Every check it receives is recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tracemesh_agent::ext_authz::proto::auth::authorization_server::{
    Authorization, AuthorizationServer,
};
use tracemesh_agent::ext_authz::proto::auth::check_response::HttpResponse;
use tracemesh_agent::ext_authz::proto::auth::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use tracemesh_agent::ext_authz::proto::core::{HeaderValue, HeaderValueOption};
use tracemesh_agent::ext_authz::proto::envoy::r#type::v3::HttpStatus;
use tracemesh_agent::ext_authz::proto::google::rpc::Status;

/// One check as the authorizer saw it.
#[derive(Debug, Clone, Default)]
pub struct SeenCheck {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers (lower-case names; repeated ones joined with `,`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// gRPC only: the body came as `raw_body` (`packAsBytes`), not `body`.
    pub raw_body: bool,
    /// gRPC only: the source address and principal.
    pub source: Option<(String, String)>,
}

impl SeenCheck {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The checks received, shared with the test.
pub type Seen = Arc<Mutex<Vec<SeenCheck>>>;

fn allowed(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(n, v)| n == "x-user" && v == "alice")
}

async fn delay(headers: &[(String, String)]) {
    if let Some(ms) = headers
        .iter()
        .find(|(n, _)| n == "x-delay-ms")
        .and_then(|(_, v)| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Starts the HTTP authorizer on 127.0.0.1:0.
pub async fn start_http() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let headers: Vec<(String, String)> = parts
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        record.lock().unwrap().push(SeenCheck {
                            method: parts.method.to_string(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or("", |p| p.as_str())
                                .to_owned(),
                            headers: headers.clone(),
                            body: body.to_vec(),
                            raw_body: false,
                            source: None,
                        });
                        delay(&headers).await;
                        let fail = headers.iter().any(|(n, v)| n == "x-fail" && v == "1");
                        let response = if fail {
                            hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::new()))
                        } else if allowed(&headers) {
                            hyper::Response::builder()
                                .status(200)
                                .header("x-authz-user", "alice")
                                .header("x-authz-other", "not-copied")
                                .header("x-authz-checked", "yes")
                                .header("x-envoy-auth-headers-to-remove", "x-remove-me")
                                .body(Full::new(Bytes::new()))
                        } else {
                            hyper::Response::builder()
                                .status(403)
                                .header("x-denied-by", "test-authz")
                                .header("x-internal", "kept-back")
                                .body(Full::new(Bytes::from_static(b"denied by test-authz")))
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[derive(Clone)]
struct GrpcAuthz {
    seen: Seen,
}

fn option(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append,
        ..HeaderValueOption::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let mut headers: Vec<(String, String)> = http.headers.clone().into_iter().collect();
        headers.sort();
        let source = attributes.source.map(|p| {
            let address = p
                .address
                .and_then(|a| a.address)
                .map(|a| format!("{a:?}"))
                .unwrap_or_default();
            (address, p.principal)
        });
        self.seen.lock().unwrap().push(SeenCheck {
            method: http.method.clone(),
            path: http.path.clone(),
            headers: headers.clone(),
            raw_body: !http.raw_body.is_empty(),
            body: if http.raw_body.is_empty() {
                http.body.into_bytes()
            } else {
                http.raw_body
            },
            source,
        });
        delay(&headers).await;
        let response = if allowed(&headers) {
            CheckResponse {
                status: Some(Status {
                    code: 0,
                    message: String::new(),
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        option("x-authz-user", "alice", None),
                        option("x-authz-tag", "appended", Some(true)),
                    ],
                    headers_to_remove: vec!["x-remove-me".into()],
                    response_headers_to_add: vec![option("x-authz-checked", "yes", None)],
                })),
            }
        } else {
            let code = headers
                .iter()
                .find(|(n, _)| n == "x-deny-status")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(403);
            CheckResponse {
                status: Some(Status {
                    code: 7,
                    message: "PERMISSION_DENIED".into(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code }),
                    headers: vec![option("x-denied-by", "test-authz", None)],
                    body: "denied by test-authz".into(),
                })),
            }
        };
        Ok(tonic::Response::new(response))
    }
}

/// Starts the gRPC authorizer on 127.0.0.1:0.
pub async fn start_grpc() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let service = AuthorizationServer::new(GrpcAuthz { seen: seen.clone() });
    (super::grpc::serve(service).await, seen)
}
