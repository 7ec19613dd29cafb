//! Sends encoded `ExportTraceServiceRequest`s to the OTLP endpoint, over
//! gRPC (`TraceService/Export`, the bytes framed as they are) or HTTP
//! (`POST /v1/traces`, `application/x-protobuf`), with the configured
//! headers and timeout. Retries follow the OTLP specification: retryable
//! codes (gRPC UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, DATA_LOSS; RESOURCE_EXHAUSTED with a RetryInfo; HTTP 429,
//! 502, 503, 504, no response) are tried again with exponential backoff and
//! jitter, waiting at least as long as the server asks (RetryInfo,
//! `Retry-After`), three times at most and never past the export timeout.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_types::StatusExt as _;

use super::spans::SpanPipelineError;
use crate::model::bootstrap::{Otlp, OtlpProtocol};

/// Retries after the first attempt, at most.
const MAX_RETRIES: u32 = 3;
/// The first backoff; it doubles up to [`MAX_DELAY`].
const INITIAL_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
/// Random time added to each backoff, at most.
const MAX_JITTER_MS: u64 = 100;
/// Longest wait a server's throttling hint is honoured for.
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// Why an export failed (after its retries).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The gRPC call failed.
    #[error("OTLP/gRPC export: {0}")]
    Grpc(Box<tonic::Status>),
    /// The HTTP request got no response.
    #[error("OTLP/HTTP export: {0}")]
    Http(String),
    /// The HTTP endpoint answered with an error status.
    #[error("OTLP/HTTP export: status {0}")]
    Status(u16),
    /// No answer within the export timeout.
    #[error("OTLP export timed out")]
    Timeout,
}

/// What to do about a failed attempt.
enum Retry {
    No,
    Yes,
    /// The server asked to wait this long first.
    After(Duration),
}

/// An OTLP client for one endpoint; a clone shares its connection (each
/// export in flight holds one).
#[derive(Clone)]
pub enum Exporter {
    /// OTLP/gRPC.
    Grpc {
        /// The client over a lazily connected channel.
        client: Box<tonic::client::Grpc<tonic::transport::Channel>>,
        /// Extra metadata sent with every export.
        metadata: tonic::metadata::MetadataMap,
        /// Timeout of one export.
        timeout: Duration,
    },
    /// OTLP/HTTP with protobuf bodies.
    Http {
        /// The HTTP/1.1 client.
        client: Box<Client<HttpConnector, Full<Payload>>>,
        /// `…/v1/traces`.
        uri: http::Uri,
        /// Extra headers sent with every export.
        headers: http::HeaderMap,
        /// Timeout of one export.
        timeout: Duration,
    },
}

