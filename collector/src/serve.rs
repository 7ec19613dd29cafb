//! Serving one listener (OTLP/gRPC, OTLP/HTTP, Zipkin, or `/metrics` with
//! the query API and UI) with the timeouts a listener open to every
//! workload needs: a connection that is slow to send a request head, a
//! request body that stalls, and a connection that sits idle are closed,
//! so a few thousand of them cannot hold the collector's memory and file
//! descriptors for minutes.
//!
//! - **header read** (HTTP/1.1): the whole request head must arrive within
//!   it, counted from when the connection starts waiting for one (hyper's
//!   `header_read_timeout`);
//! - **body read**: the whole request body must arrive within it, counted
//!   from the request head; a body still arriving then fails with
//!   [`BodyTimeout`], which receivers answer 408;
//! - **idle**: a connection with no request in flight for this long is
//!   closed gracefully (HTTP/2: GOAWAY), and so is one that never sends a
//!   byte;
//! - **close**: a connection closed gracefully — idle, or the collector
//!   stopping — that is still open 5 s later with no request in flight for
//!   5 s is dropped (an HTTP/2 client that never acknowledges the GOAWAY's
//!   PING held it for ever), and one with requests in flight at the latest
//!   5 s plus the body-read timeout after the close.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::events;
use crate::metrics::{ListenerTimeout, Metrics};
use crate::units::HumanDuration;

/// The listeners' timeouts (the OpenTelemetry Collector's HTTP server
/// defaults: one minute to read a request head, one minute idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenTimeouts {
    /// Time to read a request head (HTTP/1.1). Default `1m`.
    pub read_header_timeout: HumanDuration,
    /// Time to read a request body, from its head. Default `1m`.
    pub read_body_timeout: HumanDuration,
    /// Time a connection may stay open with no request in flight. Default `1m`.
    pub idle_timeout: HumanDuration,
}

impl Default for ListenTimeouts {
    fn default() -> Self {
        let minute = HumanDuration(Duration::from_secs(60));
        Self {
            read_header_timeout: minute,
            read_body_timeout: minute,
            idle_timeout: minute,
        }
    }
}

/// A request body that took longer than the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// The timeout in `error` or anything it was caused by, if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(timeout) = error.downcast_ref::<Self>() {
                return Some(timeout);
            }
            next = error.source();
        }
        None
    }
}

/// A request body that fails with [`BodyTimeout`] past its deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
}

impl Activity {
    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.idle_since.lock()
        {
            *since = Instant::now();
        }
    }

    /// When the connection will have been idle for `idle`, or `None` while
    /// a request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|since| *since + idle)
    }
}

/// Marks the end of a request when its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that holds its request's [`InFlight`] mark.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection closed gracefully (idle, or the collector
/// stopping) may stay open with no request in flight before it is dropped,
/// counted from the close: Envoy's `drain_timeout` default. Without it, an
/// HTTP/2 client that never acknowledged the GOAWAY's PING held its
/// connection, and the collector's stop, for ever. One with requests in
/// flight is dropped at the latest this plus the body-read timeout after
/// the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` turns true, then closes every
/// connection gracefully and returns once they are all gone (each, as
/// [`CLOSE_GRACE`] says, at most that plus the body-read timeout after).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ListenTimeouts,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.read_header_timeout.0)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, or a connection reset before
                // accept: wait a little rather than spin.
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Replies are small writes (headers, body, gRPC trailers): without
        // TCP_NODELAY the last waits for the peer's delayed ACK, about
        // 40 ms on every request of a kept-alive connection.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let connection = connection(
            TokioIo::new(stream),
            router.clone(),
            builder.clone(),
            timeouts,
            metrics.clone(),
            stop.clone(),
        );
        while connections.try_join_next().is_some() {}
        connections.spawn(connection);
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    io: TokioIo<tokio::net::TcpStream>,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    timeouts: ListenTimeouts,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: std::sync::Mutex::new(Instant::now()),
    });
    let read_body = timeouts.read_body_timeout.0;
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: http::Request<Incoming>| {
            activity.start();
            let in_flight = InFlight(activity.clone());
            let request = request.map(|inner| {
                Body::new(DeadlineBody {
                    inner,
                    deadline: Box::pin(tokio::time::sleep(read_body)),
                    timeout: read_body,
                })
            });
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let idle = timeouts.idle_timeout.0;
    // Once closing gracefully: when to look again whether to drop it, and
    // when it is dropped regardless (a request may take the body-read
    // timeout to arrive; a stop must end).
    let mut closing: Option<(Instant, Instant)> = None;
    let close = |now: Instant| {
        let cap = now + CLOSE_GRACE + timeouts.read_body_timeout.0;
        Some((now + CLOSE_GRACE, cap))
    };
    loop {
        let deadline = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result
                    && error
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout)
                {
                    events::connection_timed_out(&metrics, ListenerTimeout::ReadHeader);
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_none() => {
                if activity.idle_deadline(idle).is_some_and(|d| d <= Instant::now()) {
                    events::connection_timed_out(&metrics, ListenerTimeout::Idle);
                    conn.as_mut().graceful_shutdown();
                    closing = close(Instant::now());
                }
            }
            _ = stop.wait_for(|stopped| *stopped), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = close(Instant::now());
            }
            () = tokio::time::sleep_until(closing.map_or(deadline, |(at, _)| at)), if closing.is_some() => {
                let (_, cap) = closing.expect("closing");
                let now = Instant::now();
                // (in flight: look again a grace later)
                let next = activity
                    .idle_deadline(CLOSE_GRACE)
                    .unwrap_or(now + CLOSE_GRACE);
                if next <= now || now >= cap {
                    tracing::debug!("connection dropped: not closed within {CLOSE_GRACE:?} of its graceful close");
                    return;
                }
                closing = Some((next.min(cap), cap));
            }
        }
    }
}
