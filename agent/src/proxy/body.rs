//! Bodies that stream through the agent frame by frame (never buffered
//! whole), counting bytes and noticing the end so the request can be recorded
//! when the response is complete — as Istio's duration is. The response body
//! tells a [`ResponseObserver`] what passes; it knows nothing of what
//! observes it.

use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::client_body::{ClientBody, ClientBodyError};
use super::h1;
use super::pool::Lease;
use super::progress::{RequestProgress, RouteDeadline};
use super::reset_reason::ResetReason;
use super::shared_h2::{Counted, StreamBody};
use super::stalled::{Cut, CutSignal, WatchedError, WatchedStream};
use super::stream_idle::{IdleTimer, StreamClock};
use super::tap::TapReader;

/// Errors of bodies passing through: the peer's, or the agent's own
/// (a route timeout mid-response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The downstream request body, forwarded once.
pub struct RequestBody {
    inner: ClientBody,
    progress: Rc<RequestProgress>,
}

impl RequestBody {
    /// Wraps `inner`, reporting to `progress`.
    pub fn new(inner: ClientBody, progress: Rc<RequestProgress>) -> Self {
        Self { inner, progress }
    }

    /// [`ClientBody::cut_signal`].
    pub fn cut_signal(&self) -> Option<CutSignal> {
        self.inner.cut_signal()
    }

    /// [`ClientBody::poll_stalled`], the failure recorded in the progress.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner
            .poll_stalled(cx)
            .map(|error| self.progress.fail(&error))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress.add(data);
                }
                if this.inner.is_end_stream() {
                    this.progress.end();
                }
            }
            Poll::Ready(Some(Err(error))) => this.progress.fail(error),
            Poll::Ready(None) => this.progress.end(),
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

impl UpstreamBody {
    /// While the upstream takes nothing of the body (its writes wait),
    /// runs the client's stream idle timer: ready once the stream has been
    /// idle for the timeout, the failure recorded as the client's body's
    /// (Envoy's 408, SI). Fixed bytes are the agent's own: never.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Self::Stream(body) => body.poll_stalled(cx),
            Self::Replay(body) => body.poll_stalled(cx),
            Self::Full(_) => Poll::Pending,
        }
    }
}

impl UpstreamBody {
    /// Whether its next frame would be read from the client: the client's
    /// body streamed once, or a replay whose tap has read nothing past its
    /// position. hyper's HTTP/1 server answers the client `100 Continue`
    /// when its body is first read, so only such a body has a 100 to wait
    /// for; fixed bytes (mirrors) are the agent's own.
    pub fn reads_client_next(&self) -> bool {
        match self {
            Self::Stream(_) => true,
            Self::Replay(body) => body.reads_client_next(),
            Self::Full(_) => false,
        }
    }
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

/// An upstream response body: read by the agent's own HTTP/1.1 client, or
/// by hyper (HTTP/2, and HTTP/1.1 requests that offer an upgrade). The
/// first is boxed: its connection and lease made the response three times
/// larger, and the response is moved whole on its way to the client (one
/// allocation costs fewer instructions than those moves did).
pub enum Received {
    /// Read from the connection by the agent ([`h1`](super::h1)).
    Own(Box<h1::ResponseBody<Lease>>),
    /// Read by hyper.
    Hyper(Incoming),
    /// Read by hyper from an HTTP/2 stream, watched for a client that
    /// stops reading it ([`stalled`](super::stalled)); its cut ends it with
    /// [`Cut`]; counted on its connection until it ends or is cut
    /// ([`StreamBody`]).
    Http2(WatchedStream<StreamBody>),
    /// Read by hyper: the answer to an extended CONNECT (RFC 8441), whose
    /// stream goes on as the upgraded one once the body (empty) ends; the
    /// stream, counted on its HTTP/2 connection until the splice that
    /// takes it ([`Self::take_stream`]) ends, or until dropped.
    Tunnel(Incoming, Option<Counted>),
}

impl Received {
    /// Whether the body's next poll returns an error it already has.
    fn holds_error(&self) -> bool {
        match self {
            Self::Own(body) => body.holds_error(),
            Self::Hyper(_) | Self::Http2(_) | Self::Tunnel(..) => false,
        }
    }

