//! Why an upstream stream ended without its whole response, read from the
//! error the client (hyper's, or the agent's own HTTP/1.1 one) gave, in the
//! words of Envoy's `StreamResetReason`: the response flag it earns and
//! the reason Envoy writes in its details and local replies.

use std::error::Error;

use crate::flags::ResponseFlags;

/// An HTTP/2 server reset its stream with `NO_ERROR` (or its connection
/// went away with it) before the response's `END_STREAM`: a response cut
/// short (UR), as Envoy counts it, though hyper ends such a body as if it
/// were whole. (`RST_STREAM(NO_ERROR)` after `END_STREAM` — a server that
/// answered in full and wants no more of the request — is a clean end,
/// RFC 9113 §8.1.)
#[derive(Debug, thiserror::Error)]
#[error("the upstream reset the stream (NO_ERROR) before the end of its response")]
pub struct ResetBeforeEnd;

/// Why an upstream stream ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The connection closed or broke under the stream (UC).
    ConnectionTermination,
    /// The server reset the stream (`RST_STREAM`, RFC 9113 §6.4) with a
    /// code the others do not name (UR).
    RemoteReset,
    /// The server refused the stream, unprocessed: `REFUSED_STREAM`, or
    /// above the last stream its GOAWAY said it processed (RFC 9113 §8.7,
    /// §6.8; nghttp2 closes those as refused in Envoy) (UR).
    RemoteRefusedStreamReset,
    /// The server reset the stream with `CONNECT_ERROR` (UR).
    RemoteConnectError,
    /// The server broke the protocol: an HTTP/1.1 body cut short of its
    /// framing or a malformed chunk, an HTTP/2 `PROTOCOL_ERROR` reset, or
    /// a frame the agent's side could not accept (UPE).
    ProtocolError,
}

impl ResetReason {
    /// The reason of `error`, an upstream response's (or request's)
    /// failure: an HTTP/2 error among its causes by its code and side,
    /// else a framing break by its I/O error's kind (the agent's HTTP/1.1
    /// client and hyper's HTTP/1 decoder report a body ending short of its
    /// length or last chunk as `UnexpectedEof`, a malformed chunk as
    /// `InvalidInput` or `InvalidData`), else the connection's end.
    pub fn of(error: &(dyn Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<ResetBeforeEnd>() {
                return Self::RemoteReset;
            }
            if let Some(h2) = error.downcast_ref::<h2::Error>() {
                return Self::of_h2(h2);
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::InvalidInput
                        | std::io::ErrorKind::InvalidData
                )
            {
                return Self::ProtocolError;
            }
            cause = error.source();
        }
        Self::ConnectionTermination
    }

    fn of_h2(h2: &h2::Error) -> Self {
        match (h2.is_remote(), h2.reason()) {
            (true, _) if h2.is_go_away() => Self::RemoteRefusedStreamReset,
            (true, Some(h2::Reason::REFUSED_STREAM)) if h2.is_reset() => {
                Self::RemoteRefusedStreamReset
            }
            (true, Some(h2::Reason::CONNECT_ERROR)) if h2.is_reset() => Self::RemoteConnectError,
            (true, Some(h2::Reason::PROTOCOL_ERROR)) if h2.is_reset() => Self::ProtocolError,
            (true, Some(_)) if h2.is_reset() => Self::RemoteReset,
            (false, Some(h2::Reason::PROTOCOL_ERROR | h2::Reason::FRAME_SIZE_ERROR)) => {
                Self::ProtocolError
            }
            _ => Self::ConnectionTermination,
        }
    }

    /// Whether `error` is the server's reset of the stream with
    /// `PROTOCOL_ERROR` (not the agent's own finding of a broken frame).
    pub fn is_remote_protocol_reset(error: &(dyn Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(h2) = error.downcast_ref::<h2::Error>() {
                return h2.is_remote()
                    && h2.is_reset()
                    && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR);
            }
            cause = error.source();
        }
        false
    }

    /// The response flag: UC, UR or UPE.
    pub fn flag(self) -> ResponseFlags {
        match self {
            Self::ConnectionTermination => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            Self::RemoteReset | Self::RemoteRefusedStreamReset | Self::RemoteConnectError => {
                ResponseFlags::UPSTREAM_REMOTE_RESET
            }
            Self::ProtocolError => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
        }
    }

    /// Envoy's details for a stream that ended so after its response began
    /// (`upstream_reset_after_response_started{<reason>}`).
    pub fn details_after_response_started(self) -> &'static str {
        match self {
            Self::ConnectionTermination => {
                "upstream_reset_after_response_started{connection_termination}"
            }
            Self::RemoteReset => "upstream_reset_after_response_started{remote_reset}",
            Self::RemoteRefusedStreamReset => {
                "upstream_reset_after_response_started{remote_refused_stream_reset}"
            }
            Self::RemoteConnectError => {
                "upstream_reset_after_response_started{remote_error_with_CONNECT_request}"
            }
            Self::ProtocolError => "upstream_reset_after_response_started{protocol_error}",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_side_and_code_of_an_http2_error_and_the_kind_of_an_io_one() {
        let io = |kind| std::io::Error::new(kind, "x");
        let cases: [(Box<dyn Error + 'static>, ResetReason); 4] = [
            (
                Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)),
                // (a reason alone is the agent's side: a local reset)
                ResetReason::ConnectionTermination,
            ),
            (
                Box::new(io(std::io::ErrorKind::UnexpectedEof)),
                ResetReason::ProtocolError,
            ),
            (
                Box::new(io(std::io::ErrorKind::InvalidData)),
                ResetReason::ProtocolError,
            ),
            (
                Box::new(io(std::io::ErrorKind::ConnectionReset)),
                ResetReason::ConnectionTermination,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(ResetReason::of(error.as_ref()), reason, "{error:?}");
        }
    }
}
