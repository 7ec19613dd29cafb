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

/// The response status (0 when none came).
pub async fn send(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> u16 {
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
    sent.ok().flatten().unwrap_or(0)
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

async fn h1(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(&h1_bytes(send, request_id, authority))
        .await
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let head = String::from_utf8_lossy(&response);
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?;
    status.get(..3)?.parse().ok()
}

async fn h2(addr: SocketAddr, send: &Send, request_id: &str, authority: &str) -> Option<u16> {
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
    let _ = response.into_body().collect().await;
    Some(status)
}
