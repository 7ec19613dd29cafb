//! Starting and stopping an agent: load the config, start telemetry, bind
//! listeners, run the workers and the admin API, drain on SIGTERM (the
//! inbound side only: the outbound side serves until the drain ends).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::compile;
use crate::config::diagnostics::ConfigRejected;
use crate::model::Snapshot;
use crate::model::live::LiveState;
use crate::proxy::{self, Shared};
use crate::telemetry::access_log::{AccessLog, AccessLogSinks};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::spans::{SpanCounterHandles, SpanPipeline, SpanPipelineError};
use crate::tls::provider::{self, IdentityError, Source};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config file was rejected.
    #[error(transparent)]
    Config(#[from] ConfigRejected),
    /// A listener could not be bound, or a thread could not start.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Metric registration failed (a bug: names are fixed).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The span pipeline could not start.
    #[error(transparent)]
    Spans(#[from] SpanPipelineError),
    /// The workload certificate could not be had.
    #[error("workload identity: {0}")]
    Identity(#[from] IdentityError),
}

/// Where a running agent listens (port 0 resolved), for whoever started it
/// in-process and must tell others where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddresses {
    /// Inbound: the mesh reaches the workload here.
    pub inbound: SocketAddr,
    /// Outbound HTTP: the workload reaches the mesh here.
    pub outbound: SocketAddr,
    /// Outbound TCP listeners, in config order.
    pub outbound_tcp: Vec<SocketAddr>,
    /// The admin API (`/metrics`, `/ready`, ...).
    pub admin: SocketAddr,
}

/// Runs the agent configured by the file at `path` until `stop` completes,
/// then drains: the inbound listener's connections end gracefully (one it
/// accepts meanwhile is served, then told to end) while the outbound listeners
/// serve on, until
/// `spec.drainDuration` has passed or no connection is left. `ready` is
/// called once every listener is bound and serving, with the bound
/// addresses: how a process hosting several agents (the demo) wires them
/// to each other on free ports.
pub fn run_until(
    path: &Path,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(&AgentAddresses),
) -> Result<(), AgentError> {
    let live = LiveState::default();
    // The bytes compiled now are the watcher's baseline: a change made
    // between this read and the watcher's start is still seen.
    let loaded = crate::reload::Baseline::read(path)?;
    let compiled = compile::compile_text(
        &std::sync::Arc::from(path.display().to_string()),
        &String::from_utf8_lossy(&loaded.bytes),
        1,
        &live,
    )?;
    for warning in compiled.diagnostics.warnings() {
        tracing::warn!("{warning}");
    }
    let plane = Plane::start(compiled.snapshot, live)?;
    let snapshot = plane.shared.config.load_full();
    let bound = proxy::bind_all(&snapshot.listeners, snapshot.bootstrap.concurrency)?;
    let admin = bind_admin(snapshot.listeners.admin)?;
    let admin_addr = admin.local_addr()?;
    let inbound_tcp = !snapshot.listeners.app_protocol.is_http();
    let workers = proxy::spawn_workers(&plane.shared, bound.per_worker, inbound_tcp)?;
    let addresses = bound.addresses;
    let router = crate::admin::router(plane.shared.clone(), addresses.clone());
    // The first config's endpoints live on only while a config in force
    // holds them: one a reload drops and a later one adds back is a new
    // endpoint (no ejection, no age), as a host re-added to Envoy is.
    drop(snapshot);
    let outbound_tcp: Vec<String> = addresses
        .outbound_tcp
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        outbound = %addresses.outbound,
        inbound = %addresses.inbound,
        admin = %admin_addr,
        outbound_tcp = %outbound_tcp.join(","),
        workers = workers.len(),
        "agent ready"
    );
    ready(&AgentAddresses {
        inbound: addresses.inbound,
        outbound: addresses.outbound,
        outbound_tcp: addresses.outbound_tcp.clone(),
        admin: admin_addr,
    });
    plane.serve(path, loaded, (admin, router), workers, stop);
    tracing::info!("agent stopped");
    Ok(())
}

/// Binds the admin API's listener, naming the address in the error.
pub(crate) fn bind_admin(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {address}: {e}")))
}

