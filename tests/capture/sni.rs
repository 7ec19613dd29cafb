//! Captured TLS to ports declared TLS, end to end: network-namespace pods
//! with `tracemesh iptables`, a captured agent under REGISTRY_ONLY, TLS
//! servers without sidecars that name themselves once the handshake is
//! done, and a real TLS client (tokio-rustls) in the captured pod:
//!
//! - a port declared TLS waits for the ClientHello however late it comes,
//!   as Istio's TLS-only listeners do (`listener_filters_timeout: 0`): a
//!   client that pauses well past `protocolDetectionTimeout` before its
//!   ClientHello reaches the service its SNI names, and matches
//!   VirtualService `tls[]` rules, as a prompt client does; a client that
//!   never sends one is closed by the downstream idle timeout;
//! - among address-less services on one TLS port the SNI picks the most
//!   specific host, as Envoy matches filter chains' `server_names`: an
//!   exact host before any wildcard, a longer wildcard before a shorter,
//!   whatever order they are declared in (and HTTP's Host likewise).
//!
//! Each test builds its own bed; every server pod runs no sidecar.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::agents::{any, curl_args, plain_agent};
use crate::common::agent::Agent;
use crate::common::pki;
use crate::common::pods::{Bed, Pod, PodExt};
use crate::common::upstream::Upstream;

/// The detection timeout the agents run with: short, so a pause of
/// [`PAUSE`] is far past it.
const DETECTION: &str = "200ms";
/// How long a slow client waits between connecting and its ClientHello.
const PAUSE: Duration = Duration::from_secs(1);
/// The downstream idle timeout the agents run with: a connection that has
/// sent no ClientHello by then is closed. Well past [`PAUSE`].
const IDLE: &str = "4s";
/// Longest any one exchange may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(20);
/// Where the wildcard test's names resolve, as far as the client knows:
/// an address no service claims, so only the port and the SNI (or Host)
/// name the service.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);

/// A captured agent in `pod` (plaintext only: no identity), its
/// `protocolDetectionTimeout` [`DETECTION`], its idle timeout [`IDLE`],
/// under REGISTRY_ONLY, with `registry`.
fn start_agent(pod: &Pod, registry: &str) -> Agent {
    let spec = format!(
        "  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n  downstream: {{idleTimeout: {IDLE}}}\n"
    );
    plain_agent(pod, Some(DETECTION), &spec, registry)
}

/// One CA's server certificate for every name the tests' clients send,
/// and a client that trusts that CA alone.
struct Pki {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl Pki {
    fn new(names: &[&str]) -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let ca =
            tracemesh_ca::Authority::init(&tmp.path().join("ca"), "example.com", None).unwrap();
        Pki {
            acceptor: TlsAcceptor::from(Arc::new(pki::server_config(&ca, names, false))),
            connector: TlsConnector::from(Arc::new(pki::client_config(&ca))),
        }
    }

    /// A TLS server on `pod`'s address and `port` that writes its pod's
    /// name to every client once the handshake is done, then closes.
    fn serve(&self, pod: &Pod, port: u16) -> tokio::task::JoinHandle<()> {
        let listener = pod.listen(SocketAddr::new(IpAddr::V4(pod.ip), port));
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let acceptor = self.acceptor.clone();
        let name = pod.name.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = tls.write_all(name.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        })
    }

    /// From `pod` (the test runs as root, which the rules capture as they
    /// capture any application), a TLS connection to `to` that waits
    /// `pause` after connecting and only then sends its ClientHello for
    /// `sni`: the name of the server that answered, or why none did.
    async fn hello_after(
        &self,
        pod: &Pod,
        to: SocketAddr,
        pause: Duration,
        sni: &str,
    ) -> Result<String, String> {
        let tcp = pod
            .enter(|| std::net::TcpStream::connect_timeout(&to, LIMIT))
            .unwrap()
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        tokio::time::sleep(pause).await;
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let exchange = async {
            let mut tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let mut answer = Vec::new();
            // The server's name, then its close_notify.
            tls.read_to_end(&mut answer)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LIMIT:?}")))
    }
}

/// From `pod`, a connection to `to` that never sends a byte: whether the
/// agent closed it within [`LIMIT`] (rather than holding it for good).
async fn silent_client_is_closed(pod: &Pod, to: SocketAddr) -> Result<(), String> {
    let tcp = pod
        .enter(|| std::net::TcpStream::connect_timeout(&to, LIMIT))
        .unwrap()
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nonblocking(true).unwrap();
    let mut tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(LIMIT, tcp.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!("{n} bytes came back: {:?}", &buf[..n])),
        Err(_) => Err(format!("still open after {LIMIT:?}")),
    }
}

