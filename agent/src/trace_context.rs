//! Trace context on the wire: W3C `traceparent`/`tracestate` (read and
//! written) and B3, single and multi header (read, and rewritten when the
//! caller used them, so a Zipkin-instrumented app sees the agent's span as
//! its parent). The caller's sampling decision is followed and passed on
//! unchanged in every format written.
//!
//! Reading, in order (W3C first, as tracemesh is W3C-first):
//! 1. exactly one valid `traceparent` line: its trace, span and `sampled`
//!    flag, with `tracestate` (all its lines); two `traceparent` lines are
//!    invalid (W3C Trace Context §3.2: the trace restarts);
//! 2. B3 single `b3`: `{trace}-{span}[-{0|1|d}[-{parent}]]`, or a bare
//!    decision `0`, `1`, `d`;
//! 3. B3 multi `x-b3-traceid`/`x-b3-spanid` with `x-b3-sampled` (`1`,
//!    `true`, `0`, `false`) and `x-b3-flags: 1` (debug, which implies
//!    sampled) — the decision alone when no ids come with it.
//!
//! A B3 context without a sampling state defers the decision to this agent's
//! sampler (B3's "defer"). `tracestate` never survives without a valid
//! `traceparent`.

use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceId, TraceState};

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

/// A caller's sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Record the trace (`sampled`, `1`).
    Sample,
    /// Record it, and tell the next hops it is a debug trace (B3 `d`,
    /// `x-b3-flags: 1`).
    Debug,
    /// Do not record it (`0`).
    Drop,
    /// No decision: this agent's sampler decides.
    Defer,
}

impl Decision {
    /// Whether the trace is recorded, when the caller decided.
    pub fn sampled(self) -> Option<bool> {
        match self {
            Self::Sample | Self::Debug => Some(true),
            Self::Drop => Some(false),
            Self::Defer => None,
        }
    }
}

/// What a caller said about the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's trace and span (the parent of ours), when it sent them.
    pub parent: Option<(TraceId, SpanId)>,
    /// Its sampling decision.
    pub decision: Decision,
    /// Vendor state from `tracestate` (only with a valid `traceparent`).
    pub trace_state: TraceState,
}

impl Caller {
    fn new_trace() -> Self {
        Self {
            parent: None,
            decision: Decision::Defer,
            trace_state: TraceState::default(),
        }
    }
}

/// Reads the caller's context and decision.
pub fn extract(headers: &HeaderMap) -> Caller {
    if let Some((trace_id, span_id, sampled)) = single_traceparent(headers) {
        return Caller {
            parent: Some((trace_id, span_id)),
            decision: if sampled {
                Decision::Sample
            } else {
                Decision::Drop
            },
            trace_state: trace_state(headers),
        };
    }
    if !carries_b3(headers) {
        return Caller::new_trace();
    }
    let b3 = headers
        .get(B3)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_b3_single);
    b3.or_else(|| parse_b3_multi(headers))
        .unwrap_or_else(Caller::new_trace)
}

fn single_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId, bool)> {
    let mut lines = headers.get_all(TRACEPARENT).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    parse_traceparent(first.as_bytes())
}

/// Every `tracestate` line, combined (W3C allows several); invalid → empty.
fn trace_state(headers: &HeaderMap) -> TraceState {
    let mut combined = String::new();
    for line in headers.get_all(TRACESTATE) {
        let Ok(line) = line.to_str() else {
            return TraceState::default();
        };
        if !line.trim().is_empty() {
            if !combined.is_empty() {
                combined.push(',');
            }
            combined.push_str(line);
        }
    }
    if combined.is_empty() {
        return TraceState::default();
    }
    TraceState::from_str(&combined).unwrap_or_default()
}

/// Parses `version-traceid-spanid-flags`; unknown future versions are read
/// by their first four fields, as the spec asks. `(trace, span, sampled)`.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, bool)> {
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
    Some((trace_id, span_id, flags & 1 == 1))
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

fn b3_span_id(hex: &str) -> Option<SpanId> {
    let id = SpanId::from_hex(hex).ok().filter(|_| hex.len() == 16)?;
    (id != SpanId::INVALID).then_some(id)
}

/// B3's sampling state: `1`/`0`/`d` (and `true`/`false` in `x-b3-sampled`).
fn b3_decision(value: &str) -> Option<Decision> {
    match value {
        "1" | "true" => Some(Decision::Sample),
        "0" | "false" => Some(Decision::Drop),
        "d" => Some(Decision::Debug),
        _ => None,
    }
}

