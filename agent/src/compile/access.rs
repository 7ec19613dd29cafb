//! AuthorizationPolicies and RateLimitPolicies → what applies to this
//! workload: selected by namespace (the mesh's root namespace, `istio-system`
//! unless the mesh config says otherwise, applies mesh-wide) and by the workload's labels.

use std::sync::Arc;

use http::HeaderName;

use super::bootstrap::Agent;
use super::registry::Registry;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::documents::Document;
use crate::config::meta::{ObjectMeta, WorkloadSelector};
use crate::config::rate_limit::{RateLimitPolicySpec, RateLimitRule};
use crate::config::security::{
    AuthorizationPolicySpec, AuthorizationRule, Condition as RawCondition, Operation as RawOp,
    Source as RawSource,
};
use crate::config::security::{DRY_RUN_ANNOTATION, parse_go_bool};
use crate::ext_authz::upstream::AuthzUpstream;
use crate::ext_authz::{CommonSettings, ExtAuthzClient};
use crate::model::authz::{
    Authorization, Cidr, Condition, ConditionKey, CustomPolicy, Operation, Pattern, Policy,
    PseudoHeader, RequestPrincipal, Rule, Source, TemplatePart, Values,
};
use crate::model::live::LiveState;
use crate::model::mesh::{Mesh, ProviderConfig, TrustDomainBundle};
use crate::model::rate_limit::{BucketSettings, KeyKind, RateLimiter};

fn applies(
    meta: &ObjectMeta,
    selector: Option<&WorkloadSelector>,
    agent_namespace: &str,
    boot: &Agent,
) -> bool {
    let namespace = meta.namespace.as_deref().unwrap_or(agent_namespace);
    (namespace == boot.root_namespace || namespace == boot.identity.namespace)
        && selector.is_none_or(|s| s.matches(&boot.identity.labels))
}

/// Whether the AuthorizationPolicy is a dry run: evaluated and recorded,
/// never enforced (its [`DRY_RUN_ANNOTATION`], validated beforehand).
fn is_dry_run(metadata: &ObjectMeta) -> bool {
    metadata
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .and_then(|value| parse_go_bool(value))
        .unwrap_or(false)
}

/// The authorization policies of this workload.
pub(super) fn authorization(
    docs: &[Document<AuthorizationPolicySpec>],
    boot: &Agent,
    (mesh, registry, live): (&Mesh, &Registry, &LiveState),
    agent_namespace: &str,
    diags: &mut Diagnostics,
) -> Authorization {
    let mut authz = Authorization::default();
    let mut clients: Vec<(String, Arc<ExtAuthzClient>)> = Vec::new();
    let providers = Providers {
        mesh,
        registry,
        live,
    };
    for doc in docs {
        let spec = &doc.spec;
        let loc = &doc.location;
        let rules: Vec<Rule> = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    r,
                    &format!("spec.rules[{i}]"),
                    loc,
                    (boot.has_identity, &boot.trust_domains),
                    diags,
                )
            })
            .collect();
        let action = spec.action.as_deref().unwrap_or("ALLOW");
        if !matches!(action, "ALLOW" | "DENY" | "AUDIT" | "CUSTOM") {
            let msg = format!("action {action:?} is not supported (ALLOW, DENY, AUDIT, CUSTOM)");
            diags.error(loc, Some("spec.action".into()), msg);
            continue;
        }
        let dry_run = is_dry_run(&doc.metadata);
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            diags.warn(
                loc,
                Some("spec.targetRef".into()),
                "targets gateways only; sidecars skip it",
            );
            continue;
        }
        if !applies(&doc.metadata, spec.selector.as_ref(), agent_namespace, boot) {
            continue;
        }
        let namespace = doc.metadata.namespace.as_deref().unwrap_or(agent_namespace);
        let policy = Policy {
            name: format!("{namespace}/{}", doc.metadata.name),
            rules,
        };
        match action {
            "DENY" if dry_run => authz.dry_run_deny.push(policy),
            "ALLOW" if dry_run => authz.dry_run_allow.push(policy),
            // A dry run of an AUDIT policy records nothing an AUDIT policy
            // does not (validation warns of it).
            "AUDIT" if dry_run => {}
            "CUSTOM" => {
                let name = spec.provider.as_ref().map_or("", |p| p.name.as_str());
                if let Some(client) = custom_client(name, &providers, &mut clients, loc, diags) {
                    if let Some(first) = authz.custom.first()
                        && !first.provider.eq_ignore_ascii_case(name)
                    {
                        let msg = format!(
                            "CUSTOM policy {} already names provider {:?}: one provider per workload, as in Istio",
                            first.policy.name, first.provider
                        );
                        diags.error(loc, Some("spec.provider.name".into()), msg);
                        continue;
                    }
                    authz.custom.push(CustomPolicy {
                        policy,
                        provider: name.to_owned(),
                        client,
                    });
                }
            }
            "DENY" => authz.deny.push(policy),
            "AUDIT" => authz.audit.push(policy),
            _ => authz.allow.push(policy),
        }
    }
    authz
}

