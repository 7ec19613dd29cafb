//! What an upstream HTTP/2 server allows: its `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (RFC 9113 §6.5.2), read from the connection's frames as they pass.
//!
//! When a connection is at the server's limit, hyper's client queues
//! further requests on it until a stream ends. Envoy's HTTP/2 pool instead
//! counts the limit in the connection's capacity (at most the cluster's
//! `max_concurrent_streams`, the DestinationRule's `maxConcurrentStreams`),
//! and a request that finds no connection with room opens one. hyper shows
//! the limit only on its connection future (`current_max_send_streams`),
//! which runs apart from the connection's I/O and is polled when a request
//! is sent, not when the server's SETTINGS arrive; so the pool's HTTP/2
//! socket (above TLS) passes every byte the server sends through a
//! [`SettingsScan`], which reads each frame header: a frame's payload is
//! skipped by its length, and only a SETTINGS frame's is read (and a
//! limit of 0 passed on to h2 as 1: [`SettingsScan`] says why).
//!
//! The limit follows h2's (hyper's HTTP/2) own: a starting limit until the
//! server's first SETTINGS, which sets it, or lifts it ([`NO_LIMIT`]: RFC
//! 9113 §6.5.2, "initially, there is no limit") when it does not carry the
//! parameter; a later SETTINGS changes it only when it carries it. The
//! starting limit is [`INITIAL_LIMIT`], or less where the pool has already
//! heard the server's limit on another connection (and so sets h2's own
//! starting limit to match).

use std::cell::Cell;
use std::rc::Rc;

/// The limit of a server whose first SETTINGS set none (RFC 9113 §6.5.2).
pub const NO_LIMIT: u64 = u64::MAX;

/// The most streams a connection may carry before its server's first
/// SETTINGS arrive: hyper's starting limit (its `initial_max_send_streams`,
/// which the pool sets to this, or to the server's limit as heard on
/// another connection when lower), the least RFC 9113 §6.5.2 recommends a
/// server allow.
pub const INITIAL_LIMIT: u32 = 100;

/// Frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// The SETTINGS frame type (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// The SETTINGS frame's ACK flag (RFC 9113 §6.5).
const ACK: u8 = 0x1;
/// One setting: a 16-bit identifier and a 32-bit value (RFC 9113 §6.5.1).
const SETTING_LEN: usize = 6;
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The most streams (a count) a connection's server lets this client open
/// at once: its `SETTINGS_MAX_CONCURRENT_STREAMS` as last received (the
/// starting limit before its first SETTINGS, [`NO_LIMIT`] after a first
/// SETTINGS without it). Shared between the socket's [`SettingsScan`] and
/// the pool that hands the connection's streams out; a single worker's, so
/// [`Cell`]s.
#[derive(Debug, Clone)]
pub struct ServerStreamLimit(Rc<Limit>);

#[derive(Debug)]
struct Limit {
    streams: Cell<u64>,
    /// Whether the server's first SETTINGS has been read.
    heard: Cell<bool>,
}

impl Default for ServerStreamLimit {
    fn default() -> Self {
        Self::starting_at(u64::from(INITIAL_LIMIT))
    }
}

impl ServerStreamLimit {
    /// A connection's limit that is `streams` until its server's first
    /// SETTINGS.
    pub fn starting_at(streams: u64) -> Self {
        Self(Rc::new(Limit {
            streams: Cell::new(streams),
            heard: Cell::new(false),
        }))
    }

    /// The server's limit (streams).
    pub fn get(&self) -> u64 {
        self.0.streams.get()
    }

    /// The server's limit once its first SETTINGS has been read (`None`
    /// before: the starting limit is the client's guess).
    pub fn heard(&self) -> Option<u64> {
        self.0.heard.get().then(|| self.get())
    }

