//! Inbound access control and rate limiting: who may call this workload
//! (RequestAuthentication, CUSTOM, DENY, ALLOW, AUDIT), and how often. Both
//! answer before any routing or upstream work.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Request};

use super::Downstream;
use super::attempts::HeldBody;
use super::local_reply::LocalReply;
use super::progress::{BodyFailure, RequestProgress};
use super::tap::Tap;
use crate::ext_authz::{BodySettings, CheckRequest};
use crate::host::request_authority;
use crate::model::Snapshot;
use crate::model::access::{AccessOutcome, Allowed, BodyAhead, Denied, RequestBody, with_item};
use crate::model::authn::AuthnRequest;
use crate::model::authz::AuthzInput;
use crate::model::rate_limit::{KeyKind, whole_seconds};
use crate::telemetry::record::Details;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The original client's address (what `remoteIpBlocks` and `remoteIp`
/// rate-limit keys read), by Envoy's `x-forwarded-for` rules with
/// `xff_num_trusted_hops` = `trusted_hops`:
///
/// - `use_remote_address` (a gateway, as Istio renders its listeners): the
///   caller itself for 0 hops, else the address `trusted_hops` entries from
///   the right of `x-forwarded-for`;
/// - not (a sidecar's inbound, as Istio renders it): the address
///   `trusted_hops + 1` entries from the right, so the last one by default
///   — the client a gateway in front appended — else the caller.
///
/// The caller too when the header has too few entries or the entry is no
/// IP address. Entries are read right to left over every header line,
/// empty ones skipped.
pub fn remote_ip(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted_hops: u32,
    use_remote_address: bool,
) -> IpAddr {
    let from_right = match (use_remote_address, trusted_hops) {
        (true, 0) => return peer,
        (true, hops) => hops - 1,
        (false, hops) => hops,
    };
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .map(str::trim)
        // Envoy splits the joined header dropping empty entries
        // (`getLastAddressFromXFF`): an empty line or `a,,b` adds none.
        .filter(|e| !e.is_empty())
        .nth(from_right as usize)
        .and_then(|e| e.parse().ok())
        .unwrap_or(peer)
}

