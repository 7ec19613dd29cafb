//! The result of a run: one JSON document for scripts (`--json`), or text in
//! the shape Fortio users read (rate, codes, histogram, percentiles).

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::recorder::{ErrorCounts, Recorder};

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The URL loaded.
    pub url: String,
    /// The address connections went to.
    pub connect_to: String,
    /// "HTTP/1.1" or "HTTP/2".
    pub protocol: &'static str,
    /// Connections (workers).
    pub connections: u32,
    /// Target rate; 0 means as fast as possible.
    pub requested_qps: f64,
    /// `-t`, when the run was timed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_duration_s: Option<f64>,
    /// `-n`, when the run was counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_count: Option<u64>,
    /// From the start to the last response, and at least `-t`.
    pub elapsed_s: f64,
    /// Requests sent (responses plus errors).
    pub count: u64,
    /// Achieved rate: `count / elapsed_s`.
    pub actual_qps: f64,
    /// Responses by status code.
    pub codes: BTreeMap<String, u64>,
    /// Requests without a response, by kind.
    pub errors: ErrorCounts,
    /// An example error message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Response body bytes read.
    pub body_bytes: u64,
    /// Latency of requests that got a response, in microseconds.
    pub latency_us: Latency,
    /// How late fixed-rate requests left against their slot (the generator's
    /// own timer and scheduling), in microseconds; zeros at max rate.
    pub start_lag_us: StartLag,
    /// Latency histogram: counts per bucket, upper bounds in microseconds.
    pub histogram: Vec<Bucket>,
}

/// Latency statistics, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Responses counted.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stddev: f64,
    /// Largest.
    pub max: u64,
    /// Median.
    pub p50: u64,
    /// 75th percentile.
    pub p75: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
}

/// Start lag summary, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StartLag {
    /// Mean lag.
    pub mean: f64,
    /// Largest lag.
    pub max: u64,
}

/// One histogram bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Upper bound (inclusive), microseconds.
    pub le_us: u64,
    /// Responses in this bucket.
    pub count: u64,
    /// Share of responses at or below `le_us`, in percent.
    pub cumulative_percent: f64,
}

/// The run's setup, as the report repeats it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The URL loaded.
    pub url: String,
    /// The address connections went to.
    pub connect_to: String,
    /// "HTTP/1.1" or "HTTP/2".
    pub protocol: &'static str,
    /// Connections.
    pub connections: u32,
    /// Target rate.
    pub qps: f64,
    /// `-t`, when timed.
    pub duration_s: Option<f64>,
    /// `-n`, when counted.
    pub count: Option<u64>,
}

impl Report {
    /// Summarises the merged observations of a run that took `elapsed_s`.
    pub fn new(info: RunInfo, recorder: &Recorder, elapsed_s: f64) -> Self {
        let count = recorder.requests();
        let lag = &recorder.lag;
        Self {
            url: info.url,
            connect_to: info.connect_to,
            protocol: info.protocol,
            connections: info.connections,
            requested_qps: info.qps,
            requested_duration_s: info.duration_s,
            requested_count: info.count,
            elapsed_s,
            count,
            actual_qps: if elapsed_s > 0.0 {
                count as f64 / elapsed_s
            } else {
                0.0
            },
            codes: recorder
                .codes
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            errors: recorder.errors,
            first_error: recorder.first_error.clone(),
            body_bytes: recorder.body_bytes,
            latency_us: latency(&recorder.latency),
            start_lag_us: StartLag {
                mean: if lag.count > 0 {
                    lag.sum_micros as f64 / lag.count as f64
                } else {
                    0.0
                },
                max: lag.max_micros,
            },
            histogram: buckets(&recorder.latency),
        }
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        min: h.min(),
        mean: h.mean(),
        stddev: h.stdev(),
        max: h.max(),
        p50: h.value_at_quantile(0.50),
        p75: h.value_at_quantile(0.75),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p99_9: h.value_at_quantile(0.999),
    }
}

/// Upper bounds in microseconds, 1-2-5 per decade from 10 µs to 1 h.
fn bounds() -> impl Iterator<Item = u64> {
    (1..=9u32)
        .flat_map(|exp| [1, 2, 5].map(|m| m * 10u64.pow(exp)))
        .take_while(|b| *b <= 3_600_000_000)
}

/// Buckets from the first to the last one holding a response.
fn buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut counts: Vec<(u64, u64)> = bounds().map(|b| (b, 0)).collect();
    counts.push((u64::MAX, 0));
    for value in h.iter_recorded() {
        let v = value.value_iterated_to();
        if let Some(slot) = counts.iter_mut().find(|(le, _)| v <= *le) {
            slot.1 += value.count_at_value();
        }
    }
    let first = counts.iter().position(|(_, n)| *n > 0).unwrap_or(0);
    let last = counts.iter().rposition(|(_, n)| *n > 0).unwrap_or(0);
    let total = h.len() as f64;
    let mut cumulative = 0;
    counts[first..=last]
        .iter()
        .map(|&(le_us, count)| {
            cumulative += count;
            Bucket {
                le_us,
                count,
                cumulative_percent: 100.0 * cumulative as f64 / total,
            }
        })
        .collect()
}

fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.requested_qps > 0.0 {
            format!("{} qps", self.requested_qps)
        } else {
            "max qps".to_owned()
        };
        let until = match (self.requested_count, self.requested_duration_s) {
            (Some(n), _) => format!("{n} requests"),
            (None, Some(s)) => format!("{s}s"),
            (None, None) => String::new(),
        };
        writeln!(
            f,
            "Target {} via {} ({}): {} connections at {rate} for {until}",
            self.url, self.connect_to, self.protocol, self.connections
        )?;
        writeln!(
            f,
            "Ended after {:.3}s: {} requests, {:.2} qps",
            self.elapsed_s, self.count, self.actual_qps
        )?;
        for (code, n) in &self.codes {
            let share = 100.0 * *n as f64 / self.count.max(1) as f64;
            writeln!(f, "Code {code} : {n} ({share:.1} %)")?;
        }
        let e = &self.errors;
        if e.total() > 0 {
            writeln!(
                f,
                "Errors : {} (connect {}, timeout {}, other {}); first: {}",
                e.total(),
                e.connect,
                e.timeout,
                e.other,
                self.first_error.as_deref().unwrap_or("-")
            )?;
        }
        let l = &self.latency_us;
        if l.count == 0 {
            writeln!(f, "Latency : no responses")?;
        } else {
            writeln!(
                f,
                "Latency (ms) : count {} min {} mean {:.3} +/- {:.3} max {}",
                l.count,
                ms(l.min),
                l.mean / 1000.0,
                l.stddev / 1000.0,
                ms(l.max)
            )?;
            writeln!(f, "# bucket (ms), count, cumulative %")?;
            for b in &self.histogram {
                let le = if b.le_us == u64::MAX {
                    "inf".to_owned()
                } else {
                    format!("<= {}", ms(b.le_us))
                };
                writeln!(f, "{le:>12} {:>10} {:>7.2}", b.count, b.cumulative_percent)?;
            }
            writeln!(
                f,
                "Percentiles (ms) : p50 {} p75 {} p90 {} p99 {} p99.9 {}",
                ms(l.p50),
                ms(l.p75),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9)
            )?;
        }
        if self.requested_qps > 0.0 {
            writeln!(
                f,
                "Start lag (ms) : mean {:.3} max {}",
                self.start_lag_us.mean / 1000.0,
                ms(self.start_lag_us.max)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::super::connection::Answer;
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            url: "http://a/".into(),
            connect_to: "127.0.0.1:80".into(),
            protocol: "HTTP/1.1",
            connections: 2,
            qps: 100.0,
            duration_s: Some(1.0),
            count: None,
        }
    }

    fn recorder(latencies_us: impl IntoIterator<Item = u64>) -> Recorder {
        let mut r = Recorder::new(false);
        for us in latencies_us {
            r.response(
                Duration::from_micros(us),
                Answer {
                    status: StatusCode::OK,
                    body_bytes: 1,
                },
            );
        }
        r
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let report = Report::new(info(), &recorder(1..=1000), 10.0);
        let l = &report.latency_us;
        assert_eq!((l.min, l.p50, l.p75, l.p90), (1, 500, 750, 900));
        assert_eq!((l.p99, l.p99_9, l.max), (990, 999, 1000));
        assert_eq!(report.actual_qps, 100.0);
        assert_eq!(report.codes["200"], 1000);
    }

    #[test]
    fn buckets_cover_first_to_last_and_add_up() {
        let report = Report::new(info(), &recorder([15, 15, 150, 4000]), 1.0);
        let les: Vec<u64> = report.histogram.iter().map(|b| b.le_us).collect();
        assert_eq!(les, [20, 50, 100, 200, 500, 1000, 2000, 5000]);
        let counts: Vec<u64> = report.histogram.iter().map(|b| b.count).collect();
        assert_eq!(counts, [2, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(report.histogram.last().unwrap().cumulative_percent, 100.0);
    }

    #[test]
    fn json_names_are_stable() {
        let report = Report::new(info(), &recorder([100]), 1.0);
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "actual_qps",
            "count",
            "codes",
            "errors",
            "latency_us",
            "histogram",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["latency_us"]["p99.9"], 100);
        assert!(json.get("requested_count").is_none());
        assert!(report.to_string().contains("Code 200 : 1 (100.0 %)"));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let report = Report::new(info(), &Recorder::new(false), 0.0);
        assert_eq!(report.latency_us, Latency::default());
        assert!(report.histogram.is_empty());
        assert_eq!(report.actual_qps, 0.0);
        assert!(report.to_string().contains("Latency : no responses"));
    }
}
