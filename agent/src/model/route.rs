//! Compiled VirtualService rules: a table from host to ordered rules, each
//! with prebuilt matchers and weighted destinations.

use foldhash::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use super::destination::DestinationTarget;
use super::header_format::{FormatContext, HeaderFormat};

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StrMatcher {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// A path equal to this or below it (`/foo` matches `/foo` and `/foo/x`,
    /// not `/foobar`): Envoy's `path_separated_prefix`, what a Gateway API
    /// `PathPrefix` match means. Stored without a trailing `/`.
    PathSeparatedPrefix(String),
    /// The whole value matches (the regex is anchored at compile time).
    Regex(Regex),
    /// Present with any value (Istio's empty match object).
    Present,
}

impl StrMatcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::PathSeparatedPrefix(s) => value
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }

    /// Whether `value` matches, ignoring ASCII case for `exact` and `prefix`
    /// (their pattern is stored lower-cased); a regex stays case-sensitive,
    /// as Envoy's `case_sensitive: false` leaves `safe_regex` alone.
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value.eq_ignore_ascii_case(s),
            Self::Prefix(s) => value
                .get(..s.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(s)),
            Self::PathSeparatedPrefix(s) => value.get(..s.len()).is_some_and(|head| {
                head.eq_ignore_ascii_case(s)
                    && (value.len() == s.len() || value.as_bytes()[s.len()] == b'/')
            }),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }
}

/// What a rule's conditions look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The authority as sent.
    pub authority: &'a str,
    /// The port the request was addressed to.
    pub port: u16,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// One compiled `match` entry: every present condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Path condition.
    pub uri: Option<StrMatcher>,
    /// Compare the path case-insensitively.
    pub ignore_uri_case: bool,
    /// Scheme condition.
    pub scheme: Option<StrMatcher>,
    /// Method condition.
    pub method: Option<StrMatcher>,
    /// Authority condition.
    pub authority: Option<StrMatcher>,
    /// Header conditions.
    pub headers: Vec<(HeaderName, StrMatcher)>,
    /// Headers that must be absent or not match.
    pub without_headers: Vec<(HeaderName, StrMatcher)>,
    /// Query parameter conditions.
    pub query_params: Vec<(String, StrMatcher)>,
    /// Port condition.
    pub port: Option<u16>,
    /// The path template a request matching this entry is reported under
    /// (OpenTelemetry's `http.route`): the exact path, or the prefix with
    /// `*`; none for regex or no path condition.
    pub route_template: Option<Arc<str>>,
    /// The route's name when this entry matched, for a named entry:
    /// Istio's `<rule name>.<match name>` (`translateRoute`); else the
    /// rule's.
    pub route_name: Option<Arc<str>>,
}

/// The name Istio gives a route it makes itself (`DefaultRouteName`): a
/// registry host's without a VirtualService, the inbound one to the app.
pub static DEFAULT_ROUTE_NAME: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("default"));

/// The name of Istio's catch-all route that refuses what is outside the
/// registry under REGISTRY_ONLY (`block_all`).
pub static BLOCK_ALL_ROUTE_NAME: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("block_all"));

/// The name of Istio's catch-all route to `PassthroughCluster`
/// (`allow_any`, its `util.Passthrough`).
pub static ALLOW_ANY_ROUTE_NAME: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("allow_any"));

impl RouteMatch {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(req.path)
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        let simple = [
            (&self.method, req.method.as_str()),
            (&self.scheme, req.scheme),
            (&self.authority, req.authority),
        ];
        if simple
            .iter()
            .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(v)))
        {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, m)| header_matches(req.headers, name, m))
            && !self
                .without_headers
                .iter()
                .any(|(name, m)| header_matches_missing_as_empty(req.headers, name, m))
            && self.query_params.iter().all(|(name, m)| {
                req.query
                    .and_then(|q| super::balancer::query_value(q, name))
                    .is_some_and(|v| m.matches(v))
            })
    }
}

/// A `withoutHeaders` condition, as Istio renders it for Envoy
/// (`invert_match` with `treat_missing_header_as_empty`): a missing header
/// is an empty value, except for "present" conditions.
fn header_matches_missing_as_empty(
    headers: &HeaderMap,
    name: &HeaderName,
    matcher: &StrMatcher,
) -> bool {
    match (headers.contains_key(name), matcher) {
        (true, _) => header_matches(headers, name, matcher),
        (false, StrMatcher::Present) => false,
        (false, matcher) => matcher.matches(""),
    }
}

