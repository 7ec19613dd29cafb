//! The Agent document: identity, listeners and the process settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::agent::{AgentSpec, DEFAULT_APP, IdentitySpec};
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::host::resolve_short_name;
use crate::model::bootstrap::{
    AccessLogTarget, Bootstrap, BootstrapToken, CaSource, CertificateFiles, CertificateSource,
    DownstreamTimeouts, MAX_DOWNSTREAM_TIMEOUT, MAX_STALLED_STREAMS_BOUND, MIN_EXPORT_TIMEOUT,
    Otlp, OtlpProtocol, Telemetry,
};
use crate::model::mesh::{DEFAULT_TRUST_DOMAIN, TrustDomainBundle};
use crate::model::service::{Protocol, ServiceName};
use crate::model::{Identity, Listeners};
use crate::path::PathNormalization;
use crate::telemetry::peer_metadata;
use crate::telemetry::series::MAX_SERIES_BOUND;

/// The compiled Agent document.
pub(super) struct Agent {
    pub identity: Arc<Identity>,
    pub listeners: Listeners,
    /// The Agent has a certificate source, so it can speak mTLS.
    pub has_identity: bool,
    /// How request paths are normalized: the Agent's setting, else the
    /// mesh config's, else BASE.
    pub path_normalization: PathNormalization,
    /// The process settings.
    pub bootstrap: Bootstrap,
    /// The Agent sets `spec.telemetry.otlp.endpoint`: it wins over the
    /// workload's tracing provider.
    pub explicit_otlp_endpoint: bool,
    /// The mesh's root namespace: policies there without a selector apply
    /// mesh-wide.
    pub root_namespace: String,
    /// The workload's trust domain and the mesh's aliases of it.
    pub trust_domains: Arc<TrustDomainBundle>,
}

/// The trust domain a workload's identity is in: its own (`spec.trustDomain`
/// of its Agent or IngressGateway) when set, else the mesh config's
/// `trustDomain`, else Istio's default `cluster.local`.
pub(super) fn trust_domain<'a>(
    own: Option<&'a str>,
    mesh: &'a super::mesh::MeshDefaults,
) -> &'a str {
    own.or(mesh.trust_domain.as_deref())
        .unwrap_or(DEFAULT_TRUST_DOMAIN)
}

/// The one Agent document of the file.
pub(super) fn single_agent<'a>(
    file: &Arc<str>,
    agents: &'a [Document<AgentSpec>],
    diags: &mut Diagnostics,
) -> Option<&'a Document<AgentSpec>> {
    match agents {
        [one] => Some(one),
        [] => {
            // An Agent document that could not be read is named by its own
            // error already; saying there is none would mislead.
            if !diags.has_errors_in_kind("Agent") {
                let msg = "no `apiVersion: tracemesh.io/v1, kind: Agent` document: the agent needs its bootstrap";
                diags.error(&Location::file(file), None, msg);
            }
            None
        }
        [_, rest @ ..] => {
            for extra in rest {
                diags.error(
                    &extra.location,
                    None,
                    "a file holds one Agent document; this is a second one",
                );
            }
            None
        }
    }
}

