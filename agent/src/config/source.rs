//! Config text as Kubernetes reads it: each YAML (or JSON) document becomes
//! a JSON value — map keys are strings, as `kubectl` and the API server
//! make them — together with the line of every field, so that a problem
//! found anywhere later names the line it is on.
//!
//! YAML is read by `saphyr` (YAML 1.2). One difference from the Go YAML
//! reader Kubernetes uses is kept narrow here: in a flow collection, Go's
//! reader takes a `:` directly followed by `,`, `]` or `}` as part of a plain
//! scalar, so `[1.2.3.4, 2001:db8::]` holds two addresses. The YAML 1.2 spec
//! (and `saphyr`, `libyaml`, PyYAML) read that colon as a key indicator
//! instead and yield a one-pair mapping or a syntax error. Such scalars are
//! quoted and the document read again, so files `kubectl apply` accepts load.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr::ScanError;
use saphyr::{AnnotatedMapping, MarkedYaml, Scalar, ScalarStyle, YamlData, YamlLoader};
use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};
use serde_json::{Map, Number, Value};

/// Nodes that anchors and aliases may expand into, per document; beyond
/// it the document is refused (a few nested aliases can otherwise ask for
/// billions of nodes).
const ALIAS_NODE_BUDGET: usize = 100_000;

/// Deepest nesting of mappings and sequences read; deeper documents are
/// refused before a tree is built (building, reading and dropping a tree
/// recurse, and `- - - - …` nests a level every two bytes).
const MAX_DEPTH: usize = 128;

/// Widest run of indentation and block indicators (` `, `-`, `?`) that
/// starts a line. Block nesting can only deepen by one column per level, so
/// this bounds the depth the parser (which recurses) sees; flow nesting is
/// bounded to 255 levels by the scanner itself.
const MAX_INDENT: usize = 1000;

