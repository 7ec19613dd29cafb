//! Services and their ports as the registry knows them.

use std::fmt;
use std::sync::{Arc, LazyLock};

use super::capture::OutboundTrafficMode;

/// A service as metrics and spans name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// The FQDN (`reviews.default.svc.cluster.local`): `destination_service`.
    pub host: String,
    /// The short name (`reviews`): `destination_service_name`.
    pub name: String,
    /// The namespace: `destination_service_namespace`.
    pub namespace: String,
}

impl ServiceName {
    /// Names `fqdn`, declared in a resource of `namespace`.
    pub fn new(fqdn: &str, namespace: &str) -> Self {
        let (name, namespace) = crate::host::service_name_and_namespace(fqdn, namespace);
        Self {
            host: fqdn.to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The service labels of a destination outside the registry, as Istio
    /// labels it: `destination_service_name` the cluster it went to —
    /// `PassthroughCluster` when passed through (`ALLOW_ANY`),
    /// `BlackHoleCluster` when refused (`REGISTRY_ONLY`, or a request the
    /// agent could not route anywhere) — and `destination_service` and
    /// `destination_service_namespace` `unknown`. Where Istio's
    /// `destination_service` falls back to the request's Host, this never
    /// does: the client chooses the host, so it would make one series per
    /// host sent. One shared value per mode.
    pub fn outside_registry(mode: OutboundTrafficMode) -> Arc<ServiceName> {
        static PASSTHROUGH: LazyLock<Arc<ServiceName>> =
            LazyLock::new(|| ServiceName::unknown_in(OutboundTrafficMode::AllowAny));
        static BLACK_HOLE: LazyLock<Arc<ServiceName>> =
            LazyLock::new(|| ServiceName::unknown_in(OutboundTrafficMode::RegistryOnly));
        match mode {
            OutboundTrafficMode::AllowAny => PASSTHROUGH.clone(),
            OutboundTrafficMode::RegistryOnly => BLACK_HOLE.clone(),
        }
    }

    fn unknown_in(mode: OutboundTrafficMode) -> Arc<ServiceName> {
        Arc::new(Self {
            host: "unknown".to_owned(),
            name: mode.cluster_name().to_owned(),
            namespace: "unknown".to_owned(),
        })
    }
}

/// The application protocol of a port, from its ServiceEntry declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 to the upstream (HTTP/2 for gRPC requests).
    Http,
    /// HTTP/2 to the upstream.
    Http2,
    /// gRPC: HTTP/2 to the upstream.
    Grpc,
    /// Plain bytes.
    Tcp,
    /// TLS the client speaks end to end (Istio's TLS and HTTPS): passed
    /// through as bytes, routed by its SNI when captured.
    Tls,
    /// Not declared: the upstream is spoken to as the client spoke.
    Auto,
}

impl Protocol {
    /// Parses Istio's protocol names, case-insensitively. TLS and HTTPS
    /// are TLS; other protocols carried as opaque bytes (MONGO, MYSQL,
    /// REDIS) are TCP, as Istio proxies them with its filters off.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "" => Self::Auto,
            "HTTP" | "HTTP_PROXY" => Self::Http,
            "HTTP2" => Self::Http2,
            "GRPC" | "GRPC-WEB" => Self::Grpc,
            "TLS" | "HTTPS" => Self::Tls,
            "TCP" | "MONGO" | "MYSQL" | "REDIS" => Self::Tcp,
            _ => return None,
        })
    }

    /// Istio's explicit protocol selection for a Kubernetes Service port:
    /// `appProtocol` when set (with Kubernetes' `kubernetes.io/h2c`,
    /// `kubernetes.io/ws` and `kubernetes.io/wss`), else the port name's
    /// prefix before its first `-` (`http-web`, `grpc-api`, `tcp-db`;
    /// `grpc-web` as a whole). Undeclared is [`Protocol::Auto`] (sniffed),
    /// except on the well-known server-first ports SMTP 25, DNS 53, MySQL
    /// 3306 and MongoDB 27017, which are TCP: a client there waits for the
    /// server, so there would be nothing to sniff. (A ServiceEntry port
    /// always names its `protocol`, which [`Protocol::parse`] reads.)
    pub fn select(port: u16, name: &str, app_protocol: Option<&str>) -> Self {
        let declared = match app_protocol {
            Some("kubernetes.io/h2c") => Some(Self::Http2),
            Some("kubernetes.io/ws") => Some(Self::Http),
            Some("kubernetes.io/wss") => Some(Self::Tls),
            Some(app) => Self::parse_prefix(app),
            None => Self::parse_prefix(name),
        };
        match declared {
            Some(Self::Auto) | None if matches!(port, 25 | 53 | 3306 | 27017) => Self::Tcp,
            Some(protocol) => protocol,
            None => Self::Auto,
        }
    }

    /// The protocol a port name (or `appProtocol`) starts with.
    fn parse_prefix(name: &str) -> Option<Self> {
        if name.len() >= 8 && name[..8].eq_ignore_ascii_case("grpc-web") {
            return Some(Self::Grpc);
        }
        let prefix = name.split('-').next().unwrap_or_default();
        Self::parse(prefix).filter(|p| *p != Self::Auto)
    }

    /// Whether requests on this port are HTTP (routed by VirtualService http rules).
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp | Self::Tls)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Auto => "AUTO",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_names_as_istio_reads_them() {
        assert_eq!(Protocol::parse("https"), Some(Protocol::Tls));
        assert_eq!(Protocol::parse("TLS"), Some(Protocol::Tls));
        assert_eq!(Protocol::parse("Mongo"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("grpc-web"), Some(Protocol::Grpc));
        assert_eq!(Protocol::parse("UDP"), None);
        assert!(!Protocol::Tls.is_http() && !Protocol::Tcp.is_http() && Protocol::Auto.is_http());
    }

    #[test]
    fn kubernetes_ports_by_app_protocol_then_name_prefix() {
        let cases = [
            (9080, "http", None, Protocol::Http),
            (9080, "http-web", None, Protocol::Http),
            (9080, "HTTP2-api", None, Protocol::Http2),
            (50051, "grpc-reviews", None, Protocol::Grpc),
            (8080, "grpc-web-ui", None, Protocol::Grpc),
            (5432, "tcp-postgres", None, Protocol::Tcp),
            (443, "tls-passthrough", None, Protocol::Tls),
            (443, "https", None, Protocol::Tls),
            (27017, "mongo", None, Protocol::Tcp),
            (8080, "web", None, Protocol::Auto),
            (8080, "", None, Protocol::Auto),
            (8080, "httpx", None, Protocol::Auto),
            (3306, "db", None, Protocol::Tcp),
            (53, "", None, Protocol::Tcp),
            (8080, "tcp-raw", Some("http"), Protocol::Http),
            (8080, "web", Some("kubernetes.io/h2c"), Protocol::Http2),
            (8080, "web", Some("kubernetes.io/ws"), Protocol::Http),
            (8443, "web", Some("kubernetes.io/wss"), Protocol::Tls),
            (8080, "http", Some("example.com/custom"), Protocol::Auto),
            (25, "http", Some("example.com/custom"), Protocol::Tcp),
        ];
        for (port, name, app, want) in cases {
            assert_eq!(
                Protocol::select(port, name, app),
                want,
                "{port} {name:?} {app:?}"
            );
        }
    }
}
