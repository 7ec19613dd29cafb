//! The HTTP/2 flow-control windows the agent grants its peers, downstream
//! (what a client may send ahead on a stream) and upstream (what a server
//! may send ahead on a response).
//!
//! hyper's h2 gives a stream's bytes back to both windows, the stream's and
//! the connection's, only as its body is read (or once the stream is reset
//! or dropped). A stream the agent cannot pass on (a client that stops
//! reading, an upstream that stops taking an upload) is not read, so
//! whatever it holds stays out of the connection's window. With stream and
//! connection windows the same size (as hyper's adaptive window sets
//! them), one such stream could hold all of it, and every other stream of
//! the connection (other clients' calls, on a shared upstream or mesh
//! connection) waited with it.
//!
//! So a connection's window is as large as HTTP/2 allows, and only its
//! streams' windows are bounds: a stream holds at most its window of unread
//! data, and streams that cannot move never hold up those that can. This is
//! how Apache's mod_http2 and Go's HTTP/2 transport set them (a large
//! connection window, flow control per stream).
//!
//! What a connection can hold unread is then its streams' windows: a
//! downstream connection at most [`MAX_CONCURRENT_STREAMS`] times
//! [`STREAM_WINDOW`] (256 MiB) of request bodies, and as much again of
//! responses on the upstream connections its requests use; an upstream
//! connection [`STREAM_WINDOW`] for each of the agent's requests on it.
//! Before, an upstream connection held at most hyper's adaptive window
//! (16 MiB), but one stream could take all of it. Across connections,
//! [`stalled`](super::stalled) caps how many streams whose readers take
//! nothing may hold theirs (`spec.overload.maxStalledStreams`).

/// The window each stream starts with, either way (what a client may send
/// of a request body, or an upstream of a response, ahead of the agent):
/// 256 KiB, 2 Gbit/s per stream over a 1 ms round trip.
/// `bench/agent/h2_window.sh` measures a stream's throughput through the
/// agent with it: on loopback, a 1 MiB window moved one stream no faster.
/// Kept small because a client that stops reading makes the agent hold it
/// for every stream it opens.
pub(super) const STREAM_WINDOW: u32 = 256 << 10;

/// A connection's window, each way: HTTP/2's largest (2^31 - 1 bytes, RFC
/// 9113 section 6.9.1), so that only stream windows bound what a
/// connection holds.
pub(super) const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// How many streams a downstream HTTP/2 connection may have open at once
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
pub(super) const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The largest header list (response headers and trailers, RFC 9113 §6.5.2
/// `SETTINGS_MAX_HEADER_LIST_SIZE`) the agent takes from an HTTP/2
/// upstream: Envoy's default `max_response_headers_kb`, 60 KiB, which
/// Istio leaves as it is. (hyper's 16 KiB default emptied an upstream's
/// trailers over it, where Envoy passes them on.) Past it, a response head
/// resets its stream (a local reply, `UPE`). Downstream requests are
/// bounded by [`MAX_REQUEST_HEADER_LIST`] and Envoy's count of their names
/// and values.
pub(super) const MAX_HEADER_LIST: u32 = 60 * 1024;

/// The header list a downstream HTTP/2 connection's `SETTINGS` allow:
/// [`MAX_HEADER_LIST`] counted as RFC 9113 §6.5.2 counts it, 32 bytes a
/// field on top of its name and value, for the most fields a request may
/// carry ([`MAX_HEADERS_COUNT`](super::canonical::MAX_HEADERS_COUNT)) and
/// one more. Envoy counts a request's names and values alone; the agent
/// does too, once the request is read
/// ([`canonical::received`](super::canonical::received)), so a list of
/// 61440 bytes of names and values is served and one byte more is 431, as
/// at Envoy. (At [`MAX_HEADER_LIST`] itself, a request of many fields was
/// refused short of Envoy's bound.)
pub(super) const MAX_REQUEST_HEADER_LIST: u32 =
    MAX_HEADER_LIST + 32 * (super::canonical::MAX_HEADERS_COUNT as u32 + 1);
