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
//! [`Stalls`], one per worker, knows every such body ([`WatchedStream`]).
//! A body *waits* from the frame it hands on until its reader asks for the
//! next; a sweep every [`SWEEP_INTERVAL`] calls it *stalled* once its wait
//! began before the sweep before (its reader took nothing for at least an
//! interval: a healthy stream waits a round trip for its peer's window,
//! not a second). Stalled bodies are bounded
//! - **in time**: one whose stream has been idle either way for the stream
//!   idle timeout is cut, as Envoy's `stream_idle_timeout` counts a wait
//!   for the peer's window as idle (at most two intervals late);
//! - **in number**: past the worker's share of
//!   `spec.overload.maxStalledStreams`, those that have waited longest are
//!   cut, as Envoy's overload action `reset_high_memory_stream` resets the
//!   streams that hold the most.
//!
//! A cut drops the body's source, which frees what the stream held (a
//! response's upstream stream is reset; an upload's window stays shut).
//! The body ends with [`Cut`] when next asked for a frame. Cuts are counted
//! in `tracemesh_agent_stalled_streams_cut_total` and logged at WARN, a
//! line per sweep.
//!
//! Per frame this costs a few `Cell` updates; the sweep, which runs while
//! any watched body is open, does the rest.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use slab::Slab;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::stream_idle::StreamClock;

/// How often a worker looks for stalled bodies: also how long a reader
/// must take nothing for its body to count as stalled.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many tasks a body's cut wakes at most.
const CUT_WAKERS: usize = 4;

/// Why the agent stopped reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// Its reader took nothing, and nothing passed the other way, for the
    /// stream idle timeout (`spec.downstream.streamIdleTimeout`).
    #[error("stream idle timeout: its reader took nothing for {0:?}")]
    StreamIdle(Duration),
    /// More bodies were stalled than the agent holds
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
    /// The number the next wait gets: waits are numbered in the order they
    /// begin.
    next_wait: Cell<u64>,
    /// Most bodies stalled at once; past it those that have waited longest
    /// are cut.
    limit: usize,
    cut_idle: IntCounter,
    cut_overload: IntCounter,
}

struct State {
    streams: Slab<Rc<dyn Stall>>,
    /// Whether the sweep runs.
    sweeping: bool,
    /// `next_wait` at the last sweep, and when it ran: a wait numbered
    /// below it began before that sweep.
    last_sweep: (u64, Instant),
}

/// What [`Stalls`] needs of a watched body, whatever its source.
trait Stall {
    /// The number of the wait it is in: its last frame handed on and the
    /// next not asked for yet.
    fn waiting(&self) -> Option<u64>;
    /// Its stream's idle clock.
    fn clock(&self) -> Option<Rc<StreamClock>>;
    /// Drops its source; the body ends with `why` when next asked. Whether
    /// it was cut now (not before).
    fn cut(&self, why: Cut) -> bool;
    /// Ready with the cut once there is one; else pending, `cx` woken by
    /// the cut.
    fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<Cut>;
}

/// A handle on a watched body's cut, for whoever hands the body on and
/// waits on something else meanwhile (an attempt whose upload hyper sends
/// to an HTTP/2 upstream only as the upstream takes it).
#[derive(Clone)]
pub struct CutSignal(Rc<dyn Stall>);

impl CutSignal {
    /// Ready with the cut once the agent has stopped reading the body,
    /// pending (`cx` woken by the cut) until then.
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<Cut> {
        self.0.poll_cut(cx)
    }
}

impl Stalls {
    /// A worker's, cutting past `limit` stalled bodies (at least 1); cuts
    /// are counted in `cuts` (`tracemesh_agent_stalled_streams_cut_total`,
    /// by `reason`).
    pub fn new(limit: usize, cuts: &prometheus::IntCounterVec) -> Rc<Self> {
        Rc::new(Self {
            state: RefCell::new(State {
                streams: Slab::new(),
                sweeping: false,
                last_sweep: (0, Instant::now()),
            }),
            next_wait: Cell::new(0),
            limit: limit.max(1),
            cut_idle: cuts.with_label_values(&["stream_idle_timeout"]),
            cut_overload: cuts.with_label_values(&["overload"]),
        })
    }

