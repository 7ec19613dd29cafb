//! Sends a prepared request to one endpoint over a pooled connection.

use std::rc::Rc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::RequestBody;
use super::local_reply::LocalReply;
use super::pool::{Pools, Reusable};
use crate::model::cluster::UpstreamAddr;

/// The upstream's response and, for HTTP/1.1, the connection to give back.
pub struct Sent {
    /// Response headers and streaming body.
    pub response: Response<Incoming>,
    /// The HTTP/1.1 connection, reusable after the response.
    pub connection: Option<Reusable>,
}

/// Sends `req` to `addr` as HTTP/2 (`h2`) or HTTP/1.1. A request that an
/// idle connection closed under before it was written goes out once more on
/// a fresh connection; anything else fails with Envoy's flag.
pub async fn send(
    pools: &Rc<Pools>,
    addr: &UpstreamAddr,
    h2: bool,
    timeout: Duration,
    req: Request<RequestBody>,
) -> Result<Sent, LocalReply> {
    if h2 {
        send_h2(pools, addr, timeout, req).await
    } else {
        send_h1(pools, addr, timeout, req).await
    }
}

async fn send_h1(
    pools: &Rc<Pools>,
    addr: &UpstreamAddr,
    timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<Sent, LocalReply> {
    loop {
        let (mut sender, reused) = match pools.take_idle(addr) {
            Some(sender) => (sender, true),
            None => (
                pools
                    .connect_h1(addr, timeout)
                    .await
                    .map_err(connect_failed)?,
                false,
            ),
        };
        match sender.try_send_request(req).await {
            Ok(response) => {
                return Ok(Sent {
                    response,
                    connection: Some(pools.lend(addr, sender)),
                });
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused => req = unsent,
                _ => return Err(reset(&error.into_error())),
            },
        }
    }
}

async fn send_h2(
    pools: &Rc<Pools>,
    addr: &UpstreamAddr,
    timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<Sent, LocalReply> {
    for _ in 0..2 {
        let mut sender = pools.h2(addr, timeout).await.map_err(connect_failed)?;
        match sender.try_send_request(req).await {
            Ok(response) => {
                return Ok(Sent {
                    response,
                    connection: None,
                });
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) => {
                    pools.forget_h2(addr);
                    req = unsent;
                }
                None => return Err(reset(&error.into_error())),
            },
        }
    }
    Err(LocalReply::CONNECTION_TERMINATION)
}

fn connect_failed(error: super::pool::ConnectError) -> LocalReply {
    tracing::debug!(%error, "upstream connect failed");
    LocalReply::CONNECT_FAILURE
}

fn reset(error: &hyper::Error) -> LocalReply {
    tracing::debug!(%error, "upstream reset before response headers");
    LocalReply::CONNECTION_TERMINATION
}
