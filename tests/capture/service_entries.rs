//! ServiceEntries known by name and port (no `addresses`, or a CIDR),
//! end to end: network-namespace pods with `tracemesh iptables`, captured
//! agents without identities, and unchanged applications (`curl`, `bash`
//! on `/dev/tcp`, `openssl s_server`) in a pod outside the mesh. Two client
//! pods load the same registry, one under `ALLOW_ANY` and one under
//! `REGISTRY_ONLY`; what they get is what Envoy 1.40 does with the
//! resources as Istio renders them:
//!
//! - `resolution: NONE` (the default) is an `ORIGINAL_DST` cluster: a
//!   captured connection goes where it was going — on the port's
//!   `targetPort` when it names one — under the service's DestinationRule
//!   (here, TLS origination), for a wildcard host over HTTP and TLS and
//!   for a CIDR over TCP, under either traffic policy (the entry is what
//!   lets it out under `REGISTRY_ONLY`). A request reaching the explicit
//!   listener has no original destination: a wildcard host's gets
//!   Envoy's 503 `UH`, another host is resolved by DNS (an intended
//!   difference, docs/envoy-differences.md).
//! - A captured request's Host names a service only on a port the service
//!   declares (Istio's route table per listener port): on another port it
//!   is outside the registry — passed through to where it was going under
//!   `ALLOW_ANY`, 502 under `REGISTRY_ONLY` — never sent to the service's
//!   other port, and a TLS-only service never gets plaintext HTTP.
//!
//! Needs root (skips and says why otherwise; fails under `CI=true`).

use std::net::{IpAddr, Ipv4Addr};

use super::agents::{
    any, chmod, curl_args, echo, plain_agent, shell, status_code, tls_server, wait_metrics,
};
use crate::common::agent::Agent;
use crate::common::pki::TlsUpstream;
use crate::common::pods::{Bed, Pod, PodExt};
use crate::common::upstream::Upstream;

/// A captured agent without identity in `pod`, under the traffic policy
/// `mode`, loading `registry`.
fn start_agent(pod: &Pod, mode: &str, registry: &str) -> Agent {
    let spec = format!("  outboundTrafficPolicy: {{mode: {mode}}}\n");
    plain_agent(pod, None, &spec, registry)
}

/// `curl` of `url` (with `extra` arguments first) from `pod`'s
/// application: `<status> <body>`, or curl's error.
async fn status_and_body(pod: &Pod, extra: &[&str], url: &str) -> String {
    let mut args = vec!["-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    match curl_args(pod, &args).await {
        Ok(out) => {
            let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
            format!("{status} {body}")
        }
        Err(error) => format!("curl failed: {error}"),
    }
}

/// What the explicit listener (`127.0.0.1:15001`, no original
/// destination) answers `pod`'s application for a request with `Host:
/// host`: the response head and body.
async fn explicit(pod: &Pod, host: &str) -> String {
    let header = format!("Host: {host}");
    let args = ["-D", "-", "-H", &header, "http://127.0.0.1:15001/explicit"];
    curl_args(pod, &args)
        .await
        .unwrap_or_else(|e| panic!("Host {host} to the explicit listener: {e}"))
}

/// The `/28` around `ip`: a CIDR of the pods' own range.
fn cidr28(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{}/28", Ipv4Addr::new(a, b, c, d & 0xf0))
}

#[tokio::test]
async fn resolution_none_goes_where_the_connection_was_going() {
    let Some(mut bed) = Bed::new("resolution NONE") else {
        return;
    };
    let client = bed.pod("client");
    let strict = bed.pod("strict");
    let outside = bed.pod("outside");
    // The wildcard's names resolve (in the pods) to the outside pod, as
    // cluster DNS or the Internet would; secure.example.com and
    // corp-db-range resolve nowhere, so only the original destination
    // reaches them.
    bed.service("www.example.com", IpAddr::V4(outside.ip));
    bed.service("plain.example.net", IpAddr::V4(outside.ip));

    let plain = Upstream::start_on("plain", outside.listen(any(80)));
    let _db = echo(&outside, 5432);
    let tmp = tempfile::tempdir().unwrap();
    let _https = tls_server(&outside, tmp.path(), 443).await;
    // What TLS origination reaches: a server whose certificate for
    // secure.example.com its own root signed, which the agents' uid reads.
    let secure = TlsUpstream::start_on(&["secure.example.com"], false, outside.listen(any(8443)));
    let ca = tmp.path().join("secure-root.pem");
    std::fs::copy(&secure.root, &ca).unwrap();
    chmod(&["-R", "a+rX"], tmp.path());
    let ca = ca.display().to_string();
    let db_range = cidr28(outside.ip);
    let registry = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wildcard, namespace: default}}
