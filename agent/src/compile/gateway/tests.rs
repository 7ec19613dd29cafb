//! Gateway compile tests: what a config's Gateways, VirtualServices and
//! Gateway API resources become, port by port.

use std::path::PathBuf;
use std::sync::Arc;

use crate::compile::{CompiledGateway, compile_gateway_text};
use crate::config::diagnostics::ConfigRejected;
use crate::model::gateway::{ChainAction, GatewayPort, PortProtocol, ServerTlsMode};
use crate::model::live::LiveState;
use crate::model::policy::RouteAction;
use crate::model::route::{RouteTable, VirtualHost};

const REGISTRY: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local, reviews-v2.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5443, name: tls, protocol: TLS}]
  endpoints: [{address: 127.0.0.3}]
"#;

fn bootstrap(extra: &str) -> String {
    format!(
        "apiVersion: tracemesh.io/v1\nkind: IngressGateway\nmetadata: {{name: istio-ingressgateway, namespace: istio-system}}\nspec:\n  labels: {{istio: ingressgateway, app: istio-ingressgateway}}\n{extra}{REGISTRY}"
    )
}

fn compile(yaml: &str) -> Result<CompiledGateway, ConfigRejected> {
    let file: Arc<str> = Arc::from("gateway.yaml");
    compile_gateway_text(&file, yaml, 1, &LiveState::default())
}

fn ok(yaml: &str) -> CompiledGateway {
    compile(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn port(c: &CompiledGateway, number: u16) -> &GatewayPort {
    c.snapshot
        .listeners
        .port(number)
        .unwrap_or_else(|| panic!("port {number}: {:?}", c.snapshot.listeners))
}

fn table<'a>(p: &'a GatewayPort, sni: Option<&str>) -> &'a RouteTable {
    match &p.chain(sni).expect("a chain").action {
        ChainAction::Http(t) => t,
        other => panic!("not HTTP: {other:?}"),
    }
}

fn target(vh: &VirtualHost) -> Vec<String> {
    vh.rules
        .iter()
        .map(|r| {
            r.destinations
                .iter()
                .map(|d| d.target.host.to_string())
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect()
}

fn warnings(c: &CompiledGateway) -> String {
    let w: Vec<String> = c.diagnostics.warnings().map(|d| d.to_string()).collect();
    w.join("\n")
}

/// Istio's samples/bookinfo/networking/bookinfo-gateway.yaml (Gateway
/// and VirtualService as shipped), plus a mesh-only VirtualService.
const BOOKINFO: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    - uri: {exact: /login}
    - uri: {exact: /logout}
    - uri: {prefix: /api/v1/products}
    route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews-v2}}]
"#;

#[test]
fn bookinfo_gateway_binds_its_virtual_service_only() {
    let c = ok(&(bootstrap("  listeners: [{port: 8080, listen: '127.0.0.1:0'}]\n") + BOOKINFO));
    let p = port(&c, 8080);
    assert_eq!(p.protocol, PortProtocol::Http);
    assert_eq!(p.listen.to_string(), "127.0.0.1:0");
    let chain = p.chain(None).unwrap();
    assert_eq!(chain.name, "http.8080");
    assert_eq!(chain.servers[0].gateway, "default/bookinfo-gateway");
    let t = table(p, None);
    let vh = t
        .find("bookinfo.example.com")
        .expect("* answers every host");
    assert_eq!(vh.virtual_service.as_deref(), Some("default/bookinfo"));
    assert_eq!(target(vh), ["productpage.default.svc.cluster.local"]);
    assert_eq!(vh.rules[0].matches.len(), 5);
    // The mesh VirtualService (no `gateways`) is not the gateway's.
    assert!(
        t.exact.keys().all(|h| !h.starts_with("reviews")),
        "{:?}",
        t.exact.keys()
    );
    assert_eq!(
        c.snapshot.identity.spiffe.to_string(),
        "spiffe://cluster.local/ns/istio-system/sa/default"
    );
}

#[test]
fn gateways_of_other_selectors_are_not_served() {
    let other = BOOKINFO.replace("istio: ingressgateway", "istio: egressgateway");
    let c = ok(&(bootstrap("") + &other));
    assert!(c.snapshot.listeners.ports.is_empty());
    assert!(warnings(&c).contains("spec.selector"), "{}", warnings(&c));
}

