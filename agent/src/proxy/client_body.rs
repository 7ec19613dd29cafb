//! The client's request body as the agent reads it: hyper's body under
//! Envoy's `stream_idle_timeout` — a body that sends nothing for that long
//! ends with [`ClientBodyError::StreamIdle`], which the request path
//! answers with 408 (or a reset once the response has begun).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Why the client's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// hyper's: the client broke the protocol or went away.
    #[error("request body: {0}")]
    Source(#[source] hyper::Error),
    /// Nothing arrived for this long (`spec.downstream.streamIdleTimeout`).
    #[error("request body sent nothing for {0:?} (stream idle timeout)")]
    StreamIdle(Duration),
}

/// The client's body, timed out when it stalls.
pub struct ClientBody {
    inner: Incoming,
    idle: Option<Duration>,
    /// Armed at the first read and re-armed by every frame, so time spent
    /// before the upstream asks for the body is not the client's.
    timer: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    /// Wraps `inner`; `idle` is the stream idle timeout (`None`: off).
    pub fn new(inner: Incoming, idle: Option<Duration>) -> Self {
        Self {
            inner,
            idle,
            timer: None,
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
                if let (Some(timer), Some(idle)) = (this.timer.as_mut(), this.idle) {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Source)))
            }
            Poll::Pending => {
                let Some(idle) = this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::StreamIdle(idle)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