pub(super) fn compile(
    doc: &Document<AgentSpec>,
    mesh: &super::mesh::MeshDefaults,
    diags: &mut Diagnostics,
) -> Option<Agent> {
    let spec = &doc.spec;
    let loc = &doc.location;
    let errors_before = diags.errors().count();
    if doc.metadata.name.is_empty() {
        diags.error(
            loc,
            Some("metadata.name".into()),
            "the workload name is required",
        );
    }
    let namespace = doc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if spec.service.trim().is_empty() {
        diags.error(
            loc,
            Some("spec.service".into()),
            "the service this sidecar fronts is required",
        );
    }
    if !(0.0..=1.0).contains(&spec.telemetry.sampling) {
        diags.error(
            loc,
            Some("spec.telemetry.sampling".into()),
            "must be between 0.0 and 1.0",
        );
    }
    let otlp_protocol = match spec.telemetry.otlp.protocol.as_str() {
        "grpc" => Some(OtlpProtocol::Grpc),
        "http" => Some(OtlpProtocol::HttpProtobuf),
        _ => {
            diags.error(
                loc,
                Some("spec.telemetry.otlp.protocol".into()),
                "must be `grpc` or `http`",
            );
            None
        }
    };
    // The endpoint: span export speaks plain HTTP to a host and port (no
    // TLS; gRPC calls its own path, OTLP/HTTP posts to the one given).
    if let Some(endpoint) = &spec.telemetry.otlp.endpoint
        && let Err(why) = check_otlp_endpoint(endpoint)
    {
        diags.error(loc, Some("spec.telemetry.otlp.endpoint".into()), why);
    }
    // An export's time: with none, every export would fail unsent.
    if spec.telemetry.otlp.timeout.get() < MIN_EXPORT_TIMEOUT {
        diags.error(
            loc,
            Some("spec.telemetry.otlp.timeout".into()),
            "must be at least 1ms: every export would time out unanswered",
        );
    }
    // The exporter's headers, checked here so that a bad one is a config
    // error naming its field (never its value: often an API key).
    for (name, value) in &spec.telemetry.otlp.headers {
        let field = format!("spec.telemetry.otlp.headers.{name}");
        if http::HeaderName::try_from(name.to_ascii_lowercase()).is_err() {
            diags.error(loc, Some(field.clone()), "is not a valid header name");
        } else if otlp_protocol == Some(OtlpProtocol::Grpc)
            && name.to_ascii_lowercase().ends_with("-bin")
        {
            diags.error(
                loc,
                Some(field.clone()),
                "is binary gRPC metadata (`-bin`), which a configured text value cannot be",
            );
        }
        if http::HeaderValue::try_from(value.as_str()).is_err() {
            diags.error(loc, Some(field), super::validate::INVALID_HEADER_VALUE);
        }
    }
    let max_stalled = spec.overload.max_stalled_streams;
    if !(1..=MAX_STALLED_STREAMS_BOUND).contains(&max_stalled) {
        diags.error(
            loc,
            Some("spec.overload.maxStalledStreams".into()),
            format!(
                "{max_stalled} is out of range: must be between 1 and {MAX_STALLED_STREAMS_BOUND}"
            ),
        );
    }
    let max_series = spec.telemetry.max_series_per_metric;
    if !(1..=MAX_SERIES_BOUND).contains(&max_series) {
        diags.error(
            loc,
            Some("spec.telemetry.maxSeriesPerMetric".into()),
            format!("{max_series} is out of range: must be between 1 and {MAX_SERIES_BOUND}"),
        );
    }
    let mut timeout = |field: &str, value: Duration| {
        if value > MAX_DOWNSTREAM_TIMEOUT {
            diags.error(
                loc,
                Some(field.into()),
                format!("{value:?} is longer than the maximum, 24h (0s turns it off)"),
            );
        } else if !value.is_zero() && value < Duration::from_millis(1) {
            diags.error(
                loc,
                Some(field.into()),
                format!("{value:?} is shorter than the minimum, 1ms (0s turns it off)"),
            );
        }
        (!value.is_zero()).then_some(value)
    };
    let downstream = DownstreamTimeouts {
        idle: timeout(
            "spec.downstream.idleTimeout",
            spec.downstream.idle_timeout.get(),
        ),
        stream_idle: timeout(
            "spec.downstream.streamIdleTimeout",
            spec.downstream.stream_idle_timeout.get(),
        ),
    };
    if spec.concurrency == 0 || spec.concurrency > 256 {
        diags.error(
            loc,
            Some("spec.concurrency".into()),
            "must be between 1 and 256",
        );
    }
    let mut addr = |field: &str, value: &str| -> Option<SocketAddr> {
        value
            .parse()
            .map_err(|_| {
                diags.error(
                    loc,
                    Some(field.into()),
                    format!("{value:?} is not an ip:port address"),
                )
            })
            .ok()
    };
    let inbound = addr("spec.inbound.listen", &spec.inbound.listen);
    let app = addr(
        "spec.inbound.app",
        spec.inbound.app.as_deref().unwrap_or(DEFAULT_APP),
    );
    let outbound = addr("spec.outbound.listen", &spec.outbound.listen);
    let admin = addr("spec.admin.listen", &spec.admin.listen);
    let outbound_tcp: Vec<Option<SocketAddr>> = spec
        .outbound
        .tcp
        .iter()
        .enumerate()
        .map(|(i, l)| addr(&format!("spec.outbound.tcp[{i}].listen"), &l.listen))
        .collect();
    listeners_apart(
        &[
            ("spec.inbound.listen", inbound),
            ("spec.outbound.listen", outbound),
            ("spec.admin.listen", admin),
        ],
        &outbound_tcp,
        spec.inbound.app.as_ref().and(app),
        loc,
        diags,
    );
    let app_protocol = Protocol::parse(&spec.inbound.app_protocol).filter(|p| *p != Protocol::Auto);
    if app_protocol.is_none() {
        let msg = "must be HTTP, HTTP2, GRPC or TCP";
        diags.error(loc, Some("spec.inbound.appProtocol".into()), msg);
    }
    let trust_domain = trust_domain(spec.trust_domain.as_deref(), mesh);
    let spiffe = tracemesh_ca::SpiffeId::new(trust_domain, &namespace, &spec.service_account);
    let trust_domains = Arc::new(TrustDomainBundle::new(
        trust_domain,
        &mesh.trust_domain_aliases,
    ));
    if let Err(e) = &spiffe {
        diags.error(loc, Some("spec.serviceAccount".into()), e.to_string());
    }
    validate_identity(spec, loc, diags);
    let path_normalization = match spec.path_normalization.normalization.as_deref() {
        None => mesh.path_normalization.unwrap_or_default(),
        Some(name) => PathNormalization::parse(name).unwrap_or_else(|| {
            let msg =
                format!("unknown {name:?} (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)");
            diags.error(
                loc,
                Some("spec.pathNormalization.normalization".into()),
                msg,
            );
            PathNormalization::default()
        }),
    };
    if diags.errors().count() > errors_before {
        return None;
    }
    let identity = identity(doc, &namespace, inbound?, spiffe.ok()?);
    let telemetry = &spec.telemetry;
    let bootstrap = Bootstrap {
        concurrency: spec.concurrency,
        drain: spec.drain_duration.get(),
        num_trusted_proxies: spec.num_trusted_proxies,
        xfcc: crate::tls::xfcc::XfccPolicy::SIDECAR_INBOUND,
        telemetry: Telemetry {
            otlp: Otlp {
                endpoint: otlp_url(
                    telemetry
                        .otlp
                        .endpoint
                        .as_deref()
                        .unwrap_or(crate::config::agent::DEFAULT_OTLP_ENDPOINT),
                    otlp_protocol?,
                ),
                protocol: otlp_protocol?,
                headers: telemetry.otlp.headers.clone().into_iter().collect(),
                timeout: telemetry.otlp.timeout.get(),
            },
            sampling: telemetry.sampling,
            max_queued_spans: telemetry.max_queued_spans.max(1),
            flush_interval: telemetry.flush_interval.get(),
            reply_details: telemetry.reply_details,
            max_series_per_metric: telemetry.max_series_per_metric,
        },
        access_log: spec
            .access_log
            .enabled
            .then(|| match spec.access_log.path.as_deref() {
                None | Some("-" | "/dev/stdout") => AccessLogTarget::Stdout,
                Some(path) => AccessLogTarget::File(PathBuf::from(path)),
            }),
        certificate: spec.identity.as_ref().and_then(certificate_source),
        downstream,
        max_stalled_streams: max_stalled,
    };
    Some(Agent {
        bootstrap,
        has_identity: spec.identity.is_some(),
        explicit_otlp_endpoint: telemetry.otlp.endpoint.is_some(),
        path_normalization,
        root_namespace: mesh.mesh.root_namespace.clone(),
        trust_domains,
        identity: Arc::new(identity),
        listeners: Listeners {
            inbound: inbound?,
            app: app?,
            app_protocol: app_protocol?,
            outbound: outbound?,
            outbound_tcp: outbound_tcp.into_iter().collect::<Option<_>>()?,
            admin: admin?,
        },
    })
}

