//! Unchanged applications in network-namespace pods behind captured
//! agents: `tracemesh iptables` in each pod, a `tracemesh agent` under the
//! proxy uid with `capture.mode: REDIRECT`, applications that know
//! nothing of the mesh (HTTP servers on their pod's address, `curl`, a
//! TCP echo, `openssl s_server`), and one set of Istio resources.
//!
//! One bed serves every check, in order, so the pods and agents start
//! once: HTTP captured on both sides (trace context, source and
//! destination reports, a weight split), mesh mTLS with no application
//! change and a STRICT pod refusing a pod without sidecar, TCP and TLS
//! passthrough, VirtualService tls[] and tcp[] rules routing captured
//! TLS by its SNI and TCP to one subset, AuthorizationPolicy on captured inbound TCP, ALLOW_ANY and
//! REGISTRY_ONLY, a Sidecar egress scope, the agents' own exports left
//! uncaptured, and `--cleanup`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{APP, PROXY, install};
use crate::common::agent::Agent;
use crate::common::metrics::Scrape;
use crate::common::otlp::Receiver;
use crate::common::pki::Ca;
use crate::common::pods::{Bed, Pod, PodExt};
use crate::common::upstream::Upstream;

const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const DETAILS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
/// Where `secure.example.com` resolves: an address no service claims, so
/// only the port and the SNI name the service.
const SECURE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);

/// The Istio resources every agent loads: reviews (VIP, two versions
/// behind sidecars, a 50/50 split, STRICT mTLS), a TCP echo and a plain
/// HTTP details service outside the mesh, a TLS service known by name
/// only, and a Sidecar that scopes ratings to reviews under REGISTRY_ONLY.
fn registry(reviews: [&Pod; 2], outside: &Pod) -> String {
    let [v1, v2] = reviews.map(|p| p.ip);
    let out = outside.ip;
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
  ports: [{{number: 9080, name: http, protocol: HTTP}}, {{number: 7001, name: tcp-echo, protocol: TCP}}]
  endpoints:
  - {{address: {v1}, labels: {{app: reviews, version: v1, security.istio.io/tlsMode: istio}}}}
  - {{address: {v2}, labels: {{app: reviews, version: v2, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 50}}
  tcp:
  - match: [{{port: 7001}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  addresses: [{ECHO_VIP}]
  resolution: STATIC
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {out}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: details, namespace: default}}
spec:
  hosts: [details.default.svc.cluster.local]
  addresses: [{DETAILS_VIP}]
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {out}, ports: {{http: 8000}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {out}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mirror, namespace: default}}
spec:
  hosts: [mirror.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {out}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{{sniHosts: [secure.example.com], port: 8443}}]
    route: [{{destination: {{host: mirror.example.com}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-echo, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/ratings]}}}}]
    to: [{{operation: {{ports: ["7001"]}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: ratings, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: ratings}}}}
  egress: [{{hosts: ["./reviews.default.svc.cluster.local"]}}]
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
"#
    )
}

/// An Agent in capture mode on Istio's ports, its certificate from files,
/// its spans to `otlp`.
fn agent_yaml(
    workload: &str,
    service: &str,
    app: &str,
    version: &str,
    certs: &Path,
    otlp: SocketAddr,
) -> String {
    sidecar_yaml(workload, service, app, version, certs, "1s")
        + &format!(
            r#"  telemetry:
    otlp: {{endpoint: "http://{otlp}"}}
    sampling: 1.0
    flushInterval: 100ms
"#
        )
}

