//! The embedded default's SQLite sink, black-box.

use std::path::Path;

use omnirelay_replication_sqlite::{DEFAULT_TABLE, Row, SqliteReader};
use omnirelay_resourcelease::json;

use crate::log::{dir_arg, events};
use crate::{omnirelay, text};

/// Every row of the default stream's table, in order.
pub(crate) fn sqlite_rows(dir: &Path) -> Vec<Row> {
    let reader = SqliteReader::open(&dir.join("replication.db")).unwrap();
    reader
        .rows(DEFAULT_TABLE, 1)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn publish_with_the_embedded_default_fills_the_reference_table_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let n = 40;
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..n).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = sqlite_rows(dir.path());
    assert_eq!(
        rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (1..=n as u64).collect::<Vec<_>>()
    );
    for (i, row) in rows.iter().enumerate() {
        let event = json::decode(row.event_json.as_bytes()).unwrap();
        assert_eq!(event.sequence_number, row.sequence as i64);
        assert_eq!(event.peer_id.as_deref(), Some(format!("p-{i}").as_str()));
        assert_eq!(row.peer.as_deref(), Some(format!("p-{i}").as_str()));
        assert_eq!(event.event_type as i64, row.event_type);
        assert_eq!(
            event.payload.as_ref().unwrap().resource_id,
            format!("r-{i}")
        );
        assert_eq!(
            event.metadata.get("queue.pending"),
            Some(i.to_string().as_str())
        );
        // The column holds the 7-digit round-trip form of the event's time.
        assert_eq!(row.timestamp, event.timestamp.to_round_trip_string());
        assert_eq!(
            row.timestamp.len(),
            "2026-11-28T05:25:01.6823902+00:00".len()
        );
    }
    // A restart continues the numbering in the table too.
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..3).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        sqlite_rows(dir.path())
            .iter()
            .map(|r| r.sequence)
            .collect::<Vec<_>>(),
        (1..=n as u64 + 3).collect::<Vec<_>>()
    );
}