    fn set(&self, streams: u64) {
        self.0.streams.set(streams);
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

/// Where the server's first SETTINGS frame stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// Not yet begun.
    Awaited,
    /// Being read; `set`: it has carried the limit so far.
    Reading { set: bool },
    /// Read.
    Read,
}

/// Reads the frames of a server's byte stream for its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`. The scan takes the bytes as they come,
/// in any pieces; it does not judge the frames (hyper's connection does, and
/// closes it on a malformed one).
///
/// A limit of 0 is passed on to h2 as 1, while the pool counts the 0 and
/// hands the connection no more streams. h2 holds a stream it may not open
/// until the server raises its limit or the connection ends: with no route
/// timeout (Istio's default) a request handed to the connection before the
/// 0 was read would wait for ever. Envoy sends the streams it attached to a
/// new connection before it reads the server's SETTINGS, and the server
/// refuses them (`REFUSED_STREAM`, RFC 9113 §5.1.2), which its router
/// retries as `refused-stream`; passed on as 1, such a stream goes out and
/// is refused the same way, whichever came first (a server that answers it
/// `PROTOCOL_ERROR` instead, as §5.1.2 also allows, is read as refusing it
/// where the request is sent, `forward`).
#[derive(Debug)]
pub struct SettingsScan {
    state: State,
    first: First,
    header: [u8; HEADER_LEN],
    setting: [u8; SETTING_LEN],
    setting_len: usize,
    limit: ServerStreamLimit,
}

impl SettingsScan {
    /// A scan from the start of a connection's server-to-client bytes,
    /// writing the limit it reads to `limit`.
    pub fn new(limit: ServerStreamLimit) -> Self {
        Self {
            state: State::Header(0),
            first: First::Awaited,
            header: [0; HEADER_LEN],
            setting: [0; SETTING_LEN],
            setting_len: 0,
            limit,
        }
    }

    /// Takes the next `bytes` the server sent, as they go on to h2: a
    /// limit of 0 goes on as 1 ([`SettingsScan`]), the rest unchanged.
    pub fn feed(&mut self, mut bytes: &mut [u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Header(got) => {
                    let take = (HEADER_LEN - got).min(bytes.len());
                    self.header[got..got + take].copy_from_slice(&bytes[..take]);
                    bytes = &mut bytes[take..];
                    if got + take < HEADER_LEN {
                        self.state = State::Header(got + take);
                        return;
                    }
                    let [a, b, c, kind, flags, ..] = self.header;
                    let left = u32::from_be_bytes([0, a, b, c]) as usize;
                    let settings = kind == SETTINGS && flags & ACK == 0;
                    if settings && self.first == First::Awaited {
                        self.first = First::Reading { set: false };
                    }
                    self.setting_len = 0;
                    self.state = State::Payload { left, settings };
                    if left == 0 {
                        self.end_payload();
                    }
                }
                State::Payload { left, settings } => {
                    let take = left.min(bytes.len());
                    if settings {
                        for byte in &mut bytes[..take] {
                            self.setting[self.setting_len] = *byte;
                            self.setting_len += 1;
                            if self.setting_len == SETTING_LEN {
                                if self.apply() == Some(0) {
                                    // (the value's last byte, always in
                                    // this piece: 0 becomes 1)
                                    *byte = 1;
                                }
                                self.setting_len = 0;
                            }
                        }
                    }
                    bytes = &mut bytes[take..];
                    if take == left {
                        self.end_payload();
                    } else {
                        self.state = State::Payload {
                            left: left - take,
                            settings,
                        };
                    }
                }
            }
        }
    }

    /// One whole setting read: the limit it sets, if it is the limit.
    fn apply(&mut self) -> Option<u32> {
        let [a, b, c, d, e, f] = self.setting;
        if u16::from_be_bytes([a, b]) != MAX_CONCURRENT_STREAMS {
            return None;
        }
        let streams = u32::from_be_bytes([c, d, e, f]);
        self.limit.set(u64::from(streams));
        if let First::Reading { set } = &mut self.first {
            *set = true;
        }
        Some(streams)
    }

