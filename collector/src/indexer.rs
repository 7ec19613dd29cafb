//! The indexer thread: takes durable batches from the WAL writer, in order,
//! marks exact copies of spans indexed shortly before ([`crate::resends`]),
//! links dependency edges, adds the batches to the store and the other spans
//! to the span-derived metrics, commits on an interval (then advances the
//! WAL checkpoint), and enforces retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::edges::EdgeLinker;
use crate::events;
use crate::handoff::{IndexItem, IngestQueue};
use crate::metrics::{Metrics, PartitionDrop};
use crate::resends::ResendFilter;
use crate::spanmetrics::SpanMetrics;
use crate::store::document::for_each_span;
use crate::store::partition::disk_usage;
use crate::store::{PartitionId, Prepared, PreparedDocs, SpanStore, TimeWindow};

/// How often retention and the disk cap are checked.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// What the indexer enforces.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Commit interval.
    pub commit_interval: Duration,
    /// Partitions ending before now minus this are dropped.
    pub retention: Duration,
    /// Partitions starting after now plus this are out of range: their
    /// spans are not indexed, and partitions left from before are dropped.
    pub max_clock_skew: Duration,
    /// The data directory's size cap, in bytes.
    pub max_disk: Option<u64>,
    /// The data directory (measured for `max_disk`).
    pub data_dir: std::path::PathBuf,
}

