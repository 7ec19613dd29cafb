//! The ingress gateway end to end: the real `tracemesh gateway` binary,
//! bound by Istio `Gateway`s and the VirtualServices naming them (and by a
//! Kubernetes Gateway with an HTTPRoute), in front of a real sidecar and
//! application; real TLS clients with certificates issued in the test.
//!
//! `cargo test --test gateway`.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::client::Client;
use common::gateway::{Credentials, Gateway, bootstrap, tls_get, tls_get_with};
use common::mesh::{AgentDoc, Ep, service_entry};
use common::otlp::Receiver;
use common::pki::{Ca, OpensslCa, TlsUpstream, openssl_request_to, split_hello_relay, utc};
use common::upstream::Upstream;

/// Bookinfo's own `bookinfo-gateway` Gateway and VirtualService (Istio's
/// `samples/bookinfo/networking/bookinfo-gateway.yaml`), the service port
/// as the sample names it.
const BOOKINFO_GATEWAY: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

/// HTTP through the gateway into a sidecar and its application: routed by
/// Bookinfo's gateway resources, the gateway's span the trace's SERVER
/// root with the sidecar's span its child, Istio metrics with the gateway
/// as the source workload, the access log, and the admin API's routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_enters_the_mesh_through_the_gateway_as_the_trace_root() {
    let otlp = Receiver::start().await;
    let ca = Ca::start();
    let app = Upstream::start("productpage").await;
    let sidecar = Agent::start(
        &AgentDoc {
            name: "productpage-v1",
            service: "productpage",
            app: "productpage",
            version: "v1",
            app_addr: app.addr,
            otlp: &otlp.endpoint(),
            app_protocol: "HTTP",
            outbound_tcp: "[]",
            extra: &ca.identity_yaml("bookinfo-productpage", "1h"),
        }
        .yaml(),
    );
    let productpage = service_entry(
        "productpage",
        9080,
        "HTTP",
        &[Ep {
            addr: sidecar.inbound,
            labels: &[("app", "productpage"), ("version", "v1")],
        }],
    );
    // The gateway speaks mesh mTLS to productpage with its own workload
    // certificate (ISTIO_MUTUAL), as Istio's ingress gateway does.
    let identity = ca.identity_yaml("istio-ingressgateway-service-account", "1h");
    let extra = format!("  accessLog: {{enabled: true}}\n{identity}");
    let yaml = bootstrap(&[8080], &otlp.endpoint(), &extra)
        + &productpage
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: productpage}\nspec:\n  host: productpage\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"
        + BOOKINFO_GATEWAY;
    let gateway = Gateway::start(&yaml);
    let client = Client::h1(gateway.port(8080));

    let reply = client.get("http://bookinfo.example.com/productpage").await;
    assert_eq!(reply.status, 200, "{:?}", gateway.stderr());
    assert_eq!(reply.upstream(), "productpage");
    // The application saw the request the gateway forwarded, with the
    // trace context of a trace the gateway started.
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.path, "/productpage");
    assert!(seen.headers.contains_key("traceparent"));
    // Plain HTTP at the edge: the gateway sends no XFCC; productpage's
    // sidecar writes its own element for the gateway's certificate.
    let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
    let expected = "^By=spiffe://cluster.local/ns/default/sa/bookinfo-productpage;Hash=[0-9a-f]{64};Subject=\"O=tracemesh\";URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account$";
    assert!(
        regex::Regex::new(expected).unwrap().is_match(xfcc),
        "{xfcc}"
    );
    // Not bound by the gateway's VirtualService: 404 NR at the gateway.
    let missing = client.get("http://bookinfo.example.com/admin").await;
    assert_eq!(missing.status, 404);
    assert_eq!(app.count(), 1);

    let spans = otlp
        .wait_for("the gateway's and the sidecar's spans", |spans| {
            spans.iter().any(|s| s.service == "istio-ingressgateway")
                && spans.iter().any(|s| s.service == "productpage")
        })
        .await;
    let root = spans
        .iter()
        .find(|s| {
            s.service == "istio-ingressgateway"
                && s.attr("url.path").as_deref() == Some("/productpage")
        })
        .expect("the gateway's span");
    assert_eq!(root.parent_id(), "", "the gateway starts the trace");
    assert_eq!(root.span.kind, 2, "SERVER");
    let hop = spans
        .iter()
        .find(|s| s.service == "productpage" && s.span.kind == 2)
        .expect("the sidecar's inbound span");
    assert_eq!(hop.trace_id(), root.trace_id());
    assert_eq!(
        hop.parent_id(),
        root.span_id(),
        "the mesh hop is the gateway's child"
    );

    let metrics = gateway.metrics().await;
    let labels = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("source_app", "istio-ingressgateway"),
        ("destination_service_name", "productpage"),
        ("destination_app", "productpage"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metrics.sum("istio_requests_total", &labels),
        1.0,
        "{}",
        gateway.admin_get("/metrics").await
    );
    let not_routed = [
        ("source_workload", "istio-ingressgateway"),
        ("response_code", "404"),
        ("response_flags", "NR"),
    ];
    assert_eq!(metrics.sum("istio_requests_total", &not_routed), 1.0);
    // The sidecar saw the gateway as its caller.
    let inbound = sidecar.metrics().await;
    let from_gateway = [
        ("reporter", "destination"),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("destination_workload", "productpage-v1"),
        ("connection_security_policy", "mutual_tls"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
        ),
    ];
    assert_eq!(inbound.sum("istio_requests_total", &from_gateway), 1.0);

    let routes = gateway.admin_get("/routes").await;
    assert!(routes.contains("\"http.8080\""), "{routes}");
    let log = gateway.wait_stdout_lines(2);
    assert!(
        log.iter()
            .any(|l| l.contains("/productpage") && l.contains("200")),
        "{log:?}"
    );
}

/// A gateway listening on `ports`, its Secrets in `creds`' directory, and
/// the `bookinfo` service at `app`.
fn bookinfo_behind(ports: &[u16], creds: &Credentials, app: &Upstream) -> String {
    bookinfo_behind_dir(ports, creds.path(), app)
}

/// [`bookinfo_behind`] with the Secrets in `credentials`.
fn bookinfo_behind_dir(ports: &[u16], credentials: &std::path::Path, app: &Upstream) -> String {
    bootstrap(
        ports,
        common::mesh::NO_COLLECTOR,
        &format!("  credentialDirectory: {}", credentials.display()),
    ) + &service_entry(
        "bookinfo",
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[("app", "bookinfo")],
        }],
    )
}

/// The service `db.default.svc.cluster.local` at `database`'s address
/// (port 443, TLS) and the VirtualService `db` that passes the gateway
/// `edge`'s TLS for `db.example.com` through to it.
fn db_passed_through(database: &TlsUpstream) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.default.svc.cluster.local]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {db}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db}}
spec:
  hosts: [db.example.com]
  gateways: [edge]
  tls:
  - match: [{{port: 443, sniHosts: [db.example.com]}}]
    route: [{{destination: {{host: db.default.svc.cluster.local, port: {{number: 443}}}}}}]
"#,
        db = database.addr.port()
    )
}

