//! The expressions of Telemetry: `accessLogging[].filter.expression` and a
//! metric's `tagOverrides[].value`. Istio writes both in CEL over Envoy's
//! attributes; the agent compiles a documented subset of CEL once per config
//! load and evaluates it per request without allocating (except for
//! `source.address`, `destination.address` and `string()` of a number).
//!
//! The subset:
//! - literals: integers, `'single'` or `"double"` quoted strings, `true`,
//!   `false`;
//! - attributes: `request.method`, `request.path` (with the query),
//!   `request.url_path` (without), `request.host`, `request.scheme`,
//!   `request.protocol`, `request.id`, `request.useragent`,
//!   `request.referer`, `request.size`, `request.headers['name']`,
//!   `response.code`, `response.code_details`, `response.grpc_status`,
//!   `response.size`, `response.headers['name']`, `source.address`,
//!   `source.port`, `destination.address`, `destination.port`,
//!   `connection.mtls`, `connection.requested_server_name`;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=` (integers with integers, strings with
//!   strings), `&&`, `||`, `!`, parentheses;
//! - `has(request.headers['name'])`, `string(x)`, `int(x)`, and the string
//!   methods `x.startsWith('…')`, `x.endsWith('…')`, `x.contains('…')`,
//!   `x.matches('regex')`.
//!
//! As in CEL, reading an absent attribute (a missing header, a response
//! attribute before there is a response) is an error, `&&` and `||` absorb
//! an error when the other side decides, and an expression whose result is
//! an error does not log (a filter) or gives the tag `unknown` (a metric
//! tag), as Envoy does.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName};

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    root: Node,
}

/// Why an expression does not compile (position is a byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {message}")]
pub struct ExprError {
    /// Byte offset in the expression.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

/// An attribute the expressions can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `request.method`.
    RequestMethod,
    /// `request.path`: path and query.
    RequestPath,
    /// `request.url_path`: the path without the query.
    RequestUrlPath,
    /// `request.host`.
    RequestHost,
    /// `request.scheme`.
    RequestScheme,
    /// `request.protocol`: `HTTP/1.1`, `HTTP/2`.
    RequestProtocol,
    /// `request.size`: body bytes.
    RequestSize,
    /// `request.headers['name']`; also `request.id` (`x-request-id`),
    /// `request.useragent`, `request.referer`.
    RequestHeader(HeaderName),
    /// `response.code`.
    ResponseCode,
    /// `response.code_details`.
    ResponseCodeDetails,
    /// `response.grpc_status`.
    ResponseGrpcStatus,
    /// `response.size`: body bytes.
    ResponseSize,
    /// `response.headers['name']`.
    ResponseHeader(HeaderName),
    /// `source.address`: the peer's IP.
    SourceAddress,
    /// `source.port`.
    SourcePort,
    /// `destination.address`.
    DestinationAddress,
    /// `destination.port`.
    DestinationPort,
    /// `connection.mtls`.
    ConnectionMtls,
    /// `connection.requested_server_name`.
    ConnectionSni,
}

/// What a request (and, once there is one, its response) shows the
/// expressions.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// There is an HTTP request: false on a TCP connection, where every
    /// `request.*` attribute is absent (an error), as in Envoy.
    pub request: bool,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Host (`:authority`).
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers.
    pub request_headers: &'a HeaderMap,
    /// Request body bytes.
    pub request_size: u64,
    /// The response, once there is one.
    pub response: Option<ResponseAttributes<'a>>,
    /// The peer.
    pub source: SocketAddr,
    /// Where the request went.
    pub destination: SocketAddr,
    /// Whether the connection is mutual TLS.
    pub mtls: bool,
    /// The SNI, when TLS.
    pub sni: Option<&'a str>,
}

/// The response's attributes.
#[derive(Debug, Clone, Copy)]
pub struct ResponseAttributes<'a> {
    /// Status code.
    pub code: u16,
    /// Envoy's response code details.
    pub code_details: &'a str,
    /// `grpc-status`, when gRPC.
    pub grpc_status: Option<i64>,
    /// Response headers.
    pub headers: &'a HeaderMap,
    /// Body bytes.
    pub size: u64,
}