fn parse_b3_single(value: &str) -> Option<Caller> {
    let value = value.trim();
    if let Some(decision) = b3_decision(value) {
        return Some(Caller {
            decision,
            ..Caller::new_trace()
        });
    }
    let mut parts = value.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let decision = match parts.next() {
        None => Decision::Defer,
        Some(state) => b3_decision(state)?,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Caller {
        parent: Some((trace_id, span_id)),
        decision,
        trace_state: TraceState::default(),
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<Caller> {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let decision = if get(&B3_FLAGS).map(str::trim) == Some("1") {
        Decision::Debug
    } else {
        match get(&B3_SAMPLED) {
            Some(v) => b3_decision(v.trim()).unwrap_or(Decision::Defer),
            None => Decision::Defer,
        }
    };
    let ids = get(&B3_TRACE_ID)
        .and_then(b3_trace_id)
        .zip(get(&B3_SPAN_ID).and_then(b3_span_id));
    if ids.is_none() && decision == Decision::Defer {
        return None;
    }
    Some(Caller {
        parent: ids,
        decision,
        trace_state: TraceState::default(),
    })
}

/// The `traceparent` value naming `span_id` as the parent. Only the
/// `sampled` flag is written (the one flag version 00 defines).
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex_into(&trace_id.to_bytes(), &mut buf[3..35]);
    buf[35] = b'-';
    hex_into(&span_id.to_bytes(), &mut buf[36..52]);
    buf[52] = b'-';
    hex_into(&[u8::from(sampled)], &mut buf[53..55]);
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Writes the context for the next hop, naming `span` (whose parent is
/// `parent`, for B3's parent-span fields): always `traceparent`, with
/// `tracestate` when the trace carries vendor state; and the B3 format(s)
/// the request already carries, rewritten, so every instrumented app (W3C or
/// Zipkin) finds this hop's span as its parent. A B3 debug decision stays a
/// debug decision.
pub fn inject(headers: &mut HeaderMap, span: &SpanContext, parent: Option<SpanId>) {
    let (trace_id, span_id, sampled) = (span.trace_id(), span.span_id(), span.is_sampled());
    headers.insert(TRACEPARENT, traceparent(trace_id, span_id, sampled));
    let state = span.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(value) if !value.is_empty() => headers.insert(TRACESTATE, value),
        _ => crate::header_scan::remove(headers, &TRACESTATE),
    };
    if !carries_b3(headers) {
        return;
    }
    if let Some(b3) = headers.get(B3) {
        let debug = sampled && b3_single_is_debug(b3.as_bytes());
        let state = match (debug, sampled) {
            (true, _) => "d",
            (false, true) => "1",
            (false, false) => "0",
        };
        let value = match parent {
            Some(parent) => format!("{trace_id}-{span_id}-{state}-{parent}"),
            None => format!("{trace_id}-{span_id}-{state}"),
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(B3, value);
        }
    }
    let multi = [&B3_TRACE_ID, &B3_SPAN_ID, &B3_SAMPLED, &B3_FLAGS];
    if multi.iter().any(|name| headers.contains_key(*name)) {
        let ids = [
            (B3_TRACE_ID, trace_id.to_string()),
            (B3_SPAN_ID, span_id.to_string()),
        ];
        for (name, value) in ids {
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        }
        match parent.and_then(|p| HeaderValue::try_from(p.to_string()).ok()) {
            Some(parent) => headers.insert(B3_PARENT_SPAN_ID, parent),
            None => headers.remove(B3_PARENT_SPAN_ID),
        };
        let sampled = HeaderValue::from_static(if sampled { "1" } else { "0" });
        headers.insert(B3_SAMPLED, sampled);
        if !span.is_sampled() {
            headers.remove(B3_FLAGS);
        }
    }
}

/// Whether any B3 header is present: one pass over the names, where looking
/// each of the six up would hash every one.
fn carries_b3(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name == "b3" || name.starts_with("x-b3-")
    })
}

/// Whether a `b3` value carries the debug state (`d`, alone or third).
fn b3_single_is_debug(value: &[u8]) -> bool {
    value == b"d" || value.split(|b| *b == b'-').nth(2) == Some(b"d")
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceFlags;

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const B3_IDS: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn decision(pairs: &[(&str, &str)]) -> (bool, Decision) {
        let caller = extract(&headers(pairs));
        (caller.parent.is_some(), caller.decision)
    }

    #[test]
    fn reads_and_writes_traceparent() {
        let (trace, span, sampled) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(sampled);
        assert_eq!(traceparent(trace, span, true).to_str().unwrap(), TP);
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
    fn w3c_edge_cases_restart_the_trace() {
        let other = "00-11111111111111111111111111111111-00f067aa0ba902b7-01";
        let two = extract(&headers(&[("traceparent", TP), ("traceparent", other)]));
        assert_eq!(two.parent, None);
        let orphan_state = extract(&headers(&[("tracestate", "k=v")]));
        assert_eq!(orphan_state.trace_state, TraceState::default());
        let invalid = extract(&headers(&[("traceparent", "00-zz"), ("tracestate", "k=v")]));
        assert_eq!(invalid.parent, None);
        assert_eq!(invalid.trace_state, TraceState::default());
        let kept = extract(&headers(&[
            ("traceparent", TP),
            ("tracestate", "k=v"),
            ("tracestate", "l=w"),
        ]));
        assert_eq!(kept.trace_state.header(), "k=v,l=w");
        assert_eq!(kept.decision, Decision::Sample);
    }

    #[test]
    fn reads_b3_decisions() {
        let tp00 = TP.replace("-01", "-00");
        assert_eq!(decision(&[("traceparent", &tp00)]), (true, Decision::Drop));
        assert_eq!(decision(&[("b3", "0")]), (false, Decision::Drop));
        assert_eq!(decision(&[("b3", "1")]), (false, Decision::Sample));
        assert_eq!(decision(&[("b3", "d")]), (false, Decision::Debug));
        assert_eq!(decision(&[("b3", B3_IDS)]), (true, Decision::Defer));
        let with = |s: &str| format!("{B3_IDS}-{s}");
        assert_eq!(decision(&[("b3", &with("0"))]), (true, Decision::Drop));
        assert_eq!(decision(&[("b3", &with("d"))]), (true, Decision::Debug));
        let with_parent = with("1-05e3ac9a4f6e3b90");
        assert_eq!(decision(&[("b3", &with_parent)]), (true, Decision::Sample));
        assert_eq!(decision(&[("b3", "garbage")]), (false, Decision::Defer));
        assert_eq!(decision(&[("x-b3-sampled", "0")]), (false, Decision::Drop));
        assert_eq!(decision(&[("x-b3-flags", "1")]), (false, Decision::Debug));
        let multi = [
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ];
        assert_eq!(decision(&multi), (true, Decision::Defer));
        let mut dropped = multi.to_vec();
        dropped.push(("x-b3-sampled", "false"));
        assert_eq!(decision(&dropped), (true, Decision::Drop));
        dropped.push(("x-b3-flags", "1"));
        assert_eq!(decision(&dropped), (true, Decision::Debug));
        let caller = extract(&headers(&multi));
        let trace = caller.parent.unwrap().0.to_string();
        assert_eq!(trace, "000000000000000064fe8b2a57d3eff7");
        // The single header wins over the multi headers.
        let both = [("b3", with("1")), ("x-b3-sampled", "0".to_owned())];
        let both: Vec<(&str, &str)> = both.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(decision(&both), (true, Decision::Sample));
    }

    fn span(sampled: bool, state: &str) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            flags,
            false,
            TraceState::from_str(state).unwrap_or_default(),
        )
    }

    #[test]
    fn writes_the_decision_in_every_format_present() {
        let parent = SpanId::from_hex("e457b5a2e4d86bd1").ok();
        let mut map = headers(&[("b3", "0"), ("tracestate", "stale=1")]);
        inject(&mut map, &span(false, ""), None);
        assert_eq!(
            map["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00"
        );
        assert_eq!(
            map["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-0"
        );
        assert!(map.get("tracestate").is_none());

        let mut map = headers(&[("b3", &format!("{B3_IDS}-d"))]);
        inject(&mut map, &span(true, "k=v"), parent);
        assert_eq!(
            map["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-d-e457b5a2e4d86bd1"
        );
        assert_eq!(map["tracestate"], "k=v");

        let mut map = headers(&[("x-b3-sampled", "0")]);
        inject(&mut map, &span(false, ""), None);
        assert_eq!(map["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(map["x-b3-spanid"], "1111111111111111");
        assert_eq!(map["x-b3-sampled"], "0");
        assert!(map.get("x-b3-parentspanid").is_none());

        let mut map = headers(&[("x-b3-flags", "1"), ("x-b3-traceid", "64fe8b2a57d3eff7")]);
        inject(&mut map, &span(true, ""), parent);
        assert_eq!(map["x-b3-flags"], "1");
        assert_eq!(map["x-b3-sampled"], "1");
        assert_eq!(map["x-b3-parentspanid"], "e457b5a2e4d86bd1");

        // Only a parent id: no B3 format is written (the multi headers are
        // rewritten when one of ids, sampled or flags is present), as before
        // B3 was looked up only when a `b3`/`x-b3-*` name is present.
        let mut map = headers(&[("x-b3-parentspanid", "e457b5a2e4d86bd1")]);
        inject(&mut map, &span(true, ""), None);
        assert!(map.get("x-b3-traceid").is_none() && map.get("b3").is_none());
        assert_eq!(map["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        // Without any B3 header, none appears.
        let mut map = headers(&[("user-agent", "curl")]);
        inject(&mut map, &span(true, ""), parent);
        assert_eq!(map.len(), 2, "user-agent and traceparent: {map:?}");
    }
}
