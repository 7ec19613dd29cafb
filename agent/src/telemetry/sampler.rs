//! Which spans are recorded: the caller's decision first (W3C `sampled`,
//! B3 `0`/`1`/`d`, `x-b3-flags`), this agent's ratio otherwise — for new
//! traces and for B3 callers that deferred the decision. The ratio reads the
//! trace id as OpenTelemetry's `TraceIdRatioBased` sampler does, so every
//! hop of a trace that shares the ratio makes the same choice.

use opentelemetry::trace::{SpanContext, TraceId};

use crate::trace_context::Decision;

/// Whether a span of `trace_id` is recorded. A caller's decision that its
/// context cannot carry (`decision`) comes first; then a valid parent's
/// sampled flag; then `ratio` (0.0–1.0) of the trace ids.
pub fn sampled(
    ratio: f64,
    decision: Option<Decision>,
    parent: Option<&SpanContext>,
    trace_id: TraceId,
) -> bool {
    match decision.map(Decision::sampled) {
        Some(Some(sampled)) => sampled,
        Some(None) => by_ratio(ratio, trace_id),
        None => match parent.filter(|cx| cx.is_valid()) {
            Some(parent) => parent.is_sampled(),
            None => by_ratio(ratio, trace_id),
        },
    }
}

/// `TraceIdRatioBased`: the trace id's low 63 bits below `ratio` × 2^63.
fn by_ratio(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceState};

    use super::*;

    fn trace() -> TraceId {
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    }

    #[test]
    fn the_callers_decision_overrides_the_ratio() {
        for (ratio, decision, want) in [
            (0.0, Decision::Sample, true),
            (0.0, Decision::Debug, true),
            (1.0, Decision::Drop, false),
            (0.0, Decision::Defer, false),
            (1.0, Decision::Defer, true),
        ] {
            assert_eq!(
                sampled(ratio, Some(decision), None, trace()),
                want,
                "{decision:?} at {ratio}"
            );
        }
    }

    #[test]
    fn spans_without_a_decision_follow_their_parent() {
        let parent = SpanContext::new(
            trace(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        assert!(sampled(0.0, None, Some(&parent), trace()));
        assert!(sampled(1.0, None, None, trace()));
        assert!(!sampled(0.0, None, None, trace()));
    }

    #[test]
    fn the_ratio_reads_the_trace_ids_low_bits() {
        // low 64 bits 0xa3ce929d0e0e4736 >> 1 = 0x51e7…, about 0.64 of 2^63
        assert!(!by_ratio(0.5, trace()));
        assert!(by_ratio(0.7, trace()));
        let ids = 10_000;
        let kept = (0..ids)
            .filter(|_| by_ratio(0.25, TraceId::from(fastrand::u128(..))))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept} of {ids}");
    }
}
