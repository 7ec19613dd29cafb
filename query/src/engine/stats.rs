//! Statistics as tantivy aggregations on the store's fast fields: latency
//! quantiles (tantivy's percentiles are a DDSketch with 1% relative
//! accuracy, [`QUANTILE_RELATIVE_ERROR`]), call, error and 4xx counts and
//! rates (errors as [`Outcome`] defines them: a status terms aggregation
//! with an HTTP status range under it),
//! time series (a histogram on start time), error breakdowns (terms on
//! status, HTTP status code and response flags), latency histograms, and
//! the dependency graph (terms on the edges the collector links at ingest).

use serde::Serialize;
use serde_json::{Value, json};
#[cfg(doc)]
use tracemesh_collector::outcome::Outcome;
use tracemesh_collector::outcome::STATUS_ERROR;
use tracemesh_collector::store::SpanQuery;
use tracemesh_collector::store::schema::names;

use super::{Engine, TimeRange};
use crate::error::QueryError;

/// The relative error of every quantile this engine reports: tantivy's
/// percentiles aggregation keeps a DDSketch with alpha = 0.01.
pub const QUANTILE_RELATIVE_ERROR: f64 = 0.01;

/// The quantiles a latency summary holds, in percent.
pub const PERCENTS: [f64; 5] = [50.0, 75.0, 90.0, 95.0, 99.0];

/// Most operations or codes one answer lists.
const MAX_TERMS: u32 = 10_000;

/// Most edges one dependency graph lists (of one service's, when filtered
/// by service): the most called are kept, the calls of the others counted in
/// [`Dependencies::omitted_calls`].
pub const MAX_EDGES: u32 = 10_000;

/// Longest service name (bytes) the dependency graph filters in the
/// aggregation (see [`Engine::dependencies`]): its regex, the name twice,
/// stays under tantivy's 1,000 DFA states up to about 330 bytes.
const MAX_FILTERED_NAME: usize = 256;

/// Latency of a set of spans, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Spans counted.
    pub count: u64,
    /// p50, p75, p90, p95, p99 ([`PERCENTS`]); `None` with no spans.
    pub quantiles: Vec<Option<f64>>,
    /// The longest span.
    pub max: Option<f64>,
}

/// Calls and errors of a set of spans over a time range.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Red {
    /// The operation, when grouped by operation.
    pub operation: Option<String>,
    /// Spans.
    pub calls: u64,
    /// Failed spans: 5xx or a local failure ([`Outcome::Error`]).
    pub errors: u64,
    /// Spans answered with a 4xx ([`Outcome::ClientError`]).
    pub client_errors: u64,
    /// Calls per second over [`Self::window_s`].
    pub rate: f64,
    /// What the rate is over, in seconds: from the first span counted (or
    /// the range's start, when later) to the range's end (or now, when
    /// earlier); at least one second.
    pub window_s: f64,
    /// `errors / calls` (0 with no calls).
    pub error_rate: f64,
    /// Their latency.
    pub latency: Latency,
}

/// One step of a time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start of the step, ns since the epoch.
    pub start: u64,
    /// Spans started in the step.
    pub calls: u64,
    /// Of which failed ([`Outcome::Error`]).
    pub errors: u64,
    /// Of which were answered with a 4xx.
    pub client_errors: u64,
    /// Quantiles asked for, in ns (`None` for an empty step).
    pub quantiles: Vec<Option<f64>>,
}

/// A time series, per operation when grouped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The operation, when grouped by operation.
    pub operation: Option<String>,
    /// One point per step, oldest first, empty steps included.
    pub points: Vec<Point>,
}

/// A call from one service to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// The calling service.
    pub parent: String,
    /// The called service.
    pub child: String,
    /// Calls.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
}

/// The dependency graph, and what its bound left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dependencies {
    /// The edges, by caller then callee.
    pub edges: Vec<Dependency>,
    /// Calls on edges left out past [`MAX_EDGES`] (0 when the graph is
    /// whole): tantivy's `sum_other_doc_count`.
    pub omitted_calls: u64,
}

/// Where errors come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ErrorBreakdown {
    /// Spans.
    pub calls: u64,
    /// Failed spans ([`Outcome::Error`]).
    pub errors: u64,
    /// Spans answered with a 4xx ([`Outcome::ClientError`]).
    pub client_errors: u64,
    /// Spans by `http.response.status_code`, most first.
    pub by_status_code: Vec<(u64, u64)>,
    /// Spans by `tracemesh.response_flags` (Envoy's flags), most first;
    /// `-` (no flag) left out.
    pub by_response_flag: Vec<(String, u64)>,
    /// Failed spans by operation, most first.
    pub by_operation: Vec<(String, u64)>,
    /// Spans answered with a 4xx, by operation, most first.
    pub client_errors_by_operation: Vec<(String, u64)>,
}

