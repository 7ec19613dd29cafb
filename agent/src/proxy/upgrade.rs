//! Protocol upgrades (WebSocket and the like): the request goes upstream
//! with its `Upgrade` header over HTTP/1.1, and once the upstream answers
//! 101 the two connections are spliced byte for byte.

use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Takes the downstream side of an upgrade, if the request asks for one.
pub fn take<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    let wants = req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
    wants.then(|| hyper::upgrade::on(req))
}

/// Splices the two upgraded connections once both are ready.
pub fn splice<B>(downstream: OnUpgrade, upstream_response: &mut Response<B>) {
    let upstream = hyper::upgrade::on(upstream_response);
    tokio::task::spawn_local(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(%error, "upgraded connection closed with an error");
        }
    });
}
