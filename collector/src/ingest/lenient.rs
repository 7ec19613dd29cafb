//! Doubles in OTLP/JSON as the protobuf JSON mapping writes them: a JSON
//! number, or a string holding one or `"NaN"`, `"Infinity"`,
//! `"-Infinity"`. The OTLP types' own serde code takes numbers only (and
//! strings in a few places), so one `"doubleValue": "1.5"` refused a whole
//! request. [`Lenient`] wraps a JSON deserializer and answers every `f64`
//! (and `f32`) the target type asks for from either form, at any depth,
//! and changes nothing else. The oneof fields (`doubleValue` of an
//! attribute value, `asDouble` of a data point) are read by serde through
//! a buffer (they are flattened), out of the wrapper's reach: a string
//! under one of those keys is read as a double while it is buffered.
//!
//! Two more rules of the mapping the OTLP types' serde code misses: an
//! enum field (span `kind`, status `code`, `aggregationTemporality`) may be
//! written by name (`"SPAN_KIND_CLIENT"`) as well as by number, and `null`
//! is accepted for every field and means its default value: a string's
//! `""`, a number's 0, a bool's `false`, bytes' empty, an enum's 0, a
//! repeated field's `[]`, a message or oneof field not set. protobuf's own
//! parser (`json/internal/parser.cc`, `ParseField`) reads a member whose
//! value is `null` as if it were absent; so does [`nulls_as_defaults`],
//! before the deserializer sees the body: the OTLP types read many fields
//! through their own functions (64-bit integers, hex ids, oneofs), which
//! no wrapper can tell apart from a buffer that must keep its `null`. A
//! `null` inside a list (`"attributes": [null]`) is still refused, as
//! protobuf refuses it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Deepest nesting [`nulls_as_defaults`] follows; serde_json refuses a
/// body nested past 128 levels anyway.
const MAX_DEPTH: usize = 256;

/// The fields whose absence the OTLP types' serde code refuses (their
/// structs lack `#[serde(default)]`), with their default in JSON:
/// `KeyValue.key`, and the `values` of `ArrayValue` and `KeyValueList`
/// (no other OTLP message has a field of these names). A `null` there is
/// replaced by the default, not left out.
fn required_default(key: &[u8]) -> Option<&'static [u8]> {
    match key {
        b"key" => Some(b"\"\""),
        b"values" => Some(b"[]"),
        _ => None,
    }
}

/// One change [`nulls_as_defaults`] makes: `range` of the body becomes
/// `with`.
type Edit = (Range<usize>, &'static [u8]);

/// `body` with every object member whose value is `null` read as its
/// field's default, as protobuf's JSON parser reads it: left out (its
/// key, the `null` and one comma beside it), so the field keeps its
/// default, or, for the few fields the OTLP types require
/// ([`required_default`]), given its default. Borrows `body` when it has
/// no such member. `null` inside a list is kept (the decoder refuses it,
/// as protobuf does). A body that is not JSON, or is nested past
/// [`MAX_DEPTH`], is given back as it is: the decoder then says what is
/// wrong with it. A body without the bytes `null` anywhere (most of
/// them) is given back after a quick look ([`mentions_null`]); another
/// takes one pass and at most a copy.
pub fn nulls_as_defaults(body: &[u8]) -> Cow<'_, [u8]> {
    if !mentions_null(body) {
        return Cow::Borrowed(body);
    }
    let edits = match null_edits(body) {
        Some(edits) if !edits.is_empty() => edits,
        _ => return Cow::Borrowed(body),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for (range, with) in edits {
        out.extend_from_slice(&body[from..range.start]);
        out.extend_from_slice(with);
        from = range.end;
    }
    out.extend_from_slice(&body[from..]);
    Cow::Owned(out)
}

/// Whether `body` holds the bytes `null` anywhere (memchr's SIMD
/// substring search, at memory speed: most bodies have none).
fn mentions_null(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"null").is_some()
}

/// A container [`null_edits`] is inside.
#[derive(Debug, Clone, Copy)]
enum Container {
    List,
    Object {
        /// A member before this point is kept: a member left out from
        /// here takes the comma before it.
        kept: bool,
        /// Every member so far was left out, the last one without a
        /// comma: the next comma goes with it.
        drop_comma: bool,
        /// Where the last comma kept is.
        comma: usize,
    },
}

/// What [`null_edits`] reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Value,
    ValueOrListEnd,
    Key,
    KeyOrObjectEnd,
    Colon,
    CommaOrEnd,
    Nothing,
}

