//! The case format: one YAML file per case (see `README.md` beside this
//! file). `$name.port` and `$name.address` in the file stand for the port
//! and `127.0.0.1:port` of the upstream `name`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, and where Istio or Envoy define the behaviour.
    pub description: String,
    /// Which listener the requests enter.
    pub direction: Direction,
    /// Recording upstreams, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Extra Agent `spec` fields (mesh settings), merged into the generated
    /// Agent document.
    #[serde(default)]
    pub agent: Option<Value>,
    /// The Istio resources, as a user writes them.
    #[serde(default)]
    pub istio: String,
    /// What Istio's control plane renders for them.
    pub envoy: EnvoySpec,
    /// Compare trace headers (with ids masked) instead of leaving them out.
    #[serde(default)]
    pub trace: bool,
    /// Upstream request headers left out of the comparison, with the reason.
    #[serde(default)]
    pub ignore_headers: BTreeMap<String, String>,
    /// The requests, in order.
    pub requests: Vec<Step>,
}

/// Which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the mesh to the local application (the app is upstream `app`).
    Inbound,
    /// From the local application to the mesh.
    Outbound,
}

/// How an upstream behaves.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Answer with this status (default 200).
    #[serde(default)]
    pub status: u16,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Answer each request with the step's `respond` bytes, verbatim (for
    /// response heads a server library would not write); the connection
    /// stays open only after an answer framed by one `content-length`
    /// (`upstream.rs`).
    #[serde(default)]
    pub raw: bool,
    /// On HTTP/2 connections, the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// (default: hyper's, 200).
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// Speak HTTP/2 only and reset every stream with this error code
    /// (`RST_STREAM`, RFC 9113 §7: 7 is `REFUSED_STREAM`) instead of
    /// answering.
    #[serde(default)]
    pub reset: Option<u32>,
}

/// The Envoy side: the HTTP connection manager's fields (merged over the
/// fields Istio renders on every sidecar listener, `envoy_base.yaml`) and
/// the clusters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoySpec {
    /// `HttpConnectionManager` fields.
    pub http_connection_manager: Value,
    /// Clusters.
    #[serde(default)]
    pub clusters: Vec<Value>,
}

/// One request and what must come of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The request.
    pub send: Send,
    /// What tracemesh and Envoy must both do.
    pub expect: Expect,
    /// Where tracemesh differs from Envoy on purpose: what Envoy does.
    #[serde(default)]
    pub envoy: Option<Expect>,
    /// Why it differs (required with `envoy`).
    #[serde(default)]
    pub why: Option<String>,
    /// What a `raw` upstream answers this step's requests with, byte for
    /// byte (default a `200` with body `ok`).
    #[serde(default)]
    pub respond: Option<String>,
    /// A `raw` upstream keeps the connection open and silent after its
    /// answer (an upstream stalled mid-response) until the proxy closes it.
    #[serde(default)]
    pub hold: bool,
    /// A `raw` upstream resets the connection (a TCP RST: `SO_LINGER` 0)
    /// once this step's answer (`respond`, which may be empty) is written,
    /// instead of keeping or closing it: a server that crashed or was
    /// killed mid-exchange.
    #[serde(default)]
    pub reset_connection: bool,
}

/// A request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    /// Method (default GET).
    #[serde(default = "get")]
    pub method: String,
    /// Request target, sent as is (default `/`).
    #[serde(default = "slash")]
    pub path: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2); default `app` inbound.
    #[serde(default)]
    pub authority: Option<String>,
    /// Header lines, in order (repeat a name to send it twice; a `host`
    /// line here replaces the generated one).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Body (sent with `content-length`).
    #[serde(default)]
    pub body: Option<String>,
    /// The whole request, byte for byte (HTTP/1.1 only; for malformed ones).
    #[serde(default)]
    pub raw: Option<String>,
    /// `1.1` (default) or `2` (h2c, prior knowledge).
    #[serde(default)]
    pub http2: bool,
    /// Send this many copies at once (each on its own connection).
    #[serde(default = "one")]
    pub concurrent: usize,
    /// HTTP/1.1: the request's last byte goes this long after the rest
    /// (a slow upload: the request arrives whole only then).
    #[serde(default)]
    pub last_byte_after_ms: u64,
}