/// One rule, its principals rewritten into the mesh's trust domains
/// (`trust_domains`), as Istio's `MigrateTrustDomain` rewrites them.
fn rule(
    raw: &AuthorizationRule,
    field: &str,
    loc: &Location,
    (has_identity, trust_domains): (bool, &TrustDomainBundle),
    diags: &mut Diagnostics,
) -> Rule {
    Rule {
        from: raw
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| {
                source(
                    &f.source,
                    &format!("{field}.from[{i}].source"),
                    loc,
                    (has_identity, trust_domains),
                    diags,
                )
            })
            .collect(),
        to: raw
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| {
                operation(
                    &t.operation,
                    &format!("{field}.to[{i}].operation"),
                    loc,
                    diags,
                )
            })
            .collect(),
        when: raw
            .when
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                condition(c, &format!("{field}.when[{i}]"), loc, trust_domains, diags)
            })
            .collect(),
    }
}

/// What a CUSTOM policy's provider is looked up in.
struct Providers<'a> {
    mesh: &'a Mesh,
    registry: &'a Registry,
    live: &'a LiveState,
}

impl Providers<'_> {
    /// Where a provider's checks go, as Istio resolves its `service` to the
    /// cluster `outbound|port||host`: the registry's service (short names
    /// in the `namespace/` written, else the root namespace) at `port`.
    /// A service a Sidecar keeps from this workload has no cluster here, as
    /// in Istio (the filter names a cluster the sidecar was never sent):
    /// every check fails. DNS, as written, when the registry has no such
    /// service; a service the registry has without `port` falls back to
    /// DNS too, with a warning on the provider's `port` (`field`).
    fn upstream(
        &self,
        settings: &CommonSettings,
        field: Option<&str>,
        diags: &mut Diagnostics,
    ) -> AuthzUpstream {
        let (namespace, host) = settings
            .service
            .rsplit_once('/')
            .unwrap_or((self.mesh.root_namespace.as_str(), settings.service.as_str()));
        let port = settings.port;
        let warn = |diags: &mut Diagnostics, msg: String| {
            let loc = self.mesh.location.as_ref();
            if let (Some(loc), Some(field)) = (loc, field) {
                diags.warn(loc, Some(format!("{field}.port")), msg);
            }
        };
        if let Some(hidden) = self.registry.hidden_by(host, namespace, port) {
            let msg = format!(
                "extension provider {:?}: {hidden}, so this workload has no cluster for it and every check fails (failOpen/statusOnError apply), as in Istio; add it to the Sidecar's egress hosts",
                settings.provider
            );
            warn(diags, msg.clone());
            return AuthzUpstream::Unavailable(msg);
        }
        let Some((fqdn, service)) = self.registry.find(host, namespace) else {
            return AuthzUpstream::dns(&settings.target);
        };
        let clusters = service.clusters.get(&None);
        let cluster = clusters.and_then(|clusters| clusters.iter().find(|c| c.port == port));
        match cluster {
            Some(cluster) => AuthzUpstream::Cluster {
                cluster: cluster.clone(),
                workload_tls: self.live.workload_tls(),
            },
            None => {
                let ports: Vec<String> = clusters
                    .into_iter()
                    .flatten()
                    .map(|c| c.port.to_string())
                    .collect();
                let msg = format!(
                    "extension provider {:?}: the service registry has {fqdn} but not port {port} (ports: {}); the checks go by DNS to {} as written, without the service's endpoints or DestinationRule",
                    settings.provider,
                    ports.join(", "),
                    settings.target
                );
                warn(diags, msg);
                AuthzUpstream::dns(&settings.target)
            }
        }
    }
}

