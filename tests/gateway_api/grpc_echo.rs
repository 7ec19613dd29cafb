//! The Gateway API conformance suite's gRPC echo service
//! (`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`, methods `Echo`,
//! `EchoTwo` and `EchoThree`) as a tonic server without protoc, one per
//! backend: it answers every method and records the metadata of each call,
//! so a case can tell which backend a call reached. Messages are sent empty
//! (the suite's `EchoRequest` has no fields; which backend answered is read
//! from the servers, not from the suite's `EchoResponse` assertions).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::HeaderMap;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The suite's service name.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// The suite's `EchoRequest` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {}

/// The suite's `EchoResponse`, sent without its assertions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {}

/// One backend: a GrpcEcho server on 127.0.0.1.
pub struct GrpcEcho {
    /// The backend's Service name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl GrpcEcho {
    /// Starts the backend `name` on 127.0.0.1:0.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = Echo { seen: seen.clone() };
        tokio::spawn(async move {
            let incoming = futures_util::stream::unfold(listener, |l| async move {
                Some((l.accept().await.map(|(s, _)| s), l))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            name: name.to_owned(),
            addr,
            seen,
        }
    }

    /// Calls answered so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[derive(Clone)]
struct Echo {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

struct Unary;

impl UnaryService<EchoRequest> for Unary {
    type Response = EchoResponse;
    type Future = BoxFuture<Response<EchoResponse>, Status>;

    fn call(&mut self, _: Request<EchoRequest>) -> Self::Future {
        Box::pin(async { Ok(Response::new(EchoResponse {})) })
    }
}

impl<B> tower::Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let seen = self.seen.clone();
        Box::pin(async move {
            let method = req
                .uri()
                .path()
                .strip_prefix(&format!("/{SERVICE}/"))
                .unwrap_or_default()
                .to_owned();
            if !["Echo", "EchoTwo", "EchoThree"].contains(&method.as_str()) {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            seen.lock().unwrap().push(req.headers().clone());
            let mut grpc = Grpc::new(ProstCodec::<EchoResponse, EchoRequest>::default());
            Ok(grpc.unary(Unary, req).await)
        })
    }
}

/// Calls `method` of the service through `gateway` with `:authority`
/// `host` and `metadata`; the call's status.
pub async fn call(
    gateway: SocketAddr,
    host: &str,
    method: &str,
    metadata: &[(String, String)],
) -> Result<(), Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .origin(format!("http://{host}").parse().unwrap())
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(EchoRequest {});
    for (k, v) in metadata {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap();
        let value: MetadataValue<_> = v.parse().unwrap();
        request.metadata_mut().insert(key, value);
    }
    let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}")).unwrap();
    client
        .unary(
            request,
            path,
            ProstCodec::<EchoRequest, EchoResponse>::default(),
        )
        .await
        .map(|_| ())
}
