//! Every status Istio gives a token, through the authenticator and the
//! access-control engine compiled from a real config: no token, forged,
//! expired, wrong audience, wrong issuer, valid; claims in `when`; key sets
//! fetched over a real HTTP socket and from `file://`.

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::json;

use super::*;
use crate::model::access::AccessOutcome;
use crate::model::authz::AuthzInput;
use crate::model::jwks::DEFAULT_TIMEOUT;
use crate::model::jwks::parse_jwks;

/// A signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    jwk: serde_json::Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn es256(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        alg: Algorithm::ES256,
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
    }
}

fn eddsa(kid: &str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        alg: Algorithm::EdDSA,
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())}),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(signer: &Signer, claims: serde_json::Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = signer.jwk["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
}

fn claims(iss: &str, aud: &str, exp_in: i64) -> serde_json::Value {
    json!({"iss": iss, "sub": "alice", "aud": aud, "exp": now() + exp_in,
           "azp": "web", "groups": ["dev", "admin"], "org": {"team": "payments"},
           "scope": "read write"})
}

fn rule(keys: Arc<JwksStore>) -> JwtRule {
    JwtRule {
        source: "default/jwt[0]".into(),
        issuer: "https://issuer.example".into(),
        audiences: vec!["reviews".into()],
        keys,
        locations: vec![
            TokenLocation::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            TokenLocation::Param("access_token".into()),
            TokenLocation::Cookie("session".into()),
        ],
        forward_original_token: false,
        output_payload_to_header: Some(HeaderName::from_static("x-jwt-payload")),
        output_claim_to_headers: vec![(HeaderName::from_static("x-sub"), "sub".into())],
        space_delimited_claims: Vec::new(),
    }
}

fn authn_request<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> AuthnRequest<'a> {
    AuthnRequest {
        headers,
        query,
        host: "reviews",
        path: "/api",
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

/// A rule without `issuer` verifies a token of any issuer, as an Envoy
/// provider without one does (it used to refuse every token: `Jwt issuer
/// is not configured`); audiences compare without a scheme or a trailing
/// `/`, as jwt_verify_lib compares them.
#[test]
fn an_issuerless_rule_takes_any_issuer_and_audiences_ignore_their_scheme() {
    let good = es256("k1");
    let keys = JwksStore::inline(parse_jwks(&jwks(&[&good])).unwrap());
    let authn = Authenticator {
        rules: vec![JwtRule {
            issuer: String::new(),
            audiences: vec!["api.example.com".into()],
            ..rule(keys)
        }],
    };
    let check = |iss: &str, aud: &str| {
        let headers = bearer(&token(&good, claims(iss, aud, 600)));
        authn.authenticate(&authn_request(&headers, None))
    };
    let verified = check("https://anyone.example", "api.example.com")
        .unwrap()
        .unwrap();
    assert_eq!(verified.principal, "https://anyone.example/alice");
    for aud in [
        "https://api.example.com/",
        "http://api.example.com",
        "api.example.com/",
    ] {
        assert!(check("https://a.example", aud).is_ok(), "{aud}");
    }
    for aud in [
        "api.example.com.evil",
        "https://api.example.co",
        "ftp://api.example.com",
    ] {
        let refused = check("https://a.example", aud).unwrap_err();
        assert_eq!(refused.reason, reason::AUDIENCE, "{aud}");
    }
}

#[test]
fn every_status_istio_gives_a_token() {
    let good = es256("k1");
    let forger = es256("k1");
    let authn = Authenticator {
        rules: vec![rule(JwksStore::inline(
            parse_jwks(&jwks(&[&good])).unwrap(),
        ))],
    };
    let check = |headers: &HeaderMap| authn.authenticate(&authn_request(headers, None));
    let iss = "https://issuer.example";
    // No token: authentication passes, authorization decides.
    assert_eq!(check(&HeaderMap::new()), Ok(None));
    // Valid.
    let valid = check(&bearer(&token(&good, claims(iss, "reviews", 600))))
        .unwrap()
        .unwrap();
    assert_eq!(valid.principal, "https://issuer.example/alice");
    assert_eq!(valid.presenter.as_deref(), Some("web"));
    assert_eq!(valid.audiences, ["reviews"]);
    assert_eq!(valid.source, "default/jwt[0]");
    assert!(
        valid.edits.remove.contains(&http::header::AUTHORIZATION),
        "not forwarded"
    );
    assert!(
        valid
            .edits
            .set
            .iter()
            .any(|(h, v)| h == "x-sub" && v == "alice")
    );
    // Within the clock skew an expired token still passes.
    assert!(check(&bearer(&token(&good, claims(iss, "reviews", -30)))).is_ok());
    let reason_of = |headers: HeaderMap| check(&headers).unwrap_err().reason;
    assert_eq!(
        reason_of(bearer(&token(&forger, claims(iss, "reviews", 600)))),
        reason::SIGNATURE
    );
    assert_eq!(
        reason_of(bearer(&token(&good, claims(iss, "reviews", -600)))),
        reason::EXPIRED
    );
    assert_eq!(
        reason_of(bearer(&token(&good, claims(iss, "ratings", 600)))),
        reason::AUDIENCE
    );
    assert_eq!(
        reason_of(bearer(&token(
            &good,
            claims("https://other.example", "reviews", 600)
        ))),
        reason::UNKNOWN_ISSUER
    );
    assert_eq!(reason_of(bearer("not-a-jwt")), reason::MALFORMED);
    let failure = check(&bearer("a.b")).unwrap_err();
    assert_eq!(
        failure.www_authenticate,
        "Bearer realm=\"http://reviews/api\", error=\"invalid_token\""
    );
    // The query parameter and the cookie are read too.
    let t = token(&good, claims(iss, "reviews", 600));
    let query = format!("x=1&access_token={t}");
    assert!(
        authn
            .authenticate(&authn_request(&HeaderMap::new(), Some(&query)))
            .unwrap()
            .is_some()
    );
    let mut cookies = HeaderMap::new();
    cookies.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("a=b; session={t}")).unwrap(),
    );
    assert!(check(&cookies).unwrap().is_some());
}

