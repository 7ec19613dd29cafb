//! Worker threads: each runs a single-threaded runtime with its own
//! listener sockets, serves HTTP/1.1 and HTTP/2 (prior knowledge) on the
//! same port, and on a stop drains its inbound side while its outbound side
//! serves on ([`super::drain`]).

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::activity::Activity;
use super::delayed_close::{DelayedClose, Spliced};
use super::drain::{Phase, reached};
use super::flow_control::{
    CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_REQUEST_HEADER_LIST, STREAM_WINDOW,
};
use super::listener::WorkerSockets;
use super::rewind::{self, Rewind};
use super::tcp::TcpTarget;
use super::write_stall::{Watched, WriteStall};
use super::{
    Captured, Direction, Downstream, LocalExec, Shared, Worker, handler, interception, tcp,
};
use crate::capture::detect::{Detected, detect, detect_tls, take_undecided};
use crate::capture::original_dst::original_dst;
use crate::model::MtlsMode;
use crate::model::capture::InterceptionMode;
use crate::model::cluster::Cluster;
use crate::model::service::Protocol;
use crate::tls::io::{DownstreamIo, MaybeTls};
use crate::tls::{PeerTls, handshake, is_mesh_alpn};

/// A running worker thread.
pub struct WorkerHandle {
    pub(super) thread: std::thread::JoinHandle<()>,
    pub(super) phase: watch::Sender<Phase>,
}

impl WorkerHandle {
    /// Tells the worker to drain: the HTTP connections of its inbound (or
    /// gateway) listeners end gracefully (HTTP/1.1: closed once the request
    /// in flight is answered, with `Connection: close`; HTTP/2: GOAWAY,
    /// closed once its streams are done), and one those listeners accept
    /// from now on is served, then told to end; its outbound listeners keep
    /// proxying, their connections untold. Every listener accepts until
    /// [`end`](Self::end).
    pub fn drain(&self) {
        self.phase
            .send_if_modified(|phase| advance(phase, Phase::Draining));
    }

    /// Tells the worker the drain is over: it closes every listener and
    /// connection left and returns.
    pub fn end(&self) {
        self.phase
            .send_if_modified(|phase| advance(phase, Phase::Ended));
    }

    /// Waits for the worker to return (after [`end`](Self::end)).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("a worker thread panicked");
        }
    }
}

/// Moves `phase` forward to `to`, never back; whether it moved.
fn advance(phase: &mut Phase, to: Phase) -> bool {
    let moved = *phase < to;
    if moved {
        *phase = to;
    }
    moved
}

/// Starts one worker per socket group.
///
/// # Errors
/// A worker thread that could not start.
pub fn spawn_workers(
    shared: &Arc<Shared>,
    sockets: Vec<WorkerSockets>,
    inbound_tcp: bool,
) -> std::io::Result<Vec<WorkerHandle>> {
    spawn_threads("worker", shared, sockets, move |shared, sockets, phase| {
        run_worker(shared, sockets, inbound_tcp, phase);
    })
}

/// Starts one thread per socket group, named `{name}-{index}`, running
/// `run` on the group with the phase its [`WorkerHandle`] moves: how the
/// sidecar's and the gateway's workers are started.
///
/// # Errors
/// A thread that could not start.
pub(super) fn spawn_threads<S: Send + 'static>(
    name: &str,
    shared: &Arc<Shared>,
    groups: Vec<S>,
    run: impl FnOnce(Arc<Shared>, S, watch::Receiver<Phase>) + Clone + Send + 'static,
) -> std::io::Result<Vec<WorkerHandle>> {
    let mut handles = Vec::new();
    for (index, group) in groups.into_iter().enumerate() {
        let (phase, watched) = watch::channel(Phase::Serving);
        let (shared, run) = (shared.clone(), run.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || run(shared, group, watched))?;
        handles.push(WorkerHandle { thread, phase });
    }
    Ok(handles)
}

