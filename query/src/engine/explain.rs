//! "Why is it slower?": the critical path of a request (the chain of work
//! its end waited on, as Jaeger UI draws it: from the end of a span back
//! through the child that finished last before that point, the span's own
//! time in between), each span's time on it, and a ranking of the hops by
//! how much more of that path they took in one set of requests than in
//! another: a slow trace against the typical trace of its operation, or a
//! service's requests in one window against another.
//!
//! A hop is where the time went: a SERVER (or INTERNAL, CONSUMER) span
//! counts for its own service; a CLIENT (or PRODUCER) span's own time (the
//! wait for a connection, the network, the callee's sidecar) counts for the
//! service it called (`peer.service`, else its SERVER child's service), so
//! a queue in front of a slow service ranks with that service.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tracemesh_collector::attributes;
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::{SpanQuery, StoredSpan, Trace};

use super::{Engine, Sort, TimeRange, TraceSearch};
use crate::error::QueryError;

/// Deepest span nesting followed; deeper spans count as leaves.
const MAX_DEPTH: usize = 512;

/// One stretch of the critical path: span `span` (an index into the
/// trace's spans) was what the request waited on from `start` to `end` (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Index of the span in the trace.
    pub span: usize,
    /// Start, ns since the epoch.
    pub start: u64,
    /// End, ns since the epoch.
    pub end: u64,
}

/// The critical path of the subtree under `root`, latest stretch first.
pub fn critical_path(spans: &[StoredSpan], root: usize) -> Vec<Segment> {
    let mut by_id: HashMap<&[u8], usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.span.span_id.as_slice()).or_insert(i);
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    for (i, s) in spans.iter().enumerate() {
        if let Some(&parent) = by_id.get(s.span.parent_span_id.as_slice())
            && parent != i
        {
            children[parent].push(i);
        }
    }
    for list in &mut children {
        list.sort_by_key(|&c| std::cmp::Reverse(spans[c].span.end_time_unix_nano));
    }
    let mut out = Vec::new();
    let Some(root_span) = spans.get(root) else {
        return out;
    };
    let bounds = (
        root_span.span.start_time_unix_nano,
        root_span
            .span
            .end_time_unix_nano
            .max(root_span.span.start_time_unix_nano),
    );
    walk(spans, &children, root, bounds, 0, &mut out);
    out
}

fn walk(
    spans: &[StoredSpan],
    children: &[Vec<usize>],
    node: usize,
    (start, end): (u64, u64),
    depth: usize,
    out: &mut Vec<Segment>,
) {
    let mut cursor = end;
    if depth < MAX_DEPTH {
        for &child in &children[node] {
            let span = &spans[child].span;
            // A child is seen only within its parent's time.
            let child_end = span.end_time_unix_nano.min(end);
            let child_start = span.start_time_unix_nano.max(start);
            if child_end > cursor || child_start >= child_end {
                continue;
            }
            if cursor > child_end {
                out.push(Segment {
                    span: node,
                    start: child_end,
                    end: cursor,
                });
            }
            walk(
                spans,
                children,
                child,
                (child_start, child_end),
                depth + 1,
                out,
            );
            cursor = child_start;
        }
    }
    if cursor > start {
        out.push(Segment {
            span: node,
            start,
            end: cursor,
        });
    }
}

/// Each span's time on the critical path under `root`, ns, by span index.
pub fn critical_times(spans: &[StoredSpan], root: usize) -> Vec<u64> {
    let mut times = vec![0; spans.len()];
    for segment in critical_path(spans, root) {
        times[segment.span] += segment.end - segment.start;
    }
    times
}

/// The hop a span's time counts for: (service, operation).
fn hop(spans: &[StoredSpan], index: usize) -> (String, String) {
    let stored = &spans[index];
    let span = &stored.span;
    let own = attributes::service_name(stored.resource.as_ref());
    let service = match span.kind {
        3 | 4 => attributes::get_str(&span.attributes, "peer.service")
            .map(str::to_owned)
            .or_else(|| {
                spans
                    .iter()
                    .find(|s| s.span.parent_span_id == span.span_id && matches!(s.span.kind, 2 | 5))
                    .map(|s| attributes::service_name(s.resource.as_ref()).to_owned())
            })
            .unwrap_or_else(|| own.to_owned()),
        _ => own.to_owned(),
    };
    (service, span.name.clone())
}

