//! One worker: a thread with its own current-thread Tokio runtime and one
//! connection, sending one request at a time on its pace.
//!
//! A thread per connection lets a worker wait for its next slot with the OS's
//! high-resolution sleep (tens of microseconds late) instead of Tokio's
//! millisecond timer wheel, whose rounding would both bunch requests into
//! bursts and add up to a millisecond to every measured latency. Nothing else
//! runs on a worker's runtime, so sleeping between requests blocks no one.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::connection::Connection;
use super::progress::Control;
use super::recorder::Recorder;
use super::schedule::Pace;
use super::target::Target;

/// What a worker needs to run.
pub struct Plan {
    /// The request to send and where.
    pub target: Arc<Target>,
    /// This worker's share of the schedule.
    pub pace: Pace,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Keep every latency (for `--samples-out`).
    pub keep_samples: bool,
    /// Seed of this worker's trace ids.
    pub seed: u64,
    /// Live progress and early stop, when the caller wants them.
    pub control: Option<Arc<Control>>,
}

/// A worker's result.
pub struct Finished {
    /// What it observed.
    pub recorder: Recorder,
    /// When its last request ended.
    pub ended: Instant,
}

/// Runs a worker on the calling thread: opens the connection, says it is
/// ready, waits for the run's start instant, then sends until its pace says
/// stop.
pub fn run(
    runtime: Runtime,
    plan: Plan,
    ready: mpsc::Sender<()>,
    start: mpsc::Receiver<Instant>,
) -> Finished {
    let mut connection = Connection::new(plan.target.connect, plan.target.h2);
    let mut recorder = Recorder::new(plan.keep_samples);
    // Connect before the clock starts; if it fails, the first request retries
    // and counts the error.
    let _ = runtime.block_on(async { tokio::time::timeout(plan.timeout, connection.open()).await });
    let _ = ready.send(());
    // Hang up, so the run can tell when every live worker is ready.
    drop(ready);
    let Ok(start) = start.recv() else {
        return Finished {
            recorder,
            ended: Instant::now(),
        };
    };
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut free_at = start;
    for k in 0.. {
        let Some(due) = plan.pace.next(k, start.elapsed()) else {
            break;
        };
        if plan.control.as_ref().is_some_and(|c| c.stopped()) {
            break;
        }
        let clock = match due {
            None => Instant::now(),
            Some(offset) => {
                let slot = start + offset;
                let now = Instant::now();
                if slot > now {
                    std::thread::sleep(slot - now);
                }
                let sent = Instant::now();
                if free_at <= slot {
                    // Only the generator's own lateness: the connection was free.
                    recorder.started_late(sent.saturating_duration_since(slot));
                }
                slot_clock(slot, free_at, sent)
            }
        };
        let request = plan.target.request(&mut rng);
        let result = runtime.block_on(connection.send(request, plan.timeout));
        let done = Instant::now();
        free_at = done;
        match &result {
            Ok(answer) => recorder.response(done - clock, *answer),
            Err(error) => recorder.error(error),
        }
        if let Some(control) = &plan.control {
            control.record(|window| match &result {
                Ok(answer) => window.response(done - clock, *answer),
                Err(error) => window.error(error),
            });
        }
    }
    Finished {
        recorder,
        ended: free_at,
    }
}

/// When a fixed-rate request's latency clock starts.
///
/// A request still waiting for its connection at its slot (the previous
/// response was late) is timed from the slot: the wait is the server's doing,
/// and leaving it out is the coordinated omission this corrects. A request
/// whose connection was free at its slot is timed from when it was sent: the
/// few microseconds the sleep overshot are the generator's, not the server's.
fn slot_clock(slot: Instant, free_at: Instant, sent: Instant) -> Instant {
    if free_at > slot { slot } else { sent.max(slot) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_connection_is_timed_from_its_slot() {
        let t0 = Instant::now();
        let slot = t0 + Duration::from_millis(10);
        // Previous response came back 5 ms after the slot: charge those 5 ms.
        let free_at = slot + Duration::from_millis(5);
        assert_eq!(slot_clock(slot, free_at, free_at), slot);
    }

    #[test]
    fn an_idle_connection_is_timed_from_when_it_sent() {
        let t0 = Instant::now();
        let slot = t0 + Duration::from_millis(10);
        let sent = slot + Duration::from_micros(60);
        assert_eq!(slot_clock(slot, t0, sent), sent);
    }
}
