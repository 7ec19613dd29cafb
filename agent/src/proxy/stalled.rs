//! Bodies read from HTTP/2 streams whose reader stops taking them.
//!
//! A body the agent reads from an HTTP/2 stream (a client's upload, an
//! upstream's response) is let in by the stream's window
//! ([`flow_control`](super::flow_control)). When the side it is passed on
//! to stops taking bytes (a client that stops reading, an upstream that
//! stops reading an upload), the agent stops asking the body for frames,
//! and the stream holds up to its window of unread bytes for as long as
//! that lasts. hyper asks a body for its next frame only once its peer can
//! take one, so the body's own idle timer ([`stream_idle`](super::stream_idle))
//! is not polled meanwhile, and nothing else would end such a stream.
//!
//! [`Stalls`], one per worker, knows every such body ([`WatchedStream`])
//! and which of them wait for their reader, and bounds them:
//! - **in time**: a body its reader has not asked for a frame while nothing
//!   passed either way for the stream idle timeout is cut, as Envoy's
//!   `stream_idle_timeout` counts a wait for the peer's window as idle.
//!   A sweep every [`SWEEP_INTERVAL`] checks, so the cut comes up to two
//!   intervals after the timeout;
//! - **in memory**: when more bodies wait for their readers than the
//!   worker's share of `spec.overload.maxStalledStreams`, the one that has
//!   waited longest is cut, as Envoy's overload action
//!   `reset_high_memory_stream` resets the streams holding the most.
//!
//! A cut drops the body's source: its HTTP/2 stream is reset (or, read
//! from, its window stays shut) and what it held is freed. The body ends
//! with [`Cut`] when next asked for a frame. Cuts are counted in
//! `tracemesh_agent_stalled_streams_cut_total` and logged at WARN, a line
//! per sweep.
//!
//! Per frame this costs a few `Cell` updates on the worker's own state; the
//! clock is read only by the sweep, which runs while any watched body is
//! open.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use slab::Slab;
use tokio::time::Instant;

use super::stream_idle::StreamClock;

/// How often a worker looks for bodies stalled past their stream idle
/// timeout.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the agent stopped reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// Its reader took nothing, and nothing passed the other way, for the
    /// stream idle timeout (`spec.downstream.streamIdleTimeout`).
    #[error("stream idle timeout: its reader took nothing for {0:?}")]
    StreamIdle(Duration),
    /// More bodies waited for their readers than the agent holds
    /// (`spec.overload.maxStalledStreams`), and this one had waited
    /// longest.
    #[error("overload: more streams stalled than spec.overload.maxStalledStreams")]
    Overload,
}

/// A watched body's error: its source's, or the cut.
#[derive(Debug, thiserror::Error)]
pub enum WatchedError<E> {
    /// The source's own error.
    #[error(transparent)]
    Source(E),
    /// The agent stopped reading it.
    #[error("the agent stopped reading the stream: {0}")]
    Cut(Cut),
}

/// One worker's watched bodies.
pub struct Stalls {
    state: RefCell<State>,
    /// Most bodies waiting for their readers at once; past it the one that
    /// has waited longest is cut.
    limit: usize,
    cut_idle: IntCounter,
    cut_overload: IntCounter,
}

#[derive(Default)]
struct State {
    streams: Slab<Tracked>,
    /// Numbers the waits, in the order they began.
    next_wait: u64,
    /// How many bodies wait for their readers.
    waiting: usize,
    /// Whether the sweep runs.
    sweeping: bool,
    /// Cuts since the last log line: for the stream idle timeout, for the
    /// limit.
    unlogged: (u64, u64),
}

struct Tracked {
    stream: Rc<dyn Stall>,
    /// The wait the last sweep saw it in: the same one at the next sweep
    /// means its reader took nothing in between.
    seen: Option<u64>,
}

/// What [`Stalls`] needs of a watched body, whatever its source.
trait Stall {
    /// The wait it is in: its last frame not yet followed by a request for
    /// the next.
    fn waiting(&self) -> Option<u64>;
    /// Ends the wait; whether there was one.
    fn stop_waiting(&self) -> bool;
    /// Its stream's idle clock.
    fn clock(&self) -> Option<Rc<StreamClock>>;
    /// Drops its source; the body ends with `why` when next asked.
    fn cut(&self, why: Cut);
}

