//! The access log: one JSON line per request with Istio's default JSON keys
//! (Envoy's fields) plus `traceparent`, written by a thread of its own so the
//! request path never waits on a disk. Lines beyond its queue are dropped
//! and counted.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde::Serialize;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::bootstrap::AccessLogTarget;
use crate::model::log_format::{Label, LogFormat, Operator, Segment};
use crate::model::telemetry::{AccessLogPolicy, TelemetryPolicy};

const QUEUE: usize = 8192;

/// Sends lines to the writer thread.
pub struct AccessLog {
    lines: SyncSender<String>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens `target` and starts the writer.
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (lines, receiver) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, sink))?;
        Ok(Self { lines, dropped })
    }

    /// Queues one entry as the JSON line.
    pub fn write(&self, entry: &AccessLogEntry<'_>) {
        self.write_as(entry, None, false);
    }

    /// Queues one entry in `format` (none: the JSON line), leaving empty
    /// values out when `omit_empty` (`omitEmptyValues`).
    pub fn write_as(
        &self,
        entry: &AccessLogEntry<'_>,
        format: Option<&LogFormat>,
        omit_empty: bool,
    ) {
        let line = match format {
            None if !omit_empty => serde_json::to_string(entry).ok(),
            None => serde_json::to_value(entry).ok().map(|mut value| {
                if let serde_json::Value::Object(map) = &mut value {
                    map.retain(|_, v| !v.is_null());
                }
                value.to_string()
            }),
            Some(format) => Some(render(entry, format, omit_empty)),
        };
        let Some(line) = line else {
            return;
        };
        if let Err(TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// The logs the Telemetry's access-log providers write to, by file:
/// opened when a config that names them is loaded (never on the request
/// path) and kept for the process. `/dev/stdout` is the standard-output
/// writer, the Agent's own log's when that writes there, so lines never
/// interleave.
pub struct AccessLogSinks {
    open: ArcSwap<HashMap<String, Arc<AccessLog>>>,
    dropped: IntCounter,
}

/// The path that stands for standard output.
const STDOUT: &str = "/dev/stdout";

impl AccessLogSinks {
    /// No log open yet but the Agent's own (`agent`, when it writes to
    /// standard output); lines dropped count in `dropped`.
    pub fn new(agent: Option<(&AccessLogTarget, Arc<AccessLog>)>, dropped: IntCounter) -> Self {
        let mut open = HashMap::new();
        if let Some((AccessLogTarget::Stdout, log)) = agent {
            open.insert(STDOUT.to_owned(), log);
        }
        Self {
            open: ArcSwap::from_pointee(open),
            dropped,
        }
    }

    /// Opens the files `policy`'s access-log providers write to that are
    /// not open yet. A file that cannot be opened is logged; its lines are
    /// not written.
    pub fn open_for(&self, policy: &TelemetryPolicy) {
        let current = self.open.load_full();
        let mut next: Option<HashMap<String, Arc<AccessLog>>> = None;
        let wanted = [&policy.client, &policy.server]
            .into_iter()
            .filter_map(|side| side.access_logs.as_ref())
            .flatten()
            .filter_map(AccessLogPolicy::file);
        for path in wanted {
            if current.contains_key(path) || next.as_ref().is_some_and(|n| n.contains_key(path)) {
                continue;
            }
            let target = match path {
                STDOUT => AccessLogTarget::Stdout,
                file => AccessLogTarget::File(file.into()),
            };
            match AccessLog::start(&target, self.dropped.clone()) {
                Ok(log) => {
                    next.get_or_insert_with(|| (*current).clone())
                        .insert(path.to_owned(), Arc::new(log));
                }
                Err(error) => tracing::error!(path, %error, "access log not opened"),
            }
        }
        if let Some(next) = next {
            self.open.store(Arc::new(next));
        }
    }

    /// The log of `path`, when it is open.
    pub fn get(&self, path: &str) -> Option<Arc<AccessLog>> {
        self.open.load().get(path).cloned()
    }
}

fn write_lines(receiver: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(sink);
    while let Ok(line) = receiver.recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
            next = receiver.try_recv().ok();
        }
        let _ = out.flush(); // flush when the queue runs dry, not per line
    }
}

