//! The Gateway API conformance suite's gRPC echo service
//! (`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`, methods `Echo`,
//! `EchoTwo` and `EchoThree`) as a tonic server without protoc, one per
//! backend: it answers every method and records the metadata of each call,
//! so a case can tell which backend a call reached. Messages are sent empty
//! (the suite's `EchoRequest` has no fields; which backend answered is read
//! from the servers, not from the suite's `EchoResponse` assertions).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::server::{Grpc, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::common::grpc::{self, Methods, Routed};

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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = grpc::serve(Routed(Echo { seen: seen.clone() })).await;
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

struct Unary;

impl UnaryService<EchoRequest> for Unary {
    type Response = EchoResponse;
    type Future = BoxFuture<Response<EchoResponse>, Status>;

    fn call(&mut self, _: Request<EchoRequest>) -> Self::Future {
        Box::pin(async { Ok(Response::new(EchoResponse {})) })
    }
}

impl Methods for Echo {
    const NAME: &'static str = SERVICE;

    async fn answer(self, req: http::Request<Body>) -> http::Response<Body> {
        let method = req
            .uri()
            .path()
            .strip_prefix(&format!("/{SERVICE}/"))
            .unwrap_or_default()
            .to_owned();
        if !["Echo", "EchoTwo", "EchoThree"].contains(&method.as_str()) {
            return Status::unimplemented("no such method").into_http();
        }
        self.seen.lock().unwrap().push(req.headers().clone());
        let mut grpc = Grpc::new(ProstCodec::<EchoResponse, EchoRequest>::default());
        grpc.unary(Unary, req).await
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
