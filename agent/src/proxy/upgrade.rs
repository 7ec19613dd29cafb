//! Protocol upgrades: WebSocket, the one Istio enables, goes upstream with
//! its `Upgrade` header over HTTP/1.1 — or, to an application whose port
//! speaks HTTP/2, as an RFC 8441 extended CONNECT, as Envoy sends it — and
//! once the upstream answers 101 (200 to the CONNECT) the two connections
//! are spliced byte for byte, under the stream idle timeout; an h2c offer
//! is dropped and any other upgrade refused, as Envoy does.

use std::cell::Cell;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::Received;
use super::headers::list_members;
use super::local_reply::LocalReply;
use super::shared_h2::Counted;
use super::tcp::{PipeBroke, pipe};

/// The connection slot of an upgrade's upstream connection
/// (`connectionPool.tcp.maxConnections`), carried in the upstream
/// response's extensions to the splice: hyper's connection task ends at the
/// upgrade, handing the socket on, and the connection counts until the
/// upgraded stream ends, as Envoy counts it (the connection task holds the
/// other share, for an answer that upgrades nothing).
#[derive(Clone)]
pub struct UpgradeSlot {
    /// Held, for its drop.
    _slot: std::sync::Arc<crate::model::live::Slot>,
}

impl UpgradeSlot {
    /// Shares `slot` between the connection's task and the splice.
    pub fn new(slot: crate::model::live::Slot) -> Self {
        Self {
            _slot: std::sync::Arc::new(slot),
        }
    }
}

/// The key a WebSocket client sends with its upgrade (RFC 6455 §11.3.1).
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");

/// The server's proof that it read the key (RFC 6455 §11.3.3).
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// The GUID RFC 6455 §1.3 appends to the key before hashing it.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Turns a WebSocket upgrade's HTTP/1.1 head into an RFC 8441 extended
/// CONNECT for an HTTP/2 upstream, as Envoy's
/// `Http::Utility::transformUpgradeRequestFromH1toH2` does: method
/// `CONNECT` with `:protocol` `websocket`, `Upgrade` and `Connection` (and
/// a `Content-Length` of 0) dropped, the target in HTTP/2's form. Returns
/// the client's `Sec-WebSocket-Key`, which the answer is proved with
/// ([`upgrade_answer`]); `Err` when the head names no authority.
pub(super) fn to_extended_connect(
    parts: &mut http::request::Parts,
) -> Result<Option<HeaderValue>, LocalReply> {
    super::headers::set_target(parts, true)?;
    parts.method = Method::CONNECT;
    parts.headers.remove(UPGRADE);
    parts.headers.remove(CONNECTION);
    if parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v == "0")
    {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    Ok(parts.headers.get(SEC_WEBSOCKET_KEY).cloned())
}

/// The `:protocol` of an extended CONNECT made of a WebSocket upgrade.
pub(super) fn websocket_protocol() -> hyper::ext::Protocol {
    hyper::ext::Protocol::from_static("websocket")
}

/// An extended CONNECT's answer as the HTTP/1.1 client's upgrade wants it:
/// a 200 is its `101 Switching Protocols` with `Upgrade: websocket` and
/// `Connection: upgrade`, as Envoy's
/// `Http::Utility::transformUpgradeResponseFromH2toH1` makes it, and with
/// the `Sec-WebSocket-Accept` RFC 6455 §4.2.2 derives from the client's
/// `key` when the application sent none (over HTTP/2 it sends none, RFC
/// 8441 §5): its 200 accepted the WebSocket, and a client fails a handshake
/// without the header (RFC 6455 §4.1), as every client does behind Envoy.
/// Any other answer refuses the upgrade and goes back as it is. Returns
/// whether the answer accepted the upgrade.
pub(super) fn upgrade_answer<B>(response: &mut Response<B>, key: Option<&HeaderValue>) -> bool {
    if response.status() != StatusCode::OK {
        return false;
    }
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.version_mut() = Version::HTTP_11;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(key) = key
        && !headers.contains_key(SEC_WEBSOCKET_ACCEPT)
    {
        headers.insert(SEC_WEBSOCKET_ACCEPT, websocket_accept(key.as_bytes()));
    }
    true
}

/// RFC 6455 §4.2.2's `Sec-WebSocket-Accept` for `key`: the base64 of the
/// SHA-1 of the key followed by [`WEBSOCKET_GUID`].
fn websocket_accept(key: &[u8]) -> HeaderValue {
    use base64::Engine;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    digest.update(key);
    digest.update(WEBSOCKET_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest.finish());
    HeaderValue::from_str(&encoded).expect("base64 is a valid header value")
}

