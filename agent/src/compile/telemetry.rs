//! Telemetry resources → this workload's [`TelemetryPolicy`], with Istio's
//! scoping and precedence (istio/istio `pilot/pkg/model/telemetry.go`):
//!
//! - the resources that apply, weakest first: the root namespace's
//!   resource without a selector (mesh-wide), then the workload
//!   namespace's resource without a selector, then the resource in the
//!   workload's namespace whose `selector` matches its labels. Of several
//!   resources at one level the oldest applies (the others are warned
//!   about), ordered as Istio's `sortConfigByCreationTime` orders them: by
//!   `creationTimestamp`, then by name (one without a timestamp after any
//!   with one, in file order). `targetRef`/`targetRefs` attach
//!   to gateways and services of waypoints: sidecars skip the resource;
//! - `tracing`: a later entry's field replaces an earlier one's where it is
//!   set (`providers`, `randomSamplingPercentage`, `disableSpanReporting`;
//!   `customTags` as a whole, as Istio does); `match.mode` picks the side.
//!   No Telemetry tracing and no `defaultProviders.tracing`: the Agent's
//!   settings apply;
//! - `metrics`: the providers named last are in scope; overrides merge
//!   per side and metric, later over earlier, tag by tag; ALL_METRICS
//!   disabled turns the side off until a later override turns a metric on;
//! - `accessLogging`: the providers named last are in scope; for each, the
//!   last entry that reaches it decides (`disabled`, `filter`). Where
//!   tracemesh differs: an entry without `providers` applies its filter to
//!   the providers it inherits (Istio drops such a filter).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::bootstrap::Agent;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::telemetry::{ProviderRef, TelemetrySpec};
use crate::model::bootstrap::OtlpProtocol;
use crate::model::expr::Expression;
use crate::model::mesh::{Mesh, Provider, ProviderConfig};
use crate::model::telemetry::{
    AccessLogPolicy, CustomTag, IstioMetric, MetricOverride, MetricsPolicy, Side, SidePolicy,
    TagOverride, TagValue, TelemetryPolicy, TracingPolicy,
};

/// The sides a `match.mode` selects.
fn sides(mode: Option<&str>) -> &'static [Side] {
    match mode {
        Some("CLIENT") => &[Side::Client],
        Some("SERVER") => &[Side::Server],
        _ => &[Side::Client, Side::Server],
    }
}

fn names(providers: &[ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).collect()
}

/// The policy of the workload `boot` describes.
pub(super) fn compile(
    docs: &[Document<TelemetrySpec>],
    boot: &Agent,
    mesh: &Mesh,
    diags: &mut Diagnostics,
) -> TelemetryPolicy {
    let applying = applying(docs, boot, diags);
    check_providers(&applying, mesh, diags);
    let mut policy = TelemetryPolicy {
        sources: applying
            .iter()
            .map(|d| {
                let ns = d
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(&boot.identity.namespace);
                format!("{ns}/{}", d.metadata.name)
            })
            .collect(),
        mesh_sampling_percent: mesh.default_sampling_percent,
        ..TelemetryPolicy::default()
    };
    for side in [Side::Client, Side::Server] {
        let built = SidePolicy {
            tracing: tracing(&applying, mesh, side),
            metrics: metrics(&applying, mesh, side, diags),
            access_logs: access_logs(&applying, mesh, side),
        };
        match side {
            Side::Client => policy.client = built,
            Side::Server => policy.server = built,
        }
    }
    policy
}

fn namespace_wide(spec: &TelemetrySpec) -> bool {
    spec.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
        && spec.target_ref.is_none()
        && spec.target_refs.is_empty()
}

