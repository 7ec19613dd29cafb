//! OTLP/gRPC: `TraceService/Export` and `MetricsService/Export`, gzip
//! accepted. Other OTLP services (logs) answer UNIMPLEMENTED.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, Receiver};

/// The OTLP gRPC services.
#[derive(Clone)]
pub struct OtlpGrpc {
    ingest: Ingest,
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let accepted = self.ingest.traces(Receiver::OtlpGrpc, request.into_inner()).await.map_err(|e| e.grpc_status())?;
        let partial_success = (accepted.rejected > 0)
            .then(|| ExportTracePartialSuccess { rejected_spans: accepted.rejected as i64, error_message: accepted.message });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(&self, request: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.ingest.metrics(Receiver::OtlpGrpc, request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// The tonic router serving both services, gzip accepted, bodies capped
/// at the request size limit.
pub fn routes(ingest: Ingest) -> tonic::service::Routes {
    let limit = ingest.max_request_size;
    let service = OtlpGrpc { ingest };
    let traces = TraceServiceServer::new(service.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let metrics = MetricsServiceServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    tonic::service::Routes::new(traces).add_service(metrics)
}
