//! Sends encoded `ExportTraceServiceRequest`s to the OTLP endpoint, over
//! gRPC (`TraceService/Export`: a unary call over hyper's HTTP/2 client,
//! the bytes framed as one gRPC message, never copied) or HTTP
//! (`POST /v1/traces`, `application/x-protobuf`), with the configured
//! headers and timeout. Retries follow the OTLP specification: retryable
//! codes (gRPC UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, DATA_LOSS; RESOURCE_EXHAUSTED with a RetryInfo; HTTP 429,
//! 502, 503, 504, no response) are tried again with exponential backoff and
//! jitter, waiting at least as long as the server asks (RetryInfo,
//! `Retry-After`), three times at most and never past the export timeout.
//! A gRPC connection with no response frame for half the timeout (at
//! least a second) while a call waits is pinged (HTTP/2 PING) and closed
//! unanswered, so that exports go on over a new one; an HTTP/1.1 one is
//! closed with the request that timed out.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
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

/// The gRPC method an OTLP/gRPC export calls.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The exporter's name and version, sent as `user-agent` as the OTLP
/// exporter specification asks.
const USER_AGENT: &str = concat!("tracemesh/", env!("CARGO_PKG_VERSION"));
/// The longest response body read, in bytes: tonic's default limit of a
/// gRPC message, here of the whole body (OTLP/HTTP's too).
const MAX_RESPONSE: usize = 4 << 20;

/// An OTLP client for one endpoint; a clone shares its connection (each
/// export in flight holds one).
#[derive(Clone)]
pub struct Exporter {
    /// OTLP/gRPC (HTTP/2 with prior knowledge, the request framed as gRPC
    /// frames it) or OTLP/HTTP (HTTP/1.1, the request as the body).
    grpc: bool,
    /// The client; HTTP/2 only for gRPC.
    client: Client<HttpConnector, Full<Payload>>,
    /// `…/TraceService/Export` or `…/v1/traces`.
    uri: http::Uri,
    /// Sent with every export: the configured headers, `user-agent`,
    /// `content-type`, and for gRPC `te` (each attempt adds its
    /// `grpc-timeout`).
    headers: http::HeaderMap,
    /// Timeout of one export.
    timeout: Duration,
}