/// The changes [`nulls_as_defaults`] makes, in order; `None` when `body`
/// is not JSON or is nested too deep.
fn null_edits(body: &[u8]) -> Option<Vec<Edit>> {
    let after_value = |stack: &[Container]| {
        if stack.is_empty() {
            Next::Nothing
        } else {
            Next::CommaOrEnd
        }
    };
    let mut stack: Vec<Container> = Vec::new();
    let mut edits: Vec<Edit> = Vec::new();
    let mut next = Next::Value;
    let (mut key_start, mut key_end) = (0, 0);
    let mut i = 0;
    loop {
        while body
            .get(i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            i += 1;
        }
        let Some(&c) = body.get(i) else {
            return (next == Next::Nothing).then_some(edits);
        };
        match next {
            Next::Nothing => return None,
            Next::Colon => {
                if c != b':' {
                    return None;
                }
                i += 1;
                next = Next::Value;
            }
            Next::Key | Next::KeyOrObjectEnd => match c {
                b'}' if next == Next::KeyOrObjectEnd => {
                    stack.pop();
                    i += 1;
                    next = after_value(&stack);
                }
                b'"' => {
                    key_start = i;
                    i = string_end(body, i)?;
                    key_end = i;
                    next = Next::Colon;
                }
                _ => return None,
            },
            Next::CommaOrEnd => {
                match (c, stack.last_mut()?) {
                    (b',', Container::List) => next = Next::Value,
                    (
                        b',',
                        Container::Object {
                            drop_comma, comma, ..
                        },
                    ) => {
                        if *drop_comma {
                            edits.push((i..i + 1, b""));
                            *drop_comma = false;
                        } else {
                            *comma = i;
                        }
                        next = Next::Key;
                    }
                    (b']', Container::List) | (b'}', Container::Object { .. }) => {
                        stack.pop();
                        next = after_value(&stack);
                    }
                    _ => return None,
                }
                i += 1;
            }
            Next::Value | Next::ValueOrListEnd => {
                if c == b']' && next == Next::ValueOrListEnd {
                    stack.pop();
                    i += 1;
                    next = after_value(&stack);
                    continue;
                }
                if c == b'n' {
                    let null = i;
                    i = literal(body, i, b"null")?;
                    if let Some(Container::Object {
                        kept,
                        drop_comma,
                        comma,
                    }) = stack.last_mut()
                    {
                        if let Some(default) = required_default(&body[key_start + 1..key_end - 1]) {
                            edits.push((null..i, default));
                            *kept = true;
                        } else if *kept {
                            edits.push((*comma..i, b""));
                        } else {
                            edits.push((key_start..i, b""));
                            *drop_comma = true;
                        }
                    }
                    next = after_value(&stack);
                    continue;
                }
                if let Some(Container::Object { kept, .. }) = stack.last_mut() {
                    *kept = true;
                }
                match c {
                    b'{' | b'[' => {
                        if stack.len() >= MAX_DEPTH {
                            return None;
                        }
                        i += 1;
                        if c == b'{' {
                            stack.push(Container::Object {
                                kept: false,
                                drop_comma: false,
                                comma: 0,
                            });
                            next = Next::KeyOrObjectEnd;
                        } else {
                            stack.push(Container::List);
                            next = Next::ValueOrListEnd;
                        }
                        continue;
                    }
                    b'"' => i = string_end(body, i)?,
                    b't' => i = literal(body, i, b"true")?,
                    b'f' => i = literal(body, i, b"false")?,
                    b'-' | b'0'..=b'9' => {
                        i += 1;
                        while body.get(i).is_some_and(|c| {
                            matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                        }) {
                            i += 1;
                        }
                    }
                    _ => return None,
                }
                next = after_value(&stack);
            }
        }
    }
}

/// Where the string starting with the quote at `start` ends (past its
/// closing quote).
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match body.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Where `word` (`null`, `true`, `false`), expected at `at`, ends.
fn literal(body: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    body[at..].starts_with(word).then_some(at + word.len())
}

/// A deserializer whose floats may also be written as strings.
pub struct Lenient<D>(pub D);

/// A seed (or visitor) whose deserializer gets wrapped in [`Lenient`].
struct Wrap<T>(T);

/// An enum's number from its name in the proto file.
type EnumNames = fn(&str) -> Option<i32>;

fn span_kind(name: &str) -> Option<i32> {
    SpanKind::from_str_name(name).map(|kind| kind as i32)
}

fn status_code(name: &str) -> Option<i32> {
    StatusCode::from_str_name(name).map(|code| code as i32)
}

fn aggregation_temporality(name: &str) -> Option<i32> {
    AggregationTemporality::from_str_name(name).map(|temporality| temporality as i32)
}

