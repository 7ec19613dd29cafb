//! One HTTP/1.1 GET to the query service, on a current-thread runtime.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// GETs `path` from `server` and returns the JSON body; a non-2xx answer
/// is an error carrying the server's message.
pub fn get_json(server: &str, path: &str) -> anyhow::Result<Value> {
    let uri: http::Uri = format!("{}{path}", server.trim_end_matches('/'))
        .parse()
        .context("server URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("--server must be an http:// URL");
    }
    let host = uri.host().context("server URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connect {host}:{port}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::get(uri)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })?;
    let json: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{status}: not JSON: {}", String::from_utf8_lossy(&body)))?;
    if !status.is_success() {
        let message = json["errors"][0]["msg"]
            .as_str()
            .or_else(|| json["error"]["message"].as_str())
            .unwrap_or("no message");
        bail!("{status}: {message}");
    }
    Ok(json)
}
