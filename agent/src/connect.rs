//! Opening connections to upstream endpoints: the one dialer the proxy's
//! pools, its TCP proxying and the ext_authz client share.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::net::TcpStream;

use crate::model::cluster::{Cluster, TcpKeepalive};
use crate::model::endpoint::UpstreamAddr;
use crate::tls::handshake::{self, TlsFailure, TlsPlan};
use crate::tls::io::UpstreamIo;

/// Why [`dial`] made no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed or timed out ([`connect_tcp`]'s error).
    #[error("{0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed, or did not finish in the time left
    /// ([`handshake::TIMEOUT`]); counted in `failures`.
    #[error("tls: {}", .0.0)]
    Tls(TlsFailure),
}

/// What a dial reads of its cluster, apart from it (a dial may outlive
/// the request that began it).
#[derive(Debug, Clone, Copy)]
pub struct DialSettings {
    /// The DestinationRule's `connectTimeout`: TCP and TLS handshakes.
    pub connect_timeout: Duration,
    /// The source address ([`Cluster::upstream_bind`]).
    pub bind: Option<std::net::IpAddr>,
    /// TCP keepalive, when set.
    pub keepalive: Option<TcpKeepalive>,
}

impl DialSettings {
    /// `cluster`'s.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            connect_timeout: cluster.connect_timeout,
            bind: cluster.upstream_bind,
            keepalive: cluster.keepalive.tcp,
        }
    }
}

/// A connection to `addr` of `cluster`: [`dial_with`] its settings.
pub async fn dial(
    addr: &UpstreamAddr,
    cluster: &Cluster,
    plan: &TlsPlan,
    failures: &IntCounterVec,
) -> Result<(UpstreamIo, Option<tracemesh_ca::SpiffeId>), DialError> {
    dial_with(addr, DialSettings::of(cluster), plan, failures).await
}

/// A connection to `addr`: TCP ([`connect_tcp`], from the bind address,
/// with TCP keepalive), then TLS by `plan`, both within the connect
/// timeout (the DestinationRule's `connectTimeout`), as Envoy's
/// `connect_timeout` covers the TLS handshake (its connection counts as
/// connected once the handshake is done). Returns the stream and the
/// server's SPIFFE identity, if it has one; a failed handshake is counted
/// in `failures`.
pub async fn dial_with(
    addr: &UpstreamAddr,
    settings: DialSettings,
    plan: &TlsPlan,
    failures: &IntCounterVec,
) -> Result<(UpstreamIo, Option<tracemesh_ca::SpiffeId>), DialError> {
    let began = Instant::now();
    let stream = connect_tcp(
        addr,
        settings.connect_timeout,
        settings.bind,
        settings.keepalive,
    )
    .await
    .map_err(DialError::Connect)?;
    let left = settings.connect_timeout.saturating_sub(began.elapsed());
    handshake::connect(stream, plan, failures, left)
        .await
        .map_err(DialError::Tls)
}

/// Opens a plain TCP connection to `addr` within `timeout` (from `bind`'s
/// address when set; `TCP_NODELAY` on; TCP keepalive by `keepalive` when
/// set). Errors: the connect's own, `TimedOut`, or the keepalive options'.
pub async fn connect_tcp(
    addr: &UpstreamAddr,
    timeout: Duration,
    bind: Option<std::net::IpAddr>,
    keepalive: Option<TcpKeepalive>,
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
    if let Some(keepalive) = keepalive {
        set_keepalive(&stream, keepalive)?;
    }
    Ok(stream)
}

/// Turns TCP keepalive on for `stream`, with the options `keepalive` sets
/// (the kernel's defaults for the others, as Envoy leaves them). Times are
/// whole seconds, 1 to 32767, and probes 1 to 127, as Linux takes them
/// (a value outside is brought inside rather than failing the connection).
fn set_keepalive(stream: &TcpStream, keepalive: TcpKeepalive) -> std::io::Result<()> {
    let seconds = |d: Duration| Duration::from_secs(d.as_secs().clamp(1, 32_767));
    let mut options = socket2::TcpKeepalive::new();
    if let Some(time) = keepalive.time {
        options = options.with_time(seconds(time));
    }
    if let Some(interval) = keepalive.interval {
        options = options.with_interval(seconds(interval));
    }
    if let Some(probes) = keepalive.probes {
        options = options.with_retries(probes.clamp(1, 127));
    }
    socket2::SockRef::from(stream).set_tcp_keepalive(&options)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connected(keepalive: Option<TcpKeepalive>) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = UpstreamAddr::Socket(listener.local_addr().unwrap());
        connect_tcp(&addr, Duration::from_secs(5), None, keepalive)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keepalive_options_reach_the_socket_within_what_linux_takes() {
        let stream = connected(Some(TcpKeepalive {
            probes: Some(4),
            time: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_millis(5_900)),
        }))
        .await;
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);

        // Out of range: brought in range, not a failed connection.
        let stream = connected(Some(TcpKeepalive {
            probes: Some(0),
            time: Some(Duration::from_millis(10)),
            interval: Some(Duration::from_secs(100_000)),
        }))
        .await;
        let socket = socket2::SockRef::from(&stream);
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(32_767)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 1);

        let stream = connected(None).await;
        assert!(!socket2::SockRef::from(&stream).keepalive().unwrap());
    }
}
