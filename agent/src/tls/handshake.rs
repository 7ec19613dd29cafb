//! TLS handshakes on both sides: inbound by the workload's PeerAuthentication
//! mode (STRICT requires mTLS, PERMISSIVE tells TLS from plaintext by the
//! first byte), outbound by the cluster's TLS plan. Failures close the
//! connection and are counted by reason.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use rustls::{AlertDescription, CertificateError, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::io::{DownstreamIo, MaybeTls, UpstreamIo};
use super::material::TlsMaterial;
use super::verify::{PeerTrustDomains, has_any_san};
use crate::model::MtlsMode;
use crate::model::cluster::{TlsServer, UpstreamTls};

/// Longest a client may take to start and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (RFC 8446 §5.1,
/// `ContentType.handshake`): what tells a ClientHello from plaintext.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// What the peer proved about itself.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// Its SPIFFE identity, when its certificate has one.
    pub identity: Option<tracemesh_ca::SpiffeId>,
    /// The same as `spiffe://…` (metric labels), shared per worker.
    pub principal: Option<std::sync::Arc<str>>,
    /// The SNI it asked for.
    pub sni: Option<Arc<str>>,
    /// The peer as its certificate describes it, for when it announces no
    /// metadata: its namespace from the SPIFFE identity, the rest
    /// `unknown` (Istio's `populatePeerInfo`, which reads the namespace
    /// from the SAN). Shared per worker; set by the listener after the
    /// handshake.
    pub peer: Option<Arc<crate::model::peer::PeerInfo>>,
    /// The client presented a certificate (Envoy's
    /// `peerCertificatePresented`): without one, XFCC is removed.
    pub client_certificate: bool,
    /// This connection's `x-forwarded-client-cert` element, built once at
    /// the handshake where the listener's XFCC mode sets one
    /// ([`super::xfcc::element`]).
    pub xfcc: Option<http::HeaderValue>,
}

/// What a terminating listener puts in its connections' XFCC element: the
/// details its mode asks for, and the URI SANs of the certificate it
/// serves (`By`). `None` where the mode sets no element.
#[derive(Debug, Clone, Copy)]
pub struct XfccSource<'a> {
    /// Which of the client certificate's details the element carries.
    pub details: super::xfcc::CertDetails,
    /// The served certificate's URI SANs.
    pub local_uris: &'a [String],
}

/// The reason of a handshake that did not finish within its time (the
/// connect timeout upstream).
pub const TIMEOUT: &str = "timeout";

/// A handshake that failed, by reason (the metric label and the access
/// log's `upstream_transport_failure_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFailure(pub &'static str);

fn reason(error: &std::io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return if error.kind() == std::io::ErrorKind::TimedOut {
            TIMEOUT
        } else {
            "connection_error"
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "unknown_ca",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "wrong_san",
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => "revoked",
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => "revoked",
        rustls::Error::AlertReceived(AlertDescription::UnknownCA) => "unknown_ca",
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => "expired",
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "no_client_certificate"
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown,
        ) => "bad_certificate",
        _ => "handshake_error",
    }
}

fn identity_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Option<tracemesh_ca::SpiffeId> {
    certs
        .and_then(|c| c.first())
        .and_then(|der| tracemesh_ca::spiffe_id_of(der))
}

/// Accepts an inbound connection under `mode`: the stream to serve, and
/// the peer's proof for mTLS connections, with its XFCC element built
/// from `xfcc` (the details; `By` is the workload certificate's URI SANs)
/// where given. `Err` means the connection was refused (and counted).
pub async fn accept(
    stream: TcpStream,
    mode: MtlsMode,
    material: Option<Arc<TlsMaterial>>,
    failures: &IntCounterVec,
    xfcc: Option<super::xfcc::CertDetails>,
) -> Result<(DownstreamIo, Option<PeerTls>), TlsFailure> {
    let fail = |reason: &'static str| {
        failures.with_label_values(&["inbound", reason]).inc();
        TlsFailure(reason)
    };
    let material = match (mode, material) {
        (MtlsMode::Disable, _) | (MtlsMode::Permissive, None) => {
            return Ok((MaybeTls::Plain(stream), None));
        }
        (MtlsMode::Strict, None) => return Err(fail("no_workload_certificate")),
        (_, Some(material)) => material,
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    let is_tls = match peeked {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
        Ok(_) => return Err(TlsFailure("closed")),
        Err(_) => return Err(fail(TIMEOUT)),
    };
    if !is_tls {
        return match mode {
            MtlsMode::Strict => Err(fail("plaintext_refused")),
            _ => Ok((MaybeTls::Plain(stream), None)),
        };
    }
    let config = match mode {
        MtlsMode::Strict => material.server_strict.clone(),
        _ => material.server_permissive.clone(),
    };
    let source = xfcc.map(|details| XfccSource {
        details,
        local_uris: &material.local_uris,
    });
    let (io, peer) = terminate(stream, config, failures, source, None).await?;
    Ok((io, Some(peer)))
}