    fn register(self: &Rc<Self>, stream: Rc<dyn Stall>) -> usize {
        let (key, start) = {
            let mut state = self.state.borrow_mut();
            let key = state.streams.insert(stream);
            let start = !std::mem::replace(&mut state.sweeping, true);
            if start {
                // The sweep counts from its start, not from its last run.
                state.last_sweep = (self.next_wait.get(), Instant::now());
            }
            (key, start)
        };
        if start {
            tokio::task::spawn_local(self.clone().sweep());
        }
        key
    }

    fn remove(&self, key: usize) {
        self.state.borrow_mut().streams.try_remove(key);
    }

    /// A wait begins: its number.
    fn begin_wait(&self) -> u64 {
        let number = self.next_wait.get();
        self.next_wait.set(number + 1);
        number
    }

    /// Cuts the stalled bodies whose streams have been idle for their
    /// timeout, then, past the limit, those of the rest that have waited
    /// longest; `false` once no body is watched (the sweep ends).
    fn sweep_once(&self, now: Instant) -> bool {
        let (idle, mut stalled) = {
            let mut state = self.state.borrow_mut();
            let (mark, since) =
                std::mem::replace(&mut state.last_sweep, (self.next_wait.get(), now));
            let mut idle = Vec::new();
            let mut stalled = Vec::new();
            for (_, stream) in &state.streams {
                let Some(number) = stream.waiting().filter(|number| *number < mark) else {
                    continue;
                };
                // Its reader has taken nothing since the last sweep at
                // least: a clock no timer started counts from then.
                match stream.clock() {
                    Some(clock) if clock.expired(since, now) => {
                        idle.push((stream.clone(), clock.idle()));
                    }
                    _ => stalled.push((number, stream.clone())),
                }
            }
            (idle, stalled)
        };
        let (mut cut_idle, mut cut_overload) = (0, 0);
        for (stream, timeout) in idle {
            if stream.cut(Cut::StreamIdle(timeout)) {
                self.cut_idle.inc();
                cut_idle += 1;
            }
        }
        if stalled.len() > self.limit {
            let over = stalled.len() - self.limit;
            stalled.select_nth_unstable_by_key(over - 1, |(number, _)| *number);
            for (_, stream) in &stalled[..over] {
                if stream.cut(Cut::Overload) {
                    self.cut_overload.inc();
                    cut_overload += 1;
                }
            }
        }
        drop(stalled);
        if cut_idle + cut_overload > 0 {
            tracing::warn!(
                stream_idle_timeout = cut_idle,
                overload = cut_overload,
                limit = self.limit,
                "stopped reading stalled HTTP/2 streams"
            );
        }
        let mut state = self.state.borrow_mut();
        if state.streams.is_empty() {
            state.sweeping = false;
            return false;
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
    /// Whoever waits on [`WatchedStream::poll_cut`] or a [`CutSignal`],
    /// woken by the cut: the task reading the body, and the request's own
    /// (a few at most; past [`CUT_WAKERS`] the oldest is forgotten).
    cut_wakers: RefCell<SmallVec<[Waker; CUT_WAKERS]>>,
}

enum Source<B> {
    Open(B),
    Cut(Cut),
}

impl<B> Watched<B> {
    fn cut_reason(&self) -> Option<Cut> {
        match &*self.source.borrow() {
            Source::Open(_) => None,
            Source::Cut(why) => Some(*why),
        }
    }
}

impl<B: Body + Unpin + 'static> Stall for Watched<B> {
    fn waiting(&self) -> Option<u64> {
        self.wait.get()
    }

    fn clock(&self) -> Option<Rc<StreamClock>> {
        self.clock.borrow().clone()
    }

    fn cut(&self, why: Cut) -> bool {
        // Never borrowed across an await: the sweep runs between polls.
        let Ok(mut source) = self.source.try_borrow_mut() else {
            return false;
        };
        if matches!(*source, Source::Cut(_)) {
            return false;
        }
        let old = std::mem::replace(&mut *source, Source::Cut(why));
        drop(source);
        self.wait.set(None);
        // Dropping the source resets its stream, outside the borrow.
        drop(old);
        for waker in self.cut_wakers.take() {
            waker.wake();
        }
        true
    }

    fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<Cut> {
        if let Some(why) = self.cut_reason() {
            return Poll::Ready(why);
        }
        let mut wakers = self.cut_wakers.borrow_mut();
        if !wakers.iter().any(|waiting| waiting.will_wake(cx.waker())) {
            if wakers.len() == CUT_WAKERS {
                wakers.remove(0);
            }
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
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
            cut_wakers: RefCell::default(),
        });
        let key = stalls.register(watched.clone());
        Self {
            watched,
            key,
            stalls: stalls.clone(),
        }
    }

