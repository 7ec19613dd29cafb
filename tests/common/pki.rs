//! A real `tracemesh ca` process, certificates from it, and an HTTPS upstream
//! for TLS origination.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tracemesh_ca::Authority;

use super::agent::binary;

fn run(args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run tracemesh ca");
    assert!(
        out.status.success(),
        "tracemesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA directory with a serving `tracemesh ca serve` process.
pub struct Ca {
    /// The CA's directory.
    pub dir: PathBuf,
    /// `host:port` of its HTTPS listener.
    pub address: SocketAddr,
    /// A token allowing any identity.
    pub token_file: PathBuf,
    child: Child,
    tmp: tempfile::TempDir,
}

impl Ca {
    /// `ca init`, `ca token --identity '*'`, `ca serve` on port 0.
    pub fn start() -> Ca {
        Self::start_in("cluster.local")
    }

    /// [`Ca::start`] issuing identities of `trust_domain`.
    pub fn start_in(trust_domain: &str) -> Ca {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let dir_s = dir.to_str().unwrap();
        run(&["ca", "init", "--dir", dir_s, "--trust-domain", trust_domain]);
        let token = run(&["ca", "token", "--dir", dir_s, "--identity", "*"]);
        let token_file = tmp.path().join("token");
        std::fs::write(&token_file, token.trim()).unwrap();
        let mut child = Command::new(binary())
            .args(["ca", "serve", "--dir", dir_s, "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listen=") {
                    let addr = line[at + 7..].split(' ').next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ca ready line")
            .parse()
            .unwrap();
        Ca {
            dir,
            address,
            token_file,
            child,
            tmp,
        }
    }

    /// The root certificate file.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root-cert.pem")
    }

    /// Agent YAML (under `spec:`) for a workload of `service_account` that
    /// gets its certificates from this CA, valid for `lifetime`.
    pub fn identity_yaml(&self, service_account: &str, lifetime: &str) -> String {
        format!(
            "  serviceAccount: {service_account}\n  identity:\n    ca: {{address: \"{}\", rootCert: \"{}\", tokenFile: \"{}\", lifetime: {lifetime}}}\n",
            self.address,
            self.root().display(),
            self.token_file.display()
        )
    }

    /// `ca issue` into `out` (key.pem, cert-chain.pem, root-cert.pem).
    pub fn issue(&self, spiffe: &str, out: &Path) {
        run(&[
            "ca",
            "issue",
            "--dir",
            self.dir.to_str().unwrap(),
            "--spiffe",
            spiffe,
            "--out",
            out.to_str().unwrap(),
        ]);
    }
}

impl Ca {
    /// A client certificate this CA's signing key signs with `san` as its
    /// whole subjectAltName (`URI:…`, `DNS:…`; `None`: no SAN at all), made
    /// with `openssl` (the CA itself only issues well-formed identities):
    /// the certificate and key files in `out`, named after `name`.
    pub fn issue_client(&self, san: Option<&str>, out: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue_client_as("/O=tracemesh-test", san, out, name)
    }

    /// The same with the subject `subject` (`openssl -subj` form).
    pub fn issue_client_as(
        &self,
        subject: &str,
        san: Option<&str>,
        out: &Path,
        name: &str,
    ) -> (PathBuf, PathBuf) {
        let (key, csr, cert, ext) = (
            out.join(format!("{name}-key.pem")),
            out.join(format!("{name}.csr")),
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.cnf")),
        );
        let mut extensions = String::from(
            "[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        if let Some(san) = san {
            extensions.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(&ext, extensions).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &path(&key),
            "-out",
            &path(&csr),
        ]);
        let serial = format!("{}", fastrand::u64(1..u64::MAX / 2));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(&self.dir.join("ca-cert.pem")),
            "-CAkey",
            &path(&self.dir.join("ca-key.pem")),
            "-set_serial",
            &serial,
            "-days",
            "1",
            "-extfile",
            &path(&ext),
            "-extensions",
            "v3",
            "-out",
            &path(&cert),
        ]);
        (cert, key)
    }
}