/// The client of the ext_authz provider `name` (one per provider).
fn custom_client(
    name: &str,
    providers: &Providers<'_>,
    clients: &mut Vec<(String, Arc<ExtAuthzClient>)>,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<Arc<ExtAuthzClient>> {
    if let Some((_, client)) = clients.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(client.clone());
    }
    let mesh = providers.mesh;
    let field = Some("spec.provider.name".to_owned());
    let Some(provider) = mesh.provider(name) else {
        if mesh.rejected {
            return None;
        }
        let where_ = mesh
            .source
            .as_deref()
            .unwrap_or("the mesh config (none in this file)");
        let msg = format!("no extension provider named {name:?} in {where_}");
        diags.error(loc, field, msg);
        return None;
    };
    let declared = provider.field.as_deref();
    let client = match &provider.config {
        ProviderConfig::ExtAuthzHttp(settings) => {
            let field = declared.map(|f| format!("{f}.envoyExtAuthzHttp"));
            let upstream = providers.upstream(&settings.common, field.as_deref(), diags);
            let upstream = Arc::new(upstream);
            ExtAuthzClient::http_at(settings.clone(), upstream, providers.live.ext_authz())
        }
        ProviderConfig::ExtAuthzGrpc(settings) => {
            let field = declared.map(|f| format!("{f}.envoyExtAuthzGrpc"));
            let upstream = providers.upstream(&settings.common, field.as_deref(), diags);
            let upstream = Arc::new(upstream);
            ExtAuthzClient::grpc_at(settings.clone(), upstream, providers.live.ext_authz())
        }
        _ => {
            let msg = format!(
                "extension provider {name:?} is not envoyExtAuthzHttp or envoyExtAuthzGrpc"
            );
            diags.error(loc, field, msg);
            return None;
        }
    };
    let client = Arc::new(client);
    clients.push((name.to_owned(), client.clone()));
    Some(client)
}

/// `request.auth.claims[a][b]` → `[a, b]`.
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() {
            return None;
        }
        path.push(name.to_owned());
        rest = after;
    }
    (!path.is_empty()).then_some(path)
}

fn patterns(list: &[String]) -> Vec<Pattern> {
    list.iter().map(|s| Pattern::parse(s)).collect()
}

fn request_principals(list: &[String]) -> Vec<RequestPrincipal> {
    list.iter().map(|s| RequestPrincipal::parse(s)).collect()
}

fn cidrs(list: &[String], field: &str, loc: &Location, diags: &mut Diagnostics) -> Vec<Cidr> {
    list.iter()
        .filter_map(|s| {
            let cidr = Cidr::parse(s);
            if cidr.is_none() {
                diags.error(
                    loc,
                    Some(field.to_owned()),
                    format!("{s:?} is not an IP address or CIDR block"),
                );
            }
            cidr
        })
        .collect()
}

fn source(
    raw: &RawSource,
    field: &str,
    loc: &Location,
    (has_identity, trust_domains): (bool, &TrustDomainBundle),
    diags: &mut Diagnostics,
) -> Source {
    let identity = !raw.principals.is_empty()
        || !raw.not_principals.is_empty()
        || !raw.namespaces.is_empty()
        || !raw.not_namespaces.is_empty()
        || !raw.service_accounts.is_empty()
        || !raw.not_service_accounts.is_empty()
        || !raw.trust_domains.is_empty()
        || !raw.not_trust_domains.is_empty();
    if identity && !has_identity {
        let negated = !raw.not_principals.is_empty()
            || !raw.not_namespaces.is_empty()
            || !raw.not_service_accounts.is_empty()
            || !raw.not_trust_domains.is_empty();
        let msg = if negated {
            "principals, namespaces, serviceAccounts and trustDomains come from mTLS peer certificates; without spec.identity no caller has one: the listed values never match, and the not* fields match every caller"
        } else {
            "principals, namespaces, serviceAccounts and trustDomains come from mTLS peer certificates; without spec.identity they never match"
        };
        diags.warn(loc, Some(field.to_owned()), msg);
    }
    let principals = principal_values(raw, field, loc, trust_domains, diags);
    let request_principals = Values {
        any_of: request_principals(&raw.request_principals),
        none_of: request_principals(&raw.not_request_principals),
    };
    Source {
        principals,
        namespaces: Values {
            any_of: patterns(&raw.namespaces),
            none_of: patterns(&raw.not_namespaces),
        },
        ip_blocks: Values {
            any_of: cidrs(&raw.ip_blocks, &format!("{field}.ipBlocks"), loc, diags),
            none_of: cidrs(
                &raw.not_ip_blocks,
                &format!("{field}.notIpBlocks"),
                loc,
                diags,
            ),
        },
        remote_ip_blocks: Values {
            any_of: cidrs(
                &raw.remote_ip_blocks,
                &format!("{field}.remoteIpBlocks"),
                loc,
                diags,
            ),
            none_of: cidrs(
                &raw.not_remote_ip_blocks,
                &format!("{field}.notRemoteIpBlocks"),
                loc,
                diags,
            ),
        },
        request_principals,
    }
}