#[test]
fn eddsa_keys_verify() {
    let key = eddsa("ed");
    let authn = Authenticator {
        rules: vec![rule(JwksStore::inline(parse_jwks(&jwks(&[&key])).unwrap()))],
    };
    let t = token(&key, claims("https://issuer.example", "reviews", 600));
    assert!(
        authn
            .authenticate(&authn_request(&bearer(&t), None))
            .unwrap()
            .is_some()
    );
}

/// One request with `token` (as a bearer header) through the engine.
async fn decide(
    access: &crate::model::access::AccessControl,
    token: Option<String>,
) -> AccessOutcome {
    let headers = token.map(|t| bearer(&t)).unwrap_or_default();
    let input = AuthzInput {
        source_ip: "10.0.0.1".parse().unwrap(),
        remote_ip: "10.0.0.1".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 8080,
        principal: None,
        namespace: None,
        sni: None,
        method: "GET",
        path: "/api",
        path_and_query: "/api",
        scheme: "http",
        authority: "reviews",
        headers: &headers,
    };
    let check = crate::ext_authz::CheckRequest {
        method: "GET",
        scheme: "http",
        host: "reviews",
        path_and_query: "/api",
        headers: &headers,
        body: None,
        body_partial: false,
        body_len: None,
        protocol: "HTTP/1.1",
        source: "10.0.0.1:1".parse().unwrap(),
        destination: "10.0.0.2:8080".parse().unwrap(),
        source_principal: None,
        destination_principal: "spiffe://cluster.local/ns/default/sa/default",
        sni: None,
    };
    access
        .check(&authn_request(&headers, None), &input, &check, &mut ())
        .await
}

/// The engine compiled from a real config: RequestAuthentication, then an
/// ALLOW policy on request principals and claims (nested, lists, scopes).
#[tokio::test]
async fn claims_decide_in_when_conditions() {
    let key = es256("k1");
    let yaml = format!(
        r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec: {{service: reviews, labels: {{app: reviews}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins, namespace: default}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["https://issuer.example/*"]}}}}]
    when:
    - {{key: "request.auth.claims[groups]", values: [admin]}}
    - {{key: "request.auth.claims[org][team]", values: [payments]}}
    - {{key: "request.auth.claims[scope]", values: [write]}}
    - {{key: request.auth.presenter, values: [web]}}
    - {{key: request.auth.audiences, values: [reviews]}}
