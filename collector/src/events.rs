//! The collector's notable events, each one function that writes the log
//! line and moves the counters that go with it (Vector's internal events),
//! so a log line and its metric never drift apart.
//!
//! Levels: ERROR means acknowledged data was lost or an operator must act;
//! WARN means data was refused, dropped or cut and the sender or operator
//! may want to know. Events a client can cause at will are rate-limited to
//! one line per [`LOG_EVERY`] per event, with the number of lines left out.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::error::IngestError;
use crate::ingest::decode::Undecodable;
use crate::ingest::limits::Limited;
use crate::ingest::validate::Rejected;
use crate::metrics::{ListenerTimeout, Metrics, PartitionDrop, Receiver, Refusal, SpanLimit};
use crate::store::PartitionId;

/// At most one line per this, per rate-limited event.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A log line allowance: one line per [`LOG_EVERY`], counting the rest.
pub struct LogLimit {
    next_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A fresh allowance (the first line is logged).
    pub const fn new() -> Self {
        Self {
            next_second: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let next = self.next_second.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_second
                .compare_exchange(
                    next,
                    now + LOG_EVERY.as_secs(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

fn refused(metrics: &Metrics, receiver: Receiver, reason: Refusal, spans: u64) {
    metrics
        .spans_refused
        .with_label_values(&[receiver.label(), reason.label()])
        .inc_by(spans);
}

/// A request refused before its spans could be read (malformed, too large,
/// unsupported): counted once, as its spans are unknown.
pub fn request_refused(metrics: &Metrics, receiver: Receiver, error: &IngestError) {
    static LOG: LogLimit = LogLimit::new();
    refused(metrics, receiver, error.reason(), 1);
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(
            receiver = receiver.label(),
            reason = error.reason().label(),
            %error,
            suppressed,
            "request refused"
        );
    }
}

/// Spans left out of an accepted batch by validation (OTLP partial success).
pub fn spans_rejected(metrics: &Metrics, receiver: Receiver, rejected: &Rejected) {
    static LOG: LogLimit = LogLimit::new();
    if rejected.count == 0 {
        return;
    }
    let invalid = rejected.count - rejected.out_of_range;
    if invalid > 0 {
        refused(metrics, receiver, Refusal::Invalid, invalid);
    }
    if rejected.out_of_range > 0 {
        refused(
            metrics,
            receiver,
            Refusal::OutOfRange,
            rejected.out_of_range,
        );
    }
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(
            receiver = receiver.label(),
            spans = rejected.count,
            message = %rejected.message,
            suppressed,
            "spans rejected"
        );
    }
}

/// Spans left out of an accepted batch because they, or the resource or
/// scope they came with, could not be decoded (OTLP partial success):
/// counted as refused for `malformed`.
pub fn spans_undecodable(metrics: &Metrics, receiver: Receiver, undecodable: &Undecodable) {
    static LOG: LogLimit = LogLimit::new();
    if !undecodable.any() {
        return;
    }
    refused(metrics, receiver, Refusal::Malformed, undecodable.spans);
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(
            receiver = receiver.label(),
            spans = undecodable.spans,
            message = %undecodable.message(),
            suppressed,
            "spans could not be decoded"
        );
    }
}

/// Span limits dropped attributes, events or links, or cut values, of an
/// accepted batch (recorded in the spans' dropped counts).
pub fn span_limits_applied(metrics: &Metrics, receiver: Receiver, limited: &Limited) {
    static LOG: LogLimit = LogLimit::new();
    if !limited.any() {
        return;
    }
    let counts = [
        (SpanLimit::AttributeCount, limited.attribute_count),
        (SpanLimit::AttributeKeyLength, limited.attribute_key_length),
        (
            SpanLimit::AttributeValueLength,
            limited.attribute_value_length,
        ),
        (SpanLimit::EventCount, limited.event_count),
        (SpanLimit::LinkCount, limited.link_count),
    ];
    for (limit, count) in counts {
        if count > 0 {
            metrics
                .span_limited
                .with_label_values(&[limit.label()])
                .inc_by(count);
        }
    }
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(
            receiver = receiver.label(),
            attributes_over_count = limited.attribute_count,
            attributes_with_long_keys = limited.attribute_key_length,
            values_truncated = limited.attribute_value_length,
            events_dropped = limited.event_count,
            links_dropped = limited.link_count,
            suppressed,
            "span limits applied"
        );
    }
}

/// A whole decoded batch refused (queue full, WAL unavailable): the sender
/// is told to retry, nothing of it was acknowledged.
pub fn batch_refused(metrics: &Metrics, receiver: Receiver, spans: u64, error: &IngestError) {
    static LOG: LogLimit = LogLimit::new();
    refused(metrics, receiver, error.reason(), spans);
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(
            receiver = receiver.label(),
            reason = error.reason().label(),
            spans,
            %error,
            suppressed,
            "batch refused"
        );
    }
}

