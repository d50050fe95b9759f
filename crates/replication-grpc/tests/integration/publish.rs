//! Publishing to a receiver over a real socket: the reference's `Publish`
//! and the version-2 `PublishStream`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use omnirelay_replication::{
    DurableOptions, DurableReplicator, Encoding, EventKind, MemorySink, OwnedRecord, RecordHeader,
    SinkExt, SinkOptions, StreamId, Timestamp,
};
use omnirelay_replication_grpc::{GrpcSink, GrpcSinkOptions, Protocol, Receiver, origin};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent, json, proto};
use tokio::sync::watch;

/// The golden v1 protobuf fixtures, in sequence order: each one's bytes
/// and the event they hold.
pub(crate) fn fixtures() -> Vec<(Bytes, ResourceLeaseReplicationEvent)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resourcelease/fixtures/v1");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "binpb"))
        .map(|p| {
            let bytes = Bytes::from(std::fs::read(p).unwrap());
            let event = proto::decode(&bytes).unwrap();
            (bytes, event)
        })
        .collect();
    out.sort_by_key(|(_, e)| e.sequence_number);
    out
}

/// A record of protobuf bytes, as the sink receives it.
pub(crate) fn record(bytes: &Bytes, event: &ResourceLeaseReplicationEvent) -> OwnedRecord {
    let header = RecordHeader {
        sequence: event.sequence_number as u64,
        timestamp: Timestamp::now(),
        kind: EventKind {
            code: 1,
            name: "Fixture",
        },
        peer: None,
    };
    OwnedRecord::new(
        StreamId::default(),
        header,
        Encoding::PROTOBUF_V1,
        bytes.clone(),
    )
}

/// A receiver node: its replicator (with a JSON v1 memory sink), the
/// receiver and its services on a loopback port.
pub(crate) struct Node {
    pub(crate) replicator: Arc<DurableReplicator<ResourceLeaseReplicationEvent>>,
    pub(crate) receiver: Arc<Receiver>,
    memory: MemorySink,
    pub(crate) url: String,
    stop: Option<watch::Sender<bool>>,
    server: tokio::task::JoinHandle<()>,
    /// The protocol of the sinks [`Node::sink`] makes.
    pub(crate) protocol: Protocol,
}

impl Node {
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_with_token(dir, None).await
    }

    pub(crate) async fn start_with_token(dir: &Path, token: Option<&str>) -> Self {
        Self::serve(dir, token, true).await
    }

    /// With `v2` false, only the reference's service is served.
    pub(crate) async fn serve(dir: &Path, token: Option<&str>, v2: bool) -> Self {
        Self::serve_at(dir, "127.0.0.1:0", token, v2).await
    }

    /// As [`Node::serve`], listening on `address`.
    pub(crate) async fn serve_at(dir: &Path, address: &str, token: Option<&str>, v2: bool) -> Self {
        let replicator = Arc::new(
            DurableReplicator::open(Arc::new(ResourceLeaseCodec), DurableOptions::new(dir))
                .await
                .unwrap(),
        );
        let memory = MemorySink::new();
        replicator
            .add_sink("memory", memory.clone().shared(), SinkOptions::default())
            .await
            .unwrap();
        let receiver = Arc::new(
            Receiver::open(replicator.clone(), StreamId::default())
                .await
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, mut stopped) = watch::channel(false);
        let routes = if v2 {
            omnirelay_replication_grpc::routes(
                replicator.clone(),
                Some(receiver.clone()),
                token.map(str::to_owned),
                stopped.clone(),
            )
        } else {
            tonic::service::Routes::new(
                receiver
                    .clone()
                    .service_with_token(token.map(str::to_owned)),
            )
        };
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            replicator,
            receiver,
            memory,
            url,
            stop: Some(stop),
            server,
            protocol: Protocol::Auto,
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.server.await.unwrap();
        self.replicator.close().await.unwrap();
    }

    pub(crate) fn sink(&self, sender: &str) -> GrpcSink {
        self.sink_with_token(sender, None)
    }

    pub(crate) fn sink_with_token(&self, sender: &str, token: Option<&str>) -> GrpcSink {
        self.sink_of(sender, token, None)
    }

    /// A sink sending as `sender`, with `writer` behind the name.
    pub(crate) fn sink_as(&self, sender: &str, writer: &str) -> GrpcSink {
        self.sink_of(sender, None, Some(writer))
    }

    fn sink_of(&self, sender: &str, token: Option<&str>, writer: Option<&str>) -> GrpcSink {
        GrpcSink::new(GrpcSinkOptions {
            url: self.url.clone(),
            sender: sender.to_owned(),
            timeout: Duration::from_secs(5),
            token: token.map(str::to_owned),
            ca_pem: None,
            protocol: self.protocol,
            writer: writer.map(str::to_owned),
        })
        .unwrap()
    }

    /// The events the memory sink received, decoded.
    pub(crate) fn received(&self) -> Vec<ResourceLeaseReplicationEvent> {
        self.memory
            .records()
            .iter()
            .map(|r| json::decode(r.bytes()).unwrap())
            .collect()
    }
}

