//! A span's attributes as the value of the JSON `attributes` field,
//! borrowing keys and string values from the decoded span: the document is
//! built without a `String` per key and value or a map per span, which is
//! most of what a span costs before tantivy copies it once into its own
//! compact document.

use std::borrow::Cow;
use std::collections::HashMap;

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

/// Objects with more keys than this find a repeated key through a hash
/// index; below it a scan is cheaper than hashing.
const SCAN_KEYS: usize = 32;

/// Builds the attributes object in time linear in the attributes: a key
/// met again (span and resource both set it, or a sender repeats it)
/// becomes an array of its values.
pub struct ObjectBuilder<'s> {
    entries: Vec<(&'s str, Node<'s>)>,
    index: HashMap<&'s str, usize>,
}

impl<'s> ObjectBuilder<'s> {
    /// An empty object with room for `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            index: HashMap::new(),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        if self.entries.len() <= SCAN_KEYS {
            self.entries.iter().position(|(k, _)| *k == key)
        } else {
            self.index.get(key).copied()
        }
    }

    /// Adds `attributes`, leaving out the keys in `skip`.
    pub fn add(&mut self, attributes: &'s [KeyValue], skip: &[&str]) {
        for kv in attributes {
            let key = kv.key.as_str();
            if skip.contains(&key) {
                continue;
            }
            self.insert(key, truncated(attributes::text(kv.value.as_ref())));
        }
    }

    /// Adds one more text value under `key` (an event's name as `event`):
    /// beside the key's other values when it has some. Empty text is
    /// left out.
    pub fn add_value(&mut self, key: &'s str, text: &'s str) {
        if !text.is_empty() {
            self.insert(key, truncated(Cow::Borrowed(text)));
        }
    }

    /// Adds `text` under `key`, making the key's values an array when it
    /// has one already.
    fn insert(&mut self, key: &'s str, text: Cow<'s, str>) {
        let value = Node::Text(text);
        match self.position(key) {
            None => self.push(key, value),
            Some(at) => match &mut self.entries[at].1 {
                Node::Array(values) => values.push(value),
                existing => {
                    let first = std::mem::replace(existing, Node::Array(Vec::with_capacity(2)));
                    if let Node::Array(values) = existing {
                        values.extend([first, value]);
                    }
                }
            },
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one text value under `key` (a span field shown as a tag, such
    /// as `otel.scope.name`), unless the object already holds the key.
    pub fn add_text(&mut self, key: &'s str, text: &'s str) {
        if !text.is_empty() && self.position(key).is_none() {
            self.push(key, Node::Text(truncated(Cow::Borrowed(text))));
        }
    }

    /// Appends a key not yet in the object; past [`SCAN_KEYS`] keys the
    /// hash index is built once, then kept up to date.
    fn push(&mut self, key: &'s str, value: Node<'s>) {
        self.entries.push((key, value));
        if self.entries.len() == SCAN_KEYS + 1 {
            self.index = (self.entries.iter().enumerate())
                .map(|(i, (k, _))| (*k, i))
                .rev()
                .collect();
        } else if self.entries.len() > SCAN_KEYS + 1 {
            self.index.insert(key, self.entries.len() - 1);
        }
    }

    /// The object.
    pub fn build(self) -> Node<'s> {
        Node::Object(self.entries)
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
        let mut builder = ObjectBuilder::with_capacity(8);
        builder.add(&span, &["http.route"]);
        builder.add(&resource, &["service.name"]);
        let object = builder.build();
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

    #[test]
    fn many_keys_merge_repeats_through_the_index() {
        let span: Vec<KeyValue> = (0..1000)
            .map(|i| kv(&format!("k{}", i % 600), any_value::Value::IntValue(i)))
            .collect();
        let mut builder = ObjectBuilder::with_capacity(span.len());
        builder.add(&span, &[]);
        let Node::Object(entries) = builder.build() else {
            panic!("an object")
        };
        assert_eq!(entries.len(), 600);
        assert_eq!(entries[0].0, "k0");
        assert_eq!(texts(&entries[0].1), ["0", "600"]);
        assert_eq!(texts(&entries[599].1), ["599"]);
    }
}
