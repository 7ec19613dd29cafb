//! Telemetry work yields to proxied requests: the thread that sends the
//! workers' encoded span batches runs at the lowest CPU priority, so an
//! export never holds a core that a worker with a request in hand is waiting
//! for. Under saturation the span queue fills and spans are dropped and
//! counted, never requests slowed.

use std::cell::Cell;

/// The nice value of telemetry threads: the lowest priority short of
/// `SCHED_IDLE`, which could starve exports entirely on a busy node.
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: i32 = 19;

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
