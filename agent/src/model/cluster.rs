//! Clusters: the endpoints behind one service port (and subset), and how one
//! is picked.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use foldhash::{HashMap, HashSet};

use super::balancer::{Balancer, PickInput};
use super::clock::now_ms;
use super::endpoint::{Endpoint, UpstreamAddr};
use super::live::EndpointState;
use super::live::{ClusterState, OutlierSettings, PoolLimits, UNLIMITED};
use super::peer::PeerInfo;
use super::service::{Protocol, ServiceName};
use crate::by_address::ByAddress;

/// The endpoints of one service port, optionally narrowed to a subset.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy-style name: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// The service, for metric labels and spans.
    pub service: Arc<ServiceName>,
    /// The service port.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The subset, when the cluster is one.
    pub subset: Option<String>,
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// How an endpoint is picked.
    pub balancer: Balancer,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Circuit-breaker limits.
    pub limits: PoolLimits,
    /// How long a proxied TCP connection may pass no byte either way before
    /// both sides are closed (DestinationRule
    /// `connectionPool.tcp.idleTimeout`, Envoy's `tcp_proxy` `idle_timeout`;
    /// zero turns it off); `None` when no rule sets it: the agent's
    /// `spec.downstream.idleTimeout` applies, as Istio's proxy-wide
    /// `IDLE_TIMEOUT` does.
    pub tcp_idle_timeout: Option<Duration>,
    /// Keepalive probing of its upstream connections.
    pub keepalive: Keepalive,
    /// The DestinationRule that sets its traffic policy, as response
    /// details name it (`DestinationRule:<namespace>/<name>`), if one does.
    pub destination_rule: Option<Arc<str>>,
    /// Outlier detection, when configured.
    pub outlier: Option<OutlierSettings>,
    /// Speak HTTP/2 to the upstream even for HTTP ports (h2UpgradePolicy UPGRADE).
    pub h2_upgrade: bool,
    /// Speak to the upstream as the client spoke (useClientProtocol).
    pub use_client_protocol: bool,
    /// Live counters, shared with other snapshots of this cluster.
    pub state: Arc<ClusterState>,
    /// How connections to the endpoints are secured.
    pub tls: UpstreamTls,
    /// The source address upstream connections are bound to (Envoy's
    /// `upstream_bind_config`): the inbound passthrough address when a
    /// captured inbound connection is delivered to the application.
    pub upstream_bind: Option<IpAddr>,
    /// `Some` for Envoy's `ORIGINAL_DST` cluster of a ServiceEntry with
    /// `resolution: NONE` (Istio's `Passthrough` resolution) or of a
    /// DestinationRule `loadBalancer.simple: PASSTHROUGH`: a captured
    /// connection's requests and bytes go to where the connection was
    /// going ([`Cluster::original_destination_endpoint`]), not to
    /// `endpoints`, which serve only traffic that has no original
    /// destination (the explicit listener, a gateway).
    pub original_dst: Option<OriginalDst>,
    /// What its pooled connections are kept apart by, derived from the
    /// fields above on first use ([`Cluster::pooling`]): a cluster is not
    /// changed once shared. `OnceLock::new()` when built.
    pub(crate) pooling: OnceLock<Option<Arc<Pooling>>>,
    /// The `resolution: DNS` names its endpoints are the addresses of
    /// (Envoy's `STRICT_DNS`), resolved or not, one that resolved to no
    /// address included: what the agent's resolver keeps resolving.
    pub dns_names: Arc<[Arc<str>]>,
}

/// How an `ORIGINAL_DST` cluster reaches a connection's original
/// destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDst {
    /// The port to connect to instead of the original destination's: the
    /// ServiceEntry port's `targetPort` (Istio's `PassthroughTargetPorts`,
    /// rendered as Envoy's `original_dst_lb_config.upstream_port_override`).
    pub port_override: Option<u16>,
}

impl OriginalDst {
    /// Where a connection originally sent to `original` goes: its address,
    /// on the overriding port when there is one.
    pub fn upstream(self, original: SocketAddr) -> SocketAddr {
        match self.port_override {
            Some(port) => SocketAddr::new(original.ip(), port),
            None => original,
        }
    }
}

