//! The write-ahead log: every batch is framed ([`record`]), appended and
//! fsynced before its sender is acknowledged. One thread owns the files and
//! commits in groups: while one fsync runs, the next appends queue up and
//! share the next one.
//!
//! Files are named by their first sequence number; a file is deleted once the
//! index has committed every record in it (the checkpoint). On start,
//! [`recover`] checks every file, cuts a torn or corrupt tail and reports what
//! is left to replay.

pub mod record;

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

/// One WAL file found on start.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// Sequence number of its last intact record (`None` when empty).
    pub last_seq: Option<u64>,
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The files, oldest first, each holding only intact records now.
    pub segments: Vec<Segment>,
    /// The highest sequence number used so far (0 when none): the next
    /// record must be numbered above it.
    pub last_seq: u64,
    /// Records lost to damage or missing files (not already in the index).
    pub lost_records: u64,
}

const SUFFIX: &str = ".wal";

/// Where damaged files are kept, inside the WAL directory.
pub const DAMAGED_DIR: &str = "damaged";

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

/// Sequence numbers expected next and not found: the records in them are
/// lost unless the index already holds them (`checkpoint`).
struct Gaps<'a> {
    metrics: &'a Metrics,
    checkpoint: u64,
    next: Option<u64>,
    lost: u64,
}

impl Gaps<'_> {
    /// Notes that `seq` was read from `file`.
    fn saw(&mut self, file: &Path, seq: u64, cause: &'static str) {
        if let Some(next) = self.next
            && seq > next
        {
            self.missing(file, next, seq - 1, cause);
        }
        self.next = Some(self.next.map_or(seq + 1, |next| next.max(seq + 1)));
    }

    fn missing(&mut self, file: &Path, first: u64, last: u64, cause: &'static str) {
        let first = first.max(self.checkpoint + 1);
        if first <= last {
            let records = last - first + 1;
            self.lost += records;
            crate::events::wal_records_lost(self.metrics, file, first..=last, records, cause);
        }
    }
}

/// Checks every WAL file in `dir` (created if missing) and leaves only
/// intact records in them:
///
/// - a torn tail (a write cut short by a crash, never acknowledged) is cut;
/// - a damaged file is kept aside in [`DAMAGED_DIR`] and replaced by a
///   copy of its intact records, read past the damage;
/// - records missing between intact ones (damage, or a file gone) are
///   logged at ERROR and counted, unless the index already holds them:
///   `checkpoint` is the highest sequence number the index has committed.
pub fn recover(dir: &Path, checkpoint: u64, metrics: &Metrics) -> Result<Recovered, WalError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut recovered = Recovered::default();
    let mut gaps = Gaps {
        metrics,
        checkpoint,
        next: None,
        lost: 0,
    };
    let paths = list_segments(dir)?;
    for (index, path) in paths.iter().enumerate() {
        let first_seq = first_seq_of(path).unwrap_or(0);
        let bytes = std::fs::read(path).map_err(io(path))?;
        // A file whose name is past the next number expected follows a
        // missing one.
        if let Some(next) = gaps.next
            && first_seq > next
        {
            gaps.missing(path, next, first_seq - 1, "wal file missing");
        }
        gaps.next = Some(gaps.next.map_or(first_seq, |next| next.max(first_seq)));
        let mut reader = record::Reader::starting_at(&bytes, first_seq);
        let mut frames = Vec::new();
        let mut last_in_file = None;
        for record in reader.by_ref() {
            gaps.saw(path, record.seq, "wal record damaged");
            frames.push(record.frame);
            last_in_file = Some(record.seq);
        }
        let skipped: usize = reader.skipped().iter().map(|r| r.len()).sum();
        let tail = reader.tail();
        let valid_len = reader.valid_len();
        match tail {
            None if skipped == 0 => {}
            Some(record::Damage::Torn) if skipped == 0 => {
                cut_tail(path, valid_len)?;
                crate::events::wal_tail_cut(metrics, path, valid_len, bytes.len() - valid_len);
            }
            _ => {
                let damaged = skipped + (bytes.len() - valid_len);
                let aside = keep_aside(dir, path, &bytes, &frames)?;
                crate::events::wal_file_damaged(metrics, path, &aside, damaged);
                // Damage at the end of the last file hides how many records
                // it held: at least one.
                if tail == Some(record::Damage::Corrupt) && index + 1 == paths.len() {
                    let next = gaps.next.unwrap_or(first_seq);
                    gaps.missing(path, next, next, "wal record damaged");
                    recovered.last_seq = recovered.last_seq.max(next);
                }
            }
        }
        recovered.last_seq = recovered
            .last_seq
            .max(last_in_file.unwrap_or(0))
            .max(first_seq.saturating_sub(1));
        recovered.segments.push(Segment {
            path: path.clone(),
            last_seq: last_in_file,
        });
    }
    recovered.lost_records = gaps.lost;
    Ok(recovered)
}

fn cut_tail(path: &Path, keep: usize) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    file.set_len(keep as u64).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Keeps the damaged file's bytes in [`DAMAGED_DIR`], then replaces it by
/// a copy of its intact records (written aside, synced, renamed over it):
/// a crash at any point leaves either the old file or the new one in
/// place. Returns where the damaged bytes are.
fn keep_aside(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    frames: &[std::ops::Range<usize>],
) -> Result<PathBuf, WalError> {
    let damaged_dir = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&damaged_dir).map_err(io(&damaged_dir))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut aside = damaged_dir.join(name.as_ref());
    let mut n = 1;
    while aside.try_exists().map_err(io(&aside))? {
        aside = damaged_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::write(&aside, bytes).map_err(io(&aside))?;
    File::open(&aside)
        .and_then(|f| f.sync_all())
        .map_err(io(&aside))?;
    sync_dir(&damaged_dir)?;
    let rewrite = path.with_extension("wal.rewrite");
    let mut intact = Vec::with_capacity(frames.iter().map(|f| f.len()).sum());
    for frame in frames {
        intact.extend_from_slice(&bytes[frame.clone()]);
    }
    std::fs::write(&rewrite, &intact).map_err(io(&rewrite))?;
    File::open(&rewrite)
        .and_then(|f| f.sync_all())
        .map_err(io(&rewrite))?;
    std::fs::rename(&rewrite, path).map_err(io(path))?;
    sync_dir(dir)?;
    Ok(aside)
}

