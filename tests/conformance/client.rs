//! Sends a case's request byte for byte: HTTP/1.1 over a raw socket (so
//! duplicate headers, unnormalized paths and broken bodies go out exactly as
//! written), or HTTP/2 with prior knowledge.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::case::Send;

/// What the client saw of the response.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The final status (0 when none came).
    pub status: u16,
    /// Interim (1xx) statuses before it, in order.
    pub interim: Vec<u16>,
    /// Header lines of the final response in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, chunked framing removed.
    pub body: Vec<u8>,
}

/// Sends the request; the response as the client saw it (status 0 when
/// none came).
pub async fn send(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> Reply {
    let sent = if send.http2 {
        tokio::time::timeout(
            Duration::from_secs(20),
            h2(addr, send, request_id, authority),
        )
        .await
    } else {
        tokio::time::timeout(
            Duration::from_secs(20),
            h1(addr, send, request_id, authority),
        )
        .await
    };
    sent.ok().flatten().unwrap_or_default()
}

fn has(send: &Send, name: &str) -> bool {
    send.headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// The request's bytes on the wire.
pub fn h1_bytes(send: &Send, request_id: &str, authority: &str) -> Vec<u8> {
    if let Some(raw) = &send.raw {
        // The id goes right after the request line.
        let (line, rest) = raw.split_once("\r\n").unwrap_or((raw, ""));
        return format!("{line}\r\nx-request-id: {request_id}\r\n{rest}").into_bytes();
    }
    let mut out = format!("{} {} HTTP/1.1\r\n", send.method, send.path);
    if !has(send, "host") {
        out.push_str(&format!("host: {authority}\r\n"));
    }
    for (name, value) in &send.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has(send, "x-request-id") {
        out.push_str(&format!("x-request-id: {request_id}\r\n"));
    }
    let body = send.body.as_deref().unwrap_or("");
    if !body.is_empty() {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("connection: close\r\n\r\n");
    out.push_str(body);
    out.into_bytes()
}

async fn h1(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let bytes = h1_bytes(send, request_id, authority);
    let (head, last) = match send.last_byte_after_ms {
        0 => (&bytes[..], &[][..]),
        _ => bytes.split_at(bytes.len() - 1),
    };
    stream.write_all(head).await.ok()?;
    if !last.is_empty() {
        tokio::time::sleep(Duration::from_millis(send.last_byte_after_ms)).await;
        stream.write_all(last).await.ok()?;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    read_h1_response(&response, send.method.eq_ignore_ascii_case("HEAD"))
}

/// Reads the final response out of what a connection delivered: interim
/// (1xx) heads skipped, the body unchunked when `transfer-encoding:
/// chunked` (the rest of the bytes as they are otherwise: the request asked
/// the connection to close).
fn read_h1_response(mut bytes: &[u8], head_only: bool) -> Option<Reply> {
    let mut interim = Vec::new();
    loop {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
            .get(..3)?
            .parse()
            .ok()?;
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = match (head_only, chunked) {
            (true, _) => Vec::new(),
            (false, true) => unchunk(bytes),
            (false, false) => bytes.to_vec(),
        };
        return Some(Reply {
            status,
            interim,
            headers,
            body,
        });
    }
}

/// The data of a chunked body (as far as it is well formed).
fn unchunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&bytes[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        bytes = &bytes[eol + 2..];
        if size == 0 || bytes.len() < size {
            break;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = bytes.get(size + 2..).unwrap_or_default();
    }
    out
}

async fn h2(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> Option<Reply> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(send.method.as_str())
        .uri(format!("http://{authority}{}", send.path));
    for (name, value) in &send.headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
        request = request.header(name, HeaderValue::from_str(value).ok()?);
    }
    if !has(send, "x-request-id") {
        request = request.header("x-request-id", request_id);
    }
    let body = Bytes::from(send.body.clone().unwrap_or_default());
    let request = request.body(Full::new(body)).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    Some(Reply {
        status,
        interim: Vec::new(),
        headers,
        body,
    })
}