/// `principals`, `serviceAccounts` (`ns/sa`: any trust domain) and
/// `trustDomains` all constrain the peer's principal
/// (`<trust domain>/ns/<ns>/sa/<sa>`); their negations all exclude.
/// Principals of `cluster.local`, the trust domain or an alias stand for
/// each of `trust_domains` (Istio's `ReplaceTrustDomainAliases`), and a
/// `trustDomains` value that is one of them for all of them
/// (`ExpandTrustDomainAliases`).
fn principal_values(
    raw: &RawSource,
    field: &str,
    loc: &Location,
    trust_domains: &TrustDomainBundle,
    diags: &mut Diagnostics,
) -> Values<Pattern> {
    let domains = |list: &[String]| -> Vec<Pattern> {
        let (wildcards, exact): (Vec<String>, Vec<String>) =
            list.iter().cloned().partition(|td| td.contains('*'));
        let mut patterns: Vec<Pattern> = (trust_domains.expand_trust_domain_aliases(&exact))
            .iter()
            .map(|td| Pattern::Prefix(format!("{td}/")))
            .collect();
        patterns.extend(wildcards.iter().flat_map(|td| trust_domain_pattern(td)));
        patterns
    };
    let principals = |list: &[String]| patterns(&trust_domains.replace_trust_domain_aliases(list));
    let positive = [
        !raw.principals.is_empty(),
        !raw.service_accounts.is_empty(),
        !raw.trust_domains.is_empty(),
    ];
    if positive.iter().filter(|p| **p).count() > 1 {
        let msg = "trustDomains together with principals or serviceAccounts in one source is not supported yet; write the principals out in full (`<trust domain>/ns/<namespace>/sa/<account>`)";
        diags.error(loc, Some(format!("{field}.trustDomains")), msg);
    }
    let mut any_of = principals(&raw.principals);
    any_of.extend(service_account_patterns(&raw.service_accounts));
    any_of.extend(domains(&raw.trust_domains));
    let mut none_of = principals(&raw.not_principals);
    none_of.extend(service_account_patterns(&raw.not_service_accounts));
    none_of.extend(domains(&raw.not_trust_domains));
    Values { any_of, none_of }
}

/// Service accounts (`ns/sa`, validated so) as patterns on the peer's
/// principal (`<trust domain>/ns/<ns>/sa/<sa>`): any trust domain.
fn service_account_patterns(list: &[String]) -> Vec<Pattern> {
    list.iter()
        .filter_map(|a| a.split_once('/'))
        .map(|(ns, sa)| Pattern::Suffix(format!("/ns/{ns}/sa/{sa}")))
        .collect()
}

/// A `trustDomains` value with Istio's wildcards, as patterns on the
/// peer's principal (`<trust domain>/ns/<ns>/sa/<sa>`): `*` any trust
/// domain (any peer with an identity), `legacy*` one that begins with
/// `legacy`, `*.corp` one that ends with `.corp` (or is `.corp`), and a `*`
/// elsewhere is matched as written, as Istio's string matcher takes it.
/// Written as a prefix of the principal they matched nothing.
fn trust_domain_pattern(td: &str) -> Vec<Pattern> {
    if td == "*" {
        return vec![Pattern::Any];
    }
    if let Some(prefix) = td.strip_suffix('*')
        && !prefix.contains('*')
    {
        return vec![Pattern::Prefix(prefix.to_owned())];
    }
    if let Some(suffix) = td.strip_prefix('*')
        && !suffix.contains('*')
    {
        let end = format!("{suffix}/");
        return vec![
            Pattern::Template(vec![
                TemplatePart::Segment,
                TemplatePart::Literal(end.clone()),
                TemplatePart::Segments,
            ]),
            Pattern::Prefix(end),
        ];
    }
    vec![Pattern::Prefix(format!("{td}/"))]
}

fn ports(list: &[String], field: &str, loc: &Location, diags: &mut Diagnostics) -> Vec<u16> {
    list.iter()
        .filter_map(|p| {
            let port = p.parse().ok();
            if port.is_none() {
                diags.error(loc, Some(field.to_owned()), format!("{p:?} is not a port"));
            }
            port
        })
        .collect()
}

fn operation(raw: &RawOp, field: &str, loc: &Location, diags: &mut Diagnostics) -> Operation {
    Operation {
        hosts: Values {
            any_of: patterns(&raw.hosts),
            none_of: patterns(&raw.not_hosts),
        },
        ports: Values {
            any_of: ports(&raw.ports, &format!("{field}.ports"), loc, diags),
            none_of: ports(&raw.not_ports, &format!("{field}.notPorts"), loc, diags),
        },
        methods: Values {
            any_of: patterns(&raw.methods),
            none_of: patterns(&raw.not_methods),
        },
        paths: Values {
            any_of: raw.paths.iter().map(|s| Pattern::parse_path(s)).collect(),
            none_of: raw
                .not_paths
                .iter()
                .map(|s| Pattern::parse_path(s))
                .collect(),
        },
    }
}