fn header_matches(headers: &HeaderMap, name: &HeaderName, matcher: &StrMatcher) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    match values.next() {
        // Envoy matches a repeated header on its values joined by commas.
        Some(second) => {
            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in std::iter::once(second).chain(values) {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            matcher.matches(&joined)
        }
        None => first.to_str().is_ok_and(|v| matcher.matches(v)),
    }
}

/// Header edits, applied remove → set → add as Envoy's header parser does.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Replace.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete.
    pub remove: Vec<HeaderName>,
    /// Values with Envoy's substitutions, filled per request and applied
    /// after the others: the name, the value, and whether it is added
    /// (`add`) rather than set.
    pub formatted: Vec<(HeaderName, HeaderFormat, bool)>,
}

impl HeaderEdits {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.formatted.is_empty()
    }

    /// Applies the edits to `headers`: removals first, then `set`, then
    /// `add`, as Envoy's header parser evaluates them (a name both removed
    /// and set ends up set). Formatted values are filled from `ctx` and,
    /// for `%REQ(…)%` (request edits only), from `headers` as they were.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &FormatContext) {
        // (Most routes edit nothing: their four edits per request cost
        // only this check.)
        if self.is_empty() {
            return;
        }
        let formatted: Vec<(&HeaderName, Option<HeaderValue>, bool)> = self
            .formatted
            .iter()
            .map(|(name, format, add)| (name, format.render(ctx, Some(headers)), *add))
            .collect();
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value, add) in formatted {
            match (value, add) {
                (Some(value), true) => {
                    headers.append(name.clone(), value);
                }
                (Some(value), false) => {
                    headers.insert(name.clone(), value);
                }
                (None, _) => {}
            }
        }
    }
}

/// One weighted destination of a rule.
#[derive(Debug, Clone)]
pub struct WeightedDestination {
    /// Where to.
    pub target: DestinationTarget,
    /// Relative weight.
    pub weight: u32,
    /// Request header edits of this destination.
    pub request_headers: HeaderEdits,
    /// Response header edits of this destination.
    pub response_headers: HeaderEdits,
    /// The authority its request is sent with (`Host` or `:authority` in
    /// its `headers.request` `set`/`add`), over the rule's.
    pub authority: Option<HeaderValue>,
}

/// One compiled `http[]` rule.
#[derive(Debug, Clone)]
pub struct HttpRule {
    /// The rule's name (`tracemesh.route_name` on spans, the access log's
    /// `route_name`); none for unnamed rules, [`DEFAULT_ROUTE_NAME`] for
    /// the implicit route of a registry entry.
    pub name: Option<Arc<str>>,
    /// The rule as response details name it:
    /// `VirtualService:<namespace>/<name>[<rule name, else its index>]`;
    /// none for the implicit route of a registry entry.
    pub reference: Option<Arc<str>>,
    /// Alternatives; empty matches everything.
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations.
    pub destinations: Vec<WeightedDestination>,
    /// Sum of the weights.
    pub total_weight: u32,
    /// Request header edits of the rule.
    pub request_headers: HeaderEdits,
    /// Response header edits of the rule.
    pub response_headers: HeaderEdits,
    /// Timeouts, retries, faults, mirrors, rewrites, redirects.
    pub policy: super::policy::RoutePolicy,
}

/// How a request matched a rule.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'r> {
    /// The rule.
    pub rule: &'r HttpRule,
    /// The `uri.prefix` that matched, if the match was by prefix (a
    /// `rewrite.uri` replaces just that prefix); `/` when the match reads no
    /// URI, as Istio renders such a rule (Envoy's `prefix: /`, so a rewrite
    /// to `/v2` sends `/foo` as `/v2foo`).
    pub prefix: Option<&'r str>,
    /// The matched path template (`http.route`), when the match names one.
    pub route_template: Option<&'r Arc<str>>,
    /// The route's name: the matched entry's ([`RouteMatch::route_name`]),
    /// else the rule's.
    pub route_name: Option<&'r Arc<str>>,
}

