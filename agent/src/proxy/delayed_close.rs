//! Envoy's delayed close of downstream connections: when the agent ends an
//! HTTP connection whose client may still be sending (an upload the answer
//! came before, a request the agent will not read), closing the socket at
//! once with that data unread makes the kernel reset the connection, and a
//! client still writing loses the answer it was sent (its write fails
//! first). So once the agent's side is shut down (the answer flushed, FIN
//! sent), what the client still sends is read and discarded until it
//! closes its side, for at most [`DELAY`] and [`MAX_DISCARDED`] bytes, as
//! Envoy's `delayed_close_timeout` (1 s by default) waits before closing.
//!
//! A connection spliced after an upgrade (WebSocket) is read by the splice
//! until it ends: its shutdown is only a shutdown ([`Spliced`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest the agent waits for the client to close after its own side is
/// shut down (Envoy's `delayed_close_timeout` default).
pub const DELAY: Duration = Duration::from_secs(1);

/// Most bytes read and discarded while waiting: past it the connection is
/// closed (a client uploading without end is not read for ever).
pub const MAX_DISCARDED: u64 = 8 << 20;

/// Set when a connection is spliced after an upgrade: the splice reads it
/// (what the client sends after the agent's side closed is the upstream's),
/// so a shutdown waits for nothing.
#[derive(Debug, Clone, Default)]
pub struct Spliced(Arc<AtomicBool>);

impl Spliced {
    /// The connection is spliced from now on.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A downstream connection's I/O that waits for the client to close before
/// its shutdown completes.
pub struct DelayedClose<IO> {
    io: IO,
    spliced: Spliced,
    /// The client closed its side (a read returned end of stream or
    /// failed): nothing is left to wait for.
    client_done: bool,
    /// Set once the agent's side is shut down and the wait began.
    waiting: Option<Pin<Box<Sleep>>>,
    /// Bytes discarded while waiting.
    discarded: u64,
}

impl<IO> DelayedClose<IO> {
    /// Wraps `io`; `spliced` says when it is spliced.
    pub fn new(io: IO, spliced: Spliced) -> Self {
        Self {
            io,
            spliced,
            client_done: false,
            waiting: None,
            discarded: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> DelayedClose<IO> {
    /// Reads and discards until the client closes (ready), nothing more is
    /// there for now (pending), or the byte bound is passed (ready).
    fn discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            if self.client_done || self.discarded >= MAX_DISCARDED {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.discarded += buf.filled().len() as u64;
                }
                Poll::Ready(_) => self.client_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for DelayedClose<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                this.client_done = true;
            }
            Poll::Ready(Err(_)) => this.client_done = true,
            _ => {}
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DelayedClose<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Shuts the agent's side down, then completes once the client has
    /// closed its side, [`DELAY`] has passed or [`MAX_DISCARDED`] bytes
    /// were discarded.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.waiting.is_none() {
            std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            if this.client_done || this.spliced.0.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            this.waiting = Some(Box::pin(tokio::time::sleep(DELAY)));
        }
        if this.discard(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        match this.waiting.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_shutdown_waits_for_the_client_and_discards_what_it_sends() {
        let (agent, mut client) = tokio::io::duplex(1024);
        let mut agent = DelayedClose::new(agent, Spliced::default());
        agent.write_all(b"answer").await.unwrap();
        let shutdown = tokio::spawn(async move {
            agent.shutdown().await.unwrap();
            agent.discarded
        });
        // The client goes on sending past any buffer, then reads the
        // answer and closes.
        client.write_all(&vec![b'x'; 100_000]).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        drop(client);
        assert_eq!(shutdown.await.unwrap(), 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_waited_for_the_delay_only() {
        let (agent, _client) = tokio::io::duplex(1024);
        let mut agent = DelayedClose::new(agent, Spliced::default());
        let began = tokio::time::Instant::now();
        agent.shutdown().await.unwrap();
        assert_eq!(began.elapsed(), DELAY);
    }

    #[tokio::test]
    async fn a_client_that_closed_first_is_not_waited_for() {
        let (agent, client) = tokio::io::duplex(1024);
        let mut agent = DelayedClose::new(agent, Spliced::default());
        drop(client);
        let mut buf = [0u8; 8];
        assert_eq!(agent.read(&mut buf).await.unwrap(), 0);
        let began = std::time::Instant::now();
        agent.shutdown().await.unwrap();
        assert!(began.elapsed() < DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spliced_connection_shuts_down_at_once_and_keeps_its_reads() {
        let (agent, mut client) = tokio::io::duplex(1024);
        let spliced = Spliced::default();
        let mut agent = DelayedClose::new(agent, spliced.clone());
        spliced.set();
        client.write_all(b"for the upstream").await.unwrap();
        let began = tokio::time::Instant::now();
        agent.shutdown().await.unwrap();
        assert_eq!(began.elapsed(), Duration::ZERO);
        let mut buf = [0u8; 16];
        agent.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"for the upstream");
    }
}