impl Stalls {
    /// A worker's, cutting past `limit` waiting bodies (at least 1); cuts
    /// are counted in `cuts` (`tracemesh_agent_stalled_streams_cut_total`,
    /// by `reason`).
    pub fn new(limit: usize, cuts: &prometheus::IntCounterVec) -> Rc<Self> {
        Rc::new(Self {
            state: RefCell::default(),
            limit: limit.max(1),
            cut_idle: cuts.with_label_values(&["stream_idle_timeout"]),
            cut_overload: cuts.with_label_values(&["overload"]),
        })
    }

    /// How many bodies wait for their readers now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.borrow().waiting
    }

    fn register(self: &Rc<Self>, stream: Rc<dyn Stall>) -> usize {
        let mut state = self.state.borrow_mut();
        let key = state.streams.insert(Tracked { stream, seen: None });
        if !std::mem::replace(&mut state.sweeping, true) {
            tokio::task::spawn_local(self.clone().sweep());
        }
        key
    }

    fn remove(&self, key: usize) {
        // A body dropped as the thread ends (its runtime torn down after
        // this worker's state) has nothing left to account.
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return;
        };
        if let Some(tracked) = state.streams.try_remove(key)
            && tracked.stream.stop_waiting()
        {
            state.waiting -= 1;
        }
    }

    /// `stream` handed on a frame its reader has not taken yet: it waits,
    /// and if too many do, the longest waiting is cut.
    fn begin_wait(&self, wait: &Cell<Option<u64>>) {
        let victim = {
            let mut state = self.state.borrow_mut();
            let number = state.next_wait;
            state.next_wait += 1;
            wait.set(Some(number));
            state.waiting += 1;
            if state.waiting > self.limit {
                state
                    .streams
                    .iter()
                    .filter_map(|(_, t)| Some((t.stream.waiting()?, &t.stream)))
                    .min_by_key(|(number, _)| *number)
                    .map(|(_, stream)| stream.clone())
            } else {
                None
            }
        };
        if let Some(victim) = victim {
            self.cut(&victim, Cut::Overload);
        }
    }

    fn end_wait(&self) {
        self.state.borrow_mut().waiting -= 1;
    }

    fn cut(&self, stream: &Rc<dyn Stall>, why: Cut) {
        {
            let mut state = self.state.borrow_mut();
            if stream.stop_waiting() {
                state.waiting -= 1;
            }
            match why {
                Cut::StreamIdle(_) => state.unlogged.0 += 1,
                Cut::Overload => state.unlogged.1 += 1,
            }
        }
        // Dropping the source resets its stream, outside the borrow.
        stream.cut(why);
        match why {
            Cut::StreamIdle(_) => self.cut_idle.inc(),
            Cut::Overload => self.cut_overload.inc(),
        }
    }

    /// Cuts every body whose reader took nothing since the last sweep and
    /// whose stream has been idle for its timeout; `false` once no body is
    /// watched (the sweep ends).
    fn sweep_once(&self, now: Instant) -> bool {
        let expired: Vec<(Rc<dyn Stall>, Duration)> = {
            let mut state = self.state.borrow_mut();
            if state.streams.is_empty() {
                state.sweeping = false;
                return false;
            }
            state
                .streams
                .iter_mut()
                .filter_map(|(_, tracked)| {
                    let waiting = tracked.stream.waiting();
                    if waiting.is_none() || waiting != tracked.seen {
                        tracked.seen = waiting;
                        return None;
                    }
                    // The first look starts the clock if no timer had.
                    let clock = tracked.stream.clock()?;
                    clock
                        .expired(now)
                        .then(|| (tracked.stream.clone(), clock.idle()))
                })
                .collect()
        };
        for (stream, idle) in expired {
            self.cut(&stream, Cut::StreamIdle(idle));
        }
        let (idle, overload) = std::mem::take(&mut self.state.borrow_mut().unlogged);
        if idle + overload > 0 {
            tracing::warn!(
                stream_idle_timeout = idle,
                overload,
                limit = self.limit,
                "stopped reading HTTP/2 streams whose readers took nothing"
            );
        }
        true
    }

    async fn sweep(self: Rc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            if !self.sweep_once(Instant::now()) {
                return;
            }
        }
    }
}

/// A body read from an HTTP/2 stream, watched by its worker's [`Stalls`].
pub struct WatchedStream<B: Body + Unpin + 'static> {
    watched: Rc<Watched<B>>,
    key: usize,
    stalls: Rc<Stalls>,
}