    /// Times it by its stream's idle `clock` from now on.
    pub fn time_by(&self, clock: Option<Rc<StreamClock>>) {
        *self.watched.clock.borrow_mut() = clock;
    }

    /// Why the agent stopped reading it, if it has.
    pub fn cut_reason(&self) -> Option<Cut> {
        self.watched.cut_reason()
    }

    /// Ready with the cut once the agent has stopped reading the body,
    /// pending (`cx` woken by the cut) until then: for a reader that waits
    /// on its peer rather than on the body (the agent's HTTP/1.1 client
    /// while its writes wait).
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<Cut> {
        self.watched.poll_cut(cx)
    }

    /// A handle on its cut that outlives it.
    pub fn signal(&self) -> CutSignal {
        CutSignal(self.watched.clone())
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
        watched.wait.set(None);
        let polled = match &mut *watched.source.borrow_mut() {
            Source::Open(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                // A data frame with more to come: the body waits for its
                // reader until asked again.
                if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data())
                    && !body.is_end_stream()
                {
                    watched.wait.set(Some(this.stalls.begin_wait()));
                }
                polled
            }
            Source::Cut(why) => return Poll::Ready(Some(Err(WatchedError::Cut(*why)))),
        };
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
    use http_body_util::{BodyExt, Full};
    use prometheus::{IntCounterVec, Opts};

    use super::*;

