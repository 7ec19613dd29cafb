//! How a Bookinfo application calls another service: through its own
//! sidecar's outbound listener with the service in `Host` (the rootless
//! demo), or by the plain service URL that iptables captures (in pods),
//! forwarding the
//! trace headers of the request it is serving, as Bookinfo's instrumented
//! applications do, so the sidecars' spans join one trace.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The headers Bookinfo's applications copy from the request they serve to
/// the requests they send: W3C and B3 trace context, Envoy's request id,
/// and what routing rules match on.
const FORWARDED: [&str; 13] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "end-user",
    "user-agent",
];

/// The headers of `incoming` to forward.
pub fn forwarded(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        let name = HeaderName::from_static(name);
        for value in incoming.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer in time.
    #[error("{service}: no answer within {timeout:?}")]
    Timeout {
        /// The service called.
        service: &'static str,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// The connection or the exchange failed.
    #[error("{service}: {reason}")]
    Failed {
        /// The service called.
        service: &'static str,
        /// Why.
        reason: String,
    },
    /// The service answered with an error status.
    #[error("{service}: status {status}")]
    Status {
        /// The service called.
        service: &'static str,
        /// What it answered.
        status: StatusCode,
    },
}

/// A keep-alive HTTP/1.1 client, to the workload's sidecar or straight
/// to the services.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Empty<Bytes>>,
    sidecar: Option<SocketAddr>,
}

impl Upstream {
    /// A client sending everything to `sidecar` (the outbound listener), or
    /// with `None` to `http://{service}:{port}` as an unchanged
    /// application does (the name resolved by the system's resolver).
    pub fn new(sidecar: Option<SocketAddr>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            sidecar,
        }
    }

    /// `GET http://{service}:{port}{path}` through the sidecar; the body of
    /// a 2xx answer.
    pub async fn get(
        &self,
        service: &'static str,
        port: u16,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let failed = |reason: String| CallError::Failed { service, reason };
        let authority = format!("{service}:{port}");
        let target = match self.sidecar {
            Some(sidecar) => format!("http://{sidecar}{path}"),
            None => format!("http://{authority}{path}"),
        };
        let mut request = Request::get(target)
            .body(Empty::new())
            .map_err(|e| failed(e.to_string()))?;
        *request.headers_mut() = headers.clone();
        let host = HeaderValue::from_str(&authority).map_err(|e| failed(e.to_string()))?;
        request.headers_mut().insert(HOST, host);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(CallError::Status { service, status })
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout { service, timeout })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_and_routing_headers_are_forwarded_and_others_are_not() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("x-request-id", "r-1"),
            ("end-user", "jason"),
            ("cookie", "session=secret"),
            ("content-length", "0"),
        ] {
            incoming.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = forwarded(&incoming);
        assert_eq!(out.len(), 4);
        assert!(out.get("cookie").is_none() && out.get("content-length").is_none());
        assert_eq!(out["end-user"], "jason");
    }
}
