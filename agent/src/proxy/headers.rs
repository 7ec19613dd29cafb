//! Header rewriting between hops, as Envoy does it: hop-by-hop headers out,
//! forwarding headers and a request id in, trace context and Istio's peer
//! metadata exchanged, the rule's edits applied, and the URI and version made
//! right for the upstream's protocol.

use std::net::IpAddr;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version, request, response};

use super::Direction;
use super::local_reply::LocalReply;
use crate::header_scan;
use crate::model::Identity;
use crate::model::header_format::FormatContext;
use crate::model::route::HeaderEdits;
use crate::telemetry::peer_metadata::{PEER_METADATA, PEER_METADATA_ID};
use crate::telemetry::record::X_REQUEST_ID;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
const EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// An address as a header value's text.
fn address_text(address: IpAddr) -> HeaderValue {
    // (an address's text is always a valid header value)
    HeaderValue::try_from(address.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// How the request leaves this hop.
pub struct OutgoingRequest<'a> {
    /// Listener direction.
    pub direction: Direction,
    /// Speak HTTP/2 to the upstream.
    pub h2: bool,
    /// The request is a protocol upgrade (keeps `Upgrade`/`Connection`).
    pub upgrade: bool,
    /// This agent.
    pub identity: &'a Identity,
    /// The client's IP (appended to `x-forwarded-for` at the edge).
    pub client_ip: IpAddr,
    /// The rule's and the destination's edits, in the order they apply
    /// (outbound; `Routed::request_edits`).
    pub edits: [Option<&'a HeaderEdits>; 2],
    /// What the edits' substitutions are filled from.
    pub format: FormatContext,
    /// At an ingress gateway (the mesh's edge), the scheme the client
    /// spoke: it sets `x-forwarded-proto`, and the client's IP is appended
    /// to `x-forwarded-for`, as Envoy does where `use_remote_address` holds.
    pub edge_scheme: Option<&'static str>,
    /// At an ingress gateway, the original client's address (the peer,
    /// or the one `numTrustedProxies` counts back to in `x-forwarded-for`),
    /// sent as `x-envoy-external-address`, as Envoy marks a request from
    /// outside the trusted network.
    pub external_address: Option<IpAddr>,
    /// At an ingress gateway that trusts proxies in front of it
    /// (`numTrustedProxies` > 0), an `x-forwarded-proto` they sent is kept,
    /// as Envoy keeps it when it trusts any hops; otherwise `edge_scheme`
    /// replaces it.
    pub trust_forwarded_proto: bool,
}

/// The request headers only the mesh may set, which Envoy removes from a
/// request from outside it (`ConnectionManagerUtility::cleanInternalHeaders`
/// and `mutateRequestHeaders` for an external request, as every request
/// is at an Istio gateway: it lists no internal addresses): the retry and
/// timeout controls a sidecar further in would obey, the address and
/// internal marks it would trust, the original path and URL, forced
/// tracing. (`x-envoy-original-path` is not in `cleanInternalHeaders`:
/// Envoy removes it from an untrusted client's request beside it, under
/// `sanitize_original_path`, on since 1.26; Envoy 1.40 at Istio's gateway
/// does not pass a client's on.)
const INTERNAL_ONLY: [&str; 21] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-stream-duration-ms",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-original-path",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-external-address",
];

/// Takes from a request that entered the mesh at this gateway what only
/// the mesh may set ([`INTERNAL_ONLY`]), and its `x-request-id`: Envoy
/// gives an edge request an id of its own (`preserve_external_request_id`
/// is off), so a client cannot choose the id its request is traced and
/// logged under. Runs before anything reads the request.
pub fn clean_external(headers: &mut HeaderMap) {
    for name in INTERNAL_ONLY {
        headers.remove(name);
    }
    headers.remove(X_REQUEST_ID);
}

/// Rewrites a request for the next hop; `inject_trace_context` writes this
/// hop's trace context (before the rule's edits, which may change it).
pub fn prepare_request(
    parts: &mut request::Parts,
    out: &OutgoingRequest<'_>,
    inject_trace_context: impl FnOnce(&mut HeaderMap),
) -> Result<(), LocalReply> {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, out.upgrade);
    // `Expect: 100-continue` goes on to the app, as Istio renders Envoy's
    // `proxy_100_continue: true` (ENABLE_100_CONTINUE_HEADERS, on by
    // default): the app decides whether it wants the body. The agent's
    // HTTP/1.1 client holds the body back until the app's `100 Continue`
    // (`h1::CONTINUE_WAIT`); hyper's server answers an HTTP/1.1 client
    // `100 Continue` when the body is first read, and cannot pass on other
    // 1xx answers, nor any to an HTTP/2 client (docs/envoy-differences.md).
    match out.edge_scheme {
        Some(_) if out.trust_forwarded_proto && header_scan::holds(headers, &X_FORWARDED_PROTO) => {
        }
        Some(scheme) => {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        None if !header_scan::holds(headers, &X_FORWARDED_PROTO) => {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        None => {}
    }
    // Only where Istio renders `use_remote_address: true`, its gateways:
    // a sidecar (inbound and outbound `false`) passes the header on as it
    // came, as Envoy does without `use_remote_address`.
    if out.edge_scheme.is_some() {
        append_forwarded_for(headers, out.client_ip);
    }
    if let Some(address) = out.external_address {
        headers.insert(EXTERNAL_ADDRESS, address_text(address));
    }
    inject_trace_context(headers);
    match out.direction {
        // Announce this workload to the callee's sidecar (Istio metadata exchange).
        Direction::Outbound => {
            headers.insert(PEER_METADATA, out.identity.peer_metadata.clone());
            headers.insert(PEER_METADATA_ID, out.identity.peer_metadata_id.clone());
        }
        // The caller's announcement was read by the exchange; the app never sees it.
        Direction::Inbound => {
            header_scan::remove(headers, &PEER_METADATA);
            header_scan::remove(headers, &PEER_METADATA_ID);
        }
    }
    for edits in out.edits.iter().flatten() {
        edits.apply(headers, &out.format);
    }
    set_target(parts, out.h2)
}

/// Frames a request that has no body for an HTTP/1.1 upstream: a method
/// that gives a body meaning (all but GET, HEAD, DELETE, TRACE and CONNECT,
/// RFC 9110 §9.3) goes with `content-length: 0`, as RFC 9110 §8.6 asks of a
/// sender and as Envoy's HTTP/1 codec writes it (servers answer 411 to a
/// POST of unknown length); the others go with no framing at all.
pub(super) fn frame_empty_body(parts: &mut request::Parts, h2: bool) {
    use http::Method;
    let bodiless = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
    );
    if h2 || bodiless {
        return;
    }
    let framed =
        parts.headers.contains_key(CONTENT_LENGTH) || parts.headers.contains_key(TRANSFER_ENCODING);
    if !framed {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

/// Puts the URI and version in the form the upstream protocol wants:
/// origin-form with `Host` for HTTP/1.1, absolute with `:authority` for HTTP/2.
pub(super) fn set_target(parts: &mut request::Parts, h2: bool) -> Result<(), LocalReply> {
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        // (Read from `Host` only here: parsing it copies it.)
        let authority = match parts.uri.authority() {
            Some(a) => a.clone(),
            None => parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .ok_or(LocalReply::MISSING_HOST)?,
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|_| LocalReply::MISSING_HOST)?;
        parts.version = Version::HTTP_2;
        parts.headers.remove(HOST);
    } else {
        if let Some(authority) = parts.uri.authority() {
            let value =
                HeaderValue::from_str(authority.as_str()).map_err(|_| LocalReply::MISSING_HOST)?;
            parts.headers.insert(HOST, value);
        } else if !parts.headers.contains_key(HOST) {
            return Err(LocalReply::MISSING_HOST);
        }
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
    }
    Ok(())
}

/// How the response goes back.
pub struct IncomingResponse<'a> {
    /// Listener direction.
    pub direction: Direction,
    /// The caller announced itself, so this agent answers in kind (inbound).
    pub caller_announced: bool,
    /// This agent.
    pub identity: &'a Identity,
    /// Milliseconds the upstream took to answer.
    pub upstream_ms: u64,
    /// The rule's and the destination's edits, in the order they apply
    /// (outbound; `Routed::response_edits`).
    pub edits: [Option<&'a HeaderEdits>; 2],
    /// What the edits' substitutions are filled from.
    pub format: FormatContext,
}

/// Rewrites a response for the caller. Returns the peer metadata the
/// upstream announced itself with (outbound), which the caller never sees.
pub fn prepare_response(
    parts: &mut response::Parts,
    back: &IncomingResponse<'_>,
) -> Option<HeaderValue> {
    // The caller's connection is ours, not the upstream's: an HTTP/1.0
    // upstream answer goes back as HTTP/1.1 (as Envoy's codec writes it),
    // or the caller's keep-alive connection would close after it. hyper
    // still answers an HTTP/1.0 caller in HTTP/1.0.
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(
        headers,
        parts.status == http::StatusCode::SWITCHING_PROTOCOLS,
    );
    settle_length(parts.status, headers);
    let mut announced = None;
    match back.direction {
        Direction::Outbound => {
            announced = header_scan::remove(headers, &PEER_METADATA);
            header_scan::remove(headers, &PEER_METADATA_ID);
        }
        Direction::Inbound if back.caller_announced => {
            headers.insert(PEER_METADATA, back.identity.peer_metadata.clone());
            headers.insert(PEER_METADATA_ID, back.identity.peer_metadata_id.clone());
        }
        Direction::Inbound => {}
    }
    headers.insert(UPSTREAM_SERVICE_TIME, decimal(back.upstream_ms));
    for edits in back.edits.iter().flatten() {
        edits.apply(headers, &back.format);
    }
    announced
}

/// A response's `Content-Length` as the next hop must read it: a 204 or a
/// 1xx carries none (RFC 9110 §8.6; hyper drops it on HTTP/1 but not on
/// HTTP/2, where clients refuse the response); a length repeated within
/// one line (`4, 4`), which hyper read as the one value it checked they
/// all are, is written once (a client reading it as one number would
/// wait for a body that never comes).
fn settle_length(status: http::StatusCode, headers: &mut HeaderMap) {
    if status == http::StatusCode::NO_CONTENT || status.is_informational() {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let Some(length) = headers.get(CONTENT_LENGTH) else {
        return;
    };
    if !length.as_bytes().contains(&b',') {
        return;
    }
    let first = list_members(headers, CONTENT_LENGTH)
        .next()
        .and_then(|first| HeaderValue::from_bytes(first).ok());
    if let Some(first) = first {
        headers.insert(CONTENT_LENGTH, first);
    }
}

/// Removes headers that describe one connection only (RFC 9110 §7.6.1),
/// including those `Connection` names, and a `Content-Length` that a
/// transfer coding overrode. A `TE` that lists `trailers` goes on as
/// `te: trailers` (gRPC needs it), any other is removed; an upgrade keeps
/// `Upgrade` and `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names first: most messages carry none of these or
    // one (`connection: keep-alive`), and each lookup below hashes its name.
    let present = headers
        .keys()
        .fold(0u8, |seen, name| seen | hop_by_hop(name));
    if present == 0 && !upgrade {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        // Read as bytes: most lines say only `keep-alive` or `close`, and
        // then nothing is built.
        let mut listed: Vec<HeaderName> = Vec::new();
        for token in list_members(headers, CONNECTION) {
            if token.is_empty() || is_connection_option(token) {
                continue;
            }
            // (`from_bytes` lowercases.) TE is decided below; the request
            // id is the request's on every hop (it names its spans and log
            // lines), so a client naming it here does not take it from the
            // app.
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != TE
                && name != X_REQUEST_ID
            {
                listed.push(name);
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (bit, name) in [
        (HOP_KEEP_ALIVE, KEEP_ALIVE),
        (HOP_PROXY_CONNECTION, PROXY_CONNECTION),
        (HOP_TRANSFER_ENCODING, TRANSFER_ENCODING),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        // The body was framed by its transfer coding, which overrides any
        // Content-Length beside it; a proxy removes that Content-Length
        // before forwarding (RFC 9112 §6.3). Kept, it would cut the body
        // the next hop reads to that length.
        headers.remove(CONTENT_LENGTH);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        if present & HOP_CONNECTION != 0 {
            headers.remove(CONNECTION);
        }
        if present & HOP_UPGRADE != 0 {
            headers.remove(UPGRADE);
        }
    }
    if present & HOP_TE != 0 {
        if accepts_trailers(headers) {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

/// Whether a `TE` line lists `trailers` (RFC 9110 §10.1.4; ABNF literals
/// ignore case). Only that goes on: the transfer codings the client would
/// take are for this hop, as Envoy keeps `te: trailers` alone.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    list_members(headers, TE).any(|member| member.eq_ignore_ascii_case(b"trailers"))
}

/// The members of a comma-separated header (RFC 9110 §5.6.1) over all its
/// lines, as bytes, whitespace around each trimmed; empty members too (a
/// caller that counts members sees `,chunked` as two).
pub(super) fn list_members(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// A `Connection` option that names no header (RFC 9112 §9.3, §9.6;
/// RFC 9110 §7.8).
fn is_connection_option(token: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade"]
        .iter()
        .any(|option| token.eq_ignore_ascii_case(option))
}

const HOP_CONNECTION: u8 = 1;
const HOP_KEEP_ALIVE: u8 = 1 << 1;
const HOP_PROXY_CONNECTION: u8 = 1 << 2;
const HOP_TRANSFER_ENCODING: u8 = 1 << 3;
const HOP_UPGRADE: u8 = 1 << 4;
const HOP_TE: u8 = 1 << 5;

/// Which hop-by-hop header `name` is, as a `HOP_*` bit (0 for any other).
fn hop_by_hop(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection" => HOP_CONNECTION,
        "keep-alive" => HOP_KEEP_ALIVE,
        "proxy-connection" => HOP_PROXY_CONNECTION,
        "transfer-encoding" => HOP_TRANSFER_ENCODING,
        "upgrade" => HOP_UPGRADE,
        "te" => HOP_TE,
        _ => 0,
    }
}

/// `n` in decimal as a header value. Numbers below 100 (most upstream
/// times in milliseconds, the attempt counts of any retry policy short of
/// 99 retries) are static text: nothing is allocated for them.
pub(super) fn decimal(n: u64) -> HeaderValue {
    const ONES: &str = "0123456789";
    const TENS: &str = "00010203040506070809101112131415161718192021222324252627282930\
        313233343536373839404142434445464748495051525354555657585960616263646566\
        676869707172737475767778798081828384858687888990919293949596979899";
    match usize::try_from(n) {
        Ok(n @ 0..10) => HeaderValue::from_static(&ONES[n..=n]),
        Ok(n @ 10..100) => HeaderValue::from_static(&TENS[2 * n..2 * n + 2]),
        _ => HeaderValue::from(n),
    }
}

/// Gives the request an `x-request-id` when it has none, as Envoy does,
/// before anything can fail so every span and log line carries one.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    headers.entry(X_REQUEST_ID).or_insert_with(new_request_id);
}

/// Appends the client to `x-forwarded-for`, keeping every earlier line (the
/// hops `remote_ip` counts back through).
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    if let Ok(value) = HeaderValue::try_from(forwarded_for_with(headers, ip)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// `x-forwarded-for` with the client `ip` appended, as Envoy's
/// `Utility::appendXff` writes it: every earlier line joined, then the
/// client, `,` between them (no space, Envoy's delimiter).
pub(super) fn forwarded_for_with(headers: &HeaderMap, ip: IpAddr) -> String {
    let mut value = String::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        // An empty line is no entry: Envoy's codec skips it when it joins
        // the lines.
        if let Ok(line) = line.to_str()
            && !line.trim().is_empty()
        {
            value.push_str(line);
            value.push(',');
        }
    }
    value.push_str(&ip.to_string());
    value
}

/// A random UUID v4, as Envoy generates for `x-request-id`.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1; // the dash before this group
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).expect("hex and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_the_numbers_they_name() {
        for n in [0, 1, 9, 10, 42, 99, 100, 12345, u64::MAX] {
            assert_eq!(decimal(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        let groups: Vec<usize> = s.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{s}");
        assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{s}");
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn strips_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert(KEEP_ALIVE, "timeout=5".parse().unwrap());
        headers.insert(TE, "trailers".parse().unwrap());
        headers.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(CONNECTION).is_none());
        assert!(headers.get(KEEP_ALIVE).is_none());
        assert_eq!(headers.get(TE).unwrap(), "trailers");
        assert_eq!(headers.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn every_hop_by_hop_name_is_seen_by_the_first_pass() {
        for name in [
            CONNECTION,
            KEEP_ALIVE,
            PROXY_CONNECTION,
            TRANSFER_ENCODING,
            UPGRADE,
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), "x".parse().unwrap());
            headers.insert("x-app", "kept".parse().unwrap());
            strip_hop_by_hop(&mut headers, false);
            assert!(headers.get(&name).is_none(), "{name} survived");
            assert_eq!(headers.len(), 1, "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty(), "te other than trailers is removed");
        // A Content-Length beside a transfer coding goes with it.
        let mut headers = HeaderMap::new();
        headers.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(CONTENT_LENGTH, "5".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty(), "{headers:?}");
        // An upgrade with no hop-by-hop header still says `Connection: upgrade`.
        let mut headers = HeaderMap::new();
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn te_goes_on_as_trailers_when_it_lists_trailers() {
        for (lines, want) in [
            (&["trailers"][..], Some("trailers")),
            (&["deflate, trailers"], Some("trailers")),
            (&[" Trailers , gzip"], Some("trailers")),
            (&["gzip", "trailers"], Some("trailers")),
            (&["deflate;q=0.5"], None),
            // `trailers` takes no weight (RFC 9110 §10.1.4).
            (&["trailers;q=0.5"], None),
            (&[""], None),
        ] {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(TE, line.parse().unwrap());
            }
            strip_hop_by_hop(&mut headers, false);
            let got: Vec<_> = headers.get_all(TE).iter().collect();
            match want {
                Some(want) => assert_eq!(got, [want], "{lines:?}"),
                None => assert!(got.is_empty(), "{lines:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn appends_forwarded_for() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut headers, "10.0.0.2".parse().unwrap());
        assert_eq!(headers.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1,10.0.0.2");
        headers.append(X_FORWARDED_FOR, "10.0.0.3".parse().unwrap());
        append_forwarded_for(&mut headers, "10.0.0.4".parse().unwrap());
        let lines: Vec<_> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(lines, ["10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4"]);
    }
}