/// One request, with Istio's default JSON access-log keys.
#[derive(Debug, Serialize)]
pub struct AccessLogEntry<'a> {
    /// Start of the request, RFC 3339 with milliseconds.
    pub start_time: String,
    /// VirtualService rule name.
    pub route_name: Option<&'a str>,
    /// Method; null for a TCP connection.
    pub method: Option<&'a str>,
    /// Path and query; null for a TCP connection.
    pub path: Option<&'a str>,
    /// `HTTP/1.1` or `HTTP/2`; null for a TCP connection.
    pub protocol: Option<&'a str>,
    /// Status sent (0 when none was, and for a TCP connection).
    pub response_code: u16,
    /// Envoy's flags, `-` when none.
    pub response_flags: &'a str,
    /// Why the response is what it is, and the resource and rule that
    /// decided it (Envoy's `%RESPONSE_CODE_DETAILS%`, extended).
    pub response_code_details: Option<&'a str>,
    /// The AuthorizationPolicy (or RequestAuthentication) that decided
    /// access, `namespace/name[rule]` (CUSTOM adds ` provider=<name>`);
    /// left out when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_policy: Option<&'a str>,
    /// An AUDIT AuthorizationPolicy matched: Envoy's RBAC `LOG` action
    /// sets `access_log_hint` (`envoy.common` dynamic metadata), which
    /// Istio's AUDIT maps to; left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub access_log_hint: bool,
    /// The AUDIT policy that matched, `namespace/name[rule]`; left out
    /// when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_policy: Option<&'a str>,
    /// What the dry-run AuthorizationPolicies (`istio.io/dry-run`) would
    /// have decided (`denied by namespace/name[rule]`, `allowed by …`,
    /// `allowed`, `denied: no dry-run ALLOW policy matched`); left out when
    /// none applies. Envoy writes the same as the RBAC filter's shadow
    /// metadata (`istio_dry_run_*_shadow_engine_result`,
    /// `…_shadow_effective_policy_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz_dry_run: Option<&'a str>,
    /// Why a TCP connection was ended by the agent (Envoy's
    /// `%CONNECTION_TERMINATION_DETAILS%`): the RBAC denial
    /// (`rbac_access_denied_matched_policy[…]`), `idle_timeout`,
    /// `max_connection_duration_reached`; null otherwise.
    pub connection_termination_details: Option<&'a str>,
    /// Why the upstream connection failed, when it did.
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// Request body bytes (a TCP connection's bytes from the client).
    pub bytes_received: u64,
    /// Response body bytes (a TCP connection's bytes to the client).
    pub bytes_sent: u64,
    /// Total duration in milliseconds.
    pub duration: u64,
    /// Upstream time to response headers, in milliseconds.
    pub upstream_service_time: Option<String>,
    /// `x-forwarded-for`.
    pub x_forwarded_for: Option<&'a str>,
    /// `user-agent`.
    pub user_agent: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `:authority`/`Host`.
    pub authority: Option<&'a str>,
    /// The endpoint the request went to.
    pub upstream_host: Option<String>,
    /// The cluster.
    pub upstream_cluster: Option<&'a str>,
    /// The local address of the upstream connection (Envoy's
    /// `%UPSTREAM_LOCAL_ADDRESS%`), when one answered.
    pub upstream_local_address: Option<String>,
    /// Listener address.
    pub downstream_local_address: String,
    /// Client address.
    pub downstream_remote_address: String,
    /// SNI (no TLS yet).
    pub requested_server_name: Option<&'a str>,
    /// The `traceparent` sent to the next hop (names this hop's span), or
    /// for a request the agent answered itself, this hop's span's.
    pub traceparent: Option<&'a str>,
}

/// One operator's value in an entry.
enum Field<'e> {
    Text(Option<std::borrow::Cow<'e, str>>),
    Number(u64),
}

