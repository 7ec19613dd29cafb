//! One reading of each request, settled before anything decides on it:
//! authorization, rate limits, routing, telemetry and the upstream then all
//! see the same path, authority and header values. A request that can be
//! read two ways is refused.

use http::header::{COOKIE, HOST, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::headers::list_members;
use super::local_reply::LocalReply;
use crate::capture::sniff::HTTP1_METHODS;
use crate::path::{self, PathNormalization};

/// The most header fields an HTTP/2 request may carry: Envoy's
/// `DEFAULT_MAX_HEADERS_COUNT` (envoy/http/codec.h), the
/// `max_headers_count` Istio leaves unset. Every field of the request's
/// HEADERS counts, its pseudo-headers and each cookie crumb included, as
/// Envoy's HTTP/2 codec counts them (`http2.header_overflow`); hyper's
/// HTTP/1 server bounds header lines at the same 100.
pub const MAX_HEADERS_COUNT: usize = 100;

/// What the agent takes an HTTP/2 request's header fields to be, as
/// Envoy's HTTP/2 codec takes them on receipt, before anything reads the
/// request: more than [`MAX_HEADERS_COUNT`] fields, or more than
/// [`MAX_REQUEST_HEAD`] bytes of names and values, is refused
/// ([`LocalReply::TOO_MANY_HEADERS`]); the `cookie` crumbs an HTTP/2 client
/// split a cookie into (RFC 9113 §8.2.3) are one `cookie` again, joined
/// with `; ` in the order they came, as RFC 9113 requires before the
/// request goes on over HTTP/1.1 and Envoy's codec does for every request
/// (`reconstituteCrumbledCookies`): rules, telemetry and the upstream see
/// the joined line. Called on the request as hyper gave it, before the
/// agent adds or removes a header. An HTTP/1.1 request is left as it came
/// (Envoy's HTTP/1 codec passes its `Cookie` lines on as they are).
/// Allocates only to join two crumbs or more.
pub fn received<B>(req: &mut Request<B>) -> Result<(), LocalReply> {
    if req.version() != Version::HTTP_2 {
        if head_len(req) > MAX_REQUEST_HEAD {
            return Err(LocalReply::HEADERS_TOO_LARGE);
        }
        return Ok(());
    }
    if pseudo_fields(req) + req.headers().len() > MAX_HEADERS_COUNT
        || fields_len(req) > MAX_REQUEST_HEAD
    {
        return Err(LocalReply::TOO_MANY_HEADERS);
    }
    join_cookie_crumbs(req.headers_mut());
    Ok(())
}

/// The longest HTTP/1 request head the agent serves, in bytes, from the
/// request line's first byte to the end of the empty line that ends the
/// head: Envoy's default `max_request_headers_kb` (60 KiB, which Istio
/// leaves as it is), counted as Envoy's HTTP/1 parser counts it (BalsaFrame's
/// `max_header_length`, `max_request_headers_kb * 1024` in
/// http1/codec_impl.cc): a head of exactly 61440 bytes is served, one byte
/// more is answered 431, however long its request line. The listener's
/// read buffer is bounded at the same size (hyper's `max_buf_size`), so a
/// head far past it is never held whole. An HTTP/2 request's names and
/// values are bounded at the same size, as Envoy bounds them.
pub const MAX_REQUEST_HEAD: usize = 60 * 1024;

/// The length in bytes of the HTTP/1 head `req` came in, as its sender
/// wrote it in the canonical form (`METHOD target HTTP/1.1`, each header
/// `name: value`, every line ended by CRLF, and the empty line): what hyper
/// keeps of a head, whose parser drops optional whitespace around values.
/// No allocation: a sum over the header lines.
fn head_len<B>(req: &Request<B>) -> usize {
    const LINE_END: usize = 2;
    // Origin form is a path; absolute form (a proxy request) and authority
    // form (CONNECT) are kept whole by hyper.
    let uri = req.uri();
    let target = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |path| path.as_str().len());
    let request_line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + LINE_END)
        .sum();
    request_line + LINE_END + headers + LINE_END
}

