//! Where a captured connection was going: `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), read through socket2, as Envoy's
//! `original_dst` listener filter reads them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::SockRef;

/// The destination the client connected to before `iptables` redirected the
/// connection to this listener; `None` when it was not redirected (the
/// client connected to the listener itself: explicit mode, probes).
///
/// Works on tokio and std streams alike (`&TcpStream`). An IPv4
/// connection accepted on a dual-stack IPv6 socket is answered in IPv4
/// form.
///
/// # Errors
/// The socket's own errors (`getsockname`, `getsockopt`); "no conntrack
/// entry" (`ENOENT`) is not an error but `None`.
pub fn original_dst(stream: &impl AsFd) -> io::Result<Option<SocketAddr>> {
    let socket = SockRef::from(stream);
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let local = unmapped(local);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    }
    .and_then(|addr| {
        addr.as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
    });
    interpret(local, original)
}

/// The answer for a connection whose local address is `local` and whose
/// conntrack lookup gave `original`.
fn interpret(
    local: SocketAddr,
    original: io::Result<SocketAddr>,
) -> io::Result<Option<SocketAddr>> {
    match original {
        Ok(original) => {
            let original = unmapped(original);
            Ok((original != local).then_some(original))
        }
        // No conntrack entry: nothing rewrote this connection.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_rewritten_destination_is_the_original() {
        let got = interpret(addr("127.0.0.1:15001"), Ok(addr("10.96.0.10:9080")));
        assert_eq!(got.unwrap(), Some(addr("10.96.0.10:9080")));
        let got = interpret(addr("[::1]:15001"), Ok(addr("[fd00:96::10]:9080")));
        assert_eq!(got.unwrap(), Some(addr("[fd00:96::10]:9080")));
    }

    #[test]
    fn a_connection_to_the_listener_itself_was_not_redirected() {
        assert_eq!(
            interpret(addr("127.0.0.1:15001"), Ok(addr("127.0.0.1:15001"))).unwrap(),
            None
        );
        let enoent = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            interpret(addr("127.0.0.1:15001"), Err(enoent)).unwrap(),
            None
        );
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(interpret(addr("127.0.0.1:15001"), Err(other)).is_err());
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        assert_eq!(unmapped(addr("[::ffff:10.0.0.1]:80")), addr("10.0.0.1:80"));
        let got = interpret(
            addr("127.0.0.1:15006"),
            Ok(addr("[::ffff:127.0.0.1]:15006")),
        );
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn a_direct_loopback_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server).unwrap(), None);
        assert_eq!(original_dst(&client).unwrap(), None);
    }
}
