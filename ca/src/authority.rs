//! The certificate authority: a signing certificate and key kept in a
//! directory (made by `ca init`, or an operator's own root or intermediate
//! plugged in, as Istio's plug-in CA takes `cacerts`), issuing short-lived
//! SPIFFE workload certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::files::{read_text, write_private, write_public};
use crate::spiffe::{CertInfo, SpiffeId};

/// Files of a CA directory, named as Istio's plug-in CA names them.
pub mod names {
    /// The signing certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// Its private key (mode 0600).
    pub const CA_KEY: &str = "ca-key.pem";
    /// The signing certificate's chain up to the root (may be empty for a root).
    pub const CERT_CHAIN: &str = "cert-chain.pem";
    /// The root certificate peers trust.
    pub const ROOT_CERT: &str = "root-cert.pem";
    /// The trust domain, one line.
    pub const TRUST_DOMAIN: &str = "trust-domain";
}

/// Why the CA could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM file holds no certificate.
    #[error("{0}: no PEM certificate")]
    NoCertificate(PathBuf),
    /// The CSR asks for an identity the caller may not have.
    #[error("the request is for {requested}, not {allowed}")]
    WrongIdentity {
        /// What the CSR asked for.
        requested: String,
        /// What the token allows.
        allowed: String,
    },
    /// The identity is malformed.
    #[error(transparent)]
    Identity(#[from] crate::spiffe::BadSpiffeId),
    /// The operator's signing certificate is not a CA certificate.
    #[error("{0}: not a CA certificate (basicConstraints CA:TRUE is required)")]
    NotCa(PathBuf),
}

/// A certificate chain and the root it leads to, as PEM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// The leaf, then intermediates (not the root).
    pub cert_chain: String,
    /// The root certificate.
    pub root_cert: String,
}

/// Where an operator's CA material comes from for `init`.
#[derive(Debug, Clone)]
pub struct PlugIn {
    /// Signing (root or intermediate) certificate.
    pub signing_cert: PathBuf,
    /// Its key.
    pub signing_key: PathBuf,
    /// Chain from the signing certificate up to the root, if intermediate.
    pub cert_chain: Option<PathBuf>,
    /// The root (defaults to the signing certificate, for a root).
    pub root_cert: Option<PathBuf>,
}

/// A loaded CA.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    chain_pem: String,
    root_pem: String,
}

/// Default validity of workload certificates (Istio's).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Allowance for clocks that run behind.
const BACKDATE: Duration = Duration::from_secs(300);