/// The bytes of the HTTP/2 request `req`'s header fields as Envoy counts
/// them against `max_request_headers_kb` (its header map's byte size):
/// each field's name and value, the pseudo-headers' included. No
/// allocation: a sum over the fields.
fn fields_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let pseudo = ":method".len()
        + req.method().as_str().len()
        + uri.scheme_str().map_or(0, |s| ":scheme".len() + s.len())
        + uri
            .authority()
            .map_or(0, |a| ":authority".len() + a.as_str().len())
        + uri
            .path_and_query()
            .map_or(0, |p| ":path".len() + p.as_str().len());
    let fields: usize = (req.headers().iter())
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    pseudo + fields
}

/// How many pseudo-header fields the HTTP/2 request `req` came with:
/// `:method`, `:scheme` and `:path` (any request with a path: every one
/// but a plain CONNECT), `:authority` when sent, and `:protocol` (an
/// extended CONNECT, the one CONNECT with a path). Counted from what the
/// h2 crate made of them, which refuses a request whose pseudo-headers do
/// not fit these shapes.
fn pseudo_fields<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let path = uri.path_and_query().is_some();
    1 + usize::from(uri.authority().is_some())
        + 2 * usize::from(path)
        + usize::from(path && req.method() == Method::CONNECT)
}

/// Joins repeated `cookie` lines into one, `; ` between them (RFC 9113
/// §8.2.3; RFC 6265 §5.4's separator). One line or none: untouched.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    let (Some(_), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let crumbs = headers.get_all(COOKIE).iter();
    let len = crumbs.map(|c| c.len() + 2).sum::<usize>() - 2;
    let mut joined = Vec::with_capacity(len);
    for crumb in headers.get_all(COOKIE) {
        // As Envoy joins them: no separator while nothing is joined yet
        // (an empty first crumb adds nothing).
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // The crumbs were valid values, and `; ` is valid between them.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(COOKIE, value);
    }
}

/// What the request is settled against.
pub struct Settings<'a> {
    /// The mesh's `pathNormalization`.
    pub path_normalization: PathNormalization,
    /// Headers some rule decides on.
    pub decided_headers: &'a [HeaderName],
}

/// Settles `req` in place; `Err` is the reply to answer with (400; 501
/// for a transfer coding the agent does not forward).
pub fn settle<B>(req: &mut Request<B>, settings: &Settings<'_>) -> Result<(), LocalReply> {
    if !is_known_method(req.method()) {
        return Err(LocalReply::UNKNOWN_METHOD);
    }
    settle_target(req)?;
    settle_framing(req.headers())?;
    settle_authority(req)?;
    settle_path(req.uri_mut(), settings.path_normalization)?;
    for name in settings.decided_headers {
        single_line(req.headers_mut(), name)?;
    }
    Ok(())
}

fn is_known_method(method: &Method) -> bool {
    // The standard ones without a string compare.
    matches!(
        *method,
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD | Method::PATCH
    ) || HTTP1_METHODS.contains(&method.as_str())
}

/// The target is a path (origin form) or a whole URI (absolute form, and
/// every HTTP/2 request): RFC 9112 §3.2 keeps the authority form for
/// CONNECT and the asterisk form for OPTIONS. hyper reads `GET admin` as
/// an authority form: let through, it reached the app as `GET /` with
/// `admin` for its Host. Refused 400 as Envoy's HTTP/1 codec refuses it;
/// `OPTIONS *`, and an HTTP/2 `:path` that does not begin with `/` (no
/// HTTP/1 codec has refused it), get Envoy's connection manager's 404.
fn settle_target<B>(req: &Request<B>) -> Result<(), LocalReply> {
    // The target as written: `Uri::path` says `/` for an HTTP/2 `:path` of
    // `?x`, which would be forwarded as a request line `GET ?x` (and `""`
    // for an authority form, which has no path at all).
    let uri = req.uri();
    let path = uri
        .path_and_query()
        .map_or(uri.path(), PathAndQuery::as_str);
    if path.starts_with('/') || req.method() == Method::CONNECT {
        Ok(())
    } else if req.version() == Version::HTTP_2 || (path == "*" && req.method() == Method::OPTIONS) {
        Err(LocalReply::NOT_A_PATH)
    } else {
        Err(LocalReply::INVALID_REQUEST_TARGET)
    }
}

