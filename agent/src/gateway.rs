//! Starting and stopping an ingress gateway (`tracemesh gateway --config
//! FILE`): compile the IngressGateway file, start telemetry, bind one
//! listener per Gateway port, run the workers and the admin API, reload
//! the file when it changes, drain on stop (every port drains, as the
//! sidecar's inbound listener does). Everything after the accept is the
//! sidecar's data plane ([`crate::proxy`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use crate::compile;
use crate::proxy;
use crate::run::{AgentError, Plane, bind_admin};

/// Where a running gateway listens (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddresses {
    /// `(Gateway port, bound address)`, ascending by port.
    pub ports: Vec<(u16, SocketAddr)>,
    /// The admin API.
    pub admin: SocketAddr,
}

impl GatewayAddresses {
    /// Where Gateway port `number` is bound.
    pub fn port(&self, number: u16) -> Option<SocketAddr> {
        self.ports
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, a)| *a)
    }
}

/// Runs the ingress gateway configured by the file at `path` until `stop`
/// completes, then drains. `ready` is called once every port is bound and
/// serving.
///
/// # Errors
/// A rejected config, a port or the admin address that cannot be bound,
/// the span pipeline or the workload certificate that cannot start.
pub fn run_gateway_until(
    path: &Path,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(&GatewayAddresses),
) -> Result<(), AgentError> {
    let live = crate::model::live::LiveState::default();
    let loaded = crate::reload::Baseline::read(path)?;
    let compiled = compile::compile_gateway_text(
        &Arc::from(path.display().to_string()),
        &String::from_utf8_lossy(&loaded.bytes),
        1,
        &live,
    )?;
    for warning in compiled.diagnostics.warnings() {
        tracing::warn!("{warning}");
    }
    let gateway = compiled.snapshot;
    let plane = Plane::start(compiled.proxy, live)?;
    let snapshot = plane.shared.config.load_full();
    let bound = proxy::bind_gateway(&gateway.listeners, snapshot.bootstrap.concurrency)?;
    let admin = bind_admin(snapshot.listeners.admin)?;
    let addresses = GatewayAddresses {
        ports: bound.addresses.clone(),
        admin: admin.local_addr()?,
    };
    let workers = proxy::spawn_gateway_workers(&plane.shared, bound.per_worker)?;
    // The admin API lists the gateway's ports; a gateway has no sidecar
    // listeners.
    let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let listed = proxy::listener::BoundAddresses {
        outbound: unbound,
        inbound: unbound,
        outbound_tcp: Vec::new(),
        gateway: addresses.ports.clone(),
    };
    // As the sidecar's: the first config's endpoints live on only while a
    // config in force holds them.
    drop((snapshot, gateway));
    let router = crate::admin::router(plane.shared.clone(), listed);
    let ports: Vec<String> = addresses
        .ports
        .iter()
        .map(|(n, a)| format!("{n}={a}"))
        .collect();
    tracing::info!(
        ports = %ports.join(","),
        admin = %addresses.admin,
        workers = workers.len(),
        "gateway ready"
    );
    ready(&addresses);
    plane.serve(path, loaded, (admin, router), workers, stop);
    tracing::info!("gateway stopped");
    Ok(())
}