/// A latency histogram bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Lower bound, ns.
    pub from: u64,
    /// Spans in `[from, from + width)`.
    pub count: u64,
}

fn agg_error(what: &str) -> impl Fn() -> QueryError + '_ {
    move || QueryError::Internal(format!("unexpected aggregation result: {what}"))
}

fn latency_request() -> Value {
    json!({
        "quantiles": {"percentiles": {"field": names::DURATION, "percents": PERCENTS, "keyed": false}},
        "stats": {"stats": {"field": names::DURATION}},
    })
}

fn quantiles_of(result: &Value) -> Vec<Option<f64>> {
    result["quantiles"]["values"]
        .as_array()
        .map(|values| values.iter().map(|v| v["value"].as_f64()).collect())
        .unwrap_or_else(|| vec![None; PERCENTS.len()])
}

fn latency_of(result: &Value) -> Latency {
    let count = result["stats"]["count"].as_u64().unwrap_or(0);
    Latency {
        count,
        quantiles: if count == 0 {
            vec![None; PERCENTS.len()]
        } else {
            quantiles_of(result)
        },
        max: result["stats"]["max"].as_f64().filter(|_| count > 0),
    }
}

/// Spans by status, and under each the 4xx and 5xx answers: what
/// [`outcomes_of`] reads errors and 4xx from.
fn status_request() -> Value {
    json!({
        "terms": {"field": names::STATUS, "size": 3},
        "aggs": {"http": {"range": {"field": names::HTTP_STATUS, "ranges": [
            {"from": 400.0, "to": 500.0},
            {"from": 500.0},
        ]}}},
    })
}

/// Errors and 4xx answers of a [`status_request`] result, as
/// [`Outcome::of`] defines them: a 5xx is an error, a 4xx never is, and
/// status ERROR without either is (a local failure).
fn outcomes_of(status: &Value) -> (u64, u64) {
    let (mut errors, mut client_errors) = (0, 0);
    for bucket in terms(status) {
        let count = |from: f64| {
            terms(&bucket["http"])
                .filter(|b| b["from"].as_f64() == Some(from))
                .filter_map(|b| b["doc_count"].as_u64())
                .sum::<u64>()
        };
        let (c4xx, c5xx) = (count(400.0), count(500.0));
        client_errors += c4xx;
        errors += if bucket["key"].as_f64() == Some(f64::from(STATUS_ERROR)) {
            bucket["doc_count"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(c4xx)
        } else {
            c5xx
        };
    }
    (errors, client_errors)
}

fn terms<'a>(result: &'a Value) -> impl Iterator<Item = &'a Value> + 'a {
    result["buckets"].as_array().into_iter().flatten()
}

impl Engine {
    /// Latency quantiles of the spans matching `query`.
    pub fn latency(&self, query: &SpanQuery) -> Result<Latency, QueryError> {
        let result = self.reader().aggregate(query, latency_request())?;
        Ok(latency_of(&result))
    }

    /// Calls, errors, rates and latency of the spans matching `query` in
    /// `range`, overall or per operation.
    pub fn red(
        &self,
        query: &SpanQuery,
        range: TimeRange,
        by_operation: bool,
    ) -> Result<Vec<Red>, QueryError> {
        let mut inner = latency_request();
        inner["status"] = status_request();
        inner["first"] = json!({"min": {"field": names::START}});
        let request = if by_operation {
            json!({"ops": {"terms": {"field": names::OPERATION, "size": MAX_TERMS}, "aggs": inner}})
        } else {
            inner
        };
        let result = self
            .reader()
            .aggregate(&range.apply(query.clone()), request)?;
        let now = super::now_nanos();
        let red = |operation: Option<String>, r: &Value| {
            let latency = latency_of(r);
            let calls = latency.count;
            let (errors, client_errors) = outcomes_of(&r["status"]);
            let first = r["first"]["value"]
                .as_f64()
                .map_or(range.from, |v| v as u64);
            let window_s =
                (range.to.min(now).saturating_sub(range.from.max(first)) as f64 / 1e9).max(1.0);
            Red {
                operation,
                calls,
                errors,
                client_errors,
                rate: calls as f64 / window_s,
                window_s,
                error_rate: if calls == 0 {
                    0.0
                } else {
                    errors as f64 / calls as f64
                },
                latency,
            }
        };
        if !by_operation {
            return Ok(vec![red(None, &result)]);
        }
        let mut rows: Vec<Red> = terms(&result["ops"])
            .map(|b| red(b["key"].as_str().map(str::to_owned), b))
            .collect();
        rows.sort_by(|a, b| a.operation.cmp(&b.operation));
        Ok(rows)
    }

