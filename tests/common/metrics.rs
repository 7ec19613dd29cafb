//! Prometheus text, parsed (which checks the format) and queried by labels.

use prometheus_parse::{Sample, Scrape as Parsed, Value};

/// A parsed scrape.
pub struct Scrape {
    samples: Vec<Sample>,
    /// The raw text.
    pub text: String,
}

impl Scrape {
    /// Parses `text`; panics when it is not valid exposition format.
    pub fn parse(text: &str) -> Scrape {
        for line in text.lines() {
            let ok = line.is_empty()
                || line.starts_with("# HELP ")
                || line.starts_with("# TYPE ")
                || line.split_whitespace().count() >= 2;
            assert!(ok, "bad exposition line: {line:?}");
        }
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = Parsed::parse(lines).expect("valid Prometheus text");
        Scrape {
            samples: parsed.samples,
            text: text.to_owned(),
        }
    }

    /// Sum of the counter/gauge samples of `metric` whose labels include `labels`.
    pub fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(metric, labels)
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// Samples of `metric` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// Histogram sample count for `metric` with `labels`.
    pub fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(metric, labels)
            .map(|s| match &s.value {
                Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count as u64).max().unwrap_or(0)
                }
                _ => 0,
            })
            .sum()
    }
}