/// HTTPS on one port: SIMPLE termination for the server whose host the
/// SNI names (ALPN h2 and http/1.1), TLS passed through unopened to a mesh
/// service for the PASSTHROUGH server's SNI; MUTUAL on another port,
/// refusing a client without a certificate; `httpsRedirect` on port 80.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_terminates_by_sni_passes_tls_through_and_redirects_http() {
    let app = Upstream::start("bookinfo").await;
    let database = TlsUpstream::start(&["db.example.com"], false).await;
    let creds = Credentials::issue(
        "istio-system",
        "bookinfo-credential",
        &["bookinfo.example.com"],
    );
    let mut yaml = bookinfo_behind(&[80, 443, 8443], &creds, &app);
    yaml += &db_passed_through(&database);
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [bookinfo.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
  - port: {number: 443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: MUTUAL, credentialName: bookinfo-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{route: [{destination: {host: bookinfo}}]}]
"#;
    let gateway = Gateway::start(&yaml);
    let root = &creds.root_pem;

    // SIMPLE, by SNI, over HTTP/2 and HTTP/1.1 as ALPN chooses.
    let https = gateway.port(443);
    for alpn in [&["h2", "http/1.1"][..], &["http/1.1"]] {
        let reply = tls_get(
            https,
            "bookinfo.example.com",
            root,
            alpn,
            None,
            "/productpage",
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{reply:?} {:?}", gateway.stderr());
        assert_eq!(reply.upstream.as_deref(), Some("bookinfo"));
        assert_eq!(reply.alpn.as_deref(), Some(alpn[0]));
    }
    assert_eq!(app.count(), 2);
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // PASSTHROUGH: the database's own certificate answers (the client
    // trusts only its root), and it saw the client's SNI.
    let db_root = std::fs::read_to_string(&database.root).unwrap();
    let reply = tls_get(https, "db.example.com", &db_root, &["http/1.1"], None, "/")
        .await
        .unwrap();
    assert_eq!(reply.body, "secure hello");
    assert_eq!(
        database.sni.lock().unwrap().as_slice(),
        [Some("db.example.com".to_owned())]
    );
    // An SNI no server answers: the connection is closed.
    assert!(
        tls_get(https, "other.example.com", root, &["http/1.1"], None, "/")
            .await
            .is_err()
    );

    // MUTUAL: a client certificate the credential's CA signed is required.
    let mutual = gateway.port(8443);
    let reply = tls_get(
        mutual,
        "bookinfo.example.com",
        root,
        &["h2"],
        Some(&creds.client),
        "/reviews",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(app.seen().pop().unwrap().path, "/reviews");
    let refused = tls_get(
        mutual,
        "bookinfo.example.com",
        root,
        &["h2"],
        None,
        "/reviews",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(app.count(), 3);

    // httpsRedirect: 301 to the same host and path over https.
    let plain = Client::h1(gateway.port(80));
    let reply = plain
        .get("http://bookinfo.example.com/productpage?u=1")
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("https://bookinfo.example.com/productpage?u=1")
    );
    // A port in the Host stays in the Location, as Envoy's `require_tls`
    // writes `https://<Host><path>` (real Envoy 1.40 answers
    // `https://example.com:8080/p?q=1` for `Host: example.com:8080`).
    let reply = plain
        .get("http://bookinfo.example.com:8080/productpage?u=1")
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("https://bookinfo.example.com:8080/productpage?u=1")
    );
    // `:80` too: `require_tls` keeps the Host as sent (Envoy 1.40 answers
    // `https://shop.example.com:80/p?q=1` for `Host: shop.example.com:80`),
    // where a route's scheme redirect drops the old scheme's port.
    let raw = common::client::raw_exchange(
        gateway.port(80),
        "GET /productpage?u=1 HTTP/1.1\r\nhost: bookinfo.example.com:80\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 301")
            && raw
                .to_ascii_lowercase()
                .contains("location: https://bookinfo.example.com:80/productpage?u=1\r\n"),
        "{raw}"
    );
    assert_eq!(app.count(), 3);

    let metrics = gateway.metrics().await;
    let tcp = [
        ("reporter", "source"),
        ("source_workload", "istio-ingressgateway"),
        ("destination_service", "db.default.svc.cluster.local"),
    ];
    assert_eq!(metrics.sum("istio_tcp_connections_opened_total", &tcp), 1.0);
}

/// The same routing written as a Kubernetes Gateway with an HTTPRoute and
/// as an Istio Gateway with a VirtualService, served by one gateway on two
/// ports: every request reaches the same backend, or gets the same status,
/// on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_httproute_routes_as_the_equivalent_virtual_service() {
    let v1 = Upstream::start("reviews-v1").await;
    let v2 = Upstream::start("reviews-v2").await;
    let mut yaml = bootstrap(&[80, 81], common::mesh::NO_COLLECTOR, "");
    for u in [&v1, &v2] {
        yaml += &service_entry(
            &u.name,
            9080,
            "HTTP",
            &[Ep {
                addr: u.addr,
                labels: &[],
            }],
        );
    }
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop]
  http:
  - match: [{uri: {prefix: /reviews}, headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews-v2}}]
    headers: {request: {set: {x-routed-by: shop}}}
  - match: [{uri: {exact: /reviews}}, {uri: {prefix: /reviews/}}]
    route: [{destination: {host: reviews-v1}}]
    headers: {request: {set: {x-routed-by: shop}}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /reviews, redirectCode: 302}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-api, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 81, protocol: HTTP, hostname: shop.example.com, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: shop-api, namespace: istio-system}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /reviews}, headers: [{name: end-user, value: jason}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed-by, value: shop}]}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /reviews}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed-by, value: shop}]}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /reviews}, statusCode: 302}}]
"#;
    let gateway = Gateway::start(&yaml);
    let istio = Client::h1(gateway.port(80));
    let kubernetes = Client::h1(gateway.port(81));
    // (path, request headers, status, the backend that answers)
    let cases: &[Case] = &[
        ("/reviews", &[], 200, Some("reviews-v1")),
        ("/reviews/1", &[], 200, Some("reviews-v1")),
        (
            "/reviews/1",
            &[("end-user", "jason")],
            200,
            Some("reviews-v2"),
        ),
        ("/reviewsx", &[], 404, None),
        ("/old/page", &[], 302, None),
        ("/ratings", &[], 404, None),
    ];
    for (path, headers, status, backend) in cases {
        for (name, client) in [("VirtualService", &istio), ("HTTPRoute", &kubernetes)] {
            let before = (v1.count(), v2.count());
            let url = format!("http://shop.example.com{path}");
            let reply = client.get_with(&url, headers).await;
            assert_eq!(reply.status, *status, "{name} {path} {headers:?}");
            match backend {
                Some(backend) => {
                    assert_eq!(reply.upstream(), *backend, "{name} {path} {headers:?}");
                    let u = if *backend == "reviews-v1" { &v1 } else { &v2 };
                    assert_eq!(u.seen().pop().unwrap().headers["x-routed-by"], "shop");
                }
                None => assert_eq!((v1.count(), v2.count()), before, "{name} {path}"),
            }
            if *status == 302 {
                let location = reply.header("location").unwrap();
                assert!(location.ends_with("/reviews"), "{name}: {location}");
            }
        }
    }
    // A host no server takes: 404 NR, labelled as a request of no service
    // (`BlackHoleCluster`, `unknown`), never as the gateway's own service
    // (a breaker found it counted as gateway-to-gateway traffic).
    let reply = istio.get("http://unknown.org/x").await;
    assert_eq!(reply.status, 404);
    let metrics = gateway.metrics().await;
    let no_service = [
        ("response_flags", "NR"),
        ("destination_service", "unknown"),
        ("destination_service_name", "BlackHoleCluster"),
    ];
    assert_eq!(
        metrics.sum("istio_requests_total", &no_service),
        1.0,
        "{}",
        metrics.text
    );
    let own = [("destination_service_name", "istio-ingressgateway")];
    assert_eq!(metrics.sum("istio_requests_total", &own), 0.0);
}