/// The resources that apply, weakest first.
fn applying<'a>(
    docs: &'a [Document<TelemetrySpec>],
    boot: &Agent,
    diags: &mut Diagnostics,
) -> Vec<&'a Document<TelemetrySpec>> {
    let own = boot.identity.namespace.as_str();
    let root = boot.root_namespace.as_str();
    let ns_of = |d: &'a Document<TelemetrySpec>| d.metadata.namespace.as_deref().unwrap_or(own);
    let docs = by_creation(docs);
    let mut out = Vec::new();
    let mut levels = vec![root];
    if own != root {
        levels.push(own);
    }
    for ns in levels {
        let mut wide = docs
            .iter()
            .filter(|d| ns_of(d) == ns && namespace_wide(&d.spec));
        if let Some(first) = wide.next() {
            out.push(*first);
            for extra in wide {
                let msg = format!(
                    "namespace {ns} already has an older Telemetry without a selector ({}); only the oldest applies, as in Istio",
                    first.metadata.name
                );
                diags.warn(&extra.location, None, msg);
            }
        }
    }
    // Every Telemetry of the workload's namespace that selects it, oldest
    // first, each over the ones before: Istio's `applicableTelemetries`
    // appends them all (`appendApplicableTelemetries`, since 1.21).
    for doc in docs.iter().copied().filter(|d| ns_of(d) == own) {
        if doc.spec.target_ref.is_some() || !doc.spec.target_refs.is_empty() {
            diags.warn(
                &doc.location,
                Some("spec.targetRefs".into()),
                "targets gateways and services of waypoints; sidecars skip it",
            );
            continue;
        }
        if !namespace_wide(&doc.spec)
            && doc
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&boot.identity.labels))
        {
            out.push(doc);
        }
    }
    out
}

/// `docs` oldest first, as Istio's `sortConfigByCreationTime` orders
/// them: by `creationTimestamp`, then by name; one without a timestamp
/// counts as created after any with one, in file order.
fn by_creation(docs: &[Document<TelemetrySpec>]) -> Vec<&Document<TelemetrySpec>> {
    let mut sorted: Vec<_> = docs.iter().collect();
    sorted.sort_by(|a, b| a.metadata.creation_order(&b.metadata));
    sorted
}

/// The provider named `name`, when it is of a kind `accepts`.
fn resolve(mesh: &Mesh, name: &str, accepts: fn(&ProviderConfig) -> bool) -> Option<Arc<Provider>> {
    mesh.provider(name).filter(|p| accepts(&p.config)).cloned()
}

fn is_otlp(c: &ProviderConfig) -> bool {
    matches!(c, ProviderConfig::OpenTelemetry(_))
}

fn is_prometheus(c: &ProviderConfig) -> bool {
    matches!(c, ProviderConfig::Prometheus)
}

/// The access-log providers the agent writes: JSON lines to a file
/// (`envoy` is standard output). `envoyOtelAls` is warned about and skipped.
fn is_log(c: &ProviderConfig) -> bool {
    matches!(c, ProviderConfig::FileAccessLog { .. })
}

/// One warning for each provider a Telemetry names that the mesh config
/// does not have, or that is not of a kind the agent implements for it.
fn check_providers(applying: &[&Document<TelemetrySpec>], mesh: &Mesh, diags: &mut Diagnostics) {
    fn each(
        mesh: &Mesh,
        loc: &Location,
        field: String,
        refs: &[ProviderRef],
        accepts: fn(&ProviderConfig) -> bool,
        what: &str,
        diags: &mut Diagnostics,
    ) {
        for (k, r) in refs.iter().enumerate() {
            let msg = match mesh.provider(&r.name) {
                None if mesh.rejected => continue,
                None => format!(
                    "no extension provider {:?} in the mesh config: no {what} goes to it",
                    r.name
                ),
                Some(p) if !accepts(&p.config) => format!(
                    "provider {:?} is not a {what} provider the agent implements; ignored",
                    r.name
                ),
                Some(_) => continue,
            };
            diags.warn(loc, Some(format!("{field}.providers[{k}].name")), msg);
        }
    }
    for doc in applying {
        let loc = &doc.location;
        for (i, t) in doc.spec.tracing.iter().enumerate() {
            let f = format!("spec.tracing[{i}]");
            each(mesh, loc, f, &t.providers, is_otlp, "tracing", diags);
        }
        for (i, m) in doc.spec.metrics.iter().enumerate() {
            let f = format!("spec.metrics[{i}]");
            each(mesh, loc, f, &m.providers, is_prometheus, "metrics", diags);
        }
        for (i, a) in doc.spec.access_logging.iter().enumerate() {
            let f = format!("spec.accessLogging[{i}]");
            each(mesh, loc, f, &a.providers, is_log, "access log", diags);
        }
    }
}

