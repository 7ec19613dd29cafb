//! A real OTLP/gRPC endpoint (opentelemetry-proto's generated TraceService)
//! that keeps every span it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

/// A received span with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource.
    pub service: String,
    /// The resource's attributes.
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// Hex trace id.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Hex span id.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Hex parent span id ("" for roots).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string or int attribute, rendered as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    /// A string or int attribute of the span's resource, rendered as text.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }
}

/// Renders an attribute value as text.
pub fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => Some(format!("{:?}", AnyValue::clone(value))),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Path and headers of each OTLP/HTTP request.
    http_requests: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl Sink {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attr(&resource, "service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver.
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    sink: Sink,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Starts a receiver on a listening socket made elsewhere (inside a
    /// network-namespace pod, for agents there); nonblocking.
    pub fn start_on(listener: std::net::TcpListener) -> Receiver {
        Self::serve(tokio::net::TcpListener::from_std(listener).unwrap())
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream_from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Receiver { addr, sink }
    }

    /// Starts an OTLP/HTTP (protobuf) receiver on 127.0.0.1:0: a POST to
    /// `path` with an `ExportTraceServiceRequest` body is kept, anything
    /// else gets 404.
    pub async fn start_http(path: &'static str) -> Receiver {
        use http_body_util::{BodyExt, Full};
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let serving = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = serving.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            sink.http_requests
                                .lock()
                                .unwrap()
                                .push((parts.uri.path().to_owned(), parts.headers.clone()));
                            let decoded = body
                                .ok()
                                .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
                            let status = match decoded {
                                Some(request) if parts.uri.path() == path => {
                                    sink.keep(request);
                                    200
                                }
                                _ => 404,
                            };
                            let reply = ExportTraceServiceResponse {
                                partial_success: None,
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(bytes::Bytes::from(reply.encode_to_vec())))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Receiver { addr, sink }
    }

    /// Path and headers of each OTLP/HTTP request received so far.
    pub fn http_requests(&self) -> Vec<(String, http::HeaderMap)> {
        self.sink.http_requests.lock().unwrap().clone()
    }

    /// The endpoint URL for an agent config.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink.spans.lock().unwrap().clone()
    }

    /// The agent's hop span of the request to `path` (the span with that
    /// `url.path` and response details), waiting for it.
    pub async fn span_of(&self, path: &str) -> ReceivedSpan {
        let has = |s: &ReceivedSpan| {
            s.attr("url.path").as_deref() == Some(path)
                && s.attr("tracemesh.response_code_details").is_some()
        };
        let spans = self
            .wait_for(&format!("the span of {path}"), |spans| {
                spans.iter().any(has)
            })
            .await;
        spans.into_iter().find(has).unwrap()
    }

    /// Waits until `pred` holds over the received spans (or 30 s pass).
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; have {} spans",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}
