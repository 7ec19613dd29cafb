//! Load balancing: which endpoint of a cluster takes a request. The state is
//! atomics only, shared by all workers, so picking never locks.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::HeaderMap;

use super::endpoint::Endpoint;
use super::live::LiveState;

/// What a request offers to hash on.
#[derive(Debug, Clone, Copy)]
pub struct PickInput<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The caller's address: for `useSourceIp`, the downstream remote
    /// address as Envoy takes it (a sidecar's from `x-forwarded-for`).
    pub source_ip: IpAddr,
    /// The value of the hash policy's cookie made for this request, which
    /// came without it ([`Balancer::cookie_to_set`]).
    pub generated_cookie: Option<&'a str>,
}

/// The key a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(HashCookie),
    /// A query parameter's value.
    QueryParameter(String),
    /// The caller's IP.
    SourceIp,
}

/// The cookie a hash policy reads (`consistentHash.httpCookie`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCookie {
    /// The cookie's name.
    pub name: String,
    /// With a `ttl`, a request without the cookie gets one made, and its
    /// response a `Set-Cookie` for it: what follows the value there
    /// (`; Max-Age=<ttl in s>` unless 0, `; Path=<path>`, the attributes,
    /// `; HttpOnly`, as Envoy's `makeSetCookieValue` writes them). `None`:
    /// never made.
    pub set_attributes: Option<String>,
}

impl HashCookie {
    /// The cookie of `name`, made with `ttl` (none: never made), `path`
    /// (none or empty: no `Path`) and `attributes` (name, value; an empty
    /// value is the name alone), as Istio renders them into Envoy's hash
    /// policy.
    pub fn new(
        name: String,
        ttl: Option<std::time::Duration>,
        path: Option<&str>,
        attributes: &[(String, Option<String>)],
    ) -> Self {
        let set_attributes = ttl.map(|ttl| {
            let mut text = String::new();
            if ttl.as_secs() > 0 {
                text.push_str(&format!("; Max-Age={}", ttl.as_secs()));
            }
            if let Some(path) = path.filter(|p| !p.is_empty()) {
                text.push_str(&format!("; Path={path}"));
            }
            for (name, value) in attributes {
                match value.as_deref().filter(|v| !v.is_empty()) {
                    Some(value) => text.push_str(&format!("; {name}={value}")),
                    None => text.push_str(&format!("; {name}")),
                }
            }
            text.push_str("; HttpOnly");
            text
        });
        Self {
            name,
            set_attributes,
        }
    }
}

/// A cookie a hash policy made for a request that came without it: its
/// value, for the pick, and the `Set-Cookie` line for the response.
#[derive(Debug)]
pub struct CookieToSet {
    /// 16 hex digits.
    pub value: String,
    /// `name="value"` and the policy's attributes.
    pub header: http::HeaderValue,
}

/// A load-balancing policy with its state.
#[derive(Debug)]
pub enum Balancer {
    /// Each endpoint in turn (the turn kept across reloads of the
    /// cluster, as Envoy keeps a cluster's balancer while its hosts stay).
    RoundRobin(Arc<AtomicUsize>),
    /// The less busy of two random endpoints (Envoy's default and Istio's).
    LeastRequest,
    /// ROUND_ROBIN or LEAST_REQUEST over endpoints of unequal weights
    /// (ServiceEntry `endpoints[].weight`, WorkloadEntry `weight`): Envoy's
    /// earliest-deadline-first schedule, which it uses for both then.
    Weighted(Arc<WeightedSchedule>),
    /// Uniformly random.
    Random,
    /// Maglev consistent hashing: a key keeps reaching the same endpoint, and
    /// few keys move when endpoints change.
    ConsistentHash {
        /// What to hash.
        key: HashKey,
        /// The Maglev lookup table (endpoint indexes).
        table: Arc<[u32]>,
    },
}

