//! ServiceEntries and DestinationRules → services, endpoints and clusters.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::bootstrap::Agent;
use super::destination_rules::{ConsolidatedRule, DestinationRules, RuleScope};
use super::mtls::PeerPolicies;
use super::policy::{self, EffectivePolicy};
use super::sidecar::EgressScope;
use super::upstream_tls;
use crate::config::agent::AgentSpec;
use crate::config::destination_rule::DestinationRuleSpec;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::security::PeerAuthenticationSpec;
use crate::config::service_entry::{ServiceEntrySpec, ServicePort, WorkloadEntry};
use crate::host::{authority_candidates, resolve_short_name, service_entry_host};
use crate::model::balancer::Balancer;
use crate::model::cluster::{
    Cluster, DEFAULT_CONNECT_TIMEOUT, Keepalive, OriginalDst, UpstreamTls,
};
use crate::model::destination::DestinationTarget;
use crate::model::endpoint::{Endpoint, UpstreamAddr};
use crate::model::live::{LiveState, PoolLimits};
use crate::model::mesh::TrustDomainBundle;
use crate::model::service::{Protocol, ServiceName};

/// A declared service and its clusters.
pub(super) struct Service {
    /// Clusters by subset (`None` = all endpoints), one per port.
    pub clusters: HashMap<Option<String>, Vec<Arc<Cluster>>>,
    /// The namespace of the ServiceEntry that declares it.
    pub namespace: String,
    /// Its `addresses` (VIPs as host prefixes, and CIDRs).
    pub addresses: Vec<IpNet>,
    /// Declaration order: earlier entries win where two claim the same address.
    pub order: usize,
    /// The ServiceEntry, for diagnostics.
    pub location: Location,
    /// Declared `location: MESH_EXTERNAL`: outside the mesh (no sidecar,
    /// no mesh mTLS), so no gateway's AUTO_PASSTHROUGH reaches it.
    pub mesh_external: bool,
}

/// Every service, by FQDN (or `*.suffix` pattern).
pub(super) struct Registry {
    pub services: BTreeMap<String, Service>,
    /// Services a Sidecar's egress hosts keep from this workload, with the
    /// Sidecar's `namespace/name`.
    pub hidden: BTreeMap<String, String>,
    /// Ports of visible services a Sidecar's egress hosts keep from this
    /// workload, with the Sidecar's `namespace/name`.
    pub hidden_ports: BTreeMap<(String, u16), String>,
    /// The clusters a Sidecar hides, by host and subset: a route's
    /// destination still reaches them (Istio infers the clusters of the
    /// destinations of the VirtualServices a Sidecar imports,
    /// `collectImportedServices`), though the host is no route of its own.
    hidden_clusters: BTreeMap<String, HashMap<Option<String>, Vec<Arc<Cluster>>>>,
}

/// How an entry's endpoints are found (`spec.resolution`), as Istio's
/// `convertServices` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// `STATIC`: the listed endpoints' addresses.
    Static,
    /// `DNS`, Envoy's `STRICT_DNS`: each address an endpoint's name (the
    /// hosts themselves when none are listed) resolves to is an endpoint
    /// of its own, as the agent's resolver last found them
    /// ([`crate::model::dns`]); a name not resolved yet is one endpoint,
    /// resolved when a connection opens.
    Dns,
    /// `DNS_ROUND_ROBIN`, Envoy's `LOGICAL_DNS`: each name is one
    /// endpoint, resolved when a connection opens (to the first of its
    /// addresses that answers).
    DnsRoundRobin,
    /// `NONE` (the default): Istio's `Passthrough`, a sidecar's
    /// `ORIGINAL_DST` cluster. A captured connection goes where it was
    /// going; traffic without an original destination (the explicit
    /// listener, a gateway) goes to the host resolved by DNS, as with
    /// `DNS`, and has no endpoint for a wildcard host.
    Passthrough,
}

impl Resolution {
    /// Whether endpoint addresses may be names, and an entry without
    /// endpoints reaches its host by name.
    fn by_name(self) -> bool {
        matches!(self, Self::Dns | Self::DnsRoundRobin | Self::Passthrough)
    }
}

/// Whose view of the registry is built: which of several ServiceEntries
/// declaring one host it takes.
#[derive(Clone, Copy)]
pub(super) enum Importer<'a> {
    /// A sidecar, as Istio's `selectServices` (unified sidecar scoping)
    /// picks for it: among the entries its Sidecar's egress hosts import
    /// (`egress`; `None`: no Sidecar, every entry), the one in its own
    /// namespace, else the oldest.
    Sidecar {
        /// The applying Sidecar's egress hosts, when one applies.
        egress: Option<&'a EgressScope>,
        /// Whether the agent captures outbound connections (Agent
        /// `spec.capture.mode: REDIRECT`), which then have an original
        /// destination (`loadBalancer.simple: PASSTHROUGH` needs one).
        captures: bool,
    },
    /// A gateway, as Istio's `DefaultSidecarScopeForGateway` appends
    /// services: the oldest, whatever its namespace.
    Gateway,
}

impl Importer<'_> {
    /// Whether its outbound connections have an original destination.
    fn captures(self) -> bool {
        matches!(self, Self::Sidecar { captures: true, .. })
    }
}

