//! Compiled AuthorizationPolicies and their evaluation, in Istio's order:
//! CUSTOM (the external authorizer, asked by [`super::access`]), then DENY,
//! then ALLOW (no ALLOW policy allows all; ALLOW policies that all fail to
//! match deny). AUDIT policies only mark the request. Every decision names
//! the policy and rule that made it.

use std::sync::Arc;

use super::authn::Authenticated;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

/// A string pattern: exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Anything present.
    Any,
    /// A path template (`/api/{*}/items`, `/static/{**}`), as Envoy's
    /// uri_template matcher reads it.
    Template(Vec<TemplatePart>),
}

/// A piece of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text matched as written.
    Literal(String),
    /// `{*}`: one segment, at least one character, no `/`.
    Segment,
    /// `{**}`: any characters, `/` included, possibly none.
    Segments,
}

impl Pattern {
    /// Parses a `paths` value: a path template when it holds `{*}` or
    /// `{**}` (Istio's `ContainsPathTemplate`, rendered as Envoy's
    /// uri_template matcher), else Istio's wildcard form.
    pub fn parse_path(s: &str) -> Self {
        if !s.contains("{*}") && !s.contains("{**}") {
            return Self::parse(s);
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let next = [
                ("{**}", TemplatePart::Segments),
                ("{*}", TemplatePart::Segment),
            ]
            .into_iter()
            .filter_map(|(token, part)| rest.find(token).map(|at| (at, token, part)))
            .min_by_key(|(at, token, _)| (*at, std::cmp::Reverse(token.len())));
            match next {
                Some((at, token, part)) => {
                    if at > 0 {
                        parts.push(TemplatePart::Literal(rest[..at].to_owned()));
                    }
                    parts.push(part);
                    rest = &rest[at + token.len()..];
                }
                None => {
                    parts.push(TemplatePart::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Self::Template(parts)
    }

    /// Parses Istio's wildcard form.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(p) => value.ends_with(p.as_str()),
            Self::Any => true,
            Self::Template(parts) => template_matches(parts, value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        let value = value.to_ascii_lowercase();
        match self {
            Self::Exact(s) => value == s.to_ascii_lowercase(),
            Self::Prefix(p) => value.starts_with(&p.to_ascii_lowercase()),
            Self::Suffix(p) => value.ends_with(&p.to_ascii_lowercase()),
            Self::Any => true,
            Self::Template(parts) => template_matches(parts, &value),
        }
    }
}

/// Whether a character may stand for a template operator: `{*}` any but
/// `/`, `{**}` any. Envoy's uri_template names a narrower set of path
/// characters, but the path it matches has been normalized first (a `*`
/// in a segment still matches there); reading every character keeps a
/// DENY template from missing a path the application serves.
fn template_char(c: u8, slash: bool) -> bool {
    slash || c != b'/'
}

/// Matches a whole path against template parts (backtracking over the
/// operators; templates are short).
fn template_matches(parts: &[TemplatePart], value: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return value.is_empty();
    };
    match first {
        TemplatePart::Literal(text) => value
            .strip_prefix(text.as_str())
            .is_some_and(|after| template_matches(rest, after)),
        TemplatePart::Segment | TemplatePart::Segments => {
            let slash = matches!(first, TemplatePart::Segments);
            let min = usize::from(!slash);
            let bytes = value.as_bytes();
            let longest = bytes
                .iter()
                .position(|&c| !template_char(c, slash))
                .unwrap_or(bytes.len());
            (min..=longest)
                .rev()
                .any(|n| template_matches(rest, &value[n..]))
        }
    }
}

/// How Envoy's string matcher reads one JWT claim for Istio: an absent
/// claim matches nothing, and `*` is the regex `.+` (present, not empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Present and not empty.
    NonEmpty,
}

impl ClaimMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(p) => value.ends_with(p.as_str()),
            Self::NonEmpty => !value.is_empty(),
        }
    }
}

/// A `requestPrincipals` value (or a `request.auth.principal` condition
/// value) as Istio renders it (`requestPrincipalGenerator`): split at its
/// last `/` into an issuer and a subject, matched against the token's `iss`
/// and `sub` claims separately. `*` is any non-empty issuer and subject;
/// `*/alice` any issuer with subject exactly `alice` (not `x/alice`);
/// `https://issuer/*` that issuer with any non-empty subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrincipal {
    /// Matches `iss`.
    pub iss: ClaimMatch,
    /// Matches `sub`.
    pub sub: ClaimMatch,
}

