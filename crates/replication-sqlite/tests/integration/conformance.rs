//! The SQLite sink passes the sink conformance suite on a temporary file.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use omnirelay_replication::{Encoding, SharedSink, SinkExt, StreamId};
use omnirelay_replication_sqlite::{SqliteReader, SqliteSink, SqliteSinkOptions};
use omnirelay_replication_testkit::conformance::{self, Backend};

struct Sqlite {
    path: PathBuf,
    /// Holds the database's write lock during an outage.
    blocker: Mutex<Option<rusqlite::Connection>>,
}

impl Sqlite {
    fn options(&self) -> SqliteSinkOptions {
        SqliteSinkOptions {
            busy_timeout: Duration::from_millis(100),
            ..SqliteSinkOptions::new(&self.path)
        }
    }
}

impl Backend for Sqlite {
    async fn open(&self) -> SharedSink {
        SqliteSink::new(self.options()).unwrap().shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        let reader = SqliteReader::open(&self.path).unwrap();
        let table = self.options().table_for(stream.as_str());
        reader
            .rows(&table, 1)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                (row.sequence, row.event_json.into_bytes())
            })
            .collect()
    }

    fn poison(&self) -> Option<Bytes> {
        Some(Bytes::from_static(
            b"{\"sequenceNumber\":3,\"note\":\"\xff\xfe\"}",
        ))
    }

    fn refused_encoding(&self) -> Option<Encoding> {
        Some(Encoding::PROTOBUF_V1)
    }

    async fn begin_outage(&self) -> bool {
        // Another process holding the write lock longer than the sink's
        // busy timeout.
        let blocker = rusqlite::Connection::open(&self.path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        *self.blocker.lock().unwrap() = Some(blocker);
        true
    }

    async fn end_outage(&self) {
        if let Some(blocker) = self.blocker.lock().unwrap().take() {
            blocker.execute_batch("ROLLBACK").unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sqlite {
        path: dir.path().join("replication.db"),
        blocker: Mutex::new(None),
    };
    let report = conformance::run(&backend).await;
    report.assert_passed();
    assert_eq!(report.passed().len(), 8, "every check applies:\n{report}");
}