fn get() -> String {
    "GET".into()
}

fn slash() -> String {
    "/".into()
}

fn one() -> usize {
    1
}

/// An outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Status (every copy, unless `outcomes`).
    #[serde(default)]
    pub status: Option<u16>,
    /// Response flags (default `-`).
    #[serde(default)]
    pub flags: Option<String>,
    /// For concurrent copies: each copy's `status flags`, in any order
    /// (with ` name=value` after them for each of `outcome_headers` the
    /// copy's response had).
    #[serde(default)]
    pub outcomes: Option<Vec<String>>,
    /// Response headers shown in each copy's outcome, where present.
    #[serde(default)]
    pub outcome_headers: Vec<String>,
    /// What the upstreams received: `none`, or the (first) request.
    #[serde(default)]
    pub upstream: Option<UpstreamExpect>,
    /// Response header values the client saw (repeated lines joined with
    /// `,`); `~` means absent. Only headers named here are compared.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// The response body the client saw (chunked framing removed).
    #[serde(default)]
    pub body: Option<String>,
    /// The interim (1xx) statuses the client saw before the final one.
    #[serde(default)]
    pub interim: Option<Vec<u16>>,
    /// Connections the upstreams accepted while the step ran (summed).
    #[serde(default)]
    pub connections: Option<usize>,
}

/// What an upstream received.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UpstreamExpect {
    /// `none`: no request reached any upstream.
    None(NoneWord),
    /// The request the upstreams received first.
    Request(ExpectedRequest),
}

/// The word `none`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoneWord {
    /// Nothing.
    None,
}

/// Fields of the received request that must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    /// Which upstream.
    #[serde(default)]
    pub name: Option<String>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// Header values (repeated lines joined with `,`); `~` means absent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
}

/// The upstream names a case file declares (read before the upstreams
/// start, so their addresses can be put into the text).
pub fn upstream_specs(text: &str) -> BTreeMap<String, UpstreamSpec> {
    #[derive(Deserialize)]
    struct Upstreams {
        #[serde(default)]
        upstreams: BTreeMap<String, UpstreamSpec>,
    }
    serde_yaml_ng::from_str::<Upstreams>(text)
        .map(|u| u.upstreams)
        .unwrap_or_default()
}

/// Puts each upstream's address into the text and parses the case.
pub fn load(path: &Path, text: &str, ports: &BTreeMap<String, u16>) -> Result<Case, String> {
    let mut text = text.to_owned();
    // Longest names first, so `$ab.port` is not read as `$a` + `b.port`.
    let mut names: Vec<&String> = ports.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let port = ports[name];
        text = text
            .replace(&format!("${name}.port"), &port.to_string())
            .replace(&format!("${name}.address"), &format!("127.0.0.1:{port}"));
    }
    let case: Case =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, spec) in &case.upstreams {
        if spec.raw && spec.reset.is_some() {
            return Err(format!(
                "{}: upstreams.{name}: `raw` answers HTTP/1.1 and `reset` resets HTTP/2 streams: one, not both",
                path.display()
            ));
        }
    }
    for (i, step) in case.requests.iter().enumerate() {
        if step.envoy.is_some() != step.why.is_some() {
            return Err(format!(
                "{}: requests[{i}]: a difference from Envoy (`envoy`) needs its reason (`why`)",
                path.display()
            ));
        }
        if step.hold && step.reset_connection {
            return Err(format!(
                "{}: requests[{i}]: a raw upstream holds the connection open (`hold`) or resets it (`reset_connection`): one, not both",
                path.display()
            ));
        }
        if (step.hold || step.reset_connection) && !case.upstreams.values().any(|u| u.raw) {
            return Err(format!(
                "{}: requests[{i}]: `hold` and `reset_connection` are what a `raw` upstream does, and the case has none",
                path.display()
            ));
        }
        if step.send.last_byte_after_ms > 0 && (step.send.http2 || step.send.raw.is_some()) {
            return Err(format!(
                "{}: requests[{i}]: `last_byte_after_ms` holds back the last byte of an HTTP/1.1 request the case writes, not an HTTP/2 or `raw` one",
                path.display()
            ));
        }
    }
    Ok(case)
}

/// Merges `overlay` into `base`: mappings key by key, anything else replaced.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}
