//! The write-ahead log: every batch is framed ([`record`]), appended and
//! fsynced before its sender is acknowledged. One thread owns the files and
//! commits in groups: while one fsync runs, the next appends queue up and
//! share the next one.
//!
//! Files are named by their first sequence number; a file is deleted once the
//! index has committed every record in it (the checkpoint). On start,
//! [`recover`] checks every file: it cuts a torn tail, reads past damage,
//! keeps damaged files aside and reports what is left to replay and what
//! was lost.

pub mod record;
mod recover;

pub use recover::{DAMAGED_DIR, Recovered, Segment, delete_covered, recover, replay};

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// A WAL failure. Disk errors refuse the batch: nothing is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading, writing or syncing a file failed.
    #[error("wal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread has stopped (shutting down).
    #[error("wal writer stopped")]
    Stopped,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

const SUFFIX: &str = ".wal";

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

fn first_seq_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if first_seq_of(&path).is_some() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

struct Append<T> {
    payload: bytes::Bytes,
    item: T,
    ack: oneshot::Sender<Result<u64, WalError>>,
}

/// The sending side of the WAL: cheap to clone, one per receiver.
pub struct WalHandle<T> {
    tx: mpsc::Sender<Append<T>>,
}

impl<T> Clone for WalHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> WalHandle<T> {
    /// Appends `payload` durably and returns its sequence number; `item`
    /// is handed on (with that number) to the consumer once it is durable.
    pub async fn append(&self, payload: bytes::Bytes, item: T) -> Result<u64, WalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Append { payload, item, ack })
            .map_err(|_| WalError::Stopped)?;
        done.await.map_err(|_| WalError::Stopped)?
    }
}

/// Settings of the writer thread.
pub struct WriterOptions {
    /// The WAL directory.
    pub dir: PathBuf,
    /// The first sequence number to use.
    pub next_seq: u64,
    /// A file is closed past this many bytes.
    pub segment_size: u64,
    /// Highest sequence number the index has committed; files at or below
    /// it are deleted.
    pub checkpoint: Arc<AtomicU64>,
}

struct Writer<T> {
    options: WriterOptions,
    metrics: Metrics,
    file: File,
    path: PathBuf,
    len: u64,
    first_seq: u64,
    closed: VecDeque<(PathBuf, u64)>,
    sink: mpsc::Sender<(u64, T)>,
}

/// Starts the writer thread. Durable items are sent, in order, to `sink`.
/// The thread ends when every [`WalHandle`] is dropped.
pub fn start<T: Send + 'static>(
    options: WriterOptions,
    metrics: Metrics,
    sink: mpsc::Sender<(u64, T)>,
) -> Result<(WalHandle<T>, std::thread::JoinHandle<()>), WalError> {
    let (path, file) = create_segment(&options.dir, options.next_seq)?;
    let first_seq = options.next_seq;
    let writer = Writer {
        options,
        metrics,
        file,
        path,
        len: 0,
        first_seq,
        closed: VecDeque::new(),
        sink,
    };
    writer
        .metrics
        .wal_segments
        .set(list_segments(&writer.options.dir)?.len() as i64);
    let (tx, rx) = mpsc::channel::<Append<T>>();
    let thread = std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(io(Path::new("wal-writer")))?;
    Ok((WalHandle { tx }, thread))
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), WalError> {
    let path = dir.join(segment_name(first_seq));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    sync_dir(dir)?;
    Ok((path, file))
}

/// Most records grouped into one write and fsync.
const MAX_GROUP: usize = 1024;

impl<T> Writer<T> {
    fn run(mut self, rx: mpsc::Receiver<Append<T>>) {
        let mut group = Vec::new();
        let mut buffer = Vec::new();
        while let Ok(first) = rx.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group, &mut buffer);
            self.delete_checkpointed();
        }
        tracing::debug!("wal writer stopped");
    }

    fn commit_group(&mut self, group: &mut Vec<Append<T>>, buffer: &mut Vec<u8>) {
        buffer.clear();
        let first = self.options.next_seq;
        for (i, append) in group.iter().enumerate() {
            record::encode(first + i as u64, &append.payload, buffer);
        }
        let started = Instant::now();
        match self.write_durably(buffer) {
            Ok(()) => {
                let count = group.len() as u64;
                self.metrics
                    .wal_fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.wal_bytes.inc_by(buffer.len() as u64);
                self.metrics.wal_records.inc_by(count);
                for (i, append) in group.drain(..).enumerate() {
                    let seq = first + i as u64;
                    // The consumer only stops at shutdown, after every handle is gone.
                    let _ = self.sink.send((seq, append.item));
                    let _ = append.ack.send(Ok(seq));
                }
                self.options.next_seq = first + count;
                if self.len >= self.options.segment_size {
                    self.rotate();
                }
            }
            Err(error) => {
                tracing::error!(%error, records = group.len(), "wal append failed, batches refused");
                for append in group.drain(..) {
                    let _ = append.ack.send(Err(WalError::Io {
                        path: self.path.clone(),
                        source: std::io::Error::other(error.to_string()),
                    }));
                }
            }
        }
    }

    /// Writes and fsyncs; on failure, cuts the file back so that a later
    /// append does not follow a half-written record.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_err()
                {
                    self.rotate();
                }
                Err(WalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn rotate(&mut self) {
        match create_segment(&self.options.dir, self.options.next_seq) {
            Ok((path, file)) => {
                let last = self.options.next_seq.saturating_sub(1);
                let old = std::mem::replace(&mut self.path, path);
                self.file = file;
                self.len = 0;
                if self.options.next_seq > self.first_seq {
                    self.closed.push_back((old, last));
                } else {
                    let _ = std::fs::remove_file(&old);
                }
                self.first_seq = self.options.next_seq;
                self.metrics.wal_segments.inc();
            }
            Err(error) => {
                tracing::error!(%error, "wal rotation failed, appending to the current file")
            }
        }
    }

    fn delete_checkpointed(&mut self) {
        let checkpoint = self.options.checkpoint.load(Ordering::Acquire);
        while let Some((path, last)) = self.closed.front() {
            if *last > checkpoint {
                break;
            }
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!(%error, file = %path.display(), "wal file not deleted");
            }
            self.metrics.wal_segments.dec();
            self.closed.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_durable_in_order_and_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, durable) = mpsc::channel();
        let checkpoint = Arc::new(AtomicU64::new(0));
        let options = WriterOptions {
            dir: dir.path().to_owned(),
            next_seq: 1,
            segment_size: 256,
            checkpoint,
        };
        let (handle, thread) = start(options, metrics(), sink).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                handle
                    .append(format!("batch {i}").into_bytes().into(), i)
                    .await
                    .unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
        drop(handle);
        thread.join().unwrap();
        let forwarded: Vec<u64> = durable.iter().map(|(seq, _)| seq).collect();
        assert_eq!(
            forwarded,
            (1..=50).collect::<Vec<u64>>(),
            "forwarded in sequence order"
        );

        let recovered = recover(dir.path(), 0, &metrics()).unwrap();
        assert!(recovered.segments.len() > 1, "small segments rotate");
        assert_eq!(recovered.last_seq, 50);
        let mut replayed = Vec::new();
        for segment in &recovered.segments {
            replay(segment, |seq, payload| {
                replayed.push((seq, String::from_utf8(payload.to_vec()).unwrap()))
            })
            .unwrap();
        }
        assert_eq!(replayed.len(), 50);
        assert!(replayed.iter().any(|(_, p)| p == "batch 49"));
    }
}
