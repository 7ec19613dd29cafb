//! The query engine: every question the APIs and the CLI ask, answered
//! from the collector's store. Trace reads use the store's trace index;
//! every statistic is a tantivy aggregation on fast fields (see
//! [`stats`]) or, for quantiles over sliding windows ([`window`]), one scan
//! of the same columns, never a walk over stored spans; a service's numbers count
//! what [`view`] says; [`search`] orders trace searches and summarizes
//! traces; [`explain`] ranks what made requests slower.

pub mod explain;
pub mod search;
pub mod stats;
pub mod view;
pub mod window;

use std::time::Duration;

use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, SpanReader, Trace};

pub use search::{Sort, TraceSearch};
pub use view::View;

use crate::error::QueryError;

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

    /// Every span of one trace, once: exact copies dropped and shared
    /// Zipkin span ids split (see [`search::adjust`]).
    pub fn trace(&self, trace_id: TraceId) -> Result<Trace, QueryError> {
        let mut trace = self
            .reader
            .trace(trace_id)?
            .ok_or(QueryError::TraceNotFound)?;
        search::adjust(&mut trace);
        Ok(trace)
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
