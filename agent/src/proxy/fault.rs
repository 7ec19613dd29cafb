//! Fault injection (VirtualService `fault`): delays and aborts for a share
//! of requests, before any upstream work, as Envoy's fault filter does.

use http::StatusCode;

use super::exchange::Exchange;
use super::local_reply::LocalReply;
use crate::flags::ResponseFlags;
use crate::model::policy::{Abort, Fault, roll};

/// Delays and/or aborts the request; `Err` is the abort's reply.
pub async fn inject(fault: &Fault, ex: &mut Exchange) -> Result<(), LocalReply> {
    if let Some((delay, percent)) = fault.delay
        && roll(percent)
    {
        ex.add_flags(ResponseFlags::FAULT_DELAY);
        tokio::time::sleep(delay).await;
    }
    match fault.abort {
        Some((Abort::Http(status), percent)) if roll(percent) => {
            Err(LocalReply::fault_abort(status, None))
        }
        Some((Abort::Grpc(code), percent)) if roll(percent) => Err(LocalReply::fault_abort(
            http_status_for_grpc(code),
            Some(code),
        )),
        _ => Ok(()),
    }
}

/// The HTTP status a non-gRPC caller sees for an injected gRPC status.
fn http_status_for_grpc(code: u16) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