fn tracing(
    applying: &[&Document<TelemetrySpec>],
    mesh: &Mesh,
    side: Side,
) -> Option<TracingPolicy> {
    let defaults = &mesh.default_providers.tracing;
    let any = applying.iter().any(|d| !d.spec.tracing.is_empty());
    if !any && defaults.is_empty() && mesh.default_custom_tags.is_empty() {
        return None;
    }
    let mut chosen: Option<String> = defaults.first().cloned();
    let mut policy = TracingPolicy {
        provider: None,
        disabled: false,
        sampling_percent: mesh.default_sampling_percent,
        custom_tags: Vec::new(),
    };
    for doc in applying {
        for t in &doc.spec.tracing {
            let mode = t.matches.as_ref().and_then(|m| m.mode.as_deref());
            if !sides(mode).contains(&side) {
                continue;
            }
            if let Some(first) = t.providers.first() {
                chosen = Some(first.name.clone());
            }
            if let Some(off) = t.disable_span_reporting {
                policy.disabled = off;
            }
            if let Some(p) = t.random_sampling_percentage {
                policy.sampling_percent = Some(p);
            }
            if !t.custom_tags.is_empty() {
                policy.custom_tags = t
                    .custom_tags
                    .iter()
                    .filter_map(|(name, tag)| custom_tag(name, tag))
                    .collect();
            }
        }
    }
    // No Telemetry gives tags: the mesh config's, as Istio's
    // `configureCustomTags` falls back to them.
    if policy.custom_tags.is_empty() {
        policy.custom_tags = mesh.default_custom_tags.clone();
    }
    // No provider named anywhere: the Agent's own exporter reports, as
    // without any Telemetry. A name that resolves to nothing reports nothing
    // (warned above).
    if let Some(name) = chosen {
        policy.provider = resolve(mesh, &name, is_otlp);
        if policy.provider.is_none() {
            policy.disabled = true;
        }
    }
    Some(policy)
}

/// A `customTags` entry as the agent applies it (none for a `formatter`,
/// an unset environment variable without default, or a bad header name).
pub(super) fn custom_tag(
    name: &str,
    tag: &crate::config::telemetry::CustomTag,
) -> Option<CustomTag> {
    let value = if let Some(literal) = &tag.literal {
        TagValue::Literal(literal.value.clone())
    } else if let Some(env) = &tag.environment {
        TagValue::Literal(
            std::env::var(&env.name)
                .ok()
                .or_else(|| env.default_value.clone())?,
        )
    } else if let Some(header) = &tag.header {
        TagValue::Header {
            name: HeaderName::try_from(header.name.to_ascii_lowercase()).ok()?,
            default: header.default_value.clone(),
        }
    } else {
        return None; // `formatter`: warned by the field table
    };
    Some(CustomTag {
        name: name.to_owned(),
        value,
    })
}

#[derive(Default)]
struct Override {
    disabled: Option<bool>,
    tags: BTreeMap<String, TagOverride>,
}