fn condition(
    raw: &RawCondition,
    field: &str,
    loc: &Location,
    trust_domains: &TrustDomainBundle,
    diags: &mut Diagnostics,
) -> Option<Condition> {
    let key = match raw.key.as_str() {
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        // `source.serviceAccount` (`ns/sa`) constrains the principal, as
        // the `serviceAccounts` field does.
        "source.principal" | "source.serviceAccount" => ConditionKey::SourcePrincipal,
        "source.namespace" => ConditionKey::SourceNamespace,
        "connection.sni" => ConditionKey::ConnectionSni,
        "request.auth.principal" => ConditionKey::RequestPrincipal,
        "request.auth.audiences" => ConditionKey::RequestAudiences,
        "request.auth.presenter" => ConditionKey::RequestPresenter,
        k if k.starts_with("request.auth.claims[") => match claim_path(k) {
            Some(path) => ConditionKey::RequestClaim(path),
            None => {
                diags.error(
                    loc,
                    Some(format!("{field}.key")),
                    format!("{k:?}: a claim is written request.auth.claims[name], nested as request.auth.claims[a][b]"),
                );
                return None;
            }
        },
        k => match k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
        {
            // Envoy's header matcher reads pseudo-headers as any other
            // (Istio passes the name through), and keeps `Host` as
            // `:authority`.
            Some(name) if name.starts_with(':') => match name.to_ascii_lowercase().as_str() {
                ":authority" => ConditionKey::Header(http::header::HOST),
                ":method" => ConditionKey::PseudoHeader(PseudoHeader::Method),
                ":path" => ConditionKey::PseudoHeader(PseudoHeader::Path),
                ":scheme" => ConditionKey::PseudoHeader(PseudoHeader::Scheme),
                _ => {
                    diags.error(
                        loc,
                        Some(format!("{field}.key")),
                        format!(
                            "{name:?} is no request pseudo-header (known: :authority, :method, :path, :scheme)"
                        ),
                    );
                    return None;
                }
            },
            Some(name) => match HeaderName::try_from(name.to_ascii_lowercase()) {
                Ok(name) => ConditionKey::Header(name),
                Err(_) => {
                    diags.error(
                        loc,
                        Some(format!("{field}.key")),
                        format!("{name:?} is not a header name"),
                    );
                    return None;
                }
            },
            None => {
                diags.error(
                    loc,
                    Some(format!("{field}.key")),
                    format!("unknown key {k:?}"),
                );
                return None;
            }
        },
    };
    let ip = matches!(
        key,
        ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp
    );
    let principals = if matches!(key, ConditionKey::RequestPrincipal) {
        Values {
            any_of: request_principals(&raw.values),
            none_of: request_principals(&raw.not_values),
        }
    } else {
        Values::default()
    };
    let (cidrs, values) = if ip {
        let any_of = cidrs(&raw.values, &format!("{field}.values"), loc, diags);
        let none_of = cidrs(&raw.not_values, &format!("{field}.notValues"), loc, diags);
        (Values { any_of, none_of }, Values::default())
    } else if raw.key == "source.serviceAccount" {
        // `ns/sa` each, as validation requires.
        let values = Values {
            any_of: service_account_patterns(&raw.values),
            none_of: service_account_patterns(&raw.not_values),
        };
        (Values::default(), values)
    } else if matches!(key, ConditionKey::SourcePrincipal) {
        let values = Values {
            any_of: patterns(&trust_domains.replace_trust_domain_aliases(&raw.values)),
            none_of: patterns(&trust_domains.replace_trust_domain_aliases(&raw.not_values)),
        };
        (Values::default(), values)
    } else {
        let values = Values {
            any_of: patterns(&raw.values),
            none_of: patterns(&raw.not_values),
        };
        (Values::default(), values)
    };
    Some(Condition {
        key,
        values,
        cidrs,
        principals,
    })
}

/// The rate limiters of this workload; unchanged rules keep their buckets
/// across reloads.
pub(super) fn rate_limits(
    docs: &[Document<RateLimitPolicySpec>],
    boot: &Agent,
    agent_namespace: &str,
    live: &LiveState,
    diags: &mut Diagnostics,
) -> Vec<Arc<RateLimiter>> {
    let mut out = Vec::new();
    let mut buckets = 0u64;
    for doc in docs {
        let applies = applies(
            &doc.metadata,
            doc.spec.selector.as_ref(),
            agent_namespace,
            boot,
        );
        let namespace = doc.metadata.namespace.as_deref().unwrap_or(agent_namespace);
        for (i, raw) in doc.spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let name = super::routes::details_safe(&format!(
                "{namespace}/{}[{}]",
                doc.metadata.name,
                raw.name.clone().unwrap_or_else(|| i.to_string())
            ));
            let Some(limiter) = rate_limiter(raw, name, &field, &doc.location, diags) else {
                continue;
            };
            if !applies {
                continue;
            }
            // The tables are allocated when the config loads: bounded
            // together, before any is allocated, as each one is alone.
            buckets += limiter.buckets() as u64;
            if buckets > u64::from(MAX_RATE_LIMIT_KEYS) {
                let msg = format!(
                    "the rate-limit rules that apply to this workload may keep {MAX_RATE_LIMIT_KEYS} \
                     keyed buckets in all (16 bytes each, allocated when the config loads); \
                     this rule brings them to {buckets}"
                );
                diags.error(&doc.location, Some(format!("{field}.maxKeys")), msg);
                continue;
            }
            let key = format!(
                "{}|{:?}|{:?}|{:?}|{:?}",
                limiter.name, limiter.bucket, limiter.key, limiter.paths, limiter.methods
            );
            out.push(live.rate_limiter(&key, || limiter.build()));
        }
    }
    out
}

