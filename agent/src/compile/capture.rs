//! The Agent's `capture` and `outboundTrafficPolicy`, the applying
//! Sidecar's, and the registry's addresses → the snapshot's
//! [`Capture`](crate::model::capture::Capture).

use std::collections::BTreeMap;

use super::registry::Registry;
use super::sidecar::SidecarScope;
use crate::config::agent::AgentSpec;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::service_entry::ServiceEntrySpec;
use crate::host::service_entry_host;
use crate::model::Listeners;
use crate::model::capture::{
    Capture, DEFAULT_PROTOCOL_DETECTION_TIMEOUT, Destinations, EgressProxy, InboundApp,
    InterceptionMode, OutboundTrafficMode, ServicePorts,
};
use crate::model::endpoint::UpstreamAddr;
use crate::model::service::{Protocol, ServiceName};

/// What [`compile`] reads.
pub(super) struct CaptureInput<'a> {
    pub agent: &'a Document<AgentSpec>,
    pub listeners: &'a Listeners,
    pub service: &'a ServiceName,
    pub entries: &'a [Document<ServiceEntrySpec>],
    pub registry: &'a Registry,
    pub sidecar: &'a SidecarScope,
    /// The mesh config's `outboundTrafficPolicy.mode`.
    pub mesh_mode: Option<OutboundTrafficMode>,
}

/// Compiles the capture settings; errors name the Agent's field.
pub(super) fn compile(input: &CaptureInput<'_>, diags: &mut Diagnostics) -> Capture {
    let spec = &input.agent.spec;
    let loc = &input.agent.location;
    let mode = match spec.capture.mode.as_deref() {
        None | Some("NONE") => InterceptionMode::None,
        Some("REDIRECT") => InterceptionMode::Redirect,
        Some(other) => {
            let msg = format!(
                "{other:?}: the interception mode is REDIRECT or NONE (TPROXY is not supported)"
            );
            diags.error(loc, Some("spec.capture.mode".into()), msg);
            InterceptionMode::None
        }
    };
    if mode == InterceptionMode::Redirect {
        redirect_listeners(input.listeners, loc, diags);
    }
    let agent_mode = spec.outbound_traffic_policy.mode.as_deref().and_then(|m| {
        let parsed = OutboundTrafficMode::parse(m);
        if parsed.is_none() {
            let msg = format!("{m:?}: the mode is ALLOW_ANY or REGISTRY_ONLY");
            diags.error(loc, Some("spec.outboundTrafficPolicy.mode".into()), msg);
        }
        parsed
    });
    let inbound_app = match (&spec.inbound.app, mode) {
        (None, InterceptionMode::Redirect) => InboundApp::OriginalDestination,
        _ => InboundApp::Fixed(input.listeners.app),
    };
    let declaring = declaring_entry(input.entries, input.service);
    let outbound_traffic_policy = input
        .sidecar
        .mode
        .or(agent_mode)
        .or(input.mesh_mode)
        .unwrap_or_default();
    let egress_proxy = input.sidecar.egress_proxy.as_ref().map(|proxy| {
        let cluster = input.registry.visible_cluster(
            &proxy.host,
            proxy.subset.as_deref(),
            proxy.port,
        );
        match cluster {
            Some(cluster) => EgressProxy::Cluster(cluster),
            None => {
                let msg = format!(
                    "{} port {}{} is not a service this workload sees (its registry and the Sidecar's egress hosts); traffic outside the registry gets 503 NC, as Envoy fails a route to a cluster it was not given",
                    proxy.host,
                    proxy.port,
                    proxy.subset.as_deref().map(|s| format!(" (subset {s})")).unwrap_or_default()
                );
                diags.warn(
                    &proxy.location,
                    Some("spec.outboundTrafficPolicy.egressProxy".into()),
                    msg,
                );
                EgressProxy::Missing
            }
        }
    });
    Capture {
        mode,
        outbound_port: input.listeners.outbound.port(),
        inbound_port: input.listeners.inbound.port(),
        inbound_app,
        inbound_ports: inbound_ports(declaring),
        service_ports: service_ports(declaring, mode),
        protocol_detection_timeout: spec
            .capture
            .protocol_detection_timeout
            .as_ref()
            .map_or(DEFAULT_PROTOCOL_DETECTION_TIMEOUT, |d| d.get()),
        outbound_traffic_policy,
        sidecar: input.sidecar.name.clone(),
        egress_proxy: egress_proxy
            .filter(|_| outbound_traffic_policy == OutboundTrafficMode::AllowAny),
        destinations: destinations(input.registry, mode == InterceptionMode::Redirect, diags),
    }
}

