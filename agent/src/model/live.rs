//! Live counters that outlive a config snapshot: per-endpoint request counts
//! and outlier state, per-cluster circuit-breaker counters. A reload hands the
//! same objects to the new snapshot (looked up by name), so in-flight counts,
//! ejections and limits carry over. Atomics only on the request path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
// The registry below is locked only while a config compiles, never per
// request: the one lock the agent has (clippy.toml bans the rest).
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use super::clock::now_ms;

/// One endpoint of one cluster, as it is doing now.
#[derive(Debug)]
pub struct EndpointState {
    active: AtomicU64,
    total: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local_origin: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// When it joined its cluster ([`now_ms`]): a config that keeps it
    /// keeps its state, so this is when a config first had it (the time
    /// Envoy's slow start counts from: when the host came in an endpoint
    /// update, as every host of Istio's EDS clusters does).
    joined_ms: u64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self::joined_at(now_ms())
    }
}

/// One in-flight request to an endpoint (decrements the count when dropped).
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one attempt did, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response (connect failure, reset, timeout): a local-origin
    /// error, counted as a gateway error unless
    /// `splitExternalLocalOriginErrors` counts it apart.
    LocalFailure,
}

/// Outlier detection thresholds (DestinationRule `outlierDetection`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Consecutive 5xx before ejection (0 = off).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 and local failures before ejection (0 = off).
    pub consecutive_gateway: u32,
    /// `splitExternalLocalOriginErrors` with `consecutiveLocalOriginFailures`
    /// (Envoy's default 5 when unset): local-origin failures count apart,
    /// towards this many, and no longer towards the 5xx or gateway counts.
    pub consecutive_local_origin: Option<u32>,
    /// How often the ejection multiplier decays.
    pub interval: Duration,
    /// Ejection time per ejection (multiplied by the ejection count).
    pub base_ejection: Duration,
    /// Most endpoints ejected at once, in percent (one is always allowed).
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored.
    pub min_health_percent: u32,
}

/// Longest an ejection lasts, whatever the multiplier (Envoy's default).
const MAX_EJECTION: Duration = Duration::from_secs(300);

impl EndpointState {
    /// A new endpoint's state, as if it joined its cluster at `joined_ms`
    /// ([`now_ms`]).
    pub fn joined_at(joined_ms: u64) -> Self {
        Self {
            active: AtomicU64::default(),
            total: AtomicU64::default(),
            consecutive_5xx: AtomicU32::default(),
            consecutive_gateway: AtomicU32::default(),
            consecutive_local_origin: AtomicU32::default(),
            ejected_until_ms: AtomicU64::default(),
            ejections: AtomicU32::default(),
            joined_ms,
        }
    }

    /// When it joined its cluster ([`now_ms`]).
    pub fn joined_ms(&self) -> u64 {
        self.joined_ms
    }

