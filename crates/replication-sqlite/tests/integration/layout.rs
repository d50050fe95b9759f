//! The reference's table layout, resume, the reader, and configuration.

use std::path::Path;

use bytes::Bytes;
use omnirelay_replication::{
    Codec as _, DurableOptions, DurableReplicator, Encoding, ErrorKind, OwnedRecord,
    ReplicatorExt as _, SinkExt, StreamId, Timestamp, WireVersion,
};
use omnirelay_replication_sqlite::{
    DEFAULT_SINK_TOML, DEFAULT_TABLE, SqliteReader, SqliteSink, SqliteSinkOptions,
};
use omnirelay_replication_testkit::conformance::record;
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, json,
};

fn columns(db: &Path, table: &str) -> Vec<(String, String, bool, bool)> {
    let connection = rusqlite::Connection::open(db).unwrap();
    let mut statement = connection
        .prepare(&format!("PRAGMA table_info(\"{table}\")"))
        .unwrap();
    statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, bool>(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_lease_events_land_in_the_reference_layout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replication.db");
    let replicator = DurableReplicator::open(
        std::sync::Arc::new(ResourceLeaseCodec),
        DurableOptions::new(dir.path().join("data")),
    )
    .await
    .unwrap();
    let sink = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    replicator
        .add_sink(
            "sqlite",
            sink.shared(),
            omnirelay_replication::SinkOptions::default(),
        )
        .await
        .unwrap();
    let mut published = Vec::new();
    for (i, kind) in [
        ResourceLeaseReplicationEventType::Enqueue,
        ResourceLeaseReplicationEventType::LeaseGranted,
        ResourceLeaseReplicationEventType::DrainSnapshot,
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = ResourceLeaseReplicationEvent::new(kind);
        event.peer_id = (i != 2).then(|| format!("worker-{i}"));
        published.push(replicator.publish(event).await.unwrap());
    }
    replicator.wait_caught_up().await;
    replicator.close().await.unwrap();

    assert_eq!(
        columns(&db, DEFAULT_TABLE),
        [
            ("sequence_number".into(), "INTEGER".into(), false, true),
            ("event_type".into(), "INTEGER".into(), true, false),
            ("timestamp".into(), "TEXT".into(), true, false),
            ("peer_id".into(), "TEXT".into(), false, false),
            ("event_json".into(), "TEXT".into(), true, false),
        ]
    );
    let connection = rusqlite::Connection::open(&db).unwrap();
    let index: String = connection
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [format!("IX_{DEFAULT_TABLE}_EventType")],
            |row| row.get(0),
        )
        .unwrap();
    assert!(index.contains("(event_type)"), "{index}");
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    let rows: Vec<_> = SqliteReader::open(&db)
        .unwrap()
        .rows(DEFAULT_TABLE, 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    for (row, receipt) in rows.iter().zip(&published) {
        assert_eq!(row.sequence, receipt.sequence);
        assert_eq!(row.timestamp, receipt.timestamp.to_round_trip_string());
        let event = json::decode(row.event_json.as_bytes()).unwrap();
        assert_eq!(event.sequence_number as u64, row.sequence);
        assert_eq!(event.event_type as i64, row.event_type);
        assert_eq!(event.peer_id, row.peer);
        // Version 1, the sink's write version: the reference JSON.
        assert_eq!(
            row.event_json.as_bytes(),
            &ResourceLeaseCodec
                .encode(
                    &event,
                    Encoding::new(omnirelay_replication::Format::Json, WireVersion::V1)
                )
                .unwrap()[..]
        );
    }
    assert_eq!(rows[2].peer, None, "a NULL peer_id");
    assert_eq!(rows[1].event_type, 2, "LeaseGranted is 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_reference_wrote_resumes_after_its_last_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reference.db");
    {
        // What the reference creates: its table, no checkpoint table.
        let connection = rusqlite::Connection::open(&db).unwrap();
        connection
            .execute_batch(&format!(
                "CREATE TABLE {DEFAULT_TABLE} (sequence_number INTEGER PRIMARY KEY, event_type INTEGER NOT NULL, timestamp TEXT NOT NULL, peer_id TEXT NULL, event_json TEXT NOT NULL);
                 INSERT INTO {DEFAULT_TABLE} VALUES (1, 1, '2025-01-01T00:00:00.0000000+00:00', NULL, '{{}}');
                 INSERT INTO {DEFAULT_TABLE} VALUES (2, 1, '2025-01-01T00:00:00.0000000+00:00', NULL, '{{}}');"
            ))
            .unwrap();
    }
    let sink = SqliteSink::new(SqliteSinkOptions::new(&db))
        .unwrap()
        .shared();
    let stream = StreamId::default();
    assert_eq!(
        omnirelay_replication::Sink::checkpoint(&sink, &stream)
            .await
            .unwrap(),
        Some(2)
    );
    // Other events under the reference's sequences are refused (not taken
    // for its rows); what follows its rows is written.
    let batch: Vec<_> = (1..=4)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let err = sink.apply_owned(&batch).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.applied_through_sequence(), None);
    sink.apply_owned(&batch[2..]).await.unwrap();
    let rows: Vec<_> = SqliteReader::open(&db)
        .unwrap()
        .rows(DEFAULT_TABLE, 1)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        rows[0].event_json, "{}",
        "existing rows are not overwritten"
    );
    assert_eq!(
        SqliteReader::open(&db).unwrap().tables().unwrap(),
        [(DEFAULT_TABLE.to_owned(), stream, 4)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_streams_from_any_sequence_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replication.db");
    let sink = SqliteSink::new(SqliteSinkOptions::new(&db))
        .unwrap()
        .shared();
    let stream = StreamId::new("users").unwrap();
    let batch: Vec<_> = (1..=2500)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    for chunk in batch.chunks(700) {
        sink.apply_owned(chunk).await.unwrap();
    }
    let table = SqliteSinkOptions::new(&db).table_for("users");
    assert_eq!(table, format!("{DEFAULT_TABLE}_users"));
    let reader = SqliteReader::open(&db).unwrap();
    let read: Vec<_> = reader
        .rows(&table, 1200)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        read.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (1200..=2500).collect::<Vec<_>>()
    );
    assert_eq!(read[0].event_json.as_bytes(), &batch[1199].bytes()[..]);
    assert_eq!(reader.rows(&table, 2501).unwrap().count(), 0);
    assert_eq!(reader.rows("NoSuchTable", 1).unwrap().count(), 0);
}