/// What a cluster's pooled upstream connections are opened and kept with,
/// beyond their endpoint and TLS, when any of it differs from the default.
/// Clusters that differ in it share no connection, as each Envoy cluster
/// has its own pools; clusters that set none of it share their endpoints'
/// connections. Equal by value, so a reload that leaves it unchanged keeps
/// the pooled connections in use.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Pooling {
    /// The source address connections are bound to ([`Cluster::upstream_bind`]).
    pub bind: Option<IpAddr>,
    /// The cluster whose circuit breakers count the connections and the
    /// pending requests, when it limits either (`maxConnections`,
    /// `http1MaxPendingRequests`).
    pub counted_by: Option<ByAddress<ClusterState>>,
    /// `maxConcurrentStreams` per HTTP/2 connection.
    pub max_concurrent_streams: u64,
    /// `maxRequestsPerConnection` (0: unlimited).
    pub max_requests_per_connection: u64,
    /// Keepalive probing ([`Cluster::keepalive`]).
    pub keepalive: Keepalive,
    /// `maxConnectionDuration`: a reload that changes it pools anew.
    pub lifetime: Option<Duration>,
}

/// Which pools a config's clusters use: for each endpoint address, the
/// [`Pooling`]s its clusters reach it with (`None`: the default, which
/// clusters that set nothing share). What a reload compares with the last
/// config's, so that the pools it no longer uses (settings changed, set
/// where none were, or an endpoint gone) are let go, as Envoy drains a
/// changed cluster's connection pools, rather than left idle for their
/// idle timeout.
#[derive(Debug, Default)]
pub struct Poolings {
    /// Per pooling a cluster sets, the endpoint addresses reached with it.
    set: HashMap<Arc<Pooling>, HashSet<UpstreamAddr>>,
    /// The endpoint addresses clusters that set none of it reach.
    default: HashSet<UpstreamAddr>,
}

impl Poolings {
    /// The pools `clusters` use.
    pub fn of<'a>(clusters: impl IntoIterator<Item = &'a Arc<Cluster>>) -> Self {
        let mut out = Self::default();
        for cluster in clusters {
            let addresses = cluster.endpoints.iter().map(|e| e.address.clone());
            match cluster.pooling() {
                Some(pooling) => out
                    .set
                    .entry(pooling.clone())
                    .or_default()
                    .extend(addresses),
                None => out.default.extend(addresses),
            }
        }
        out
    }

    /// What a reload from these to `now` retired: the pools these use and
    /// `now` does not. (A pool neither uses is one of a cluster built per
    /// connection, such as a captured connection's original destination:
    /// not the config's to retire.)
    pub fn retired_by(&self, now: &Poolings) -> Poolings {
        let mut set = HashMap::default();
        for (pooling, addresses) in &self.set {
            let kept = now.set.get(pooling);
            let gone: HashSet<UpstreamAddr> = addresses
                .iter()
                .filter(|a| !kept.is_some_and(|k| k.contains(*a)))
                .cloned()
                .collect();
            if !gone.is_empty() {
                set.insert(pooling.clone(), gone);
            }
        }
        let default = self.default.difference(&now.default).cloned().collect();
        Self { set, default }
    }

    /// Whether the pool of `address` with `pooling` (`None`: the default)
    /// is one of these.
    pub fn contains(&self, address: &UpstreamAddr, pooling: Option<&Pooling>) -> bool {
        match pooling {
            Some(pooling) => {
                !self.set.is_empty() && self.set.get(pooling).is_some_and(|a| a.contains(address))
            }
            None => !self.default.is_empty() && self.default.contains(address),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.default.is_empty()
    }

    /// These, with `more` added and those `now` uses taken out: what a
    /// worker's pools keep as retired across reloads (a pool a later
    /// reload uses again is in use again). Default pools stay retired
    /// until the next reload; others while anything holds their pooling
    /// ([`Self::forget_unused`]).
    pub fn retire(&mut self, more: Poolings, now: &Poolings) {
        for (pooling, addresses) in more.set {
            self.set.entry(pooling).or_default().extend(addresses);
        }
        for (pooling, addresses) in &mut self.set {
            if let Some(used) = now.set.get(pooling) {
                addresses.retain(|a| !used.contains(a));
            }
        }
        self.set.retain(|_, addresses| !addresses.is_empty());
        self.default = more.default;
    }

    /// Forgets the poolings nothing else holds any more (no pool key, no
    /// cluster of a config still in use): no connection can carry them
    /// again, so the set stays as small as what is still in flight.
    pub fn forget_unused(&mut self) {
        self.set.retain(|pooling, _| Arc::strong_count(pooling) > 1);
    }
}

