//! OTLP/gRPC exporter: `TraceService/Export` and `MetricsService/Export`.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use super::{Rejected, SendError};
use crate::config::{Compression, ExporterConfig};

/// A gRPC channel to one endpoint (connected lazily, reconnected as needed).
///
/// A connection with no response frame (HEADERS, DATA, a PING's ACK) for
/// half the timeout, at least a second, while a call waits on it is pinged
/// (HTTP/2 PING) and closed if the PING is not acknowledged as long again,
/// so that the next attempt connects again: a receiver whose node went
/// without a FIN or RST, or anything in between that still acknowledges
/// the bytes, otherwise fails every attempt on that connection for as long
/// as it stays open. Only while a call is open: an idle channel sends
/// nothing. A call that starts on a connection quiet for longer sends its
/// PING at once; a receiver that answers resets gRPC servers' ping
/// strikes with each response, so it never sends `too_many_pings`.
pub fn channel(config: &ExporterConfig) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| format!("endpoint {:?}: {e}", config.endpoint))?;
    let half = (config.timeout.0 / 2).max(std::time::Duration::from_secs(1));
    Ok(endpoint
        .connect_timeout(config.timeout.0)
        .timeout(config.timeout.0)
        .http2_keep_alive_interval(half)
        .keep_alive_timeout(half)
        .keep_alive_while_idle(false)
        .connect_lazy())
}

/// The configured headers as gRPC metadata.
pub fn metadata(config: &ExporterConfig) -> Result<MetadataMap, String> {
    let mut map = MetadataMap::new();
    for (key, value) in &config.headers {
        let key = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("header {key:?}: {e}"))?;
        let value = MetadataValue::try_from(value.as_str())
            .map_err(|e| format!("header value for {key}: {e}"))?;
        map.insert(key, value);
    }
    Ok(map)
}

/// OTLP's rule for gRPC failures: these codes are retryable, and
/// RESOURCE_EXHAUSTED only when the server sent `RetryInfo`.
pub fn classify(status: tonic::Status) -> SendError {
    use tonic::Code;
    let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::transient(message, retry_after),
        Code::ResourceExhausted if retry_after.is_some() => {
            SendError::transient(message, retry_after)
        }
        _ => SendError::permanent(message),
    }
}

/// Sends OTLP over gRPC.
pub struct OtlpGrpcClient {
    traces: TraceServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
    metadata: MetadataMap,
}

impl OtlpGrpcClient {
    /// A client for `config.endpoint`.
    pub fn new(config: &ExporterConfig) -> Result<Self, String> {
        let channel = channel(config)?;
        let mut traces =
            TraceServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let mut metrics = MetricsServiceClient::new(channel);
        if config.compression == Compression::Gzip {
            traces = traces.send_compressed(CompressionEncoding::Gzip);
            metrics = metrics.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            traces,
            metrics,
            metadata: metadata(config)?,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }

    /// Exports spans; what the backend rejected of them.
    pub async fn send_spans(
        &mut self,
        message: ExportTraceServiceRequest,
    ) -> Result<Rejected, SendError> {
        let request = self.request(message);
        let response = self.traces.export(request).await.map_err(classify)?;
        Ok(response
            .into_inner()
            .partial_success
            .map(|p| Rejected::of(p.rejected_spans, p.error_message))
            .unwrap_or_default())
    }

    /// Exports metrics; what the backend rejected of their data points.
    pub async fn send_metrics(
        &mut self,
        message: ExportMetricsServiceRequest,
    ) -> Result<Rejected, SendError> {
        let request = self.request(message);
        let response = self.metrics.export(request).await.map_err(classify)?;
        Ok(response
            .into_inner()
            .partial_success
            .map(|p| Rejected::of(p.rejected_data_points, p.error_message))
            .unwrap_or_default())
    }
}
