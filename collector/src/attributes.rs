//! Reading OTLP attributes: a value's text form (how tags are indexed and
//! searched, as Jaeger compares them) and lookups by key.

use std::borrow::Cow;
use std::fmt::Write;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The service of spans whose resource names none (OpenTelemetry's default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// A value as text: strings as they are, numbers and booleans as written in
/// JSON, bytes as hex, arrays and maps as JSON.
pub fn text(value: Option<&AnyValue>) -> Cow<'_, str> {
    match value.and_then(|v| v.value.as_ref()) {
        None => Cow::Borrowed(""),
        Some(Value::StringValue(s)) => Cow::Borrowed(s),
        Some(Value::BoolValue(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => Cow::Owned(i.to_string()),
        Some(Value::DoubleValue(d)) => Cow::Owned(d.to_string()),
        Some(Value::BytesValue(bytes)) => Cow::Owned(bytes.iter().fold(
            String::with_capacity(bytes.len() * 2),
            |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            },
        )),
        Some(other) => Cow::Owned(json(other).to_string()),
    }
}

fn json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::DoubleValue(d) => J::from(*d),
        Value::BytesValue(_) => J::String(
            text(Some(&AnyValue {
                value: Some(value.clone()),
            }))
            .into_owned(),
        ),
        Value::ArrayValue(array) => J::Array(
            array
                .values
                .iter()
                .map(|v| v.value.as_ref().map_or(J::Null, json))
                .collect(),
        ),
        Value::KvlistValue(list) => J::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value
                            .as_ref()
                            .and_then(|v| v.value.as_ref())
                            .map_or(J::Null, json),
                    )
                })
                .collect(),
        ),
        // A reference into a profiles dictionary: meaningless in a span.
        Value::StringValueStrindex(_) => J::Null,
    }
}

/// The value of `key`, if present.
pub fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// The string value of `key`, if present and a string.
pub fn get_str<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attributes, key)?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The integer value of `key` (also from a numeric string).
pub fn get_int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match get(attributes, key)?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::StringValue(s) => s.parse().ok(),
        Value::DoubleValue(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// The resource's `service.name`, or [`UNKNOWN_SERVICE`].
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| get_str(&r.attributes, "service.name"))
        .filter(|s| !s.is_empty())
        .unwrap_or(UNKNOWN_SERVICE)
}

/// A string attribute.
pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;

    #[test]
    fn values_render_as_searchable_text() {
        let v = |value| AnyValue { value: Some(value) };
        assert_eq!(text(Some(&v(Value::IntValue(-3)))), "-3");
        assert_eq!(text(Some(&v(Value::BoolValue(true)))), "true");
        assert_eq!(text(Some(&v(Value::DoubleValue(0.5)))), "0.5");
        assert_eq!(text(Some(&v(Value::BytesValue(vec![0xab, 0x01])))), "ab01");
        let array = Value::ArrayValue(ArrayValue {
            values: vec![v(Value::IntValue(1)), v(Value::StringValue("a".into()))],
        });
        assert_eq!(text(Some(&v(array))), r#"[1,"a"]"#);
        let attrs = vec![
            int("http.response.status_code", 503),
            string("service.name", "cart"),
        ];
        assert_eq!(get_int(&attrs, "http.response.status_code"), Some(503));
        assert_eq!(get_str(&attrs, "service.name"), Some("cart"));
    }
}