/// A sidecar worker: the inbound listener (HTTP, TCP, or captured) drains;
/// the outbound HTTP listener (explicit or captured) and the outbound TCP
/// listeners serve until the drain ends.
fn run_worker(
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    inbound_tcp: bool,
    phase: watch::Receiver<Phase>,
) {
    run_local(shared, phase.clone(), |worker, http| {
        let serve = |socket, direction| {
            let accept = Accept {
                worker: worker.clone(),
                http: http.clone(),
                phase: phase.clone(),
            };
            tokio::task::spawn_local(accept.http(socket, direction));
        };
        serve(sockets.outbound, Direction::Outbound);
        // Captured connections choose TCP or HTTP one by one.
        let captured = worker.shared.config.load().capture.mode == InterceptionMode::Redirect;
        if inbound_tcp && !captured {
            tokio::task::spawn_local(accept_tcp(
                worker.clone(),
                sockets.inbound,
                None,
                phase.clone(),
            ));
        } else {
            serve(sockets.inbound, Direction::Inbound);
        }
        for (index, socket) in sockets.outbound_tcp.into_iter().enumerate() {
            tokio::task::spawn_local(accept_tcp(
                worker.clone(),
                socket,
                Some(index),
                phase.clone(),
            ));
        }
    });
}

/// Runs one worker thread's single-threaded runtime until `phase` reaches
/// [`Phase::Ended`]: `listen` starts the accept loops on the worker's state
/// and HTTP builder, each watching `phase` itself (a draining listener's
/// connections are told to end at [`Phase::Draining`]); idle upstream
/// connections close at their
/// deadlines (no periodic timer while nothing is pooled). At the end every
/// listener and connection left is closed. Shared by the sidecar's and the
/// ingress gateway's workers.
pub(super) fn run_local(
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    listen: impl FnOnce(&Rc<Worker>, &Rc<auto::Builder<LocalExec>>),
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker::new(shared));
        let http = Rc::new(http_builder());
        listen(&worker, &http);
        let poolings = worker.shared.poolings.subscribe();
        tokio::task::spawn_local(worker.pools.clone().keep_swept(poolings));
        // Watched from a task of its own: the future `block_on` runs is
        // polled at every wakeup of every task on the worker, and a join
        // handle's poll is a load where the watch's is a lock.
        let ended = tokio::task::spawn_local(async move {
            reached(&mut phase, Phase::Ended).await;
        });
        let _ = ended.await;
    });
}

/// How long a connection whose HTTP begins while the worker drains is
/// served before it is told to end (HTTP/2: GOAWAY; one that has sent
/// nothing: closed). Its first request comes well within it.
const LATE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection told to end gracefully may stay open with no
/// request in flight before it is dropped: Envoy's `drain_timeout` default,
/// after which it closes a connection it has sent GOAWAY on. An HTTP/2
/// client that never acknowledged the GOAWAY's PING held it for ever, past
/// the idle timeout that was to close it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How a downstream connection is to end before its client ends it.
enum Ending {
    /// Its requests so far served (drain, idle timeout).
    Graceful,
    /// At once: its client stopped reading (stream idle timeout).
    Cut,
    /// At once: told to end gracefully, it is still open [`CLOSE_GRACE`]
    /// later with no request in flight for as long.
    Unanswered,
}

pub(super) fn http_builder() -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    // A request head is read whole before anything else happens: bounded
    // as Envoy bounds it (`max_request_headers_kb`, 60 KiB by default,
    // request line included), not at hyper's ~400 KiB, so one connection
    // cannot make the proxy hold (and forward) a head of hundreds of KiB.
    // Past it: 431. Header lines are bounded at hyper's 100, as Envoy's
    // `max_headers_count` bounds them (431 past it too).
    // No header read timeout of hyper's: its 30 s default also runs while
    // a kept-alive connection waits for its next request, so every idle
    // connection was closed at 30 s whatever `downstream.idleTimeout`
    // said. The idle timeout (Envoy's 1 h by default) bounds a connection
    // with no request in flight, a head still being sent included, as
    // Envoy's does (its request_headers_timeout is off by default).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(super::canonical::MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_REQUEST_HEADER_LIST);
    builder
}

struct Accept {
    worker: Rc<Worker>,
    http: Rc<auto::Builder<LocalExec>>,
    phase: watch::Receiver<Phase>,
}