/// A request of [`an_httproute_routes_as_the_equivalent_virtual_service`]:
/// path, request headers, the status, the backend that must answer.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, Option<&'a str>);

/// The gateway reloads its file as the agent does: a changed
/// VirtualService routes the next requests, over the connection already
/// open; a broken file is refused and the config in force stays.
/// A Gateway `shop` on port 80 for every host.
const SHOP_GATEWAY: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;

/// A rotated certificate is served without a write to the gateway's file,
/// as Istio's gateways follow a renewed Secret: its files are replaced as
/// a Kubernetes Secret volume replaces them, and the gateway, which watches
/// the files its config names, compiles the config again within its
/// fallback poll (10 s). New connections get the new certificate (a client
/// trusting only the new CA connects; one trusting only the old no longer
/// does). (Before, the old certificate was served until the next write to
/// the config, past its expiry if need be.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_certificate_is_served_without_a_config_write() {
    let app = Upstream::start("bookinfo").await;
    let hosts = ["bookinfo.example.com"];
    let creds = Credentials::issue("istio-system", "bookinfo-credential", &hosts);
    let mut yaml = bookinfo_behind(&[443], &creds, &app);
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{route: [{destination: {host: bookinfo}}]}]
"#;
    let gateway = Gateway::start(&yaml);
    let https = gateway.port(443);
    let get = |root: &str| {
        let root = root.to_owned();
        async move { tls_get(https, hosts[0], &root, &["http/1.1"], None, "/").await }
    };
    assert_eq!(get(&creds.root_pem).await.unwrap().status, 200);

    let renewed = Credentials::issue("istio-system", "bookinfo-credential", &hosts);
    let secret = |c: &Credentials| c.path().join("istio-system/bookinfo-credential");
    for file in ["tls.key", "tls.crt"] {
        let staged = secret(&creds).join(format!(".{file}.new"));
        std::fs::copy(secret(&renewed).join(file), &staged).unwrap();
        std::fs::rename(&staged, secret(&creds).join(file)).unwrap();
    }
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match get(&renewed.root_pem).await {
            Ok(reply) => {
                assert_eq!(reply.status, 200, "{reply:?}");
                break;
            }
            Err(error) => assert!(
                std::time::Instant::now() < give_up,
                "the renewed certificate was never served: {error}; {:?}",
                gateway.stderr()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        get(&creds.root_pem).await.is_err(),
        "the old certificate is still served"
    );
}

/// A VirtualService bound to `shop` that routes everything to `backend`.
fn shop_routed_to(backend: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: shop}}\nspec:\n  hosts: [\"*\"]\n  gateways: [shop]\n  http: [{{route: [{{destination: {{host: {backend}}}}}]}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_reloads_its_file() {
    let v1 = Upstream::start("reviews-v1").await;
    let v2 = Upstream::start("reviews-v2").await;
    let mut base = bootstrap(&[80], common::mesh::NO_COLLECTOR, "");
    for u in [&v1, &v2] {
        base += &service_entry(
            &u.name,
            9080,
            "HTTP",
            &[Ep {
                addr: u.addr,
                labels: &[],
            }],
        );
    }
    base += SHOP_GATEWAY;
    let routed_to = shop_routed_to;
    let gateway = Gateway::start(&(base.clone() + &routed_to("reviews-v1")));
    let client = Client::h1(gateway.port(80));
    assert_eq!(client.get("http://shop/").await.upstream(), "reviews-v1");

    std::fs::write(&gateway.config, base.clone() + &routed_to("reviews-v2")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if client.get("http://shop/").await.upstream() == "reviews-v2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            gateway.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    std::fs::write(
        &gateway.config,
        base + "---\nkind: VirtualService\nspec: [\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !gateway
        .stderr()
        .iter()
        .any(|l| l.contains("config rejected"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            gateway.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(client.get("http://shop/").await.upstream(), "reviews-v2");
}

/// AuthorizationPolicies selecting the gateway workload guard the gateway
/// itself, as Istio's do at its ingress gateway: a DENY rule on a path
/// answers 403 at the edge naming the policy, `ports` match the Gateway
/// port, and other requests pass into the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_policies_selecting_the_gateway_guard_the_edge() {
    let app = Upstream::start("reviews-v1").await;
    let mut yaml = bootstrap(&[80, 81], common::mesh::NO_COLLECTOR, "");
    yaml += &service_entry(
        &app.name,
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    );
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 81, name: http-internal, protocol: HTTP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [shop]
  http: [{route: [{destination: {host: reviews-v1.default.svc.cluster.local}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - to: [{operation: {ports: ["81"], notPaths: ["/health"]}}]
"#;
    let gateway = Gateway::start(&yaml);
    let public = Client::h1(gateway.port(80));
    let internal = Client::h1(gateway.port(81));

    let ok = public.get("http://shop/products").await;
    assert_eq!(ok.status, 200, "{:?}", gateway.stderr());
    assert_eq!(ok.upstream(), "reviews-v1");

    let denied = public.get("http://shop/admin/users").await;
    assert_eq!(denied.status, 403);
    assert_eq!(&denied.body[..], b"RBAC: access denied");
    assert_eq!(denied.upstream(), "");
    let details = denied
        .header("x-tracemesh-response-code-details")
        .unwrap_or_default();
    assert!(
        details.contains("ns[istio-system]-policy[edge]-rule[0]"),
        "{details}"
    );

    // The second rule names the Gateway port, not the socket's own port.
    assert_eq!(internal.get("http://shop/products").await.status, 403);
    let health = internal.get("http://shop/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.upstream(), "reviews-v1");
}

/// A Gateway document that does not compile: the gateway refuses the file
/// and `tracemesh validate` flags it, each saying only the Gateway's own
/// error — not that no Gateway selects the gateway, which the rejected
/// document may well do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_gateway_is_reported_by_its_own_error_alone() {
    let bad_gateway = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: http, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    let yaml = bootstrap(&[8080], common::mesh::NO_COLLECTOR, "") + bad_gateway;
    let refused = Gateway::try_start(&yaml)
        .err()
        .expect("the file is refused");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let validated = std::process::Command::new(common::agent::binary())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(validated.status.code(), Some(1));
    let validated = String::from_utf8_lossy(&validated.stdout).into_owned()
        + &String::from_utf8_lossy(&validated.stderr);
    for said in [&refused, &validated] {
        assert!(said.contains("(Gateway default/edge, line "), "{said}");
        assert!(said.contains(": spec.servers[0].port.number: "), "{said}");
        assert!(!said.contains("no Gateway selects"), "{said}");
        assert!(!said.contains("warning"), "{said}");
    }
}

/// A Gateway port whose address another process holds: the gateway does
/// not start, and says which Gateway's port could not listen where.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_in_use_names_the_gateway_its_port_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let yaml = bootstrap(&[8080], common::mesh::NO_COLLECTOR, "").replace(
        "{port: 8080, listen: \"127.0.0.1:0\"}",
        &format!("{{port: 8080, listen: \"{address}\"}}"),
    ) + BOOKINFO_GATEWAY;
    let refused = Gateway::try_start(&yaml).err().expect("the port is taken");
    for named in [
        "Gateway default/bookinfo-gateway",
        "port 8080",
        &address.to_string(),
        "in use",
    ] {
        assert!(refused.contains(named), "{named:?} in {refused}");
    }
    drop(taken);
}

/// The IngressGateway's `downstream` times its clients as the Agent's
/// does: a kept-alive connection with no request is closed at
/// `idleTimeout`, and an upload that stops is answered 408 at
/// `streamIdleTimeout` (with the defaults, 1h and 5m, neither comes
/// within the test's wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_times_its_clients_as_its_downstream_says() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start("app").await;
    let config = bootstrap(
        &[80],
        common::mesh::NO_COLLECTOR,
        "  downstream: {idleTimeout: 1s, streamIdleTimeout: 1s}",
    ) + &service_entry(
        "app",
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    ) + SHOP_GATEWAY
        + &shop_routed_to("app");
    let gateway = Gateway::start(&config);
    // Everything the gateway sends on `stream` until it closes it (the
    // test's wait is 20 s, against the 1 s configured).
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
        let mut seen = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stream.read_to_end(&mut seen),
        )
        .await;
        assert!(
            read.is_ok(),
            "still open after 20 s: {}",
            String::from_utf8_lossy(&seen)
        );
        String::from_utf8_lossy(&seen).into_owned()
    }

    let mut idle = tokio::net::TcpStream::connect(gateway.port(80))
        .await
        .unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut idle).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");

    let mut stalled = tokio::net::TcpStream::connect(gateway.port(80))
        .await
        .unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nhost: shop\r\ncontent-length: 10\r\n\r\nab")
        .await
        .unwrap();
    let seen = until_closed(&mut stalled).await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
}

