//! VirtualService `rewrite` and `redirect`: the path and authority a request
//! goes upstream with, or the location it is sent to instead.

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Uri, request};

use crate::host::{request_authority, split_host_port};
use crate::model::policy::{Redirect, Rewrite};

/// Envoy keeps the path a rewrite replaced in this header.
const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Applies `rewrite`; `matched_prefix` is the `uri.prefix` the rule matched
/// by, which `rewrite.uri` replaces (otherwise it replaces the whole path).
pub fn apply(rewrite: &Rewrite, matched_prefix: Option<&str>, parts: &mut request::Parts) {
    let path = parts.uri.path();
    let new_path = if let Some(uri) = &rewrite.uri {
        Some(match matched_prefix {
            Some(prefix) if path.len() >= prefix.len() => format!("{uri}{}", &path[prefix.len()..]),
            _ => uri.clone(),
        })
    } else {
        rewrite
            .uri_regex
            .as_ref()
            .map(|(re, with)| re.replace_all(path, with.as_str()).into_owned())
    };
    if let Some(new_path) = new_path {
        let original = parts.uri.path_and_query().map(|p| p.as_str().to_owned());
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if let Ok(pq) = PathAndQuery::try_from(format!("{new_path}{query}")) {
            set_uri(parts, None, Some(pq));
            if let Some(original) = original.and_then(|o| HeaderValue::try_from(o).ok()) {
                parts.headers.insert(ORIGINAL_PATH, original);
            }
        }
    }
    if let Some(authority) = &rewrite.authority {
        set_authority(parts, authority);
    }
}

/// Sends the request with `authority` as its `Host` (and URI authority).
pub fn set_authority(parts: &mut request::Parts, authority: &HeaderValue) {
    parts.headers.insert(HOST, authority.clone());
    if let Ok(authority) = Authority::try_from(authority.as_bytes()) {
        set_uri(parts, Some(authority), None);
    }
}

fn set_uri(parts: &mut request::Parts, authority: Option<Authority>, path: Option<PathAndQuery>) {
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(authority) = authority.filter(|_| uri.authority.is_some()) {
        uri.authority = Some(authority);
    }
    if let Some(path) = path {
        uri.path_and_query = Some(path);
    }
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
}

/// The `Location` a redirect sends the caller to.
pub fn location<B>(redirect: &Redirect, req: &http::Request<B>) -> Option<HeaderValue> {
    let scheme = redirect
        .scheme
        .as_deref()
        .or(req.uri().scheme_str())
        .unwrap_or("http");
    let (host, port) = split_host_port(request_authority(req).unwrap_or(""));
    let host = redirect.authority.as_deref().unwrap_or(host);
    // The request's port goes with it, unless the scheme changes from one
    // whose default port it is: http://a:80 becomes https://a (Envoy's
    // processRequestHost).
    let from = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .or(req.uri().scheme_str())
        .unwrap_or("http");
    let request_port = port
        .filter(|p| redirect.keep_request_port || from == scheme || default_port(from) != Some(*p));
    let port = redirect
        .port
        .or(if redirect.port_from_request {
            request_port
        } else {
            None
        })
        // A scheme's default port is left out of the Location (the Gateway
        // API's RequestRedirect: "SHOULD NOT add the port number ... HTTP
        // and port 80, HTTPS and port 443"; the URL is the same either way).
        .filter(|p| Some(*p) != default_port(scheme));
    let path = match &redirect.uri {
        Some(uri) if uri.contains('?') => uri.clone(),
        Some(uri) => format!(
            "{uri}{}",
            req.uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        ),
        None => match &redirect.uri_regex {
            Some((regex, with)) => {
                let path = regex.replace(req.uri().path(), with.as_str());
                match req.uri().query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.into_owned(),
                }
            }
            None => req
                .uri()
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        },
    };
    // An IPv6 literal keeps its brackets (RFC 3986 §3.2.2), with a port or not.
    let host = if host.contains(':') && !host.starts_with('[') {
        std::borrow::Cow::Owned(format!("[{host}]"))
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    let authority = match port {
        Some(port) => format!("{host}:{port}"),
        None => host.into_owned(),
    };
    HeaderValue::try_from(format!("{scheme}://{authority}{path}")).ok()
}

/// The port a scheme implies: 80 for `http`, 443 for `https`.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> request::Parts {
        http::Request::get(uri)
            .header(HOST, "reviews:9080")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_prefix_rewrite_replaces_only_the_prefix() {
        let rewrite = Rewrite {
            uri: Some("/v2/".into()),
            ..Rewrite::default()
        };
        let mut p = parts("/v1/items?x=1");
        apply(&rewrite, Some("/v1/"), &mut p);
        assert_eq!(p.uri, "/v2/items?x=1");
        assert_eq!(p.headers[ORIGINAL_PATH], "/v1/items?x=1");
    }

    #[test]
    fn authority_rewrites_set_host() {
        let rewrite = Rewrite {
            authority: Some(HeaderValue::from_static("ratings:9080")),
            ..Rewrite::default()
        };
        let mut p = parts("http://reviews:9080/x");
        apply(&rewrite, None, &mut p);
        assert_eq!(p.headers[HOST], "ratings:9080");
        assert_eq!(p.uri.authority().unwrap().as_str(), "ratings:9080");
    }

    #[test]
    fn redirects_keep_what_they_do_not_replace() {
        let redirect = Redirect {
            uri: Some("/".into()),
            uri_regex: None,
            authority: None,
            port: None,
            scheme: None,
            port_from_request: true,
            keep_request_port: false,
            code: http::StatusCode::MOVED_PERMANENTLY,
        };
        let req = http::Request::get("/productpage?u=1")
            .header(HOST, "bookinfo.local:8080")
            .body(())
            .unwrap();
        assert_eq!(
            location(&redirect, &req).unwrap(),
            "http://bookinfo.local:8080/?u=1"
        );
    }

    #[test]
    fn a_scheme_default_port_is_left_out_of_the_location() {
        let redirect = |scheme: Option<&str>, port: Option<u16>| Redirect {
            uri: None,
            uri_regex: None,
            authority: Some("example.org".into()),
            port,
            scheme: scheme.map(Into::into),
            port_from_request: port.is_none() && scheme.is_none(),
            keep_request_port: false,
            code: http::StatusCode::FOUND,
        };
        let req = http::Request::get("/p")
            .header(HOST, "example.com:80")
            .body(())
            .unwrap();
        let cases = [
            (None, None, "http://example.org/p"),
            (None, Some(80), "http://example.org/p"),
            (None, Some(8080), "http://example.org:8080/p"),
            (Some("https"), Some(443), "https://example.org/p"),
            (Some("https"), Some(8443), "https://example.org:8443/p"),
            (Some("https"), Some(80), "https://example.org:80/p"),
        ];
        for (scheme, port, want) in cases {
            assert_eq!(location(&redirect(scheme, port), &req).unwrap(), want);
        }
    }

    #[test]
    fn an_ipv6_host_keeps_its_brackets() {
        let redirect = Redirect::to_https();
        for (host, want) in [
            ("[::1]:8080", "https://[::1]:8080/x"),
            ("[::1]", "https://[::1]/x"),
            ("[2001:db8::7]:443", "https://[2001:db8::7]/x"),
        ] {
            let req = http::Request::get("/x")
                .header(HOST, host)
                .body(())
                .unwrap();
            assert_eq!(location(&redirect, &req).unwrap(), want, "{host}");
        }
    }
}
