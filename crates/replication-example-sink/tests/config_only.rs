//! The tally sink, defined outside omnirelay-replication, is enabled by
//! configuration alone: no registration call, no change to core code.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used)]

// Linking the crate is what registers the sink type.
use omnirelay_example_sink as _;

use std::sync::Arc;

use omnirelay_replication::config::{self, SinkRegistry};
use omnirelay_replication::{ReplicatorExt, WireVersion};
use omnirelay_replication_testkit::{Note, NoteCodec};

#[tokio::test]
async fn a_sink_from_another_crate_is_enabled_by_configuration_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnirelay.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\n[replication.log]\ndurability = \"none\"\n[replication.sinks.counts]\ntype = \"example-tally\"\n[replication.sinks.counts.settings]\nfile = \"tally.json\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let registry = SinkRegistry::discovered();
    assert!(
        registry.types().contains(&"example-tally"),
        "{:?}",
        registry.types()
    );
    let valid = config::load_with(Some(&file), &[])
        .unwrap()
        .validate(&registry, WireVersion::V2)
        .unwrap();
    let replicator = valid.build(Arc::new(NoteCodec::default())).await.unwrap();
    for i in 0..5 {
        replicator
            .publish(Note::new(&format!("n{i}")))
            .await
            .unwrap();
    }
    replicator.wait_caught_up().await;
    replicator.close().await.unwrap();
    let tally: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tally.json")).unwrap()).unwrap();
    assert_eq!(tally["counts"]["default"]["Note"], 5);
    assert_eq!(tally["high_water"]["default"], 5);
}

#[test]
fn its_settings_are_validated_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnirelay.toml");
    std::fs::write(&file, "[replication.sinks.counts]\ntype = \"example-tally\"\n[replication.sinks.counts.settings]\nfil = \"x\"\n").unwrap();
    let err = config::load_with(Some(&file), &[])
        .unwrap()
        .validate(&SinkRegistry::discovered(), WireVersion::V2)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("replication.sinks.counts.settings.fil: unknown field `fil`"),
        "{err}"
    );
}
