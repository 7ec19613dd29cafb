//! The span store: one tantivy index per time partition under
//! `DATA_DIR/spans`. The write side ([`SpanStore`]) is owned by the indexer
//! thread; the read side ([`SpanReader`]) is a cheap handle for the query
//! service and tools, which sees every partition through an atomically
//! swapped map and never blocks the writer.
//!
//! Each commit records, in the index's payload, the WAL sequence number it
//! covers, so replay after a crash adds exactly the spans a partition lacks.

mod aggregate;
mod attribute_object;
pub mod document;
pub mod partition;
pub mod read;
mod received;
pub mod schema;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tantivy::indexer::LogMergePolicy;
use tantivy::{IndexWriter, TantivyDocument};

pub use document::SpanRef;
pub use partition::{PartitionId, PartitionIndex, TimeWindow};
pub use read::{Condition, SpanQuery, SpanReader, SpanSummary, StoredSpan, Trace, TraceHit};

use crate::metrics::Metrics;
use document::span_count;
use received::ReceivedSpans;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A tantivy operation failed.
    #[error("index {path}: {source}")]
    Index {
        /// The partition.
        path: PathBuf,
        /// Why.
        source: tantivy::TantivyError,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored span could not be decoded (a bug or a damaged file).
    #[error("stored span undecodable: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An aggregation request was malformed (a bug in the caller).
    #[error("aggregation request: {0}")]
    Aggregation(String),
}

/// A batch's documents, by partition.
pub type PreparedDocs = BTreeMap<PartitionId, Vec<TantivyDocument>>;

/// A batch made ready for the indexer ([`SpanStore::prepare`]).
#[derive(Debug, Default)]
pub struct Prepared {
    /// Its documents, by partition, each partition's in batch order.
    pub docs: PreparedDocs,
    /// Each span's fingerprint ([`crate::resends::fingerprint`] of its
    /// stored bytes), in batch order.
    pub fingerprints: Vec<u64>,
}

/// The partitions readers see, swapped whole when one is added or dropped.
pub(crate) type PartitionMap = Arc<ArcSwap<BTreeMap<PartitionId, Arc<PartitionIndex>>>>;

struct Writable {
    partition: Arc<PartitionIndex>,
    writer: Option<IndexWriter>,
    committed_seq: u64,
    /// The last record whose spans for this partition were all added.
    applied_seq: u64,
    dirty: bool,
}

/// Open index writers, at most (each buffers up to the memory budget).
const MAX_WRITERS: usize = 3;

/// Indexing threads per writer: documents are spread over them.
const INDEXING_THREADS: usize = 2;

/// The write side of the store.
pub struct SpanStore {
    dir: PathBuf,
    /// The fields of the schema every partition is created with, looked up once.
    fields: schema::SpanFields,
    partition_length: u64,
    writer_memory: usize,
    partitions: BTreeMap<PartitionId, Writable>,
    shared: PartitionMap,
    metrics: Metrics,
    last_applied: u64,
}

impl SpanStore {
    /// Opens (or creates) the store under `data_dir/spans`.
    pub fn open(
        data_dir: &Path,
        partition_length: u64,
        writer_memory: usize,
        metrics: Metrics,
    ) -> Result<Self, StoreError> {
        let dir = data_dir.join("spans");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let fields =
            schema::SpanFields::of(&schema::build()).map_err(|source| StoreError::Index {
                path: dir.clone(),
                source,
            })?;
        let mut partitions = BTreeMap::new();
        for (id, path) in partition::list(&dir)? {
            let partition = Arc::new(PartitionIndex::open(id, &path, false)?);
            let committed_seq = partition.committed_seq()?;
            partitions.insert(
                id,
                Writable {
                    partition,
                    writer: None,
                    committed_seq,
                    applied_seq: committed_seq,
                    dirty: false,
                },
            );
        }
        let store = Self {
            dir,
            fields,
            partition_length,
            writer_memory,
            partitions,
            shared: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
            metrics,
            last_applied: 0,
        };
        store.publish();
        Ok(store)
    }

    /// A read handle that follows this store's partitions and commits.
    pub fn reader(&self) -> SpanReader {
        SpanReader::following(self.dir.clone(), self.shared.clone())
    }

    /// The highest WAL sequence number any partition has committed.
    pub fn max_committed_seq(&self) -> u64 {
        self.partitions
            .values()
            .map(|p| p.committed_seq)
            .max()
            .unwrap_or(0)
    }

    /// The fields documents are built with (see [`Self::prepare`]).
    pub fn fields(&self) -> schema::SpanFields {
        self.fields
    }

    /// The partition length, in seconds.
    pub fn partition_length(&self) -> u64 {
        self.partition_length
    }

    fn publish(&self) {
        let map = self
            .partitions
            .iter()
            .map(|(id, p)| (*id, p.partition.clone()))
            .collect();
        self.shared.store(Arc::new(map));
        self.metrics.partitions.set(self.partitions.len() as i64);
    }