    /// Requests in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Marks a request started; the guard marks it finished when dropped.
    pub fn start_request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    /// Whether the endpoint is ejected at `now` (milliseconds of [`now_ms`]).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Milliseconds of ejection left at `now`.
    pub fn ejected_for_ms(&self, now: u64) -> u64 {
        self.ejected_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now)
    }

    /// Ends an ejection now (tests: its time up).
    #[cfg(test)]
    pub fn end_ejection(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    /// Times ejected (the current multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts an outcome; returns the threshold the endpoint crossed, when
    /// it should be ejected.
    pub fn observe(&self, outcome: Outcome, settings: &OutlierSettings) -> Option<EjectionReason> {
        // Envoy's split mode: a response is the connection's success
        // (`LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`), a local failure counts
        // only towards its own threshold.
        if let Some(threshold) = settings.consecutive_local_origin {
            if outcome == Outcome::LocalFailure {
                let count = self
                    .consecutive_local_origin
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                return (threshold > 0 && count >= threshold)
                    .then_some(EjectionReason::ConsecutiveLocalOriginFailures);
            }
            self.consecutive_local_origin.store(0, Ordering::Relaxed);
        }
        let (five_xx, gateway) = match outcome {
            Outcome::Status(s) if s < 500 => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                return None;
            }
            Outcome::Status(s) => (true, matches!(s, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        let c5 = if five_xx {
            self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let cg = if gateway {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        if settings.consecutive_5xx > 0 && c5 >= settings.consecutive_5xx {
            Some(EjectionReason::Consecutive5xx)
        } else if settings.consecutive_gateway > 0 && cg >= settings.consecutive_gateway {
            Some(EjectionReason::ConsecutiveGatewayErrors)
        } else {
            None
        }
    }

    /// Ejects the endpoint from `now` for base × ejections (the multiplier
    /// decays by one per healthy interval since the last ejection ended).
    /// Returns the ejection time.
    pub fn eject(&self, now: u64, settings: &OutlierSettings) -> Duration {
        let ended = self.ejected_until_ms.load(Ordering::Relaxed);
        let interval = settings.interval.as_millis().max(1) as u64;
        let healthy_intervals = now.saturating_sub(ended) / interval;
        let previous =
            u64::from(self.ejections.load(Ordering::Relaxed)).saturating_sub(healthy_intervals);
        let times = previous + 1;
        let duration = settings
            .base_ejection
            .saturating_mul(times as u32)
            .min(MAX_EJECTION.max(settings.base_ejection));
        self.ejections.store(times as u32, Ordering::Relaxed);
        self.ejected_until_ms
            .store(now + duration.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local_origin.store(0, Ordering::Relaxed);
        duration
    }
}

/// Why outlier detection ejected an endpoint: the DestinationRule
/// `outlierDetection` threshold it crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// `consecutive5xxErrors`.
    Consecutive5xx,
    /// `consecutiveGatewayErrors`.
    ConsecutiveGatewayErrors,
    /// `consecutiveLocalOriginFailures`.
    ConsecutiveLocalOriginFailures,
}

impl EjectionReason {
    /// The `outlierDetection` field, as the DestinationRule spells it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Consecutive5xx => "consecutive5xxErrors",
            Self::ConsecutiveGatewayErrors => "consecutiveGatewayErrors",
            Self::ConsecutiveLocalOriginFailures => "consecutiveLocalOriginFailures",
        }
    }
}

/// `connectionPool.tcp.maxConnections`: the DestinationRule field a request
/// waits on for a connection, and overflows when the wait ends without one.
pub const MAX_CONNECTIONS: &str = "connectionPool.tcp.maxConnections";
/// `connectionPool.http.http1MaxPendingRequests`: the field a request
/// overflows when too many already wait for a connection.
pub const MAX_PENDING: &str = "connectionPool.http.http1MaxPendingRequests";
/// `connectionPool.http.http2MaxRequests`: the field a request overflows
/// when too many are in flight.
pub const MAX_REQUESTS: &str = "connectionPool.http.http2MaxRequests";

/// Circuit-breaker limits of a cluster (DestinationRule `connectionPool`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    /// Most upstream connections across workers.
    pub max_connections: u64,
    /// Most requests waiting for a connection.
    pub max_pending: u64,
    /// Most requests in flight.
    pub max_requests: u64,
    /// Most retries in flight.
    pub max_retries: u64,
    /// Requests per connection before it closes (0 = unlimited).
    pub max_requests_per_connection: u64,
    /// Most streams one upstream HTTP/2 connection carries at once; past
    /// it, requests go on another connection (`connectionPool.http.
    /// maxConcurrentStreams`, Envoy's `http2_protocol_options.
    /// max_concurrent_streams` of the cluster).
    pub max_concurrent_streams: u64,
    /// Idle time after which a pooled connection closes.
    pub idle_timeout: Duration,
    /// Longest an upstream connection serves from when it was opened
    /// (`connectionPool.tcp.maxConnectionDuration`, Envoy's cluster
    /// `common_http_protocol_options.max_connection_duration` and
    /// `tcp_proxy` `max_downstream_connection_duration`): past it an HTTP
    /// connection is given no new request and closes once its requests
    /// end, and a proxied TCP connection is closed (`DT`). `None`: no limit.
    pub max_connection_duration: Option<Duration>,
    /// Retries in flight as a share of requests in flight
    /// (`trafficPolicy.retryBudget`, Envoy's circuit-breaker
    /// `retry_budget`, which overrides `max_retries`); `None`, as Istio
    /// without the field: `maxRetries` bounds them.
    pub retry_budget: Option<RetryBudget>,
}

/// A cluster's retry budget: retries in flight may be `percent` of the
/// requests in flight, and `min_concurrency` whatever the share (Envoy's
/// `retry_budget`: `budget_percent`, `min_retry_concurrency`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent of requests in flight, 0 to 100 (Istio's default 20).
    pub percent: f64,
    /// Retries always allowed (Istio's default 3).
    pub min_concurrency: u64,
}

