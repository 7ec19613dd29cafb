//! OTLP/gRPC: `TraceService/Export` and `MetricsService/Export`, gzip
//! accepted; other methods (logs) answer UNIMPLEMENTED.
//!
//! The request message is taken as raw bytes and decoded here rather than
//! by tonic's prost codec, for two reasons: a malformed message must answer
//! INVALID_ARGUMENT naming the problem (the stock codec answers INTERNAL),
//! a batch with no invalid span is written to the WAL as received,
//! without encoding it again, and a span that cannot be decoded costs that
//! span only (see [`decode::traces`]).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::error::IngestError;
use crate::ingest::decode::{self, Encoding};
use crate::ingest::{Ingest, Receiver};

/// Decodes nothing (the message's bytes are handed over), encodes a prost reply.
struct RawCodec<T>(PhantomData<T>);

struct RawDecoder;

struct ProstEncoder<T>(PhantomData<T>);

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<T: Message> Encoder for ProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(&mut dst.writer().get_mut())
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<T: Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = ProstEncoder<T>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[derive(Clone)]
struct ExportTraces(Ingest);

impl UnaryService<Bytes> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let decoded =
                decode::traces(Encoding::Protobuf, &request.into_inner()).map_err(|error| {
                    ingest.refused(Receiver::OtlpGrpc, &error);
                    error.grpc_status()
                })?;
            let accepted = ingest
                .traces(Receiver::OtlpGrpc, decoded)
                .await
                .map_err(|e| e.grpc_status())?;
            let partial_success = (accepted.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: accepted.rejected as i64,
                error_message: accepted.message,
            });
            Ok(Response::new(ExportTraceServiceResponse {
                partial_success,
            }))
        })
    }
}

#[derive(Clone)]
struct ExportMetrics(Ingest);

impl UnaryService<Bytes> for ExportMetrics {
    type Response = ExportMetricsServiceResponse;
    type Future = BoxFuture<Result<Response<ExportMetricsServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let message =
                ExportMetricsServiceRequest::decode(request.into_inner()).map_err(|e| {
                    IngestError::Malformed(format!("metrics: invalid protobuf: {e}")).grpc_status()
                })?;
            ingest.metrics(Receiver::OtlpGrpc, message);
            Ok(Response::new(ExportMetricsServiceResponse {
                partial_success: None,
            }))
        })
    }
}

/// One OTLP gRPC service (`NAME` is its full name).
#[derive(Clone)]
pub struct OtlpService<const TRACES: bool> {
    ingest: Ingest,
}

fn compression() -> EnabledCompressionEncodings {
    let mut encodings = EnabledCompressionEncodings::default();
    encodings.enable(CompressionEncoding::Gzip);
    encodings
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(
        Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

impl<B, const TRACES: bool> tower::Service<http::Request<B>> for OtlpService<TRACES>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ingest = self.ingest.clone();
        let limit = Some(ingest.max_request_size());
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        Box::pin(async move {
            if method != "Export" {
                return Ok(unimplemented());
            }
            let response = if TRACES {
                let mut grpc = Grpc::new(RawCodec::<ExportTraceServiceResponse>(PhantomData))
                    .apply_compression_config(compression(), compression())
                    .apply_max_message_size_config(limit, None);
                grpc.unary(ExportTraces(ingest), request).await
            } else {
                let mut grpc = Grpc::new(RawCodec::<ExportMetricsServiceResponse>(PhantomData))
                    .apply_compression_config(compression(), compression())
                    .apply_max_message_size_config(limit, None);
                grpc.unary(ExportMetrics(ingest), request).await
            };
            Ok(oversize_is_not_retryable(response))
        })
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE, which
/// OTLP clients retry forever; answer RESOURCE_EXHAUSTED without
/// `RetryInfo` instead (not retryable, as OTLP asks for an oversize batch).
fn oversize_is_not_retryable(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get(Status::GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        headers.insert(
            Status::GRPC_STATUS,
            (tonic::Code::ResourceExhausted as i32).into(),
        );
    }
    response
}

impl NamedService for OtlpService<true> {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl NamedService for OtlpService<false> {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

/// The tonic routes serving both services.
pub fn routes(ingest: Ingest) -> tonic::service::Routes {
    tonic::service::Routes::new(OtlpService::<true> {
        ingest: ingest.clone(),
    })
    .add_service(OtlpService::<false> { ingest })
}