spec:
  hosts: ["*.example.com"]
  # resolution: NONE, the default
  ports:
  - {{number: 443, name: https, protocol: HTTPS}}
  - {{number: 80, name: http, protocol: HTTP}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: default}}
spec:
  host: secure.example.com
  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: "{ca}"}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: corp-db, namespace: default}}
spec:
  hosts: [corp-db-range]
  addresses: ["{db_range}"]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.example.net]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
"#
    );
    let _agents = [
        start_agent(&client, "ALLOW_ANY", &registry),
        start_agent(&strict, "REGISTRY_ONLY", &registry),
    ];

    for pod in [&client, &strict] {
        let from = &pod.name;
        // HTTPS to a wildcard host, captured on 443: the client's own TLS
        // reaches the server it connected to (it was reset, UH).
        let page = status_and_body(pod, &["-k"], "https://www.example.com/").await;
        assert!(
            page.starts_with("200 ") && page.contains("s_server"),
            "{from}: {page}"
        );
        // HTTP to a wildcard host, captured on 80 (it was 503 UH).
        let reply = status_and_body(pod, &[], "http://www.example.com/p").await;
        assert!(
            reply.starts_with("200 ") && reply.contains("\"upstream\":\"plain\""),
            "{from}: {reply}"
        );
        // The original destination wins over the name (which resolves
        // nowhere): the client connects to the outside pod's port 80,
        // which the port's targetPort turns into 8443, where the
        // DestinationRule's TLS origination reaches the HTTPS server.
        let resolve = format!("secure.example.com:80:{}", outside.ip);
        let page =
            status_and_body(pod, &["--resolve", &resolve], "http://secure.example.com/").await;
        assert_eq!(page, "200 secure hello", "{from}");
        // TCP to an address inside a CIDR (it dialed corp-db-range by
        // name: UF,URX).
        let script = format!(
            "exec 3<>/dev/tcp/{}/5432; printf 'hello db' >&3; head -c 8 <&3",
            outside.ip
        );
        let echoed = shell(pod, &script).await;
        assert_eq!(echoed.as_deref(), Ok("hello db"), "{from}");

        // Each through its service, not around the registry.
        let to = |service| [("reporter", "source"), ("destination_service", service)];
        let ok = |service| {
            [
                ("reporter", "source"),
                ("destination_service", service),
                ("response_code", "200"),
            ]
        };
        wait_metrics(pod, "the NONE services' traffic, by service", |m| {
            m.sum("istio_tcp_connections_opened_total", &to("*.example.com")) == 1.0
                && m.sum("istio_requests_total", &ok("*.example.com")) == 1.0
                && m.sum("istio_requests_total", &ok("secure.example.com")) == 1.0
                && m.sum("istio_tcp_connections_opened_total", &to("corp-db-range")) == 1.0
                && m.sum("istio_tcp_connections_closed_total", &to("corp-db-range")) == 1.0
                && m.sum(
                    "istio_tcp_connections_closed_total",
                    &[
                        ("response_flags", "-"),
                        ("destination_service", "corp-db-range"),
                    ],
                ) == 1.0
        })
        .await;
    }
    assert_eq!(plain.count(), 2);
    let sni = secure.sni.lock().unwrap().clone();
    assert_eq!(
        sni,
        [
            Some("secure.example.com".to_owned()),
            Some("secure.example.com".to_owned())
        ],
        "originated"
    );
    // REGISTRY_ONLY is in force: what no entry declares is refused.
    let undeclared = format!("http://{}:8001/", outside.ip);
    let refused = status_code(&strict, &undeclared).await;
    assert_eq!(refused.as_deref(), Ok("502"));
    // Plain bytes to the wildcard's TLS port carry no server name: no
    // service takes them, and REGISTRY_ONLY refuses them. (They went out,
    // to the NONE service's original destination, past the policy.)
    let script = format!(
        "exec 3<>/dev/tcp/{}/443; printf 'not tls\\r\\n' >&3; head -c 1 <&3 | wc -c",
        outside.ip
    );
    let _ = shell(&strict, &script).await;
    let source = |label, value| [("reporter", "source"), (label, value)];
    // Refused as Envoy refuses under Istio's REGISTRY_ONLY: the request by
    // the `block_all` route's direct response (502, no flag), the
    // connection by `tcp_proxy` to `BlackHoleCluster`, which has no
    // endpoint (`UH`).
    let black_hole = |flags| {
        [
            ("reporter", "source"),
            ("destination_service_name", "BlackHoleCluster"),
            ("response_flags", flags),
        ]
    };
    wait_metrics(&strict, "plain bytes to a TLS port, refused", |m| {
        m.sum(
            "istio_tcp_connections_closed_total",
            &source("destination_service_name", "BlackHoleCluster"),
        ) == 1.0
            && m.sum("istio_tcp_connections_closed_total", &black_hole("UH")) == 1.0
            && m.sum("istio_requests_total", &black_hole("-")) == 1.0
            && m.sum(
                "istio_tcp_connections_opened_total",
                &source("destination_service", "*.example.com"),
            ) == 1.0
    })
    .await;

    // The explicit listener: no original destination. A wildcard host
    // has nothing to resolve, as Envoy's ORIGINAL_DST cluster has no
    // host (503 UH); another host is resolved by DNS.
    let reply = explicit(&client, "www.example.com").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    let flags = "x-tracemesh-response-flags: uh";
    assert!(reply.to_ascii_lowercase().contains(flags), "{reply}");
    let reply = explicit(&client, "plain.example.net").await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\"upstream\":\"plain\""),
        "{reply}"
    );
    assert_eq!(plain.count(), 3);
}

