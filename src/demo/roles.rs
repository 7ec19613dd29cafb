//! Runs a role that blocks its thread (an agent, the collector) on a thread
//! of its own until told to stop, and hands back the addresses it bound.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::watch;

/// How long a role may take to bind its listeners on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A future that completes when the role should stop.
pub type StopSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a role calls once it is ready.
pub type Ready<A> = Box<dyn FnOnce(&A) + Send>;

/// A role running on its thread.
pub struct Running<A> {
    /// Its name, for errors.
    pub name: String,
    /// What it bound.
    pub addresses: A,
    stop: watch::Sender<bool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Starts `run` on a new thread named `name` and waits until it reports
/// ready (or fails first).
pub fn spawn<A, F>(name: &str, run: F) -> anyhow::Result<Running<A>>
where
    A: Clone + Send + 'static,
    F: FnOnce(StopSignal, Ready<A>) -> anyhow::Result<()> + Send + 'static,
{
    let (stop, mut stopped) = watch::channel(false);
    let signal: StopSignal = Box::pin(async move {
        // A dropped sender also means stop.
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let ready: Ready<A> = Box::new(move |addresses: &A| {
        let _ = ready_tx.send(addresses.clone());
    });
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(signal, ready))
        .with_context(|| format!("start {name}"))?;
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(addresses) => Ok(Running {
            name: name.to_owned(),
            addresses,
            stop,
            thread,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // It returned before it was ready: its error says why.
            let result = thread
                .join()
                .map_err(|_| anyhow!("{name} panicked while starting"))?;
            Err(result
                .err()
                .unwrap_or_else(|| anyhow!("{name} stopped before it was ready"))
                .context(name.to_owned()))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = stop.send(true);
            Err(anyhow!("{name} not ready after {READY_TIMEOUT:?}"))
        }
    }
}

impl<A> Running<A> {
    /// Tells the role to stop and waits until it has (drained, flushed).
    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .map_err(|_| anyhow!("{} panicked", self.name))?
            .with_context(|| self.name.clone())
    }
}