fn metrics(
    applying: &[&Document<TelemetrySpec>],
    mesh: &Mesh,
    side: Side,
    diags: &mut Diagnostics,
) -> Option<MetricsPolicy> {
    let defaults = &mesh.default_providers.metrics;
    let entries: Vec<(&Document<TelemetrySpec>, usize)> = applying
        .iter()
        .flat_map(|d| (0..d.spec.metrics.len()).map(move |i| (*d, i)))
        .collect();
    if entries.is_empty() && defaults.is_empty() {
        return None;
    }
    let is_prometheus = |name: &String| resolve(mesh, name, is_prometheus).is_some();
    let mut in_scope = defaults.clone();
    for (doc, i) in &entries {
        let named = names(&doc.spec.metrics[*i].providers);
        if !named.is_empty() {
            in_scope = named;
        }
    }
    let mut policy = MetricsPolicy {
        disabled: !in_scope.iter().any(is_prometheus),
        overrides: Vec::new(),
    };
    if policy.disabled {
        return Some(policy);
    }
    let mut parent = defaults.clone();
    let mut all_off = false;
    let mut per_metric: BTreeMap<IstioMetric, Override> = BTreeMap::new();
    for (doc, i) in &entries {
        let m = &doc.spec.metrics[*i];
        let mut providers = names(&m.providers);
        if providers.is_empty() {
            providers = parent.clone();
        }
        parent = providers.clone();
        let reaches = providers
            .iter()
            .any(|p| in_scope.contains(p) && is_prometheus(p));
        if !reaches {
            continue;
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let sel = o.matches.as_ref();
            if !sides(sel.and_then(|s| s.mode.as_deref())).contains(&side) {
                continue;
            }
            let metric = sel.and_then(|s| s.metric.as_deref());
            let custom = sel.and_then(|s| s.custom_metric.as_deref());
            let all = custom.is_none() && metric.is_none_or(|m| m == "ALL_METRICS");
            if all && o.disabled == Some(true) {
                all_off = true;
                continue;
            }
            all_off = false;
            let targets: Vec<IstioMetric> = match (all, custom, metric) {
                (true, _, _) => IstioMetric::ALL.to_vec(),
                (false, custom, metric) => {
                    let (name, parsed) = match custom {
                        Some(name) => (name, IstioMetric::parse_custom(name)),
                        None => {
                            let name = metric.unwrap_or_default();
                            (name, IstioMetric::parse(name))
                        }
                    };
                    match parsed {
                        Some(m) => vec![m],
                        None => {
                            if sides(sel.and_then(|s| s.mode.as_deref()))[0] == side {
                                let msg = format!(
                                    "the agent serves no metric {name:?} (Istio's standard metrics only); the override changes nothing"
                                );
                                let field = format!("spec.metrics[{i}].overrides[{j}].match");
                                diags.warn(&doc.location, Some(field), msg);
                            }
                            Vec::new()
                        }
                    }
                }
            };
            for metric in targets {
                let entry = per_metric.entry(metric).or_default();
                if o.disabled.is_some() {
                    entry.disabled = o.disabled;
                }
                for (label, change) in &o.tag_overrides {
                    let compiled = match change.operation.as_deref() {
                        Some("REMOVE") => TagOverride::Remove(label.clone()),
                        _ => match change.value.as_deref().map(Expression::parse) {
                            Some(Ok(expr)) => TagOverride::Upsert(label.clone(), Arc::new(expr)),
                            // Refused by validation already.
                            _ => continue,
                        },
                    };
                    entry.tags.insert(label.clone(), compiled);
                }
            }
        }
    }
    policy.disabled = all_off;
    policy.overrides = per_metric
        .into_iter()
        .map(|(metric, o)| MetricOverride {
            metric,
            disabled: o.disabled.unwrap_or(false),
            tags: o.tags.into_values().collect(),
        })
        .collect();
    Some(policy)
}

