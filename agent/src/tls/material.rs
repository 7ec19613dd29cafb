//! The workload's TLS material — its certificate chain and key, the roots it
//! trusts — and the rustls configs built from it once per rotation.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tracemesh_ca::{CertInfo, SpiffeId};

use super::verify::{
    CheckedClientVerifier, ClientCheck, MeshServerVerifier, NameCheck, PeerTrustDomains,
};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// A PEM input is missing or unreadable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The certificate names no SPIFFE identity.
    #[error("the workload certificate has no SPIFFE URI SAN")]
    NoIdentity,
}

/// ALPN protocols offered and accepted for HTTP: HTTP/2 first (a
/// gateway's servers, TLS originated to an application).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN protocols a sidecar's mTLS server accepts: [`ALPN`], then the mesh
/// protocols Istio's sidecars offer (a peer's mTLS is told from an
/// application's TLS by them; see [`is_mesh_alpn`]).
const MESH_SERVER_ALPN: [&[u8]; 7] = [
    b"h2",
    b"http/1.1",
    MESH_H2,
    MESH_HTTP11,
    b"istio-http/1.0",
    b"istio-peer-exchange",
    b"istio",
];

/// What a sidecar offers for mesh mTLS carrying HTTP/2 (Istio's `istio-h2`).
pub const MESH_H2: &[u8] = b"istio-h2";

/// What a sidecar offers for mesh mTLS carrying HTTP/1.1 or TCP (Istio's
/// `istio-http/1.1`).
pub const MESH_HTTP11: &[u8] = b"istio-http/1.1";

/// Whether an ALPN protocol marks a mesh peer's mTLS: one of the names
/// Istio's filter chains match it by (`allIstioMtlsALPNs`: `istio`,
/// `istio-peer-exchange`, `istio-http/1.0`, `istio-http/1.1`, `istio-h2`),
/// which sidecars offer and applications do not. Any other name, one that
/// only begins with `istio-` included, is not the mesh's.
pub fn is_mesh_alpn(protocol: &str) -> bool {
    matches!(
        protocol,
        "istio" | "istio-peer-exchange" | "istio-http/1.0" | "istio-http/1.1" | "istio-h2"
    )
}

/// The ring crypto provider (no aws-lc here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate of a PEM text.
pub fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| MaterialError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(MaterialError::Pem {
            what,
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// The certificate revocation lists of a PEM text (`X509 CRL` blocks):
/// DestinationRule and Gateway `caCrl`. Each must be a list rustls can
/// check by (version 2, not a delta list). Of several lists by one issuer
/// only the newest already in force (latest `thisUpdate` not past now) is
/// kept, as Envoy (BoringSSL) checks a certificate against the newest
/// current list of its issuer, where rustls would take the first; an
/// issuer whose every list starts in the future has none, so what it
/// issued is refused (unknown status), as Envoy refuses it then.
pub fn revocation_lists(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, MaterialError> {
    let bad = |reason: String| MaterialError::Pem { what, reason };
    let lists: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
    if lists.is_empty() {
        return Err(bad("no X509 CRL".into()));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut newest: Vec<(Vec<u8>, i64, CertificateRevocationListDer<'static>)> = Vec::new();
    for (i, der) in lists.into_iter().enumerate() {
        if let Err(e) = webpki::OwnedCertRevocationList::from_der(der.as_ref()) {
            return Err(bad(format!(
                "CRL {} is not a list rustls checks by (version 2, no delta list): {e:?}",
                i + 1
            )));
        }
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| bad(format!("CRL {}: {e}", i + 1)))?;
        let issuer = crl.issuer().as_raw().to_vec();
        let updated = crl.last_update().timestamp();
        if updated > now {
            continue;
        }
        match newest.iter_mut().find(|(known, ..)| *known == issuer) {
            Some(kept) if kept.1 < updated => *kept = (issuer, updated, der),
            Some(_) => {}
            None => newest.push((issuer, updated, der)),
        }
    }
    Ok(newest.into_iter().map(|(.., der)| der).collect())
}

/// A CA bundle as Envoy checks revocation through it (BoringSSL with
/// every certificate's revocation checked and partial chains allowed):
/// the trust anchors are its self-signed roots, and its other CA
/// certificates are intermediates a chain may take on its way to one, each
/// then checked against its issuer's list like any other. (As anchors,
/// rustls would check none of them.) Errors when the bundle holds no root.
pub fn bundle_for_revocation(
    pem: &str,
    what: &'static str,
) -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), MaterialError> {
    let (roots, intermediates): (Vec<_>, Vec<_>) =
        certificates(pem, what)?.into_iter().partition(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        });
    if roots.is_empty() {
        return Err(MaterialError::Pem {
            what,
            reason: "with revocation lists the bundle needs its root CA: every CA of a chain up to a self-signed root is checked against its issuer's list".into(),
        });
    }
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert).map_err(|e| MaterialError::Pem {
            what,
            reason: e.to_string(),
        })?;
    }
    Ok((Arc::new(store), intermediates))
}

