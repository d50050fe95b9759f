//! The object-storage sink passes the conformance suite on the local
//! filesystem and on a real S3-compatible server, in both layouts.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use omnirelay_replication::{SharedSink, SinkExt, StreamId};
use omnirelay_replication_objectstore::{
    KeyKind, Layout, ObjectSinkOptions, ObjectStoreSink, parse_key,
};
use omnirelay_replication_testkit::conformance::{self, Backend, Outcome};

use crate::support::Moto;

struct Objects {
    store: Arc<dyn ObjectStore>,
    options: ObjectSinkOptions,
    moto: Option<Moto>,
}

/// What the store holds under a stream's prefix, read with plain
/// `object_store` calls: each event object's sequence and body, each
/// segment's lines with the sequences its name gives them.
pub(crate) async fn stored(store: &dyn ObjectStore, prefix: &str) -> Vec<(u64, Vec<u8>)> {
    let mut keys: Vec<(KeyKind, ObjectPath)> = store
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|meta| parse_key(prefix, meta.location.as_ref()).map(|k| (k, meta.location)))
        .collect();
    keys.sort_by_key(|(k, _)| *k);
    let mut out = Vec::new();
    for (key, path) in keys {
        let body = store.get(&path).await.unwrap().bytes().await.unwrap();
        match key {
            KeyKind::Event(sequence) => out.push((sequence, body.to_vec())),
            KeyKind::Segment(..) => {
                for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let doc: serde_json::Value = serde_json::from_slice(line).unwrap();
                    out.push((doc["sequenceNumber"].as_u64().unwrap(), line.to_vec()));
                }
            }
        }
    }
    out
}

impl Backend for Objects {
    async fn open(&self) -> SharedSink {
        ObjectStoreSink::new(self.store.clone(), self.options.clone())
            .unwrap()
            .shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        stored(
            self.store.as_ref(),
            &self.options.prefix_for(stream.as_str()),
        )
        .await
    }

    fn refused_encoding(&self) -> Option<omnirelay_replication::Encoding> {
        Some(omnirelay_replication::Encoding::PROTOBUF_V1)
    }

    async fn begin_outage(&self) -> bool {
        match &self.moto {
            Some(moto) => {
                moto.signal("STOP");
                true
            }
            None => false,
        }
    }

    async fn end_outage(&self) {
        if let Some(moto) = &self.moto {
            moto.signal("CONT");
        }
    }
}

fn local(dir: &std::path::Path, layout: Layout) -> Objects {
    let (store, options) = crate::support::local(dir, layout);
    Objects {
        store,
        options,
        moto: None,
    }
}

fn s3(layout: Layout) -> Objects {
    let moto = Moto::start();
    moto.create_bucket("conformance");
    Objects {
        store: moto.store("conformance", Duration::from_secs(2)),
        options: ObjectSinkOptions {
            layout,
            ..ObjectSinkOptions::new()
        },
        moto: Some(moto),
    }
}

fn outage(report: &conformance::Report) -> Outcome {
    report
        .checks
        .iter()
        .find(|(name, _)| *name == "outage")
        .map(|(_, o)| o.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_sink_conforms_on_the_local_filesystem() {
    for layout in [Layout::PerEvent, Layout::Segment] {
        let dir = tempfile::tempdir().unwrap();
        let report = conformance::run(&local(dir.path(), layout)).await;
        report.assert_passed();
        assert!(
            matches!(outage(&report), Outcome::NotApplicable(_)),
            "{report}"
        );
        assert_eq!(report.passed().len(), 6, "{layout:?}:\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_object_sink_conforms_on_s3() {
    for layout in [Layout::PerEvent, Layout::Segment] {
        let backend = s3(layout);
        let report = conformance::run(&backend).await;
        report.assert_passed();
        assert_eq!(outage(&report), Outcome::Passed, "{report}");
        assert_eq!(report.passed().len(), 7, "{layout:?}:\n{report}");
    }
}