/// A workload whose traffic is not captured and that has no registry of
/// its own to capture for (the ingress gateway: it listens on its Gateway
/// ports, and routes by its own tables): interception off, the listeners'
/// ports, no service ports, the default traffic policy, no destinations.
pub(super) fn uncaptured(listeners: &Listeners) -> Capture {
    Capture {
        mode: InterceptionMode::None,
        outbound_port: listeners.outbound.port(),
        inbound_port: listeners.inbound.port(),
        inbound_app: InboundApp::Fixed(listeners.app),
        inbound_ports: BTreeMap::new(),
        service_ports: Default::default(),
        protocol_detection_timeout: DEFAULT_PROTOCOL_DETECTION_TIMEOUT,
        outbound_traffic_policy: OutboundTrafficMode::default(),
        sidecar: None,
        egress_proxy: None,
        destinations: Destinations::default(),
    }
}

/// `tracemesh iptables` redirects outbound connections to the loopback
/// address and inbound ones to the pod's own: the listeners must be there.
fn redirect_listeners(listeners: &Listeners, loc: &Location, diags: &mut Diagnostics) {
    let out = listeners.outbound.ip();
    if !(out.is_loopback() || out.is_unspecified()) {
        let msg = format!(
            "{out} cannot receive redirected connections: with capture, listen on 127.0.0.1, ::1 or 0.0.0.0"
        );
        diags.error(loc, Some("spec.outbound.listen".into()), msg);
    }
    let inbound = listeners.inbound.ip();
    if !inbound.is_unspecified() {
        let msg = format!(
            "{inbound} cannot receive redirected connections: with capture, listen on 0.0.0.0 or ::"
        );
        diags.error(loc, Some("spec.inbound.listen".into()), msg);
    }
}

/// The ServiceEntry that declares this workload's own service.
fn declaring_entry<'a>(
    entries: &'a [Document<ServiceEntrySpec>],
    service: &ServiceName,
) -> Option<&'a ServiceEntrySpec> {
    entries
        .iter()
        .find(|doc| {
            // The entry's hosts are literal, as the registry keys them.
            doc.spec
                .hosts
                .iter()
                .any(|h| service_entry_host(h) == service.host)
        })
        .map(|doc| &doc.spec)
}

/// The protocols this workload's own service declares, by the port its
/// application listens on (`targetPort`, else `number`).
fn inbound_ports(declaring: Option<&ServiceEntrySpec>) -> BTreeMap<u16, Protocol> {
    declaring
        .into_iter()
        .flat_map(|spec| &spec.ports)
        .filter_map(|p| {
            let port = u16::try_from(p.target_port.unwrap_or(p.number)).ok()?;
            Some((port, Protocol::parse(&p.protocol)?))
        })
        .collect()
}

/// The ports this workload's own service declares (`number`), by each port
/// a request for them can arrive on: the `targetPort` (else `number`) and
/// every endpoint's port of that name. Without capture requests arrive on
/// the inbound listener's own port, which a service with one port maps to
/// that port; captured, the original destination must be a declared one.
fn service_ports(declaring: Option<&ServiceEntrySpec>, mode: InterceptionMode) -> ServicePorts {
    let ports = declaring.map_or(&[][..], |spec| &spec.ports[..]);
    let mut by_arrival = BTreeMap::new();
    for p in ports {
        let Ok(number) = u16::try_from(p.number) else {
            continue;
        };
        let endpoint_ports = declaring
            .into_iter()
            .flat_map(|spec| &spec.endpoints)
            .filter_map(|e| e.ports.get(&p.name).copied());
        for arrival in endpoint_ports.chain([p.target_port.unwrap_or(p.number)]) {
            if let Ok(arrival) = u16::try_from(arrival) {
                by_arrival.entry(arrival).or_insert(number);
            }
        }
    }
    let only = match ports {
        [p] if mode == InterceptionMode::None => u16::try_from(p.number).ok(),
        _ => None,
    };
    ServicePorts { by_arrival, only }
}