impl Registry {
    /// Builds every service's clusters; each service follows the
    /// DestinationRule Istio would give `scope`'s workload for it (see
    /// [`DestinationRules`]), and auto mTLS sends plaintext to an endpoint
    /// whose `peer_authentications`, read in `scope`, DISABLE mTLS for it
    /// (see [`PeerPolicies`]). Where several ServiceEntries declare one
    /// host, `importer` says which one the workload takes (see
    /// [`owners`]); the others are warned about.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        entries: &[Document<ServiceEntrySpec>],
        workload_entries: &[Document<WorkloadEntry>],
        rules: &[Document<DestinationRuleSpec>],
        scope: RuleScope<'_>,
        importer: Importer<'_>,
        (has_identity, peer_authentications): (bool, &[Document<PeerAuthenticationSpec>]),
        trust_domains: &TrustDomainBundle,
        live: &LiveState,
        diags: &mut Diagnostics,
    ) -> Self {
        let peers = &PeerPolicies::new(peer_authentications, &scope);
        let agent_namespace = scope.default_namespace;
        let captures = importer.captures();
        let rules = DestinationRules::new(rules, scope, (has_identity, captures), diags);
        let mut used = rules.marks();
        let resolutions: Vec<Option<Resolution>> = entries
            .iter()
            .map(|doc| validate_entry(&doc.spec, &doc.location, diags))
            .collect();
        let owners = owners(
            entries,
            &resolutions,
            agent_namespace,
            scope.namespace,
            importer,
        );
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        for (i, doc) in entries.iter().enumerate() {
            let namespace = doc.metadata.namespace.as_deref().unwrap_or(agent_namespace);
            let Some(resolution) = resolutions[i] else {
                continue;
            };
            let selected =
                selected_workloads(doc, namespace, agent_namespace, workload_entries, diags);
            for (h, host) in doc.spec.hosts.iter().enumerate() {
                // Literal, as Istio's `convertServices` takes them: a host
                // without a dot is not expanded into the entry's namespace.
                let fqdn = service_entry_host(host);
                let owner = owners.get(&fqdn).copied();
                if owner != Some((i, h)) {
                    let why = match owner.map(|(o, _)| (o, &entries[o])) {
                        Some((o, _)) if o == i => "it is repeated in this entry's hosts".to_owned(),
                        Some((_, o)) => {
                            let ns = o.metadata.namespace.as_deref().unwrap_or(agent_namespace);
                            let why = match importer {
                                Importer::Sidecar { egress, .. }
                                    if !imports(egress, doc, namespace, &fqdn)
                                        && imports(egress, o, ns, &fqdn) =>
                                {
                                    "this entry is outside the Sidecar's egress hosts"
                                }
                                Importer::Sidecar { .. }
                                    if ns == scope.namespace && ns != namespace =>
                                {
                                    "it is the workload's own namespace's"
                                }
                                _ => {
                                    "it is the oldest (creationTimestamp, else the first in the file)"
                                }
                            };
                            format!(
                                "ServiceEntry {ns}/{} declares it too and is taken: {why}",
                                o.metadata.name
                            )
                        }
                        None => "another ServiceEntry declares it".to_owned(),
                    };
                    let msg = format!("host {fqdn}: {why}; this entry's host is ignored");
                    diags.warn(&doc.location, Some(format!("spec.hosts[{h}]")), msg);
                    continue;
                }
                let name = Arc::new(ServiceName::new(&fqdn, namespace));
                let rule = rules.for_service(&fqdn, namespace).map(|i| {
                    used[i] = true;
                    rules.get(i)
                });
                let ctx = EntryContext {
                    doc,
                    workloads: &selected,
                    fqdn: &fqdn,
                    resolution,
                    live,
                    has_identity,
                    namespace,
                    peers,
                    trust_domains,
                };
                let clusters = ctx.clusters(&name, rule, diags);
                let addresses = doc
                    .spec
                    .addresses
                    .iter()
                    .filter_map(|a| {
                        a.parse::<IpNet>()
                            .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                            .ok()
                    })
                    .collect();
                let service = Service {
                    clusters,
                    namespace: namespace.to_owned(),
                    addresses,
                    order: services.len(),
                    location: doc.location.clone(),
                    mesh_external: doc.spec.location.as_deref() == Some("MESH_EXTERNAL"),
                };
                services.insert(fqdn, service);
            }
        }
        let declared = services
            .iter()
            .map(|(host, s)| (host.as_str(), s.namespace.as_str()));
        rules.warn_unused(declared, &used, diags);
        Self {
            services,
            hidden: BTreeMap::new(),
            hidden_ports: BTreeMap::new(),
            hidden_clusters: BTreeMap::new(),
        }
    }

    /// Keeps only the service ports `scope` lets this workload see (a
    /// Sidecar's egress hosts, as Istio limits what a sidecar loads).
    pub fn restrict(&mut self, scope: &EgressScope, sidecar: &str) {
        for (host, service) in &mut self.services {
            let shared_ports = service.addresses.is_empty();
            for (subset, clusters) in &mut service.clusters {
                let (kept, hidden): (Vec<_>, Vec<_>) =
                    std::mem::take(clusters).into_iter().partition(|c| {
                        let shared = shared_ports || c.protocol.is_http();
                        scope.allows(&service.namespace, host, c.port, shared)
                    });
                for c in &hidden {
                    self.hidden_ports
                        .insert((host.clone(), c.port), sidecar.to_owned());
                }
                *clusters = kept;
                if !hidden.is_empty() {
                    self.hidden_clusters
                        .entry(host.clone())
                        .or_default()
                        .insert(subset.clone(), hidden);
                }
            }
            service.clusters.retain(|_, clusters| !clusters.is_empty());
        }
        let hidden: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.clusters.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        for host in hidden {
            self.services.remove(&host);
            self.hidden.insert(host, sidecar.to_owned());
        }
    }

    /// Why `host` has no service: undeclared, or outside the Sidecar's
    /// egress hosts.
    pub fn missing(&self, host: &str) -> String {
        match self.hidden.get(host) {
            Some(sidecar) => format!("{host} is outside the egress hosts of Sidecar {sidecar}"),
            None => format!("no ServiceEntry declares {host}"),
        }
    }

    /// Why a route's destination has no cluster for traffic addressed to
    /// `port` (`None`: whatever port it names), or `None` when it has one:
    /// the host is unknown or hidden, the subset undefined, the port named
    /// is not the service's, or (for `port`) the service has several
    /// ports, none of them `port`, and the destination names none.
    pub fn unresolved(&self, target: &DestinationTarget, port: Option<u16>) -> Option<String> {
        let host = &*target.host;
        if target.clusters.is_empty() {
            return Some(match &target.subset {
                Some(subset) if self.services.contains_key(host) => {
                    format!("subset {subset:?} of {host} is not defined by a DestinationRule")
                }
                _ => self.missing(host),
            });
        }
        let ports = || {
            let mut ports: Vec<u16> = target.clusters.iter().map(|c| c.port).collect();
            ports.sort_unstable();
            ports.dedup();
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            ports.join(", ")
        };
        match (target.port, port) {
            (Some(named), _) if !target.clusters.iter().any(|c| c.port == named) => Some(format!(
                "{host} has no port {named} (its ports: {})",
                ports()
            )),
            (None, Some(port)) if target.cluster_for(port).is_none() => Some(format!(
                "{host} has several ports ({}) and none is {port}; name one in destination.port",
                ports()
            )),
            _ => None,
        }
    }

    /// What keeps `host` (short names expanded as [`Registry::find`] does)
    /// at `port` from this workload, when a Sidecar does: `<fqdn> is
    /// outside the egress hosts of Sidecar <namespace/name>` (or `<fqdn>
    /// port <port> is …` when only that port is).
    pub fn hidden_by(&self, host: &str, namespace: &str, port: u16) -> Option<String> {
        let candidates = authority_candidates(&host.to_ascii_lowercase(), namespace);
        candidates.into_iter().flatten().find_map(|h| {
            let (what, sidecar) = match self.hidden.get(&h) {
                Some(sidecar) => (h, sidecar),
                None => {
                    let sidecar = self.hidden_ports.get(&(h.clone(), port))?;
                    (format!("{h} port {port}"), sidecar)
                }
            };
            Some(format!(
                "{what} is outside the egress hosts of Sidecar {sidecar}"
            ))
        })
    }

    /// The service a host name stands for, trying short-name expansions.
    pub fn find(&self, host: &str, namespace: &str) -> Option<(&String, &Service)> {
        authority_candidates(&host.to_ascii_lowercase(), namespace)
            .into_iter()
            .flatten()
            .find_map(|h| self.services.get_key_value(&h))
    }

    /// The HTTP ports `fqdn` declares (none when it is not in the registry).
    pub fn http_ports(&self, fqdn: &str) -> Vec<u16> {
        let clusters = self.services.get(fqdn).and_then(|s| s.clusters.get(&None));
        let http = clusters
            .into_iter()
            .flatten()
            .filter(|c| c.protocol.is_http());
        http.map(|c| c.port).collect()
    }

    /// The destination for `fqdn`, `subset` and an optional fixed port:
    /// its clusters, those a Sidecar hides included (a route's destination
    /// reaches them, as Istio infers them).
    pub fn target(&self, fqdn: &str, subset: Option<&str>, port: Option<u16>) -> DestinationTarget {
        let subset_key = subset.map(str::to_owned);
        let visible = (self.services.get(fqdn)).and_then(|s| s.clusters.get(&subset_key));
        let hidden = (self.hidden_clusters.get(fqdn)).and_then(|s| s.get(&subset_key));
        let clusters: Vec<Arc<Cluster>> = visible
            .into_iter()
            .chain(hidden)
            .flatten()
            .cloned()
            .collect();
        DestinationTarget {
            host: Arc::from(fqdn),
            subset: subset.map(str::to_owned),
            port,
            clusters,
        }
    }

    /// The cluster of `fqdn`'s `subset` on `port` this workload sees (none
    /// when a Sidecar hides it).
    pub fn visible_cluster(
        &self,
        fqdn: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Option<Arc<Cluster>> {
        let clusters = self
            .services
            .get(fqdn)?
            .clusters
            .get(&subset.map(str::to_owned))?;
        clusters.iter().find(|c| c.port == port).cloned()
    }

    /// Every cluster, in host order (for `/clusters`).
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut all: Vec<Arc<Cluster>> = self
            .services
            .values()
            .flat_map(|s| s.clusters.values().flatten().cloned())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The cluster each `spec.outbound.tcp` listener forwards to.
    pub fn tcp_routes(
        &self,
        agent: &Document<AgentSpec>,
        namespace: &str,
        diags: &mut Diagnostics,
    ) -> Vec<Arc<Cluster>> {
        let mut routes = Vec::new();
        for (i, listener) in agent.spec.outbound.tcp.iter().enumerate() {
            let field = Some(format!("spec.outbound.tcp[{i}]"));
            let cluster = self
                .find(&listener.host, namespace)
                .and_then(|(_, s)| s.clusters.get(&None))
                .and_then(|cs| cs.iter().find(|c| u32::from(c.port) == listener.port));
            match cluster {
                Some(c) if !c.protocol.is_http() => routes.push(c.clone()),
                Some(c) => {
                    let msg = format!(
                        "port {} of {} is declared {}, not TCP or TLS",
                        c.port, c.service.host, c.protocol
                    );
                    diags.error(&agent.location, field, msg);
                }
                None => {
                    let host = resolve_short_name(&listener.host, namespace);
                    let msg = format!("{} (port {})", self.missing(&host), listener.port);
                    diags.error(&agent.location, field, msg);
                }
            }
        }
        routes
    }
}

