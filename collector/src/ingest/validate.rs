//! Span checks before anything is written: ids of the right length, start
//! and end times inside the window the store keeps (not before retention,
//! not further ahead than clock skew explains). Spans that fail are removed
//! from the batch and reported as OTLP partial success; the rest are
//! written.
//!
//! The time bounds keep hostile or broken timestamps out of the store: a
//! span dated years ahead would make a partition of its own and never
//! expire, and an end time near 2^64 would make a duration that poisons
//! every latency aggregate it joins.

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};

use crate::ids::{SpanId, TraceId};
use crate::metrics::Refusal;

/// The span times accepted, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// The earliest start accepted: now minus the retention.
    pub oldest_start: u64,
    /// The latest start or end accepted: now plus the allowed clock skew.
    pub newest: u64,
}

impl TimeBounds {
    /// Any time at all.
    pub const ALL: Self = Self {
        oldest_start: 0,
        newest: u64::MAX,
    };
}

/// The spans a check removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// How many, for any reason.
    pub count: u64,
    /// How many of them for their times ([`Refusal::OutOfRange`]); the
    /// rest have bad ids ([`Refusal::Invalid`]).
    pub out_of_range: u64,
    /// Why, for the first few (OTLP's `error_message`).
    pub message: String,
}

/// Why `id`, the `field` OTLP requires to be `len` bytes and not all zero,
/// is refused.
fn bad_id(field: &str, len: usize, id: &[u8]) -> String {
    if id.len() == len {
        format!("{field} is all zero (OTLP's invalid id)")
    } else {
        format!("{field} must be {len} bytes, got {}", id.len())
    }
}

/// Reasons shown in the message, at most.
const SHOWN: usize = 3;

fn reason(span: &Span, bounds: TimeBounds) -> Option<(Refusal, String)> {
    if TraceId::from_bytes(&span.trace_id).is_none() {
        return Some((Refusal::Invalid, bad_id("trace_id", 16, &span.trace_id)));
    }
    if SpanId::from_bytes(&span.span_id).is_none() {
        return Some((Refusal::Invalid, bad_id("span_id", 8, &span.span_id)));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Some((
            Refusal::Invalid,
            format!(
                "parent_span_id must be empty or 8 bytes, got {} bytes",
                span.parent_span_id.len()
            ),
        ));
    }
    if span.start_time_unix_nano < bounds.oldest_start {
        return Some((
            Refusal::OutOfRange,
            format!(
                "start_time_unix_nano {} is older than the retention window",
                span.start_time_unix_nano
            ),
        ));
    }
    for (field, time) in [
        ("start_time_unix_nano", span.start_time_unix_nano),
        ("end_time_unix_nano", span.end_time_unix_nano),
    ] {
        if time > bounds.newest {
            return Some((
                Refusal::OutOfRange,
                format!(
                    "{field} {time} is ahead of the collector's clock by more than max_clock_skew"
                ),
            ));
        }
    }
    None
}

/// Removes invalid spans (and the scopes and resources left empty) from
/// `batch`; returns what was removed.
pub fn retain_valid(batch: &mut Vec<ResourceSpans>, bounds: TimeBounds) -> Rejected {
    let mut rejected = Rejected::default();
    let mut reasons = Vec::new();
    for (r, resource_spans) in batch.iter_mut().enumerate() {
        for (s, scope_spans) in resource_spans.scope_spans.iter_mut().enumerate() {
            let mut index = 0;
            scope_spans.spans.retain(|span| {
                let keep = match reason(span, bounds) {
                    None => true,
                    Some((refusal, why)) => {
                        rejected.count += 1;
                        if refusal == Refusal::OutOfRange {
                            rejected.out_of_range += 1;
                        }
                        if reasons.len() < SHOWN {
                            reasons.push(format!("resource {r} scope {s} span {index}: {why}"));
                        }
                        false
                    }
                };
                index += 1;
                keep
            });
        }
        resource_spans
            .scope_spans
            .retain(|scope_spans| !scope_spans.spans.is_empty());
    }
    batch.retain(|resource_spans| !resource_spans.scope_spans.is_empty());
    if rejected.count > 0 {
        rejected.message = format!(
            "{} span(s) rejected; {}",
            rejected.count,
            reasons.join("; ")
        );
    }
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::document::span_count;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    fn span(trace_id: Vec<u8>, span_id: Vec<u8>, start: u64) -> Span {
        Span {
            trace_id,
            span_id,
            start_time_unix_nano: start,
            name: "op".into(),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_spans_are_removed_and_explained() {
        let good = span(vec![1; 16], vec![2; 8], 2000);
        let mut batch = vec![
            ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        good.clone(),
                        span(vec![1; 8], vec![2; 8], 2000),
                        span(vec![1; 16], vec![0; 8], 2000),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(vec![1; 16], vec![2; 8], 10)],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let bounds = TimeBounds {
            oldest_start: 1000,
            newest: u64::MAX,
        };
        let rejected = retain_valid(&mut batch, bounds);
        assert_eq!(rejected.count, 3);
        assert_eq!(rejected.out_of_range, 1);
        assert!(
            rejected.message.contains("trace_id must be 16 bytes"),
            "{}",
            rejected.message
        );
        assert!(
            rejected.message.contains("span_id is all zero"),
            "{}",
            rejected.message
        );
        assert_eq!(batch.len(), 1, "the emptied resource is gone");
        assert_eq!(batch[0].scope_spans[0].spans, vec![good]);
        assert_eq!(span_count(&batch), 1);
    }

    #[test]
    fn spans_ahead_of_the_clock_are_out_of_range() {
        let bounds = TimeBounds {
            oldest_start: 1000,
            newest: 5000,
        };
        let mut edge = span(vec![1; 16], vec![2; 8], 2000);
        edge.end_time_unix_nano = u64::MAX - 1;
        let mut batch = vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(vec![1; 16], vec![2; 8], 5000),
                    span(vec![1; 16], vec![2; 8], 5001),
                    edge,
                ],
                ..Default::default()
            }],
            ..Default::default()
        }];
        let rejected = retain_valid(&mut batch, bounds);
        assert_eq!((rejected.count, rejected.out_of_range), (2, 2));
        assert!(
            rejected.message.contains("end_time_unix_nano"),
            "{}",
            rejected.message
        );
        assert_eq!(span_count(&batch), 1);
    }
}
