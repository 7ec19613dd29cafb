//! Services and their ports as the registry knows them.

use std::fmt;

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
    /// Not declared: the upstream is spoken to as the client spoke.
    Auto,
}

impl Protocol {
    /// Parses Istio's protocol names, case-insensitively. Names of protocols
    /// carried as opaque bytes (TLS, HTTPS, MONGO, …) map to TCP.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "" => Self::Auto,
            "HTTP" | "HTTP_PROXY" => Self::Http,
            "HTTP2" => Self::Http2,
            "GRPC" | "GRPC-WEB" => Self::Grpc,
            "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" => Self::Tcp,
            _ => return None,
        })
    }

    /// Whether requests on this port are HTTP (routed by VirtualService http rules).
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
            Self::Auto => "AUTO",
        })
    }
}
