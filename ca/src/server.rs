//! `tracemesh ca serve`: signs agents' CSRs over HTTPS. An agent presents a
//! bootstrap token; the token decides which identity it may get.
//!
//! `POST /v1/certificates` with `Authorization: Bearer <token>` and
//! `{"csr": "<PEM>", "lifetimeSeconds": 86400}` → `{"certChain", "rootCert"}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::authority::{Authority, CaError, DEFAULT_LIFETIME};
use crate::spiffe::SpiffeId;
use crate::tokens::{Grant, Tokens};

/// The DNS name the CA's server certificate carries; clients verify it.
pub const CA_SERVER_NAME: &str = "tracemesh-ca";
/// Longest lifetime a client may ask for.
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest (rotation under test uses seconds).
const MIN_LIFETIME: Duration = Duration::from_secs(2);

struct Signer {
    authority: Authority,
    tokens: Tokens,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignRequest {
    csr: String,
    #[serde(default)]
    lifetime_seconds: Option<u64>,
}

/// The CA's routes.
pub fn router(authority: Authority, tokens: Tokens) -> Router {
    let signer = Arc::new(Signer { authority, tokens });
    Router::new()
        .route("/v1/certificates", post(sign))
        .route("/v1/root", get(root))
        .route("/ready", get(|| async { "LIVE\n" }))
        .with_state(signer)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn root(State(signer): State<Arc<Signer>>) -> String {
    signer.authority.root_pem().to_owned()
}

async fn sign(
    State(signer): State<Arc<Signer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(grant) = token.and_then(|t| signer.tokens.grant(t)) else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "a valid bootstrap token is required",
        );
    };
    let request: SignRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let lifetime = request
        .lifetime_seconds
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .clamp(MIN_LIFETIME, MAX_LIFETIME);
    let td = signer.authority.trust_domain();
    let allowed = match grant {
        Grant::Identity {
            namespace,
            service_account,
        } => SpiffeId::new(td, namespace, service_account),
        Grant::Any => match requested_identity(&request.csr) {
            Some(id) if id.trust_domain == td => Ok(id),
            Some(id) => {
                return problem(
                    StatusCode::FORBIDDEN,
                    format!("{id} is outside trust domain {td}"),
                );
            }
            None => return problem(StatusCode::BAD_REQUEST, "the CSR names no SPIFFE identity"),
        },
    };
    let allowed = match allowed {
        Ok(id) => id,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match signer.authority.sign_csr(&request.csr, &allowed, lifetime) {
        Ok(issued) => {
            tracing::info!(identity = %allowed, lifetime = ?lifetime, "certificate issued");
            Json(issued).into_response()
        }
        Err(e @ CaError::WrongIdentity { .. }) => problem(StatusCode::FORBIDDEN, e.to_string()),
        Err(e) => problem(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn requested_identity(csr_pem: &str) -> Option<SpiffeId> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).ok()?;
    csr.params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => SpiffeId::parse(uri.as_str()).ok(),
            _ => None,
        })
}

/// TLS for the CA's listener: a server certificate from the CA itself.
pub fn tls_config(
    authority: &Authority,
    ips: &[std::net::IpAddr],
) -> Result<Arc<ServerConfig>, CaError> {
    let (key_pem, issued) = authority.issue_server(&[CA_SERVER_NAME, "localhost"], ips)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| CaError::NoCertificate("ca server certificate".into()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| CaError::NoCertificate("ca server key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| CaError::Io {
            path: "tls".into(),
            source: std::io::Error::other(e),
        })?;
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, router: Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, %peer, "ca tls handshake failed");
                    return;
                }
            };
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "ca connection ended with an error");
            }
        });
    }
}

/// Runs the CA of `dir` on `listen` until SIGINT/SIGTERM, logging one
/// `ca ready listen=…` line once it accepts.
pub fn run(dir: &std::path::Path, listen: std::net::SocketAddr) -> Result<(), CaError> {
    let authority = Authority::load(dir)?;
    let tokens = Tokens::load(dir)?;
    let mut ips = vec![listen.ip(), std::net::Ipv4Addr::LOCALHOST.into()];
    ips.retain(|ip| !ip.is_unspecified());
    let tls = tls_config(&authority, &ips)?;
    let router = router(authority, tokens);
    let io = |source| CaError::Io {
        path: listen.to_string().into(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await.map_err(io)?;
        tracing::info!(listen = %listener.local_addr().map_err(io)?, "ca ready");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(io)?;
        tokio::select! {
            () = serve(listener, tls, router) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}