impl RequestPrincipal {
    /// Parses a value as Istio's generator splits it.
    pub fn parse(value: &str) -> Self {
        let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
        let (iss, sub) = match (value, split) {
            ("*", _) => (ClaimMatch::NonEmpty, ClaimMatch::NonEmpty),
            (v, Some((iss, sub))) if v.starts_with('*') => (
                if iss == "*" {
                    ClaimMatch::NonEmpty
                } else {
                    ClaimMatch::Suffix(iss[1..].to_owned())
                },
                ClaimMatch::Exact(sub.to_owned()),
            ),
            (v, None) if v.starts_with('*') => {
                (ClaimMatch::NonEmpty, ClaimMatch::Suffix(v[1..].to_owned()))
            }
            (v, Some((iss, sub))) if v.ends_with('*') => (
                ClaimMatch::Exact(iss.to_owned()),
                if sub == "*" {
                    ClaimMatch::NonEmpty
                } else {
                    ClaimMatch::Prefix(sub[..sub.len() - 1].to_owned())
                },
            ),
            (v, None) if v.ends_with('*') => (
                ClaimMatch::Prefix(v[..v.len() - 1].to_owned()),
                ClaimMatch::NonEmpty,
            ),
            (_, Some((iss, sub))) => (
                ClaimMatch::Exact(iss.to_owned()),
                ClaimMatch::Exact(sub.to_owned()),
            ),
            (v, None) => (
                ClaimMatch::Exact(v.to_owned()),
                ClaimMatch::Exact(String::new()),
            ),
        };
        Self { iss, sub }
    }

