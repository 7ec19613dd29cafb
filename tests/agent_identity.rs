//! End-user identity and external authorization on the request path, as
//! Istio configures them: RequestAuthentication (JWT) with the statuses
//! Istio gives each token, claims in AuthorizationPolicy `when` conditions,
//! and CUSTOM policies asking a real external authorizer over Envoy's HTTP
//! and gRPC ext_authz protocols — before DENY and ALLOW, with the
//! provider's `failOpen`, `statusOnError` and `timeout`. Each outcome names
//! what decided it in the reply header, the span and the access log.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use common::agent::Agent;
use common::client::{Client, Reply};
use common::ext_authz;
use common::mesh::{AgentDoc, NO_COLLECTOR, istio_config_map};
use common::otlp::Receiver;
use common::upstream::{FNV_START, Upstream, closed_port, fnv, pattern, resetting_server};
use http_body_util::Full;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

const DETAILS: &str = "x-tracemesh-response-code-details";
const ISSUER: &str = "https://issuer.example.com";

/// An ES256 signing key and its public JWK.
struct Signer {
    pair: EcdsaKeyPair,
    jwk: serde_json::Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                         "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        Self { pair, jwk }
    }

    /// A compact JWS (RFC 7515) over `claims`.
    fn token(&self, claims: &serde_json::Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.jwk["kid"]});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(aud: &str, exp_in: i64, groups: &[&str]) -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": aud, "exp": now() + exp_in, "groups": groups})
}

fn workload(app: SocketAddr, otlp: &str, extra: &str) -> String {
    AgentDoc {
        name: "reviews-v1",
        service: "reviews",
        app: "reviews",
        version: "v1",
        app_addr: app,
        otlp,
        app_protocol: "HTTP",
        outbound_tcp: "[]",
        extra: "  accessLog: {enabled: true}",
    }
    .yaml()
        + extra
}

/// A refused request: status, body, flags and details in the reply header,
/// the span and the access log.
async fn refused(
    agent: &Agent,
    otlp: &Receiver,
    reply: &Reply,
    path: &str,
    (status, body, flags): (u16, &str, &str),
    details: &str,
) {
    assert_eq!(reply.status.as_u16(), status, "{path}: {:?}", reply.body);
    assert_eq!(String::from_utf8_lossy(&reply.body), body, "{path}: body");
    assert_eq!(
        reply.header("x-tracemesh-response-flags").as_deref(),
        (flags != "-").then_some(flags),
        "{path}: flags"
    );
    assert_eq!(reply.header(DETAILS).as_deref(), Some(details), "{path}");
    let span = otlp.span_of(path).await;
    assert_eq!(
        span.attr("tracemesh.response_code_details").as_deref(),
        Some(details),
        "{path}: the span"
    );
    assert_eq!(
        span.attr("tracemesh.response_flags").as_deref(),
        Some(flags),
        "{path}: the span's flags"
    );
    let line = agent.access_log_line(path);
    assert_eq!(line["response_code_details"], details, "{path}: the log");
    assert_eq!(line["response_flags"], flags, "{path}: the log's flags");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_get_the_statuses_istio_gives_them_and_claims_decide_in_when() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let key = Signer::new("k1");
    let forger = Signer::new("k1");
    let jwks = json!({"keys": [key.jwk]}).to_string();
    let policies = format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [reviews]
    jwks: '{jwks}'
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/public"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/api/*"]}}}}]
    when:
    - {{key: "request.auth.claims[groups]", values: [admin]}}
