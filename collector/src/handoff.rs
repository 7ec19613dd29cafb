//! The contract between ingest, the WAL and the indexer: what travels with
//! a batch from its acknowledgement to the index ([`IndexItem`]), and the
//! bound on how many spans may be on that road at once ([`IngestQueue`]).
//!
//! ```text
//! ingest ── admit(n) ──▶ IngestQueue ◀── release(n) ── indexer
//!    └── WAL append(payload, IndexItem) ──▶ (seq, IndexItem) ──┘
//! ```
//!
//! Ingest and the indexer both depend on this module and on nothing of each
//! other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::store::PreparedDocs;

/// A durable batch on its way to the index: the request (for span metrics
/// and dependency edges) and its documents, built by the receiver.
pub struct IndexItem {
    /// The request as accepted.
    pub batch: Arc<ExportTraceServiceRequest>,
    /// Its documents, by partition.
    pub docs: PreparedDocs,
    /// Its spans' fingerprints, in batch order (see [`crate::resends`]).
    pub fingerprints: Vec<u64>,
    /// Spans it holds (its room in the ingest queue).
    pub spans: usize,
}

/// The ingest queue: spans acknowledged but not yet in the index. A batch
/// is admitted only if it fits, so memory stays bounded whatever senders do.
#[derive(Debug)]
pub struct IngestQueue {
    spans: AtomicUsize,
    capacity: usize,
}

impl IngestQueue {
    /// A queue of `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            spans: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Takes room for `n` spans; a batch larger than the whole queue is
    /// admitted only when the queue is empty.
    pub fn try_admit(&self, n: usize) -> bool {
        self.spans
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used + n <= self.capacity).then_some(used + n)
            })
            .is_ok()
    }

    /// Gives back room for `n` spans (they are in the index, or were never
    /// written); returns the spans still queued.
    pub fn release(&self, n: usize) -> usize {
        self.spans.fetch_sub(n, Ordering::AcqRel) - n
    }

    /// Spans queued now.
    pub fn used(&self) -> usize {
        self.spans.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_admits_what_fits() {
        let queue = IngestQueue::new(1000);
        assert!(queue.try_admit(600));
        assert!(!queue.try_admit(600), "over capacity");
        assert!(queue.try_admit(400));
        assert_eq!(queue.release(1000), 0);
        assert!(
            queue.try_admit(5000),
            "an empty queue takes one oversized batch"
        );
        assert!(!queue.try_admit(1));
    }
}
