//! Certificate checks rustls does not do by itself: peers in the mesh are
//! named by SPIFFE URI SANs, not DNS names (a sidecar's inbound mTLS takes
//! clients of the mesh's trust domains only), and TLS origination may pin
//! `subjectAltNames` or skip verification on request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use tracemesh_ca::CertInfo;

use crate::model::mesh::TrustDomainBundle;

/// The trust domains of the config in force, shared by the workload's
/// inbound mTLS verifiers (every generation of its certificate) and
/// replaced whole when a config is put in force: a handshake reads it once,
/// without a lock.
pub type PeerTrustDomains = Arc<ArcSwap<TrustDomainBundle>>;

/// Verifies a client certificate of a sidecar's inbound mTLS: its chain by
/// `inner` (rustls' WebPKI verifier on the workload's roots), then that its
/// SPIFFE identity is of the mesh's trust domain or an alias, as Istio's
/// inbound `match_typed_subject_alt_names` (`spiffe://<td>/` per trust
/// domain) requires. A certificate without one — a foreign trust domain,
/// no SAN, only DNS SANs, a URI SAN not of the form
/// `spiffe://<td>/ns/<ns>/sa/<sa>` — fails the handshake as `wrong_san`:
/// the identity checked is the one policies and headers are given.
#[derive(Debug)]
pub struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domains: PeerTrustDomains,
}

impl MeshClientVerifier {
    /// `inner` checks the chain, `trust_domains` the identity.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, trust_domains: PeerTrustDomains) -> Self {
        Self {
            inner,
            trust_domains,
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let of_the_mesh = tracemesh_ca::spiffe_id_of(end_entity)
            .is_some_and(|id| self.trust_domains.load().contains(&id.trust_domain));
        if of_the_mesh {
            Ok(verified)
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the server's certificate must name.
#[derive(Debug, Clone)]
pub enum NameCheck {
    /// A SPIFFE identity in this trust domain (mesh mTLS).
    TrustDomain(String),
    /// One of these SANs (`URI` or `DNS` values), instead of the SNI name.
    AnyOf(Vec<String>),
    /// The SNI name (plain TLS origination).
    ServerName,
    /// No name: the chain alone (origination with an `sni` and no
    /// `subjectAltNames`, where Envoy validates no name).
    Chain,
    /// Nothing: `insecureSkipVerify` (and no chain check either).
    Skip,
}

/// Verifies a server certificate's chain against `roots`, then its name by
/// `check`.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    check: NameCheck,
}

impl MeshServerVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>, provider: &CryptoProvider, check: NameCheck) -> Self {
        Self {
            roots,
            algorithms: provider.signature_verification_algorithms,
            check,
        }
    }
}

/// Whether a certificate carries one of `names` as a SAN, as Envoy's
/// exact SAN matchers read them (`StringSanMatcher`): a DNS SAN by
/// [`dns_name_match`] (so `*.example.com` holds `api.example.com`), any
/// other (URI, IP) byte for byte.
pub fn has_any_san(der: &[u8], names: &[String]) -> bool {
    CertInfo::parse(der).is_some_and(|info| {
        info.subject_alt_names
            .iter()
            .any(|san| match san.split_once(':') {
                Some(("DNS", pattern)) => names.iter().any(|n| dns_name_match(n, pattern)),
                Some((_, value)) => names.iter().any(|n| n == value),
                None => names.iter().any(|n| n == san),
            })
    })
}

/// Whether the DNS name `name` matches a certificate's DNS SAN `pattern`,
/// as Envoy's `Utility::dnsNameMatch`: equal but for ASCII case, or a
/// pattern whose first label alone holds one `*` (and is no A-label,
/// `xn--`) matching `name`'s first label, the rest equal. Both need two
/// labels or more to match by wildcard.
pub fn dns_name_match(name: &str, pattern: &str) -> bool {
    if name.eq_ignore_ascii_case(pattern) {
        return true;
    }
    let (Some((label, rest)), Some((wild, pattern_rest))) =
        (name.split_once('.'), pattern.split_once('.'))
    else {
        return false;
    };
    let wild = wild.to_ascii_lowercase();
    if !wild.contains('*')
        || pattern_rest.contains('*')
        || wild.starts_with("xn--")
        || !rest.eq_ignore_ascii_case(pattern_rest)
    {
        return false;
    }
    let label = label.to_ascii_lowercase();
    // Envoy's `labelWildcardMatch`: `*` alone, or one `*` with what is
    // around it at the label's two ends.
    match wild.split_once('*') {
        _ if wild == "*" => true,
        Some((head, tail)) if !tail.contains('*') => {
            wild.len() <= label.len() + 1 && label.starts_with(head) && label.ends_with(tail)
        }
        _ => false,
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if matches!(self.check, NameCheck::Skip) {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let named = match &self.check {
            NameCheck::TrustDomain(td) => {
                tracemesh_ca::spiffe_id_of(end_entity).is_some_and(|id| &id.trust_domain == td)
            }
            NameCheck::AnyOf(names) => has_any_san(end_entity, names),
            NameCheck::ServerName => rustls::client::verify_server_name(&cert, server_name).is_ok(),
            NameCheck::Chain | NameCheck::Skip => true,
        };
        if named {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::dns_name_match;

    /// Names against certificate patterns, as Envoy's `dnsNameMatch` and
    /// `labelWildcardMatch` decide them.
    #[test]
    fn dns_names_match_as_envoy_matches_them() {
        for (name, pattern) in [
            ("lyft.com", "lyft.com"),
            ("a.lyft.com", "*.lyft.com"),
            ("a.LYFT.com", "*.lyft.COM"),
            ("lyft.com", "LYFT.com"),
            ("a.lyft.com", "a*.lyft.com"),
            ("xa.lyft.com", "x*.lyft.com"),
            ("xab.lyft.com", "x*b.lyft.com"),
            ("a.lyft.com", "*a.lyft.com"),
            // (the label's wildcard may stand for nothing)
            ("alyft.com", "*lyft.com"),
            ("lyft.com", "*lyft.com"),
        ] {
            assert!(dns_name_match(name, pattern), "{name} {pattern}");
        }
        for (name, pattern) in [
            ("a.b.lyft.com", "*.lyft.com"),
            ("foo.test.com", "*.lyft.com"),
            ("lyft.com", "*.lyft.com"),
            ("alyft.com", "*.lyft.com"),
            ("", "*lyft.com"),
            ("lyft.com", ""),
            ("test.lyft.com", "*.*.com"),
            ("a.b.lyft.com", "b*.lyft.com"),
            ("xn--a.lyft.com", "xn--*.lyft.com"),
            ("a.lyft.com", "a**.lyft.com"),
            ("ab.lyft.com", "a*c.lyft.com"),
        ] {
            assert!(!dns_name_match(name, pattern), "{name} {pattern}");
        }
    }
}