/// What a sidecar and an ingress gateway both run around their workers:
/// the metrics, the span pipeline, the access log, the workload
/// certificate and its rotation, the config watcher and the admin API.
pub(crate) struct Plane {
    /// What every worker shares.
    pub shared: Arc<Shared>,
    /// How long the drain after a stop may last (`spec.drainDuration`,
    /// Istio's `terminationDrainDuration`).
    pub drain: std::time::Duration,
    spans: SpanPipeline,
    runtime: tokio::runtime::Runtime,
    rotation: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Plane {
    /// Starts the metrics (with `snapshot` as the first accepted config),
    /// the span pipeline and the access log, and fetches the first
    /// workload certificate — before any listener serves: STRICT would
    /// refuse everyone.
    pub(crate) fn start(snapshot: Snapshot, live: LiveState) -> Result<Self, AgentError> {
        let metrics = Metrics::new(snapshot.bootstrap.telemetry.max_series_per_metric)?;
        live.ext_authz()
            .attach(&metrics.registry, &metrics.tls_failures)?;
        // Every result's series exists from the start, so a rate over it
        // (an alert on `rejected`) has a zero to start from.
        for result in ["rejected", "unreadable"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
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
        let spans =
            SpanPipeline::start(&snapshot.bootstrap.telemetry, &snapshot.identity, counters)?;
        let access_log = match &snapshot.bootstrap.access_log {
            Some(target) => Some(Arc::new(AccessLog::start(
                target,
                metrics.access_log_dropped.clone(),
            )?)),
            None => None,
        };
        let agent_log = snapshot
            .bootstrap
            .access_log
            .as_ref()
            .zip(access_log.clone());
        let access_logs = AccessLogSinks::new(agent_log, metrics.access_log_dropped.clone());
        metrics.apply_telemetry(&snapshot.telemetry);
        access_logs.open_for(&snapshot.telemetry);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let trust_domains = live.peer_trust_domains().clone();
        trust_domains.store(snapshot.trust_domains.clone());
        let (source, material) = match &snapshot.bootstrap.certificate {
            Some(spec) => {
                let source = Source::new(spec)?;
                let loaded = source.fingerprint();
                let fetch = source.fetch(&snapshot.identity.spiffe, &trust_domains);
                let material = runtime.block_on(fetch)?;
                tracing::info!(identity = %material.identity, source = material.source, "workload certificate loaded");
                provider::record_expiry(&material, &metrics.certificate_expiry);
                (Some((source, loaded)), Some(Arc::new(material)))
            }
            None => (None, None),
        };
        let tls = live.workload_tls();
        tls.store(material);
        let gauges = (
            metrics.certificate_rotations.clone(),
            metrics.certificate_expiry.clone(),
        );
        let rotation = source.map(|(source, loaded)| {
            let spiffe = snapshot.identity.spiffe.clone();
            let id = (spiffe, trust_domains);
            let rotation = provider::keep_current(source, loaded, id, tls.clone(), gauges);
            Box::pin(rotation) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        });
        let drain = snapshot.bootstrap.drain;
        let poolings = tokio::sync::watch::Sender::new(Arc::new(snapshot.poolings()));
        snapshot.access.authn.start_key_fetches();
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(snapshot),
            metrics,
            spans: spans.sink().clone(),
            access_log,
            access_logs,
            live,
            tls,
            open_connections: Arc::default(),
            poolings,
        });
        Ok(Self {
            shared,
            drain,
            spans,
            runtime,
            rotation,
        })
    }

    /// Serves the admin API, rotates the certificate and reloads the file
    /// at `path` (compiled from `loaded` so far) until `stop` completes;
    /// then drains, ends the workers and flushes the spans.
    ///
    /// The drain is Istio's on SIGTERM, where pilot-agent asks Envoy to
    /// drain the inbound listeners only (`drain_listeners?inboundonly`):
    /// the HTTP connections of the inbound listener (a gateway's ports)
    /// end gracefully, one it accepts meanwhile answered once, while the
    /// outbound listeners, HTTP and
    /// TCP, explicit or captured, keep accepting and proxying, so that an
    /// application finishing its requests can still call out. It lasts
    /// `drain` (Istio's `terminationDrainDuration`) but ends as soon as no
    /// connection is open on any listener, inbound or outbound
    /// ([`OpenConnections::settle`](proxy::OpenConnections::settle) says
    /// how that compares with Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`);
    /// whatever is still open then is closed.
    pub(crate) fn serve(
        mut self,
        path: &Path,
        loaded: crate::reload::Baseline,
        (admin, router): (std::net::TcpListener, axum::Router),
        workers: Vec<proxy::WorkerHandle>,
        stop: impl Future<Output = ()>,
    ) {
        let rotation = self.rotation.take();
        let shared = self.shared.clone();
        self.runtime.block_on(async {
            if let Some(rotation) = rotation {
                tokio::spawn(rotation);
            }
            tokio::spawn(crate::resolve::keep_resolved(shared.clone()));
            let watcher = crate::reload::watch(path.to_path_buf(), loaded, shared);
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
        tracing::info!(drain = ?self.drain, "draining");
        for worker in &workers {
            worker.drain();
        }
        let open = &self.shared.open_connections;
        if self.runtime.block_on(open.settle(self.drain)) {
            tracing::info!("drained: no connection left");
        } else {
            tracing::info!(
                open = open.count(),
                "drain period over: closing the connections left"
            );
        }
        for worker in &workers {
            worker.end();
        }
        for worker in workers {
            worker.join();
        }
        self.spans.shutdown();
    }
}