/// Which entry declares each host for this workload: `(entry, host)`
/// indexes into `entries` and its `spec.hosts`, by FQDN. Entries that did
/// not validate (`resolutions[i]` is `None`) declare nothing.
///
/// As Istio chooses: its services are ordered oldest first
/// (`SortServicesByCreationTime`: `creationTimestamp`, then the service
/// name — the host, equal here — then the namespace; here an entry
/// without a timestamp comes after those with one, in file order). Of
/// one namespace's entries for a host the oldest is taken (Istio's
/// `HostnameAndNamespace` index and `appendSidecarServices` keep the
/// first). A sidecar then takes, of the entries its Sidecar's egress
/// hosts import on some port (every entry without a Sidecar), the one in
/// its own namespace, else the oldest (`selectServices` with
/// `PILOT_UNIFIED_SIDECAR_SCOPE`); when none is imported, the choice
/// among all of them, which [`Registry::restrict`] then hides. A gateway
/// takes the oldest.
fn owners(
    entries: &[Document<ServiceEntrySpec>],
    resolutions: &[Option<Resolution>],
    default_namespace: &str,
    own_namespace: &str,
    importer: Importer<'_>,
) -> HashMap<String, (usize, usize)> {
    let namespace_of = |i: usize| {
        entries[i]
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(default_namespace)
    };
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| resolutions[i].is_some())
        .collect();
    order.sort_by(|&a, &b| {
        super::gateway_api::age(&entries[a].metadata, a)
            .cmp(&super::gateway_api::age(&entries[b].metadata, b))
            .then_with(|| namespace_of(a).cmp(namespace_of(b)))
    });
    let mut candidates: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for &i in &order {
        for (h, host) in entries[i].spec.hosts.iter().enumerate() {
            candidates
                .entry(service_entry_host(host))
                .or_default()
                .push((i, h));
        }
    }
    candidates
        .into_iter()
        .filter_map(|(fqdn, all)| {
            let owner = match importer {
                Importer::Gateway => all.first().copied(),
                Importer::Sidecar { egress, .. } => {
                    let imported = |&&(i, _): &&(usize, usize)| {
                        imports(egress, &entries[i], namespace_of(i), &fqdn)
                    };
                    let imported: Vec<&(usize, usize)> = all.iter().filter(imported).collect();
                    let pool: Vec<&(usize, usize)> = if imported.is_empty() {
                        all.iter().collect()
                    } else {
                        imported
                    };
                    pool.iter()
                        .find(|(i, _)| namespace_of(*i) == own_namespace)
                        .or_else(|| pool.first())
                        .map(|&&o| o)
                }
            };
            owner.map(|o| (fqdn, o))
        })
        .collect()
}