impl Accept {
    /// Serves the HTTP (or captured) listener `socket` until the drain
    /// ends: the inbound one's connections told to end once the worker
    /// drains, the outbound one's untold.
    async fn http(mut self, socket: StdListener, direction: Direction) {
        let Some(listener) = to_tokio(socket) else {
            return;
        };
        let gauge = self
            .worker
            .shared
            .metrics
            .active_connections
            .with_label_values(&[direction.as_str()]);
        let drains = direction == Direction::Inbound;
        while let Some((stream, peer)) = accept(&listener, &mut self.phase).await {
            let _ = stream.set_nodelay(true);
            let open = self.worker.shared.open_connections.open();
            let connection = Connection {
                worker: self.worker.clone(),
                http: self.http.clone(),
                drain: drains.then(|| self.phase.clone()),
            };
            let gauge = gauge.clone();
            tokio::task::spawn_local(async move {
                let _open = open;
                gauge.inc();
                connection.accepted(stream, peer, direction).await;
                gauge.dec();
            });
        }
    }
}

/// What serving one connection needs.
pub(super) struct Connection {
    pub(super) worker: Rc<Worker>,
    pub(super) http: Rc<auto::Builder<LocalExec>>,
    /// The worker's phase, for a connection on a draining listener (the
    /// inbound one, a gateway's): its HTTP ends gracefully once the worker
    /// drains (a second after its HTTP begins, when that is during the
    /// drain). `None` on
    /// the outbound listeners: served until the drain ends.
    pub(super) drain: Option<watch::Receiver<Phase>>,
}

/// Whether a connection addressed to a listener directly came from this
/// pod's own network namespace: over loopback, or from the address it was
/// made to (the kernel picks the destination as the source of a
/// connection a namespace makes to one of its own addresses).
fn from_this_pod(stream: &TcpStream, peer: SocketAddr) -> bool {
    let peer = peer.ip().to_canonical();
    peer.is_loopback()
        || stream
            .local_addr()
            .is_ok_and(|local| local.ip().to_canonical() == peer)
}