fn validate(text: &str) -> Result<(), String> {
    omnirelay_replication_testkit::config::check(text).map(|_| ())
}

#[test]
fn configuration_refuses_shared_or_invalid_tables() {
    // The embedded default section is valid.
    validate(&format!(
        "{}{DEFAULT_SINK_TOML}",
        omnirelay_replication::config::DEFAULT_TOML
    ))
    .unwrap();

    let err = validate(
        r#"
[replication.sinks.db]
type = "sqlite"
[replication.sinks.db.settings.tables]
users = "Shared"
orders = "shared"
"#,
    )
    .unwrap_err();
    assert!(
        err.contains("replication.sinks.db.settings.tables")
            && err.contains("would share the table"),
        "{err}"
    );

    let err = validate(
        r#"
[replication.sinks.db]
type = "sqlite"
[replication.sinks.db.settings]
table = "Events; DROP TABLE x"
"#,
    )
    .unwrap_err();
    assert!(
        err.contains("replication.sinks.db.settings.table") && err.contains("invalid table name"),
        "{err}"
    );

    let err = validate(
        r#"
[replication.sinks.one]
type = "sqlite"
[replication.sinks.two]
type = "sqlite"
"#,
    )
    .unwrap_err();
    assert!(
        err.contains(
            "sinks \"one\" and \"two\" would both write the table ResourceLeaseReplicationEvents"
        ),
        "{err}"
    );

    // Two sinks, two tables of one database: fine.
    validate(
        r#"
[replication.sinks.one]
type = "sqlite"
[replication.sinks.two]
type = "sqlite"
[replication.sinks.two.settings]
table = "Copy"
"#,
    )
    .unwrap();

    let err = validate(
        r#"
[replication.sinks.db]
type = "sqlite"
format = "protobuf"
"#,
    )
    .unwrap_err();
    assert!(err.contains("cannot receive protobuf"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_cannot_share_a_table_at_run_time_either() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replication.db");
    let mut options = SqliteSinkOptions::new(&db);
    options.tables.insert("users".into(), "People".into());
    let first = SqliteSink::new(options).unwrap().shared();
    let users = StreamId::new("users").unwrap();
    first
        .apply_owned(&[record(&users, 1, Encoding::JSON_V1)])
        .await
        .unwrap();
    // Another sink (or a changed configuration) puts `orders` there.
    let mut options = SqliteSinkOptions::new(&db);
    options.tables.insert("orders".into(), "people".into());
    let second = SqliteSink::new(options).unwrap().shared();
    let orders = StreamId::new("orders").unwrap();
    let err = second
        .apply_owned(&[record(&orders, 1, Encoding::JSON_V1)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), omnirelay_replication::ErrorKind::Config);
    assert!(
        err.to_string().contains("already holds the stream"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_naming_a_directory_is_a_mistake_to_fix_not_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SqliteSink::new(SqliteSinkOptions::new(dir.path()))
        .unwrap()
        .shared();
    let stream = StreamId::default();
    let err = sink.checkpoint_dyn(&stream).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");
    let err = sink
        .apply_owned(&[record(&stream, 1, Encoding::JSON_V1)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

/// `record`'s events as another log stamped them: the same sequences,
/// other times.
fn another_logs(stream: &StreamId, range: std::ops::RangeInclusive<u64>) -> Vec<OwnedRecord> {
    range
        .map(|s| {
            let real = record(stream, s, Encoding::JSON_V1);
            let mut header = real.header().clone();
            header.timestamp =
                Timestamp::from_unix_millis(1_800_000_000_000 + i64::try_from(s).unwrap()).unwrap();
            OwnedRecord::new(
                stream.clone(),
                header,
                Encoding::JSON_V1,
                Bytes::from(format!(r#"{{"sequenceNumber":{s},"node":"b"}}"#)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_logs_events_under_held_sequences_are_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let stream = StreamId::default();
    let a = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    let ours = |range| range_records(&stream, range);
    a.apply_owned(&ours(1..=3)).await.unwrap();
    let rows = || -> Vec<(u64, String)> {
        SqliteReader::open(&db)
            .unwrap()
            .rows(DEFAULT_TABLE, 1)
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.sequence, r.event_json)
            })
            .collect()
    };
    let before = rows();

    // Another node writing the same stream to the same database: before,
    // its events at or below the checkpoint were skipped in silence.
    let b = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    let err = b
        .apply_owned(&another_logs(&stream, 1..=5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("already holds another event as sequence 1"),
        "{err}"
    );
    assert_eq!(err.applied_through_sequence(), None);
    assert_eq!(rows(), before);
    // Above the checkpoint too: a row there (written by another node
    // meanwhile) is compared, not skipped.
    b.apply_owned(&another_logs(&stream, 4..=4)).await.unwrap();
    let err = a.apply_owned(&ours(4..=5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(err.applied_through_sequence(), None);

    // The same events again — a re-send, a standby writing its primary's
    // stream, in another JSON form — are stored already.
    let c = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    c.apply_owned(&ours(1..=3)).await.unwrap();
    let mut reencoded = ours(2..=3);
    for record in &mut reencoded {
        *record = OwnedRecord::new(
            stream.clone(),
            record.header().clone(),
            Encoding::JSON_V1,
            Bytes::from(format!(
                r#"{{"sequenceNumber":{},"v":2}}"#,
                record.sequence()
            )),
        );
    }
    c.apply_owned(&reencoded).await.unwrap();
    assert_eq!(&rows()[..3], &before[..]);
}

fn range_records(stream: &StreamId, range: std::ops::RangeInclusive<u64>) -> Vec<OwnedRecord> {
    range
        .map(|s| record(stream, s, Encoding::JSON_V1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_event_behind_the_checkpoint_fills_its_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gaps.db");
    let stream = StreamId::default();
    let sink = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    let ours = |range| range_records(&stream, range);
    // 3 went to the dead letters; the sink went on.
    sink.apply_owned(&ours(1..=2)).await.unwrap();
    sink.apply_owned(&ours(4..=5)).await.unwrap();
    let sequences = || -> Vec<u64> {
        SqliteReader::open(&db)
            .unwrap()
            .rows(DEFAULT_TABLE, 1)
            .unwrap()
            .map(|r| r.unwrap().sequence)
            .collect()
    };
    // `apply` takes it for a re-send.
    sink.apply_owned(&ours(3..=3)).await.unwrap();
    assert_eq!(sequences(), [1, 2, 4, 5]);
    let fill = |records: Vec<OwnedRecord>| {
        let sink = sink.clone();
        async move {
            let borrowed: Vec<_> = records.iter().map(OwnedRecord::as_record).collect();
            omnirelay_replication::Sink::fill_gaps(&sink, &borrowed).await
        }
    };
    fill(ours(3..=4)).await.unwrap();
    assert_eq!(sequences(), [1, 2, 3, 4, 5]);
    assert_eq!(
        omnirelay_replication::Sink::checkpoint(&sink, &stream)
            .await
            .unwrap(),
        Some(5),
        "the checkpoint does not move back"
    );
    // Once is enough; another log's event under a held sequence is
    // refused as by `apply`.
    fill(ours(3..=3)).await.unwrap();
    assert_eq!(sequences(), [1, 2, 3, 4, 5]);
    let err = fill(another_logs(&stream, 2..=2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

/// The database's files as an operator removes them (`rm events.db*`), or
/// only the main file.
fn remove_database(db: &Path, with_journal: bool) {
    std::fs::remove_file(db).unwrap();
    if with_journal {
        for suffix in ["-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_removed_while_open_is_started_again_under_its_name() {
    for with_journal in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("events.db");
        let stream = StreamId::default();
        let sink = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
        sink.apply_owned(&range_records(&stream, 1..=3))
            .await
            .unwrap();
        remove_database(&db, with_journal);
        // Before, the sink went on writing into the removed file (or
        // failed on it for ever): rows no reader could see, lost for good
        // at the next restart.
        sink.apply_owned(&range_records(&stream, 4..=6))
            .await
            .unwrap();
        let sequences = stored_sequences(&db);
        assert_eq!(sequences, [4, 5, 6], "journal removed too: {with_journal}");
        assert_eq!(
            omnirelay_replication::Sink::checkpoint(&sink, &stream)
                .await
                .unwrap(),
            Some(6)
        );
        omnirelay_replication::Sink::close(&sink).await.unwrap();
    }
}

/// A database file that is not one (damaged, or something else under its
/// name) makes the sink wait, not dead-letter every record; once the
/// operator moves it away, the next attempt starts a new database there.
#[tokio::test]
async fn a_damaged_database_is_waited_on_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let stream = StreamId::default();
    let sink = SqliteSink::new(SqliteSinkOptions::new(&db)).unwrap();
    let err = sink
        .apply_owned(&range_records(&stream, 1..=3))
        .await
        .unwrap_err();
    assert_eq!(
        err.error().kind(),
        ErrorKind::Unavailable,
        "{}",
        err.error()
    );
    assert!(
        err.error()
            .to_string()
            .contains("the database file is damaged"),
        "{}",
        err.error()
    );
    std::fs::rename(&db, dir.path().join("events.db.damaged")).unwrap();
    sink.apply_owned(&range_records(&stream, 1..=3))
        .await
        .unwrap();
    let sequences = stored_sequences(&db);
    assert_eq!(sequences, [1, 2, 3]);
    omnirelay_replication::Sink::close(&sink).await.unwrap();
}

/// The sequences of the rows of the default table of `db`, in order.
fn stored_sequences(db: &Path) -> Vec<u64> {
    SqliteReader::open(db)
        .unwrap()
        .rows(DEFAULT_TABLE, 1)
        .unwrap()
        .map(|r| r.unwrap().sequence)
        .collect()
}
