//! The client's request body as the agent reads it: hyper's body under
//! Envoy's `stream_idle_timeout` — a body waiting while nothing passes
//! either way for that long ends with [`ClientBodyError::StreamIdle`],
//! which the request path answers with 408 (or a reset once the response
//! has begun).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::stalled::{Cut, CutSignal, Stalls, WatchedError, WatchedStream};
use super::stream_idle::{IdleTimer, StreamClock};

/// Why the client's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// hyper's: the client broke the protocol or went away.
    #[error("request body: {0}")]
    Source(#[source] hyper::Error),
    /// Nothing passed either way for this long while the body was awaited
    /// (`spec.downstream.streamIdleTimeout`).
    #[error("request body: nothing passed for {0:?} (stream idle timeout)")]
    StreamIdle(Duration),
    /// The agent stopped reading it (HTTP/2): one of more stalled uploads,
    /// their upstreams taking nothing, than
    /// `spec.overload.maxStalledStreams` allows.
    #[error("request body: the agent stopped reading it (overload: too many stalled streams)")]
    Overload,
}

impl From<Cut> for ClientBodyError {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::StreamIdle(idle) => Self::StreamIdle(idle),
            Cut::Overload => Self::Overload,
        }
    }
}

impl From<WatchedError<hyper::Error>> for ClientBodyError {
    fn from(error: WatchedError<hyper::Error>) -> Self {
        match error {
            WatchedError::Source(error) => Self::Source(error),
            WatchedError::Cut(cut) => cut.into(),
        }
    }
}

/// hyper's body: an HTTP/1 one as it is, an HTTP/2 one watched by its
/// worker for a reader that stops taking it ([`stalled`](super::stalled)).
enum Source {
    Http1(Incoming),
    Http2(WatchedStream<Incoming>),
}

/// The client's body, timed out when it stalls.
pub struct ClientBody {
    inner: Source,
    /// Armed at the first read that has to wait, so time spent before the
    /// upstream asks for the body is not the client's; every frame, and
    /// every frame of the response, moves it on. `None`: no timeout.
    idle: Option<IdleTimer>,
}

impl ClientBody {
    /// Wraps `inner`, timed by its stream's `clock` (`None`: no stream idle
    /// timeout); an HTTP/2 stream's is watched by `stalls`, its worker's.
    pub fn new(
        inner: Incoming,
        clock: Option<Rc<StreamClock>>,
        stalls: Option<&Rc<Stalls>>,
    ) -> Self {
        let inner = match stalls {
            Some(stalls) => Source::Http2(WatchedStream::new(inner, stalls, clock.clone())),
            None => Source::Http1(inner),
        };
        Self {
            inner,
            idle: clock.map(IdleTimer::new),
        }
    }

    /// A handle on the agent's cut of it, for an HTTP/2 client's body.
    pub fn cut_signal(&self) -> Option<CutSignal> {
        match &self.inner {
            Source::Http1(_) => None,
            Source::Http2(body) => Some(body.signal()),
        }
    }

    /// Runs the stream idle timer while the body waits: for the client's
    /// next frame, or, not being read, for its way upstream (the upstream
    /// reads nothing). Ready, with the error the body ends with, once
    /// nothing has passed either way for the timeout, or once the agent has
    /// stopped reading it ([`stalled`](super::stalled)); pending for ever
    /// otherwise.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
        if let Source::Http2(body) = &self.inner
            && let Poll::Ready(cut) = body.poll_cut(cx)
        {
            return Poll::Ready(cut.into());
        }
        match self.idle.as_mut() {
            Some(timer) => timer
                .poll_expired(cx)
                .map(|()| ClientBodyError::StreamIdle(timer.clock().idle())),
            None => Poll::Pending,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Source::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(ClientBodyError::Source))),
            Source::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(ClientBodyError::from))),
        };
        match polled {
            Poll::Ready(frame) => {
                if let Some(timer) = &this.idle {
                    timer.clock().touch();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => this.poll_stalled(cx).map(|error| Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Http1(body) => body.is_end_stream(),
            Source::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Http1(body) => body.size_hint(),
            Source::Http2(body) => body.size_hint(),
        }
    }
}