/// Envoy's EDF scheduler (`EdfScheduler`, `EdfLoadBalancerBase`) over
/// weighted endpoints: each endpoint has a deadline, the earliest takes
/// the request (ties to the first endpoint), and its deadline moves on by
/// the inverse of its weight — for LEAST_REQUEST by `(active + 1) /
/// weight`, Envoy's `weight / (active + 1)^active_request_bias` with the
/// bias at its default of 1. Over a cycle each endpoint takes its weight's
/// share (3:1 → three requests of four), in the order Envoy's schedule
/// interleaves them. Deadlines are fixed-point atomics, one per endpoint of
/// the cluster as compiled (Envoy too starts a new schedule when a
/// cluster's hosts change); two workers may pick the same endpoint at
/// once, each moving its deadline on: no lock.
#[derive(Debug)]
pub struct WeightedSchedule {
    deadlines: Box<[AtomicU64]>,
    /// The deadline step of each endpoint at weight 1: `STEP / weight`.
    steps: Box<[u64]>,
    least_request: bool,
    /// Slow start: a step is divided by the endpoint's factor while it
    /// warms up, as Envoy adds a host back to its schedule under the
    /// weight it has at that moment.
    slow_start: Option<SlowStart>,
    /// The schedule's time: the deadline of the last pick. An endpoint
    /// left behind it (while ejected) counts from it when it is back, as
    /// Envoy rebuilds its schedule when the healthy hosts change, instead
    /// of taking every request until it has caught up.
    now: AtomicU64,
}

/// A deadline step at weight 1 (weights are at most `u32::MAX`, so every
/// step is at least 1).
const STEP: u64 = 1 << 32;

/// Where deadlines are moved back by half, so they never wrap.
const RENORMALIZE_AT: u64 = 1 << 62;

/// Slow start (DestinationRule `loadBalancer.warmup`, else
/// `warmupDurationSecs`; Envoy's `slow_start_config`, which Istio renders
/// for ROUND_ROBIN and LEAST_REQUEST): an endpoint that joined its cluster
/// less than `window_ms` ago counts with its weight times
/// `max(min_weight, (age / window)^(1 / aggression))`, its age at least
/// 1ms, so its share of requests grows over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// The window, in milliseconds (`warmup.duration`).
    pub window_ms: u64,
    /// The ramp's curve, above 0; 1 is linear (`warmup.aggression`,
    /// Envoy's default 1).
    pub aggression: f64,
    /// The least share of its weight a warming endpoint has, 0–1
    /// (`warmup.minimumPercent` / 100, Envoy's default 10%).
    pub min_weight: f64,
}

impl SlowStart {
    /// The share of its weight an endpoint that joined at `joined_ms`
    /// has at `now_ms` (milliseconds of [`super::clock::now_ms`]); `None`
    /// once its window is over.
    pub fn factor(&self, joined_ms: u64, now_ms: u64) -> Option<f64> {
        let age = now_ms.saturating_sub(joined_ms);
        if age >= self.window_ms {
            return None;
        }
        let time = age.max(1) as f64 / self.window_ms as f64;
        let ramp = if self.aggression == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        // Never 0: a step divided by it must stay finite.
        Some(ramp.max(self.min_weight).max(1e-6))
    }
}

impl WeightedSchedule {
    /// A schedule over `endpoints` of these weights (0 is taken as 1),
    /// every deadline one step from now (a warming endpoint's step under
    /// its factor now), as Envoy adds hosts to its scheduler.
    fn new(
        weights: &[u32],
        least_request: bool,
        slow_start: Option<SlowStart>,
        endpoints: &[Arc<Endpoint>],
    ) -> Self {
        let steps: Box<[u64]> = weights
            .iter()
            .map(|w| STEP / u64::from((*w).max(1)))
            .collect();
        let now = super::clock::now_ms();
        let first = |i: usize| match slow_start {
            Some(slow) => warming_step(steps[i], slow, &endpoints[i], now),
            None => steps[i],
        };
        Self {
            deadlines: (0..steps.len()).map(|i| AtomicU64::new(first(i))).collect(),
            steps,
            least_request,
            slow_start,
            now: AtomicU64::new(0),
        }
    }