fn access_logs(
    applying: &[&Document<TelemetrySpec>],
    mesh: &Mesh,
    side: Side,
) -> Option<Vec<AccessLogPolicy>> {
    let defaults = &mesh.default_providers.access_logging;
    let levels: Vec<&Document<TelemetrySpec>> = applying
        .iter()
        .copied()
        .filter(|d| !d.spec.access_logging.is_empty())
        .collect();
    if levels.is_empty() && defaults.is_empty() {
        return None;
    }
    // The providers named last (by entries of this side) are in scope.
    let mut in_scope = defaults.clone();
    for doc in &levels {
        let mut named: Vec<String> = Vec::new();
        for a in &doc.spec.access_logging {
            if sides(a.matches.as_ref().and_then(|m| m.mode.as_deref())).contains(&side) {
                for n in names(&a.providers) {
                    if !named.contains(&n) {
                        named.push(n);
                    }
                }
            }
        }
        if !named.is_empty() {
            in_scope = named;
        }
    }
    // provider → (disabled, filter)
    let mut decided: BTreeMap<String, (bool, Option<Arc<Expression>>)> = in_scope
        .iter()
        .map(|p| (p.clone(), (false, None)))
        .collect();
    let mut parent = defaults.clone();
    for doc in &levels {
        for a in &doc.spec.access_logging {
            let mut providers = names(&a.providers);
            if providers.is_empty() {
                providers = parent.clone();
            }
            parent = providers.clone();
            if !sides(a.matches.as_ref().and_then(|m| m.mode.as_deref())).contains(&side) {
                continue;
            }
            let filter = a
                .filter
                .as_ref()
                .and_then(|f| Expression::parse(&f.expression).ok())
                .map(Arc::new);
            for p in providers {
                if let Some(slot) = decided.get_mut(&p) {
                    *slot = (a.disabled.unwrap_or(false), filter.clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (name, (disabled, filter)) in decided {
        if let Some(provider) = resolve(mesh, &name, is_log) {
            out.push(AccessLogPolicy {
                provider,
                disabled,
                filter,
            });
        }
    }
    Some(out)
}

/// Where the span exporter sends, resolved once per compile: the Agent's
/// `spec.telemetry.otlp.endpoint` when it sets one; else the workload's
/// tracing provider when it is an `opentelemetry` extension provider (its
/// `service:port` over gRPC, or OTLP/HTTP at `http.path` with `http.timeout`
/// and `http.headers`); else the built-in collector the bootstrap already
/// holds. One exporter serves both sides: when CLIENT and SERVER select
/// different providers the SERVER side's wins, with a warning at `loc` (the
/// Agent document, where `spec.telemetry.otlp.endpoint` would settle it).
pub(super) fn resolve_exporter(
    boot: &mut Agent,
    policy: &TelemetryPolicy,
    loc: &Location,
    diags: &mut Diagnostics,
) {
    if boot.explicit_otlp_endpoint {
        return;
    }
    let otel = |side: Side| {
        let tracing = policy.side(side).tracing.as_ref()?;
        let provider = tracing.provider.as_ref()?;
        match &provider.config {
            ProviderConfig::OpenTelemetry(target) if !tracing.disabled => {
                Some((provider.name.as_str(), target))
            }
            _ => None,
        }
    };
    let chosen = match (otel(Side::Server), otel(Side::Client)) {
        (Some(server), Some(client)) => {
            if server.1 != client.1 {
                diags.warn(
                    loc,
                    Some("spec.telemetry.otlp.endpoint".into()),
                    format!(
                        "the SERVER side's tracing provider {:?} ({}) and the CLIENT side's {:?} \
                         ({}) differ; one exporter serves both, so spans of both sides go to \
                         {:?} (set spec.telemetry.otlp.endpoint to choose; Telemetry: {})",
                        server.0,
                        server.1.endpoint,
                        client.0,
                        client.1.endpoint,
                        server.0,
                        if policy.sources.is_empty() {
                            "none, mesh defaultProviders".to_owned()
                        } else {
                            policy.sources.join(", ")
                        },
                    ),
                );
            }
            server
        }
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return,
    };
    let target = chosen.1;
    let otlp = &mut boot.bootstrap.telemetry.otlp;
    otlp.endpoint.clone_from(&target.endpoint);
    otlp.protocol = if target.http {
        OtlpProtocol::HttpProtobuf
    } else {
        OtlpProtocol::Grpc
    };
    otlp.headers.clone_from(&target.headers);
    if let Some(timeout) = target.timeout {
        otlp.timeout = timeout;
    }
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