impl Exporter {
    /// A client for `otlp`; called inside the export thread's runtime.
    pub fn new(otlp: &Otlp) -> Result<Self, SpanPipelineError> {
        let invalid = |e: &dyn std::fmt::Display| {
            SpanPipelineError::Endpoint(otlp.endpoint.clone(), e.to_string())
        };
        if otlp.protocol == OtlpProtocol::HttpProtobuf {
            let uri: http::Uri = otlp.endpoint.parse().map_err(|e| invalid(&e))?;
            let mut headers = http::HeaderMap::new();
            for (key, value) in &otlp.headers {
                let name = http::HeaderName::try_from(key.as_str())
                    .map_err(|_| SpanPipelineError::Header(key.clone()))?;
                let value = http::HeaderValue::try_from(value.as_str())
                    .map_err(|_| SpanPipelineError::Header(key.clone()))?;
                headers.insert(name, value);
            }
            let client = Client::builder(TokioExecutor::new()).build_http();
            return Ok(Self::Http {
                client: Box::new(client),
                uri,
                headers,
                timeout: otlp.timeout,
            });
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &otlp.headers {
            let key =
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| SpanPipelineError::Header(name.clone()))?;
            let value = value
                .parse()
                .map_err(|_| SpanPipelineError::Header(name.clone()))?;
            metadata.insert(key, value);
        }
        let endpoint = tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())
            .map_err(|e| invalid(&e))?;
        if endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Err(invalid(
                &"https endpoints are not supported for span export",
            ));
        }
        let channel = endpoint.timeout(otlp.timeout).connect_lazy();
        Ok(Self::Grpc {
            client: Box::new(tonic::client::Grpc::new(channel)),
            metadata,
            timeout: otlp.timeout,
        })
    }

    /// Sends one encoded request, retrying as the OTLP specification asks
    /// within the export timeout. Ok: the spans the endpoint rejected (its
    /// partial success), usually 0.
    pub async fn export(&mut self, request: Payload) -> Result<u64, ExportError> {
        let timeout = match self {
            Self::Grpc { timeout, .. } | Self::Http { timeout, .. } => *timeout,
        };
        let start = Instant::now();
        let mut delay = INITIAL_DELAY;
        let mut cap = MAX_DELAY;
        let mut retries = 0;
        loop {
            let remaining = timeout.saturating_sub(start.elapsed());
            let attempt = tokio::time::timeout(remaining, self.attempt(request.clone())).await;
            let (error, retry) = match attempt {
                Ok(Ok(rejected)) => return Ok(rejected),
                Ok(Err(failed)) => failed,
                Err(_) => (ExportError::Timeout, Retry::No),
            };
            if retries >= MAX_RETRIES {
                return Err(error);
            }
            match retry {
                Retry::No => return Err(error),
                Retry::Yes => {}
                Retry::After(wait) => {
                    let wait = wait.min(MAX_THROTTLE);
                    if wait > cap {
                        cap = MAX_THROTTLE;
                    }
                    delay = delay.max(wait);
                }
            }
            let sleep = (delay + Duration::from_millis(fastrand::u64(..=MAX_JITTER_MS))).min(cap);
            if sleep >= timeout.saturating_sub(start.elapsed()) {
                return Err(error);
            }
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(cap);
            retries += 1;
        }
    }

    async fn attempt(&mut self, request: Payload) -> Result<u64, (ExportError, Retry)> {
        match self {
            Self::Grpc {
                client,
                metadata,
                timeout,
            } => {
                let codec = RawCodec {
                    len: request.remaining(),
                };
                let mut call = tonic::Request::new(request);
                *call.metadata_mut() = metadata.clone();
                call.set_timeout(*timeout);
                let sent = async {
                    client
                        .ready()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    let path = http::uri::PathAndQuery::from_static(
                        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                    );
                    client.unary(call, path, codec).await
                };
                match sent.await {
                    Ok(response) => Ok(rejected(&response.into_inner())),
                    Err(status) => {
                        let retry = grpc_retry(&status);
                        Err((ExportError::Grpc(Box::new(status)), retry))
                    }
                }
            }
            Self::Http {
                client,
                uri,
                headers,
                ..
            } => {
                let mut call = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(request))
                    .map_err(|e| (ExportError::Http(e.to_string()), Retry::No))?;
                call.headers_mut()
                    .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                let response = client
                    .request(call)
                    .await
                    .map_err(|e| (ExportError::Http(e.to_string()), Retry::Yes))?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response.into_body().collect().await;
                if !(200..300).contains(&status) {
                    let retry = match (status, retry_after) {
                        (429 | 503, Some(wait)) => Retry::After(wait),
                        (429 | 502 | 503 | 504, _) => Retry::Yes,
                        _ => Retry::No,
                    };
                    return Err((ExportError::Status(status), retry));
                }
                let body = body.map(|b| b.to_bytes()).unwrap_or_default();
                Ok(ExportTraceServiceResponse::decode(body)
                    .map(|r| rejected(&r))
                    .unwrap_or(0))
            }
        }
    }
}

/// An encoded `ExportTraceServiceRequest` in pieces — the envelope's head,
/// each worker's batch as the worker encoded it, the envelope's tail — sent
/// without joining them: gRPC copies them once into its frame, HTTP writes
/// them as they are (vectored).
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// Never an empty chunk ([`Payload::push`] skips them): an empty
    /// `chunk()` before the end would end a body early for a writer that
    /// stops at the first empty chunk (hyper's flattening write does).
    chunks: Vec<Bytes>,
    /// The first chunk not yet read whole.
    at: usize,
    /// Bytes not yet read.
    remaining: usize,
}

impl Payload {
    /// Appends `chunk` (an empty one is skipped).
    pub fn push(&mut self, chunk: impl Into<Bytes>) {
        let chunk = chunk.into();
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.push(chunk);
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        let mut payload = Self::default();
        payload.push(bytes);
        payload
    }
}

impl Buf for Payload {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        let chunk = self.chunks.get(self.at).map_or(&[][..], |c| c.as_ref());
        debug_assert!(!chunk.is_empty() || self.remaining == 0);
        chunk
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a payload");
        self.remaining -= cnt;
        while cnt > 0 {
            let chunk = &mut self.chunks[self.at];
            if cnt < chunk.len() {
                chunk.advance(cnt);
                return;
            }
            cnt -= chunk.len();
            self.at += 1;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let chunks = self.chunks[self.at..].iter();
        let mut filled = 0;
        for (slot, chunk) in dst.iter_mut().zip(chunks) {
            *slot = std::io::IoSlice::new(chunk);
            filled += 1;
        }
        filled
    }
}

