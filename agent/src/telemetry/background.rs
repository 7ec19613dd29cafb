//! Telemetry work gives way to proxied requests without being starved by
//! them: the thread that sends the workers' encoded span batches runs at a
//! lower CPU priority than the workers (nice 5), so a worker with requests
//! in hand is rarely preempted by an export, while the export thread still
//! gets its share of a core the workers saturate.
//!
//! Measured on one core saturated by a worker (`bench/agent/run.sh`'s
//! pinning): an export costs about 1.7 µs of CPU per span, a few percent of
//! a core at the worker's saturation rate. At nice 19 (weight 15 against the
//! worker's 1024, about 1.5% of the core) the export thread was starved and
//! 6% of the spans were dropped; at nice 10 (about 10%) and nice 0 none
//! were. Nice 5 (weight 335, about a quarter of the core when both want it)
//! leaves room for several times that rate.

use std::cell::Cell;

/// The nice value of telemetry threads: below the workers' 0, well above
/// the 19 that starved exports at saturation (see the module's note).
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: i32 = 5;

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's CPU priority, once per thread. Called at the
/// start of the span export thread.
pub fn lower_current_thread() {
    if LOWERED.with(|lowered| lowered.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value is per thread: this leaves the workers be.
        let tid = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
            tracing::debug!(%error, "cannot lower the span export thread's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("own nice value")
    }

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = own_nice();
        let lowered = std::thread::spawn(|| {
            lower_current_thread();
            lower_current_thread();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, BACKGROUND_NICE);
        assert_eq!(own_nice(), before);
    }
}