    /// A frame's payload has ended; the next header follows. The first
    /// SETTINGS without the limit lifts the starting one, as h2 does
    /// (`Counts::apply_remote_settings`).
    fn end_payload(&mut self) {
        self.state = State::Header(0);
        if let First::Reading { set } = self.first {
            if !set {
                self.limit.set(NO_LIMIT);
            }
            self.limit.0.heard.set(true);
            self.first = First::Read;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: header and payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("a frame's length");
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    fn entries(entries: &[(u16, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(id, value)| {
                let mut e = id.to_be_bytes().to_vec();
                e.extend(value.to_be_bytes());
                e
            })
            .collect()
    }

    fn settings(list: &[(u16, u32)]) -> Vec<u8> {
        frame(SETTINGS, 0, 0, &entries(list))
    }

    /// A server's bytes, and where its last frame begins: its SETTINGS
    /// (window size, then the limit), a DATA frame past 64 KiB whose
    /// payload holds a SETTINGS frame with another limit, an ACK that
    /// (wrongly) carries one too, a SETTINGS with an unknown flag, a
    /// trailing half setting and no limit, and a last SETTINGS raising it.
    fn stream() -> (Vec<u8>, usize) {
        let mut bytes = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 2)]);
        let mut data = vec![0; 70_000];
        data.extend(settings(&[(MAX_CONCURRENT_STREAMS, 7)]));
        bytes.extend(frame(0x0, 0, 1, &data));
        bytes.extend(frame(
            SETTINGS,
            ACK,
            0,
            &entries(&[(MAX_CONCURRENT_STREAMS, 8)]),
        ));
        let mut odd = entries(&[(0x1, 4096)]);
        odd.extend([0, 3, 0]);
        bytes.extend(frame(SETTINGS, 0x2, 0, &odd));
        let last = bytes.len();
        bytes.extend(settings(&[(MAX_CONCURRENT_STREAMS, 100_000)]));
        (bytes, last)
    }

    #[test]
    fn reads_the_limit_in_whatever_pieces_the_bytes_come() {
        let (bytes, last) = stream();
        let first = HEADER_LEN + 2 * SETTING_LEN;
        for piece in [1, 2, 5, 6, 9, 10, 13, 4096, bytes.len()] {
            let limit = ServerStreamLimit::default();
            let mut scan = SettingsScan::new(limit.clone());
            assert_eq!(limit.get(), 100, "the starting limit");
            let mut fed = 0;
            let mut passed = bytes.clone();
            for chunk in passed.chunks_mut(piece) {
                scan.feed(chunk);
                fed += chunk.len();
                if fed < first {
                    assert_eq!(limit.heard(), None, "pieces of {piece}, {fed} bytes fed");
                }
                if (first..=last).contains(&fed) {
                    assert_eq!(limit.get(), 2, "pieces of {piece}, {fed} bytes fed");
                    assert_eq!(limit.heard(), Some(2), "pieces of {piece}, {fed} bytes fed");
                }
            }
            assert_eq!(limit.get(), 100_000, "pieces of {piece}");
            assert!(passed == bytes, "pieces of {piece}: passed on unchanged");
        }
    }

    #[test]
    fn a_limit_of_0_is_counted_and_passed_on_as_1() {
        let mut bytes = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 0)]);
        bytes.extend(frame(0x0, 0, 1, &entries(&[(MAX_CONCURRENT_STREAMS, 0)])));
        bytes.extend(settings(&[(MAX_CONCURRENT_STREAMS, 0), (0x1, 0)]));
        let mut want = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 1)]);
        want.extend(frame(0x0, 0, 1, &entries(&[(MAX_CONCURRENT_STREAMS, 0)])));
        want.extend(settings(&[(MAX_CONCURRENT_STREAMS, 1), (0x1, 0)]));
        for piece in [1, 2, 5, 6, 9, 10, 13, bytes.len()] {
            let limit = ServerStreamLimit::default();
            let mut scan = SettingsScan::new(limit.clone());
            let mut passed = bytes.clone();
            for chunk in passed.chunks_mut(piece) {
                scan.feed(chunk);
            }
            assert_eq!(limit.heard(), Some(0), "pieces of {piece}");
            // (a DATA payload that looks like the setting is left alone)
            assert!(passed == want, "pieces of {piece}: {passed:?}");
        }
    }

    #[test]
    fn a_first_settings_without_the_limit_lifts_the_starting_one() {
        for mut first in [settings(&[(0x1, 4096)]), settings(&[])] {
            let limit = ServerStreamLimit::starting_at(3);
            let mut scan = SettingsScan::new(limit.clone());
            assert_eq!((limit.get(), limit.heard()), (3, None));
            scan.feed(&mut first);
            assert_eq!(limit.heard(), Some(NO_LIMIT));
            scan.feed(&mut settings(&[(MAX_CONCURRENT_STREAMS, 0)]));
            assert_eq!(limit.get(), 0, "a server may allow none");
            scan.feed(&mut settings(&[(0x4, 1 << 20)]));
            assert_eq!(limit.get(), 0, "a later SETTINGS without it keeps it");
        }
    }
}