#[tokio::test]
async fn a_captured_host_is_routed_only_on_ports_its_service_declares() {
    let Some(mut bed) = Bed::new("declared ports") else {
        return;
    };
    let client = bed.pod("client");
    let strict = bed.pod("strict");
    let outside = bed.pod("outside");
    bed.service("www.example.com", IpAddr::V4(outside.ip));
    bed.service("api.example.com", IpAddr::V4(outside.ip));

    // One plain HTTP server per port of the outside pod, each naming its
    // port: the one on 443 stands for api.example.com's TLS server, which
    // a plaintext request must never reach.
    let _servers = [80, 8080, 443].map(|port| {
        let name = format!("port-{port}");
        Upstream::start_on(&name, outside.listen(any(port)))
    });
    let registry = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: www, namespace: default}
spec:
  hosts: [www.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"#;
    let logged = "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  accessLog: {enabled: true}\n";
    let agents = [
        start_agent(&client, "ALLOW_ANY", registry),
        plain_agent(&strict, None, logged, registry),
    ];
    let upstream = |name: &str| format!("\"upstream\":\"{name}\"");

    // The declared port: the service.
    for pod in [&client, &strict] {
        let reply = status_and_body(pod, &[], "http://www.example.com/p").await;
        assert!(
            reply.starts_with("200 ") && reply.contains(&upstream("port-80")),
            "{reply}"
        );
    }
    // ALLOW_ANY: a port the service does not declare is outside the
    // registry, passed through to where the client was going (it went to
    // port 80's cluster); a TLS-only service's host over plain HTTP on
    // port 80 too (it went, in plaintext, to api.example.com:443).
    let reply = status_and_body(&client, &[], "http://www.example.com:8080/p").await;
    assert!(
        reply.starts_with("200 ") && reply.contains(&upstream("port-8080")),
        "{reply}"
    );
    let reply = status_and_body(&client, &[], "http://api.example.com/q").await;
    assert!(
        reply.starts_with("200 ") && reply.contains(&upstream("port-80")),
        "{reply}"
    );
    let passthrough = [
        ("reporter", "source"),
        ("destination_service_name", "PassthroughCluster"),
        ("response_code", "200"),
    ];
    let www = [
        ("reporter", "source"),
        ("destination_service", "www.example.com"),
        ("response_code", "200"),
    ];
    wait_metrics(&client, "two requests passed through, one to www", |m| {
        m.sum("istio_requests_total", &passthrough) == 2.0
            && m.sum("istio_requests_total", &www) == 1.0
    })
    .await;
    // REGISTRY_ONLY: refused, as BlackHoleCluster.
    for url in ["http://www.example.com:8080/p", "http://api.example.com/q"] {
        let head = curl_args(&strict, &["-D", "-", "-o", "/dev/null", url]).await;
        let head = head.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 502")
                && head.contains("x-tracemesh-response-code-details: direct_response")
                && !head.contains("x-tracemesh-response-flags"),
            "{url}: {head}"
        );
    }
    let black_hole = [
        ("destination_service_name", "BlackHoleCluster"),
        ("response_code", "502"),
        ("response_flags", "-"),
    ];
    wait_metrics(&strict, "two requests refused", |m| {
        m.sum("istio_requests_total", &black_hole) == 2.0
    })
    .await;
    // Under Istio's catch-all route that refuses.
    assert_eq!(agents[1].access_log_line("/q")["route_name"], "block_all");

    // The explicit listener routes by Host alone, to a port the service
    // declares for HTTP or nowhere (404 NR).
    for host in ["www.example.com:8080", "api.example.com"] {
        let reply = explicit(&client, host).await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{host}: {reply}");
        let flags = "x-tracemesh-response-flags: nr";
        let lower = reply.to_ascii_lowercase();
        assert!(lower.contains(flags), "{host}: {reply}");
    }
}