impl Pooling {
    /// Nothing set: Istio's defaults.
    const DEFAULT: Self = Self {
        bind: None,
        counted_by: None,
        max_concurrent_streams: UNLIMITED,
        max_requests_per_connection: 0,
        keepalive: Keepalive {
            tcp: None,
            http2: None,
        },
        lifetime: None,
    };
}

/// The server an upstream TLS connection is to: the name sent as SNI, and
/// the SANs one of which its certificate must carry (empty: none checked
/// beyond the client config's own verification). Built once per cluster;
/// equal by value, so clusters and reloads that name the same server share
/// connections to it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TlsServer {
    /// SNI (DestinationRule `tls.sni`, or the host).
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// SANs one of which the server must carry (`tls.subjectAltNames`, or
    /// the service's accounts: the ServiceEntry's `subjectAltNames` and its
    /// endpoints' SPIFFE identities).
    pub expected: Box<[String]>,
}

/// How a cluster's connections are secured (DestinationRule `tls`, or
/// Istio's auto mTLS when the rule says nothing).
#[derive(Debug, Clone)]
pub enum UpstreamTls {
    /// Plaintext.
    Plain,
    /// Mesh mTLS with the workload's own certificate: to every endpoint
    /// (ISTIO_MUTUAL), or only to endpoints labelled as running a sidecar
    /// (auto mTLS).
    Mesh {
        /// Only endpoints labelled `security.istio.io/tlsMode: istio`.
        only_sidecars: bool,
        /// The SNI to send and the SANs the server must carry (none: any
        /// identity of the trust domain); `None` when the SNI is not a
        /// valid server name, and connections fail (`bad_sni`).
        server: Option<Arc<TlsServer>>,
    },
    /// TLS origination (SIMPLE, MUTUAL) with configs built from files.
    Originate(Arc<Origination>),
    /// The rule's TLS files could not be loaded: connections fail (UF).
    Broken(Arc<str>),
}

/// How a cluster's upstream connections are probed while they live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// TCP keepalive on every upstream socket (DestinationRule
    /// `connectionPool.tcp.tcpKeepalive`, Envoy's cluster
    /// `upstream_connection_options.tcp_keepalive`); `None`: off.
    pub tcp: Option<TcpKeepalive>,
    /// HTTP/2 PINGs on upstream HTTP/2 connections (DestinationRule
    /// `connectionPool.http.http2KeepAlive`, Envoy's
    /// `http2_protocol_options.connection_keepalive`); `None`: none.
    pub http2: Option<Http2Keepalive>,
}

/// TCP keepalive of a socket (`SO_KEEPALIVE` on); each field unset leaves
/// the kernel's default (Linux: 9 probes, 7200 s, 75 s), as Envoy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub probes: Option<u32>,
    /// Idle time before the first probe (`TCP_KEEPIDLE`, whole seconds).
    pub time: Option<Duration>,
    /// Time between probes (`TCP_KEEPINTVL`, whole seconds).
    pub interval: Option<Duration>,
}

/// HTTP/2 PING keepalive of a connection: a PING every `interval`, even
/// while no stream is open; the connection closes when one goes
/// unanswered for `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Http2Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// Time a PING's answer may take.
    pub timeout: Duration,
}

/// The client configs of a TLS origination (SIMPLE, MUTUAL), one per ALPN
/// protocol. A reload whose settings and files are unchanged keeps the
/// running config's ([`LiveState::origination`](super::live::LiveState::origination)),
/// so the connections pooled under them stay in use.
#[derive(Debug)]
pub struct Origination {
    /// Client config offering `http/1.1`.
    pub h1: Arc<rustls::ClientConfig>,
    /// Client config offering `h2`.
    pub h2: Arc<rustls::ClientConfig>,
    /// SNI to send (and to verify, unless `subjectAltNames` are given; the
    /// client configs check those, so `expected` is empty): the rule's
    /// `sni`, else the service host, which an HTTP request replaces with
    /// its own authority ([`Self::server_for`]).
    pub server: Arc<TlsServer>,
    /// The SNI follows each HTTP request's authority: DestinationRule
    /// `tls.sni` unset, where Istio sets Envoy's `auto_sni` on the cluster
    /// (and `auto_san_validation` when `subjectAltNames` are unset and
    /// `insecureSkipVerify` is off: the certificate is then checked
    /// against that same name, as the client configs check the SNI).
    pub auto_sni: bool,
}