/// The spans a response says were rejected.
fn rejected(response: &ExportTraceServiceResponse) -> u64 {
    response
        .partial_success
        .as_ref()
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// Whether a gRPC failure is tried again (the OTLP specification's table).
fn grpc_retry(status: &tonic::Status) -> Retry {
    use tonic::Code;
    let hint = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    match status.code() {
        Code::ResourceExhausted => hint.map_or(Retry::No, Retry::After),
        Code::Unavailable => match hint.filter(|d| !d.is_zero()) {
            Some(wait) => Retry::After(wait),
            None => Retry::Yes,
        },
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Retry::Yes,
        _ => Retry::No,
    }
}

/// A request already encoded, sent as it is; the response decoded.
struct RawCodec {
    /// The request's length in bytes.
    len: usize,
}

impl Codec for RawCodec {
    type Encode = Payload;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder { len: self.len }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

struct RawEncoder {
    /// The request's length in bytes.
    len: usize,
}

impl Encoder for RawEncoder {
    type Item = Payload;
    type Error = tonic::Status;

    fn encode(&mut self, item: Payload, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }

    /// Room for the whole message and gRPC's 5-byte frame header at once,
    /// instead of tonic's default 8 KiB buffer replaced by a larger one
    /// under every batch. Framing is unchanged; yielding stays at tonic's
    /// default of 32 KiB.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(self.len + 5, 32 << 10)
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// What the test endpoint saw: content type, API key and body per request.
    type Seen = tokio::sync::mpsc::UnboundedReceiver<(String, String, Vec<u8>)>;

    /// An OTLP/HTTP endpoint that answers 503 (Retry-After: 0) to the first
    /// request and 200 to the rest.
    async fn endpoint() -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (record, seen) = tokio::sync::mpsc::unbounded_channel();
        let requests = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (record, requests) = (record.clone(), requests.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (record, requests) = (record.clone(), requests.clone());
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (kind, key) = (header("content-type"), header("x-api-key"));
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = record.send((kind, key, body.to_vec()));
                        let first = requests.fetch_add(1, Ordering::Relaxed) == 0;
                        let status = if first { 503 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("retry-after", "0")
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn http_exports_post_protobuf_with_headers_and_retry_a_503() {
        let (url, mut seen) = endpoint().await;
        let otlp = Otlp {
            endpoint: format!("{url}/v1/traces"),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: vec![("x-api-key".into(), "k3y".into())],
            timeout: Duration::from_secs(10),
        };
        let mut exporter = Exporter::new(&otlp).expect("an exporter");
        let request = vec![0x0a, 0x00];
        // In two chunks, as a request of a header and a batch is sent.
        let mut payload = Payload::from(request[..1].to_vec());
        payload.push(request[1..].to_vec());
        assert_eq!(exporter.export(payload).await.expect("exported"), 0);
        let mut requests = Vec::new();
        while let Ok(request) = seen.try_recv() {
            requests.push(request);
        }
        assert_eq!(requests.len(), 2, "the 503 was retried once");
        for (kind, key, body) in &requests {
            assert_eq!(kind, "application/x-protobuf");
            assert_eq!(key, "k3y");
            assert_eq!(body, &request);
        }
    }

    #[test]
    fn a_payload_reads_as_its_chunks_joined() {
        let mut payload = Payload::default();
        for chunk in [&b"head"[..], b"", b"spans-one", b"x", b"spans-two"] {
            payload.push(chunk.to_vec());
        }
        let joined = b"headspans-onexspans-two";
        assert_eq!(payload.remaining(), joined.len());
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        assert_eq!(
            payload.chunks_vectored(&mut slices),
            4,
            "the empty chunk is skipped"
        );
        for split in 0..=joined.len() {
            let mut read = payload.clone();
            let mut front = vec![0; split];
            read.copy_to_slice(&mut front);
            assert_eq!(front, &joined[..split]);
            assert_eq!(read.remaining(), joined.len() - split);
            let mut rest_slices = [std::io::IoSlice::new(&[]); 8];
            let filled = read.chunks_vectored(&mut rest_slices);
            let rest: Vec<u8> = rest_slices[..filled]
                .iter()
                .flat_map(|s| s.to_vec())
                .collect();
            assert_eq!(rest, &joined[split..], "split at {split}");
            assert_eq!(rest.len(), read.remaining());
        }
    }

    #[test]
    fn a_payload_copied_chunk_by_chunk_is_whole() {
        let mut payload = Payload::from(b"head".to_vec());
        payload.push(vec![7; 40_000]);
        payload.push(b"tail".to_vec());
        let mut joined = b"head".to_vec();
        joined.extend([7; 40_000]);
        joined.extend(b"tail");
        let mut out = Vec::new();
        out.put(payload);
        assert_eq!(out, joined);
    }

    #[tokio::test]
    async fn a_refused_export_fails_within_its_timeout() {
        // Nothing listens on the port: connection refused is retried, and
        // the export gives up within its timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let otlp = Otlp {
            endpoint: format!("http://127.0.0.1:{port}"),
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            timeout: Duration::from_millis(500),
        };
        let mut exporter = Exporter::new(&otlp).expect("an exporter");
        let start = Instant::now();
        assert!(exporter.export(Payload::default()).await.is_err());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
