//! VirtualService and DestinationRule routing through a real agent: matches,
//! weighted splits, subsets, and load-balancing policies.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::agent::Agent;
use common::client::Client;
use common::mesh::{Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{Upstream, closed_port};
use http::Request;
use http_body_util::Full;

/// Four endpoints of `reviews`: two v1, one v2, one v3.
struct Reviews {
    upstreams: Vec<Upstream>,
}

impl Reviews {
    async fn start() -> Reviews {
        let mut upstreams = Vec::new();
        for name in ["v1a", "v1b", "v2", "v3"] {
            upstreams.push(Upstream::start(name).await);
        }
        Reviews { upstreams }
    }

    fn service_entry(&self) -> String {
        let labels: Vec<[(&str, &str); 2]> = self
            .upstreams
            .iter()
            .map(|u| [("app", "reviews"), ("version", &u.name[..2])])
            .collect();
        let eps: Vec<Ep<'_>> = self
            .upstreams
            .iter()
            .zip(&labels)
            .map(|(u, l)| Ep {
                addr: u.addr,
                labels: l,
            })
            .collect();
        service_entry("reviews", 9080, "HTTP", &eps)
    }

    async fn agent(&self, policy: &str, virtual_service: &str) -> Agent {
        let destination_rule = format!(
            r#"---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy: {policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"#
        );
        let yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
            + &self.service_entry()
            + &destination_rule
            + virtual_service;
        Agent::start(&yaml)
    }
}

/// A request and the subset it must reach.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

fn virtual_service(http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

/// A request of a [`Case`] to `reviews:9080`.
fn reviews_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<bytes::Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://reviews:9080{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_matching_rule_wins() {
    let reviews = Reviews::start().await;
    let rules = r#"  - name: exact
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: prefix
    match: [{uri: {prefix: /api/}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: regex
    match: [{uri: {regex: "/items/[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: header
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: method
    match: [{method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: case
    match: [{uri: {prefix: /case}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: query
    match: [{queryParams: {debug: {exact: "true"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: either
    match: [{uri: {exact: /one}}, {uri: {exact: /two}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
"#;
    let agent = reviews
        .agent(
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            &virtual_service(rules),
        )
        .await;
    let client = Client::h1(agent.outbound);
    // (method, path, headers, subset expected)
    let cases: &[Case] = &[
        ("GET", "/exact", &[], "v2"),
        ("GET", "/exactly", &[], "v1"),
        ("GET", "/api/list", &[], "v3"),
        ("GET", "/api", &[], "v1"),
        ("GET", "/items/42", &[], "v2"),
        ("GET", "/items/abc", &[], "v1"),
        ("GET", "/items/42/more", &[], "v1"),
        ("GET", "/any", &[("end-user", "jason")], "v3"),
        ("GET", "/any", &[("end-user", "json")], "v1"),
        ("POST", "/any", &[], "v2"),
        ("GET", "/CASE/Mixed", &[], "v3"),
        ("GET", "/any?debug=true", &[], "v2"),
        ("GET", "/any?debug=false", &[], "v1"),
        ("GET", "/two", &[], "v3"),
    ];
    for (method, path, headers, subset) in cases {
        let reply = client.send(reviews_request(method, path, headers)).await;
        assert_eq!(reply.status, 200, "{method} {path}");
        assert!(
            reply.upstream().starts_with(subset),
            "{method} {path} {headers:?} went to {}, want {subset}",
            reply.upstream()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_follows_the_weights() {
    let reviews = Reviews::start().await;
    let rules = "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n";
    let agent = reviews
        .agent(
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            &virtual_service(rules),
        )
        .await;
    let client = Client::h1(agent.outbound);
    let mut v2 = 0;
    for _ in 0..1000 {
        let reply = client.get("http://reviews:9080/split").await;
        assert_eq!(reply.status, 200);
        if reply.upstream() == "v2" {
            v2 += 1;
        } else {
            assert!(reply.upstream().starts_with("v1"), "{}", reply.upstream());
        }
    }
    // 10% of 1000 is 100 with a standard deviation of about 9.5.
    assert!((55..=145).contains(&v2), "v2 got {v2} of 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subsets_pick_endpoints_by_label() {
    let reviews = Reviews::start().await;
    let rules = "  - match: [{headers: {x-subset: {exact: v2}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n";
    let agent = reviews
        .agent("{loadBalancer: {simple: RANDOM}}", &virtual_service(rules))
        .await;
    let client = Client::h1(agent.outbound);
    for _ in 0..40 {
        assert!(
            client
                .get("http://reviews:9080/")
                .await
                .upstream()
                .starts_with("v1")
        );
        assert_eq!(
            client
                .get_with("http://reviews:9080/", &[("x-subset", "v2")])
                .await
                .upstream(),
            "v2"
        );
    }
    assert_eq!(reviews.upstreams[3].count(), 0, "v3 is in no routed subset");
    assert!(
        reviews.upstreams[0].count() > 0 && reviews.upstreams[1].count() > 0,
        "RANDOM uses both v1 endpoints"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_spreads_evenly() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent("{loadBalancer: {simple: ROUND_ROBIN}}", "")
        .await;
    let client = Client::h1(agent.outbound);
    for _ in 0..400 {
        assert_eq!(client.get("http://reviews:9080/rr").await.status, 200);
    }
    let counts: Vec<usize> = reviews.upstreams.iter().map(Upstream::count).collect();
    assert_eq!(counts, vec![100; 4], "round robin over four endpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            "",
        )
        .await;
    let client = Client::h1(agent.outbound);
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..8 {
        for user in 0..25 {
            let user = format!("user-{user}");
            let reply = client
                .get_with("http://reviews:9080/hash", &[("x-user", &user)])
                .await;
            let home = homes
                .entry(user.clone())
                .or_insert_with(|| reply.upstream());
            assert_eq!(*home, reply.upstream(), "{user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<&String> = homes.values().collect();
    assert!(
        distinct.len() >= 3,
        "25 keys should spread over the endpoints: {distinct:?}"
    );
}

/// A request without the hash key reaches a random slot of the Maglev
/// table, as Envoy hashes a random number when the key is missing: a
/// table of 3 slots over four endpoints leaves one endpoint out of those
/// requests too (they were spread over all four).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_without_the_hash_key_reaches_the_tables_endpoints_only() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 3}}}}",
            "",
        )
        .await;
    let client = Client::h1(agent.outbound);
    for _ in 0..200 {
        assert_eq!(client.get("http://reviews:9080/nokey").await.status, 200);
    }
    let counts: Vec<usize> = reviews.upstreams.iter().map(Upstream::count).collect();
    let reached = counts.iter().filter(|&&c| c > 0).count();
    assert_eq!(reached, 3, "three slots, three endpoints: {counts:?}");
}

/// A retry under a hash policy goes to the key's endpoint again, as Envoy
/// does under the retry policy Istio renders for a cluster with a hash
/// policy (no previous-hosts predicate): the agent sent each retry to
/// another endpoint, which holds none of the session's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hash_policy_keeps_retries_on_the_keys_endpoint() {
    let reviews = Reviews::start().await;
    for upstream in &reviews.upstreams {
        upstream.fail_with(503);
    }
    let rules =
        "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let agent = reviews
        .agent(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            &virtual_service(rules),
        )
        .await;
    let client = Client::h1(agent.outbound);
    for user in ["alice", "bob", "carol"] {
        let before: Vec<usize> = reviews.upstreams.iter().map(Upstream::count).collect();
        let reply = client
            .get_with("http://reviews:9080/fail", &[("x-user", user)])
            .await;
        assert_eq!(reply.status, 503, "{user}");
        let tries: Vec<usize> = (reviews.upstreams.iter().zip(&before))
            .map(|(u, b)| u.count() - b)
            .collect();
        assert_eq!(tries.iter().sum::<usize>(), 3, "{user}: {tries:?}");
        assert!(tries.contains(&3), "{user}'s attempts spread: {tries:?}");
    }
}

/// With `retryIgnorePreviousHosts: true` a hash policy's retries leave the
/// endpoints tried, as Istio then renders Envoy's previous-hosts
/// predicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_ignore_previous_hosts_moves_a_hash_policys_retries() {
    let reviews = Reviews::start().await;
    for upstream in &reviews.upstreams {
        upstream.fail_with(503);
    }
    let rules = "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 2, retryOn: 5xx, retryIgnorePreviousHosts: true}\n";
    let agent = reviews
        .agent(
            "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
            &virtual_service(rules),
        )
        .await;
    let client = Client::h1(agent.outbound);
    let before: Vec<usize> = reviews.upstreams.iter().map(Upstream::count).collect();
    let reply = client
        .get_with("http://reviews:9080/fail", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 503);
    let tries: Vec<usize> = (reviews.upstreams.iter().zip(&before))
        .map(|(u, b)| u.count() - b)
        .collect();
    assert_eq!(tries.iter().sum::<usize>(), 3, "{tries:?}");
    assert!(
        tries.iter().all(|t| *t <= 1),
        "a retry went back: {tries:?}"
    );
}

/// A cookie hash policy with a `ttl` makes the cookie for a request that
/// came without it, routes that request by it, and sets it on the
/// response, as Envoy does under Istio's rendering: the client's next
/// requests, carrying it, reach the same endpoint. The agent made none, so
/// a client never got session affinity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cookie_hash_with_a_ttl_sets_the_cookie_it_routes_by() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent(
            "{loadBalancer: {consistentHash: {httpCookie: {name: sess, ttl: 60s, path: /, attributes: [{name: SameSite, value: Strict}]}}}}",
            "",
        )
        .await;
    let mut homes = std::collections::HashSet::new();
    for _ in 0..12 {
        // A new connection each time: a new cookie.
        let client = Client::h1(agent.outbound);
        let first = client.get("http://reviews:9080/cookie").await;
        assert_eq!(first.status, 200);
        let set = first.header("set-cookie").expect("a cookie is set");
        let value = set
            .strip_prefix("sess=\"")
            .and_then(|v| v.split_once('"'))
            .map(|(v, rest)| {
                assert_eq!(rest, "; Max-Age=60; Path=/; SameSite=Strict; HttpOnly");
                v.to_owned()
            })
            .unwrap_or_else(|| panic!("set-cookie: {set}"));
        assert_eq!(value.len(), 16, "{set}");
        let home = first.upstream();
        for cookie in [
            format!("sess=\"{value}\""),
            format!("a=1; sess=\"{value}\""),
        ] {
            let next = Client::h1(agent.outbound)
                .get_with("http://reviews:9080/cookie", &[("cookie", &cookie)])
                .await;
            assert_eq!(next.upstream(), home, "{cookie}");
            assert_eq!(
                next.header("set-cookie"),
                None,
                "a request with it gets none"
            );
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "new clients spread: {homes:?}");
}

/// `useSourceIp` hashes the downstream remote address, which a sidecar
/// takes from `x-forwarded-for` as Envoy does (`use_remote_address:
/// false`): an app that forwards its users' addresses spreads them over
/// the endpoints. The agent hashed the app's own address, and sent every
/// user to one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_ip_hash_reads_the_forwarded_address() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent("{loadBalancer: {consistentHash: {useSourceIp: true}}}", "")
        .await;
    let homes = Client::h1(agent.outbound)
        .homes_by_forwarded_for("http://reviews:9080/ip")
        .await;
    assert!(
        homes.len() >= 2,
        "16 forwarded addresses should spread over the endpoints: {homes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_name_of_a_service_reaches_it() {
    let reviews = Reviews::start().await;
    let agent = reviews
        .agent("{loadBalancer: {simple: ROUND_ROBIN}}", "")
        .await;
    let client = Client::h1(agent.outbound);
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS:9080",
    ] {
        let reply = client.get(&format!("http://{host}/")).await;
        assert_eq!(reply.status, 200, "{host}");
    }
    let reply = client.get("http://ratings:9080/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("x-tracemesh-response-flags").as_deref(),
        Some("NR")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_edit_request_and_response_headers() {
    let reviews = Reviews::start().await;
    let rules = r#"  - headers:
      request: {set: {x-route: edited}, remove: [x-drop-me]}
      response: {add: {x-served-by: tracemesh}}
    route:
    - destination: {host: reviews, subset: v3}
      headers: {request: {add: {x-destination: v3}}}
"#;
    let agent = reviews
        .agent(
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            &virtual_service(rules),
        )
        .await;
    let reply = Client::h1(agent.outbound)
        .get_with(
            "http://reviews:9080/",
            &[("x-route", "original"), ("x-drop-me", "1")],
        )
        .await;
    assert_eq!(reply.header("x-served-by").as_deref(), Some("tracemesh"));
    let seen = reviews.upstreams[3].seen().pop().unwrap();
    assert_eq!(seen.headers["x-route"], "edited");
    assert_eq!(seen.headers["x-destination"], "v3");
    assert!(!seen.headers.contains_key("x-drop-me"));
}

/// `reviews` (every version) and one service per version, `reviews-v1` …
/// `reviews-v3`, as Gateway API routes name backends (Services, not
/// subsets).
struct Versions {
    upstreams: Vec<Upstream>,
}

impl Versions {
    async fn start() -> Versions {
        let mut upstreams = Vec::new();
        for name in ["v1", "v2", "v3"] {
            upstreams.push(Upstream::start(name).await);
        }
        Versions { upstreams }
    }

    async fn agent(&self, routing: &str) -> Agent {
        let all: Vec<Ep<'_>> = self
            .upstreams
            .iter()
            .map(|u| Ep {
                addr: u.addr,
                labels: &[("app", "reviews")],
            })
            .collect();
        let mut yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
            + &service_entry("reviews", 9080, "HTTP", &all);
        for u in &self.upstreams {
            let ep = [Ep {
                addr: u.addr,
                labels: &[("app", "reviews")],
            }];
            yaml += &service_entry(&format!("reviews-{}", u.name), 9080, "HTTP", &ep);
        }
        Agent::start(&(yaml + routing))
    }

    fn seen(&self, name: &str) -> Vec<common::upstream::Seen> {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap()
            .seen()
    }
}

/// The HTTPRoute below written as a VirtualService: its rules in the
/// order the Gateway API ranks the HTTPRoute's (exact path, longer
/// prefix, method, headers, query parameters), `PathPrefix /api` as the
/// regex `/api(/.*)?` (a prefix on segment boundaries).
const REVIEWS_VIRTUAL_SERVICE: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {exact: /exact}}]
    headers: {request: {set: {x-route: edited}}}
    route: [{destination: {host: reviews-v2}}]
  - match: [{uri: {regex: "/api(/.*)?"}}]
    route: [{destination: {host: reviews-v3}}]
  - match: [{method: {exact: POST}}]
    route: [{destination: {host: reviews-v2}}]
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews-v3}}]
  - match: [{queryParams: {debug: {exact: "true"}}}]
    route:
    - {destination: {host: reviews-v1}, weight: 0}
    - {destination: {host: reviews-v2}, weight: 1}
  - route: [{destination: {host: reviews-v1}}]
"#;

/// GAMMA: an HTTPRoute attached to the `reviews` Service, rules written in
/// no particular order.
const REVIEWS_HTTP_ROUTE: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{queryParams: [{name: debug, value: "true"}]}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 0}
    - {name: reviews-v2, port: 9080}
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - matches: [{method: POST}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - matches: [{path: {type: Exact, value: /exact}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: edited}]}
    backendRefs: [{name: reviews-v2, port: 9080}]
"#;

/// An HTTPRoute attached to a Service routes the sidecar's requests as
/// its VirtualService equivalent does, request for request, against real
/// upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_route_on_a_service_routes_as_its_virtual_service_equivalent() {
    let versions = Versions::start().await;
    // (method, path, headers, version expected)
    let cases: &[Case] = &[
        ("GET", "/exact", &[], "v2"),
        ("GET", "/exactly", &[], "v1"),
        ("GET", "/api/list", &[], "v3"),
        ("GET", "/api", &[], "v3"),
        ("GET", "/apix", &[], "v1"),
        ("POST", "/api/x", &[], "v3"),
        ("POST", "/any", &[], "v2"),
        ("POST", "/any", &[("end-user", "jason")], "v2"),
        ("GET", "/any", &[("end-user", "jason")], "v3"),
        ("GET", "/any?debug=true", &[], "v2"),
        ("GET", "/any?debug=true", &[("end-user", "jason")], "v3"),
        ("GET", "/any", &[], "v1"),
    ];
    for routing in [REVIEWS_VIRTUAL_SERVICE, REVIEWS_HTTP_ROUTE] {
        let kind = if routing.contains("HTTPRoute") {
            "HTTPRoute"
        } else {
            "VirtualService"
        };
        let agent = versions.agent(routing).await;
        let client = Client::h1(agent.outbound);
        for (method, path, headers, version) in cases {
            let reply = client.send(reviews_request(method, path, headers)).await;
            assert_eq!(reply.status, 200, "{kind}: {method} {path}");
            assert_eq!(
                reply.upstream(),
                *version,
                "{kind}: {method} {path} {headers:?}"
            );
        }
        let edited = versions.seen("v2");
        let exact = edited.iter().rev().find(|s| s.path == "/exact").unwrap();
        assert_eq!(exact.headers["x-route"], "edited", "{kind}");
    }
}

/// Where an HTTPRoute and a VirtualService both route a host for this
/// workload, Istio's order decides: an HTTPRoute of the workload's own
/// namespace first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_route_of_the_clients_namespace_wins_over_a_virtual_service() {
    let versions = Versions::start().await;
    let everything_to_v3 = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-all, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews-v3}}]}]
"#;
    let agent = versions
        .agent(&(everything_to_v3.to_owned() + REVIEWS_HTTP_ROUTE))
        .await;
    let client = Client::h1(agent.outbound);
    assert_eq!(client.get("http://reviews:9080/any").await.upstream(), "v1");
    assert_eq!(
        client.get("http://reviews:9080/exact").await.upstream(),
        "v2"
    );
}

/// A service's VIPs are names of it, as Istio puts a service's addresses
/// among its virtual host's domains: `Host: <vip>` and `<vip>:<port>`
/// reach it; an address inside a wider CIDR of `addresses` names nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_services_vip_as_host_reaches_it() {
    let app = Upstream::start("vip").await;
    let yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
        + &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: vip, namespace: default}}\nspec:\n  hosts: [vip.example.com]\n  addresses: [10.96.7.7, \"fd00:96::7\", 10.97.0.9/32, 10.98.0.0/16]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - address: {}\n    ports: {{http: {}}}\n",
            app.addr.ip(),
            app.addr.port()
        );
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    for host in [
        "10.96.7.7",
        "10.96.7.7:80",
        "[fd00:96::7]",
        "[fd00:96::7]:80",
        "10.97.0.9",
    ] {
        let reply = client.get(&format!("http://{host}/")).await;
        assert_eq!(
            reply.status,
            200,
            "{host}: {:?}",
            reply.header("x-tracemesh-response-flags")
        );
        assert_eq!(reply.upstream(), "vip", "{host}");
    }
    for host in ["10.96.7.8", "10.98.0.1", "10.98.0.0"] {
        let reply = client.get(&format!("http://{host}/")).await;
        assert_eq!(reply.status, 404, "{host}");
        assert_eq!(
            reply.header("x-tracemesh-response-flags").as_deref(),
            Some("NR"),
            "{host}"
        );
    }
    assert_eq!(app.count(), 5);
}

/// A ServiceEntry's own hosts are literal, as Istio's `convertServices`
/// takes them: `localhost` is a service named `localhost`, its DNS
/// resolution dials `localhost`, and its metrics name it so — not
/// `localhost.default.svc.cluster.local`, which no DNS knows. A
/// VirtualService or DestinationRule naming `localhost` still means the
/// namespace's `localhost.default.svc.cluster.local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_entry_host_without_a_dot_is_taken_as_written() {
    let app = Upstream::start("local").await;
    let port = app.addr.port();
    let yaml = agent("productpage", closed_port().await, NO_COLLECTOR)
        + &format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: local, namespace: default}}\nspec:\n  hosts: [localhost]\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        );
    let agent = Agent::start(&yaml);
    let client = Client::h1(agent.outbound);
    let reply = client.get(&format!("http://localhost:{port}/x")).await;
    assert_eq!(
        reply.status,
        200,
        "{:?} {:?}",
        reply.header("x-tracemesh-response-flags"),
        reply.body
    );
    assert_eq!(reply.upstream(), "local");
    assert_eq!(app.count(), 1);
    let mut served = 0.0;
    for _ in 0..50 {
        let scrape = agent.metrics().await;
        served = scrape.sum(
            "istio_requests_total",
            &[
                ("destination_service", "localhost"),
                ("destination_service_name", "localhost"),
                ("destination_service_namespace", "default"),
                ("response_code", "200"),
            ],
        );
        if served > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(served, 1.0);

    // A DestinationRule for `localhost` in `default` names
    // `localhost.default.svc.cluster.local`, which nothing declares: warned,
    // and the entry keeps its own policy.
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: local, namespace: default}\nspec:\n  host: localhost\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let (ok, out) = common::agent::validate(&(yaml + rule));
    assert!(ok, "{out}");
    assert!(
        out.contains("no ServiceEntry declares localhost.default.svc.cluster.local"),
        "{out}"
    );
}

