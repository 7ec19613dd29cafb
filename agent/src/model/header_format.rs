//! Envoy's substitutions in the values of a route's header edits (Envoy,
//! "Custom request/response headers": the access-log command operators,
//! `%%` for a literal `%`). Istio passes VirtualService `headers` values to
//! Envoy as written, so `x-client: "%DOWNSTREAM_REMOTE_ADDRESS%"` is the
//! caller's address there; here too. The commands the agent can answer are
//! read when the config loads; any other is refused there, naming it, as
//! Envoy refuses an unknown command.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Version};

/// One piece of a formatted value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text as written (`%%` already made `%`).
    Literal(Box<str>),
    /// `%PROTOCOL%`: `HTTP/1.0`, `HTTP/1.1` or `HTTP/2` (the caller's).
    Protocol,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the caller's `ip:port`.
    RemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    RemoteIp,
    /// `%DOWNSTREAM_REMOTE_PORT%`.
    RemotePort,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the caller connected to
    /// (a captured connection's original destination).
    LocalAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`.
    LocalIp,
    /// `%DOWNSTREAM_LOCAL_PORT%`.
    LocalPort,
    /// `%REQ(name)%`: the request's header (its first line), before the
    /// rule's edits; nothing when absent.
    Request(HeaderName),
}

/// A header value with substitutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFormat(Box<[Part]>);

/// A value as the config wrote it, read.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No command: the value itself (`%%` made `%`).
    Static(String),
    /// Commands to fill per request.
    Format(HeaderFormat),
}

/// What a formatted value is filled from: the caller's connection.
#[derive(Debug, Clone, Copy)]
pub struct FormatContext {
    /// The caller's HTTP version.
    pub version: Version,
    /// The caller's address.
    pub peer: SocketAddr,
    /// The address the caller connected to.
    pub local: SocketAddr,
}

/// The commands answered, for the error that names another.
const KNOWN: &str = "PROTOCOL, DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, \
     DOWNSTREAM_REMOTE_PORT, DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, \
     DOWNSTREAM_LOCAL_PORT, HOSTNAME, REQ(header)";

impl HeaderFormat {
    /// Reads `value`; `request` says whether it edits a request (only there
    /// can `%REQ(…)%` be answered). `%HOSTNAME%` is this machine's name,
    /// read now. Errors name the command.
    pub fn parse(value: &str, request: bool) -> Result<Parsed, String> {
        if !value.contains('%') {
            return Ok(Parsed::Static(value.to_owned()));
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut literal = String::new();
        let mut rest = value;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let end = after.find('%').ok_or_else(|| {
                format!("{value:?}: a % with no command after it (write %% for a %)")
            })?;
            let command = &after[..end];
            rest = &after[end + 1..];
            let part = match command {
                "PROTOCOL" => Part::Protocol,
                "DOWNSTREAM_REMOTE_ADDRESS" => Part::RemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Part::RemoteIp,
                "DOWNSTREAM_REMOTE_PORT" => Part::RemotePort,
                "DOWNSTREAM_LOCAL_ADDRESS" => Part::LocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Part::LocalIp,
                "DOWNSTREAM_LOCAL_PORT" => Part::LocalPort,
                "HOSTNAME" => {
                    literal.push_str(&hostname());
                    continue;
                }
                _ => match command
                    .strip_prefix("REQ(")
                    .and_then(|c| c.strip_suffix(')'))
                {
                    Some(name) if request => Part::Request(
                        HeaderName::try_from(name.to_ascii_lowercase())
                            .map_err(|_| format!("%REQ({name})%: not a header name"))?,
                    ),
                    Some(_) => {
                        return Err(format!(
                            "%{command}% reads the request, which a response header edit cannot"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "%{command}% is not a substitution the agent makes (it makes {KNOWN}; write %% for a %)"
                        ));
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal).into()));
            }
            parts.push(part);
        }
        literal.push_str(rest);
        if parts.is_empty() {
            return Ok(Parsed::Static(literal));
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Parsed::Format(Self(parts.into())))
    }

    /// The value for one request, whose headers `request` are (for
    /// `%REQ(…)%`); `None` when it comes out empty (Envoy adds no header
    /// then) or is no header value.
    pub fn render(&self, ctx: &FormatContext, request: Option<&HeaderMap>) -> Option<HeaderValue> {
        use std::fmt::Write;
        let mut out = String::new();
        for part in self.0.iter() {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Literal(text) => out.write_str(text),
                Part::Protocol => out.write_str(match ctx.version {
                    Version::HTTP_10 => "HTTP/1.0",
                    Version::HTTP_2 => "HTTP/2",
                    _ => "HTTP/1.1",
                }),
                Part::RemoteAddress => write!(out, "{}", ctx.peer),
                Part::RemoteIp => write!(out, "{}", ctx.peer.ip()),
                Part::RemotePort => write!(out, "{}", ctx.peer.port()),
                Part::LocalAddress => write!(out, "{}", ctx.local),
                Part::LocalIp => write!(out, "{}", ctx.local.ip()),
                Part::LocalPort => write!(out, "{}", ctx.local.port()),
                Part::Request(name) => out.write_str(
                    request
                        .and_then(|h| h.get(name))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(""),
                ),
            };
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::try_from(out).ok()
    }
}

/// This machine's name (Envoy's `%HOSTNAME%`), empty when unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> FormatContext {
        FormatContext {
            version: Version::HTTP_2,
            peer: "10.1.2.3:4567".parse().unwrap(),
            local: "[fd00::1]:9080".parse().unwrap(),
        }
    }

    fn render(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        match HeaderFormat::parse(value, true).unwrap() {
            Parsed::Static(text) => Some(text),
            Parsed::Format(f) => f
                .render(&ctx(), Some(&headers))
                .map(|v| v.to_str().unwrap().to_owned()),
        }
    }

    #[test]
    fn commands_are_filled_from_the_request_and_its_connection() {
        assert_eq!(render("%PROTOCOL%").as_deref(), Some("HTTP/2"));
        assert_eq!(
            render("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%DOWNSTREAM_REMOTE_PORT%;")
                .as_deref(),
            Some("ip=10.1.2.3:4567;")
        );
        assert_eq!(
            render("%DOWNSTREAM_REMOTE_ADDRESS%").as_deref(),
            Some("10.1.2.3:4567")
        );
        assert_eq!(
            render("%DOWNSTREAM_LOCAL_ADDRESS%").as_deref(),
            Some("[fd00::1]:9080")
        );
        assert_eq!(
            render("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(render("by %REQ(X-User)%").as_deref(), Some("by alice"));
        assert_eq!(render("%REQ(x-absent)%"), None, "empty: no header");
    }

    #[test]
    fn a_percent_is_written_twice_and_nothing_else_is_a_command() {
        assert_eq!(
            HeaderFormat::parse("100%%", true),
            Ok(Parsed::Static("100%".into()))
        );
        assert_eq!(
            HeaderFormat::parse("plain", false),
            Ok(Parsed::Static("plain".into()))
        );
        let unknown = HeaderFormat::parse("%START_TIME%", true).unwrap_err();
        assert!(
            unknown.contains("%START_TIME%") && unknown.contains("PROTOCOL"),
            "{unknown}"
        );
        assert!(HeaderFormat::parse("50% off", true).is_err());
        let response = HeaderFormat::parse("%REQ(x-user)%", false).unwrap_err();
        assert!(response.contains("response"), "{response}");
    }
}