/// Why `endpoint` cannot be an OTLP endpoint of the agent's, if it cannot:
/// it must be `http://host[:port][/path]`.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| "is not a URL: must be http://host[:port]")?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), _) => Err("https is not supported for span export: use http://host[:port]"),
        _ => Err("must be http://host[:port]"),
    }
}

/// The URL spans go to: OTLP/HTTP posts to `/v1/traces` (added unless the
/// endpoint already ends with it); gRPC takes the endpoint as written.
fn otlp_url(endpoint: &str, protocol: OtlpProtocol) -> String {
    if protocol == OtlpProtocol::HttpProtobuf && !endpoint.ends_with("/v1/traces") {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    }
}

/// The certificate source needs exactly one of `files` and `ca`, and a token for the CA.
fn validate_identity(spec: &AgentSpec, loc: &Location, diags: &mut Diagnostics) {
    let Some(identity) = &spec.identity else {
        return;
    };
    match (&identity.files, &identity.ca) {
        (Some(_), Some(_)) | (None, None) => {
            diags.error(
                loc,
                Some("spec.identity".into()),
                "set exactly one of `files` and `ca`",
            );
        }
        (None, Some(ca)) if ca.token.is_none() && ca.token_file.is_none() => {
            diags.error(
                loc,
                Some("spec.identity.ca".into()),
                "a bootstrap `token` or `tokenFile` is required",
            );
        }
        _ => {}
    }
}

