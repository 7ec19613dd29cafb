//! Where capture decides from a connection's first bytes, or refuses it,
//! end to end: network-namespace pods with `tracemesh iptables`, real
//! agents with mesh identities (PERMISSIVE: no PeerAuthentication), and
//! unchanged applications (`bash` on `/dev/tcp`, `curl`, a TCP echo,
//! `openssl s_server`). Each test builds its own bed — productpage and
//! reviews1 with sidecars, outside without — so each can set its own
//! `protocolDetectionTimeout`:
//!
//! - a first write no request line can begin with (`ruok`, `PING`, `x`)
//!   to an undeclared port is echoed at once, well inside a 5 s timeout;
//! - a prefix of a method (`GET`) or of a TLS record, then silence, is
//!   echoed once the timeout passes (it hung until the client sent more);
//! - the application's own TLS to an undeclared port reaches the
//!   application untouched under PERMISSIVE (the agent answered it with
//!   its own certificate), while the sidecars' own mTLS is still
//!   terminated;
//! - a connection to the inbound capture port itself (15006, which the
//!   rules leave alone) is closed instead of going to `spec.inbound.app`,
//!   and one from another pod to the outbound listener bound to every
//!   address (15001) is closed instead of calling the mesh as this pod;
//! - PeerAuthentication's `portLevelMtls` decides each captured port: a
//!   plaintext client is served on the port it sets DISABLE and refused
//!   on the others, STRICT by the workload's mode.
//!
//! Every path is taken with sidecars on both ends, on the destination's
//! end only and, for the first bytes, on the source's end only, so the
//! outbound and the inbound detection each show their part.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::agents::{
    any, chmod, curl_args, echo, shell, sidecar_yaml, status_code, tls_server, wait_metrics,
    workload_certs,
};
use super::{APP, PROXY, install};
use crate::common::agent::Agent;
use crate::common::pki::Ca;
use crate::common::pods::{Bed, Pod, PodExt};
use crate::common::upstream::Upstream;

const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The undeclared port the TCP echoes listen on.
const ECHO_PORT: u16 = 7000;

/// Three pods of one bed: productpage and reviews1 with sidecars, outside
/// without. reviews is the one service in the registry, its HTTP port
/// 9080 served by reviews1 on 8080 (where the agents' default
/// `spec.inbound.app`, 127.0.0.1:8080, also points); every other port is
/// undeclared.
struct Mesh {
    // Fields drop in order: the agents before the pods they run in.
    _agents: Vec<Agent>,
    productpage: Pod,
    reviews: Pod,
    outside: Pod,
    tmp: tempfile::TempDir,
    _bed: Bed,
}

impl Mesh {
    /// The bed with both sidecars ready, their `protocolDetectionTimeout`
    /// `detection`; `None` when this machine cannot run pods (not root,
    /// and not `CI=true`).
    fn start(test: &str, detection: &str) -> Option<Mesh> {
        Self::start_with(test, detection, "")
    }

    /// The same, with `policies` (YAML documents) in both agents' config.
    fn start_with(test: &str, detection: &str, policies: &str) -> Option<Mesh> {
        let mut bed = Bed::new(test)?;
        let productpage = bed.pod("productpage");
        let reviews = bed.pod("reviews1");
        let outside = bed.pod("outside");
        bed.service("reviews", IpAddr::V4(REVIEWS_VIP));
        let tmp = tempfile::tempdir().unwrap();
        let registry = registry(&reviews);
        let ca = Ca::start();
        let mut agents = Vec::new();
        for (pod, workload, app) in [
            (&productpage, "productpage-v1", "productpage"),
            (&reviews, "reviews-v1", "reviews"),
        ] {
            let certs = workload_certs(&ca, tmp.path(), app);
            install(pod, &[]);
            // No collector in this bed: no spans. The outbound listener on
            // every address, as an IPv6 or dual-stack pod binds it: still
            // the pod's own.
            let yaml = sidecar_yaml(workload, app, app, "v1", &certs, detection)
                .replace("127.0.0.1:15001", "0.0.0.0:15001")
                + "  telemetry: {sampling: 0.0}\n"
                + &registry
                + policies;
            agents.push(Agent::start_in(pod, PROXY, &yaml));
        }
        Some(Mesh {
            _agents: agents,
            productpage,
            reviews,
            outside,
            tmp,
            _bed: bed,
        })
    }
}