impl Exporter {
    /// A client for `otlp`; called inside the export thread's runtime.
    pub fn new(otlp: &Otlp) -> Result<Self, SpanPipelineError> {
        let invalid = |e: &dyn std::fmt::Display| {
            SpanPipelineError::Endpoint(otlp.endpoint.clone(), e.to_string())
        };
        let grpc = otlp.protocol == OtlpProtocol::Grpc;
        let mut uri: http::Uri = otlp.endpoint.parse().map_err(|e| invalid(&e))?;
        let mut headers = http::HeaderMap::new();
        for (key, value) in &otlp.headers {
            // (made lowercase, as gRPC metadata keys and HTTP/2 header
            // names are; a `-bin` key would be binary metadata, which a
            // configured text value is not)
            let name = http::HeaderName::try_from(key.as_str())
                .ok()
                .filter(|name| !(grpc && name.as_str().ends_with("-bin")))
                .ok_or_else(|| SpanPipelineError::Header(key.clone()))?;
            let value = http::HeaderValue::try_from(value.as_str())
                .map_err(|_| SpanPipelineError::Header(key.clone()))?;
            headers.insert(name, value);
        }
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(otlp.timeout));
        let mut client = Client::builder(TokioExecutor::new());
        if grpc {
            if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                return Err(invalid(
                    &"https endpoints are not supported for span export",
                ));
            }
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(invalid(&"a gRPC endpoint is http://host[:port]"));
            };
            uri = http::Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(GRPC_EXPORT_PATH)
                .build()
                .map_err(|e| invalid(&e))?;
            let content_type = http::HeaderValue::from_static("application/grpc");
            headers.insert(http::header::CONTENT_TYPE, content_type);
            headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
            // A connection that answers nothing while an export waits on
            // it (a collector's node gone without a FIN or RST, a
            // blackholed conntrack entry, a wedged proxy in between) is
            // pinged, and closed if the PING is not acknowledged in time:
            // the export's retry and the next export go over a new
            // connection. Without it every export on that connection timed
            // out, for as long as TCP kept it (about 15 minutes of
            // retransmissions, or for ever if something in between still
            // acknowledged the bytes). hyper counts the silence from the
            // last response frame (HEADERS, DATA or a PING's ACK), so an
            // export that starts on a connection quiet for longer than the
            // interval sends its PING at once: one 17-byte frame each way
            // per export on a quiet sidecar. Only while a call is open: an
            // idle exporter sends nothing. A collector that answers resets
            // gRPC servers' ping strikes with each response, so it never
            // sends `too_many_pings`. Half the export's timeout each, at
            // least a second (no PING flood from a tiny timeout).
            let half = (otlp.timeout / 2).max(Duration::from_secs(1));
            client
                .http2_only(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .http2_keep_alive_interval(Some(half))
                .http2_keep_alive_timeout(half)
                .http2_keep_alive_while_idle(false);
        } else {
            let value = http::HeaderValue::from_static("application/x-protobuf");
            headers.insert(http::header::CONTENT_TYPE, value);
        }
        Ok(Self {
            grpc,
            client: client.build(connector),
            uri,
            headers,
            timeout: otlp.timeout,
        })
    }

    /// Sends one encoded request, retrying as the OTLP specification asks
    /// within the export timeout. Ok: the spans the endpoint rejected (its
    /// partial success), usually 0.
    pub async fn export(&self, request: Payload) -> Result<u64, ExportError> {
        let timeout = self.timeout;
        let request = if self.grpc {
            grpc_framed(request)?
        } else {
            request
        };
        let start = Instant::now();
        let mut delay = INITIAL_DELAY;
        let mut cap = MAX_DELAY;
        let mut retries = 0;
        let mut last = None;
        loop {
            let remaining = timeout.saturating_sub(start.elapsed());
            // (a backoff that overran the export's time ends it with the
            // last attempt's error)
            if let (true, Some(error)) = (remaining.is_zero(), last.take()) {
                return Err(error);
            }
            let attempt = self.attempt(request.clone(), remaining);
            let attempt = tokio::time::timeout(remaining, attempt).await;
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
            last = Some(error);
            delay = (delay * 2).min(cap);
            retries += 1;
        }
    }

    /// One POST of `request` (gRPC-framed already for gRPC), with
    /// `remaining` of the export's time left.
    async fn attempt(
        &self,
        request: Payload,
        remaining: Duration,
    ) -> Result<u64, (ExportError, Retry)> {
        let mut call = http::Request::new(Full::new(request));
        *call.method_mut() = http::Method::POST;
        *call.uri_mut() = self.uri.clone();
        *call.headers_mut() = self.headers.clone();
        if self.grpc {
            // (the server's deadline is what is left of the export's)
            let timeout =
                http::HeaderValue::try_from(grpc_timeout(remaining)).expect("digits and a unit");
            call.headers_mut().insert("grpc-timeout", timeout);
            return grpc_call(&self.client, call).await;
        }
        let response = self
            .client
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
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await;
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

/// One unary gRPC call (gRPC over HTTP/2, PROTOCOL-HTTP2.md): its status
/// from the trailers, or from the headers of a Trailers-Only response, or
/// mapped from the HTTP status where there is none
/// (http-grpc-status-mapping.md); a request that got no response, as
/// [`request_failure`] says. Ok: the response's rejected spans; a
/// response of more than 4 MiB (tonic's default message limit) is
/// RESOURCE_EXHAUSTED.
async fn grpc_call(
    client: &Client<HttpConnector, Full<Payload>>,
    call: http::Request<Full<Payload>>,
) -> Result<u64, (ExportError, Retry)> {
    let failed = |status: tonic::Status| {
        let retry = grpc_retry(&status);
        (ExportError::Grpc(Box::new(status)), retry)
    };
    let response = client
        .request(call)
        .await
        .map_err(|error| failed(request_failure(error)))?;
    let (head, body) = response.into_parts();
    if let Some(status) = grpc_status(&head.headers) {
        // Trailers-Only: the status is all there is.
        return match status.code() {
            tonic::Code::Ok => Ok(0),
            _ => Err(failed(status)),
        };
    }
    let collected = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|error| {
            failed(match error.downcast::<LengthLimitError>() {
                Ok(_) => tonic::Status::resource_exhausted("a response past 4 MiB"),
                Err(error) => tonic::Status::from_error(error),
            })
        })?;
    let status = collected
        .trailers()
        .and_then(grpc_status)
        .unwrap_or_else(|| {
            let code = match head.status.as_u16() {
                400 => tonic::Code::Internal,
                401 => tonic::Code::Unauthenticated,
                403 => tonic::Code::PermissionDenied,
                404 => tonic::Code::Unimplemented,
                429 | 502 | 503 | 504 => tonic::Code::Unavailable,
                _ => tonic::Code::Unknown,
            };
            tonic::Status::new(code, format!("no grpc-status, HTTP status {}", head.status))
        });
    if status.code() != tonic::Code::Ok {
        return Err(failed(status));
    }
    // One length-prefixed message, or none (the call is OK, nothing
    // rejected: where tonic fails a unary call without its message, the
    // status says the spans were taken). One that cannot be read —
    // compressed (never asked for: no `grpc-accept-encoding` is sent), cut
    // short, not the response message — fails the export as INTERNAL, as
    // tonic's decoder fails it: whether the spans were taken is not known.
    let body = collected.to_bytes();
    if body.is_empty() {
        return Ok(0);
    }
    let message = match body.get(..5) {
        Some([0, length @ ..]) => {
            let length = u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
            body.get(5..).and_then(|message| message.get(..length))
        }
        _ => None,
    };
    message
        .and_then(|message| ExportTraceServiceResponse::decode(message).ok())
        .map(|response| rejected(&response))
        .ok_or_else(|| failed(tonic::Status::internal("an unreadable response message")))
}

