//! Metrics received over OTLP, kept (latest value per series) and rendered
//! in Prometheus text format on the collector's `/metrics`, so the mesh has
//! one scrape target. Names follow OpenTelemetry's Prometheus compatibility
//! rules: invalid characters become `_`, the unit is appended
//! (`_milliseconds`, `_seconds`, `_bytes`), monotonic sums end in `_total`;
//! the resource's `service.name` becomes `job` and `service.instance.id`
//! becomes `instance`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, NumberDataPoint};

use crate::attributes;

/// Series not updated for this long are no longer exposed.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// Series kept, at most (a cardinality guard).
const MAX_SERIES: usize = 50_000;

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Point {
    Gauge(f64),
    Counter(f64),
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    Summary {
        quantiles: Vec<(f64, f64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    kind: &'static str,
    help: String,
    series: BTreeMap<Labels, (Point, Instant)>,
}

/// The received metrics.
#[derive(Debug, Default)]
pub struct OtlpMetrics {
    families: Mutex<BTreeMap<String, Family>>,
}

/// A Prometheus-safe name.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

fn label_name(key: &str) -> String {
    sanitize(key).replace(':', "_")
}

fn unit_suffix(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "ms" => "milliseconds",
        "s" => "seconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "%" => "percent",
        _ => return None,
    })
}

