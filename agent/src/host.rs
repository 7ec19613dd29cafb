//! Host names as Istio resolves them: short names expand in a namespace
//! (`reviews` → `reviews.default.svc.cluster.local`), and a request's
//! authority finds its service whatever form the application used.

/// The authority a request names: the absolute URI's, else `Host`.
pub fn request_authority<B>(req: &http::Request<B>) -> Option<&str> {
    head_authority(req.uri(), req.headers())
}

/// The authority a request head names (its URI and headers): the URI's,
/// else `Host`.
pub fn head_authority<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// The cluster DNS suffix services live under.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Expands a host written in a resource of `namespace` to its FQDN, as
/// Istio's `ResolveShortnameToFQDN` does: a name without a dot gains
/// `.<namespace>.svc.cluster.local`; anything else is kept (lower-cased).
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('.') || host == "*" || host.parse::<std::net::IpAddr>().is_ok() {
        host
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// A ServiceEntry's own host as the registry keys it: literally (only
/// lower-cased, a trailing dot dropped). Istio's `convertServices` takes
/// `ServiceEntry.hosts` as they are written — `localhost` is a service named
/// `localhost`, resolved by DNS as `localhost` — unlike hosts that *refer*
/// to a service (VirtualService and DestinationRule hosts, destinations),
/// which [`resolve_short_name`] expands.
pub fn service_entry_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The FQDNs a request's host may stand for, in the order to try them.
/// A client in `namespace` may say `reviews`, `reviews.default`,
/// `reviews.default.svc` or the FQDN (Istio's per-virtual-host domains).
pub fn authority_candidates(host: &str, namespace: &str) -> [Option<String>; 2] {
    let host = host.trim_end_matches('.');
    let dots = host.bytes().filter(|b| *b == b'.').count();
    let expanded = if dots == 0 {
        Some(format!("{host}.{namespace}.{CLUSTER_DOMAIN}"))
    } else if dots == 1 {
        Some(format!("{host}.{CLUSTER_DOMAIN}"))
    } else if host.ends_with(".svc") {
        Some(format!("{host}.cluster.local"))
    } else if host.ends_with(".svc.cluster") {
        Some(format!("{host}.local"))
    } else {
        None
    };
    [Some(host.to_owned()), expanded]
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port.
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port);
    }
    // Vectorised byte searches: this runs several times a request, and a
    // byte-at-a-time search costs more than the rest of the split.
    let bytes = authority.as_bytes();
    match memchr::memrchr(b':', bytes) {
        Some(colon) if memchr::memchr(b':', &bytes[..colon]).is_none() => {
            match authority[colon + 1..].parse() {
                Ok(port) => (&authority[..colon], Some(port)),
                Err(_) => (authority, None),
            }
        }
        _ => (authority, None),
    }
}

/// Whether `pattern` (an exact host or `*.suffix`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Kubernetes-style `(name, namespace)` of a service FQDN, as Istio reports
/// them in `destination_service_name`/`_namespace`; other hosts keep their
/// whole name and the resource's namespace.
pub fn service_name_and_namespace<'a>(
    fqdn: &'a str,
    resource_namespace: &'a str,
) -> (&'a str, &'a str) {
    if let Some(head) = fqdn
        .strip_suffix(CLUSTER_DOMAIN)
        .and_then(|h| h.strip_suffix('.'))
        && let Some((name, namespace)) = head.split_once('.')
        && !namespace.contains('.')
    {
        return (name, namespace);
    }
    (fqdn, resource_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_in_their_namespace() {
        assert_eq!(
            resolve_short_name("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("Reviews.prod", "default"),
            "reviews.prod"
        );
        assert_eq!(resolve_short_name("*.example.com", "x"), "*.example.com");
        assert_eq!(resolve_short_name("10.0.0.1", "x"), "10.0.0.1");
    }

    #[test]
    fn authority_forms_find_the_fqdn() {
        let fqdn = Some("reviews.default.svc.cluster.local".to_owned());
        assert_eq!(authority_candidates("reviews", "default")[1], fqdn);
        assert_eq!(authority_candidates("reviews.default", "other")[1], fqdn);
        assert_eq!(authority_candidates("reviews.default.svc", "x")[1], fqdn);
        assert_eq!(
            authority_candidates("reviews.default.svc.cluster.local.", "x")[0],
            fqdn
        );
    }

    #[test]
    fn splits_ports() {
        assert_eq!(split_host_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_host_port("reviews"), ("reviews", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }

    #[test]
    fn wildcards_match_suffixes() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
    }

    #[test]
    fn service_names_follow_kubernetes() {
        assert_eq!(
            service_name_and_namespace("reviews.default.svc.cluster.local", "x"),
            ("reviews", "default")
        );
        assert_eq!(
            service_name_and_namespace("api.example.com", "ns"),
            ("api.example.com", "ns")
        );
    }
}
