//! The agent's own HTTP/1.1 client, for upstream requests that offer no
//! upgrade: the request's task writes the head and body to the pooled
//! connection itself, reads the response head, and hands the connection to
//! the response body, which reads straight from the socket and gives the
//! connection back to its pool ([`Reuse`]) when the response ends cleanly.
//!
//! hyper's client runs each connection as a task of its own, reached
//! through channels: every request crossed to it and its answer and body
//! crossed back, at several polls of that task (bench README, "An HTTP/1.1
//! client of the agent's own"). Upgrades (a 101 hands the connection to
//! the splice) and HTTP/2 stay on hyper.
//!
//! Framing follows RFC 9112 as hyper's client does (§6.3 for responses):
//! a HEAD, 1xx, 204 or 304 has no body, `Transfer-Encoding` ending in
//! `chunked` is chunked, one `Content-Length` (or equal repeats) sizes the
//! body, anything else reads until close. Interim 1xx answers are skipped,
//! but for the `100 Continue` a request with `Expect: 100-continue` waits
//! for ([`CONTINUE_WAIT`]).
//! A request body is sized by its `Content-Length`, else by its known
//! length, else chunked, whatever the method (hyper's client sends a GET,
//! HEAD or CONNECT body of no declared length as none; Envoy sends it).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::UpstreamBody;
use super::headers::list_members;
use crate::model::live::Slot;
use crate::tls::io::UpstreamIo;

/// The most a response head (status line and header lines) or a chunked
/// body's trailers may take, in bytes: Envoy's default
/// `max_response_headers_kb` (80 KiB). More is the upstream's protocol
/// error (502 `UPE`).
pub const MAX_RESPONSE_HEAD: usize = 80 * 1024;

/// Most header lines in a response head or in trailers (hyper's default).
const MAX_HEADERS: usize = 100;

/// Room a response's header map keeps for a request's: hyper's server
/// parses the next request on the downstream connection into the map of
/// the response it wrote last (emptied, its capacity kept), and the agent
/// adds six headers to a request on its way out (`x-request-id`,
/// `x-forwarded-proto`, `traceparent`, the two peer-metadata headers,
/// `x-envoy-attempt-count`). A map sized to the response alone grew, and
/// was rehashed, on nearly every request.
const REQUEST_HEADROOM: usize = 6;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;

/// Longest chunk-size line (size and extensions), in bytes.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A request body at most this long goes out in the same write as its head.
const COALESCE: usize = 16 * 1024;

/// A chunk at most this long is copied into the write buffer with its
/// framing (one write); a longer one is written from its own bytes.
const SMALL_CHUNK: usize = 8 * 1024;

/// A write buffer grown past this is let go rather than kept with the
/// idle connection.
const KEPT_WRITE_BUFFER: usize = 32 * 1024;

/// How long a request sent with `Expect: 100-continue` waits for the
/// upstream's `100 Continue` (or its final answer) before its body is read
/// and sent anyway: the wait of curl's and Go's clients by default (RFC
/// 9110 §10.1.1: a client need not wait for the 100 indefinitely). Its
/// body is read from the client only then, because hyper's HTTP/1 server
/// answers the client `100 Continue` itself when the body is first read:
/// an upstream that refuses the request from its head alone (413, 401)
/// gets that answer to the client without a 100 first, as Envoy with
/// Istio's `proxy_100_continue` passes it on. A body not to be read from
/// the client (a retry's, already read; a mirror's) is never held.
pub const CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// An upstream HTTP/1.1 connection between requests: the socket, bytes
/// read past the last response, and the cluster's connection slot it
/// counts against (freed when it closes, that is, when it is dropped).
pub struct Connection {
    io: UpstreamIo,
    read: BytesMut,
    write: Vec<u8>,
    _slot: Option<Slot>,
}

