//! Trace and span ids as OTLP carries them (16 and 8 bytes), with the
//! lowercase hex form Jaeger, Zipkin and OTLP/JSON write.

use std::fmt;
use std::str::FromStr;

/// A 16-byte trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

/// An id that is not valid hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a hex id of the expected length")]
pub struct IdError(pub String);

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex into `out`, right-aligned: shorter input is zero-padded on the
/// left (Zipkin's 64-bit trace ids).
fn decode_into(text: &str, out: &mut [u8]) -> Result<(), IdError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > out.len() * 2 || !bytes.len().is_multiple_of(2) {
        return Err(IdError(text.to_owned()));
    }
    let offset = out.len() - bytes.len() / 2;
    for (i, pair) in bytes.chunks(2).enumerate() {
        let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
            return Err(IdError(text.to_owned()));
        };
        out[offset + i] = hi << 4 | lo;
    }
    Ok(())
}

/// Decodes 1 to `out.len() * 2` hex digits into `out`, zero-padded on the
/// left, as Zipkin's `Span.normalizeTraceId` pads ids shorter than its
/// lengths (an odd number of digits included).
fn decode_padded(text: &str, out: &mut [u8]) -> Result<(), IdError> {
    let width = out.len() * 2;
    if text.is_empty() || text.len() > width || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdError(text.to_owned()));
    }
    decode_into(&format!("{text:0>width$}"), out)
}

fn write_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl TraceId {
    /// From OTLP bytes: exactly 16, not all zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 16] = bytes.try_into().ok()?;
        (id != [0; 16]).then_some(Self(id))
    }

    /// Parses 32 hex digits, or 16 for a 64-bit id (zero-padded on the left).
    pub fn parse_lenient(text: &str) -> Result<Self, IdError> {
        let mut id = [0u8; 16];
        if text.len() != 32 && text.len() != 16 {
            return Err(IdError(text.to_owned()));
        }
        decode_into(text, &mut id)?;
        Ok(Self(id))
    }

    /// Parses a Zipkin trace id: 1 to 32 hex digits, zero-padded on the
    /// left as Zipkin pads them. An all-zero id parses (OTLP's validation
    /// refuses it, as Zipkin does).
    pub fn parse_zipkin(text: &str) -> Result<Self, IdError> {
        let mut id = [0u8; 16];
        decode_padded(text, &mut id)?;
        Ok(Self(id))
    }
}

impl FromStr for TraceId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::parse_lenient(text)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl SpanId {
    /// From OTLP bytes: exactly 8, not all zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 8] = bytes.try_into().ok()?;
        (id != [0; 8]).then_some(Self(id))
    }

    /// Parses a Zipkin span id: 1 to 16 hex digits, zero-padded on the
    /// left as Zipkin pads them.
    pub fn parse_zipkin(text: &str) -> Result<Self, IdError> {
        let mut id = [0u8; 8];
        decode_padded(text, &mut id)?;
        Ok(Self(id))
    }

    /// The id as a big-endian integer (how the store keeps it).
    pub fn as_u64(self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// The id from the store's integer.
    pub fn from_u64(value: u64) -> Self {
        Self(value.to_be_bytes())
    }
}

impl FromStr for SpanId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        let mut id = [0u8; 8];
        if text.len() != 16 {
            return Err(IdError(text.to_owned()));
        }
        decode_into(text, &mut id)?;
        Ok(Self(id))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_pads_64_bit_trace_ids() {
        let id: TraceId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        let short: TraceId = "8448eb211c80319c".parse().unwrap();
        assert_eq!(short.to_string(), "00000000000000008448eb211c80319c");
        assert!("xyz".parse::<TraceId>().is_err());
        assert!(
            "0af7651916cd43dd8448eb211c80319"
                .parse::<TraceId>()
                .is_err()
        );
        let span: SpanId = "b7ad6b7169203331".parse().unwrap();
        assert_eq!(SpanId::from_u64(span.as_u64()), span);
        assert_eq!(TraceId::from_bytes(&[0; 16]), None);
        assert_eq!(SpanId::from_bytes(&[1; 7]), None);
    }

    #[test]
    fn zipkin_ids_shorter_than_their_length_are_zero_padded() {
        let trace = |text: &str| TraceId::parse_zipkin(text).map(|id| id.to_string());
        let span = |text: &str| SpanId::parse_zipkin(text).map(|id| id.to_string());
        assert_eq!(trace("abc").unwrap(), format!("{:0>32}", "abc"));
        assert_eq!(
            trace("8448eb211c80319c").unwrap(),
            format!("{:0>32}", "8448eb211c80319c")
        );
        assert_eq!(
            trace("18448eb211c80319c").unwrap(),
            format!("{:0>32}", "18448eb211c80319c")
        );
        assert_eq!(
            trace("0AF7651916CD43DD8448EB211C80319C").unwrap(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span("1").unwrap(), "0000000000000001");
        assert_eq!(span("4d1e00c0db9010d").unwrap(), "04d1e00c0db9010d");
        assert_eq!(span("b7ad6b7169203331").unwrap(), "b7ad6b7169203331");
        for bad in ["", "xyz", "0x1", " 1", "0af7651916cd43dd8448eb211c80319c0"] {
            assert!(trace(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "g", "-1", "b7ad6b71692033310"] {
            assert!(span(bad).is_err(), "{bad:?}");
        }
    }
}
