//! WAL record framing: `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload`,
//! where `len` is the payload length and the CRC covers `seq` and the
//! payload.
//!
//! A reader that meets a record that is short or fails its CRC does not stop
//! there: it looks for the next offset where an intact record starts (a
//! plausible sequence number, a length that fits, a matching CRC) and goes
//! on from it, noting the damaged stretch it skipped. Damage after which no
//! intact record follows is the file's tail: a torn write when it is a
//! record cut short (or zeros), corruption otherwise.

use std::ops::Range;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// Largest payload a record may carry (a corrupt length must not make the
/// reader allocate gigabytes).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Appends one framed record to `out`.
pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: &'a [u8],
    /// Where its frame lies in the file's bytes.
    pub frame: Range<usize>,
}

/// What the bytes after the last intact record are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A record cut short, or zeros: a write that never completed, so
    /// never acknowledged.
    Torn,
    /// Whole bytes that are not a record: corruption.
    Corrupt,
}

/// Reads records from a WAL file's bytes, in order, skipping damage.
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// The sequence number the file's first record should carry (its name).
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    skipped: Vec<Range<usize>>,
    tail: Option<(usize, Damage)>,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl<'a> Reader<'a> {
    /// A reader over a whole file whose first record's sequence number is
    /// unknown.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            first_seq: None,
            last_seq: None,
            skipped: Vec::new(),
            tail: None,
        }
    }

    /// A reader over a whole file named for `first_seq`: after damage, only
    /// frames whose sequence number can follow are taken as records.
    pub fn starting_at(bytes: &'a [u8], first_seq: u64) -> Self {
        Self {
            first_seq: Some(first_seq),
            ..Self::new(bytes)
        }
    }

    /// Where the intact part ends: the length to keep when the tail is cut
    /// (after iteration).
    pub fn valid_len(&self) -> usize {
        self.tail.map_or(self.bytes.len(), |(at, _)| at)
    }

    /// The damaged stretches between intact records, skipped (after iteration).
    pub fn skipped(&self) -> &[Range<usize>] {
        &self.skipped
    }

    /// What follows the last intact record, if anything (after iteration).
    pub fn tail(&self) -> Option<Damage> {
        self.tail.map(|(_, damage)| damage)
    }

    /// The record framed at `at`, if the bytes there are one. `expect`
    /// bounds its sequence number when resynchronising.
    fn frame_at(&self, at: usize, expect: Option<(u64, u64)>) -> Option<Record<'a>> {
        let rest = &self.bytes[at..];
        if rest.len() < HEADER_LEN {
            return None;
        }
        let len = word(rest, 0) as usize;
        if len > MAX_PAYLOAD || rest.len() - HEADER_LEN < len {
            return None;
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&rest[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        if let Some((low, high)) = expect
            && !(low..=high).contains(&seq)
        {
            return None;
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&seq_bytes);
        hasher.update(payload);
        (hasher.finalize() == word(rest, 4)).then(|| Record {
            seq,
            payload,
            frame: at..at + HEADER_LEN + len,
        })
    }

    /// The next offset after `from` where an intact record starts. The
    /// sequence number must be able to follow the last one read (each
    /// record takes at least [`HEADER_LEN`] bytes), so the CRC is only
    /// computed where one plausibly starts.
    fn resync(&self, from: usize) -> Option<Record<'a>> {
        let low = match (self.last_seq, self.first_seq) {
            (Some(last), _) => last.saturating_add(1),
            (None, Some(first)) => first,
            (None, None) => 0,
        };
        (from..self.bytes.len().saturating_sub(HEADER_LEN - 1)).find_map(|at| {
            let high = low.saturating_add(((self.bytes.len() - at) / HEADER_LEN) as u64);
            self.frame_at(at, Some((low, high)))
        })
    }

    fn classify(rest: &[u8]) -> Damage {
        if rest.iter().all(|b| *b == 0) {
            return Damage::Torn;
        }
        if rest.len() < HEADER_LEN {
            return Damage::Torn;
        }
        let len = word(rest, 0) as usize;
        if len <= MAX_PAYLOAD && rest.len() - HEADER_LEN < len {
            Damage::Torn
        } else {
            Damage::Corrupt
        }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.tail.is_some() || self.offset >= self.bytes.len() {
            return None;
        }
        let record = match self.frame_at(self.offset, None) {
            Some(record) => record,
            None => match self.resync(self.offset + 1) {
                Some(record) => {
                    self.skipped.push(self.offset..record.frame.start);
                    record
                }
                None => {
                    let damage = Self::classify(&self.bytes[self.offset..]);
                    self.tail = Some((self.offset, damage));
                    return None;
                }
            },
        };
        self.offset = record.frame.end;
        self.last_seq = Some(record.seq);
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_records() -> Vec<u8> {
        let mut bytes = Vec::new();
        encode(1, b"first", &mut bytes);
        encode(2, b"", &mut bytes);
        encode(3, b"third record", &mut bytes);
        bytes
    }

    fn seqs(reader: &mut Reader<'_>) -> Vec<u64> {
        reader.by_ref().map(|r| r.seq).collect()
    }

    #[test]
    fn round_trips() {
        let bytes = three_records();
        let mut reader = Reader::new(&bytes);
        let records: Vec<_> = reader
            .by_ref()
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        assert_eq!(
            records,
            vec![
                (1, b"first".to_vec()),
                (2, vec![]),
                (3, b"third record".to_vec())
            ]
        );
        assert_eq!(reader.valid_len(), bytes.len());
        assert_eq!(reader.tail(), None);
        assert!(reader.skipped().is_empty());
    }

    #[test]
    fn a_torn_tail_stops_at_the_last_whole_record() {
        let bytes = three_records();
        for cut in 1..(HEADER_LEN + 12) {
            let torn = &bytes[..bytes.len() - cut];
            let mut reader = Reader::starting_at(torn, 1);
            assert_eq!(seqs(&mut reader), [1, 2], "cut {cut}");
            assert_eq!(reader.tail(), Some(Damage::Torn));
            assert_eq!(reader.valid_len(), bytes.len() - (HEADER_LEN + 12));
        }
        let mut zeros = three_records();
        zeros.extend_from_slice(&[0; 100]);
        let mut reader = Reader::starting_at(&zeros, 1);
        assert_eq!(seqs(&mut reader), [1, 2, 3]);
        assert_eq!(reader.tail(), Some(Damage::Torn), "zeros are a torn write");
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_corruption() {
        let mut bytes = three_records();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut reader = Reader::starting_at(&bytes, 1);
        assert_eq!(seqs(&mut reader), [1, 2]);
        assert_eq!(reader.tail(), Some(Damage::Corrupt));
    }

    #[test]
    fn reading_resynchronises_after_damage_in_the_middle() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in 10..66u64 {
            starts.push(bytes.len());
            encode(
                seq,
                format!("batch {seq} ").repeat(20).as_bytes(),
                &mut bytes,
            );
        }
        // Four bytes flipped inside the second record's payload, then the
        // length of the fifth made absurd.
        for byte in &mut bytes[starts[1] + 40..starts[1] + 44] {
            *byte ^= 0xff;
        }
        bytes[starts[4] + 3] = 0x7f;
        let mut reader = Reader::starting_at(&bytes, 10);
        let read = seqs(&mut reader);
        let expected: Vec<u64> = (10..66).filter(|s| *s != 11 && *s != 14).collect();
        assert_eq!(read, expected);
        assert_eq!(
            reader.skipped(),
            [starts[1]..starts[2], starts[4]..starts[5]]
        );
        assert_eq!(reader.tail(), None);
        assert_eq!(reader.valid_len(), bytes.len());
    }

    #[test]
    fn damage_in_the_first_record_is_skipped_by_the_name() {
        let mut bytes = three_records();
        bytes[9] ^= 0x40; // the first record's sequence number
        let mut reader = Reader::starting_at(&bytes, 1);
        assert_eq!(seqs(&mut reader), [2, 3]);
        assert_eq!(reader.skipped().len(), 1);
    }
}