/// Time on the critical path per hop, ns, of the subtree under `root`.
fn hops(spans: &[StoredSpan], root: usize) -> HashMap<(String, String), u64> {
    let mut out: HashMap<(String, String), u64> = HashMap::new();
    for (i, ns) in critical_times(spans, root).into_iter().enumerate() {
        if ns > 0 {
            *out.entry(hop(spans, i)).or_default() += ns;
        }
    }
    out
}

/// Requests compared on one side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// Requests (subtrees) measured.
    pub requests: usize,
    /// Their mean duration, ms.
    pub mean_ms: f64,
    /// The trace, when one trace is this side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One hop's share of the critical path on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The service the time counts for.
    pub service: String,
    /// The span name.
    pub operation: String,
    /// Mean time on the critical path per request, ms, on the side asked about.
    pub current_ms: f64,
    /// The same on the baseline side.
    pub baseline_ms: f64,
    /// `current_ms - baseline_ms`: how much this hop added.
    pub added_ms: f64,
}

/// The answer: hops ranked by the time they added, most first, and the
/// same summed per service.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// What was compared: `trace` (one trace against the typical trace of
    /// its operation) or `windows` (two time windows).
    pub mode: &'static str,
    /// The service whose requests were compared.
    pub service: String,
    /// Their operation, when one was.
    pub operation: Option<String>,
    /// The side asked about.
    pub current: Side,
    /// What it is compared with.
    pub baseline: Side,
    /// Hops, most time added first.
    pub hops: Vec<Row>,
    /// Services, most time added first.
    pub services: Vec<(String, f64)>,
}

/// Sums of hop times over requests, and of their durations.
#[derive(Default)]
struct Tally {
    requests: usize,
    total_ns: u128,
    hops: HashMap<(String, String), u128>,
}

impl Tally {
    fn add(&mut self, trace: &Trace, root: usize) {
        let span = &trace.spans[root].span;
        self.requests += 1;
        self.total_ns += u128::from(
            span.end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
        );
        for (key, ns) in hops(&trace.spans, root) {
            *self.hops.entry(key).or_default() += u128::from(ns);
        }
    }

    fn mean_ms(&self, ns: u128) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            ns as f64 / self.requests as f64 / 1e6
        }
    }

    fn side(&self, trace_id: Option<String>) -> Side {
        Side {
            requests: self.requests,
            mean_ms: self.mean_ms(self.total_ns),
            trace_id,
        }
    }
}

fn rank(current: &Tally, baseline: &Tally) -> (Vec<Row>, Vec<(String, f64)>) {
    let keys: std::collections::BTreeSet<&(String, String)> =
        current.hops.keys().chain(baseline.hops.keys()).collect();
    let mut rows: Vec<Row> = keys
        .into_iter()
        .map(|key| {
            let current_ms = current.mean_ms(current.hops.get(key).copied().unwrap_or(0));
            let baseline_ms = baseline.mean_ms(baseline.hops.get(key).copied().unwrap_or(0));
            Row {
                service: key.0.clone(),
                operation: key.1.clone(),
                current_ms,
                baseline_ms,
                added_ms: current_ms - baseline_ms,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.added_ms
            .total_cmp(&a.added_ms)
            .then_with(|| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)))
    });
    let mut services: BTreeMap<String, f64> = BTreeMap::new();
    for row in &rows {
        *services.entry(row.service.clone()).or_default() += row.added_ms;
    }
    let mut services: Vec<(String, f64)> = services.into_iter().collect();
    services.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    (rows, services)
}

/// The root of a trace: the earliest span without a parent in the trace.
fn root_of(trace: &Trace) -> Option<usize> {
    let ids: std::collections::HashSet<&[u8]> = trace
        .spans
        .iter()
        .map(|s| s.span.span_id.as_slice())
        .collect();
    (0..trace.spans.len())
        .filter(|&i| !ids.contains(trace.spans[i].span.parent_span_id.as_slice()))
        .min_by_key(|&i| trace.spans[i].span.start_time_unix_nano)
}

/// The first span of a trace that `query` (service, operation, kind)
/// matches: the request a window comparison measures.
fn entry_of(trace: &Trace, query: &SpanQuery) -> Option<usize> {
    (0..trace.spans.len())
        .filter(|&i| {
            let stored = &trace.spans[i];
            query
                .service
                .as_deref()
                .is_none_or(|s| attributes::service_name(stored.resource.as_ref()) == s)
                && query
                    .operation
                    .as_deref()
                    .is_none_or(|o| stored.span.name == o)
                && query.kind.is_none_or(|k| stored.span.kind == k)
        })
        .min_by_key(|&i| trace.spans[i].span.start_time_unix_nano)
}

