//! Which cluster takes a request, and under which rule: outbound, the
//! VirtualService rules of the host the application named; inbound, the
//! local application (no rule: Istio applies routing rules where traffic
//! leaves, not where it arrives).

use std::sync::{Arc, LazyLock};

use http::{HeaderValue, Request};

use super::local_reply::LocalReply;
use super::{Captured, Direction, Unregistered};
use crate::host::{request_authority, split_host_port};
use crate::model::Snapshot;
use crate::model::cluster::Cluster;
use crate::model::gateway::ChainAction;
use crate::model::policy::{DEFAULT_BACKOFF, RetryOn, RetryPolicy, RouteAction, RoutePolicy};
use crate::model::route::{
    HeaderEdits, Matched, RequestView, RouteTable, VirtualHost, WeightedDestination,
};

/// Inbound requests are not timed out by the sidecar, and are retried only
/// when none of the request reached the app (a connection refused or closed
/// before it was written: the app restarting), twice: Istio's inbound route
/// since 1.24 (`ENABLE_INBOUND_RETRY_POLICY`, `reset-before-request`).
static INBOUND: LazyLock<RoutePolicy> = LazyLock::new(|| RoutePolicy {
    retry: RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on: RetryOn::RESET_BEFORE_REQUEST,
        status_codes: Vec::new(),
        backoff: DEFAULT_BACKOFF,
        ignore_previous_hosts: false,
    },
    ..RoutePolicy::default()
});

/// The routing decision.
#[derive(Debug)]
pub struct Routed<'s> {
    /// The matched rule and how (outbound).
    pub matched: Option<Matched<'s>>,
    /// The weighted destination chosen (outbound).
    pub destination: Option<&'s WeightedDestination>,
    /// The cluster, unless the rule answers itself (redirect, direct response).
    pub cluster: Option<&'s Arc<Cluster>>,
    /// The port the request was addressed to.
    pub port: u16,
    /// The service host a request the rule answers itself was addressed
    /// to (for `destination_service`).
    pub answered_for: Option<&'s str>,
    /// Sent on by ALLOW_ANY's catch-all (Istio's `allow_any` route): to
    /// its original destination, or to a Sidecar's egress proxy.
    pub catch_all: bool,
}

/// Why a request has no route, and the configured host it was addressed
/// to, for `destination_service`.
#[derive(Debug)]
pub struct NotRouted<'a> {
    /// The local reply to send.
    pub reply: LocalReply,
    /// The host of the config the request was addressed to; `None` when it
    /// named no host or one outside the registry (whose labels must not
    /// carry it).
    pub host: Option<&'a str>,
}

impl<'a> NotRouted<'a> {
    fn outside_registry(reply: LocalReply) -> Self {
        Self { reply, host: None }
    }

    fn to(host: &'a str, reply: LocalReply) -> Self {
        Self {
            reply,
            host: Some(host),
        }
    }
}

impl<'s> Routed<'s> {
    /// Straight to `cluster`, under no rule.
    fn to_cluster(cluster: &'s Arc<Cluster>, port: u16) -> Self {
        Self {
            matched: None,
            destination: None,
            cluster: Some(cluster),
            port,
            answered_for: None,
            catch_all: false,
        }
    }

