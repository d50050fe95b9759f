//! The built-in sinks pass the sink conformance suite.

use std::path::PathBuf;

use bytes::Bytes;
use omnirelay_replication::{
    Encoding, FileSink, FileSinkOptions, MemorySink, SharedSink, SinkExt, StreamId,
};
use omnirelay_replication_testkit::conformance::{self, Backend, Outcome};

/// The memory sink: its backend is the shared in-memory store.
struct Memory(MemorySink);

impl Backend for Memory {
    async fn open(&self) -> SharedSink {
        self.0.clone().shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        self.0
            .records()
            .iter()
            .filter(|r| r.stream() == stream)
            .map(|r| (r.sequence(), r.bytes().to_vec()))
            .collect()
    }
}

#[tokio::test]
async fn the_memory_sink_conforms() {
    let report = conformance::run(&Memory(MemorySink::new())).await;
    report.assert_passed();
    assert_eq!(
        report.passed(),
        [
            "ordering",
            "idempotent_redelivery",
            "checkpoint",
            "streams_apart",
            "close"
        ]
    );
}

/// The file sink over a temporary directory, read back by parsing the
/// JSON lines of its files.
struct Files(PathBuf);

impl Backend for Files {
    async fn open(&self) -> SharedSink {
        FileSink::new(FileSinkOptions::new(&self.0)).shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        let sink = FileSink::new(FileSinkOptions::new(&self.0));
        let mut out = Vec::new();
        for file in sink.files(stream).unwrap() {
            let text = std::fs::read(file).unwrap();
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let doc: serde_json::Value = serde_json::from_slice(line).unwrap();
                out.push((doc["sequenceNumber"].as_u64().unwrap(), line.to_vec()));
            }
        }
        out
    }

    fn poison(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b"{\n}"))
    }

    fn refused_encoding(&self) -> Option<Encoding> {
        Some(Encoding::PROTOBUF_V1)
    }
}

#[tokio::test]
async fn the_file_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let report = conformance::run(&Files(dir.path().to_owned())).await;
    report.assert_passed();
    let outage = report.checks.iter().find(|(name, _)| *name == "outage");
    assert!(
        matches!(outage, Some((_, Outcome::NotApplicable(_)))),
        "{report}"
    );
    assert_eq!(report.passed().len(), 7, "{report}");
}

/// A sink that stores every record it is given, duplicates included, and
/// whose outage is a switch: the suite must catch the duplicates.
struct Careless(omnirelay_replication_testkit::FaultySink);

impl Backend for Careless {
    async fn open(&self) -> SharedSink {
        self.0.clone().shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        self.0
            .records()
            .iter()
            .filter(|r| r.stream() == stream)
            .map(|r| (r.sequence(), r.bytes().to_vec()))
            .collect()
    }

    async fn begin_outage(&self) -> bool {
        self.0
            .fail_with(omnirelay_replication::ErrorKind::Unavailable);
        true
    }

    async fn end_outage(&self) {
        self.0.heal();
    }
}

#[tokio::test]
async fn the_suite_catches_a_sink_that_stores_re_deliveries_twice() {
    let report =
        conformance::run(&Careless(omnirelay_replication_testkit::FaultySink::new())).await;
    let outcome = |name: &str| {
        report
            .checks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    assert!(
        matches!(outcome("idempotent_redelivery"), Outcome::Failed(ref why) if why.contains("expected")),
        "{report}"
    );
    let result = std::panic::catch_unwind(|| report.assert_passed());
    assert!(result.is_err(), "assert_passed must fail: {report}");
}
