//! A downstream connection whose client has stopped reading. Envoy's
//! `stream_idle_timeout` also bounds how long it waits for the peer to take
//! what it has to send; hyper does not poll a response body it cannot
//! write, so the body's own timer ([`stream_idle`](super::stream_idle))
//! never sees such a stall. The connection's writes do: [`Watched`] wraps
//! its I/O and notes when a write first has to wait and when one goes
//! through again, and [`WriteStall::stalled`] resolves once a write has
//! waited for the timeout with nothing written meanwhile.
//!
//! On the write path this costs one relaxed atomic load per write; the
//! time is read only when a write has to wait.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// One connection's write side: whether a write is waiting, since when.
#[derive(Debug)]
pub struct WriteStall {
    base: Instant,
    /// Nanoseconds after `base` (plus one) at which the waiting write first
    /// had to wait; 0: no write is waiting.
    blocked_since: AtomicU64,
    /// The watcher ([`stalled`](Self::stalled)), woken when a write starts
    /// waiting.
    watcher: AtomicWaker,
}

impl WriteStall {
    /// A connection's, as it is accepted.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            blocked_since: AtomicU64::new(0),
            watcher: AtomicWaker::new(),
        })
    }

    fn blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.blocked_since.store(since + 1, Ordering::Relaxed);
            self.watcher.wake();
        }
    }

    fn wrote(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Resolves once a write has waited `timeout` with nothing written
    /// meanwhile.
    pub async fn stalled(&self, timeout: Duration) {
        loop {
            let since = std::future::poll_fn(|cx| {
                self.watcher.register(cx.waker());
                match self.blocked_since.load(Ordering::Relaxed) {
                    0 => Poll::Pending,
                    since => Poll::Ready(since),
                }
            })
            .await;
            let deadline = self.base + Duration::from_nanos(since - 1) + timeout;
            tokio::time::sleep_until(deadline).await;
            if self.blocked_since.load(Ordering::Relaxed) == since {
                return;
            }
        }
    }
}

/// A connection's I/O, its writes watched by a [`WriteStall`].
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    stall: Arc<WriteStall>,
}

impl<IO> Watched<IO> {
    /// Wraps `io`, telling `stall` how its writes go.
    pub fn new(io: IO, stall: Arc<WriteStall>) -> Self {
        Self { io, stall }
    }

    /// Notes how a write went: one that waits starts a stall, one that
    /// writes something ends it. (A flush that completes ends nothing: a
    /// TCP stream's flush always does.)
    fn note(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.stall.blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.stall.wrote(),
            Poll::Ready(_) => {}
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if polled.is_pending() {
            this.stall.blocked();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_for_the_timeout_is_a_stall() {
        let stall = WriteStall::new();
        tokio::time::sleep(Duration::from_secs(10)).await;
        stall.blocked();
        let blocked = Instant::now();
        stall.stalled(Duration::from_secs(5)).await;
        assert_eq!(blocked.elapsed(), Duration::from_secs(5));
    }

    /// A write that goes through meanwhile ends the stall; the next wait
    /// counts from its own start.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_goes_through_ends_the_stall() {
        let stall = WriteStall::new();
        let started = Instant::now();
        let writes = async {
            stall.blocked();
            tokio::time::sleep(Duration::from_secs(3)).await;
            stall.wrote();
            tokio::time::sleep(Duration::from_secs(3)).await;
            stall.blocked();
            // Waiting again, as hyper polls a write that is still pending.
            stall.blocked();
        };
        tokio::join!(stall.stalled(Duration::from_secs(5)), writes);
        assert_eq!(started.elapsed(), Duration::from_secs(6 + 5));
    }
}
