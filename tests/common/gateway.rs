//! Runs the real `tracemesh gateway` binary on a config written to a temp
//! dir, waits for its "gateway ready" line and reads the bound address of
//! each Gateway port from it; and a TLS client for its HTTPS ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use super::agent::{binary, write_config};
use super::process::{Process, field};

/// A running gateway process; killed when dropped. Its admin address, admin
/// API and output are read through [`Process`].
pub struct Gateway {
    process: Process,
    /// `(Gateway port, bound address)`.
    pub ports: Vec<(u16, SocketAddr)>,
    /// The config file.
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

/// An IngressGateway document (`istio-ingressgateway` in `istio-system`,
/// labels `istio: ingressgateway`, `app: istio-ingressgateway`) with each
/// of `ports` on 127.0.0.1:0; `extra` is appended under `spec:`.
pub fn bootstrap(ports: &[u16], otlp: &str, extra: &str) -> String {
    let listeners: Vec<String> = ports
        .iter()
        .map(|p| format!("{{port: {p}, listen: \"127.0.0.1:0\"}}"))
        .collect();
    format!(
        r#"apiVersion: tracemesh.io/v1
kind: IngressGateway
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway, app: istio-ingressgateway}}
  listeners: [{listeners}]
  admin: {{listen: "127.0.0.1:0"}}
  concurrency: 2
  telemetry:
    otlp: {{endpoint: "{otlp}"}}
    sampling: 1.0
    flushInterval: 100ms
{extra}
"#,
        listeners = listeners.join(", ")
    )
}

impl Gateway {
    /// Starts a gateway on `yaml` and waits until it is ready.
    pub fn start(yaml: &str) -> Gateway {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Starts a gateway; `Err` carries its stderr when it exits instead.
    pub fn try_start(yaml: &str) -> Result<Gateway, String> {
        let (dir, path) = write_config(yaml);
        let mut command = Command::new(binary());
        command.args(["gateway", "--config"]).arg(&path);
        let (process, line) = Process::start_until_ready(command)?;
        let ports = field(&line, "ports")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (port, addr) = s.split_once('=').expect("port=address");
                (port.parse().unwrap(), addr.parse().unwrap())
            })
            .collect();
        Ok(Gateway {
            process,
            ports,
            config: path,
            _dir: dir,
        })
    }

    /// Where Gateway port `number` listens.
    pub fn port(&self, number: u16) -> SocketAddr {
        self.ports
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("port {number} not in {:?}", self.ports))
    }
}

impl std::ops::Deref for Gateway {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

/// Server credentials as a Kubernetes Secret volume lays them out
/// (`<dir>/<namespace>/<name>/tls.crt`, `tls.key`, `ca.crt`), issued by a
/// fresh CA, and a client certificate that CA signed.
pub struct Credentials {
    /// The credential directory (`credentialDirectory`).
    pub dir: PathBuf,
    /// The CA's root (PEM): clients trust it; MUTUAL servers verify with it.
    pub root_pem: String,
    /// A client certificate chain and key the CA signed.
    pub client: (String, String),
    _tmp: tempfile::TempDir,
}

impl Credentials {
    /// A Secret `namespace/name` whose certificate names `hosts`.
    pub fn issue(namespace: &str, name: &str, hosts: &[&str]) -> Credentials {
        let tmp = tempfile::tempdir().unwrap();
        let ca =
            tracemesh_ca::Authority::init(&tmp.path().join("ca"), "example.com", None).unwrap();
        let (key, issued) = ca.issue_server(hosts, &[]).unwrap();
        let dir = tmp.path().join("credentials");
        let secret = dir.join(namespace).join(name);
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("tls.crt"), &issued.cert_chain).unwrap();
        std::fs::write(secret.join("tls.key"), &key).unwrap();
        std::fs::write(secret.join("ca.crt"), ca.root_pem()).unwrap();
        let id = tracemesh_ca::SpiffeId::new("example.com", "clients", "client").unwrap();
        let (client_key, client_issued) =
            ca.issue_with_key(&id, Duration::from_secs(3600)).unwrap();
        Credentials {
            dir,
            root_pem: ca.root_pem().to_owned(),
            client: (client_issued.cert_chain, client_key),
            _tmp: tmp,
        }
    }

    /// The directory as a path.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// What an HTTPS request through the gateway got.
#[derive(Debug)]
pub struct TlsReply {
    /// The ALPN protocol the server chose.
    pub alpn: Option<String>,
    /// The status.
    pub status: u16,
    /// `x-upstream` (which backend answered).
    pub upstream: Option<String>,
    /// The body.
    pub body: String,
}

/// GETs `path` over TLS from `addr`, sending `sni` (and as the Host),
/// trusting `root_pem`, offering `alpn`, presenting `client` when given.
/// `Err` when the handshake or the exchange fails.
pub async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
    alpn: &[&str],
    client: Option<&(String, String)>,
    path: &str,
) -> Result<TlsReply, String> {
    tls_get_with(addr, sni, root_pem, alpn, client, path, &[]).await
}

/// [`tls_get`] sending `headers` too.
pub async fn tls_get_with(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
    alpn: &[&str],
    client: Option<&(String, String)>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsReply, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let negotiated = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let io = TokioIo::new(tls);
    let response = if negotiated.as_deref() == Some("h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(format!("https://{sni}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::<Bytes>::default()).unwrap();
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(path).header("host", sni);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::<Bytes>::default()).unwrap();
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsReply {
        alpn: negotiated,
        status,
        upstream,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