"#
    );
    let agent = Agent::start(&workload(app.addr, &otlp.endpoint(), &policies));
    let client = Client::h1(agent.inbound);
    let url = |path: &str| format!("http://reviews:9080{path}");
    let bearer = |token: &str| format!("Bearer {token}");

    // No token: authentication passes; the ALLOW policy decides.
    assert_eq!(client.get(&url("/public")).await.status, 200);
    let reply = client.get(&url("/api/anonymous")).await;
    refused(
        &agent,
        &otlp,
        &reply,
        "/api/anonymous",
        (403, "RBAC: access denied", "RBAC"),
        "rbac_access_denied_matched_policy[none]",
    )
    .await;

    // Invalid tokens: 401 (403 for another audience) with Envoy's body and
    // www-authenticate.
    let cases = [
        (
            "/api/forged",
            forger.token(&claims("reviews", 600, &["admin"])),
            "Jwt verification fails",
            401,
        ),
        (
            "/api/expired",
            key.token(&claims("reviews", -600, &["admin"])),
            "Jwt is expired",
            401,
        ),
        (
            "/api/audience",
            // A genuine token for another service: 403, as Envoy's
            // jwt_authn answers (tests/conformance has the Envoy side).
            key.token(&claims("ratings", 600, &["admin"])),
            "Audiences in Jwt are not allowed",
            403,
        ),
    ];
    for (path, token, reason, status) in cases {
        let auth = bearer(&token);
        let reply = client
            .get_with(&url(path), &[("authorization", &auth)])
            .await;
        assert_eq!(
            reply.header("www-authenticate").as_deref(),
            Some(
                format!("Bearer realm=\"http://reviews:9080{path}\", error=\"invalid_token\"")
                    .as_str()
            ),
            "{path}"
        );
        let details = format!(
            "jwt_authn_access_denied{{{},RequestAuthentication:default/jwt[0]}}",
            reason.replace(' ', "_")
        );
        refused(&agent, &otlp, &reply, path, (status, reason, "-"), &details).await;
    }
    assert_eq!(app.count(), 1, "only /public reached the app so far");

    // A valid token: the claims decide in `when`.
    let member = bearer(&key.token(&claims("reviews", 600, &["dev"])));
    let reply = client
        .get_with(&url("/api/member"), &[("authorization", &member)])
        .await;
    refused(
        &agent,
        &otlp,
        &reply,
        "/api/member",
        (403, "RBAC: access denied", "RBAC"),
        "rbac_access_denied_matched_policy[none]",
    )
    .await;
    let admin = bearer(&key.token(&claims("reviews", 600, &["dev", "admin"])));
    let reply = client
        .get_with(
            &url("/api/admin"),
            &[("authorization", &admin), ("x-jwt-sub", "spoofed")],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.path, "/api/admin");
    assert_eq!(
        seen.headers.get("x-jwt-sub").unwrap(),
        "alice",
        "outputClaimToHeaders replaces what the caller sent"
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "forwardOriginalToken is false: the token stays at the sidecar"
    );
    // The ALLOW rule that let it in is named on the span and in the log.
    let span = otlp.span_of("/api/admin").await;
    assert_eq!(
        span.attr("tracemesh.authz.policy").as_deref(),
        Some("default/require-jwt[1]")
    );
    assert_eq!(
        agent.access_log_line("/api/admin")["authorization_policy"],
        "default/require-jwt[1]"
    );
}

/// Tokens Envoy's jwt_authn cannot even parse get its statuses word for
/// word (jwt_verify_lib's, as real Envoy 1.40 answers them): `alg: none`
/// is an unsupported algorithm, not invalid JSON; an empty signature is
/// not a three-part token; a claim of the wrong type is named before any
/// key or signature is looked at, and names no rule (none was reached); a
/// past `exp` is reported before a forged signature, naming the issuer's
/// rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unparseable_tokens_get_envoys_parse_statuses() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let key = Signer::new("k1");
    let jwks = json!({"keys": [key.jwk]}).to_string();
    let policy = format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{jwks}'\n"
    );
    let agent = Agent::start(&workload(app.addr, &otlp.endpoint(), &policy));
    let client = Client::h1(agent.inbound);
    let part = |v: serde_json::Value| b64(v.to_string().as_bytes());
    let payload = part(claims("reviews", 600, &[]));
    let es256 = part(json!({"alg": "ES256", "kid": "k1"}));
    let cases = [
        (
            "/alg-none",
            format!(
                "{}.{payload}.c2ln",
                part(json!({"alg": "none", "typ": "JWT"}))
            ),
            "Jwt header [alg] is not supported",
        ),
        (
            "/alg-none-unsigned",
            format!("{}.{payload}.", part(json!({"alg": "none"}))),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            "/alg-missing",
            format!("{}.{payload}.c2ln", part(json!({"typ": "JWT"}))),
            "Jwt header [alg] field is required and must be a string",
        ),
        (
            "/kid-number",
            format!("{}.{payload}.c2ln", part(json!({"alg": "ES256", "kid": 5}))),
            "Jwt header [kid] field is not a string",
        ),
        (
            "/header-not-json",
            format!("{}.{payload}.c2ln", b64(b"{alg")),
            "Jwt header is an invalid JSON",
        ),
        (
            "/payload-not-json",
            format!("{}.{}.c2ln", part(json!({"alg": "ES256"})), b64(b"[1")),
            "Jwt payload is an invalid JSON",
        ),
        (
            "/header-not-base64url",
            format!("ab+c.{payload}.c2ln"),
            "Jwt header is an invalid Base64url encoded",
        ),
        // Base64url whose last character has unused bits set: Envoy's
        // decoder ignores them, so what fails is the JSON.
        (
            "/header-trailing-bits",
            format!("ab.{payload}.c2ln"),
            "Jwt header is an invalid JSON",
        ),
        (
            "/exp-string",
            format!(
                "{es256}.{}.c2ln",
                part(json!({"iss": ISSUER, "exp": "123"}))
            ),
            "Jwt payload [exp] field is not an integer",
        ),
        (
            "/exp-negative",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "exp": -5}))),
            "Jwt payload [exp] field is not a positive 64 bit integer",
        ),
        (
            "/nbf-string",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "nbf": "1"}))),
            "Jwt payload [nbf] field is not an integer",
        ),
        (
            "/iat-string",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "iat": "1"}))),
            "Jwt payload [iat] field is not an integer",
        ),
        (
            "/sub-number",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "sub": 5}))),
            "Jwt payload [sub] field is not a string",
        ),
        (
            "/jti-number",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "jti": 5}))),
            "Jwt payload [jti] field is not a string",
        ),
        (
            "/aud-number",
            format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "aud": [5]}))),
            "Jwt payload [aud] field is not a string or string list",
        ),
    ];
    // The time window is judged before the signature, once the issuer's
    // rule is found (so the rule is named): a past `exp` (a fraction, read
    // as Envoy reads it) with a forged signature.
    let forged = format!("{es256}.{}.c2ln", part(json!({"iss": ISSUER, "exp": 1.5})));
    let expired = [("/exp-past-forged", forged, "Jwt is expired")];
    let rule = ",RequestAuthentication:default/jwt[0]";
    let named = cases
        .iter()
        .map(|c| (c, ""))
        .chain(expired.iter().map(|c| (c, rule)));
    for ((path, token, reason), rule) in named {
        let auth = format!("Bearer {token}");
        let reply = client
            .get_with(
                &format!("http://reviews:9080{path}"),
                &[("authorization", &auth)],
            )
            .await;
        let details = format!(
            "jwt_authn_access_denied{{{}{rule}}}",
            reason.replace(' ', "_")
        );
        refused(&agent, &otlp, &reply, path, (401, reason, "-"), &details).await;
    }
    assert_eq!(app.count(), 0);
}