    /// The endpoint `allowed` takes with the earliest deadline, its
    /// deadline moved on.
    fn pick(&self, endpoints: &[Arc<Endpoint>], allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let i = self.earliest(allowed)?;
        self.advance(i, endpoints);
        Some(i)
    }

    /// The endpoint `allowed` takes with the earliest deadline (one left
    /// behind the schedule's time counting from it).
    fn earliest(&self, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let now = self.now.load(Ordering::Relaxed);
        (self.deadlines.iter().enumerate())
            .filter(|(i, _)| allowed(*i))
            .min_by_key(|(_, d)| d.load(Ordering::Relaxed).max(now))
            .map(|(i, _)| i)
    }

    /// Moves endpoint `i`'s deadline on by its step (times its active
    /// requests plus one, for LEAST_REQUEST). Deadlines far along (2^62,
    /// years of requests) are all moved back together, so none wraps.
    fn advance(&self, i: usize, endpoints: &[Arc<Endpoint>]) {
        let load = if self.least_request {
            endpoints[i].state.active() + 1
        } else {
            1
        };
        let mut step = self.steps[i].saturating_mul(load);
        if let Some(slow) = self.slow_start {
            step = warming_step(step, slow, &endpoints[i], super::clock::now_ms());
        }
        let now = self.now.load(Ordering::Relaxed);
        let moved = |d: u64| Some(d.max(now).saturating_add(step));
        let before = (self.deadlines[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, moved))
            .unwrap_or_else(|d| d);
        self.now.fetch_max(before.max(now), Ordering::Relaxed);
        if before.max(now).saturating_add(step) >= RENORMALIZE_AT {
            let back = |v: u64| Some(v.saturating_sub(RENORMALIZE_AT / 2));
            for d in self.deadlines.iter().chain(std::iter::once(&self.now)) {
                let _ = d.fetch_update(Ordering::Relaxed, Ordering::Relaxed, back);
            }
        }
    }
}

/// `step` divided by `endpoint`'s slow-start factor at `now_ms`, if it is
/// still warming up.
fn warming_step(step: u64, slow: SlowStart, endpoint: &Endpoint, now_ms: u64) -> u64 {
    match slow.factor(endpoint.state.joined_ms(), now_ms) {
        // Saturating: f64 to u64 casts clamp.
        Some(factor) => (step as f64 / factor) as u64,
        None => step,
    }
}

impl Balancer {
    /// Builds a consistent-hash balancer over `endpoints`.
    pub fn consistent_hash(key: HashKey, endpoints: &[Arc<Endpoint>], table_size: usize) -> Self {
        let hosts: Vec<(String, u32)> = (endpoints.iter())
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        Self::ConsistentHash {
            key,
            table: maglev_table(&hosts, table_size).into(),
        }
    }

