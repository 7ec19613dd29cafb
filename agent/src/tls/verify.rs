//! Certificate checks rustls does not do by itself: peers in the mesh are
//! named by SPIFFE URI SANs, not DNS names (a sidecar's inbound mTLS takes
//! clients of the mesh's trust domains only), a gateway's MUTUAL server
//! may pin its clients' names and keys, and TLS origination may pin
//! `subjectAltNames` or skip verification on request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
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

/// What a client certificate must show beyond a chain to a trusted root.
#[derive(Debug)]
pub enum ClientCheck {
    /// A sidecar's inbound mTLS: a SPIFFE identity of the mesh's trust
    /// domain or an alias, as Istio's inbound
    /// `match_typed_subject_alt_names` (`spiffe://<td>/` per trust domain)
    /// requires. A certificate without one — a foreign trust domain, no
    /// SAN, only DNS SANs, a URI SAN not of the form
    /// `spiffe://<td>/ns/<ns>/sa/<sa>` — fails the handshake as
    /// `wrong_san`: the identity checked is the one policies and headers
    /// are given.
    TrustDomains(PeerTrustDomains),
    /// A gateway server's `subjectAltNames`, `verifyCertificateSpki` and
    /// `verifyCertificateHash` ([`ClientPins`]).
    Pins(ClientPins),
}

/// Verifies a client certificate: its chain by `inner` (rustls' WebPKI
/// verifier on the server's roots, and revocation lists where given),
/// then what `check` asks.
#[derive(Debug)]
pub struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    check: ClientCheck,
    intermediates: Vec<CertificateDer<'static>>,
}

impl CheckedClientVerifier {
    /// `inner` checks the chain, `check` the rest.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, check: ClientCheck) -> Self {
        Self {
            inner,
            check,
            intermediates: Vec::new(),
        }
    }

    /// The same, offering `inner` these CA certificates besides those the
    /// client sends (a CA bundle's intermediates under revocation lists,
    /// [`crate::tls::material::bundle_for_revocation`]).
    pub fn with_intermediates(mut self, intermediates: Vec<CertificateDer<'static>>) -> Self {
        self.intermediates = intermediates;
        self
    }
}

/// The peer's intermediates followed by `extra`.
fn with_extra<'a>(
    sent: &[CertificateDer<'a>],
    extra: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'a>> {
    sent.iter().cloned().chain(extra.iter().cloned()).collect()
}

