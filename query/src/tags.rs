//! Tag searches, read the same way by every API (Jaeger's `tags` and
//! `tag`, api_v3's `query.attributes`, the native `tag` and `tags`), the
//! UI and the CLI: every tag a trace view shows can be searched as shown.
//!
//! - The tags Jaeger's translation adds are span fields, searched as such:
//!   `span.kind=client`, `otel.status_code=ERROR|OK|UNSET`,
//!   `error=true|false`; `otel.scope.name`, `otel.scope.version`,
//!   `otel.status_description` and `w3c.tracestate` are indexed as tags.
//! - The names Istio, Envoy and older OpenTelemetry conventions use for
//!   the same attribute ([`ALIASES`]) find it under any of its names.
//! - A list of tags is written `key=value key2="a value with spaces"`
//!   ([`parse_list`]): values (and keys) may be quoted with `"` or `'`,
//!   and `\` escapes the next character inside quotes.

use tracemesh_collector::store::{Condition, SpanQuery};

use crate::error::QueryError;
use crate::jaeger::model::kind_from_name;

/// Attribute names that mean the same thing, the first being
/// OpenTelemetry's current HTTP conventions' name or `tracemesh.*`, which
/// tracemesh's agent writes (all but `url.full`: its spans carry the URL in
/// parts), the rest what Istio, Envoy, Zipkin and older
/// OpenTelemetry instrumentation call it. A search by any name of a group
/// matches every name of it. docs/query.md shows this table.
pub const ALIASES: &[&[&str]] = &[
    &[
        "http.response.status_code",
        "http.status_code",
        "response_code",
    ],
    &["http.request.method", "http.method", "request_method"],
    &["url.full", "http.url"],
    &["url.path", "http.target", "request_path"],
    &["url.scheme", "http.scheme"],
    &[
        "server.address",
        "http.host",
        "net.host.name",
        "net.peer.name",
    ],
    &["server.port", "net.host.port"],
    &["network.peer.address", "net.peer.ip", "net.sock.peer.addr"],
    &["network.peer.port", "net.peer.port", "net.sock.peer.port"],
    &["network.protocol.version", "http.flavor"],
    &["client.address", "http.client_ip"],
    &["user_agent.original", "http.user_agent", "user_agent"],
    &[
        "http.request.body.size",
        "http.request_content_length",
        "request_size",
    ],
    &[
        "http.response.body.size",
        "http.response_content_length",
        "response_size",
    ],
    &["tracemesh.response_flags", "response_flags"],
    &["tracemesh.response_code_details", "response_code_details"],
    &["tracemesh.route_name", "route_name"],
    &[
        "tracemesh.upstream_cluster",
        "upstream_cluster",
        "upstream_cluster.name",
    ],
    &["tracemesh.upstream", "upstream_host"],
    &["guid:x-request-id", "x-request-id", "request_id"],
    &["rpc.grpc.status_code", "grpc.status_code", "grpc_status"],
];

/// Every name of `key`'s alias group (just `key` when it has no aliases).
pub fn names_of(key: &str) -> Vec<&str> {
    ALIASES
        .iter()
        .find(|group| group.contains(&key))
        .map_or_else(|| vec![key], |group| group.to_vec())
}

/// Adds the condition `key=value` to `query`; `param` names the parameter
/// in errors.
pub fn apply(query: &mut SpanQuery, param: &str, key: &str, value: &str) -> Result<(), QueryError> {
    let condition = match key {
        "span.kind" => {
            let kind = kind_from_name(&value.to_ascii_lowercase())
                .filter(|_| !value.is_empty())
                .ok_or_else(|| {
                    QueryError::param(param, format!("unsupported span kind: '{value}'"))
                })?;
            Condition::Kind(kind)
        }
        "otel.status_code" => Condition::Status(match value.to_ascii_uppercase().as_str() {
            "UNSET" => 0,
            "OK" => 1,
            "ERROR" => 2,
            _ => {
                return Err(QueryError::param(
                    param,
                    format!("otel.status_code is UNSET, OK or ERROR, not '{value}'"),
                ));
            }
        }),
        // The spellings Go's strconv.ParseBool takes, which Jaeger reads
        // `error` with (Grafana and scripts send `TRUE`, `1`).
        "error" => match value {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Condition::Status(2),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => {
                Condition::Not(Box::new(Condition::Status(2)))
            }
            _ => {
                return Err(QueryError::param(
                    param,
                    format!("error is true or false, not '{value}'"),
                ));
            }
        },
        _ => match names_of(key).as_slice() {
            [only] => Condition::Tag((*only).to_owned(), value.to_owned()),
            names => Condition::Any(
                names
                    .iter()
                    .map(|name| Condition::Tag((*name).to_owned(), value.to_owned()))
                    .collect(),
            ),
        },
    };
    query.conditions.push(condition);
    Ok(())
}

