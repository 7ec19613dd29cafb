//! OpenTelemetry's span limits, applied by the collector to what it
//! receives (the SDK applies them to what it records; a sender that does
//! not, or a hostile one, must not make one span cost gigabytes or seconds).
//!
//! What a limit removes is recorded where OTLP keeps it: the
//! `dropped_attributes_count` of the span, resource, scope, event or link,
//! `dropped_events_count` and `dropped_links_count`. Values are truncated,
//! not dropped, as the SDK does. Every pass is linear in the size of the
//! batch.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde::Deserialize;

/// The limits. Field names follow the OpenTelemetry SDK's span limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanLimits {
    /// Attributes kept per span, resource, scope, event and link; the rest
    /// are dropped and counted in its `dropped_attributes_count`. Default
    /// 128 (the SDK's `AttributeCountLimit`).
    pub attribute_count_limit: usize,
    /// Longest attribute key kept, in bytes; an attribute with a longer key
    /// is dropped and counted (a truncated key would be another key).
    /// Nested map keys too. Default 256.
    pub attribute_key_length_limit: usize,
    /// Longest string or bytes value kept whole, in bytes (each element of
    /// arrays and maps too); longer ones are cut at a character boundary.
    /// Default 16384.
    pub attribute_value_length_limit: usize,
    /// Events kept per span; the rest counted in `dropped_events_count`.
    /// Default 128 (the SDK's `EventCountLimit`).
    pub event_count_limit: usize,
    /// Links kept per span; the rest counted in `dropped_links_count`.
    /// Default 128 (the SDK's `LinkCountLimit`).
    pub link_count_limit: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self {
            attribute_count_limit: 128,
            attribute_key_length_limit: 256,
            attribute_value_length_limit: 16 * 1024,
            event_count_limit: 128,
            link_count_limit: 128,
        }
    }
}

/// What the limits removed from one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limited {
    /// Attributes dropped past the count limit.
    pub attribute_count: u64,
    /// Attributes dropped for a key past the length limit.
    pub attribute_key_length: u64,
    /// Values truncated to the length limit.
    pub attribute_value_length: u64,
    /// Events dropped.
    pub event_count: u64,
    /// Links dropped.
    pub link_count: u64,
}

impl Limited {
    /// Whether anything was changed.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

impl SpanLimits {
    /// Applies the limits to every span, resource, scope, event and link
    /// of `batch`.
    pub fn apply(&self, batch: &mut [ResourceSpans]) -> Limited {
        let mut limited = Limited::default();
        for resource_spans in batch {
            if let Some(resource) = &mut resource_spans.resource {
                resource.dropped_attributes_count +=
                    self.attributes(&mut resource.attributes, &mut limited);
            }
            for scope_spans in &mut resource_spans.scope_spans {
                if let Some(scope) = &mut scope_spans.scope {
                    scope.dropped_attributes_count +=
                        self.attributes(&mut scope.attributes, &mut limited);
                }
                for span in &mut scope_spans.spans {
                    span.dropped_attributes_count +=
                        self.attributes(&mut span.attributes, &mut limited);
                    if span.events.len() > self.event_count_limit {
                        let dropped = span.events.len() - self.event_count_limit;
                        span.events.truncate(self.event_count_limit);
                        span.dropped_events_count =
                            saturating_add(span.dropped_events_count, dropped);
                        limited.event_count += dropped as u64;
                    }
                    for event in &mut span.events {
                        event.dropped_attributes_count +=
                            self.attributes(&mut event.attributes, &mut limited);
                    }
                    if span.links.len() > self.link_count_limit {
                        let dropped = span.links.len() - self.link_count_limit;
                        span.links.truncate(self.link_count_limit);
                        span.dropped_links_count =
                            saturating_add(span.dropped_links_count, dropped);
                        limited.link_count += dropped as u64;
                    }
                    for link in &mut span.links {
                        link.dropped_attributes_count +=
                            self.attributes(&mut link.attributes, &mut limited);
                    }
                }
            }
        }
        limited
    }