/// How a map's next value is read, by its key.
#[derive(Clone, Copy, Default)]
enum Key {
    /// As the target type asks.
    #[default]
    Plain,
    /// An OTLP oneof key whose value is a double (`doubleValue` of an
    /// attribute value, `asDouble` of a data point): a string is read as
    /// a double.
    Double,
    /// An OTLP enum field (`kind`, `code`, `aggregationTemporality`): an
    /// integer or a name.
    Enum(EnumNames),
}

impl Key {
    fn of(key: &str) -> Self {
        match key {
            "doubleValue" | "asDouble" => Self::Double,
            "kind" => Self::Enum(span_kind),
            "code" => Self::Enum(status_code),
            "aggregationTemporality" => Self::Enum(aggregation_temporality),
            _ => Self::Plain,
        }
    }
}

/// A map whose next value is read as its key says ([`Key`]).
struct Map<A> {
    inner: A,
    key: Key,
}

/// A key's seed that notes which [`Key`] it is.
struct KeySeed<'a, S> {
    seed: S,
    key: &'a mut Key,
}

/// The key's deserializer and visitor (keys are strings in JSON).
struct KeyDe<'a, D> {
    de: D,
    key: &'a mut Key,
}

struct KeyVisitor<'a, V> {
    visitor: V,
    key: &'a mut Key,
}

/// A value's seed read by [`EnumDe`].
struct EnumSeed<S> {
    seed: S,
    names: EnumNames,
}

/// A value's deserializer that reads an enum's name as its number, and
/// anything else as [`Lenient`] does.
struct EnumDe<D> {
    de: D,
    names: EnumNames,
}

/// Gives an enum's name as its number, the rest as it is.
struct EnumVisitor<V> {
    visitor: V,
    names: EnumNames,
}

/// A value's deserializer that reads a string as a double.
struct DoubleDe<D>(D);

/// A value's seed read by [`DoubleDe`].
struct DoubleSeed<S>(S);

/// Reads a float from a number or a string.
struct Float<V>(V);

