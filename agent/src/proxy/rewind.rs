//! A stream whose first bytes were read to decide its protocol and are
//! handed out again before the rest: protocol detection on a connection
//! the agent already decrypted (inbound mTLS), where peeking the socket
//! would show ciphertext.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::capture::sniff::{MAX_SNIFF, Sniffed, sniff, sniff_final};

/// `inner` with `prefix` read back first.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: crate::tls::io::AsTcp> crate::tls::io::AsTcp for Rewind<T> {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self.inner.tcp()
    }
}

impl<T> Rewind<T> {
    /// `inner`, its first bytes `prefix` (already read off it).
    pub fn with_prefix(inner: T, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

/// Whether the first bytes of `io` are HTTP (HTTP/1.x or the HTTP/2
/// preface), reading until they decide, the client stops, or `timeout`
/// passes (zero: no limit); the bytes read come back first from the
/// returned stream.
///
/// # Errors
/// The stream's read errors.
pub async fn sniff_http<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> io::Result<(Rewind<T>, bool)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    let http = loop {
        let read = io.read_buf(&mut buf);
        let n = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(n) => n?,
                Err(_) => break is_http(&sniff_final(&buf)),
            },
            None => read.await?,
        };
        if n == 0 || buf.len() >= MAX_SNIFF {
            break is_http(&sniff_final(&buf));
        }
        match sniff(&buf) {
            Sniffed::NeedMore => {}
            decided => break is_http(&decided),
        }
    };
    Ok((
        Rewind {
            prefix: buf.freeze(),
            inner: io,
        },
        http,
    ))
}

fn is_http(sniffed: &Sniffed<'_>) -> bool {
    matches!(sniffed, Sniffed::Http1 | Sniffed::Http2)
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_bytes_read_to_decide_come_back_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (mut rewound, http) = sniff_http(server, Duration::from_secs(30)).await.unwrap();
        assert!(http);
        client.write_all(b"more").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nmore");
    }

    #[tokio::test]
    async fn opaque_bytes_and_silence_are_not_http() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"\x00\x01binary").await.unwrap();
        let (_, http) = sniff_http(server, Duration::from_secs(30)).await.unwrap();
        assert!(!http);
        let (_client, server) = tokio::io::duplex(64);
        let (_, http) = sniff_http(server, Duration::from_millis(20)).await.unwrap();
        assert!(
            !http,
            "a silent client is TCP once the detection timeout passes"
        );
    }
}