    /// Calls, errors and the given quantiles (percent) per `step_ns` over
    /// `range`, overall or per operation.
    pub fn series(
        &self,
        query: &SpanQuery,
        range: TimeRange,
        step_ns: u64,
        percents: &[f64],
        by_operation: bool,
    ) -> Result<Vec<Series>, QueryError> {
        if step_ns == 0 {
            return Err(QueryError::BadParam {
                param: "step".into(),
                reason: "must be positive".into(),
            });
        }
        let steps = (range.to - range.from) / step_ns + 1;
        if steps > 10_000 {
            return Err(QueryError::BadParam {
                param: "step".into(),
                reason: format!("{steps} steps in the range, at most 10000"),
            });
        }
        let first = range.from - range.from % step_ns;
        let last = range.to - range.to % step_ns;
        let mut per_step = json!({"status": status_request()});
        if !percents.is_empty() {
            per_step["quantiles"] = json!({"percentiles": {"field": names::DURATION, "percents": percents, "keyed": false}});
        }
        let histogram = json!({
            "histogram": {
                "field": names::START,
                "interval": step_ns as f64,
                "min_doc_count": 0,
                "extended_bounds": {"min": first as f64, "max": last as f64},
            },
            "aggs": per_step,
        });
        let request = if by_operation {
            json!({"ops": {"terms": {"field": names::OPERATION, "size": MAX_TERMS}, "aggs": {"t": histogram}}})
        } else {
            json!({"t": histogram})
        };
        let result = self
            .reader()
            .aggregate(&range.apply(query.clone()), request)?;
        let series = |operation: Option<String>, r: &Value| -> Result<Series, QueryError> {
            let mut points = Vec::new();
            for bucket in terms(&r["t"]) {
                let key = bucket["key"].as_f64().ok_or_else(agg_error("step key"))?;
                // Keys are f64: snap back to the step grid.
                let start = ((key / step_ns as f64).round() as u64) * step_ns;
                let calls = bucket["doc_count"].as_u64().unwrap_or(0);
                let (errors, client_errors) = outcomes_of(&bucket["status"]);
                points.push(Point {
                    start,
                    calls,
                    errors,
                    client_errors,
                    quantiles: if calls == 0 || percents.is_empty() {
                        vec![None; percents.len()]
                    } else {
                        quantiles_of(bucket)
                    },
                });
            }
            Ok(Series { operation, points })
        };
        if !by_operation {
            return Ok(vec![series(None, &result)?]);
        }
        let mut all = terms(&result["ops"])
            .map(|b| series(b["key"].as_str().map(str::to_owned), b))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by(|a, b| a.operation.cmp(&b.operation));
        Ok(all)
    }

    /// The service dependency graph of calls made in `range`, at most
    /// [`MAX_EDGES`] edges (the most called); with `service`, only the
    /// edges it calls or is called by, chosen in the aggregation itself so
    /// that the bound applies to that service's edges alone. What the
    /// bound left out is counted in [`Dependencies::omitted_calls`].
    pub fn dependencies(
        &self,
        range: TimeRange,
        service: Option<&str>,
    ) -> Result<Dependencies, QueryError> {
        // A filter by service limits the aggregation to the edges it calls
        // and those calling it: a regex over the edge dictionary, which
        // tantivy compiles to a DFA of at most 1,000 states (a longer name
        // is filtered after the aggregation, so within the bound).
        let include = service.filter(|s| s.len() <= MAX_FILTERED_NAME).map(|s| {
            let s = regex::escape(s);
            let sep = "\\x1F";
            format!("{s}{sep}[^{sep}]*|[^{sep}]*{sep}{s}")
        });
        let mut request = serde_json::Map::new();
        for (name, field) in [("edges", names::EDGE), ("errors", names::EDGE_ERROR)] {
            let mut terms = json!({"field": field, "size": MAX_EDGES});
            if let Some(include) = &include {
                terms["include"] = json!(include);
            }
            request.insert(name.to_owned(), json!({ "terms": terms }));
        }
        let result = self
            .reader()
            .aggregate(&range.apply(SpanQuery::default()), Value::Object(request))?;
        let listed = &result["edges"];
        let omitted_calls = listed["sum_other_doc_count"].as_u64().unwrap_or(0);
        let errors: std::collections::HashMap<&str, u64> = terms(&result["errors"])
            .filter_map(|b| Some((b["key"].as_str()?, b["doc_count"].as_u64()?)))
            .collect();
        let mut edges: Vec<Dependency> = terms(listed)
            .filter_map(|b| {
                let key = b["key"].as_str()?;
                let (parent, child) = key.split_once(names::EDGE_SEPARATOR)?;
                Some(Dependency {
                    parent: parent.to_owned(),
                    child: child.to_owned(),
                    calls: b["doc_count"].as_u64()?,
                    errors: errors.get(key).copied().unwrap_or(0),
                })
            })
            .collect();
        if let Some(service) = service.filter(|_| include.is_none()) {
            edges.retain(|d| d.parent == service || d.child == service);
        }
        edges.sort_by(|a, b| (&a.parent, &a.child).cmp(&(&b.parent, &b.child)));
        Ok(Dependencies {
            edges,
            omitted_calls,
        })
    }

