//! What a proxy did with one step, in a form both proxies can be compared
//! in: each copy's status and response flags, and the requests the
//! upstreams received with their headers normalized.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::case::{Case, Expect, ExpectedRequest, Send, Step, UpstreamExpect};
use crate::client::Reply;
use crate::upstream::Received;

/// Headers every hop writes its own value for, never compared:
/// `x-request-id` (the harness's id, kept or not) and Envoy's own
/// `x-envoy-*` (retry budget hints, Istio's metadata exchange, which the
/// hand-written Envoy configs leave out).
const NOT_COMPARED: [&str; 1] = ["x-request-id"];

/// Whether a forwarded request is a mirror's copy, whose authority Envoy
/// and the agent suffix `-shadow`: Envoy appends its node's own address
/// to the copy's `x-forwarded-for` (the router's shadow headers); the
/// agent sends the copy with the primary's headers, so that header is
/// not compared on copies (docs/envoy-differences.md).
fn is_mirror_copy(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(name, value)| {
        name == "host"
            && value
                .split(':')
                .next()
                .is_some_and(|h| h.ends_with("-shadow"))
    })
}

/// Trace headers, compared with their ids masked in cases with `trace: true`.
const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// One upstream request, normalized.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forwarded {
    /// The upstream that received it.
    pub upstream: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header name → value, repeated lines joined with `,` (RFC 9110 §5.3).
    pub headers: BTreeMap<String, String>,
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {:?}",
            self.upstream, self.method, self.path, self.headers
        )
    }
}

/// What one proxy did with one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Each copy's `status flags`, sorted.
    pub responses: Vec<String>,
    /// What the upstreams received, sorted.
    pub forwarded: Vec<Forwarded>,
    /// The response headers the step's expectations name, as the first
    /// copy's client saw them (repeated lines joined with `,`).
    pub headers: BTreeMap<String, Option<String>>,
    /// The first copy's response body, when an expectation names one.
    pub body: Option<String>,
    /// The first copy's interim statuses, when an expectation names them.
    pub interim: Option<Vec<u16>>,
    /// Connections the upstreams accepted during the step, when an
    /// expectation names them.
    pub connections: Option<usize>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "responses {:?}", self.responses)?;
        if !self.headers.is_empty() {
            write!(f, ", response headers {:?}", self.headers)?;
        }
        if let Some(body) = &self.body {
            write!(f, ", body {body:?}")?;
        }
        if let Some(interim) = &self.interim {
            write!(f, ", interim {interim:?}")?;
        }
        if let Some(connections) = self.connections {
            write!(f, ", {connections} upstream connections")?;
        }
        if self.forwarded.is_empty() {
            return write!(f, ", nothing forwarded");
        }
        for forwarded in &self.forwarded {
            write!(f, "\n      forwarded: {forwarded}")?;
        }
        Ok(())
    }
}

/// Envoy's flags as tracemesh names them: an RBAC denial carries no
/// response flag in Envoy (its details say `rbac_access_denied…`), while
/// tracemesh marks it `RBAC` (DESIGN §2) — the same class.
pub fn envoy_flag_class(flags: &str, details: &str) -> String {
    if flags == "-" && details.starts_with("rbac_access_denied") {
        "RBAC".to_owned()
    } else {
        flags.to_owned()
    }
}

/// `status flags` of one copy. The flags keep their order: Envoy writes
/// them in the order it set them (`URX,UF`), and the `response_flags`
/// metric label that dashboards match is that string.
pub fn response(status: u16, flags: &str) -> String {
    let flags = if flags.is_empty() { "-" } else { flags };
    format!("{status} {flags}")
}

/// What the client saw of a response, as far as a step's expectations
/// name it.
#[derive(Debug, Default)]
pub struct Seen {
    /// The named response headers (absent: `None`).
    pub headers: BTreeMap<String, Option<String>>,
    /// The body, when named.
    pub body: Option<String>,
    /// The interim statuses, when named.
    pub interim: Option<Vec<u16>>,
}

