//! Trace context on the wire: W3C `traceparent` (read and written), B3 single
//! and multi headers (read, and rewritten when the caller used them, so a
//! Zipkin-instrumented app sees the agent's span as its parent).

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A caller's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span, parent of ours.
    pub span_id: SpanId,
    /// Whether the caller sampled the trace.
    pub sampled: bool,
}

/// Reads the caller's context: `traceparent` first, then B3.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    if let Some(tp) = headers.get(TRACEPARENT) {
        return parse_traceparent(tp.as_bytes());
    }
    if let Some(b3) = headers.get(B3) {
        return parse_b3_single(b3.as_bytes());
    }
    parse_b3_multi(headers)
}

/// Parses `version-traceid-spanid-flags`; unknown future versions are read
/// by their first four fields, as the spec asks.
pub fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && (parts.next().is_some() || s.len() != 55) {
        return None;
    }
    if trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || ![trace, span, flags].iter().all(|p| is_lower_hex(p))
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A 64-bit B3 trace id is the low half of a 128-bit one.
fn b3_trace_id(hex: &str) -> Option<TraceId> {
    let id = match hex.len() {
        16 | 32 => TraceId::from_hex(hex).ok()?,
        _ => return None,
    };
    (id != TraceId::INVALID).then_some(id)
}

fn b3_sampled(value: &str) -> Option<bool> {
    match value {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let trace = parts.next()?;
    let span = parts.next()?; // a lone sampling flag carries no context
    let sampled = parts.next().map_or(Some(true), b3_sampled)?;
    Some(Incoming {
        trace_id: b3_trace_id(trace)?,
        span_id: SpanId::from_hex(span)
            .ok()
            .filter(|s| *s != SpanId::INVALID && span.len() == 16)?,
        sampled,
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let trace_id = b3_trace_id(get(&B3_TRACE_ID)?)?;
    let span = get(&B3_SPAN_ID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID && span.len() == 16)?;
    let debug = get(&B3_FLAGS) == Some("1");
    let sampled = debug || get(&B3_SAMPLED).is_none_or(|v| b3_sampled(v).unwrap_or(false));
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
    })
}

/// The `traceparent` value naming `span_id` as the parent.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex_into(&trace_id.to_bytes(), &mut buf[3..35]);
    buf[35] = b'-';
    hex_into(&span_id.to_bytes(), &mut buf[36..52]);
    buf[52] = b'-';
    hex_into(&[flags.to_u8()], &mut buf[53..55]);
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Writes the context for the next hop: always `traceparent`, and any B3
/// headers the request carries are rewritten too, so every instrumented app
/// (W3C or Zipkin) finds this hop's span as its parent.
pub fn inject(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId, flags: TraceFlags) {
    headers.insert(TRACEPARENT, traceparent(trace_id, span_id, flags));
    let sampled = if flags.is_sampled() { "1" } else { "0" };
    if headers.contains_key(B3)
        && let Ok(v) = HeaderValue::try_from(format!("{trace_id}-{span_id}-{sampled}"))
    {
        headers.insert(B3, v);
    }
    if headers.contains_key(B3_TRACE_ID) {
        let pairs = [
            (B3_TRACE_ID, trace_id.to_string()),
            (B3_SPAN_ID, span_id.to_string()),
        ];
        for (name, value) in pairs {
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        }
        headers.remove(B3_PARENT_SPAN_ID);
        headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_traceparent() {
        let ctx = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled);
        let written = traceparent(ctx.trace_id, ctx.span_id, TraceFlags::SAMPLED);
        assert_eq!(written.to_str().unwrap(), TP);
    }

    #[test]
    fn refuses_bad_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn reads_b3() {
        let mut headers = HeaderMap::new();
        headers.insert(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        let ctx = extract(&headers).expect("b3 single");
        assert!(ctx.sampled);

        let mut headers = HeaderMap::new();
        headers.insert(B3_TRACE_ID, "64fe8b2a57d3eff7".parse().unwrap());
        headers.insert(B3_SPAN_ID, "e457b5a2e4d86bd1".parse().unwrap());
        headers.insert(B3_SAMPLED, "0".parse().unwrap());
        let ctx = extract(&headers).expect("b3 multi");
        assert_eq!(ctx.trace_id.to_string(), "000000000000000064fe8b2a57d3eff7");
        assert!(!ctx.sampled);
    }
}