    /// Builds the documents of a batch, by partition, and fingerprints its
    /// spans. Pure: receivers call it on their own threads so the indexer
    /// thread only adds documents. `encoded` is the batch's protobuf
    /// encoding (as received or as written to the WAL) when the caller has
    /// it: each span's stored bytes are then cut from it rather than
    /// encoded again.
    pub fn prepare(
        fields: &schema::SpanFields,
        batch: &[ResourceSpans],
        encoded: Option<&[u8]>,
        partition_length: u64,
    ) -> Prepared {
        let spans = span_count(batch);
        let received = encoded
            .and_then(|raw| ReceivedSpans::parse(raw).ok())
            .filter(|received| received.len() as u64 == spans);
        let mut prepared = Prepared {
            docs: BTreeMap::new(),
            fingerprints: Vec::with_capacity(spans as usize),
        };
        let mut stored = Vec::new();
        let mut index = 0;
        document::for_each_span(batch, |span| {
            match &received {
                Some(received) => received.encode_into(index, &mut stored),
                None => {
                    stored.clear();
                    span.encode_into(&mut stored);
                }
            }
            index += 1;
            prepared
                .fingerprints
                .push(crate::resends::fingerprint(&stored));
            let id = PartitionId::containing(span.span.start_time_unix_nano, partition_length);
            prepared
                .docs
                .entry(id)
                .or_default()
                .push(document::build(fields, span, &stored));
        });
        prepared
    }

    /// Whether record `seq` is already committed in partition `id` (replay).
    pub fn holds(&self, id: PartitionId, seq: u64) -> bool {
        self.partitions
            .get(&id)
            .is_some_and(|p| p.committed_seq >= seq)
    }

    /// Whether partition `id` can take the [`schema::names::DUPLICATE`]
    /// mark: one created before the mark existed cannot (its schema lacks
    /// the field); one not created yet will have it.
    pub fn marks_duplicates(&self, id: PartitionId) -> bool {
        self.partitions
            .get(&id)
            .is_none_or(|p| p.partition.fields.duplicate.is_some())
    }

    /// Adds the spans of WAL record `seq` that their partitions do not
    /// already hold, skipping spans whose partition is outside `window`.
    /// `added` sees each span added. (Tests build here; the indexer
    /// prepares, marks and links batches itself, see
    /// [`Self::apply_prepared`].)
    pub fn apply(
        &mut self,
        seq: u64,
        batch: &[ResourceSpans],
        window: TimeWindow,
        mut added: impl FnMut(SpanRef<'_>),
    ) -> Result<usize, StoreError> {
        let prepared = Self::prepare(&self.fields, batch, None, self.partition_length);
        document::for_each_span(batch, |span| {
            let id = PartitionId::containing(span.span.start_time_unix_nano, self.partition_length);
            if window.admits(id) && !self.holds(id, seq) {
                added(span);
            }
        });
        self.apply_prepared(seq, prepared.docs, window)
    }

    /// Adds prepared documents of WAL record `seq`, skipping partitions
    /// that hold the record already and those outside `window` (past
    /// retention, or further ahead than clock skew explains: a WAL written
    /// before such spans were refused). A partition created by an earlier
    /// version takes the documents without the fields its schema lacks.
    pub fn apply_prepared(
        &mut self,
        seq: u64,
        docs: PreparedDocs,
        window: TimeWindow,
    ) -> Result<usize, StoreError> {
        let mut count = 0;
        for (id, docs) in docs {
            if !window.admits(id) || self.holds(id, seq) {
                continue;
            }
            self.ensure_writer(id)?;
            let Some(writable) = self.partitions.get_mut(&id) else {
                continue;
            };
            let path = &writable.partition.path;
            let known = writable.partition.fields.count;
            let Some(writer) = writable.writer.as_ref() else {
                continue;
            };
            for doc in docs {
                let doc = if known < self.fields.count {
                    fitted(doc, known)
                } else {
                    doc
                };
                writer
                    .add_document(doc)
                    .map_err(|source| StoreError::Index {
                        path: path.clone(),
                        source,
                    })?;
                count += 1;
            }
            writable.dirty = true;
            writable.applied_seq = seq;
        }
        self.last_applied = self.last_applied.max(seq);
        self.metrics.index_spans.inc_by(count as u64);
        Ok(count)
    }

    fn ensure_writer(&mut self, id: PartitionId) -> Result<(), StoreError> {
        if !self.partitions.contains_key(&id) {
            let path = self.dir.join(id.dir_name());
            let partition = Arc::new(PartitionIndex::open(id, &path, true)?);
            self.partitions.insert(
                id,
                Writable {
                    partition,
                    writer: None,
                    committed_seq: 0,
                    applied_seq: 0,
                    dirty: false,
                },
            );
            self.publish();
            tracing::info!(partition = %id.dir_name(), "partition created");
        }
        if self.partitions.get(&id).is_some_and(|p| p.writer.is_some()) {
            return Ok(());
        }
        let open: Vec<PartitionId> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.writer.is_some())
            .map(|(id, _)| *id)
            .collect();
        if open.len() >= MAX_WRITERS
            && let Some(oldest) = open.first()
        {
            self.close_writer(*oldest)?;
        }
        let memory = self.writer_memory;
        if let Some(writable) = self.partitions.get_mut(&id) {
            let path = writable.partition.path.clone();
            let writer: IndexWriter = writable
                .partition
                .index
                .writer_with_num_threads(INDEXING_THREADS, memory)
                .map_err(|source| StoreError::Index { path, source })?;
            // Fewer, larger merges: each commit makes a segment, and merging
            // every few of them would rewrite each span many times.
            let mut merge_policy = LogMergePolicy::default();
            merge_policy.set_min_num_segments(10);
            writer.set_merge_policy(Box::new(merge_policy));
            writable.writer = Some(writer);
        }
        Ok(())
    }