    /// ROUND_ROBIN (`least_request` false) or LEAST_REQUEST over
    /// `endpoints` of the cluster `cluster`: Envoy's plain policy when
    /// their weights are equal and none of them is warming up under
    /// `slow_start`, its weighted schedule ([`WeightedSchedule`]) when not
    /// (kept once the warm-up is over, until the cluster is built again).
    /// The turn and the schedule are `live`'s, kept across reloads while
    /// the cluster's endpoints and weights stay, as Envoy keeps a
    /// cluster's balancer.
    pub fn by_turns(
        endpoints: &[Arc<Endpoint>],
        least_request: bool,
        live: &LiveState,
        cluster: &str,
        slow_start: Option<SlowStart>,
    ) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let now = super::clock::now_ms();
        let warming = slow_start.filter(|slow| {
            (endpoints.iter()).any(|e| slow.factor(e.state.joined_ms(), now).is_some())
        });
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        match (equal && warming.is_none(), least_request) {
            (true, false) => Self::RoundRobin(live.round_robin_turn(cluster)),
            (true, true) => Self::LeastRequest,
            (false, _) => {
                let mut key = format!("{cluster}|{least_request}|{warming:?}");
                for e in endpoints {
                    key.push_str(&format!("|{}={}", e.address_text, e.weight));
                }
                let make = || WeightedSchedule::new(&weights, least_request, warming, endpoints);
                Self::Weighted(live.weighted_schedule(&key, make))
            }
        }
    }

    /// Istio's name of the policy.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin(_) => "ROUND_ROBIN",
            Self::LeastRequest => "LEAST_REQUEST",
            Self::Weighted(schedule) if schedule.least_request => "LEAST_REQUEST",
            Self::Weighted(_) => "ROUND_ROBIN",
            Self::Random => "RANDOM",
            Self::ConsistentHash { .. } => "CONSISTENT_HASH",
        }
    }

    /// The policy's first choice for a request, as [`Self::pick`], except
    /// that a weighted schedule's choice keeps its turn until
    /// [`Self::taken`] says it was taken: an endpoint passed over because
    /// it is ejected keeps its place, as Envoy's schedule leaves an ejected
    /// host out rather than spending its turns.
    pub fn first_choice(&self, endpoints: &[Arc<Endpoint>], input: PickInput<'_>) -> Option<usize> {
        match self {
            Self::Weighted(schedule) if !endpoints.is_empty() => schedule.earliest(|_| true),
            _ => self.pick(endpoints, input),
        }
    }

    /// The first choice `i` was taken, or passed over as a host a retry
    /// already tried (Envoy's previous-hosts re-picks spend its turn): a
    /// weighted schedule moves its turn on.
    pub fn taken(&self, i: usize, endpoints: &[Arc<Endpoint>]) {
        if let Self::Weighted(schedule) = self {
            schedule.advance(i, endpoints);
        }
    }

    /// Picks an index into `endpoints`, or `None` when there are none.
    pub fn pick(&self, endpoints: &[Arc<Endpoint>], input: PickInput<'_>) -> Option<usize> {
        let n = endpoints.len();
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        Some(match self {
            Self::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % n,
            Self::Weighted(schedule) => schedule.pick(endpoints, |_| true)?,
            Self::Random => fastrand::usize(..n),
            Self::LeastRequest => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                if endpoints[b].state.active() < endpoints[a].state.active() {
                    b
                } else {
                    a
                }
            }
            Self::ConsistentHash { key, table } => {
                table[(key_or_random(key, input) % table.len() as u64) as usize] as usize
            }
        })
    }
}

impl Balancer {
    /// Whether a retry stays on the endpoint the key picked: Istio renders
    /// no `previous_hosts` retry predicate for a cluster with a hash
    /// policy (`route/retry/retry.go`, `newRetryPolicy`; unless the rule
    /// sets `retryIgnorePreviousHosts`), so Envoy sends a retry to the
    /// key's endpoint again.
    pub fn keeps_retries(&self) -> bool {
        matches!(self, Self::ConsistentHash { .. })
    }