impl Origination {
    /// The server an HTTP request going upstream with `authority` (its
    /// `Host`, after the route's rewrites) is sent to. With
    /// [`Self::auto_sni`], as Envoy's router sets `auto_sni` from the host
    /// the route rewrites the request to (`getRequestHostValue`): the
    /// authority's host without its port, sent as SNI and verified — an
    /// IP address is no SNI (rustls sends none and checks the address's
    /// SAN, as Envoy checks the SAN override). Otherwise, without an
    /// authority (TCP) or with one that is no server name, [`Self::server`].
    /// The cluster's own server unless the request names another host,
    /// whose server is taken from this thread's [`AUTO_SNI_SERVERS`]: a
    /// request allocates only for a name its thread has not sent lately.
    pub fn server_for(&self, authority: Option<&str>) -> Arc<TlsServer> {
        let host = match authority {
            Some(authority) if self.auto_sni => crate::host::split_host_port(authority).0,
            _ => return self.server.clone(),
        };
        let same = match &self.server.server_name {
            rustls::pki_types::ServerName::DnsName(name) => {
                name.as_ref().eq_ignore_ascii_case(host)
            }
            _ => false,
        };
        if same {
            return self.server.clone();
        }
        let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
            return self.server.clone();
        };
        AUTO_SNI_SERVERS.with_borrow_mut(|(servers, next)| {
            let same = |server: &&Arc<TlsServer>| match (&server.server_name, &name) {
                (
                    rustls::pki_types::ServerName::DnsName(a),
                    rustls::pki_types::ServerName::DnsName(b),
                ) => a.as_ref().eq_ignore_ascii_case(b.as_ref()),
                (a, b) => a == b,
            };
            if let Some(server) = servers.iter().find(same) {
                return server.clone();
            }
            let server = Arc::new(TlsServer {
                server_name: name.to_owned(),
                expected: Box::default(),
            });
            // Past the bound, the oldest name's slot is taken.
            if servers.len() < AUTO_SNI_SERVERS_MAX {
                servers.push(server.clone());
            } else {
                servers[*next] = server.clone();
                *next = (*next + 1) % AUTO_SNI_SERVERS_MAX;
            }
            server
        })
    }
}

/// How many names [`AUTO_SNI_SERVERS`] keeps per thread: bounded whatever
/// hosts requests name.
const AUTO_SNI_SERVERS_MAX: usize = 32;