/// Largest config file (or standard input) read: 16 MiB, sixteen times
/// what a Kubernetes ConfigMap may hold. A larger input is refused before
/// it is parsed, so its size cannot decide how long loading takes.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads config text from `input`, at most [`MAX_CONFIG_BYTES`]; more is
/// an error of kind `FileTooLarge` that names the limit (the size a file
/// claims is not trusted: the bytes are counted as they are read).
pub fn read_bounded(input: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    input.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than {} MiB, the most a config may hold",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] on the file at `path`.
pub fn read_file_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    read_bounded(std::fs::File::open(path)?)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text_bounded(input: impl std::io::Read) -> std::io::Result<String> {
    String::from_utf8(read_bounded(input)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Stack for reading a file: room for the parser's recursion at
/// [`MAX_INDENT`] + 255 levels, whatever thread asks.
pub const READER_STACK: usize = 64 << 20;

/// How many Go-style colon scalars one document may need quoted before the
/// reader gives up (each costs one more read of the document).
const MAX_COLON_FIXES: usize = 64;

/// One document, as JSON, and where its fields are.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The document's content.
    pub value: Value,
    /// The line of each field.
    pub lines: Lines,
}

/// The 1-based line of every field of a document, by its path as
/// diagnostics write it (`spec.http[0].route[1].weight`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    index: Arc<HashMap<String, usize>>,
    /// The first content line of every literal block scalar (`key: |`),
    /// by path: where the YAML a string holds (a ConfigMap's `mesh`)
    /// starts in the file, line for line.
    blocks: Arc<HashMap<String, usize>>,
    /// Path of the resource inside the document (`items[2]` in a `List`).
    prefix: Arc<str>,
}

impl Lines {
    /// The line of `field` (relative to the resource), or of the nearest
    /// enclosing field that is written in the file.
    pub fn of(&self, field: Option<&str>) -> Option<usize> {
        let mut path = match (self.prefix.is_empty(), field) {
            (_, None) => self.prefix.to_string(),
            (true, Some(field)) => field.to_owned(),
            (false, Some(field)) if field.starts_with('[') => format!("{}{field}", self.prefix),
            (false, Some(field)) => format!("{}.{field}", self.prefix),
        };
        loop {
            if let Some(line) = self.index.get(&path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path.truncate(cut);
        }
    }

    /// The lines of the resource at `path` inside this one (a `List` item).
    pub fn nested(&self, path: &str) -> Lines {
        Lines {
            index: self.index.clone(),
            blocks: self.blocks.clone(),
            prefix: Arc::from(self.full(path)),
        }
    }

    /// The file line where the content of `field`, a literal block scalar
    /// (`mesh: |`), starts: the YAML it holds is read from there (with
    /// [`read_document`]) so its fields have their lines in the file. `None`
    /// for any other scalar, whose lines do not map.
    pub fn block_start(&self, field: &str) -> Option<usize> {
        self.blocks.get(&self.full(field)).copied()
    }

    /// These lines with those of `inner`, the YAML that `field` holds, read
    /// from its [`Lines::block_start`]: `field.<path>` is found at `inner`'s
    /// line of `<path>`.
    pub fn with_inner(&self, field: &str, inner: &Lines) -> Lines {
        let at = self.full(field);
        let mut index = (*self.index).clone();
        for (path, line) in inner.index.iter() {
            let joined = match path.as_str() {
                "" => at.clone(),
                p if p.starts_with('[') => format!("{at}{p}"),
                p => format!("{at}.{p}"),
            };
            index.entry(joined).or_insert(*line);
        }
        Lines {
            index: Arc::new(index),
            blocks: self.blocks.clone(),
            prefix: self.prefix.clone(),
        }
    }

    fn full(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("{}.{path}", self.prefix)
        }
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The 1-based line of the problem in the file.
    pub line: usize,
    /// What is wrong, with the column.
    pub message: String,
}

/// Reads one document whose text starts at line `first_line` of its file.
/// `Ok(None)` for a document with no content (comments only, or a trailing
/// `---`).
///
/// The parser recurses once per nesting level: call this on a thread with
/// [`READER_STACK`] of stack (as `parse_documents` does).
pub fn read_document(text: &str, first_line: usize) -> Result<Option<Tree>, SyntaxError> {
    for (i, line) in text.lines().enumerate() {
        let width = line
            .chars()
            .take_while(|c| matches!(c, ' ' | '\t' | '-' | '?'))
            .count();
        if width > MAX_INDENT {
            return Err(SyntaxError {
                line: first_line + i,
                message: format!(
                    "more than {MAX_INDENT} columns of indentation and block indicators: nested too deeply"
                ),
            });
        }
    }
    let mut attempt = read_once(text, first_line);
    for _ in 0..MAX_COLON_FIXES {
        match attempt {
            Attempt::Done(result) => return result,
            Attempt::Again(quoted) => attempt = read_once(&quoted, first_line),
        }
    }
    match attempt {
        Attempt::Done(result) => result,
        Attempt::Again(_) => Err(SyntaxError {
            line: first_line,
            message: format!("more than {MAX_COLON_FIXES} plain scalars ending in `:`"),
        }),
    }
}

/// One read: the result, or the text again with Go-style colon scalars quoted.
enum Attempt {
    Done(Result<Option<Tree>, SyntaxError>),
    Again(String),
}

fn read_once(text: &str, first_line: usize) -> Attempt {
    let chars: Vec<char> = text.chars().collect();
    let docs = match load(text) {
        Ok(docs) => docs,
        Err(err) => {
            return match colon_scalar_at(&chars, err.marker().index()) {
                Some(range) => Attempt::Again(quote(&chars, &[range])),
                None => Attempt::Done(Err(syntax_error(&err, first_line))),
            };
        }
    };
    let Some(root) = docs.first() else {
        return Attempt::Done(Ok(None));
    };
    if docs.len() > 1 {
        return Attempt::Done(Err(SyntaxError {
            line: first_line + docs[1].span.start.line() - 1,
            message: "a second document starts here without a `---` line".into(),
        }));
    }
    let mut reader = Reader {
        chars: &chars,
        first_line,
        lines: HashMap::new(),
        blocks: HashMap::new(),
        colon_scalars: Vec::new(),
    };
    let mut path = String::new();
    let value = match reader.convert(root, &mut path) {
        Ok(value) => value,
        Err(err) => return Attempt::Done(Err(err)),
    };
    if !reader.colon_scalars.is_empty() {
        return Attempt::Again(quote(&chars, &reader.colon_scalars));
    }
    if value.is_null() {
        return Attempt::Done(Ok(None));
    }
    Attempt::Done(Ok(Some(Tree {
        value,
        lines: Lines {
            index: Arc::new(reader.lines),
            blocks: Arc::new(reader.blocks),
            prefix: Arc::from(""),
        },
    })))
}

fn load(text: &str) -> Result<Vec<MarkedYaml<'_>>, ScanError> {
    let mut loader = YamlLoader::<MarkedYaml<'_>>::default();
    loader.early_parse(false);
    loader.alias_limit(ALIAS_NODE_BUDGET);
    let mut bounded = Bounded {
        loader,
        depth: 0,
        too_deep: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut bounded, true)?;
    if let Some(at) = bounded.too_deep {
        let msg = format!("mappings and sequences nested deeper than {MAX_DEPTH} levels");
        return Err(ScanError::new(at, msg));
    }
    if let Some(err) = bounded.loader.error() {
        return Err(err.clone());
    }
    Ok(bounded.loader.into_documents())
}

/// The loader, fed only while nesting stays within [`MAX_DEPTH`].
struct Bounded<'input> {
    loader: YamlLoader<'input, MarkedYaml<'input>>,
    depth: usize,
    too_deep: Option<saphyr::Marker>,
}

