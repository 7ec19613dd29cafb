//! A rule's `corsPolicy`, applied as Envoy's cors filter applies the policy
//! Istio renders for it (Istio `route.go` `TranslateCORSPolicy`; Envoy
//! `source/extensions/filters/http/cors/cors_filter.cc`), read after the
//! fault filter and before the router, where Istio puts the filter.
//!
//! A request with a non-empty `Origin` is a CORS request. A preflight — an
//! `OPTIONS` that also carries a non-empty `Access-Control-Request-Method` —
//! is answered here, 200 without a body, unless its origin is not allowed
//! and the policy forwards such preflights (`unmatchedPreflights` FORWARD,
//! Istio's default). Any other response to an allowed origin — the app's,
//! or one the agent makes after this point — gets
//! `access-control-allow-origin` (the request's origin, also when every
//! origin is allowed), `access-control-allow-credentials` and
//! `access-control-expose-headers`, replacing the app's.
//!
//! Several lines of one request header are read as one value joined with
//! `,`, as Envoy's header map joins them.

use std::borrow::Cow;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::model::policy::{Cors, CorsList};

/// Envoy's `response_code_details` for a preflight it answers.
pub const PREFLIGHT_DETAILS: &str = "cors_response";

const TRUE: HeaderValue = HeaderValue::from_static("true");

/// What the policy makes of a request.
#[derive(Debug)]
pub enum Decision<'p> {
    /// No `Origin`, or one the policy does not allow (and a preflight from
    /// it goes on): responses are left alone.
    Untouched,
    /// An allowed origin: every response carries these headers.
    Allowed(Allowed<'p>),
    /// A preflight answered here.
    Preflight(Response<()>),
}

/// The CORS headers of the answers to an allowed origin.
#[derive(Debug)]
pub struct Allowed<'p> {
    policy: &'p Cors,
    origin: HeaderValue,
}

impl Allowed<'_> {
    /// Writes the headers, replacing any of the same name (the app's, the
    /// rule's edits), as Envoy's filter does on the way back.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.policy.allow_credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(expose) = &self.policy.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Reads the request against the policy.
pub fn decide<'p>(policy: &'p Cors, method: &Method, headers: &HeaderMap) -> Decision<'p> {
    let Some(origin) = joined(headers, &ORIGIN).filter(|o| !o.is_empty()) else {
        return Decision::Untouched;
    };
    let allowed = allows(policy, origin.as_bytes()).then(|| Allowed {
        policy,
        origin: origin.into_owned(),
    });
    let requested_method = (method == Method::OPTIONS)
        .then(|| joined(headers, &ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .filter(|m| !m.is_empty());
    match (requested_method, allowed) {
        (None, Some(allowed)) => Decision::Allowed(allowed),
        (None, None) => Decision::Untouched,
        (Some(_), None) if policy.forward_unmatched_preflights => Decision::Untouched,
        (Some(requested), allowed) => {
            Decision::Preflight(preflight(policy, allowed.as_ref(), &requested, headers))
        }
    }
}

/// Whether the policy allows `origin`: some matcher matches it, or matches
/// `*` itself (Envoy's allow-all).
fn allows(policy: &Cors, origin: &[u8]) -> bool {
    if policy.any_origin {
        return true;
    }
    // Envoy matches the raw bytes; an origin that is not UTF-8 matches no
    // configured (UTF-8) origin here.
    std::str::from_utf8(origin).is_ok_and(|origin| policy.origins.iter().any(|m| m.matches(origin)))
}

/// The answer to a preflight: what Envoy's filter writes on it, and then
/// what it adds to every answer to an allowed origin.
fn preflight(
    policy: &Cors,
    allowed: Option<&Allowed<'_>>,
    requested_method: &HeaderValue,
    headers: &HeaderMap,
) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    let out = response.headers_mut();
    if let Some(allowed) = allowed {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed.origin.clone());
    }
    if policy.allow_credentials {
        out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
    }
    match &policy.allow_methods {
        Some(CorsList::Listed(methods)) => {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
        }
        Some(CorsList::EchoRequest) => {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, requested_method.clone());
        }
        None => {}
    }
    match &policy.allow_headers {
        Some(CorsList::Listed(names)) => {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, names.clone());
        }
        Some(CorsList::EchoRequest) => {
            // Written even when the preflight names no headers: empty.
            let requested = joined(headers, &ACCESS_CONTROL_REQUEST_HEADERS)
                .map_or_else(|| HeaderValue::from_static(""), Cow::into_owned);
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested);
        }
        None => {}
    }
    if let Some(age) = &policy.max_age {
        out.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
    }
    if let Some(allowed) = allowed {
        allowed.apply(out);
    }
    response
}