/// Most keyed buckets one rate-limit rule may keep (`maxKeys`), and all the
/// rules that apply to a workload together: 2^20, a 16 MiB table. The
/// tables are allocated when the config loads, so the bound is checked
/// before anything is allocated.
pub const MAX_RATE_LIMIT_KEYS: u32 = 1 << 20;

/// A checked rate-limit rule whose bucket table is not allocated yet.
pub(super) struct CheckedRateLimiter {
    /// `namespace/name[rule]`.
    pub name: String,
    paths: Vec<Pattern>,
    methods: Vec<String>,
    key: KeyKind,
    bucket: BucketSettings,
    max_keys: usize,
}

impl CheckedRateLimiter {
    /// The buckets its table will hold (one for a global rule).
    pub fn buckets(&self) -> usize {
        RateLimiter::slots(&self.key, self.max_keys)
    }

    /// The limiter, its table allocated.
    pub fn build(self) -> RateLimiter {
        RateLimiter::new(
            self.name,
            self.paths,
            self.methods,
            self.key,
            self.bucket,
            self.max_keys,
        )
    }
}

/// Checks one rule; `None` (the faults in `diags`) when it cannot be used.
/// Nothing is allocated for its buckets until [`CheckedRateLimiter::build`].
pub(super) fn rate_limiter(
    raw: &RateLimitRule,
    name: String,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<CheckedRateLimiter> {
    let errors_before = diags.errors().count();
    let bucket = &raw.token_bucket;
    if bucket.max_tokens == 0 {
        diags.error(
            loc,
            Some(format!("{field}.tokenBucket.maxTokens")),
            "must be at least 1",
        );
    }
    if bucket.tokens_per_fill == Some(0) {
        diags.error(
            loc,
            Some(format!("{field}.tokenBucket.tokensPerFill")),
            "must be at least 1",
        );
    }
    if let Some(keys) = raw.max_keys
        && !(1..=MAX_RATE_LIMIT_KEYS).contains(&keys)
    {
        diags.error(
            loc,
            Some(format!("{field}.maxKeys")),
            format!(
                "must be between 1 and {MAX_RATE_LIMIT_KEYS} (each keyed bucket takes 16 bytes, \
                 allocated when the config loads)"
            ),
        );
    }
    if bucket.fill_interval.get().as_millis() < 1 {
        diags.error(
            loc,
            Some(format!("{field}.tokenBucket.fillInterval")),
            "must be at least 1ms",
        );
    }
    let key = match &raw.key {
        None => Some(KeyKind::Global),
        Some(k) => {
            let mut kinds = Vec::new();
            if k.source_ip {
                kinds.push(KeyKind::SourceIp);
            }
            if k.remote_ip {
                kinds.push(KeyKind::RemoteIp);
            }
            if k.path {
                kinds.push(KeyKind::Path);
            }
            if let Some(h) = &k.header {
                match HeaderName::try_from(h.to_ascii_lowercase()) {
                    Ok(h) => kinds.push(KeyKind::Header(h)),
                    Err(_) => diags.error(
                        loc,
                        Some(format!("{field}.key.header")),
                        format!("{h:?} is not a header name"),
                    ),
                }
            }
            if kinds.len() > 1 {
                diags.error(
                    loc,
                    Some(format!("{field}.key")),
                    "set exactly one of sourceIp, remoteIp, header, path",
                );
            }
            kinds.pop()
        }
    };
    if diags.errors().count() > errors_before {
        return None;
    }
    let matches = raw.matches.clone().unwrap_or_default();
    let settings = BucketSettings {
        max_tokens: bucket.max_tokens,
        tokens_per_fill: bucket.tokens_per_fill.unwrap_or(1),
        fill_interval_ms: bucket.fill_interval.get().as_millis() as u64,
    };
    Some(CheckedRateLimiter {
        name,
        paths: patterns(&matches.paths),
        methods: matches.methods,
        key: key?,
        bucket: settings,
        max_keys: raw.max_keys.unwrap_or(10_000) as usize,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::compile::compile_text;
    use crate::model::authz::{ConditionKey, Pattern, PseudoHeader};
    use crate::model::live::LiveState;

    /// Without an identity no caller has a certificate: a DENY on
    /// `notNamespaces` then refuses everyone (as Istio's does), and the
    /// warning says so instead of calling the field harmless.
    #[test]
    fn the_identity_warning_says_what_not_fields_match_without_mtls() {
        let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: httpbin-v1, namespace: foo}
spec: {service: httpbin, labels: {app: httpbin}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-others, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {notNamespaces: [foo]}}]}]
"#;
        let file: Arc<str> = Arc::from("mesh.yaml");
        let compiled =
            compile_text(&file, yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"));
        let warnings: Vec<String> = compiled
            .diagnostics
            .warnings()
            .map(ToString::to_string)
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("the not* fields match every caller")),
            "{warnings:?}"
        );
    }

    /// `serviceAccounts` and `trustDomains` narrow an ALLOW rule as
    /// principals do; ignoring them would let every caller in.
    #[test]
    fn service_accounts_and_trust_domains_constrain_the_principal() {
        let yaml = r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: reviews-v1, namespace: default}