fn without_origin(mut event: ResourceLeaseReplicationEvent) -> ResourceLeaseReplicationEvent {
    let mut metadata = omnirelay_resourcelease::Metadata::new();
    for (k, v) in event.metadata.iter() {
        if !k.starts_with("replication.origin.") {
            metadata.insert(k, v);
        }
    }
    event.metadata = metadata;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_land_unchanged_resends_are_ignored_and_restarts_are_followed_unary() {
    fixtures_land_unchanged(Protocol::Unary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_land_unchanged_resends_are_ignored_and_restarts_are_followed_streaming() {
    fixtures_land_unchanged(Protocol::Stream).await;
}

async fn fixtures_land_unchanged(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path()).await;
    node.protocol = protocol;
    let sink = node.sink("dispatcher-a");
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 8);
    let records: Vec<_> = fixtures.iter().map(|(b, e)| record(b, e)).collect();
    sink.apply_owned(&records).await.unwrap();
    node.replicator.wait_caught_up().await;

    let received = node.received();
    assert_eq!(received.len(), 8);
    for ((_, sent), got) in fixtures.iter().zip(&received) {
        // Everything but what the receiver stamps is unchanged; the
        // sender's sequence and time are kept as origin.
        assert_eq!(
            got.metadata.get(origin::SEQUENCE),
            Some(sent.sequence_number.to_string().as_str())
        );
        assert_eq!(
            got.metadata.get(origin::TIMESTAMP),
            Some(sent.timestamp.to_round_trip_string().as_str())
        );
        assert_eq!(got.metadata.get(origin::SENDER), Some("dispatcher-a"));
        let mut expected = sent.clone();
        expected.timestamp = got.timestamp;
        expected.sequence_number = got.sequence_number;
        assert_eq!(without_origin(got.clone()), expected);
    }

    // Re-sent events are not appended again (a re-send from sequence 1
    // would read as a restarted numbering: see below).
    sink.apply_owned(&records[2..]).await.unwrap();
    sink.apply_owned(&records[7..]).await.unwrap();
    assert_eq!(
        node.receiver
            .stats()
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    assert_eq!(node.received().len(), 8);
    // A sender that restarts its numbering at 1 is followed, not ignored.
    sink.apply_owned(&records[..2]).await.unwrap();
    node.replicator.wait_caught_up().await;
    assert_eq!(node.received().len(), 10);
    let marks = node.receiver.marks().await;
    assert_eq!(marks["dispatcher-a"].epoch, 2);
    assert_eq!(marks["dispatcher-a"].sequence, 2);
    // Another sender has its own numbering.
    node.sink("dispatcher-b")
        .apply_owned(&records[..1])
        .await
        .unwrap();
    node.replicator.wait_caught_up().await;
    assert_eq!(node.received().len(), 11);
    node.stop().await;

    // Restarted, the receiver knows every sender's mark from its log.
    let mut node = Node::start(dir.path()).await;
    node.protocol = protocol;
    let marks = node.receiver.marks().await;
    assert_eq!(
        (marks["dispatcher-a"].epoch, marks["dispatcher-a"].sequence),
        (2, 2)
    );
    assert_eq!(marks["dispatcher-b"].sequence, 1);
    let sink = node.sink("dispatcher-a");
    sink.apply_owned(&records[1..3]).await.unwrap();
    node.replicator.wait_caught_up().await;
    // The memory sink resumes after what it had (11): only sequence 3 of
    // the sender is new, appended as 12.
    let received = node.received();
    assert_eq!(received.len(), 1, "only sequence 3 is new");
    assert_eq!(received.last().unwrap().sequence_number, 12);
    assert_eq!(
        received.last().unwrap().metadata.get(origin::SEQUENCE),
        Some("3")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_gaps_and_unsequenced_events_follow_the_rules() {
    use omnirelay_replication_grpc::Received;
    use omnirelay_resourcelease::ResourceLeaseReplicationEventType as Type;
    use std::sync::atomic::Ordering::Relaxed;

    let dir = tempfile::tempdir().unwrap();
    let replicator = Arc::new(
        DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            DurableOptions::new(dir.path()),
        )
        .await
        .unwrap(),
    );
    let receiver = Receiver::open(replicator.clone(), StreamId::default())
        .await
        .unwrap();
    let event = |sequence: i64| {
        let mut e = ResourceLeaseReplicationEvent::new(Type::Heartbeat);
        e.sequence_number = sequence;
        e
    };
    let appended = |r: Received| matches!(r, Received::Appended(_));
    // A version-2 sender names its epoch.
    assert!(appended(
        receiver.receive("v2", Some(5), event(3)).await.unwrap()
    ));
    assert!(!appended(
        receiver.receive("v2", Some(5), event(3)).await.unwrap()
    ));
    assert!(
        !appended(receiver.receive("v2", Some(4), event(10)).await.unwrap()),
        "an older epoch is stale"
    );
    assert!(appended(
        receiver.receive("v2", Some(5), event(5)).await.unwrap()
    ));
    assert_eq!(receiver.stats().gaps.load(Relaxed), 1, "4 was skipped");
    assert!(appended(
        receiver.receive("v2", Some(6), event(1)).await.unwrap()
    ));
    assert_eq!(receiver.stats().epochs.load(Relaxed), 1);
    // Unsequenced events carry no origin sequence: never deduplicated.
    assert!(appended(
        receiver.receive("v1", None, event(0)).await.unwrap()
    ));
    assert!(appended(
        receiver.receive("v1", None, event(0)).await.unwrap()
    ));
    assert_eq!(receiver.stats().appended.load(Relaxed), 5);
    let marks = receiver.marks().await;
    assert_eq!((marks["v2"].epoch, marks["v2"].sequence), (6, 1));
    assert!(!marks.contains_key("v1"));
    replicator.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_configured_calls_without_it_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with_token(dir.path(), Some("s3cret")).await;
    let fixtures = fixtures();
    let records: Vec<_> = fixtures.iter().map(|(b, e)| record(b, e)).collect();
    for (protocol, token) in [Protocol::Unary, Protocol::Stream]
        .into_iter()
        .flat_map(|p| [None, Some("wrong"), Some("s3cre"), Some("s3cret!")].map(|t| (p, t)))
    {
        node.protocol = protocol;
        let err = node
            .sink_with_token("a", token)
            .apply_owned(&records[..1])
            .await
            .unwrap_err();
        // Retried: a token rotated on the receiver first heals.
        assert_eq!(
            err.kind(),
            omnirelay_replication::ErrorKind::Unavailable,
            "{protocol:?} {token:?}: {err}"
        );
        assert!(err.to_string().contains("Unauthenticated"), "{err}");
    }
    assert_eq!(
        node.receiver
            .stats()
            .appended
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    node.sink_with_token("a", Some("s3cret"))
        .apply_owned(&records[..2])
        .await
        .unwrap();
    node.protocol = Protocol::Unary;
    node.sink_with_token("a", Some("s3cret"))
        .apply_owned(&records[2..3])
        .await
        .unwrap();
    node.replicator.wait_caught_up().await;
    assert_eq!(node.received().len(), 3);
    node.stop().await;
}

/// A receiver that refuses the sink's token (rotated on the receiver
/// first, say) holds the sink back, retrying: the sending node starts,
/// nothing goes to its dead letters, and delivery resumes once the tokens
/// agree again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retried_not_dead_lettered_and_heals() {
    for protocol in [Protocol::Stream, Protocol::Unary] {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start_with_token(&dir.path().join("receiver"), Some("rotated")).await;
        let address = node.url.trim_start_matches("http://").to_owned();
        let sender = DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            DurableOptions::new(dir.path().join("sender")),
        )
        .await
        .unwrap();
        let sink = GrpcSink::new(GrpcSinkOptions {
            url: node.url.clone(),
            sender: "a".to_owned(),
            timeout: Duration::from_secs(5),
            token: Some("s3cret".to_owned()),
            ca_pem: None,
            protocol,
            writer: None,
        })
        .unwrap();
        let options = SinkOptions {
            encoding: Encoding::PROTOBUF_V1,
            retry: omnirelay_replication::RetryPolicy {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                ..omnirelay_replication::RetryPolicy::default()
            },
            ..SinkOptions::default()
        };
        sender
            .add_sink("up", sink.shared(), options)
            .await
            .unwrap_or_else(|e| panic!("{protocol:?}: the node starts: {e}"));
        let stream = StreamId::default();
        let events: Vec<_> = fixtures().into_iter().map(|(_, e)| e).take(3).collect();
        for event in events.clone() {
            sender
                .submit(&stream, event)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        let snapshot = loop {
            let snapshot = sender.sink_snapshots().await.remove(0);
            if snapshot.retries >= 3 {
                break snapshot;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(snapshot.dead_lettered, 0, "{protocol:?}: {snapshot:?}");
        assert_eq!(snapshot.checkpoint, 0, "{protocol:?}: {snapshot:?}");
        let error = snapshot.last_error.unwrap_or_default();
        assert!(error.contains("Unauthenticated"), "{protocol:?}: {error}");
        assert!(error.contains("token"), "{protocol:?}: {error}");
        assert_eq!(node.received().len(), 0);
        // The receiver takes the sender's token again, on the same port.
        node.stop().await;
        let node =
            Node::serve_at(&dir.path().join("receiver"), &address, Some("s3cret"), true).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while sender.sink_snapshots().await[0].checkpoint < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{protocol:?}: delivery resumed"));
        node.replicator.wait_caught_up().await;
        let received: Vec<_> = node.received().into_iter().map(without_origin).collect();
        assert_eq!(received.len(), 3, "{protocol:?}");
        assert_eq!(sender.sink_snapshots().await[0].dead_lettered, 0);
        sender.close().await.unwrap();
        node.stop().await;
    }
}

#[test]
fn configuration_refuses_what_cannot_work() {
    use omnirelay_replication_testkit::config::check;
    let valid = check(
        "[replication.sinks.r]\ntype = \"grpc\"\n[replication.sinks.r.settings]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    assert_eq!(
        valid.sinks[0].options.encoding,
        Encoding::PROTOBUF_V1,
        "protobuf by default"
    );
    for (settings, at, says) in [
        ("", "settings.url", "http:// or https://"),
        (
            "url = \"127.0.0.1:1\"",
            "settings.url",
            "http:// or https://",
        ),
        (
            "url = \"http://h:1\"\nsender = \"a b\"",
            "settings.sender",
            "printable",
        ),
        (
            "url = \"http://h:1\"\ntoken = \"\"",
            "settings.token",
            "must not be empty",
        ),
        (
            "url = \"http://h:1\"\nca_file = \"ca.pem\"",
            "settings.ca_file",
            "only used with an https:// url",
        ),
    ] {
        let text = format!(
            "[replication.sinks.r]\ntype = \"grpc\"\n[replication.sinks.r.settings]\n{settings}\n"
        );
        let Err(err) = check(&text) else {
            panic!("{settings} was accepted");
        };
        assert!(
            err.contains(&format!("replication.sinks.r.{at}")) && err.contains(says),
            "{settings}: {err}"
        );
    }
    let err = check(
        "[replication.sinks.r]\ntype = \"grpc\"\nformat = \"json\"\n[replication.sinks.r.settings]\nurl = \"http://h:1\"\n",
    )
    .unwrap_err();
    assert!(err.contains("cannot receive json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_publishes_over_tls_to_a_receiver_with_a_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (certified.cert.pem(), certified.key_pair.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let replicator = Arc::new(
        DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            DurableOptions::new(dir.path()),
        )
        .await
        .unwrap(),
    );
    let receiver = Arc::new(
        Receiver::open(replicator.clone(), StreamId::default())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
    let (_stop, stopped) = watch::channel(false);
    let routes = omnirelay_replication_grpc::routes(
        replicator.clone(),
        Some(receiver.clone()),
        None,
        stopped,
    );
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_routes(routes)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let fixtures = fixtures();
    let records: Vec<_> = fixtures.iter().map(|(b, e)| record(b, e)).collect();
    let sink = |ca: Option<&str>| {
        GrpcSink::new(GrpcSinkOptions {
            url: format!("https://localhost:{port}"),
            sender: "tls".to_owned(),
            timeout: Duration::from_secs(5),
            token: None,
            ca_pem: ca.map(|c| c.as_bytes().to_vec()),
            protocol: Protocol::Auto,
            writer: None,
        })
        .unwrap()
    };
    // Trusting the receiver's certificate: published.
    sink(Some(&cert_pem))
        .apply_owned(&records[..3])
        .await
        .unwrap();
    assert_eq!(
        receiver
            .stats()
            .appended
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // Not trusting it (the system's roots): refused, nothing appended.
    let err = sink(None).apply_owned(&records[3..4]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert_eq!(
        receiver
            .stats()
            .appended
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    server.abort();
    replicator.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_cannot_read_is_quarantined_unary() {
    quarantined(Protocol::Unary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_cannot_read_is_quarantined_streaming() {
    quarantined(Protocol::Stream).await;
}

/// An event of a type this receiver does not know (a future version's):
/// kept in the quarantine, counted, acknowledged, never appended.
async fn quarantined(protocol: Protocol) {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path()).await;
    node.protocol = protocol;
    let fixtures = fixtures();
    let mut future =
        proto::pb::ResourceLeaseReplicationEventMessage::decode(fixtures[2].0.clone()).unwrap();
    future.event_type = 99;
    let future_bytes = Bytes::from(future.encode_to_vec());
    let mut future_event = fixtures[2].1.clone();
    future_event.sequence_number = 3;
    let records = vec![
        record(&fixtures[0].0, &fixtures[0].1),
        record(&fixtures[1].0, &fixtures[1].1),
        record(&future_bytes, &future_event),
    ];
    let sink = node.sink("newer-node");
    sink.apply_owned(&records).await.unwrap();
    node.replicator.wait_caught_up().await;
    assert_eq!(node.received().len(), 2, "the readable ones are appended");
    let stats = node.receiver.stats();
    assert_eq!(
        stats.quarantined.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let file = omnirelay_replication_grpc::quarantine::path(dir.path(), &StreamId::default());
    let kept = omnirelay_replication_grpc::quarantine::read_all(&file).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].sender.as_str(), kept[0].sequence),
        ("newer-node", 3)
    );
    assert_eq!(kept[0].format, "protobuf");
    assert!(kept[0].reason.contains("99"), "{}", kept[0].reason);
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&kept[0].payload)
            .unwrap(),
        future_bytes.to_vec(),
        "kept as it came"
    );
    // A re-send (the sender retrying its last batch) is a duplicate, not
    // a second copy.
    sink.apply_owned(&records[2..]).await.unwrap();
    assert_eq!(
        omnirelay_replication_grpc::quarantine::read_all(&file)
            .unwrap()
            .len(),
        1
    );
    // After a restart the marks come from the log alone (and its
    // checkpoint, which keeps what the log holds, not the quarantine):
    // what the log holds is known, and the quarantined event, sent again,
    // is kept again rather than taken on trust.
    crate::marks::checkpointed(dir.path(), 2).await;
    let reopened = Receiver::open(node.replicator.clone(), StreamId::default())
        .await
        .unwrap();
    assert_eq!(reopened.marks().await["newer-node"].sequence, 2);
    node.stop().await;
}