/// A request header as Envoy's header map holds it: its lines joined with
/// `,`, empty ones skipped; borrowed when it came on one line.
fn joined<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, HeaderValue>> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut value = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        if line.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.push(b',');
        }
        value.extend_from_slice(line.as_bytes());
    }
    // Joined from valid values with `,`: valid.
    Some(Cow::Owned(
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| first.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::StrMatcher;

    fn policy() -> Cors {
        Cors {
            origins: vec![
                StrMatcher::Exact("https://a.example".into()),
                StrMatcher::Prefix("https://p.".into()),
                StrMatcher::Regex(regex::Regex::new(r"^(?:https://r[0-9]+\.example)$").unwrap()),
            ],
            any_origin: false,
            allow_methods: Some(CorsList::Listed(HeaderValue::from_static("GET,POST"))),
            allow_headers: Some(CorsList::Listed(HeaderValue::from_static("x-h1,X-H2"))),
            expose_headers: Some(HeaderValue::from_static("x-e")),
            max_age: Some(HeaderValue::from_static("60")),
            allow_credentials: true,
            forward_unmatched_preflights: true,
        }
    }

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn get<'p>(policy: &'p Cors, origin: &'static str) -> Decision<'p> {
        decide(policy, &Method::GET, &headers(&[("origin", origin)]))
    }

    fn answered(decision: Decision<'_>) -> HeaderMap {
        match decision {
            Decision::Preflight(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                response.into_parts().0.headers
            }
            other => panic!("not answered: {other:?}"),
        }
    }

    fn value<'m>(map: &'m HeaderMap, name: &str) -> Option<&'m str> {
        map.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn origins_match_exactly_by_prefix_or_by_the_whole_regex() {
        let p = policy();
        for allowed in ["https://a.example", "https://p.x", "https://r12.example"] {
            assert!(
                matches!(get(&p, allowed), Decision::Allowed(_)),
                "{allowed}"
            );
        }
        for refused in [
            "https://A.example",      // exact is case-sensitive
            "https://a.example.evil", // exact is whole
            "https://r12.example.evil",
            "xhttps://r1.example", // the regex is anchored at both ends
            "null",
            "https://q.example",
        ] {
            assert!(matches!(get(&p, refused), Decision::Untouched), "{refused}");
        }
    }

    #[test]
    fn no_or_empty_origin_is_no_cors_request() {
        let p = policy();
        assert!(matches!(
            decide(&p, &Method::GET, &HeaderMap::new()),
            Decision::Untouched
        ));
        assert!(matches!(get(&p, ""), Decision::Untouched));
    }

    #[test]
    fn a_matcher_that_matches_star_allows_every_origin_and_echoes_it() {
        let mut p = policy();
        p.origins = vec![StrMatcher::Exact("*".into())];
        p.any_origin = true;
        let Decision::Allowed(allowed) = get(&p, "https://any.example") else {
            panic!("not allowed");
        };
        let mut out = HeaderMap::new();
        allowed.apply(&mut out);
        // The origin, not `*`: Envoy writes back what the request sent.
        assert_eq!(
            value(&out, "access-control-allow-origin"),
            Some("https://any.example")
        );
    }

    #[test]
    fn answers_to_an_allowed_origin_replace_the_apps_cors_headers() {
        let p = policy();
        let Decision::Allowed(allowed) = get(&p, "https://a.example") else {
            panic!("not allowed");
        };
        let mut out = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-origin", "https://other.example"),
            ("access-control-max-age", "5"),
        ]);
        allowed.apply(&mut out);
        let origins: Vec<_> = out.get_all("access-control-allow-origin").iter().collect();
        assert_eq!(origins, ["https://a.example"]);
        assert_eq!(
            value(&out, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(value(&out, "access-control-expose-headers"), Some("x-e"));
        // Only a preflight's answer names methods, headers and max-age.
        assert_eq!(value(&out, "access-control-max-age"), Some("5"));
        assert!(out.get("access-control-allow-methods").is_none());
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_every_header() {
        let p = policy();
        let req = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "DELETE"),
        ]);
        let out = answered(decide(&p, &Method::OPTIONS, &req));
        let expected = [
            ("access-control-allow-origin", "https://a.example"),
            ("access-control-allow-credentials", "true"),
            // As configured, whatever the preflight asks for.
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-headers", "x-h1,X-H2"),
            ("access-control-max-age", "60"),
            ("access-control-expose-headers", "x-e"),
        ];
        for (name, v) in expected {
            assert_eq!(value(&out, name), Some(v), "{name}");
        }
        assert_eq!(out.len(), expected.len());
    }

    #[test]
    fn an_options_without_a_requested_method_is_an_actual_request() {
        let p = policy();
        for req in [
            headers(&[("origin", "https://a.example")]),
            headers(&[
                ("origin", "https://a.example"),
                ("access-control-request-method", ""),
            ]),
        ] {
            assert!(matches!(
                decide(&p, &Method::OPTIONS, &req),
                Decision::Allowed(_)
            ));
        }
        // And only OPTIONS is a preflight.
        let req = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            decide(&p, &Method::POST, &req),
            Decision::Allowed(_)
        ));
    }

    #[test]
    fn a_preflight_from_another_origin_is_forwarded_or_answered_bare() {
        let mut p = policy();
        let req = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(matches!(
            decide(&p, &Method::OPTIONS, &req),
            Decision::Untouched
        ));
        p.forward_unmatched_preflights = false;
        let out = answered(decide(&p, &Method::OPTIONS, &req));
        // IGNORE: no origin and nothing exposed, the rest as configured.
        assert!(out.get("access-control-allow-origin").is_none());
        assert!(out.get("access-control-expose-headers").is_none());
        assert_eq!(
            value(&out, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            value(&out, "access-control-allow-methods"),
            Some("GET,POST")
        );
        assert_eq!(value(&out, "access-control-max-age"), Some("60"));
    }

    #[test]
    fn star_lists_echo_what_the_preflight_asks_for() {
        let mut p = policy();
        p.allow_methods = Some(CorsList::EchoRequest);
        p.allow_headers = Some(CorsList::EchoRequest);
        p.allow_credentials = false;
        p.expose_headers = None;
        p.max_age = None;
        let req = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "x-a"),
            ("access-control-request-headers", "x-b"),
        ]);
        let out = answered(decide(&p, &Method::OPTIONS, &req));
        assert_eq!(value(&out, "access-control-allow-methods"), Some("PATCH"));
        assert_eq!(value(&out, "access-control-allow-headers"), Some("x-a,x-b"));
        assert!(out.get("access-control-allow-credentials").is_none());
        assert!(out.get("access-control-max-age").is_none());
        // No requested headers: the header is written, empty.
        let req = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "PATCH"),
        ]);
        let out = answered(decide(&p, &Method::OPTIONS, &req));
        assert_eq!(value(&out, "access-control-allow-headers"), Some(""));
        // Unset lists write nothing.
        p.allow_methods = None;
        p.allow_headers = None;
        let out = answered(decide(&p, &Method::OPTIONS, &req));
        assert!(out.get("access-control-allow-methods").is_none());
        assert!(out.get("access-control-allow-headers").is_none());
    }

    #[test]
    fn origin_lines_are_joined_before_matching() {
        let p = policy();
        let req = headers(&[("origin", "https://p.x"), ("origin", "https://q.example")]);
        let Decision::Allowed(allowed) = decide(&p, &Method::GET, &req) else {
            panic!("not allowed");
        };
        let mut out = HeaderMap::new();
        allowed.apply(&mut out);
        assert_eq!(
            value(&out, "access-control-allow-origin"),
            Some("https://p.x,https://q.example")
        );
        // An exact origin does not match two joined.
        let req = headers(&[
            ("origin", "https://a.example"),
            ("origin", "https://a.example"),
        ]);
        assert!(matches!(
            decide(&p, &Method::GET, &req),
            Decision::Untouched
        ));
    }

    #[test]
    fn joining_skips_empty_lines() {
        let map = headers(&[("x", ""), ("x", "a"), ("x", ""), ("x", "b")]);
        let name = HeaderName::from_static("x");
        assert_eq!(joined(&map, &name).unwrap().as_bytes(), b"a,b");
        let map = headers(&[("x", "a")]);
        assert!(matches!(joined(&map, &name), Some(Cow::Borrowed(_))));
        assert!(joined(&HeaderMap::new(), &name).is_none());
    }

    #[test]
    fn an_origin_that_is_not_utf8_matches_only_allow_all() {
        let mut p = policy();
        p.origins = vec![StrMatcher::Prefix("https://".into())];
        let mut req = HeaderMap::new();
        req.insert(ORIGIN, HeaderValue::from_bytes(b"https://\xff").unwrap());
        assert!(matches!(
            decide(&p, &Method::GET, &req),
            Decision::Untouched
        ));
        p.any_origin = true;
        assert!(matches!(
            decide(&p, &Method::GET, &req),
            Decision::Allowed(_)
        ));
    }
}
