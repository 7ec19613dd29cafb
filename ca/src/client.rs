//! The agent's side of the CA: a fresh key, a CSR for the workload's
//! identity, and the signed chain back over HTTPS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::authority::Issued;
use crate::server::CA_SERVER_NAME;
use crate::spiffe::SpiffeId;

/// Why a certificate could not be had from the CA.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The CA's root certificate is unusable.
    #[error("ca root certificate: {0}")]
    Root(String),
    /// Key or CSR generation failed.
    #[error("key or csr: {0}")]
    Key(#[from] rcgen::Error),
    /// The CA could not be reached or the exchange failed.
    #[error("ca {address}: {reason}")]
    Transport {
        /// The CA.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The CA refused.
    #[error("ca refused ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
}

/// A CA endpoint and how to talk to it.
#[derive(Clone)]
pub struct CaClient {
    address: String,
    token: String,
    tls: Arc<ClientConfig>,
}

impl CaClient {
    /// A client of the CA at `address` (`host:port`), trusting `root_pem`.
    pub fn new(address: &str, token: &str, root_pem: &str) -> Result<Self, RequestError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            let cert = cert.map_err(|e| RequestError::Root(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| RequestError::Root(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(RequestError::Root("no certificate in the file".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RequestError::Root(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            address: address
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned(),
            token: token.to_owned(),
            tls: Arc::new(tls),
        })
    }

    /// A new key and a certificate for `id`, valid for `lifetime`. Returns
    /// the key (PEM) and the issued chain.
    pub async fn request(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(String, Issued), RequestError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let body =
            serde_json::json!({ "csr": csr, "lifetimeSeconds": lifetime.as_secs() }).to_string();
        let issued = self.post(body).await?;
        Ok((key.serialize_pem(), issued))
    }

    async fn post(&self, body: String) -> Result<Issued, RequestError> {
        let transport = |reason: String| RequestError::Transport {
            address: self.address.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(e.to_string()))?;
        let name = ServerName::try_from(CA_SERVER_NAME).map_err(|e| transport(e.to_string()))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("tls: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport(e.to_string()))?;
        tokio::spawn(conn);
        let request = Request::post("/v1/certificates")
            .header(http::header::HOST, CA_SERVER_NAME)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if status != 200 {
            return Err(RequestError::Refused {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| transport(format!("bad answer: {e}")))
    }
}