/// A VirtualService delegating part of its routes (`http[].delegate`) on a
/// sidecar, as Istio's `mergeVirtualServices` merges it for sidecars too:
/// the delegate (no hosts) applies only under the root rule, its
/// conditions narrowed by the root's and the root's rule-level fields
/// filling what it leaves out; a delegate rule that conflicts with the
/// root's conditions is dropped, and a root rule whose delegate is missing
/// or not exported to it is dropped, its requests falling through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delegating_rule_takes_its_delegates_rules_under_its_own() {
    let reviews = Reviews::start().await;
    let root = virtual_service(
        r#"  - name: api
    match: [{uri: {prefix: /api}}]
    delegate: {name: reviews-api}
    headers: {response: {set: {x-root: api}}}
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let delegate = |namespace: &str, export: &str| {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-api, namespace: {namespace}}}
spec:
  exportTo: {export}
  http:
  - name: v2
    match: [{{uri: {{prefix: /api/v2}}}}]
    route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: v2}}}}]
  - name: elsewhere
    match: [{{uri: {{prefix: /other}}}}]
    route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: v3}}}}]
"#
        )
    };
    let policy = "{loadBalancer: {simple: ROUND_ROBIN}}";
    let yaml = root.clone() + &delegate("default", "[\"*\"]");
    let agent = reviews.agent(policy, &yaml).await;
    let (ok, out) = common::agent::validate(&std::fs::read_to_string(&agent.config).unwrap());
    assert!(ok, "{out}");
    assert!(
        out.contains("VirtualService default/reviews-api")
            && out.contains("spec.http[1].match")
            && out.contains("conflicts with every match of the rule delegating to it"),
        "the conflicting delegate rule is named: {out}"
    );
    let client = Client::h1(agent.outbound);
    // (path, subset, the root rule's response header)
    let cases = [
        ("/api/v2/x", "v2", Some("api")),
        ("/api/v1", "v1", None),
        ("/other", "v1", None),
        ("/", "v1", None),
    ];
    for (path, subset, header) in cases {
        let reply = client.send(reviews_request("GET", path, &[])).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply.upstream().starts_with(subset),
            "{path} went to {}, want {subset}",
            reply.upstream()
        );
        assert_eq!(reply.header("x-root").as_deref(), header, "{path}");
    }
    drop(agent);

    // Without the delegate, or with one not exported to the root's
    // namespace, only the delegating rule is dropped.
    for (extra, why) in [
        (
            String::new(),
            "delegate VirtualService default/reviews-api not found",
        ),
        // Its namespace defaults to the root's: one in `api` is not it.
        (
            delegate("api", "[\"*\"]"),
            "delegate VirtualService default/reviews-api not found",
        ),
    ] {
        let agent = reviews.agent(policy, &(root.clone() + &extra)).await;
        let (ok, out) = common::agent::validate(&std::fs::read_to_string(&agent.config).unwrap());
        assert!(ok, "{out}");
        assert!(
            out.contains("VirtualService default/reviews")
                && out.contains("spec.http[0].delegate")
                && out.contains(why),
            "{out}"
        );
        let reply = client_get(&agent, "/api/v2/x").await;
        assert_eq!(reply.status, 200);
        assert!(reply.upstream().starts_with("v1"), "{}", reply.upstream());
    }
    let hidden = root.replace(
        "delegate: {name: reviews-api}",
        "delegate: {name: reviews-api, namespace: api}",
    ) + &delegate("api", "[\".\"]");
    let agent = reviews.agent(policy, &hidden).await;
    let (ok, out) = common::agent::validate(&std::fs::read_to_string(&agent.config).unwrap());
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "delegate VirtualService api/reviews-api is not exported to namespace default"
        ),
        "{out}"
    );
    let reply = client_get(&agent, "/api/v2/x").await;
    assert!(reply.upstream().starts_with("v1"), "{}", reply.upstream());
    drop(agent);
    let visible = root.replace(
        "delegate: {name: reviews-api}",
        "delegate: {name: reviews-api, namespace: api}",
    ) + &delegate("api", "[default]");
    let agent = reviews.agent(policy, &visible).await;
    let reply = client_get(&agent, "/api/v2/x").await;
    assert!(reply.upstream().starts_with("v2"), "{}", reply.upstream());
}