impl RetryBudget {
    /// Retries allowed in flight with `active` requests in flight.
    fn allows(self, active: u64) -> u64 {
        ((active as f64 * self.percent / 100.0) as u64).max(self.min_concurrency)
    }
}

/// Istio's default: no limit (2^32 − 1 in its Envoy config).
pub const UNLIMITED: u64 = u32::MAX as u64;

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: UNLIMITED,
            max_pending: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: 0,
            max_concurrent_streams: UNLIMITED,
            idle_timeout: Duration::from_secs(3600),
            max_connection_duration: None,
            retry_budget: None,
        }
    }
}

/// A cluster's live circuit-breaker counters.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Open upstream connections (counted only for clusters that limit
    /// them), dialing ones included; past `maxConnections` by at most one
    /// per pool (endpoint and protocol) and worker
    /// ([`Self::take_connection`]).
    pub connections: AtomicU64,
    /// Pending requests (`http1MaxPendingRequests`): those waiting for a
    /// connection, a slot for one or their own dial (Envoy's pool counts
    /// both).
    pub pending: AtomicU64,
    /// Requests in flight.
    pub requests: AtomicU64,
    /// Retries in flight.
    pub retries: AtomicU64,
    /// Woken when a connection closes or is handed back.
    pub released: tokio::sync::Notify,
}

/// Which counter a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Connections,
    Pending,
    Requests,
    Retries,
}

/// A slot in one of a cluster's counters, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    state: Arc<ClusterState>,
    counter: Counter,
    /// A connection slot's place in its pool's count as well
    /// ([`ClusterState::take_connection`]).
    pool: Option<Arc<AtomicU64>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state
            .counter(self.counter)
            .fetch_sub(1, Ordering::AcqRel);
        // (its pool's last connection lets that pool's waiters open one:
        // all are told, as one told may be another pool's)
        let last =
            (self.pool.as_ref()).is_some_and(|pool| pool.fetch_sub(1, Ordering::AcqRel) == 1);
        if last {
            self.state.released.notify_waiters();
        } else if self.counter == Counter::Connections {
            self.state.released.notify_one();
        }
    }
}