fn parse_float<E: de::Error>(text: &str) -> Result<f64, E> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        other => other.trim().parse::<f64>().map_err(|_| {
            E::custom(format!(
                "invalid double {other:?}: expected a number, \"NaN\", \"Infinity\" or \"-Infinity\""
            ))
        }),
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Float<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a double, as a number or a string")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.visit_f64(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.visit_f64(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.visit_f64(parse_float(v)?)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for EnumSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(EnumDe {
            de,
            names: self.names,
        })
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for EnumDe<D> {
    type Error = D::Error;

    /// What the enum field asks for, and what a buffer asks for (a oneof's
    /// fields are buffered: `aggregationTemporality` of a metric's `sum`).
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        Lenient(self.de).deserialize_any(EnumVisitor {
            visitor,
            names: self.names,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        Lenient(self.de).deserialize_option(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        Lenient(self.de).deserialize_ignored_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier
    }
}

macro_rules! forward {
    ($($method:ident),*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(Wrap(visitor))
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Lenient<D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_seq,
        deserialize_unit,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any
    );

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Float(visitor))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Float(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, Wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, Wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, Wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, Wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, Wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! visit {
    ($($method:ident($ty:ty)),*) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        })*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_byte_buf(Vec<u8>)
    );

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.0.visit_borrowed_str(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.0.visit_borrowed_bytes(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Lenient(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Lenient(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Map {
            inner: map,
            key: Key::Plain,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(Lenient(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next_element_seed(Wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.key = Key::Plain;
        self.inner.next_key_seed(KeySeed {
            seed,
            key: &mut self.key,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match std::mem::take(&mut self.key) {
            Key::Plain => self.inner.next_value_seed(Wrap(seed)),
            Key::Double => self.inner.next_value_seed(DoubleSeed(seed)),
            Key::Enum(names) => self.inner.next_value_seed(EnumSeed { seed, names }),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(KeyDe { de, key: self.key })
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for KeyDe<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_any(KeyVisitor {
            visitor,
            key: self.key,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        *self.key = Key::of(v);
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        *self.key = Key::of(v);
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        *self.key = Key::of(&v);
        self.visitor.visit_string(v)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for DoubleSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(DoubleDe(de))
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for DoubleDe<D> {
    type Error = D::Error;

    /// What a buffer asks for: a string becomes the double it holds.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(Float(visitor))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        Lenient(self.0).deserialize_option(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        self.0
            .variant_seed(Wrap(seed))
            .map(|(value, variant)| (value, Wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.newtype_variant_seed(Wrap(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for EnumVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    /// An enum's name is its number; another string stays a string (the
    /// target refuses it, or keeps it where it is no enum).
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match (self.names)(v) {
            Some(number) => self.visitor.visit_i32(number),
            None => self.visitor.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        match (self.names)(v) {
            Some(number) => self.visitor.visit_i32(number),
            None => self.visitor.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        match (self.names)(&v) {
            Some(number) => self.visitor.visit_i32(number),
            None => self.visitor.visit_string(v),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.visitor.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visitor.visit_i64(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visitor.visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.visitor.visit_f64(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(map)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn stripped(text: &str) -> Value {
        let out = nulls_as_defaults(text.as_bytes());
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{text} -> {}: {e}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn null_members_are_left_out_at_any_place_and_depth() {
        let cases = [
            (r#"{"a":null}"#, json!({})),
            (r#"{"a":null,"b":1}"#, json!({"b": 1})),
            (r#"{"a":1,"b":null}"#, json!({"a": 1})),
            (
                r#"{"a":1,"b":null,"c":null,"d":2}"#,
                json!({"a": 1, "d": 2}),
            ),
            (
                r#"{ "a" : null , "b":null ,"c":[null,{"d":null,"e":"null"}], "f" :null }"#,
                json!({"c": [null, {"e": "null"}]}),
            ),
            (
                r#"{"a":{"b":null,"c":{"d":null}},"e":[{"f":null},[null]]}"#,
                json!({"a": {"c": {}}, "e": [{}, [null]]}),
            ),
            (
                r#"{"k\"null":"x\\","n":null,"s":"a\"b"}"#,
                json!({"k\"null": "x\\", "s": "a\"b"}),
            ),
            (
                r#"{"a":-1.5e+3,"b":null,"c":true,"d":false,"e":0}"#,
                json!({"a": -1.5e3, "c": true, "d": false, "e": 0}),
            ),
            // The fields the OTLP types require get their default.
            (
                r#"{"a":null,"key":null,"value":{"arrayValue":{"values":null}},"b":null}"#,
                json!({"key": "", "value": {"arrayValue": {"values": []}}}),
            ),
            (
                r#"{"kvlistValue":{"values":[{"key":null,"value":null}]}}"#,
                json!({"kvlistValue": {"values": [{"key": ""}]}}),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(stripped(text), expected, "{text}");
        }
    }

    #[test]
    fn a_body_without_null_members_or_not_json_is_given_back_as_it_is() {
        for text in [
            r#"{"a":1,"b":[null],"c":"null"}"#,
            "null",
            "[null, null]",
            r#"{"a":null"#,
            r#"{"a":nul}"#,
            r#"{"a" null}"#,
            r#"{"a":null} x"#,
            r#"{"a":null,}"#,
            r#"{null:1}"#,
            r#"{"a":"open"#,
            "",
        ] {
            assert!(
                matches!(nulls_as_defaults(text.as_bytes()), Cow::Borrowed(_)),
                "{text}"
            );
        }
        // Past the depth followed: as it is (serde_json refuses it).
        let deep = format!(r#"{}{{"a":null}}{}"#, "[".repeat(300), "]".repeat(300));
        assert!(matches!(
            nulls_as_defaults(deep.as_bytes()),
            Cow::Borrowed(_)
        ));
        let shallow = format!(r#"{}{{"a":null}}{}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(
            nulls_as_defaults(shallow.as_bytes()).len(),
            shallow.len() - r#""a":null"#.len()
        );
    }

    /// Random JSON, compact and pretty: stripped, it reads as the same
    /// value with its null members removed.
    #[test]
    fn random_documents_lose_their_null_members_and_nothing_else() {
        fn random(rng: &mut fastrand::Rng, depth: usize) -> Value {
            match rng.u8(0..if depth > 4 { 5 } else { 7 }) {
                0 | 1 => Value::Null,
                2 => json!(rng.i64(-1000..1000)),
                3 => json!(rng.bool()),
                4 => json!(["null", "a\"b", "\\", "n,u:l{l}"][rng.usize(0..4)]),
                5 => Value::Array(
                    (0..rng.usize(0..4))
                        .map(|_| random(rng, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..rng.usize(0..5))
                        .map(|k| (format!("k{k}\"null"), random(rng, depth + 1)))
                        .collect(),
                ),
            }
        }
        fn without_nulls(value: Value) -> Value {
            match value {
                Value::Object(members) => Value::Object(
                    members
                        .into_iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k, without_nulls(v)))
                        .collect(),
                ),
                Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
                other => other,
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let value = random(&mut rng, 0);
            let expected = without_nulls(value.clone());
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                assert_eq!(stripped(&text), expected, "{text}");
            }
        }
    }
}
