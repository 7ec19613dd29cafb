//! A run's progress while it runs, and a way to end it early: a caller that
//! drives load for as long as it likes (the demo, until Ctrl-C) prints
//! requests/s, p99 and errors per interval from here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::recorder::Recorder;

/// Shared by the caller and every worker of one run.
pub struct Control {
    stop: AtomicBool,
    window: Mutex<Recorder>,
}

/// What happened since the previous [`Control::take_window`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Requests that ended (responses plus errors).
    pub requests: u64,
    /// Requests that failed: no response, or a 5xx (Istio's success rate
    /// counts everything else as success).
    pub failed: u64,
    /// Requests that did not get a 2xx: no response, or any other status
    /// (a rate limit's 429 counts here, not in `failed`).
    pub non_2xx: u64,
    /// Median latency of the responses, microseconds (0 without responses).
    pub p50_us: u64,
    /// 99th percentile latency of the responses, microseconds.
    pub p99_us: u64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            stop: AtomicBool::new(false),
            window: Mutex::new(Recorder::new(false)),
        }
    }
}

impl Control {
    /// Asks every worker to stop before its next request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Adds one request's outcome to the current window.
    pub(super) fn record(&self, update: impl FnOnce(&mut Recorder)) {
        // A worker that panicked mid-update leaves counts that are still counts.
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut window);
    }

    /// The window since the last call, and a fresh one started.
    pub fn take_window(&self) -> Window {
        let taken = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *window, Recorder::new(false))
        };
        let server_errors: u64 = taken.codes.range(500..).map(|(_, n)| n).sum();
        let not_2xx: u64 = taken
            .codes
            .iter()
            .filter(|(code, _)| !(200..300).contains(*code))
            .map(|(_, n)| n)
            .sum();
        let latency = &taken.latency;
        let quantile = |q| {
            if latency.is_empty() {
                0
            } else {
                latency.value_at_quantile(q)
            }
        };
        Window {
            requests: taken.requests(),
            failed: taken.errors.total() + server_errors,
            non_2xx: taken.errors.total() + not_2xx,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::load::connection::{Answer, RequestError};

    #[test]
    fn a_window_counts_failures_and_starts_over() {
        let control = Control::default();
        for (ms, status) in [(1, 200), (2, 200), (3, 429), (50, 503)] {
            let answer = Answer {
                status: StatusCode::from_u16(status).unwrap(),
                body_bytes: 0,
            };
            control.record(|w| w.response(Duration::from_millis(ms), answer));
        }
        control.record(|w| w.error(&RequestError::Timeout(Duration::from_secs(1))));
        let window = control.take_window();
        assert_eq!(window.requests, 5);
        assert_eq!(window.failed, 2);
        assert_eq!(window.non_2xx, 3, "the 429 too");
        assert!((49_000..=51_000).contains(&window.p99_us), "{window:?}");
        assert_eq!(control.take_window(), Window::default());
        assert!(!control.stopped());
        control.stop();
        assert!(control.stopped());
    }
}