impl Connection {
    /// A fresh connection over `io`, counting against `slot` while open.
    pub fn new(io: UpstreamIo, slot: Option<Slot>) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            _slot: slot,
        }
    }

    /// Whether the connection can carry another request: the peer has not
    /// closed it and sent nothing unasked. Looks without waiting; `waker`
    /// is woken if that changes (until the connection is read again).
    pub fn is_usable(&mut self, waker: &std::task::Waker) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(waker);
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let pending = Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending();
        // A byte the peer sent unasked stays, so the connection stays
        // unusable at every later look.
        self.read.extend_from_slice(buf.filled());
        pending
    }

    /// Reads what the socket has into the read buffer; 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        use std::future::Future as _;
        use tokio::io::AsyncReadExt as _;
        self.read.reserve(READ_SIZE);
        // `read_buf` keeps no state between polls: a fresh one each time.
        std::pin::pin!(self.io.read_buf(&mut self.read)).poll(cx)
    }
}

/// What takes a connection back once a response over it has ended cleanly
/// (the pool's lease).
pub trait Reuse {
    /// The response ended cleanly and the connection may carry another
    /// request.
    fn reuse(self, connection: Connection);
}

/// Why a request got no response.
pub enum SendFailure {
    /// Nothing was written: the connection was closed. The request's body
    /// comes back (its head stayed with the caller), to go out on another
    /// connection.
    Unsent(Box<UpstreamBody>),
    /// The connection closed or failed before a whole response head.
    Reset(io::Error),
    /// The response broke HTTP/1.1 (UPE), for this reason.
    Protocol(&'static str),
    /// The request body failed (the client's: its progress says how).
    Body,
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// This many bytes, no framing (0: no body).
    Length(u64),
    /// Chunked; trailers named by `Trailer` go after the last chunk.
    Chunked,
}

/// Sends the request head `parts` with `body` over `connection` and reads
/// the response head. The head is framed where it lies (`Content-Length`
/// or `Transfer-Encoding` set as the body needs) and written from there, so
/// the caller may send it again with the same body. The response's body
/// reads the rest and gives the connection to `reuse` if it ends cleanly,
/// the request was written whole, and both sides keep the connection alive.
///
/// An `async` block, not an `async fn`: an `async fn` keeps each argument
/// twice in its future (the argument and the body's binding of it), and
/// this future is moved into each caller's.
#[allow(clippy::manual_async_fn)] // an `async fn` doubles its arguments (above)
pub fn send<R: Reuse>(
    mut connection: Connection,
    parts: &mut http::request::Parts,
    body: UpstreamBody,
    reuse: R,
) -> impl Future<Output = Result<Response<Box<ResponseBody<R>>>, SendFailure>> {
    async move {
        let encoding = frame_request(parts, &body);
        let keep_alive = keeps_alive(parts.version, &parts.headers, ConnectionOptions::default());
        let head_request = parts.method == Method::HEAD;
        connection.write.clear();
        encode_head(parts, &mut connection.write);
        let mut out = Outgoing {
            encoding,
            sent: 0,
            written: 0,
            data: None,
            crlf_after: false,
            done: encoding == Encoding::Length(0) || body.is_end_stream(),
            short: false,
            held: false,
            trailers: Vec::new(),
            body,
        };
        if let (UpstreamBody::Full(Some(bytes)), Encoding::Length(len)) = (&out.body, encoding)
            && bytes.len() as u64 == len
            && bytes.len() <= COALESCE
        {
            connection.write.extend_from_slice(bytes);
            out.sent = len;
            out.done = true;
        }
        if !out.done && encoding == Encoding::Chunked {
            out.trailers = trailer_names(&parts.headers);
        }
        // The first write: a connection that refuses it took nothing.
        let first = std::future::poll_fn(|cx| {
            Pin::new(&mut connection.io).poll_write(cx, &connection.write)
        })
        .await;
        match first {
            Ok(n) if n > 0 => out.written = n,
            _ => {
                return Err(SendFailure::Unsent(Box::new(out.body)));
            }
        }
        // A request that expects `100 Continue` holds its body back until
        // the upstream asks for it, answers, or is waited for long enough
        // ([`CONTINUE_WAIT`]) — when the body would be read from the client
        // next: a body already read (a retry's replay) or the agent's own
        // (a mirror's) has no 100 to wait for, and goes at once, as Envoy
        // sends what it has.
        out.held = !out.done && out.body.reads_client_next() && expects_continue(&parts.headers);
        let mut wait = out
            .held
            .then(|| Box::pin(tokio::time::sleep(CONTINUE_WAIT)));
        let mut continued = false;
        // The body goes out while the answer is awaited: an upstream may
        // answer before it has read the whole request.
        let mut writing = Writing::Busy;
        let head = std::future::poll_fn(|cx| {
            loop {
                if let Writing::Busy = writing {
                    match out.poll_write(&mut connection, cx) {
                        Poll::Ready(Ok(())) => writing = Writing::Whole,
                        Poll::Ready(Err(WriteError::Body)) => {
                            return Poll::Ready(Err(SendFailure::Body));
                        }
                        Poll::Ready(Err(WriteError::Io(error))) => {
                            // The answer may still be there to read (an early
                            // response before the upstream closed).
                            tracing::debug!(%error, "writing the upstream request failed");
                            writing = Writing::Failed;
                        }
                        Poll::Pending => {}
                    }
                }
                let polled = poll_read_head(&mut connection, &mut continued, cx);
                if out.held
                    && polled.is_pending()
                    && (continued
                        || wait
                            .as_mut()
                            .is_some_and(|w| w.as_mut().poll(cx).is_ready()))
                {
                    out.held = false;
                    continue;
                }
                return polled;
            }
        })
        .await?;
        let Head {
            status,
            version,
            headers,
            options,
        } = head;
        let state = body_framing(status, version, head_request, &headers)?;
        let reusable =
            keep_alive && keeps_alive(version, &headers, options) && !matches!(state, State::Eof);
        // A `100 Continue` read with the final head still asked for the
        // body: it goes on while the answer streams. Answered before its
        // body was asked for, the body is never read (the client was sent
        // no 100 for it), and the upstream, which was told of a body,
        // cannot take another request on the connection.
        out.held &= !continued;
        let unread = out.held;
        let request_whole = matches!(writing, Writing::Whole) && !out.short && !unread;
        // Boxed: the response is moved whole several times on its way to the
        // client, and the body (the connection, its lease) is most of it.
        let mut response = Response::new(Box::new(ResponseBody {
            connection: Some(connection),
            state,
            reuse: reusable.then_some(reuse),
            // Still writing after the answer came: the body keeps writing it
            // (boxed: rare, and the body is moved whole).
            writer: (matches!(writing, Writing::Busy) && !unread).then(|| Box::new(out)),
            request_whole,
            failed: None,
        }));
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        response.body_mut().end_if_empty();
        Ok(response)
    }
}

/// Where writing the request stands when its answer's head has come.
enum Writing {
    Busy,
    Whole,
    Failed,
}

/// How the response body is framed (RFC 9112 §6.3, as hyper's client
/// reads it), as the state its reading starts in.
fn body_framing(
    status: StatusCode,
    version: Version,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<State, SendFailure> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(SendFailure::Protocol(
            "a switch of protocols the request did not offer",
        ));
    }
    if matches!(status.as_u16(), 204 | 304) || head_request {
        return Ok(State::Length(0));
    }
    if crate::header_scan::holds(headers, &TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(SendFailure::Protocol("transfer-encoding in HTTP/1.0"));
        }
        let last = list_members(headers, TRANSFER_ENCODING).last();
        return Ok(
            if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
                State::ChunkSize
            } else {
                State::Eof
            },
        );
    }
    match content_length(headers) {
        Ok(Some(len)) => Ok(State::Length(len)),
        Ok(None) => Ok(State::Eof),
        Err(()) => Err(SendFailure::Protocol("invalid content-length")),
    }
}

