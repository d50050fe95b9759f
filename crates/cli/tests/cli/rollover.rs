//! Schema rollover, black-box: three `omnirelay serve` nodes replicating
//! in a chain, the first writing version 1 and the others version 2; the
//! first is rolled forward by a restart with version 2; events of a
//! version or type nobody here knows are quarantined, not dropped.

use omnirelay_replication_testkit::process::KillOnDrop;
use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

use omnirelay_replication_testkit::process::signal;
use serde_json::{Value, json};

use crate::log::replay_events;
use crate::{http_get, omnirelay, spawn_listening, text, try_http_post};

const PAYLOAD: &str = r#"{"payload":{"resourceType":"lakehouse.catalog","resourceId":"r","partitionKey":"p","payloadEncoding":"json","body":"e30=","attributes":{}}}"#;

/// A node's configuration: its data, and a gRPC sink to `next` (sending
/// as `name`) when it has one.
fn config(dir: &Path, name: &str, next: Option<&str>) -> String {
    let mut text = format!("data_dir = \"{}\"\n", dir.display());
    if let Some(next) = next {
        text.push_str(&format!(
            r#"[replication.sinks.next]
type = "grpc"
[replication.sinks.next.retry]
initial_backoff_ms = 20
max_backoff_ms = 200
[replication.sinks.next.settings]
url = "http://{next}"
sender = "{name}"
"#
        ));
    }
    let path = dir.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Starts `serve` with `args`; the child and its address, once ready.
fn serve(args: &[&str]) -> (KillOnDrop, String) {
    let (child, address, mut stderr) = spawn_listening(args);
    let mut line = String::new();
    while !line.contains("ready at") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{args:?} stopped");
    }
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    });
    (child, address)
}

/// `omnirelay serve --role ROLE --config CONFIG --listen LISTEN
/// --write-version VERSION`, ready; the child and its address.
fn node(role: &str, config: &str, listen: &str, version: &str) -> (KillOnDrop, String) {
    serve(&[
        "serve",
        "--role",
        role,
        "--config",
        config,
        "--listen",
        listen,
        "--write-version",
        version,
    ])
}