/// Splits `key=value key2="quoted value"` into pairs.
pub fn parse_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key = word(&mut chars, true)?;
        if chars.next() != Some('=') {
            return Err(format!("expecting key=value, got {key:?} without '='"));
        }
        if key.is_empty() {
            return Err("a tag needs a key before '='".into());
        }
        let value = word(&mut chars, false)?;
        pairs.push((key, value));
    }
}

/// One key or value: quoted, or up to whitespace (and, for a key, '=').
fn word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, key: bool) -> Result<String, String> {
    let mut out = String::new();
    if let Some(quote) = chars.next_if(|c| *c == '"' || *c == '\'') {
        loop {
            match chars.next() {
                None => return Err(format!("unterminated {quote}quote{quote}")),
                Some('\\') => match chars.next() {
                    Some(c) => out.push(c),
                    None => return Err("a '\\' at the end".into()),
                },
                Some(c) if c == quote => break,
                Some(c) => out.push(c),
            }
        }
        if chars
            .peek()
            .is_some_and(|c| !(c.is_whitespace() || key && *c == '='))
        {
            return Err(format!("expecting a space after the quoted {out:?}"));
        }
        return Ok(out);
    }
    while let Some(c) = chars.next_if(|c| !(c.is_whitespace() || key && *c == '=')) {
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_with_quotes() {
        assert_eq!(
            parse_list(
                r#" error=true http.route="/reviews/{id}" note='a "b" c' k="x\"y" "odd key"=1 "#
            )
            .unwrap(),
            [
                ("error".into(), "true".into()),
                ("http.route".into(), "/reviews/{id}".into()),
                ("note".into(), "a \"b\" c".into()),
                ("k".into(), "x\"y".into()),
                ("odd key".into(), "1".into()),
            ]
        );
        assert_eq!(parse_list("a=b=c").unwrap(), [("a".into(), "b=c".into())]);
        assert!(parse_list("novalue").is_err());
        assert!(parse_list("k=\"open").is_err());
        assert!(parse_list("=v").is_err());
    }

    #[test]
    fn shown_tags_become_span_fields_and_aliases_find_every_name() {
        let mut query = SpanQuery::default();
        apply(&mut query, "tag", "span.kind", "client").unwrap();
        apply(&mut query, "tag", "otel.status_code", "ERROR").unwrap();
        apply(&mut query, "tag", "error", "false").unwrap();
        apply(&mut query, "tag", "http.status_code", "503").unwrap();
        assert_eq!(query.conditions[0], Condition::Kind(3));
        assert_eq!(query.conditions[1], Condition::Status(2));
        assert_eq!(
            query.conditions[2],
            Condition::Not(Box::new(Condition::Status(2)))
        );
        let Condition::Any(names) = &query.conditions[3] else {
            panic!("{:?}", query.conditions[3])
        };
        assert!(names.contains(&Condition::Tag(
            "http.response.status_code".into(),
            "503".into()
        )));
        assert!(apply(&mut query, "tag", "span.kind", "sideways").is_err());
        // `error` as Go's ParseBool reads it, as Jaeger does.
        for (value, error) in [
            ("TRUE", true),
            ("1", true),
            ("t", true),
            ("F", false),
            ("0", false),
        ] {
            let mut query = SpanQuery::default();
            apply(&mut query, "tag", "error", value).unwrap();
            let want = if error {
                Condition::Status(2)
            } else {
                Condition::Not(Box::new(Condition::Status(2)))
            };
            assert_eq!(query.conditions[0], want, "{value}");
        }
        assert!(apply(&mut query, "tag", "error", "yes").is_err());
        // Every alias is in one group only.
        let mut seen = std::collections::HashSet::new();
        for name in ALIASES.iter().flat_map(|g| g.iter()) {
            assert!(seen.insert(*name), "{name} twice");
        }
    }
}