    /// Errors of the spans matching `query`, broken down by HTTP status
    /// code, response flag and operation.
    pub fn errors(&self, query: &SpanQuery) -> Result<ErrorBreakdown, QueryError> {
        let request = json!({
            "status": status_request(),
            "codes": {"terms": {"field": names::HTTP_STATUS, "size": MAX_TERMS}},
            "flags": {"terms": {"field": names::RESPONSE_FLAGS, "size": MAX_TERMS}},
            "ops": {"terms": {"field": names::OPERATION, "size": MAX_TERMS}, "aggs": {
                "status": status_request(),
            }},
        });
        let result = self.reader().aggregate(query, request)?;
        let count = |b: &Value| b["doc_count"].as_u64().unwrap_or(0);
        let calls = terms(&result["status"]).map(count).sum();
        let (errors, client_errors) = outcomes_of(&result["status"]);
        let per_operation: Vec<(String, (u64, u64))> = terms(&result["ops"])
            .filter_map(|b| Some((b["key"].as_str()?.to_owned(), outcomes_of(&b["status"]))))
            .collect();
        let mut breakdown = ErrorBreakdown {
            calls,
            errors,
            client_errors,
            by_status_code: terms(&result["codes"])
                .filter_map(|b| Some((b["key"].as_f64()? as u64, count(b))))
                .collect(),
            by_response_flag: terms(&result["flags"])
                .filter_map(|b| Some((b["key"].as_str()?.to_owned(), count(b))))
                .filter(|(flag, _)| flag != "-" && !flag.is_empty())
                .collect(),
            by_operation: per_operation
                .iter()
                .filter(|(_, (errors, _))| *errors > 0)
                .map(|(op, (errors, _))| (op.clone(), *errors))
                .collect(),
            client_errors_by_operation: per_operation
                .iter()
                .filter(|(_, (_, client))| *client > 0)
                .map(|(op, (_, client))| (op.clone(), *client))
                .collect(),
        };
        breakdown
            .by_status_code
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        breakdown
            .by_response_flag
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for list in [
            &mut breakdown.by_operation,
            &mut breakdown.client_errors_by_operation,
        ] {
            list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        Ok(breakdown)
    }

    /// A latency histogram of the spans matching `query`, `width_ns` wide
    /// buckets (empty ones left out).
    pub fn histogram(&self, query: &SpanQuery, width_ns: u64) -> Result<Vec<Bucket>, QueryError> {
        if width_ns == 0 {
            return Err(QueryError::BadParam {
                param: "width".into(),
                reason: "must be positive".into(),
            });
        }
        let request = json!({"h": {"histogram": {"field": names::DURATION, "interval": width_ns as f64, "min_doc_count": 1}}});
        let result = self.reader().aggregate(query, request)?;
        let buckets = terms(&result["h"])
            .filter_map(|b| {
                Some(Bucket {
                    from: b["key"].as_f64()?.max(0.0) as u64,
                    count: b["doc_count"].as_u64()?,
                })
            })
            .collect::<Vec<_>>();
        if buckets.len() > 10_000 {
            return Err(QueryError::BadParam {
                param: "width".into(),
                reason: format!(
                    "{} buckets, at most 10000: use a wider bucket",
                    buckets.len()
                ),
            });
        }
        Ok(buckets)
    }
}
