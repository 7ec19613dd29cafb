//! JSON Web Key Sets: inline (`jwks`) or fetched from `jwksUri` and kept
//! fresh in the background, as istiod and Envoy keep them. The first fetch
//! starts when a config is put in force; after that the set is refreshed
//! every [`REFRESH`], and a failed fetch is retried (1s, doubling to 60s)
//! while the previous keys stay in force. A request reads the keys in hand
//! (one atomic load); only one carrying a token for a set whose first fetch
//! is still unanswered waits for it, at most its rule's `timeout`, as
//! Envoy's `remote_jwks` holds it. While no fetch has succeeded, tokens
//! fail with Envoy's `Jwks remote fetch is failed`. `file://` URIs read a file
//! (for tests and for keys mounted into the pod); `http://` and `https://`
//! (the system's roots) are fetched within the rule's `timeout` (Istio
//! renders it as the fetch's `http_uri.timeout`; [`DEFAULT_TIMEOUT`] when
//! unset), at most 1 MiB.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How often a fetched key set is fetched again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Longest one fetch may take, and a request with a token wait for its key
/// set's first fetch, when the rule sets no `timeout`: Istio's
/// `jwtRules.timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid`, when the set names it.
    pub kid: Option<String>,
    /// `alg`, when the set names it.
    pub alg: Option<Algorithm>,
    /// The key's family: `RSA`, `EC` or `OKP`.
    pub family: &'static str,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish()
    }
}

impl Key {
    /// Whether this key can verify a token signed with `alg` (and `kid`).
    pub fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        let family = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => "RSA",
            Algorithm::ES256 | Algorithm::ES384 => "EC",
            Algorithm::EdDSA => "OKP",
            _ => return false,
        };
        family == self.family
            && self.alg.is_none_or(|a| a == alg)
            && kid.is_none_or(|k| self.kid.as_deref().is_none_or(|mine| mine == k))
    }
}

/// Why a key set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON Web Key Set.
    #[error("not a JSON Web Key Set: {0}")]
    Parse(String),
    /// The set holds no key the agent can use.
    #[error("the key set holds no RSA, EC (P-256, P-384) or Ed25519 public key")]
    NoKeys,
    /// The fetch failed.
    #[error("fetching {uri}: {reason}")]
    Fetch {
        /// The URI.
        uri: String,
        /// What went wrong.
        reason: String,
    },
}

/// Parses a key set; keys of kinds the agent cannot use are skipped (as
/// Envoy skips them). HMAC keys (`oct`) are never accepted: a JWKS is public.
pub fn parse_jwks(text: &str) -> Result<Vec<Key>, JwksError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| JwksError::Parse(e.to_string()))?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => "RSA",
                AlgorithmParameters::EllipticCurve(_) => "EC",
                AlgorithmParameters::OctetKeyPair(_) => "OKP",
                AlgorithmParameters::OctetKey(_) => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                family,
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(keys)
}

/// The keys of one issuer: fixed (inline `jwks`) or fetched (`jwksUri`).
#[derive(Debug)]
pub struct JwksStore {
    uri: Option<String>,
    /// Longest a fetch takes, and a request waits for the first.
    timeout: Duration,
    keys: ArcSwapOption<Vec<Key>>,
    last_error: ArcSwapOption<String>,
    started: std::sync::Once,
    /// A first fetch has been answered (or failed).
    attempted: AtomicBool,
    /// Wakes the requests that wait for the first fetch.
    first_fetch: tokio::sync::Notify,
}

impl JwksStore {
    /// A store holding `keys` for good.
    pub fn inline(keys: Vec<Key>) -> Arc<Self> {
        Arc::new(Self {
            uri: None,
            timeout: DEFAULT_TIMEOUT,
            keys: ArcSwapOption::from_pointee(keys),
            last_error: ArcSwapOption::empty(),
            started: std::sync::Once::new(),
            attempted: AtomicBool::new(true),
            first_fetch: tokio::sync::Notify::new(),
        })
    }

    /// A store for `uri`, empty until its first fetch; each fetch, and a
    /// request's wait for the first, takes at most `timeout`.
    pub fn remote(uri: &str, timeout: Duration) -> Self {
        Self {
            uri: Some(uri.to_owned()),
            timeout,
            keys: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            started: std::sync::Once::new(),
            attempted: AtomicBool::new(false),
            first_fetch: tokio::sync::Notify::new(),
        }
    }