    fn matches(&self, auth: &Authenticated) -> bool {
        let claim = |name: &str| auth.claims.get(name).and_then(serde_json::Value::as_str);
        self.iss.matches(claim("iss")) && self.sub.matches(claim("sub"))
    }
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8` or a bare address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let addr: IpAddr = s.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a policy can look at.
#[derive(Debug, Clone, Copy)]
pub struct AuthzInput<'a> {
    /// The TCP peer.
    pub source_ip: IpAddr,
    /// The original client (from `x-forwarded-for` and `numTrustedProxies`).
    pub remote_ip: IpAddr,
    /// This workload's address.
    pub destination_ip: IpAddr,
    /// This workload's port.
    pub destination_port: u16,
    /// Verified peer identity (none without mTLS).
    pub principal: Option<&'a str>,
    /// The peer's namespace from its identity (none without mTLS).
    pub namespace: Option<&'a str>,
    /// The SNI the peer sent (none without TLS).
    pub sni: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Path and query (`:path`).
    pub path_and_query: &'a str,
    /// `http` or `https` (`:scheme`).
    pub scheme: &'a str,
    /// The authority as the client wrote it, port included: `hosts`
    /// match it as Istio renders them, an `:authority` header matcher (so
    /// `hosts: [reviews]` does not match `reviews:9080`).
    pub authority: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// A list condition: empty means "any"; otherwise one must match.
#[derive(Debug, Clone)]
pub struct Values<T> {
    /// Must match one (when not empty).
    pub any_of: Vec<T>,
    /// Must match none.
    pub none_of: Vec<T>,
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Self {
            any_of: Vec::new(),
            none_of: Vec::new(),
        }
    }
}

impl<T> Values<T> {
    /// Whether the field is written (values or notValues).
    fn is_set(&self) -> bool {
        !self.any_of.is_empty() || !self.none_of.is_empty()
    }

    fn check(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(&matches))
            && !self.none_of.iter().any(matches)
    }

    /// Checks an optional value: an absent value matches no `any_of` entry
    /// and no `none_of` entry.
    fn check_opt(&self, value: Option<&str>, matches: impl Fn(&T, &str) -> bool) -> bool {
        match value {
            Some(v) => self.check(|t| matches(t, v)),
            None => self.any_of.is_empty(),
        }
    }
}

impl Values<RequestPrincipal> {
    /// Without a token no value matches (and so every `not` value passes).
    fn check_auth(&self, auth: Option<&Authenticated>) -> bool {
        match auth {
            Some(auth) => self.check(|p| p.matches(auth)),
            None => self.any_of.is_empty(),
        }
    }
}

/// `from[].source`.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Peer identities.
    pub principals: Values<Pattern>,
    /// Peer namespaces.
    pub namespaces: Values<Pattern>,
    /// Peer IPs.
    pub ip_blocks: Values<Cidr>,
    /// Original client IPs.
    pub remote_ip_blocks: Values<Cidr>,
    /// JWT identities (`<iss>/<sub>`): `requestPrincipals`, `notRequestPrincipals`.
    pub request_principals: Values<RequestPrincipal>,
}

impl Source {
    fn matches(&self, input: &AuthzInput<'_>, auth: Option<&Authenticated>) -> bool {
        self.request_principals.check_auth(auth)
            && self.principals.check_opt(input.principal, Pattern::matches)
            && self.namespaces.check_opt(input.namespace, Pattern::matches)
            && self.ip_blocks.check(|c| c.contains(input.source_ip))
            && self.remote_ip_blocks.check(|c| c.contains(input.remote_ip))
    }
}

/// `to[].operation`.
#[derive(Debug, Clone, Default)]
pub struct Operation {
    /// Hosts (case-insensitive).
    pub hosts: Values<Pattern>,
    /// Ports.
    pub ports: Values<u16>,
    /// Methods.
    pub methods: Values<Pattern>,
    /// Paths.
    pub paths: Values<Pattern>,
}

impl Operation {
    fn matches(&self, input: &AuthzInput<'_>) -> bool {
        self.hosts.check(|p| p.matches_ignore_case(input.authority))
            && self.ports.check(|p| *p == input.destination_port)
            && self.methods.check(|m| m.matches(input.method))
            && self.paths.check(|p| p.matches(input.path))
    }
}

/// The attribute a `when` condition reads.
#[derive(Debug, Clone)]
pub enum ConditionKey {
    /// `request.headers[name]` (`host` and `:authority` read the request's
    /// authority).
    Header(HeaderName),
    /// `request.headers[:method]`, `[:path]` or `[:scheme]`: a request
    /// pseudo-header, which Envoy's header matcher reads as it reads any
    /// header.
    PseudoHeader(PseudoHeader),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `source.principal`.
    SourcePrincipal,
    /// `source.namespace`.
    SourceNamespace,
    /// `connection.sni` (none without TLS).
    ConnectionSni,
    /// `request.auth.principal` (`<iss>/<sub>` of the verified token).
    RequestPrincipal,
    /// `request.auth.audiences` (any of the token's `aud`).
    RequestAudiences,
    /// `request.auth.presenter` (`azp`).
    RequestPresenter,
    /// `request.auth.claims[a][b]…`: a claim, nested by name; a list claim
    /// matches when one of its strings does.
    RequestClaim(Vec<String>),
}

/// A request pseudo-header a `when` condition can read (RFC 9113 §8.3.1;
/// Envoy keeps them in the request's header map on either protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoHeader {
    /// `:method`: the request method.
    Method,
    /// `:path`: the path and query as the workload receives them, after
    /// the path's normalisation (Envoy's RBAC filter runs after its
    /// connection manager normalised `:path`).
    Path,
    /// `:scheme`: `https` on a TLS connection, `http` otherwise.
    Scheme,
}

/// A `when` condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// Values as patterns (IPs as CIDRs in `cidrs`).
    pub values: Values<Pattern>,
    /// IP values, for IP keys.
    pub cidrs: Values<Cidr>,
    /// Principal values, for `request.auth.principal`.
    pub principals: Values<RequestPrincipal>,
}

impl Condition {
    fn matches(&self, input: &AuthzInput<'_>, auth: Option<&Authenticated>) -> bool {
        let text = |v: Option<&str>| self.values.check_opt(v, Pattern::matches);
        match &self.key {
            // Envoy keeps `Host` as `:authority`, which a `host` matcher
            // reads on either protocol (HTTP/2 sends no `host` line).
            ConditionKey::Header(name) if name == http::header::HOST => {
                text(Some(input.authority).filter(|a| !a.is_empty()))
            }
            // Envoy's header matcher compares the value's bytes: one with
            // bytes past ASCII is still the header's value, not absent
            // (lossless for UTF-8; other bytes read as U+FFFD, which no
            // configured value holds in their place).
            ConditionKey::Header(name) => text(
                input
                    .headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .as_deref(),
            ),
            ConditionKey::PseudoHeader(pseudo) => text(
                Some(match pseudo {
                    PseudoHeader::Method => input.method,
                    PseudoHeader::Path => input.path_and_query,
                    PseudoHeader::Scheme => input.scheme,
                })
                .filter(|v| !v.is_empty()),
            ),
            ConditionKey::SourceIp => self.cidrs.check(|c| c.contains(input.source_ip)),
            ConditionKey::RemoteIp => self.cidrs.check(|c| c.contains(input.remote_ip)),
            ConditionKey::DestinationIp => self.cidrs.check(|c| c.contains(input.destination_ip)),
            ConditionKey::DestinationPort => text(Some(&input.destination_port.to_string())),
            ConditionKey::SourcePrincipal => text(input.principal),
            ConditionKey::SourceNamespace => text(input.namespace),
            ConditionKey::ConnectionSni => text(input.sni),
            ConditionKey::RequestPrincipal => self.principals.check_auth(auth),
            ConditionKey::RequestPresenter => text(auth.and_then(|a| a.presenter.as_deref())),
            ConditionKey::RequestAudiences => {
                self.any_value(auth.map(|a| a.audiences.iter().map(String::as_str).collect()))
            }
            ConditionKey::RequestClaim(path) => self.any_value(auth.map(|a| claim(a, path))),
        }
    }

    /// A multi-valued attribute: one value must match `values` (when
    /// listed) and none `notValues`; absent matches no `values`. Istio
    /// renders these as string matchers on the token's payload, so `*` is
    /// the regex `.+` (an empty string does not match it) and a claim that
    /// is not a string (a number, a boolean) matches nothing.
    fn any_value(&self, values: Option<Vec<&str>>) -> bool {
        let matches = |p: &Pattern, v: &str| p.matches(v) && (*p != Pattern::Any || !v.is_empty());
        match values {
            None => self.values.any_of.is_empty(),
            Some(list) => {
                (self.values.any_of.is_empty()
                    || list
                        .iter()
                        .any(|v| self.values.any_of.iter().any(|p| matches(p, v))))
                    && !list
                        .iter()
                        .any(|v| self.values.none_of.iter().any(|p| matches(p, v)))
            }
        }
    }
}

/// The strings of claim `path` (nested objects by name) of a verified
/// token: a string claim (a top-level one split on spaces when its rule
/// says it is a list: `scope`, `permission` and its
/// `spaceDelimitedClaims`, as Istio renders Envoy's
/// `normalize_payload_in_metadata`), or the strings of a list claim.
fn claim<'a>(auth: &'a Authenticated, path: &[String]) -> Vec<&'a str> {
    let Some((first, rest)) = path.split_first() else {
        return Vec::new();
    };
    let mut value = auth.claims.get(first);
    for key in rest {
        value = value.and_then(|v| v.get(key));
    }
    let spaced = path.len() == 1 && auth.space_delimited(first);
    match value {
        Some(serde_json::Value::String(s)) if spaced => {
            s.split(' ').filter(|s| !s.is_empty()).collect()
        }
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    }
}

/// One rule: every part present must match.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Sources, ORed (empty: any).
    pub from: Vec<Source>,
    /// Operations, ORed (empty: any).
    pub to: Vec<Operation>,
    /// Conditions, ANDed.
    pub when: Vec<Condition>,
}

impl Rule {
    fn matches(&self, input: &AuthzInput<'_>, auth: Option<&Authenticated>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(input, auth)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(input)))
            && self.when.iter().all(|c| c.matches(input, auth))
    }
}

impl ConditionKey {
    /// Whether only an HTTP request carries the attribute (headers and the
    /// verified token), as Istio's generators refuse them for TCP.
    fn is_http_only(&self) -> bool {
        matches!(
            self,
            Self::Header(_)
                | Self::PseudoHeader(_)
                | Self::RequestPrincipal
                | Self::RequestAudiences
                | Self::RequestPresenter
                | Self::RequestClaim(_)
        )
    }
}

impl Rule {
    /// Whether the rule reads anything only HTTP carries: `hosts`,
    /// `methods`, `paths` (and their `not` forms), `requestPrincipals`, or a
    /// `request.*` condition.
    fn reads_http(&self) -> bool {
        self.from.iter().any(|s| s.request_principals.is_set())
            || self
                .to
                .iter()
                .any(|o| o.hosts.is_set() || o.methods.is_set() || o.paths.is_set())
            || self.when.iter().any(|c| c.key.is_http_only())
    }

    /// The rule with its HTTP-only parts left out, so it matches more
    /// connections (Istio's DENY, AUDIT and CUSTOM rules on TCP).
    fn widened(&self) -> Self {
        Self {
            from: (self.from.iter())
                .map(|s| Source {
                    request_principals: Values::default(),
                    ..s.clone()
                })
                .collect(),
            to: (self.to.iter())
                .map(|o| Operation {
                    ports: o.ports.clone(),
                    ..Operation::default()
                })
                .collect(),
            when: (self.when.iter())
                .filter(|c| !c.key.is_http_only())
                .cloned()
                .collect(),
        }
    }

    /// A rule no connection matches (`notValues: ["*"]` on
    /// `destination.port`, which every connection has), as Istio's
    /// `rbacPolicyMatchNever`: keeps the other rules' indices.
    fn never() -> Self {
        Self {
            when: vec![Condition {
                key: ConditionKey::DestinationPort,
                values: Values {
                    any_of: Vec::new(),
                    none_of: vec![Pattern::Any],
                },
                cidrs: Values::default(),
                principals: Values::default(),
            }],
            ..Self::default()
        }
    }
}

/// A policy: `namespace/name` and its rules (none: matches nothing).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    /// Rules, ORed.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The index of the first rule `input` matches.
    pub fn matching_rule(
        &self,
        input: &AuthzInput<'_>,
        auth: Option<&Authenticated>,
    ) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(input, auth))
    }
}

/// Which policy decided: `namespace/name` and the index of its rule that
/// matched (none when no ALLOW policy matched), or the external authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionSource {
    /// `namespace/name` of the policy (or RequestAuthentication).
    pub policy: String,
    /// The matching rule's index in `spec.rules` (`spec.jwtRules` for
    /// authentication).
    pub rule: Option<usize>,
    /// The extension provider asked, for CUSTOM.
    pub provider: Option<String>,
}

impl std::fmt::Display for DecisionSource {
    /// `ns/name[rule]` or `ns/name[rule] provider=opa`, for access logs and spans.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.policy)?;
        if let Some(rule) = self.rule {
            write!(f, "[{rule}]")?;
        }
        if let Some(provider) = &self.provider {
            write!(f, " provider={provider}")?;
        }
        Ok(())
    }
}

/// A CUSTOM policy: when a rule matches, the provider decides.
#[derive(Debug, Clone)]
pub struct CustomPolicy {
    /// The policy's rules.
    pub policy: Policy,
    /// The provider's name.
    pub provider: String,
    /// Its client.
    pub client: Arc<crate::ext_authz::ExtAuthzClient>,
}

/// The verdict of the local policies (DENY, ALLOW, AUDIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The deciding policy (none: no policy applies, or no ALLOW policy matched).
    pub source: Option<DecisionSource>,
    /// The AUDIT policy that matched, when one did.
    pub audited: Option<DecisionSource>,
    /// What the dry-run policies would have decided, when any apply
    /// ([`Authorization::dry_run_verdict`]).
    pub dry_run: Option<String>,
}

impl PolicyDecision {
    /// Envoy's `response_code_details` (and TCP connection termination
    /// details) when this decision refuses: the DENY rule that matched
    /// ([`Denial::details`]), or [`NO_ALLOW_MATCHED`]; `None` when allowed.
    pub fn denied_details(&self) -> Option<String> {
        if self.allowed {
            return None;
        }
        Some(match &self.source {
            Some(s) => Denial {
                policy: s.policy.clone(),
                rule: s.rule.unwrap_or_default(),
            }
            .details(),
            None => NO_ALLOW_MATCHED.to_owned(),
        })
    }
}

/// Every policy that applies to this workload, by action.
#[derive(Debug, Clone, Default)]
pub struct Authorization {
    /// CUSTOM policies (one provider per workload, as in Istio).
    pub custom: Vec<CustomPolicy>,
    /// DENY policies.
    pub deny: Vec<Policy>,
    /// ALLOW policies.
    pub allow: Vec<Policy>,
    /// AUDIT policies.
    pub audit: Vec<Policy>,
    /// DENY policies annotated `istio.io/dry-run: "true"`: evaluated and
    /// recorded, never enforced (Istio's shadow rules).
    pub dry_run_deny: Vec<Policy>,
    /// ALLOW policies annotated `istio.io/dry-run: "true"`.
    pub dry_run_allow: Vec<Policy>,
}

/// The DENY policy rule that refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The index of its rule that matched (in `spec.rules`).
    pub rule: usize,
}

impl Denial {
    /// Envoy's `response_code_details` for this denial, with the policy id
    /// Istio gives the rule in Envoy's RBAC filter:
    /// `rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]-rule[<i>]]`.
    pub fn details(&self) -> String {
        let (namespace, name) = self.policy.split_once('/').unwrap_or(("", &self.policy));
        format!(
            "rbac_access_denied_matched_policy[ns[{namespace}]-policy[{name}]-rule[{}]]",
            self.rule
        )
    }
}

/// Envoy's `response_code_details` when no ALLOW policy matched.
pub const NO_ALLOW_MATCHED: &str = "rbac_access_denied_matched_policy[none]";

impl Authorization {
    /// Whether any policy applies (so the request path can skip the work).
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_run_deny.is_empty()
            && self.dry_run_allow.is_empty()
    }

    /// These policies as Istio builds them for a TCP filter chain (the
    /// network RBAC filter, `forTCP`), where no request exists: an ALLOW
    /// rule that reads anything only HTTP carries (hosts, methods, paths,
    /// requestPrincipals, `request.*` conditions) is left out, so it allows
    /// nothing; DENY, AUDIT and CUSTOM rules drop those parts and so match
    /// more connections. Principals and namespaces (the mTLS peer),
    /// ipBlocks, remoteIpBlocks (the peer itself), ports, `destination.*`,
    /// `source.*` and `connection.sni` are matched as on HTTP. A CUSTOM
    /// policy whose provider speaks HTTP is ignored, as Istio ignores it on
    /// TCP; a gRPC provider is asked. Rule indices stay those of
    /// `spec.rules`. Evaluate with [`Self::decide_local`] and
    /// [`Self::custom_match`], no token, and an input whose request fields
    /// are empty.
    pub fn for_tcp(&self) -> Self {
        let widened = |p: &Policy| Policy {
            name: p.name.clone(),
            rules: p.rules.iter().map(Rule::widened).collect(),
        };
        let never_on_tcp = |p: &Policy| Policy {
            name: p.name.clone(),
            rules: (p.rules.iter())
                .map(|r| {
                    if r.reads_http() {
                        Rule::never()
                    } else {
                        r.clone()
                    }
                })
                .collect(),
        };
        Self {
            custom: (self.custom.iter())
                .filter(|c| c.client.is_grpc())
                .map(|c| CustomPolicy {
                    policy: widened(&c.policy),
                    ..c.clone()
                })
                .collect(),
            deny: self.deny.iter().map(widened).collect(),
            allow: self.allow.iter().map(never_on_tcp).collect(),
            audit: self.audit.iter().map(widened).collect(),
            dry_run_deny: self.dry_run_deny.iter().map(widened).collect(),
            dry_run_allow: self.dry_run_allow.iter().map(never_on_tcp).collect(),
        }
    }

    /// The first CUSTOM policy whose rules match, and the matching rule.
    pub fn custom_match(
        &self,
        input: &AuthzInput<'_>,
        auth: Option<&Authenticated>,
    ) -> Option<(&CustomPolicy, usize)> {
        self.custom
            .iter()
            .find_map(|c| c.policy.matching_rule(input, auth).map(|r| (c, r)))
    }

    /// DENY, then ALLOW, then AUDIT, with the verified token when there is one.
    pub fn decide_local(
        &self,
        input: &AuthzInput<'_>,
        auth: Option<&Authenticated>,
    ) -> PolicyDecision {
        let source = |p: &Policy, rule: Option<usize>| DecisionSource {
            policy: p.name.clone(),
            rule,
            provider: None,
        };
        let dry_run = self.dry_run_verdict(input, auth);
        for policy in &self.deny {
            if let Some(rule) = policy.matching_rule(input, auth) {
                return PolicyDecision {
                    allowed: false,
                    source: Some(source(policy, Some(rule))),
                    audited: None,
                    dry_run,
                };
            }
        }
        let mut allowed_by = None;
        if !self.allow.is_empty() {
            allowed_by = self
                .allow
                .iter()
                .find_map(|p| p.matching_rule(input, auth).map(|r| source(p, Some(r))));
            if allowed_by.is_none() {
                return PolicyDecision {
                    allowed: false,
                    source: None,
                    audited: None,
                    dry_run,
                };
            }
        }
        let audited = self
            .audit
            .iter()
            .find_map(|p| p.matching_rule(input, auth).map(|r| source(p, Some(r))));
        PolicyDecision {
            allowed: true,
            source: allowed_by,
            audited,
            dry_run,
        }
    }

    /// What the dry-run policies alone would decide, as Istio's shadow
    /// RBAC engines decide it (`istio_dry_run_deny`, then
    /// `istio_dry_run_allow`): `denied by ns/name[rule]` when a dry-run
    /// DENY rule matches; else, when dry-run ALLOW policies apply,
    /// `allowed by ns/name[rule]` or `denied: no dry-run ALLOW policy
    /// matched`; else `allowed`. `None` when no dry-run policy applies.
    /// Evaluated whatever the enforced policies decide, so an operator sees
    /// what a policy would do before enforcing it.
    pub fn dry_run_verdict(
        &self,
        input: &AuthzInput<'_>,
        auth: Option<&Authenticated>,
    ) -> Option<String> {
        if self.dry_run_deny.is_empty() && self.dry_run_allow.is_empty() {
            return None;
        }
        let matched = |policies: &[Policy]| {
            policies.iter().find_map(|p| {
                p.matching_rule(input, auth)
                    .map(|r| format!("{}[{r}]", p.name))
            })
        };
        if let Some(rule) = matched(&self.dry_run_deny) {
            return Some(format!("denied by {rule}"));
        }
        if self.dry_run_allow.is_empty() {
            return Some("allowed".to_owned());
        }
        Some(match matched(&self.dry_run_allow) {
            Some(rule) => format!("allowed by {rule}"),
            None => "denied: no dry-run ALLOW policy matched".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("127.0.0.2")
                .unwrap()
                .contains("::ffff:127.0.0.2".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }

    fn values<T>(any_of: Vec<T>) -> Values<T> {
        Values {
            any_of,
            none_of: Vec::new(),
        }
    }

    fn policy(name: &str, rules: Vec<Rule>) -> Policy {
        Policy {
            name: name.into(),
            rules,
        }
    }

    fn from(source: Source) -> Rule {
        Rule {
            from: vec![source],
            ..Rule::default()
        }
    }

    fn to(operation: Operation) -> Rule {
        Rule {
            to: vec![operation],
            ..Rule::default()
        }
    }

    fn principal(p: &str) -> Source {
        Source {
            principals: values(vec![Pattern::parse(p)]),
            ..Source::default()
        }
    }

    fn get() -> Operation {
        Operation {
            methods: values(vec![Pattern::parse("GET")]),
            ..Operation::default()
        }
    }

    const FRONTEND: &str = "cluster.local/ns/front/sa/web";
    const OTHER: &str = "cluster.local/ns/other/sa/job";

    /// A TCP connection from `principal` (none: plaintext) at `ip` to port
    /// 6379: no request fields.
    fn connection<'a>(
        principal: Option<&'a str>,
        ip: &str,
        headers: &'a HeaderMap,
    ) -> AuthzInput<'a> {
        let ip = ip.parse().unwrap();
        AuthzInput {
            source_ip: ip,
            remote_ip: ip,
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 6379,
            principal,
            namespace: principal.and_then(|p| p.split('/').nth(2)),
            sni: None,
            method: "",
            path: "",
            path_and_query: "",
            scheme: "",
            authority: "",
            headers,
        }
    }

    fn request<'a>(method: &'a str, headers: &'a HeaderMap) -> AuthzInput<'a> {
        AuthzInput {
            method,
            path: "/",
            path_and_query: "/",
            scheme: "http",
            authority: "redis",
            ..connection(Some(FRONTEND), "10.0.0.1", headers)
        }
    }

    #[test]
    fn allow_rules_with_http_fields_allow_no_tcp_connection() {
        let headers = HeaderMap::new();
        let not_get = Operation {
            methods: Values {
                any_of: Vec::new(),
                none_of: vec![Pattern::parse("GET")],
            },
            ..Operation::default()
        };
        let jwt = Source {
            request_principals: values(vec![RequestPrincipal::parse("*")]),
            ..Source::default()
        };
        let authz = Authorization {
            allow: vec![policy(
                "ns/http-only",
                vec![to(get()), to(not_get), from(jwt)],
            )],
            ..Authorization::default()
        };
        // The request path still reads the method.
        assert!(authz.decide_local(&request("GET", &headers), None).allowed);
        // On TCP every rule reads HTTP: nothing is allowed (Istio skips
        // each rule on the TCP filter chain), `notMethods` included.
        let tcp = authz.for_tcp();
        let decision = tcp.decide_local(&connection(Some(FRONTEND), "10.0.0.1", &headers), None);
        assert!(!decision.allowed);
        assert_eq!(decision.source, None);
    }

    #[test]
    fn allow_rules_match_peers_on_tcp_and_keep_their_index() {
        let headers = HeaderMap::new();
        let by_peer = Rule {
            from: vec![principal(FRONTEND)],
            to: vec![Operation {
                ports: values(vec![6379]),
                ..Operation::default()
            }],
            ..Rule::default()
        };
        let authz = Authorization {
            allow: vec![policy("ns/redis", vec![to(get()), by_peer])],
            ..Authorization::default()
        }
        .for_tcp();
        let allowed = authz.decide_local(&connection(Some(FRONTEND), "10.0.0.1", &headers), None);
        assert!(allowed.allowed);
        assert_eq!(allowed.source.unwrap().rule, Some(1));
        for refused in [
            connection(Some(OTHER), "10.0.0.1", &headers),
            connection(None, "10.0.0.1", &headers),
            AuthzInput {
                destination_port: 6380,
                ..connection(Some(FRONTEND), "10.0.0.1", &headers)
            },
        ] {
            assert!(!authz.decide_local(&refused, None).allowed);
        }
    }

    /// A header value that is not visible ASCII, even not UTF-8, is the
    /// header's value to a DENY condition, as Envoy's header matcher
    /// reads its bytes: it used to be taken as absent, and let through.
    #[test]
    fn a_header_value_past_ascii_is_matched_not_absent() {
        let condition = |name: &'static str, pattern: &str| Rule {
            when: vec![Condition {
                key: ConditionKey::Header(HeaderName::from_static(name)),
                values: values(vec![Pattern::parse(pattern)]),
                cidrs: Values::default(),
                principals: Values::default(),
            }],
            ..Rule::default()
        };
        let authz = Authorization {
            deny: vec![policy(
                "ns/deny",
                vec![condition("x-role", "admin*"), condition("x-debug", "*")],
            )],
            ..Authorization::default()
        };
        for (name, value) in [
            ("x-role", &b"admin\xff"[..]),
            ("x-role", "admin\u{e9}".as_bytes()),
            ("x-debug", b"\x80"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            let decision = authz.decide_local(&request("GET", &headers), None);
            assert!(!decision.allowed, "{name}: {value:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-role",
            http::HeaderValue::from_bytes(b"us\xffer").unwrap(),
        );
        assert!(authz.decide_local(&request("GET", &headers), None).allowed);
    }

    #[test]
    fn deny_rules_drop_http_fields_on_tcp_and_so_deny_more() {
        let headers = HeaderMap::new();
        let header_condition = Rule {
            from: vec![principal(OTHER)],
            when: vec![Condition {
                key: ConditionKey::Header(HeaderName::from_static("x-user")),
                values: values(vec![Pattern::parse("bob")]),
                cidrs: Values::default(),
                principals: Values::default(),
            }],
            ..Rule::default()
        };
        let authz = Authorization {
            deny: vec![policy("ns/other", vec![header_condition])],
            ..Authorization::default()
        };
        // HTTP: the header must be there.
        let mut other = request("GET", &headers);
        other.principal = Some(OTHER);
        assert!(authz.decide_local(&other, None).allowed);
        // TCP: the condition is dropped, the principal still counts.
        let tcp = authz.for_tcp();
        let denied = tcp.decide_local(&connection(Some(OTHER), "10.0.0.1", &headers), None);
        assert!(!denied.allowed);
        assert_eq!(
            denied.source,
            Some(DecisionSource {
                policy: "ns/other".into(),
                rule: Some(0),
                provider: None
            })
        );
        assert!(
            tcp.decide_local(&connection(Some(FRONTEND), "10.0.0.1", &headers), None)
                .allowed
        );
        // A DENY rule of methods alone denies every connection.
        let methods_only = Authorization {
            deny: vec![policy("ns/no-get", vec![to(get())])],
            ..Authorization::default()
        };
        assert!(
            methods_only
                .decide_local(&request("POST", &headers), None)
                .allowed
        );
        let tcp = methods_only.for_tcp();
        assert!(
            !tcp.decide_local(&connection(None, "10.9.9.9", &headers), None)
                .allowed
        );
    }

    #[test]
    fn deny_rules_match_namespaces_and_ip_blocks_on_tcp() {
        let headers = HeaderMap::new();
        let rules = vec![
            from(Source {
                namespaces: values(vec![Pattern::parse("other")]),
                ..Source::default()
            }),
            from(Source {
                ip_blocks: values(vec![Cidr::parse("192.168.0.0/16").unwrap()]),
                ..Source::default()
            }),
        ];
        let tcp = Authorization {
            deny: vec![policy("ns/fence", rules)],
            ..Authorization::default()
        }
        .for_tcp();
        let by_namespace = tcp.decide_local(&connection(Some(OTHER), "10.0.0.1", &headers), None);
        assert_eq!(by_namespace.source.unwrap().rule, Some(0));
        let by_ip = tcp.decide_local(&connection(Some(FRONTEND), "192.168.4.4", &headers), None);
        assert_eq!(by_ip.source.unwrap().rule, Some(1));
        assert!(
            tcp.decide_local(&connection(Some(FRONTEND), "10.0.0.1", &headers), None)
                .allowed
        );
        // Without mTLS there is no namespace to match.
        assert!(
            tcp.decide_local(&connection(None, "10.0.0.1", &headers), None)
                .allowed
        );
    }

    #[test]
    fn audit_rules_widen_on_tcp() {
        let headers = HeaderMap::new();
        let tcp = Authorization {
            audit: vec![policy("ns/watch", vec![to(get())])],
            ..Authorization::default()
        }
        .for_tcp();
        let decision = tcp.decide_local(&connection(None, "10.0.0.1", &headers), None);
        assert!(decision.allowed);
        assert_eq!(decision.audited.unwrap().policy, "ns/watch");
    }

    #[test]
    fn patterns_follow_istio_wildcards() {
        assert!(Pattern::parse("/api/*").matches("/api/x"));
        assert!(Pattern::parse("*/info").matches("/a/info"));
        assert!(Pattern::parse("*").matches(""));
        assert!(!Pattern::parse("/exact").matches("/exact/"));
    }

    #[test]
    fn path_templates_match_segments() {
        let one = Pattern::parse_path("/api/{*}/items");
        assert!(one.matches("/api/v1/items"));
        assert!(!one.matches("/api//items"));
        assert!(!one.matches("/api/v1/v2/items"));
        let any = Pattern::parse_path("/static/{**}");
        assert!(any.matches("/static/"));
        assert!(any.matches("/static/a/b.css"));
        assert!(!any.matches("/static"));
        let both = Pattern::parse_path("/{*}/x/{**}.png");
        assert!(both.matches("/a/x/b/c.png"));
        assert!(!both.matches("/a/y/b/c.png"));
        assert_eq!(Pattern::parse_path("/plain/*"), Pattern::parse("/plain/*"));
    }
}
