//! What every request of a run looks like, built once from the flags so a
//! worker only clones it (plus a fresh `traceparent` when asked).

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::Full;

use super::args::LoadArgs;

/// Why the flags do not describe a request that can be sent.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse.
    #[error("url {url:?}: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        source: http::uri::InvalidUri,
    },
    /// Only cleartext HTTP is spoken.
    #[error("url {0:?}: only http:// is supported (HTTP/2 is h2c with --h2)")]
    Scheme(String),
    /// The URL names no host.
    #[error("url {0:?}: no host")]
    NoHost(String),
    /// A `-H` value is not `name: value`.
    #[error("header {0:?}: expected \"name: value\"")]
    Header(String),
    /// `--method` is not a method token.
    #[error("method {0:?}: not an HTTP method")]
    Method(String),
    /// The address to connect to did not resolve.
    #[error("address {address}: {reason}")]
    Resolve {
        /// `host:port` that was looked up.
        address: String,
        /// Why it did not resolve.
        reason: String,
    },
}

/// The request every worker sends, and where it sends it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as it will be reported.
    pub url: Uri,
    /// The socket address connections go to.
    pub connect: SocketAddr,
    /// HTTP/2 (h2c prior knowledge) rather than HTTP/1.1.
    pub h2: bool,
    method: Method,
    /// Origin-form for HTTP/1.1, absolute form (scheme + authority) for HTTP/2.
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    traceparent: bool,
}

impl Target {
    /// Builds the target from the flags, resolving the connect address once.
    pub fn from_args(args: &LoadArgs) -> Result<Self, TargetError> {
        let url = parse_url(&args.url)?;
        let url_authority = url
            .authority()
            .cloned()
            .ok_or_else(|| TargetError::NoHost(args.url.clone()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tracemesh-load/", env!("CARGO_PKG_VERSION"))),
        );
        let mut authority = url_authority.clone();
        for raw in &args.headers {
            let (name, value) = parse_header(raw)?;
            if name == HOST {
                authority = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<Authority>().ok())
                    .ok_or_else(|| TargetError::Header(raw.clone()))?;
            } else {
                headers.append(name, value);
            }
        }
        let body = match (&args.payload, args.payload_size) {
            (Some(text), _) => Bytes::from(text.clone()),
            (None, Some(size)) => Bytes::from(generated_payload(size)),
            (None, None) => Bytes::new(),
        };
        let method = match &args.method {
            Some(m) => {
                Method::from_bytes(m.as_bytes()).map_err(|_| TargetError::Method(m.clone()))?
            }
            None if !body.is_empty() => Method::POST,
            None => Method::GET,
        };
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = if args.h2 {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path)
                .build()
        } else {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(HOST, host);
            }
            Uri::builder().path_and_query(path).build()
        };
        let uri = uri.map_err(|_| TargetError::NoHost(args.url.clone()))?;
        let connect_to = match &args.connect_to {
            Some(address) => address.clone(),
            None => format!(
                "{}:{}",
                url_authority.host(),
                url_authority.port_u16().unwrap_or(80)
            ),
        };
        Ok(Self {
            url,
            connect: resolve(&connect_to)?,
            h2: args.h2,
            method,
            uri,
            headers,
            body,
            traceparent: args.traceparent,
        })
    }

    /// One request, with a new trace (random ids, sampled) when asked.
    pub fn request(&self, rng: &mut fastrand::Rng) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = if self.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *request.headers_mut() = self.headers.clone();
        if self.traceparent
            && let Ok(value) = HeaderValue::from_str(&new_traceparent(rng))
        {
            request
                .headers_mut()
                .insert(HeaderName::from_static("traceparent"), value);
        }
        request
    }

    /// "HTTP/1.1" or "HTTP/2", for reports.
    pub fn protocol(&self) -> &'static str {
        if self.h2 { "HTTP/2" } else { "HTTP/1.1" }
    }
}

fn parse_url(raw: &str) -> Result<Uri, TargetError> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url: Uri = with_scheme.parse().map_err(|source| TargetError::Url {
        url: raw.to_owned(),
        source,
    })?;
    if url.scheme() != Some(&Scheme::HTTP) {
        return Err(TargetError::Scheme(raw.to_owned()));
    }
    Ok(url)
}

fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), TargetError> {
    let bad = || TargetError::Header(raw.to_owned());
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

fn resolve(address: &str) -> Result<SocketAddr, TargetError> {
    let fail = |reason: String| TargetError::Resolve {
        address: address.to_owned(),
        reason,
    };
    address
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no addresses".into()))
}

/// A printable, repeating payload, so a body looks the same on every run.
fn generated_payload(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size).map(|i| ALPHABET[i % ALPHABET.len()]).collect()
}

/// `00-<trace id>-<span id>-01`: a new sampled root, ids never all zero.
fn new_traceparent(rng: &mut fastrand::Rng) -> String {
    let trace_id = rng.u128(1..);
    let span_id = rng.u64(1..);
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn target(args: &[&str]) -> Result<Target, TargetError> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
            .expect("flags parse");
        Target::from_args(&cli.args)
    }

    #[test]
    fn h1_sends_origin_form_with_the_url_host() {
        let t = target(&["http://127.0.0.1:8080/a?b=1"]).unwrap();
        let req = t.request(&mut fastrand::Rng::with_seed(1));
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(t.connect, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn connect_to_keeps_the_url_host() {
        let t = target(&[
            "--connect-to",
            "127.0.0.1:15001",
            "http://reviews.default.svc.cluster.local:9080/",
        ])
        .unwrap();
        let req = t.request(&mut fastrand::Rng::with_seed(1));
        assert_eq!(
            req.headers()[HOST],
            "reviews.default.svc.cluster.local:9080"
        );
        assert_eq!(t.connect, "127.0.0.1:15001".parse().unwrap());
    }

    #[test]
    fn h2_carries_the_authority_in_the_uri() {
        let t = target(&[
            "--h2",
            "-H",
            "Host: upstream.local",
            "-H",
            "x-a: 1",
            "127.0.0.1:81/p",
        ])
        .unwrap();
        let req = t.request(&mut fastrand::Rng::with_seed(1));
        assert_eq!(req.uri(), "http://upstream.local/p");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get(HOST).is_none());
        assert_eq!(req.headers()["x-a"], "1");
    }

    #[test]
    fn payload_makes_a_post_unless_the_method_is_given() {
        let t = target(&["--payload-size", "100", "http://127.0.0.1/"]).unwrap();
        let req = t.request(&mut fastrand::Rng::with_seed(1));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(http_body::Body::size_hint(req.body()).exact(), Some(100));
        let t = target(&["--method", "PUT", "--body", "hi", "http://127.0.0.1/"]).unwrap();
        assert_eq!(t.method, Method::PUT);
    }

    #[test]
    fn each_request_starts_a_new_sampled_trace() {
        let t = target(&["--traceparent", "http://127.0.0.1/"]).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let a = t.request(&mut rng).headers()["traceparent"].clone();
        let b = t.request(&mut rng).headers()["traceparent"].clone();
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 4, "{a}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(matches!(
            target(&["https://a/"]),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            target(&["-H", "novalue", "http://127.0.0.1/"]),
            Err(TargetError::Header(_))
        ));
        assert!(matches!(
            target(&["--method", "GE T", "http://127.0.0.1/"]),
            Err(TargetError::Method(_))
        ));
    }
}
