//! Compiled per-rule traffic policy (VirtualService `http[]`): what to do with
//! a matched request besides forwarding it — redirect or answer directly,
//! inject faults, answer CORS preflights, mirror, rewrite, retry, time out.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use regex::Regex;

use super::destination::DestinationTarget;
use super::route::StrMatcher;

/// What a matched rule does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to a weighted destination.
    Forward,
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Direct(DirectResponse),
}

/// A redirect's replacement parts; absent parts keep the request's.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Path.
    pub uri: Option<String>,
    /// A substitution on the request's path when `uri` is unset (the
    /// Gateway API's `ReplacePrefixMatch`: the matched prefix replaced, on
    /// segment boundaries); the query is kept.
    pub uri_regex: Option<(regex::Regex, String)>,
    /// Host (without port).
    pub authority: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Scheme.
    pub scheme: Option<String>,
    /// Use the request's port when `port` is unset (FROM_REQUEST_PORT).
    pub port_from_request: bool,
    /// Keep the request's port even when the scheme changes from one whose
    /// default it is (`http://a:80` → `https://a:80`): Envoy's
    /// `require_tls` writes `https://<Host><path>` as the Host was sent,
    /// where a route's scheme redirect drops it (`processRequestHost`).
    pub keep_request_port: bool,
    /// Status (301 by default).
    pub code: StatusCode,
}

impl Redirect {
    /// The same request over `https`, host and port as the client wrote
    /// them, 301: Envoy's `require_tls: ALL`, a Gateway server's
    /// `httpsRedirect`.
    pub fn to_https() -> Self {
        Self {
            uri: None,
            uri_regex: None,
            authority: None,
            port: None,
            scheme: Some("https".into()),
            port_from_request: true,
            keep_request_port: true,
            code: StatusCode::MOVED_PERMANENTLY,
        }
    }
}

/// A fixed response.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
}

/// Which failures are retried (Envoy's `retry_on` conditions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u16);

impl RetryOn {
    /// Any 5xx, or no response at all.
    pub const FIVE_XX: Self = Self(1);
    /// 502, 503, 504 (and per-try timeouts, which Envoy answers as 504).
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// No response: disconnect, reset, per-try timeout.
    pub const RESET: Self = Self(1 << 2);
    /// No response, and none of the request was written upstream: a
    /// connection that failed or closed before the request went out
    /// (Envoy's `reset-before-request`; safe for any method).
    pub const RESET_BEFORE_REQUEST: Self = Self(1 << 11);
    /// The connection could not be opened.
    pub const CONNECT_FAILURE: Self = Self(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: Self = Self(1 << 4);
    /// HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: Self = Self(1 << 5);
    /// The listed status codes.
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 6);
    /// An answer marked `x-envoy-ratelimited` (by an upstream Envoy's rate
    /// limit): retried only under this condition, never under another.
    pub const ENVOY_RATELIMITED: Self = Self(1 << 13);
    /// Every gRPC condition: a response's `grpc-status` is read when any is on.
    pub const GRPC: Self = Self((0b1111 << 7) | (1 << 12));
    /// gRPC CANCELLED.
    pub const GRPC_CANCELLED: Self = Self(1 << 7);
    /// gRPC DEADLINE_EXCEEDED.
    pub const GRPC_DEADLINE_EXCEEDED: Self = Self(1 << 8);
    /// gRPC RESOURCE_EXHAUSTED.
    pub const GRPC_RESOURCE_EXHAUSTED: Self = Self(1 << 9);
    /// gRPC UNAVAILABLE.
    pub const GRPC_UNAVAILABLE: Self = Self(1 << 10);
    /// gRPC INTERNAL.
    pub const GRPC_INTERNAL: Self = Self(1 << 12);
    /// A condition that never holds here: `retriable-headers` (Istio renders
    /// no `retriable_headers` for it to match) and
    /// `http3-post-connect-failure` (the agent speaks no HTTP/3 upstream).
    /// Accepted, as Istio accepts them.
    pub const NEVER: Self = Self(0);