/// reviews in the mesh (its endpoint labelled for mTLS), its HTTP port
/// 9080 on reviews1's 8080.
fn registry(reviews: &Pod) -> String {
    let ip = reviews.ip;
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [{REVIEWS_VIP}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {ip}, ports: {{http: 8080}}, labels: {{app: reviews, version: v1, security.istio.io/tlsMode: istio}}}}
"#
    )
}

/// From `from`'s application, a connection to `to`'s echo port; writes
/// `printf`'s expansion of `first` and nothing more, and waits at most
/// `limit` for that many bytes back: what came back, and how long after
/// the client started.
async fn first_write(
    from: &Pod,
    to: &Pod,
    first: &str,
    len: usize,
    limit: Duration,
) -> (Result<String, String>, Duration) {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{ECHO_PORT}; printf '{first}' >&3; head -c {len} <&3",
        to.ip
    );
    let started = Instant::now();
    let echoed = tokio::time::timeout(limit, shell(from, &script))
        .await
        .unwrap_or_else(|_| Err(format!("no echo within {limit:?}")));
    (echoed, started.elapsed())
}

/// Who calls whom on the echo port: sidecars on both ends, on the
/// destination's end only, on the source's end only.
fn echo_paths(mesh: &Mesh) -> [(&Pod, &Pod); 3] {
    [
        (&mesh.productpage, &mesh.reviews),
        (&mesh.outside, &mesh.reviews),
        (&mesh.productpage, &mesh.outside),
    ]
}

/// TCP connections the agents opened for the echo paths: `inbound` on
/// reviews1's, `outbound` on productpage's.
async fn tcp_connections_counted(mesh: &Mesh, inbound: f64, outbound: f64) {
    let opened = |reporter| [("reporter", reporter)];
    wait_metrics(&mesh.reviews, "TCP connections captured inbound", |m| {
        m.sum("istio_tcp_connections_opened_total", &opened("destination")) == inbound
    })
    .await;
    wait_metrics(
        &mesh.productpage,
        "TCP connections captured outbound",
        |m| m.sum("istio_tcp_connections_opened_total", &opened("source")) == outbound,
    )
    .await;
}

#[tokio::test]
async fn a_first_write_no_request_begins_with_is_echoed_at_once() {
    // A detection timeout long enough that waiting for it cannot pass for
    // "at once"; an echo that waited for it still arrives within LIMIT.
    const LIMIT: Duration = Duration::from_secs(15);
    let Some(mesh) = Mesh::start("first write", "5s") else {
        return;
    };
    let _echoes = [
        echo(&mesh.reviews, ECHO_PORT),
        echo(&mesh.outside, ECHO_PORT),
    ];

    for (from, to) in echo_paths(&mesh) {
        for first in ["ruok", "PING", "x"] {
            let (echoed, took) = first_write(from, to, first, first.len(), LIMIT).await;
            let what = format!("{first:?} from {} to {}", from.name, to.name);
            assert_eq!(echoed.as_deref(), Ok(first), "{what}, after {took:?}");
            // Half the detection timeout: waiting for it (once or on both
            // sidecars) takes 5 s or more.
            assert!(
                took < Duration::from_millis(2500),
                "{what} was echoed after {took:?}, not at once"
            );
        }
    }
    // All of them went through the agents: six connections into reviews1
    // and six out of productpage.
    tcp_connections_counted(&mesh, 6.0, 6.0).await;
}

#[tokio::test]
async fn a_method_prefix_then_silence_is_echoed_once_detection_times_out() {
    let Some(mesh) = Mesh::start("method prefix", "1s") else {
        return;
    };
    let _echoes = [
        echo(&mesh.reviews, ECHO_PORT),
        echo(&mesh.outside, ECHO_PORT),
    ];

    // `GET` could begin a request line and three bytes of a TLS record
    // header a ClientHello: both are undecided until the timeout, after
    // which the bytes go on as TCP. The client waits for its echo and
    // sends nothing more.
    for (from, to) in echo_paths(&mesh) {
        for (first, bytes) in [("GET", "GET"), (r"\x16\x03\x01", "\x16\x03\x01")] {
            let limit = Duration::from_secs(10);
            let (echoed, took) = first_write(from, to, first, bytes.len(), limit).await;
            let what = format!("{bytes:?} from {} to {}", from.name, to.name);
            assert_eq!(echoed.as_deref(), Ok(bytes), "{what}, after {took:?}");
            // Not decided sooner: the timeout had to pass (once, or once
            // on each sidecar).
            assert!(
                took >= Duration::from_secs(1),
                "{what} was echoed after {took:?}, before the detection timeout"
            );
        }
    }
    tcp_connections_counted(&mesh, 4.0, 4.0).await;
}

