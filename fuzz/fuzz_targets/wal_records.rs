//! WAL files as recovery reads them after a crash or disk damage: the
//! reader must return only whole records, in order, inside the bytes,
//! and never claim more intact bytes than there are.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracemesh_collector::wal::record::{HEADER_LEN, Reader};

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes name the file's first sequence number.
    let Some((name, bytes)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut reader = Reader::starting_at(bytes, u64::from_le_bytes(*name));
    let mut end = 0;
    for record in reader.by_ref() {
        assert!(record.frame.start >= end && record.frame.end <= bytes.len());
        assert_eq!(record.frame.len(), HEADER_LEN + record.payload.len());
        end = record.frame.end;
    }
    let skipped: usize = reader.skipped().iter().map(|r| r.len()).sum();
    assert!(reader.valid_len() <= bytes.len() && reader.valid_len() >= end);
    assert!(skipped <= reader.valid_len());
});