fn serial() -> SerialNumber {
    let mut bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from(bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn dn(organization: &str, common_name: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(cn) = common_name {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

impl Authority {
    /// Creates a CA in `dir`: a new self-signed root, or the operator's
    /// material copied in. Refuses to overwrite an existing CA.
    pub fn init(dir: &Path, trust_domain: &str, plug_in: Option<&PlugIn>) -> Result<Self, CaError> {
        SpiffeId::new(trust_domain, "ns", "sa")?;
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let exists = dir.join(names::CA_KEY);
        if std::fs::metadata(&exists).is_ok() {
            let source = std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a CA already exists here",
            );
            return Err(CaError::Io {
                path: exists,
                source,
            });
        }
        match plug_in {
            Some(plug) => Self::copy_plug_in(dir, plug)?,
            None => Self::new_root(dir, trust_domain)?,
        }
        write_public(&dir.join(names::TRUST_DOMAIN), &format!("{trust_domain}\n"))?;
        Self::load(dir)
    }

    fn new_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(
            "tracemesh",
            Some(&format!("tracemesh root CA ({trust_domain})")),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial());
        validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        write_private(&dir.join(names::CA_KEY), &key.serialize_pem())?;
        write_public(&dir.join(names::CA_CERT), &cert.pem())?;
        write_public(&dir.join(names::ROOT_CERT), &cert.pem())?;
        write_public(&dir.join(names::CERT_CHAIN), "")
    }

    fn copy_plug_in(dir: &Path, plug: &PlugIn) -> Result<(), CaError> {
        let cert = read_text(&plug.signing_cert)?;
        let der = CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|_| CaError::NoCertificate(plug.signing_cert.clone()))?;
        if !CertInfo::parse(&der).is_some_and(|i| i.is_ca) {
            return Err(CaError::NotCa(plug.signing_cert.clone()));
        }
        let key = read_text(&plug.signing_key)?;
        KeyPair::from_pem(&key)?;
        let chain = plug
            .cert_chain
            .as_deref()
            .map(read_text)
            .transpose()?
            .unwrap_or_default();
        let root = match &plug.root_cert {
            Some(path) => read_text(path)?,
            None => cert.clone(),
        };
        write_private(&dir.join(names::CA_KEY), &key)?;
        write_public(&dir.join(names::CA_CERT), &cert)?;
        write_public(&dir.join(names::CERT_CHAIN), &chain)?;
        write_public(&dir.join(names::ROOT_CERT), &root)
    }

    /// Loads the CA in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_pem = read_text(&dir.join(names::CA_CERT))?;
        let key = KeyPair::from_pem(&read_text(&dir.join(names::CA_KEY))?)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let chain = read_text(&dir.join(names::CERT_CHAIN))?;
        let root_pem = read_text(&dir.join(names::ROOT_CERT))?;
        let trust_domain = read_text(&dir.join(names::TRUST_DOMAIN))?.trim().to_owned();
        // Workloads get their leaf, then the signing certificate when it is
        // not the root, then the rest of the chain.
        let signing_is_root = cert_pem.trim() == root_pem.trim();
        let mut chain_pem = String::new();
        if !signing_is_root {
            chain_pem.push_str(&cert_pem);
            chain_pem.push_str(&chain);
        }
        Ok(Self {
            trust_domain,
            issuer,
            chain_pem,
            root_pem,
        })
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    fn leaf_params(
        &self,
        sans: Vec<SanType>,
        lifetime: Duration,
        server_only: bool,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("tracemesh", None);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server_only {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        validity(&mut params, lifetime);
        params
    }

    /// Issues a workload certificate for `id` and `public_key`.
    pub fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let uri = SanType::URI(id.to_string().try_into()?);
        let cert = self
            .leaf_params(vec![uri], lifetime, false)
            .signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_chain: format!("{}{}", cert.pem(), self.chain_pem),
            root_cert: self.root_pem.clone(),
        })
    }

    /// Issues a certificate and a new key for `id` (for file-based setups).
    /// Returns the key PEM and the chain.
    pub fn issue_with_key(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(String, Issued), CaError> {
        let key = KeyPair::generate()?;
        let issued = self.issue(id, &key, lifetime)?;
        Ok((key.serialize_pem(), issued))
    }

    /// Signs a CSR for `allowed`: the CSR must ask for exactly that identity
    /// (other requested extensions are ignored, never copied).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        allowed: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .collect();
        if requested != [allowed.to_string()] {
            return Err(CaError::WrongIdentity {
                requested: requested.join(","),
                allowed: allowed.to_string(),
            });
        }
        self.issue(allowed, &csr.public_key, lifetime)
    }

    /// A server certificate for the CA's own HTTPS listener.
    pub fn issue_server(
        &self,
        dns: &[&str],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, Issued), CaError> {
        let key = KeyPair::generate()?;
        let mut sans = Vec::new();
        for name in dns {
            sans.push(SanType::DnsName((*name).try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = self
            .leaf_params(sans, Duration::from_secs(365 * 24 * 3600), true)
            .signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_chain: format!("{}{}", cert.pem(), self.chain_pem),
            root_cert: self.root_pem.clone(),
        };
        Ok((key.serialize_pem(), issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_root_issues_spiffe_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::init(dir.path(), "cluster.local", None).unwrap();
        let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
        let (_key, issued) = ca.issue_with_key(&id, Duration::from_secs(3600)).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_chain.as_bytes()).unwrap();
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.spiffe_id(), Some(id));
        assert!(!info.is_ca);
        assert!(info.not_after - info.not_before <= 3600 + 300 + 1);
        let key_mode = std::fs::metadata(dir.path().join(names::CA_KEY)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
        assert!(
            Authority::init(dir.path(), "cluster.local", None).is_err(),
            "never overwrites a CA"
        );
    }

    #[test]
    fn a_csr_for_another_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::init(dir.path(), "cluster.local", None).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/default/sa/admin"
                .try_into()
                .unwrap(),
        )];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let allowed = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &allowed, DEFAULT_LIFETIME),
            Err(CaError::WrongIdentity { .. })
        ));
        let admin = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/admin").unwrap();
        assert!(ca.sign_csr(&csr, &admin, DEFAULT_LIFETIME).is_ok());
    }

    #[test]
    fn an_operator_intermediate_is_plugged_in() {
        let root_dir = tempfile::tempdir().unwrap();
        let root = Authority::init(root_dir.path(), "cluster.local", None).unwrap();
        // The operator's intermediate, signed by the root.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let inter = params.signed_by(&key, &root.issuer).unwrap();
        let op = tempfile::tempdir().unwrap();
        std::fs::write(op.path().join("c.pem"), inter.pem()).unwrap();
        std::fs::write(op.path().join("k.pem"), key.serialize_pem()).unwrap();
        std::fs::write(op.path().join("r.pem"), root.root_pem()).unwrap();
        let plug = PlugIn {
            signing_cert: op.path().join("c.pem"),
            signing_key: op.path().join("k.pem"),
            cert_chain: None,
            root_cert: Some(op.path().join("r.pem")),
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::init(&dir.path().join("ca"), "cluster.local", Some(&plug)).unwrap();
        let id = SpiffeId::new("cluster.local", "ns1", "sa1").unwrap();
        let (_, issued) = ca.issue_with_key(&id, DEFAULT_LIFETIME).unwrap();
        assert_eq!(
            issued.cert_chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf + intermediate"
        );
        assert_eq!(issued.root_cert, root.root_pem());
    }
}
