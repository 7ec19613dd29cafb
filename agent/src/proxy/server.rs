//! Worker threads: each runs a single-threaded runtime with its own
//! listener sockets, serves HTTP/1.1 and HTTP/2 (prior knowledge) on the
//! same port, and drains its connections on shutdown.

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::activity::Activity;
use super::listener::WorkerSockets;
use super::{Direction, Downstream, LocalExec, Shared, Worker, handler, tcp};
use crate::model::MtlsMode;
use crate::tls::handshake;

/// A running worker thread.
pub struct WorkerHandle {
    thread: std::thread::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl WorkerHandle {
    /// Tells the worker to stop accepting and drain its connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the worker to finish draining.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("a worker thread panicked");
        }
    }
}

/// Starts one worker per socket group.
pub fn spawn_workers(
    shared: &Arc<Shared>,
    sockets: Vec<WorkerSockets>,
    inbound_tcp: bool,
    drain: Duration,
) -> std::io::Result<Vec<WorkerHandle>> {
    let mut handles = Vec::new();
    for (index, sockets) in sockets.into_iter().enumerate() {
        let (stop, stopped) = watch::channel(false);
        let shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || run_worker(shared, sockets, inbound_tcp, stopped, drain))?;
        handles.push(WorkerHandle { thread, stop });
    }
    Ok(handles)
}

fn run_worker(
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    inbound_tcp: bool,
    stopped: watch::Receiver<bool>,
    drain_for: Duration,
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
        let drain = Rc::new(watch::channel(()).0);
        let http = Rc::new(http_builder());
        let serve = |socket, direction| {
            let accept = Accept {
                worker: worker.clone(),
                http: http.clone(),
                drain: drain.clone(),
                stopped: stopped.clone(),
            };
            tokio::task::spawn_local(accept.http(socket, direction))
        };
        let mut loops = vec![serve(sockets.outbound, Direction::Outbound)];
        if inbound_tcp {
            loops.push(tokio::task::spawn_local(accept_tcp(
                worker.clone(),
                sockets.inbound,
                None,
                stopped.clone(),
            )));
        } else {
            loops.push(serve(sockets.inbound, Direction::Inbound));
        }
        for (index, socket) in sockets.outbound_tcp.into_iter().enumerate() {
            loops.push(tokio::task::spawn_local(accept_tcp(
                worker.clone(),
                socket,
                Some(index),
                stopped.clone(),
            )));
        }
        let pools = worker.pools.clone();
        tokio::task::spawn_local(async move {
            loop {
                // Often enough that idle connections held for other workers'
                // waiting requests are let go within a blink.
                tokio::time::sleep(Duration::from_millis(100)).await;
                pools.sweep();
            }
        });
        for accept_loop in loops {
            let _ = accept_loop.await;
        }
        // Listeners are closed; let in-flight requests finish, up to `drain`.
        let _ = drain.send(());
        let _ = tokio::time::timeout(drain_for, drain.closed()).await;
    });
}

fn http_builder() -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_concurrent_streams(1024);
    builder
}

struct Accept {
    worker: Rc<Worker>,
    http: Rc<auto::Builder<LocalExec>>,
    drain: Rc<watch::Sender<()>>,
    stopped: watch::Receiver<bool>,
}

impl Accept {
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
        while let Some((stream, peer)) = accept(&listener, &mut self.stopped).await {
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                worker: self.worker.clone(),
                http: self.http.clone(),
                drain: self.drain.subscribe(),
            };
            let gauge = gauge.clone();
            tokio::task::spawn_local(async move {
                gauge.inc();
                connection.serve(stream, peer, direction).await;
                gauge.dec();
            });
        }
    }
}

/// What serving one connection needs.
struct Connection {
    worker: Rc<Worker>,
    http: Rc<auto::Builder<LocalExec>>,
    /// Told when the worker drains; dropped when the connection is done,
    /// which is what draining waits for.
    drain: watch::Receiver<()>,
}

impl Connection {
    /// The inbound mTLS handshake (by PeerAuthentication), then HTTP.
    async fn serve(
        self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        direction: Direction,
    ) {
        let local = stream.local_addr().unwrap_or(peer);
        let shared = &self.worker.shared;
        let mode = match direction {
            Direction::Inbound => shared.config.load().inbound_mtls,
            Direction::Outbound => MtlsMode::Disable,
        };
        let Ok((io, mut tls)) = handshake::accept(
            stream,
            mode,
            shared.tls.load_full(),
            &shared.metrics.tls_failures,
        )
        .await
        else {
            return; // refused and counted
        };
        if let Some(peer) = tls.as_mut() {
            peer.principal = peer
                .principal
                .as_ref()
                .map(|p| self.worker.intern_principal(p));
        }
        let activity = Activity::new();
        let down = Rc::new(Downstream {
            direction,
            peer,
            local,
            tls,
            activity: activity.clone(),
        });
        let worker = self.worker.clone();
        let service = service_fn(move |req| handler::handle(worker.clone(), down.clone(), req));
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(conn);
        // Ends gracefully (HTTP/1.1: closed between requests; HTTP/2: GOAWAY,
        // then closed once its streams are done) when the worker drains or
        // when no request has been in flight for the idle timeout, as
        // Envoy's `idle_timeout` closes downstream connections.
        let idle_timeout = shared.config.load().bootstrap.downstream.idle;
        let idle = async {
            match idle_timeout {
                Some(timeout) => activity.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        let mut idle = std::pin::pin!(idle);
        let mut drain = self.drain;
        let mut ending = false;
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                _ = drain.changed(), if !ending => {
                    ending = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = idle.as_mut(), if !ending => {
                    ending = true;
                    tracing::debug!(%peer, "downstream connection idle, closing");
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "downstream connection ended with an error");
        }
    }
}

async fn accept_tcp(
    worker: Rc<Worker>,
    socket: StdListener,
    outbound_index: Option<usize>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some(listener) = to_tokio(socket) else {
        return;
    };
    while let Some((stream, peer)) = accept(&listener, &mut stopped).await {
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(tcp::serve(worker.clone(), stream, peer, outbound_index));
    }
}

fn to_tokio(socket: StdListener) -> Option<TcpListener> {
    TcpListener::from_std(socket)
        .map_err(|error| tracing::error!(%error, "cannot register a listener"))
        .ok()
}

/// The next connection, or `None` once the worker is told to stop.
async fn accept(
    listener: &TcpListener,
    stopped: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => return None,
        }
    }
}