/// A request entering the mesh loses what only the mesh may set, as
/// Envoy cleans a request at Istio's gateway (every client is external
/// there): the retry and timeout controls a sidecar further in obeys, the
/// address and internal marks, the original path and URL, the client's own
/// `x-request-id`; and it gains `x-envoy-external-address`, the client's
/// address. The gateway passed them all through as the client sent them.
/// With `numTrustedProxies: 1`, the address is the one the proxy in front
/// names, and its `x-forwarded-proto: https` is kept, so `httpsRedirect`
/// serves a request that proxy received over TLS instead of sending it
/// round again (it redirected it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_cleans_what_only_the_mesh_sets_and_trusts_only_its_proxies() {
    let app = Upstream::start("reviews-v1").await;
    let app_entry = service_entry(
        &app.name,
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    );
    let forged = [
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "7"),
        ("x-envoy-upstream-rq-timeout-ms", "1"),
        ("x-envoy-internal", "true"),
        ("x-envoy-external-address", "9.9.9.9"),
        ("x-envoy-original-url", "http://evil/"),
        ("x-envoy-original-path", "/evil"),
        ("x-envoy-force-trace", "true"),
        ("x-envoy-upstream-stream-duration-ms", "1"),
        ("x-request-id", "my-own-id"),
    ];
    let gateway = Gateway::start(
        &(bootstrap(&[80], common::mesh::NO_COLLECTOR, "")
            + &app_entry
            + SHOP_GATEWAY
            + &shop_routed_to("reviews-v1")),
    );
    let reply = Client::h1(gateway.port(80))
        .get_with("http://shop/a", &forged)
        .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    for (name, _) in &forged[..9] {
        if *name != "x-envoy-external-address" {
            assert!(seen.headers.get(*name).is_none(), "{name} reached the app");
        }
    }
    assert_eq!(seen.headers["x-envoy-external-address"], "127.0.0.1");
    let id = seen.headers["x-request-id"].to_str().unwrap();
    assert!(id != "my-own-id" && id.len() == 36, "x-request-id: {id}");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");

    // Behind one trusted proxy that ended TLS.
    let redirecting = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"], tls: {httpsRedirect: true}}]
"#;
    let gateway = Gateway::start(
        &(bootstrap(&[80], common::mesh::NO_COLLECTOR, "  numTrustedProxies: 1")
            + &app_entry
            + redirecting
            + &shop_routed_to("reviews-v1")),
    );
    let client = Client::h1(gateway.port(80));
    let behind = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let reply = client.get_with("http://shop/p", &behind).await;
    assert_eq!(reply.status, 200, "{:?}", reply.header("location"));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-envoy-external-address"], "203.0.113.7");
    // What the proxy received over plain http is still redirected.
    let reply = client
        .get_with(
            "http://shop/p",
            &[
                ("x-forwarded-proto", "http"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location").as_deref(), Some("https://shop/p"));
}

/// Two Gateways serving one host on one port both route, as Istio merges
/// their virtual hosts (one Gateway per app, each `hosts: ["*"]` on port
/// 80, as Istio's samples have it): the second app answered 404. And the
/// routes merged into one host put catch-alls last, as Istio's
/// `SortVHostRoutes`: an older VirtualService's default route no longer
/// hides a newer one's paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_sharing_a_port_and_host_both_route_and_catch_alls_go_last() {
    let backends = [
        Upstream::start("be1").await,
        Upstream::start("be2").await,
        Upstream::start("be3").await,
    ];
    let mut yaml = bootstrap(&[80], common::mesh::NO_COLLECTOR, "");
    for u in &backends {
        yaml += &service_entry(
            &u.name,
            9080,
            "HTTP",
            &[Ep {
                addr: u.addr,
                labels: &[],
            }],
        );
    }
    for gateway in ["bookinfo-gateway", "shop-gateway"] {
        yaml += &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {gateway}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: [\"*\"]}}]\n"
        );
    }
    let service = |name: &str, created: &str, gateway: &str, rule: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [\"*\"]\n  gateways: [{gateway}]\n  http: [{rule}]\n"
        )
    };
    yaml += &service(
        "bookinfo",
        "2024-05-01T10:00:00Z",
        "bookinfo-gateway",
        "{match: [{uri: {prefix: /bookinfo}}], route: [{destination: {host: be1}}]}",
    );
    yaml += &service(
        "shop-old",
        "2024-05-01T10:00:01Z",
        "shop-gateway",
        "{route: [{destination: {host: be2}}]}",
    );
    yaml += &service(
        "shop-new",
        "2024-05-01T10:00:02Z",
        "shop-gateway",
        "{match: [{uri: {prefix: /special}}, {uri: {prefix: /}}], route: [{destination: {host: be3}}]}",
    );
    let gateway = Gateway::start(&yaml);
    let client = Client::h1(gateway.port(80));
    for (path, backend) in [
        ("/bookinfo/x", "be1"),
        ("/special/y", "be3"),
        ("/other", "be2"),
    ] {
        let reply = client.get(&format!("http://shop.example.com{path}")).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.upstream(), backend, "{path}");
    }
}

