//! The query engine: every question the APIs and the CLI ask, answered
//! from the collector's store. Trace reads use the store's trace index;
//! every statistic is a tantivy aggregation on fast fields (see
//! [`stats`]), never a walk over stored spans.

pub mod stats;

use std::time::Duration;

use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, SpanReader, Trace};

use crate::error::QueryError;

/// A trace search: which spans must match, and how many traces to return.
#[derive(Debug, Clone, Default)]
pub struct TraceSearch {
    /// At least one span of each returned trace matches this.
    pub spans: SpanQuery,
    /// Most traces returned.
    pub limit: usize,
}

/// Answers queries over one store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    reader: SpanReader,
}

impl Engine {
    /// An engine over `reader` (a running collector's, or one opened on a
    /// data directory).
    pub fn new(reader: SpanReader) -> Self {
        Self { reader }
    }

    /// The store handle, for aggregations in [`stats`].
    pub(crate) fn reader(&self) -> &SpanReader {
        &self.reader
    }

    /// Every span of one trace.
    pub fn trace(&self, trace_id: TraceId) -> Result<Trace, QueryError> {
        self.reader
            .trace(trace_id)?
            .ok_or(QueryError::TraceNotFound)
    }

    /// Whole traces with a span matching the search, newest first.
    pub fn search(&self, search: &TraceSearch) -> Result<Vec<Trace>, QueryError> {
        let hits = self.reader.find_traces(&search.spans, search.limit)?;
        let ids: Vec<_> = hits.iter().map(|hit| hit.trace_id).collect();
        // Within one answer's span budget; a trace can vanish between the
        // search and the read (retention).
        Ok(self.reader.traces(&ids)?)
    }

    /// Every service with spans, sorted.
    pub fn services(&self) -> Result<Vec<String>, QueryError> {
        Ok(self.reader.services()?)
    }

    /// A service's operations (span name and OTLP kind), sorted; only
    /// those of `kind` when given.
    pub fn operations(
        &self,
        service: &str,
        kind: Option<i32>,
    ) -> Result<Vec<(String, i32)>, QueryError> {
        let mut operations = self.reader.operations(service)?;
        if let Some(kind) = kind {
            operations.retain(|(_, k)| *k == kind);
        }
        Ok(operations)
    }
}

/// A time range in nanoseconds since the epoch, `from` before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// First nanosecond.
    pub from: u64,
    /// Last nanosecond.
    pub to: u64,
}

impl TimeRange {
    /// The range ending at `end` (ns) and `lookback` long.
    pub fn ending(end: u64, lookback: Duration) -> Self {
        Self {
            from: end.saturating_sub(lookback.as_nanos().min(u128::from(u64::MAX)) as u64),
            to: end,
        }
    }

    /// Its length in seconds (at least a nanosecond's worth).
    pub fn seconds(&self) -> f64 {
        (self.to.saturating_sub(self.from)).max(1) as f64 / 1e9
    }

    /// `query` restricted to spans started in this range.
    pub fn apply(&self, mut query: SpanQuery) -> SpanQuery {
        query.start_from = Some(self.from);
        query.start_to = Some(self.to);
        query
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