/// The mesh config with one ext_authz provider named `authz`.
fn mesh_config(provider: &str) -> String {
    istio_config_map(&format!(
        "    extensionProviders:\n    - name: authz\n{provider}\n"
    ))
}

fn http_provider(target: SocketAddr, extra: &str) -> String {
    format!(
        "      envoyExtAuthzHttp:\n        service: {}\n        port: {}\n        includeRequestHeadersInCheck: [x-user, x-delay-ms]\n        headersToUpstreamOnAllow: [x-authz-user]\n        headersToDownstreamOnDeny: [x-denied-by]\n        headersToDownstreamOnAllow: [x-authz-checked]\n{extra}",
        target.ip(),
        target.port()
    )
}

fn grpc_provider(target: SocketAddr, extra: &str) -> String {
    format!(
        "      envoyExtAuthzGrpc:\n        service: {}\n        port: {}\n{extra}",
        target.ip(),
        target.port()
    )
}

/// CUSTOM on `/api/*`, and a DENY policy on `/api/local-deny` (CUSTOM is
/// asked first).
const CUSTOM_POLICIES: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: authz}
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: local-deny, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/local-deny"]}}]
"#;

const EXT_ITEM: &str = "AuthorizationPolicy:default/ext[0],provider:authz";

/// Envoy's ext_authz stats on the admin `/metrics`.
const EXT_AUTHZ_FAMILY: &str = "tracemesh_agent_ext_authz_requests_total";

/// Provider `authz`'s counts: ok, denied, error, disabled, failure_mode_allowed.
async fn ext_authz_counts(agent: &Agent) -> [u64; 5] {
    let scrape = agent.metrics().await;
    ["ok", "denied", "error", "disabled", "failure_mode_allowed"]
        .map(|r| scrape.sum(EXT_AUTHZ_FAMILY, &[("provider", "authz"), ("result", r)]) as u64)
}

/// `rq_total` of endpoint `addr` of `cluster` in the admin `/clusters`.
async fn rq_total(agent: &Agent, cluster: &str, addr: SocketAddr) -> u64 {
    let text = agent.admin_get("/clusters").await;
    let prefix = format!("{cluster}::{addr}::rq_total::");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} in {text}"))
}

