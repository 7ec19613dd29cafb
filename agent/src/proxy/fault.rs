//! Fault injection (VirtualService `fault`): delays and aborts for a share
//! of requests, before any upstream work, as Envoy's fault filter does.
//! Which faults a request gets is decided first, from the rule and a roll
//! of the dice; the request path then applies them.

use std::time::Duration;

use http::StatusCode;

use super::local_reply::LocalReply;
use crate::model::policy::{Abort, Fault};

/// The faults one request gets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Injected {
    /// Wait this long before going on (Envoy's DI).
    pub delay: Option<Duration>,
    /// Answer with this instead of forwarding (Envoy's FI).
    pub abort: Option<LocalReply>,
}

/// Decides the faults of one request; `roll(percent)` says whether an event
/// with that probability (0–100) happens (`policy::roll` in the proxy).
pub fn decide(fault: &Fault, mut roll: impl FnMut(f64) -> bool) -> Injected {
    let delay = fault
        .delay
        .and_then(|(delay, percent)| roll(percent).then_some(delay));
    let abort = match fault.abort {
        Some((Abort::Http(status), percent)) if roll(percent) => {
            Some(LocalReply::fault_abort(status, None))
        }
        Some((Abort::Grpc(code), percent)) if roll(percent) => Some(LocalReply::fault_abort(
            http_status_for_grpc(code),
            Some(code),
        )),
        _ => None,
    };
    Injected { delay, abort }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ResponseFlags;

    fn fault(delay: Option<f64>, abort: Option<(Abort, f64)>) -> Fault {
        Fault {
            delay: delay.map(|p| (Duration::from_millis(250), p)),
            abort,
        }
    }

    #[test]
    fn the_dice_decide_each_fault_alone() {
        let both = fault(
            Some(10.0),
            Some((Abort::Http(StatusCode::IM_A_TEAPOT), 20.0)),
        );
        let mut asked = Vec::new();
        let injected = decide(&both, |p| {
            asked.push(p);
            p == 20.0
        });
        assert_eq!(asked, [10.0, 20.0], "delay rolled first, then abort");
        assert_eq!(injected.delay, None);
        let abort = injected.abort.expect("the abort came up");
        assert_eq!(abort.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(abort.flags, ResponseFlags::FAULT_ABORT);
        assert_eq!(abort.details, "fault_filter_abort");

        let injected = decide(&both, |p| p == 10.0);
        assert_eq!(injected.delay, Some(Duration::from_millis(250)));
        assert!(injected.abort.is_none());
    }

    #[test]
    fn a_grpc_abort_answers_grpc_callers_with_its_code() {
        let unavailable = fault(None, Some((Abort::Grpc(14), 100.0)));
        let abort = decide(&unavailable, |_| true).abort.expect("aborted");
        assert_eq!(abort.grpc_code(), 14);
        assert_eq!(abort.status, StatusCode::SERVICE_UNAVAILABLE);
        let unknown = fault(None, Some((Abort::Grpc(99), 100.0)));
        let abort = decide(&unknown, |_| true).abort.expect("aborted");
        assert_eq!(abort.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn no_fault_without_a_roll_coming_up() {
        let both = fault(
            Some(100.0),
            Some((Abort::Http(StatusCode::BAD_GATEWAY), 100.0)),
        );
        let injected = decide(&both, |_| false);
        assert!(injected.delay.is_none() && injected.abort.is_none());
    }
}