#[test]
fn server_hosts_admit_virtual_services_by_namespace() {
    let yaml = bootstrap("")
        + r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop/*.example.com", "./edge.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [www.example.com, www.example.org]
  gateways: [edge/gw]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: intruder, namespace: dev}
spec:
  hosts: [api.example.com]
  gateways: [edge/gw]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: edge}
spec:
  hosts: ["*"]
  gateways: [gw.edge.svc.cluster.local]
  http: [{route: [{destination: {host: productpage.default.svc.cluster.local}}]}]
"#;
    let c = ok(&yaml);
    let t = table(port(&c, 80), None);
    let mut hosts: Vec<&String> = t.exact.keys().collect();
    hosts.sort();
    assert_eq!(
        hosts,
        ["edge.example.com", "www.example.com"],
        "only the admitted namespaces' hosts"
    );
    assert!(
        t.find("api.example.com").is_none(),
        "dev may not bind under shop/"
    );
    assert_eq!(
        target(t.find("edge.example.com").unwrap()),
        ["productpage.default.svc.cluster.local"]
    );
}

#[test]
fn https_redirect_answers_301_to_https() {
    let yaml = bootstrap("")
        + &BOOKINFO.replace(
            "    hosts: [\"*\"]\n",
            "    hosts: [\"*\"]\n    tls: {httpsRedirect: true}\n",
        );
    let c = ok(&yaml);
    let vh = table(port(&c, 8080), None)
        .find("bookinfo.example.com")
        .unwrap();
    assert_eq!(vh.rules.len(), 1);
    match &vh.rules[0].policy.action {
        RouteAction::Redirect(r) => {
            assert_eq!(r.scheme.as_deref(), Some("https"));
            assert_eq!(r.code, 301);
        }
        other => panic!("{other:?}"),
    }
}

/// A credential directory with `istio-system/<name>/tls.crt|tls.key|ca.crt`.
struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tm-gw-creds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca_dir = dir.join("ca");
        let ca = tracemesh_ca::Authority::init(&ca_dir, "cluster.local", None).unwrap();
        let (key, issued) = ca.issue_server(&["bookinfo.example.com"], &[]).unwrap();
        for ns in ["istio-system", "default"] {
            let secret = dir.join(ns).join("bookinfo-credential");
            std::fs::create_dir_all(&secret).unwrap();
            std::fs::write(secret.join("tls.crt"), &issued.cert_chain).unwrap();
            std::fs::write(secret.join("tls.key"), &key).unwrap();
            std::fs::write(secret.join("ca.crt"), &issued.root_cert).unwrap();
        }
        Self { dir }
    }

    fn spec(&self) -> String {
        format!("  credentialDirectory: {}\n", self.dir.display())
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https_gateway(tls: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [bookinfo.example.com]
    tls: {tls}
  - port: {{number: 443, name: https-other, protocol: HTTPS}}
    hosts: [other.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [bookinfo-gateway]
  http: [{{route: [{{destination: {{host: productpage}}}}]}}]
"#
    )
}

#[test]
fn https_servers_terminate_with_credentials_from_files() {
    let creds = Credentials::new("simple");
    let c = ok(&(bootstrap(&creds.spec())
        + &https_gateway(
            "{mode: SIMPLE, credentialName: bookinfo-credential, minProtocolVersion: TLSV1_3}",
        )));
    let p = port(&c, 443);
    assert_eq!(p.protocol, PortProtocol::Tls);
    let chain = p.chain(Some("bookinfo.example.com")).unwrap();
    assert_eq!(chain.name, "https.443.https.bookinfo-gateway.default");
    assert_eq!(chain.server_names, ["bookinfo.example.com"]);
    let tls = chain.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Simple);
    let config = tls.config.as_ref().unwrap();
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert!(
        table(p, Some("bookinfo.example.com"))
            .find("bookinfo.example.com")
            .is_some()
    );
    // The other server passes TLS through; no route takes it.
    let other = p.chain(Some("other.example.com")).unwrap();
    assert!(other.tls.is_none());
    assert!(matches!(&other.action, ChainAction::Forward(r) if r.is_empty()));
    assert!(p.chain(Some("unknown.example.com")).is_none());
}

#[test]
fn mutual_tls_needs_and_reads_the_client_ca() {
    let creds = Credentials::new("mutual");
    let c = ok(&(bootstrap(&creds.spec())
        + &https_gateway(
            "{mode: MUTUAL, credentialName: bookinfo-credential, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES128-GCM-SHA256, AES256-SHA]}",
        )));
    let chain = port(&c, 443).chain(Some("bookinfo.example.com")).unwrap();
    assert_eq!(chain.tls.as_ref().unwrap().mode, ServerTlsMode::Mutual);
    let text = warnings(&c);
    assert!(
        text.contains("cipherSuites[2]") && text.contains("AES256-SHA"),
        "{text}"
    );

    let missing = compile(
        &(bootstrap(&creds.spec()) + &https_gateway("{mode: SIMPLE, credentialName: nowhere}")),
    )
    .err()
    .expect("a missing credential is an error");
    let text = missing.to_string();
    assert!(
        text.contains("spec.servers[0].tls") && text.contains("istio-system/nowhere/tls.crt"),
        "{text}"
    );
    let old = compile(&(bootstrap(&creds.spec())
        + &https_gateway("{mode: SIMPLE, credentialName: bookinfo-credential, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}")))
    .err()
    .expect("min above max");
    assert!(
        old.to_string().contains("minProtocolVersion is above"),
        "{old}"
    );
}

#[test]
fn tls_passthrough_routes_by_sni_to_mesh_services() {
    let yaml = bootstrap("")
        + r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: data}
spec:
  hosts: [db.example.com]
  gateways: [default/tls-gw]
  tls:
  - match: [{port: 443, sniHosts: [db.example.com]}]
    route: [{destination: {host: db.example.com, port: {number: 5443}}}]
  - match: [{port: 8443, sniHosts: [db.example.com]}]
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
"#;
    let c = ok(&yaml);
    let p = port(&c, 443);
    let chain = p.chain(Some("db.example.com")).unwrap();
    let ChainAction::Forward(routes) = &chain.action else {
        panic!("{:?}", chain.action)
    };
    assert_eq!(routes.len(), 1, "the rule for port 8443 is not this port's");
    let route = crate::model::gateway::l4_route(routes, Some("db.example.com")).unwrap();
    assert_eq!(&*route.destinations[0].target.host, "db.example.com");
    assert_eq!(route.destinations[0].target.clusters.len(), 1);
    assert!(crate::model::gateway::l4_route(routes, Some("web.example.com")).is_none());
}

#[test]
fn kubernetes_gateways_attach_routes_by_listener_hostname_and_namespace() {
    let creds = Credentials::new("kube");
    let yaml = bootstrap(&creds.spec())
        + r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: bookinfo.example.com
    tls: {certificateRefs: [{name: bookinfo-credential}]}
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: web, sectionName: http}]
  hostnames: [shop.example.com, shop.example.org]
  rules:
  - matches: [{path: {type: PathPrefix, value: /reviews}}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: Exact, value: /reviews/1}}]
    backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-team, namespace: other}
spec:
  parentRefs: [{name: web, namespace: default}]
  rules: [{backendRefs: [{name: productpage, namespace: default, port: 9080}]}]
"#;
    let c = ok(&yaml);
    let http = table(port(&c, 80), None);
    let shop = http
        .find("shop.example.com")
        .expect("attached on the http listener");
    assert_eq!(
        shop.virtual_service.as_deref(),
        Some("HTTPRoute default/shop")
    );
    // Exact before prefix, whatever the order written.
    assert_eq!(
        target(shop),
        [
            "productpage.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    assert!(
        http.find("shop.example.org").is_none(),
        "outside the listener's hostname"
    );
    assert!(
        http.find("x.example.com").is_none(),
        "other-team may not attach to http (Same)"
    );
    let p = port(&c, 443);
    let chain = p.chain(Some("bookinfo.example.com")).unwrap();
    assert_eq!(chain.tls.as_ref().unwrap().mode, ServerTlsMode::Simple);
    let https = table(p, Some("bookinfo.example.com"));
    let vh = https
        .find("bookinfo.example.com")
        .expect("other-team attaches where All");
    assert_eq!(
        vh.virtual_service.as_deref(),
        Some("HTTPRoute other/other-team")
    );
    // Its backend is in another namespace: without a ReferenceGrant the
    // rule answers 500, as the API requires.
    let text = warnings(&c);
    assert!(text.contains("ReferenceGrant"), "{text}");
}

#[test]
fn an_agent_file_is_not_a_gateway_file() {
    let err = compile(
        "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: a}\nspec: {service: a}\n",
    )
    .err()
    .expect("no IngressGateway");
    assert!(err.to_string().contains("IngressGateway"), "{err}");
}

/// Two Gateway ports on one listen address would both bind (SO_REUSEPORT)
/// and split connections between their chains at random: refused, naming
/// the listener entry, as Envoy refuses two listeners on one address.
#[test]
fn two_gateway_ports_on_one_address_are_refused() {
    const TWO_PORTS: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: two}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8081, name: redirect, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
"#;
    let same = "  listeners:\n  - {port: 80, listen: \"127.0.0.1:18080\"}\n  - {port: 8081, listen: \"127.0.0.1:18080\"}\n";
    let err = compile(&(bootstrap(same) + TWO_PORTS))
        .err()
        .expect("two ports on one address");
    let text = err.to_string();
    assert!(
        text.contains("spec.listeners[1].listen")
            && text.contains("Gateway ports 80 and 8081 both listen on 127.0.0.1:18080"),
        "{text}"
    );
    // A port without an entry listens on 0.0.0.0:<port>, which a wildcard
    // or specific entry of another port on that port number overlaps.
    let implicit = "  listeners:\n  - {port: 8081, listen: \"127.0.0.1:80\"}\n";
    let err = compile(&(bootstrap(implicit) + TWO_PORTS))
        .err()
        .expect("8081 on port 80 overlaps port 80's 0.0.0.0:80");
    assert!(err.to_string().contains("both listen on"), "{err}");
    let apart = "  listeners:\n  - {port: 80, listen: \"127.0.0.1:18080\"}\n  - {port: 8081, listen: \"127.0.0.1:18081\"}\n";
    let c = ok(&(bootstrap(apart) + TWO_PORTS));
    assert_eq!(port(&c, 8081).listen.to_string(), "127.0.0.1:18081");
    // Port 0 is any free port: each takes its own.
    let any = "  listeners:\n  - {port: 80, listen: \"127.0.0.1:0\"}\n  - {port: 8081, listen: \"127.0.0.1:0\"}\n";
    ok(&(bootstrap(any) + TWO_PORTS));
}

#[test]
fn a_gateway_in_the_root_namespace_takes_the_services_rules_before_the_roots() {
    // Istio's `destinationRule` for a proxy in the root namespace: the
    // service's namespace first, so that mesh-wide rules there do not hide
    // a service's own, however specific their host.
    let rule = |namespace: &str, name: &str, host: &str, ms: u32| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: \"{host}\"\n  trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: {ms}ms}}}}}}\n"
        )
    };
    let yaml = bootstrap("")
        + &rule("istio-system", "root-db", "db.example.com", 1)
        + &rule("data", "data-wide", "*.example.com", 2)
        + &rule("istio-system", "mesh-wide", "*.local", 3);
    let compiled = ok(&yaml);
    let cluster = |host: &str| {
        let c = compiled
            .snapshot
            .clusters
            .iter()
            .find(|c| c.service.host == host)
            .unwrap_or_else(|| panic!("{host}"));
        (
            c.connect_timeout.as_millis(),
            c.destination_rule.as_deref().map(str::to_owned),
        )
    };
    assert_eq!(
        cluster("db.example.com"),
        (2, Some("DestinationRule:data/data-wide".into()))
    );
    assert_eq!(
        cluster("reviews.default.svc.cluster.local"),
        (3, Some("DestinationRule:istio-system/mesh-wide".into())),
        "the root's wildcard where the service's namespace has no rule"
    );
    assert!(
        warnings(&compiled).contains("(DestinationRule istio-system/root-db, line")
            && warnings(&compiled).contains(
                "db.example.com follows DestinationRule data/data-wide instead: this workload takes DestinationRules from the namespaces data (the service's), then istio-system (the root and this workload's)"
            ),
        "{}",
        warnings(&compiled)
    );
}
