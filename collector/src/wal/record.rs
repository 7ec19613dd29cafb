//! WAL record framing: `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload`,
//! where `len` is the payload length and the CRC covers `seq` and the
//! payload. A reader stops at the first record that is short or fails its
//! CRC: everything before it is intact, everything from it on is the tail to
//! cut.

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
}

/// Why reading stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The bytes end inside a record (a torn write).
    Torn,
    /// A record's checksum or length is wrong.
    Corrupt,
}

/// Reads records from a WAL file's bytes, in order.
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    damage: Option<Damage>,
}

impl<'a> Reader<'a> {
    /// A reader over a whole file.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            damage: None,
        }
    }

    /// Where the intact part ends (after iteration: the length to keep).
    pub fn valid_len(&self) -> usize {
        self.offset
    }

    /// Why the last call to `next` returned `None` early, if it did.
    pub fn damage(&self) -> Option<Damage> {
        self.damage
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        let rest = &self.bytes[self.offset..];
        if rest.is_empty() {
            return None;
        }
        if rest.len() < HEADER_LEN {
            self.damage = Some(Damage::Torn);
            return None;
        }
        let word =
            |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = word(0) as usize;
        let crc = word(4);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&rest[8..16]);
        if len > MAX_PAYLOAD {
            self.damage = Some(Damage::Corrupt);
            return None;
        }
        if rest.len() < HEADER_LEN + len {
            self.damage = Some(Damage::Torn);
            return None;
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&seq_bytes);
        hasher.update(payload);
        if hasher.finalize() != crc {
            self.damage = Some(Damage::Corrupt);
            return None;
        }
        self.offset += HEADER_LEN + len;
        Some(Record {
            seq: u64::from_le_bytes(seq_bytes),
            payload,
        })
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
        assert_eq!(reader.damage(), None);
    }

    #[test]
    fn a_torn_tail_stops_at_the_last_whole_record() {
        let bytes = three_records();
        for cut in 1..(HEADER_LEN + 12) {
            let torn = &bytes[..bytes.len() - cut];
            let mut reader = Reader::new(torn);
            assert_eq!(reader.by_ref().count(), 2, "cut {cut}");
            assert_eq!(reader.damage(), Some(Damage::Torn));
            assert_eq!(reader.valid_len(), bytes.len() - (HEADER_LEN + 12));
        }
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let mut bytes = three_records();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.by_ref().count(), 2);
        assert_eq!(reader.damage(), Some(Damage::Corrupt));
    }
}