async fn client_get(agent: &Agent, path: &str) -> common::client::Reply {
    Client::h1(agent.outbound)
        .send(reviews_request("GET", path, &[]))
        .await
}

/// A Sidecar's egress hosts import another namespace's VirtualService only
/// when they name that namespace, as Istio's `SelectVirtualServices`
/// imports them: with `./*`, a VirtualService in `other` for this
/// namespace's service no longer steers the workload (it did: its header
/// edit and route applied); with `*/*` it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecars_egress_hosts_import_virtual_services_by_namespace() {
    let reviews = Reviews::start().await;
    let foreign = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sneaky, namespace: other}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - headers: {request: {set: {x-sneaky: "1"}}}
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v3}}]
"#;
    let sidecar = |hosts: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec:\n  egress: [{{hosts: [\"{hosts}\"]}}]\n"
        )
    };
    let seen_sneaky = |reviews: &Reviews| {
        reviews
            .upstreams
            .iter()
            .flat_map(|u| u.seen())
            .filter(|r| r.headers.contains_key("x-sneaky"))
            .count()
    };

    let agent = reviews
        .agent(
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            &(foreign.to_owned() + &sidecar("./*")),
        )
        .await;
    let client = Client::h1(agent.outbound);
    for _ in 0..8 {
        assert_eq!(client.get("http://reviews:9080/").await.status, 200);
    }
    assert_eq!(seen_sneaky(&reviews), 0, "other's VirtualService applied");
    let (ok, out) = common::agent::validate_file(&agent.config);
    assert!(
        ok && out.contains("outside the egress hosts of Sidecar default/default"),
        "{out}"
    );
    drop(agent);

    let agent = reviews
        .agent(
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            &(foreign.to_owned() + &sidecar("*/*")),
        )
        .await;
    let reply = Client::h1(agent.outbound).get("http://reviews:9080/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), "v3");
    assert_eq!(seen_sneaky(&reviews), 1);
}

/// Where several namespaces declare one host, the workload takes the
/// entry of its own namespace, else the oldest (`creationTimestamp`), as
/// Istio's `selectServices` picks, and a Sidecar chooses among the entries
/// its egress hosts import: `./*` keeps the own namespace's entry (it was
/// hidden behind another namespace's, first in the file, and answered 404)
/// and hides a host only other namespaces declare; `other/*` takes
/// other's entry though this namespace declares the host too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_several_namespaces_declaring_a_host_the_own_then_the_oldest_serves() {
    let mut upstreams = Vec::new();
    for name in ["other", "own", "newer", "older"] {
        upstreams.push(Upstream::start(name).await);
    }
    let entry = |name: &str, namespace: &str, created: &str, host: &str, u: &Upstream| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}{created}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {}, ports: {{http: {}}}}}]\n",
            u.addr.ip(),
            u.addr.port()
        )
    };
    let entries = entry(
        "api-other",
        "other",
        "",
        "api.ext.example.com",
        &upstreams[0],
    ) + &entry(
        "api-own",
        "default",
        "",
        "api.ext.example.com",
        &upstreams[1],
    ) + &entry(
        "db-new",
        "zeta",
        ", creationTimestamp: \"2025-06-01T00:00:00Z\"",
        "db.ext.example.com",
        &upstreams[2],
    ) + &entry(
        "db-old",
        "alpha",
        ", creationTimestamp: \"2020-01-01T00:00:00Z\"",
        "db.ext.example.com",
        &upstreams[3],
    );
    let sidecar = |hosts: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec:\n  egress: [{{hosts: [\"{hosts}\"]}}]\n"
        )
    };
    let app = closed_port().await;
    let own = "default/api-own declares it too and is taken: it is the workload's own namespace's";
    let outside = |taken: &str| {
        format!(
            "{taken} declares it too and is taken: this entry is outside the Sidecar's egress hosts"
        )
    };
    let cases = [
        ("", "own", "older", own.to_owned()),
        (&*sidecar("./*"), "own", "", outside("default/api-own")),
        (
            &*sidecar("other/*"),
            "other",
            "",
            outside("other/api-other"),
        ),
    ];
    for (extra, api, db, warning) in cases {
        let yaml = agent("productpage", app, NO_COLLECTOR) + &entries + extra;
        let agent = Agent::start(&yaml);
        let client = Client::h1(agent.outbound);
        let reply = client.get("http://api.ext.example.com:9080/").await;
        assert_eq!(
            (reply.status.as_u16(), reply.upstream()),
            (200, api.to_owned()),
            "{extra}"
        );
        let reply = client.get("http://db.ext.example.com:9080/").await;
        if db.is_empty() {
            assert_eq!(reply.status, 404, "{extra}");
            assert_eq!(
                reply.header("x-tracemesh-response-flags").as_deref(),
                Some("NR")
            );
        } else {
            assert_eq!(
                (reply.status.as_u16(), reply.upstream()),
                (200, db.to_owned()),
                "{extra}"
            );
        }
        let (ok, out) = common::agent::validate_file(&agent.config);
        assert!(ok && out.contains(&warning), "{out}");
    }
}

/// A VirtualService this workload imports still reaches a destination its
/// Sidecar's egress hosts leave out: Istio infers the clusters of an
/// imported VirtualService's destinations (`collectImportedServices`), so
/// Envoy routes `/moved` to details — while details is still no route of
/// its own. (Found by a breaker: 503 NC.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_virtual_service_reaches_a_destination_the_sidecar_hides() {
    let reviews = Upstream::start("reviews").await;
    let details = Upstream::start("details").await;
    let docs = service_entry(
        "reviews",
        9080,
        "HTTP",
        &[Ep {
            addr: reviews.addr,
            labels: &[("app", "reviews")],
        }],
    ) + &service_entry(
        "details",
        9080,
        "HTTP",
        &[Ep {
            addr: details.addr,
            labels: &[("app", "details")],
        }],
    ) + &virtual_service(
        "  - match: [{uri: {prefix: /moved}}]\n    route: [{destination: {host: details.default.svc.cluster.local}}]\n  - route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
    ) + "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: narrow, namespace: default}\nspec:\n  egress: [{hosts: [\"./reviews.default.svc.cluster.local\"]}]\n";
    let config = agent("productpage", closed_port().await, NO_COLLECTOR) + &docs;
    let (ok, out) = common::agent::validate(&config);
    assert!(ok && !out.contains("503 NC"), "{out}");
    let agent = Agent::start(&config);
    let client = Client::h1(agent.outbound);
    let reply = client.get("http://reviews:9080/moved").await;
    assert_eq!(reply.status, 200, "{:?}", reply.headers);
    assert_eq!(reply.upstream(), "details");
    assert_eq!(
        client.get("http://reviews:9080/").await.upstream(),
        "reviews"
    );
    let direct = client.get("http://details:9080/").await;
    assert_ne!(direct.status, 200, "details is no route of its own");
    assert_eq!(details.count(), 1);
}
