//! What the ext_authz filter counts, as Envoy's HTTP ext_authz filter does
//! (`http.<stat_prefix>.ext_authz.{ok,denied,error,disabled,failure_mode_allowed}`),
//! served on the admin `/metrics` as
//! `tracemesh_agent_ext_authz_requests_total{provider, result}`; and the
//! bounded log of an authorizer's failures: one WARN line per provider per
//! [`FAILURE_LOG_INTERVAL`], carrying how many failures it stands for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::ExtAuthzError;
use crate::model::live::Registry as ByName;

/// The family's name on `/metrics`.
pub const REQUESTS_FAMILY: &str = "tracemesh_agent_ext_authz_requests_total";

/// Longest an authorizer's failures go unlogged: the first failure is
/// logged at once, later ones at most once per interval per provider.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The agent's ext_authz counters, shared by every compiled config (they
/// live in [`LiveState`](crate::model::live::LiveState), so a reload keeps
/// the counts).
#[derive(Debug)]
pub struct ExtAuthzStats {
    requests: IntCounterVec,
    /// The agent's registered TLS failure counter, once the plane started.
    tls_failures: OnceLock<IntCounterVec>,
    /// Where TLS failures go before that (a compile outside a running agent).
    unregistered_tls: IntCounterVec,
    /// Each provider's failure log, so a reload keeps what went unlogged.
    failure_logs: ByName<FailureLog>,
}

impl Default for ExtAuthzStats {
    fn default() -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|_| unreachable!("valid static metric options"))
        };
        Self {
            requests: vec(
                REQUESTS_FAMILY,
                "Requests the ext_authz filter saw, by provider and Envoy's ext_authz stat (ok, denied, error, disabled, failure_mode_allowed).",
                &["provider", "result"],
            ),
            tls_failures: OnceLock::new(),
            failure_logs: ByName::default(),
            // Never served: a stand-in until `attach` gives the agent's own.
            unregistered_tls: vec("unregistered", "unregistered", &["direction", "reason"]),
        }
    }
}

impl ExtAuthzStats {
    /// Serves the counters from `registry` and sends TLS failures of the
    /// authorizers' connections to `tls_failures` (the agent's
    /// `tracemesh_agent_tls_handshake_failures_total`). Called once, when
    /// the plane starts.
    pub fn attach(
        &self,
        registry: &Registry,
        tls_failures: &IntCounterVec,
    ) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests.clone()))?;
        let _ = self.tls_failures.set(tls_failures.clone());
        Ok(())
    }

    /// The counter TLS failures of an authorizer's connections go to.
    pub fn tls_failures(&self) -> &IntCounterVec {
        self.tls_failures.get().unwrap_or(&self.unregistered_tls)
    }

    /// The counters and failure log of `provider`, every result at zero
    /// from the start (as Envoy's stats are).
    pub fn provider(&self, provider: &str) -> ProviderStats {
        let counter = |result: &str| self.requests.with_label_values(&[provider, result]);
        let failures = self.failure_logs.get_with(provider, FailureLog::default);
        ProviderStats {
            failures,
            ok: counter("ok"),
            denied: counter("denied"),
            error: counter("error"),
            disabled: counter("disabled"),
            failure_mode_allowed: counter("failure_mode_allowed"),
        }
    }
}

/// One provider's counters (handles: counting touches one atomic).
#[derive(Debug, Clone)]
pub struct ProviderStats {
    /// The authorizer allowed.
    pub ok: IntCounter,
    /// The authorizer denied.
    pub denied: IntCounter,
    /// The authorizer failed (unreachable, reset, timed out, answered 5xx
    /// or no check response) — whatever `failOpen` then decided.
    pub error: IntCounter,
    /// The workload has a CUSTOM policy of this provider but none of its
    /// rules matched the request: not checked.
    pub disabled: IntCounter,
    /// The authorizer failed and `failOpen` let the request through
    /// (counted in `error` too, as in Envoy).
    pub failure_mode_allowed: IntCounter,
    /// The provider's bounded failure log, shared across reloads.
    pub failures: Arc<FailureLog>,
}

/// One WARN line per [`FAILURE_LOG_INTERVAL`] for one provider's failures.
#[derive(Debug)]
pub struct FailureLog {
    started: Instant,
    /// Milliseconds after `started` before which nothing is logged.
    quiet_until_ms: AtomicU64,
    /// Failures not logged since the last line.
    unlogged: AtomicU64,
}

impl Default for FailureLog {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            quiet_until_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl FailureLog {
    /// Logs `error` unless a line went out less than an interval ago; the
    /// line says how many failures went unlogged before it.
    pub fn failed(&self, provider: &str, error: &ExtAuthzError, fail_open: bool) {
        let now = self.started.elapsed().as_millis() as u64;
        let quiet_until = self.quiet_until_ms.load(Ordering::Relaxed);
        let next = now + FAILURE_LOG_INTERVAL.as_millis() as u64;
        if now < quiet_until
            || self
                .quiet_until_ms
                .compare_exchange(quiet_until, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            provider,
            %error,
            fail_open,
            unlogged_since_last_line = unlogged,
            quiet_for_s = FAILURE_LOG_INTERVAL.as_secs(),
            "external authorization failed (every failure is counted in {REQUESTS_FAMILY}{{result=\"error\"}})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_starts_with_every_result_at_zero() {
        let stats = ExtAuthzStats::default();
        let p = stats.provider("authz");
        p.error.inc();
        let registry = Registry::new();
        let tls = IntCounterVec::new(Opts::new("t", "t"), &["direction", "reason"]).unwrap();
        stats.attach(&registry, &tls).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for result in ["ok", "denied", "disabled", "failure_mode_allowed"] {
            let line = format!("{REQUESTS_FAMILY}{{provider=\"authz\",result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(&format!(
            "{REQUESTS_FAMILY}{{provider=\"authz\",result=\"error\"}} 1"
        )));
        stats.tls_failures().with_label_values(&["a", "b"]).inc();
        assert_eq!(tls.with_label_values(&["a", "b"]).get(), 1, "attached");
    }

    #[test]
    fn a_reload_keeps_the_failures_not_yet_logged() {
        let stats = ExtAuthzStats::default();
        let error = ExtAuthzError::Transport("refused".into());
        let before = stats.provider("authz");
        for _ in 0..5 {
            before.failures.failed("authz", &error, false);
        }
        // A reload compiles the provider again.
        let after = stats.provider("authz");
        after.failures.failed("authz", &error, false);
        assert_eq!(after.failures.unlogged.load(Ordering::Relaxed), 5);
        let other = stats.provider("other");
        assert_eq!(other.failures.unlogged.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failures_within_an_interval_are_counted_not_logged() {
        let log = FailureLog::default();
        let error = ExtAuthzError::Transport("refused".into());
        for _ in 0..30 {
            log.failed("authz", &error, false);
        }
        assert_eq!(
            log.unlogged.load(Ordering::Relaxed),
            29,
            "one line, 29 held"
        );
    }
}