struct Watched<B> {
    source: RefCell<Source<B>>,
    wait: Cell<Option<u64>>,
    clock: RefCell<Option<Rc<StreamClock>>>,
    /// Whoever waits on [`WatchedStream::poll_cut`], woken by the cut.
    cut_waker: RefCell<Option<Waker>>,
}

enum Source<B> {
    Open(B),
    Cut(Cut),
}

impl<B: Body + Unpin + 'static> Stall for Watched<B> {
    fn waiting(&self) -> Option<u64> {
        self.wait.get()
    }

    fn stop_waiting(&self) -> bool {
        self.wait.take().is_some()
    }

    fn clock(&self) -> Option<Rc<StreamClock>> {
        self.clock.borrow().clone()
    }

    fn cut(&self, why: Cut) {
        if let Ok(mut source) = self.source.try_borrow_mut() {
            *source = Source::Cut(why);
        }
        if let Some(waker) = self.cut_waker.take() {
            waker.wake();
        }
    }
}

impl<B: Body + Unpin + 'static> WatchedStream<B> {
    /// Watches `body` on `stalls`, timed by its stream's `clock` (`None`:
    /// no stream idle timeout, or one given later by
    /// [`time_by`](Self::time_by)). Starts the worker's sweep if it is not
    /// running: call it on a worker (inside its `LocalSet`).
    pub fn new(body: B, stalls: &Rc<Stalls>, clock: Option<Rc<StreamClock>>) -> Self {
        let watched = Rc::new(Watched {
            source: RefCell::new(Source::Open(body)),
            wait: Cell::new(None),
            clock: RefCell::new(clock),
            cut_waker: RefCell::new(None),
        });
        let key = stalls.register(watched.clone());
        Self {
            watched,
            key,
            stalls: stalls.clone(),
        }
    }

    /// Ready with the cut once the agent has stopped reading the body,
    /// pending (`cx` woken by the cut) until then: for a reader that waits
    /// on its peer rather than on the body (the agent's HTTP/1.1 client
    /// while its writes wait).
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<Cut> {
        if let Source::Cut(why) = &*self.watched.source.borrow() {
            return Poll::Ready(*why);
        }
        let mut waker = self.watched.cut_waker.borrow_mut();
        match &*waker {
            Some(waiting) if waiting.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Times it by its stream's idle `clock` from now on.
    pub fn time_by(&self, clock: Option<Rc<StreamClock>>) {
        *self.watched.clock.borrow_mut() = clock;
    }
}

impl<B: Body + Unpin + 'static> Drop for WatchedStream<B> {
    fn drop(&mut self) {
        self.stalls.remove(self.key);
    }
}