/// Every `Content-Length` value, lines and list members, when all agree.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() || member.len() > 19 || !member.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = member
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether a message of `version` with `headers` (and the `Connection`
/// `options` taken out of them) leaves its connection open: never with
/// `Connection: close`, whatever else it lists (RFC 9112 §9.6); otherwise
/// HTTP/1.1 always, HTTP/1.0 only with `Connection: keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap, options: ConnectionOptions) -> bool {
    let listed = |option: &[u8]| {
        crate::header_scan::holds(headers, &CONNECTION)
            && list_members(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case(option))
    };
    if options.close || listed(b"close") {
        return false;
    }
    version != Version::HTTP_10 || options.keep_alive || listed(b"keep-alive")
}

/// Frames the request body as hyper's client does, setting
/// `Content-Length` or `Transfer-Encoding` to say so, except that a body of
/// no declared length is never dropped for its method.
fn frame_request(parts: &mut http::request::Parts, body: &UpstreamBody) -> Encoding {
    let headers = &mut parts.headers;
    if body.is_end_stream() {
        headers.remove(TRANSFER_ENCODING);
        return Encoding::Length(0);
    }
    let known = body.size_hint().exact();
    let existing = content_length(headers).ok().flatten();
    if parts.version == Version::HTTP_10 {
        headers.remove(TRANSFER_ENCODING);
        return match (existing, known) {
            (Some(len), _) => Encoding::Length(len),
            (None, Some(len)) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                Encoding::Length(len)
            }
            (None, None) => Encoding::Length(0),
        };
    }
    if crate::header_scan::holds(headers, &TRANSFER_ENCODING) {
        let chunked_last = list_members(headers, TRANSFER_ENCODING)
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        if !chunked_last {
            headers.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        headers.remove(CONTENT_LENGTH);
        return Encoding::Chunked;
    }
    match (existing, known) {
        (Some(len), _) => Encoding::Length(len),
        (None, Some(len)) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            Encoding::Length(len)
        }
        // A body of no declared length goes chunked whatever the method:
        // the caller framed one (a chunked GET, an HTTP/2 GET with DATA),
        // and Envoy passes it on; hyper's client would send a GET, HEAD or
        // CONNECT without it, and the upstream would never see it.
        (None, None) => {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            headers.remove(CONTENT_LENGTH);
            Encoding::Chunked
        }
    }
}