#[derive(Debug, Clone)]
enum Node {
    Str(String),
    Int(i64),
    Bool(bool),
    Attr(Attribute),
    Has(Attribute),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    ToString(Box<Node>),
    ToInt(Box<Node>),
    Method(StrMethod, Box<Node>, Box<Node>),
    Matches(Box<Node>, Box<regex::Regex>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrMethod {
    StartsWith,
    EndsWith,
    Contains,
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A string.
    Str(Cow<'a, str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Evaluation failed (an absent attribute, a type mismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalError;

/// Most tokens an expression may have. Parsing, evaluating and dropping an
/// expression recurse over its tree, whose depth is bounded by its tokens
/// (a chain of `||` is as deep as it is long): this bound keeps every one
/// of them within a thread's stack whatever a config holds.
const MAX_TOKENS: usize = 1024;

/// Deepest nesting of brackets, calls, method arguments and `!`: CEL's
/// own parsers bound it too (cel-go's default is 32 for calls and
/// brackets); past it an expression is refused, never a stack overflow.
const MAX_NESTING: usize = 64;

impl Expression {
    /// Compiles `source`.
    ///
    /// # Errors
    /// A syntax error, an unknown attribute or method, a bad regex, more
    /// than [`MAX_TOKENS`] tokens or nesting deeper than [`MAX_NESTING`]:
    /// the byte offset and what was wrong.
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        let tokens = lex(source)?;
        if tokens.len() > MAX_TOKENS {
            return Err(ExprError {
                at: tokens[MAX_TOKENS].0,
                message: format!("more than {MAX_TOKENS} tokens"),
            });
        }
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            end: source.len(),
            nesting: 0,
        };
        let root = parser.or()?;
        if let Some((at, token)) = parser.tokens.get(parser.pos) {
            return Err(ExprError {
                at: *at,
                message: format!("unexpected {token:?}"),
            });
        }
        Ok(Self {
            source: source.to_owned(),
            root,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value of the expression for `attrs`.
    pub fn eval<'a>(&'a self, attrs: &Attributes<'a>) -> Result<Value<'a>, EvalError> {
        eval(&self.root, attrs)
    }

    /// A filter's verdict: `true` only when the expression is `true`.
    pub fn matches(&self, attrs: &Attributes<'_>) -> bool {
        matches!(eval(&self.root, attrs), Ok(Value::Bool(true)))
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Value<'a>, EvalError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| Value::Str(Cow::Borrowed(v)))
        .ok_or(EvalError)
}

fn read<'a>(attr: &Attribute, a: &Attributes<'a>) -> Result<Value<'a>, EvalError> {
    let s = |v: &'a str| Ok(Value::Str(Cow::Borrowed(v)));
    let int = |v: u64| Ok(Value::Int(i64::try_from(v).unwrap_or(i64::MAX)));
    let response = a.response.ok_or(EvalError);
    let of_request = matches!(
        attr,
        Attribute::RequestMethod
            | Attribute::RequestPath
            | Attribute::RequestUrlPath
            | Attribute::RequestHost
            | Attribute::RequestScheme
            | Attribute::RequestProtocol
            | Attribute::RequestSize
            | Attribute::RequestHeader(_)
    );
    if of_request && !a.request {
        return Err(EvalError);
    }
    match attr {
        Attribute::RequestMethod => s(a.method),
        Attribute::RequestPath => s(a.path),
        Attribute::RequestUrlPath => s(a.path.split_once('?').map_or(a.path, |(p, _)| p)),
        Attribute::RequestHost => s(a.host),
        Attribute::RequestScheme => s(a.scheme),
        Attribute::RequestProtocol => s(a.protocol),
        Attribute::RequestSize => int(a.request_size),
        Attribute::RequestHeader(name) => header(a.request_headers, name),
        Attribute::ResponseCode => Ok(Value::Int(i64::from(response?.code))),
        Attribute::ResponseCodeDetails => s(response?.code_details),
        Attribute::ResponseGrpcStatus => response?.grpc_status.map(Value::Int).ok_or(EvalError),
        Attribute::ResponseSize => int(response?.size),
        Attribute::ResponseHeader(name) => header(response?.headers, name),
        Attribute::SourceAddress => Ok(Value::Str(Cow::Owned(a.source.ip().to_string()))),
        Attribute::SourcePort => Ok(Value::Int(i64::from(a.source.port()))),
        Attribute::DestinationAddress => Ok(Value::Str(Cow::Owned(a.destination.ip().to_string()))),
        Attribute::DestinationPort => Ok(Value::Int(i64::from(a.destination.port()))),
        Attribute::ConnectionMtls => Ok(Value::Bool(a.mtls)),
        Attribute::ConnectionSni => a.sni.map_or(Err(EvalError), s),
    }
}

fn boolean(node: &Node, a: &Attributes<'_>) -> Result<bool, EvalError> {
    match eval(node, a)? {
        Value::Bool(b) => Ok(b),
        _ => Err(EvalError),
    }
}

fn text<'a>(node: &'a Node, a: &Attributes<'a>) -> Result<Cow<'a, str>, EvalError> {
    match eval(node, a)? {
        Value::Str(s) => Ok(s),
        _ => Err(EvalError),
    }
}

fn eval<'a>(node: &'a Node, a: &Attributes<'a>) -> Result<Value<'a>, EvalError> {
    Ok(match node {
        Node::Str(s) => Value::Str(Cow::Borrowed(s)),
        Node::Int(i) => Value::Int(*i),
        Node::Bool(b) => Value::Bool(*b),
        Node::Attr(attr) => read(attr, a)?,
        Node::Has(attr) => Value::Bool(read(attr, a).is_ok()),
        Node::Not(inner) => Value::Bool(!boolean(inner, a)?),
        Node::And(l, r) => match (boolean(l, a), boolean(r, a)) {
            (Ok(false), _) | (_, Ok(false)) => Value::Bool(false),
            (Ok(true), Ok(true)) => Value::Bool(true),
            _ => return Err(EvalError),
        },
        Node::Or(l, r) => match (boolean(l, a), boolean(r, a)) {
            (Ok(true), _) | (_, Ok(true)) => Value::Bool(true),
            (Ok(false), Ok(false)) => Value::Bool(false),
            _ => return Err(EvalError),
        },
        Node::Cmp(op, l, r) => {
            let ordering = match (eval(l, a)?, eval(r, a)?) {
                (Value::Int(x), Value::Int(y)) => x.cmp(&y),
                (Value::Str(x), Value::Str(y)) => x.cmp(&y),
                (Value::Bool(x), Value::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => x.cmp(&y),
                _ => return Err(EvalError),
            };
            use std::cmp::Ordering::*;
            Value::Bool(match op {
                Cmp::Eq => ordering == Equal,
                Cmp::Ne => ordering != Equal,
                Cmp::Lt => ordering == Less,
                Cmp::Le => ordering != Greater,
                Cmp::Gt => ordering == Greater,
                Cmp::Ge => ordering != Less,
            })
        }
        Node::ToString(inner) => match eval(inner, a)? {
            Value::Str(s) => Value::Str(s),
            other => Value::Str(Cow::Owned(other.to_string())),
        },
        Node::ToInt(inner) => match eval(inner, a)? {
            Value::Int(i) => Value::Int(i),
            Value::Str(s) => Value::Int(s.trim().parse().map_err(|_| EvalError)?),
            Value::Bool(_) => return Err(EvalError),
        },
        Node::Method(method, target, arg) => {
            let (target, arg) = (text(target, a)?, text(arg, a)?);
            Value::Bool(match method {
                StrMethod::StartsWith => target.starts_with(&*arg),
                StrMethod::EndsWith => target.ends_with(&*arg),
                StrMethod::Contains => target.contains(&*arg),
            })
        }
        Node::Matches(target, re) => Value::Bool(re.is_match(&text(target, a)?)),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Punct(&'static str),
}

fn lex(src: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    const PUNCT: [&str; 16] = [
        "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ".", ",", "?",
    ];
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'\'' || c == b'"' {
            let start = i;
            i += 1;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(ExprError {
                            at: start,
                            message: "unterminated string".into(),
                        });
                    }
                    Some(&q) if q == c => break,
                    Some(b'\\') if i + 1 < bytes.len() => {
                        let ch = src[i + 1..].chars().next().unwrap_or('\\');
                        value.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().unwrap_or(' ');
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            i += 1;
            out.push((start, Token::Str(value)));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n = src[start..i].parse().map_err(|_| ExprError {
                at: start,
                message: "integer out of range".into(),
            })?;
            if bytes.get(i) == Some(&b'u') {
                i += 1; // CEL's unsigned literal, `400u`
            }
            out.push((start, Token::Int(n)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, Token::Ident(src[start..i].to_owned())));
        } else if let Some(p) = PUNCT.iter().find(|p| src[i..].starts_with(**p)) {
            if *p == "?" {
                return Err(ExprError {
                    at: i,
                    message: "the conditional operator is not supported".into(),
                });
            }
            out.push((i, Token::Punct(p)));
            i += p.len();
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            return Err(ExprError {
                at: i,
                message: format!("unexpected character {ch:?}"),
            });
        }
    }
    Ok(out)
}

struct Parser<'t> {
    tokens: &'t [(usize, Token)],
    pos: usize,
    end: usize,
    /// How deep the parse is in brackets, calls, arguments and `!`.
    nesting: usize,
}

impl Parser<'_> {
    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            at: self.at(),
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(p)) if *p == punct) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> Result<(), ExprError> {
        if self.eat(punct) {
            Ok(())
        } else {
            self.error(format!("expected `{punct}`"))
        }
    }

    /// Runs `step` one nesting level deeper, refusing past [`MAX_NESTING`].
    fn nested(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Node, ExprError>,
    ) -> Result<Node, ExprError> {
        if self.nesting >= MAX_NESTING {
            return self.error(format!("nested deeper than {MAX_NESTING}"));
        }
        self.nesting += 1;
        let node = step(self);
        self.nesting -= 1;
        node
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        self.nested(|p| {
            let mut left = p.and()?;
            while p.eat("||") {
                left = Node::Or(Box::new(left), Box::new(p.and()?));
            }
            Ok(left)
        })
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.comparison()?;
        while self.eat("&&") {
            left = Node::And(Box::new(left), Box::new(self.comparison()?));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        let left = self.unary()?;
        let op = match self.peek() {
            Some(Token::Punct("==")) => Cmp::Eq,
            Some(Token::Punct("!=")) => Cmp::Ne,
            Some(Token::Punct("<")) => Cmp::Lt,
            Some(Token::Punct("<=")) => Cmp::Le,
            Some(Token::Punct(">")) => Cmp::Gt,
            Some(Token::Punct(">=")) => Cmp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.unary()?;
        Ok(Node::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.eat("!") {
            return self.nested(|p| Ok(Node::Not(Box::new(p.unary()?))));
        }
        let mut node = self.primary()?;
        while self.eat(".") {
            let Some(Token::Ident(method)) = self.peek().cloned() else {
                return self.error("expected a method name");
            };
            if !matches!(
                method.as_str(),
                "startsWith" | "endsWith" | "contains" | "matches"
            ) {
                return self.error(format!(
                    "unknown method {method:?} (startsWith, endsWith, contains, matches)"
                ));
            }
            self.pos += 1;
            self.expect("(")?;
            let arg = self.or()?;
            self.expect(")")?;
            node = match method.as_str() {
                "startsWith" => Node::Method(StrMethod::StartsWith, Box::new(node), Box::new(arg)),
                "endsWith" => Node::Method(StrMethod::EndsWith, Box::new(node), Box::new(arg)),
                "contains" => Node::Method(StrMethod::Contains, Box::new(node), Box::new(arg)),
                "matches" => {
                    let Node::Str(pattern) = arg else {
                        return self.error("matches() takes a string literal");
                    };
                    let re = regex::Regex::new(&pattern).map_err(|e| ExprError {
                        at: self.at(),
                        message: format!("bad regex: {e}"),
                    })?;
                    Node::Matches(Box::new(node), Box::new(re))
                }
                _ => Node::Method(StrMethod::Contains, Box::new(node), Box::new(arg)),
            };
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let at = self.at();
        let Some(token) = self.peek().cloned() else {
            return self.error("unexpected end of expression");
        };
        self.pos += 1;
        match token {
            Token::Str(s) => Ok(Node::Str(s)),
            Token::Int(i) => Ok(Node::Int(i)),
            Token::Punct("(") => {
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Ident(name) => match name.as_str() {
                "true" => Ok(Node::Bool(true)),
                "false" => Ok(Node::Bool(false)),
                "has" | "string" | "int" => {
                    self.expect("(")?;
                    let node = if name == "has" {
                        let Node::Attr(attr) = self.attribute_path(at)? else {
                            return self.error("has() takes an attribute");
                        };
                        Node::Has(attr)
                    } else {
                        self.or()?
                    };
                    self.expect(")")?;
                    Ok(match name.as_str() {
                        "string" => Node::ToString(Box::new(node)),
                        "int" => Node::ToInt(Box::new(node)),
                        _ => node,
                    })
                }
                _ => {
                    self.pos -= 1;
                    self.attribute_path(at)
                }
            },
            other => Err(ExprError {
                at,
                message: format!("unexpected {other:?}"),
            }),
        }
    }

    /// `a.b` or `a.headers['name']`.
    fn attribute_path(&mut self, at: usize) -> Result<Node, ExprError> {
        let mut parts: Vec<String> = Vec::new();
        loop {
            let Some(Token::Ident(part)) = self.peek().cloned() else {
                return self.error("expected an attribute");
            };
            self.pos += 1;
            parts.push(part);
            // A method call follows a complete attribute: stop before it.
            let next_is_method = matches!(
                (self.tokens.get(self.pos + 1), self.tokens.get(self.pos + 2)),
                (Some((_, Token::Ident(_))), Some((_, Token::Punct("("))))
            );
            if next_is_method || !self.eat(".") {
                break;
            }
        }
        let header = if self.eat("[") {
            let Some(Token::Str(name)) = self.peek().cloned() else {
                return self.error("expected a quoted header name");
            };
            self.pos += 1;
            self.expect("]")?;
            Some(
                HeaderName::try_from(name.to_ascii_lowercase()).map_err(|_| ExprError {
                    at,
                    message: format!("{name:?} is not a header name"),
                })?,
            )
        } else {
            None
        };
        let path = parts.join(".");
        let attr = match (path.as_str(), header) {
            ("request.headers", Some(h)) => Attribute::RequestHeader(h),
            ("response.headers", Some(h)) => Attribute::ResponseHeader(h),
            (_, Some(_)) => {
                return Err(ExprError {
                    at,
                    message: format!("{path} is not a map"),
                });
            }
            ("request.method", None) => Attribute::RequestMethod,
            ("request.path", None) => Attribute::RequestPath,
            ("request.url_path", None) => Attribute::RequestUrlPath,
            ("request.host", None) => Attribute::RequestHost,
            ("request.scheme", None) => Attribute::RequestScheme,
            ("request.protocol", None) => Attribute::RequestProtocol,
            ("request.size", None) => Attribute::RequestSize,
            ("request.id", None) => {
                Attribute::RequestHeader(HeaderName::from_static("x-request-id"))
            }
            ("request.useragent", None) => Attribute::RequestHeader(http::header::USER_AGENT),
            ("request.referer", None) => Attribute::RequestHeader(http::header::REFERER),
            ("response.code", None) => Attribute::ResponseCode,
            ("response.code_details", None) => Attribute::ResponseCodeDetails,
            ("response.grpc_status", None) => Attribute::ResponseGrpcStatus,
            ("response.size", None) => Attribute::ResponseSize,
            ("source.address", None) => Attribute::SourceAddress,
            ("source.port", None) => Attribute::SourcePort,
            ("destination.address", None) => Attribute::DestinationAddress,
            ("destination.port", None) => Attribute::DestinationPort,
            ("connection.mtls", None) => Attribute::ConnectionMtls,
            ("connection.requested_server_name", None) => Attribute::ConnectionSni,
            _ => {
                return Err(ExprError {
                    at,
                    message: format!(
                        "unknown attribute {path:?} (request.*, response.*, source.address/port, destination.address/port, connection.mtls, connection.requested_server_name)"
                    ),
                });
            }
        };
        Ok(Node::Attr(attr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(req: &'a HeaderMap, resp: Option<(&'a HeaderMap, u16)>) -> Attributes<'a> {
        Attributes {
            request: true,
            method: "GET",
            path: "/api/v1?debug=1",
            host: "reviews",
            scheme: "http",
            protocol: "HTTP/1.1",
            request_headers: req,
            request_size: 0,
            response: resp.map(|(headers, code)| ResponseAttributes {
                code,
                code_details: "via_upstream",
                grpc_status: None,
                headers,
                size: 12,
            }),
            source: "10.0.0.1:4000".parse().unwrap(),
            destination: "10.0.0.2:8080".parse().unwrap(),
            mtls: true,
            sni: None,
        }
    }

    #[test]
    fn hostile_nesting_and_length_are_refused_not_a_stack_overflow() {
        // A config with 5000 brackets took the agent down (stack overflow):
        // refused now, by the token bound first.
        let huge = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(Expression::parse(&huge).is_err());
        // Within the token bound, nesting has its own.
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        let error = Expression::parse(&deep).expect_err("too deep");
        assert!(error.message.contains("nested deeper than 64"), "{error:?}");
        let nots = format!("{}true", "!".repeat(100));
        let error = Expression::parse(&nots).expect_err("too deep");
        assert!(error.message.contains("nested deeper than 64"), "{error:?}");
        let calls = format!("{}1{}", "string(".repeat(100), ")".repeat(100));
        let error = Expression::parse(&calls).expect_err("too deep");
        assert!(error.message.contains("nested deeper than 64"), "{error:?}");
        // A flat chain is as deep as it is long: bounded by its tokens.
        let chain = vec!["true"; 100_000].join(" || ");
        let error = Expression::parse(&chain).expect_err("too long");
        assert!(error.message.contains("more than 1024 tokens"), "{error:?}");
        // What a person writes still parses, at the bounds too.
        let ok = format!("{}1{} == 1", "(".repeat(60), ")".repeat(60));
        assert!(Expression::parse(&ok).is_ok());
        let ok = vec!["true"; 300].join(" || ");
        let parsed = Expression::parse(&ok).expect("300 terms");
        let req = HeaderMap::new();
        assert_eq!(parsed.eval(&attrs(&req, None)), Ok(Value::Bool(true)));
    }

    #[test]
    fn filters_decide_as_cel_does() {
        let mut req = HeaderMap::new();
        req.insert("x-debug", "on".parse().unwrap());
        let resp = HeaderMap::new();
        let ok = attrs(&req, Some((&resp, 200)));
        let failed = attrs(&req, Some((&resp, 503)));
        let no_response = attrs(&req, None);
        let check = |e: &str, a: &Attributes<'_>| Expression::parse(e).unwrap().matches(a);
        assert!(!check("response.code >= 400", &ok));
        assert!(check("response.code >= 400", &failed));
        assert!(check("response.code >= 400u", &failed));
        assert!(
            !check("response.code >= 400", &no_response),
            "an error does not log"
        );
        assert!(check("request.headers['x-debug'] == 'on'", &ok));
        assert!(check("request.headers[\"X-Debug\"] == \"on\"", &ok));
        assert!(!check("request.headers['x-missing'] == 'on'", &ok));
        assert!(check(
            "has(request.headers['x-debug']) && !has(request.headers['x-missing'])",
            &ok
        ));
        // `||` absorbs an error on the other side, as CEL's does.
        assert!(check(
            "request.headers['x-missing'] == 'a' || request.method == 'GET'",
            &ok
        ));
        assert!(!check(
            "request.headers['x-missing'] == 'a' && request.method == 'GET'",
            &ok
        ));
        assert!(check(
            "request.url_path.startsWith('/api') && request.path.contains('debug')",
            &ok
        ));
        assert!(check("request.url_path == '/api/v1'", &ok));
        assert!(check("request.host.matches('^rev.*s$')", &ok));
        assert!(check("connection.mtls && destination.port == 8080", &ok));
        assert!(check(
            "(response.code == 200 || response.code == 204) && response.size > 10",
            &ok
        ));
        assert!(!check("response.code == '200'", &ok), "types do not mix");
    }

    #[test]
    fn values_print_as_tags() {
        let req = HeaderMap::new();
        let a = attrs(&req, None);
        let value = |e: &str| {
            Expression::parse(e)
                .unwrap()
                .eval(&a)
                .map(|v| v.to_string())
        };
        assert_eq!(value("request.host").unwrap(), "reviews");
        assert_eq!(value("string(destination.port)").unwrap(), "8080");
        assert_eq!(value("'literal'").unwrap(), "literal");
        assert_eq!(value("int('42')").unwrap(), "42");
        assert!(
            Expression::parse("int('42') + 1").is_err(),
            "arithmetic is not in the subset"
        );
        assert!(value("request.headers['x-user']").is_err());
    }

    #[test]
    fn errors_point_at_the_problem() {
        let err = |e: &str| Expression::parse(e).unwrap_err();
        assert_eq!(err("response.code >=").at, 16);
        assert!(
            err("response.cod == 1")
                .message
                .contains("unknown attribute")
        );
        assert!(
            err("request.method.lower()")
                .message
                .contains("unknown method")
        );
        assert!(err("a ? b : c").message.contains("conditional"));
        assert!(err("'open").message.contains("unterminated"));
        assert!(
            err("request.method == 'GET')")
                .message
                .contains("unexpected")
        );
    }
}
