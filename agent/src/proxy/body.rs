//! Bodies that stream through the agent frame by frame (never buffered
//! whole), counting bytes and noticing the end so the request can be recorded
//! when the response is complete — as Istio's duration is.

use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::exchange::Exchange;
use super::tap::TapReader;

/// Errors of bodies passing through: the peer's, or the agent's own
/// (a route timeout mid-response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the client's request body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// It broke the protocol (a malformed chunk): the client's fault, a 400.
    Malformed,
    /// The client went away or reset the stream.
    Aborted,
}

impl BodyFailure {
    /// Classifies a downstream body error.
    pub fn of(error: &hyper::Error) -> Self {
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            // hyper's HTTP/1 body decoder says InvalidInput or InvalidData
            // for a malformed chunk, UnexpectedEof for a body cut short.
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                )
            {
                return Self::Malformed;
            }
            source = cause.source();
        }
        if error.is_parse() {
            Self::Malformed
        } else {
            Self::Aborted
        }
    }
}

/// Progress of a request body on its way upstream.
#[derive(Debug, Default)]
pub struct RequestProgress {
    bytes: Cell<u64>,
    done: Cell<bool>,
    failure: Cell<Option<BodyFailure>>,
}

impl RequestProgress {
    /// Body bytes forwarded so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Whether the whole body was forwarded.
    pub fn is_done(&self) -> bool {
        self.done.get()
    }

    /// Counts `n` more bytes.
    pub fn add(&self, n: u64) {
        self.bytes.set(self.bytes.get() + n);
    }

    /// Marks the body complete (or not).
    pub fn set_done(&self, done: bool) {
        self.done.set(done);
    }

    /// The client's body failed with `error`.
    pub fn fail(&self, error: &hyper::Error) {
        self.failure.set(Some(BodyFailure::of(error)));
    }

    /// How the client's body failed, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        self.failure.get()
    }
}

/// The downstream request body, forwarded once.
pub struct RequestBody {
    inner: Incoming,
    progress: Rc<RequestProgress>,
}

impl RequestBody {
    /// Wraps `inner`, reporting to `progress`.
    pub fn new(inner: Incoming, progress: Rc<RequestProgress>) -> Self {
        progress.set_done(inner.is_end_stream());
        Self { inner, progress }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress.add(data.len() as u64);
                }
                if this.inner.is_end_stream() {
                    this.progress.set_done(true);
                }
            }
            Poll::Ready(None) => this.progress.set_done(true),
            Poll::Ready(Some(Err(error))) => this.progress.fail(error),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What an upstream request carries: the client's body once, a replayable
/// view of it (retries), or bytes (mirrors).
pub enum UpstreamBody {
    /// Streamed once.
    Stream(RequestBody),
    /// Replayable.
    Replay(TapReader),
    /// Fixed bytes.
    Full(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Replay(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(body) => body.is_end_stream(),
            Self::Replay(body) => body.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(body) => body.size_hint(),
            Self::Replay(body) => body.size_hint(),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

enum Source {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The route timeout fired while the response was streaming.
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout")]
pub struct ResponseTimeout;

/// The body sent back downstream: the upstream's, or a local reply's.
/// It owns the exchange and completes it when the last frame has passed
/// (or records a downstream disconnect when dropped before that).
pub struct ResponseBody {
    source: Source,
    exchange: Option<Box<Exchange>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ResponseBody {
    /// Streams the upstream response body, cut off at `deadline` (the route timeout).
    pub fn upstream(
        body: Incoming,
        exchange: Box<Exchange>,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        let mut body = Self {
            source: Source::Upstream(body),
            exchange: Some(exchange),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        };
        body.complete_if_ended();
        body
    }

    /// A body generated by the agent.
    pub fn full(bytes: Bytes, exchange: Box<Exchange>) -> Self {
        let mut body = Self {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            exchange: Some(exchange),
            deadline: None,
        };
        body.complete_if_ended();
        body
    }

    fn complete_if_ended(&mut self) {
        if self.is_end_stream()
            && let Some(mut exchange) = self.exchange.take()
        {
            exchange.complete();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.source {
            Source::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if polled.is_pending()
            && let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            if let Some(mut exchange) = this.exchange.take() {
                exchange.on_timeout_mid_response();
                exchange.complete();
            }
            return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
        }
        if let Some(exchange) = this.exchange.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => exchange.on_response_frame(frame),
                Poll::Ready(Some(Err(_))) => exchange.on_upstream_reset(),
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        if (matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.is_end_stream())
            && let Some(mut exchange) = this.exchange.take()
        {
            exchange.complete();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(body) => body.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(body) => body.size_hint(),
            Source::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