/// The agent's log lines about failed checks.
fn failure_lines(agent: &Agent) -> Vec<String> {
    let lines = agent.stderr().into_iter();
    lines
        .filter(|l| l.contains("external authorization failed"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_policies_ask_the_http_authorizer_before_deny_and_allow() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let (authz, checks) = ext_authz::start_http().await;
    let config = workload(
        app.addr,
        &otlp.endpoint(),
        &(mesh_config(&http_provider(authz, "        timeout: 500ms\n")) + CUSTOM_POLICIES),
    );
    let agent = Agent::start(&config);
    let client = Client::h1(agent.inbound);

    // Allowed: the upstream sees the authorizer's header, the client the
    // one it adds on allow; the caller's x-remove-me is removed as asked.
    let reply = client
        .get_with(
            "http://reviews:9080/api/allowed",
            &[("x-user", "alice"), ("x-remove-me", "1")],
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-authz-checked").as_deref(), Some("yes"));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.headers.get("x-authz-user").unwrap(), "alice");
    assert!(seen.headers.get("x-authz-other").is_none());
    assert!(seen.headers.get("x-remove-me").is_none());
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.path, "/api/allowed");
    assert_eq!(check.header("x-user"), Some("alice"));
    let span = otlp.span_of("/api/allowed").await;
    assert_eq!(
        span.attr("tracemesh.authz.policy").as_deref(),
        Some("default/ext[0] provider=authz")
    );

    // Denied: the authorizer's status, body and the headers it may send down.
    let reply = client
        .get_with("http://reviews:9080/api/denied", &[("x-user", "bob")])
        .await;
    assert_eq!(reply.header("x-denied-by").as_deref(), Some("test-authz"));
    assert_eq!(reply.header("x-internal"), None);
    refused(
        &agent,
        &otlp,
        &reply,
        "/api/denied",
        (403, "denied by test-authz", "UAEX"),
        &format!("ext_authz_denied{{{EXT_ITEM}}}"),
    )
    .await;

    // CUSTOM comes first: the authorizer's denial wins over the DENY
    // policy, and once it allows the DENY policy still refuses.
    let reply = client
        .get_with("http://reviews:9080/api/local-deny", &[("x-user", "bob")])
        .await;
    assert_eq!(reply.header("x-denied-by").as_deref(), Some("test-authz"));
    let reply = client
        .get_with("http://reviews:9080/api/local-deny", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header(DETAILS).as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[local-deny]-rule[0]]")
    );

    // The authorizer too slow for the provider's timeout: statusOnError
    // (default 403), UAEX.
    let reply = client
        .get_with(
            "http://reviews:9080/api/slow",
            &[("x-user", "alice"), ("x-delay-ms", "3000")],
        )
        .await;
    refused(
        &agent,
        &otlp,
        &reply,
        "/api/slow",
        (403, "", "UAEX"),
        &format!("ext_authz_error{{{EXT_ITEM}}}"),
    )
    .await;

    // Paths no CUSTOM rule matches are not checked.
    let before = checks.lock().unwrap().len();
    assert_eq!(client.get("http://reviews:9080/other").await.status, 200);
    assert_eq!(checks.lock().unwrap().len(), before);

    // Counted as Envoy's ext_authz filter counts: two allowed (one then
    // refused by DENY), two denied, one timed out, one not checked.
    assert_eq!(ext_authz_counts(&agent).await, [2, 2, 1, 1, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_policies_ask_the_grpc_authorizer() {
    let app = Upstream::start("reviews").await;
    let (authz, checks) = ext_authz::start_grpc().await;
    let config = workload(
        app.addr,
        NO_COLLECTOR,
        &(mesh_config(&grpc_provider(authz, "        timeout: 500ms\n")) + CUSTOM_POLICIES),
    );
    let agent = Agent::start(&config);
    let client = Client::h1(agent.inbound);

    let reply = client
        .get_with("http://reviews:9080/api/allowed", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-authz-checked").as_deref(), Some("yes"));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.headers.get("x-authz-user").unwrap(), "alice");
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.path, "/api/allowed");

    let reply = client
        .get_with(
            "http://reviews:9080/api/denied",
            &[("x-user", "bob"), ("x-deny-status", "401")],
        )
        .await;
    assert_eq!(reply.status, 401, "the authorizer's status");
    assert_eq!(reply.header("x-denied-by").as_deref(), Some("test-authz"));
    assert_eq!(
        reply.header("x-tracemesh-response-flags").as_deref(),
        Some("UAEX")
    );

    let reply = client
        .get_with(
            "http://reviews:9080/api/slow",
            &[("x-user", "alice"), ("x-delay-ms", "3000")],
        )
        .await;
    assert_eq!(reply.status, 403, "timed out: statusOnError's default");
    assert_eq!(
        reply.header(DETAILS).as_deref(),
        Some(format!("ext_authz_error{{{EXT_ITEM}}}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorizer_that_is_down_fails_open_or_closed_as_the_provider_says() {
    let app = Upstream::start("reviews").await;
    let down = closed_port().await;
    let start = |provider: String| {
        Agent::start(&workload(
            app.addr,
            NO_COLLECTOR,
            &(mesh_config(&provider) + CUSTOM_POLICIES),
        ))
    };
    let open = start(http_provider(down, "        failOpen: true\n"));
    let closed = start(http_provider(down, "        statusOnError: \"503\"\n"));
    let closed_grpc = start(grpc_provider(down, "        failOpen: false\n"));

    let reply = Client::h1(open.inbound)
        .get("http://reviews:9080/api/x")
        .await;
    assert_eq!(reply.status, 200, "failOpen: true lets the request through");

    let reply = Client::h1(closed.inbound)
        .get("http://reviews:9080/api/x")
        .await;
    assert_eq!(reply.status, 503, "statusOnError");
    assert_eq!(
        reply.header("x-tracemesh-response-flags").as_deref(),
        Some("UAEX")
    );
    assert_eq!(
        reply.header(DETAILS).as_deref(),
        Some(format!("ext_authz_error{{{EXT_ITEM}}}").as_str())
    );

    let reply = Client::h1(closed_grpc.inbound)
        .get("http://reviews:9080/api/x")
        .await;
    assert_eq!(reply.status, 403, "failOpen false, statusOnError's default");
}

/// A POST of `body` with `headers`.
async fn post(client: &Client, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut request = http::Request::post(format!("http://reviews:9080{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .send(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
}

/// The generated body of `len` bytes, and its FNV-1a as the upstream sums it.
fn generated(len: u64) -> (Vec<u8>, u64) {
    let body: Vec<u8> = (0..len).map(pattern).collect();
    let hash = fnv(FNV_START, &body);
    (body, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_authorizer_gets_the_body_read_ahead_and_a_longer_one_gets_413() {
    let otlp = Receiver::start().await;
    let app = Upstream::start("reviews").await;
    let (authz, checks) = ext_authz::start_http().await;
    let body_in_check = "        includeRequestBodyInCheck: {maxRequestBytes: 1000}\n";
    let config = workload(
        app.addr,
        &otlp.endpoint(),
        &(mesh_config(&http_provider(authz, body_in_check)) + CUSTOM_POLICIES),
    );
    let agent = Agent::start(&config);
    let client = Client::h1(agent.inbound);

    // Within the limit: the check carries the body (with its length), and
    // the upstream gets it unchanged.
    let (body, hash) = generated(1000);
    let reply = post(
        &client,
        "/api/allowed",
        &[("x-user", "alice")],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.body, body, "the authorizer sees the body");
    assert_eq!(check.header("content-length"), Some("1000"));
    let seen = app.seen().pop().unwrap();
    assert_eq!((seen.body_len, seen.body_hash), (1000, hash));

    // One byte over, without allowPartialMessage: Envoy's 413, the
    // authorizer and the upstream never asked.
    let (asked, served) = (checks.lock().unwrap().len(), app.seen().len());
    let (body, _) = generated(1001);
    let reply = post(&client, "/api/too-long", &[("x-user", "alice")], body).await;
    refused(
        &agent,
        &otlp,
        &reply,
        "/api/too-long",
        (413, "Payload Too Large", "-"),
        "request_payload_too_large",
    )
    .await;
    assert_eq!(checks.lock().unwrap().len(), asked);
    assert_eq!(app.seen().len(), served);

    // A malformed chunk while reading ahead: 400 DPE, as when forwarding.
    let broken = "POST /api/broken HTTP/1.1\r\nHost: reviews:9080\r\nx-user: alice\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nnot-a-size\r\n";
    let reply = common::client::raw_exchange(agent.inbound, broken).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("x-tracemesh-response-flags: DPE"), "{reply}");
    assert_eq!(checks.lock().unwrap().len(), asked);

    // No CUSTOM policy applies: no read-ahead, no limit.
    let (body, hash) = generated(300_000);
    let reply = post(&client, "/other", &[], body).await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().unwrap();
    assert_eq!((seen.body_len, seen.body_hash), (300_000, hash));
    assert_eq!(checks.lock().unwrap().len(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_authorizer_gets_the_start_of_a_longer_body_as_bytes_or_text() {
    let app = Upstream::start("reviews").await;
    let (authz, checks) = ext_authz::start_grpc().await;
    let start = |body_in_check: &str| {
        Agent::start(&workload(
            app.addr,
            NO_COLLECTOR,
            &(mesh_config(&grpc_provider(authz, body_in_check)) + CUSTOM_POLICIES),
        ))
    };
    let bytes = start(
        "        includeRequestBodyInCheck: {maxRequestBytes: 1000, allowPartialMessage: true, packAsBytes: true}\n",
    );
    let text = start("        includeRequestBodyInCheck: {maxRequestBytes: 1000}\n");

    // allowPartialMessage: the first 1000 bytes as raw_body, marked partial;
    // the upstream gets all of it, what was read ahead then the rest.
    let (body, hash) = generated(300_000);
    let reply = post(
        &Client::h1(bytes.inbound),
        "/api/allowed",
        &[("x-user", "alice"), ("x-envoy-auth-partial-body", "false")],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert!(check.raw_body, "packAsBytes");
    assert_eq!(check.body, body[..1000]);
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("true"));
    let seen = app.seen().pop().unwrap();
    assert_eq!((seen.body_len, seen.body_hash), (300_000, hash));

    // Without packAsBytes the body is text; a whole body is not partial.
    let json = "{\"order\": 7, \"note\": \"café\"}".as_bytes().to_vec();
    let reply = post(
        &Client::h1(text.inbound),
        "/api/allowed",
        &[("x-user", "alice")],
        json.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert!(!check.raw_body, "sent as body");
    assert_eq!(check.body, json);
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("false"));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.body_len, json.len() as u64);

    // A request without a body has none in the check, as in Envoy.
    let reply = Client::h1(text.inbound)
        .get_with("http://reviews:9080/api/no-body", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.path, "/api/no-body");
    assert!(check.body.is_empty());
    assert_eq!(check.header("x-envoy-auth-partial-body"), None);
}

/// A provider whose `service` names a host only a ServiceEntry declares:
/// as Istio resolves it to the cluster `outbound|port||host`, the checks go
/// to the entry's endpoint (at the endpoint's port, not the service's),
/// over HTTP and gRPC; DNS knows nothing of the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_service_is_resolved_through_the_service_registry() {
    let app = Upstream::start("reviews").await;
    let (http_authz, http_checks) = ext_authz::start_http().await;
    let (grpc_authz, grpc_checks) = ext_authz::start_grpc().await;
    let entries = |authz: SocketAddr, protocol: &str| {
        common::mesh::service_entry(
            "authz.example.internal",
            8000,
            protocol,
            &[common::mesh::Ep {
                addr: authz,
                labels: &[("app", "authz")],
            }],
        )
    };
    let provider = |kind: &str| {
        let http = "        includeRequestHeadersInCheck: [x-user]\n        headersToUpstreamOnAllow: [x-authz-user]\n";
        format!(
            "      {kind}:\n        service: authz.example.internal\n        port: 8000\n        timeout: 5s\n{}",
            if kind == "envoyExtAuthzHttp" {
                http
            } else {
                ""
            }
        )
    };
    for (kind, protocol, authz, checks) in [
        ("envoyExtAuthzHttp", "HTTP", http_authz, &http_checks),
        ("envoyExtAuthzGrpc", "GRPC", grpc_authz, &grpc_checks),
    ] {
        let config = workload(
            app.addr,
            NO_COLLECTOR,
            &(mesh_config(&provider(kind)) + CUSTOM_POLICIES + &entries(authz, protocol)),
        );
        let agent = Agent::start(&config);
        let client = Client::h1(agent.inbound);
        let reply = client
            .get_with("http://reviews:9080/api/allowed", &[("x-user", "alice")])
            .await;
        assert_eq!(
            reply.status,
            200,
            "{kind}: {:?} {:?}",
            reply.header(DETAILS),
            agent.stderr()
        );
        let seen = app.seen().pop().unwrap();
        assert_eq!(seen.headers.get("x-authz-user").unwrap(), "alice", "{kind}");
        let check = checks.lock().unwrap().last().cloned().unwrap();
        assert_eq!(check.path, "/api/allowed", "{kind}");
        let reply = client
            .get_with("http://reviews:9080/api/denied", &[("x-user", "bob")])
            .await;
        assert_eq!(reply.status, 403, "{kind}");
        assert_eq!(
            reply.header(DETAILS).as_deref(),
            Some(format!("ext_authz_denied{{{EXT_ITEM}}}").as_str()),
            "{kind}: the authorizer itself denied"
        );
        // The checks are the cluster's requests, as any request to it is.
        let cluster = "outbound|8000||authz.example.internal";
        assert_eq!(rq_total(&agent, cluster, authz).await, 2, "{kind}");
        assert_eq!(ext_authz_counts(&agent).await, [1, 1, 0, 0, 0], "{kind}");
    }
}

/// The "closed" authorizer below is `closed_port()`: the port must refuse
/// connections and stay out of other tests' reach for the whole run (a port
/// bound and closed again was once taken by another test's server, which
/// answered for it).
#[tokio::test]
async fn a_closed_port_refuses_and_is_not_handed_out_again() {
    let addr = closed_port().await;
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let taken = std::net::TcpListener::bind(addr).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
}

/// An authorizer that fails — its connection reset, its port closed, too
/// slow for the timeout — is counted as Envoy's ext_authz filter counts it
/// (`error`, and `failure_mode_allowed` too under `failOpen`) and logged a
/// bounded number of times however many requests it fails: one line at
/// once, then at most one per 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_authorizer_is_counted_and_logged_a_bounded_number_of_times() {
    const REQUESTS: u64 = 30;
    let app = Upstream::start("reviews").await;
    let reset = resetting_server().await;
    let down = closed_port().await;
    let (slow, _) = ext_authz::start_http().await;
    let entry = common::mesh::service_entry(
        "authz.example.internal",
        8000,
        "HTTP",
        &[common::mesh::Ep {
            addr: reset,
            labels: &[("app", "authz")],
        }],
    );
    let resetting = "      envoyExtAuthzHttp:\n        service: authz.example.internal\n        port: 8000\n        failOpen: true\n";
    let cases = [
        ("reset", mesh_config(resetting) + &entry, 200),
        ("closed", mesh_config(&http_provider(down, "")), 403),
        (
            "timeout",
            mesh_config(&http_provider(slow, "        timeout: 100ms\n")),
            403,
        ),
    ];
    for (case, mesh, status) in cases {
        let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &(mesh + CUSTOM_POLICIES)));
        let client = Client::h1(agent.inbound);
        let started = std::time::Instant::now();
        for _ in 0..REQUESTS {
            let reply = client
                .get_with("http://reviews:9080/api/x", &[("x-delay-ms", "1000")])
                .await;
            assert_eq!(reply.status, status, "{case}: {:?}", reply.header(DETAILS));
        }
        let elapsed = started.elapsed();
        let open = u64::from(status == 200);
        assert_eq!(
            ext_authz_counts(&agent).await,
            [0, 0, REQUESTS, 0, open * REQUESTS],
            "{case}"
        );
        // Each failure counted; the log holds one line, then at most one
        // per 10 s of the run (the agent's own log, waited for).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while failure_lines(&agent).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let lines = failure_lines(&agent);
        let bound = 1 + elapsed.as_secs() / 10;
        assert!(
            !lines.is_empty() && lines.len() as u64 <= bound,
            "{case}: {} lines for {REQUESTS} failures in {elapsed:?}: {lines:#?}",
            lines.len()
        );
        if case == "reset" {
            let cluster = "outbound|8000||authz.example.internal";
            assert_eq!(rq_total(&agent, cluster, reset).await, REQUESTS);
            // A request no CUSTOM rule matches is Envoy's `disabled`.
            assert_eq!(client.get("http://reviews:9080/other").await.status, 200);
            assert_eq!(ext_authz_counts(&agent).await[3], 1);
        }
    }
}

/// A Sidecar whose egress hosts leave the authorizer out: as in Istio (the
/// filter names the cluster `outbound|port||host`, which the Sidecar kept
/// from this workload), every check fails — no detour by DNS around the
/// Sidecar — and the config says so on the provider's port. A provider
/// port the registry's service does not declare is warned about too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorizer_a_sidecar_hides_is_not_asked() {
    let app = Upstream::start("reviews").await;
    let (authz, checks) = ext_authz::start_http().await;
    // `localhost` resolves by DNS to the authorizer's host, so a detour
    // around the Sidecar would reach it (`default/`: the entry's namespace,
    // where its short host is expanded).
    let entry = common::mesh::service_entry(
        "localhost",
        authz.port(),
        "HTTP",
        &[common::mesh::Ep {
            addr: authz,
            labels: &[("app", "authz")],
        }],
    );
    let provider = format!(
        "      envoyExtAuthzHttp:\n        service: default/localhost\n        port: {}\n        includeRequestHeadersInCheck: [x-user]\n",
        authz.port()
    );
    let sidecar = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: narrow, namespace: default}\nspec:\n  egress: [{hosts: [\"./reviews.default.svc.cluster.local\"]}]\n";
    let visible = mesh_config(&provider) + CUSTOM_POLICIES + &entry;
    let config = workload(app.addr, NO_COLLECTOR, &(visible.clone() + sidecar));
    let (ok, out) = common::agent::validate(&config);
    assert!(ok, "{out}");
    assert!(
        out.contains("data.mesh.extensionProviders[0].envoyExtAuthzHttp.port")
            && out.contains("outside the egress hosts of Sidecar default/narrow"),
        "{out}"
    );

    let agent = Agent::start(&config);
    let reply = Client::h1(agent.inbound)
        .get_with("http://reviews:9080/api/allowed", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.header(DETAILS));
    assert_eq!(
        reply.header(DETAILS).as_deref(),
        Some(format!("ext_authz_error{{{EXT_ITEM}}}").as_str())
    );
    assert!(
        checks.lock().unwrap().is_empty(),
        "the authorizer never asked"
    );
    assert_eq!(ext_authz_counts(&agent).await, [0, 0, 1, 0, 0]);
    drop(agent);

    // Without the Sidecar the same provider reaches it through the registry.
    let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &visible));
    let reply = Client::h1(agent.inbound)
        .get_with("http://reviews:9080/api/allowed", &[("x-user", "alice")])
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.header(DETAILS));
    assert_eq!(checks.lock().unwrap().len(), 1);

    // The registry has the host but not the provider's port: DNS, warned.
    let other_port = workload(
        app.addr,
        NO_COLLECTOR,
        &(mesh_config(&provider.replace(&authz.port().to_string(), "1"))
            + CUSTOM_POLICIES
            + &entry),
    );
    let (ok, out) = common::agent::validate(&other_port);
    assert!(ok, "{out}");
    assert!(
        out.contains("data.mesh.extensionProviders[0].envoyExtAuthzHttp.port")
            && out.contains(&format!(
                "the service registry has localhost.default.svc.cluster.local but not port 1 (ports: {})",
                authz.port()
            )),
        "{out}"
    );
}

/// The provider's connections are secured as its DestinationRule says, as
/// a request to that host would be: an HTTPS-only authorizer is reached by
/// TLS origination (`SIMPLE`, its root, its name as SNI) and allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_service_gets_its_destination_rules_tls() {
    let app = Upstream::start("reviews").await;
    let authz = common::pki::TlsUpstream::start(&["authz.secure.example"], false).await;
    let entry = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: authz, namespace: default}}\nspec:\n  hosts: [authz.secure.example]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
        authz.addr.port()
    );
    let rule = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: authz, namespace: default}}\nspec:\n  host: authz.secure.example\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: \"{}\"}}}}\n",
        authz.root.display()
    );
    let provider = "      envoyExtAuthzHttp:\n        service: authz.secure.example\n        port: 80\n        timeout: 5s\n";
    let mesh = mesh_config(provider) + CUSTOM_POLICIES + &entry;

    // Without the rule the check goes in plaintext to a TLS server: the
    // authorizer fails, statusOnError.
    let plain = Agent::start(&workload(app.addr, NO_COLLECTOR, &mesh));
    let reply = Client::h1(plain.inbound)
        .get("http://reviews:9080/api/allowed")
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.header(DETAILS));
    drop(plain);

    let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &(mesh.clone() + &rule)));
    let reply = Client::h1(agent.inbound)
        .get("http://reviews:9080/api/allowed")
        .await;
    assert_eq!(
        reply.status,
        200,
        "{:?} {:?}",
        reply.header(DETAILS),
        agent.stderr()
    );
    let sni = authz.sni.lock().unwrap().clone();
    assert_eq!(sni, [Some("authz.secure.example".to_owned())], "{sni:?}");
    drop(agent);

    // A name the authorizer's certificate does not carry: the handshake
    // fails, counted with the agent's other TLS failures. (With `sni`
    // alone, Istio validates the chain only, as the agent does.)
    let wrong = rule.replace("tls: {", "tls: {subjectAltNames: [other.example], ");
    let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &(mesh + &wrong)));
    let reply = Client::h1(agent.inbound)
        .get("http://reviews:9080/api/allowed")
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.header(DETAILS));
    let scrape = agent.metrics().await;
    let failures = scrape.sum(
        "tracemesh_agent_tls_handshake_failures_total",
        &[("direction", "outbound")],
    );
    assert!(failures >= 1.0, "{}", scrape.text);
}

