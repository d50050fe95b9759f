//! Duplicates: JetStream's message ids inside the window, the high-water
//! mark beyond it.

use std::time::Duration;

use omnirelay_replication::{Encoding, Sink, SinkExt, StreamId};
use omnirelay_replication_nats::{DEFAULT_STREAM, NatsSink, NatsSinkOptions, StreamSettings};
use omnirelay_replication_testkit::conformance::record;

use crate::support::{Nats, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_retried_publishes_are_dropped_by_message_id_and_old_ones_by_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let options = NatsSinkOptions {
        create: Some(StreamSettings {
            duplicate_window: Duration::from_secs(1),
            ..StreamSettings::default()
        }),
        ..NatsSinkOptions::new()
    };
    let stream = StreamId::new("users").unwrap();
    let batch: Vec<_> = (1..=5)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let first = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    // A second sink reads its mark (nothing yet) before the first writes:
    // its publishes of the same sequences are retries JetStream drops.
    let stale = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    assert_eq!(stale.checkpoint(&stream).await.unwrap(), None);
    first.apply_owned(&batch).await.unwrap();
    stale.apply_owned(&batch).await.unwrap();
    assert_eq!(
        stale.duplicates(),
        5,
        "duplicate acknowledgements count as success"
    );
    assert_eq!(first.duplicates(), 0);

    // Past the duplicate window, a restarted sink skips by its mark.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = NatsSink::connect(std::slice::from_ref(&nats.url), options)
        .await
        .unwrap();
    assert_eq!(restarted.checkpoint(&stream).await.unwrap(), Some(5));
    restarted.apply_owned(&batch).await.unwrap();
    assert_eq!(restarted.duplicates(), 0, "nothing was even sent");
    let held = stored(&nats.url, DEFAULT_STREAM, "users").await;
    assert_eq!(
        held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn configuration_refuses_what_cannot_work() {
    use omnirelay_replication_testkit::config::check;
    check("[replication.sinks.bus]\ntype = \"nats\"\n").unwrap();
    for (settings, at, says) in [
        ("servers = []", "settings.servers", "at least one"),
        (
            "servers = [\"nats://\"]",
            "settings.servers.0",
            "not a NATS server address",
        ),
        ("stream = \"a.b\"", "settings.stream", "not allowed"),
        (
            "subject = \"omnirelay.{stream}.x\"",
            "settings.subject",
            "last token must be {stream}",
        ),
        ("replicas = 2", "settings", "replicas must be 1, 3 or 5"),
        ("user = \"u\"", "settings.password", "go together"),
        ("max_outstanding_acks = 0", "settings", "at least 1"),
    ] {
        let text = format!(
            "[replication.sinks.bus]\ntype = \"nats\"\n[replication.sinks.bus.settings]\n{settings}\n"
        );
        let Err(err) = check(&text) else {
            panic!("{settings} was accepted");
        };
        assert!(
            err.contains(&format!("replication.sinks.bus.{at}")) && err.contains(says),
            "{settings}: {err}"
        );
    }
    let err = check(
        "[replication.sinks.one]\ntype = \"nats\"\n[replication.sinks.two]\ntype = \"nats\"\n",
    )
    .unwrap_err();
    assert!(err.contains("would both write the subjects"), "{err}");
}
