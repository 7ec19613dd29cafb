//! Jaeger's monitor endpoints (`/api/metrics/latencies|calls|errors`),
//! which feed Jaeger UI's Monitor tab. Jaeger computes them with PromQL
//! over span metrics; tracemesh computes the same quantities from the
//! store: call rate, error rate and the latency quantile over a sliding
//! `ratePer` window sampled every `step` (the quantile of the window's
//! spans together, as Jaeger's `histogram_quantile` over `rate(…[ratePer])`
//! is).
//! Errors are 5xx and local failures, as everywhere in tracemesh
//! ([`tracemesh_collector::outcome::Outcome`]); steps before a service's
//! first span have no point.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Serialize;
use tracemesh_collector::store::{Condition, SpanQuery};

use super::model::kind_from_name;
use super::{envelope, error};
use crate::engine::{Engine, TimeRange, now_nanos};
use crate::error::QueryError;
use crate::http::{AppState, json};
use crate::params::Params;
use crate::timefmt::rfc3339;

const DEFAULT_LOOKBACK: Duration = Duration::from_secs(3600);
const DEFAULT_STEP: Duration = Duration::from_secs(5);
const DEFAULT_RATE_PER: Duration = Duration::from_secs(600);

/// What the three endpoints share.
struct MetricsQuery {
    services: Vec<String>,
    by_operation: bool,
    /// OTLP span kinds counted together (Jaeger's `span_kind=~"…|…"`).
    kinds: Vec<i32>,
    range: TimeRange,
    step: u64,
    rate_per: u64,
}