impl<'input> SpannedEventReceiver<'input> for Bounded<'input> {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        if self.too_deep.is_some() {
            return;
        }
        match &ev {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    self.too_deep = Some(span.start);
                    return;
                }
            }
            Event::SequenceEnd | Event::MappingEnd => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        self.loader.on_event(ev, span);
    }
}

fn syntax_error(err: &ScanError, first_line: usize) -> SyntaxError {
    let mark = err.marker();
    SyntaxError {
        line: first_line + mark.line().saturating_sub(1),
        message: format!(
            "invalid YAML: {} (line {}, column {})",
            err.info(),
            first_line + mark.line().saturating_sub(1),
            mark.col() + 1
        ),
    }
}

/// A plain scalar that runs into a `:` directly followed by a flow
/// indicator, at the colon `at`: the char range Go's reader would read as
/// one scalar.
fn colon_scalar_at(chars: &[char], at: usize) -> Option<(usize, usize)> {
    if chars.get(at) != Some(&':') || !matches!(chars.get(at + 1), Some(',' | ']' | '}')) {
        return None;
    }
    let start = chars[..at]
        .iter()
        .rposition(|c| c.is_whitespace() || matches!(c, ',' | '[' | '{'))
        .map_or(0, |p| p + 1);
    let plain = start < at && !matches!(chars[start], '"' | '\'');
    plain.then_some((start, at + 1))
}

/// `chars` with each range single-quoted.
fn quote(chars: &[char], ranges: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(chars.len() + 4 * ranges.len());
    let mut next = 0;
    for &(start, end) in ranges {
        out.extend(&chars[next..start]);
        out.push('\'');
        for c in &chars[start..end] {
            if *c == '\'' {
                out.push('\'');
            }
            out.push(*c);
        }
        out.push('\'');
        next = end;
    }
    out.extend(&chars[next..]);
    out
}

struct Reader<'a> {
    chars: &'a [char],
    first_line: usize,
    lines: HashMap<String, usize>,
    blocks: HashMap<String, usize>,
    colon_scalars: Vec<(usize, usize)>,
}

