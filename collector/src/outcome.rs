//! What a span's outcome is, defined once for every number tracemesh shows
//! (the query service's error rates, its trace summaries, the span-derived
//! metrics on `/metrics`): an **error** is a 5xx response or a local failure
//! (status ERROR without an HTTP answer: a timeout, a reset, no upstream);
//! a **4xx** is the caller's mistake, counted beside the errors and never
//! in them, whatever status the emitter set (OpenTelemetry marks a client
//! span with a 4xx as ERROR; Istio's success rate counts it as a success).

/// The OTLP status code of a failed span (`STATUS_CODE_ERROR`).
pub const STATUS_ERROR: i32 = 2;

/// OpenTelemetry's attribute marking a resent HTTP request (a retry
/// attempt): such a span is part of a call already counted, not a new one.
pub const RESEND_COUNT: &str = "http.request.resend_count";

/// The attribute (boolean `true`) the agent sets on the CLIENT span of a
/// mirrored copy of a request (VirtualService `mirror`/`mirrors`): a
/// fire-and-forget shadow whose answer the caller never sees, so no call
/// the service made. Envoy sends shadows through an async client outside
/// the HTTP filter chain (`ShadowWriterImpl`), so Istio's stats filter
/// never counts them as `reporter="source"` requests either. Read by
/// presence on the span (the agent writes it only as `true`), as
/// [`RESEND_COUNT`] is.
pub const MIRROR: &str = "tracemesh.mirror";

/// How a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Anything that is neither of the others (2xx, 3xx, no HTTP status and
    /// status UNSET or OK).
    Success,
    /// An HTTP 4xx answer.
    ClientError,
    /// An HTTP 5xx answer, or status ERROR without a 4xx.
    Error,
}

impl Outcome {
    /// The outcome of a span with OTLP status `status_code` and, when it
    /// has one, HTTP status `http_status` (`http.response.status_code`).
    pub fn of(status_code: i32, http_status: Option<u16>) -> Self {
        match http_status {
            Some(500..) => Self::Error,
            Some(400..=499) => Self::ClientError,
            _ if status_code == STATUS_ERROR => Self::Error,
            _ => Self::Success,
        }
    }

    /// Its label on metrics: `success`, `client_error` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_5xx_and_local_failures_4xx_beside_them() {
        assert_eq!(Outcome::of(0, Some(200)), Outcome::Success);
        assert_eq!(Outcome::of(2, Some(503)), Outcome::Error);
        assert_eq!(
            Outcome::of(0, Some(503)),
            Outcome::Error,
            "5xx without ERROR status"
        );
        assert_eq!(
            Outcome::of(2, Some(429)),
            Outcome::ClientError,
            "a rate-limited answer"
        );
        assert_eq!(
            Outcome::of(2, Some(404)),
            Outcome::ClientError,
            "an OTel client span's 404"
        );
        assert_eq!(Outcome::of(2, None), Outcome::Error, "a timeout or reset");
        assert_eq!(Outcome::of(1, None), Outcome::Success);
    }
}