/// The trailer fields a chunked request may carry: those its `Trailer`
/// header names (hyper's client sends no others).
fn trailer_names(headers: &HeaderMap) -> Vec<HeaderName> {
    list_members(headers, TRAILER)
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .filter(may_trail)
        .collect()
}

/// Whether a field may go out as a trailer: not one that frames, routes,
/// authenticates or describes the body (RFC 9110 §6.5.1), the fields
/// hyper's encoder drops from trailers (`is_valid_trailer_field`).
fn may_trail(name: &HeaderName) -> bool {
    use http::header::{
        AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, HOST,
        MAX_FORWARDS, SET_COOKIE, TE,
    };
    ![
        AUTHORIZATION,
        CACHE_CONTROL,
        CONTENT_ENCODING,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        CONTENT_TYPE,
        HOST,
        MAX_FORWARDS,
        SET_COOKIE,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
    ]
    .contains(name)
}

/// The request line and header lines, as hyper's client writes them.
fn encode_head(parts: &http::request::Parts, buf: &mut Vec<u8>) {
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    match parts.uri.scheme() {
        // Origin form, the usual one: no formatting machinery.
        None if parts.uri.authority().is_none() => {
            buf.extend_from_slice(
                parts
                    .uri
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str)
                    .as_bytes(),
            );
        }
        _ => {
            use std::io::Write as _;
            let _ = write!(buf, "{}", parts.uri);
        }
    }
    buf.extend_from_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &parts.headers {
        write_field(buf, name, value);
    }
    buf.extend_from_slice(b"\r\n");
}

/// One header (or trailer) line.
fn write_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// The request body on its way out after the head: the write buffer
/// (framing, small pieces) first, then a data frame written as it came.
struct Outgoing {
    body: UpstreamBody,
    encoding: Encoding,
    /// Body bytes taken from the body so far.
    sent: u64,
    /// Bytes of the write buffer already written.
    written: usize,
    /// A data frame to write after the write buffer.
    data: Option<Bytes>,
    /// A chunk's CRLF goes after `data`.
    crlf_after: bool,
    /// Nothing more is taken from the body.
    done: bool,
    /// The body ended short of its `Content-Length`: the upstream waits for
    /// bytes that will not come, so the connection cannot be reused.
    short: bool,
    /// Trailer fields the request may carry (chunked only).
    trailers: Vec<HeaderName>,
    /// The body waits for the upstream's `100 Continue` ([`CONTINUE_WAIT`]):
    /// only the head is written.
    held: bool,
}