impl HttpRule {
    /// Whether the request matches this rule, and how.
    pub fn matched(&self, req: &RequestView<'_>) -> Option<Matched<'_>> {
        if self.matches.is_empty() {
            return Some(Matched {
                rule: self,
                prefix: Some("/"),
                route_template: None,
                route_name: self.name.as_ref(),
            });
        }
        let m = self.matches.iter().find(|m| m.matches(req))?;
        let prefix = match &m.uri {
            Some(StrMatcher::Prefix(p)) => Some(p.as_str()),
            Some(_) => None,
            None => Some("/"),
        };
        Some(Matched {
            rule: self,
            prefix,
            route_template: m.route_template.as_ref(),
            route_name: m.route_name.as_ref().or(self.name.as_ref()),
        })
    }

    /// Picks a destination by weight (uniformly at random, as Envoy's
    /// weighted clusters do).
    pub fn pick_destination(&self) -> Option<&WeightedDestination> {
        if self.destinations.len() == 1 {
            return self.destinations.first();
        }
        if self.total_weight == 0 {
            return None;
        }
        let mut ticket = fastrand::u32(..self.total_weight);
        self.destinations.iter().find(|d| {
            if ticket < d.weight {
                true
            } else {
                ticket -= d.weight;
                false
            }
        })
    }
}

/// The rules of one host.
#[derive(Debug)]
pub struct VirtualHost {
    /// The host pattern (FQDN or `*.suffix`).
    pub host: String,
    /// The HTTP ports the registry declares for the host (empty outside it).
    pub ports: Vec<u16>,
    /// Whether the registry declares the host (a ServiceEntry host), so
    /// that it is addressed on its HTTP `ports` only
    /// ([`VirtualHost::serves`]); `false` for a VirtualService host
    /// outside the registry and a gateway's hosts.
    pub in_registry: bool,
    /// The VirtualService it came from (`namespace/name`), or none for the
    /// implicit route of a registry entry.
    pub virtual_service: Option<String>,
    /// Rules in order; the first that matches wins.
    pub rules: Vec<HttpRule>,
}

impl VirtualHost {
    /// The service port a request without a port in its authority was sent
    /// to: the scheme's port when the service declares it, else the
    /// service's only HTTP port, else the scheme's port.
    pub fn port_for(&self, scheme_port: u16) -> u16 {
        match self.ports.as_slice() {
            ports if ports.contains(&scheme_port) => scheme_port,
            [only] => *only,
            _ => scheme_port,
        }
    }

    /// Whether a request to the host at service `port` reaches these
    /// rules: a registry host on its HTTP ports only, as Istio puts a
    /// service's virtual host in the route table of each HTTP port it
    /// declares and no other (a request for it elsewhere matches none of
    /// that port's hosts); a VirtualService host outside the registry at
    /// any port.
    pub fn serves(&self, port: u16) -> bool {
        !self.in_registry || self.ports.contains(&port)
    }

    /// The first rule matching the request.
    pub fn route(&self, req: &RequestView<'_>) -> Option<Matched<'_>> {
        self.rules.iter().find_map(|r| r.matched(req))
    }
}

/// Every virtual host, by each name a client may use for it.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Exact names (FQDNs and their short aliases) → host.
    pub exact: HashMap<String, Arc<VirtualHost>>,
    /// `*.suffix` patterns, longest suffix first.
    pub wildcard: Vec<Arc<VirtualHost>>,
}

impl RouteTable {
    /// The virtual host for a request's host name (without port).
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(vh) = self.exact.get(host) {
            return Some(vh);
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find(&host.to_ascii_lowercase());
        }
        self.wildcard
            .iter()
            .find(|vh| crate::host::host_matches(&vh.host, host))
    }

    /// The virtual host for a request's host name (without port) at
    /// service `port`: as [`Self::find`], among the hosts that serve the
    /// port ([`VirtualHost::serves`]) — Istio's route table for the port,
    /// where a wildcard host may take a name whose own host declares
    /// other ports only.
    pub fn find_on(&self, host: &str, port: u16) -> Option<&Arc<VirtualHost>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(vh) = self.exact.get(host)
            && vh.serves(port)
        {
            return Some(vh);
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find_on(&host.to_ascii_lowercase(), port);
        }
        self.wildcard
            .iter()
            .find(|vh| vh.serves(port) && crate::host::host_matches(&vh.host, host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path,
            query: None,
            scheme: "http",
            authority: "svc",
            port: 80,
            headers,
        }
    }