/// The response header `name` as the client saw it (repeated lines joined
/// with `,`), if it had one.
pub fn header(reply: &Reply, name: &str) -> Option<String> {
    let values: Vec<&str> = reply
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The response headers, body and interim statuses of `reply` that the
/// step's expectations (its own and Envoy's) name.
pub fn seen(step: &Step, reply: &Reply) -> Seen {
    let expects = std::iter::once(&step.expect).chain(step.envoy.as_ref());
    let mut headers = BTreeMap::new();
    let mut body = None;
    let mut interim = None;
    for expect in expects {
        for name in expect.headers.keys() {
            headers.insert(name.clone(), header(reply, name));
        }
        if expect.body.is_some() {
            body = Some(String::from_utf8_lossy(&reply.body).into_owned());
        }
        if expect.interim.is_some() {
            interim = Some(reply.interim.clone());
        }
    }
    Seen {
        headers,
        body,
        interim,
    }
}

/// Normalizes what the upstreams received for one step.
pub fn forwarded(case: &Case, send: &Send, received: Vec<Received>) -> Vec<Forwarded> {
    let known = sent_ids(send);
    let mut out: Vec<Forwarded> = received
        .into_iter()
        .map(|r| {
            let mut headers: BTreeMap<String, String> = BTreeMap::new();
            let copy = is_mirror_copy(&r.headers);
            for (name, value) in &r.headers {
                let dropped = NOT_COMPARED.contains(&name.as_str())
                    || (copy && name == "x-forwarded-for")
                    || name.starts_with("x-envoy-")
                    || case.ignore_headers.contains_key(name)
                    || (!case.trace && TRACE_HEADERS.contains(&name.as_str()))
                    // An empty tracestate is no tracestate (W3C §3.3.1.1).
                    || (name == "tracestate" && value.trim().is_empty());
                if dropped {
                    continue;
                }
                headers
                    .entry(name.clone())
                    .and_modify(|v| {
                        v.push(',');
                        v.push_str(value);
                    })
                    .or_insert_with(|| value.clone());
            }
            if case.trace {
                mask_ids(&mut headers, &known);
            }
            Forwarded {
                upstream: r.upstream,
                method: r.method,
                path: r.path,
                headers,
            }
        })
        .collect();
    out.sort();
    out
}

/// Hex ids (16 or 32 digits) the client itself sent in trace headers.
fn sent_ids(send: &Send) -> BTreeSet<String> {
    send.headers
        .iter()
        .filter(|(n, _)| TRACE_HEADERS.contains(&n.to_ascii_lowercase().as_str()))
        .flat_map(|(_, v)| {
            v.split(['-', ',', '='])
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|t| is_id(t))
        .collect()
}

fn is_id(token: &str) -> bool {
    matches!(token.len(), 16 | 32) && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Replaces ids the proxy made up (not the client's) by `<id1>`, `<id2>`…
/// in order of first appearance, so both proxies' new traces and spans
/// compare equal while the client's ids must come through as they were.
fn mask_ids(headers: &mut BTreeMap<String, String>, known: &BTreeSet<String>) {
    let mut minted: Vec<String> = Vec::new();
    for name in TRACE_HEADERS {
        let Some(value) = headers.get_mut(name) else {
            continue;
        };
        let masked: Vec<String> = value
            .split('-')
            .map(|token| {
                if !is_id(token) || known.contains(token) {
                    return token.to_owned();
                }
                let n = match minted.iter().position(|m| m == token) {
                    Some(n) => n,
                    None => {
                        minted.push(token.to_owned());
                        minted.len() - 1
                    }
                };
                format!("<id{}>", n + 1)
            })
            .collect();
        *value = masked.join("-");
    }
}

/// Checks one proxy's outcome against what the case expects.
pub fn check(expect: &Expect, outcome: &Outcome) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(outcomes) = &expect.outcomes {
        let mut want: Vec<String> = outcomes
            .iter()
            .map(|o| {
                let (status, flags) = o.split_once(' ').unwrap_or((o, "-"));
                response(status.parse().unwrap_or(0), flags)
            })
            .collect();
        want.sort();
        if want != outcome.responses {
            problems.push(format!("responses {:?}, want {want:?}", outcome.responses));
        }
    } else {
        let want = response(
            expect.status.unwrap_or(200),
            expect.flags.as_deref().unwrap_or("-"),
        );
        if outcome.responses.iter().any(|r| *r != want) {
            problems.push(format!("responses {:?}, want {want:?}", outcome.responses));
        }
    }
    for (name, want) in &expect.headers {
        let got = outcome.headers.get(name).cloned().flatten();
        if got != *want {
            problems.push(format!("response header {name}: {got:?}, want {want:?}"));
        }
    }
    if let Some(want) = &expect.body
        && outcome.body.as_ref() != Some(want)
    {
        problems.push(format!("response body {:?}, want {want:?}", outcome.body));
    }
    if let Some(want) = &expect.interim
        && outcome.interim.as_ref() != Some(want)
    {
        problems.push(format!(
            "interim statuses {:?}, want {want:?}",
            outcome.interim
        ));
    }
    if let Some(want) = expect.connections
        && outcome.connections != Some(want)
    {
        problems.push(format!(
            "upstream connections {:?}, want {want}",
            outcome.connections
        ));
    }
    match &expect.upstream {
        Some(UpstreamExpect::None(_)) if !outcome.forwarded.is_empty() => {
            problems.push("the upstream received the request; it must not".to_owned());
        }
        None | Some(UpstreamExpect::None(_)) => {}
        Some(UpstreamExpect::Request(want)) => match outcome.forwarded.first() {
            None => problems.push("the upstream received nothing".to_owned()),
            Some(got) => problems.extend(check_request(want, got)),
        },
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn check_request(want: &ExpectedRequest, got: &Forwarded) -> Vec<String> {
    let mut problems = Vec::new();
    let fields = [
        ("upstream", &want.name, &got.upstream),
        ("method", &want.method, &got.method),
        ("path", &want.path, &got.path),
    ];
    for (what, want, got) in fields {
        if let Some(want) = want
            && want != got
        {
            problems.push(format!("upstream {what} {got:?}, want {want:?}"));
        }
    }
    for (name, want) in &want.headers {
        let got = got.headers.get(name);
        if got != want.as_ref() {
            problems.push(format!("upstream header {name}: {got:?}, want {want:?}"));
        }
    }
    problems
}
