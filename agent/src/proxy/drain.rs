//! Draining on stop, as Istio drains a sidecar on SIGTERM: pilot-agent asks
//! Envoy to drain its *inbound* listeners only
//! (`drain_listeners?inboundonly&graceful`), so that an application still
//! finishing requests can call out through its sidecar, then stops Envoy
//! once `terminationDrainDuration` has passed.
//!
//! Here a stop moves every worker from [`Phase::Serving`] to
//! [`Phase::Draining`]: the HTTP connections of the draining listeners (the
//! inbound one, a gateway's) are told to end gracefully, and one whose
//! HTTP begins meanwhile is served and then told to end too (Envoy's
//! graceful drain keeps accepting until its drain time ends); the outbound listeners,
//! HTTP and TCP, explicit or captured, keep accepting and proxying, their
//! connections untold. The drain ends (every
//! worker at [`Phase::Ended`], whatever is still open closed) when the drain
//! duration has passed or as soon as [`OpenConnections`] counts none left.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Where a worker is in its life: what its
/// [`WorkerHandle`](super::WorkerHandle) tells it, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Every listener accepts.
    Serving,
    /// The draining listeners' HTTP connections are told to end (one
    /// accepted now is served, then told); the outbound listeners serve
    /// on.
    Draining,
    /// The drain is over: the worker closes what is left and returns.
    Ended,
}

/// Completes once `phase` has reached `at` (or its sender is gone: the
/// worker is ending either way).
pub(super) async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|now| *now >= at).await;
}

/// The downstream connections open on every proxy listener of every worker
/// (inbound and outbound, HTTP and TCP, a gateway's): what tells a drain
/// that nothing is left in flight. Envoy's `downstream_cx_active` over the
/// same listeners is what Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` reads.
#[derive(Debug, Default)]
pub struct OpenConnections {
    count: AtomicUsize,
    none_left: Notify,
}

/// One connection, counted by [`OpenConnections`] until dropped.
#[derive(Debug)]
pub(super) struct Open(Arc<OpenConnections>);

impl OpenConnections {
    /// Counts a connection just accepted, until the returned guard drops.
    pub(super) fn open(self: &Arc<Self>) -> Open {
        self.count.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// How many connections are open now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Completes once no connection is open (at once when none is).
    pub async fn none_left(&self) {
        loop {
            // Registered before the count is read: a last close between
            // the two still wakes this.
            let mut notified = pin!(self.none_left.notified());
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits until no connection is open or `period` has passed, whichever
    /// comes first; `true` when none was left.
    ///
    /// Istio's pilot-agent waits the whole `terminationDrainDuration` by
    /// default; with `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` it stops Envoy once
    /// no downstream connection is open on its listeners (inbound and
    /// outbound alike), checked after `MINIMUM_DRAIN_DURATION`. The agent
    /// has always stopped as soon as nothing was left, and still does,
    /// counting what Istio's option counts but without its minimum: an
    /// agent with no connection open stops at once, and one whose
    /// application keeps a connection to it (a request in flight, a
    /// keep-alive pool) serves that application's outbound calls until the
    /// period ends.
    pub async fn settle(&self, period: Duration) -> bool {
        tokio::time::timeout(period, self.none_left()).await.is_ok()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settles_at_once_when_nothing_is_open() {
        let open = Arc::new(OpenConnections::default());
        assert!(open.settle(Duration::from_secs(60)).await);
    }

    #[tokio::test]
    async fn settles_when_the_last_connection_closes() {
        let open = Arc::new(OpenConnections::default());
        let (first, second) = (open.open(), open.open());
        assert_eq!(open.count(), 2);
        let waiting = tokio::spawn({
            let open = open.clone();
            async move { open.settle(Duration::from_secs(60)).await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one connection is still open");
        drop(second);
        assert!(waiting.await.unwrap());
        assert_eq!(open.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_period_ends() {
        let open = Arc::new(OpenConnections::default());
        let _held = open.open();
        assert!(!open.settle(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn phases_are_reached_in_order() {
        let (tell, mut phase) = watch::channel(Phase::Serving);
        tell.send(Phase::Ended).unwrap();
        // Ending reaches draining too: connections told to end at a drain
        // are told at an end that came first.
        reached(&mut phase, Phase::Draining).await;
        // A worker whose handle is gone ends.
        let (tell, mut orphaned) = watch::channel(Phase::Serving);
        drop(tell);
        reached(&mut orphaned, Phase::Ended).await;
    }
}
