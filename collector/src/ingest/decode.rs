//! Request bodies → OTLP messages: protobuf or the OTLP/JSON mapping (hex
//! ids, lowerCamelCase, enums as integers), chosen by `Content-Type`, after
//! gzip is undone within the size limit.

use std::io::Read;

use prost::Message;
use serde::de::DeserializeOwned;

use super::lenient::Lenient;
use crate::error::IngestError;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// The encoding named by a `Content-Type` header.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, IngestError> {
        let media = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            other => Err(IngestError::UnsupportedMediaType(format!(
                "content-type {other:?} is not supported: use application/x-protobuf or application/json"
            ))),
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// Undoes `Content-Encoding` (none, `identity` or `gzip`), refusing output
/// larger than `limit` bytes.
pub fn decompress(
    content_encoding: Option<&str>,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, IngestError> {
    match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            let mut decoder = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                IngestError::Malformed(format!("gzip body could not be decompressed: {e}"))
            })?;
            if out.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            Ok(out.into())
        }
        Some(other) => Err(IngestError::UnsupportedMediaType(format!(
            "content-encoding {other:?} is not supported: use gzip"
        ))),
    }
}

/// Decodes an OTLP message in `encoding`; `what` names it in errors.
pub fn decode<T: Message + Default + DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
    what: &str,
) -> Result<T, IngestError> {
    match encoding {
        Encoding::Protobuf => T::decode(body)
            .map_err(|e| IngestError::Malformed(format!("{what}: invalid protobuf: {e}"))),
        Encoding::Json => {
            // Doubles may be strings ("1.5", "NaN"), as protobuf's JSON mapping allows.
            let mut deserializer = serde_json::Deserializer::from_slice(body);
            serde_path_to_error::deserialize(Lenient(&mut deserializer)).map_err(|e| {
                IngestError::Malformed(format!(
                    "{what}: invalid JSON at {}: {}",
                    e.path(),
                    e.inner()
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    #[test]
    fn json_follows_the_otlp_mapping() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
            "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"7"}}],"unknownField":1}]}]}]}"#;
        let request: ExportTraceServiceRequest = decode(Encoding::Json, body, "traces").unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    }

    #[test]
    fn doubles_may_be_strings_as_the_protobuf_json_mapping_allows() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","name":"x","attributes":[
            {"key":"a","value":{"doubleValue":"1.5"}},{"key":"b","value":{"doubleValue":"NaN"}},
            {"key":"c","value":{"doubleValue":"-Infinity"}},{"key":"d","value":{"doubleValue":2}},
            {"key":"e","value":{"intValue":"7"}}]}]}]}]}"#;
        let request: ExportTraceServiceRequest = decode(Encoding::Json, body, "traces").unwrap();
        let values: Vec<Option<Value>> = request.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .iter()
            .map(|kv| kv.value.clone().and_then(|v| v.value))
            .collect();
        assert_eq!(values[0], Some(Value::DoubleValue(1.5)));
        assert!(matches!(values[1], Some(Value::DoubleValue(d)) if d.is_nan()));
        assert_eq!(values[2], Some(Value::DoubleValue(f64::NEG_INFINITY)));
        assert_eq!(values[3], Some(Value::DoubleValue(2.0)));
        assert_eq!(values[4], Some(Value::IntValue(7)));
        let err = decode::<ExportTraceServiceRequest>(
            Encoding::Json,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"a","value":{"doubleValue":"lots"}}]}]}]}]}"#,
            "traces",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(r#"invalid double "lots""#),
            "{err}"
        );
    }

    #[test]
    fn malformed_bodies_name_what_was_wrong() {
        let err = decode::<ExportTraceServiceRequest>(
            Encoding::Json,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
            "traces",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
            "{err}"
        );
        let err =
            decode::<ExportTraceServiceRequest>(Encoding::Protobuf, &[0x0a, 0xff, 0x01], "traces")
                .unwrap_err();
        assert!(err.to_string().contains("invalid protobuf"), "{err}");
    }

    #[test]
    fn gzip_is_undone_within_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&[b'a'; 10_000]).unwrap();
        let gz = bytes::Bytes::from(encoder.finish().unwrap());
        assert_eq!(
            decompress(Some("gzip"), gz.clone(), 10_000).unwrap().len(),
            10_000
        );
        assert!(matches!(
            decompress(Some("gzip"), gz, 9_999),
            Err(IngestError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(Some("br"), bytes::Bytes::new(), 10),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }
}