/// Decides one inbound request, in Istio's order: RequestAuthentication
/// (a bad token is 401), CUSTOM (the external authorizer, asked only when a
/// CUSTOM policy matches, with `body` read ahead first when its provider
/// includes the body), DENY, ALLOW; AUDIT is recorded. The future awaits
/// only when it asks an external authorizer, or when a token's key set has
/// not been fetched yet ([`crate::model::jwks::JwksStore::first_fetch`]).
pub async fn check<B>(
    snapshot: &Snapshot,
    down: &Downstream,
    req: &Request<B>,
    remote_ip: IpAddr,
    body: &mut impl RequestBody,
) -> AccessOutcome {
    let authority = request_authority(req).unwrap_or("");
    let identity = down.tls.as_ref().and_then(|t| t.identity.as_ref());
    let principal = identity.map(|id| id.principal());
    let uri = req.uri();
    let input = AuthzInput {
        source_ip: down.peer.ip(),
        remote_ip,
        destination_ip: down.local.ip(),
        destination_port: down.app_port(snapshot),
        principal: principal.as_deref(),
        namespace: identity.map(|id| id.namespace.as_str()),
        sni: down.tls.as_ref().and_then(|t| t.sni.as_deref()),
        method: req.method().as_str(),
        path: uri.path(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        scheme: if down.tls.is_some() { "https" } else { "http" },
        authority,
        headers: req.headers(),
    };
    let authn = AuthnRequest {
        headers: req.headers(),
        query: uri.query(),
        // Envoy's realm names the host as the client sent it, port included.
        host: authority,
        path: uri.path(),
    };
    let destination = SocketAddr::new(down.local.ip(), input.destination_port);
    let check = CheckRequest {
        method: input.method,
        scheme: input.scheme,
        host: authority,
        path_and_query: input.path_and_query,
        headers: req.headers(),
        body: None,
        body_partial: false,
        body_len: req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        protocol: protocol_name(req.version()),
        source: down.peer,
        destination,
        source_principal: down.tls.as_ref().and_then(|t| t.principal.as_deref()),
        destination_principal: &snapshot.identity.principal,
        sni: input.sni,
    };
    snapshot.access.check(&authn, &input, &check, body).await
}

/// [`check`] for a workload without CUSTOM policies: nothing awaits, so it
/// runs to completion here, without a future kept across the request's
/// awaits; `None` when a CUSTOM policy applies, or a token waits for its
/// key set's first fetch, and the caller must await [`check`].
pub fn check_now<B>(
    snapshot: &Snapshot,
    down: &Downstream,
    req: &Request<B>,
    remote_ip: IpAddr,
) -> Option<AccessOutcome> {
    if !snapshot.access.authz.custom.is_empty() {
        return None;
    }
    check(snapshot, down, req, remote_ip, &mut ()).now_or_never()
}

/// The client's body as a CUSTOM policy's provider may read it ahead
/// (`includeRequestBodyInCheck`), as Envoy's ext_authz filter buffers it:
/// without `allowPartialMessage`, the whole body up to `maxRequestBytes`
/// (longer: 413); with it, until `maxRequestBytes` have come (or the body
/// ended), the check getting the first `maxRequestBytes`. What is read stays
/// in the tap the attempts send from, so the upstream gets the body whole.
/// `None` only while a read is under way.
impl RequestBody for Option<HeldBody> {
    async fn read_ahead(&mut self, settings: BodySettings) -> Result<BodyAhead, Denied> {
        let tap = match self.take() {
            Some(HeldBody::Arrived(body)) if http_body::Body::is_end_stream(&body) => {
                *self = Some(HeldBody::Arrived(body));
                return Ok(BodyAhead::default());
            }
            Some(HeldBody::Arrived(body)) => Tap::new(body, Rc::new(RequestProgress::default())),
            Some(HeldBody::ReadAhead(tap)) => tap,
            None => return Err(refusal(LocalReply::CONNECTION_TERMINATION)),
        };
        *self = Some(HeldBody::ReadAhead(tap.clone()));
        let max = settings.max_request_bytes;
        let partial_ok = settings.allow_partial_message;
        let enough = |kept: usize| if partial_ok { kept >= max } else { kept > max };
        match tap.read_ahead(max, enough).await {
            Ok((_, kept)) if kept > max && !partial_ok => {
                Err(refusal(LocalReply::PAYLOAD_TOO_LARGE))
            }
            Ok((bytes, kept)) => Ok(BodyAhead {
                bytes,
                partial: kept > max,
            }),
            Err(error) => Err(refusal(BodyFailure::of(&error).local_reply())),
        }
    }
}

/// A local reply as access control's answer.
fn refusal(reply: LocalReply) -> Denied {
    Denied {
        status: reply.status,
        headers: Vec::new(),
        body: bytes::Bytes::from_static(reply.body.as_bytes()),
        flag: reply.flags,
        details: reply.details.to_owned(),
        source: None,
        dry_run: None,
    }
}

fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Applies an allowed request's header edits to the request going
/// upstream: authentication's first (token removal, claim headers), then
/// the external authorizer's (`headersToUpstreamOnAllow`), as Envoy's
/// filter chain orders them.
pub fn apply_allow_edits<B>(allowed: &Allowed, req: &mut Request<B>) {
    let authn = &allowed.authn_edits;
    if !authn.remove_params.is_empty() {
        remove_query_params(req.uri_mut(), &authn.remove_params);
    }
    let headers = req.headers_mut();
    for name in &authn.remove {
        headers.remove(name);
    }
    for (name, value) in &authn.set {
        headers.insert(name.clone(), value.clone());
    }
    let ext = &allowed.ext_authz_edits;
    for name in &ext.upstream_remove {
        headers.remove(name);
    }
    for (name, value) in &ext.upstream_set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &ext.upstream_append {
        headers.append(name.clone(), value.clone());
    }
}

/// Removes every `name=…` pair of `names` from the query, the other pairs
/// kept as sent and the `?` dropped with the last one, as Envoy's jwt_authn
/// takes a token out of a query parameter.
fn remove_query_params(uri: &mut http::Uri, names: &[String]) {
    let Some(query) = uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !names.iter().any(|n| n == name)
        })
        .collect();
    let path = uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let Ok(target) = http::uri::PathAndQuery::try_from(target) else {
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(target);
    if let Ok(new) = http::Uri::from_parts(parts) {
        *uri = new;
    }
}

/// The rate-limit headers of a response, from the most constraining rule.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitStatus {
    limit: u32,
    remaining: u32,
    reset_ms: u64,
}

impl RateLimitStatus {
    /// `x-ratelimit-*` headers, plus `retry-after` when limited.
    pub fn headers(&self, limited: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from(whole_seconds(self.reset_ms)),
        );
        if limited {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(whole_seconds(self.reset_ms)),
            );
        }
        headers
    }
}