/// A gateway behind one trusted proxy hashes `useSourceIp` by the client
/// that proxy names in `x-forwarded-for`, as Envoy hashes the downstream
/// remote address it reads before its filters run. The gateway read the
/// address after appending its own caller to the header, so every client
/// hashed as the proxy in front and all of them landed on one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_hashes_the_client_its_trusted_proxy_names() {
    let backends = [
        Upstream::start("shop-1").await,
        Upstream::start("shop-2").await,
        Upstream::start("shop-3").await,
    ];
    let endpoints: Vec<Ep> = backends
        .iter()
        .map(|b| Ep {
            addr: b.addr,
            labels: &[],
        })
        .collect();
    let hashing = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop, namespace: default}
spec:
  host: shop.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
"#;
    let gateway = Gateway::start(
        &(bootstrap(&[80], common::mesh::NO_COLLECTOR, "  numTrustedProxies: 1")
            + &service_entry("shop", 9080, "HTTP", &endpoints)
            + hashing
            + SHOP_GATEWAY
            + &shop_routed_to("shop")),
    );
    let homes = Client::h1(gateway.port(80))
        .homes_by_forwarded_for("http://shop/")
        .await;
    assert!(
        homes.len() >= 2,
        "16 clients should spread over the endpoints: {homes:?}"
    );
}

/// `x-forwarded-client-cert` at the edge, as Istio's gateway connection
/// manager sets it (`buildGatewayConnectionManager`: SANITIZE_SET with
/// Subject, Cert, DNS and URI unless `gatewayTopology
/// .forwardClientCertDetails` says otherwise) and Envoy writes it: through
/// a MUTUAL server the backend sees the external client's certificate in
/// place of whatever the client sent (no `By`: the credential's
/// certificate has no URI SAN); over plain HTTP nothing. With
/// `forwardClientCertDetails: APPEND_FORWARD` the client's own header is
/// kept and the element follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutual_gateway_forwards_the_client_certificate_as_istio_does() {
    let app = Upstream::start("bookinfo").await;
    let creds = Credentials::issue(
        "istio-system",
        "bookinfo-credential",
        &["bookinfo.example.com"],
    );
    let leaf = creds.path().join("client.pem");
    std::fs::write(&leaf, &creds.client.0).unwrap();
    let client_element = format!(
        "{};URI=spiffe://example.com/ns/clients/sa/client",
        common::pki::xfcc_of(&leaf, true)
    );
    let resources = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [bookinfo.example.com]
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: MUTUAL, credentialName: bookinfo-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{route: [{destination: {host: bookinfo}}]}]
"#;
    let forged = "Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin";
    let xfcc_seen = |app: &Upstream| app.last_header("x-forwarded-client-cert");
    let send = |gateway: &Gateway, alpn: &'static [&'static str]| {
        let (addr, root) = (gateway.port(8443), creds.root_pem.clone());
        let client = creds.client.clone();
        async move {
            let headers = [("x-forwarded-client-cert", forged)];
            let sni = "bookinfo.example.com";
            tls_get_with(addr, sni, &root, alpn, Some(&client), "/", &headers).await
        }
    };

    let gateway = Gateway::start(&(bookinfo_behind(&[80, 8443], &creds, &app) + resources));
    for alpn in [&["h2"][..], &["http/1.1"]] {
        let reply = send(&gateway, alpn).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            xfcc_seen(&app).as_deref(),
            Some(client_element.as_str()),
            "{alpn:?}"
        );
    }
    let plain = Client::h1(gateway.port(80));
    let reply = plain
        .get_with(
            "http://bookinfo.example.com/",
            &[("x-forwarded-client-cert", forged)],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        xfcc_seen(&app),
        None,
        "plain HTTP carries no client certificate"
    );
    drop(gateway);

    let extra = format!(
        "  credentialDirectory: {}\n  forwardClientCertDetails: APPEND_FORWARD",
        creds.path().display()
    );
    let yaml = bootstrap(&[80, 8443], common::mesh::NO_COLLECTOR, &extra)
        + &service_entry(
            "bookinfo",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[("app", "bookinfo")],
            }],
        )
        + resources;
    let gateway = Gateway::start(&yaml);
    let reply = send(&gateway, &["h2"]).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(xfcc_seen(&app), Some(format!("{forged},{client_element}")));
}

/// A server with two certificates, an RSA and an ECDSA one
/// (`tlsCertificates`, `credentialNames`): as Envoy 1.40 selects among a
/// listener's certificates, a client that verifies ECDSA gets the ECDSA
/// one whatever the order, a client that verifies RSA only gets the RSA
/// one (both answered so by Envoy with the RSA certificate listed first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_with_two_certificates_answers_each_client_with_one_it_verifies() {
    let app = Upstream::start("bookinfo").await;
    let ca = OpensslCa::new();
    let (rsa_crt, rsa_key) = ca.issue_rsa("rsa", "DNS:bookinfo.example.com");
    let (ec_crt, ec_key) = ca.issue("ecdsa", "DNS:bookinfo.example.com");
    let credentials = tempfile::tempdir().unwrap();
    for (name, crt, key) in [("rsa", &rsa_crt, &rsa_key), ("ecdsa", &ec_crt, &ec_key)] {
        let secret = credentials.path().join("istio-system").join(name);
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::copy(crt, secret.join("tls.crt")).unwrap();
        std::fs::copy(key, secret.join("tls.key")).unwrap();
    }
    let yaml = bookinfo_behind_dir(&[9443, 9444], credentials.path(), &app)
        + &format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: https-files, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls:
      mode: SIMPLE
      tlsCertificates:
      - {{serverCertificate: "{}", privateKey: "{}"}}
      - {{serverCertificate: "{}", privateKey: "{}"}}
  - port: {{number: 9444, name: https-secrets, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {{mode: SIMPLE, credentialNames: [rsa, ecdsa]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: bookinfo}}}}]}}]
"#,
            rsa_crt.display(),
            rsa_key.display(),
            ec_crt.display(),
            ec_key.display()
        );
    let gateway = Gateway::start(&yaml);
    let served = |port: u16, sigalgs: Option<&str>| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect"])
            .arg(gateway.port(port).to_string())
            .args(["-servername", "bookinfo.example.com"]);
        if let Some(sigalgs) = sigalgs {
            cmd.args(["-sigalgs", sigalgs]);
        }
        let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let subject = text.lines().find(|l| l.starts_with("subject="));
        subject.unwrap_or("none").to_owned()
    };
    for port in [9443, 9444] {
        assert_eq!(served(port, None), "subject=O = test, CN = ecdsa", "{port}");
        assert_eq!(
            served(port, Some("RSA-PSS+SHA256:RSA+SHA256")),
            "subject=O = test, CN = rsa",
            "{port}"
        );
    }
    // Requests go through over either.
    let reply = tls_get(
        gateway.port(9444),
        "bookinfo.example.com",
        &ca.root_pem(),
        &["http/1.1"],
        None,
        "/two",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
}

/// An ISTIO_MUTUAL server's `subjectAltNames`, which istiod renders
/// into the workload certificate's validation context: a mesh peer under
/// another identity is refused (Envoy 1.40 refused it; it was let in).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_istio_mutual_server_takes_only_the_peers_it_names() {
    let ca = Ca::start();
    let app = Upstream::start("app").await;
    let identity = ca.identity_yaml("istio-ingressgateway-service-account", "1h");
    let yaml = bootstrap(&[15443], common::mesh::NO_COLLECTOR, &identity)
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[("app", "app")],
            }],
        )
        + r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mesh-edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: https-mesh, protocol: HTTPS}
    hosts: [app.example.com]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/allowed"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: [app.example.com]
  gateways: [mesh-edge]
  http: [{route: [{destination: {host: app}}]}]
