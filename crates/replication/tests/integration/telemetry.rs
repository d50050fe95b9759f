//! After a known workload, the Prometheus exposition shows exactly what
//! happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use omnirelay_replication::{
    Durability, DurableOptions, DurableReplicator, ErrorKind, LogOptions, MemorySink, RetryPolicy,
    SinkExt, SinkOptions, StreamId,
};
use omnirelay_replication_testkit::{Note, NoteCodec, ScriptedSink, Step};

/// `name{labels} value` lines of the exposition, by series.
fn series(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_known_workload_gives_exact_counts() {
    const N: usize = 40;
    const K: usize = 3;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let options = DurableOptions {
                log: LogOptions {
                    durability: Durability::None,
                    ..LogOptions::default()
                },
                ..DurableOptions::new(dir.path())
            };
            let replicator = DurableReplicator::open(Arc::new(NoteCodec::default()), options)
                .await
                .unwrap();
            let fast = SinkOptions {
                retry: RetryPolicy {
                    initial: Duration::from_millis(1),
                    max: Duration::from_millis(2),
                    ..RetryPolicy::default()
                },
                ..SinkOptions::default()
            };
            replicator
                .add_sink("a", MemorySink::new().shared(), fast.clone())
                .await
                .unwrap();
            replicator
                .add_sink("b", MemorySink::new().shared(), fast.clone())
                .await
                .unwrap();
            let flaky = ScriptedSink::scripted(vec![Step::Fail(ErrorKind::Unavailable); K]);
            replicator
                .add_sink("flaky", flaky.clone().shared(), fast)
                .await
                .unwrap();
            let events: Vec<_> = (0..N).map(|i| Note::new(&format!("n{i}"))).collect();
            replicator
                .submit_all(&StreamId::default(), events)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
            replicator.wait_caught_up().await;
            replicator.close().await.unwrap();
            assert_eq!(flaky.sequences().len(), N);
        });
    });
    let got = series(&handle.render());
    let value = |s: &str| {
        got.get(s)
            .copied()
            .unwrap_or_else(|| panic!("no series {s} in {got:#?}"))
    };
    assert_eq!(
        value(r#"omnirelay_replication_published_events_total{stream="default"}"#),
        N as f64
    );
    assert!(value(r#"omnirelay_replication_published_bytes_total{stream="default"}"#) > 0.0);
    for sink in ["a", "b", "flaky"] {
        assert_eq!(
            value(&format!(
                r#"omnirelay_replication_sink_sent_events_total{{stream="default",sink="{sink}"}}"#
            )),
            N as f64,
            "{sink}"
        );
        assert_eq!(
            value(&format!(
                r#"omnirelay_replication_sink_lag_events{{stream="default",sink="{sink}"}}"#
            )),
            0.0
        );
        assert_eq!(
            value(&format!(
                r#"omnirelay_replication_sink_lag_seconds{{stream="default",sink="{sink}"}}"#
            )),
            0.0
        );
    }
    assert_eq!(
        value(
            r#"omnirelay_replication_sink_errors_total{stream="default",sink="flaky",kind="unavailable"}"#
        ),
        K as f64
    );
    assert_eq!(
        value(r#"omnirelay_replication_sink_retries_total{stream="default",sink="flaky"}"#),
        K as f64
    );
    assert_eq!(
        value(r#"omnirelay_replication_sink_retries_total{stream="default",sink="a"}"#),
        0.0
    );
    assert!(
        !got.keys()
            .any(|s| s.starts_with("omnirelay_replication_sink_errors_total")
                && s.contains(r#"sink="a""#)),
        "a healthy sink has no error series"
    );
    assert_eq!(
        value(
            r#"omnirelay_replication_sink_dead_lettered_events_total{stream="default",sink="flaky"}"#
        ),
        0.0
    );
    assert_eq!(
        value(r#"omnirelay_replication_backpressure_active{stream="default"}"#),
        0.0
    );
    assert!(value(r#"omnirelay_replication_log_bytes{stream="default"}"#) > 0.0);
    assert_eq!(
        value(r#"omnirelay_replication_publish_duration_seconds_count{stream="default"}"#),
        1.0
    );
}
