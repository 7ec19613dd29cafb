//! Protocol detection on a live connection: peeks (never reads) the first
//! bytes until [`sniff`] decides, the client stops sending, or the
//! detection timeout passes (Istio's `protocolDetectionTimeout`); the
//! stream is left exactly as it was for whatever handles it next.

use std::io;
use std::time::Duration;

use rustix::net::RecvFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::sniff::{MAX_CLIENT_HELLO, MAX_SNIFF, Sniffed, sniff, sniff_tls};

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// TLS: passed through by SNI, or terminated as mTLS when ALPN says so.
    Tls {
        /// The ClientHello's server name, lower-cased.
        sni: Option<String>,
        /// The ALPN protocols offered, in order.
        alpn: Vec<String>,
    },
    /// Bytes of no known protocol (server-first protocols included).
    Opaque {
        /// The client sent nothing decisive before the timeout.
        timed_out: bool,
    },
}

impl Detected {
    /// What `sniffed` says; a ClientHello too large to inspect is an
    /// [`io::ErrorKind::InvalidData`] error, for the caller to close the
    /// connection as Envoy's `tls_inspector` closes it.
    fn from_sniffed(sniffed: Sniffed<'_>, timed_out: bool) -> io::Result<Self> {
        Ok(match sniffed {
            Sniffed::Http1 => Detected::Http1,
            Sniffed::Http2 => Detected::Http2,
            Sniffed::Tls(hello) => Detected::Tls {
                sni: hello.sni.as_deref().map(str::to_ascii_lowercase),
                alpn: hello
                    .alpn()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            },
            Sniffed::NeedMore | Sniffed::Opaque => Detected::Opaque { timed_out },
            Sniffed::TooLarge => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a ClientHello longer than the {MAX_CLIENT_HELLO} bytes read of it"),
                ));
            }
        })
    }
}

/// Waits for the connection's first bytes and says what they are. A zero
/// `timeout` waits as long as the client takes (Istio's `0s`); otherwise
/// the connection is [`Detected::Opaque`] once it passes, as a
/// server-first protocol would be.
///
/// # Errors
/// The socket's read errors (a reset before any byte, for instance).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> io::Result<Detected> {
    detect_with(stream, timeout, sniff).await
}

/// [`detect`] for TLS alone: whether the connection starts with a
/// ClientHello (and what it offers). Any other first byte decides at once
/// ([`Detected::Opaque`]); for a port whose protocol is declared, where
/// only mTLS is in question.
///
/// # Errors
/// The socket's read errors.
pub async fn detect_tls(stream: &TcpStream, timeout: Duration) -> io::Result<Detected> {
    detect_with(stream, timeout, sniff_tls).await
}

