//! An `envoyFileAccessLog` provider's `logFormat`, compiled: Envoy's
//! command operators (`%RESPONSE_CODE%`, `%REQ(:PATH)%`, …) in a text line
//! or as the values of JSON labels, as Istio renders them into Envoy's
//! `text_format_source` and `json_format`. The operators are those whose
//! values the agent's access-log line carries; any other is refused when the
//! config is read, naming it, rather than printed as nothing.

/// A compiled `logFormat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// `text`: one line (the trailing newline Istio adds is the writer's).
    Text(Vec<Segment>),
    /// `labels`: a JSON object, one key per label (nested objects
    /// allowed, as Envoy's `json_format` takes a Struct).
    Labels(Vec<(String, Label)>),
}

/// One label's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A format string.
    Format(Vec<Segment>),
    /// A number, boolean or null, written as it is.
    Value(serde_json::Value),
    /// A nested object.
    Object(Vec<(String, Label)>),
}

/// Istio's default text format (`EnvoyTextLogFormat`), which an empty
/// `text` (or a `logFormat` giving neither) stands for.
pub const ISTIO_TEXT_FORMAT: &str = r#"[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%"#;

/// A piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text as written.
    Literal(String),
    /// A command operator, its value cut to `max_len` characters when set
    /// (`%OPERATOR(...):N%`).
    Operator {
        /// The value.
        operator: Operator,
        /// Envoy's length limit.
        max_len: Option<usize>,
    },
}

/// The command operators the agent fills, each one field of its access-log
/// line (Envoy's names; `REQ` and `RESP` for the headers that line keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Operator {
    StartTime,
    Method,
    Path,
    Authority,
    UserAgent,
    RequestId,
    ForwardedFor,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamServiceTime,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    RequestedServerName,
    RouteName,
}

impl Operator {
    /// Whether its value is a number (kept a number in a JSON label that
    /// is this operator alone, as Envoy's `json_format` types it).
    pub fn is_number(self) -> bool {
        matches!(
            self,
            Self::ResponseCode | Self::BytesReceived | Self::BytesSent | Self::Duration
        )
    }

    fn plain(name: &str) -> Option<Self> {
        Some(match name {
            "START_TIME" => Self::StartTime,
            "PROTOCOL" => Self::Protocol,
            "RESPONSE_CODE" => Self::ResponseCode,
            "RESPONSE_FLAGS" => Self::ResponseFlags,
            "RESPONSE_CODE_DETAILS" => Self::ResponseCodeDetails,
            "CONNECTION_TERMINATION_DETAILS" => Self::ConnectionTerminationDetails,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Self::UpstreamTransportFailureReason,
            "BYTES_RECEIVED" => Self::BytesReceived,
            "BYTES_SENT" => Self::BytesSent,
            "DURATION" => Self::Duration,
            "UPSTREAM_HOST" => Self::UpstreamHost,
            "UPSTREAM_CLUSTER" => Self::UpstreamCluster,
            "UPSTREAM_LOCAL_ADDRESS" => Self::UpstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS" => Self::DownstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Self::DownstreamRemoteAddress,
            "REQUESTED_SERVER_NAME" => Self::RequestedServerName,
            "ROUTE_NAME" => Self::RouteName,
            _ => return None,
        })
    }

    /// A request header the line keeps. `x-envoy-original-path` is the
    /// path as the client sent it, which is the line's `path`.
    fn request_header(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            ":method" => Self::Method,
            ":path" | "x-envoy-original-path" => Self::Path,
            ":authority" | "host" => Self::Authority,
            "user-agent" => Self::UserAgent,
            "x-request-id" => Self::RequestId,
            "x-forwarded-for" => Self::ForwardedFor,
            _ => return None,
        })
    }
}

/// Why a format string cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `%` without its closing `%`.
    #[error("an operator from byte {0} is not closed by %")]
    Unclosed(usize),
    /// An operator the agent does not fill.
    #[error(
        "%{0}% is not supported: the agent fills START_TIME, PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, UPSTREAM_CLUSTER, UPSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS, REQUESTED_SERVER_NAME, ROUTE_NAME, REQ(:METHOD|:PATH|X-ENVOY-ORIGINAL-PATH|:AUTHORITY|HOST|USER-AGENT|X-REQUEST-ID|X-FORWARDED-FOR) and RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)"
    )]
    Unsupported(String),
    /// A length limit that is no number.
    #[error("%{0}%: the length after `:` is no number")]
    BadLength(String),
}

