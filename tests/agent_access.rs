//! Inbound rate limiting (RateLimitPolicy) and access control
//! (AuthorizationPolicy): per-IP buckets and IP allow/block lists as the
//! article's traffic-management list has them, Istio's DENY-before-ALLOW.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::agent::Agent;
use common::client::{Client, raw_exchange};
use common::mesh::{NO_COLLECTOR, agent, agent_with};
use common::upstream::Upstream;

const OTHER_CLIENT: &str = "127.0.0.2";

/// Client, method, path, headers, expected status.
type Case<'a> = (&'a Client, &'a str, &'a str, &'a [(&'a str, &'a str)], u16);

/// A workload agent fronting `app`, with `extra` resources; clients call its
/// inbound listener as the mesh would.
fn workload(app: &Upstream, extra: &str) -> Agent {
    Agent::start(&(agent("reviews", app.addr, NO_COLLECTOR) + extra))
}

/// [`workload`] with its access log on (JSON lines on standard output).
fn logged_workload(app: &Upstream, extra: &str) -> Agent {
    let yaml = agent_with(
        "reviews",
        app.addr,
        NO_COLLECTOR,
        "  accessLog: {enabled: true}",
    );
    Agent::start(&(yaml + extra))
}

fn from(ip: &str, agent: &Agent) -> Client {
    Client::h1_from(ip.parse::<IpAddr>().unwrap(), agent.inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_start_when_the_bucket_empties_per_client_ip() {
    let app = Upstream::start("app").await;
    let policy = r#"---
apiVersion: tracemesh.io/v1
kind: RateLimitPolicy
metadata: {name: per-client, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - name: per-ip
    match: {paths: ["/api/*"]}
    key: {sourceIp: true}
    tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 1h}
  - name: everyone
    match: {paths: ["/global"]}
    tokenBucket: {maxTokens: 3, fillInterval: 1h}
"#;
    let agent = workload(&app, policy);
    let first = Client::h1(agent.inbound);
    for remaining in (0..5).rev() {
        let reply = first.get("http://reviews:9080/api/x").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some(remaining.to_string())
        );
    }
    let limited = first.get("http://reviews:9080/api/x").await;
    assert_eq!(
        limited.status, 429,
        "the sixth request finds the bucket empty"
    );
    assert_eq!(
        limited.header("x-tracemesh-response-flags").as_deref(),
        Some("RL")
    );
    assert_eq!(
        limited.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (3000..=3600).contains(&retry_after),
        "retry-after {retry_after}s"
    );
    assert_eq!(&limited.body[..], b"local_rate_limited");
    assert_eq!(
        first.get("http://reviews:9080/other").await.status,
        200,
        "unmatched paths are not limited"
    );

    let second = from(OTHER_CLIENT, &agent);
    let reply = second.get("http://reviews:9080/api/x").await;
    assert_eq!(reply.status, 200, "another client IP has its own bucket");
    assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("4"));

    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for client in [&first, &second, &first, &second] {
            s.push(
                client
                    .get("http://reviews:9080/global")
                    .await
                    .status
                    .as_u16(),
            );
        }
        s
    };
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "a global bucket is shared by all clients"
    );
    let scrape = agent.metrics().await;
    assert_eq!(
        scrape.sum(
            "istio_requests_total",
            &[("response_code", "429"), ("response_flags", "RL")]
        ),
        2.0
    );
    assert_eq!(app.count(), 5 + 1 + 1 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_comes_before_allow() {
    let app = Upstream::start("app").await;
    let policies = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allowed, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
  - to: [{operation: {methods: [GET], paths: ["/public/*"]}}]
  - when: [{key: "request.headers[x-token]", values: ["good"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{}]
"#;
    let agent = workload(&app, policies);
    let local = Client::h1(agent.inbound);
    let other = from(OTHER_CLIENT, &agent);
    let cases: [Case; 7] = [
        (&local, "GET", "/anything", &[], 200),
        (&local, "GET", "/admin/users", &[], 403),
        (&other, "GET", "/public/page", &[], 200),
        (&other, "POST", "/public/page", &[], 403),
        (&other, "GET", "/private", &[("x-token", "good")], 200),
        (&other, "GET", "/private", &[("x-token", "bad")], 403),
        (&other, "GET", "/admin/x", &[("x-token", "good")], 403),
    ];
    for (client, method, path, headers, status) in cases {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://reviews:9080{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let reply = client
            .send(req.body(http_body_util::Full::default()).unwrap())
            .await;
        assert_eq!(reply.status, status, "{method} {path} {headers:?}");
        if status == 403 {
            assert_eq!(&reply.body[..], b"RBAC: access denied");
            assert_eq!(
                reply.header("x-tracemesh-response-flags").as_deref(),
                Some("RBAC")
            );
        }
    }
    assert_eq!(app.count(), 3, "denied requests never reach the app");
    let scrape = agent.metrics().await;
    assert_eq!(
        scrape.sum(
            "istio_requests_total",
            &[("response_code", "403"), ("response_flags", "RBAC")]
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_allow_and_block_lists() {
    let app = Upstream::start("app").await;
    let allow_list = r#"---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-list, namespace: default}
spec:
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.1"]}}]
"#;
    let allowing = workload(&app, allow_list);
    assert_eq!(
        Client::h1(allowing.inbound)
            .get("http://reviews/")
            .await
            .status,
        200
    );
    assert_eq!(
        from(OTHER_CLIENT, &allowing)
            .get("http://reviews/")
            .await
            .status,
        403,
        "not on the allow list"
    );
    drop(allowing);

    let block_list = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-list, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.2/32"]}}]
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
"#;
    // A sidecar's inbound reads the original client as Istio renders it
    // (use_remote_address false, no trusted hops): the last
    // x-forwarded-for entry, the one the hop in front appended.
    let yaml = agent("reviews", app.addr, NO_COLLECTOR) + block_list;
    let blocking = Agent::start(&yaml);
    let local = Client::h1(blocking.inbound);
    assert_eq!(local.get("http://reviews/").await.status, 200);
    assert_eq!(
        from(OTHER_CLIENT, &blocking)
            .get("http://reviews/")
            .await
            .status,
        403,
        "on the block list"
    );
    let cases = [
        ("203.0.113.9", 403, "the original client is blocked"),
        ("198.51.100.1", 200, "another original client"),
        (
            "203.0.113.9, 198.51.100.1",
            200,
            "only the entry the hop in front appended counts",
        ),
        (
            "198.51.100.1, 203.0.113.9",
            403,
            "the entry the hop in front appended is blocked",
        ),
    ];
    for (xff, status, why) in cases {
        let reply = local
            .get_with("http://reviews/", &[("x-forwarded-for", xff)])
            .await;
        assert_eq!(reply.status, status, "{why}");
    }
    // An empty line or entry adds no hop (Envoy drops empty entries when it
    // splits the header): a blocked client stays blocked behind one.
    for padding in ["", " ", "198.51.100.1,,"] {
        let reply = local
            .get_with(
                "http://reviews/",
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", padding),
                ],
            )
            .await;
        let expected = if padding.is_empty() || padding == " " {
            403
        } else {
            200
        };
        assert_eq!(reply.status, expected, "padded with {padding:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_and_spans_read_the_normalized_path() {
    let receiver = common::otlp::Receiver::start().await;
    let app = Upstream::start("app").await;
    let policy = r#"---
apiVersion: tracemesh.io/v1
kind: RateLimitPolicy
metadata: {name: per-path, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - name: per-path
    match: {paths: ["/api/*"]}
    key: {path: true}
    tokenBucket: {maxTokens: 1, fillInterval: 1h}
"#;
    let agent = Agent::start(&(agent("reviews", app.addr, &receiver.endpoint()) + policy));
    let client = Client::h1(agent.inbound);
    // A path that reaches /api/x only once normalized takes /api/x's token,
    // and the app receives the path the limit counted.
    let first = client.get("http://reviews:9080/public/../api/%78").await;
    assert_eq!(first.status, 200);
    assert_eq!(app.seen().pop().unwrap().path, "/api/x");
    let second = client.get("http://reviews:9080/api/x").await;
    assert_eq!(second.status, 429, "both requests are /api/x to the limit");
    assert_eq!(client.get("http://reviews:9080/api/y").await.status, 200);
    let spans = receiver
        .wait_for("three server spans", |spans| spans.len() >= 3)
        .await;
    let mut paths: Vec<String> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    paths.sort();
    assert_eq!(paths, ["/api/x", "/api/x", "/api/y"]);
}

/// AUDIT policies mark the request as Envoy's RBAC `LOG` action does (the
/// `access_log_hint` Istio's AUDIT maps to): in the access log line, not
/// in a log line of the agent's own per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_policies_mark_the_access_log_line_not_the_agents_log() {
    let app = Upstream::start("app").await;
    let policy = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: default}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/other"]}}]
  - to: [{operation: {paths: ["/admin/*"]}}]
"#;
    let agent = logged_workload(&app, policy);
    let client = Client::h1(agent.inbound);
    for path in ["/admin/users", "/public"] {
        let reply = client.get(&format!("http://reviews:9080{path}")).await;
        assert_eq!(reply.status, 200, "AUDIT never refuses: {path}");
    }
    let audited = agent.access_log_line("/admin/users");
    assert_eq!(audited["access_log_hint"], true, "{audited}");
    assert_eq!(
        audited["audit_policy"], "default/audit-admin[1]",
        "{audited}"
    );
    let plain = agent.access_log_line("/public");
    assert!(plain.get("access_log_hint").is_none(), "{plain}");
    assert!(plain.get("audit_policy").is_none(), "{plain}");
    let noisy: Vec<String> = agent
        .stderr()
        .into_iter()
        .filter(|l| l.contains("AUDIT") || l.contains("audit-admin"))
        .collect();
    assert!(
        noisy.is_empty(),
        "no log line per audited request: {noisy:?}"
    );
}

/// The bucket tables of the rate-limit rules that apply to a workload are
/// bounded together (2^20 buckets, 16 MiB), as each one is alone: forty
/// rules of a million keys each made the agent take 676 MB when it
/// started. A rule that selects another workload allocates nothing and
/// counts for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_tables_are_bounded_together() {
    let app = Upstream::start("app").await;
    let rule = |name: &str| {
        format!(
            "  - name: {name}\n    key: {{sourceIp: true}}\n    maxKeys: 1048576\n    tokenBucket: {{maxTokens: 5, fillInterval: 1s}}\n"
        )
    };
    let policy = |name: &str, app_label: &str, rules: &str| {
        format!(
            "---\napiVersion: tracemesh.io/v1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: {app_label}}}}}\n  rules:\n{rules}"
        )
    };
    let one = policy("one", "reviews", &rule("big"));
    let elsewhere = policy("elsewhere", "ratings", &(rule("a") + &rule("b")));
    let base = agent("reviews", app.addr, NO_COLLECTOR);
    let agent_with = Agent::try_start(&(base.clone() + &one + &elsewhere));
    assert!(agent_with.is_ok(), "{:?}", agent_with.err());
    drop(agent_with);

    let two = policy("two", "reviews", &(rule("big") + &rule("bigger")));
    let refused = Agent::try_start(&(base + &two)).err().expect("refused");
    assert!(
        refused.contains("document 2 (RateLimitPolicy default/two")
            && refused.contains("spec.rules[1].maxKeys")
            && refused.contains("brings them to 2097152"),
        "{refused}"
    );
}

/// A Host with a trailing dot names the same host as without it
/// (`admin.example.com.` is the FQDN of `admin.example.com`): the agent
/// drops the dot before anything reads the host, as Envoy's
/// `strip_trailing_host_dot` does, so a DENY on the host's `hosts` holds
/// for it. Routing alone ignored the dot: the request reached the app past
/// the DENY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trailing_dot_in_the_host_does_not_pass_a_deny_on_its_hosts() {
    let app = Upstream::start("app").await;
    let policy = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-host, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["admin.example.com", "admin.example.com:*"]}}]
"#;
    let agent = workload(&app, policy);
    for client in [Client::h1(agent.inbound), Client::h2(agent.inbound)] {
        for host in [
            "admin.example.com.",
            "admin.example.com.:9080",
            "ADMIN.example.com.",
        ] {
            let reply = client.get(&format!("http://{host}/x")).await;
            assert_eq!(reply.status, 403, "{host}");
        }
        let reply = client.get("http://shop.example.com.:9080/x").await;
        assert_eq!(reply.status, 200);
    }
    // Userinfo in an HTTP/2 `:authority` is malformed (RFC 9113 §8.3.1),
    // refused as Envoy's codec refuses it: `u@admin.example.com` was judged
    // as another host and reached the app.
    let reply = Client::h2(agent.inbound)
        .get("http://u@admin.example.com/x")
        .await;
    assert_eq!(reply.status, 400);
    // Nor in a Host line (RFC 9112 §3.2: `uri-host [":" port]`).
    let raw = "GET /x HTTP/1.1\r\nHost: u@admin.example.com\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(agent.inbound, raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(app.count(), 2, "denied requests never reach the app");
    assert_eq!(
        app.last_header("host").as_deref(),
        Some("shop.example.com:9080"),
        "the app sees the host without its dot"
    );
}

/// A policy annotated `istio.io/dry-run: "true"` decides nothing, as
/// Istio's shadow rules decide nothing: a dry-run DENY refuses no request,
/// a dry-run ALLOW of everything lets in nothing the enforced ALLOW keeps
/// out. What they would have decided is in the access log line
/// (`authz_dry_run`), whatever the enforced policies decided. Both were
/// enforced as if the annotation were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_policies_are_recorded_and_never_enforced() {
    let app = Upstream::start("app").await;
    let policies = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: default
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: everyone
  namespace: default
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: public-and-admin
  namespace: default
  annotations: {"istio.io/dry-run": "false"}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/public", "/admin/*"]}}]
"#;
    let agent = logged_workload(&app, policies);
    let client = Client::h1(agent.inbound);
    for (path, status, dry_run) in [
        ("/admin/users", 200, "denied by default/no-admin[0]"),
        ("/public", 200, "allowed by default/everyone[0]"),
        ("/private", 403, "allowed by default/everyone[0]"),
    ] {
        let reply = client.get(&format!("http://reviews:9080{path}")).await;
        assert_eq!(reply.status, status, "{path}");
        let line = agent.access_log_line(path);
        assert_eq!(line["authz_dry_run"], dry_run, "{line}");
    }
    assert_eq!(app.count(), 2);
}

/// The access log names the upstream connection's own address (Envoy's
/// `%UPSTREAM_LOCAL_ADDRESS%`, in Istio's default format): the address
/// the app saw the request come from, on a new and on a pooled
/// connection. It was always null.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_access_log_names_the_upstream_connections_local_address() {
    let app = Upstream::start("app").await;
    let agent = logged_workload(&app, "");
    // One downstream connection: both requests on one worker, whose pool
    // gives the second the first one's upstream connection.
    let mut client = common::client::OneConnection::open(agent.inbound).await;
    for path in ["/first", "/second"] {
        let (status, _) = client.get("reviews:9080", path).await.unwrap();
        assert_eq!(status, 200, "{path}");
        let line = agent.access_log_line(path);
        let seen = app.seen().into_iter().find(|s| s.path == path).unwrap();
        assert_eq!(
            line["upstream_local_address"],
            seen.peer.to_string(),
            "{line}"
        );
    }
    assert_eq!(app.accepted_connections(), 1, "the second was pooled");
}