thread_local! {
    /// The servers of the names auto SNI sent lately on this thread (a
    /// rewritten authority, a wildcard ServiceEntry's hosts, an address),
    /// so that requests under one name share one allocation, and the slot
    /// the next new name takes once full; no lock, each worker keeps its
    /// own.
    static AUTO_SNI_SERVERS: std::cell::RefCell<(Vec<Arc<TlsServer>>, usize)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

impl Cluster {
    /// A cluster of one endpoint, the connection's original destination:
    /// Istio's `PassthroughCluster` outbound (`service` names it), and the
    /// local application on the port a captured inbound connection was
    /// sent to (`bind` the passthrough source, `peer` this workload).
    /// Built per connection; its counters are its own.
    pub fn original_destination(
        name: String,
        service: Arc<ServiceName>,
        address: SocketAddr,
        protocol: Protocol,
        peer: Arc<PeerInfo>,
        bind: Option<IpAddr>,
    ) -> Self {
        let mut endpoint = Endpoint::new(
            UpstreamAddr::Socket(address),
            Default::default(),
            Arc::new(EndpointState::default()),
            &service.namespace,
        );
        endpoint.peer = peer;
        Self {
            name,
            service,
            port: address.port(),
            protocol,
            subset: None,
            endpoints: vec![Arc::new(endpoint)],
            balancer: Balancer::RoundRobin(Default::default()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            limits: PoolLimits::default(),
            tcp_idle_timeout: None,
            keepalive: Keepalive::default(),
            outlier: None,
            h2_upgrade: false,
            use_client_protocol: false,
            state: Arc::new(ClusterState::default()),
            tls: UpstreamTls::Plain,
            upstream_bind: bind,
            destination_rule: None,
            original_dst: None,
            pooling: OnceLock::new(),
            dns_names: Default::default(),
        }
    }

    /// For an `ORIGINAL_DST` cluster ([`Cluster::original_dst`]), the one
    /// endpoint a connection originally sent to `original` has: that
    /// address (on the port's `targetPort` when it has one), labelled as
    /// the service's endpoints are; `None` for any other cluster. Built
    /// for a connection, with counters of its own, as Envoy makes a host
    /// per original destination.
    pub fn original_destination_endpoint(&self, original: SocketAddr) -> Option<Endpoint> {
        let upstream = self.original_dst?.upstream(original);
        Some(Endpoint::new(
            UpstreamAddr::Socket(upstream),
            Default::default(),
            Arc::new(EndpointState::default()),
            &self.service.namespace,
        ))
    }

    /// What its pooled connections are kept apart by ([`Pooling`]), `None`
    /// when it sets none of it; derived once.
    pub fn pooling(&self) -> Option<&Arc<Pooling>> {
        self.pooling
            .get_or_init(|| {
                let limits = &self.limits;
                let pooling = Pooling {
                    bind: self.upstream_bind,
                    counted_by: (limits.max_connections != UNLIMITED
                        || limits.max_pending != UNLIMITED)
                        .then(|| ByAddress(self.state.clone())),
                    max_concurrent_streams: limits.max_concurrent_streams,
                    max_requests_per_connection: limits.max_requests_per_connection,
                    keepalive: self.keepalive,
                    lifetime: limits.max_connection_duration,
                };
                (pooling != Pooling::DEFAULT).then(|| Arc::new(pooling))
            })
            .as_ref()
    }

    /// Picks an endpoint: the balancer's choice unless it is ejected (or is
    /// among `tried`, the endpoints a retry leaves: the caller passes none
    /// where a retry goes to the key's endpoint again,
    /// [`Balancer::keeps_retries`]); then the balancer's choice
    /// among the endpoints left ([`Balancer::pick_among`]), untried ones
    /// first. `None` when every endpoint is ejected — unless fewer than
    /// `minHealthPercent` are healthy, in which case ejections are ignored
    /// (Envoy's panic mode).
    pub fn pick(&self, input: PickInput<'_>, tried: &[usize]) -> Option<usize> {
        let balancer = &self.balancer;
        let mut first = balancer.first_choice(&self.endpoints, input)?;
        let now = now_ms();
        let ejected = |i: usize| self.outlier.is_some() && self.endpoints[i].state.is_ejected(now);
        let fresh = |i: usize| !tried.contains(&i);
        // A weighted schedule's choice a retry already tried is picked
        // again, up to Istio's `host_selection_retry_max_attempts` (5), each
        // pick spending that endpoint's turn, as Envoy's previous-hosts
        // predicate re-picks.
        if matches!(balancer, Balancer::Weighted(_)) {
            for _ in 0..HOST_SELECTION_RETRY_MAX_ATTEMPTS {
                if fresh(first) || ejected(first) {
                    break;
                }
                balancer.taken(first, &self.endpoints);
                first = balancer.first_choice(&self.endpoints, input)?;
            }
        }
        if !ejected(first) && fresh(first) {
            balancer.taken(first, &self.endpoints);
            return Some(first);
        }
        let n = self.endpoints.len();
        let panic = self.outlier.as_ref().is_some_and(|o| {
            let healthy = (0..n).filter(|i| !ejected(*i)).count();
            (healthy as u64) * 100 < u64::from(o.min_health_percent) * n as u64
        });
        // In panic mode Envoy balances over every host, ejected or not: the
        // first choice stands unless a retry already tried it.
        if panic && fresh(first) {
            balancer.taken(first, &self.endpoints);
            return Some(first);
        }
        let usable = |i: usize| panic || !ejected(i);
        (self.balancer)
            .pick_among(&self.endpoints, input, |i| usable(i) && fresh(i))
            .or_else(|| (self.balancer).pick_among(&self.endpoints, input, usable))
    }

    /// Whether to speak HTTP/2 upstream: ports declared HTTP2 or GRPC
    /// always, gRPC requests always (gRPC needs HTTP/2), HTTP ports when
    /// upgraded or told to follow the client, undeclared ports as the client
    /// spoke.
    pub fn speaks_h2(&self, downstream: http::Version, grpc: bool) -> bool {
        let client_h2 = downstream == http::Version::HTTP_2;
        match self.protocol {
            Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Http | Protocol::Tcp | Protocol::Tls => {
                grpc || self.h2_upgrade || (self.use_client_protocol && client_h2)
            }
            Protocol::Auto => grpc || client_h2,
        }
    }

    /// Whether ejecting one more endpoint stays within `maxEjectionPercent`
    /// of the cluster's endpoints, as Envoy's `ejectHost` judges it: under
    /// the default 10%, a cluster of fewer than ten endpoints ejects none
    /// (Envoy's `always_eject_one_host`, which would allow one, is off, and
    /// Istio does not set it).
    pub fn may_eject(&self, settings: &OutlierSettings) -> bool {
        let now = now_ms();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected(now))
            .count() as u64;
        let n = self.endpoints.len() as u64;
        (ejected + 1) * 100 <= u64::from(settings.max_ejection_percent) * n
    }
}

/// Default TCP connect timeout, as Istio's (10s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a pick is made again for a retry whose choice it
/// already tried (Istio renders `host_selection_retry_max_attempts: 5`
/// with the previous-hosts predicate).
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: usize = 5;

/// Clusters for the model's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{Cluster, DEFAULT_CONNECT_TIMEOUT, Keepalive, UpstreamTls};
    use crate::model::balancer::Balancer;
    use crate::model::endpoint::{Endpoint, UpstreamAddr};
    use crate::model::live::{LiveState, PoolLimits};
    use crate::model::service::{Protocol, ServiceName};

    /// The plaintext cluster `outbound|port||host` of `protocol` over
    /// `endpoints` (`ip:port` texts), picked round-robin.
    pub fn cluster(host: &str, port: u16, protocol: Protocol, endpoints: &[&str]) -> Arc<Cluster> {
        let live = LiveState::default();
        let name = format!("outbound|{port}||{host}");
        let endpoints = endpoints
            .iter()
            .map(|a| {
                let address = UpstreamAddr::Socket(a.parse().unwrap());
                let state = live.endpoint(&name, &address.to_string());
                Arc::new(Endpoint::new(address, Default::default(), state, "default"))
            })
            .collect();
        Arc::new(Cluster {
            state: live.cluster(&name),
            name,
            service: Arc::new(ServiceName::new(host, "default")),
            port,
            protocol,
            subset: None,
            endpoints,
            balancer: Balancer::RoundRobin(Default::default()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            limits: PoolLimits::default(),
            tcp_idle_timeout: None,
            keepalive: Keepalive::default(),
            destination_rule: None,
            outlier: None,
            h2_upgrade: false,
            use_client_protocol: false,
            tls: UpstreamTls::Plain,
            upstream_bind: None,
            original_dst: None,
            pooling: Default::default(),
            dns_names: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::HeaderMap;

    use super::testing::cluster;
    use super::*;
    use crate::model::balancer::HashKey;
    use crate::model::clock::now_ms;
    use crate::model::live::OutlierSettings;
    use crate::model::service::Protocol;

    const FOUR: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];

    /// The four-endpoint cluster with `balancer`, its third endpoint
    /// ejected.
    fn one_ejected(balancer: Balancer) -> Cluster {
        let settings = ejecting();
        let mut cluster = plain();
        cluster.endpoints[2].state.eject(now_ms(), &settings);
        cluster.outlier = Some(settings);
        cluster.balancer = balancer;
        cluster
    }

    /// Outlier detection ejecting at the first 5xx, for two minutes.
    fn ejecting() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            consecutive_local_origin: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(120),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    fn plain() -> Cluster {
        Arc::into_inner(cluster("reviews", 80, Protocol::Http, &FOUR)).unwrap()
    }

    fn input(headers: &HeaderMap) -> PickInput<'_> {
        PickInput {
            headers,
            query: None,
            source_ip: "10.1.0.1".parse().unwrap(),
            generated_cookie: None,
        }
    }

    /// Three endpoints of weights 4, 1 and 1, balanced by turns
    /// (`least_request` or not), outlier detection on.
    fn weighted(least_request: bool) -> Cluster {
        let mut cluster = Arc::into_inner(cluster(
            "reviews",
            80,
            Protocol::Http,
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        ))
        .unwrap();
        for (endpoint, weight) in cluster.endpoints.iter_mut().zip([4, 1, 1]) {
            Arc::get_mut(endpoint).unwrap().weight = weight;
        }
        let live = crate::model::live::LiveState::default();
        cluster.balancer = Balancer::by_turns(&cluster.endpoints, least_request, &live, "w", None);
        cluster.outlier = Some(ejecting());
        cluster
    }

    /// The heavy endpoint back from an ejection takes its share again at
    /// once, as Envoy's rebuilt schedule gives it (200, 50, 50 of 300
    /// after 300 picks without it), not every request until its turns
    /// catch up (300, 0, 0 was seen).
    #[test]
    fn a_weighted_endpoint_back_from_ejection_takes_its_share() {
        for least_request in [false, true] {
            let cluster = weighted(least_request);
            let headers = HeaderMap::new();
            let settings = cluster.outlier.clone().unwrap();
            cluster.endpoints[0].state.eject(now_ms(), &settings);
            for _ in 0..300 {
                assert_ne!(cluster.pick(input(&headers), &[]), Some(0));
            }
            cluster.endpoints[0].state.end_ejection();
            let mut counts = [0u32; 3];
            for _ in 0..300 {
                counts[cluster.pick(input(&headers), &[]).unwrap()] += 1;
            }
            assert!(
                (190..=210).contains(&counts[0]),
                "{least_request}: {counts:?}"
            );
        }
    }

    /// A retry passing over the heavy endpoint it tried spends its turn,
    /// as Envoy's previous-hosts re-picks do: with the heavy endpoint
    /// failing every first attempt, it takes half of 600 first attempts
    /// (Envoy 1.40: 300), not every one.
    #[test]
    fn a_retry_over_a_tried_weighted_endpoint_spends_its_turn() {
        let cluster = weighted(false);
        let headers = HeaderMap::new();
        let mut heavy_first = 0;
        for _ in 0..600 {
            let first = cluster.pick(input(&headers), &[]).unwrap();
            if first == 0 {
                heavy_first += 1;
                assert_ne!(cluster.pick(input(&headers), &[0]), Some(0));
            }
        }
        assert!((280..=320).contains(&heavy_first), "{heavy_first}");
    }

    /// An ejected endpoint's share goes to every endpoint left, as Envoy's
    /// balancers pick among the healthy hosts: the endpoint listed after it
    /// took the whole share, twice the others' load.
    #[test]
    fn an_ejected_endpoints_share_is_spread_over_the_others() {
        let headers = HeaderMap::new();
        for balancer in [
            Balancer::RoundRobin(Default::default()),
            Balancer::Random,
            Balancer::LeastRequest,
        ] {
            let name = balancer.name();
            let cluster = one_ejected(balancer);
            let mut counts = [0u32; 4];
            for _ in 0..3000 {
                counts[cluster.pick(input(&headers), &[]).unwrap()] += 1;
            }
            assert_eq!(counts[2], 0, "{name}: {counts:?}");
            for i in [0, 1, 3] {
                assert!((800..=1200).contains(&counts[i]), "{name}: {counts:?}");
            }
        }
    }

    /// Below `minHealthPercent` (Envoy's panic mode) every endpoint takes
    /// its share, the ejected one too.
    #[test]
    fn in_panic_mode_the_ejected_endpoint_keeps_its_share() {
        let headers = HeaderMap::new();
        for balancer in [
            Balancer::RoundRobin(Default::default()),
            Balancer::Random,
            Balancer::LeastRequest,
        ] {
            let name = balancer.name();
            let mut cluster = one_ejected(balancer);
            if let Some(o) = cluster.outlier.as_mut() {
                o.min_health_percent = 100;
            }
            let mut counts = [0u32; 4];
            for _ in 0..4000 {
                counts[cluster.pick(input(&headers), &[]).unwrap()] += 1;
            }
            for count in counts {
                assert!((800..=1200).contains(&count), "{name}: {counts:?}");
            }
        }
    }

    /// A hash policy's keys on an ejected endpoint spread over the others,
    /// each key still to one place; the keys elsewhere do not move.
    #[test]
    fn an_ejected_endpoints_keys_spread_and_the_rest_stay() {
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let healthy = plain();
        let hashed = |c: &Cluster| Balancer::consistent_hash(key.clone(), &c.endpoints, 65537);
        let healthy = Cluster {
            balancer: hashed(&healthy),
            ..healthy
        };
        let ejected = one_ejected(hashed(&healthy));
        let mut moved = [0u32; 4];
        for user in 0..2000 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", user.to_string().parse().unwrap());
            let before = healthy.pick(input(&headers), &[]).unwrap();
            let after = ejected.pick(input(&headers), &[]).unwrap();
            assert_eq!(after, ejected.pick(input(&headers), &[]).unwrap());
            if before == 2 {
                moved[after] += 1;
            } else {
                assert_eq!(before, after, "user {user}");
            }
        }
        assert_eq!(moved[2], 0, "{moved:?}");
        for i in [0, 1, 3] {
            assert!(moved[i] > 60, "{moved:?}");
        }
    }

    /// A retry goes to an endpoint not tried yet, chosen among those left;
    /// under a hash policy (`retryIgnorePreviousHosts`) the key's table is
    /// walked on to one, the same for every retry of the key.
    #[test]
    fn retries_leave_tried_endpoints() {
        let headers = HeaderMap::new();
        let random = one_ejected(Balancer::Random);
        for _ in 0..200 {
            let picked = random.pick(input(&headers), &[0, 1]).unwrap();
            assert_eq!(picked, 3);
        }
        // Every endpoint left was tried: one of them again.
        assert!([0, 1, 3].contains(&random.pick(input(&headers), &[0, 1, 3]).unwrap()));

        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let hashed = plain();
        let hashed = Cluster {
            balancer: Balancer::consistent_hash(key, &hashed.endpoints, 65537),
            ..hashed
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let first = hashed.pick(input(&headers), &[]).unwrap();
        let second = hashed.pick(input(&headers), &[first]).unwrap();
        assert_ne!(second, first);
        assert_eq!(hashed.pick(input(&headers), &[first]).unwrap(), second);
    }

    fn origination(auto_sni: bool) -> Origination {
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::tls::material::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        Origination {
            h1: config.clone(),
            h2: config,
            server: Arc::new(TlsServer {
                server_name: rustls::pki_types::ServerName::try_from("api.example.com")
                    .unwrap()
                    .to_owned(),
                expected: Box::default(),
            }),
            auto_sni,
        }
    }

    #[test]
    fn auto_sni_sends_the_authoritys_host_and_reuses_its_server() {
        let tls = origination(true);
        let own = tls.server_for(Some("API.example.com:443"));
        assert!(Arc::ptr_eq(&own, &tls.server), "the service's own name");
        let rewritten = tls.server_for(Some("eu.example.com:8443"));
        assert_eq!(
            rewritten.server_name,
            rustls::pki_types::ServerName::try_from("eu.example.com").unwrap()
        );
        let again = tls.server_for(Some("eu.example.com"));
        assert!(Arc::ptr_eq(&rewritten, &again), "one server per name");
        let ip = tls.server_for(Some("10.0.0.1:443"));
        assert!(matches!(
            ip.server_name,
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(
            Arc::ptr_eq(&ip, &tls.server_for(Some("10.0.0.1"))),
            "one per address"
        );
        // More names than the bound: the oldest slots are taken, the most
        // recent kept, and the cache never grows past it.
        for n in 0..AUTO_SNI_SERVERS_MAX - 2 {
            tls.server_for(Some(&format!("host-{n}.example.com")));
        }
        let recent = tls.server_for(Some("recent.example.com"));
        for n in 0..3 {
            tls.server_for(Some(&format!("late-{n}.example.com")));
        }
        assert!(Arc::ptr_eq(
            &recent,
            &tls.server_for(Some("recent.example.com"))
        ));
        assert!(!Arc::ptr_eq(
            &rewritten,
            &tls.server_for(Some("eu.example.com"))
        ));
        assert_eq!(
            AUTO_SNI_SERVERS.with_borrow(|(servers, _)| servers.len()),
            AUTO_SNI_SERVERS_MAX
        );
        let fixed = origination(false);
        assert!(Arc::ptr_eq(
            &fixed.server_for(Some("eu.example.com")),
            &fixed.server
        ));
    }
}