    /// Whether every condition of `other` is on.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any condition of `other` is on.
    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Adds `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The condition Envoy names `name`; `None` if unknown.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "reset-before-request" => Self::RESET_BEFORE_REQUEST,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            "internal" => Self::GRPC_INTERNAL,
            "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
            "retriable-headers" | "http3-post-connect-failure" => Self::NEVER,
            _ => return None,
        })
    }
}

/// How a rule retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = none).
    pub attempts: u32,
    /// Time allowed for each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Status codes for `retriable-status-codes` (and numbers in `retryOn`).
    pub status_codes: Vec<u16>,
    /// Base of the jittered exponential backoff (Envoy's 25ms by default).
    pub backoff: Duration,
    /// `retryIgnorePreviousHosts: true`: retries leave the endpoints tried
    /// even under a consistent-hash policy (Istio then renders Envoy's
    /// `previous_hosts` predicate, which it otherwise leaves out there).
    pub ignore_previous_hosts: bool,
}

impl RetryPolicy {
    /// Istio's policy for rules that say nothing: two retries on connect
    /// failure, refused stream and gRPC unavailable/cancelled. Istio renders
    /// `retriable-status-codes` without codes, so no HTTP status is retried:
    /// 503 is not, since Istio 1.24 (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`,
    /// on by default: the app may have acted on a request it answered 503).
    pub fn istio_default() -> Self {
        let mut on = RetryOn::CONNECT_FAILURE;
        for c in [
            RetryOn::REFUSED_STREAM,
            RetryOn::GRPC_UNAVAILABLE,
            RetryOn::GRPC_CANCELLED,
            RetryOn::RETRIABLE_STATUS_CODES,
        ] {
            on.insert(c);
        }
        Self {
            attempts: 2,
            per_try_timeout: None,
            on,
            status_codes: Vec::new(),
            backoff: DEFAULT_BACKOFF,
            ignore_previous_hosts: false,
        }
    }

    /// Whether a response with `status` (and gRPC status) is retried.
    pub fn retries_status(&self, status: u16, grpc_status: Option<i64>) -> bool {
        let on = self.on;
        (on.contains(RetryOn::FIVE_XX) && status >= 500)
            || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&status))
            || match grpc_status {
                Some(1) => on.contains(RetryOn::GRPC_CANCELLED),
                Some(4) => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
                Some(8) => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
                Some(13) => on.contains(RetryOn::GRPC_INTERNAL),
                Some(14) => on.contains(RetryOn::GRPC_UNAVAILABLE),
                _ => false,
            }
    }

    /// Whether a failure without a response is retried. As Envoy's
    /// `wouldRetryFromReset`: `5xx`, `gateway-error` and `reset` retry every
    /// failure (a failure becomes a 503, so it counts as one);
    /// `reset-before-request` those that wrote none of the request;
    /// `connect-failure` and `refused-stream` their own.
    pub fn retries_failure(&self, failure: AttemptFailure) -> bool {
        let on = self.on;
        let any = RetryOn(RetryOn::FIVE_XX.0 | RetryOn::GATEWAY_ERROR.0 | RetryOn::RESET.0);
        if on.intersects(any) {
            return true;
        }
        match failure {
            AttemptFailure::ConnectFailure => on.intersects(RetryOn(
                RetryOn::CONNECT_FAILURE.0 | RetryOn::RESET_BEFORE_REQUEST.0,
            )),
            AttemptFailure::ResetBeforeRequest => on.contains(RetryOn::RESET_BEFORE_REQUEST),
            AttemptFailure::RefusedStream => on.contains(RetryOn::REFUSED_STREAM),
            AttemptFailure::Reset | AttemptFailure::RemoteReset | AttemptFailure::PerTryTimeout => {
                false
            }
        }
    }

    /// The jittered exponential backoff before retry number `retry` (1-based):
    /// uniform in [0, (2^retry − 1) × base], capped at 10 × base, as Envoy's.
    pub fn backoff_before(&self, retry: u32) -> Duration {
        let base = self.backoff.as_micros() as u64;
        let ceiling = base
            .saturating_mul((1u64 << retry.min(16)) - 1)
            .min(base * 10);
        Duration::from_micros(fastrand::u64(0..=ceiling))
    }
}

/// Envoy's default retry backoff base.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// TCP connect failed or timed out.
    ConnectFailure,
    /// The connection closed or broke before the response, after some of
    /// the request was written (no stream reset of the server's: that is
    /// [`Self::RemoteReset`] or [`Self::RefusedStream`]); to retries, a
    /// response that broke the protocol too.
    Reset,
    /// The connection closed before any of the request was written.
    ResetBeforeRequest,
    /// The HTTP/2 server refused the stream, unprocessed: `RST_STREAM`
    /// with `REFUSED_STREAM`, or above the last stream its `GOAWAY` said
    /// it processed (RFC 9113 §8.7). Envoy's `RemoteRefusedStreamReset`.
    RefusedStream,
    /// The HTTP/2 server reset the stream before its response with any
    /// other code (`RST_STREAM`, RFC 9113 §6.4). Envoy's `RemoteReset`.
    RemoteReset,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Delay and the share of requests delayed (0–100).
    pub delay: Option<(Duration, f64)>,
    /// Abort and the share of requests aborted (0–100).
    pub abort: Option<(Abort, f64)>,
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy)]
pub enum Abort {
    /// With this HTTP status.
    Http(StatusCode),
    /// With this gRPC status (trailers-only).
    Grpc(u16),
}