/// Whether a Sidecar's egress hosts (`None`: no Sidecar) import `entry`,
/// of `namespace`, for `fqdn`: on one of its ports at least.
fn imports(
    egress: Option<&EgressScope>,
    entry: &Document<ServiceEntrySpec>,
    namespace: &str,
    fqdn: &str,
) -> bool {
    egress.is_none_or(|scope| {
        entry.spec.ports.iter().any(|p| {
            let shared = entry.spec.addresses.is_empty()
                || Protocol::parse(&p.protocol).is_none_or(Protocol::is_http);
            u16::try_from(p.number).is_ok_and(|port| scope.allows(namespace, fqdn, port, shared))
        })
    })
}

/// The local application as the inbound listener's only cluster.
pub(super) fn inbound_cluster(boot: &Agent, live: &LiveState) -> Arc<Cluster> {
    let app = boot.listeners.app;
    let address = UpstreamAddr::Socket(app);
    let name = format!("inbound|{}||", app.port());
    let state = live.endpoint(&name, &address.to_string());
    let mut endpoint = Endpoint::new(
        address,
        boot.identity.labels.clone(),
        state,
        &boot.identity.namespace,
    );
    endpoint.peer = boot.identity.peer.clone();
    Arc::new(Cluster {
        state: live.cluster(&name),
        name,
        service: boot.identity.service.clone(),
        port: app.port(),
        protocol: boot.listeners.app_protocol,
        subset: None,
        endpoints: vec![Arc::new(endpoint)],
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

/// Checks an entry; `None` when it cannot be used at all.
fn validate_entry(
    spec: &ServiceEntrySpec,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<Resolution> {
    let errors_before = diags.errors().count();
    if spec.ports.is_empty() {
        let msg = "no ports: the agent has nothing to route to for this entry";
        diags.warn(loc, Some("spec.ports".into()), msg);
    }
    for (i, port) in spec.ports.iter().enumerate() {
        if Protocol::parse(&port.protocol).is_none() {
            let msg = format!(
                "unknown protocol {:?} (HTTP, HTTP2, GRPC, TCP, TLS, HTTPS…)",
                port.protocol
            );
            diags.error(loc, Some(format!("spec.ports[{i}].protocol")), msg);
        }
    }
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    let parsed = match resolution {
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
        "NONE" => Resolution::Passthrough,
        "STATIC" => Resolution::Static,
        other => {
            let msg = format!("unknown resolution {other:?} (NONE, STATIC, DNS, DNS_ROUND_ROBIN)");
            diags.error(loc, Some("spec.resolution".into()), msg);
            Resolution::Static
        }
    };
    let dns = parsed.by_name();
    if resolution == "STATIC" && spec.endpoints.is_empty() && spec.workload_selector.is_none() {
        diags.error(
            loc,
            Some("spec.endpoints".into()),
            "STATIC resolution needs endpoints",
        );
    }
    for (j, ep) in spec.endpoints.iter().enumerate() {
        if !dns && ep.address.parse::<IpAddr>().is_err() && !ep.address.starts_with("unix://") {
            let msg = format!(
                "{:?} is not an IP address, which STATIC resolution needs",
                ep.address
            );
            diags.error(loc, Some(format!("spec.endpoints[{j}].address")), msg);
        }
    }
    (diags.errors().count() == errors_before).then_some(parsed)
}

/// The WorkloadEntries a ServiceEntry's `workloadSelector` picks: those of
/// its namespace whose labels match, as Istio selects them (VMs and other
/// hosts outside Kubernetes registered as endpoints).
fn selected_workloads<'a>(
    doc: &Document<ServiceEntrySpec>,
    namespace: &str,
    agent_namespace: &str,
    workload_entries: &'a [Document<WorkloadEntry>],
    diags: &mut Diagnostics,
) -> Vec<&'a WorkloadEntry> {
    let Some(selector) = &doc.spec.workload_selector else {
        return Vec::new();
    };
    let selected: Vec<&WorkloadEntry> = workload_entries
        .iter()
        .filter(|we| we.metadata.namespace.as_deref().unwrap_or(agent_namespace) == namespace)
        .filter(|we| selector.matches(&we.spec.labels))
        .map(|we| &we.spec)
        .collect();
    if selected.is_empty() {
        let msg = format!(
            "no WorkloadEntry in namespace {namespace} matches; Kubernetes pods are not visible to the agent, so the entry has no endpoints"
        );
        diags.warn(&doc.location, Some("spec.workloadSelector".into()), msg);
    }
    selected
}

struct EntryContext<'a> {
    doc: &'a Document<ServiceEntrySpec>,
    /// Endpoints from WorkloadEntries, when the entry has a `workloadSelector`.
    workloads: &'a [&'a WorkloadEntry],
    fqdn: &'a str,
    resolution: Resolution,
    live: &'a LiveState,
    has_identity: bool,
    /// The entry's namespace: its endpoints'.
    namespace: &'a str,
    /// What the endpoints' PeerAuthentications say.
    peers: &'a PeerPolicies<'a>,
    /// The mesh's trust domain and its aliases: the endpoints' service
    /// accounts are identities in each.
    trust_domains: &'a TrustDomainBundle,
}