enum WriteError {
    Io(io::Error),
    Body,
}

impl Outgoing {
    /// Writes what is buffered and flushes it (a TLS stream holds bytes
    /// until then), then frames the body's next frames, until the whole
    /// body is written (Ready) or must wait for the socket or the body.
    fn poll_write(
        &mut self,
        connection: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while self.written < connection.write.len() {
                let written =
                    Pin::new(&mut connection.io).poll_write(cx, &connection.write[self.written..]);
                let n = ready!(or_stalled(&mut self.body, written, cx))?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
            }
            connection.write.clear();
            self.written = 0;
            if let Some(data) = self.data.as_mut() {
                while !data.is_empty() {
                    let written = Pin::new(&mut connection.io).poll_write(cx, data);
                    let n = ready!(or_stalled(&mut self.body, written, cx))?;
                    if n == 0 {
                        return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                    }
                    data.advance(n);
                }
                self.data = None;
                if std::mem::take(&mut self.crlf_after) {
                    connection.write.extend_from_slice(b"\r\n");
                    if self.body.is_end_stream() {
                        self.frame_end(None, &mut connection.write);
                    }
                    continue;
                }
            }
            let flushed = Pin::new(&mut connection.io).poll_flush(cx);
            ready!(or_stalled(&mut self.body, flushed, cx))?;
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.held {
                // Polled again when the upstream's answer or the wait
                // lets the body go.
                return Poll::Pending;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.frame_data(data, &mut connection.write),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.frame_end(Some(&trailers), &mut connection.write);
                        }
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(%error, "request body failed on its way upstream");
                    return Poll::Ready(Err(WriteError::Body));
                }
                None => self.frame_end(None, &mut connection.write),
            }
            // The last chunk goes after a chunk still to be written (the
            // branch above), never into the buffer ahead of its data.
            if !self.done && self.data.is_none() && self.body.is_end_stream() {
                self.frame_end(None, &mut connection.write);
            }
        }
    }

    fn frame_data(&mut self, mut data: Bytes, buf: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        match self.encoding {
            Encoding::Length(len) => {
                // Past its length a body is cut there, as hyper's encoder
                // cuts it: the upstream reads the length it was told.
                let room = (len - self.sent).min(data.len() as u64) as usize;
                data.truncate(room);
                self.sent += room as u64;
                self.done = self.sent == len;
                self.data = (!data.is_empty()).then_some(data);
            }
            Encoding::Chunked => {
                use std::io::Write as _;
                let _ = write!(buf, "{:X}\r\n", data.len());
                self.sent += data.len() as u64;
                if data.len() <= SMALL_CHUNK {
                    buf.extend_from_slice(&data);
                    buf.extend_from_slice(b"\r\n");
                } else {
                    self.data = Some(data);
                    self.crlf_after = true;
                }
            }
        }
    }

    fn frame_end(&mut self, trailers: Option<&HeaderMap>, buf: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        match self.encoding {
            Encoding::Length(len) => self.short = self.sent < len,
            Encoding::Chunked => {
                buf.extend_from_slice(b"0\r\n");
                if let Some(trailers) = trailers {
                    for (name, value) in trailers {
                        if self.trailers.contains(name) {
                            write_field(buf, name, value);
                        }
                    }
                }
                buf.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// The fields, but for the `Connection` fields `options` took.
    headers: HeaderMap,
    options: ConnectionOptions,
}

/// What the response's `Connection` fields that hold one connection option
/// and nothing else (`keep-alive` or `close`, by far the most common ones)
/// said. These are read as the head is parsed and left out of its map:
/// they describe this connection only, every hop removes them (RFC 9110
/// §7.6.1), and kept, each response would pay for a name, a map entry and
/// two lookups for them.
#[derive(Clone, Copy, Default)]
struct ConnectionOptions {
    keep_alive: bool,
    close: bool,
}

impl ConnectionOptions {
    /// Takes `value`, a `Connection` field's, when it is one option alone.
    fn take(&mut self, value: &[u8]) -> bool {
        let value = value.trim_ascii();
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
        } else if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
        } else {
            return false;
        }
        true
    }
}