fn field<'e>(entry: &'e AccessLogEntry<'_>, operator: Operator) -> Field<'e> {
    use std::borrow::Cow;
    let text = |s: Option<&'e str>| Field::Text(s.map(Cow::Borrowed));
    match operator {
        Operator::StartTime => text(Some(&entry.start_time)),
        Operator::Method => text(entry.method),
        Operator::Path => text(entry.path),
        Operator::Authority => text(entry.authority),
        Operator::UserAgent => text(entry.user_agent),
        Operator::RequestId => text(entry.request_id),
        Operator::ForwardedFor => text(entry.x_forwarded_for),
        Operator::Protocol => text(entry.protocol),
        Operator::ResponseCode => Field::Number(entry.response_code.into()),
        Operator::ResponseFlags => text(Some(entry.response_flags)),
        Operator::ResponseCodeDetails => text(entry.response_code_details),
        Operator::ConnectionTerminationDetails => text(entry.connection_termination_details),
        Operator::UpstreamTransportFailureReason => text(entry.upstream_transport_failure_reason),
        Operator::BytesReceived => Field::Number(entry.bytes_received),
        Operator::BytesSent => Field::Number(entry.bytes_sent),
        Operator::Duration => Field::Number(entry.duration),
        Operator::UpstreamServiceTime => text(entry.upstream_service_time.as_deref()),
        Operator::UpstreamHost => text(entry.upstream_host.as_deref()),
        Operator::UpstreamCluster => text(entry.upstream_cluster),
        Operator::UpstreamLocalAddress => text(entry.upstream_local_address.as_deref()),
        Operator::DownstreamLocalAddress => text(Some(&entry.downstream_local_address)),
        Operator::DownstreamRemoteAddress => text(Some(&entry.downstream_remote_address)),
        Operator::RequestedServerName => text(entry.requested_server_name),
        Operator::RouteName => text(entry.route_name),
    }
}

/// `segments` as text, as Envoy's formatter writes them: an absent value
/// is `-` (nothing when `omit_empty`; a value present but empty, such as
/// a header sent empty, is nothing either way), each cut to its length
/// limit.
fn render_text(
    entry: &AccessLogEntry<'_>,
    segments: &[Segment],
    omit_empty: bool,
    out: &mut String,
) {
    use std::fmt::Write as _;
    for segment in segments {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Operator { operator, max_len } => {
                let start = out.len();
                match field(entry, *operator) {
                    Field::Number(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Field::Text(Some(value)) => out.push_str(&value),
                    Field::Text(None) if omit_empty => {}
                    Field::Text(None) => out.push('-'),
                }
                if let Some(max) = max_len
                    && let Some((cut, _)) = out[start..].char_indices().nth(*max)
                {
                    out.truncate(start + cut);
                }
            }
        }
    }
}

/// One line of `format`: the text, or the labels as a JSON object.
fn render(entry: &AccessLogEntry<'_>, format: &LogFormat, omit_empty: bool) -> String {
    match format {
        LogFormat::Text(segments) => {
            let mut line = String::new();
            render_text(entry, segments, omit_empty, &mut line);
            line
        }
        LogFormat::Labels(labels) => render_labels(entry, labels, omit_empty).to_string(),
    }
}

/// Labels as Envoy's `json_format` writes them: a label that is one
/// operator alone keeps its type (a number; null when absent, left out
/// when `omit_empty`), a literal number or boolean stays one, an object
/// nests.
fn render_labels(
    entry: &AccessLogEntry<'_>,
    labels: &[(String, Label)],
    omit_empty: bool,
) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for (key, label) in labels {
        let value = match label {
            Label::Value(value) => value.clone(),
            Label::Object(inner) => render_labels(entry, inner, omit_empty),
            Label::Format(segments) => match segments.as_slice() {
                [
                    Segment::Operator {
                        operator,
                        max_len: None,
                    },
                ] => match field(entry, *operator) {
                    Field::Number(n) => serde_json::Value::from(n),
                    Field::Text(Some(text)) => serde_json::Value::from(text.into_owned()),
                    Field::Text(None) => serde_json::Value::Null,
                },
                _ => {
                    let mut text = String::new();
                    render_text(entry, segments, omit_empty, &mut text);
                    serde_json::Value::from(text)
                }
            },
        };
        if omit_empty && value.is_null() {
            continue;
        }
        object.insert(key.clone(), value);
    }
    serde_json::Value::Object(object)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T01:02:03.456Z`.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_032_523_456);
        assert_eq!(rfc3339_millis(t), "2025-11-25T01:02:03.456Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