/// Whether a ServiceEntry's endpoint or a WorkloadEntry runs a sidecar
/// (auto mTLS sends it mesh mTLS), as Istio's
/// `getTLSModeFromWorkloadEntry` reads it: its `security.istio.io/tlsMode`
/// label when it has one, else whether it names a `serviceAccount`.
fn runs_sidecar(ep: &WorkloadEntry) -> bool {
    match ep.labels.get("security.istio.io/tlsMode") {
        Some(mode) => mode == "istio",
        None => ep
            .service_account
            .as_deref()
            .is_some_and(|sa| !sa.is_empty()),
    }
}

/// An endpoint before it belongs to a cluster.
struct EndpointSpec {
    address: UpstreamAddr,
    labels: BTreeMap<String, String>,
    /// It runs a sidecar ([`runs_sidecar`]).
    sidecar: bool,
    /// Its PeerAuthentication is DISABLE on its port: auto mTLS sends it
    /// plaintext even though it runs a sidecar.
    plaintext: bool,
    /// `weight` (unset or 0: 1, as Istio leaves Envoy's default).
    weight: u32,
    /// The `resolution: DNS` name it is an address of, or, unresolved,
    /// connects by ([`Endpoint::resolved_from`]).
    resolved_from: Option<Arc<str>>,
}

