//! Start-up: checking every WAL file, leaving only intact records in
//! them (see [`recover`]), replaying them, and deleting what the index
//! already holds.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::{WalError, first_seq_of, io, list_segments, record, sync_dir};
use crate::metrics::Metrics;

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

/// Where damaged files are kept, inside the WAL directory.
pub const DAMAGED_DIR: &str = "damaged";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment_name;

    fn metrics() -> Metrics {
        Metrics::new().unwrap()
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