"#;
    let gateway = Gateway::start(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let mut answers = Vec::new();
    for account in ["allowed", "other"] {
        let out = dir.path().join(account);
        ca.issue(
            &format!("spiffe://cluster.local/ns/default/sa/{account}"),
            &out,
        );
        let (cert, key) = (out.join("cert-chain.pem"), out.join("key.pem"));
        let answer = openssl_request_to(
            gateway.port(15443),
            Some("app.example.com"),
            Some((&cert, &key)),
            "GET /named HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
        );
        answers.push((account, answer.starts_with("HTTP/1.1 200")));
    }
    assert_eq!(
        answers,
        [("allowed", true), ("other", false)],
        "{:?}",
        gateway.stderr()
    );
    assert_eq!(app.count(), 1);
    let failed = gateway.metrics().await.sum(
        "tracemesh_agent_tls_handshake_failures_total",
        &[("reason", "wrong_san")],
    );
    assert_eq!(failed, 1.0);
}

/// A MUTUAL server's `subjectAltNames`, `verifyCertificateSpki`,
/// `verifyCertificateHash` and `caCrl` (and a Secret's `ca.crl`), every
/// input made by `openssl` alone, each case what Envoy 1.40 answers with
/// the validation context Istio renders for it (`match_subject_alt_names`
/// exact, the two pin lists, `crl`): a DNS name matches a wildcard SAN;
/// any pin makes OPTIONAL_MUTUAL require a certificate, a CRL alone does
/// not; a revoked certificate is refused — by the newest of an issuer's
/// lists in one file, by a list in the Secret `<name>-cacert` before one
/// beside `<name>`, through the bundle's intermediates, each checked
/// against its issuer's list — and every certificate when the list is past
/// its nextUpdate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutual_server_checks_client_names_pins_and_revocations_as_envoy_does() {
    let app = Upstream::start("bookinfo").await;
    let ca = OpensslCa::new();
    let (server_crt, server_key) = ca.issue("server", "DNS:bookinfo.example.com");
    for (name, san) in [
        ("alice", "DNS:*.clients.example.com"),
        ("carol", "URI:spiffe://clients/carol"),
        ("bob", "email:bob@example.com"),
        ("dave", "DNS:dave.example.com"),
        ("mallory", "DNS:alice.clients.example.com"),
    ] {
        ca.issue(name, san);
    }
    // A list from before mallory was revoked, then the current one, in
    // one file: the newest of an issuer's lists counts, as in Envoy.
    let old = ca.crl("old.crl", Some((&utc(-2), &utc(22))));
    ca.revoke("mallory");
    // Chains through the bundle's intermediates: `interb` revoked by the
    // root, `inter` not; each has a list of its own.
    let inter = ca.intermediate("inter");
    let inter_b = ca.intermediate("interb");
    inter.issue("igood", "DNS:igood.example.com");
    inter_b.issue("bgood", "DNS:bgood.example.com");
    ca.revoke("interb");
    let crl = ca.crl("ca.crl", None);
    let expired = ca.crl("expired.crl", Some(("20200101000000Z", "20200102000000Z")));
    let cat = |name: &str, parts: &[&std::path::Path]| {
        let text: String = parts
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let path = ca.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let old_then_new = cat("old-then-new.crl", &[&old, &crl]);
    let bundle = cat(
        "bundle.pem",
        &[
            &ca.dir.join("ca.crt"),
            &inter.dir.join("ca.crt"),
            &inter_b.dir.join("ca.crt"),
        ],
    );
    let chain_crls = cat(
        "chain.crl",
        &[
            &crl,
            &inter.crl("ca.crl", None),
            &inter_b.crl("ca.crl", None),
        ],
    );
    // The same CA, server pair and list as Secrets: `pinned` (with a CA
    // and no list) and `pinned-cacert` (the CA with its `ca.crl`), which
    // Istio's `GetCaCert` reads the client CA from first.
    let credentials = tempfile::tempdir().unwrap();
    let secret = credentials.path().join("istio-system").join("pinned");
    let ca_secret = credentials
        .path()
        .join("istio-system")
        .join("pinned-cacert");
    for (from, to) in [
        (&server_crt, secret.join("tls.crt")),
        (&server_key, secret.join("tls.key")),
        (&ca.dir.join("ca.crt"), secret.join("ca.crt")),
        (&ca.dir.join("ca.crt"), ca_secret.join("ca.crt")),
        (&crl, ca_secret.join("ca.crl")),
    ] {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    let files_with = |bundle: &std::path::Path, crl: &std::path::Path| {
        format!(
            "serverCertificate: {}, privateKey: {}, caCertificates: {}, caCrl: {}",
            server_crt.display(),
            server_key.display(),
            bundle.display(),
            crl.display()
        )
    };
    let files = |crl: &std::path::Path| files_with(&ca.dir.join("ca.crt"), crl);
    let mut yaml = bookinfo_behind_dir(&[8443, 8444, 8445, 8446, 8447], credentials.path(), &app);
    yaml += &format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https-names, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {{mode: MUTUAL, {names_files}, subjectAltNames: [alice.clients.example.com, "spiffe://clients/carol", bob@example.com]}}
  - port: {{number: 8444, name: https-pins, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls:
      mode: OPTIONAL_MUTUAL
      credentialName: pinned
      verifyCertificateSpki: ["{alice_spki}"]
      verifyCertificateHash: ["{carol_hash}"]
  - port: {{number: 8445, name: https-crl, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {{mode: OPTIONAL_MUTUAL, credentialName: pinned}}
  - port: {{number: 8446, name: https-expired, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {{mode: MUTUAL, {expired_files}}}
  - port: {{number: 8447, name: https-chain, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {{mode: MUTUAL, {chain_files}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: bookinfo}}}}]}}]
"#,
        names_files = files(&old_then_new),
        alice_spki = ca.spki_pin("alice"),
        carol_hash = ca.cert_hash("carol"),
        expired_files = files(&expired),
        chain_files = files_with(&bundle, &chain_crls),
    );
    let gateway = Gateway::start(&yaml);
    let root = ca.root_pem();
    let mut answered = Vec::new();
    for port in [8443, 8444, 8445, 8446] {
        for client in ["none", "alice", "carol", "bob", "dave", "mallory"] {
            let pair = (client != "none").then(|| ca.pair(client));
            let reply = tls_get(
                gateway.port(port),
                "bookinfo.example.com",
                &root,
                &["http/1.1"],
                pair.as_ref(),
                "/productpage",
            )
            .await;
            answered.push(format!(
                "{port} {client} {}",
                reply.map_or("refused".to_owned(), |r| r.status.to_string())
            ));
        }
    }
    // Envoy 1.40's answers, curl with each client certificate against
    // the equivalent listeners.
    let envoy = [
        "8443 none refused",
        "8443 alice 200",
        "8443 carol 200",
        "8443 bob 200",
        "8443 dave refused",
        "8443 mallory refused",
        "8444 none refused",
        "8444 alice 200",
        "8444 carol 200",
        "8444 bob refused",
        "8444 dave refused",
        "8444 mallory refused",
        "8445 none 200",
        "8445 alice 200",
        "8445 carol 200",
        "8445 bob 200",
        "8445 dave 200",
        "8445 mallory refused",
        "8446 none refused",
        "8446 alice refused",
        "8446 carol refused",
        "8446 bob refused",
        "8446 dave refused",
        "8446 mallory refused",
    ];
    assert_eq!(answered, envoy, "{:?}", gateway.stderr());
    assert_eq!(app.count(), 10);
    // Through the bundle's intermediates, every CA checked against its
    // issuer's list (Envoy 1.40: `igood` sending its leaf alone 200,
    // `bgood` under the revoked `interb` refused).
    let igood = tls_get(
        gateway.port(8447),
        "bookinfo.example.com",
        &root,
        &["http/1.1"],
        Some(&inter.pair("igood")),
        "/chain",
    )
    .await;
    assert_eq!(igood.map(|r| r.status), Ok(200), "{:?}", gateway.stderr());
    let bgood = tls_get(
        gateway.port(8447),
        "bookinfo.example.com",
        &root,
        &["http/1.1"],
        Some(&inter_b.pair("bgood")),
        "/chain",
    )
    .await;
    assert!(bgood.is_err(), "{bgood:?}");

    // A pin that is no SHA-256 digest (a sign before its hex digits
    // included) is an error naming it.
    let bad = yaml
        .replace(&ca.spki_pin("alice"), "bm90IGEgZGlnZXN0")
        .replace(
            &ca.cert_hash("carol"),
            &format!("+{}", &ca.cert_hash("carol")[1..]),
        );
    let (ok, out) = common::agent::validate(&bad);
    assert!(!ok, "{out}");
    for field in [
        "spec.servers[1].tls.verifyCertificateSpki[0]",
        "spec.servers[1].tls.verifyCertificateHash[0]",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
}

/// AUTO_PASSTHROUGH relays a mesh peer's mTLS to the service its SNI names
/// (`outbound_.<port>_._.<host>`), as Istio renders it: only for services
/// of the mesh the server's `hosts` cover (a wildcard or an exact host),
/// only to endpoints that end mesh mTLS (a sidecar's: Istio's
/// `EndpointsWithMTLSFilter`), and only for a client offering Istio's ALPN.
/// A MESH_EXTERNAL service, a service outside the server's hosts, one
/// without a sidecar and a client without Istio's ALPN are closed: the
/// gateway relayed every one of them, making it an open TLS relay to every
/// service it knew; and an exact host relayed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_passthrough_relays_mesh_mtls_to_the_mesh_services_it_covers() {
    let sni = |host: &str| format!("outbound_.443_._.{host}");
    let start = async |host: &str| TlsUpstream::start(&[&sni(host)], false).await;
    let db = start("db.default.svc.cluster.local").await;
    let solo = start("solo.other.svc.cluster.local").await;
    let api = start("api.default.svc.cluster.local").await;
    let pay = start("pay.example.com").await;
    let bare = start("bare.default.svc.cluster.local").await;
    let entry = |host: &str, location: &str, sidecar: bool, upstream: &TlsUpstream| {
        let labels = if sidecar {
            ", labels: {security.istio.io/tlsMode: istio}"
        } else {
            ""
        };
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {}, namespace: default}}\nspec:\n  hosts: [{host}]\n  location: {location}\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}{labels}}}]\n",
            host.split('.').next().unwrap(),
            upstream.addr.port()
        )
    };
    let yaml = bootstrap(&[15443], common::mesh::NO_COLLECTOR, "")
        + &entry("db.default.svc.cluster.local", "MESH_INTERNAL", true, &db)
        + &entry("solo.other.svc.cluster.local", "MESH_INTERNAL", true, &solo)
        + &entry("api.default.svc.cluster.local", "MESH_EXTERNAL", true, &api)
        + &entry("pay.example.com", "MESH_INTERNAL", true, &pay)
        + &entry(
            "bare.default.svc.cluster.local",
            "MESH_INTERNAL",
            false,
            &bare,
        )
        + r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.default.svc.cluster.local", solo.other.svc.cluster.local]
    tls: {mode: AUTO_PASSTHROUGH}