impl ClusterState {
    fn counter(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Connections => &self.connections,
            Counter::Pending => &self.pending,
            Counter::Requests => &self.requests,
            Counter::Retries => &self.retries,
        }
    }

    fn take(self: &Arc<Self>, counter: Counter, max: u64) -> Option<Slot> {
        let c = self.counter(counter);
        if c.fetch_add(1, Ordering::AcqRel) >= max {
            c.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot {
            state: self.clone(),
            counter,
            pool: None,
        })
    }

    /// A connection slot for a connection of `pool` (the count of one
    /// worker's connections to one endpoint over one protocol, dialing,
    /// lent, idle or upgraded), also
    /// counted there while held: below `max`, or past it when `pool` has
    /// no connection. Envoy's pools do the same ("Even if this circuit
    /// breaker has overflowed, Envoy will ensure that a host selected by
    /// cluster load balancing has at least one connection allocated", its
    /// circuit-breaking overview), so that a pool's pending requests always
    /// have a connection to wait for: the cluster's connections are then
    /// at most `max` plus one per pool and worker. `None` when neither.
    pub fn take_connection(self: &Arc<Self>, max: u64, pool: &Arc<AtomicU64>) -> Option<Slot> {
        let below = self.connections.fetch_add(1, Ordering::AcqRel) < max;
        if !below && pool.load(Ordering::Acquire) > 0 {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        pool.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            state: self.clone(),
            counter: Counter::Connections,
            pool: Some(pool.clone()),
        })
    }

    /// A pending-request slot, if below `max`.
    pub fn take_pending(self: &Arc<Self>, max: u64) -> Option<Slot> {
        self.take(Counter::Pending, max)
    }

    /// A request slot, if below `max`.
    pub fn take_request(self: &Arc<Self>, max: u64) -> Option<Slot> {
        self.take(Counter::Requests, max)
    }

    /// A retry slot, if inside `budget` when there is one, else below `max`
    /// (`maxRetries`): a budget overrides the retry circuit breaker, as
    /// Envoy's `retry_budget` does.
    pub fn take_retry(self: &Arc<Self>, max: u64, budget: Option<RetryBudget>) -> Option<Slot> {
        let limit = match budget {
            Some(budget) => budget.allows(self.requests.load(Ordering::Relaxed)),
            None => max,
        };
        self.take(Counter::Retries, limit)
    }
}

/// Live state by name, shared by every snapshot that names the same thing.
/// Locked only while compiling a config, never per request.
#[derive(Debug, Default)]
pub struct LiveState {
    /// The workload's certificate, filled when the agent starts and kept
    /// current by rotation: what mesh mTLS dials with, here so a compiled
    /// config's own clients (the ext_authz provider's) dial with it too.
    workload_tls: Arc<arc_swap::ArcSwapOption<crate::tls::TlsMaterial>>,
    /// The trust domains of the config in force, which the certificate's
    /// inbound mTLS accepts clients of: put in force with the config.
    peer_trust_domains: crate::tls::verify::PeerTrustDomains,
    /// The ext_authz counters, so a reload keeps the counts.
    ext_authz: Arc<crate::ext_authz::stats::ExtAuthzStats>,
    endpoints: Registry<EndpointState>,
    clusters: Registry<ClusterState>,
    rate_limiters: Registry<crate::model::rate_limit::RateLimiter>,
    jwks: Registry<crate::model::jwks::JwksStore>,
    originations: Registry<super::cluster::Origination>,
    round_robin_turns: Registry<std::sync::atomic::AtomicUsize>,
    weighted_schedules: Registry<super::balancer::WeightedSchedule>,
    dns: super::dns::DnsAnswers,
}

impl LiveState {
    /// The workload certificate's slot (empty until the agent starts, and
    /// without `spec.identity`).
    pub fn workload_tls(&self) -> Arc<arc_swap::ArcSwapOption<crate::tls::TlsMaterial>> {
        self.workload_tls.clone()
    }

    /// The trust domains a sidecar's inbound mTLS accepts clients of, as
    /// the config in force says ([`crate::proxy::Shared::install`] and the
    /// agent's start put them in force).
    pub fn peer_trust_domains(&self) -> &crate::tls::verify::PeerTrustDomains {
        &self.peer_trust_domains
    }

    /// What the names of `resolution: DNS` endpoints resolved to.
    pub fn dns(&self) -> &super::dns::DnsAnswers {
        &self.dns
    }

    /// The ext_authz counters every compiled provider client counts in.
    pub fn ext_authz(&self) -> &Arc<crate::ext_authz::stats::ExtAuthzStats> {
        &self.ext_authz
    }

    /// The TLS origination a live config holds under `key` (a digest of
    /// its settings and file contents), else one from `build`: unchanged
    /// by a reload, its connections pooled by config stay in use.
    ///
    /// # Errors
    /// `build`'s, when it runs and fails.
    pub fn origination(
        &self,
        key: &str,
        build: impl FnOnce() -> Result<super::cluster::Origination, String>,
    ) -> Result<Arc<super::cluster::Origination>, String> {
        self.originations.try_get_with(key, build)
    }