/// Terminates TLS on `stream` with `config` (an ingress gateway's server
/// certificate, or the workload's mesh config): the decrypted stream and
/// what the client proved, with the connection's XFCC element built from
/// `xfcc` where given; with `peer_names` (an ISTIO_MUTUAL gateway
/// server's `subjectAltNames`) a client whose certificate carries none of
/// them is refused as its handshake ends (`wrong_san`). `Err` means the
/// handshake failed (counted by reason as `inbound`).
pub async fn terminate(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    failures: &IntCounterVec,
    xfcc: Option<XfccSource<'_>>,
    peer_names: Option<&super::verify::ClientPins>,
) -> Result<(DownstreamIo, PeerTls), TlsFailure> {
    let fail = |reason: &'static str| {
        failures.with_label_values(&["inbound", reason]).inc();
        TlsFailure(reason)
    };
    let accepted =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await;
    match accepted {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let identity = identity_of(conn.peer_certificates());
            let client_chain = conn.peer_certificates().unwrap_or_default();
            if let Some(pins) = peer_names {
                let leaf = client_chain.first().map(|c| c.as_ref());
                if leaf.is_none_or(|der| pins.admit(der).is_err()) {
                    tracing::debug!("inbound tls peer names none of the server's subjectAltNames");
                    return Err(fail("wrong_san"));
                }
            }
            let xfcc = xfcc.and_then(|source| {
                let by = source.local_uris.iter().map(String::as_str);
                super::xfcc::element(&source.details, by, client_chain)
            });
            let peer = PeerTls {
                client_certificate: !client_chain.is_empty(),
                xfcc,
                principal: identity
                    .as_ref()
                    .map(|id| std::sync::Arc::from(id.to_string())),
                identity,
                sni: conn.server_name().map(Arc::from),
                peer: None,
            };
            Ok((MaybeTls::Tls(Box::new(tls)), peer))
        }
        Ok(Err(error)) => {
            let why = reason(&error);
            tracing::debug!(%error, reason = why, "inbound tls handshake failed");
            Err(fail(why))
        }
        Err(_) => Err(fail(TIMEOUT)),
    }
}

/// How to secure an upstream connection.
#[derive(Debug, Clone)]
pub enum TlsPlan {
    /// Plaintext.
    Plain,
    /// TLS with `config` to `server`: its SNI sent, one of its expected
    /// SANs required when it has any.
    Tls {
        /// Client config (the workload's mesh config, or a DestinationRule's).
        config: Arc<ClientConfig>,
        /// The server's name and expected SANs, built with the cluster.
        server: Arc<TlsServer>,
        /// Mesh mTLS: the trust domains a server of a service without
        /// accounts must hold an identity in.
        mesh: Option<PeerTrustDomains>,
    },
}

impl TlsPlan {
    /// How a connection to an endpoint of a cluster secured by `tls` is
    /// secured: `sidecar` says the endpoint runs one (auto mTLS skips the
    /// others), `h2` picks the ALPN, `authority` is the HTTP request's
    /// (`None` for TCP), which an origination without `sni` sends as SNI
    /// ([`Origination::server_for`](crate::model::cluster::Origination::server_for)),
    /// `material` gives the workload's current certificate (mesh mTLS
    /// needs it; only mesh mTLS asks). The error is the reason counted for
    /// the TLS failure.
    pub fn for_endpoint(
        tls: &UpstreamTls,
        sidecar: bool,
        h2: bool,
        authority: Option<&str>,
        material: impl FnOnce() -> Option<Arc<TlsMaterial>>,
    ) -> Result<Self, &'static str> {
        match tls {
            UpstreamTls::Plain => Ok(Self::Plain),
            UpstreamTls::Mesh {
                only_sidecars: true,
                ..
            } if !sidecar => Ok(Self::Plain),
            UpstreamTls::Mesh { server, .. } => {
                let material = material().ok_or("no_workload_certificate")?;
                Ok(Self::Tls {
                    config: if h2 {
                        material.mesh_h2.clone()
                    } else {
                        material.mesh_h1.clone()
                    },
                    server: server.clone().ok_or("bad_sni")?,
                    mesh: Some(material.peer_trust_domains.clone()),
                })
            }
            UpstreamTls::Originate(origination) => Ok(Self::Tls {
                config: if h2 {
                    origination.h2.clone()
                } else {
                    origination.h1.clone()
                },
                server: origination.server_for(authority),
                mesh: None,
            }),
            UpstreamTls::Broken(_) => Err("bad_tls_settings"),
        }
    }
}

/// Secures an upstream connection by `plan` within `timeout` (the time
/// left of the cluster's connect timeout: [`crate::connect::dial`]);
/// returns the stream and the server's SPIFFE identity, if it has one.
pub async fn connect(
    stream: TcpStream,
    plan: &TlsPlan,
    failures: &IntCounterVec,
    timeout: Duration,
) -> Result<(UpstreamIo, Option<tracemesh_ca::SpiffeId>), TlsFailure> {
    let TlsPlan::Tls {
        config,
        server,
        mesh,
    } = plan
    else {
        return Ok((MaybeTls::Plain(stream), None));
    };
    let fail = |reason: &'static str| {
        failures.with_label_values(&["outbound", reason]).inc();
        TlsFailure(reason)
    };
    let connecting = TlsConnector::from(config.clone()).connect(server.server_name.clone(), stream);
    let tls = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let why = reason(&error);
            tracing::debug!(%error, reason = why, "outbound tls handshake failed");
            return Err(fail(why));
        }
        Err(_) => return Err(fail(TIMEOUT)),
    };
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    // Who the server must be, as Istio renders the cluster's SAN
    // matchers: one of its expected names when it has any (the service's
    // accounts, a rule's `subjectAltNames`), of whatever trust domain;
    // for mesh mTLS to a service without any, an identity of the mesh's
    // trust domains (where Envoy checks the chain alone).
    let expected = &server.expected;
    let named = if !expected.is_empty() {
        leaf.is_some_and(|der| has_any_san(der, expected))
    } else if let Some(trust_domains) = mesh {
        identity_of(conn.peer_certificates())
            .is_some_and(|id| trust_domains.load().contains(&id.trust_domain))
    } else {
        true
    };
    if !named {
        return Err(fail("wrong_san"));
    }
    let identity = identity_of(conn.peer_certificates());
    Ok((MaybeTls::Tls(Box::new(tls)), identity))
}
