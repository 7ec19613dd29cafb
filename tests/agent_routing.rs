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
        let mut req = Request::builder()
            .method(*method)
            .uri(format!("http://reviews:9080{path}"));
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let reply = client.send(req.body(Full::default()).unwrap()).await;
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