#[tokio::test]
async fn a_client_that_sends_its_client_hello_late_is_routed_by_its_sni() {
    let Some(mut bed) = Bed::new("late ClientHello") else {
        return;
    };
    let client = bed.pod("client");
    let api = bed.pod("api");
    let other = bed.pod("other");
    // resolution: DNS: the agent finds each host's server by its name.
    bed.service("api.example.com", IpAddr::V4(api.ip));
    bed.service("other.example.com", IpAddr::V4(other.ip));
    let pki = Pki::new(&["api.example.com", "other.example.com"]);
    let _servers = [443, 9443].map(|port| [pki.serve(&api, port), pki.serve(&other, port)]);
    // Two hosts of one ServiceEntry on two TLS ports; on 9443 tls[] rules
    // swap them, so only a rule can have sent a connection where it went.
    let registry = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example, namespace: default}
spec:
  hosts: [api.example.com, other.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 443, name: tls, protocol: TLS}
  - {number: 9443, name: tls-alt, protocol: TLS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: swap, namespace: default}
spec:
  hosts: [api.example.com, other.example.com]
  tls:
  - match: [{sniHosts: [other.example.com], port: 9443}]
    route: [{destination: {host: api.example.com, port: {number: 9443}}}]
  - match: [{sniHosts: [api.example.com], port: 9443}]
    route: [{destination: {host: other.example.com, port: {number: 9443}}}]
"#;
    let _agent = start_agent(&client, registry);

    let at = |pod: &Pod, port| SocketAddr::new(IpAddr::V4(pod.ip), port);
    for (to, sni, want) in [
        (at(&other, 443), "other.example.com", "other"),
        (at(&api, 443), "api.example.com", "api"),
        // The tls[] rules, which only a ClientHello's SNI can match.
        (at(&other, 9443), "other.example.com", "api"),
        (at(&api, 9443), "api.example.com", "other"),
    ] {
        for pause in [Duration::ZERO, PAUSE] {
            let answered = pki.hello_after(&client, to, pause, sni).await;
            assert_eq!(
                answered.as_deref(),
                Ok(want),
                "SNI {sni} to {to} after a pause of {pause:?} (protocolDetectionTimeout {DETECTION})"
            );
        }
    }
    // No ClientHello at all: closed once the idle timeout passes, not held
    // for good (and never passed on to a service).
    silent_client_is_closed(&client, at(&other, 443))
        .await
        .unwrap_or_else(|e| panic!("a client that never sends its ClientHello: {e}"));
}

#[tokio::test]
async fn an_exact_host_beats_a_wildcard_declared_before_it() {
    let Some(mut bed) = Bed::new("exact before wildcard") else {
        return;
    };
    let client = bed.pod("client");
    let wild = bed.pod("wild");
    let eu = bed.pod("eu");
    let api = bed.pod("api");
    bed.service("api.example.com", IpAddr::V4(api.ip));
    bed.service("www.example.com", IpAddr::V4(EXTERNAL));
    let names = ["api.example.com", "www.example.com", "x.eu.example.com"];
    let pki = Pki::new(&names);
    let _servers = [
        pki.serve(&wild, 443),
        pki.serve(&eu, 443),
        pki.serve(&api, 443),
    ];
    let _http = [
        Upstream::start_on("wild", wild.listen(any(80))),
        Upstream::start_on("api", api.listen(any(80))),
    ];
    // The widest first, the exact host last.
    let registry = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wildcard, namespace: default}}
spec:
  hosts: ["*.example.com"]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: {wild}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: eu, namespace: default}}
spec:
  hosts: ["*.eu.example.com"]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {eu}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 443, name: tls, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]
"#,
        wild = wild.ip,
        eu = eu.ip,
    );
    let _agent = start_agent(&client, &registry);

    let external = SocketAddr::new(IpAddr::V4(EXTERNAL), 443);
    for (sni, want) in [
        ("api.example.com", "api"),
        ("x.eu.example.com", "eu"),
        ("www.example.com", "wild"),
    ] {
        let answered = pki
            .hello_after(&client, external, Duration::ZERO, sni)
            .await;
        assert_eq!(answered.as_deref(), Ok(want), "SNI {sni}");
    }
    // HTTP's Host picks the same way (Istio's virtual host domains).
    for (url, want) in [
        ("http://api.example.com/", "api"),
        ("http://www.example.com/", "wild"),
    ] {
        let body = curl_args(&client, &[url])
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(
            body.contains(&format!("\"upstream\":\"{want}\"")),
            "{url}: {body}"
        );
    }
}
