//! Starting and stopping a collector: recover the WAL into the store, bind
//! every listener, log one `collector ready` line with the bound addresses,
//! serve until SIGINT/SIGTERM, then drain: stop receiving, let the WAL
//! writer finish, commit the index.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use axum::Router;
use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::CollectorConfig;
use crate::events;
use crate::export::{ExportConfigError, Exporters};
use crate::handoff::IngestQueue;
use crate::indexer::{Indexer, Policy};
use crate::ingest::{Ingest, IngestParts};
use crate::metrics::Metrics;
use crate::otlp_metrics::OtlpMetrics;
use crate::receiver;
use crate::spanmetrics::SpanMetrics;
use crate::store::{SpanReader, SpanStore, StoreError};
use crate::wal::{self, WalError};

/// Why a collector could not start (or stopped badly).
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The write-ahead log could not be recovered or written.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The span store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An exporter's settings are wrong.
    #[error(transparent)]
    Exporter(#[from] ExportConfigError),
    /// A listener could not be bound.
    #[error("bind {addr} ({listener})")]
    Bind {
        /// Which listener (`otlp_grpc`, `otlp_http`, `zipkin`, `http`).
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why (in use, not permitted, …).
        #[source]
        source: std::io::Error,
    },
    /// A thread could not start, or the disk failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Metric registration failed (a bug: names are fixed).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl CollectorError {
    /// The listener and address, when a listener's port was already in use
    /// (so a command can say which of its flags moves it).
    pub fn port_in_use(&self) -> Option<(&'static str, SocketAddr)> {
        match self {
            Self::Bind {
                listener,
                addr,
                source,
            } if source.kind() == std::io::ErrorKind::AddrInUse => Some((listener, *addr)),
            _ => None,
        }
    }
}

/// Where a running collector listens (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorAddresses {
    /// OTLP over gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP over HTTP.
    pub otlp_http: SocketAddr,
    /// Zipkin v2.
    pub zipkin: SocketAddr,
    /// `/metrics`, the query API and the UI.
    pub http: SocketAddr,
}

/// How long a stopping collector waits for exporters to empty their queues.
const EXPORT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A collector whose WAL has been replayed into its store, ready to serve.
pub struct Collector {
    config: CollectorConfig,
    metrics: Metrics,
    indexer: Indexer,
    next_seq: u64,
}

impl Collector {
    /// Opens the data directory: recovers the WAL (cutting a torn tail),
    /// replays what the index lacks, commits, and drops expired partitions.
    pub fn open(config: CollectorConfig) -> Result<Self, CollectorError> {
        let metrics = Metrics::new()?;
        let span_metrics = SpanMetrics::new(&metrics, config.max_series_per_metric)?;
        let store = SpanStore::open(
            &config.data_dir,
            config.partition.0.as_secs(),
            config.index_memory.0 as usize,
            metrics.clone(),
        )?;
        let wal_dir = config.data_dir.join("wal");
        let recovered = wal::recover(&wal_dir, store.max_committed_seq(), &metrics)?;
        let next_seq = recovered.last_seq.max(store.max_committed_seq()) + 1;
        let mut indexer = Indexer {
            edges: crate::edges::EdgeLinker::new(store.fields()),
            resends: crate::resends::ResendFilter::new(),
            store,
            span_metrics,
            queue: Arc::new(IngestQueue::new(config.ingest_queue_spans)),
            checkpoint: Arc::new(AtomicU64::new(0)),
            metrics: metrics.clone(),
            policy: Policy {
                commit_interval: config.commit_interval.0,
                retention: config.retention.0,
                max_clock_skew: config.max_clock_skew.0,
                max_disk: config.max_disk.map(|b| b.0),
                data_dir: config.data_dir.clone(),
            },
            first_failed: None,
        };
        let mut replayed = 0u64;
        let mut undecodable = 0u64;
        for segment in &recovered.segments {
            wal::replay(
                segment,
                |seq, payload| match ExportTraceServiceRequest::decode(payload) {
                    Ok(batch) => {
                        indexer.apply(seq, &batch, payload);
                        replayed += 1;
                    }
                    Err(error) => {
                        undecodable += 1;
                        events::wal_record_undecodable(&metrics, seq, &error);
                    }
                },
            )?;
        }
        indexer.commit();
        if replayed > 0 || undecodable > 0 {
            metrics.wal_replayed_records.inc_by(replayed);
            tracing::info!(records = replayed, undecodable, "wal replayed");
        }
        // Only what the index now holds may leave the WAL.
        wal::delete_covered(&recovered.segments, indexer.checkpoint())?;
        // After replay, so what it added counts against the disk cap.
        indexer.enforce_retention();
        Ok(Self {
            config,
            metrics,
            indexer,
            next_seq,
        })
    }

    /// A read handle on the store (for the query service).
    pub fn reader(&self) -> SpanReader {
        self.indexer.store.reader()
    }