    /// The rule's policy (the inbound one for inbound requests).
    pub fn policy(&self) -> &'s RoutePolicy {
        self.matched.map_or(&INBOUND, |m| &m.rule.policy)
    }

    /// The rule's name.
    #[cfg(test)]
    pub fn rule_name(&self) -> Option<&'s Arc<str>> {
        self.matched.and_then(|m| m.rule.name.as_ref())
    }

    /// The rule's and the destination's request edits, in the order they
    /// apply ([`Self::edit_order`]).
    pub fn request_edits(&self) -> [Option<&'s HeaderEdits>; 2] {
        self.edit_order(
            self.matched.map(|m| &m.rule.request_headers),
            self.destination.map(|d| &d.request_headers),
        )
    }

    /// The rule's and the destination's response edits, in the order they
    /// apply ([`Self::edit_order`]).
    pub fn response_edits(&self) -> [Option<&'s HeaderEdits>; 2] {
        self.edit_order(
            self.matched.map(|m| &m.rule.response_headers),
            self.destination.map(|d| &d.response_headers),
        )
    }

    /// The later edits win. A rule with one destination applies its own,
    /// then the destination's (Istio appends a lone destination's headers
    /// to the route's); a weighted rule the destination's, then its own
    /// (Envoy applies a weighted cluster's headers before its route's).
    fn edit_order(
        &self,
        rule: Option<&'s HeaderEdits>,
        destination: Option<&'s HeaderEdits>,
    ) -> [Option<&'s HeaderEdits>; 2] {
        let weighted = self.matched.is_some_and(|m| m.rule.destinations.len() > 1);
        if weighted {
            [destination, rule]
        } else {
            [rule, destination]
        }
    }

    /// The authority the request goes with when a rule or its destination
    /// names one; the rule's wins, as Envoy's route-level
    /// `host_rewrite_literal` wins over its weighted cluster's.
    pub fn destination_authority(&self) -> Option<&'s HeaderValue> {
        let rule_rewrites = self
            .matched
            .and_then(|m| m.rule.policy.rewrite.as_ref())
            .is_some_and(|r| r.authority.is_some());
        if rule_rewrites {
            return None;
        }
        self.destination.and_then(|d| d.authority.as_ref())
    }
}

/// Routes `req` on `snapshot`: a function of the two and, for a captured
/// connection, of where it was going (weighted destinations are drawn at
/// random).
///
/// Outbound, the Host names the service, as on Istio's per-port HTTP
/// listeners: captured, among the services that declare the port the
/// connection went to ([`addressed`]); a captured request whose Host names
/// no service there goes to the service its original destination
/// addresses, else outside the registry (`PassthroughCluster`, or
/// `BlackHoleCluster`'s 502).
pub fn select<'s: 'r, 'r, B>(
    snapshot: &'s Snapshot,
    direction: Direction,
    captured: Option<&'s Captured>,
    req: &'r Request<B>,
) -> Result<Routed<'s>, NotRouted<'r>> {
    // CONNECT matches a route only where the route says so (Envoy's
    // `connect_matcher`), and no Istio resource makes such a route for a
    // sidecar: refused both ways with Envoy's answer, 404 NR.
    if req.method() == http::Method::CONNECT {
        return Err(NotRouted::outside_registry(LocalReply::NO_ROUTE));
    }
    if direction == Direction::Inbound {
        let app = match captured {
            Some(Captured::Inbound { app }) => app,
            _ => &snapshot.inbound,
        };
        return Ok(Routed::to_cluster(app, app.port));
    }
    let authority = request_authority(req);
    let original_dst = match captured {
        Some(Captured::Outbound { original_dst, .. }) => Some(*original_dst),
        _ => None,
    };
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let known = authority.and_then(|a| {
        let original_port = original_dst.map(|d| d.port());
        addressed(&snapshot.routes, a, original_port, scheme)
    });
    match (authority, known, captured) {
        (Some(authority), Some((vhost, port)), _) => route_at(vhost, authority, port, scheme, req),
        (
            _,
            _,
            Some(Captured::Outbound {
                service,
                unregistered,
                original_dst,
                ..
            }),
        ) => by_destination(snapshot, service.as_ref(), unregistered, *original_dst, req),
        (None, ..) => Err(NotRouted::outside_registry(LocalReply::MISSING_HOST)),
        (Some(_), None, _) => Err(NotRouted::outside_registry(LocalReply::NO_ROUTE)),
    }
}