/// An RPC to the dispatcher at `address`; its answer.
fn rpc(address: &str, procedure: &str, body: &str) -> Value {
    let (status, _, answer) = try_http_post(address, &[("Rpc-Procedure", procedure)], body)
        .unwrap_or_else(|| panic!("nothing answered at {address}"));
    assert_eq!(status, 200, "{procedure}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

/// `enqueues` items enqueued, then one leased by `peer` and completed.
fn work(address: &str, peer: &str, enqueues: usize) {
    for _ in 0..enqueues {
        rpc(address, "resourcelease::enqueue", PAYLOAD);
    }
    let leased = rpc(
        address,
        "resourcelease::lease",
        &json!({"peerId": peer}).to_string(),
    );
    rpc(
        address,
        "resourcelease::complete",
        &json!({"ownershipToken": leased["ownershipToken"]}).to_string(),
    );
}

/// What identifies an event across nodes (each numbers it its own way).
fn identity(event: &Value) -> (String, String, String) {
    (
        event["eventType"].as_str().unwrap_or("").to_owned(),
        event["peerId"].as_str().unwrap_or("").to_owned(),
        event["payload"]["resourceId"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

/// Waits until the node in `dir` holds `want` (by identity, in order).
fn converge(dir: &Path, want: &[(String, String, String)], what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = replay_events(dir, "2");
        let ids: Vec<_> = got.iter().map(identity).collect();
        if ids == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held every event:\nwant {want:?}\ngot  {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn heavy_a_mesh_rolls_forward_from_version_1_to_2_and_quarantines_what_it_cannot_read() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    // C ← B ← A: receivers at version 2, the dispatcher at version 1.
    let c_config = config(&c, "c", None);
    let (mut c_node, c_at) = node("receiver", &c_config, "127.0.0.1:0", "2");
    let b_config = config(&b, "b", Some(&c_at));
    let (mut b_node, b_at) = node("receiver", &b_config, "127.0.0.1:0", "2");
    let a_config = config(&a, "a", Some(&b_at));
    let (mut a_node, a_at) = node("dispatcher", &a_config, "127.0.0.1:0", "1");

    // At version 1 the first node sends its events in the reference form.
    work(&a_at, "worker-1", 2);
    let sent: Vec<_> = replay_events(&a, "1").iter().map(identity).collect();
    assert_eq!(sent.len(), 5, "{sent:?}");
    converge(&b, &sent, "b");
    let at_c = converge(&c, &sent, "c");
    assert!(
        at_c.iter()
            .all(|e| e["metadata"]["replication.origin.sender"] == "b"),
        "c got them from b"
    );

    // Rolled forward: restarted with version 2 on the same address, it
    // sends every event, version 2's own (a dead letter) too.
    assert!(signal(a_node.id(), "TERM"));
    assert!(a_node.wait().unwrap().success());
    let (restarted, _) = node("dispatcher", &a_config, &a_at, "2");
    a_node = restarted;
    let leased = rpc(&a_at, "resourcelease::lease", r#"{"peerId":"worker-2"}"#);
    let token = json!({"ownershipToken": leased["ownershipToken"], "requeue": false});
    rpc(&a_at, "resourcelease::fail", &token.to_string());
    work(&a_at, "worker-2", 1);
    let every: Vec<_> = replay_events(&a, "2").iter().map(identity).collect();
    assert!(
        every.iter().any(|(kind, _, _)| kind == "DeadLettered"),
        "{every:?}"
    );
    converge(&b, &every, "b");
    converge(&c, &every, "c");

    // A newer node sends b an event of a type, and one of a version, that
    // nobody here knows: quarantined and counted, not appended, b still up.
    let mut unknown_type = known_message();
    unknown_type.event_type = 99;
    unknown_type.sequence_number = 1;
    let mut unknown_version = known_message();
    unknown_version.schema_version = 3;
    unknown_version.sequence_number = 2;
    send_raw(&b_at, "future-node", &[unknown_type, unknown_version]);
    let quarantine = b.join("quarantine/default.jsonl");
    let kept: Vec<Value> = std::fs::read_to_string(&quarantine)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|k| k["sender"] == "future-node"));
    assert!(
        kept[1]["reason"].as_str().unwrap().contains('3'),
        "{}",
        kept[1]
    );
    let metrics = http_get(&b_at, "/metrics").unwrap().1;
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("omnirelay_replication_receiver_events_total")
                && l.contains("outcome=\"quarantined\"")
                && l.contains("sender=\"future-node\"")
        })
        .unwrap_or_else(|| panic!("no quarantined count in {metrics}"));
    assert!(counted.ends_with(" 2"), "{counted}");
    assert_eq!(http_get(&b_at, "/healthz").unwrap().0, 200);
    converge(&b, &every, "b, with nothing of the newer node appended");

    // Every released version's fixtures stay readable.
    for version in ["v1", "v2"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../resourcelease/fixtures")
            .join(version);
        let mut lines = String::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                lines.push_str(std::fs::read_to_string(path).unwrap().trim());
                lines.push('\n');
            }
        }
        let out = omnirelay(&["schema", "check"], lines.as_bytes());
        assert!(out.status.success(), "{version}: {}", text(&out.stdout));
    }
    for node in [&mut a_node, &mut b_node, &mut c_node] {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
    }
}

/// A readable event's protobuf message (the first v1 fixture).
fn known_message() -> omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage {
    use prost::Message as _;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../resourcelease/fixtures/v1/enqueue.binpb");
    omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage::decode(
        std::fs::read(path).unwrap().as_slice(),
    )
    .unwrap()
}

/// Sends `messages` as they are to the receiver at `address` over the
/// streaming service, as `sender`.
fn send_raw(
    address: &str,
    sender: &str,
    messages: &[omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage],
) {
    use omnirelay_replication::{
        Encoding, EventKind, OwnedRecord, RecordHeader, Sink as _, StreamId, Timestamp,
    };
    use prost::Message as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The sink's channel needs the runtime.
    let _entered = runtime.enter();
    let sink =
        omnirelay_replication_grpc::GrpcSink::new(omnirelay_replication_grpc::GrpcSinkOptions {
            url: format!("http://{address}"),
            sender: sender.to_owned(),
            timeout: Duration::from_secs(5),
            token: None,
            ca_pem: None,
            protocol: omnirelay_replication_grpc::Protocol::Stream,
            writer: None,
        })
        .unwrap();
    let records: Vec<OwnedRecord> = messages
        .iter()
        .map(|m| {
            OwnedRecord::new(
                StreamId::default(),
                RecordHeader {
                    sequence: u64::try_from(m.sequence_number).unwrap(),
                    timestamp: Timestamp::now(),
                    kind: EventKind {
                        code: 0,
                        name: "Future",
                    },
                    peer: None,
                },
                Encoding::PROTOBUF_V1,
                bytes::Bytes::from(m.encode_to_vec()),
            )
        })
        .collect();
    runtime.block_on(async {
        let borrowed: Vec<_> = records.iter().map(OwnedRecord::as_record).collect();
        sink.apply(&borrowed).await.unwrap();
    });
}
