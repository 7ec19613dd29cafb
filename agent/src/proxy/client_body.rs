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
}

/// The client's body, timed out when it stalls.
pub struct ClientBody {
    inner: Incoming,
    /// Armed at the first read that has to wait, so time spent before the
    /// upstream asks for the body is not the client's; every frame, and
    /// every frame of the response, moves it on. `None`: no timeout.
    idle: Option<IdleTimer>,
}

impl ClientBody {
    /// Wraps `inner`, timed by its stream's `clock` (`None`: no stream idle
    /// timeout).
    pub fn new(inner: Incoming, clock: Option<Rc<StreamClock>>) -> Self {
        Self {
            inner,
            idle: clock.map(IdleTimer::new),
        }
    }

    /// Runs the stream idle timer while the body waits: for the client's
    /// next frame, or, not being read, for its way upstream (the upstream
    /// reads nothing). Ready, with the error the body ends with, once
    /// nothing has passed either way for the timeout; pending for ever
    /// without a timeout.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = &this.idle {
                    timer.clock().touch();
                }
                Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Source)))
            }
            Poll::Pending => this.poll_stalled(cx).map(|error| Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