/// A copy target.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where copies go.
    pub target: DestinationTarget,
    /// Share of requests copied (0–100).
    pub percent: f64,
}

/// Rewrites before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path).
    pub uri: Option<String>,
    /// Replaces the authority.
    pub authority: Option<HeaderValue>,
    /// Regex rewrite of the path.
    pub uri_regex: Option<(Regex, String)>,
}

/// A rule's `corsPolicy`, as Istio renders it for Envoy's cors filter
/// (`route.go` `TranslateCORSPolicy`): the lists joined with `,`, `maxAge`
/// in whole seconds. Header values are built once, here.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `allowOrigins` (else the deprecated `allowOrigin`, as exact
    /// matches); a regex matches the whole origin.
    pub origins: Vec<StrMatcher>,
    /// Some matcher matches the literal `*` (`exact: "*"`, `regex: ".*"`):
    /// every origin is allowed, as Envoy's cors filter reads it.
    pub any_origin: bool,
    /// `access-control-allow-methods` on a preflight's answer.
    pub allow_methods: Option<CorsList>,
    /// `access-control-allow-headers` on a preflight's answer.
    pub allow_headers: Option<CorsList>,
    /// `access-control-expose-headers` on answers to an allowed origin.
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` on a preflight's answer.
    pub max_age: Option<HeaderValue>,
    /// `access-control-allow-credentials: true` on every answer that
    /// carries CORS headers.
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes to the app
    /// (`unmatchedPreflights` FORWARD, Istio's default); else (IGNORE) the
    /// agent answers it without `access-control-allow-origin`.
    pub forward_unmatched_preflights: bool,
}

/// A list a preflight's answer names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsList {
    /// Written as configured.
    Listed(HeaderValue),
    /// Configured as `*` alone: the preflight's own request header is
    /// written back (Envoy's reading of `*`).
    EchoRequest,
}

/// Everything a rule does besides choosing a destination.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Forward, redirect or answer directly.
    pub action: RouteAction,
    /// Deadline for the whole request, retries included.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Faults.
    pub fault: Option<Fault>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// Rewrites.
    pub rewrite: Option<Rewrite>,
    /// CORS (boxed: most rules have none).
    pub cors: Option<Box<Cors>>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            action: RouteAction::Forward,
            timeout: None,
            retry: RetryPolicy::istio_default(),
            fault: None,
            mirrors: Vec::new(),
            rewrite: None,
            cors: None,
        }
    }
}

/// Whether an event with a probability of `percent` (0–100) happens now.
pub fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_default_retries_connect_failures_and_no_status() {
        let policy = RetryPolicy::istio_default();
        assert!(!policy.retries_status(503, None));
        assert!(!policy.retries_status(500, None));
        assert!(!policy.retries_status(404, None));
        assert!(policy.retries_status(200, Some(14)));
        assert!(policy.retries_failure(AttemptFailure::ConnectFailure));
        assert!(!policy.retries_failure(AttemptFailure::Reset));
        assert!(policy.retries_failure(AttemptFailure::RefusedStream));
        assert!(!policy.retries_failure(AttemptFailure::RemoteReset));
    }

    /// A stream the server reset (not refused) is retried by the
    /// conditions that cover every failure without a response, as in
    /// Envoy's `wouldRetryFromReset`, and by no narrower one.
    #[test]
    fn a_remote_reset_is_retried_by_reset_5xx_and_gateway_error_alone() {
        for (condition, retried) in [
            ("reset", true),
            ("5xx", true),
            ("gateway-error", true),
            ("refused-stream", false),
            ("reset-before-request", false),
            ("connect-failure", false),
        ] {
            let policy = RetryPolicy {
                on: RetryOn::parse(condition).expect("a condition"),
                ..RetryPolicy::istio_default()
            };
            let failure = AttemptFailure::RemoteReset;
            assert_eq!(policy.retries_failure(failure), retried, "{condition}");
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy::istio_default();
        for retry in 1..10 {
            assert!(policy.backoff_before(retry) <= Duration::from_millis(250));
        }
    }
}