    /// The cookie to make for a request that came without the policy's
    /// cookie, when the policy has a `ttl`: as Envoy's router makes it
    /// (`addDownstreamSetCookie`), a hash of the downstream connection's
    /// two addresses in hex, so the requests of one connection get the
    /// same; the response then sets it (`Set-Cookie`), and the client's
    /// next requests carry it to the same endpoint. `None` for any other
    /// policy, or when the request carries the cookie.
    pub fn cookie_to_set(
        &self,
        headers: &HeaderMap,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> Option<CookieToSet> {
        let Self::ConsistentHash {
            key: HashKey::Cookie(cookie),
            ..
        } = self
        else {
            return None;
        };
        let attributes = cookie.set_attributes.as_deref()?;
        if cookie_value(headers, &cookie.name).is_some() {
            return None;
        }
        let mut hasher = DefaultHasher::new();
        (peer, local).hash(&mut hasher);
        let value = format!("{:016x}", hasher.finish());
        let header = format!("{}=\"{value}\"{attributes}", cookie.name);
        let header = http::HeaderValue::try_from(header).ok()?;
        Some(CookieToSet { value, header })
    }

    /// Whether the policy hashes the caller's address (`useSourceIp`).
    pub fn hashes_source_ip(&self) -> bool {
        matches!(
            self,
            Self::ConsistentHash {
                key: HashKey::SourceIp,
                ..
            }
        )
    }

    /// Picks an index into `endpoints` among those `allowed` takes, as
    /// Envoy's balancers pick among the healthy hosts only (an ejected
    /// host leaves the set) and re-pick for a retry that must not go to a
    /// host it tried: the policy applied to what is left, so each endpoint
    /// left takes an equal part of what the others would have taken (round
    /// robin takes the next turns until one is allowed; random and least
    /// request draw among those allowed). A hash policy walks its lookup table
    /// on from the key's place to the next endpoint allowed: Maglev's
    /// table interleaves the endpoints, so an ejected endpoint's keys
    /// spread over the others, and each key still lands in one place.
    /// `None` when `allowed` takes none. O(endpoints): for the rare pick
    /// whose first choice [`Self::pick`] may not take.
    pub fn pick_among(
        &self,
        endpoints: &[Arc<Endpoint>],
        input: PickInput<'_>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let left = (0..endpoints.len()).filter(|i| allowed(*i)).count();
        let nth = |k: usize| (0..endpoints.len()).filter(|i| allowed(*i)).nth(k);
        if left <= 1 {
            return nth(0);
        }
        match self {
            // The turns go on past the endpoints not allowed: round robin
            // over those left, as Envoy's over its healthy hosts.
            // (Other workers take turns meanwhile, so n turns of this one
            // may all fall on endpoints not allowed: then the next allowed
            // after the last turn, never `None` while one is left.)
            Self::RoundRobin(next) => {
                let n = endpoints.len();
                let mut turn = 0;
                for _ in 0..n {
                    turn = next.fetch_add(1, Ordering::Relaxed) % n;
                    if allowed(turn) {
                        return Some(turn);
                    }
                }
                (1..n).map(|k| (turn + k) % n).find(|i| allowed(*i))
            }
            Self::Weighted(schedule) => schedule.pick(endpoints, allowed),
            Self::Random => nth(fastrand::usize(..left)),
            Self::LeastRequest => {
                let a = fastrand::usize(..left);
                let b = (a + 1 + fastrand::usize(..left - 1)) % left;
                let (a, b) = (nth(a)?, nth(b)?);
                Some(
                    if endpoints[b].state.active() < endpoints[a].state.active() {
                        b
                    } else {
                        a
                    },
                )
            }
            Self::ConsistentHash { key, table } => {
                let at = (key_or_random(key, input) % table.len() as u64) as usize;
                (0..table.len())
                    .map(|k| table[(at + k) % table.len()] as usize)
                    .find(|i| allowed(*i))
                    // (a table smaller than the endpoints leaves some out)
                    .or_else(|| nth(fastrand::usize(..left)))
            }
        }
    }
}

/// The request's hash of `key`, or, when the request has no such key, a
/// random number looked up in the table all the same, as Envoy's
/// `ThreadAwareLoadBalancerBase` does (`chooseHost`: `hash ? hash.value() :
/// random_.random()`): a request without the key reaches a random slot,
/// so only the endpoints the table holds (a table smaller than the
/// endpoints leaves some out), in the table's proportions.
fn key_or_random(key: &HashKey, input: PickInput<'_>) -> u64 {
    hash_of(key, input).unwrap_or_else(|| fastrand::u64(..))
}

fn hash_of(key: &HashKey, input: PickInput<'_>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    match key {
        HashKey::Header(name) => input.headers.get(name)?.as_bytes().hash(&mut hasher),
        HashKey::SourceIp => input.source_ip.hash(&mut hasher),
        HashKey::Cookie(cookie) => cookie_value(input.headers, &cookie.name)
            .or(input.generated_cookie)?
            .hash(&mut hasher),
        HashKey::QueryParameter(name) => query_value(input.query?, name)?.hash(&mut hasher),
    }
    Some(hasher.finish())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
        // A quoted value is the text inside the quotes (RFC 6265 §4.1.1),
        // as Envoy's `parseCookieValue` reads it, and as it sets the cookies
        // it makes.
        .map(|v| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        // An empty value is no value, as Envoy's cookie hash takes it: no
        // key (a random pick), or, with a `ttl`, a cookie made.
        .filter(|v| !v.is_empty())
}

/// The raw value of the first `name=` parameter in a query string.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hash_str(seed: u8, s: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    s.hash(&mut hasher);
    hasher.finish()
}

