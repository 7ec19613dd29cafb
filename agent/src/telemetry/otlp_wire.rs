//! OTLP protobuf written straight into a byte buffer: the few messages a
//! span needs (`Span`, `Span.Event`, `KeyValue`, `AnyValue`, `Status`) and
//! the envelope of an `ExportTraceServiceRequest`, with the field numbers of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`.
//! Nothing is built as a message first: a span's fields are appended as
//! they are known, so recording one costs a few small writes.

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `ExportTraceServiceRequest.resource_spans`.
pub(crate) const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.resource`, `.scope_spans`, `.schema_url`.
pub(crate) const RESOURCE_SPANS_RESOURCE: u32 = 1;
pub(crate) const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
pub(crate) const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
/// `ScopeSpans.scope`, `.spans`.
pub(crate) const SCOPE_SPANS_SCOPE: u32 = 1;
pub(crate) const SCOPE_SPANS_SPANS: u32 = 2;
/// `Span` fields.
pub(crate) const SPAN_TRACE_ID: u32 = 1;
pub(crate) const SPAN_SPAN_ID: u32 = 2;
pub(crate) const SPAN_TRACE_STATE: u32 = 3;
pub(crate) const SPAN_PARENT_SPAN_ID: u32 = 4;
pub(crate) const SPAN_NAME: u32 = 5;
pub(crate) const SPAN_KIND: u32 = 6;
pub(crate) const SPAN_START_TIME: u32 = 7;
pub(crate) const SPAN_END_TIME: u32 = 8;
pub(crate) const SPAN_ATTRIBUTES: u32 = 9;
pub(crate) const SPAN_EVENTS: u32 = 11;
pub(crate) const SPAN_DROPPED_EVENTS_COUNT: u32 = 12;
pub(crate) const SPAN_STATUS: u32 = 15;
pub(crate) const SPAN_FLAGS: u32 = 16;
/// `Span.Event` fields.
pub(crate) const EVENT_TIME: u32 = 1;
pub(crate) const EVENT_NAME: u32 = 2;
pub(crate) const EVENT_ATTRIBUTES: u32 = 3;
/// `Status` fields.
pub(crate) const STATUS_MESSAGE: u32 = 2;
pub(crate) const STATUS_CODE: u32 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
pub(crate) const STATUS_CODE_ERROR: u64 = 2;
/// `SpanFlags`: the context's remoteness is known, and it is remote.
pub(crate) const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
pub(crate) const SPAN_FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;

/// An attribute value, as OTLP's `AnyValue` holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
}

impl From<&'static str> for Value<'static> {
    fn from(value: &'static str) -> Self {
        Value::Str(value)
    }
}

/// Appends a varint.
pub fn varint(buf: &mut Vec<u8>, value: u64) {
    varint_bytes(value, |byte| buf.push(byte));
}

/// Gives `value`'s varint bytes to `put`, low 7 bits first: the one varint
/// encoder, for a `Vec` and for a [`Head`] on the stack.
fn varint_bytes(mut value: u64, mut put: impl FnMut(u8)) {
    while value >= 0x80 {
        put((value as u8) | 0x80);
        value >>= 7;
    }
    put(value as u8);
}

/// A field's key: its number and wire type.
fn tag(field: u32, wire: u8) -> u64 {
    (u64::from(field) << 3) | u64::from(wire)
}

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one: ceil(bits / 7) as prost computes
    // it, a multiply and a shift rather than a division.
    (((63 - (value | 1).leading_zeros()) * 9 + 73) / 64) as usize
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, tag(field, wire));
}

/// Appends a length-delimited field (bytes, string or an encoded message).
pub fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(buf, field, LEN);
    varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// Appends a varint field (uint, enum, bool).
pub fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, VARINT);
    varint(buf, value);
}

/// Appends a `fixed64` field.
pub fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// Appends a `fixed32` field.
pub fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// Appends a message field whose body `write` appends; its length prefix is
/// fixed up afterwards (one byte reserved, the body moved when it needs more).
pub fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    write(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    // The body moves right to make room for the longer length.
    let mut prefix = Head::default();
    prefix.varint(len as u64);
    let extra = prefix.len - 1;
    buf.resize(buf.len() + extra, 0);
    buf.copy_within(at + 1..at + 1 + len, at + 1 + extra);
    buf[at..at + prefix.len].copy_from_slice(prefix.written());
}

/// The length of a length-delimited field holding `len` bytes.
pub fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field) << 3) + varint_len(len as u64) + len
}

/// The length of a varint field (uint, enum, bool) holding `value`.
pub fn uint_len(field: u32, value: u64) -> usize {
    varint_len(tag(field, VARINT)) + varint_len(value)
}

/// The length of a `fixed64` field.
pub fn fixed64_len(field: u32) -> usize {
    varint_len(tag(field, FIXED64)) + 8
}

/// The length of a `fixed32` field.
pub fn fixed32_len(field: u32) -> usize {
    varint_len(tag(field, FIXED32)) + 4
}

/// Appends the key and length of a length-delimited field whose `len` bytes
/// the caller appends next.
pub fn len_prefix(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

/// Appends a `KeyValue` as field `field` of the enclosing message.
///
/// The keys and lengths around the name and the value are built on the
/// stack and appended at once: an attribute is three or four copies into
/// `buf`, not a call and a capacity check per byte. When every key and
/// length is one byte (a field below 16, a `KeyValue` of under 128 bytes:
/// nearly every span attribute) they are written as they are, without the
/// varint loop; for a string value, without computing a varint's length.
pub fn key_value(buf: &mut Vec<u8>, field: u32, name: &str, value: Value<'_>) {
    // A string value: every length one byte when the whole is under 128
    // bytes, no varint length computed.
    if let Value::Str(s) = value {
        let value_len = 2 + s.len();
        let body = 2 + name.len() + 2 + value_len;
        if field < 16 && body < 0x80 {
            short_key_value_head(buf, field, body, name);
            buf.extend_from_slice(&[
                tag(2, LEN) as u8,
                value_len as u8,
                tag(1, LEN) as u8,
                s.len() as u8,
            ]);
            buf.extend_from_slice(s.as_bytes());
            return;
        }
    }
    let value_len = match value {
        Value::Str(s) => field_len(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(i as u64),
        Value::Double(_) => 9,
    };
    let body = field_len(1, name.len()) + field_len(2, value_len);
    if field < 16 && body < 0x80 {
        short_key_value_head(buf, field, body, name);
        // (a scalar: a string this short took the path above)
        let mut head = Head::default();
        head.bytes(&[tag(2, LEN) as u8, value_len as u8]);
        head.any_value(value);
        buf.extend_from_slice(head.written());
        return;
    }
    let mut head = Head::default();
    head.key(field, LEN);
    head.varint(body as u64);
    head.key(1, LEN);
    head.varint(name.len() as u64);
    buf.extend_from_slice(head.written());
    buf.extend_from_slice(name.as_bytes());
    let mut head = Head::default();
    head.key(2, LEN);
    head.varint(value_len as u64);
    head.any_value(value);
    buf.extend_from_slice(head.written());
    if let Value::Str(s) = value {
        buf.extend_from_slice(s.as_bytes());
    }
}

/// A `KeyValue` of `body` bytes (under 128) as field `field` (below 16):
/// room for all of it, then its key, length and `key` field. Every key and
/// length is one byte (body < 128 bounds the name's and the value's
/// lengths too).
fn short_key_value_head(buf: &mut Vec<u8>, field: u32, body: usize, name: &str) {
    buf.reserve(2 + body);
    buf.extend_from_slice(&[
        tag(field, LEN) as u8,
        body as u8,
        tag(1, LEN) as u8,
        name.len() as u8,
    ]);
    buf.extend_from_slice(name.as_bytes());
}

/// Keys, lengths and small values written on the stack: at most two keys
/// (5 bytes each) and two varints (10 bytes each) fit.
#[derive(Default)]
struct Head {
    bytes: [u8; 30],
    len: usize,
}

impl Head {
    fn varint(&mut self, value: u64) {
        varint_bytes(value, |byte| {
            self.bytes[self.len] = byte;
            self.len += 1;
        });
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(tag(field, wire));
    }

    fn bytes(&mut self, value: &[u8]) {
        self.bytes[self.len..self.len + value.len()].copy_from_slice(value);
        self.len += value.len();
    }

    /// An `AnyValue`'s one field: whole for a scalar; for a string, its
    /// key and length (the caller appends the bytes).
    fn any_value(&mut self, value: Value<'_>) {
        match value {
            Value::Str(s) => {
                self.key(1, LEN);
                self.varint(s.len() as u64);
            }
            Value::Bool(b) => {
                self.key(2, VARINT);
                self.varint(u64::from(b));
            }
            // int64 is a varint of the two's complement.
            Value::Int(i) => {
                self.key(3, VARINT);
                self.varint(i as u64);
            }
            Value::Double(d) => {
                self.key(4, FIXED64);
                self.bytes(&d.to_bits().to_le_bytes());
            }
        }
    }

    fn written(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use prost::Message;

    use super::*;

    /// A message with one repeated KeyValue field (as `Resource` is).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Attributes {
        #[prost(message, repeated, tag = "1")]
        values: Vec<KeyValue>,
    }

    #[test]
    fn key_values_decode_as_prost_encodes_them() {
        let long = "x".repeat(300);
        // (a KeyValue of 127 bytes, every length one byte, and of 128)
        let (fits, past) = ("y".repeat(120), "y".repeat(121));
        let cases = [
            ("s", Value::Str("GET")),
            ("n", Value::Str(&fits)),
            ("n", Value::Str(&past)),
            ("empty", Value::Str("")),
            ("long", Value::Str(&long)),
            ("t", Value::Bool(true)),
            ("f", Value::Bool(false)),
            ("zero", Value::Int(0)),
            ("port", Value::Int(9080)),
            ("negative", Value::Int(-1)),
            ("max", Value::Int(i64::MAX)),
            ("ms", Value::Double(1.5)),
            (&long, Value::Str("a name past 127 bytes")),
            (&long, Value::Int(i64::MIN)),
            (&long, Value::Double(-0.25)),
        ];
        let mut buf = Vec::new();
        for (name, value) in cases {
            key_value(&mut buf, 1, name, value);
        }
        let decoded = Attributes::decode(buf.as_slice()).expect("decodes");
        let want: Vec<KeyValue> = cases
            .iter()
            .map(|(name, value)| KeyValue {
                key: (*name).to_owned(),
                value: Some(AnyValue {
                    value: Some(match *value {
                        Value::Str(s) => any_value::Value::StringValue(s.to_owned()),
                        Value::Bool(b) => any_value::Value::BoolValue(b),
                        Value::Int(i) => any_value::Value::IntValue(i),
                        Value::Double(d) => any_value::Value::DoubleValue(d),
                    }),
                }),
                ..Default::default()
            })
            .collect();
        assert_eq!(decoded.values, want);
        assert_eq!(buf, Attributes { values: want }.encode_to_vec());
    }

    /// The one-byte writing and the varint loop meet where a field number
    /// passes 15 and a `KeyValue` 127 bytes: each side of both, as prost
    /// encodes the same `KeyValue` as that field (names of a byte or more:
    /// prost leaves an empty key out, which no attribute has).
    #[test]
    fn key_values_across_the_one_byte_boundaries_match_prost() {
        let longest = "n".repeat(130);
        for field in [1, 9, 15, 16, 300] {
            for name_len in [1, 60, 118, 120, 123, 124, 125, 126, 127, 128, 130] {
                let name = &longest[..name_len];
                let mut values: Vec<Value<'_>> =
                    (0..=130).map(|n| Value::Str(&longest[..n])).collect();
                values.extend([
                    Value::Bool(true),
                    Value::Int(0),
                    Value::Int(200),
                    Value::Int(-1),
                    Value::Double(2.5),
                ]);
                for value in values {
                    let mut buf = vec![7];
                    key_value(&mut buf, field, name, value);
                    let kv = KeyValue {
                        key: name.to_owned(),
                        value: Some(AnyValue {
                            value: Some(match value {
                                Value::Str(s) => any_value::Value::StringValue(s.to_owned()),
                                Value::Bool(b) => any_value::Value::BoolValue(b),
                                Value::Int(i) => any_value::Value::IntValue(i),
                                Value::Double(d) => any_value::Value::DoubleValue(d),
                            }),
                        }),
                        ..Default::default()
                    };
                    let mut want = vec![7];
                    prost::encoding::message::encode(field, &kv, &mut want);
                    assert_eq!(
                        buf, want,
                        "field {field}, name of {name_len} bytes, {value:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn nested_messages_of_any_length_get_their_prefix() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 20_000] {
            let mut buf = vec![7];
            message(&mut buf, 2, |b| b.extend(std::iter::repeat_n(b'a', len)));
            let mut want = vec![7];
            bytes(&mut want, 2, &vec![b'a'; len]);
            assert_eq!(buf, want, "{len}");
            assert_eq!(field_len(2, len), want.len() - 1);
        }
    }
}
