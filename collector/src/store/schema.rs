//! The span index's schema: what is searchable (indexed), what is read
//! column-wise for aggregation (fast), and the complete span kept as stored
//! bytes so a trace reads back exactly as it was sent.

use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, JsonObjectOptions, NumericOptions, Schema,
    TextFieldIndexing, TextOptions,
};

/// Field names, shared by the writer and the readers.
pub mod names {
    /// 16 raw bytes; indexed and fast.
    pub const TRACE_ID: &str = "trace_id";
    /// The span id as a big-endian u64; fast (read with the trace, not
    /// searched: a unique term per span would double the term dictionary).
    pub const SPAN_ID: &str = "span_id";
    /// The parent span id as a big-endian u64 (0 for a root); fast.
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    /// Resource `service.name`.
    pub const SERVICE: &str = "service";
    /// The span name.
    pub const OPERATION: &str = "operation";
    /// OTLP span kind (0-5).
    pub const KIND: &str = "kind";
    /// Start time in whole seconds since the epoch; indexed.
    pub const START_SECONDS: &str = "start_s";
    /// Start time in nanoseconds since the epoch; fast.
    pub const START: &str = "start_ns";
    /// Duration in nanoseconds; fast.
    pub const DURATION: &str = "duration_ns";
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub const STATUS: &str = "status";
    /// `http.request.method`.
    pub const HTTP_METHOD: &str = "http_method";
    /// `http.route`.
    pub const HTTP_ROUTE: &str = "http_route";
    /// `http.response.status_code`.
    pub const HTTP_STATUS: &str = "http_status_code";
    /// `peer.service`.
    pub const PEER_SERVICE: &str = "peer_service";
    /// Every span and resource attribute, values as strings.
    pub const ATTRIBUTES: &str = "attributes";
    /// The complete span (a one-span OTLP `ResourceSpans`); stored only.
    pub const SPAN: &str = "span";
    /// `tracemesh.response_flags` (Envoy's response flags the agent sets);
    /// fast, for the error breakdown. The attribute stays in the JSON field
    /// too, so tag searches on it work as on any other.
    pub const RESPONSE_FLAGS: &str = "response_flags";
    /// Dependency edges this span completed, `caller` + [`EDGE_SEPARATOR`] +
    /// `callee`, one value per edge (see `crate::edges`); indexed and fast.
    pub const EDGE: &str = "edge";
    /// The edges of [`EDGE`] whose call failed.
    pub const EDGE_ERROR: &str = "edge_error";
    /// Between caller and callee in an edge value (ASCII unit separator:
    /// no service name holds it).
    pub const EDGE_SEPARATOR: char = '\u{1f}';
    /// 1 on the document of an exact copy of a span indexed shortly before
    /// (a client's resend, see `crate::resends`); absent on every other.
    /// Indexed only: every search and aggregation leaves these documents
    /// out. Partitions created before it existed lack the field.
    pub const DUPLICATE: &str = "duplicate";
    /// Every event's attributes, and its name as `event`, values as
    /// strings: what Jaeger shows as the span's log fields, which a tag
    /// search matches beside [`ATTRIBUTES`] (as Jaeger's stores match log
    /// fields). Indexed only. Partitions created before it existed lack
    /// the field.
    pub const EVENTS: &str = "events";
}

/// The fields of one index, looked up once.
#[derive(Debug, Clone, Copy)]
pub struct SpanFields {
    /// See [`names::TRACE_ID`].
    pub trace_id: Field,
    /// See [`names::SPAN_ID`].
    pub span_id: Field,
    /// See [`names::PARENT_SPAN_ID`].
    pub parent_span_id: Field,
    /// See [`names::SERVICE`].
    pub service: Field,
    /// See [`names::OPERATION`].
    pub operation: Field,
    /// See [`names::KIND`].
    pub kind: Field,
    /// See [`names::START_SECONDS`].
    pub start_seconds: Field,
    /// See [`names::START`].
    pub start: Field,
    /// See [`names::DURATION`].
    pub duration: Field,
    /// See [`names::STATUS`].
    pub status: Field,
    /// See [`names::HTTP_METHOD`].
    pub http_method: Field,
    /// See [`names::HTTP_ROUTE`].
    pub http_route: Field,
    /// See [`names::HTTP_STATUS`].
    pub http_status: Field,
    /// See [`names::PEER_SERVICE`].
    pub peer_service: Field,
    /// See [`names::ATTRIBUTES`].
    pub attributes: Field,
    /// See [`names::SPAN`].
    pub span: Field,
    /// See [`names::RESPONSE_FLAGS`].
    pub response_flags: Field,
    /// See [`names::EDGE`].
    pub edge: Field,
    /// See [`names::EDGE_ERROR`].
    pub edge_error: Field,
    /// See [`names::DUPLICATE`]; `None` in a partition created before it.
    pub duplicate: Option<Field>,
    /// See [`names::EVENTS`]; `None` in a partition created before it.
    pub events: Option<Field>,
    /// How many fields the schema has. A partition created by an earlier
    /// version has fewer: the first ones, each with the same id (fields
    /// are only ever added last).
    pub count: usize,
}