/// `loadBalancer.simple: PASSTHROUGH` on a STATIC entry is Istio's
/// ORIGINAL_DST cluster: a captured request goes where its connection was
/// going, not to the entry's endpoints (it was balanced LEAST_REQUEST over
/// them), under the service's name; a request to the explicit listener,
/// which has no original destination, is balanced over the endpoints.
#[tokio::test]
async fn passthrough_load_balancing_goes_where_the_connection_was_going() {
    let Some(mut bed) = Bed::new("PASSTHROUGH") else {
        return;
    };
    let client = bed.pod("client");
    let original = bed.pod("original");
    let listed = bed.pod("listed");
    let at_original = Upstream::start_on("original", original.listen(any(80)));
    let at_listed = Upstream::start_on("listed", listed.listen(any(80)));
    let registry = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [legacy.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {listed}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: default}}
spec:
  host: legacy.example.com
  trafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}
"#,
        listed = listed.ip
    );
    let _agent = start_agent(&client, "REGISTRY_ONLY", &registry);

    let resolve = format!("legacy.example.com:80:{}", original.ip);
    let reply = status_and_body(
        &client,
        &["--resolve", &resolve],
        "http://legacy.example.com/",
    )
    .await;
    assert!(
        reply.starts_with("200 ") && reply.contains("\"upstream\":\"original\""),
        "{reply}"
    );
    assert_eq!((at_original.count(), at_listed.count()), (1, 0));
    let ok = [
        ("reporter", "source"),
        ("destination_service", "legacy.example.com"),
        ("response_code", "200"),
    ];
    wait_metrics(&client, "the request, under its service", |m| {
        m.sum("istio_requests_total", &ok) == 1.0
    })
    .await;

    let args = [
        "-H",
        "Host: legacy.example.com",
        "http://127.0.0.1:15001/explicit",
    ];
    let reply = curl_args(&client, &args).await.unwrap();
    assert!(reply.contains("\"upstream\":\"listed\""), "{reply}");
    assert_eq!((at_original.count(), at_listed.count()), (1, 1));
}

/// `resolution: DNS` is Envoy's `STRICT_DNS`, as Istio renders it: every
/// address a name resolves to is an endpoint of its own, balanced (here
/// ROUND_ROBIN, so each takes its exact share), and an address the name
/// gains is balanced to once the name is resolved again — at once when a
/// reload lowers the mesh's `dnsRefreshRate` (a reviewer found the old
/// rate's deadline kept). The pods' hosts file is their DNS. (It was one
/// endpoint by name: every request went to the name's first address.)
#[tokio::test]
async fn dns_resolution_balances_every_address_of_a_name() {
    let Some(mut bed) = Bed::new("resolution DNS") else {
        return;
    };
    let client = bed.pod("client");
    let servers = [bed.pod("one"), bed.pod("two"), bed.pod("three")];
    let upstreams: Vec<Upstream> = (servers.iter())
        .map(|pod| Upstream::start_on(&pod.name, pod.listen(any(80))))
        .collect();
    bed.service("api.internal", IpAddr::V4(servers[0].ip));
    bed.service("api.internal", IpAddr::V4(servers[1].ip));
    let registry = r#"---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    dnsRefreshRate: 1h
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.internal
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"#;
    let agent = start_agent(&client, "REGISTRY_ONLY", registry);
    let counts = || upstreams.iter().map(Upstream::count).collect::<Vec<_>>();
    // `requests` requests from the application, over one connection.
    let send = async |requests: usize| {
        let mut args = vec!["-w", "%{http_code} "];
        for _ in 0..requests {
            args.extend(["-o", "/dev/null", "http://api.internal/"]);
        }
        let out = curl_args(&client, &args).await.unwrap();
        assert_eq!(out.trim(), vec!["200"; requests].join(" "));
    };
    // Until the name is resolved (at the agent's start, in the background)
    // its connections go to its first address.
    let wait_for = async |server: usize, why: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while upstreams[server].count() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{why}: {:?}",
                counts()
            );
            send(4).await;
        }
    };
    wait_for(1, "the name's second address never took a request").await;
    let before = counts();
    send(60).await;
    let shares: Vec<usize> = counts().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(shares, [30, 30, 0]);

    // The name gains an address, seen once a reload lowers the rate.
    bed.service("api.internal", IpAddr::V4(servers[2].ip));
    let text = std::fs::read_to_string(&agent.config).unwrap();
    agent.rewrite_config(&text.replace("dnsRefreshRate: 1h", "dnsRefreshRate: 1s"));
    wait_for(2, "the name's new address never took a request").await;
    let before = counts();
    send(90).await;
    let shares: Vec<usize> = counts().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(shares, [30, 30, 30]);
    // `/clusters` shows each address under the name, as Envoy's does.
    let clusters = curl_args(&client, &["http://127.0.0.1:15000/clusters"])
        .await
        .unwrap();
    for pod in &servers {
        let endpoint = format!(
            "outbound|80||api.internal::{}:80::hostname::api.internal",
            pod.ip
        );
        assert!(clusters.contains(&endpoint), "{endpoint} in {clusters}");
    }
}