/// A write to the upstream, and while it must wait for the upstream to
/// read, the client's stream idle timer: nothing passes either way then
/// (the body is not read while it cannot be sent). The timer's expiry is
/// the body's failure ([`UpstreamBody::poll_stalled`]).
fn or_stalled<T>(
    body: &mut UpstreamBody,
    polled: Poll<io::Result<T>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, WriteError>> {
    match polled {
        Poll::Ready(result) => Poll::Ready(result.map_err(WriteError::Io)),
        Poll::Pending => body.poll_stalled(cx).map(|()| Err(WriteError::Body)),
    }
}

/// Whether a request asks for `100 Continue` before it sends its body
/// (`Expect: 100-continue`, RFC 9110 §10.1.1; the token ignores case).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads until a final (non-1xx) response head is whole; `continued` is
/// set once a `100 Continue` has been read.
fn poll_read_head(
    connection: &mut Connection,
    continued: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, SendFailure>> {
    loop {
        if !connection.read.is_empty() {
            match parse_head(&mut connection.read)? {
                Parsed::Final(head) => return Poll::Ready(Ok(head)),
                Parsed::Interim(status) => {
                    *continued |= status == StatusCode::CONTINUE;
                    continue;
                }
                Parsed::Partial if connection.read.len() > MAX_RESPONSE_HEAD => {
                    return Poll::Ready(Err(SendFailure::Protocol("response head too large")));
                }
                Parsed::Partial => {}
            }
        }
        match ready!(connection.poll_fill(cx)) {
            Ok(read) if read > 0 => {}
            // The end, or a reset (or a TLS peer's end without close_notify:
            // rustls's UnexpectedEof), within a head: the upstream broke the
            // protocol (Envoy's 502 UPE), not just the connection.
            _ if !connection.read.is_empty() => {
                return Poll::Ready(Err(SendFailure::Protocol(
                    "connection closed within a response head",
                )));
            }
            Ok(_) => {
                return Poll::Ready(Err(SendFailure::Reset(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a whole response head",
                ))));
            }
            Err(error) => return Poll::Ready(Err(SendFailure::Reset(error))),
        }
    }
}

enum Parsed {
    Final(Head),
    /// A 1xx other than 101 (its status), consumed.
    Interim(StatusCode),
    Partial,
}

fn parse_head(read: &mut BytesMut) -> Result<Parsed, SendFailure> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        read,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(SendFailure::Protocol("too many response headers"));
        }
        Err(_) => return Err(SendFailure::Protocol("malformed response head")),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(SendFailure::Protocol("response head too large"));
    }
    let code = response.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| SendFailure::Protocol("invalid status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        read.advance(len);
        return Ok(Parsed::Interim(status));
    }
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names now, values as offsets: they become slices of the frozen head.
    let base = read.as_ptr() as usize;
    let mut fields: SmallVec<[(HeaderName, usize, usize); 24]> = SmallVec::new();
    let mut options = ConnectionOptions::default();
    // (Sized as if every field were in it, as before the options were
    // taken out: the map is reused for the downstream connection's next
    // request, `REQUEST_HEADROOM`.)
    let capacity = response.headers.len() + REQUEST_HEADROOM;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") && options.take(h.value) {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| SendFailure::Protocol("invalid response header name"))?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start, start + h.value.len()));
    }
    let head = read.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(capacity);
    for (name, start, end) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| SendFailure::Protocol("invalid response header value"))?;
        headers.append(name, value);
    }
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        options,
    }))
}

/// Where a response body's reading stands.
enum State {
    /// This many bytes left.
    Length(u64),
    /// Until the upstream closes.
    Eof,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// This many bytes of the current chunk left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailers, or the empty line.
    Trailers,
    /// Whole (or failed).
    Done,
}

/// A response body read straight from its connection; the connection goes
/// to the [`Reuse`] when the body ends cleanly and may carry more.
/// Dropped before its end, it closes the connection.
///
/// Errors are I/O errors: `UnexpectedEof` for a body cut short of its
/// length or last chunk, `InvalidData` for a malformed chunk (both break
/// HTTP/1.1 framing), the socket's own otherwise.
pub struct ResponseBody<R: Reuse> {
    connection: Option<Connection>,
    state: State,
    reuse: Option<R>,
    /// The request, still being written.
    writer: Option<Box<Outgoing>>,
    /// The whole request was written and flushed, framed as announced.
    request_whole: bool,
    /// An error held back for one poll (see [`Body::poll_frame`]).
    failed: Option<io::Error>,
}