/// Istio's default workload certificate lifetime.
const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The certificate source, once `validate_identity` found it whole.
fn certificate_source(spec: &IdentitySpec) -> Option<CertificateSource> {
    if let Some(files) = &spec.files {
        return Some(CertificateSource::Files(CertificateFiles {
            cert_chain: PathBuf::from(&files.cert_chain),
            private_key: PathBuf::from(&files.private_key),
            root_cert: PathBuf::from(&files.root_cert),
        }));
    }
    let ca = spec.ca.as_ref()?;
    let token = match (&ca.token, &ca.token_file) {
        (Some(token), _) => BootstrapToken::Inline(token.clone()),
        (None, Some(file)) => BootstrapToken::File(PathBuf::from(file)),
        (None, None) => return None,
    };
    Some(CertificateSource::Ca(CaSource {
        address: ca.address.clone(),
        root_cert: PathBuf::from(&ca.root_cert),
        token,
        lifetime: ca
            .lifetime
            .map_or(DEFAULT_CERTIFICATE_LIFETIME, |l| l.get()),
    }))
}

fn identity(
    doc: &Document<AgentSpec>,
    namespace: &str,
    inbound: SocketAddr,
    spiffe: tracemesh_ca::SpiffeId,
) -> Identity {
    let spec = &doc.spec;
    let workload = doc.metadata.name.clone();
    let label = |k: &str| spec.labels.get(k).cloned();
    let app = label("app.kubernetes.io/name").or_else(|| label("app"));
    let version = label("app.kubernetes.io/version").or_else(|| label("version"));
    let canonical_service = label("service.istio.io/canonical-name")
        .or_else(|| app.clone())
        .unwrap_or_else(|| workload.clone());
    let canonical_revision = label("service.istio.io/canonical-revision")
        .or_else(|| version.clone())
        .unwrap_or_else(|| "latest".into());
    let cluster_id = "Kubernetes".to_owned();
    let fqdn = resolve_short_name(&spec.service, namespace);
    let peer_metadata = peer_metadata::encode(peer_metadata::LocalWorkload {
        workload: &workload,
        namespace,
        cluster_id: &cluster_id,
        labels: &spec.labels,
        canonical_service: &canonical_service,
        canonical_revision: &canonical_revision,
    });
    let peer_metadata_id =
        peer_metadata::encode_id(&workload, namespace, &inbound.ip().to_string());
    let app = app.unwrap_or_else(|| "unknown".into());
    let version = version.unwrap_or_else(|| "unknown".into());
    let peer = Arc::new(crate::model::peer::PeerInfo {
        workload: workload.clone(),
        namespace: namespace.to_owned(),
        app: app.clone(),
        version: version.clone(),
        canonical_service: canonical_service.clone(),
        canonical_revision: canonical_revision.clone(),
        cluster: cluster_id.clone(),
    });
    Identity {
        peer,
        principal: Arc::from(spiffe.to_string()),
        spiffe,
        has_certificate: spec.identity.is_some(),
        service: Arc::new(ServiceName::new(&fqdn, namespace)),
        namespace: namespace.to_owned(),
        labels: spec.labels.clone(),
        app,
        version,
        canonical_service,
        canonical_revision,
        cluster_id,
        peer_metadata,
        peer_metadata_id,
        workload,
    }
}

