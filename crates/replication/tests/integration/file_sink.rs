//! The JSON-lines file sink: idempotent across reopen, torn and garbled
//! tails cut, rotation by size.

use bytes::Bytes;
use omnirelay_replication::{
    Encoding, EventKind, FileSink, FileSinkOptions, OwnedRecord, RecordHeader, Sink, SinkExt,
    StreamId,
};

use crate::support::fixed_clock;

fn line(sequence: u64) -> OwnedRecord {
    let header = RecordHeader {
        sequence,
        timestamp: fixed_clock(),
        kind: EventKind {
            code: 1,
            name: "Enqueue",
        },
        peer: None,
    };
    let json = format!(
        r#"{{"sequenceNumber":{sequence},"eventType":"Enqueue","note":"{}"}}"#,
        "x".repeat(20)
    );
    OwnedRecord::new(
        StreamId::default(),
        header,
        Encoding::JSON_V1,
        Bytes::from(json),
    )
}

fn sequences_in(dir: &std::path::Path) -> Vec<u64> {
    let sink = FileSink::new(FileSinkOptions::new(dir));
    let mut out = Vec::new();
    for file in sink.files(&StreamId::default()).unwrap() {
        for text in std::fs::read_to_string(file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            out.push(v["sequenceNumber"].as_u64().unwrap());
        }
    }
    out
}

#[tokio::test]
async fn writes_lines_and_ignores_what_it_already_has_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    sink.apply_owned(&(1..=5).map(line).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(sink);
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(5)
    );
    sink.apply_owned(&(3..=8).map(line).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(sequences_in(dir.path()), (1..=8).collect::<Vec<_>>());
    let files = sink.files(&StreamId::default()).unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .to_string_lossy()
            .ends_with("default-00000000000000000001.jsonl")
    );
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    sink.apply_owned(&(1..=4).map(line).collect::<Vec<_>>())
        .await
        .unwrap();
    let file = sink.files(&StreamId::default()).unwrap().pop().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    let recovery = sink.recovery(&StreamId::default()).await.unwrap();
    assert_eq!((recovery.last_sequence, recovery.cut_lines), (Some(3), 1));
    assert!(recovery.cut_bytes > 0);
    sink.apply_owned(&(4..=5).map(line).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(sequences_in(dir.path()), (1..=5).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_garbled_last_line_is_cut_even_with_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    sink.apply_owned(&(1..=4).map(line).collect::<Vec<_>>())
        .await
        .unwrap();
    let file = sink.files(&StreamId::default()).unwrap().pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len - 30..len - 1] {
        *b = b'#';
    }
    std::fs::write(&file, &bytes).unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        sink.recovery(&StreamId::default()).await.unwrap().cut_lines,
        1
    );
    assert_eq!(sequences_in(dir.path()), [1, 2, 3]);
}

#[tokio::test]
async fn files_rotate_by_size_and_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileSinkOptions {
        max_file_bytes: 300,
        ..FileSinkOptions::new(dir.path())
    };
    let sink = FileSink::new(options.clone());
    for seq in 1..=30 {
        sink.apply_owned(&[line(seq)]).await.unwrap();
    }
    let files = sink.files(&StreamId::default()).unwrap();
    assert!(files.len() >= 5, "{} files", files.len());
    assert!(files.iter().all(|f| f.extension().unwrap() == "jsonl"));
    assert_eq!(sequences_in(dir.path()), (1..=30).collect::<Vec<_>>());
    // A reopened sink finds the last sequence in the newest file.
    let sink = FileSink::new(options);
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(30)
    );
}

#[tokio::test]
async fn a_dir_that_is_a_file_is_a_mistake_to_fix_not_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export");
    std::fs::write(&file, "not a directory").unwrap();
    let sink = FileSink::new(FileSinkOptions::new(&file));
    let err = sink.checkpoint(&StreamId::default()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        omnirelay_replication::ErrorKind::Config,
        "{err}"
    );
    assert!(err.to_string().contains("is not a directory"), "{err}");
    let err = sink.apply_owned(&[line(1)]).await.unwrap_err();
    assert_eq!(
        err.kind(),
        omnirelay_replication::ErrorKind::Config,
        "{err}"
    );
}

#[tokio::test]
async fn records_that_are_not_single_json_lines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    let header = line(2).header().clone();
    let multi = OwnedRecord::new(
        StreamId::default(),
        header,
        Encoding::JSON_V1,
        Bytes::from_static(b"{\n}"),
    );
    let err = sink
        .apply_owned(&[line(1), multi, line(3)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), omnirelay_replication::ErrorKind::Rejected);
    assert_eq!(err.applied_through_sequence(), Some(1));
    let proto = OwnedRecord::new(
        StreamId::default(),
        line(4).header().clone(),
        Encoding::PROTOBUF_V1,
        Bytes::from_static(b"\x08\x01"),
    );
    assert_eq!(
        sink.apply_owned(&[proto]).await.unwrap_err().kind(),
        omnirelay_replication::ErrorKind::Config
    );
}

#[tokio::test]
async fn a_file_removed_or_renamed_while_open_is_followed_by_a_new_one_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileSinkOptions::new(dir.path()));
    let stream = StreamId::default();
    let apply = |range: std::ops::RangeInclusive<u64>| {
        let sink = sink.clone();
        async move {
            sink.apply_owned(&range.map(line).collect::<Vec<_>>())
                .await
                .unwrap();
        }
    };
    apply(1..=3).await;
    // An operator removes the export the sink holds open: the next batch
    // would go to a file no reader can find.
    for file in sink.files(&stream).unwrap() {
        std::fs::remove_file(file).unwrap();
    }
    apply(4..=5).await;
    assert_eq!(sequences_in(dir.path()), [4, 5]);
    // Renamed (a rotation): it keeps what it got; the next batch starts a
    // new file, and nothing is written twice.
    let current = sink.files(&stream).unwrap().pop().unwrap();
    let rotated = dir.path().join("rotated.jsonl.1");
    std::fs::rename(&current, &rotated).unwrap();
    apply(6..=7).await;
    assert_eq!(sequences_in(dir.path()), [6, 7]);
    let kept: Vec<u64> = std::fs::read_to_string(&rotated)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(kept, [4, 5]);
    assert_eq!(sink.checkpoint(&stream).await.unwrap(), Some(7));
}
