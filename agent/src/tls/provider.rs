//! Keeps the workload's TLS material current: certificate files reloaded
//! when they change, or CA certificates renewed at half-life. A new
//! generation is swapped in for new connections; open ones are untouched,
//! so rotation drops nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus::{IntCounterVec, IntGauge};
use tracemesh_ca::{CaClient, SpiffeId};

use super::material::{MaterialError, TlsMaterial};
use super::verify::PeerTrustDomains;
use crate::model::bootstrap::{BootstrapToken, CertificateFiles, CertificateSource};

/// Why the identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The material is unusable.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The certificate files' material is unusable (a chain or key that is
    /// no PEM, a key that does not match the certificate): the files named.
    #[error("certificate files ({files}): {source}")]
    Files {
        /// `certChain <path>, privateKey <path>, rootCert <path>`.
        files: String,
        /// What is wrong with them.
        source: Box<MaterialError>,
    },
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Ca(#[from] tracemesh_ca::RequestError),
    /// The configured identity is malformed.
    #[error(transparent)]
    Identity(#[from] tracemesh_ca::spiffe::BadSpiffeId),
}

/// Where the material comes from.
pub enum Source {
    /// Certificate files, polled for changes.
    Files(CertificateFiles),
    /// The CA.
    Ca {
        /// Its client.
        client: CaClient,
        /// Roots to verify peers with (the CA's root file).
        root_pem: String,
        /// Lifetime asked for.
        lifetime: Duration,
    },
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Source {
    /// Prepares the source the Agent's `identity` names: reads the CA's
    /// bootstrap token and root now, so a missing file stops the start.
    pub fn new(source: &CertificateSource) -> Result<Self, IdentityError> {
        let ca = match source {
            CertificateSource::Files(files) => return Ok(Self::Files(files.clone())),
            CertificateSource::Ca(ca) => ca,
        };
        let token = match &ca.token {
            BootstrapToken::Inline(token) => token.clone(),
            BootstrapToken::File(file) => read(file)?.trim().to_owned(),
        };
        let root_pem = read(&ca.root_cert)?;
        Ok(Self::Ca {
            client: CaClient::new(&ca.address, &token, &root_pem)?,
            root_pem,
            lifetime: ca.lifetime,
        })
    }

    /// Loads (files) or requests (CA) one generation of material, its
    /// inbound mTLS accepting clients of `trust_domains`.
    pub async fn fetch(
        &self,
        id: &SpiffeId,
        trust_domains: &PeerTrustDomains,
    ) -> Result<TlsMaterial, IdentityError> {
        match self {
            Self::Files(files) => {
                let chain = read(&files.cert_chain)?;
                let key = read(&files.private_key)?;
                let roots = read(&files.root_cert)?;
                let material = TlsMaterial::from_pem(&chain, &key, &roots, "files", trust_domains);
                material.map_err(|source| IdentityError::Files {
                    files: format!(
                        "certChain {}, privateKey {}, rootCert {}",
                        files.cert_chain.display(),
                        files.private_key.display(),
                        files.root_cert.display()
                    ),
                    source: Box::new(source),
                })
            }
            Self::Ca {
                client,
                root_pem,
                lifetime,
            } => {
                let (key, issued) = client.request(id, *lifetime).await?;
                Ok(TlsMaterial::from_pem(
                    &issued.cert_chain,
                    &key,
                    root_pem,
                    "ca",
                    trust_domains,
                )?)
            }
        }
    }

    /// What the source's files look like now: look before [`fetch`]ing
    /// and hand the look to [`keep_current`], so a file changed while it
    /// was read is read again.
    ///
    /// [`fetch`]: Source::fetch
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(files_fingerprint(&self.watched_files()))
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        match self {
            Self::Files(f) => vec![
                f.cert_chain.clone(),
                f.private_key.clone(),
                f.root_cert.clone(),
            ],
            Self::Ca { .. } => Vec::new(),
        }
    }
}

/// The modification times and sizes of a [`Source`]'s files (none for a
/// CA), from [`Source::fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

/// Keeps `slot` current until the future is dropped: reloads files when
/// they change from `loaded` (the fingerprint taken before the material in
/// `slot` was read), renews CA certificates at half-life, retries failures
/// with backoff (keeping the current material meanwhile). Each generation's
/// inbound mTLS accepts clients of `trust_domains`.
pub async fn keep_current(
    source: Source,
    loaded: Fingerprint,
    (id, trust_domains): (SpiffeId, PeerTrustDomains),
    slot: Arc<ArcSwapOption<TlsMaterial>>,
    (rotations, expiry): (IntCounterVec, IntGauge),
) {
    let mut last_seen = loaded;
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match (&source, slot.load().as_ref().and_then(|m| m.renew_at())) {
            (Source::Ca { .. }, Some(renew_at)) => renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
            _ => Duration::from_secs(1),
        };
        tokio::time::sleep(wait).await;
        let seen = source.fingerprint();
        if matches!(source, Source::Files(_)) && seen == last_seen {
            continue;
        }
        match source.fetch(&id, &trust_domains).await {
            Ok(material) => {
                last_seen = seen;
                tracing::info!(identity = %material.identity, source = material.source, "workload certificate rotated");
                record_expiry(&material, &expiry);
                slot.store(Some(Arc::new(material)));
                rotations.with_label_values(&["ok"]).inc();
                backoff = Duration::from_secs(1);
            }
            Err(error) => {
                tracing::warn!(%error, "workload certificate rotation failed; keeping the current one");
                rotations.with_label_values(&["failed"]).inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Publishes when the certificate expires (alerting on it beats an outage).
pub fn record_expiry(material: &TlsMaterial, gauge: &IntGauge) {
    let seconds = material
        .expires_at()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    gauge.set(seconds);
}

/// Modification times and sizes of the watched files, to notice changes.
fn files_fingerprint(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unusable certificate files are named in the error, as a missing one
    /// already was.
    #[tokio::test]
    async fn unusable_certificate_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "not a certificate").unwrap();
            path
        };
        let files = CertificateFiles {
            cert_chain: file("chain.pem"),
            private_key: file("key.pem"),
            root_cert: file("root.pem"),
        };
        let chain = files.cert_chain.display().to_string();
        let source = Source::Files(files);
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/app").unwrap();
        let error = match source.fetch(&id, &PeerTrustDomains::default()).await {
            Ok(_) => panic!("garbage was taken for a certificate"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(&chain), "{error}");
        assert!(error.contains("certificate chain"), "{error}");
    }
}
