//! SPIFFE workload identities in Istio's form,
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and what a
//! certificate says about itself.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// Trust domain (`cluster.local` by default in Istio).
    pub trust_domain: String,
    /// Kubernetes-style namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// Why an identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a SPIFFE id of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
)]
pub struct BadSpiffeId(pub String);

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl SpiffeId {
    /// Builds an identity, checking each part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, BadSpiffeId> {
        let id = Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        if [trust_domain, namespace, service_account]
            .iter()
            .all(|s| valid_segment(s))
        {
            Ok(id)
        } else {
            Err(BadSpiffeId(id.to_string()))
        }
    }

    /// Parses `spiffe://td/ns/x/sa/y`.
    pub fn parse(uri: &str) -> Result<Self, BadSpiffeId> {
        let bad = || BadSpiffeId(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// Istio's principal form, without the scheme: `td/ns/x/sa/y`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// What a certificate says about itself, for `/certs` and logs (never the key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names (`URI:…`, `DNS:…`, `IP:…`, `email:…`).
    pub subject_alt_names: Vec<String>,
    /// Serial number, hex.
    pub serial_number: String,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: u64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: u64,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                    GeneralName::DNSName(dns) => sans.push(format!("DNS:{dns}")),
                    GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", ip_text(ip))),
                    GeneralName::RFC822Name(email) => sans.push(format!("email:{email}")),
                    _ => {}
                }
            }
        }
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        Some(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_alt_names: sans,
            serial_number: cert.raw_serial_as_string().replace(':', ""),
            not_before: cert.validity().not_before.timestamp().max(0) as u64,
            not_after: cert.validity().not_after.timestamp().max(0) as u64,
            is_ca,
        })
    }

    /// The URI SANs, in the certificate's order, without their `URI:`.
    pub fn uri_sans(&self) -> impl Iterator<Item = &str> {
        self.subject_alt_names
            .iter()
            .filter_map(|s| s.strip_prefix("URI:"))
    }

    /// The SPIFFE identity among the URI SANs, if any.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.uri_sans().find_map(|uri| SpiffeId::parse(uri).ok())
    }

    /// When the certificate expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.not_after)
    }

    /// When it became valid.
    pub fn valid_from(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.not_before)
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => <[u8; 16]>::try_from(bytes)
            .map(|b| std::net::Ipv6Addr::from(b).to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The SPIFFE identity of a DER certificate (its URI SAN).
pub fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    CertInfo::parse(der)?.spiffe_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_istio_identities() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        for bad in [
            "http://x/ns/a/sa/b",
            "spiffe://td/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/b/c",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