"#;
    let gateway = Gateway::start(&yaml);
    let port = gateway.port(15443);
    let root = |u: &TlsUpstream| std::fs::read_to_string(&u.root).unwrap();
    let mesh_alpn = ["istio-peer-exchange", "istio"];
    // Mesh services the server covers, by a wildcard and by an exact host,
    // with Istio's ALPN: relayed.
    for (host, upstream) in [
        ("db.default.svc.cluster.local", &db),
        ("solo.other.svc.cluster.local", &solo),
    ] {
        let reply = tls_get(port, &sni(host), &root(upstream), &mesh_alpn, None, "/")
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(reply.body, "secure hello");
    }
    // The same without Istio's ALPN, or with a name that only looks like it: closed.
    for alpn in [&["h2"][..], &["istio-evil"]] {
        let plain = tls_get(
            port,
            &sni("db.default.svc.cluster.local"),
            &root(&db),
            alpn,
            None,
            "/",
        )
        .await;
        assert!(plain.is_err(), "{alpn:?}: {plain:?}");
    }
    assert_eq!(db.sni.lock().unwrap().len(), 1);
    // MESH_EXTERNAL, outside the server's hosts, no sidecar: closed.
    for (host, upstream) in [
        ("api.default.svc.cluster.local", &api),
        ("pay.example.com", &pay),
        ("bare.default.svc.cluster.local", &bare),
    ] {
        let out = tls_get(port, &sni(host), &root(upstream), &mesh_alpn, None, "/").await;
        assert!(out.is_err(), "{host}: {out:?}");
        assert!(
            upstream.sni.lock().unwrap().is_empty(),
            "{host} was reached"
        );
    }
}

/// `tls` without a `mode` is PASSTHROUGH, the field's zero value as Istio
/// reads it; and `httpsRedirect` on an HTTPS server redirects nothing
/// that came over TLS, as Envoy's `require_tls: ALL` (Istio's rendering)
/// redirects only requests that did not. The mode-less server was refused,
/// and the redirect answered every HTTPS request with a 301 to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mode_less_tls_server_passes_through_and_https_is_not_redirected_to_itself() {
    let app = Upstream::start("bookinfo").await;
    let database = TlsUpstream::start(&["db.example.com"], false).await;
    let creds = Credentials::issue(
        "istio-system",
        "bookinfo-credential",
        &["bookinfo.example.com"],
    );
    let mut yaml = bookinfo_behind(&[443], &creds, &app);
    yaml += &db_passed_through(&database);
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential, httpsRedirect: true}
  - port: {number: 443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [edge]
  http: [{route: [{destination: {host: bookinfo}}]}]
"#;
    let gateway = Gateway::start(&yaml);
    let https = gateway.port(443);
    let reply = tls_get(
        https,
        "bookinfo.example.com",
        &creds.root_pem,
        &["http/1.1"],
        None,
        "/productpage",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream.as_deref(), Some("bookinfo"));
    let db_root = std::fs::read_to_string(&database.root).unwrap();
    let reply = tls_get(https, "db.example.com", &db_root, &["http/1.1"], None, "/")
        .await
        .unwrap();
    assert_eq!(reply.body, "secure hello");
}