"#,
        jwks = jwks(&[&key])
    );
    let file: Arc<str> = Arc::from("mesh.yaml");
    let compiled =
        crate::compile::compile_text(&file, &yaml, 1, &crate::model::live::LiveState::default())
            .unwrap_or_else(|e| panic!("{e}"));
    let access = &compiled.snapshot.access;
    let iss = "https://issuer.example";
    let AccessOutcome::Allow(allowed) =
        decide(access, Some(token(&key, claims(iss, "reviews", 600)))).await
    else {
        panic!("an admin of payments is allowed");
    };
    assert_eq!(allowed.source.unwrap().to_string(), "default/admins[0]");
    let mut not_admin = claims(iss, "reviews", 600);
    not_admin["groups"] = json!(["dev"]);
    let AccessOutcome::Deny(denied) = decide(access, Some(token(&key, not_admin))).await else {
        panic!("a non-admin is denied");
    };
    assert_eq!(
        (denied.status.as_u16(), denied.flag),
        (403, crate::flags::ResponseFlags::RBAC_DENIED)
    );
    let AccessOutcome::Deny(denied) = decide(access, None).await else {
        panic!("no token: no request principal, the ALLOW policy does not match");
    };
    assert_eq!(denied.status.as_u16(), 403);
    let AccessOutcome::Deny(denied) =
        decide(access, Some(token(&key, claims(iss, "reviews", -600)))).await
    else {
        panic!("an expired token is refused");
    };
    assert_eq!(denied.status.as_u16(), 401);
    assert_eq!(&denied.body[..], reason::EXPIRED.as_bytes());
    assert_eq!(
        denied.details,
        "jwt_authn_access_denied{Jwt_is_expired,RequestAuthentication:default/jwt[0]}"
    );
}

/// `jwksUri` over a real HTTP socket and as `file://`: fetched, refreshed,
/// and the previous keys kept when a fetch fails.
#[tokio::test]
async fn remote_key_sets_are_fetched_and_kept_on_failure() {
    let first = es256("k1");
    let set = jwks(&[&first]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(arc_swap::ArcSwapOption::from_pointee(set.clone()));
    let serving = served.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf).await;
            let body = serving.load_full().map(|b| String::clone(&b));
            let reply = match body {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    let store = JwksStore::remote(&format!("http://{addr}/jwks.json"), DEFAULT_TIMEOUT);
    assert!(store.keys().is_none());
    assert_eq!(store.refresh().await, Ok(1));
    served.store(None);
    assert!(store.refresh().await.is_err());
    assert_eq!(
        store.keys().map(|k| k.len()),
        Some(1),
        "the previous keys stay"
    );
    assert!(store.last_error().unwrap().contains("503"));

    let dir = tempfile_dir();
    let path = dir.join("jwks.json");
    std::fs::write(&path, &set).unwrap();
    let file_store = JwksStore::remote(&format!("file://{}", path.display()), DEFAULT_TIMEOUT);
    assert_eq!(file_store.refresh().await, Ok(1));
    std::fs::write(&path, "not json").unwrap();
    assert!(file_store.refresh().await.is_err());
    assert!(file_store.keys().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tracemesh-jwks-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Only a token that names an unfetched set's issuer, inside its time
/// window, waits for the set's first fetch, as Envoy reads a token before
/// it fetches keys; a token for a set in hand, an expired one and none at
/// all are judged at once. (The remote store is never started here: its
/// first fetch stays unanswered.)
#[tokio::test]
async fn only_a_token_for_an_unfetched_set_waits_for_it() {
    use futures_util::FutureExt as _;
    let signer = es256("k1");
    let fetched = rule(JwksStore::inline(parse_jwks(&jwks(&[&signer])).unwrap()));
    let mut unfetched = rule(Arc::new(JwksStore::remote(
        "http://127.0.0.1:1/jwks.json",
        DEFAULT_TIMEOUT,
    )));
    unfetched.issuer = "https://slow.example".into();
    let authn = Authenticator {
        rules: vec![fetched, unfetched],
    };
    let waits = |headers: &HeaderMap| {
        authn
            .keys_fetched(&authn_request(headers, None))
            .now_or_never()
            .is_none()
    };
    assert!(!waits(&HeaderMap::new()), "no token");
    let good = token(&signer, claims("https://issuer.example", "reviews", 600));
    assert!(!waits(&bearer(&good)), "a token of the fetched set");
    let expired = token(&signer, claims("https://slow.example", "reviews", -600));
    assert!(!waits(&bearer(&expired)), "an expired token");
    assert!(!waits(&bearer("a.b")), "no token at all");
    let slow = token(&signer, claims("https://slow.example", "reviews", 600));
    assert!(waits(&bearer(&slow)), "a token of the unfetched set");
}