/// The status of a call that got no response. A reset stream takes its
/// RST_STREAM code's status as tonic maps it (PROTOCOL-HTTP2.md's table:
/// REFUSED_STREAM is UNAVAILABLE, ENHANCE_YOUR_CALM RESOURCE_EXHAUSTED,
/// CANCEL CANCELLED); a stream the server's GOAWAY left unprocessed, and
/// any failure tonic cannot name (no connection, a reset socket), is
/// UNAVAILABLE, tried again. The message keeps the whole error chain:
/// hyper's client alone says `client error (Connect)`.
fn request_failure(error: hyper_util::client::legacy::Error) -> tonic::Status {
    let message = error_chain(&error);
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_remote()
        {
            return tonic::Status::unavailable(message);
        }
        source = error.source();
    }
    match tonic::Status::from_error(Box::new(error)).code() {
        tonic::Code::Unknown => tonic::Status::unavailable(message),
        code => tonic::Status::new(code, message),
    }
}

/// `request` as one gRPC length-prefixed message (uncompressed): a 5-byte
/// prefix chunk before its chunks, nothing copied.
fn grpc_framed(request: Payload) -> Result<Payload, ExportError> {
    let length = u32::try_from(request.remaining()).map_err(|_| {
        ExportError::Grpc(Box::new(tonic::Status::resource_exhausted(
            "an export request over 4 GiB",
        )))
    })?;
    let mut prefix = [0u8; 5];
    prefix[1..].copy_from_slice(&length.to_be_bytes());
    let mut framed = request;
    framed.prepend(Bytes::copy_from_slice(&prefix));
    Ok(framed)
}

/// The gRPC status `headers` carry, if any; a `grpc-status-details-bin`
/// that is not base64 (which tonic's parser panics on) is left out.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Status> {
    use base64::Engine as _;
    const DETAILS: &str = "grpc-status-details-bin";
    let Some(details) = headers.get(DETAILS).map(|details| details.as_bytes()) else {
        return tonic::Status::from_header_map(headers);
    };
    // (tonic's engine: standard alphabet, padding optional)
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    if ENGINE.decode(details).is_ok() {
        return tonic::Status::from_header_map(headers);
    }
    let mut headers = headers.clone();
    headers.remove(DETAILS);
    tonic::Status::from_header_map(&headers)
}

/// An error and its sources, as one line: hyper's client says
/// `client error (Connect)` where its source says what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        line.push_str(": ");
        line.push_str(&error.to_string());
        source = error.source();
    }
    line
}