impl Reader<'_> {
    fn line(&self, span: &Span) -> usize {
        self.first_line + span.start.line().saturating_sub(1)
    }

    /// The file line after a literal block scalar's `|` header: the line
    /// its content (leading blank lines included) starts on. The parser's
    /// span starts at the first non-blank content line, so the header is
    /// looked for before it.
    fn block_start(&self, span: &Span) -> usize {
        let at = span.start.index().min(self.chars.len());
        match self.chars[..at].iter().rposition(|c| *c == '|') {
            Some(header) => {
                // Only the lines between header and content are counted, so
                // a file of many blocks is read in linear time.
                let between = self.chars[header..at]
                    .iter()
                    .filter(|c| **c == '\n')
                    .count();
                self.line(span) - between + 1
            }
            None => self.line(span),
        }
    }

    fn error(&self, span: &Span, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: self.line(span),
            message: message.into(),
        }
    }

    fn convert(&mut self, node: &MarkedYaml<'_>, path: &mut String) -> Result<Value, SyntaxError> {
        let line = self.line(&node.span);
        self.lines.entry(path.clone()).or_insert(line);
        match &node.data {
            YamlData::Representation(text, style, tag) => {
                if *style == ScalarStyle::Literal {
                    self.blocks
                        .insert(path.clone(), self.block_start(&node.span));
                }
                let scalar =
                    Scalar::parse_from_cow_and_metadata(text.clone(), *style, tag.as_ref())
                        .ok_or_else(|| {
                            self.error(&node.span, format!("{text:?} does not fit its tag"))
                        })?;
                self.scalar(scalar, &node.span)
            }
            YamlData::Value(scalar) => self.scalar(scalar.clone(), &node.span),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(range) = self.go_colon_scalar(item) {
                        self.colon_scalars.push(range);
                    }
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    out.push(self.convert(item, path)?);
                    path.truncate(len);
                }
                Ok(Value::Array(out))
            }
            YamlData::Mapping(map) => self.mapping(map, path),
            YamlData::Tagged(_, inner) => self.convert(inner, path),
            YamlData::Alias(_) | YamlData::BadValue => {
                Err(self.error(&node.span, "an alias to an unknown anchor"))
            }
        }
    }

    fn mapping(
        &mut self,
        map: &AnnotatedMapping<'_, MarkedYaml<'_>>,
        path: &mut String,
    ) -> Result<Value, SyntaxError> {
        let mut out = Map::with_capacity(map.len());
        for (key, value) in map {
            let name = match &key.data {
                YamlData::Representation(text, _, _) => text.to_string(),
                YamlData::Value(scalar) => scalar_text(scalar),
                _ => return Err(self.error(&key.span, "a mapping key must be a scalar")),
            };
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&name);
            let line = self.line(&key.span);
            self.lines.insert(path.clone(), line);
            let value = self.convert(value, path)?;
            path.truncate(len);
            out.insert(name, value);
        }
        Ok(Value::Object(out))
    }

    fn scalar(&self, scalar: Scalar<'_>, span: &Span) -> Result<Value, SyntaxError> {
        Ok(match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(b),
            Scalar::Integer(i) => Value::Number(i.into()),
            Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
                .map(Value::Number)
                .ok_or_else(|| self.error(span, "infinity and NaN have no JSON form"))?,
            Scalar::String(s) => Value::String(s.into_owned()),
        })
    }

    /// A sequence item `key:` followed directly by `,` or `]` that YAML 1.2
    /// reads as a one-pair mapping and Go's reader as the scalar `key:`.
    fn go_colon_scalar(&self, item: &MarkedYaml<'_>) -> Option<(usize, usize)> {
        let YamlData::Mapping(map) = &item.data else {
            return None;
        };
        let (key, value) = map.iter().next().filter(|_| map.len() == 1)?;
        let plain_key = matches!(
            &key.data,
            YamlData::Representation(_, ScalarStyle::Plain, None)
        );
        let empty_value = matches!(&value.data, YamlData::Representation(v, ScalarStyle::Plain, None) if v.is_empty());
        let implicit = item.span.start.index() == key.span.start.index();
        if !(plain_key && empty_value && implicit) {
            return None;
        }
        let colon = key.span.end.index();
        colon_scalar_at(self.chars, colon).filter(|(start, _)| *start == key.span.start.index())
    }
}