impl Engine {
    /// The critical path of a trace (from its root).
    pub fn critical_path(&self, trace_id: TraceId) -> Result<(Trace, Vec<Segment>), QueryError> {
        let trace = self.trace(trace_id)?;
        let path = root_of(&trace)
            .map(|root| critical_path(&trace.spans, root))
            .unwrap_or_default();
        Ok((trace, path))
    }

    /// One trace against the typical trace of its root operation: up to
    /// `samples` other traces with the same root service, operation and
    /// kind started in `range`.
    pub fn explain_trace(
        &self,
        trace_id: TraceId,
        range: TimeRange,
        samples: usize,
    ) -> Result<Explanation, QueryError> {
        let trace = self.trace(trace_id)?;
        let root = root_of(&trace)
            .ok_or_else(|| QueryError::BadRequest("the trace has no spans".into()))?;
        let root_span = &trace.spans[root];
        let service = attributes::service_name(root_span.resource.as_ref()).to_owned();
        let operation = root_span.span.name.clone();
        let mut current = Tally::default();
        current.add(&trace, root);
        let query = range.apply(SpanQuery {
            service: Some(service.clone()),
            operation: Some(operation.clone()),
            kind: Some(root_span.span.kind),
            ..SpanQuery::default()
        });
        let mut baseline = Tally::default();
        let others = self.search(&TraceSearch {
            spans: query,
            limit: samples + 1,
            sort: Sort::Newest,
        })?;
        for other in others
            .iter()
            .filter(|t| t.trace_id != trace_id)
            .take(samples)
        {
            if let Some(root) = root_of(other) {
                baseline.add(other, root);
            }
        }
        let (hops, services) = rank(&current, &baseline);
        Ok(Explanation {
            mode: "trace",
            service,
            operation: Some(operation),
            current: current.side(Some(trace_id.to_string())),
            baseline: baseline.side(None),
            hops,
            services,
        })
    }

    /// The requests `query` matches (a service's inbound spans, say) in
    /// `current` against those in `baseline`, up to `samples` of each.
    pub fn explain_windows(
        &self,
        query: &SpanQuery,
        current: TimeRange,
        baseline: TimeRange,
        samples: usize,
    ) -> Result<Explanation, QueryError> {
        let tally = |range: TimeRange| -> Result<Tally, QueryError> {
            let mut tally = Tally::default();
            let traces = self.search(&TraceSearch {
                spans: range.apply(query.clone()),
                limit: samples,
                sort: Sort::Newest,
            })?;
            for trace in &traces {
                if let Some(entry) = entry_of(trace, query) {
                    tally.add(trace, entry);
                }
            }
            Ok(tally)
        };
        let now = tally(current)?;
        let before = tally(baseline)?;
        let (hops, services) = rank(&now, &before);
        Ok(Explanation {
            mode: "windows",
            service: query.service.clone().unwrap_or_default(),
            operation: query.operation.clone(),
            current: now.side(None),
            baseline: before.side(None),
            hops,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    const MS: u64 = 1_000_000;

    fn span(id: u8, parent: u8, (start, end): (u64, u64)) -> StoredSpan {
        StoredSpan {
            resource: None,
            resource_schema_url: String::new(),
            scope: None,
            scope_schema_url: String::new(),
            span: Span {
                span_id: vec![id; 8],
                parent_span_id: if parent == 0 {
                    Vec::new()
                } else {
                    vec![parent; 8]
                },
                start_time_unix_nano: start * MS,
                end_time_unix_nano: end * MS,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_critical_path_follows_the_last_finishing_child() {
        // root 0..100; a 10..40 and b 20..90 overlap: the root waited on b,
        // then on nothing b covered; c 0..15 ran before b started.
        let spans = [
            span(1, 0, (0, 100)),
            span(2, 1, (10, 40)),
            span(3, 1, (20, 90)),
            span(4, 1, (0, 15)),
        ];
        let times = critical_times(&spans, 0);
        assert_eq!(times, [(10 + 5) * MS, 0, 70 * MS, 15 * MS]);
        let total: u64 = times.iter().sum();
        assert_eq!(total, 100 * MS, "the path covers the root's whole time");
    }

    #[test]
    fn children_outside_their_parent_are_cut_to_it() {
        let spans = [span(1, 0, (0, 50)), span(2, 1, (40, 80))];
        assert_eq!(critical_times(&spans, 0), [40 * MS, 10 * MS]);
    }
}
