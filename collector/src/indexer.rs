//! The indexer thread: takes durable batches from the WAL writer, in order,
//! adds them to the store and the span-derived metrics, commits on an
//! interval (then advances the WAL checkpoint), and enforces retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::ingest::validate::span_count;
use crate::metrics::Metrics;
use crate::ingest::IngestQueue;
use crate::spanmetrics::SpanMetrics;
use crate::store::SpanStore;

/// How often retention and the disk cap are checked.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// What the indexer enforces.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Commit interval.
    pub commit_interval: Duration,
    /// Partitions ending before now minus this are dropped.
    pub retention: Duration,
    /// The store's size cap, in bytes.
    pub max_disk: Option<u64>,
}

/// The indexer's state.
pub struct Indexer {
    /// The store's write side.
    pub store: SpanStore,
    /// Span-derived metrics.
    pub span_metrics: SpanMetrics,
    /// Room in the ingest queue is given back here.
    pub queue: Arc<IngestQueue>,
    /// Highest WAL sequence number committed to the index.
    pub checkpoint: Arc<AtomicU64>,
    /// Self-metrics.
    pub metrics: Metrics,
    /// What to enforce.
    pub policy: Policy,
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Indexer {
    /// The first second still inside the retention window.
    pub fn oldest_start(&self) -> u64 {
        now_seconds().saturating_sub(self.policy.retention.as_secs())
    }

    /// Adds one durable batch (also used for WAL replay).
    pub fn apply(&mut self, seq: u64, batch: &ExportTraceServiceRequest) {
        let now = Instant::now();
        let oldest = self.oldest_start();
        let span_metrics = &mut self.span_metrics;
        if let Err(error) = self.store.apply(seq, &batch.resource_spans, oldest, |span| span_metrics.observe(span, now)) {
            self.metrics.index_errors.inc();
            tracing::error!(%error, seq, "spans not indexed, they stay in the wal until a restart replays them");
        }
    }

    /// Commits and advances the checkpoint.
    pub fn commit(&mut self) {
        match self.store.commit() {
            Ok(seq) => self.checkpoint.store(seq, Ordering::Release),
            Err(error) => {
                self.metrics.index_errors.inc();
                tracing::error!(%error, "index commit failed, the wal keeps the spans");
            }
        }
    }

    /// Drops partitions past retention, then the oldest while over the cap.
    pub fn enforce_retention(&mut self) {
        let oldest = self.oldest_start();
        let mut sizes = self.store.sizes();
        for (id, bytes) in sizes.clone() {
            if id.end() <= oldest {
                self.drop_partition(id, "retention", bytes);
            }
        }
        sizes.retain(|(id, _)| id.end() > oldest);
        let mut total: u64 = sizes.iter().map(|(_, b)| b).sum();
        if let Some(cap) = self.policy.max_disk {
            while total > cap && sizes.len() > 1 {
                let (id, bytes) = sizes.remove(0);
                self.drop_partition(id, "max_disk", bytes);
                total -= bytes;
            }
        }
        self.metrics.disk_bytes.set(total as i64);
    }

    fn drop_partition(&mut self, id: crate::store::PartitionId, reason: &'static str, bytes: u64) {
        match self.store.drop_partition(id) {
            Ok(()) => {
                self.metrics.partitions_dropped.with_label_values(&[reason]).inc();
                tracing::info!(partition = %id.dir_name(), reason, bytes, "partition dropped");
            }
            Err(error) => tracing::error!(%error, partition = %id.dir_name(), "partition not dropped"),
        }
    }

    /// Runs until the WAL writer stops, then commits and closes the store.
    pub fn run(mut self, batches: Receiver<(u64, Arc<ExportTraceServiceRequest>)>) {
        let mut next_commit = Instant::now() + self.policy.commit_interval;
        let mut next_retention = Instant::now() + RETENTION_EVERY;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match batches.recv_timeout(wait) {
                Ok((seq, batch)) => {
                    self.apply(seq, &batch);
                    self.release(&batch);
                    while let Ok((seq, batch)) = batches.try_recv() {
                        self.apply(seq, &batch);
                        self.release(&batch);
                        if Instant::now() >= next_commit {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_commit {
                self.commit();
                self.span_metrics.expire(now);
                next_commit = Instant::now() + self.policy.commit_interval;
            }
            if now >= next_retention {
                self.enforce_retention();
                next_retention = now + RETENTION_EVERY;
            }
        }
        match self.store.close() {
            Ok(seq) => {
                self.checkpoint.store(seq, Ordering::Release);
                tracing::info!(checkpoint = seq, "index closed");
            }
            Err(error) => tracing::error!(%error, "index not closed cleanly, the wal will be replayed"),
        }
    }

    fn release(&self, batch: &ExportTraceServiceRequest) {
        let left = self.queue.release(span_count(&batch.resource_spans) as usize);
        self.metrics.ingest_queue_spans.set(left as i64);
    }
}