/// Calls `visit` with every intact record of a recovered file.
pub fn replay(segment: &Segment, mut visit: impl FnMut(u64, &[u8])) -> Result<(), WalError> {
    let bytes = std::fs::read(&segment.path).map_err(io(&segment.path))?;
    for record in record::Reader::new(&bytes) {
        visit(record.seq, record.payload);
    }
    Ok(())
}

/// Deletes files every record of which is at or below `checkpoint`.
pub fn delete_covered(segments: &[Segment], checkpoint: u64) -> Result<usize, WalError> {
    let mut deleted = 0;
    for segment in segments {
        if segment.last_seq.is_none_or(|seq| seq <= checkpoint) {
            std::fs::remove_file(&segment.path).map_err(io(&segment.path))?;
            deleted += 1;
        }
    }
    Ok(deleted)
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

    #[test]
    fn recovery_cuts_a_truncated_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        record::encode(7, b"kept", &mut bytes);
        record::encode(8, b"torn by a crash", &mut bytes);
        let path = dir.path().join(segment_name(7));
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let metrics = metrics();
        let recovered = recover(dir.path(), 0, &metrics).unwrap();
        assert_eq!(recovered.last_seq, 7);
        assert_eq!(
            metrics.wal_cut_bytes.get(),
            (record::HEADER_LEN + 15 - 5) as u64
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (record::HEADER_LEN + 4) as u64
        );
        let mut seen = Vec::new();
        replay(&recovered.segments[0], |seq, payload| {
            seen.push((seq, payload.to_vec()))
        })
        .unwrap();
        assert_eq!(seen, vec![(7, b"kept".to_vec())]);
        assert_eq!(delete_covered(&recovered.segments, 7).unwrap(), 1);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        assert_eq!(
            metrics.wal_lost_records.get(),
            0,
            "a torn write was never acknowledged"
        );
    }

    fn write_segment(dir: &Path, seqs: std::ops::RangeInclusive<u64>) -> (PathBuf, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in seqs.clone() {
            starts.push(bytes.len());
            record::encode(
                seq,
                format!("batch {seq}").repeat(30).as_bytes(),
                &mut bytes,
            );
        }
        let path = dir.join(segment_name(*seqs.start()));
        std::fs::write(&path, &bytes).unwrap();
        (path, starts)
    }

    fn replayed(recovered: &Recovered) -> Vec<u64> {
        let mut seqs = Vec::new();
        for segment in &recovered.segments {
            replay(segment, |seq, _| seqs.push(seq)).unwrap();
        }
        seqs
    }

    #[test]
    fn damage_mid_file_loses_only_the_damaged_record_and_keeps_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = write_segment(dir.path(), 1..=56);
        let original = std::fs::read(&path).unwrap();
        let mut damaged = original.clone();
        for byte in &mut damaged[starts[1] + 100..starts[1] + 104] {
            *byte ^= 0xa5;
        }
        std::fs::write(&path, &damaged).unwrap();
        let metrics = metrics();
        let recovered = recover(dir.path(), 0, &metrics).unwrap();
        let expected: Vec<u64> = (1..=56).filter(|s| *s != 2).collect();
        assert_eq!(
            replayed(&recovered),
            expected,
            "55 intact records of 56 kept"
        );
        assert_eq!(recovered.lost_records, 1);
        assert_eq!(metrics.wal_lost_records.get(), 1);
        assert_eq!(recovered.last_seq, 56);
        let aside = dir.path().join(DAMAGED_DIR).join(segment_name(1));
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            damaged,
            "the damaged bytes are kept"
        );
        // Recovering again (a crash before the index covered the file)
        // finds a clean file: nothing more is cut or kept aside.
        let again = recover(dir.path(), 0, &self::metrics()).unwrap();
        assert_eq!(replayed(&again), expected);
        assert_eq!(
            std::fs::read_dir(dir.path().join(DAMAGED_DIR))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn a_missing_file_is_a_gap_unless_the_index_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=10);
        let (missing, _) = write_segment(dir.path(), 11..=20);
        write_segment(dir.path(), 21..=30);
        std::fs::remove_file(missing).unwrap();
        let metrics = metrics();
        let recovered = recover(dir.path(), 0, &metrics).unwrap();
        assert_eq!(recovered.lost_records, 10);
        assert_eq!(replayed(&recovered).len(), 20);
        let metrics = self::metrics();
        let recovered = recover(dir.path(), 15, &metrics).unwrap();
        assert_eq!(recovered.lost_records, 5, "11..=15 are in the index");
    }

    #[test]
    fn corruption_at_the_end_of_the_last_file_counts_one_lost_record() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), 5..=9);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let recovered = recover(dir.path(), 0, &metrics()).unwrap();
        assert_eq!(replayed(&recovered), [5, 6, 7, 8]);
        assert_eq!(recovered.lost_records, 1);
        assert_eq!(recovered.last_seq, 9, "the lost number is not reused");
    }
}