#[tokio::test]
async fn the_applications_own_tls_reaches_it_untouched_beside_mesh_mtls() {
    let Some(mesh) = Mesh::start("app tls", "1s") else {
        return;
    };
    let reviews_v1 = Upstream::start_on("reviews-v1", mesh.reviews.listen(any(8080)));
    // openssl's own server on reviews1's undeclared port 8443, its
    // self-signed certificate for secure.example.com the only one a
    // client trusts.
    let dir = mesh.tmp.path().join("tls");
    std::fs::create_dir(&dir).unwrap();
    let _tls = tls_server(&mesh.reviews, &dir, 8443).await;
    chmod(&["-R", "a+rX"], &dir);
    let server_cert = dir.join("server.pem").display().to_string();
    let resolve = format!("secure.example.com:8443:{}", mesh.reviews.ip);

    // The mesh: plain HTTP from productpage's app, mTLS between the
    // sidecars, terminated by reviews1's.
    let body = curl_args(&mesh.productpage, &["http://reviews:9080/mesh"])
        .await
        .unwrap_or_else(|e| panic!("http://reviews:9080/mesh from productpage: {e}"));
    assert!(body.contains("\"upstream\":\"reviews-v1\""), "{body}");
    let mtls = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/productpage",
        ),
    ];
    wait_metrics(&mesh.reviews, "the mesh request over mTLS", |m| {
        m.sum("istio_requests_total", &mtls) == 1.0
    })
    .await;

    // The application's TLS, from a pod with a sidecar and from one
    // without: curl verifies against openssl's certificate alone, so a
    // handshake the agent answered with its own certificate fails. The
    // page is openssl's: the exchange reached the application.
    for from in [&mesh.productpage, &mesh.outside] {
        let page = curl_args(
            from,
            &[
                "--cacert",
                &server_cert,
                "--resolve",
                &resolve,
                "https://secure.example.com:8443/",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("the app's TLS from {}: {e}", from.name));
        assert!(page.contains("s_server"), "from {}: {page}", from.name);
    }
    // Captured, and passed on as bytes: two TCP connections into reviews1
    // without mTLS, and the mesh request still the only one over it.
    let plain = [
        ("reporter", "destination"),
        ("connection_security_policy", "none"),
    ];
    let scrape = wait_metrics(&mesh.reviews, "the app's TLS passed through", |m| {
        m.sum("istio_tcp_connections_opened_total", &plain) == 2.0
    })
    .await;
    assert_eq!(scrape.sum("istio_requests_total", &mtls), 1.0);
    assert_eq!(reviews_v1.count(), 1);
}

