//! WAL damage found on start: a corrupt record costs that record only (the
//! reader resynchronises on the next intact frame), the damaged file is kept
//! aside, and records missing with a whole file are reported; every loss is
//! logged at ERROR and counted.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::path::{Path, PathBuf};
use tracemesh_collector::ids::TraceId;
use tracemesh_collector::store::SpanReader;

use crate::harness::{Collector, batch, now_nanos, random_trace_id, runtime, sample};

/// Sends one batch of `spans` spans per trace, in order, each acknowledged.
fn send(collector: &Collector, traces: &[TraceId], spans: usize) {
    let url = collector.grpc_url();
    let batches: Vec<_> = traces
        .iter()
        .map(|t| batch("wal-damage", *t, spans, now_nanos()))
        .collect();
    runtime().block_on(async move {
        let mut client = TraceServiceClient::connect(url).await.unwrap();
        for b in batches {
            client.export(b).await.unwrap();
        }
    });
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    files.sort();
    files
}

fn stored(reader: &SpanReader, traces: &[TraceId]) -> Vec<bool> {
    traces
        .iter()
        .map(|t| reader.trace(*t).unwrap().is_some())
        .collect()
}

#[test]
fn four_flipped_bytes_lose_one_batch_of_56_not_55() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing reaches the index before the kill: the WAL holds every batch.
    let collector = Collector::start(dir.path(), &["--commit-interval", "1h"]);
    let traces: Vec<TraceId> = (0..56).map(|_| random_trace_id()).collect();
    send(&collector, &traces, 20);
    collector.kill9();

    let files = segments(dir.path());
    assert_eq!(files.len(), 1, "one segment holds the 56 records");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let original = bytes.clone();
    // Four bytes in the middle of the first record's payload.
    let first_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let middle = 16 + first_len / 2;
    for byte in &mut bytes[middle..middle + 4] {
        *byte ^= 0xff;
    }
    std::fs::write(&files[0], &bytes).unwrap();

    let restarted = Collector::start(dir.path(), &["--commit-interval", "100ms"]);
    let log = restarted.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("wal records lost")
            && l.contains("records=1")),
        "{log}"
    );
    let metrics = restarted.metrics();
    assert_eq!(
        sample(&metrics, "tracemesh_collector_wal_lost_records_total"),
        1.0
    );
    let reader = SpanReader::open(dir.path()).unwrap();
    let found = stored(&reader, &traces);
    assert!(!found[0], "the damaged record's batch is lost");
    assert_eq!(
        found.iter().filter(|f| **f).count(),
        55,
        "the 55 intact batches after it are recovered"
    );
    // The damaged file is kept aside, byte for byte.
    let aside = dir
        .path()
        .join("wal/damaged")
        .join(files[0].file_name().unwrap());
    let kept = std::fs::read(&aside).unwrap();
    assert_eq!(kept.len(), original.len());
    assert_ne!(kept, original);
    restarted.stop();
}

#[test]
fn a_missing_wal_file_is_reported_as_lost_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.yaml");
    // Small files: every few records start a new one.
    std::fs::write(&config, "wal_segment_size: 4KiB\ncommit_interval: 1h\n").unwrap();
    let data = dir.path().join("data");
    let config_arg = config.display().to_string();
    let collector = Collector::start(&data, &["--config", &config_arg]);
    let traces: Vec<TraceId> = (0..30).map(|_| random_trace_id()).collect();
    send(&collector, &traces, 20);
    collector.kill9();

    let files = segments(&data);
    assert!(files.len() >= 3, "{files:?}");
    let name = |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let gone = &files[1];
    let lost = name(&files[2]) - name(gone);
    std::fs::remove_file(gone).unwrap();

    let restarted = Collector::start(&data, &["--config", &config_arg]);
    let log = restarted.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("wal records lost")
            && l.contains("wal file missing")
            && l.contains(&format!("records={lost}"))),
        "{log}"
    );
    let metrics = restarted.metrics();
    assert_eq!(
        sample(&metrics, "tracemesh_collector_wal_lost_records_total"),
        lost as f64
    );
    restarted.stop();
}