/// An Agent in capture mode on Istio's ports, its `protocolDetectionTimeout`
/// `detection` (the default when `None`); the `spec:` is left open, for
/// the caller to add to.
fn captured_yaml(
    workload: &str,
    service: &str,
    app: &str,
    version: &str,
    detection: Option<&str>,
) -> String {
    let detection = detection
        .map(|d| format!(", protocolDetectionTimeout: {d}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: {workload}, namespace: default}}
spec:
  service: {service}
  labels: {{app: {app}, version: {version}}}
  concurrency: 1
  capture: {{mode: REDIRECT{detection}}}
  outbound: {{listen: "127.0.0.1:15001"}}
  inbound: {{listen: "0.0.0.0:15006"}}
  admin: {{listen: "127.0.0.1:15000"}}
"#
    )
}

/// An Agent in capture mode on Istio's ports, its certificate from files,
/// its `protocolDetectionTimeout` `detection`; the `spec:` ends with its
/// identity, for the caller to add a `telemetry:` or not.
pub(crate) fn sidecar_yaml(
    workload: &str,
    service: &str,
    app: &str,
    version: &str,
    certs: &Path,
    detection: &str,
) -> String {
    let file = |name: &str| certs.join(name).display().to_string();
    captured_yaml(workload, service, app, version, Some(detection))
        + &format!(
            r#"  serviceAccount: {app}
  identity:
    files: {{certChain: "{chain}", privateKey: "{key}", rootCert: "{root}"}}
"#,
            chain = file("cert-chain.pem"),
            key = file("key.pem"),
            root = file("root-cert.pem"),
        )
}

/// A captured agent in `pod` with no identity (plaintext only) and no
/// spans: `tracemesh iptables` installed, then an Agent named for the pod
/// under the proxy uid, its `protocolDetectionTimeout` `detection` (the
/// default when `None`), `spec` further lines of its `spec:` (indented
/// two spaces), loading the documents `registry`.
pub(crate) fn plain_agent(pod: &Pod, detection: Option<&str>, spec: &str, registry: &str) -> Agent {
    install(pod, &[]);
    let name = &pod.name;
    let yaml = captured_yaml(name, name, name, "v1", detection)
        + spec
        + "  telemetry: {sampling: 0.0}\n"
        + registry;
    Agent::start_in(pod, PROXY, &yaml)
}

/// Every address of a pod, on `port` (where an application that knows
/// nothing of the mesh listens).
pub(crate) fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// `chmod args path`, so that the agents' uid reads what the test wrote
/// as root (a failure shows as the agent's own error, naming the file).
pub(crate) fn chmod(args: &[&str], path: &Path) {
    let _ = std::process::Command::new("chmod")
        .args(args)
        .arg(path)
        .status();
}

/// `ca`'s certificates for the service account `sa` of namespace
/// `default`, in `tmp/<sa>` (`cert-chain.pem`, `key.pem`,
/// `root-cert.pem`), readable by the agents' uid: that directory.
pub(crate) fn workload_certs(ca: &Ca, tmp: &Path, sa: &str) -> PathBuf {
    let dir = tmp.join(sa);
    ca.issue(&format!("spiffe://cluster.local/ns/default/sa/{sa}"), &dir);
    chmod(&["-R", "a+rX"], &dir);
    chmod(&["a+rx"], tmp);
    dir
}

/// The agent's metrics, read inside its pod (its admin port is the pod's
/// loopback).
async fn metrics(pod: &Pod) -> Scrape {
    let out = pod
        .command("curl")
        .args(["-sS", "--max-time", "20", "http://127.0.0.1:15000/metrics"])
        .output()
        .expect("curl metrics");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Scrape::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Polls `check` every `every` until it gives `Ok`. If 30 s pass first,
/// panics with `what`, `place` (where it was looked for) and the last
/// `Err` (what was seen there). Something that cannot come right any more
/// panics in `check` at once.
pub(crate) async fn poll_until<T>(
    place: &str,
    what: &str,
    every: std::time::Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what} in {place} after 30 s:\n{seen}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `what` holds on `pod`'s agent metrics (they are recorded
/// when a response ends, a moment after the client has it).
pub(crate) async fn wait_metrics(pod: &Pod, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let every = std::time::Duration::from_millis(100);
    poll_until(&pod.name, what, every, async || {
        let scrape = metrics(pod).await;
        if pred(&scrape) {
            Ok(scrape)
        } else {
            Err(scrape.text)
        }
    })
    .await
}

/// Waits until `metric` with `labels`, summed over `pods`' agents, is
/// `want` (`what` says what that means, for the failure).
async fn wait_summed(pods: &[&Pod], metric: &str, labels: &[(&str, &str)], want: f64, what: &str) {
    let place = pods
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(" and ");
    let every = std::time::Duration::from_millis(100);
    poll_until(&place, what, every, async || {
        let mut sum = 0.0;
        let mut texts = Vec::new();
        for pod in pods {
            let scrape = metrics(pod).await;
            sum += scrape.sum(metric, labels);
            texts.push(scrape.text);
        }
        if sum == want {
            Ok(())
        } else {
            Err(format!("{metric}: {sum}\n{}", texts.join("\n")))
        }
    })
    .await;
}

/// A TCP echo server on the pod's address.
pub(crate) fn echo(pod: &Pod, port: u16) -> tokio::task::JoinHandle<()> {
    let listener = pod.listen(SocketAddr::new(IpAddr::V4(pod.ip), port));
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// `openssl s_server -www` on the pod's `port` with a self-signed
/// certificate for `secure.example.com`, written to `dir` (`server.pem`,
/// `server.key`); its page names the server.
pub(crate) async fn tls_server(pod: &Pod, dir: &Path, port: u16) -> tokio::process::Child {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=secure.example.com"])
        .args([
            "-addext",
            "subjectAltName=DNS:secure.example.com",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(made.success());
    let errors = dir.join("s_server.err");
    let mut cmd = tokio::process::Command::from(pod.command("openssl"));
    let accept = port.to_string();
    cmd.args(["s_server", "-quiet", "-www", "-accept", &accept, "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).expect("s_server's stderr file"))
        .kill_on_drop(true);
    let mut server = cmd.spawn().expect("openssl s_server");
    // Listening before anyone connects: a connection the pod's sidecar
    // passed on to a port with no listener yet would be cut mid-handshake.
    let every = std::time::Duration::from_millis(20);
    let listening = format!("openssl s_server listening on {port}");
    let sport = format!("sport = :{port}");
    poll_until(&pod.name, &listening, every, async || {
        if let Some(status) = server.try_wait().expect("openssl s_server's status") {
            let said = std::fs::read_to_string(&errors).unwrap_or_default();
            panic!(
                "openssl s_server in {} exited ({status}):\n{said}",
                pod.name
            );
        }
        let ss = tokio::process::Command::from(pod.command("ss"))
            .args(["-Hltn", &sport])
            .output()
            .await
            .expect("ss");
        assert!(
            ss.status.success(),
            "ss in {}: {}",
            pod.name,
            String::from_utf8_lossy(&ss.stderr)
        );
        if ss.stdout.is_empty() {
            Err("no listener".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    server
}

/// `curl args` in `pod` as the application's uid: stdout, or why it failed.
pub(crate) async fn curl_args(pod: &Pod, args: &[&str]) -> Result<String, String> {
    let out = pod
        .tokio_command_as(APP, APP, "curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn fetch(pod: &Pod, args: &[&str]) -> String {
    curl_args(pod, args)
        .await
        .unwrap_or_else(|e| panic!("curl {args:?} from {}: {e}", pod.name))
}

/// The HTTP status `curl url` from `pod`'s application got (`000` when it
/// got none), or why curl failed.
pub(crate) async fn status_code(pod: &Pod, url: &str) -> Result<String, String> {
    curl_args(pod, &["-o", "/dev/null", "-w", "%{http_code}", url]).await
}

/// `sh -c script` in `pod` as the application's uid.
pub(crate) async fn shell(pod: &Pod, script: &str) -> Result<String, String> {
    let out = pod
        .tokio_command_as(APP, APP, "bash")
        .args(["-c", script])
        .output()
        .await
        .expect("bash");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn unchanged_applications_are_served_by_captured_agents() {
    let Some(mut bed) = Bed::new("captured agents") else {
        return;
    };
    let otel = bed.pod("otel");
    let productpage = bed.pod("productpage");
    let ratings = bed.pod("ratings");
    let reviews1 = bed.pod("reviews1");
    let reviews2 = bed.pod("reviews2");
    let outside = bed.pod("outside");
    bed.service("reviews", IpAddr::V4(REVIEWS_VIP));
    bed.service("echo", IpAddr::V4(ECHO_VIP));
    bed.service("details", IpAddr::V4(DETAILS_VIP));
    bed.service("secure.example.com", IpAddr::V4(SECURE_ADDR));

    // Telemetry in a pod of its own, outside the mesh.
    let otlp_addr = SocketAddr::new(IpAddr::V4(otel.ip), 4317);
    let receiver = Receiver::start_on(otel.listen(otlp_addr));

    // Unchanged applications on their pods' addresses.
    let reviews_v1 = Upstream::start_on("reviews-v1", reviews1.listen(any(9080)));
    let reviews_v2 = Upstream::start_on("reviews-v2", reviews2.listen(any(9080)));
    let _details = Upstream::start_on("details", outside.listen(any(8000)));
    let _elsewhere = Upstream::start_on("elsewhere", outside.listen(any(8001)));
    let _echo = echo(&outside, 7000);
    let _echoes = [echo(&reviews1, 7001), echo(&reviews2, 7001)];
    let tmp = tempfile::tempdir().unwrap();
    let _tls = tls_server(&outside, tmp.path(), 8443).await;

    // Certificates from the built-in CA, one identity per service account.
    let ca = Ca::start();
    let registry = registry([&reviews1, &reviews2], &outside);
    let mut agents = Vec::new();
    for (pod, workload, app, version) in [
        (&productpage, "productpage-v1", "productpage", "v1"),
        (&ratings, "ratings-v1", "ratings", "v1"),
        (&reviews1, "reviews-v1", "reviews", "v1"),
        (&reviews2, "reviews-v2", "reviews", "v2"),
    ] {
        install(pod, &[]);
        let certs = workload_certs(&ca, tmp.path(), app);
        let yaml = agent_yaml(workload, app, app, version, &certs, otlp_addr) + &registry;
        agents.push(Agent::start_in(pod, PROXY, &yaml));
    }

    // HTTP, captured on both sides: `curl http://reviews:9080/` 100 times
    // over one connection; the split holds, each app sees trace context.
    let bodies = fetch(&productpage, &["http://reviews:9080/r/[1-100]"]).await;
    let v1 = bodies.matches("\"upstream\":\"reviews-v1\"").count();
    let v2 = bodies.matches("\"upstream\":\"reviews-v2\"").count();
    assert_eq!(v1 + v2, 100, "{bodies}");
    // 50/50 over 100 draws: outside 25..=75 once in ~10^6 runs.
    assert!((25..=75).contains(&v1), "v1 {v1}, v2 {v2}");
    let seen = reviews_v1.seen().into_iter().chain(reviews_v2.seen());
    let traceparents: Vec<String> = seen
        .map(|s| {
            s.headers
                .get("traceparent")
                .expect("the application receives W3C trace context")
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(traceparents.len(), 100);

    let source = [
        ("reporter", "source"),
        ("destination_service_name", "reviews"),
    ];
    wait_metrics(&productpage, "100 requests reported by the source", |m| {
        m.sum("istio_requests_total", &source) == 100.0
    })
    .await;
    let mtls = [
        ("reporter", "destination"),
        ("destination_service_name", "reviews"),
        ("connection_security_policy", "mutual_tls"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/productpage",
        ),
    ];
    let what = "every request reported by its destination, over mTLS";
    wait_summed(
        &[&reviews1, &reviews2],
        "istio_requests_total",
        &mtls,
        100.0,
        what,
    )
    .await;

    // The agents' spans reached the collector pod (their own connections
    // are not captured) and stitch into one trace with what the app saw.
    let trace = traceparents[0].split('-').nth(1).unwrap().to_owned();
    let spans = receiver
        .wait_for("client and server spans of one request", |spans| {
            let of = |service: &str| {
                spans
                    .iter()
                    .any(|s| s.trace_id() == trace && s.service.starts_with(service))
            };
            of("productpage") && of("reviews")
        })
        .await;
    assert!(spans.iter().any(|s| s.trace_id() == trace));
    let exports = [("destination_service_name", "PassthroughCluster")];
    assert_eq!(
        metrics(&productpage)
            .await
            .sum("istio_tcp_connections_opened_total", &exports)
            + metrics(&productpage)
                .await
                .sum("istio_requests_total", &exports),
        0.0,
        "the agent's exports were not captured"
    );

    // A pod without a sidecar is refused by a STRICT pod.
    let direct = curl_args(&outside, &[&format!("http://{}:9080/", reviews1.ip)]).await;
    assert!(direct.is_err(), "plaintext to a STRICT pod: {direct:?}");
    assert_eq!(reviews_v1.count() + reviews_v2.count(), 100);

    // TCP to a service VIP: bytes through the TCP proxy, istio_tcp_* counted.
    let echoed = shell(
        &productpage,
        "exec 3<>/dev/tcp/echo/7000; printf 'hello mesh\\n' >&3; head -c 11 <&3",
    )
    .await
    .expect("echo");
    assert_eq!(echoed, "hello mesh\n");
    let tcp = [
        ("reporter", "source"),
        ("destination_service", "echo.default.svc.cluster.local"),
    ];
    wait_metrics(&productpage, "tcp metrics of echo", |m| {
        m.sum("istio_tcp_connections_opened_total", &tcp) == 1.0
            && m.sum("istio_tcp_sent_bytes_total", &tcp) >= 11.0
    })
    .await;

    // TLS passed through by SNI to a service known by name and port only,
    // and routed by the VirtualService's tls[] rule for that SNI to
    // mirror.example.com: the client's own TLS reaches openssl's server
    // untouched.
    let page = fetch(
        &productpage,
        &["--insecure", "https://secure.example.com:8443/"],
    )
    .await;
    assert!(page.contains("s_server"), "{page}");
    let to = |service| [("destination_service", service)];
    wait_metrics(&productpage, "tcp metrics of the TLS route", |m| {
        m.sum(
            "istio_tcp_connections_opened_total",
            &to("mirror.example.com"),
        ) == 1.0
            && m.sum(
                "istio_tcp_connections_opened_total",
                &to("secure.example.com"),
            ) == 0.0
    })
    .await;

    // ALLOW_ANY: outside the registry, through to where it was going.
    let other = fetch(&productpage, &[&format!("http://{}:8001/x", outside.ip)]).await;
    assert!(other.contains("\"upstream\":\"elsewhere\""), "{other}");
    let passthrough = [
        ("reporter", "source"),
        ("destination_service", "unknown"),
        ("destination_service_name", "PassthroughCluster"),
        ("response_code", "200"),
    ];
    wait_metrics(&productpage, "PassthroughCluster", |m| {
        m.sum("istio_requests_total", &passthrough) == 1.0
    })
    .await;
    // A registered service outside any Sidecar scope works from productpage.
    let details = fetch(&productpage, &["http://details:9080/d"]).await;
    assert!(details.contains("\"upstream\":\"details\""), "{details}");

    // ratings: a Sidecar scopes it to reviews under REGISTRY_ONLY.
    let scoped = fetch(&ratings, &["http://reviews:9080/"]).await;
    assert!(scoped.contains("\"upstream\":\"reviews-v"), "{scoped}");
    let unknown = format!("http://{}:8001/", outside.ip);
    assert_eq!(status_code(&ratings, &unknown).await.as_deref(), Ok("502"));
    assert_eq!(
        status_code(&ratings, "http://details:9080/")
            .await
            .as_deref(),
        Ok("502"),
        "outside the Sidecar's egress hosts"
    );
    let black_hole = [
        ("destination_service_name", "BlackHoleCluster"),
        ("response_code", "502"),
    ];
    wait_metrics(&ratings, "BlackHoleCluster", |m| {
        m.sum("istio_requests_total", &black_hole) == 2.0
    })
    .await;
    let refused = shell(
        &ratings,
        "exec 3<>/dev/tcp/echo/7000; printf x >&3; head -c 1 <&3",
    )
    .await;
    assert!(
        refused.is_err() || refused.as_deref() == Ok(""),
        "{refused:?}"
    );

    // TCP captured inbound is authorized per connection: a DENY policy on
    // the reviews pods refuses ratings' principal on the TCP port, after
    // the mTLS handshake and before the application sees a byte;
    // productpage's connection echoes.
    let tcp_echo = "exec 3<>/dev/tcp/reviews/7001; printf hi >&3; head -c 2 <&3";
    for _ in 0..4 {
        let echoed = shell(&productpage, tcp_echo).await.expect("reviews echo");
        assert_eq!(echoed, "hi");
    }
    // The VirtualService's tcp[] rule sends every captured connection to
    // reviews' port 7001 to subset v2, as Istio's TCP traffic shifting does.
    let to = |version| {
        [
            ("reporter", "source"),
            ("destination_service_name", "reviews"),
            ("destination_version", version),
        ]
    };
    wait_metrics(&productpage, "tcp connections to reviews v2", |m| {
        m.sum("istio_tcp_connections_opened_total", &to("v2")) == 4.0
            && m.sum("istio_tcp_connections_opened_total", &to("v1")) == 0.0
    })
    .await;
    let refused = shell(&ratings, tcp_echo).await;
    assert!(
        refused.is_err() || refused.as_deref() == Ok(""),
        "{refused:?}"
    );
    let denied = [
        ("reporter", "destination"),
        ("response_flags", "RBAC"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/ratings",
        ),
    ];
    let what = "the refused TCP connection counted by reviews";
    let closed = "istio_tcp_connections_closed_total";
    wait_summed(&[&reviews1, &reviews2], closed, &denied, 1.0, what).await;

    // --cleanup leaves none of the rules behind (that it restores the
    // exact state, unrelated rules included, the cleanup test shows).
    drop(agents);
    install(&productpage, &["--cleanup"]);
    let state = productpage.netfilter_state();
    assert!(
        !state.contains("ISTIO") && !state.contains("tracemesh") && !state.contains("::6/128"),
        "{state}"
    );
}