impl Ca {
    /// [`openssl_get`] to `addr` with a client certificate
    /// [`Ca::issue_client`] makes with `san`, its files named after `name`
    /// in this CA's own temporary directory; returns what `openssl` printed
    /// and the certificate's PEM file.
    pub fn openssl_get_as(
        &self,
        san: Option<&str>,
        name: &str,
        addr: SocketAddr,
    ) -> (String, PathBuf) {
        let dir = self.tmp.path().join("clients");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self.issue_client(san, &dir, name);
        (openssl_get(addr, Some((&cert, &key))), cert)
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS upstream whose certificate names `names`, signed by its own
/// root; optionally requiring client certificates signed by that root.
pub struct TlsUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Its root certificate file.
    pub root: PathBuf,
    /// A client key and certificate its root signed (for MUTUAL).
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
    /// SNI of every TLS connection it accepted.
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    _tmp: tempfile::TempDir,
}

impl TlsUpstream {
    /// Starts the server on 127.0.0.1.
    pub async fn start(names: &[&str], require_client_cert: bool) -> TlsUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self::start_on(names, require_client_cert, listener)
    }

    /// Starts the server on `listener` (nonblocking; a pod's socket, say).
    pub fn start_on(
        names: &[&str],
        require_client_cert: bool,
        listener: std::net::TcpListener,
    ) -> TlsUpstream {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Authority::init(&tmp.path().join("ca"), "test.local", None).unwrap();
        let root = tmp.path().join("root.pem");
        std::fs::write(&root, ca.root_pem()).unwrap();
        let client = tracemesh_ca::SpiffeId::new("test.local", "ns", "client").unwrap();
        let (client_cert, client_key) = write_workload_cert(&ca, &client, tmp.path(), "client");
        let config = server_config(&ca, names, require_client_cert);
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let sni = serve_tls(listener, config);
        TlsUpstream {
            addr,
            root,
            client_cert,
            client_key,
            sni,
            _tmp: tmp,
        }
    }
}

/// An HTTPS server on 127.0.0.1 answering every request `secure hello`
/// with the certificate chain and key of these PEM files (no client
/// certificate asked): its address.
pub async fn https_upstream(cert: &Path, key: &Path) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_tls(listener, config);
    addr
}

/// Serves `secure hello` over TLS with `config` on `listener` until the
/// runtime ends: the SNI of every connection accepted.
fn serve_tls(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> Arc<Mutex<Vec<Option<String>>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let sni = Arc::new(Mutex::new(Vec::new()));
    let seen = sni.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_owned));
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"secure hello",
                    ))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    sni
}

/// `authority`'s root alone, as rustls trusts it.
fn roots(authority: &Authority) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(authority.root_pem().as_bytes()).unwrap())
        .unwrap();
    roots
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3) presenting the
/// certificate `authority` issues for the DNS `names`; when
/// `require_client_cert`, a client must present one that authority signed.
pub fn server_config(
    authority: &Authority,
    names: &[&str],
    require_client_cert: bool,
) -> rustls::ServerConfig {
    let (key, issued) = authority.issue_server(names, &[]).unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_chain.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(authority)), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(certs, key).unwrap()
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) that trusts
/// `authority`'s root alone and presents no certificate.
pub fn client_config(authority: &Authority) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(authority))
        .with_no_client_auth()
}

/// A workload certificate `authority` issues to `id` for an hour, written
/// to `dir` as `<name>.pem` (the chain) and `<name>-key.pem`: those two
/// files.
pub fn write_workload_cert(
    authority: &Authority,
    id: &tracemesh_ca::SpiffeId,
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf) {
    let (key, issued) = authority
        .issue_with_key(id, Duration::from_secs(3600))
        .unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_file, &issued.cert_chain).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    (cert_file, key_file)
}

