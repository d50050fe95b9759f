//! The NATS sink passes the conformance suite against a real
//! `nats-server -js`.

use std::time::Duration;

use bytes::Bytes;
use omnirelay_replication::{SharedSink, SinkExt, StreamId};
use omnirelay_replication_nats::{NatsSink, NatsSinkOptions};
use omnirelay_replication_testkit::conformance::{self, Backend, Outcome};

use crate::support::{Nats, oversized, stored};

struct JetStream {
    nats: Nats,
    options: NatsSinkOptions,
}

impl Backend for JetStream {
    async fn open(&self) -> SharedSink {
        NatsSink::connect(std::slice::from_ref(&self.nats.url), self.options.clone())
            .await
            .unwrap()
            .shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        stored(&self.nats.url, &self.options.stream, stream.as_str()).await
    }

    fn poison(&self) -> Option<Bytes> {
        Some(oversized())
    }

    async fn begin_outage(&self) -> bool {
        self.nats.signal("STOP");
        true
    }

    async fn end_outage(&self) {
        self.nats.signal("CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_nats_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let backend = JetStream {
        nats: Nats::start(dir.path()),
        options: NatsSinkOptions {
            ack_timeout: Duration::from_secs(1),
            ..NatsSinkOptions::new()
        },
    };
    let report = conformance::run(&backend).await;
    report.assert_passed();
    let refused = report
        .checks
        .iter()
        .find(|(name, _)| *name == "refused_encoding")
        .map(|(_, o)| o.clone());
    assert!(
        matches!(refused, Some(Outcome::NotApplicable(_))),
        "{report}"
    );
    assert_eq!(report.passed().len(), 7, "{report}");
}