spec: {service: reviews, labels: {app: reviews}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: default}
spec:
  rules:
  - from:
    - source: {serviceAccounts: [default/productpage], notServiceAccounts: [default/bad]}
    - source: {trustDomains: [cluster.local], notTrustDomains: [old.example]}
"#;
        let file: Arc<str> = Arc::from("mesh.yaml");
        let compiled =
            compile_text(&file, yaml, 1, &LiveState::default()).unwrap_or_else(|e| panic!("{e}"));
        let from = &compiled.snapshot.authorization.allow[0].rules[0].from;
        assert_eq!(
            from[0].principals.any_of,
            [Pattern::Suffix("/ns/default/sa/productpage".into())]
        );
        assert_eq!(
            from[0].principals.none_of,
            [Pattern::Suffix("/ns/default/sa/bad".into())]
        );
        assert_eq!(
            from[1].principals.any_of,
            [Pattern::Prefix("cluster.local/".into())]
        );
        assert_eq!(
            from[1].principals.none_of,
            [Pattern::Prefix("old.example/".into())]
        );
    }

    /// With `trustDomain: corp.example`, principals written with
    /// `cluster.local` (Istio's name for the mesh's own trust domain) are
    /// rewritten into it, as Istio's `MigrateTrustDomain` does — in
    /// `principals`, `notPrincipals` and `source.principal` conditions — so
    /// a DENY written for `cluster.local` denies the caller of
    /// `corp.example`; aliases get a principal each, and `trustDomains`
    /// naming one stands for all.
    #[test]
    fn cluster_local_principals_name_the_mesh_trust_domain_and_its_aliases() {
        use crate::model::authz::AuthzInput;
        let yaml = |mesh: &str| {
            format!(
                r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec: {{service: reviews, labels: {{app: reviews}}, trustDomain: corp.example}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: default}}
spec:
  action: DENY
  rules:
  - from:
    - source: {{principals: ["cluster.local/ns/default/sa/attacker"], notPrincipals: ["corp.example/ns/default/sa/admin"]}}
    - source: {{principals: ["other.example/ns/default/sa/x", "*/ns/default/sa/y"]}}
    - source: {{trustDomains: [corp.example], namespaces: [elsewhere]}}
  - when: [{{key: source.principal, values: ["cluster.local/ns/default/sa/mallory"], notValues: ["cluster.local/ns/default/sa/*"]}}]
{mesh}"#
            )
        };
        let file: Arc<str> = Arc::from("mesh.yaml");
        let compiled = compile_text(&file, &yaml(""), 1, &LiveState::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let snapshot = &compiled.snapshot;
        assert_eq!(snapshot.trust_domains.trust_domains(), ["corp.example"]);
        let rules = &snapshot.authorization.deny[0].rules;
        let from = &rules[0].from;
        assert_eq!(
            from[0].principals.any_of,
            [Pattern::Exact("corp.example/ns/default/sa/attacker".into())]
        );
        assert_eq!(
            from[0].principals.none_of,
            [Pattern::Exact("corp.example/ns/default/sa/admin".into())]
        );
        assert_eq!(
            from[1].principals.any_of,
            [
                Pattern::Exact("other.example/ns/default/sa/x".into()),
                Pattern::Suffix("/ns/default/sa/y".into())
            ],
            "another trust domain and `*` are kept as written"
        );
        let when = &rules[1].when[0];
        assert!(matches!(when.key, ConditionKey::SourcePrincipal));
        assert_eq!(
            when.values.any_of,
            [Pattern::Exact("corp.example/ns/default/sa/mallory".into())]
        );
        assert_eq!(
            when.values.none_of,
            [Pattern::Prefix("corp.example/ns/default/sa/".into())]
        );

        // The DENY decides the caller of corp.example it names.
        let headers = http::HeaderMap::new();
        let input = |principal| AuthzInput {
            source_ip: [10, 0, 0, 1].into(),
            remote_ip: [10, 0, 0, 1].into(),
            destination_ip: [10, 0, 0, 2].into(),
            destination_port: 9080,
            principal,
            namespace: Some("default"),
            sni: None,
            method: "GET",
            path: "/",
            path_and_query: "/",
            scheme: "https",
            authority: "reviews",
            headers: &headers,
        };
        let denied = |principal| {
            let decision = snapshot
                .authorization
                .decide_local(&input(Some(principal)), None);
            !decision.allowed
        };
        assert!(denied("corp.example/ns/default/sa/attacker"));
        assert!(!denied("corp.example/ns/default/sa/frontend"));

        // Aliases: one principal per trust domain of the bundle.
        let mesh = "---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    trustDomainAliases: [old.example]
";
        let compiled = compile_text(&file, &yaml(mesh), 1, &LiveState::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let rules = &compiled.snapshot.authorization.deny[0].rules;
        assert_eq!(
            rules[0].from[0].principals.any_of,
            [
                Pattern::Exact("corp.example/ns/default/sa/attacker".into()),
                Pattern::Exact("old.example/ns/default/sa/attacker".into())
            ]
        );
        assert_eq!(
            rules[0].from[2].principals.any_of,
            [
                Pattern::Prefix("corp.example/".into()),
                Pattern::Prefix("old.example/".into())
            ]
        );
    }

    /// The mesh config's `trustDomain` is the workload's when its Agent sets
    /// none; a malformed trust domain or alias is refused by name, as
    /// Istio's `ValidateTrustDomain` refuses it.
    #[test]
    fn the_mesh_config_sets_the_trust_domain_and_its_aliases() {
        let yaml = |mesh: &str| {
            format!(
                "apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec: {{service: reviews}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
{mesh}"
            )
        };
        let file: Arc<str> = Arc::from("mesh.yaml");
        let mesh = "    trustDomain: corp.example
    trustDomainAliases: [cluster.local, old.example]
";
        let compiled = compile_text(&file, &yaml(mesh), 1, &LiveState::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let snapshot = &compiled.snapshot;
        assert_eq!(
            snapshot.identity.spiffe.to_string(),
            "spiffe://corp.example/ns/default/sa/default"
        );
        assert_eq!(
            snapshot.trust_domains.trust_domains(),
            ["corp.example", "cluster.local", "old.example"]
        );
        let mesh =
            "    trustDomain: Corp_Example\n    trustDomainAliases: [ok.example, \"-bad\"]\n";
        let refused = compile_text(&file, &yaml(mesh), 1, &LiveState::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("data.mesh.trustDomain")
                && refused.contains("data.mesh.trustDomainAliases[1]")
                && !refused.contains("trustDomainAliases[0]"),
            "{refused}"
        );
    }

    /// A `when` on a pseudo-header Envoy keeps reads it; one no request
    /// carries is refused by name, not compiled to a matcher that never
    /// matches.
    #[test]
    fn pseudo_header_conditions_compile_and_unknown_ones_are_refused() {
        let policy = |key: &str| {
            format!(
                r#"apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: reviews-v1, namespace: default}}
spec: {{service: reviews, labels: {{app: reviews}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: default}}
spec:
  action: DENY
  rules:
  - when: [{{key: "request.headers[{key}]", values: ["x"]}}]
"#
            )
        };
        let file: Arc<str> = Arc::from("mesh.yaml");
        let key = |k: &str| {
            let compiled = compile_text(&file, &policy(k), 1, &LiveState::default())
                .unwrap_or_else(|e| panic!("{e}"));
            compiled.snapshot.authorization.deny[0].rules[0].when[0]
                .key
                .clone()
        };
        assert!(matches!(
            key(":Method"),
            ConditionKey::PseudoHeader(PseudoHeader::Method)
        ));
        assert!(matches!(
            key(":path"),
            ConditionKey::PseudoHeader(PseudoHeader::Path)
        ));
        assert!(matches!(
            key(":scheme"),
            ConditionKey::PseudoHeader(PseudoHeader::Scheme)
        ));
        assert!(matches!(key(":authority"), ConditionKey::Header(h) if h == http::header::HOST));
        let refused = compile_text(&file, &policy(":protocol"), 1, &LiveState::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("spec.rules[0].when[0].key")
                && refused.contains("\":protocol\" is no request pseudo-header"),
            "{refused}"
        );
    }
}