    /// The state of endpoint `address` in cluster `cluster`.
    pub fn endpoint(&self, cluster: &str, address: &str) -> Arc<EndpointState> {
        self.endpoints
            .get_with(&format!("{cluster}|{address}"), EndpointState::default)
    }

    /// The round-robin turn of cluster `name`.
    pub fn round_robin_turn(&self, name: &str) -> Arc<std::sync::atomic::AtomicUsize> {
        self.round_robin_turns.get_with(name, Default::default)
    }

    /// The weighted schedule known as `key` (a cluster, its endpoints and
    /// weights), built by `make` the first time.
    pub fn weighted_schedule(
        &self,
        key: &str,
        make: impl FnOnce() -> super::balancer::WeightedSchedule,
    ) -> Arc<super::balancer::WeightedSchedule> {
        self.weighted_schedules.get_with(key, make)
    }

    /// The counters of cluster `name`.
    pub fn cluster(&self, name: &str) -> Arc<ClusterState> {
        self.clusters.get_with(name, ClusterState::default)
    }

    /// The limiter known as `key` (a rule and its settings), built by
    /// `make` the first time, so an unchanged rule keeps its buckets.
    pub fn rate_limiter(
        &self,
        key: &str,
        make: impl FnOnce() -> crate::model::rate_limit::RateLimiter,
    ) -> Arc<crate::model::rate_limit::RateLimiter> {
        self.rate_limiters.get_with(key, make)
    }

    /// The key store of `jwksUri` `uri` fetched within `timeout`: a reload
    /// that keeps both keeps the keys fetched.
    pub fn jwks(
        &self,
        uri: &str,
        timeout: std::time::Duration,
    ) -> Arc<crate::model::jwks::JwksStore> {
        let key = format!("{}ns {uri}", timeout.as_nanos());
        self.jwks
            .get_with(&key, || crate::model::jwks::JwksStore::remote(uri, timeout))
    }
}

/// State shared by name across reloads: what a new config asks for by
/// name is what the running one holds, until no config holds it. Locked
/// only when a config is compiled, never on the request path.
#[allow(clippy::disallowed_types)]
#[derive(Debug)]
pub(crate) struct Registry<T>(Mutex<HashMap<String, Weak<T>>>);