    fn close_writer(&mut self, id: PartitionId) -> Result<(), StoreError> {
        self.commit_one(id)?;
        if let Some(writer) = self.partitions.get_mut(&id).and_then(|p| p.writer.take()) {
            let path = self.dir.join(id.dir_name());
            writer
                .wait_merging_threads()
                .map_err(|source| StoreError::Index { path, source })?;
        }
        Ok(())
    }

    /// Commits one partition. Its payload is the last record all of whose
    /// spans for it are in: its own last record if that is the one being
    /// applied, else the last record applied before.
    fn commit_one(&mut self, id: PartitionId) -> Result<(), StoreError> {
        let last_applied = self.last_applied;
        let Some(writable) = self.partitions.get_mut(&id) else {
            return Ok(());
        };
        let seq = writable.applied_seq.max(last_applied);
        if !writable.dirty {
            return Ok(());
        }
        let Some(writer) = writable.writer.as_mut() else {
            return Ok(());
        };
        let path = writable.partition.path.clone();
        let err = |source| StoreError::Index {
            path: path.clone(),
            source,
        };
        let mut prepared = writer.prepare_commit().map_err(err)?;
        prepared.set_payload(&seq.to_string());
        prepared.commit().map_err(err)?;
        writable.partition.reader.reload().map_err(err)?;
        writable.committed_seq = seq;
        writable.dirty = false;
        Ok(())
    }

    /// Commits every partition written since the last commit; returns the
    /// WAL sequence number now covered by the index (the checkpoint).
    pub fn commit(&mut self) -> Result<u64, StoreError> {
        let dirty: Vec<PartitionId> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(id, _)| *id)
            .collect();
        if !dirty.is_empty() {
            let started = Instant::now();
            for id in dirty {
                self.commit_one(id)?;
            }
            self.metrics
                .index_commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(self.last_applied)
    }

    /// The directory holding the partitions.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partitions with their size on disk, oldest first.
    pub fn sizes(&self) -> Vec<(PartitionId, u64)> {
        self.partitions
            .iter()
            .map(|(id, p)| (*id, p.partition.disk_bytes()))
            .collect()
    }

    /// Drops a whole partition: its writer, its readers' view and its files.
    pub fn drop_partition(&mut self, id: PartitionId) -> Result<(), StoreError> {
        let Some(mut writable) = self.partitions.remove(&id) else {
            return Ok(());
        };
        self.publish();
        if let Some(writer) = writable.writer.take() {
            let _ = writer.wait_merging_threads();
        }
        let path = writable.partition.path.clone();
        drop(writable);
        std::fs::remove_dir_all(&path).map_err(|source| StoreError::Io { path, source })
    }

    /// Commits and closes every writer (shutdown).
    pub fn close(mut self) -> Result<u64, StoreError> {
        let checkpoint = self.commit()?;
        for writable in self.partitions.values_mut() {
            if let Some(writer) = writable.writer.take() {
                let path = writable.partition.path.clone();
                writer
                    .wait_merging_threads()
                    .map_err(|source| StoreError::Index { path, source })?;
            }
        }
        Ok(checkpoint)
    }
}

/// `doc` without the values of fields past the first `known` (those a
/// partition created by an earlier version lacks: fields are only ever
/// added last, see [`schema::build`]).
fn fitted(doc: TantivyDocument, known: usize) -> TantivyDocument {
    let fits = |field: tantivy::schema::Field| (field.field_id() as usize) < known;
    if doc.field_values().all(|(field, _)| fits(field)) {
        return doc;
    }
    let mut out = TantivyDocument::new();
    for (field, value) in doc.field_values() {
        if fits(field) {
            out.add_field_value(field, value);
        }
    }
    out
}
