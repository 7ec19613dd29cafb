//! `tracemesh load`: a Fortio-style HTTP load generator, so a mesh can be
//! driven and measured with the same binary that runs it (`tracemesh load
//! -c 8 --qps 1000 -t 30s URL`).
//!
//! Each connection is a worker thread ([`worker`]) pacing itself on a shared
//! schedule ([`schedule`]); latencies go to per-worker HDR histograms
//! ([`recorder`]) merged into one [`report::Report`] at the end.

pub mod args;
mod connection;
mod progress;
mod recorder;
pub mod report;
mod schedule;
mod target;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

pub use args::LoadArgs;
pub use progress::{Control, Window};
use recorder::Recorder;
use report::{Report, RunInfo};
use schedule::{Limit, Pace};
use target::{Target, TargetError};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The flags do not describe a request.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A worker's thread or runtime could not start.
    #[error("start worker: {0}")]
    Worker(std::io::Error),
    /// A worker thread panicked (a bug).
    #[error("a worker thread panicked")]
    WorkerPanicked,
    /// `--samples-out` could not be written.
    #[error("write {path}: {source}")]
    Samples {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the load the flags describe and returns its report.
pub fn run(args: &LoadArgs) -> Result<Report, LoadError> {
    let target = Arc::new(Target::from_args(args)?);
    let info = run_info(args, &target);
    eprintln!(
        "tracemesh load: {} via {} ({}), {} connections, {} for {}",
        info.url,
        info.connect_to,
        info.protocol,
        info.connections,
        if args.qps > 0.0 {
            format!("{} qps", args.qps)
        } else {
            "max qps".to_owned()
        },
        args.requests.map_or_else(
            || format!("{:?}", args.duration),
            |n| format!("{n} requests")
        ),
    );
    drive(args, target, info, None)
}

/// Runs the load the flags describe, quietly, until its duration or count
/// is reached or `control` says stop; `control` also sees every request as
/// it ends. For callers that drive load as a part of something else (the
/// demo).
pub fn run_with(args: &LoadArgs, control: Arc<Control>) -> Result<Report, LoadError> {
    let target = Arc::new(Target::from_args(args)?);
    let info = run_info(args, &target);
    drive(args, target, info, Some(control))
}

fn run_info(args: &LoadArgs, target: &Target) -> RunInfo {
    RunInfo {
        url: target.url.to_string(),
        connect_to: target.connect.to_string(),
        protocol: target.protocol(),
        connections: args.connections,
        qps: args.qps,
        duration_s: args
            .requests
            .is_none()
            .then_some(args.duration.as_secs_f64()),
        count: args.requests,
    }
}

fn drive(
    args: &LoadArgs,
    target: Arc<Target>,
    info: RunInfo,
    control: Option<Arc<Control>>,
) -> Result<Report, LoadError> {
    let limit = match args.requests {
        Some(n) => Limit::Count(n),
        None => Limit::Until(args.duration),
    };
    let connections = args.connections;

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut starts = Vec::new();
    let mut threads = Vec::new();
    let seed = fastrand::u64(..);
    for (index, pace) in Pace::for_workers(args.qps, connections.into(), limit)
        .into_iter()
        .enumerate()
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LoadError::Worker)?;
        let plan = worker::Plan {
            target: target.clone(),
            pace,
            timeout: args.timeout,
            keep_samples: args.samples_out.is_some(),
            seed: seed.wrapping_add(index as u64),
            control: control.clone(),
        };
        let (start_tx, start_rx) = mpsc::channel();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("load-{index}"))
            .spawn(move || worker::run(runtime, plan, ready, start_rx))
            .map_err(LoadError::Worker)?;
        starts.push(start_tx);
        threads.push(thread);
    }
    drop(ready_tx);
    // Every connection is open (or has failed) before the clock starts.
    for _ in 0..threads.len() {
        if ready_rx.recv().is_err() {
            break;
        }
    }
    let start = Instant::now();
    for tx in starts {
        let _ = tx.send(start);
    }
    let mut merged = Recorder::new(args.samples_out.is_some());
    let mut ended = start;
    for thread in threads {
        let finished = thread.join().map_err(|_| LoadError::WorkerPanicked)?;
        merged.merge(finished.recorder);
        ended = ended.max(finished.ended);
    }
    let mut elapsed = ended - start;
    let stopped_early = control.as_ref().is_some_and(|c| c.stopped());
    if let (Limit::Until(duration), false) = (limit, stopped_early) {
        // A timed run lasted at least its duration even if the last request
        // of the schedule ended early.
        elapsed = elapsed.max(duration);
    }
    if let (Some(path), Some(samples)) = (&args.samples_out, merged.samples()) {
        write_samples(path, samples).map_err(|source| LoadError::Samples {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Report::new(info, &merged, elapsed.as_secs_f64()))
}

fn write_samples(path: &PathBuf, samples: &[u64]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for micros in samples {
        writeln!(out, "{micros}")?;
    }
    out.flush()
}