/// Maglev's population of a lookup table of `size` slots (a prime) so that
/// every endpoint owns about `size / n` slots (Eisenbud et al., NSDI 2016).
fn maglev_table(hosts: &[(String, u32)], size: usize) -> Vec<u32> {
    let n = hosts.len();
    let mut table = vec![u32::MAX; size];
    if n == 0 {
        return Vec::new();
    }
    let m = size as u64;
    let perms: Vec<(u64, u64)> = hosts
        .iter()
        .map(|(name, _)| (hash_str(0, name) % m, hash_str(1, name) % (m - 1) + 1))
        .collect();
    // Weights as Envoy's `MaglevTable` takes them: in each round every
    // host whose weight has caught up with its target fills a slot, and
    // its target moves on by the largest weight — the heaviest fills one
    // slot a round, a host of a third of its weight one every third.
    let weights: Vec<u64> = hosts.iter().map(|(_, w)| u64::from((*w).max(1))).collect();
    let max_weight = weights.iter().copied().max().unwrap_or(1);
    let mut targets = vec![0u64; n];
    let mut next = vec![0u64; n];
    let mut filled = 0;
    'fill: for round in 1u64.. {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            if round * weights[i] < targets[i] {
                continue;
            }
            targets[i] += max_weight;
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while table[slot] != u32::MAX {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            table[slot] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

/// Envoy's default Maglev table size.
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65_537;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_spreads_evenly_and_is_stable() {
        let names: Vec<(String, u32)> = (0..5).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
        let table = maglev_table(&names, 65_537);
        let mut counts = [0usize; 5];
        for &slot in &table {
            counts[slot as usize] += 1;
        }
        for count in counts {
            assert!((12_000..14_300).contains(&count), "{counts:?}");
        }
        assert_eq!(table, maglev_table(&names, 65_537));
    }

    /// Endpoints at 127.0.0.1:8001… of these weights.
    fn weighted(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        let live = crate::model::live::LiveState::default();
        (weights.iter().enumerate())
            .map(|(i, w)| {
                let address = super::super::endpoint::UpstreamAddr::Socket(
                    format!("127.0.0.1:{}", 8001 + i).parse().unwrap(),
                );
                let state = live.endpoint("outbound|80||w", &address.to_string());
                let mut endpoint = Endpoint::new(address, Default::default(), state, "default");
                endpoint.weight = *w;
                Arc::new(endpoint)
            })
            .collect()
    }

    /// A request without a hash key, from 10.1.0.1.
    fn input(headers: &HeaderMap) -> PickInput<'_> {
        PickInput {
            headers,
            query: None,
            source_ip: "10.1.0.1".parse().unwrap(),
            generated_cookie: None,
        }
    }

    /// Envoy's EDF schedule for weights 3 and 1: three turns of four for
    /// the first, in each cycle; 5, 2 and 1 likewise over their cycle of 8;
    /// equal weights keep the plain policies.
    #[test]
    fn unequal_weights_take_their_share_of_each_cycle() {
        let headers = HeaderMap::new();
        let input = input(&headers);
        for (weights, cycle) in [(&[3, 1][..], 4), (&[5, 2, 1], 8), (&[1, 4], 5)] {
            let endpoints = weighted(weights);
            for least_request in [false, true] {
                let balancer =
                    Balancer::by_turns(&endpoints, least_request, &LiveState::default(), "w", None);
                assert!(matches!(balancer, Balancer::Weighted(_)));
                for _ in 0..3 {
                    let mut counts = vec![0u32; weights.len()];
                    for _ in 0..cycle {
                        counts[balancer.pick(&endpoints, input).unwrap()] += 1;
                    }
                    assert_eq!(counts, weights, "{least_request}");
                }
            }
        }
        let equal = weighted(&[2, 2]);
        assert!(matches!(
            Balancer::by_turns(&equal, false, &LiveState::default(), "w", None),
            Balancer::RoundRobin(_)
        ));
        assert!(matches!(
            Balancer::by_turns(&equal, true, &LiveState::default(), "w", None),
            Balancer::LeastRequest
        ));
    }

    /// Envoy's slow-start factor: `max(min, (age / window)^(1 /
    /// aggression))`, the age at least 1ms, none once the window is over.
    #[test]
    fn slow_start_ramps_a_weight_up_over_its_window() {
        let linear = SlowStart {
            window_ms: 100_000,
            aggression: 1.0,
            min_weight: 0.1,
        };
        let at = |slow: SlowStart, age_ms: u64| slow.factor(1_000, 1_000 + age_ms);
        assert_eq!(at(linear, 0), Some(0.1));
        assert_eq!(at(linear, 9_000), Some(0.1));
        assert_eq!(at(linear, 50_000), Some(0.5));
        assert_eq!(at(linear, 100_000), None);
        let steep = SlowStart {
            aggression: 2.0,
            min_weight: 0.0,
            ..linear
        };
        let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() < 1e-12;
        assert!(near(at(steep, 25_000), 0.5));
        assert!(near(at(steep, 0), 1e-5f64.sqrt()), "1ms at least");
        // Never 0, so a step stays finite.
        let none = SlowStart {
            min_weight: 0.0,
            window_ms: u64::MAX,
            ..linear
        };
        assert!(at(none, 0).unwrap() > 0.0);
    }

    /// The schedule is the cluster's across reloads while its endpoints
    /// and weights stay (a reload restarting it at the same turn starved
    /// the light endpoint: 200/0 for 9:1 under a reload every 5 requests),
    /// and deadlines far along are moved back together, never wrapping.
    #[test]
    fn a_weighted_schedule_outlives_a_reload_and_never_wraps() {
        let live = LiveState::default();
        let endpoints = weighted(&[9, 1]);
        let headers = HeaderMap::new();
        let mut counts = [0u32; 2];
        // Each reload's balancer built while the last is still in force.
        let mut in_force = Vec::new();
        for _ in 0..40 {
            let balancer = Balancer::by_turns(&endpoints, false, &live, "w", None);
            for _ in 0..5 {
                counts[balancer.pick(&endpoints, input(&headers)).unwrap()] += 1;
            }
            in_force.push(balancer);
        }
        assert_eq!(counts, [180, 20]);
        let Balancer::Weighted(schedule) = Balancer::by_turns(&endpoints, false, &live, "w", None)
        else {
            unreachable!()
        };
        for d in schedule.deadlines.iter() {
            d.store(RENORMALIZE_AT - 1, Ordering::Relaxed);
        }
        schedule.now.store(RENORMALIZE_AT - 1, Ordering::Relaxed);
        schedule.pick(&endpoints, |_| true);
        assert!(
            schedule
                .deadlines
                .iter()
                .all(|d| d.load(Ordering::Relaxed) < RENORMALIZE_AT)
        );
    }

    /// LEAST_REQUEST weighs an endpoint by its weight over its active
    /// requests plus one: the heavy endpoint busy with three requests
    /// takes a quarter of its share.
    #[test]
    fn weighted_least_request_counts_active_requests() {
        let headers = HeaderMap::new();
        let input = input(&headers);
        let endpoints = weighted(&[4, 1]);
        let _busy: Vec<_> = (0..3).map(|_| endpoints[0].state.start_request()).collect();
        let balancer = Balancer::by_turns(&endpoints, true, &LiveState::default(), "w", None);
        let mut counts = [0u32; 2];
        for _ in 0..200 {
            counts[balancer.pick(&endpoints, input).unwrap()] += 1;
        }
        assert!((90..=110).contains(&counts[0]), "{counts:?}");
        // Among those allowed: the other endpoint alone.
        assert_eq!(balancer.pick_among(&endpoints, input, |i| i == 1), Some(1));
    }

    /// A weighted Maglev table gives each endpoint slots in proportion to
    /// its weight, as Envoy's `MaglevTable` fills it.
    #[test]
    fn maglev_slots_follow_weights() {
        let hosts: Vec<(String, u32)> = [3, 1, 2]
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("10.0.0.{i}:80"), *w))
            .collect();
        let table = maglev_table(&hosts, 65_537);
        let mut counts = [0usize; 3];
        for &slot in &table {
            counts[slot as usize] += 1;
        }
        for (count, weight) in counts.iter().zip([3, 1, 2]) {
            let expected = 65_537 * weight / 6;
            assert!(count.abs_diff(expected) < 200, "{counts:?}");
        }
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_leaves() {
        let names: Vec<(String, u32)> = (0..5).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
        let before = maglev_table(&names, 65_537);
        let after = maglev_table(&names[..4], 65_537);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 4 && b != a)
            .count();
        assert!(moved < 65_537 / 10, "{moved} slots moved");
    }

    #[test]
    fn reads_query_and_cookie_values() {
        assert_eq!(query_value("a=1&user=bob&x", "user"), Some("bob"));
        assert_eq!(query_value("x", "x"), Some(""));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; session=xyz".parse().unwrap());
        assert_eq!(cookie_value(&headers, "session"), Some("xyz"));
        headers.insert(http::header::COOKIE, "session=\"xyz\"".parse().unwrap());
        assert_eq!(cookie_value(&headers, "session"), Some("xyz"));
        for empty in ["session=", "session=\"\""] {
            headers.insert(http::header::COOKIE, empty.parse().unwrap());
            assert_eq!(cookie_value(&headers, "session"), None, "{empty}");
        }
    }

    /// A request without the hash key reaches a random slot of the table,
    /// as Envoy hashes a random number instead of the key: with a table of
    /// 3 slots over 5 endpoints, only the 3 the table holds are reached
    /// (all 5 were, picked at random among the endpoints), by `pick` and
    /// by `pick_among` alike.
    #[test]
    fn a_request_without_the_key_reaches_only_the_tables_endpoints() {
        let five = [
            "10.0.0.1:80",
            "10.0.0.2:80",
            "10.0.0.3:80",
            "10.0.0.4:80",
            "10.0.0.5:80",
        ];
        let cluster = crate::model::cluster::testing::cluster(
            "reviews",
            80,
            crate::model::service::Protocol::Http,
            &five,
        );
        let endpoints = &cluster.endpoints;
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let balancer = Balancer::consistent_hash(key, endpoints, 3);
        let Balancer::ConsistentHash { table, .. } = &balancer else {
            unreachable!()
        };
        let in_table: std::collections::BTreeSet<usize> =
            table.iter().map(|&i| i as usize).collect();
        let headers = HeaderMap::new();
        let input = input(&headers);
        let mut reached = std::collections::BTreeSet::new();
        let mut reached_among = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            reached.insert(balancer.pick(endpoints, input).unwrap());
            reached_among.insert(balancer.pick_among(endpoints, input, |_| true).unwrap());
        }
        assert_eq!(reached, in_table);
        assert_eq!(reached_among, in_table);
    }

    /// Round robin among those allowed takes turns until one falls on an
    /// endpoint allowed (alone, n turns reach every endpoint; other workers
    /// taking turns meanwhile is what the fallback after them is for).
    #[test]
    fn round_robin_among_takes_turns_to_one_allowed() {
        let three = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let cluster = crate::model::cluster::testing::cluster(
            "reviews",
            80,
            crate::model::service::Protocol::Http,
            &three,
        );
        let endpoints = &cluster.endpoints;
        let balancer = Balancer::RoundRobin(Arc::new(AtomicUsize::new(0)));
        let headers = HeaderMap::new();
        let input = input(&headers);
        // Only endpoint 2 allowed; the turns are 0, 1, 2, ...: found.
        assert_eq!(balancer.pick_among(endpoints, input, |i| i == 2), Some(2));
        // The next turn, 3, is endpoint 0's.
        assert_eq!(
            balancer.pick_among(endpoints, input, |i| i == 0 || i == 1),
            Some(0)
        );
    }
}