/// The OTLP kinds of `spanKind`'s values, as Jaeger's query parser reads
/// them (`parseSpanKinds`): each of `unspecified`, `internal`, `server`,
/// `client`, `producer`, `consumer`, repeated for several (counted
/// together); `server` when the parameter is absent; any other value,
/// an empty one included, is a 400.
fn span_kinds(values: &[&str], present: bool) -> Result<Vec<i32>, QueryError> {
    if values.is_empty() {
        return if present {
            Err(QueryError::param("spanKind", "unsupported span kind: ''"))
        } else {
            Ok(vec![SPAN_KIND_SERVER])
        };
    }
    let mut kinds = Vec::with_capacity(values.len());
    for name in values {
        let kind = match name.to_ascii_lowercase().as_str() {
            "unspecified" => Some(0),
            "" => None,
            other => kind_from_name(other),
        }
        .ok_or_else(|| QueryError::param("spanKind", format!("unsupported span kind: '{name}'")))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// OTLP `SPAN_KIND_SERVER`, Jaeger's default.
const SPAN_KIND_SERVER: i32 = 2;

fn parse(params: &Params) -> Result<MetricsQuery, QueryError> {
    let services: Vec<String> = params
        .all("service")
        .into_iter()
        .map(str::to_owned)
        .collect();
    if services.is_empty() {
        return Err(QueryError::param(
            "service",
            "please provide at least one service name",
        ));
    }
    let kinds = span_kinds(&params.all("spanKind"), params.has("spanKind"))?;
    let ms = Duration::from_millis(1);
    let end = params
        .int::<u64>("endTs")?
        .map_or_else(now_nanos, |v| v.saturating_mul(1_000_000));
    let lookback = params.units("lookback", ms)?.unwrap_or(DEFAULT_LOOKBACK);
    let step = params.units("step", ms)?.unwrap_or(DEFAULT_STEP);
    let rate_per = params.units("ratePer", ms)?.unwrap_or(DEFAULT_RATE_PER);
    if step.is_zero() {
        return Err(QueryError::param("step", "must be positive"));
    }
    if rate_per.is_zero() {
        return Err(QueryError::param("ratePer", "must be positive"));
    }
    Ok(MetricsQuery {
        services,
        by_operation: params.bool("groupByOperation")?,
        kinds,
        range: TimeRange::ending(end, lookback),
        step: step.as_nanos() as u64,
        rate_per: rate_per.as_nanos() as u64,
    })
}

/// Jaeger's `MetricFamily` (protobuf JSON).
#[derive(Debug, Serialize)]
struct MetricFamily {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    help: String,
    metrics: Vec<Metric>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Metric {
    labels: Vec<Label>,
    metric_points: Vec<MetricPoint>,
}

#[derive(Debug, Serialize)]
struct Label {
    name: &'static str,
    value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricPoint {
    gauge_value: GaugeValue,
    timestamp: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GaugeValue {
    double_value: f64,
}

/// Which metric an endpoint computes.
#[derive(Debug, Clone, Copy)]
enum Which {
    Latency(f64),
    Calls,
    Errors,
}

fn family(engine: &Engine, query: &MetricsQuery, which: Which) -> Result<MetricFamily, QueryError> {
    let (mut name, mut help) = match which {
        Which::Latency(q) => (
            "service_latencies".to_owned(),
            format!("{q:.2}th quantile latency, grouped by service"),
        ),
        Which::Calls => (
            "service_call_rate".to_owned(),
            "calls/sec, grouped by service".to_owned(),
        ),
        Which::Errors => (
            "service_error_rate".to_owned(),
            "error rate, computed as a fraction of errors/sec over calls/sec, grouped by service"
                .to_owned(),
        ),
    };
    if query.by_operation {
        name = name.replacen("service", "service_operation", 1);
        help.push_str(" & operation");
    }
    // Steps before the range feed the first points' rate windows.
    let window_steps = query.rate_per.div_ceil(query.step) as usize;
    let fetch = TimeRange {
        from: query.range.from.saturating_sub(query.rate_per),
        to: query.range.to,
    };
    let mut metrics = Vec::new();
    for service in &query.services {
        let spans = match query.kinds.as_slice() {
            [kind] => SpanQuery {
                service: Some(service.clone()),
                kind: Some(*kind),
                ..Default::default()
            },
            kinds => SpanQuery {
                service: Some(service.clone()),
                conditions: vec![Condition::Any(
                    kinds.iter().copied().map(Condition::Kind).collect(),
                )],
                ..Default::default()
            },
        };
        for (operation, steps) in values(engine, &spans, query, which, fetch, window_steps)? {
            let mut labels = vec![Label {
                name: "service_name",
                value: service.clone(),
            }];
            if let Some(operation) = operation {
                labels.push(Label {
                    name: "operation",
                    value: operation,
                });
            }
            let mut points = Vec::new();
            // Before the service's first span there is nothing to say: no
            // point, rather than a 0 the UI would average in.
            let first = steps.iter().position(|s| s.calls > 0);
            for (i, step) in steps.iter().enumerate() {
                let at = step.start + query.step;
                if at < query.range.from
                    || step.start > query.range.to
                    || first.is_none_or(|first| i < first)
                {
                    continue;
                }
                if let Some(value) = step.value {
                    points.push(MetricPoint {
                        gauge_value: GaugeValue {
                            double_value: value,
                        },
                        timestamp: rfc3339(at.min(query.range.to)),
                    });
                }
            }
            metrics.push(Metric {
                labels,
                metric_points: points,
            });
        }
    }
    Ok(MetricFamily {
        name,
        kind: "GAUGE",
        help,
        metrics,
    })
}

/// A series of steps, per operation when grouped.
type Steps = (Option<String>, Vec<Step>);

/// One step of an answer: when it starts, the spans started in it, and
/// the metric's value over the `ratePer` window ending with it.
struct Step {
    start: u64,
    calls: u64,
    value: Option<f64>,
}

/// Every step of `fetch` for the spans of `spans`, per operation when
/// grouped. Every metric is over the same window, as Jaeger's PromQL takes
/// each over `[ratePer]`: the calls and errors summed over the window's
/// steps; the latency quantile of the window's spans together
/// ([`Engine::windowed_quantiles`]), not of one step's.
fn values(
    engine: &Engine,
    spans: &SpanQuery,
    query: &MetricsQuery,
    which: Which,
    fetch: TimeRange,
    window_steps: usize,
) -> Result<Vec<Steps>, QueryError> {
    if let Which::Latency(q) = which {
        let series = engine.windowed_quantiles(
            spans,
            fetch,
            query.step,
            window_steps,
            q,
            query.by_operation,
        )?;
        return Ok(series
            .into_iter()
            .map(|series| {
                let steps = series.points.into_iter().map(|p| Step {
                    start: p.start,
                    calls: p.calls,
                    value: p.quantile.map(|ns| ns / 1e6),
                });
                (series.operation, steps.collect())
            })
            .collect());
    }
    let series = engine.series(spans, fetch, query.step, &[], query.by_operation)?;
    Ok(series
        .into_iter()
        .map(|series| {
            let points = &series.points;
            let steps = points.iter().enumerate().map(|(i, point)| {
                let window = &points[i.saturating_sub(window_steps - 1)..=i];
                let calls: u64 = window.iter().map(|p| p.calls).sum();
                let errors: u64 = window.iter().map(|p| p.errors).sum();
                let value = match which {
                    Which::Calls => Some(calls as f64 / (query.rate_per as f64 / 1e9)),
                    _ => (calls > 0).then(|| errors as f64 / calls as f64),
                };
                Step {
                    start: point.start,
                    calls: point.calls,
                    value,
                }
            });
            (series.operation, steps.collect())
        })
        .collect())
}

async fn answer(
    state: AppState,
    raw: Option<String>,
    which: Result<Which, QueryError>,
    endpoint: &'static str,
) -> Response {
    let params = Params::parse(raw.as_deref());
    let parsed = which.and_then(|which| Ok((which, parse(&params)?)));
    let (which, query) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return error(&e),
    };
    state
        .answer(
            endpoint,
            move |engine| family(engine, &query, which),
            |r| match r {
                Ok(family) => json(http::StatusCode::OK, &family),
                Err(e) => error(&e),
            },
        )
        .await
}

/// `GET /api/metrics/latencies?service=&quantile=&groupByOperation=&endTs=&lookback=&step=&ratePer=&spanKind=`
pub async fn latencies(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.as_deref());
    let quantile = match params.get("quantile").map(str::parse::<f64>) {
        Some(Ok(q)) if (0.0..=1.0).contains(&q) => Ok(Which::Latency(q)),
        Some(Ok(q)) => Err(QueryError::param(
            "quantile",
            format!("{q} is not within [0, 1]"),
        )),
        Some(Err(e)) => Err(QueryError::param("quantile", e)),
        None => Err(QueryError::param(
            "quantile",
            "strconv.ParseFloat: parsing \"\": invalid syntax",
        )),
    };
    answer(state, raw, quantile, "jaeger_latencies").await
}

/// `GET /api/metrics/calls`
pub async fn calls(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    answer(state, raw, Ok(Which::Calls), "jaeger_calls").await
}

/// `GET /api/metrics/errors`
pub async fn errors(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    answer(state, raw, Ok(Which::Errors), "jaeger_errors").await
}

/// `GET /api/metrics/minstep`: the smallest step worth asking for, in ms.
pub async fn min_step() -> Response {
    envelope(1000u64, 0, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Jaeger's `parseSpanKinds`: every kind name, `unspecified`
    /// included, repeated for several; absent is `server`; an unknown or
    /// empty name is an error. (`unspecified` and a second kind used to
    /// be refused.)
    #[test]
    fn span_kinds_are_read_as_jaeger_reads_them() {
        assert_eq!(span_kinds(&[], false).unwrap(), [2]);
        assert_eq!(span_kinds(&["unspecified"], true).unwrap(), [0]);
        assert_eq!(span_kinds(&["server", "client"], true).unwrap(), [2, 3]);
        assert_eq!(
            span_kinds(
                &["internal", "producer", "consumer", "server", "SERVER"],
                true
            )
            .unwrap(),
            [1, 4, 5, 2]
        );
        for bad in [&["sideways"][..], &["server", "sideways"], &[""]] {
            assert!(span_kinds(bad, true).is_err(), "{bad:?}");
        }
        assert!(span_kinds(&[], true).is_err(), "spanKind= alone");
    }
}