    /// Why the agent stopped reading it ([`stalled`](super::stalled)), if
    /// it has.
    fn cut_reason(&self) -> Option<Cut> {
        match self {
            Self::Http2(body) => body.cut_reason(),
            Self::Own(_) | Self::Hyper(_) | Self::Tunnel(..) => None,
        }
    }

    /// The count of an extended CONNECT's stream on its HTTP/2 connection,
    /// for the splice to hold while the stream carries the upgrade (taken
    /// once; `None` for any other body).
    pub fn take_stream(&mut self) -> Option<Counted> {
        match self {
            Self::Tunnel(_, stream) => stream.take(),
            Self::Own(_) | Self::Hyper(_) | Self::Http2(_) => None,
        }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Own(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Hyper(body) | Self::Tunnel(body, _) => {
                Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            Self::Http2(body) => Pin::new(body).poll_frame(cx).map_err(|error| match error {
                WatchedError::Source(error) => error,
                WatchedError::Cut(cut) => cut.into(),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Own(body) => body.is_end_stream(),
            Self::Hyper(body) | Self::Tunnel(body, _) => body.is_end_stream(),
            Self::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Own(body) => body.size_hint(),
            Self::Hyper(body) | Self::Tunnel(body, _) => body.size_hint(),
            Self::Http2(body) => body.size_hint(),
        }
    }
}

enum Source {
    Upstream(Received),
    Full(Option<Bytes>),
}

/// The route timeout fired while the response was streaming.
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout")]
pub struct ResponseTimeout;

/// Nothing passed either way for the stream idle timeout while the
/// response was streaming: the stream is reset, as Envoy resets it.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout: nothing passed for {0:?} mid-response")]
pub struct ResponseStreamIdle(pub std::time::Duration);

/// The upstream broke a response off mid-body (`0`: how): passed on to the
/// client as a failure of the agent's, with no cause, so that hyper resets
/// an HTTP/2 client's stream with `INTERNAL_ERROR`, as Envoy resets it,
/// whatever code the upstream reset its stream with. (hyper would pass on
/// an HTTP/2 code it finds among the causes: an upstream's
/// `REFUSED_STREAM` would tell the client its request went unprocessed,
/// RFC 9113 §8.7, and safe to retry, when the upstream had begun to answer
/// it.) An HTTP/1.1 client's connection is closed, as before.
#[derive(Debug, thiserror::Error)]
#[error("the upstream broke the response off: {0}")]
pub struct UpstreamBrokeOff(BoxError);

/// What hears how a response body goes: the request's record. Every call
/// comes from the body's `poll_frame`; `on_end` comes once, last, unless the
/// body is dropped first (the client went away).
pub trait ResponseObserver {
    /// A frame passed on to the client (data to count, trailers to read).
    fn on_frame(&mut self, frame: &Frame<Bytes>);
    /// The upstream broke the response off mid-body, for `reason`: reset
    /// the stream, closed the connection, or broke the protocol (closed
    /// short of its `Content-Length` or last chunk, a malformed chunk).
    fn on_reset(&mut self, reason: ResetReason);
    /// The route timeout cut the response off.
    fn on_timeout(&mut self);
    /// The stream idle timeout cut the response off.
    fn on_stream_idle(&mut self);
    /// The agent stopped reading the response to bound what it holds
    /// (`spec.overload.maxStalledStreams`).
    fn on_overload(&mut self);
    /// The agent stopped reading the upstream ([`stalled`](super::stalled)):
    /// the stream idle timeout's cut or the overload's.
    fn on_cut(&mut self, cut: Cut) {
        match cut {
            Cut::StreamIdle(_) => self.on_stream_idle(),
            Cut::Overload => self.on_overload(),
        }
    }
    /// The body ended, whole or not: the request is over.
    fn on_end(&mut self);
}

impl<T: ResponseObserver + ?Sized> ResponseObserver for Box<T> {
    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        (**self).on_frame(frame);
    }
    fn on_reset(&mut self, reason: ResetReason) {
        (**self).on_reset(reason);
    }
    fn on_timeout(&mut self) {
        (**self).on_timeout();
    }
    fn on_stream_idle(&mut self) {
        (**self).on_stream_idle();
    }
    fn on_overload(&mut self) {
        (**self).on_overload();
    }
    fn on_end(&mut self) {
        (**self).on_end();
    }
}

/// The body sent back downstream: the upstream's, or a local reply's. It
/// owns its observer and ends it when the last frame has passed; dropped
/// before that, it drops the observer unended.
pub struct ResponseBody<O: ResponseObserver> {
    source: Source,
    observer: Option<O>,
    deadline: Deadline,
    idle: Option<IdleTimer>,
}

/// The route timeout's timer on a response body.
enum Deadline {
    None,
    Armed(Pin<Box<tokio::time::Sleep>>),
    /// Armed once the request has ended: `timeout` after its end.
    AtEnd(Rc<RequestProgress>, std::time::Duration),
}

impl Deadline {
    /// Whether the route's timeout has passed; the task of `cx` is woken
    /// when it does (or when the request it waits for ends).
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if let Self::AtEnd(progress, timeout) = self
            && progress.poll_ended(cx).is_ready()
        {
            let at = progress.ended_at().map(|end| end + *timeout);
            *self = match at {
                Some(at) => Self::Armed(Box::pin(tokio::time::sleep_until(at))),
                None => Self::None,
            };
        }
        match self {
            Self::Armed(sleep) => sleep.as_mut().poll(cx).is_ready(),
            Self::None | Self::AtEnd(..) => false,
        }
    }
}

impl<O: ResponseObserver> ResponseBody<O> {
    /// Streams the upstream response body, cut off at `deadline` (the route
    /// timeout) or once nothing has passed either way for the timeout of
    /// the stream's `clock` (`None`: no stream idle timeout).
    pub fn upstream(
        body: Received,
        observer: O,
        deadline: RouteDeadline,
        clock: Option<Rc<StreamClock>>,
    ) -> Self {
        // The head is the response's first frame: the wait for it, which
        // the clock does not time, ends here.
        if let Some(clock) = &clock {
            clock.touch();
        }
        if let Received::Http2(body) = &body {
            body.time_by(clock.clone());
        }
        let mut body = Self {
            source: Source::Upstream(body),
            observer: Some(observer),
            deadline: match deadline {
                RouteDeadline::None => Deadline::None,
                RouteDeadline::At(at) => Deadline::Armed(Box::pin(tokio::time::sleep_until(at))),
                RouteDeadline::AtEnd { progress, timeout } => Deadline::AtEnd(progress, timeout),
            },
            idle: clock.map(IdleTimer::new),
        };
        body.end_if_ended();
        body
    }