    /// A body with a frame always ready, as a fast upstream's; `dropped`
    /// is set once it is dropped.
    struct Endless {
        dropped: Rc<Cell<bool>>,
    }

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            self.dropped.set(true);
        }
    }

    fn endless() -> Endless {
        Endless {
            dropped: Rc::default(),
        }
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

    fn sleep_ms(ms: u64) -> tokio::time::Sleep {
        tokio::time::sleep(Duration::from_millis(ms))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_its_reader_stops_asking_for_is_cut_after_the_stream_idle_timeout() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(8, &cuts);
            let idle = Duration::from_secs(5);
            let source = endless();
            let dropped = source.dropped.clone();
            let mut stalled = WatchedStream::new(source, &stalls, Some(StreamClock::new(idle)));
            let mut read = WatchedStream::new(endless(), &stalls, Some(StreamClock::new(idle)));
            next(&mut stalled).await.expect("a frame");
            // The reader that keeps asking is never cut. The one that does
            // not is stalled at the sweep at 2 s (its wait began before the
            // one at 1 s), its clock counted from 1 s; it is cut at the
            // first sweep from 6 s.
            for _ in 0..11 {
                sleep_ms(500).await;
                next(&mut read)
                    .await
                    .expect("a frame from the body being read");
            }
            assert_eq!(cut_for(&cuts, "stream_idle_timeout"), 0, "cut by 5.5 s");
            assert!(!dropped.get());
            for _ in 0..2 {
                sleep_ms(500).await;
                next(&mut read)
                    .await
                    .expect("a frame from the body being read");
            }
            assert_eq!(cut_for(&cuts, "stream_idle_timeout"), 1, "not cut by 6.5 s");
            assert!(dropped.get(), "the cut drops the source");
            assert_eq!(stalled.cut_reason(), Some(Cut::StreamIdle(idle)));
            match next(&mut stalled).await {
                Err(WatchedError::Cut(Cut::StreamIdle(timeout))) => assert_eq!(timeout, idle),
                other => panic!("expected the cut, got {:?}", other.map(|_| ())),
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn frames_the_other_way_keep_a_stalled_body_from_its_idle_cut() {
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

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_the_stalled_body_waiting_longest_is_cut() {
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
            next(&mut bodies[2]).await.expect("a frame");
            sleep_ms(1500).await;
            assert_eq!(
                cut_for(&cuts, "overload"),
                0,
                "cut before two sweeps saw it"
            );
            sleep_ms(1000).await;
            assert_eq!(cut_for(&cuts, "overload"), 1);
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert_eq!(bodies[1].poll_cut(&mut cx), Poll::Ready(Cut::Overload));
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
            sleep_ms(5000).await;
            assert_eq!(
                cut_for(&cuts, "overload"),
                1,
                "two stalled bodies are within the limit"
            );
        })
        .await;
    }

    /// Healthy streams wait for their readers only between frames: however
    /// many do so at once, none is stalled.
    #[tokio::test(start_paused = true)]
    async fn bodies_read_again_within_a_sweep_are_never_cut() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(1, &cuts);
            let clock = || Some(StreamClock::new(Duration::from_millis(500)));
            let mut bodies: Vec<_> = (0..8)
                .map(|_| WatchedStream::new(endless(), &stalls, clock()))
                .collect();
            for _ in 0..50 {
                for body in &mut bodies {
                    next(body).await.expect("a frame");
                }
                sleep_ms(300).await;
            }
            assert_eq!(
                cut_for(&cuts, "overload") + cut_for(&cuts, "stream_idle_timeout"),
                0
            );
        })
        .await;
    }

    /// The sweep runs while bodies are watched, ends with the last, and
    /// starts again with the next.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_runs_only_while_bodies_are_watched() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(1, &cuts);
            let sweeping = || stalls.state.borrow().sweeping;
            let mut whole =
                WatchedStream::new(Full::new(Bytes::from_static(b"all")), &stalls, None);
            next(&mut whole).await.expect("its one frame");
            assert_eq!(
                whole.watched.wait.get(),
                None,
                "at its end, it does not wait"
            );
            assert!(sweeping());
            drop(whole);
            sleep_ms(1100).await;
            assert!(!sweeping(), "the sweep ended with the last body");
            let idle = Some(StreamClock::new(Duration::from_secs(1)));
            let mut body = WatchedStream::new(endless(), &stalls, idle);
            assert!(sweeping());
            next(&mut body).await.expect("a frame");
            sleep_ms(3100).await;
            assert_eq!(
                cut_for(&cuts, "stream_idle_timeout"),
                1,
                "the new sweep cut it"
            );
        })
        .await;
    }

    /// The cut wakes every task that waits on it: the body's reader and
    /// the request's own task, holding a signal.
    #[tokio::test(start_paused = true)]
    async fn the_cut_wakes_whoever_waits_on_it() {
        on_a_worker(async {
            let cuts = cuts();
            let stalls = Stalls::new(8, &cuts);
            let idle = Duration::from_secs(2);
            let mut body = WatchedStream::new(endless(), &stalls, Some(StreamClock::new(idle)));
            next(&mut body).await.expect("a frame");
            let signal = body.signal();
            let other = tokio::task::spawn_local(async move {
                std::future::poll_fn(|cx| signal.poll_cut(cx)).await
            });
            let started = Instant::now();
            let cut = std::future::poll_fn(|cx| body.poll_cut(cx)).await;
            assert_eq!(cut, Cut::StreamIdle(idle));
            assert_eq!(other.await.unwrap(), Cut::StreamIdle(idle));
            let waited = started.elapsed();
            assert!(
                waited >= idle && waited <= idle + 2 * SWEEP_INTERVAL,
                "cut after {waited:?}"
            );
        })
        .await;
    }
}