/// One coding of the body: a `Transfer-Encoding` is `chunked` alone (501,
/// RFC 9112 §6.1, as Envoy's HTTP/1 codec answers): forwarded, any other
/// coding was dropped on the way and its bytes reached the app undecoded.
/// (hyper has already settled a `Content-Length` beside it, or repeated:
/// the transfer coding wins and the length is dropped, RFC 9112 §6.3; equal
/// lengths are one, §8.6.)
fn settle_framing(headers: &HeaderMap) -> Result<(), LocalReply> {
    if known_transfer_coding(headers) {
        Ok(())
    } else {
        Err(LocalReply::UNKNOWN_TRANSFER_ENCODING)
    }
}

/// Whether a message's `Transfer-Encoding` is one the agent can pass on:
/// none, or `chunked` alone (any case; on one line or several). Any other
/// coding would be dropped with the chunked framing hyper removes, and its
/// bytes passed on undecoded (RFC 9112 §6.1).
pub(crate) fn known_transfer_coding(headers: &HeaderMap) -> bool {
    let mut codings = list_members(headers, TRANSFER_ENCODING);
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// One host: two `Host` lines are refused (RFC 9112 §3.2), and so is an
/// HTTP/2 `host` that names another authority than `:authority` (RFC 9113
/// §8.3.1). An HTTP/1.1 absolute-form target's authority is the one that
/// counts (RFC 9112 §3.2.2), so `Host` is made to say it — without the
/// target's userinfo (`http://user@host/`), which is no part of the host
/// (RFC 9110 §4.2.4 deprecates it; Envoy forwards `Host: host`): kept, it
/// would hide the host from `hosts` rules and routing alike.
fn settle_authority<B>(req: &mut Request<B>) -> Result<(), LocalReply> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(LocalReply::AMBIGUOUS_HOST);
    }
    if host.is_some_and(|h| !is_valid_authority(h.as_bytes())) {
        return Err(LocalReply::INVALID_AUTHORITY);
    }
    if req.version() < Version::HTTP_2 {
        drop_userinfo(req.uri_mut())?;
    } else if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        // RFC 9113 §8.3.1: `:authority` MUST NOT include userinfo; Envoy's
        // codec refuses it. Let through, `u@admin.example.com` was judged
        // as another host than the one the app reads.
        return Err(LocalReply::INVALID_AUTHORITY);
    }
    strip_trailing_host_dot(req)?;
    let host = req.headers().get(HOST);
    let Some(authority) = req.uri().authority().map(Authority::as_str) else {
        return Ok(());
    };
    match host {
        Some(h) if h.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => Ok(()),
        Some(_) if req.version() == Version::HTTP_2 => Err(LocalReply::AMBIGUOUS_HOST),
        None if req.version() == Version::HTTP_2 => Ok(()),
        _ => {
            let value = HeaderValue::from_str(authority).map_err(|_| LocalReply::MISSING_HOST)?;
            req.headers_mut().insert(HOST, value);
            Ok(())
        }
    }
}

/// Drops one trailing dot from the host of the Host header and of the
/// target's authority (`shop.example.com.:80` is `shop.example.com:80`), as
/// Envoy's `strip_trailing_host_dot` does: routing, AuthorizationPolicy
/// `hosts`, header matchers, telemetry and the upstream all see one name.
/// Routing alone ignoring the dot let `shop.example.com.` reach the route
/// of `shop.example.com` past a DENY on its `hosts`. Allocates only when a
/// dot is dropped.
fn strip_trailing_host_dot<B>(req: &mut Request<B>) -> Result<(), LocalReply> {
    if let Some(stripped) = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(without_trailing_dot)
    {
        let value = HeaderValue::from_str(&stripped).map_err(|_| LocalReply::INVALID_AUTHORITY)?;
        req.headers_mut().insert(HOST, value);
    }
    if let Some(stripped) = req
        .uri()
        .authority()
        .and_then(|a| without_trailing_dot(a.as_str()))
    {
        let authority = Authority::try_from(stripped).map_err(|_| LocalReply::INVALID_AUTHORITY)?;
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.authority = Some(authority);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| LocalReply::INVALID_AUTHORITY)?;
    }
    Ok(())
}