/// Runs `openssl s_client` against `addr`, sending an HTTP request; returns
/// what it printed (an HTTP response appears only if the connection was let in).
/// It offers Istio's mesh ALPN (`istio-http/1.1`, `istio`), as a sidecar
/// does: under PERMISSIVE, TLS without it is the application's own and
/// goes to the app unopened.
pub fn openssl_get(addr: SocketAddr, cert_and_key: Option<(&Path, &Path)>) -> String {
    openssl_request(
        addr,
        cert_and_key,
        "GET /via-openssl HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
}

/// [`openssl_get`] sending `request` (the whole HTTP/1.1 request).
pub fn openssl_request(
    addr: SocketAddr,
    cert_and_key: Option<(&Path, &Path)>,
    request: &str,
) -> String {
    openssl_request_to(addr, None, cert_and_key, request)
}

/// [`openssl_request`] sending `sni` as the server name.
pub fn openssl_request_to(
    addr: SocketAddr,
    sni: Option<&str>,
    cert_and_key: Option<(&Path, &Path)>,
    request: &str,
) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-quiet",
        "-ign_eof",
        "-alpn",
        "istio-http/1.1,istio",
    ]);
    if let Some(sni) = sni {
        cmd.arg("-servername").arg(sni);
    }
    if let Some((cert, key)) = cert_and_key {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (.ci/run installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(request.as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What `openssl x509` says of the certificate in `pem` (a file) with
/// `args` (`-noout -subject -nameopt RFC2253`, …): Envoy's own renderings
/// of a client certificate come from the same library family (BoringSSL).
pub fn openssl_x509(pem: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(pem)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The client-certificate part of an XFCC element as Envoy writes it for
/// the leaf in `pem`, by `openssl`: `Hash=<SHA-256 of the DER, lowercase
/// hex>`, then `Cert="<URL-encoded PEM>"` when `cert`, then
/// `Subject="<RFC 2253>"`.
pub fn xfcc_of(pem: &Path, cert: bool) -> String {
    let fingerprint = openssl_x509(pem, &["-noout", "-fingerprint", "-sha256"]);
    let hash = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    let subject = openssl_x509(pem, &["-noout", "-subject", "-nameopt", "RFC2253"]);
    let subject = subject.trim().trim_start_matches("subject=").trim();
    let mut out = format!("Hash={hash}");
    if cert {
        let pem = openssl_x509(pem, &[]);
        let encoded = pem
            .replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        out.push_str(&format!(";Cert=\"{encoded}\""));
    }
    out.push_str(&format!(";Subject=\"{subject}\""));
    out
}

/// A TCP relay to `upstream` that sends each client's ClientHello over
/// several TLS records, the handshake message cut every `fragment` bytes
/// (RFC 8446 §5.1 lets a client fragment it so), and relays everything
/// after it as it comes. Returns the relay's address.
pub async fn split_hello_relay(upstream: SocketAddr, fragment: usize) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut header = [0u8; 5];
                client.read_exact(&mut header).await?;
                assert_eq!(header[0], 0x16, "the client's first record is a handshake");
                let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
                let mut message = vec![0u8; len];
                client.read_exact(&mut message).await?;
                let mut wire = Vec::new();
                for piece in message.chunks(fragment) {
                    wire.extend([0x16, header[1], header[2]]);
                    wire.extend((piece.len() as u16).to_be_bytes());
                    wire.extend(piece);
                }
                let mut server = tokio::net::TcpStream::connect(upstream).await?;
                server.write_all(&wire).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

/// A CA made and run by `openssl` alone (`req -x509`, `x509 -req`, `ca
/// -revoke`, `ca -gencrl`): certificates with any SAN and revocation
/// lists, for checks no tracemesh code produces the inputs of.
pub struct OpensslCa {
    /// The directory holding its files (`ca.crt`, `ca.key`, issued pairs).
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl OpensslCa {
    /// A P-256 root `CN=test-ca` (`ca.crt`), with an `openssl ca`
    /// database for revocations.
    pub fn new() -> OpensslCa {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=test-ca",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        OpensslCa { dir, _tmp: tmp }
    }

    /// An intermediate CA `CN=<name>` this CA signs, with a directory and
    /// database of its own (so it issues, revokes and lists as this one
    /// does); its certificate is also `<name>.crt` here, so this CA can
    /// revoke it.
    pub fn intermediate(&self, name: &str) -> OpensslCa {
        let sub = OpensslCa::new();
        std::fs::write(
            sub.dir.join("ca.cnf.ext"),
            "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        openssl(
            &sub.dir,
            &[
                "req",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                &format!("/CN={name}"),
                "-out",
                "ca.csr",
            ],
        );
        let serial = fastrand::u32(1..u32::MAX / 2).to_string();
        let parent = |f: &str| self.dir.join(f).display().to_string();
        openssl(
            &sub.dir,
            &[
                "x509",
                "-req",
                "-in",
                "ca.csr",
                "-CA",
                &parent("ca.crt"),
                "-CAkey",
                &parent("ca.key"),
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                "ca.cnf.ext",
                "-extensions",
                "v3",
                "-out",
                "ca.crt",
            ],
        );
        std::fs::copy(sub.dir.join("ca.crt"), self.dir.join(format!("{name}.crt"))).unwrap();
        sub
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.crt")).unwrap()
    }

    /// A certificate `CN=<name>` with `san` as its subjectAltName
    /// (`DNS:…`, `URI:…`, `email:…`), for server and client use: the
    /// paths of `<name>.crt` and `<name>.key`.
    pub fn issue(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        self.issue_with(name, san, &p256)
    }

    /// [`OpensslCa::issue`] with a 2048-bit RSA key.
    pub fn issue_rsa(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        self.issue_with(name, san, &["-newkey", "rsa:2048"])
    }

    fn issue_with(&self, name: &str, san: &str, new_key: &[&str]) -> (PathBuf, PathBuf) {
        std::fs::write(
            self.dir.join(format!("{name}.cnf")),
            format!(
                "[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
            ),
        )
        .unwrap();
        let (crt, key, csr, cnf) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.cnf"),
        );
        let subject = format!("/O=test/CN={name}");
        let mut args = vec!["req", "-new"];
        args.extend(new_key);
        args.extend(["-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr]);
        openssl(&self.dir, &args);
        let serial = fastrand::u32(1..u32::MAX / 2).to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "1",
                "-extfile",
                &cnf,
                "-extensions",
                "v3",
                "-out",
                &crt,
            ],
        );
        (self.dir.join(crt), self.dir.join(key))
    }

    /// The chain and key of `issue`d `name`, as PEM text.
    pub fn pair(&self, name: &str) -> (String, String) {
        let read = |ext: &str| std::fs::read_to_string(self.dir.join(format!("{name}.{ext}")));
        (read("crt").unwrap(), read("key").unwrap())
    }

    /// Marks `issue`d `name` revoked in the database.
    pub fn revoke(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-revoke",
                &format!("{name}.crt"),
                "-keyfile",
                "ca.key",
                "-cert",
                "ca.crt",
            ],
        );
    }

    /// A revocation list of what is revoked now, written to `file`; with
    /// `window` (`YYYYMMDDHHMMSSZ` this and next update, [`utc`]) one of
    /// that time.
    pub fn crl(&self, file: &str, window: Option<(&str, &str)>) -> PathBuf {
        let mut args = vec![
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.crt", "-out",
            file,
        ];
        if let Some((last, next)) = window {
            args.extend(["-crl_lastupdate", last, "-crl_nextupdate", next]);
        }
        openssl(&self.dir, &args);
        self.dir.join(file)
    }

    /// `verifyCertificateSpki` of `issue`d `name`: the base64 SHA-256 of
    /// its DER SubjectPublicKeyInfo, as Envoy's documentation computes it.
    pub fn spki_pin(&self, name: &str) -> String {
        let pubkey = openssl(
            &self.dir,
            &["x509", "-in", &format!("{name}.crt"), "-noout", "-pubkey"],
        );
        std::fs::write(self.dir.join(format!("{name}.pub")), pubkey).unwrap();
        openssl(
            &self.dir,
            &[
                "pkey",
                "-pubin",
                "-in",
                &format!("{name}.pub"),
                "-outform",
                "DER",
                "-out",
                &format!("{name}.spki"),
            ],
        );
        let digest = openssl(
            &self.dir,
            &[
                "dgst",
                "-sha256",
                "-binary",
                "-out",
                &format!("{name}.spki.sha256"),
                &format!("{name}.spki"),
            ],
        );
        assert!(digest.is_empty());
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(self.dir.join(format!("{name}.spki.sha256"))).unwrap())
    }

    /// `verifyCertificateHash` of `issue`d `name` as `openssl x509
    /// -fingerprint -sha256` prints it (upper-case hex, colons).
    pub fn cert_hash(&self, name: &str) -> String {
        let out = openssl(
            &self.dir,
            &[
                "x509",
                "-in",
                &format!("{name}.crt"),
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        out.trim().split_once('=').unwrap().1.to_owned()
    }
}

/// The time `hours` from now (negative: ago) as `openssl ca` takes it,
/// `YYYYMMDDHHMMSSZ` in UTC.
pub fn utc(hours: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", now + hours * 3600),
            "+%Y%m%d%H%M%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