    fn name(n: &'static str) -> HeaderName {
        HeaderName::from_static(n)
    }

    #[test]
    fn without_headers_read_a_missing_header_as_empty() {
        let none = HeaderMap::new();
        let mut debug = HeaderMap::new();
        debug.insert("x-debug", "1".parse().unwrap());
        let without = |m: StrMatcher| RouteMatch {
            without_headers: vec![(name("x-debug"), m)],
            ..RouteMatch::default()
        };
        // exact "1": missing is "", which is not "1", so the rule matches.
        let exact = without(StrMatcher::Exact("1".into()));
        assert!(exact.matches(&view("/", &none)));
        assert!(!exact.matches(&view("/", &debug)));
        // A pattern that matches "" excludes requests without the header too.
        let anything = without(StrMatcher::Regex(Regex::new("^(?:.*)$").unwrap()));
        assert!(!anything.matches(&view("/", &none)));
        // "present" (`{}` or `regex: "*"`): only requests without it match.
        let present = without(StrMatcher::Present);
        assert!(present.matches(&view("/", &none)));
        assert!(!present.matches(&view("/", &debug)));
    }

    #[test]
    fn path_separated_prefixes_stop_at_segment_boundaries() {
        let m = StrMatcher::PathSeparatedPrefix("/v2".into());
        for path in ["/v2", "/v2/", "/v2/example"] {
            assert!(m.matches(path), "{path}");
        }
        for path in ["/v2example", "/", "/foo/v2"] {
            assert!(!m.matches(path), "{path}");
        }
        assert!(m.matches_ignore_case("/V2/x"));
        assert!(!m.matches_ignore_case("/V2x"));
    }

    #[test]
    fn ignore_uri_case_leaves_regexes_case_sensitive() {
        let none = HeaderMap::new();
        let uri = |m: StrMatcher| RouteMatch {
            uri: Some(m),
            ignore_uri_case: true,
            ..RouteMatch::default()
        };
        assert!(uri(StrMatcher::Prefix("/api".into())).matches(&view("/API/x", &none)));
        assert!(uri(StrMatcher::Exact("/api".into())).matches(&view("/Api", &none)));
        let regex = uri(StrMatcher::Regex(Regex::new("^(?:/api/.*)$").unwrap()));
        assert!(regex.matches(&view("/api/x", &none)));
        assert!(!regex.matches(&view("/API/x", &none)));
    }

    fn destination(weight: u32) -> WeightedDestination {
        WeightedDestination {
            target: DestinationTarget {
                host: Arc::from("svc"),
                subset: None,
                port: None,
                clusters: Vec::new(),
            },
            weight,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            authority: None,
        }
    }

    #[test]
    fn weights_are_relative() {
        let rule = HttpRule {
            name: None,
            reference: None,
            matches: Vec::new(),
            destinations: vec![destination(1), destination(3), destination(0)],
            total_weight: 4,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            policy: super::super::policy::RoutePolicy::default(),
        };
        let mut counts = [0u32; 3];
        for _ in 0..8000 {
            let picked = rule.pick_destination().expect("a destination");
            let index = rule
                .destinations
                .iter()
                .position(|d| std::ptr::eq(d, picked))
                .unwrap();
            counts[index] += 1;
        }
        // 25% / 75% / 0%, with a margin far wider than chance needs.
        assert!((1600..2400).contains(&counts[0]), "{counts:?}");
        assert!((5600..6400).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn a_port_less_authority_means_the_services_port() {
        let vh = |ports: Vec<u16>| VirtualHost {
            host: "svc".into(),
            ports,
            in_registry: true,
            virtual_service: None,
            rules: Vec::new(),
        };
        assert_eq!(vh(vec![9080]).port_for(80), 9080);
        assert_eq!(vh(vec![80, 9080]).port_for(80), 80);
        assert_eq!(vh(vec![8080, 9080]).port_for(80), 80);
        assert_eq!(vh(Vec::new()).port_for(443), 443);
    }
}