#[tokio::test]
async fn connections_to_the_capture_ports_themselves_are_closed() {
    let Some(mesh) = Mesh::start("inbound port", "1s") else {
        return;
    };
    // Bound to every address, so reachable both through capture on its
    // own port and, as `spec.inbound.app` (127.0.0.1:8080 by default), by
    // whatever the inbound listener serves as its own.
    let reviews_v1 = Upstream::start_on("reviews-v1", mesh.reviews.listen(any(8080)));
    let own_port = format!("http://{}:8080/captured", mesh.reviews.ip);
    let inbound_port = format!("http://{}:15006/direct", mesh.reviews.ip);

    // Through capture, on its own port, from both pods.
    for from in [&mesh.outside, &mesh.productpage] {
        let body = curl_args(from, &[&own_port])
            .await
            .unwrap_or_else(|e| panic!("{own_port} from {}: {e}", from.name));
        assert!(body.contains("\"upstream\":\"reviews-v1\""), "{body}");
    }
    assert_eq!(reviews_v1.count(), 2);

    // Port 15006 itself from a pod without sidecar: accepted (the rules
    // leave the agent's ports alone), then closed unanswered — curl's
    // "empty reply" (52) or "connection reset" (56), not a timeout.
    let out = mesh
        .outside
        .tokio_command_as(APP, APP, "curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", &inbound_port])
        .output()
        .await
        .expect("curl");
    assert!(
        matches!(out.status.code(), Some(52 | 56)),
        "{inbound_port} from outside: {}, {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // From productpage its sidecar passes the request on to port 15006
    // (nothing declares it) and answers for the closed connection itself.
    let code = status_code(&mesh.productpage, &inbound_port).await;
    assert!(
        code.as_deref().is_ok_and(|c| c != "200"),
        "{inbound_port} from productpage: {code:?}"
    );
    assert_eq!(
        reviews_v1.count(),
        2,
        "the application saw no request through port 15006: {:?}",
        reviews_v1
            .seen()
            .iter()
            .map(|s| &s.path)
            .collect::<Vec<_>>()
    );

    // productpage's outbound listener, bound to every address, used as a
    // proxy from a pod without identity: closed unanswered. It answered,
    // calling reviews as productpage (an mTLS identity borrowed).
    let proxy = format!("http://{}:15001", mesh.productpage.ip);
    let out = mesh
        .outside
        .tokio_command_as(APP, APP, "curl")
        .args(["-sS", "--max-time", "20", "-x", &proxy])
        .arg("http://reviews:9080/borrowed")
        .output()
        .await
        .expect("curl");
    assert!(
        matches!(out.status.code(), Some(52 | 56)),
        "{proxy} from outside: {}, {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reviews_v1.count(), 2, "reviews was called through {proxy}");
    // From inside the pod, over loopback, it is the pod's proxy still.
    let out = mesh
        .productpage
        .tokio_command_as(APP, APP, "curl")
        .args(["-sS", "--max-time", "20", "-x", "http://127.0.0.1:15001"])
        .arg("http://reviews:9080/own")
        .output()
        .await
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("\"upstream\":\"reviews-v1\""),
        "the pod's own proxy: {}, {body}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reviews_v1.count(), 3);
}

/// reviews1's workload policy: STRICT, but DISABLE on 8080.
const STRICT_BUT_8080: &str = r#"---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
"#;

#[tokio::test]
async fn port_level_mtls_decides_each_captured_port() {
    let Some(mesh) = Mesh::start_with("port-level mtls", "1s", STRICT_BUT_8080) else {
        return;
    };
    // Two applications in reviews1: 8080 (the policy's DISABLE port, where
    // `spec.inbound.app` also points) and 9090 (STRICT, as the workload).
    let on_8080 = Upstream::start_on("reviews-8080", mesh.reviews.listen(any(8080)));
    let on_9090 = Upstream::start_on("reviews-9090", mesh.reviews.listen(any(9090)));

    // Plaintext from a pod without sidecar: served on 8080.
    let disabled = format!("http://{}:8080/plain", mesh.reviews.ip);
    let body = curl_args(&mesh.outside, &[&disabled])
        .await
        .unwrap_or_else(|e| panic!("{disabled} from outside: {e}"));
    assert!(body.contains("\"upstream\":\"reviews-8080\""), "{body}");

    // Refused on 9090: closed unanswered — curl's "empty reply" (52) or
    // "connection reset" (56) — and never reaching the application.
    let strict = format!("http://{}:9090/plain", mesh.reviews.ip);
    let out = mesh
        .outside
        .tokio_command_as(APP, APP, "curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", &strict])
        .output()
        .await
        .expect("curl");
    assert!(
        matches!(out.status.code(), Some(52 | 56)),
        "{strict} from outside: {}, {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = [("direction", "inbound"), ("reason", "plaintext_refused")];
    wait_metrics(&mesh.reviews, "plaintext refused on the STRICT port", |m| {
        m.sum("tracemesh_agent_tls_handshake_failures_total", &refused) >= 1.0
    })
    .await;
    assert_eq!(
        on_9090.count(),
        0,
        "plaintext reached the STRICT port's app"
    );
    assert_eq!(on_8080.count(), 1);
}