    /// An empty body whose request is recorded by something else (an
    /// upgraded stream's, by its splice).
    pub fn recorded_elsewhere() -> Self {
        Self {
            source: Source::Full(None),
            observer: None,
            deadline: Deadline::None,
            idle: None,
        }
    }

    /// A body generated by the agent.
    pub fn full(bytes: Bytes, observer: O) -> Self {
        let mut body = Self {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            observer: Some(observer),
            deadline: Deadline::None,
            idle: None,
        };
        body.end_if_ended();
        body
    }

    fn end_if_ended(&mut self) {
        if self.source_ended() {
            self.end();
        }
    }

    fn source_ended(&self) -> bool {
        match &self.source {
            Source::Upstream(body) => body.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
        }
    }

    fn end(&mut self) {
        if let Some(mut observer) = self.observer.take() {
            observer.on_end();
        }
    }
}

impl<O: ResponseObserver> Drop for ResponseBody<O> {
    /// A response the agent stopped reading, dropped unread (its client
    /// reset the stream or closed the connection rather than reading
    /// again), is recorded as the cut, not as the client going away.
    fn drop(&mut self) {
        let Source::Upstream(body) = &self.source else {
            return;
        };
        if let (Some(cut), Some(observer)) = (body.cut_reason(), self.observer.as_mut()) {
            observer.on_cut(cut);
            self.end();
        }
    }
}

impl<O: ResponseObserver + Unpin> Body for ResponseBody<O> {
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
            && !matches!(&this.source, Source::Upstream(body) if body.holds_error())
        {
            if this.deadline.poll_passed(cx) {
                if let Some(observer) = this.observer.as_mut() {
                    observer.on_timeout();
                }
                this.end();
                return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
            }
            if let Some(timer) = this.idle.as_mut()
                && timer.poll_expired(cx).is_ready()
            {
                let idle = timer.clock().idle();
                if let Some(observer) = this.observer.as_mut() {
                    observer.on_stream_idle();
                }
                this.end();
                return Poll::Ready(Some(Err(Box::new(ResponseStreamIdle(idle)))));
            }
        }
        if let (Poll::Ready(Some(Ok(_))), Some(timer)) = (&polled, &this.idle) {
            timer.clock().touch();
        }
        if let Some(observer) = this.observer.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => observer.on_frame(frame),
                Poll::Ready(Some(Err(error))) => match error.downcast_ref::<Cut>() {
                    // The agent stopped reading the upstream: the client
                    // took nothing of it.
                    Some(cut) => observer.on_cut(*cut),
                    None => observer.on_reset(ResetReason::of(error.as_ref())),
                },
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        // An upstream that broke the response off is passed on as the
        // agent's own failure, not the upstream's: see [`UpstreamBrokeOff`].
        // (Rewrapped in place: a frame is not moved for it.)
        let mut polled = polled;
        if let Poll::Ready(Some(Err(error))) = &mut polled
            && !error.is::<Cut>()
        {
            // (`fmt::Error` holds the place: a box of nothing allocates nothing.)
            let cause = std::mem::replace(error, Box::new(std::fmt::Error));
            *error = Box::new(UpstreamBrokeOff(cause));
        }
        // Trailers are a body's last frame (`http_body::Frame`): the server
        // side may stop polling once it has them, without asking for the end.
        let last = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Pending => false,
        };
        if last || this.source_ended() {
            this.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source_ended()
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use http_body_util::BodyExt;

    use super::*;

    /// Notes what the body told it.
    #[derive(Clone, Default)]
    struct Notes(Rc<RefCell<Vec<String>>>);

    impl ResponseObserver for Notes {
        fn on_frame(&mut self, frame: &Frame<Bytes>) {
            let len = frame.data_ref().map_or(0, Bytes::len);
            self.0.borrow_mut().push(format!("frame {len}"));
        }
        fn on_reset(&mut self, reason: ResetReason) {
            self.0.borrow_mut().push(format!("reset {reason:?}"));
        }
        fn on_timeout(&mut self) {
            self.0.borrow_mut().push("timeout".into());
        }
        fn on_stream_idle(&mut self) {
            self.0.borrow_mut().push("stream idle".into());
        }
        fn on_overload(&mut self) {
            self.0.borrow_mut().push("overload".into());
        }
        fn on_end(&mut self) {
            self.0.borrow_mut().push("end".into());
        }
    }

    #[tokio::test]
    async fn a_full_body_reports_its_frame_then_ends_once() {
        let notes = Notes::default();
        let body = ResponseBody::full(Bytes::from_static(b"hello"), notes.clone());
        let collected = body.collect().await.expect("a body").to_bytes();
        assert_eq!(collected, "hello");
        assert_eq!(*notes.0.borrow(), ["frame 5", "end"]);
    }

    #[test]
    fn an_empty_body_ends_at_once_and_a_dropped_one_never() {
        let notes = Notes::default();
        let body = ResponseBody::full(Bytes::new(), notes.clone());
        assert!(body.is_end_stream());
        assert_eq!(*notes.0.borrow(), ["end"]);

        let unread = Notes::default();
        drop(ResponseBody::full(Bytes::from_static(b"x"), unread.clone()));
        assert!(
            unread.0.borrow().is_empty(),
            "the observer is dropped unended"
        );
    }

    /// The body of the agent's own HTTP/1.1 client's answer to a GET from
    /// an [`answer_once`](crate::proxy::testing::answer_once) server (on
    /// this thread's `LocalSet`); the pools it came from, which must outlive
    /// it.
    async fn own_h1_body(
        answer: &'static [u8],
        then: crate::proxy::testing::Then,
    ) -> (Received, Rc<crate::proxy::pool::Pools>) {
        use crate::proxy::h1;
        use crate::proxy::testing::{answer_once, cluster, key, pools};
        use crate::tls::TlsPlan;

        let address = answer_once(answer, then).await;
        let cluster = cluster(&[address], Default::default(), None);
        let pools = pools();
        let (connection, lease) = pools
            .h1(&key(&cluster), &cluster, &TlsPlan::Plain)
            .await
            .expect("a connection");
        let (mut head, ()) = http::Request::get("/")
            .body(())
            .expect("a request")
            .into_parts();
        let body = UpstreamBody::Full(None);
        let Ok(response) = h1::send(connection, &mut head, body, lease).await else {
            panic!("a response head");
        };
        (Received::Own(response.into_body()), pools)
    }

    /// Half of a 10-byte body.
    const HALF_A_BODY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_cut_short_as_the_deadline_passes_is_a_reset_not_a_timeout() {
        use crate::proxy::testing::Then;

        tokio::task::LocalSet::new()
            .run_until(async {
                // Half the body, then the end of the stream, in one poll of
                // the server: the client reads the head and those bytes,
                // and its next read finds the end.
                let (received, _pools) = own_h1_body(HALF_A_BODY, Then::Close).await;
                let notes = Notes::default();
                // The route deadline has passed by the time the body is read.
                let body = ResponseBody::upstream(
                    received,
                    notes.clone(),
                    RouteDeadline::At(
                        tokio::time::Instant::now() - std::time::Duration::from_secs(1),
                    ),
                    None,
                );
                let Err(error) = body.collect().await else {
                    panic!("cut short");
                };
                assert!(!error.is::<ResponseTimeout>(), "{error}");
                assert_eq!(*notes.0.borrow(), ["frame 5", "reset ProtocolError", "end"]);
            })
            .await;
    }

    /// A response that begins before its request has ended is cut by the
    /// route timeout counted from the request's end, as Envoy arms its
    /// global timeout then (not from the head, nor never).
    #[tokio::test(flavor = "current_thread")]
    async fn a_response_begun_before_its_request_ended_is_timed_from_the_end() {
        use crate::proxy::testing::Then;

        tokio::task::LocalSet::new()
            .run_until(async {
                // Silent after half the body, for as long as the test runs.
                let (received, _pools) = own_h1_body(HALF_A_BODY, Then::Hold).await;
                let notes = Notes::default();
                let progress = Rc::new(RequestProgress::default());
                progress.time_the_end();
                let timeout = std::time::Duration::from_millis(200);
                let deadline = RouteDeadline::AtEnd {
                    progress: progress.clone(),
                    timeout,
                };
                let body = ResponseBody::upstream(received, notes.clone(), deadline, None);
                let started = tokio::time::Instant::now();
                let end_later = async {
                    tokio::time::sleep(timeout * 2).await;
                    progress.end();
                };
                let (collected, ()) = tokio::join!(body.collect(), end_later);
                let Err(error) = collected else {
                    panic!("cut off");
                };
                assert!(error.is::<ResponseTimeout>(), "{error}");
                assert!(started.elapsed() >= timeout * 3, "{:?}", started.elapsed());
                assert_eq!(*notes.0.borrow(), ["frame 5", "timeout", "end"]);
            })
            .await;
    }

    /// An upstream that falls silent mid-body is cut off once nothing has
    /// passed for the stream idle timeout, counted from the response head at
    /// the earliest, and the observer hears why.
    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_upstream_is_cut_off_after_the_stream_idle_timeout() {
        use crate::proxy::testing::Then;

        tokio::task::LocalSet::new()
            .run_until(async {
                // Open and silent after half the body, for as long as the
                // test runs.
                let (received, _pools) = own_h1_body(HALF_A_BODY, Then::Hold).await;
                let notes = Notes::default();
                let idle = std::time::Duration::from_millis(200);
                let clock = StreamClock::new(idle);
                // The request's body waited once (the clock started), then
                // the upstream took longer than the timeout to answer: that
                // wait is not the stream's idleness, and the head ends it.
                let mut request = IdleTimer::new(clock.clone());
                let waker = std::task::Waker::noop();
                let armed = request.poll_expired(&mut Context::from_waker(waker));
                assert!(armed.is_pending());
                tokio::time::sleep(idle * 2).await;
                let body = ResponseBody::upstream(
                    received,
                    notes.clone(),
                    RouteDeadline::None,
                    Some(clock),
                );
                let started = tokio::time::Instant::now();
                let Err(error) = body.collect().await else {
                    panic!("cut off");
                };
                assert!(error.is::<ResponseStreamIdle>(), "{error}");
                assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
                assert_eq!(*notes.0.borrow(), ["frame 5", "stream idle", "end"]);
            })
            .await;
    }

    #[test]
    fn fixed_upstream_bodies_say_their_length() {
        let body = UpstreamBody::Full(Some(Bytes::from_static(b"abc")));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert!(UpstreamBody::Full(None).is_end_stream());
    }
}