/// Two listen addresses that would take the same connections: the same
/// port on the same address, or on a wildcard address and another it
/// covers — `0.0.0.0` the IPv4 ones, `[::]` every one (the listeners are
/// dual-stack: `IPV6_V6ONLY` is not set). `0.0.0.0` and `[::1]` on one
/// port are apart. Port 0 (any free port) gives each its own.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (covers(a, b) || covers(b, a))
}

/// Whether a listener on `wide` takes connections to `addr` (ports aside).
fn covers(wide: SocketAddr, addr: SocketAddr) -> bool {
    wide.ip() == addr.ip() || (wide.ip().is_unspecified() && (wide.is_ipv6() || addr.is_ipv4()))
}

/// Refuses listeners that share an address (every socket is bound with
/// SO_REUSEPORT, so both would bind and the kernel would split
/// connections between them at random, as Envoy refuses two listeners on
/// one address), and an app reached at the inbound listener's own address
/// (each request would come back to the agent). Names the later field.
fn listeners_apart(
    fixed: &[(&str, Option<SocketAddr>)],
    tcp: &[Option<SocketAddr>],
    app: Option<SocketAddr>,
    loc: &Location,
    diags: &mut Diagnostics,
) {
    let tcp_fields: Vec<String> = (0..tcp.len())
        .map(|i| format!("spec.outbound.tcp[{i}].listen"))
        .collect();
    let all: Vec<(&str, SocketAddr)> = fixed
        .iter()
        .copied()
        .chain(
            tcp_fields
                .iter()
                .map(String::as_str)
                .zip(tcp.iter().copied()),
        )
        .filter_map(|(field, addr)| Some((field, addr?)))
        .collect();
    for (i, (field, addr)) in all.iter().enumerate() {
        if let Some((earlier, other)) = all[..i].iter().find(|(_, a)| overlaps(*a, *addr)) {
            let msg = if other == addr {
                format!(
                    "{addr} is also {earlier}'s address: both would bind (SO_REUSEPORT) and the kernel would split connections between them at random"
                )
            } else {
                format!(
                    "{addr} overlaps {earlier} ({other}) on one port: the listener on the specific address would take its connections and the wildcard one the rest"
                )
            };
            diags.error(loc, Some((*field).to_owned()), msg);
        }
    }
    // The app on the inbound listener's own socket: the same address, or
    // a loopback or wildcard one under an inbound wildcard (a remote app
    // on the same port is another host's socket).
    let inbound = fixed.first().and_then(|(_, addr)| *addr);
    let local = |a: SocketAddr| a.ip().is_loopback() || a.ip().is_unspecified();
    if let (Some(app), Some(inbound)) = (app, inbound)
        && app.port() == inbound.port()
        && (app.ip() == inbound.ip() || (covers(inbound, app) && local(app)))
    {
        let msg = format!(
            "{app} is the inbound listener's own address: every request would come back to the agent"
        );
        diags.error(loc, Some("spec.inbound.app".into()), msg);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::compile::compile_text;

    fn errors(text: &str) -> Vec<String> {
        let file: Arc<str> = Arc::from("agent.yaml");
        match compile_text(&file, text, 1, &Default::default()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(rejected) => rejected.0.errors().map(ToString::to_string).collect(),
        }
    }

    /// An OTLP endpoint that is not `http://host[:port]`, a gRPC header
    /// that is binary metadata and a timeout of nothing are config errors
    /// naming their field, not an agent that fails to start or exports
    /// nothing.
    /// Which listeners share connections: `[::]` is dual-stack.
    #[test]
    fn listeners_overlap_within_a_family_only() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(super::overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(super::overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(super::overlaps(a("[::1]:80"), a("[::]:80")));
        assert!(!super::overlaps(a("0.0.0.0:80"), a("[::1]:80")));
        // `[::]` is dual-stack: it takes IPv4 connections too.
        assert!(super::overlaps(a("0.0.0.0:80"), a("[::]:80")));
        assert!(super::overlaps(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!super::overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!super::overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
    }

    #[test]
    fn an_otlp_endpoint_is_http_host_and_port_and_its_timeout_positive() {
        let agent = |endpoint: &str| {
            format!(
                "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {{name: a, namespace: default}}\nspec:\n  service: a\n  telemetry:\n    otlp: {{endpoint: \"{endpoint}\"}}\n"
            )
        };
        let bin = "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: a, namespace: default}\nspec:\n  service: a\n  telemetry:\n    otlp: {headers: {x-trace-bin: abc}}\n";
        let rejected = errors(bin);
        assert!(
            rejected
                .iter()
                .any(|e| e.contains("spec.telemetry.otlp.headers.x-trace-bin")),
            "{rejected:?}"
        );
        let no_time = "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: a, namespace: default}\nspec:\n  service: a\n  telemetry:\n    otlp: {timeout: 0s}\n";
        let rejected = errors(no_time);
        assert!(
            rejected
                .iter()
                .any(|e| e.contains("spec.telemetry.otlp.timeout") && e.contains("at least 1ms")),
            "{rejected:?}"
        );
        for endpoint in ["collector:4317", "https://collector:4317", "http://"] {
            let rejected = errors(&agent(endpoint));
            assert!(
                rejected
                    .iter()
                    .any(|e| e.contains("spec.telemetry.otlp.endpoint")
                        && e.contains("http://host[:port]")),
                "{endpoint}: {rejected:?}"
            );
        }
    }

    /// An Agent document with a wrong field is named by that error alone,
    /// not also called missing; a file without one still says so.
    #[test]
    fn an_unreadable_agent_document_is_not_also_called_missing() {
        let wrong_type = errors(
            "apiVersion: tracemesh.io/v1\nkind: Agent\nmetadata: {name: a, namespace: default}\nspec:\n  service: a\n  concurrency: \"lots\"\n",
        );
        assert_eq!(wrong_type.len(), 1, "{wrong_type:?}");
        assert!(wrong_type[0].contains("spec.concurrency"), "{wrong_type:?}");

        let none = errors(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: default}\nspec: {}\n",
        );
        assert!(
            none.iter()
                .any(|e| e.contains("no `apiVersion: tracemesh.io/v1, kind: Agent` document")),
            "{none:?}"
        );
    }
}