fn metric_name(name: &str, unit: &str, counter: bool) -> String {
    let mut out = sanitize(name);
    if let Some(suffix) = unit_suffix(unit)
        && !out.ends_with(suffix)
    {
        out.push('_');
        out.push_str(suffix);
    }
    if counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

fn number(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(Number::AsDouble(d)) => d,
        Some(Number::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

fn labels(resource: &[(String, String)], point: &[KeyValue]) -> Labels {
    let mut labels: BTreeMap<String, String> = resource.iter().cloned().collect();
    for kv in point {
        labels.insert(
            label_name(&kv.key),
            attributes::text(kv.value.as_ref()).into_owned(),
        );
    }
    labels.into_iter().collect()
}

impl OtlpMetrics {
    /// Records every data point of a request; returns how many were taken.
    pub fn ingest(&self, request: &ExportMetricsServiceRequest) -> u64 {
        let now = Instant::now();
        let mut taken = 0;
        let Ok(mut families) = self.families.lock() else {
            return 0;
        };
        for resource_metrics in &request.resource_metrics {
            let resource_attrs = resource_metrics
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default();
            let mut resource_labels = Vec::new();
            let service = attributes::service_name(resource_metrics.resource.as_ref());
            let job = match attributes::get_str(resource_attrs, "service.namespace") {
                Some(ns) => format!("{ns}/{service}"),
                None => service.to_owned(),
            };
            resource_labels.push(("job".to_owned(), job));
            if let Some(instance) = attributes::get_str(resource_attrs, "service.instance.id") {
                resource_labels.push(("instance".to_owned(), instance.to_owned()));
            }
            for scope_metrics in &resource_metrics.scope_metrics {
                for metric in &scope_metrics.metrics {
                    let mut record = |name: String,
                                      kind: &'static str,
                                      labels: Labels,
                                      point: Point,
                                      delta: bool| {
                        let family = families.entry(name).or_insert_with(|| Family {
                            kind,
                            help: metric.description.clone(),
                            series: BTreeMap::new(),
                        });
                        if family.kind != kind {
                            return;
                        }
                        if !family.series.contains_key(&labels) && family.series.len() >= MAX_SERIES
                        {
                            return;
                        }
                        taken += 1;
                        let Some(slot) = family.series.get_mut(&labels) else {
                            family.series.insert(labels, (point, now));
                            return;
                        };
                        let old = std::mem::replace(&mut slot.0, Point::Gauge(0.0));
                        slot.0 = match (delta, old, point) {
                            (true, Point::Counter(old), Point::Counter(new)) => {
                                Point::Counter(old + new)
                            }
                            (
                                true,
                                Point::Histogram {
                                    bounds,
                                    counts,
                                    sum,
                                    count,
                                },
                                Point::Histogram {
                                    bounds: b,
                                    counts: c,
                                    sum: s,
                                    count: n,
                                },
                            ) if bounds == b && counts.len() == c.len() => Point::Histogram {
                                bounds,
                                counts: counts.iter().zip(&c).map(|(x, y)| x + y).collect(),
                                sum: sum + s,
                                count: count + n,
                            },
                            (_, _, point) => point,
                        };
                        slot.1 = now;
                    };
                    match &metric.data {
                        Some(Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                record(
                                    metric_name(&metric.name, &metric.unit, false),
                                    "gauge",
                                    labels(&resource_labels, &p.attributes),
                                    Point::Gauge(number(p)),
                                    false,
                                );
                            }
                        }
                        Some(Data::Sum(sum)) => {
                            let delta =
                                sum.aggregation_temporality == AggregationTemporality::Delta as i32;
                            for p in &sum.data_points {
                                let labels = labels(&resource_labels, &p.attributes);
                                if sum.is_monotonic {
                                    record(
                                        metric_name(&metric.name, &metric.unit, true),
                                        "counter",
                                        labels,
                                        Point::Counter(number(p)),
                                        delta,
                                    );
                                } else {
                                    record(
                                        metric_name(&metric.name, &metric.unit, false),
                                        "gauge",
                                        labels,
                                        Point::Gauge(number(p)),
                                        false,
                                    );
                                }
                            }
                        }
                        Some(Data::Histogram(histogram)) => {
                            let delta = histogram.aggregation_temporality
                                == AggregationTemporality::Delta as i32;
                            for p in &histogram.data_points {
                                let point = Point::Histogram {
                                    bounds: p.explicit_bounds.clone(),
                                    counts: p.bucket_counts.clone(),
                                    sum: p.sum.unwrap_or(0.0),
                                    count: p.count,
                                };
                                record(
                                    metric_name(&metric.name, &metric.unit, false),
                                    "histogram",
                                    labels(&resource_labels, &p.attributes),
                                    point,
                                    delta,
                                );
                            }
                        }
                        Some(Data::Summary(summary)) => {
                            for p in &summary.data_points {
                                let point = Point::Summary {
                                    quantiles: p
                                        .quantile_values
                                        .iter()
                                        .map(|q| (q.quantile, q.value))
                                        .collect(),
                                    sum: p.sum,
                                    count: p.count,
                                };
                                record(
                                    metric_name(&metric.name, &metric.unit, false),
                                    "summary",
                                    labels(&resource_labels, &p.attributes),
                                    point,
                                    false,
                                );
                            }
                        }
                        Some(Data::ExponentialHistogram(_)) | None => {}
                    }
                }
            }
        }
        taken
    }

    /// Appends the families to `out` in Prometheus text format, skipping
    /// names in `taken` (the collector's own families win) and stale series.
    pub fn render(&self, taken: &std::collections::HashSet<String>, out: &mut String) {
        let now = Instant::now();
        let Ok(mut families) = self.families.lock() else {
            return;
        };
        families.retain(|_, family| {
            family
                .series
                .retain(|_, (_, seen)| now.duration_since(*seen) < STALE_AFTER);
            !family.series.is_empty()
        });
        for (name, family) in families.iter() {
            if taken.contains(name) {
                continue;
            }
            let help = family.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, (point, _)) in &family.series {
                match point {
                    Point::Gauge(v) | Point::Counter(v) => sample(out, name, "", labels, None, *v),
                    Point::Histogram {
                        bounds,
                        counts,
                        sum,
                        count,
                    } => {
                        let mut cumulative = 0u64;
                        for (i, c) in counts.iter().enumerate() {
                            cumulative += c;
                            let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                            sample(
                                out,
                                name,
                                "_bucket",
                                labels,
                                Some(("le", &le)),
                                cumulative as f64,
                            );
                        }
                        if counts.len() <= bounds.len() {
                            sample(
                                out,
                                name,
                                "_bucket",
                                labels,
                                Some(("le", "+Inf")),
                                *count as f64,
                            );
                        }
                        sample(out, name, "_sum", labels, None, *sum);
                        sample(out, name, "_count", labels, None, *count as f64);
                    }
                    Point::Summary {
                        quantiles,
                        sum,
                        count,
                    } => {
                        for (q, v) in quantiles {
                            sample(
                                out,
                                name,
                                "",
                                labels,
                                Some(("quantile", &q.to_string())),
                                *v,
                            );
                        }
                        sample(out, name, "_sum", labels, None, *sum);
                        sample(out, name, "_count", labels, None, *count as f64);
                    }
                }
            }
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut first = true;
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra)
    {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![attributes::string("service.name", "cart")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn sums_and_histograms_render_as_prometheus() {
        let store = OtlpMetrics::default();
        let counter = Metric {
            name: "http.server.requests".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    value: Some(Number::AsInt(42)),
                    attributes: vec![attributes::string("http.route", "/cart")],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let histogram = Metric {
            name: "http.server.duration".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    explicit_bounds: vec![10.0, 100.0],
                    bucket_counts: vec![1, 2, 3],
                    sum: Some(700.0),
                    count: 6,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        assert_eq!(store.ingest(&request(vec![counter, histogram])), 2);
        let mut out = String::new();
        store.render(&Default::default(), &mut out);
        assert!(
            out.contains("# TYPE http_server_requests_total counter"),
            "{out}"
        );
        assert!(
            out.contains(r#"http_server_requests_total{http_route="/cart",job="cart"} 42"#),
            "{out}"
        );
        assert!(
            out.contains(r#"http_server_duration_milliseconds_bucket{job="cart",le="100"} 3"#),
            "{out}"
        );
        assert!(
            out.contains(r#"http_server_duration_milliseconds_bucket{job="cart",le="+Inf"} 6"#),
            "{out}"
        );
        assert!(
            out.contains(r#"http_server_duration_milliseconds_count{job="cart"} 6"#),
            "{out}"
        );
    }
}