/// A request a rate limit turned away.
#[derive(Debug, Clone, Copy)]
pub struct Limited<'s> {
    /// The headers it gets.
    pub status: RateLimitStatus,
    /// The first rule whose bucket was empty: `<namespace>/<policy>[<rule
    /// name, else its index>]`.
    pub rule: &'s str,
}

impl Limited<'_> {
    /// Envoy's `local_rate_limited`, naming the rule:
    /// `local_rate_limited{RateLimitPolicy:<namespace>/<policy>[<rule>]}`.
    pub fn details(&self) -> Details {
        let item = format!("RateLimitPolicy:{}", self.rule);
        with_item(LocalReply::RATE_LIMITED.details, &item).into()
    }
}

/// Takes a token from every rule that counts the request. `Err` when a
/// bucket is empty; `Ok(None)` when no rule applies.
pub fn rate_limit<'s, B>(
    snapshot: &'s Snapshot,
    req: &Request<B>,
    peer: IpAddr,
    remote: IpAddr,
) -> Result<Option<RateLimitStatus>, Limited<'s>> {
    let (method, path) = (req.method().as_str(), req.uri().path());
    let mut tightest: Option<RateLimitStatus> = None;
    let mut limited = false;
    let mut empty_rule: &str = "";
    for limiter in snapshot
        .rate_limits
        .iter()
        .filter(|l| l.applies(method, path))
    {
        let ip_key = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let ip_bytes: [u8; 16];
        let key: &[u8] = match &limiter.key {
            KeyKind::Global => &[][..],
            KeyKind::SourceIp => {
                ip_bytes = ip_key(peer);
                &ip_bytes[..]
            }
            KeyKind::RemoteIp => {
                ip_bytes = ip_key(remote);
                &ip_bytes[..]
            }
            KeyKind::Header(name) => req
                .headers()
                .get(name)
                .map_or(&[][..], HeaderValue::as_bytes),
            KeyKind::Path => path.as_bytes(),
        };
        let verdict = limiter.take(key);
        let status = RateLimitStatus {
            limit: limiter.bucket.max_tokens,
            remaining: verdict.remaining,
            reset_ms: verdict.reset_ms,
        };
        let replace = match (&tightest, verdict.allowed, limited) {
            (None, _, _) => true,
            (Some(_), false, false) => true,
            (Some(t), true, false) => status.remaining < t.remaining,
            (Some(_), _, true) => false,
        };
        if !verdict.allowed && !limited {
            empty_rule = &limiter.name;
        }
        limited |= !verdict.allowed;
        if replace {
            tightest = Some(status);
        }
    }
    match tightest {
        Some(status) if limited => Err(Limited {
            status,
            rule: empty_rule,
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_ip_counts_trusted_hops_from_the_right() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, "203.0.113.7, 10.0.0.1".parse().unwrap());
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A gateway (use_remote_address): the caller unless hops are trusted.
        assert_eq!(remote_ip(&headers, peer, 0, true), peer);
        assert_eq!(remote_ip(&headers, peer, 1, true), ip("10.0.0.1"));
        // An empty line or entry adds no hop, as Envoy splits the header.
        let mut padded = headers.clone();
        padded.append(X_FORWARDED_FOR, "".parse().unwrap());
        padded.append(X_FORWARDED_FOR, " , ".parse().unwrap());
        assert_eq!(remote_ip(&padded, peer, 0, false), ip("10.0.0.1"));
        assert_eq!(remote_ip(&padded, peer, 1, false), ip("203.0.113.7"));
        assert_eq!(remote_ip(&headers, peer, 2, true), ip("203.0.113.7"));
        assert_eq!(remote_ip(&headers, peer, 5, true), peer);
        // A sidecar's inbound: the last entry by default, one more per hop.
        assert_eq!(remote_ip(&headers, peer, 0, false), ip("10.0.0.1"));
        assert_eq!(remote_ip(&headers, peer, 1, false), ip("203.0.113.7"));
        assert_eq!(remote_ip(&headers, peer, 2, false), peer);
        assert_eq!(remote_ip(&HeaderMap::new(), peer, 0, false), peer);
        // Lines are read right to left too.
        headers.append(X_FORWARDED_FOR, "198.51.100.9".parse().unwrap());
        assert_eq!(remote_ip(&headers, peer, 0, false), ip("198.51.100.9"));
        assert_eq!(remote_ip(&headers, peer, 1, false), ip("10.0.0.1"));
        headers.insert(X_FORWARDED_FOR, "not-an-address".parse().unwrap());
        assert_eq!(remote_ip(&headers, peer, 0, false), peer);
    }
}