/// A `jwksUri` key set is fetched when the config is put in force, before
/// any token needs it, as istiod resolves it before the proxy serves, and
/// a request arriving before the first fetch is answered waits for it, as
/// Envoy's `remote_jwks` holds it: the first request with a valid token is
/// served. The fetch waited for a first token, which got 401 `Jwks remote
/// fetch is failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_key_set_is_fetched_before_the_first_token() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let app = Upstream::start("app").await;
    let key = Signer::new("k1");
    let jwks = json!({"keys": [key.jwk]}).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    // The key set is answered only once the test says so.
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            common::upstream::read_head(&mut stream).await;
            counted.fetch_add(1, Ordering::SeqCst);
            released.notified().await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    let policies = remote_key_set(jwks_addr, "");
    let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &policies));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fetches.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the key set was not fetched when the config loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The fetch is under way, unanswered: a token arriving now waits for
    // its keys.
    let token = key.token(&claims("reviews", 600, &[]));
    let inbound = agent.inbound;
    let first = tokio::spawn(async move {
        Client::h1(inbound)
            .get_with(
                "http://reviews:9080/first",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
    });
    // Answered once the agent holds the request's connection: judged
    // before the keys came, the request would be refused.
    let inbound_open = [("listener", "inbound")];
    while agent.metrics().await.sum(
        "tracemesh_agent_downstream_connections_active",
        &inbound_open,
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    release.notify_one();
    let reply = first.await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(app.count(), 1);
}

/// A rule's `timeout` bounds each fetch of its key set and a token's wait
/// for the first, as Istio renders it into the fetch's `http_uri.timeout`
/// (5 s unset): against a key server that never answers, the fetch is
/// given up after the rule's 500 ms and the token waiting for it is
/// refused as Envoy refuses it, long before Istio's default would end.
#[tokio::test]
async fn a_rules_timeout_bounds_its_key_fetch_and_the_tokens_wait() {
    use std::time::{Duration, Instant};
    let app = Upstream::start("app").await;
    let key = Signer::new("k1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    // Each fetch's connection: when it was accepted, and how long it was
    // held until the agent gave up on it.
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Duration)>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let held_tx = held_tx.clone();
            tokio::spawn(async move {
                let accepted = Instant::now();
                common::upstream::read_head(&mut stream).await;
                let mut rest = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
                let _ = held_tx.send((accepted, accepted.elapsed()));
            });
        }
    });
    let policies = remote_key_set(jwks_addr, "    timeout: 500ms\n");
    let agent = Agent::start(&workload(app.addr, NO_COLLECTOR, &policies));
    let token = key.token(&claims("reviews", 600, &[]));
    let sent = Instant::now();
    let reply = Client::h1(agent.inbound)
        .get_with(
            "http://reviews:9080/first",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    let waited = sent.elapsed();
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("Jwks remote fetch is failed"),
        "{:?}",
        reply.body
    );
    assert_eq!(app.count(), 0);
    assert!(
        waited < Duration::from_secs(3),
        "the token waited {waited:?}: the rule's 500ms did not bound the wait"
    );
    let (_, held) = tokio::time::timeout(Duration::from_secs(30), held_rx.recv())
        .await
        .expect("the agent never gave up the first fetch")
        .expect("the key server stopped");
    assert!(
        held < Duration::from_secs(3),
        "the first fetch was held {held:?}: the rule's 500ms did not bound it"
    );
}

/// A RequestAuthentication for reviews whose keys are fetched from the
/// key server at `jwks_addr`, with `extra` lines in its rule.
fn remote_key_set(jwks_addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: "http://{jwks_addr}/jwks.json"
{extra}"#
    )
}
