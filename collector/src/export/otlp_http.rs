//! OTLP/HTTP exporter: protobuf bodies POSTed to `/v1/traces` and
//! `/v1/metrics`, optionally gzipped.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::{Rejected, SendError};
use crate::config::{Compression, ExporterConfig};

/// The longest response body read, in bytes (an OTLP response holds a
/// partial success at most; an error's text is logged by its first 200
/// bytes).
const MAX_RESPONSE: usize = 4 << 20;

/// Sends OTLP over HTTP.
pub struct OtlpHttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    traces: Uri,
    metrics: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
    timeout: Duration,
}

fn signal_uri(base: &str, path: &str) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    let full = if base.ends_with("/v1/traces") || base.ends_with("/v1/metrics") {
        let root = base
            .trim_end_matches("/v1/traces")
            .trim_end_matches("/v1/metrics");
        format!("{root}{path}")
    } else {
        format!("{base}{path}")
    };
    full.parse().map_err(|e| format!("endpoint {full:?}: {e}"))
}

impl OtlpHttpClient {
    /// A client for `config.endpoint`.
    pub fn new(config: &ExporterConfig) -> Result<Self, String> {
        let mut headers = Vec::new();
        for (key, value) in &config.headers {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|e| format!("header {key:?}: {e}"))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| format!("header value for {key}: {e}"))?;
            headers.push((name, value));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout.0));
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            traces: signal_uri(&config.endpoint, "/v1/traces")?,
            metrics: signal_uri(&config.endpoint, "/v1/metrics")?,
            headers,
            gzip: config.compression == Compression::Gzip,
            timeout: config.timeout.0,
        })
    }

    /// Posts `body` to `uri`; a success's answer (its body empty when it
    /// did not come whole in time or was over [`MAX_RESPONSE`]).
    async fn post(&self, uri: &Uri, body: Vec<u8>) -> Result<Answer, SendError> {
        let mut builder =
            Request::post(uri.clone()).header(http::header::CONTENT_TYPE, "application/x-protobuf");
        let body = if self.gzip {
            builder = builder.header(http::header::CONTENT_ENCODING, "gzip");
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            encoder
                .write_all(&body)
                .and_then(|()| encoder.finish())
                .map_err(|e| SendError::permanent(format!("gzip: {e}")))?
        } else {
            body
        };
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::permanent(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = tokio::time::timeout_at(deadline, self.client.request(request))
            .await
            .map_err(|_| SendError::transient("timed out", None))?
            .map_err(|e| SendError::transient(format!("{uri}: {e}"), None))?;
        let status = response.status();
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body is read within the attempt's time and up to
        // MAX_RESPONSE: a receiver that sends a head and then trickles or
        // never ends its body held the export for ever, and one that sent
        // an endless body grew memory without bound. The status decides;
        // a body cut short only loses its text.
        let body = Limited::new(response.into_body(), MAX_RESPONSE).collect();
        let body = tokio::time::timeout_at(deadline, body)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(Answer { json, body });
        }
        let message = format!(
            "{uri}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Err(SendError::transient(message, retry_after)),
            _ => Err(SendError::permanent(message)),
        }
    }

    /// Exports spans; what the backend rejected of them (the success
    /// response's `ExportTraceServiceResponse`, OTLP/HTTP; an empty or
    /// unreadable one rejects nothing).
    pub async fn send_spans(
        &self,
        request: &ExportTraceServiceRequest,
    ) -> Result<Rejected, SendError> {
        let answer = self.post(&self.traces, request.encode_to_vec()).await?;
        Ok(answer.rejected("rejectedSpans", |body| {
            let partial = ExportTraceServiceResponse::decode(body)?.partial_success;
            Ok(partial.map(|p| Rejected::of(p.rejected_spans, p.error_message)))
        }))
    }

    /// Exports metrics; what the backend rejected of their data points.
    pub async fn send_metrics(
        &self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<Rejected, SendError> {
        let answer = self.post(&self.metrics, request.encode_to_vec()).await?;
        Ok(answer.rejected("rejectedDataPoints", |body| {
            let partial = ExportMetricsServiceResponse::decode(body)?.partial_success;
            Ok(partial.map(|p| Rejected::of(p.rejected_data_points, p.error_message)))
        }))
    }
}

/// A success's answer: its body, and whether it says it is JSON.
struct Answer {
    json: bool,
    body: Bytes,
}

