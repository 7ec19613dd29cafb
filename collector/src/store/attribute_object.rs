//! A span's attributes as the value of the JSON `attributes` field,
//! borrowing keys and string values from the decoded span: the document is
//! built without a `String` per key and value or a map per span, which is
//! most of what a span costs before tantivy copies it once into its own
//! compact document.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use tantivy::schema::document::{ReferenceValue, ReferenceValueLeaf, Value};

use crate::attributes;

/// Attribute values longer than this are indexed by their first bytes only
/// (the stored span keeps them whole).
const MAX_INDEXED_VALUE: usize = 256;

/// One node of the attributes object.
#[derive(Debug)]
pub enum Node<'s> {
    /// An attribute value, as text.
    Text(Cow<'s, str>),
    /// A key that occurs more than once (span and resource both set it).
    Array(Vec<Node<'s>>),
    /// The attributes object itself.
    Object(Vec<(&'s str, Node<'s>)>),
}

impl<'s> Node<'s> {
    /// An empty object with room for `capacity` keys.
    pub fn object(capacity: usize) -> Self {
        Node::Object(Vec::with_capacity(capacity))
    }

    /// Adds `attributes` to this object, leaving out the keys in `skip`; a
    /// key already present becomes an array of both values.
    pub fn add(&mut self, attributes: &'s [KeyValue], skip: &[&str]) {
        let Node::Object(entries) = self else {
            return;
        };
        for kv in attributes {
            let key = kv.key.as_str();
            if skip.contains(&key) {
                continue;
            }
            let value = Node::Text(truncated(attributes::text(kv.value.as_ref())));
            match entries.iter_mut().find(|(k, _)| *k == key) {
                None => entries.push((key, value)),
                Some((_, Node::Array(values))) => values.push(value),
                Some((_, existing)) => {
                    let first = std::mem::replace(existing, Node::Array(Vec::with_capacity(2)));
                    if let Node::Array(values) = existing {
                        values.extend([first, value]);
                    }
                }
            }
        }
    }
}

impl<'s> Node<'s> {
    /// Adds one text value under `key` (a span field shown as a tag, such
    /// as `otel.scope.name`), unless the object already holds the key.
    pub fn add_text(&mut self, key: &'s str, text: &'s str) {
        if let Node::Object(entries) = self
            && !text.is_empty()
            && !entries.iter().any(|(k, _)| *k == key)
        {
            entries.push((key, Node::Text(truncated(Cow::Borrowed(text)))));
        }
    }
}

fn truncated(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.len() <= MAX_INDEXED_VALUE {
        return text;
    }
    let mut end = MAX_INDEXED_VALUE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[..end]),
        Cow::Owned(mut text) => {
            text.truncate(end);
            Cow::Owned(text)
        }
    }
}

/// Walks an object's entries as tantivy expects.
pub struct Entries<'a>(std::slice::Iter<'a, (&'a str, Node<'a>)>);

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a Node<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(key, node)| (*key, node))
    }
}

impl<'a> Value<'a> for &'a Node<'a> {
    type ArrayIter = std::slice::Iter<'a, Node<'a>>;
    type ObjectIter = Entries<'a>;

    fn as_value(&self) -> ReferenceValue<'a, Self> {
        match *self {
            Node::Text(text) => ReferenceValue::Leaf(ReferenceValueLeaf::Str(text)),
            Node::Array(values) => ReferenceValue::Array(values.iter()),
            Node::Object(entries) => ReferenceValue::Object(Entries(entries.iter())),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn texts(node: &Node<'_>) -> Vec<String> {
        match node {
            Node::Text(text) => vec![text.to_string()],
            Node::Array(values) => values.iter().flat_map(texts).collect(),
            Node::Object(_) => vec![],
        }
    }

    #[test]
    fn repeated_keys_become_arrays_and_skipped_keys_stay_out() {
        let span = [
            kv("http.route", any_value::Value::StringValue("/a".into())),
            kv("retries", any_value::Value::IntValue(2)),
        ];
        let resource = [
            kv("service.name", any_value::Value::StringValue("cart".into())),
            kv("retries", any_value::Value::BoolValue(true)),
            kv("long", any_value::Value::StringValue("é".repeat(200))),
        ];
        let mut object = Node::object(8);
        object.add(&span, &["http.route"]);
        object.add(&resource, &["service.name"]);
        let Node::Object(entries) = &object else {
            panic!("an object")
        };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["retries", "long"]);
        assert_eq!(texts(&entries[0].1), ["2", "true"]);
        let long = &texts(&entries[1].1)[0];
        assert_eq!(long.len(), MAX_INDEXED_VALUE);
        assert!(long.chars().all(|c| c == 'é'));
    }
}