/// The gateway appends its client to `x-forwarded-for` as Envoy's
/// `appendXff` writes it (`,` between entries, no space), and its access
/// log line shows the header as forwarded, as Envoy's connection manager
/// appends before anything logs it. The line showed the header as it came,
/// and the app got `, ` between entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x_forwarded_for_is_appended_as_envoy_writes_it_and_logged_so() {
    let app = Upstream::start("reviews-v1").await;
    let app_entry = service_entry(
        &app.name,
        9080,
        "HTTP",
        &[Ep {
            addr: app.addr,
            labels: &[],
        }],
    );
    let gateway = Gateway::start(
        &(bootstrap(
            &[80],
            common::mesh::NO_COLLECTOR,
            "  accessLog: {enabled: true}",
        ) + &app_entry
            + SHOP_GATEWAY
            + &shop_routed_to("reviews-v1")),
    );
    let client = Client::h1(gateway.port(80));
    let reply = client
        .get_with("http://shop/xff", &[("x-forwarded-for", "203.0.113.7")])
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        app.seen().pop().unwrap().headers["x-forwarded-for"],
        "203.0.113.7,127.0.0.1"
    );
    let log = gateway.wait_stdout_lines(1);
    let line: serde_json::Value = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|e: &serde_json::Value| e["path"] == "/xff")
        .unwrap_or_else(|| panic!("no line for /xff: {log:?}"));
    assert_eq!(line["x_forwarded_for"], "203.0.113.7,127.0.0.1", "{line}");
}

/// A PASSTHROUGH server's chain answers the names its routes' `sniHosts`
/// give, as Istio renders it, not its own hosts: with hosts `*`, a route
/// for `db.example.com` takes that name from another server's
/// `*.example.com` (an exact name beats a wildcard). The wildcard server
/// terminated the database's clients with its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passthrough_route_takes_its_exact_name_from_a_wildcard_server() {
    let app = Upstream::start("bookinfo").await;
    let database = TlsUpstream::start(&["db.example.com"], false).await;
    let creds = Credentials::issue("istio-system", "wildcard-credential", &["*.example.com"]);
    let mut yaml = bookinfo_behind(&[443], &creds, &app);
    yaml += &db_passed_through(&database);
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: wildcard-credential}
  - port: {number: 443, name: tls-any, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: www}
spec:
  hosts: ["*.example.com"]
  gateways: [edge]
  http: [{route: [{destination: {host: bookinfo}}]}]
"#;
    let gateway = Gateway::start(&yaml);
    let https = gateway.port(443);
    let db_root = std::fs::read_to_string(&database.root).unwrap();
    let reply = tls_get(https, "db.example.com", &db_root, &["http/1.1"], None, "/")
        .await
        .unwrap();
    assert_eq!(reply.body, "secure hello");
    // A ClientHello fragmented over records (as TLS allows) is read whole:
    // its SNI still picks the passthrough route, not the terminating chain.
    for fragment in [40, 7] {
        let split = split_hello_relay(https, fragment).await;
        let reply = tls_get(split, "db.example.com", &db_root, &["http/1.1"], None, "/")
            .await
            .unwrap_or_else(|e| panic!("hello in records of {fragment} bytes: {e}"));
        assert_eq!(reply.body, "secure hello", "records of {fragment} bytes");
    }
    let reply = tls_get(
        https,
        "www.example.com",
        &creds.root_pem,
        &["http/1.1"],
        None,
        "/productpage",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream.as_deref(), Some("bookinfo"));
}

/// A TCP server takes the `tcp` routes of the VirtualServices whose hosts
/// it covers, from the namespaces its hosts admit, as Istio's
/// `pickMatchingGatewayHosts` keeps them: a VirtualService bound to the
/// gateway for another host, or from a namespace the server does not
/// admit, takes none of its connections; among those it takes, Istio's
/// order decides (creation time, then name and namespace). The first
/// bound VirtualService's rule took every connection, whatever its hosts,
/// and the file's order decided between equals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_server_takes_only_the_routes_of_the_hosts_it_serves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = common::upstream::canned_server(b"db").await;
    let other = common::upstream::canned_server(b"other").await;
    let intruder = common::upstream::canned_server(b"intruder").await;
    let late = common::upstream::canned_server(b"late").await;
    let mut yaml = bootstrap(&[31400], common::mesh::NO_COLLECTOR, "");
    let backends = [
        ("db", db),
        ("other", other),
        ("intruder", intruder),
        ("late", late),
    ];
    for (name, addr) in backends {
        yaml += &service_entry(name, 5432, "TCP", &[Ep { addr, labels: &[] }]);
    }
    let route = |service: &str, name: &str, namespace: &str, host: &str, gateway: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{host}]\n  gateways: [{gateway}]\n  tcp: [{{route: [{{destination: {{host: {service}.default.svc.cluster.local, port: {{number: 5432}}}}}}]}}]\n"
        )
    };
    // Istio's order (no creation times: by name, then namespace), not the
    // file's: `c-late` comes after `b-db`; the two that must not route
    // come before it.
    yaml += &route("late", "c-late", "default", "db.example.com", "edge");
    yaml += &route("other", "a-other", "default", "other.example.com", "edge");
    yaml += &route(
        "intruder",
        "a-intruder",
        "dev",
        "db.example.com",
        "default/edge",
    );
    yaml += &route("db", "b-db", "default", "db.example.com", "edge");
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["default/db.example.com"]
"#;
    let gateway = Gateway::start(&yaml);
    for _ in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(gateway.port(31400))
            .await
            .unwrap();
        conn.write_all(b"hello\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "db");
    }
}

/// A PASSTHROUGH route for `sniHosts: ["*"]` is Istio's chain without
/// server names: it takes TLS that names no server (a client addressing
/// the gateway by IP) and what is no TLS at all, as Envoy relays both;
/// they were reset. A name still goes to its own route.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passthrough_route_for_any_name_takes_clients_naming_none() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let database = TlsUpstream::start(&["db.example.com"], false).await;
    let catch = common::upstream::tcp_echo().await;
    let mut yaml = bootstrap(&[443], common::mesh::NO_COLLECTOR, "");
    yaml += &db_passed_through(&database);
    yaml += &service_entry(
        "catch",
        443,
        "TLS",
        &[Ep {
            addr: catch,
            labels: &[],
        }],
    );
    yaml += r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catch}
spec:
  hosts: ["*"]
  gateways: [edge]
  tls:
  - match: [{port: 443, sniHosts: ["*"]}]
    route: [{destination: {host: catch.default.svc.cluster.local, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
"#;
    let gateway = Gateway::start(&yaml);
    let https = gateway.port(443);
    // A ClientHello without server_name, as a client addressing an IP sends.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let ip = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut client = rustls::ClientConnection::new(Arc::new(config), ip).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    for (what, first) in [("no SNI", hello), ("no TLS", b"PING\r\n".to_vec())] {
        let mut conn = tokio::net::TcpStream::connect(https).await.unwrap();
        conn.write_all(&first).await.unwrap();
        let mut echoed = vec![0u8; first.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.read_exact(&mut echoed),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing came back"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(echoed, first, "{what}: relayed to the catch-all route");
    }
    let db_root = std::fs::read_to_string(&database.root).unwrap();
    let reply = tls_get(https, "db.example.com", &db_root, &["http/1.1"], None, "/")
        .await
        .unwrap();
    assert_eq!(reply.body, "secure hello");
}