/// A whole-value text field, searched by exact term only.
fn keyword() -> TextOptions {
    let indexing = TextFieldIndexing::default()
        .set_tokenizer("raw")
        .set_index_option(IndexRecordOption::Basic)
        .set_fieldnorms(false);
    TextOptions::default().set_indexing_options(indexing)
}

/// A [`keyword`] the query side also reads column-wise (aggregations, the
/// spans of a trace).
fn fast_keyword() -> TextOptions {
    keyword().set_fast("raw")
}

fn number() -> NumericOptions {
    NumericOptions::default().set_indexed().set_fast()
}

/// The schema every partition is created with.
pub fn build() -> Schema {
    use names::*;
    let mut builder = Schema::builder();
    builder.add_bytes_field(TRACE_ID, BytesOptions::default().set_indexed().set_fast());
    builder.add_u64_field(SPAN_ID, NumericOptions::default().set_fast());
    builder.add_u64_field(PARENT_SPAN_ID, NumericOptions::default().set_fast());
    builder.add_text_field(SERVICE, fast_keyword());
    builder.add_text_field(OPERATION, fast_keyword());
    builder.add_u64_field(KIND, number());
    builder.add_u64_field(START_SECONDS, NumericOptions::default().set_indexed());
    builder.add_u64_field(START, NumericOptions::default().set_fast());
    builder.add_u64_field(DURATION, NumericOptions::default().set_fast());
    builder.add_u64_field(STATUS, number());
    builder.add_text_field(HTTP_METHOD, keyword());
    builder.add_text_field(HTTP_ROUTE, keyword());
    builder.add_u64_field(HTTP_STATUS, number());
    builder.add_text_field(PEER_SERVICE, keyword());
    builder.add_json_field(ATTRIBUTES, attribute_object());
    builder.add_bytes_field(SPAN, BytesOptions::default().set_stored());
    builder.add_text_field(RESPONSE_FLAGS, fast_keyword());
    builder.add_text_field(EDGE, fast_keyword());
    builder.add_text_field(EDGE_ERROR, fast_keyword());
    // Fields are added last only: the fields before keep their ids, so
    // documents built with this schema fit a partition created without
    // the newer ones, once their values are left out (see
    // `SpanStore::apply_prepared`).
    builder.add_u64_field(DUPLICATE, NumericOptions::default().set_indexed());
    builder.add_json_field(EVENTS, attribute_object());
    builder.build()
}

/// A JSON field of attributes: every value searched as a whole term by
/// its key's path.
fn attribute_object() -> JsonObjectOptions {
    let indexing = TextFieldIndexing::default()
        .set_tokenizer("raw")
        .set_index_option(IndexRecordOption::Basic)
        .set_fieldnorms(false);
    JsonObjectOptions::default()
        .set_indexing_options(indexing)
        .set_expand_dots_enabled()
}

impl SpanFields {
    /// Looks the fields up in a partition's schema.
    pub fn of(schema: &Schema) -> tantivy::Result<Self> {
        use names::*;
        let f = |name| schema.get_field(name);
        Ok(Self {
            trace_id: f(TRACE_ID)?,
            span_id: f(SPAN_ID)?,
            parent_span_id: f(PARENT_SPAN_ID)?,
            service: f(SERVICE)?,
            operation: f(OPERATION)?,
            kind: f(KIND)?,
            start_seconds: f(START_SECONDS)?,
            start: f(START)?,
            duration: f(DURATION)?,
            status: f(STATUS)?,
            http_method: f(HTTP_METHOD)?,
            http_route: f(HTTP_ROUTE)?,
            http_status: f(HTTP_STATUS)?,
            peer_service: f(PEER_SERVICE)?,
            attributes: f(ATTRIBUTES)?,
            span: f(SPAN)?,
            response_flags: f(RESPONSE_FLAGS)?,
            edge: f(EDGE)?,
            edge_error: f(EDGE_ERROR)?,
            duplicate: f(DUPLICATE).ok(),
            events: f(EVENTS).ok(),
            count: schema.num_fields(),
        })
    }
}
