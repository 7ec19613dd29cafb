//! Protobuf's wire format read without decoding into messages: where each
//! field of an encoded message lies. The store cuts every span's stored
//! bytes out of the request as it was received (see
//! [`crate::store::received`]) instead of encoding the decoded span again.

use std::ops::Range;

/// The bytes are not a well-formed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {offset}: {what}")]
pub struct Malformed {
    /// Where, from the start of the buffer.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// How a field's value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// A varint (int32, int64, uint*, bool, enum).
    Varint,
    /// Eight little-endian bytes (fixed64, sfixed64, double).
    Fixed64,
    /// A length prefix, then that many bytes (string, bytes, messages).
    Len,
    /// Four little-endian bytes (fixed32, sfixed32, float).
    Fixed32,
}

/// One field of an encoded message, as ranges of the walked buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field number.
    pub number: u32,
    /// The value's layout.
    pub wire_type: WireType,
    /// The value's bytes: the content for [`WireType::Len`] (without its
    /// length prefix), the varint or fixed bytes otherwise.
    pub value: Range<usize>,
    /// The whole field, key included: copying these bytes copies the field.
    pub encoded: Range<usize>,
}

/// The fields of one message, in the order they were written.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    end: usize,
}

/// Walks the fields of the message held by `buf[range]`; ranges in the
/// fields it yields are offsets into `buf`, so nested messages can be
/// walked with [`fields_in`] again on the same buffer.
pub fn fields_in(buf: &[u8], range: Range<usize>) -> Fields<'_> {
    Fields {
        buf,
        at: range.start,
        end: range.end.min(buf.len()),
    }
}

/// Walks the fields of the message that is all of `buf`.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    fields_in(buf, 0..buf.len())
}

impl Fields<'_> {
    fn malformed(&mut self, what: &'static str) -> Option<Result<Field, Malformed>> {
        let offset = self.at;
        self.at = self.end;
        Some(Err(Malformed { offset, what }))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut rest = self.buf.get(self.at..self.end)?;
        let value = prost::encoding::decode_varint(&mut rest).ok()?;
        self.at = self.end - rest.len();
        Some(value)
    }

    fn skip(&mut self, n: usize) -> Option<Range<usize>> {
        let start = self.at;
        let end = start.checked_add(n).filter(|end| *end <= self.end)?;
        self.at = end;
        Some(start..end)
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let start = self.at;
        let Some(key) = self.varint() else {
            return self.malformed("truncated key");
        };
        let number = u32::try_from(key >> 3).unwrap_or(0);
        if number == 0 {
            return self.malformed("field number 0");
        }
        let (wire_type, value) = match key & 7 {
            0 => {
                let from = self.at;
                match self.varint() {
                    Some(_) => (WireType::Varint, from..self.at),
                    None => return self.malformed("truncated varint"),
                }
            }
            1 => match self.skip(8) {
                Some(value) => (WireType::Fixed64, value),
                None => return self.malformed("truncated fixed64"),
            },
            2 => match self
                .varint()
                .and_then(|len| self.skip(usize::try_from(len).ok()?))
            {
                Some(value) => (WireType::Len, value),
                None => return self.malformed("length past the end"),
            },
            5 => match self.skip(4) {
                Some(value) => (WireType::Fixed32, value),
                None => return self.malformed("truncated fixed32"),
            },
            _ => return self.malformed("unsupported wire type"),
        };
        Some(Ok(Field {
            number,
            wire_type,
            value,
            encoded: start..self.at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use prost::Message;

    #[test]
    fn walks_fields_and_nested_messages() {
        let kv = KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(300)),
            }),
            ..KeyValue::default()
        };
        let buf = kv.encode_to_vec();
        let top: Vec<Field> = fields(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].number, top[0].wire_type), (1, WireType::Len));
        assert_eq!(&buf[top[0].value.clone()], b"k");
        assert_eq!(top[1].encoded.end, buf.len());
        let inner: Vec<Field> = fields_in(&buf, top[1].value.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!((inner[0].number, inner[0].wire_type), (3, WireType::Varint));
        let mut varint = &buf[inner[0].value.clone()];
        assert_eq!(prost::encoding::decode_varint(&mut varint).unwrap(), 300);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[0x0a, 0x05, b'a'][..],
            &[0x08][..],
            &[0x00, 0x01][..],
            &[0x0b][..],
            &[0x09, 1, 2][..],
            &[0xff; 11][..],
        ] {
            let walked: Result<Vec<Field>, Malformed> = fields(bad).collect();
            assert!(walked.is_err(), "{bad:?}");
        }
    }
}
