//! Starting and stopping an ingress gateway (`tracemesh gateway --config
//! FILE`): compile the IngressGateway file, start telemetry, bind one
//! listener per Gateway port, run the workers and the admin API, reload
//! the file when it changes, drain on stop. Everything after the accept is
//! the sidecar's data plane ([`crate::proxy`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::compile;
use crate::proxy::{self, Shared};
use crate::run::AgentError;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::spans::{SpanCounterHandles, SpanPipeline};
use crate::tls::provider::{self, Source};

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
    let snapshot = compiled.proxy;
    let gateway = compiled.snapshot;
    let metrics = Metrics::new(snapshot.bootstrap.telemetry.max_series_per_metric)?;
    metrics
        .config_reloads
        .with_label_values(&["accepted"])
        .inc();
    metrics.config_version.set(snapshot.version as i64);
    let counters = SpanCounterHandles {
        exported: metrics.spans_exported.clone(),
        failed: metrics.spans_failed.clone(),
        dropped: metrics.spans_dropped.clone(),
    };
    let spans = SpanPipeline::start(&snapshot.bootstrap.telemetry, &snapshot.identity, counters)?;
    let access_log = match &snapshot.bootstrap.access_log {
        Some(target) => Some(AccessLog::start(
            target,
            metrics.access_log_dropped.clone(),
        )?),
        None => None,
    };
    let bound = proxy::bind_gateway(&gateway.listeners, snapshot.bootstrap.concurrency)?;
    let admin = std::net::TcpListener::bind(snapshot.listeners.admin).map_err(|e| {
        std::io::Error::new(e.kind(), format!("bind {}: {e}", snapshot.listeners.admin))
    })?;
    let admin_addr = admin.local_addr()?;
    let drain = snapshot.bootstrap.drain;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (source, material) = match &snapshot.bootstrap.certificate {
        Some(spec) => {
            let source = Source::new(spec)?;
            let material = runtime.block_on(source.fetch(&snapshot.identity.spiffe))?;
            tracing::info!(identity = %material.identity, source = material.source, "workload certificate loaded");
            provider::record_expiry(&material, &metrics.certificate_expiry);
            (Some(source), Some(Arc::new(material)))
        }
        None => (None, None),
    };
    let tls = Arc::new(ArcSwapOption::from(material));
    let spiffe = snapshot.identity.spiffe.clone();
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(snapshot),
        metrics,
        spans: spans.sink().clone(),
        access_log,
        live,
        tls: tls.clone(),
    });
    let addresses = GatewayAddresses {
        ports: bound.addresses.clone(),
        admin: admin_addr,
    };
    let workers = proxy::spawn_gateway_workers(&shared, bound.per_worker, drain)?;
    runtime.block_on(async {
        if let Some(source) = source {
            let metrics = &shared.metrics;
            let gauges = (
                metrics.certificate_rotations.clone(),
                metrics.certificate_expiry.clone(),
            );
            tokio::spawn(provider::keep_current(source, spiffe, tls, gauges));
        }
        let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let listed = proxy::listener::BoundAddresses {
            outbound: unbound,
            inbound: unbound,
            outbound_tcp: Vec::new(),
            gateway: addresses.ports.clone(),
        };
        let router = crate::admin::router(shared.clone(), listed);
        let ports: Vec<String> = addresses
            .ports
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect();
        tracing::info!(
            ports = %ports.join(","),
            admin = %admin_addr,
            workers = workers.len(),
            "gateway ready"
        );
        ready(&addresses);
        let watcher = crate::reload::watch(path.to_path_buf(), loaded, shared.clone());
        tokio::select! {
            () = watcher => {}
            result = crate::admin::serve(admin, router) => {
                if let Err(error) = result {
                    tracing::error!(%error, "admin server stopped");
                }
            }
            () = stop => {}
        }
    });
    tracing::info!(drain = ?drain, "draining");
    for worker in &workers {
        worker.stop();
    }
    for worker in workers {
        worker.join();
    }
    spans.shutdown();
    tracing::info!("gateway stopped");
    Ok(())
}