/// The virtual host a request's `authority` names, and the service port
/// it is addressed at. Captured (`original_port`, the port the connection
/// went to), that port: a host is named only where it serves the port
/// ([`VirtualHost::serves`]), as Istio routes a captured request on the
/// listener of its original port by that port's route table, and an
/// authority naming another port names nothing there. Otherwise (the
/// explicit listener) the authority's port, else the scheme's or the
/// service's one HTTP port ([`VirtualHost::port_for`]), which the host
/// must serve all the same.
fn addressed<'s>(
    routes: &'s RouteTable,
    authority: &str,
    original_port: Option<u16>,
    scheme: &str,
) -> Option<(&'s Arc<VirtualHost>, u16)> {
    let (host, port) = split_host_port(authority);
    if let Some(original) = original_port {
        if port.is_some_and(|p| p != original) {
            return None;
        }
        return Some((routes.find_on(host, original)?, original));
    }
    let vhost = routes.find(host)?;
    let port = port.unwrap_or_else(|| vhost.port_for(if scheme == "https" { 443 } else { 80 }));
    if vhost.serves(port) {
        return Some((vhost, port));
    }
    Some((routes.find_on(host, port)?, port))
}

/// Routes a request an ingress gateway received on `conn`: by the route
/// table of the filter chain the connection took (the Gateway's virtual
/// hosts, found by the request's host), at the Gateway port, as Envoy
/// routes a gateway listener's requests.
pub fn gateway<'s: 'r, 'r, B>(
    snapshot: &'s Snapshot,
    conn: &super::GatewayConn,
    req: &'r Request<B>,
) -> Result<Routed<'s>, NotRouted<'r>> {
    if req.method() == http::Method::CONNECT {
        return Err(NotRouted::outside_registry(LocalReply::NO_ROUTE));
    }
    let table = snapshot
        .gateway
        .as_ref()
        .and_then(|g| g.listeners.port(conn.port))
        .and_then(|p| p.chain(conn.sni.as_deref()))
        .and_then(|c| match &c.action {
            ChainAction::Http(table) => Some(table),
            _ => None,
        });
    let Some(table) = table else {
        return Err(NotRouted::outside_registry(LocalReply::NO_ROUTE));
    };
    let Some(authority) = request_authority(req) else {
        return Err(NotRouted::outside_registry(LocalReply::MISSING_HOST));
    };
    let Some(vhost) = table.find(split_host_port(authority).0) else {
        return Err(NotRouted::outside_registry(LocalReply::NO_ROUTE));
    };
    let scheme = if conn.tls { "https" } else { "http" };
    route_at(vhost, authority, conn.port, scheme, req)
}

/// A captured request whose Host names no service on its port: the
/// service its original destination addresses (by that service's rules,
/// at the service port that address is on), else the traffic policy's
/// answer.
fn by_destination<'s: 'r, 'r, B>(
    snapshot: &'s Snapshot,
    service: Option<&'s Arc<Cluster>>,
    unregistered: &'s Unregistered,
    original_dst: std::net::SocketAddr,
    req: &'r Request<B>,
) -> Result<Routed<'s>, NotRouted<'r>> {
    match (service, unregistered) {
        (Some(cluster), _) => match snapshot.routes.find(&cluster.service.host) {
            Some(vhost) => {
                let scheme = req.uri().scheme_str().unwrap_or("http");
                route_at(vhost, &vhost.host, cluster.port, scheme, req)
            }
            None => Ok(Routed::to_cluster(cluster, cluster.port)),
        },
        (None, Unregistered::Passthrough(cluster)) => Ok(Routed {
            catch_all: true,
            ..Routed::to_cluster(cluster, original_dst.port())
        }),
        (None, Unregistered::BlackHole) => Err(NotRouted::outside_registry(LocalReply::BLACK_HOLE)),
        (None, Unregistered::NoCluster) => Err(NotRouted::outside_registry(LocalReply::NO_CLUSTER)),
    }
}