/// What a gateway's MUTUAL (or OPTIONAL_MUTUAL) server pins on a client
/// certificate, as Istio renders a Gateway server's `tls` into Envoy's
/// `CertificateValidationContext` (`match_subject_alt_names` exact,
/// `verify_certificate_spki`, `verify_certificate_hash`): a certificate
/// passes when, with names given, one of its SANs is one of them (DNS by
/// [`dns_name_match`], URI, email and IP byte for byte), and, with hashes
/// of either kind given, the SHA-256 of its SubjectPublicKeyInfo or of
/// its whole DER is one of them. A server with pins requires a client
/// certificate, under OPTIONAL_MUTUAL too, as Envoy does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientPins {
    /// `subjectAltNames`.
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateSpki`, decoded: SHA-256 digests (32 bytes) of the
    /// DER SubjectPublicKeyInfo.
    pub spki_sha256: Vec<[u8; 32]>,
    /// `verifyCertificateHash`, decoded: SHA-256 digests of the DER
    /// certificate.
    pub cert_sha256: Vec<[u8; 32]>,
}

impl ClientPins {
    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.subject_alt_names.is_empty()
            && self.spki_sha256.is_empty()
            && self.cert_sha256.is_empty()
    }

    /// Whether the DER certificate `der` passes, or why not: a SAN none
    /// of the names (`NotValidForName`, Envoy's `fail_verify_san`), a
    /// hash none of the pins (`ApplicationVerificationFailure`, Envoy's
    /// `fail_verify_cert_hash`).
    pub fn admit(&self, der: &[u8]) -> Result<(), CertificateError> {
        if !self.subject_alt_names.is_empty() && !has_any_san(der, &self.subject_alt_names) {
            return Err(CertificateError::NotValidForName);
        }
        if self.spki_sha256.is_empty() && self.cert_sha256.is_empty() {
            return Ok(());
        }
        let sha256 = |bytes: &[u8]| -> [u8; 32] {
            let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
            let mut out = [0; 32];
            out.copy_from_slice(digest.as_ref());
            out
        };
        let by_cert = !self.cert_sha256.is_empty() && self.cert_sha256.contains(&sha256(der));
        let by_spki = !self.spki_sha256.is_empty()
            && x509_parser::parse_x509_certificate(der)
                .is_ok_and(|(_, cert)| self.spki_sha256.contains(&sha256(cert.public_key().raw)));
        if by_cert || by_spki {
            Ok(())
        } else {
            Err(CertificateError::ApplicationVerificationFailure)
        }
    }
}

impl ClientCertVerifier for CheckedClientVerifier {
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
        let verified = if self.intermediates.is_empty() {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)?
        } else {
            let all = with_extra(intermediates, &self.intermediates);
            self.inner.verify_client_cert(end_entity, &all, now)?
        };
        let admitted = match &self.check {
            ClientCheck::TrustDomains(trust_domains) => tracemesh_ca::spiffe_id_of(end_entity)
                .is_some_and(|id| trust_domains.load().contains(&id.trust_domain))
                .then_some(())
                .ok_or(CertificateError::NotValidForName),
            ClientCheck::Pins(pins) => pins.admit(end_entity),
        };
        match admitted {
            Ok(()) => Ok(verified),
            Err(why) => Err(Error::InvalidCertificate(why)),
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
    /// One of these SANs (`URI` or `DNS` values), instead of the SNI name.
    AnyOf(Vec<String>),
    /// The SNI name (plain TLS origination).
    ServerName,
    /// The SNI name and one of these SANs (origination without `sni` to a
    /// service with accounts: Envoy checks `auto_san_validation`'s name
    /// and the validation context's `match_subject_alt_names` both).
    ServerNameAnd(Vec<String>),
    /// No name: the chain alone (origination with an `sni` and no
    /// `subjectAltNames`, where Envoy validates no name).
    Chain,
    /// Nothing: `insecureSkipVerify` (and no chain check either).
    Skip,
}

/// Verifies a server certificate's chain against `roots` (and, with
/// revocation lists, that no CA of it revoked it), then its name by
/// `check`.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    check: NameCheck,
    /// With revocation lists: rustls' verifier on the bundle's roots, and
    /// the bundle's other CAs as intermediates.
    revocation: Option<(Arc<WebPkiServerVerifier>, Vec<CertificateDer<'static>>)>,
}

impl MeshServerVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>, provider: &CryptoProvider, check: NameCheck) -> Self {
        Self {
            roots,
            algorithms: provider.signature_verification_algorithms,
            check,
            revocation: None,
        }
    }

    /// The same, refusing what `crls` revoke (DestinationRule
    /// `tls.caCrl`) as Envoy's validation context `crl` does: chains run
    /// to the bundle's self-signed `roots`, its other CAs
    /// (`intermediates`) taken where a chain needs them, every CA below a
    /// root needs a list of its own, and a list past its nextUpdate refuses
    /// what it covers ([`crate::tls::material::bundle_for_revocation`]).
    pub fn with_crls(
        mut self,
        provider: Arc<CryptoProvider>,
        (roots, intermediates): (Arc<RootCertStore>, Vec<CertificateDer<'static>>),
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .with_crls(crls)
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        self.revocation = Some((verifier, intermediates));
        Ok(self)
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
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if matches!(self.check, NameCheck::Skip) {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        match &self.revocation {
            // rustls' verifier checks the chain and its revocation, then
            // the SNI name: a name error is a chain that passed, whose name
            // `check` decides below.
            Some((webpki, extra)) => {
                let intermediates = with_extra(intermediates, extra);
                match webpki.verify_server_cert(end_entity, &intermediates, server_name, ocsp, now)
                {
                    Ok(_)
                    | Err(Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => {}
                    Err(err) => return Err(err),
                }
            }
            None => rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.algorithms.all,
            )?,
        }
        let named = match &self.check {
            NameCheck::AnyOf(names) => has_any_san(end_entity, names),
            NameCheck::ServerName => rustls::client::verify_server_name(&cert, server_name).is_ok(),
            NameCheck::ServerNameAnd(names) => {
                rustls::client::verify_server_name(&cert, server_name).is_ok()
                    && has_any_san(end_entity, names)
            }
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