impl EntryContext<'_> {
    fn clusters(
        &self,
        name: &Arc<ServiceName>,
        rule: Option<&ConsolidatedRule<'_>>,
        diags: &mut Diagnostics,
    ) -> HashMap<Option<String>, Vec<Arc<Cluster>>> {
        let spec = rule.map(|r| &r.spec);
        let mut subsets: Vec<Option<&str>> = vec![None];
        subsets.extend(
            spec.iter()
                .flat_map(|r| r.subsets.iter().map(|s| Some(s.name.as_str()))),
        );
        let service_accounts = self.service_accounts();
        let dns_names = self.dns_names();
        let mut clusters: HashMap<Option<String>, Vec<Arc<Cluster>>> = HashMap::new();
        for (p, port) in self.doc.spec.ports.iter().enumerate() {
            let Some(protocol) = Protocol::parse(&port.protocol) else {
                continue;
            };
            let endpoints = self.endpoints(port, p == 0, diags);
            for subset in &subsets {
                // NONE: Envoy's ORIGINAL_DST cluster, on the port's
                // `targetPort` when it names one (Istio's
                // PassthroughTargetPorts).
                let original_dst =
                    (self.resolution == Resolution::Passthrough).then(|| OriginalDst {
                        port_override: port.target_port.map(|p| p as u16),
                    });
                let cluster = ClusterBuild {
                    name,
                    port: port.number as u16,
                    protocol,
                    original_dst,
                    subset: *subset,
                    rule: spec,
                    rule_reference: rule.map(|r| r.reference(*subset)),
                    live: self.live,
                    has_identity: self.has_identity,
                    service_accounts: &service_accounts,
                    dns_names: &dns_names,
                }
                .build(&endpoints);
                clusters
                    .entry(subset.map(str::to_owned))
                    .or_default()
                    .push(Arc::new(cluster));
            }
        }
        clusters
    }

    /// Istio's `serviceAccounts` of the service (`ServiceAccounts` of the
    /// push context, `ExpandWithTrustDomains`): the entry's
    /// `subjectAltNames` (a SPIFFE name of one of the mesh's trust domains
    /// in each of them), then `spiffe://<td>/ns/<namespace>/sa/<account>`
    /// for each endpoint's (or selected WorkloadEntry's) `serviceAccount`
    /// and each trust domain of the mesh — its own and its aliases.
    fn service_accounts(&self) -> Vec<String> {
        let spec = &self.doc.spec;
        let endpoints: Vec<&WorkloadEntry> = if spec.workload_selector.is_some() {
            self.workloads.to_vec()
        } else {
            spec.endpoints.iter().collect()
        };
        // The entry's SPIFFE names in each trust domain of the mesh too.
        let mut names: Vec<String> = Vec::new();
        for san in &spec.subject_alt_names {
            let spiffe = san
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(td, _)| self.trust_domains.trust_domains().iter().any(|t| t == td));
            let expanded: Vec<String> = match spiffe {
                Some((_, path)) => (self.trust_domains.trust_domains().iter())
                    .map(|td| format!("spiffe://{td}/{path}"))
                    .collect(),
                None => vec![san.clone()],
            };
            for name in std::iter::once(san.clone()).chain(expanded) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let accounts = (endpoints.iter())
            .filter_map(|ep| ep.service_account.as_deref())
            .filter(|account| !account.is_empty());
        for account in accounts {
            for td in self.trust_domains.trust_domains() {
                let name = format!("spiffe://{td}/ns/{}/sa/{account}", self.namespace);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    fn endpoints(
        &self,
        port: &ServicePort,
        warn: bool,
        diags: &mut Diagnostics,
    ) -> Vec<EndpointSpec> {
        let spec = &self.doc.spec;
        let default_port = port.target_port.unwrap_or(port.number) as u16;
        let endpoints: Vec<&WorkloadEntry> = if spec.workload_selector.is_some() {
            self.workloads.to_vec()
        } else {
            spec.endpoints.iter().collect()
        };
        if endpoints.is_empty() && spec.workload_selector.is_none() {
            if !self.resolution.by_name() || self.fqdn.starts_with('*') {
                return Vec::new();
            }
            let spec = EndpointSpec {
                address: UpstreamAddr::Dns {
                    host: Arc::from(self.fqdn),
                    port: default_port,
                },
                labels: BTreeMap::new(),
                sidecar: false,
                plaintext: false,
                weight: 1,
                resolved_from: None,
            };
            return self.resolved(spec);
        }
        let mut out = Vec::new();
        for (j, ep) in endpoints.into_iter().enumerate() {
            if ep.address.starts_with("unix://") {
                if warn {
                    let msg = "unix domain socket endpoints are not supported; skipped";
                    diags.warn(
                        &self.doc.location,
                        Some(format!("spec.endpoints[{j}].address")),
                        msg,
                    );
                }
                continue;
            }
            let port = ep.ports.get(&port.name).map_or(default_port, |p| *p as u16);
            let address = match ep.address.parse::<IpAddr>() {
                Ok(ip) => UpstreamAddr::Socket(SocketAddr::new(ip, port)),
                Err(_) => UpstreamAddr::Dns {
                    host: Arc::from(ep.address.as_str()),
                    port,
                },
            };
            // Istio's mtlsChecker: an endpoint with a sidecar whose
            // PeerAuthentication (its namespace, its labels, the port it
            // listens on) is DISABLE is sent plaintext by auto mTLS.
            // Auto mTLS never reaches a service declared MESH_EXTERNAL
            // (Istio's `buildUpstreamTLSSettings` returns none for it).
            let mesh_external = spec.location.as_deref() == Some("MESH_EXTERNAL");
            let sidecar = runs_sidecar(ep) && !mesh_external;
            let plaintext = sidecar && self.peers.disable(self.namespace, &ep.labels, port);
            out.extend(self.resolved(EndpointSpec {
                address,
                labels: ep.labels.clone(),
                sidecar,
                plaintext,
                weight: ep.weight.unwrap_or(1).max(1),
                resolved_from: None,
            }));
        }
        out
    }

    /// The names the entry's endpoints are found by under `resolution:
    /// DNS` (Envoy's `STRICT_DNS`): its hosts when it lists no endpoints
    /// (a wildcard names none), else each endpoint `address` that is not
    /// an IP address (or a Unix socket, which is skipped).
    fn dns_names(&self) -> Vec<Arc<str>> {
        let spec = &self.doc.spec;
        if self.resolution != Resolution::Dns || spec.workload_selector.is_some() {
            return Vec::new();
        }
        if spec.endpoints.is_empty() {
            return (!self.fqdn.starts_with('*'))
                .then(|| Arc::from(self.fqdn))
                .into_iter()
                .collect();
        }
        let mut names: Vec<Arc<str>> = (spec.endpoints.iter())
            .map(|ep| ep.address.as_str())
            .filter(|a| a.parse::<IpAddr>().is_err() && !a.starts_with("unix://"))
            .map(Arc::from)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `spec` as its cluster takes it: under `resolution: DNS` (Envoy's
    /// `STRICT_DNS`) an endpoint named by DNS is one endpoint per address
    /// its name last resolved to, each with its labels and weight (Envoy
    /// gives every resolved host the endpoint's `load_balancing_weight`);
    /// until the name resolves, the name itself, resolved as a connection
    /// opens. Either way the name is marked for the agent's resolver.
    fn resolved(&self, spec: EndpointSpec) -> Vec<EndpointSpec> {
        let UpstreamAddr::Dns { host, port } = &spec.address else {
            return vec![spec];
        };
        if self.resolution != Resolution::Dns {
            return vec![spec];
        }
        let (host, port) = (host.clone(), *port);
        let Some(addresses) = self.live.dns().get(&host) else {
            return vec![EndpointSpec {
                resolved_from: Some(host),
                ..spec
            }];
        };
        (addresses.iter())
            .map(|ip| EndpointSpec {
                address: UpstreamAddr::Socket(SocketAddr::new(*ip, port)),
                labels: spec.labels.clone(),
                resolved_from: Some(host.clone()),
                ..spec
            })
            .collect()
    }
}

/// One cluster of a service port and subset.
struct ClusterBuild<'a> {
    name: &'a Arc<ServiceName>,
    port: u16,
    protocol: Protocol,
    original_dst: Option<OriginalDst>,
    subset: Option<&'a str>,
    rule: Option<&'a DestinationRuleSpec>,
    /// The rule as response details name it.
    rule_reference: Option<Arc<str>>,
    live: &'a LiveState,
    has_identity: bool,
    service_accounts: &'a [String],
    /// The entry's `resolution: DNS` names ([`EntryContext::dns_names`]).
    dns_names: &'a [Arc<str>],
}

impl ClusterBuild<'_> {
    fn build(&self, endpoints: &[EndpointSpec]) -> Cluster {
        let cluster_name = format!(
            "outbound|{}|{}|{}",
            self.port,
            self.subset.unwrap_or(""),
            self.name.host
        );
        let wanted = self
            .subset
            .and_then(|name| self.rule?.subsets.iter().find(|s| s.name == name))
            .map(|s| &s.labels);
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .filter(|ep| {
                wanted.is_none_or(|want| want.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
            })
            .map(|ep| {
                let state = self.live.endpoint(&cluster_name, &ep.address.to_string());
                let mut endpoint = Endpoint::new(
                    ep.address.clone(),
                    ep.labels.clone(),
                    state,
                    &self.name.namespace,
                );
                endpoint.sidecar = ep.sidecar && !ep.plaintext;
                endpoint.weight = ep.weight;
                endpoint.resolved_from = ep.resolved_from.clone();
                Arc::new(endpoint)
            })
            .collect();
        let policy = EffectivePolicy::of(self.rule, self.port, self.subset);
        let settings = policy::cluster_settings(&policy);
        // `loadBalancer.simple: PASSTHROUGH`: Istio's ORIGINAL_DST cluster
        // (`applyLoadBalancer`), whatever the entry's resolution, without
        // a port override (Istio's `PassthroughTargetPorts` are NONE's).
        // Captured connections go where they were going; the endpoints,
        // balanced LEAST_REQUEST, serve the rest.
        let original_dst = self.original_dst.or_else(|| {
            policy::passthrough(policy.load_balancer).then_some(OriginalDst {
                port_override: None,
            })
        });
        let balancer =
            policy::balancer(policy.load_balancer, &endpoints, (self.live, &cluster_name));
        Cluster {
            state: self.live.cluster(&cluster_name),
            name: cluster_name,
            service: self.name.clone(),
            port: self.port,
            protocol: self.protocol,
            subset: self.subset.map(str::to_owned),
            balancer,
            endpoints,
            connect_timeout: settings.connect_timeout,
            limits: settings.limits,
            tcp_idle_timeout: settings.tcp_idle_timeout,
            keepalive: settings.keepalive,
            destination_rule: self.rule_reference.clone(),
            outlier: settings.outlier,
            h2_upgrade: settings.h2_upgrade,
            use_client_protocol: settings.use_client_protocol,
            tls: upstream_tls::upstream_tls(
                policy.tls,
                &self.name.host,
                self.service_accounts,
                self.has_identity,
                self.protocol.is_http(),
                self.live,
            ),
            upstream_bind: None,
            original_dst,
            pooling: Default::default(),
            dns_names: self.dns_names.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::compile::compile_text;
    use crate::model::Snapshot;
    use crate::model::cluster::{Cluster, OriginalDst};
    use crate::model::live::LiveState;

    const ENTRIES: &str = r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: productpage-v1, namespace: default}
spec: {service: productpage}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard, namespace: default}
spec:
  hosts: ["*.example.com"]
  ports:
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [corp-db-range]
  addresses: [198.51.100.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns, namespace: default}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"#;

    fn snapshot() -> Snapshot {
        let file = Arc::from("entries.yaml");
        match compile_text(&file, ENTRIES, 1, &LiveState::default()) {
            Ok(compiled) => compiled.snapshot,
            Err(rejected) => panic!("{rejected}"),
        }
    }

    fn cluster<'s>(snapshot: &'s Snapshot, name: &str) -> &'s Cluster {
        let found = snapshot.clusters.iter().find(|c| c.name == name);
        found.unwrap_or_else(|| panic!("no cluster {name}"))
    }

    fn endpoints(cluster: &Cluster) -> Vec<String> {
        let addresses = cluster.endpoints.iter().map(|e| e.address.to_string());
        addresses.collect()
    }

    /// `resolution: NONE`, the default, is Istio's `Passthrough`: the
    /// sidecar's cluster is ORIGINAL_DST, on the port's `targetPort` when
    /// it names one. Its endpoints are what traffic without an original
    /// destination gets: the host by DNS, none for a wildcard.
    #[test]
    fn resolution_none_is_the_original_destination() {
        let snapshot = snapshot();
        let https = cluster(&snapshot, "outbound|443||*.example.com");
        assert_eq!(
            https.original_dst,
            Some(OriginalDst {
                port_override: None
            })
        );
        assert!(endpoints(https).is_empty(), "no name to resolve");
        let http = cluster(&snapshot, "outbound|80||*.example.com");
        assert_eq!(
            http.original_dst,
            Some(OriginalDst {
                port_override: Some(8080)
            })
        );
        let original = "192.0.2.7:80".parse().unwrap();
        let endpoint = http.original_destination_endpoint(original).unwrap();
        assert_eq!(endpoint.address.to_string(), "192.0.2.7:8080");
        assert_eq!(endpoint.peer.namespace, "default");

        let db = cluster(&snapshot, "outbound|5432||corp-db-range");
        assert!(db.original_dst.is_some());
        assert_eq!(endpoints(db), ["corp-db-range:5432"]);
        let original = "198.51.100.7:5432".parse().unwrap();
        let endpoint = db.original_destination_endpoint(original).unwrap();
        assert_eq!(endpoint.address.to_string(), "198.51.100.7:5432");

        let dns = cluster(&snapshot, "outbound|80||httpbin.org");
        assert_eq!(dns.original_dst, None);
        assert!(dns.original_destination_endpoint(original).is_none());
        assert_eq!(endpoints(dns), ["httpbin.org:80"]);
    }

    /// `loadBalancer.simple: PASSTHROUGH` is Istio's ORIGINAL_DST cluster
    /// whatever the entry's resolution: with capture a STATIC entry's
    /// cluster sends captured connections where they were going (it was
    /// LEAST_REQUEST over the endpoints with a warning saying capture was
    /// needed), and its endpoints, balanced LEAST_REQUEST, serve the rest;
    /// without capture the warning says that none is captured.
    #[test]
    fn passthrough_is_the_original_destination_for_captured_connections() {
        let config = |capture: &str| {
            format!(
                r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: productpage-v1, namespace: default}}
spec:
  service: productpage
{capture}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [legacy.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: STATIC
  endpoints: [{{address: 192.0.2.10}}, {{address: 192.0.2.11}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy, namespace: default}}
spec:
  host: legacy.example.com
  trafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}
"#
            )
        };
        let compile = |yaml: &str| {
            let file = Arc::from("passthrough.yaml");
            compile_text(&file, yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"))
        };
        let passthrough_warnings = |compiled: &crate::compile::Compiled| -> Vec<String> {
            let warnings = compiled.diagnostics.warnings().map(ToString::to_string);
            warnings.filter(|w| w.contains("PASSTHROUGH")).collect()
        };

        let captured = compile(&config("  capture: {mode: REDIRECT}\n"));
        let legacy = cluster(&captured.snapshot, "outbound|80||legacy.example.com");
        assert_eq!(
            legacy.original_dst,
            Some(OriginalDst {
                port_override: None
            })
        );
        let original = "192.0.2.99:80".parse().unwrap();
        let endpoint = legacy.original_destination_endpoint(original).unwrap();
        assert_eq!(endpoint.address.to_string(), "192.0.2.99:80");
        assert_eq!(legacy.balancer.name(), "LEAST_REQUEST");
        assert_eq!(endpoints(legacy), ["192.0.2.10:8080", "192.0.2.11:8080"]);
        assert_eq!(passthrough_warnings(&captured), Vec::<String>::new());

        let explicit = compile(&config(""));
        let warnings = passthrough_warnings(&explicit);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("this proxy captures none"),
            "{warnings:?}"
        );
        let legacy = cluster(&explicit.snapshot, "outbound|80||legacy.example.com");
        assert_eq!(legacy.balancer.name(), "LEAST_REQUEST");
    }

    /// `resolution: DNS` is Envoy's `STRICT_DNS`: once a name resolved,
    /// each of its addresses is an endpoint of its own, with the listed
    /// endpoint's labels and weight, and no endpoint a captured call to
    /// that address picks; until then the name is one endpoint.
    /// `DNS_ROUND_ROBIN` (`LOGICAL_DNS`) stays one endpoint by name.
    #[test]
    fn dns_resolution_makes_each_address_an_endpoint() {
        let config = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: productpage-v1, namespace: default}