fn scalar_text(scalar: &Scalar<'_>) -> String {
    match scalar {
        Scalar::Null => "null".into(),
        Scalar::Boolean(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::FloatingPoint(f) => f.to_string(),
        Scalar::String(s) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Tree {
        read_document(text, 1).expect("valid").expect("content")
    }

    #[test]
    fn ipv6_addresses_in_flow_collections_read_as_kubernetes_reads_them() {
        let tree = read("addresses: [1.2.3.4, 2001:db8::]\n");
        assert_eq!(
            tree.value["addresses"],
            serde_json::json!(["1.2.3.4", "2001:db8::"])
        );
        let tree = read("a: [2001:db8::, fd00::, \"x:\"]\nb: {c: fd00::}\n");
        assert_eq!(
            tree.value["a"],
            serde_json::json!(["2001:db8::", "fd00::", "x:"])
        );
        assert_eq!(tree.value["b"]["c"], "fd00::");
        // With a space after the colon it is a key, for Go's reader too.
        let tree = read("a: [k: v]\n");
        assert_eq!(tree.value["a"], serde_json::json!([{"k": "v"}]));
    }

    #[test]
    fn keys_become_strings_and_fields_keep_their_lines() {
        let tree = read(
            "spec:\n  portLevelMtls:\n    8080: {mode: STRICT}\n    \"9090\":\n      mode: DISABLE\n",
        );
        let ports = &tree.value["spec"]["portLevelMtls"];
        assert_eq!(ports["8080"]["mode"], "STRICT");
        assert_eq!(ports["9090"]["mode"], "DISABLE");
        assert_eq!(tree.lines.of(Some("spec.portLevelMtls.9090.mode")), Some(5));
        assert_eq!(
            tree.lines.of(Some("spec.portLevelMtls.9090.nothing")),
            Some(4)
        );
        assert_eq!(tree.lines.of(Some("spec")), Some(1));
    }

    #[test]
    fn sequence_items_and_nested_resources_have_lines() {
        let tree = read("items:\n- kind: A\n  spec: {x: 1}\n- kind: B\n  spec:\n    y: [1, 2]\n");
        let second = tree.lines.nested("items[1]");
        assert_eq!(second.of(Some("spec.y[1]")), Some(6));
        assert_eq!(second.of(None), Some(4));
    }

    #[test]
    fn yaml_in_a_literal_block_keeps_its_lines_in_the_file() {
        // Line 3 is the header; the block's content starts on line 4, blank
        // lines included; a folded or quoted string has no block start.
        let tree = read(
            "data:\n  other: \"a: 1\"\n  mesh: |-\n\n    tracing:\n      sampling: 200\n  folded: >\n    a: 1\n",
        );
        let lines = &tree.lines;
        assert_eq!(lines.block_start("data.mesh"), Some(4));
        assert_eq!(lines.block_start("data.other"), None);
        assert_eq!(lines.block_start("data.folded"), None);
        let mesh = tree.value["data"]["mesh"].as_str().unwrap();
        let inner = read_document(mesh, 4).unwrap().unwrap();
        let both = lines.with_inner("data.mesh", &inner.lines);
        assert_eq!(both.of(Some("data.mesh.tracing.sampling")), Some(6));
        assert_eq!(both.of(Some("data.mesh.tracing.nothing")), Some(5));
        assert_eq!(both.of(Some("data.mesh")), Some(3), "the key's own line");
        // The header on a line of its own.
        let tree = read("mesh:\n  |\n  a: 1\n");
        assert_eq!(tree.lines.block_start("mesh"), Some(3));
    }

    #[test]
    fn json_documents_read_too() {
        let tree = read("{\n\t\"kind\": \"List\",\n\t\"items\": [{\"a\": 1.5}]\n}\n");
        assert_eq!(tree.value["items"][0]["a"], 1.5);
        assert_eq!(tree.lines.of(Some("items")), Some(3));
    }

    #[test]
    fn nesting_is_bounded() {
        let wide = format!("{}x\n", "- ".repeat(100_000));
        let err = read_document(&wide, 1).expect_err("too deep");
        assert!(err.message.contains("nested too deeply"), "{err:?}");
        let deep = format!("{}x\n", "- ".repeat(300));
        let err = read_document(&deep, 1).expect_err("too deep");
        assert!(err.message.contains("nested deeper than"), "{err:?}");
        let flow = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(
            read_document(&flow, 1).is_err(),
            "deep flow collections too"
        );
        let fine = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(read_document(&fine, 1).is_ok());
    }

    #[test]
    fn syntax_errors_name_their_line_and_aliases_are_bounded() {
        let err = read_document("a: 1\nb: [unclosed\n", 10).expect_err("invalid");
        assert!(err.line >= 11, "{err:?}");
        assert!(read_document("a: 1\na: 2\n", 1).is_err(), "duplicate keys");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let (prev, next) = (char::from(b'a' + i), char::from(b'b' + i));
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(
            read_document(&bomb, 1).is_err(),
            "a billion laughs is refused"
        );
        assert!(
            read_document("# only a comment\n", 1)
                .expect("fine")
                .is_none()
        );
    }
}
