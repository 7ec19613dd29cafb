//! Envoy's response flags: the short codes operators already read in access
//! logs, metrics (`response_flags`) and span attributes.

use std::borrow::Cow;
use std::fmt;

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

const NAMES: [(u32, &str); 20] = [
    (1 << 0, "NR"),
    (1 << 1, "UF"),
    (1 << 2, "UH"),
    (1 << 3, "UO"),
    (1 << 4, "UT"),
    (1 << 5, "URX"),
    (1 << 6, "UC"),
    (1 << 7, "DC"),
    (1 << 8, "RL"),
    (1 << 9, "RBAC"),
    (1 << 10, "FI"),
    (1 << 11, "DI"),
    (1 << 12, "NC"),
    (1 << 13, "UR"),
    (1 << 14, "DPE"),
    (1 << 15, "SI"),
    (1 << 16, "UAEX"),
    (1 << 17, "UPE"),
    (1 << 18, "OM"),
    (1 << 19, "DT"),
];

impl ResponseFlags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// No route matched the request.
    pub const NO_ROUTE: Self = Self(1 << 0);
    /// The upstream connection could not be opened.
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 1);
    /// The cluster has no healthy endpoint.
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 2);
    /// A connection-pool or circuit-breaker limit overflowed.
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 3);
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 4);
    /// Retries were exhausted.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self(1 << 5);
    /// The upstream connection closed before the response.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 6);
    /// The client went away before the response was complete.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 7);
    /// Rate limited.
    pub const RATE_LIMITED: Self = Self(1 << 8);
    /// Denied by an AuthorizationPolicy.
    pub const RBAC_DENIED: Self = Self(1 << 9);
    /// Aborted by fault injection.
    pub const FAULT_ABORT: Self = Self(1 << 10);
    /// Delayed by fault injection.
    pub const FAULT_DELAY: Self = Self(1 << 11);
    /// The route's destination names no known cluster.
    pub const NO_CLUSTER_FOUND: Self = Self(1 << 12);
    /// The upstream reset the stream after the response began.
    pub const UPSTREAM_REMOTE_RESET: Self = Self(1 << 13);
    /// The client broke the HTTP protocol (a malformed body, an ambiguous
    /// request).
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 14);
    /// The stream did nothing for `streamIdleTimeout` (Envoy's SI).
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 15);
    /// The external authorizer (a CUSTOM AuthorizationPolicy) denied the
    /// request, or failed and `failOpen` is false (Envoy's UAEX).
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: Self = Self(1 << 16);
    /// The upstream broke the HTTP protocol: a malformed response head, a
    /// transfer coding the agent cannot pass on, a body cut short of its
    /// framing (Envoy's UPE).
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 17);
    /// The agent stopped reading the stream to bound what it holds: one of
    /// more stalled HTTP/2 bodies, their readers taking nothing, than
    /// `spec.overload.maxStalledStreams` allows (Envoy's OM, "overload
    /// manager terminated the request").
    pub const OVERLOAD_MANAGER: Self = Self(1 << 18);
    /// A proxied TCP connection reached its cluster's
    /// `maxConnectionDuration` and was closed (Envoy's DT).
    pub const DURATION_TIMEOUT: Self = Self(1 << 19);

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a flag marks a failure (a fault delay alone does not).
    pub fn is_failure(self) -> bool {
        self.0 & !Self::FAULT_DELAY.0 != 0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags without those of `other`.
    pub const fn except(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// These flags and those of `other`.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Adds the flags of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Envoy's rendering: `-` for none, else codes joined by commas.
    pub fn as_str(self) -> Cow<'static, str> {
        if self.is_empty() {
            return Cow::Borrowed("-");
        }
        let mut names = NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| *n);
        match (names.next(), names.clone().next()) {
            (Some(only), None) => Cow::Borrowed(only),
            (Some(first), Some(_)) => {
                Cow::Owned(names.fold(first.to_owned(), |acc, n| acc + "," + n))
            }
            (None, _) => Cow::Borrowed("-"),
        }
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_envoy() {
        assert_eq!(ResponseFlags::NONE.as_str(), "-");
        assert_eq!(ResponseFlags::NO_ROUTE.as_str(), "NR");
        let both =
            ResponseFlags::UPSTREAM_CONNECT_FAILURE | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        assert_eq!(both.as_str(), "UF,URX");
        assert!(both.contains(ResponseFlags::UPSTREAM_CONNECT_FAILURE));
    }
}