impl<R: Reuse> ResponseBody<R> {
    /// Whether the body holds back an error it returns at the next poll:
    /// a deadline seen in the meantime did not cut the body off, the
    /// upstream did.
    pub fn holds_error(&self) -> bool {
        self.failed.is_some()
    }

    fn end_if_empty(&mut self) {
        if matches!(self.state, State::Length(0)) {
            self.finish();
        }
    }

    /// The body is whole: the connection goes back if the request went out
    /// whole too, else it closes (the rest of a request still being written
    /// is not sent: the upstream answered without it).
    fn finish(&mut self) {
        self.state = State::Done;
        let connection = self.connection.take();
        self.writer = None;
        if let (Some(mut connection), Some(reuse)) = (connection, self.reuse.take())
            && self.request_whole
            && connection.read.is_empty()
        {
            if connection.write.capacity() > KEPT_WRITE_BUFFER {
                connection.write = Vec::new();
            }
            reuse.reuse(connection);
        }
    }

    /// Goes on writing a request the upstream answered before reading it
    /// whole. A failed write leaves the answer to read; a failed request
    /// body ends the response.
    fn poll_writer(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        let (Some(out), Some(connection)) = (self.writer.as_mut(), self.connection.as_mut()) else {
            return Ok(());
        };
        match out.poll_write(connection, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.request_whole = !out.short;
                self.writer = None;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Io(error))) => {
                tracing::debug!(%error, "writing the upstream request failed");
                self.writer = None;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Body)) => {
                Err(self.fail(io::ErrorKind::Other, "the request body failed"))
            }
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, why: &'static str) -> io::Error {
        self.state = State::Done;
        self.connection = None;
        self.writer = None;
        io::Error::new(kind, why)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if let Err(error) = self.poll_writer(cx) {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state.decode(&mut connection.read) {
                Decoded::Frame(frame) => {
                    if matches!(self.state, State::Done | State::Length(0)) {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Decoded::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decoded::Malformed(why) => {
                    return Poll::Ready(Some(Err(self.fail(io::ErrorKind::InvalidData, why))));
                }
                Decoded::NeedMore => {}
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) if matches!(self.state, State::Eof) => {
                    // Close-delimited: the close is the end; the connection
                    // was never to be reused.
                    self.state = State::Done;
                    self.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let error = self.fail(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed before the end of the body",
                    );
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(_) => {}
                Err(error) => {
                    self.state = State::Done;
                    self.connection = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

/// Reads a whole response from `bytes`, as the client reads what an
/// upstream sent before closing its connection: the status and the body's
/// length, or why the response was refused (a protocol error) or broke off.
/// No I/O; what the fuzz target drives.
pub fn read_whole(bytes: &[u8], head_request: bool) -> Result<(StatusCode, u64), &'static str> {
    let mut read = BytesMut::from(bytes);
    let head = loop {
        match parse_head(&mut read) {
            Ok(Parsed::Final(head)) => break head,
            Ok(Parsed::Interim(_)) => {}
            Ok(Parsed::Partial) => return Err("closed before a whole response head"),
            Err(SendFailure::Protocol(why)) => return Err(why),
            Err(_) => return Err("not a response"),
        }
    };
    let mut state = match body_framing(head.status, head.version, head_request, &head.headers) {
        Ok(state) => state,
        Err(SendFailure::Protocol(why)) => return Err(why),
        Err(_) => return Err("not a response"),
    };
    let mut length = 0;
    loop {
        match state.decode(&mut read) {
            Decoded::Frame(frame) => {
                length += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Decoded::End => return Ok((head.status, length)),
            Decoded::NeedMore if matches!(state, State::Eof) => return Ok((head.status, length)),
            Decoded::NeedMore => return Err("closed before the end of the body"),
            Decoded::Malformed(why) => return Err(why),
        }
    }
}

/// What the body decoder made of the bytes it had.
enum Decoded {
    /// A frame: data, or the trailers (the last frame).
    Frame(Frame<Bytes>),
    /// The body is whole.
    End,
    /// It needs more bytes (or, reading until close, the close).
    NeedMore,
    /// The body broke its framing, for this reason.
    Malformed(&'static str),
}

impl State {
    /// One step of a body's framing over the bytes read so far, taking
    /// what it uses from `read`. No I/O: the caller reads more on
    /// [`Decoded::NeedMore`].
    fn decode(&mut self, read: &mut BytesMut) -> Decoded {
        loop {
            match *self {
                State::Done => return Decoded::End,
                State::Length(0) => {
                    *self = State::Done;
                    return Decoded::End;
                }
                State::Length(left) if !read.is_empty() => {
                    let n = left.min(read.len() as u64);
                    *self = State::Length(left - n);
                    return Decoded::Frame(Frame::data(read.split_to(n as usize).freeze()));
                }
                State::Eof if !read.is_empty() => {
                    return Decoded::Frame(Frame::data(read.split().freeze()));
                }
                State::ChunkData(left) if !read.is_empty() => {
                    let n = left.min(read.len() as u64);
                    *self = if left == n {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - n)
                    };
                    return Decoded::Frame(Frame::data(read.split_to(n as usize).freeze()));
                }
                State::ChunkSize => {
                    let line = &read[..read.len().min(MAX_CHUNK_LINE + 1)];
                    let Some(end) = memchr::memchr(b'\n', line) else {
                        if read.len() > MAX_CHUNK_LINE {
                            return Decoded::Malformed("chunk size line too long");
                        }
                        return Decoded::NeedMore;
                    };
                    let size = chunk_size(&read[..end]);
                    read.advance(end + 1);
                    *self = match size {
                        Some(0) => State::Trailers,
                        Some(n) => State::ChunkData(n),
                        None => return Decoded::Malformed("malformed chunk size"),
                    };
                }
                State::ChunkEnd if read.len() >= 2 => {
                    if &read[..2] != b"\r\n" {
                        return Decoded::Malformed("chunk data overran its size");
                    }
                    read.advance(2);
                    *self = State::ChunkSize;
                }
                State::Trailers if read.len() >= 2 => {
                    if read.starts_with(b"\r\n") {
                        read.advance(2);
                        *self = State::Done;
                        return Decoded::End;
                    }
                    return match trailers(read) {
                        Ok(Some(fields)) => {
                            *self = State::Done;
                            Decoded::Frame(Frame::trailers(fields))
                        }
                        Ok(None) if read.len() <= MAX_RESPONSE_HEAD => Decoded::NeedMore,
                        Ok(None) | Err(()) => Decoded::Malformed("malformed trailers"),
                    };
                }
                _ => return Decoded::NeedMore,
            }
        }
    }
}

/// A chunk-size line's size (RFC 9112 §7.1: hex digits, then optional
/// spaces or tabs and extensions, ended by CRLF), `line` without its LF;
/// `None` if malformed (a bare CR anywhere, a size past 64 bits).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    if memchr::memchr(b'\r', line).is_some() {
        return None;
    }
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits == 0 || digits - zeros > 16 {
        return None;
    }
    let rest = &line[digits..];
    let after_spaces = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let rest = &rest[after_spaces..];
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some((n << 4) | u64::from(v))
    })
}

/// Trailer fields up to the empty line, consumed (`Ok(None)`: not whole yet).
fn trailers(read: &mut BytesMut) -> Result<Option<HeaderMap>, ()> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(read, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ())?;
        map.append(name, value);
    }
    read.advance(len);
    Ok(Some(map))
}

impl<R: Reuse + Unpin> Body for ResponseBody<R> {
    type Data = Bytes;
    type Error = io::Error;

    /// The next frame. An error is held back for one poll, the task woken
    /// at once: the server then writes out what it has (the head, the
    /// bytes before the break) before the error ends the response, as it
    /// did when the error came through hyper's channel a poll later and as
    /// Envoy passes on a body cut short.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match this.poll_body(cx) {
            Poll::Ready(Some(Err(error))) => {
                this.failed = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(left) => SizeHint::with_exact(left),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
