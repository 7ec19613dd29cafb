//! A tonic echo service without protoc: hand-written prost messages and
//! tonic's server/client plumbing. `Unary` echoes; `Stream` sends the text
//! `count` times and can end with an error status carrying trailer metadata.
//! [`serve`] runs any tonic service on a loopback port; [`Methods`] is how
//! a test writes a gRPC service by hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The one message type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Echo {
    /// Text to echo; `error:` makes Unary fail, `fail-at-end` makes Stream end in error.
    #[prost(string, tag = "1")]
    pub text: String,
    /// Messages to stream back.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// Opaque payload, echoed.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
}

/// The echo server.
#[derive(Clone, Default)]
pub struct EchoServer;

struct UnaryEcho;

impl UnaryService<Echo> for UnaryEcho {
    type Response = Echo;
    type Future = BoxFuture<Response<Echo>, Status>;

    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        Box::pin(async move {
            let echo = request.into_inner();
            if let Some(reason) = echo.text.strip_prefix("error:") {
                return Err(Status::not_found(reason.to_owned()));
            }
            Ok(Response::new(echo))
        })
    }
}

struct StreamEcho;

type EchoStream = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

impl ServerStreamingService<Echo> for StreamEcho {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = BoxFuture<Response<EchoStream>, Status>;

    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        Box::pin(async move {
            let echo = request.into_inner();
            let fail = echo.text == "fail-at-end";
            let items = (0..echo.count).map(move |i| {
                Ok(Echo {
                    text: format!("{} {i}", echo.text),
                    count: i,
                    payload: echo.payload.clone(),
                })
            });
            let end = fail.then(|| {
                let mut metadata = tonic::metadata::MetadataMap::new();
                metadata.insert("x-echo-trailer", "kept".parse().unwrap());
                Err(Status::with_metadata(
                    tonic::Code::Aborted,
                    "ended on purpose",
                    metadata,
                ))
            });
            let stream = futures_util::stream::iter(items.chain(end));
            Ok(Response::new(Box::pin(stream) as EchoStream))
        })
    }
}

impl Methods for EchoServer {
    const NAME: &'static str = "test.Echo";

    async fn answer(self, req: http::Request<Body>) -> http::Response<Body> {
        let mut grpc = Grpc::new(ProstCodec::<Echo, Echo>::default());
        match req.uri().path() {
            "/test.Echo/Unary" => grpc.unary(UnaryEcho, req).await,
            "/test.Echo/Stream" => grpc.server_streaming(StreamEcho, req).await,
            _ => Status::unimplemented("no such method").into_http(),
        }
    }
}

/// Starts the echo server on 127.0.0.1:0.
pub async fn start() -> SocketAddr {
    serve(Routed(EchoServer)).await
}

/// A hand-written gRPC service: one function answers every method of
/// service `NAME`, dispatching on the path (`/NAME/Method`) with tonic's
/// [`Grpc`] codec plumbing. [`Routed`] makes it a service tonic serves.
pub trait Methods: Clone + Send + Sync + 'static {
    /// The service's full name (`package.Service`): tonic sends the calls
    /// under `/NAME/` here.
    const NAME: &'static str;

    /// Answers one call (an unknown method: UNIMPLEMENTED, as tonic does).
    fn answer(self, req: http::Request<Body>) -> impl Future<Output = http::Response<Body>> + Send;
}

/// A [`Methods`] as the service tonic's server takes.
#[derive(Clone)]
pub struct Routed<M>(pub M);

impl<M: Methods> NamedService for Routed<M> {
    const NAME: &'static str = M::NAME;
}

impl<M: Methods> tower::Service<http::Request<Body>> for Routed<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let methods = self.0.clone();
        Box::pin(async move { Ok(methods.answer(req).await) })
    }
}

/// Serves `service` (a tonic-generated server, or [`Routed`]) over HTTP/2
/// on 127.0.0.1:0 for as long as the test's runtime runs; where it listens.
pub async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}

/// A client reaching `authority` (e.g. `http://echo:50051`) through `proxy`.
pub async fn client(
    proxy: SocketAddr,
    authority: &str,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .origin(authority.parse().unwrap())
        .connect()
        .await
        .expect("connect through the agent");
    tonic::client::Grpc::new(channel)
}

/// Calls Unary.
pub async fn unary(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    echo: Echo,
) -> Result<Echo, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static("/test.Echo/Unary");
    let response = client
        .unary(
            Request::new(echo),
            path,
            ProstCodec::<Echo, Echo>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

/// Opens the server-streaming method at `path` (e.g. `/test.Echo/Stream`)
/// with `echo`: its replies, unread, or the status it was refused with.
pub async fn open_stream(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    echo: Echo,
) -> Result<tonic::Streaming<Echo>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = client
        .server_streaming(
            Request::new(echo),
            PathAndQuery::from_static(path),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

/// Calls Stream and collects the messages and the final status.
pub async fn stream(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    echo: Echo,
) -> (Vec<Echo>, Result<(), Status>) {
    let mut stream = match open_stream(client, "/test.Echo/Stream", echo).await {
        Ok(stream) => stream,
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, Ok(())),
            Err(status) => return (items, Err(status)),
        }
    }
}
