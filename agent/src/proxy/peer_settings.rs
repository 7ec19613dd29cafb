//! What an upstream HTTP/2 server allows: its `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (RFC 9113 §6.5.2), read from the connection's frames as they pass.
//!
//! hyper's client keeps the server's SETTINGS to itself, and when a
//! connection is at the server's limit it queues further requests on that
//! connection until a stream ends. Envoy's HTTP/2 pool instead counts the
//! limit in the connection's capacity (at most the cluster's
//! `max_concurrent_streams`, the DestinationRule's `maxConcurrentStreams`),
//! and a request that finds no connection with room opens one. To do the
//! same, [`SettingsWatch`] sits between the connection and its socket (above
//! TLS) and reads every frame header the server sends: a frame's payload is
//! skipped by its length, and only a SETTINGS frame's is read.
//!
//! Until the server's first SETTINGS arrives a connection has no limit of
//! the server's ([`NO_LIMIT`]), as RFC 9113 §5.1.2 has it.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The limit of a server that has set none (RFC 9113 §5.1.2: "initially,
/// there is no limit").
pub const NO_LIMIT: u64 = u64::MAX;

/// Frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// The SETTINGS frame type and its ACK flag (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// One setting: a 16-bit identifier and a 32-bit value (RFC 9113 §6.5.1).
const SETTING_LEN: usize = 6;
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// A connection's server's `SETTINGS_MAX_CONCURRENT_STREAMS` as last
/// received: the most streams it lets this client open at once
/// ([`NO_LIMIT`] until it sets one). Shared between the socket's reader
/// ([`SettingsWatch`]) and the pool that hands the connection's streams
/// out; a single worker's, so a [`Cell`].
#[derive(Debug, Clone)]
pub struct PeerStreams(Rc<Cell<u64>>);

impl Default for PeerStreams {
    fn default() -> Self {
        Self(Rc::new(Cell::new(NO_LIMIT)))
    }
}

impl PeerStreams {
    /// The server's limit (streams), [`NO_LIMIT`] while it has set none.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Where the scan of the server's bytes stands.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header: this many of its bytes so far.
    Header(usize),
    /// In a frame's payload: this many bytes left; `settings` when it is a
    /// SETTINGS frame's (not an ACK), whose settings are read.
    Payload { left: usize, settings: bool },
}

/// Reads the frames of a server's byte stream for its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. The scan takes the bytes as they come,
/// in any pieces; it does not judge the frames (hyper's connection does, and
/// closes it on a malformed one).
#[derive(Debug)]
pub struct SettingsScan {
    state: State,
    header: [u8; HEADER_LEN],
    setting: [u8; SETTING_LEN],
    setting_len: usize,
    limit: PeerStreams,
}

impl SettingsScan {
    /// A scan from the start of a connection's server-to-client bytes,
    /// writing the limit it reads to `limit`.
    pub fn new(limit: PeerStreams) -> Self {
        Self {
            state: State::Header(0),
            header: [0; HEADER_LEN],
            setting: [0; SETTING_LEN],
            setting_len: 0,
            limit,
        }
    }

    /// Takes the next `bytes` the server sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Header(got) => {
                    let take = (HEADER_LEN - got).min(bytes.len());
                    self.header[got..got + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if got + take < HEADER_LEN {
                        self.state = State::Header(got + take);
                        return;
                    }
                    let [a, b, c, kind, flags, ..] = self.header;
                    let left = u32::from_be_bytes([0, a, b, c]) as usize;
                    let settings = kind == SETTINGS && flags & ACK == 0;
                    self.setting_len = 0;
                    self.state = if left == 0 {
                        State::Header(0)
                    } else {
                        State::Payload { left, settings }
                    };
                }
                State::Payload { left, settings } => {
                    let take = left.min(bytes.len());
                    if settings {
                        for &byte in &bytes[..take] {
                            self.setting[self.setting_len] = byte;
                            self.setting_len += 1;
                            if self.setting_len == SETTING_LEN {
                                self.apply();
                                self.setting_len = 0;
                            }
                        }
                    }
                    bytes = &bytes[take..];
                    self.state = if take == left {
                        State::Header(0)
                    } else {
                        State::Payload {
                            left: left - take,
                            settings,
                        }
                    };
                }
            }
        }
    }

    /// One whole setting read.
    fn apply(&self) {
        let [a, b, c, d, e, f] = self.setting;
        if u16::from_be_bytes([a, b]) == MAX_CONCURRENT_STREAMS {
            self.limit
                .0
                .set(u64::from(u32::from_be_bytes([c, d, e, f])));
        }
    }
}

/// A client socket whose incoming bytes pass a [`SettingsScan`] on their
/// way to the HTTP/2 connection; writes go straight through.
pub struct SettingsWatch<T> {
    io: T,
    scan: SettingsScan,
}

impl<T> SettingsWatch<T> {
    /// `io`, its server's limit written to `limit` as it arrives.
    pub fn new(io: T, limit: PeerStreams) -> Self {
        Self {
            io,
            scan: SettingsScan::new(limit),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.scan.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: header and payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = entries
            .iter()
            .flat_map(|(id, value)| {
                let mut e = id.to_be_bytes().to_vec();
                e.extend(value.to_be_bytes());
                e
            })
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    /// A server's bytes: its SETTINGS (window size, then the limit), a
    /// DATA frame whose payload looks like a SETTINGS frame with another
    /// limit, an ACK carrying nothing, and a later SETTINGS raising it.
    fn stream() -> Vec<u8> {
        let mut bytes = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 2)]);
        bytes.extend(frame(0x0, 0, 1, &settings(&[(MAX_CONCURRENT_STREAMS, 7)])));
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        let first = bytes.len();
        bytes.extend(settings(&[(MAX_CONCURRENT_STREAMS, 100)]));
        assert!(first < bytes.len());
        bytes
    }

    #[test]
    fn reads_the_limit_in_whatever_pieces_the_bytes_come() {
        let bytes = stream();
        let before_last = bytes.len() - (HEADER_LEN + SETTING_LEN);
        for piece in [1, 2, 5, 6, 9, 10, 13, bytes.len()] {
            let limit = PeerStreams::default();
            let mut scan = SettingsScan::new(limit.clone());
            assert_eq!(limit.get(), NO_LIMIT, "none before the server's SETTINGS");
            let mut fed = 0;
            for chunk in bytes.chunks(piece) {
                scan.feed(chunk);
                fed += chunk.len();
                if fed <= before_last && fed >= HEADER_LEN + 2 * SETTING_LEN {
                    assert_eq!(limit.get(), 2, "pieces of {piece}, {fed} bytes fed");
                }
            }
            assert_eq!(limit.get(), 100, "pieces of {piece}");
        }
    }

    #[test]
    fn settings_without_the_limit_leave_it_as_it_was() {
        let limit = PeerStreams::default();
        let mut scan = SettingsScan::new(limit.clone());
        scan.feed(&settings(&[(0x1, 4096), (0x4, 1 << 20)]));
        assert_eq!(limit.get(), NO_LIMIT);
        scan.feed(&settings(&[(MAX_CONCURRENT_STREAMS, 0)]));
        assert_eq!(limit.get(), 0, "a server may allow none");
    }
}
