//! Span checks before anything is written: ids of the right length, a start
//! inside the retention window. Spans that fail are removed from the batch
//! and reported as OTLP partial success; the rest are written.

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::ids::{SpanId, TraceId};

/// The spans a check removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// How many.
    pub count: u64,
    /// Why, for the first few (OTLP's `error_message`).
    pub message: String,
}

/// Reasons shown in the message, at most.
const SHOWN: usize = 3;

fn reason(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
    oldest_start_nanos: u64,
) -> Option<String> {
    if TraceId::from_bytes(&span.trace_id).is_none() {
        return Some(format!(
            "trace_id must be 16 bytes and not all zero, got {} bytes",
            span.trace_id.len()
        ));
    }
    if SpanId::from_bytes(&span.span_id).is_none() {
        return Some(format!(
            "span_id must be 8 bytes and not all zero, got {} bytes",
            span.span_id.len()
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Some(format!(
            "parent_span_id must be empty or 8 bytes, got {} bytes",
            span.parent_span_id.len()
        ));
    }
    if span.start_time_unix_nano < oldest_start_nanos {
        return Some(format!(
            "start_time_unix_nano {} is older than the retention window",
            span.start_time_unix_nano
        ));
    }
    None
}

/// Removes invalid spans (and the scopes and resources left empty) from
/// `batch`; returns what was removed. `oldest_start_nanos` is the start of
/// the retention window.
pub fn retain_valid(batch: &mut Vec<ResourceSpans>, oldest_start_nanos: u64) -> Rejected {
    let mut rejected = Rejected::default();
    let mut reasons = Vec::new();
    for (r, resource_spans) in batch.iter_mut().enumerate() {
        for (s, scope_spans) in resource_spans.scope_spans.iter_mut().enumerate() {
            let mut index = 0;
            scope_spans.spans.retain(|span| {
                let keep = match reason(span, oldest_start_nanos) {
                    None => true,
                    Some(why) => {
                        rejected.count += 1;
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
        let rejected = retain_valid(&mut batch, 1000);
        assert_eq!(rejected.count, 3);
        assert!(
            rejected.message.contains("trace_id must be 16 bytes"),
            "{}",
            rejected.message
        );
        assert!(
            rejected.message.contains("span_id must be 8 bytes"),
            "{}",
            rejected.message
        );
        assert_eq!(batch.len(), 1, "the emptied resource is gone");
        assert_eq!(batch[0].scope_spans[0].spans, vec![good]);
        assert_eq!(span_count(&batch), 1);
    }
}
