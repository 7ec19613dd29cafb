//! Listener sockets: one per worker and address, bound with SO_REUSEPORT so
//! the kernel spreads connections across workers (as Envoy's workers do).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::model::Listeners;

/// Every listener socket, grouped per worker.
pub struct BoundListeners {
    /// Per worker: outbound, inbound, then the outbound TCP listeners.
    pub per_worker: Vec<WorkerSockets>,
    /// The addresses actually bound (port 0 resolved).
    pub addresses: BoundAddresses,
}

/// One worker's sockets.
pub struct WorkerSockets {
    /// Outbound HTTP listener.
    pub outbound: TcpListener,
    /// Inbound listener.
    pub inbound: TcpListener,
    /// Outbound TCP listeners, in config order.
    pub outbound_tcp: Vec<TcpListener>,
}

/// Bound addresses, for the ready log line and the admin API.
#[derive(Debug, Clone)]
pub struct BoundAddresses {
    /// Outbound HTTP.
    pub outbound: SocketAddr,
    /// Inbound.
    pub inbound: SocketAddr,
    /// Outbound TCP.
    pub outbound_tcp: Vec<SocketAddr>,
    /// An ingress gateway's ports, `(Gateway port, bound address)`; empty
    /// for a sidecar.
    pub gateway: Vec<(u16, SocketAddr)>,
}

/// Binds every listener once per worker.
pub fn bind_all(listeners: &Listeners, workers: usize) -> io::Result<BoundListeners> {
    let outbound = bind_group(listeners.outbound, workers)?;
    let inbound = bind_group(listeners.inbound, workers)?;
    let tcp: Vec<Vec<TcpListener>> = listeners
        .outbound_tcp
        .iter()
        .map(|addr| bind_group(*addr, workers))
        .collect::<io::Result<_>>()?;
    let addresses = BoundAddresses {
        outbound: outbound[0].local_addr()?,
        inbound: inbound[0].local_addr()?,
        outbound_tcp: tcp
            .iter()
            .map(|g| g[0].local_addr())
            .collect::<io::Result<_>>()?,
        gateway: Vec::new(),
    };
    let mut tcp: Vec<std::vec::IntoIter<TcpListener>> =
        tcp.into_iter().map(Vec::into_iter).collect();
    let per_worker = outbound
        .into_iter()
        .zip(inbound)
        .map(|(outbound, inbound)| WorkerSockets {
            outbound,
            inbound,
            outbound_tcp: tcp.iter_mut().filter_map(Iterator::next).collect(),
        })
        .collect();
    Ok(BoundListeners {
        per_worker,
        addresses,
    })
}

/// Binds `addr` `n` times; port 0 is resolved by the first bind.
pub(super) fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let first =
        bind_one(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    let actual = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..n {
        group.push(bind_one(actual)?);
    }
    Ok(group)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
