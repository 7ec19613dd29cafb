//! Envoy's `stream_idle_timeout` for one request: a stream is idle when
//! nothing has passed in *either* direction for the timeout. Both of the
//! request's bodies — the client's, on its way up, and the upstream's
//! response, on its way down — touch one [`StreamClock`]; each waits on it
//! with its own [`IdleTimer`]. So a request body left open while a long
//! response streams (gRPC bidirectional streaming, an HTTP/2 upload whose
//! answer streams back) is not cut, and a response whose upstream falls
//! silent mid-body is.
//!
//! Until a timer waits on the clock, a frame passing costs a `Cell` read
//! and no reading of the time: a request whose bodies never have to wait
//! for their peer (a GET whose answer arrives with its head, as most do)
//! never arms a timer. Once one waits, every frame either way reads the
//! time.
//!
//! A body is timed only while it is polled. One held up by a peer that
//! stops reading is not polled; the agent's HTTP/1.1 client runs the
//! request body's timer while its writes wait
//! ([`UpstreamBody::poll_stalled`](super::body::UpstreamBody::poll_stalled)),
//! and a downstream connection whose writes wait is watched by
//! [`write_stall`](super::write_stall).

use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One request's idle clock, shared by its two bodies (on its worker's
/// thread).
#[derive(Debug)]
pub struct StreamClock {
    idle: Duration,
    /// When a frame last passed either way, kept once a timer waits on the
    /// clock (`None` until then).
    last: Cell<Option<Instant>>,
}

impl StreamClock {
    /// A clock for a stream cut after `idle` with nothing passing
    /// (`spec.downstream.streamIdleTimeout`).
    pub fn new(idle: Duration) -> Rc<Self> {
        Rc::new(Self {
            idle,
            last: Cell::new(None),
        })
    }

    /// The timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A frame passed, in either direction.
    pub fn touch(&self) {
        if self.last.get().is_some() {
            self.last.set(Some(Instant::now()));
        }
    }

    /// Whether the stream has been idle for the timeout at `now`; a clock
    /// no timer has started is started at `since`, a time by which the
    /// caller knows nothing had passed either way.
    pub fn expired(&self, since: Instant, now: Instant) -> bool {
        if self.last.get().is_none() {
            self.last.set(Some(since));
        }
        self.deadline() <= now
    }

    /// When the stream will have been idle for the timeout, nothing passing
    /// meanwhile; the first call starts the clock (now counts as activity:
    /// frames before it were not timed).
    fn deadline(&self) -> Instant {
        let last = match self.last.get() {
            Some(last) => last,
            None => {
                let now = Instant::now();
                self.last.set(Some(now));
                now
            }
        };
        last + self.idle
    }
}

/// One body's wait on its stream's clock; the timer is made (and
/// registered with the runtime) only when the body first has to wait.
#[derive(Debug)]
pub struct IdleTimer {
    clock: Rc<StreamClock>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// Waits on `clock`.
    pub fn new(clock: Rc<StreamClock>) -> Self {
        Self { clock, sleep: None }
    }

    /// The clock it waits on.
    pub fn clock(&self) -> &StreamClock {
        &self.clock
    }

    /// Ready once nothing has passed either way for the timeout; pending
    /// (with `cx` registered) until then. A frame that passed while the
    /// timer slept moves its deadline on rather than waking anything.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let clock = &*self.clock;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(clock.deadline())));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = clock.deadline();
            if deadline <= sleep.deadline() {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expired(timer: &mut IdleTimer) {
        std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_with_nothing_passing_expires_after_the_timeout() {
        let clock = StreamClock::new(Duration::from_secs(5));
        let mut timer = IdleTimer::new(clock);
        let started = Instant::now();
        expired(&mut timer).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// The other direction's frames keep the stream alive: the timer
    /// expires the timeout after the last of them, not after its arming.
    #[tokio::test(start_paused = true)]
    async fn frames_the_other_way_move_the_deadline() {
        let clock = StreamClock::new(Duration::from_secs(5));
        let mut request = IdleTimer::new(clock.clone());
        let started = Instant::now();
        let touches = async {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                clock.touch();
            }
        };
        let (_, ()) = tokio::join!(expired(&mut request), touches);
        assert_eq!(started.elapsed(), Duration::from_secs(12 + 5));
    }

    /// Before any timer waits, a frame does not read the time; the first
    /// timer counts from its own arming.
    #[tokio::test(start_paused = true)]
    async fn frames_before_any_timer_are_not_timed() {
        let clock = StreamClock::new(Duration::from_secs(5));
        clock.touch();
        assert!(clock.last.get().is_none());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut timer = IdleTimer::new(clock);
        let armed = Instant::now();
        expired(&mut timer).await;
        assert_eq!(armed.elapsed(), Duration::from_secs(5));
    }
}