#[allow(clippy::disallowed_types)]
impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Registry<T> {
    /// The item of `key` a live config holds, else a new one from `make`.
    pub(crate) fn get_with(&self, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
        match self.try_get_with(key, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(item) => item,
            Err(never) => match never {},
        }
    }

    /// As [`Self::get_with`], where making one may fail (then nothing is
    /// kept).
    pub(crate) fn try_get_with<E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(item) = map.get(key).and_then(Weak::upgrade) {
            return Ok(item);
        }
        map.retain(|_, weak| weak.strong_count() > 0);
        let item = Arc::new(make()?);
        map.insert(key.to_owned(), Arc::downgrade(&item));
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            consecutive_local_origin: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(2),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_errors_trip_and_successes_reset() {
        let state = EndpointState::default();
        let s = settings();
        assert_eq!(state.observe(Outcome::Status(500), &s), None);
        assert_eq!(state.observe(Outcome::Status(200), &s), None);
        assert_eq!(state.observe(Outcome::Status(500), &s), None);
        assert_eq!(state.observe(Outcome::LocalFailure, &s), None);
        assert_eq!(
            state.observe(Outcome::Status(503), &s),
            Some(EjectionReason::Consecutive5xx)
        );
    }

    /// Split: local failures count towards their own threshold only, and
    /// a response (any status) resets it; 5xx responses count as before.
    #[test]
    fn split_local_failures_count_apart() {
        let state = EndpointState::default();
        let s = OutlierSettings {
            consecutive_local_origin: Some(3),
            ..settings()
        };
        for _ in 0..2 {
            assert_eq!(state.observe(Outcome::LocalFailure, &s), None);
        }
        assert_eq!(state.observe(Outcome::Status(500), &s), None);
        for _ in 0..2 {
            assert_eq!(state.observe(Outcome::LocalFailure, &s), None);
        }
        assert_eq!(
            state.observe(Outcome::LocalFailure, &s),
            Some(EjectionReason::ConsecutiveLocalOriginFailures)
        );
        // The 500 above and two more: the 5xx threshold (3), untouched by
        // the local failures in between.
        assert_eq!(state.observe(Outcome::Status(500), &s), None);
        assert_eq!(
            state.observe(Outcome::Status(502), &s),
            Some(EjectionReason::Consecutive5xx)
        );
    }

    #[test]
    fn ejection_time_grows_and_decays() {
        let state = EndpointState::default();
        let s = settings();
        assert_eq!(state.eject(1000, &s), Duration::from_secs(2));
        assert!(state.is_ejected(2999) && !state.is_ejected(3000));
        assert_eq!(
            state.eject(3000, &s),
            Duration::from_secs(4),
            "ejected again at once: twice as long"
        );
        // 10 healthy intervals after the second ejection ended, the multiplier is back to one.
        assert_eq!(state.eject(7000 + 10_000, &s), Duration::from_secs(2));
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let state = Arc::new(ClusterState::default());
        let a = state.take_request(2).unwrap();
        let _b = state.take_request(2).unwrap();
        assert!(state.take_request(2).is_none());
        drop(a);
        assert!(state.take_request(2).is_some());
    }

    #[test]
    fn a_pool_with_no_connection_takes_one_past_the_limit() {
        let state = Arc::new(ClusterState::default());
        let (a, b) = (Arc::default(), Arc::default());
        let first = state.take_connection(1, &a).expect("below the limit");
        assert!(state.take_connection(1, &a).is_none(), "a holds one");
        let past = state.take_connection(1, &b).expect("b holds none");
        assert!(state.take_connection(1, &b).is_none(), "b holds one now");
        assert_eq!(state.connections.load(Ordering::Relaxed), 2);
        assert_eq!(
            (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)),
            (1, 1)
        );
        drop(first);
        assert_eq!(a.load(Ordering::Relaxed), 0);
        // Still at the limit with b's: a may open one past it again.
        let again = state.take_connection(1, &a).expect("a holds none");
        drop((past, again));
        assert_eq!(state.connections.load(Ordering::Relaxed), 0);
        assert_eq!(
            (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)),
            (0, 0)
        );
    }

    #[test]
    fn retries_respect_the_budget_when_there_is_one() {
        let state = Arc::new(ClusterState::default());
        let budget = Some(RetryBudget {
            percent: 20.0,
            min_concurrency: 3,
        });
        let held: Vec<Slot> = (0..4)
            .filter_map(|_| state.take_retry(UNLIMITED, budget))
            .collect();
        assert_eq!(held.len(), 3, "three retries are always allowed");
        // 20 requests in flight: 20% of them is 4.
        let requests: Vec<Slot> = (0..20)
            .filter_map(|_| state.take_request(UNLIMITED))
            .collect();
        assert_eq!(requests.len(), 20);
        let fourth = state.take_retry(UNLIMITED, budget);
        assert!(fourth.is_some());
        assert!(state.take_retry(UNLIMITED, budget).is_none());
        // Without one (Istio's default), only maxRetries bounds them.
        let unbudgeted: Vec<Slot> = (0..100)
            .filter_map(|_| state.take_retry(UNLIMITED, None))
            .collect();
        assert_eq!(unbudgeted.len(), 100);
        assert!(state.take_retry(104, None).is_none(), "maxRetries");
        // A budget overrides maxRetries, as Envoy's does.
        let fresh = Arc::new(ClusterState::default());
        let past_max: Vec<Slot> = (0..3).filter_map(|_| fresh.take_retry(1, budget)).collect();
        assert_eq!(past_max.len(), 3);
    }
}