/// RFC 7540 §3.2's settings of an h2c upgrade offer.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Decides an upgrade request before anything else reads it, as Envoy does:
/// an h2c offer (RFC 7540 §3.2) is dropped and the request goes on as plain
/// HTTP/1.1 (its `Upgrade` and `HTTP2-Settings` removed; `Connection` goes
/// with the hop-by-hop headers), as Envoy's HTTP/1 codec drops it; an
/// upgrade to anything but WebSocket, the one upgrade Istio enables
/// (`upgrade_configs`), is refused with [`LocalReply::UPGRADE_FAILED`].
/// The `Upgrade` value is compared whole, ignoring case; one that offers
/// more than one protocol, on one line or several, is refused.
pub fn admit(version: Version, headers: &mut HeaderMap) -> Result<(), LocalReply> {
    if !asks_upgrade(version, headers) {
        return Ok(());
    }
    // Lines are one list (RFC 9110 §5.3): two lines offer two protocols.
    let h2c_offer = {
        let mut offered = list_members(headers, UPGRADE);
        match (offered.next(), offered.next()) {
            (Some(only), None) if only.eq_ignore_ascii_case(b"websocket") => false,
            (Some(only), None) if only.eq_ignore_ascii_case(b"h2c") => true,
            _ => return Err(LocalReply::UPGRADE_FAILED),
        }
    };
    if h2c_offer {
        headers.remove(UPGRADE);
        headers.remove(HTTP2_SETTINGS);
    }
    Ok(())
}

/// Takes the downstream side of an upgrade, if the request asks for one
/// (after [`admit`], a WebSocket upgrade).
pub fn take<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    asks_upgrade(req.version(), req.headers()).then(|| hyper::upgrade::on(req))
}

/// An HTTP/1.1 request with an `Upgrade` that its `Connection` names.
fn asks_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && crate::header_scan::holds(headers, &UPGRADE)
        && list_members(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// Which side of an upgraded stream ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The downstream closed or broke its side first, or went away before
    /// its side of the upgrade was ready (Envoy's DC).
    Downstream,
    /// The upstream closed or broke its side first (Envoy's UC).
    Upstream,
    /// Nothing passed either way for the stream idle timeout (Envoy's SI).
    Idle,
}

/// How an upgraded stream ended: what passed each way after the `101`, in
/// bytes, as Envoy counts an upgraded stream's `BYTES_RECEIVED` and
/// `BYTES_SENT`, and which side ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Bytes read from the downstream.
    pub received: u64,
    /// Bytes read from the upstream, to the downstream.
    pub sent: u64,
    /// What ended it.
    pub by: EndedBy,
}

/// An upgrade both of whose sides answered: the downstream's, waiting for
/// the `101` to be written to it, and the upstream's `101` response.
pub struct Splice {
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    slot: Option<UpgradeSlot>,
    /// An extended CONNECT's stream, counted on its HTTP/2 connection
    /// while it carries the upgrade: the pool gives the connection no
    /// stream the server would not take (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    stream: Option<Counted>,
    idle: Option<Duration>,
    /// The downstream connection counts as open while spliced (its HTTP
    /// task has ended), so a drain waits for it as for any connection.
    open: super::drain::Open,
}

impl Splice {
    /// Takes the upgraded sides of `downstream` and of the upstream's
    /// `101` response (and the count of an extended CONNECT's stream, which
    /// the splice holds); `idle` is `spec.downstream.streamIdleTimeout`
    /// (`None`: never).
    pub(super) fn new(
        downstream: OnUpgrade,
        upstream_response: &mut Response<Received>,
        idle: Option<Duration>,
        open: super::drain::Open,
    ) -> Self {
        Self {
            slot: upstream_response.extensions_mut().remove::<UpgradeSlot>(),
            stream: upstream_response.body_mut().take_stream(),
            upstream: hyper::upgrade::on(upstream_response),
            downstream,
            idle,
            open,
        }
    }

    /// Splices the two upgraded connections once both are ready, and closes
    /// both once nothing has passed either way for the idle timeout, as
    /// Envoy's `stream_idle_timeout` ends an upgraded stream: after the 101
    /// a WebSocket is still the request's stream, and one whose peers have
    /// both gone quiet (a client that vanished without a FIN, a NAT that
    /// dropped the flow) would otherwise hold two connections for good.
    /// `ended` hears how it ended, once, just before both connections are
    /// closed.
    pub fn start(self, ended: impl FnOnce(Ended) + 'static) {
        tokio::task::spawn_local(self.run(ended));
    }