/// Every visible service's addresses, endpoint addresses and (for
/// services without addresses) ports, in declaration order. Conflicts are
/// warned about only when connections are captured: explicit mode routes
/// by host name and never reads the map.
fn destinations(registry: &Registry, captured: bool, diags: &mut Diagnostics) -> Destinations {
    let mut map = Destinations::default();
    let mut services: Vec<_> = registry.services.values().collect();
    services.sort_by_key(|s| s.order);
    for service in &services {
        let Some(clusters) = service.clusters.get(&None) else {
            continue;
        };
        for cluster in clusters {
            if service.addresses.is_empty()
                && let Err(taken) = map.add_port(cluster)
                && captured
            {
                let msg = format!(
                    "port {} of {} ({}) has no address and cannot share the port with {}, declared first: captured connections to unknown addresses on port {} go there",
                    cluster.port, cluster.service.host, cluster.protocol, taken.by, cluster.port
                );
                diags.warn(&service.location, Some("spec.ports".into()), msg);
            }
            for net in &service.addresses {
                if let Err(taken) = map.add_address(*net, cluster)
                    && captured
                {
                    let msg = format!(
                        "{net} port {} of {} is already the address of {}, which keeps it",
                        cluster.port, cluster.service.host, taken.by
                    );
                    diags.warn(&service.location, Some("spec.addresses".into()), msg);
                }
            }
        }
    }
    // Endpoints after every service address, so a VIP always wins.
    for service in &services {
        for cluster in service.clusters.get(&None).into_iter().flatten() {
            for endpoint in &cluster.endpoints {
                // An address a DNS name resolved to is no endpoint a
                // caller picks: its connections reach the service's port,
                // balanced (Istio builds no listener for it).
                if let UpstreamAddr::Socket(addr) = endpoint.address
                    && endpoint.resolved_from.is_none()
                {
                    map.add_endpoint(addr, cluster, endpoint);
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::compile::{Compiled, compile_text};
    use crate::config::diagnostics::ConfigRejected;
    use crate::model::capture::{Destination, InboundApp, InterceptionMode, OutboundTrafficMode};
    use crate::model::live::LiveState;
    use crate::model::service::Protocol;

    const REGISTRY: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage.default.svc.cluster.local]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 9443, name: tls, protocol: TLS}
  endpoints: [{address: 10.244.0.10}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.96.0.20, "fd00:96::20"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]
  endpoints: [{address: 10.244.0.12}, {address: "fd00:244::12"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: corp-db, namespace: ext}
spec:
  hosts: [db.corp.example.com]
  addresses: [192.168.0.0/16]
  resolution: NONE
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: ext}
spec:
  hosts: [httpbin.org]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"#;

    fn agent(spec: &str) -> String {
        format!(
            "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {{name: productpage-v1, namespace: default}}\nspec:\n  service: productpage\n  labels: {{app: productpage}}\n{spec}{REGISTRY}"
        )
    }

    fn compile(yaml: &str) -> Result<Compiled, ConfigRejected> {
        let file: Arc<str> = Arc::from("mesh.yaml");
        compile_text(&file, yaml, 1, &LiveState::default())
    }

    fn name(d: Option<Destination<'_>>) -> String {
        match d {
            Some(Destination::Service(c)) => c.name.clone(),
            Some(Destination::Endpoint { cluster, endpoint }) => {
                format!("{} at {}", cluster.name, endpoint.address)
            }
            Some(Destination::Port(p)) => format!("port of {}", p.clusters[0].name),
            None => "outside".into(),
        }
    }

    #[test]
    fn redirect_mode_compiles_the_destination_map() {
        let yaml = agent("  capture: {mode: REDIRECT, protocolDetectionTimeout: 250ms}\n");
        let compiled = compile(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let capture = &compiled.snapshot.capture;
        assert_eq!(capture.mode, InterceptionMode::Redirect);
        assert_eq!(
            (capture.outbound_port, capture.inbound_port),
            (15001, 15006)
        );
        assert_eq!(
            capture.inbound_app,
            InboundApp::OriginalDestination,
            "no inbound.app in capture mode"
        );
        assert_eq!(
            capture.protocol_detection_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            capture.outbound_traffic_policy,
            OutboundTrafficMode::AllowAny
        );
        assert_eq!(
            capture
                .inbound_ports
                .iter()
                .map(|(p, proto)| (*p, *proto))
                .collect::<Vec<_>>(),
            [(8080, Protocol::Http), (9443, Protocol::Tls)],
            "this workload's own ports, by target port"
        );
        // Inbound spans are named by the declared port an original
        // destination stands for; an undeclared one maps to none.
        let ports = &capture.service_ports;
        assert_eq!(
            [8080, 9443, 9080, 15006].map(|p| ports.addressed(p)),
            [Some(9080), Some(9443), None, None]
        );
        for (dst, want) in [
            (
                "10.96.0.20:9080",
                "outbound|9080||reviews.default.svc.cluster.local",
            ),
            (
                "[fd00:96::20]:9080",
                "outbound|9080||reviews.default.svc.cluster.local",
            ),
            (
                "10.244.0.12:8080",
                "outbound|9080||reviews.default.svc.cluster.local at 10.244.0.12:8080",
            ),
            (
                "10.96.0.10:9443",
                "outbound|9443||productpage.default.svc.cluster.local",
            ),
            ("192.168.7.7:5432", "outbound|5432||db.corp.example.com"),
            ("93.184.216.34:80", "port of outbound|80||httpbin.org"),
            ("93.184.216.34:8080", "outside"),
        ] {
            let got = name(capture.destinations.lookup(dst.parse().unwrap()));
            assert_eq!(got, want, "{dst}");
        }
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(ToString::to_string)
            .collect();
        assert!(
            !warnings.iter().any(|w| w.contains("spec.capture")
                || w.contains("outboundTrafficPolicy")
                || w.contains("spec.addresses")),
            "capture is enforced: {warnings:#?}"
        );
    }

    #[test]
    fn explicit_mode_keeps_the_default_application() {
        let compiled = compile(&agent("")).unwrap_or_else(|e| panic!("{e}"));
        let capture = &compiled.snapshot.capture;
        assert_eq!(capture.mode, InterceptionMode::None);
        assert_eq!(
            capture.inbound_app,
            InboundApp::Fixed("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            compiled.snapshot.listeners.app,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            capture.protocol_detection_timeout,
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn bad_modes_and_unreachable_listeners_name_their_field() {
        let yaml = agent("  capture: {mode: TPROXY}\n  outboundTrafficPolicy: {mode: DENY}\n");
        let Err(ConfigRejected(diags)) = compile(&yaml) else {
            panic!("accepted");
        };
        let errors: Vec<String> = diags.errors().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.capture.mode") && e.contains("TPROXY")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.outboundTrafficPolicy.mode")),
            "{errors:#?}"
        );
        let yaml = agent(
            "  capture: {mode: REDIRECT}\n  inbound: {listen: 127.0.0.1:15006}\n  outbound: {listen: 10.1.1.1:15001}\n",
        );
        let Err(ConfigRejected(diags)) = compile(&yaml) else {
            panic!("accepted");
        };
        let errors: Vec<String> = diags.errors().map(ToString::to_string).collect();
        assert!(
            errors.iter().any(|e| e.contains("spec.inbound.listen")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("spec.outbound.listen")),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_sidecar_limits_what_is_loaded_and_sets_the_policy() {
        let yaml = format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: productpage, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  egress:
  - hosts: [./reviews.default.svc.cluster.local, ext/*]
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [productpage]
  http: [{{route: [{{destination: {{host: productpage}}}}]}}]
",
            agent("  capture: {mode: REDIRECT}\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n")
        );
        let compiled = compile(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let capture = &compiled.snapshot.capture;
        assert_eq!(capture.sidecar.as_deref(), Some("default/productpage"));
        assert_eq!(
            capture.outbound_traffic_policy,
            OutboundTrafficMode::RegistryOnly,
            "the Sidecar overrides the Agent"
        );
        let at = |s: &str| name(capture.destinations.lookup(s.parse().unwrap()));
        assert_eq!(
            at("10.96.0.20:9080"),
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(at("192.168.1.1:5432"), "outbound|5432||db.corp.example.com");
        assert_eq!(
            at("10.96.0.10:9080"),
            "outside",
            "productpage is not in the egress hosts"
        );
        let clusters: Vec<&str> = compiled
            .snapshot
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            !clusters
                .iter()
                .any(|c| c.ends_with("productpage.default.svc.cluster.local")),
            "{clusters:?}"
        );
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(ToString::to_string)
            .collect();
        // Its VirtualService is not imported either, as Istio's
        // `SelectVirtualServices` leaves out one whose hosts the egress
        // hosts do not cover.
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("VirtualService default/productpage")
                    && w.contains("outside the egress hosts of Sidecar default/productpage")),
            "{warnings:#?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("Sidecar is not used")),
            "the Sidecar is used now: {warnings:#?}"
        );
    }
}