    /// The keys in hand (none before a first successful fetch).
    pub fn keys(&self) -> Option<Arc<Vec<Key>>> {
        self.keys.load_full()
    }

    /// Whether any keys are in hand.
    pub fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The URI fetched from, for a remote store.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// Why the last fetch failed, when it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.load_full().map(|e| String::clone(&e))
    }

    /// Starts the background refresher of a remote store (once; later calls
    /// do nothing). The refresher stops when the store is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.uri.is_none() {
            return;
        }
        self.started.call_once(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("jwks-refresh".into())
                .spawn(move || refresh_loop(weak));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start the JWKS refresher");
                self.first_fetch_over();
            }
        });
    }

    /// A first fetch has been answered, or none will come: whoever waits
    /// for one goes on.
    fn first_fetch_over(&self) {
        if !self.attempted.swap(true, Ordering::AcqRel) {
            self.first_fetch.notify_waiters();
        }
    }

    /// Waits until the first fetch of a remote store has been answered (at
    /// most the store's timeout), as Envoy's `remote_jwks` holds a request
    /// until its keys come: a token arriving as the config is put in force
    /// is judged by the keys, not refused for their absence. Returns at
    /// once once any fetch has been answered (or could not be started), and
    /// for inline keys.
    pub async fn first_fetch(&self) {
        if self.attempted.load(Ordering::Acquire) {
            return;
        }
        let notified = self.first_fetch.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.attempted.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(self.timeout, notified).await;
    }

    /// Fetches now and, on success, replaces the keys; on failure the
    /// previous keys stay and the error is kept (and returned).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Some(uri) = &self.uri else {
            return Ok(self.keys().map_or(0, |k| k.len()));
        };
        let fetched = match tokio::time::timeout(self.timeout, fetch(uri)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
        .map_err(|reason| JwksError::Fetch {
            uri: uri.clone(),
            reason,
        })
        .and_then(|text| parse_jwks(&text));
        let answered = match fetched {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Some(Arc::new(keys)));
                self.last_error.store(None);
                Ok(count)
            }
            Err(error) => {
                tracing::warn!(%error, kept = self.keys.load().is_some(), "jwks fetch failed; the previous keys stay");
                self.last_error.store(Some(Arc::new(error.to_string())));
                Err(error)
            }
        };
        self.first_fetch_over();
        answered
    }
}

fn refresh_loop(store: Weak<JwksStore>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("cannot start the JWKS refresher's runtime");
        if let Some(store) = store.upgrade() {
            store.first_fetch_over();
        }
        return;
    };
    runtime.block_on(async move {
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = {
                let Some(store) = store.upgrade() else { return };
                match store.refresh().await {
                    Ok(_) => {
                        retry = Duration::from_secs(1);
                        REFRESH
                    }
                    Err(_) => {
                        let wait = retry;
                        retry = (retry * 2).min(Duration::from_secs(60));
                        wait
                    }
                }
            };
            // Wake at least once a second so a dropped store ends the thread.
            let mut left = wait;
            while !left.is_zero() {
                let step = left.min(Duration::from_secs(1));
                tokio::time::sleep(step).await;
                left -= step;
                if store.strong_count() == 0 {
                    return;
                }
            }
        }
    });
}

/// Reads `uri`: `file://`, `http://` or `https://`.
async fn fetch(uri: &str) -> Result<String, String> {
    if let Some(path) = uri.strip_prefix("file://") {
        let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        return String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned());
    }
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let https = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the scheme is not http, https or file".into()),
    };
    let host = parsed.host().ok_or("no host")?.to_owned();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = parsed.authority().map_or(host.clone(), |a| a.to_string());
    if https {
        let roots = crate::tls::material::root_store(
            &std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
                .map_err(|e| format!("the system's roots: {e}"))?,
            "system roots",
        )
        .map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::material::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        get(tls, &authority, &path).await
    } else {
        get(tcp, &authority, &path).await
    }
}

async fn get<S>(stream: S, authority: &str, path: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Empty, Limited};
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())
}