    /// Applies the limits to one attribute list; returns how many were dropped.
    fn attributes(&self, attributes: &mut Vec<KeyValue>, limited: &mut Limited) -> u32 {
        let before = attributes.len();
        let key_limit = self.attribute_key_length_limit;
        attributes.retain(|kv| kv.key.len() <= key_limit);
        let long_keys = before - attributes.len();
        let over = attributes.len().saturating_sub(self.attribute_count_limit);
        attributes.truncate(self.attribute_count_limit);
        for kv in attributes.iter_mut() {
            if let Some(value) = &mut kv.value {
                self.value(value, limited);
            }
        }
        limited.attribute_key_length += long_keys as u64;
        limited.attribute_count += over as u64;
        u32::try_from(long_keys + over).unwrap_or(u32::MAX)
    }

    fn value(&self, value: &mut AnyValue, limited: &mut Limited) {
        let limit = self.attribute_value_length_limit;
        match &mut value.value {
            Some(Value::StringValue(text)) if text.len() > limit => {
                let mut end = limit;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                limited.attribute_value_length += 1;
            }
            Some(Value::BytesValue(bytes)) if bytes.len() > limit => {
                bytes.truncate(limit);
                limited.attribute_value_length += 1;
            }
            Some(Value::ArrayValue(array)) => {
                for value in &mut array.values {
                    self.value(value, limited);
                }
            }
            Some(Value::KvlistValue(list)) => {
                let before = list.values.len();
                list.values
                    .retain(|kv| kv.key.len() <= self.attribute_key_length_limit);
                limited.attribute_key_length += (before - list.values.len()) as u64;
                for kv in &mut list.values {
                    if let Some(value) = &mut kv.value {
                        self.value(value, limited);
                    }
                }
            }
            _ => {}
        }
    }
}

fn saturating_add(count: u32, more: usize) -> u32 {
    count.saturating_add(u32::try_from(more).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    use super::*;
    use crate::attributes;

    fn limits() -> SpanLimits {
        SpanLimits {
            attribute_count_limit: 3,
            attribute_key_length_limit: 8,
            attribute_value_length_limit: 5,
            event_count_limit: 1,
            link_count_limit: 0,
        }
    }

    #[test]
    fn what_is_dropped_is_counted_where_otlp_keeps_it() {
        let mut span = Span {
            attributes: vec![
                attributes::string("a", "short"),
                attributes::string("much-too-long-key", "x"),
                attributes::string("b", "éééé"),
                attributes::string("c", "1"),
                attributes::string("d", "2"),
            ],
            dropped_attributes_count: 1,
            events: vec![Event::default(), Event::default()],
            links: vec![Default::default()],
            ..Default::default()
        };
        span.attributes.push(KeyValue {
            key: "arr".into(),
            value: Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("abcdefgh".into())),
                    }],
                })),
            }),
            ..Default::default()
        });
        let mut batch = vec![ResourceSpans {
            resource: Some(Resource {
                attributes: (0..5)
                    .map(|i| attributes::int(&format!("r{i}"), i))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope::default()),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }];
        let limited = limits().apply(&mut batch);
        let span = &batch[0].scope_spans[0].spans[0];
        let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            span.dropped_attributes_count,
            1 + 3,
            "one long key, two past the count"
        );
        assert_eq!(
            attributes::get_str(&span.attributes, "b"),
            Some("éé"),
            "cut at a character boundary"
        );
        assert_eq!((span.events.len(), span.dropped_events_count), (1, 1));
        assert_eq!((span.links.len(), span.dropped_links_count), (0, 1));
        let resource = batch[0].resource.as_ref().unwrap();
        assert_eq!(
            (resource.attributes.len(), resource.dropped_attributes_count),
            (3, 2)
        );
        assert_eq!(
            limited,
            Limited {
                attribute_count: 4,
                attribute_key_length: 1,
                attribute_value_length: 1,
                event_count: 1,
                link_count: 1,
            }
        );
    }

    #[test]
    fn a_batch_within_the_limits_is_left_alone() {
        let mut batch = vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    attributes: vec![attributes::string("k", "v")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }];
        let before = batch.clone();
        assert!(!SpanLimits::default().apply(&mut batch).any());
        assert_eq!(batch, before);
    }
}
