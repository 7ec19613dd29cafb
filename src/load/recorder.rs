//! What a worker observed: latencies in an HDR histogram (microseconds,
//! three significant digits), response codes, errors by kind. One recorder
//! per worker thread, merged once at the end, so recording takes no lock.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::connection::{Answer, RequestError};

/// Highest latency told apart, in microseconds (one hour); longer ones
/// are recorded as this.
const MAX_MICROS: u64 = 3_600_000_000;

/// Requests that got no response, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// TCP connect or HTTP/2 handshake failed.
    pub connect: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// Connection broken or invalid HTTP mid-request.
    pub other: u64,
}

impl ErrorCounts {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.other
    }
}

/// How late requests started against their slot on a fixed-rate schedule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Sum of lags, in microseconds.
    pub sum_micros: u64,
    /// Largest lag, in microseconds.
    pub max_micros: u64,
    /// Requests counted.
    pub count: u64,
}

/// One worker's observations.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of every request that got a response, in microseconds.
    pub latency: Histogram<u64>,
    /// Responses by status code.
    pub codes: BTreeMap<u16, u64>,
    /// Requests without a response.
    pub errors: ErrorCounts,
    /// The first error seen, as an example for the report.
    pub first_error: Option<String>,
    /// Response body bytes read.
    pub body_bytes: u64,
    /// Start lag at a fixed rate.
    pub lag: Lag,
    samples: Option<Vec<u64>>,
}

impl Recorder {
    /// An empty recorder; `keep_samples` also keeps every latency as recorded.
    pub fn new(keep_samples: bool) -> Self {
        let latency = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Self {
            latency,
            codes: BTreeMap::new(),
            errors: ErrorCounts::default(),
            first_error: None,
            body_bytes: 0,
            lag: Lag::default(),
            samples: keep_samples.then(Vec::new),
        }
    }

    /// A response arrived `latency` after the request's clock started.
    pub fn response(&mut self, latency: Duration, answer: Answer) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_MICROS);
        self.latency.saturating_record(micros);
        if let Some(samples) = &mut self.samples {
            samples.push(micros);
        }
        *self.codes.entry(answer.status.as_u16()).or_default() += 1;
        self.body_bytes += answer.body_bytes;
    }

    /// A request failed.
    pub fn error(&mut self, error: &RequestError) {
        match error {
            RequestError::Connect { .. } => self.errors.connect += 1,
            RequestError::Timeout(_) => self.errors.timeout += 1,
            RequestError::Http(_) => self.errors.other += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(error_chain(error));
        }
    }

    /// A fixed-rate request started `lag` after its slot.
    pub fn started_late(&mut self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag.sum_micros = self.lag.sum_micros.saturating_add(micros);
        self.lag.max_micros = self.lag.max_micros.max(micros);
        self.lag.count += 1;
    }

    /// Requests sent: responses plus errors.
    pub fn requests(&self) -> u64 {
        self.latency.len() + self.errors.total()
    }

    /// Every recorded latency in microseconds, when kept.
    pub fn samples(&self) -> Option<&[u64]> {
        self.samples.as_deref()
    }

    /// Adds another worker's observations to these.
    pub fn merge(&mut self, other: Recorder) {
        self.latency
            .add(&other.latency)
            .expect("recorders share histogram bounds");
        for (code, count) in other.codes {
            *self.codes.entry(code).or_default() += count;
        }
        self.errors.connect += other.errors.connect;
        self.errors.timeout += other.errors.timeout;
        self.errors.other += other.errors.other;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.body_bytes += other.body_bytes;
        self.lag.sum_micros = self.lag.sum_micros.saturating_add(other.lag.sum_micros);
        self.lag.max_micros = self.lag.max_micros.max(other.lag.max_micros);
        self.lag.count += other.lag.count;
        if let (Some(mine), Some(theirs)) = (&mut self.samples, other.samples) {
            mine.extend(theirs);
        }
    }
}

/// An error and its causes (`http2 error: connection error: ...`): hyper's
/// own message alone rarely says what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn ok(status: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body_bytes: 10,
        }
    }

    #[test]
    fn merging_adds_everything_up() {
        let mut a = Recorder::new(true);
        let mut b = Recorder::new(true);
        a.response(Duration::from_micros(100), ok(200));
        b.response(Duration::from_micros(300), ok(200));
        b.response(Duration::from_millis(2), ok(503));
        b.error(&RequestError::Timeout(Duration::from_secs(1)));
        b.started_late(Duration::from_micros(40));
        a.merge(b);
        assert_eq!(a.requests(), 4);
        assert_eq!(a.codes, BTreeMap::from([(200, 2), (503, 1)]));
        assert_eq!(a.errors.timeout, 1);
        assert_eq!(a.body_bytes, 30);
        assert_eq!(a.samples(), Some(&[100, 300, 2000][..]));
        assert_eq!(a.first_error.as_deref(), Some("timed out after 1s"));
        assert_eq!(a.lag.max_micros, 40);
    }

    #[test]
    fn absurd_latencies_saturate_instead_of_failing() {
        let mut r = Recorder::new(false);
        r.response(Duration::from_secs(100_000), ok(200));
        assert_eq!(r.latency.len(), 1);
        assert!(r.latency.max() >= MAX_MICROS);
        assert!(r.samples().is_none());
    }
}
