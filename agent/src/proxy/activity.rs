//! Whether a downstream connection is doing anything: the requests in
//! flight on it, and since when it has had none — for Envoy's
//! `idle_timeout` ("the period in which there are no active requests") —
//! and whether it was cut because its client stopped reading (the
//! requests it ends then are the stream idle timeout's, not the client's).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

/// One connection's requests in flight (on its worker's thread).
#[derive(Debug)]
pub struct Activity {
    active: Cell<usize>,
    idle_since: Cell<Instant>,
    stalled: Cell<bool>,
}

/// A request in flight; dropping it (the request is over) ends it.
#[derive(Debug)]
pub struct Stream {
    activity: Rc<Activity>,
    /// Still counted among the connection's requests.
    counted: bool,
}

impl Activity {
    /// A connection just accepted: idle from now.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            stalled: Cell::new(false),
        })
    }

    /// A request starts.
    pub fn start(self: &Rc<Self>) -> Stream {
        self.active.set(self.active.get() + 1);
        Stream {
            activity: self.clone(),
            counted: true,
        }
    }

    /// The connection is being cut: its client took nothing of what the
    /// agent had to write for the stream idle timeout.
    pub fn cut_stalled(&self) {
        self.stalled.set(true);
    }

    /// Resolves once the connection has had no request in flight for
    /// `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.active.get() > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let deadline = self.idle_since.get() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Stream {
    /// Whether the request ends because its connection was cut for a
    /// client that stopped reading.
    pub fn was_cut_stalled(&self) -> bool {
        self.activity.stalled.get()
    }

    /// The request stops counting among the connection's (an upgraded
    /// stream, whose connection hyper no longer serves: until the upgrade
    /// is handed over, the connection's idle timeout bounds it again).
    pub fn leave_connection(&mut self) {
        if !std::mem::replace(&mut self.counted, false) {
            return;
        }
        let activity = &self.activity;
        let left = activity.active.get().saturating_sub(1);
        activity.active.set(left);
        if left == 0 {
            activity.idle_since.set(Instant::now());
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.leave_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_not_the_first() {
        let activity = Activity::new();
        let started = Instant::now();
        let stream = activity.start();
        tokio::time::sleep(Duration::from_secs(50)).await;
        drop(stream);
        activity.idle_for(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(80));
    }

    /// An upgraded stream leaves its connection at the 101: the
    /// connection is idle from then, though the request goes on.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_left_its_connection_counts_once() {
        let activity = Activity::new();
        let mut upgraded = activity.start();
        let other = activity.start();
        tokio::time::sleep(Duration::from_secs(5)).await;
        upgraded.leave_connection();
        upgraded.leave_connection();
        assert_eq!(
            activity.active.get(),
            1,
            "the other request is still in flight"
        );
        drop(other);
        let idle_from = Instant::now();
        activity.idle_for(Duration::from_secs(30)).await;
        assert_eq!(idle_from.elapsed(), Duration::from_secs(30));
        drop(upgraded);
        assert_eq!(activity.active.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_asks_is_idle_from_its_accept() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