    /// The registry served on `/metrics` (a mounted service may add families).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    /// Serves until `stop` completes (the binary passes SIGINT/SIGTERM),
    /// then drains. `extra` is merged into the `--http` listener's router
    /// (the query API and UI mount here). `ready` is
    /// called once every listener is bound, with the bound addresses: how a
    /// process hosting the collector beside other roles (the demo) learns
    /// where port-0 listeners ended up.
    pub fn run_until(
        self,
        extra: Router,
        stop: impl Future<Output = ()>,
        ready: impl FnOnce(&CollectorAddresses),
    ) -> Result<(), CollectorError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("collector")
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let result = runtime.block_on(self.serve(extra, stop_rx, ready, async move {
            stop.await;
            let _ = stop_tx.send(true);
        }));
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        result
    }

    async fn serve(
        self,
        extra: Router,
        stop: watch::Receiver<bool>,
        ready: impl FnOnce(&CollectorAddresses),
        signal: impl Future<Output = ()>,
    ) -> Result<(), CollectorError> {
        let Self {
            config,
            metrics,
            indexer,
            next_seq,
        } = self;
        let queue = indexer.queue.clone();
        let fields = indexer.store.fields();
        let partition_length = indexer.store.partition_length();
        let (durable_tx, durable_rx) = mpsc::channel();
        let options = wal::WriterOptions {
            dir: config.data_dir.join("wal"),
            next_seq,
            segment_size: config.wal_segment_size.0,
            checkpoint: indexer.checkpoint.clone(),
        };
        let (wal, wal_thread) = wal::start(options, metrics.clone(), durable_tx)?;
        let indexer_thread = std::thread::Builder::new()
            .name("indexer".into())
            .spawn(move || indexer.run(durable_rx))?;
        let exporters = Exporters::start(&config.exporters, &metrics)?;
        let draining = exporters.clone();
        let otlp_metrics = Arc::new(OtlpMetrics::default());
        let ingest = Ingest::new(IngestParts {
            wal,
            fields,
            partition_length,
            queue,
            exporters,
            otlp_metrics: otlp_metrics.clone(),
            metrics: metrics.clone(),
            retention: config.retention.0,
            max_clock_skew: config.max_clock_skew.0,
            max_request_size: config.max_request_size.0 as usize,
            span_limits: config.span_limits,
        });

        let bind = |listener: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| CollectorError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let grpc_listener = bind("otlp_grpc", config.listen.otlp_grpc).await?;
        let http_listener = bind("otlp_http", config.listen.otlp_http).await?;
        let zipkin_listener = bind("zipkin", config.listen.zipkin).await?;
        let api_listener = bind("http", config.listen.http).await?;
        let addresses = [
            &grpc_listener,
            &http_listener,
            &zipkin_listener,
            &api_listener,
        ]
        .map(|l| l.local_addr());
        let [grpc_addr, http_addr, zipkin_addr, api_addr] = addresses;
        let (grpc_addr, http_addr, zipkin_addr, api_addr) =
            (grpc_addr?, http_addr?, zipkin_addr?, api_addr?);

        let grpc_router = receiver::grpc::routes(ingest.clone()).into_axum_router();
        let metrics_router = metrics_router(metrics.clone(), otlp_metrics).merge(extra);
        let servers = [
            (grpc_listener, grpc_router),
            (http_listener, receiver::otlp_http::router(ingest.clone())),
            (zipkin_listener, receiver::zipkin::router(ingest.clone())),
            (api_listener, metrics_router),
        ];
        drop(ingest);
        let mut tasks = Vec::new();
        for (listener, router) in servers {
            tasks.push(tokio::spawn(crate::serve::serve(
                listener,
                router,
                config.listen_timeouts,
                metrics.clone(),
                stop.clone(),
            )));
        }
        tracing::info!(
            otlp_grpc = %grpc_addr,
            otlp_http = %http_addr,
            zipkin = %zipkin_addr,
            http = %api_addr,
            data_dir = %config.data_dir.display(),
            "collector ready"
        );
        ready(&CollectorAddresses {
            otlp_grpc: grpc_addr,
            otlp_http: http_addr,
            zipkin: zipkin_addr,
            http: api_addr,
        });
        signal.await;
        tracing::info!("collector stopping");
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "server task failed");
            }
        }
        // Give the exporters a moment to deliver what they hold.
        let deadline = tokio::time::Instant::now() + EXPORT_DRAIN;
        while draining.queued_spans() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if draining.queued_spans() > 0 {
            tracing::warn!(
                spans = draining.queued_spans(),
                "exporters stopped with spans still queued"
            );
        }
        // Every Ingest (and so every WAL handle) is gone with the servers:
        // the writer finishes its last group, then the indexer commits.
        tokio::task::spawn_blocking(move || {
            let _ = wal_thread.join();
            let _ = indexer_thread.join();
        })
        .await
        .map_err(std::io::Error::other)?;
        tracing::info!("collector stopped");
        Ok(())
    }
}

fn metrics_router(metrics: Metrics, otlp_metrics: Arc<OtlpMetrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            let otlp_metrics = otlp_metrics.clone();
            async move {
                let families = metrics.registry.gather();
                let taken = families.iter().map(|f| f.name().to_owned()).collect();
                let mut text = prometheus::TextEncoder::new()
                    .encode_to_string(&families)
                    .unwrap_or_default();
                otlp_metrics.render(&taken, &mut text);
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    text,
                )
            }
        }),
    )
}