/// A measurement of span-derived `metric` folded into the metric's
/// overflow series: its label set was new and the metric holds its cap of
/// `cap` series. Counted in `folded`
/// (`tracemesh_collector_metric_series_overflow_total{metric}`); logged at
/// WARN on the first measurement folded of each metric, as that is when
/// the metric's numbers by label start to be partial.
pub fn series_folded(metric: &'static str, cap: usize, folded: &IntCounter) {
    if folded.get() == 0 {
        tracing::warn!(
            metric,
            max_series_per_metric = cap,
            "metric series cap reached: new label sets are counted in its otel_metric_overflow=\"true\" series and in tracemesh_collector_metric_series_overflow_total (raise max_series_per_metric if they are legitimate)"
        );
    }
    folded.inc();
}

/// Dependency edges not written because the service of a span remembered
/// for them had been forgotten (too many new service names since, see
/// [`crate::edges`]): counted in
/// `tracemesh_collector_dependency_edges_dropped_total`, logged at WARN at
/// most once per [`LOG_EVERY`] with the edges dropped since the last line.
pub fn dependency_edges_dropped(metrics: &Metrics, edges: u64) {
    static LOG: LogLimit = LogLimit::new();
    static SINCE_LOGGED: AtomicU64 = AtomicU64::new(0);
    if edges == 0 {
        return;
    }
    metrics.dependency_edges_dropped.inc_by(edges);
    SINCE_LOGGED.fetch_add(edges, Ordering::Relaxed);
    if LOG.allow().is_some() {
        tracing::warn!(
            edges = SINCE_LOGGED.swap(0, Ordering::Relaxed),
            new_names = crate::edges::SERVICE_GENERATION,
            "dependency edges dropped: their spans' service names were forgotten, more than new_names service names arrived since (junk service.name values?)"
        );
    }
}

/// A connection closed by a listener timeout (a slow or idle client; the
/// client was not acknowledged anything it did not send).
pub fn connection_timed_out(metrics: &Metrics, timeout: ListenerTimeout) {
    metrics
        .listener_timeouts
        .with_label_values(&[timeout.label()])
        .inc();
    tracing::debug!(timeout = timeout.label(), "connection closed by timeout");
}

/// A whole partition deleted (retention or the disk cap).
pub fn partition_dropped(metrics: &Metrics, id: PartitionId, reason: PartitionDrop, bytes: u64) {
    metrics
        .partitions_dropped
        .with_label_values(&[reason.label()])
        .inc();
    tracing::info!(
        partition = %id.dir_name(),
        reason = reason.label(),
        bytes,
        "partition dropped"
    );
}

/// The data directory is over `max_disk` and only current data is left to
/// drop: it is kept, and the operator must give the store more room.
pub fn over_disk_cap(bytes: u64, cap: u64) {
    static LOG: LogLimit = LogLimit::new();
    if let Some(suppressed) = LOG.allow() {
        tracing::error!(
            bytes,
            max_disk = cap,
            suppressed,
            "data directory over max_disk with only current partitions left, they are kept"
        );
    }
}

/// Spans of WAL record `seq` that could not be indexed: they stay in the
/// WAL, and the next start replays them.
pub fn index_failed(metrics: &Metrics, seq: u64, error: &dyn std::fmt::Display) {
    metrics.index_errors.inc();
    tracing::error!(%error, seq, "spans not indexed, they stay in the wal until a restart replays them");
}

/// An index commit failed: the WAL keeps the spans it would have covered.
pub fn commit_failed(metrics: &Metrics, error: &dyn std::fmt::Display) {
    metrics.index_errors.inc();
    tracing::error!(%error, "index commit failed, the wal keeps the spans");
}

/// A torn tail cut from a WAL file on recovery: bytes of a write that was
/// never acknowledged (a crash in the middle of it).
pub fn wal_tail_cut(metrics: &Metrics, file: &Path, kept: usize, cut: usize) {
    metrics.wal_cut_bytes.inc_by(cut as u64);
    tracing::warn!(file = %file.display(), kept_bytes = kept, cut_bytes = cut, "wal tail cut");
}

/// Acknowledged WAL records found missing on recovery (`cause`: a damaged
/// record, or a whole file gone) that the index does not hold: lost.
pub fn wal_records_lost(
    metrics: &Metrics,
    file: &Path,
    seqs: std::ops::RangeInclusive<u64>,
    records: u64,
    cause: &'static str,
) {
    metrics.wal_lost_records.inc_by(records);
    tracing::error!(
        file = %file.display(),
        first_seq = seqs.start(),
        last_seq = seqs.end(),
        records,
        cause,
        "wal records lost"
    );
}

/// A WAL file with damage in it, kept aside for inspection; its intact
/// records stay in place and are replayed.
pub fn wal_file_damaged(metrics: &Metrics, file: &Path, aside: &Path, damaged_bytes: usize) {
    metrics.wal_cut_bytes.inc_by(damaged_bytes as u64);
    tracing::error!(
        file = %file.display(),
        kept_aside = %aside.display(),
        damaged_bytes,
        "wal file damaged, intact records kept"
    );
}

/// A WAL record that passed its checksum but is not a trace request: lost.
pub fn wal_record_undecodable(metrics: &Metrics, seq: u64, error: &dyn std::fmt::Display) {
    metrics.wal_lost_records.inc();
    tracing::error!(%error, seq, "wal record undecodable, skipped");
}