/// The rules of `vhost` for a request to `authority` at service `port`.
fn route_at<'s: 'r, 'r, B>(
    vhost: &'s Arc<VirtualHost>,
    authority: &'r str,
    port: u16,
    scheme: &'r str,
    req: &'r Request<B>,
) -> Result<Routed<'s>, NotRouted<'r>> {
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        scheme,
        authority,
        port,
        headers: req.headers(),
    };
    let Some(matched) = vhost.route(&view) else {
        return Err(NotRouted::to(&vhost.host, LocalReply::NO_ROUTE));
    };
    if !matches!(matched.rule.policy.action, RouteAction::Forward) {
        return Ok(Routed {
            matched: Some(matched),
            destination: None,
            cluster: None,
            port,
            answered_for: Some(&vhost.host),
            catch_all: false,
        });
    }
    let Some(destination) = matched.rule.pick_destination() else {
        return Err(NotRouted::to(&vhost.host, LocalReply::NO_ROUTE));
    };
    let Some(cluster) = destination.target.cluster_for(port) else {
        return Err(NotRouted::to(
            &destination.target.host,
            LocalReply::NO_CLUSTER,
        ));
    };
    Ok(Routed {
        matched: Some(matched),
        destination: Some(destination),
        cluster: Some(cluster),
        port,
        answered_for: None,
        catch_all: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile_text;
    use crate::model::live::LiveState;

    const CONFIG: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: productpage-v1, namespace: default}
spec: {service: productpage, inbound: {app: "127.0.0.1:9080"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
  - {address: 10.1.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - name: nowhere
    match: [{uri: {prefix: /missing}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: default
    match: [{uri: {prefix: /}}]
    route: [{destination: {host: reviews, subset: v1}}]
"#;

    fn snapshot() -> Snapshot {
        let file = Arc::from("routes.yaml");
        match compile_text(&file, CONFIG, 1, &LiveState::default()) {
            Ok(compiled) => compiled.snapshot,
            Err(rejected) => panic!("{rejected}"),
        }
    }

    fn request(host: &str, path: &str, user: Option<&str>) -> Request<()> {
        let mut req = Request::get(path).header(http::header::HOST, host);
        if let Some(user) = user {
            req = req.header("end-user", user);
        }
        req.body(()).expect("a request")
    }

    fn cluster_name<'s>(routed: &Routed<'s>) -> &'s str {
        routed.cluster.map_or("-", |c| c.name.as_str())
    }

    #[test]
    fn rules_match_in_order_and_pick_their_subset() {
        let snapshot = snapshot();
        let jason = request("reviews:9080", "/reviews/1", Some("jason"));
        let routed = select(&snapshot, Direction::Outbound, None, &jason).expect("routed");
        assert_eq!(routed.rule_name().map(|n| &**n), Some("jason"));
        assert_eq!(
            cluster_name(&routed),
            "outbound|9080|v2|reviews.default.svc.cluster.local"
        );
        assert_eq!(routed.port, 9080);

        let other = request("reviews.default.svc.cluster.local", "/reviews/1", None);
        let routed = select(&snapshot, Direction::Outbound, None, &other).expect("routed");
        assert_eq!(routed.rule_name().map(|n| &**n), Some("default"));
        assert_eq!(
            cluster_name(&routed),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            routed.port, 9080,
            "a port-less authority means the service's one port"
        );
        assert!(routed.answered_for.is_none());
    }

    #[test]
    fn a_rule_that_answers_itself_has_no_cluster() {
        let snapshot = snapshot();
        let req = request("reviews:9080", "/old/page", None);
        let routed = select(&snapshot, Direction::Outbound, None, &req).expect("routed");
        assert!(routed.cluster.is_none());
        assert!(matches!(routed.policy().action, RouteAction::Redirect(_)));
        assert_eq!(
            routed.answered_for,
            Some("reviews.default.svc.cluster.local")
        );
    }

    #[test]
    fn unknown_hosts_and_missing_clusters_say_where_the_request_went() {
        let snapshot = snapshot();
        let req = request("ratings:9080", "/", None);
        let miss = select(&snapshot, Direction::Outbound, None, &req).expect_err("no route");
        assert_eq!(miss.reply.details, "route_not_found");
        assert_eq!(
            miss.host, None,
            "a host outside the registry is not a label"
        );

        let req = request("reviews:9080", "/missing", None);
        let miss = select(&snapshot, Direction::Outbound, None, &req).expect_err("no cluster");
        assert_eq!(miss.reply.details, "cluster_not_found");
        assert_eq!(miss.host, Some("reviews.default.svc.cluster.local"));

        let hostless = Request::get("/").body(()).expect("a request");
        let miss = select(&snapshot, Direction::Outbound, None, &hostless).expect_err("no host");
        assert_eq!(miss.reply.details, "missing_host_header");
        assert_eq!(miss.host, None);
    }

    #[test]
    fn connect_matches_no_route_either_way() {
        let snapshot = snapshot();
        for direction in [Direction::Outbound, Direction::Inbound] {
            let req = Request::connect("reviews:9080")
                .header("host", "reviews:9080")
                .body(())
                .expect("a request");
            let miss = select(&snapshot, direction, None, &req).expect_err("no route");
            assert_eq!(miss.reply.details, "route_not_found");
        }
    }

    #[test]
    fn inbound_goes_to_the_app_retried_only_before_the_request_went() {
        let snapshot = snapshot();
        let req = request("productpage:9080", "/", None);
        let routed = select(&snapshot, Direction::Inbound, None, &req).expect("routed");
        assert!(Arc::ptr_eq(
            routed.cluster.expect("the app"),
            &snapshot.inbound
        ));
        assert_eq!(routed.port, 9080);
        let retry = &routed.policy().retry;
        assert_eq!(retry.attempts, 2);
        assert_eq!(
            retry.on,
            RetryOn::RESET_BEFORE_REQUEST,
            "only what the app cannot have seen"
        );
        assert!(retry.status_codes.is_empty());
        assert!(routed.rule_name().is_none());
    }

    /// The brief's registry: hosts known by name and port only (no
    /// `addresses`), and a VIP service with its rules.
    const PORTS: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: productpage-v1, namespace: default}
spec: {service: productpage, capture: {mode: REDIRECT}}
---
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
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard, namespace: default}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 8000, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.12}]
"#;

    fn ports_snapshot() -> Snapshot {
        let file = Arc::from("ports.yaml");
        match compile_text(&file, PORTS, 1, &LiveState::default()) {
            Ok(compiled) => compiled.snapshot,
            Err(rejected) => panic!("{rejected}"),
        }
    }

    /// A connection captured on its way to `dst`, as the interception
    /// decides it under ALLOW_ANY.
    fn captured(snapshot: &Snapshot, dst: &str) -> Captured {
        use crate::model::capture::{Destination, OutboundTrafficMode};
        use crate::model::peer::PeerInfo;
        use crate::model::service::{Protocol, ServiceName};
        let dst: std::net::SocketAddr = dst.parse().expect("an address");
        let service = match snapshot.capture.destinations.lookup(dst) {
            Some(Destination::Service(c) | Destination::Endpoint { cluster: c, .. }) => {
                Some(c.clone())
            }
            _ => None,
        };
        let passthrough = Cluster::original_destination(
            "PassthroughCluster".to_owned(),
            ServiceName::outside_registry(OutboundTrafficMode::AllowAny),
            dst,
            Protocol::Auto,
            Arc::new(PeerInfo::unknown()),
            None,
        );
        Captured::Outbound {
            original_dst: dst,
            service,
            unregistered: Unregistered::Passthrough(Arc::new(passthrough)),
            original_endpoint: Default::default(),
        }
    }

    /// Where `host` sent over a connection captured to `dst` (`None`: the
    /// explicit listener) is routed: a cluster and port, or the reply.
    fn outcome(snapshot: &Snapshot, dst: Option<&str>, host: &str) -> String {
        let conn = dst.map(|d| captured(snapshot, d));
        let req = request(host, "/p", None);
        match select(snapshot, Direction::Outbound, conn.as_ref(), &req) {
            Ok(routed) => format!("{} at {}", cluster_name(&routed), routed.port),
            Err(miss) => miss.reply.details.to_owned(),
        }
    }

    /// Captured, the port the connection went to decides which services
    /// a Host can name (Istio's route table per listener port): a service
    /// that does not declare it is not addressed there, and the request
    /// goes where the traffic policy sends what the registry does not
    /// know — never to the service's other port.
    #[test]
    fn a_captured_host_names_its_service_only_on_a_port_it_declares() {
        let snapshot = ports_snapshot();
        let at = |dst, host| outcome(&snapshot, Some(dst), host);
        assert_eq!(
            at("192.168.1.5:80", "www.example.com"),
            "outbound|80||www.example.com at 80"
        );
        assert_eq!(
            at("192.168.1.5:80", "www.example.com:80"),
            "outbound|80||www.example.com at 80"
        );
        assert_eq!(
            at("192.168.1.5:8080", "www.example.com:8080"),
            "PassthroughCluster at 8080",
            "port 8080 is not www.example.com's: to where it was going"
        );
        assert_eq!(
            at("192.168.1.5:8080", "www.example.com"),
            "PassthroughCluster at 8080"
        );
        assert_eq!(
            at("192.168.1.5:80", "www.example.com:8080"),
            "PassthroughCluster at 80",
            "a Host naming another port than the connection's names nothing there"
        );
        assert_eq!(
            at("192.168.1.5:80", "api.example.com"),
            "PassthroughCluster at 80",
            "a TLS-only service is no HTTP service on port 80"
        );
        // The wildcard declares 8000: it takes a name whose own entry
        // declares other ports only, as Envoy matches the port's domains.
        assert_eq!(
            at("192.168.1.5:8000", "api.example.com"),
            "outbound|8000||*.example.com at 8000"
        );
        assert_eq!(
            at("192.168.1.5:8000", "WWW.example.com"),
            "outbound|8000||*.example.com at 8000"
        );
        // A VIP still routes a Host that names nothing on its port, at the
        // service port the address is on; so does a call to an endpoint's
        // own address (its targetPort 8080 is the service's 9080).
        assert_eq!(
            at("10.96.0.20:9080", "www.example.com:9080"),
            "outbound|9080||reviews.default.svc.cluster.local at 9080"
        );
        assert_eq!(
            at("10.244.0.12:8080", "10.244.0.12:8080"),
            "outbound|9080||reviews.default.svc.cluster.local at 9080"
        );
        assert_eq!(
            at("10.96.0.20:9080", "reviews:9080"),
            "outbound|9080||reviews.default.svc.cluster.local at 9080"
        );
    }

    /// The explicit listener routes by the Host alone, on the port it
    /// names (else the scheme's, else the service's one HTTP port), and
    /// only to a port the service declares for HTTP.
    #[test]
    fn an_explicit_host_names_its_service_only_on_a_port_it_declares() {
        let snapshot = ports_snapshot();
        let explicit = |host| outcome(&snapshot, None, host);
        assert_eq!(
            explicit("www.example.com"),
            "outbound|80||www.example.com at 80"
        );
        assert_eq!(
            explicit("reviews"),
            "outbound|9080||reviews.default.svc.cluster.local at 9080"
        );
        assert_eq!(explicit("www.example.com:8080"), "route_not_found");
        assert_eq!(
            explicit("api.example.com"),
            "route_not_found",
            "never plaintext HTTP to the TLS port"
        );
        assert_eq!(
            explicit("api.example.com:8000"),
            "outbound|8000||*.example.com at 8000"
        );
    }
}