impl Connection {
    /// A connection the listener accepted: by its original destination
    /// when iptables redirected it, else as the listener's own — except
    /// the inbound listener under capture, which takes redirected
    /// connections only: one addressed to it directly would reach the app
    /// past its own bind address (an app bound to 127.0.0.1 only, reached
    /// from another pod), and is closed, as Istio's virtualInbound listener
    /// blackholes its own port. And the outbound listener serves its own
    /// pod only: a connection addressed to it directly from elsewhere (an
    /// outbound listener bound to `0.0.0.0` or `[::]`) would be an open
    /// proxy that calls the mesh with this workload's identity, and is
    /// closed, as Istio blackholes what is addressed to its outbound
    /// listener's own port.
    async fn accepted(self, stream: TcpStream, peer: SocketAddr, direction: Direction) {
        // The config is looked at, not held: a connection's requests each
        // take the config in force when they come.
        let redirect = self.worker.shared.config.load().capture.mode == InterceptionMode::Redirect;
        if redirect {
            match original_dst(&stream) {
                Ok(Some(dst)) => return self.captured(stream, peer, direction, dst).await,
                Ok(None) if direction == Direction::Inbound => {
                    tracing::debug!(%peer, "refused: a connection to the inbound capture port itself");
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, "cannot read the original destination");
                    return;
                }
            }
        }
        if direction == Direction::Outbound && !from_this_pod(&stream, peer) {
            tracing::debug!(%peer, "refused: a connection to the outbound listener from outside the pod");
            return;
        }
        self.serve(stream, peer, direction).await;
    }

    /// The inbound mTLS handshake (by PeerAuthentication), then HTTP.
    async fn serve(self, stream: TcpStream, peer: SocketAddr, direction: Direction) {
        let local = stream.local_addr().unwrap_or(peer);
        // Explicit mode: the inbound listener serves one application port.
        let mode = match direction {
            Direction::Inbound => {
                let snapshot = self.worker.shared.config.load();
                (snapshot.inbound_mtls).for_port(snapshot.listeners.app.port())
            }
            Direction::Outbound => MtlsMode::Disable,
        };
        if direction == Direction::Inbound && tcp::opens_app_tls(&self.worker, &stream, mode).await
        {
            // The application's own TLS: its bytes, to it.
            let app = self.worker.shared.config.load().inbound.clone();
            let side = (direction, Some(app.port));
            let target = TcpTarget::Cluster {
                cluster: app,
                endpoint: None,
            };
            let io: DownstreamIo = MaybeTls::Plain(stream);
            tcp::proxy(&self.worker, io, (peer, local), None, side, target).await;
            return;
        }
        let Some((io, tls)) = self.handshake(stream, mode, true).await else {
            return;
        };
        let down = Downstream {
            direction,
            peer,
            local,
            tls,
            captured: None,
            activity: Activity::new(),
            gateway: None,
            spliced: None,
        };
        self.http(io, down).await;
    }

    /// A redirected connection to `dst`.
    async fn captured(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        direction: Direction,
        dst: SocketAddr,
    ) {
        let snapshot = self.worker.shared.config.load_full();
        match direction {
            Direction::Outbound => {
                let decided = interception::outbound(&snapshot, &stream, dst).await;
                let down = |captured| Downstream {
                    direction,
                    peer,
                    local: dst,
                    tls: None,
                    captured: Some(captured),
                    activity: Activity::new(),
                    gateway: None,
                    spliced: None,
                };
                match decided {
                    Ok(interception::Outbound::Http(captured)) => {
                        // Each request takes the config in force when it
                        // comes: the connection holds none, so a config
                        // replaced lets its endpoints go.
                        drop(snapshot);
                        let io: DownstreamIo = MaybeTls::Plain(stream);
                        self.http(io, down(captured)).await;
                    }
                    Ok(interception::Outbound::Tcp {
                        target,
                        sni,
                        undecided,
                    }) => {
                        let outside = |_| interception::outside_registry(&snapshot, dst);
                        let target =
                            tcp::routed(&snapshot, target, dst.ip(), sni.as_deref(), outside);
                        let target = interception::at_original_destination(target, dst);
                        drop(snapshot);
                        let ends = (peer, dst);
                        let side = (direction, None);
                        let stream = Rewind::with_prefix(stream, undecided);
                        tcp::proxy(&self.worker, stream, ends, None, side, target).await;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "captured connection failed before its first bytes")
                    }
                }
            }
            Direction::Inbound => {
                let Some(app) = interception::inbound_app(&snapshot, dst) else {
                    tracing::debug!(%dst, %peer, "refused: the original destination is not this pod");
                    return;
                };
                let timeout = snapshot.capture.protocol_detection_timeout;
                // The mode of the port the client addressed (Istio's
                // endpoint port).
                let mode = snapshot.inbound_mtls.for_port(dst.port());
                drop(snapshot);
                self.captured_inbound(stream, peer, dst, app, (timeout, mode))
                    .await;
            }
        }
    }

    /// A captured inbound connection to the local `app`: mTLS as
    /// PeerAuthentication says, then HTTP or bytes by the port's declared
    /// protocol, else by the (decrypted) first bytes.
    async fn captured_inbound(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        app: Arc<Cluster>,
        (timeout, mode): (Duration, MtlsMode),
    ) {
        // What the first bytes must tell: mTLS or not, unless nothing can
        // be mTLS here (DISABLE, or no workload certificate); HTTP or not,
        // unless the port declares its protocol. A port that needs neither
        // is served at once (a server-first protocol does not wait).
        let mtls_possible = mode != MtlsMode::Disable && self.worker.shared.tls.load().is_some();
        let auto = app.protocol == Protocol::Auto;
        let detected = match (auto, mtls_possible || mode == MtlsMode::Strict) {
            (true, _) => detect(&stream, timeout).await,
            (false, true) => detect_tls(&stream, timeout).await,
            (false, false) => Ok(Detected::Opaque { timed_out: false }),
        };
        let first = match detected {
            Ok(first) => first,
            Err(error) => {
                tracing::debug!(%error, "captured connection failed before its first bytes");
                return;
            }
        };
        // A ClientHello offering the mesh's protocols is a peer sidecar's
        // mTLS, terminated (STRICT, PERMISSIVE); any connection is under
        // STRICT. Other TLS is the application's own: it goes to the app
        // untouched, as Istio's passthrough chain sends it. A silent client
        // (a server-first protocol) stays plaintext.
        let mesh_tls = match &first {
            Detected::Tls { alpn, .. } => alpn.iter().any(|p| is_mesh_alpn(p)),
            _ => false,
        };
        let app_tls = matches!(first, Detected::Tls { .. }) && !mesh_tls;
        let (io, tls, undecided) = if mode == MtlsMode::Strict
            || (mesh_tls && mode != MtlsMode::Disable)
        {
            // A port declared TCP or TLS carries no HTTP: no XFCC element.
            let http = !matches!(app.protocol, Protocol::Tcp | Protocol::Tls);
            match self.handshake(stream, mode, http).await {
                Some((io, tls)) => (io, tls, Bytes::new()),
                None => return,
            }
        } else {
            // What a timed-out detection peeked is read now and replayed.
            let undecided = match take_undecided(&first, &stream) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::debug!(%error, "captured connection failed before its first bytes");
                    return;
                }
            };
            (MaybeTls::Plain(stream), None, undecided)
        };
        // The application's own TLS is bytes for it; else the declared
        // protocol, else what the plaintext's first bytes showed, else (on
        // terminated mTLS) what the decrypted ones show.
        let (io, http) = match (app.protocol, &io) {
            (Protocol::Auto, MaybeTls::Tls(_)) => match rewind::sniff_http(io, timeout).await {
                Ok(sniffed) => sniffed,
                Err(error) => {
                    tracing::debug!(%error, "captured connection failed before its first bytes");
                    return;
                }
            },
            (protocol, _) => {
                let http = !app_tls
                    && match protocol {
                        Protocol::Tcp | Protocol::Tls => false,
                        Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
                        Protocol::Auto => matches!(first, Detected::Http1 | Detected::Http2),
                    };
                (Rewind::with_prefix(io, undecided), http)
            }
        };
        if http {
            let down = Downstream {
                direction: Direction::Inbound,
                peer,
                local: dst,
                tls,
                captured: Some(Captured::Inbound { app }),
                activity: Activity::new(),
                gateway: None,
                spliced: None,
            };
            self.http(io, down).await;
        } else {
            let side = (Direction::Inbound, Some(app.port));
            let target = TcpTarget::Cluster {
                cluster: app,
                endpoint: None,
            };
            let ends = (peer, dst);
            tcp::proxy(&self.worker, io, ends, tls, side, target).await;
        }
    }

    /// The inbound mTLS handshake under `mode`; `None` when refused (and
    /// counted). The connection's XFCC element is built here, once, where
    /// it may carry `http`.
    async fn handshake(
        &self,
        stream: TcpStream,
        mode: MtlsMode,
        http: bool,
    ) -> Option<(DownstreamIo, Option<PeerTls>)> {
        let shared = &self.worker.shared;
        let policy = shared.config.load().bootstrap.xfcc;
        let xfcc = (http && policy.mode.sets_element()).then_some(policy.details);
        let (io, mut tls) = handshake::accept(
            stream,
            mode,
            shared.tls.load_full(),
            &shared.metrics.tls_failures,
            xfcc,
        )
        .await
        .ok()?;
        if let Some(peer) = tls.as_mut() {
            self.worker.identify(peer);
        }
        Some((io, tls))
    }

    /// Serves HTTP/1.1 and HTTP/2 on `io` until the connection ends.
    pub(super) async fn http<IO>(self, io: IO, mut down: Downstream)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = down.activity.clone();
        let peer = down.peer;
        let stall = WriteStall::new();
        let spliced = Spliced::default();
        down.spliced = Some(spliced.clone());
        let io = Watched::new(DelayedClose::new(io, spliced), stall.clone());
        let down = Rc::new(down);
        let worker = self.worker.clone();
        let service = service_fn(move |req| handler::handle(worker.clone(), down.clone(), req));
        // HTTP begun while the worker drains (a connection accepted then, or
        // whose handshake ended then): HTTP/1.1 without keep-alive, so its
        // request is answered with `Connection: close` and the connection
        // closes; told to end after `LATE_GRACE` whatever its protocol
        // (HTTP/2: GOAWAY, its streams so far served; silent: closed) — as
        // Envoy's drain manager discourages each request on a draining
        // listener that still accepts.
        let late = self
            .drain
            .as_ref()
            .is_some_and(|phase| *phase.borrow() >= Phase::Draining);
        let io = TokioIo::new(io);
        let conn = if late {
            let mut builder = (*self.http).clone();
            builder.http1().keep_alive(false);
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned()
        } else {
            self.http
                .serve_connection_with_upgrades(io, service)
                .into_owned()
        };
        let mut conn = std::pin::pin!(conn);
        // Ends gracefully (HTTP/1.1: closed between requests; HTTP/2: GOAWAY,
        // then closed once its streams are done) when the worker drains or
        // when no request has been in flight for the idle timeout, as
        // Envoy's `idle_timeout` closes downstream connections.
        let timeouts = self.worker.shared.config.load().bootstrap.downstream;
        let idle = async {
            match timeouts.idle {
                Some(timeout) => activity.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        let drained = async {
            match self.drain {
                Some(mut phase) => {
                    reached(&mut phase, Phase::Draining).await;
                    if late {
                        tokio::time::sleep(LATE_GRACE).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        // Cut (its requests recorded SI) when its client has taken nothing
        // of what the agent had to write for the stream idle timeout: Envoy
        // waits that long for a peer's window, and a response body hyper
        // cannot write is not polled, so its own timer cannot tell.
        let stalled = async {
            match timeouts.stream_idle {
                Some(timeout) => stall.stalled(timeout).await,
                None => std::future::pending().await,
            }
        };
        // Why the connection is to end, watched in a set that polls it only
        // when its own timer, its writes' stall or the drain woke it: beside
        // the connection in one select, it would be polled on every wakeup
        // of every request.
        let mut ending = FuturesUnordered::new();
        ending.push(Either::Left(async {
            tokio::select! {
                () = drained => Ending::Graceful,
                () = idle => {
                    tracing::debug!(%peer, "downstream connection idle, closing");
                    Ending::Graceful
                }
                () = stalled => Ending::Cut,
            }
        }));
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                Some(why) = ending.next() => match why {
                    Ending::Graceful => {
                        conn.as_mut().graceful_shutdown();
                        // Dropped if still open once CLOSE_GRACE has passed
                        // and no request has been in flight for as long.
                        ending.push(Either::Right(async {
                            tokio::time::sleep(CLOSE_GRACE).await;
                            activity.idle_for(CLOSE_GRACE).await;
                            Ending::Unanswered
                        }));
                    }
                    Ending::Unanswered => {
                        tracing::debug!(%peer, "downstream connection did not end within {CLOSE_GRACE:?} of being told to, closing");
                        break Ok(());
                    }
                    Ending::Cut => {
                        tracing::debug!(%peer, "downstream client stopped reading, closing");
                        activity.cut_stalled();
                        break Ok(());
                    }
                },
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "downstream connection ended with an error");
        }
    }
}

/// Serves a TCP listener, the inbound one (`outbound_index` `None`) or an
/// outbound one, until the drain ends. A TCP connection cannot be told to
/// end: it is proxied until it closes or the drain ends.
async fn accept_tcp(
    worker: Rc<Worker>,
    socket: StdListener,
    outbound_index: Option<usize>,
    mut phase: watch::Receiver<Phase>,
) {
    let Some(listener) = to_tokio(socket) else {
        return;
    };
    while let Some((stream, peer)) = accept(&listener, &mut phase).await {
        let _ = stream.set_nodelay(true);
        let open = worker.shared.open_connections.open();
        let serve = tcp::serve(worker.clone(), stream, peer, outbound_index);
        tokio::task::spawn_local(async move {
            let _open = open;
            serve.await;
        });
    }
}

pub(super) fn to_tokio(socket: StdListener) -> Option<TcpListener> {
    TcpListener::from_std(socket)
        .map_err(|error| tracing::error!(%error, "cannot register a listener"))
        .ok()
}

/// The next connection, or `None` once the worker's `phase` has reached
/// [`Phase::Ended`] (then none is taken, even one already waiting): every
/// listener accepts through the drain, as Envoy's do.
pub(super) async fn accept(
    listener: &TcpListener,
    phase: &mut watch::Receiver<Phase>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            () = reached(phase, Phase::Ended) => return None,
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
