//! Opening TCP connections to upstream endpoints: the one dialer the
//! proxy's pools, its TCP proxying and the ext_authz client share.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::model::endpoint::UpstreamAddr;

/// Opens a plain TCP connection to `addr` within `timeout` (from `bind`'s
/// address when set; `TCP_NODELAY` on). Errors: the connect's own, or
/// `TimedOut`.
pub async fn connect_tcp(
    addr: &UpstreamAddr,
    timeout: Duration,
    bind: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let connect = async {
        match (addr, bind) {
            (UpstreamAddr::Socket(socket), None) => TcpStream::connect(socket).await,
            (UpstreamAddr::Socket(socket), Some(source)) => {
                let tcp = match socket {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                tcp.bind(SocketAddr::new(source, 0))?;
                tcp.connect(*socket).await
            }
            (UpstreamAddr::Dns { host, port }, _) => {
                TcpStream::connect((host.as_ref(), *port)).await
            }
        }
    };
    let stream = tokio::time::timeout(timeout, connect).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {timeout:?}"),
        )
    })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