spec: {service: productpage}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.internal]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: named, namespace: default}
spec:
  hosts: [named.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints:
  - {address: db.internal, weight: 3, labels: {version: v2}}
  - {address: 192.0.2.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: logical, namespace: default}
spec:
  hosts: [logical.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS_ROUND_ROBIN
"#;
        let live = LiveState::default();
        let compile = |live: &LiveState| {
            let file = Arc::from("entries.yaml");
            match compile_text(&file, config, 1, live) {
                Ok(compiled) => compiled.snapshot,
                Err(rejected) => panic!("{rejected}"),
            }
        };
        let before = compile(&live);
        let names: Vec<String> = before.dns_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            ["api.internal", "db.internal"],
            "logical.internal is not resolved ahead"
        );
        assert_eq!(
            endpoints(cluster(&before, "outbound|80||api.internal")),
            ["api.internal:8080"]
        );

        let ips = |list: &[&str]| list.iter().map(|ip| ip.parse().unwrap()).collect();
        live.dns()
            .set(&Arc::from("api.internal"), ips(&["10.1.0.2", "10.1.0.1"]));
        live.dns()
            .set(&Arc::from("db.internal"), ips(&["10.2.0.1"]));
        live.dns()
            .set(&Arc::from("logical.internal"), ips(&["10.3.0.1"]));
        let after = compile(&live);
        let api = cluster(&after, "outbound|80||api.internal");
        assert_eq!(endpoints(api), ["10.1.0.2:8080", "10.1.0.1:8080"]);
        assert!(
            api.endpoints
                .iter()
                .all(|e| e.resolved_from.as_deref() == Some("api.internal"))
        );
        let named = cluster(&after, "outbound|80||named.internal");
        assert_eq!(endpoints(named), ["10.2.0.1:80", "192.0.2.9:80"]);
        assert_eq!(named.endpoints[0].weight, 3);
        assert_eq!(named.endpoints[0].peer.version, "v2");
        assert_eq!(named.endpoints[1].resolved_from, None);
        let logical = cluster(&after, "outbound|80||logical.internal");
        assert_eq!(endpoints(logical), ["logical.internal:80"]);

        // A name whose first lookup failed has no endpoint (Envoy's
        // cluster has no host before its first answer), and is still
        // resolved.
        live.dns().set(&Arc::from("api.internal"), Vec::new());
        let failed = compile(&live);
        assert!(endpoints(cluster(&failed, "outbound|80||api.internal")).is_empty());
        assert!(failed.dns_names().contains("api.internal"));

        // A captured call to a resolved address is the service's port's
        // (balanced), not that endpoint's; a listed IP endpoint's is its own.
        let capture = &after.capture;
        let resolved = "10.1.0.1:8080".parse().unwrap();
        assert!(!matches!(
            capture.destinations.lookup(resolved),
            Some(crate::model::capture::Destination::Endpoint { .. })
        ));
        let listed = "192.0.2.9:80".parse().unwrap();
        assert!(matches!(
            capture.destinations.lookup(listed),
            Some(crate::model::capture::Destination::Endpoint { .. })
        ));
    }
}