/// Parses an Envoy format string (`%OPERATOR%`, `%OPERATOR(arg)%`,
/// `%OPERATOR(arg):N%`, `%%` for a `%`; `REQ(a?b)` takes `b` when `a` is
/// absent, which for the headers the line keeps is `a` itself).
pub fn parse(format: &str) -> Result<Vec<Segment>, FormatError> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    let mut at = 0;
    while let Some(start) = rest.find('%') {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(escaped) = after.strip_prefix('%') {
            literal.push('%');
            at += start + 2;
            rest = escaped;
            continue;
        }
        // An argument may hold no `%`; the operator ends at the next one.
        let end = after.find('%').ok_or(FormatError::Unclosed(at + start))?;
        let body = &after[..end];
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(operator(body)?);
        at += start + 1 + end + 1;
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn operator(body: &str) -> Result<Segment, FormatError> {
    let unsupported = || FormatError::Unsupported(body.to_owned());
    let (head, max_len) = match body.rsplit_once("):") {
        Some((head, len)) => {
            let len = len
                .parse()
                .map_err(|_| FormatError::BadLength(body.to_owned()))?;
            (&body[..head.len() + 1], Some(len))
        }
        None => (body, None),
    };
    let operator = match head.split_once('(') {
        None => Operator::plain(head).ok_or_else(unsupported)?,
        Some((name, arg)) => {
            let arg = arg.strip_suffix(')').ok_or_else(unsupported)?;
            match name {
                "REQ" => {
                    let mut choices = arg.split('?').map(Operator::request_header);
                    choices.next().flatten().ok_or_else(unsupported)?
                }
                "RESP" if arg.eq_ignore_ascii_case("x-envoy-upstream-service-time") => {
                    Operator::UpstreamServiceTime
                }
                _ => return Err(unsupported()),
            }
        }
    };
    Ok(Segment::Operator { operator, max_len })
}

/// Compiles an `envoyFileAccessLog.logFormat` (`{text: …}` or
/// `{labels: {key: value}}`), as Istio's `telemetry_logging.go` reads it:
/// an empty `text`, or neither, is Istio's default text format; empty
/// `labels` are Istio's default JSON, the agent's JSON line (`None`).
/// `Err` names the subfield and why.
pub fn compile(value: &serde_json::Value) -> Result<Option<LogFormat>, (String, FormatError)> {
    if let Some(map) = value.get("labels").and_then(serde_json::Value::as_object) {
        if map.is_empty() {
            return Ok(None);
        }
        return labels(map, "labels").map(|labels| Some(LogFormat::Labels(labels)));
    }
    let text = value.get("text").and_then(serde_json::Value::as_str);
    let text = text.filter(|t| !t.is_empty()).unwrap_or(ISTIO_TEXT_FORMAT);
    let text = text.strip_suffix('\n').unwrap_or(text);
    parse(text)
        .map(|segments| Some(LogFormat::Text(segments)))
        .map_err(|e| ("text".to_owned(), e))
}

fn labels(
    map: &serde_json::Map<String, serde_json::Value>,
    at: &str,
) -> Result<Vec<(String, Label)>, (String, FormatError)> {
    map.iter()
        .map(|(key, value)| {
            let field = format!("{at}.{key}");
            let label = match value {
                serde_json::Value::String(format) => {
                    Label::Format(parse(format).map_err(|e| (field, e))?)
                }
                serde_json::Value::Object(inner) => Label::Object(labels(inner, &field)?),
                other => Label::Value(other.clone()),
            };
            Ok((key.clone(), label))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(operator: Operator) -> Segment {
        Segment::Operator {
            operator,
            max_len: None,
        }
    }

    #[test]
    fn istios_default_text_format_parses() {
        let segments = parse(ISTIO_TEXT_FORMAT).expect("Istio's own format");
        assert_eq!(segments[0], Segment::Literal("[".into()));
        assert_eq!(segments[1], op(Operator::StartTime));
        assert_eq!(segments[4], Segment::Literal(" ".into()));
        assert_eq!(segments[5], op(Operator::Path));
        assert_eq!(segments.last(), Some(&op(Operator::RouteName)));
    }

    #[test]
    fn lengths_and_refusals() {
        assert_eq!(
            parse("%REQ(USER-AGENT):10%").unwrap(),
            [Segment::Operator {
                operator: Operator::UserAgent,
                max_len: Some(10)
            }]
        );
        assert_eq!(parse("100% sure"), Err(FormatError::Unclosed(3)));
        for unsupported in [
            "%DYNAMIC_METADATA(istio)%",
            "%REQ(X-TEAM)%",
            "%RESP(SERVER)%",
            "%HOSTNAME%",
        ] {
            assert!(
                matches!(parse(unsupported), Err(FormatError::Unsupported(_))),
                "{unsupported}"
            );
        }
        assert!(matches!(
            parse("%REQ(:PATH):x%"),
            Err(FormatError::BadLength(_))
        ));
        let labels = compile(
            &serde_json::json!({"labels": {"code": "%RESPONSE_CODE%", "in": {"bad": "%X%"}}}),
        );
        assert!(matches!(labels, Err((field, _)) if field == "labels.in.bad"));
        assert_eq!(
            parse("a%%b %PROTOCOL%").unwrap(),
            [Segment::Literal("a%b ".into()), op(Operator::Protocol)]
        );
        // Istio's defaults for an empty format.
        assert_eq!(compile(&serde_json::json!({"labels": {}})), Ok(None));
        let istio = Some(LogFormat::Text(parse(ISTIO_TEXT_FORMAT).unwrap()));
        assert_eq!(compile(&serde_json::json!({"text": ""})), Ok(istio.clone()));
        assert_eq!(compile(&serde_json::json!({})), Ok(istio));
    }
}