/// What `detected` leaves for the next reader to replay: after a detection
/// that timed out, the bytes it peeked, read off the socket now (none
/// otherwise). Waiting for more, the detection cleared the socket's
/// readiness with those bytes still unread; nothing announces them again,
/// so whoever reads next would wait until the client sends another byte (a
/// client that wrote `GET` or half a ClientHello and waits for an answer
/// would wait for ever). The caller replays them ([`crate::proxy`]'s
/// `Rewind`).
///
/// # Errors
/// The socket's read errors.
pub fn take_undecided(detected: &Detected, stream: &TcpStream) -> io::Result<bytes::Bytes> {
    if *detected != (Detected::Opaque { timed_out: true }) {
        return Ok(bytes::Bytes::new());
    }
    let mut buf = vec![0u8; MAX_SNIFF];
    let mut len = 0;
    while len < buf.len() {
        // A plain recv: tokio's own reads would first see the readiness
        // cleared and not try.
        match rustix::net::recv(stream, &mut buf[len..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((n, _)) => len += n,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(len);
    Ok(buf.into())
}

async fn detect_with(
    stream: &TcpStream,
    timeout: Duration,
    judge: fn(&[u8]) -> Sniffed<'_>,
) -> io::Result<Detected> {
    let mut buf = vec![0u8; MAX_SNIFF];
    let mut seen = 0;
    let wait = peek_until_decided(stream, &mut buf, &mut seen, judge);
    if timeout.is_zero() {
        return wait.await;
    }
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => {
            let sniffed = match judge(&buf[..seen]) {
                Sniffed::NeedMore => Sniffed::Opaque,
                decided => decided,
            };
            Detected::from_sniffed(sniffed, true)
        }
    }
}

async fn peek_until_decided(
    stream: &TcpStream,
    buf: &mut [u8],
    seen: &mut usize,
    judge: fn(&[u8]) -> Sniffed<'_>,
) -> io::Result<Detected> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // The client half-closed: the bytes there are all there will be.
        let closed = ready.is_read_closed();
        // Peek inside `try_io`: readiness is cleared only when no byte
        // arrived beyond those already judged, and a byte arriving after
        // this peek makes the stream readable again, so none is missed
        // (tokio never clears the closed bit).
        let peeked = stream.try_io(Interest::READABLE, || {
            let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
            let (n, _) = rustix::net::recv(stream, &mut *buf, flags)?;
            if n != 0 && n == *seen && !closed {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match peeked {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let ended = closed || n == 0 || n == buf.len();
        *seen = n.max(*seen);
        let bytes = &buf[..*seen];
        let sniffed = match judge(bytes) {
            Sniffed::NeedMore if ended => Sniffed::Opaque,
            sniffed => sniffed,
        };
        if sniffed != Sniffed::NeedMore {
            return Detected::from_sniffed(sniffed, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_request_line_in_pieces_is_http1_and_nothing_is_consumed() {
        let (mut client, server) = pair().await;
        let server = std::sync::Arc::new(server);
        let detecting = {
            let server = server.clone();
            tokio::spawn(async move { detect(&server, Duration::from_secs(60)).await })
        };
        let mut detecting = std::pin::pin!(detecting);
        for piece in [&b"GE"[..], b"T /prod", b"uctpage HTTP/1.1"] {
            client.write_all(piece).await.unwrap();
            // Undecided bytes never decide: still waiting after a while.
            let early = tokio::time::timeout(Duration::from_millis(30), &mut detecting).await;
            assert!(early.is_err(), "decided on {piece:?} alone: {early:?}");
        }
        client.write_all(b"\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(detecting.await.unwrap().unwrap(), Detected::Http1);
        let mut server = std::sync::Arc::into_inner(server).expect("one owner");
        let mut start = [0u8; 3];
        server.read_exact(&mut start).await.unwrap();
        assert_eq!(
            &start, b"GET",
            "peeked bytes are still there for the handler"
        );
    }

    #[tokio::test]
    async fn h2_preface_and_tls_hello() {
        let (mut client, server) = pair().await;
        client
            .write_all(crate::capture::sniff::H2_PREFACE)
            .await
            .unwrap();
        assert_eq!(
            detect(&server, Duration::from_secs(30)).await.unwrap(),
            Detected::Http2
        );
        let (mut client, server) = pair().await;
        // A ClientHello with no extensions: TLS, no SNI.
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut record = vec![
            0x16,
            3,
            1,
            0,
            (body.len() + 4) as u8,
            1,
            0,
            0,
            body.len() as u8,
        ];
        record.extend(body);
        client.write_all(&record).await.unwrap();
        let got = detect(&server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            got,
            Detected::Tls {
                sni: None,
                alpn: Vec::new()
            }
        );
    }

    #[tokio::test]
    async fn a_silent_client_times_out_as_opaque() {
        let (_client, server) = pair().await;
        let got = detect(&server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(got, Detected::Opaque { timed_out: true });
    }

    #[tokio::test]
    async fn a_client_that_stops_undecided_is_opaque() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET /").await.unwrap();
        client.shutdown().await.unwrap();
        let got = detect(&server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got, Detected::Opaque { timed_out: false });
        let (client, server) = pair().await;
        drop(client);
        let got = detect(&server, Duration::ZERO).await.unwrap();
        assert_eq!(
            got,
            Detected::Opaque { timed_out: false },
            "closed without a byte"
        );
    }

    #[tokio::test]
    async fn bytes_a_timed_out_detection_peeked_are_taken_for_replay() {
        // `GET` and then silence: undecided until the timeout, with the
        // socket's readiness cleared while waiting. A tokio read would now
        // wait for a byte that never comes; take_undecided reads them.
        let (mut client, server) = pair().await;
        client.write_all(b"GET").await.unwrap();
        let got = detect(&server, Duration::from_millis(100)).await.unwrap();
        assert_eq!(got, Detected::Opaque { timed_out: true });
        let stuck = tokio::time::timeout(Duration::from_millis(200), server.readable()).await;
        assert!(
            stuck.is_err(),
            "the readiness was cleared with bytes unread"
        );
        assert_eq!(&take_undecided(&got, &server).unwrap()[..], b"GET");
        client.write_all(b" more").await.unwrap();
        server.readable().await.unwrap();
        let mut rest = [0u8; 16];
        let n = server.try_read(&mut rest).unwrap();
        assert_eq!(&rest[..n], b" more", "what follows is read as ever");
        assert!(take_undecided(&got, &server).unwrap().is_empty());
        let decided = Detected::Opaque { timed_out: false };
        assert!(
            take_undecided(&decided, &server).unwrap().is_empty(),
            "only after a timeout"
        );
    }

    #[tokio::test]
    async fn tls_detection_decides_on_the_first_byte() {
        let (mut client, server) = pair().await;
        client.write_all(b"G").await.unwrap();
        let got = detect_tls(&server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            got,
            Detected::Opaque { timed_out: false },
            "not a handshake record"
        );
    }
}