/// The indexer's state.
pub struct Indexer {
    /// The store's write side.
    pub store: SpanStore,
    /// Span-derived metrics.
    pub span_metrics: SpanMetrics,
    /// Dependency edges, written into the documents.
    pub edges: EdgeLinker,
    /// Exact copies of spans indexed shortly before, marked in the documents.
    pub resends: ResendFilter,
    /// Room in the ingest queue is given back here.
    pub queue: Arc<IngestQueue>,
    /// Highest WAL sequence number committed to the index.
    pub checkpoint: Arc<AtomicU64>,
    /// Self-metrics.
    pub metrics: Metrics,
    /// What to enforce.
    pub policy: Policy,
    /// The first record that could not be indexed: the checkpoint stays
    /// below it, so the WAL keeps it for the next start to replay.
    pub first_failed: Option<u64>,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Indexer {
    /// The partitions spans may be indexed into now.
    pub fn window(&self) -> TimeWindow {
        let now = now_seconds();
        TimeWindow {
            oldest: now.saturating_sub(self.policy.retention.as_secs()),
            newest: now.saturating_add(self.policy.max_clock_skew.as_secs()),
        }
    }

    /// Marks the exact copies among a batch's spans and writes the
    /// dependency edges of the others into its documents.
    fn link(&mut self, batch: &[ResourceSpans], fingerprints: &[u64], docs: &mut PreparedDocs) {
        let length = self.store.partition_length();
        let store = &self.store;
        let copies = self.resends.mark(
            store.fields().duplicate,
            batch,
            fingerprints,
            docs,
            length,
            |id| store.marks_duplicates(id),
        );
        self.metrics.index_duplicate_spans.inc_by(copies);
        self.edges
            .annotate(batch, docs, length, self.resends.copies());
        events::dependency_edges_dropped(&self.metrics, self.edges.take_dropped());
    }

    /// Adds one live batch whose documents the receiver prepared.
    pub fn apply_prepared(&mut self, seq: u64, item: IndexItem) {
        let now = Instant::now();
        let window = self.window();
        let length = self.store.partition_length();
        let IndexItem {
            batch,
            mut docs,
            fingerprints,
            ..
        } = item;
        self.link(&batch.resource_spans, &fingerprints, &mut docs);
        if let Err(error) = self.store.apply_prepared(seq, docs, window) {
            self.first_failed.get_or_insert(seq);
            events::index_failed(&self.metrics, seq, &error);
        }
        let mut index = 0;
        for_each_span(&batch.resource_spans, |span| {
            let copy = self.resends.is_copy(index);
            index += 1;
            if !copy
                && window.admits(PartitionId::containing(
                    span.span.start_time_unix_nano,
                    length,
                ))
            {
                self.span_metrics.observe(span, now);
            }
        });
    }

    /// Adds one durable batch read back from the WAL (replay); `encoded` is
    /// the record it was decoded from. The spans a partition holds already
    /// are not added again, but they are remembered as indexed (a copy
    /// sent after the restart is still one) and linked.
    pub fn apply(&mut self, seq: u64, batch: &ExportTraceServiceRequest, encoded: &[u8]) {
        let now = Instant::now();
        let window = self.window();
        let length = self.store.partition_length();
        let spans = &batch.resource_spans;
        let Prepared {
            mut docs,
            fingerprints,
        } = SpanStore::prepare(&self.store.fields(), spans, Some(encoded), length);
        self.link(spans, &fingerprints, &mut docs);
        let mut index = 0;
        for_each_span(spans, |span| {
            let copy = self.resends.is_copy(index);
            index += 1;
            let id = PartitionId::containing(span.span.start_time_unix_nano, length);
            if !copy && window.admits(id) && !self.store.holds(id, seq) {
                self.span_metrics.observe(span, now);
            }
        });
        if let Err(error) = self.store.apply_prepared(seq, docs, window) {
            self.first_failed.get_or_insert(seq);
            events::index_failed(&self.metrics, seq, &error);
        }
    }

    /// Commits and advances the checkpoint.
    pub fn commit(&mut self) {
        match self.store.commit() {
            Ok(seq) => self.checkpoint.store(self.covered(seq), Ordering::Release),
            Err(error) => events::commit_failed(&self.metrics, &error),
        }
    }

    /// Drops partitions past retention and partitions out of range ahead
    /// of now, then, while the data directory is over `max_disk`, the
    /// oldest partitions that lie wholly in the past: the one holding now
    /// (and any after it) is current data and is never evicted, whatever
    /// else the store holds. Updates the disk-usage gauge.
    pub fn enforce_retention(&mut self) {
        let window = self.window();
        for (id, bytes) in self.store.sizes() {
            if id.end() <= window.oldest {
                self.drop_partition(id, PartitionDrop::Retention, bytes);
            } else if id.start > window.newest {
                self.drop_partition(id, PartitionDrop::OutOfRange, bytes);
            }
        }
        let mut total = disk_usage(&self.policy.data_dir);
        if let Some(cap) = self.policy.max_disk {
            let now = now_seconds();
            // Oldest first (partitions sort by start).
            for (id, bytes) in self.store.sizes() {
                if total <= cap || id.end() > now {
                    break;
                }
                self.drop_partition(id, PartitionDrop::MaxDisk, bytes);
                total = disk_usage(&self.policy.data_dir);
            }
            if total > cap {
                events::over_disk_cap(total, cap);
            }
        }
        self.metrics.disk_bytes.set(total as i64);
    }

    fn drop_partition(&mut self, id: PartitionId, reason: PartitionDrop, bytes: u64) {
        match self.store.drop_partition(id) {
            Ok(()) => events::partition_dropped(&self.metrics, id, reason, bytes),
            Err(error) => {
                tracing::error!(%error, partition = %id.dir_name(), "partition not dropped")
            }
        }
    }

    /// Runs until the WAL writer stops, then commits and closes the store.
    pub fn run(mut self, batches: Receiver<(u64, IndexItem)>) {
        let mut next_commit = Instant::now() + self.policy.commit_interval;
        let mut next_retention = Instant::now() + RETENTION_EVERY;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match batches.recv_timeout(wait) {
                Ok((seq, item)) => {
                    let spans = item.spans;
                    self.apply_prepared(seq, item);
                    self.release(spans);
                    while let Ok((seq, item)) = batches.try_recv() {
                        let spans = item.spans;
                        self.apply_prepared(seq, item);
                        self.release(spans);
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
        let first_failed = self.first_failed;
        match self.store.close() {
            Ok(seq) => {
                let seq = first_failed.map_or(seq, |failed| seq.min(failed - 1));
                self.checkpoint.store(seq, Ordering::Release);
                tracing::info!(checkpoint = seq, "index closed");
            }
            Err(error) => {
                tracing::error!(%error, "index not closed cleanly, the wal will be replayed")
            }
        }
    }

    /// The checkpoint a commit of everything up to `seq` allows.
    fn covered(&self, seq: u64) -> u64 {
        self.first_failed.map_or(seq, |failed| seq.min(failed - 1))
    }

    /// Highest WAL sequence number durable in the index.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    fn release(&self, spans: usize) {
        let left = self.queue.release(spans);
        self.metrics.ingest_queue_spans.set(left as i64);
    }
}