/// A root store from a PEM text.
pub fn root_store(pem: &str, what: &'static str) -> Result<Arc<RootCertStore>, MaterialError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|e| MaterialError::Pem {
            what,
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A private key from a PEM text.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, MaterialError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| MaterialError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// One generation of the workload's TLS material.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The identity its certificate carries.
    pub identity: SpiffeId,
    /// A sidecar's inbound mTLS under STRICT: a client certificate is
    /// required, chaining to the roots and naming a SPIFFE identity of the
    /// mesh's trust domain or an alias ([`ClientCheck::TrustDomains`]).
    pub server_strict: Arc<ServerConfig>,
    /// The same under PERMISSIVE: a TLS client without a certificate is let
    /// in unauthenticated; one with a certificate is held to STRICT's
    /// checks.
    pub server_permissive: Arc<ServerConfig>,
    /// An ingress gateway's ISTIO_MUTUAL servers: a client certificate
    /// chaining to the roots is required, of any trust domain, as Istio
    /// gives a gateway's ISTIO_MUTUAL server no trust domains to check.
    pub server_gateway: Arc<ServerConfig>,
    /// Originates mesh mTLS over HTTP/1.1: presents the workload
    /// certificate, accepts servers chaining to the roots; who the server
    /// must be is checked once the handshake is done
    /// ([`crate::tls::handshake::connect`]): one of the service's accounts,
    /// else a SPIFFE identity of `peer_trust_domains`.
    pub mesh_h1: Arc<ClientConfig>,
    /// The same, offering HTTP/2.
    pub mesh_h2: Arc<ClientConfig>,
    /// The trust domains of the config in force (the workload's and its
    /// aliases), shared with the inbound verifiers.
    pub peer_trust_domains: PeerTrustDomains,
    /// The chain's certificates, described (for `/certs`).
    pub chain: Vec<CertInfo>,
    /// The URI SANs of the workload certificate (its SPIFFE identity):
    /// `By` in the XFCC elements of connections it terminates.
    pub local_uris: Vec<String>,
    /// The roots, described.
    pub roots: Vec<CertInfo>,
    /// Where it came from (`files` or `ca`).
    pub source: &'static str,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl TlsMaterial {
    /// Builds the material from PEM texts; a sidecar's inbound mTLS
    /// accepts clients of `trust_domains` (read at each handshake).
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
        source: &'static str,
        trust_domains: &PeerTrustDomains,
    ) -> Result<Self, MaterialError> {
        let chain = certificates(chain_pem, "certificate chain")?;
        let key = private_key(key_pem)?;
        let roots = root_store(roots_pem, "root certificate")?;
        let described: Vec<CertInfo> = chain.iter().filter_map(|c| CertInfo::parse(c)).collect();
        let identity = described
            .first()
            .and_then(CertInfo::spiffe_id)
            .ok_or(MaterialError::NoIdentity)?;
        let provider = provider();
        // `optional`: PERMISSIVE; `mesh`: the client's identity must be of
        // the mesh's trust domains (a sidecar's, not a gateway's).
        let server = |optional: bool, mesh: bool| -> Result<Arc<ServerConfig>, MaterialError> {
            let builder =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let mut verifier = builder.build().map_err(|e| MaterialError::Pem {
                what: "root certificate",
                reason: e.to_string(),
            })?;
            if mesh {
                verifier = Arc::new(CheckedClientVerifier::new(
                    verifier,
                    ClientCheck::TrustDomains(trust_domains.clone()),
                ));
            }
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = MESH_SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let server_strict = server(false, true)?;
        let server_permissive = server(true, true)?;
        let server_gateway = server(false, false)?;
        let verifier = Arc::new(MeshServerVerifier::new(
            roots.clone(),
            &provider,
            NameCheck::Chain,
        ));
        let mesh = |alpn: &[u8]| -> Result<Arc<ClientConfig>, MaterialError> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_client_auth_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        let (mesh_h1, mesh_h2) = (mesh(MESH_HTTP11)?, mesh(MESH_H2)?);
        let roots_described = certificates(roots_pem, "root certificate")?
            .iter()
            .filter_map(|c| CertInfo::parse(c))
            .collect();
        Ok(Self {
            identity,
            server_strict,
            server_permissive,
            server_gateway,
            mesh_h1,
            mesh_h2,
            peer_trust_domains: trust_domains.clone(),
            local_uris: described.first().map_or_else(Vec::new, |leaf| {
                leaf.uri_sans().map(str::to_owned).collect()
            }),
            chain: described,
            roots: roots_described,
            source,
            loaded_at: SystemTime::now(),
        })
    }

    /// When the workload certificate expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.chain.first().map(CertInfo::expires_at)
    }

    /// Half-way from when it was loaded to when it expires: when to renew
    /// it (the CA backdates certificates, so their own start is no guide).
    pub fn renew_at(&self) -> Option<SystemTime> {
        let expires = self.expires_at()?;
        Some(self.loaded_at + expires.duration_since(self.loaded_at).unwrap_or_default() / 2)
    }
}
