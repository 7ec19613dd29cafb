//! How far the client's request body has got on its way upstream: bytes
//! forwarded, whether it has ended and how it failed — read by the retry
//! loop (a client's failure is not the upstream's; the per-try and route
//! timeouts start once the request has ended), the response body (the
//! route timeout's deadline on it, [`RouteDeadline`]) and the record
//! (bytes received).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::client_body::ClientBodyError;
use super::local_reply::LocalReply;
use crate::telemetry::grpc_messages::GrpcMessages;

/// How the client's request body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// It broke the protocol (a malformed chunk): the client's fault, a 400.
    Malformed,
    /// The client went away or reset the stream.
    Aborted,
    /// It sent nothing for `streamIdleTimeout`.
    StreamIdle,
    /// The agent stopped reading it: one of too many stalled HTTP/2
    /// uploads, their upstreams taking nothing
    /// (`spec.overload.maxStalledStreams`).
    Overload,
}

impl BodyFailure {
    /// Classifies a downstream body error.
    pub fn of(error: &ClientBodyError) -> Self {
        match error {
            ClientBodyError::StreamIdle(_) => Self::StreamIdle,
            ClientBodyError::Overload => Self::Overload,
            ClientBodyError::Source(error) => Self::of_source(error),
        }
    }

    /// The reply recording it: 400 (DPE), 408 (stream idle), 503 (OM), or the
    /// unread reply of a client that went away (DC).
    pub fn local_reply(self) -> LocalReply {
        match self {
            Self::Malformed => LocalReply::MALFORMED_REQUEST_BODY,
            Self::StreamIdle => LocalReply::STREAM_IDLE_TIMEOUT,
            Self::Overload => LocalReply::OVERLOAD,
            Self::Aborted => LocalReply::DOWNSTREAM_DISCONNECT,
        }
    }

    fn of_source(error: &hyper::Error) -> Self {
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
    /// The body's gRPC messages (read only for a gRPC request).
    grpc_messages: Cell<GrpcMessages>,
    failure: Cell<Option<BodyFailure>>,
    ended: Cell<bool>,
    /// When it ended, for a request that asked ([`Self::time_the_end`]).
    ended_at: Cell<Option<Instant>>,
    /// Whether [`Self::end`] notes the time.
    timed: Cell<bool>,
    /// The attempt waiting for the end (the body may be read on another
    /// task: hyper's HTTP/2 connection's).
    on_end: RefCell<Option<Waker>>,
}

impl RequestProgress {
    /// Body bytes forwarded so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// Counts `data`, the body's next bytes.
    pub fn add(&self, data: &[u8]) {
        self.bytes.set(self.bytes.get() + data.len() as u64);
        let mut messages = self.grpc_messages.get();
        messages.feed(data);
        self.grpc_messages.set(messages);
    }

    /// The gRPC messages the body held so far.
    pub fn grpc_messages(&self) -> u64 {
        self.grpc_messages.get().count()
    }

    /// The client's body failed with `error`.
    pub fn fail(&self, error: &ClientBodyError) {
        self.failure.set(Some(BodyFailure::of(error)));
    }

    /// How the client's body failed, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        self.failure.get()
    }

    /// The client's body has been read to its end (or there was none):
    /// the whole request has arrived (Envoy's `downstreamEndStream`).
    pub fn end(&self) {
        if self.timed.get() && !self.ended.get() {
            self.ended_at.set(Some(Instant::now()));
        }
        self.ended.set(true);
        if let Some(waker) = self.on_end.take() {
            waker.wake();
        }
    }

    /// Has the time the whole request arrived noted (now, if it has
    /// already): a route's timeout runs from it ([`Self::ended_at`]). Only
    /// a request whose route has a timeout asks, so no other reads the
    /// clock for it.
    pub fn time_the_end(&self) {
        if self.ended.get() {
            if self.ended_at.get().is_none() {
                self.ended_at.set(Some(Instant::now()));
            }
        } else {
            self.timed.set(true);
        }
    }

    /// When the whole request had arrived, once it has, for a request that
    /// asked ([`Self::time_the_end`]).
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at.get()
    }

    /// Ready once the whole request has arrived; until then the task of
    /// `cx` is woken when it has.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended.get() {
            return Poll::Ready(());
        }
        let mut on_end = self.on_end.borrow_mut();
        if !on_end.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *on_end = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// When a route's timeout cuts its response off: Envoy's global timeout
/// runs from the end of the downstream request, so it is known once the
/// whole request has arrived, and still to come for a response that began
/// before that.
pub enum RouteDeadline {
    /// No timeout.
    None,
    /// At this instant.
    At(Instant),
    /// `timeout` after the end of the request `progress` follows.
    AtEnd {
        progress: Rc<RequestProgress>,
        timeout: Duration,
    },
}