/// A `grpc-timeout` value for `timeout`: at most 8 digits, in the finest
/// unit that fits (PROTOCOL-HTTP2.md's TimeoutValue).
fn grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units = [
        (timeout.as_nanos(), 'n'),
        (timeout.as_micros(), 'u'),
        (timeout.as_millis(), 'm'),
        (u128::from(timeout.as_secs()), 'S'),
        (u128::from(timeout.as_secs() / 60), 'M'),
    ];
    let (value, unit) = units
        .into_iter()
        .find(|&(value, _)| value <= MAX)
        .unwrap_or(((u128::from(timeout.as_secs()) / 3600).min(MAX), 'H'));
    format!("{value}{unit}")
}

/// An encoded `ExportTraceServiceRequest` in pieces — the envelope's head,
/// each worker's batch as the worker encoded it, the envelope's tail — sent
/// without joining them: HTTP/2 (gRPC, after a 5-byte prefix of its own)
/// and HTTP/1.1 write them as they are, HTTP/2 in DATA frames that point
/// into them, HTTP/1.1 vectored.
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
    /// Puts `chunk` before what is left to read (an empty one is skipped).
    pub fn prepend(&mut self, chunk: impl Into<Bytes>) {
        let chunk = chunk.into();
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.drain(..self.at);
            self.at = 0;
            self.chunks.insert(0, chunk);
        }
    }

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::BufMut as _;
    use http_body::Frame;
    use http_body_util::{Empty, StreamBody};
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
        let exporter = Exporter::new(&otlp).expect("an exporter");
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
        let exporter = Exporter::new(&otlp).expect("an exporter");
        let start = Instant::now();
        let error = exporter
            .export(Payload::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, ExportError::Grpc(status)
                if status.code() == tonic::Code::Unavailable
                    && status.message().contains("onnection refused")),
            "{error}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// How the test gRPC endpoint answers one call.
    #[derive(Clone)]
    enum Answer {
        /// Trailers-Only with this status.
        Status(tonic::Status),
        /// HTTP 503 and no gRPC status at all (a proxy in front).
        Http503,
        /// OK, with a partial success of this many rejected spans.
        Rejected(i64),
        /// A response message, then this status in the trailers.
        Trailers(tonic::Status),
        /// OK, and the connection goes away (GOAWAY) once it is answered.
        GoAway,
        /// OK, with these bytes as the body.
        Body(Bytes),
    }

    /// What the test gRPC endpoint saw per call: its headers and body.
    type Calls = tokio::sync::mpsc::UnboundedReceiver<(http::HeaderMap, Bytes)>;

    /// An OTLP/gRPC endpoint over real HTTP/2 (hyper's server) that
    /// answers calls in `answers`' order, OK once they run out.
    /// Also counts the connections it accepted.
    async fn grpc_endpoint(answers: Vec<Answer>) -> (String, Calls, Arc<AtomicUsize>) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (record, calls) = tokio::sync::mpsc::unbounded_channel();
        let answers = Arc::new((answers, AtomicUsize::new(0)));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let (record, answers) = (record.clone(), answers.clone());
                let go_away = Arc::new(tokio::sync::Notify::new());
                let going = go_away.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (record, answers, going) = (record.clone(), answers.clone(), going.clone());
                    async move {
                        let (head, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let _ = record.send((head.headers, body));
                        let (answers, answered) = &*answers;
                        let answer = answers
                            .get(answered.fetch_add(1, Ordering::Relaxed))
                            .cloned();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = match answer {
                            Some(Answer::Trailers(status)) => {
                                trailers.clear();
                                status.add_header(&mut trailers).expect("a status");
                                vec![Bytes::from_static(&[0, 0, 0, 0, 0])]
                            }
                            Some(Answer::Body(body)) => vec![body],
                            Some(Answer::GoAway) => {
                                going.notify_one();
                                vec![Bytes::from_static(&[0, 0, 0, 0, 0])]
                            }
                            Some(Answer::Status(status)) => {
                                let response = status.into_http::<Body>();
                                return Ok::<_, std::convert::Infallible>(response);
                            }
                            Some(Answer::Http503) => {
                                let mut response = http::Response::new(Body::default());
                                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok(response);
                            }
                            Some(Answer::Rejected(spans)) => {
                                let message = ExportTraceServiceResponse {
                                    partial_success: Some(ExportTracePartialSuccess {
                                        rejected_spans: spans,
                                        error_message: "too old".into(),
                                    }),
                                }
                                .encode_to_vec();
                                let mut framed = vec![0];
                                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                                framed.extend_from_slice(&message);
                                vec![Bytes::from(framed)]
                            }
                            None => vec![Bytes::from_static(&[0, 0, 0, 0, 0])],
                        };
                        let mut frames: Vec<_> = frames.into_iter().map(Frame::data).collect();
                        frames.push(Frame::trailers(trailers));
                        let body = StreamBody::new(futures_util::stream::iter(
                            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
                        ));
                        let mut response = http::Response::new(Body::new(body));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok(response)
                    }
                });
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = go_away.notified() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), calls, accepted)
    }

    /// A response body of the test gRPC endpoint.
    #[derive(Default)]
    struct Body(
        Option<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>,
    );

    impl Body {
        fn new(
            body: impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
        ) -> Self {
            Self(Some(BodyExt::boxed_unsync(body)))
        }
    }

    impl http_body::Body for Body {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match &mut self.0 {
                Some(body) => std::pin::Pin::new(body).poll_frame(cx),
                None => std::task::Poll::Ready(None),
            }
        }
    }

    fn grpc_otlp(endpoint: String, timeout: Duration) -> Otlp {
        Otlp {
            endpoint,
            protocol: OtlpProtocol::Grpc,
            headers: vec![("X-Api-Key".into(), "secret".into())],
            timeout,
        }
    }

    /// Exports one request to `endpoint`: none of its spans rejected, and
    /// no sooner than `at_least` (the server asked to be tried later).
    async fn export_no_sooner_than(endpoint: String, at_least: Duration) {
        let exporter =
            Exporter::new(&grpc_otlp(endpoint, Duration::from_secs(10))).expect("an exporter");
        let start = Instant::now();
        let rejected = exporter.export(Payload::from(vec![1])).await;
        assert_eq!(rejected.expect("exported"), 0);
        assert!(start.elapsed() >= at_least, "{:?}", start.elapsed());
    }

    /// Exports one request to an endpoint that gives `answer`: the export
    /// fails with `code`, after one call, not tried again.
    async fn export_fails_at_once(answer: Answer, code: tonic::Code) {
        let (endpoint, mut calls, _) = grpc_endpoint(vec![answer]).await;
        let exporter =
            Exporter::new(&grpc_otlp(endpoint, Duration::from_secs(10))).expect("an exporter");
        let error = exporter
            .export(Payload::from(vec![1]))
            .await
            .expect_err("failed");
        assert!(
            matches!(&error, ExportError::Grpc(status) if status.code() == code),
            "{error}"
        );
        calls.recv().await.expect("a call");
        assert!(calls.try_recv().is_err(), "not tried again");
    }

    /// The request goes out as one gRPC message framed around the worker's
    /// chunks, with gRPC's headers and the configured ones; UNAVAILABLE is
    /// tried again, and the answer's partial success is read.
    #[tokio::test]
    async fn grpc_exports_frame_the_request_and_read_its_partial_success() {
        let answers = vec![
            Answer::Status(tonic::Status::unavailable("starting")),
            Answer::Rejected(3),
        ];
        let (endpoint, mut calls, _) = grpc_endpoint(answers).await;
        let exporter =
            Exporter::new(&grpc_otlp(endpoint, Duration::from_secs(5))).expect("an exporter");
        let mut request = Payload::default();
        request.push(Bytes::from_static(b"\x0a\x03abc"));
        request.push(Bytes::from_static(b"\x0a\x01d"));
        assert_eq!(exporter.export(request).await.expect("exported"), 3);
        let mut framed = vec![0, 0, 0, 0, 8];
        framed.extend_from_slice(b"\x0a\x03abc\x0a\x01d");
        for _ in 0..2 {
            let (headers, body) = calls.recv().await.expect("a call");
            assert_eq!(body, framed);
            let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
            assert_eq!(header("content-type"), Some("application/grpc"));
            assert_eq!(header("te"), Some("trailers"));
            let timeout = header("grpc-timeout").expect("a grpc-timeout");
            let micros: u64 = timeout.trim_end_matches('u').parse().expect("micros");
            assert!(micros <= 5_000_000 && micros > 0, "{timeout}");
            assert_eq!(header("user-agent"), Some(USER_AGENT));
            assert_eq!(header("x-api-key"), Some("secret"));
        }
        assert!(calls.try_recv().is_err(), "called twice only");
    }

    /// RESOURCE_EXHAUSTED with a RetryInfo is tried again no sooner than
    /// it asks; an HTTP 503 without a gRPC status is UNAVAILABLE, tried
    /// again; INVALID_ARGUMENT is not.
    #[tokio::test]
    async fn grpc_exports_retry_as_the_status_says() {
        use tonic_types::{ErrorDetails, StatusExt};
        let throttled = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(300))),
        );
        let answers = vec![Answer::Status(throttled), Answer::Http503];
        let (endpoint, mut calls, _) = grpc_endpoint(answers).await;
        export_no_sooner_than(endpoint, Duration::from_millis(300)).await;
        for _ in 0..3 {
            calls.recv().await.expect("a call");
        }

        let refused = Answer::Status(tonic::Status::invalid_argument("bad"));
        export_fails_at_once(refused, tonic::Code::InvalidArgument).await;
    }

    /// A status in the trailers after the response message counts as one
    /// in a Trailers-Only response: UNAVAILABLE with a RetryInfo is tried
    /// again after its delay; details that are not base64 are left out,
    /// not a panic.
    #[tokio::test]
    async fn grpc_exports_read_the_status_from_the_trailers() {
        use tonic_types::{ErrorDetails, StatusExt};
        let unavailable = tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "draining",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(300))),
        );
        let mut garbled = http::HeaderMap::new();
        garbled.insert("grpc-status", http::HeaderValue::from_static("14"));
        garbled.insert(
            "grpc-status-details-bin",
            http::HeaderValue::from_static("not base64!"),
        );
        let answers = vec![Answer::Trailers(unavailable)];
        let (endpoint, mut calls, _) = grpc_endpoint(answers).await;
        export_no_sooner_than(endpoint, Duration::from_millis(300)).await;
        for _ in 0..2 {
            calls.recv().await.expect("a call");
        }
        let status = grpc_status(&garbled).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    /// An OK response whose message cannot be read fails the export, as
    /// tonic's decoder fails it, without a retry; a body past 4 MiB is
    /// not read past that (a length prefix of 4 GiB and an endless body
    /// once took the agent to gigabytes).
    #[tokio::test]
    async fn grpc_exports_fail_on_a_response_they_cannot_read() {
        let garbled = Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        huge.resize(MAX_RESPONSE + (1 << 20), 0);
        let cases = [
            (Answer::Body(garbled), tonic::Code::Internal),
            (
                Answer::Body(Bytes::from(huge)),
                tonic::Code::ResourceExhausted,
            ),
        ];
        for (answer, code) in cases {
            export_fails_at_once(answer, code).await;
        }
    }

    /// An endpoint that closes its connection (GOAWAY) after an answer
    /// takes the next export on a new one, which does not fail.
    #[tokio::test]
    async fn grpc_exports_go_on_over_a_new_connection_after_goaway() {
        let (endpoint, mut calls, accepted) = grpc_endpoint(vec![Answer::GoAway]).await;
        let exporter =
            Exporter::new(&grpc_otlp(endpoint, Duration::from_secs(10))).expect("an exporter");
        exporter
            .export(Payload::from(vec![1]))
            .await
            .expect("exported");
        let closed = async {
            // (once the client has seen the GOAWAY and the connection's end)
            loop {
                let exported = exporter.export(Payload::from(vec![2])).await;
                exported.expect("exported on");
                if accepted.load(Ordering::Relaxed) >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .expect("a second connection");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        let mut bodies = Vec::new();
        while let Ok((_, body)) = calls.try_recv() {
            bodies.push(body[5..].to_vec());
        }
        assert_eq!(bodies.first(), Some(&vec![1]));
        assert!(bodies[1..].iter().all(|body| body == &[2]), "{bodies:?}");
    }

    /// A stream the server's GOAWAY left unprocessed (opened past its last
    /// stream, as a collector closing a connection of its maximum age
    /// leaves it) is UNAVAILABLE and tried again on a new connection; tonic
    /// names it INTERNAL, which is not.
    #[tokio::test]
    async fn grpc_exports_retry_a_stream_a_goaway_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (endpoint, _calls, accepted) = grpc_endpoint(Vec::new()).await;
        let behind = endpoint.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // The first connection: SETTINGS, and GOAWAY (last stream 0,
            // NO_ERROR) once the client's HEADERS (stream 1) arrive.
            let (mut first, _) = listener.accept().await.unwrap();
            first.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0; 4096];
            loop {
                let n = first.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client went before its HEADERS");
                read.extend_from_slice(&buf[..n]);
                // (after the 24-byte preface, frames of 9-byte heads)
                let mut at = 24;
                let mut headers = false;
                while read.len() >= at + 9 {
                    let length = usize::from(read[at]) << 16
                        | usize::from(read[at + 1]) << 8
                        | usize::from(read[at + 2]);
                    headers |= read[at + 3] == 1;
                    at += 9 + length;
                }
                if headers {
                    break;
                }
            }
            let go_away = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            first.write_all(&go_away).await.unwrap();
            // The rest go to the gRPC endpoint behind.
            while let Ok((mut next, _)) = listener.accept().await {
                let behind = behind.clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(behind).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut next, &mut server).await;
                });
            }
            drop(first);
        });
        let exporter = Exporter::new(&grpc_otlp(
            format!("http://{front}"),
            Duration::from_secs(10),
        ))
        .expect("an exporter");
        let exported = exporter.export(Payload::from(vec![1])).await;
        assert_eq!(exported.expect("exported on a new connection"), 0);
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    /// A connection that stops answering — the collector's node gone
    /// without a FIN or RST, here a relay that stops passing bytes either
    /// way but keeps both sockets open, so TCP still acknowledges what is
    /// sent — is pinged once an export has waited on it with no response
    /// frame for half the export's timeout (at least a second), and closed
    /// without an answer: exports go on over a new connection within a
    /// few timeouts. Before, every export on it timed out, for as long as
    /// the socket stayed open.
    #[tokio::test]
    async fn grpc_exports_leave_a_connection_that_answers_nothing() {
        let (endpoint, _calls, _) = grpc_endpoint(Vec::new()).await;
        let behind = endpoint.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let silence = Arc::new(tokio::sync::Notify::new());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (silenced, counted) = (silence.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::Relaxed) == 0;
                let (behind, silenced) = (behind.clone(), silenced.clone());
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(behind).await.unwrap();
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    if !first {
                        let _ = relay.await;
                        return;
                    }
                    tokio::select! {
                        _ = relay => return,
                        () = silenced.notified() => {}
                    }
                    // Both sockets stay open, and nothing passes.
                    std::future::pending::<()>().await;
                    drop((client, server));
                });
            }
        });
        let timeout = Duration::from_millis(1000);
        let exporter =
            Exporter::new(&grpc_otlp(format!("http://{front}"), timeout)).expect("an exporter");
        let exported = exporter.export(Payload::from(vec![1])).await;
        assert_eq!(exported.expect("exported"), 0);
        silence.notify_one();
        let mut failed = 0;
        let recovered = async {
            loop {
                match exporter.export(Payload::from(vec![2])).await {
                    Ok(rejected) => break rejected,
                    Err(_) => failed += 1,
                }
            }
        };
        // (a few timeouts are enough; before, none was)
        let recovered = tokio::time::timeout(Duration::from_secs(30), recovered).await;
        assert_eq!(recovered.expect("exported over a new connection"), 0);
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert!(failed <= 3, "{failed} exports failed first");
    }

    /// Only `http://host[:port]` is a gRPC endpoint: https (no TLS for
    /// export) and a string without a scheme are refused at the start; a
    /// path is not the method's and is left out.
    #[test]
    fn grpc_endpoints_are_http_host_and_port() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _entered = runtime.enter();
        let exporter =
            |endpoint: &str| Exporter::new(&grpc_otlp(endpoint.to_owned(), Duration::from_secs(1)));
        assert!(exporter("https://collector:4317").is_err());
        assert!(exporter("collector:4317").is_err());
        let exporter = exporter("http://collector:4317/ignored").expect("an exporter");
        assert_eq!(
            exporter.uri.to_string(),
            format!("http://collector:4317{GRPC_EXPORT_PATH}")
        );
    }

    #[test]
    fn grpc_timeouts_take_the_finest_unit_of_at_most_8_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(50)), "50000000n");
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }
}
