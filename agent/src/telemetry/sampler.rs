//! Which spans are recorded: the caller's decision first (W3C `sampled`,
//! B3 `0`/`1`/`d`, `x-b3-flags`), this agent's ratio otherwise — for new
//! traces and for B3 callers that deferred the decision.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::trace_context::Decision;

/// A caller's decision usually travels as its span's sampled flag, which
/// `ParentBased` follows; where it cannot (a B3 decision without ids, B3 ids
/// without a decision) the hop's parent context carries the [`Decision`]
/// itself, and this sampler reads it first.
#[derive(Debug, Clone)]
pub struct CallerFirst {
    ratio: f64,
}

impl CallerFirst {
    /// Records `ratio` (0.0–1.0) of the traces no caller decided on.
    pub fn new(ratio: f64) -> Self {
        Self { ratio }
    }
}

impl ShouldSample for CallerFirst {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let ratio = Sampler::TraceIdRatioBased(self.ratio);
        let decision = parent_context.and_then(|cx| cx.get::<Decision>().copied());
        let sampled = match decision.map(Decision::sampled) {
            Some(Some(sampled)) => sampled,
            Some(None) => {
                return ratio.should_sample(
                    parent_context,
                    trace_id,
                    name,
                    span_kind,
                    attributes,
                    links,
                );
            }
            None => {
                let parent_based = Sampler::ParentBased(Box::new(ratio));
                return parent_based.should_sample(
                    parent_context,
                    trace_id,
                    name,
                    span_kind,
                    attributes,
                    links,
                );
            }
        };
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent_context
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    use super::*;

    fn decide(sampler: &CallerFirst, cx: &Context) -> SamplingDecision {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        sampler
            .should_sample(Some(cx), trace, "", &SpanKind::Server, &[], &[])
            .decision
    }

    #[test]
    fn the_callers_decision_overrides_the_ratio() {
        use SamplingDecision::{Drop, RecordAndSample};
        for (ratio, decision, want) in [
            (0.0, Decision::Sample, RecordAndSample),
            (0.0, Decision::Debug, RecordAndSample),
            (1.0, Decision::Drop, Drop),
            (0.0, Decision::Defer, Drop),
            (1.0, Decision::Defer, RecordAndSample),
        ] {
            let cx = Context::new().with_value(decision);
            assert_eq!(
                decide(&CallerFirst::new(ratio), &cx),
                want,
                "{decision:?} at {ratio}"
            );
        }
    }

    #[test]
    fn spans_without_a_decision_follow_their_parent() {
        let parent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(parent);
        assert_eq!(
            decide(&CallerFirst::new(0.0), &cx),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&CallerFirst::new(1.0), &Context::new()),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&CallerFirst::new(0.0), &Context::new()),
            SamplingDecision::Drop
        );
    }
}
