//! Which of a gateway server's certificates answers a client, when it has
//! several (Gateway `tls.credentialNames`, `tls.tlsCertificates`: an RSA
//! and an ECDSA certificate, say), as Envoy selects among a listener's
//! `tls_certificates`: those whose DNS names hold the client's SNI, else
//! all; among them an ECDSA certificate when the client can verify its
//! signature, else the first it can verify, else the first.

use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracemesh_ca::CertInfo;

use super::verify::dns_name_match;

/// One server's certificates, in the order the resource lists them.
#[derive(Debug)]
pub struct CertificateSelector {
    certificates: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    key: Arc<CertifiedKey>,
    /// The leaf's DNS SANs.
    names: Vec<String>,
    ecdsa: bool,
}

impl CertificateSelector {
    /// A selector over `certificates` (at least one).
    pub fn new(certificates: Vec<Arc<CertifiedKey>>) -> Self {
        let certificates = certificates
            .into_iter()
            .map(|key| {
                let names = (key.cert.first())
                    .and_then(|leaf| CertInfo::parse(leaf))
                    .map(|info| {
                        (info.subject_alt_names.iter())
                            .filter_map(|san| san.strip_prefix("DNS:").map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Candidate {
                    ecdsa: key.key.algorithm() == SignatureAlgorithm::ECDSA,
                    key,
                    names,
                }
            })
            .collect();
        Self { certificates }
    }

    /// The certificate for a client naming `sni` and able to verify
    /// `schemes`.
    fn select(&self, sni: Option<&str>, schemes: &[rustls::SignatureScheme]) -> Option<&Candidate> {
        let named: Vec<&Candidate> = match sni {
            Some(sni) => (self.certificates.iter())
                .filter(|c| c.names.iter().any(|pattern| dns_name_match(sni, pattern)))
                .collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&Candidate> = if named.is_empty() {
            self.certificates.iter().collect()
        } else {
            named
        };
        let verifiable = |c: &&&Candidate| c.key.key.choose_scheme(schemes).is_some();
        (candidates.iter().filter(|c| c.ecdsa).find(verifiable))
            .or_else(|| candidates.iter().find(verifiable))
            .or(candidates.first())
            .copied()
    }
}

impl ResolvesServerCert for CertificateSelector {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(hello.server_name(), hello.signature_schemes())
            .map(|c| c.key.clone())
    }
}