impl<B: Body + Unpin + 'static> Body for WatchedStream<B> {
    type Data = B::Data;
    type Error = WatchedError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.get_mut();
        let watched = &*this.watched;
        if watched.stop_waiting() {
            this.stalls.end_wait();
        }
        let (polled, more) = match &mut *watched.source.borrow_mut() {
            Source::Open(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let more = !body.is_end_stream();
                (polled, more)
            }
            Source::Cut(why) => return Poll::Ready(Some(Err(WatchedError::Cut(*why)))),
        };
        // A data frame with more to come: the body waits for its reader
        // until asked again.
        if more && matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data()) {
            this.stalls.begin_wait(&watched.wait);
        }
        polled.map(|frame| frame.map(|f| f.map_err(WatchedError::Source)))
    }

    fn is_end_stream(&self) -> bool {
        match &*self.watched.source.borrow() {
            Source::Open(body) => body.is_end_stream(),
            Source::Cut(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*self.watched.source.borrow() {
            Source::Open(body) => body.size_hint(),
            Source::Cut(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use prometheus::{IntCounterVec, Opts};

    use super::*;

    type Endless =
        StreamBody<futures_util::stream::RepeatWith<fn() -> Result<Frame<Bytes>, Infallible>>>;

    /// A body with a frame always ready, as a fast upstream's.
    fn endless() -> Endless {
        StreamBody::new(futures_util::stream::repeat_with(|| {
            Ok(Frame::data(Bytes::from_static(b"chunk")))
        }))
    }

    fn cuts() -> IntCounterVec {
        IntCounterVec::new(Opts::new("cuts", "cuts"), &["reason"]).unwrap()
    }

    fn cut_for(cuts: &IntCounterVec, reason: &str) -> u64 {
        cuts.with_label_values(&[reason]).get()
    }

    /// Asks `body` for one frame, as its reader does when it can take one.
    async fn next<B: Body + Unpin>(body: &mut B) -> Result<Frame<B::Data>, B::Error> {
        body.frame().await.expect("a frame or an error")
    }

    async fn on_a_worker<F: std::future::Future>(test: F) -> F::Output {
        tokio::task::LocalSet::new().run_until(test).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_its_reader_stops_asking_for_is_cut_after_the_stream_idle_timeout() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(8, &cuts);
            let idle = Duration::from_secs(5);
            let mut stalled = WatchedStream::new(endless(), &stalls, Some(StreamClock::new(idle)));
            let mut read = WatchedStream::new(endless(), &stalls, Some(StreamClock::new(idle)));
            next(&mut stalled).await.expect("a frame");
            assert_eq!(stalls.waiting(), 1);
            // The reader that keeps asking is never cut; the one that does
            // not is cut once two sweeps saw it wait and the timeout has
            // passed since the first of them started its clock.
            for _ in 0..13 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                next(&mut read)
                    .await
                    .expect("a frame from the body being read");
            }
            assert_eq!(cut_for(&cuts, "stream_idle_timeout"), 0, "cut at 6.5 s");
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                next(&mut read)
                    .await
                    .expect("a frame from the body being read");
            }
            assert_eq!(cut_for(&cuts, "stream_idle_timeout"), 1, "not cut by 8.5 s");
            assert_eq!(
                stalls.waiting(),
                1,
                "the body being read waits for its reader"
            );
            match next(&mut stalled).await {
                Err(WatchedError::Cut(Cut::StreamIdle(timeout))) => assert_eq!(timeout, idle),
                other => panic!("expected the cut, got {:?}", other.map(|_| ())),
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn frames_the_other_way_keep_a_waiting_body_from_being_cut() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(8, &cuts);
            let clock = StreamClock::new(Duration::from_secs(5));
            let mut body = WatchedStream::new(endless(), &stalls, Some(clock.clone()));
            next(&mut body).await.expect("a frame");
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                clock.touch();
            }
            assert_eq!(cut_for(&cuts, "stream_idle_timeout"), 0);
            next(&mut body).await.expect("still a frame");
        })
        .await;
    }

    #[tokio::test]
    async fn past_the_limit_the_body_waiting_longest_is_cut() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(2, &cuts);
            let mut bodies: Vec<_> = (0..3)
                .map(|_| WatchedStream::new(endless(), &stalls, None))
                .collect();
            next(&mut bodies[0]).await.expect("a frame");
            next(&mut bodies[1]).await.expect("a frame");
            // The first, asked again, waits anew: the second now waited
            // longest.
            next(&mut bodies[0]).await.expect("a frame");
            assert_eq!((stalls.waiting(), cut_for(&cuts, "overload")), (2, 0));
            next(&mut bodies[2]).await.expect("a frame");
            assert_eq!((stalls.waiting(), cut_for(&cuts, "overload")), (2, 1));
            assert!(matches!(
                next(&mut bodies[1]).await,
                Err(WatchedError::Cut(Cut::Overload))
            ));
            assert!(
                !bodies[1].is_end_stream(),
                "a cut body still has its error to give"
            );
            next(&mut bodies[0]).await.expect("the others go on");
            next(&mut bodies[2]).await.expect("the others go on");
        })
        .await;
    }

    #[tokio::test]
    async fn a_body_at_its_end_or_dropped_does_not_wait() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(1, &cuts);
            let mut whole =
                WatchedStream::new(Full::new(Bytes::from_static(b"all")), &stalls, None);
            next(&mut whole).await.expect("its one frame");
            assert_eq!(stalls.waiting(), 0, "nothing more to hold");
            let mut endless = WatchedStream::new(endless(), &stalls, None);
            next(&mut endless).await.expect("a frame");
            assert_eq!(stalls.waiting(), 1);
            drop(endless);
            assert_eq!(stalls.waiting(), 0);
            drop(whole);
            assert!(stalls.state.borrow().streams.is_empty());
            assert_eq!(cut_for(&cuts, "overload"), 0);
        })
        .await;
    }
}