    async fn run(self, ended: impl FnOnce(Ended)) {
        let Self {
            downstream,
            upstream,
            slot,
            stream,
            idle,
            open,
        } = self;
        // The upstream connection (or HTTP/2 stream) counts until the
        // splice ends, and so does the downstream one among the open
        // connections.
        let _held = (slot, stream, open);
        let failed = |error: hyper::Error, by| {
            tracing::debug!(%error, "upgrade failed");
            Ended {
                received: 0,
                sent: 0,
                by,
            }
        };
        // The downstream's side fails when its connection went before the
        // 101 was written to it; the upstream's, when its connection broke.
        let (down, up) = match tokio::join!(downstream, upstream) {
            (Ok(down), Ok(up)) => (down, up),
            (Err(error), _) => return ended(failed(error, EndedBy::Downstream)),
            (_, Err(error)) => return ended(failed(error, EndedBy::Upstream)),
        };
        let last = Cell::new(Instant::now());
        let (mut received, mut sent) = (0, 0);
        let (mut down_read, mut down_write) = tokio::io::split(TokioIo::new(down));
        let (mut up_read, mut up_write) = tokio::io::split(TokioIo::new(up));
        // Each way until its side's end, which is passed on (a FIN); the
        // first side to end ends the stream, as in Envoy, whose upgraded
        // HTTP/1.1 stream ends at either side's end: the other side's
        // connection is closed then, not left half open.
        let by = tokio::select! {
            passed = pipe((&mut down_read, &mut up_write), None, &mut received, &last) => {
                ended_by(passed, EndedBy::Downstream, EndedBy::Upstream)
            }
            passed = pipe((&mut up_read, &mut down_write), None, &mut sent, &last) => {
                ended_by(passed, EndedBy::Upstream, EndedBy::Downstream)
            }
            () = super::tcp::idle(&last, idle) => {
                let idle = idle.unwrap_or_default();
                tracing::debug!(?idle, "upgraded connection idle for the stream idle timeout: closed");
                EndedBy::Idle
            }
        };
        ended(Ended { received, sent, by });
        // Both connections close here, once the stream is recorded, as
        // the halves are dropped.
        drop((down_read, down_write, up_read, up_write));
    }
}

/// The side that ended an upgraded stream, by how its first way to end
/// ended: `source`'s end or failure to read, or `destination`'s failure to
/// take what was passed on.
fn ended_by(passed: Result<(), PipeBroke>, source: EndedBy, destination: EndedBy) -> EndedBy {
    let (side, error) = match passed {
        Ok(()) => return source,
        Err(PipeBroke::Reading(error)) => (source, error),
        Err(PipeBroke::Writing(error)) => (destination, error),
    };
    tracing::debug!(%error, ?side, "upgraded connection closed with an error");
    side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        let accept = websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn websocket_is_admitted_whatever_its_case() {
        for protocol in ["websocket", "WebSocket", " websocket "] {
            let mut h = headers(&[("upgrade", protocol), ("connection", "keep-alive, Upgrade")]);
            assert!(admit(Version::HTTP_11, &mut h).is_ok(), "{protocol}");
            assert_eq!(h.get(UPGRADE).unwrap(), protocol);
            assert!(asks_upgrade(Version::HTTP_11, &h));
        }
    }

    #[test]
    fn an_h2c_offer_is_dropped_and_the_request_goes_on() {
        let mut h = headers(&[
            ("upgrade", "H2C"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-app", "kept"),
        ]);
        assert!(admit(Version::HTTP_11, &mut h).is_ok());
        assert!(h.get(UPGRADE).is_none());
        assert!(h.get(HTTP2_SETTINGS).is_none());
        assert_eq!(h.get("x-app").unwrap(), "kept");
        assert!(!asks_upgrade(Version::HTTP_11, &h));
    }

    #[test]
    fn other_upgrades_are_refused() {
        for lines in [
            &["foo"][..],
            &["websocket, foo"],
            &["h2c, websocket"],
            &[""],
            &["websocket", "h2c"],
            &["h2c", "foo"],
            &["websocket", "websocket"],
        ] {
            let mut all = vec![("connection", "upgrade")];
            all.extend(lines.iter().map(|line| ("upgrade", *line)));
            let mut h = headers(&all);
            let refused = admit(Version::HTTP_11, &mut h).expect_err(&format!("{lines:?}"));
            assert_eq!(refused.details, "upgrade_failed");
            assert_eq!(refused.status, http::StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn an_upgrade_header_that_connection_does_not_name_is_no_upgrade() {
        // It is a hop-by-hop header, removed on the way (headers.rs).
        for (version, lines) in [
            (Version::HTTP_11, &[("upgrade", "foo")][..]),
            (
                Version::HTTP_10,
                &[("upgrade", "foo"), ("connection", "upgrade")],
            ),
        ] {
            let mut h = headers(lines);
            assert!(admit(version, &mut h).is_ok(), "{version:?} {lines:?}");
            assert_eq!(h.len(), lines.len());
        }
    }
}