/// A Sidecar's `outboundTrafficPolicy.egressProxy` under ALLOW_ANY: what
/// is outside the registry goes to the egress proxy's service, not to
/// where it was going (a captured TCP connection too) — as Istio routes its
/// catch-all to the proxy's cluster (`buildCatchAllVirtualHost`,
/// `buildOutboundCatchAllNetworkFiltersOnly`); what the registry declares
/// goes to its service. (Found by a breaker: the proxy was ignored.)
#[tokio::test]
async fn an_egress_proxy_takes_what_is_outside_the_registry() {
    let Some(mut bed) = Bed::new("egress proxy") else {
        return;
    };
    let client = bed.pod("client");
    let outside = bed.pod("outside");
    let proxy = bed.pod("proxy");
    let at_outside = Upstream::start_on("outside", outside.listen(any(8080)));
    let at_proxy = Upstream::start_on("egress", proxy.listen(any(3128)));
    let registry = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress, namespace: default}}
spec:
  hosts: [egress.example.com]
  ports: [{{number: 3128, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {proxy}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {{host: egress.example.com, port: {{number: 3128}}}}
"#,
        proxy = proxy.ip
    );
    let logged = "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n  accessLog: {enabled: true}\n";
    let agent = plain_agent(&client, None, logged, &registry);
    let url = format!("http://{}:8080/away", outside.ip);
    let reply = status_and_body(&client, &[], &url).await;
    assert!(
        reply.starts_with("200 ") && reply.contains("\"upstream\":\"egress\""),
        "{reply}"
    );
    assert_eq!((at_outside.count(), at_proxy.count()), (0, 1));
    let url = format!("http://{}:3128/declared", proxy.ip);
    let reply = status_and_body(&client, &[], &url).await;
    assert!(reply.starts_with("200 "), "{reply}");
    assert_eq!((at_outside.count(), at_proxy.count()), (0, 2));
    // Under Istio's catch-all route, whichever cluster it sends to.
    assert_eq!(agent.access_log_line("/away")["route_name"], "allow_any");

    // A proxy the Sidecar's egress hosts hide has no cluster here: Envoy
    // answers 503 NC (istiod sent it none), never the original destination.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let hidden = text.replace(
        "  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n",
        "  egress: [{hosts: [\"./nothing.example.com\"]}]\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n",
    );
    assert_ne!(hidden, text);
    agent.rewrite_config(&hidden);
    wait_metrics(&client, "the Sidecar hiding the proxy loaded", |m| {
        m.sum("tracemesh_agent_config_version", &[]) >= 2.0
    })
    .await;
    let url = format!("http://{}:8080/hidden", outside.ip);
    let head = curl_args(&client, &["-D", "-", "-o", "/dev/null", &url]).await;
    let head = head.unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 503") && head.contains("x-tracemesh-response-flags: nc"),
        "{head}"
    );
    assert_eq!((at_outside.count(), at_proxy.count()), (0, 2));
}