impl Answer {
    /// What the answer says was rejected: its `ExportTraceServiceResponse`
    /// (or metrics') partial success, in protobuf (`decode`), as OTLP/HTTP
    /// answers a protobuf request, or in OTLP JSON from a receiver that
    /// answers in it (`count` the rejected field's JSON name; an int64 is
    /// a string there, a number read too). An empty body rejects nothing;
    /// an unreadable one is logged at DEBUG and rejects nothing.
    fn rejected(
        &self,
        count: &str,
        decode: impl FnOnce(&[u8]) -> Result<Option<Rejected>, prost::DecodeError>,
    ) -> Rejected {
        if self.body.is_empty() {
            return Rejected::default();
        }
        let read = if self.json {
            serde_json::from_slice::<serde_json::Value>(&self.body)
                .map(|answer| json_rejected(&answer, count))
                .map_err(|e| e.to_string())
        } else {
            decode(&self.body).map_err(|e| e.to_string())
        };
        read.unwrap_or_else(|error| {
            tracing::debug!(%error, "unreadable OTLP/HTTP success answer");
            None
        })
        .unwrap_or_default()
    }
}

/// `partialSuccess` of an OTLP JSON answer.
fn json_rejected(answer: &serde_json::Value, count: &str) -> Option<Rejected> {
    let partial = answer.get("partialSuccess")?;
    let count = match partial.get(count) {
        Some(serde_json::Value::String(n)) => n.parse().unwrap_or(0),
        Some(n) => n.as_i64().unwrap_or(0),
        None => 0,
    };
    let message = partial.get("errorMessage").and_then(|m| m.as_str());
    Some(Rejected::of(count, message.unwrap_or_default().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExportProtocol;

    /// A receiver that sends a head and then only part of its body, its
    /// connection left open, does not hold an export past its timeout: a
    /// 200 is a success, a 503 a failure to retry. Before, the body was
    /// awaited for as long as the connection stayed open.
    #[tokio::test]
    async fn a_response_body_that_never_ends_is_left_at_the_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (status_line, ok) in [
            ("HTTP/1.1 200 OK", true),
            ("HTTP/1.1 503 Service Unavailable", false),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 65536];
                let _ = stream.read(&mut buf).await;
                let answer = format!("{status_line}\r\ncontent-length: 100\r\n\r\nab");
                stream.write_all(answer.as_bytes()).await.unwrap();
                // (open and silent until the client goes)
                while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
            let mut config =
                ExporterConfig::new(ExportProtocol::OtlpHttp, format!("http://{addr}"));
            config.compression = Compression::None;
            config.timeout = crate::units::HumanDuration(Duration::from_millis(500));
            let client = OtlpHttpClient::new(&config).unwrap();
            let request = ExportTraceServiceRequest::default();
            let sent = tokio::time::timeout(Duration::from_secs(30), client.send_spans(&request))
                .await
                .expect("left at the timeout");
            match sent {
                Ok(_) => assert!(ok, "{status_line}: a success"),
                Err(error) => {
                    assert!(!ok, "{status_line}: {}", error.message);
                    assert!(error.retryable, "{}", error.message);
                }
            }
        }
    }

    /// A success's answer says what the backend rejected (OTLP's partial
    /// success): in protobuf as OTLP/HTTP answers, in JSON from a receiver
    /// that answers in it (an int64 as a string), nothing in an empty or
    /// unreadable body.
    #[tokio::test]
    async fn a_successs_partial_success_is_read_in_protobuf_and_json() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let json = br#"{"partialSuccess":{"rejectedSpans":"4","errorMessage":"too new"}}"#;
        let cases: [(&str, &[u8], Rejected); 5] = [
            (
                "application/x-protobuf",
                &partial,
                Rejected::of(3, "too old".into()),
            ),
            ("application/json", json, Rejected::of(4, "too new".into())),
            (
                "application/json",
                br#"{"partialSuccess":{"rejectedSpans":5}}"#,
                Rejected::of(5, String::new()),
            ),
            ("application/x-protobuf", b"", Rejected::default()),
            (
                "application/x-protobuf",
                b"\xff\xff\xff",
                Rejected::default(),
            ),
        ];
        for (content_type, body, expected) in cases {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let body = body.to_vec();
            tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 65536];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(&body).await.unwrap();
                while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
            let mut config =
                ExporterConfig::new(ExportProtocol::OtlpHttp, format!("http://{addr}"));
            config.compression = Compression::None;
            let client = OtlpHttpClient::new(&config).unwrap();
            let rejected = client
                .send_spans(&ExportTraceServiceRequest::default())
                .await
                .unwrap();
            assert_eq!(rejected, expected, "{content_type}");
        }
    }

    #[test]
    fn signal_paths_are_appended_once() {
        assert_eq!(
            signal_uri("http://b:4318", "/v1/traces")
                .unwrap()
                .to_string(),
            "http://b:4318/v1/traces"
        );
        assert_eq!(
            signal_uri("http://b:4318/", "/v1/metrics")
                .unwrap()
                .to_string(),
            "http://b:4318/v1/metrics"
        );
        assert_eq!(
            signal_uri("http://b:4318/v1/traces", "/v1/metrics")
                .unwrap()
                .to_string(),
            "http://b:4318/v1/metrics"
        );
    }
}