/// `authority` with one trailing dot dropped from its host, when its host
/// ends with one (and is more than the dot).
fn without_trailing_dot(authority: &str) -> Option<String> {
    // The port follows the last `:` past any bracketed IPv6 literal.
    let host_end = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => colon,
        _ => authority.len(),
    };
    let host = &authority[..host_end];
    let bare = host.strip_suffix('.').filter(|bare| !bare.is_empty())?;
    Some(format!("{bare}{}", &authority[host_end..]))
}

/// Takes the userinfo out of the target's authority (`user:pw@host:80`
/// is `host:80`); an authority left with no host is refused.
fn drop_userinfo(uri: &mut Uri) -> Result<(), LocalReply> {
    let Some((_, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Ok(());
    };
    let host = Authority::try_from(host).map_err(|_| LocalReply::INVALID_AUTHORITY)?;
    if host.host().is_empty() {
        return Err(LocalReply::INVALID_AUTHORITY);
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.authority = Some(host);
    *uri = Uri::from_parts(parts).map_err(|_| LocalReply::INVALID_AUTHORITY)?;
    Ok(())
}

/// Whether `host` is a URI authority (RFC 3986 §3.2): a host name, an IPv4
/// address or a bracketed IPv6 literal, and an optional port — the bytes
/// nghttp2's `nghttp2_check_authority`, which Envoy applies, accepts. A
/// Host with `/`, `\`, a space or a control byte is refused, as Envoy
/// refuses it: it would otherwise reach routing, redirects and span names.
fn is_valid_authority(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b'%'
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

/// Normalizes the path as the mesh's `pathNormalization` says.
fn settle_path(uri: &mut Uri, mode: PathNormalization) -> Result<(), LocalReply> {
    let Some(target) = uri.path_and_query() else {
        return Ok(());
    };
    let normalized = match path::normalize(target.as_str(), mode) {
        Ok(None) => return Ok(()),
        Ok(Some(normalized)) => normalized,
        Err(path::PathRejected) => return Err(LocalReply::PATH_NORMALIZATION_FAILED),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(normalized).map_err(|_| LocalReply::PATH_NORMALIZATION_FAILED)?,
    );
    *uri = Uri::from_parts(parts).map_err(|_| LocalReply::PATH_NORMALIZATION_FAILED)?;
    Ok(())
}

/// A header a rule decides on must have one line: a rule could match one
/// line while the app reads another (Envoy's matchers accept a request when
/// *any* line matches). Repeated `cookie` lines (an HTTP/1.1 request's:
/// an HTTP/2 request's crumbs are joined on receipt, [`received`]) are
/// joined with `; `, the one reading RFC 6265 §5.4 gives them.
fn single_line(headers: &mut HeaderMap, name: &HeaderName) -> Result<(), LocalReply> {
    let mut values = headers.get_all(name).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return Ok(());
    };
    if name != COOKIE {
        return Err(LocalReply::AMBIGUOUS_HEADER);
    }
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(name).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    let value = HeaderValue::from_bytes(&joined).map_err(|_| LocalReply::AMBIGUOUS_HEADER)?;
    headers.insert(name.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    fn settings(decided: &[HeaderName]) -> Settings<'_> {
        Settings {
            path_normalization: PathNormalization::Base,
            decided_headers: decided,
        }
    }

    fn details<B>(req: &mut Request<B>) -> Option<&'static str> {
        settle(req, &settings(&[])).err().map(|reply| reply.details)
    }

    #[test]
    fn one_trailing_dot_is_dropped_from_the_host() {
        for (authority, want) in [
            ("shop.example.com.", Some("shop.example.com")),
            ("shop.example.com.:8080", Some("shop.example.com:8080")),
            ("shop.:80", Some("shop:80")),
            ("shop.example.com", None),
            ("shop.example.com:8080", None),
            (".", None),
            (".:80", None),
            ("[::1]:80", None),
            ("[::1]", None),
        ] {
            assert_eq!(
                without_trailing_dot(authority).as_deref(),
                want,
                "{authority}"
            );
        }
        let mut req = request(Version::HTTP_11, "/x", &[("host", "shop.example.com.:80")]);
        assert_eq!(details(&mut req), None);
        assert_eq!(req.headers()[HOST], "shop.example.com:80");
        let mut req = request(Version::HTTP_2, "http://shop.example.com./x", &[]);
        assert_eq!(details(&mut req), None);
        assert_eq!(req.uri(), "http://shop.example.com/x");
    }

    /// RFC 9113 §8.3.1: an HTTP/2 `:authority` with userinfo is malformed.
    #[test]
    fn http2_authority_with_userinfo_is_refused() {
        for uri in [
            "http://u@admin.example.com/x",
            "http://u:p@admin.example.com:9080/x",
        ] {
            let mut req = request(Version::HTTP_2, uri, &[]);
            assert_eq!(details(&mut req), Some("invalid_authority"), "{uri}");
        }
    }

    #[test]
    fn methods_are_those_of_envoys_http1_codec() {
        for (method, want) in [
            ("GET", None),
            ("PROPFIND", None),
            ("M-SEARCH", None),
            ("get", Some("http.invalid_method")),
            ("Get", Some("http.invalid_method")),
            ("FOO", Some("http.invalid_method")),
        ] {
            let mut req = request(Version::HTTP_11, "/", &[("host", "a")]);
            *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(details(&mut req), want, "{method}");
            // The same over HTTP/2.
            *req.version_mut() = Version::HTTP_2;
            assert_eq!(details(&mut req), want, "{method} over HTTP/2");
        }
    }

    #[test]
    fn a_target_is_a_path_or_a_whole_uri() {
        for (method, target, want) in [
            ("GET", "/admin", None),
            ("GET", "http://a/admin", None),
            ("GET", "http://a", None),
            ("GET", "admin", Some("http1.invalid_url")),
            ("GET", "a:8080", Some("http1.invalid_url")),
            ("GET", "*", Some("http1.invalid_url")),
            ("OPTIONS", "*", Some("absolute_path_rejected")),
            ("OPTIONS", "a:80", Some("http1.invalid_url")),
            ("CONNECT", "a:443", None),
        ] {
            let mut req = request(Version::HTTP_11, target, &[("host", "a")]);
            *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(details(&mut req), want, "{method} {target}");
        }
        // An HTTP/2 `:path` of `*` or `?x` reaches the agent as a URI with
        // a scheme and that path (`Uri::path` reads `?x` as `/`).
        for path in ["*", "?x"] {
            let mut req = request(Version::HTTP_2, "http://a", &[]);
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static(path));
            *req.uri_mut() = Uri::from_parts(parts).unwrap();
            if path == "?x" {
                assert_eq!(req.uri().path(), "/");
            }
            assert_eq!(details(&mut req), Some("absolute_path_rejected"), "{path}");
        }
    }

    #[test]
    fn a_body_is_coded_chunked_or_not_at_all() {
        let te = "transfer-encoding";
        for (lines, want) in [
            (&[][..], None),
            (&[(te, "chunked")], None),
            (&[(te, "Chunked ")], None),
            (
                &[(te, "gzip, chunked")],
                Some("http1.invalid_transfer_encoding"),
            ),
            (
                &[(te, "chunked, chunked")],
                Some("http1.invalid_transfer_encoding"),
            ),
            (
                &[(te, "gzip"), (te, "chunked")],
                Some("http1.invalid_transfer_encoding"),
            ),
        ] {
            let mut headers = vec![("host", "a")];
            headers.extend_from_slice(lines);
            let mut req = request(Version::HTTP_11, "/", &headers);
            assert_eq!(details(&mut req), want, "{lines:?}");
        }
    }

    #[test]
    fn a_host_that_is_no_authority_is_refused() {
        for bad in ["evil.com/x", "a b", "a\\b", "a?b", "a#b", "a\"b"] {
            let mut req = request(Version::HTTP_11, "/", &[("host", bad)]);
            assert_eq!(
                settle(&mut req, &settings(&[])).map_err(|r| r.details),
                Err("invalid_authority"),
                "{bad:?}"
            );
        }
        for good in [
            "reviews",
            "reviews.default.svc:9080",
            "10.0.0.1:80",
            "[::1]:8080",
            "a_b-c~d",
        ] {
            let mut req = request(Version::HTTP_11, "/", &[("host", good)]);
            assert_eq!(
                settle(&mut req, &settings(&[])).map_err(|r| r.details),
                Ok(()),
                "{good:?}"
            );
        }
    }

    #[test]
    fn two_host_lines_are_refused() {
        let mut req = request(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]);
        let reply = settle(&mut req, &settings(&[])).unwrap_err();
        assert_eq!(reply.status, 400);
        let mut same = request(Version::HTTP_11, "/", &[("host", "a"), ("host", "a")]);
        assert!(settle(&mut same, &settings(&[])).is_err());
    }

    #[test]
    fn h2_host_must_agree_with_authority() {
        let mut req = request(Version::HTTP_2, "http://a:80/", &[("host", "b")]);
        assert!(settle(&mut req, &settings(&[])).is_err());
        let mut req = request(Version::HTTP_2, "http://a:80/", &[("host", "A:80")]);
        assert!(settle(&mut req, &settings(&[])).is_ok());
        let mut req = request(Version::HTTP_2, "http://a/", &[]);
        assert!(settle(&mut req, &settings(&[])).is_ok());
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let mut req = request(Version::HTTP_11, "http://x/a", &[("host", "y")]);
        settle(&mut req, &settings(&[])).unwrap();
        assert_eq!(req.headers()[HOST], "x");
    }

    #[test]
    fn a_targets_userinfo_is_no_part_of_its_host() {
        for (target, host) in [
            ("http://user@admin.example.com/x", "admin.example.com"),
            (
                "http://user:pw@admin.example.com:80/x",
                "admin.example.com:80",
            ),
        ] {
            let mut req = request(Version::HTTP_11, target, &[("host", "app")]);
            settle(&mut req, &settings(&[])).unwrap();
            assert_eq!(req.headers()[HOST], host, "{target}");
            assert_eq!(req.uri().authority().unwrap().as_str(), host, "{target}");
        }
    }

    #[test]
    fn path_is_normalized_in_place() {
        let mut req = request(
            Version::HTTP_11,
            "/public/../admin?q=/../x",
            &[("host", "a")],
        );
        settle(&mut req, &settings(&[])).unwrap();
        assert_eq!(req.uri().path(), "/admin");
        assert_eq!(req.uri().query(), Some("q=/../x"));
        let mut nul = request(Version::HTTP_11, "/a%00", &[("host", "a")]);
        let reply = settle(&mut nul, &settings(&[])).unwrap_err();
        assert_eq!(reply.details, "path_normalization_failed");
    }

    #[test]
    fn decided_headers_must_have_one_line() {
        let decided = [HeaderName::from_static("x-user"), COOKIE];
        let mut twice = request(
            Version::HTTP_11,
            "/",
            &[("host", "a"), ("x-user", "alice"), ("x-user", "admin")],
        );
        let reply = settle(&mut twice, &settings(&decided)).unwrap_err();
        assert_eq!(reply.details, "ambiguous_header");
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[
                ("host", "a"),
                ("x-user", "alice"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-other", "1"),
                ("x-other", "2"),
            ],
        );
        settle(&mut req, &settings(&decided)).unwrap();
        let all = |n: &str| -> Vec<String> {
            let values = req.headers().get_all(n).iter();
            values.map(|v| v.to_str().unwrap().to_owned()).collect()
        };
        assert_eq!(all("cookie"), ["a=1; b=2"]);
        assert_eq!(all("x-other"), ["1", "2"]);
    }
}
