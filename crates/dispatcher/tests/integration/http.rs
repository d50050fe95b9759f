//! The reference's HTTP RPC surface over a real socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use omnirelay_dispatcher::{Dispatcher, DispatcherOptions, http};
use omnirelay_replication::{
    Codec as _, Encoding, Format, Replay, Replayed, StreamId, WireVersion,
};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEventType as Type};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// POSTs `body` with `headers` to `address` (HTTP/1.1, one connection).
async fn post(
    address: &str,
    procedure: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send(
        address,
        "POST /omnirelay/v1/resourcelease",
        procedure,
        headers,
        body,
    )
    .await
}

/// Sends `line` (`METHOD PATH`) with `body` to `address`.
async fn send(
    address: &str,
    line: &str,
    procedure: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut request = format!(
        "{line} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(procedure) = procedure {
        request.push_str(&format!("Rpc-Procedure: {procedure}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    exchange(address, request.as_bytes()).await
}

/// Writes `request` (a whole HTTP/1.1 request, any bytes) to `address`
/// and reads the answer.
async fn exchange(address: &str, request: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

async fn serve(dir: &std::path::Path) -> (String, Arc<Dispatcher>) {
    serve_with(dir, DispatcherOptions::default()).await
}

async fn serve_with(
    dir: &std::path::Path,
    options: DispatcherOptions,
) -> (String, Arc<Dispatcher>) {
    let dispatcher = Dispatcher::open(crate::support::log(dir).await, options)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = http::router(dispatcher.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, dispatcher)
}

const PAYLOAD: &str = r#"{"payload":{"resourceType":"lakehouse.catalog","resourceId":"sales.orders","partitionKey":"p-1","payloadEncoding":"json","body":"e30=","attributes":{"owner":"mesh"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_procedures_answer_with_the_reference_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _dispatcher) = serve(dir.path()).await;
    let at = address.as_str();

    let enqueued = post(
        at,
        Some("resourcelease::enqueue"),
        &[("Rpc-Caller", "mesh-demo-host")],
        PAYLOAD,
    )
    .await;
    assert_eq!(enqueued.status, 200, "{:?}", enqueued.body);
    assert_eq!(
        enqueued.body,
        json!({"stats": {"pendingCount": 1, "activeLeaseCount": 0}})
    );

    // The explicit peer id wins over the headers.
    let leased = post(
        at,
        Some("resourcelease::lease"),
        &[("Rpc-Caller", "someone-else")],
        r#"{"peerId":"worker-1"}"#,
    )
    .await;
    assert_eq!(leased.status, 200, "{:?}", leased.body);
    let body = &leased.body;
    assert_eq!(body["payload"]["resourceId"], "sales.orders");
    assert_eq!(body["payload"]["attributes"], json!({"owner": "mesh"}));
    assert_eq!(
        (body["sequenceId"].as_i64(), body["attempt"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["ownerPeerId"], "worker-1");
    assert!(body.get("lastError").is_none());
    assert!(body["enqueuedAt"].as_str().unwrap().ends_with("+00:00"));
    let token = body["ownershipToken"].clone();
    assert_eq!(token["sequenceId"], 1);

    let hb = post(
        at,
        Some("resourcelease::heartbeat"),
        &[],
        &json!({"ownershipToken": token}).to_string(),
    )
    .await;
    assert_eq!(
        (hb.status, hb.body.clone()),
        (200, json!({"success": true}))
    );
    let done = post(
        at,
        Some("resourcelease::complete"),
        &[],
        &json!({"ownershipToken": token}).to_string(),
    )
    .await;
    assert_eq!(
        (done.status, done.body.clone()),
        (200, json!({"success": true}))
    );
    // Again: the token is gone.
    let again = post(
        at,
        Some("resourcelease::complete"),
        &[],
        &json!({"ownershipToken": token}).to_string(),
    )
    .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.headers["rpc-status"], "NotFound");
    assert_eq!(
        again.headers["rpc-error-code"],
        "error.resourcelease.unknown_token"
    );
    assert_eq!(again.body["status"], "NOT_FOUND");
    assert_eq!(again.body["code"], "error.resourcelease.unknown_token");

    // A failure without `requeue` requeues (the reference's default), and
    // the next lease carries it as lastError with attempt 2.
    post(at, Some("resourcelease::enqueue"), &[], PAYLOAD).await;
    let leased = post(
        at,
        Some("resourcelease::lease"),
        &[("x-peer-id", "worker-2")],
        "{}",
    )
    .await;
    assert_eq!(leased.body["ownerPeerId"], "worker-2");
    let failed = post(
        at,
        Some("resourcelease::fail"),
        &[],
        &json!({"ownershipToken": leased.body["ownershipToken"], "reason": "stale", "errorCode": "mesh.demo.failure"}).to_string(),
    )
    .await;
    assert_eq!(failed.status, 200, "{:?}", failed.body);
    let again = post(at, Some("resourcelease::lease"), &[], "").await;
    assert_eq!(again.body["attempt"], 2);
    assert_eq!(
        again.body["ownerPeerId"], "",
        "no peer resolves: empty, not absent"
    );
    assert_eq!(
        again.body["lastError"],
        json!({"message": "stale", "code": "mesh.demo.failure"})
    );
    // The fenced-out token of the first lease of that item.
    let fenced = post(
        at,
        Some("resourcelease::fail"),
        &[],
        &json!({"ownershipToken": leased.body["ownershipToken"]}).to_string(),
    )
    .await;
    assert_eq!(fenced.status, 412);
    assert_eq!(fenced.headers["rpc-status"], "FailedPrecondition");
    assert_eq!(
        fenced.headers["rpc-error-code"],
        "error.taskqueue.lease_inactive"
    );

    // Drain hands out the pending items; the queue then refuses work;
    // restore brings items back.
    post(at, Some("resourcelease::enqueue"), &[], PAYLOAD).await;
    let drained = post(at, Some("resourcelease::drain"), &[], "{}").await;
    assert_eq!(drained.status, 200);
    let items = drained.body["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["sequenceId"], 3);
    assert_eq!(items[0]["attempt"], 1);
    let refused = post(at, Some("resourcelease::enqueue"), &[], PAYLOAD).await;
    assert_eq!(refused.status, 412);
    assert_eq!(
        refused.headers["rpc-error-code"],
        "error.taskqueue.disposed"
    );
    let restored = post(
        at,
        Some("resourcelease::restore"),
        &[],
        &json!({"items": items}).to_string(),
    )
    .await;
    assert_eq!(
        (restored.status, restored.body.clone()),
        (200, json!({"restoredCount": 1}))
    );
    let none = post(at, Some("resourcelease::restore"), &[], r#"{"items":null}"#).await;
    assert_eq!(none.body, json!({"restoredCount": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_reference_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _dispatcher) = serve(dir.path()).await;
    let at = address.as_str();
    for (procedure, body, status, code) in [
        (
            Some("resourcelease::enqueue"),
            r#"{"payload":{"resourceType":" ","resourceId":"r","partitionKey":"p","payloadEncoding":"json"}}"#,
            400,
            Some("resourcelease.payload.resource_type_required"),
        ),
        (
            Some("resourcelease::enqueue"),
            "{}",
            400,
            Some("resourcelease.payload.required"),
        ),
        (Some("resourcelease::enqueue"), "{not json", 400, None),
        (
            Some("resourcelease::complete"),
            "{}",
            400,
            Some("resourcelease.ownership_token_required"),
        ),
        (
            Some("resourcelease::restore"),
            r#"{"items":[null]}"#,
            400,
            Some("resourcelease.restore.pending_item_required"),
        ),
        (None, "{}", 400, None),
        (Some("resourcelease::explode"), "{}", 501, None),
        (Some("other::enqueue"), PAYLOAD, 501, None),
    ] {
        let answer = post(at, procedure, &[], body).await;
        assert_eq!(
            answer.status, status,
            "{procedure:?} {body}: {:?}",
            answer.body
        );
        assert_eq!(
            answer.headers.get("rpc-error-code").map(String::as_str),
            code,
            "{procedure:?} {body}"
        );
        assert!(answer.headers.contains_key("rpc-status"));
        assert!(!answer.headers["rpc-error-message"].is_empty());
    }
    // A lease that finds nothing within its time limit.
    let waited = post(
        at,
        Some("resourcelease::lease"),
        &[("Rpc-Ttl-Ms", "100")],
        "{}",
    )
    .await;
    assert_eq!(waited.status, 504);
    assert_eq!(waited.headers["rpc-status"], "DeadlineExceeded");
    // A promotion sent to the dispatcher instead of its standby says so;
    // with an RPC header the path is the RPC's, as any other.
    let promote = send(at, "POST /standby/promote?wait_ms=0", None, &[], "").await;
    assert_eq!(promote.status, 409, "{:?}", promote.body);
    assert!(
        promote
            .body
            .as_str()
            .is_some_and(|why| why.contains("not a standby")),
        "{:?}",
        promote.body
    );
    let rpc = send(
        at,
        "POST /standby/promote",
        Some("resourcelease::enqueue"),
        &[],
        PAYLOAD,
    )
    .await;
    assert_eq!(rpc.status, 200, "{:?}", rpc.body);
    // A time limit that does not read is refused, not taken for none (an
    // unbounded wait); the item just enqueued stays pending.
    for ttl in ["5s", "-1", ""] {
        let refused = post(
            at,
            Some("resourcelease::lease"),
            &[("Rpc-Ttl-Ms", ttl)],
            "{}",
        )
        .await;
        assert_eq!(refused.status, 400, "{ttl:?}: {:?}", refused.body);
        assert!(
            refused.headers["rpc-error-message"].contains("Rpc-Ttl-Ms must be a whole number"),
            "{:?}",
            refused.headers
        );
    }
    let leased = post(at, Some("resourcelease::lease"), &[], "{}").await;
    assert_eq!(leased.status, 200, "{:?}", leased.body);
}

/// `Rpc-Ttl-Ms` bounds an enqueue's wait for room as it bounds a lease's
/// wait for an item: past it, `DeadlineExceeded` (504) and nothing
/// enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_a_full_queue_gives_up_at_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let options = DispatcherOptions {
        queue: omnirelay_dispatcher::QueueOptions {
            capacity: 1,
            ..Default::default()
        },
        ..DispatcherOptions::default()
    };
    let (address, dispatcher) = serve_with(dir.path(), options).await;
    let at = address.as_str();
    let enqueue = Some("resourcelease::enqueue");
    let first = post(at, enqueue, &[("Rpc-Ttl-Ms", "100")], PAYLOAD).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let waited = post(at, enqueue, &[("Rpc-Ttl-Ms", "100")], PAYLOAD).await;
    assert_eq!(waited.status, 504, "{:?}", waited.body);
    assert_eq!(waited.headers["rpc-status"], "DeadlineExceeded");
    assert!(
        waited.headers["rpc-error-message"].contains("no room in the queue within 100 ms"),
        "{:?}",
        waited.headers
    );
    let refused = post(at, enqueue, &[("Rpc-Ttl-Ms", "5s")], PAYLOAD).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(dispatcher.stats().await.pending, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_are_read_as_utf8_and_a_header_that_is_not_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (address, _dispatcher) = serve(dir.path()).await;
    let at = address.as_str();
    for _ in 0..2 {
        let enqueued = post(
            at,
            Some("resourcelease::enqueue"),
            &[("Rpc-Caller", "wörker-1 🙂")],
            PAYLOAD,
        )
        .await;
        assert_eq!(enqueued.status, 200, "{:?}", enqueued.body);
    }
    let leased = post(
        at,
        Some("resourcelease::lease"),
        &[("x-peer-id", "wörker-2")],
        "{}",
    )
    .await;
    assert_eq!(leased.status, 200, "{:?}", leased.body);
    assert_eq!(leased.body["ownerPeerId"], "wörker-2");

    // Latin-1 bytes: not a name we can read, so not leased to nobody.
    let mut request = format!(
        "POST /omnirelay/v1/resourcelease HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\nRpc-Procedure: resourcelease::lease\r\nContent-Length: 2\r\nRpc-Caller: w"
    )
    .into_bytes();
    request.extend_from_slice(b"\xe9rker\r\n\r\n{}");
    let refused = exchange(at, &request).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.headers["rpc-status"], "InvalidArgument");
    assert!(
        refused.headers["rpc-error-message"].contains("Rpc-Caller header is not UTF-8"),
        "{:?}",
        refused.headers
    );
    let next = post(at, Some("resourcelease::lease"), &[], "{}").await;
    assert_eq!(next.body["sequenceId"], 2, "the refused lease took nothing");

    assert_eq!(
        peers_of(dir.path(), Type::Enqueue),
        vec![Some("wörker-1 🙂".to_owned()); 2]
    );
    assert_eq!(
        peers_of(dir.path(), Type::LeaseGranted),
        vec![Some("wörker-2".to_owned()), None]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (address, dispatcher) = serve(dir.path()).await;
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let claimed = http::MAX_BODY_BYTES + 1;
    let head = format!(
        "POST /x HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nRpc-Procedure: resourcelease::restore\r\nContent-Length: {claimed}\r\n\r\n{{\"items\":["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("rpc-status: invalidargument"),
        "{response}"
    );
    assert_eq!(dispatcher.stats().await.pending, 0);
}

/// Enqueues `count` items and fails each without requeue: dead letters.
async fn dead_letter(at: &str, count: usize) {
    for _ in 0..count {
        post(at, Some("resourcelease::enqueue"), &[], PAYLOAD).await;
        let leased = post(at, Some("resourcelease::lease"), &[], r#"{"peerId":"w"}"#).await;
        let failed = post(
            at,
            Some("resourcelease::fail"),
            &[],
            &json!({
                "ownershipToken": leased.body["ownershipToken"],
                "reason": "poison",
                "errorCode": "mesh.poison",
                "requeue": false,
            })
            .to_string(),
        )
        .await;
        assert_eq!(failed.status, 200, "{:?}", failed.body);
    }
}

/// The peer ids of the events of `event_type` in the log under `dir`, in
/// order (read beside the running dispatcher).
fn peers_of(dir: &std::path::Path, event_type: Type) -> Vec<Option<String>> {
    let encoding = Encoding::new(Format::Protobuf, WireVersion::V2);
    Replay::open(
        dir,
        &StreamId::default(),
        1,
        Arc::new(ResourceLeaseCodec),
        encoding,
    )
    .unwrap()
    .filter_map(|step| match step.unwrap() {
        Replayed::Record(record) => {
            let event = ResourceLeaseCodec
                .decode(Format::Protobuf, record.bytes())
                .unwrap();
            (event.event_type == event_type).then_some(event.peer_id)
        }
        Replayed::Skipped { .. } => None,
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_redriven_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (address, dispatcher) = serve(dir.path()).await;
    let at = address.as_str();
    let (get_line, post_line) = (
        format!("GET {}", http::DEAD_LETTERS_PATH),
        format!("POST {}", http::REDRIVE_PATH),
    );
    let list = || send(at, &get_line, None, &[], "");
    let redrive =
        |body: &'static str| send(at, &post_line, None, &[("Rpc-Caller", "operator")], body);
    assert_eq!(list().await.body, json!({"deadLetters": [], "total": 0}));
    dead_letter(at, 2).await;
    let listed = list().await;
    assert_eq!(listed.status, 200);
    let letters = listed.body["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["item"]["sequenceId"], 1);
    assert_eq!(letters[0]["item"]["payload"]["resourceId"], "sales.orders");
    assert_eq!(
        letters[0]["error"],
        json!({"message": "poison", "code": "mesh.poison"})
    );
    assert!(
        letters[0]["deadLetteredAt"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );
    assert_eq!(listed.body["total"], 2);
    // A page: `offset` skips the oldest, `limit` bounds it; `total` counts all.
    let page = |query: &str| {
        let line = format!("GET {}{query}", http::DEAD_LETTERS_PATH);
        async move { send(at, &line, None, &[], "").await }
    };
    for (query, ids) in [
        ("?limit=1", vec![1]),
        ("?offset=1", vec![2]),
        ("?offset=1&limit=5", vec![2]),
        ("?offset=2", vec![]),
        ("?offset=9&limit=1", vec![]),
        ("?limit=0", vec![]),
    ] {
        let paged = page(query).await;
        assert_eq!(paged.status, 200, "{query}: {:?}", paged.body);
        let got: Vec<i64> = paged.body["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|letter| letter["item"]["sequenceId"].as_i64().unwrap())
            .collect();
        assert_eq!((got, &paged.body["total"]), (ids, &json!(2)), "{query}");
    }
    for query in ["?limit=-1", "?offset=x", "?page=2"] {
        let refused = page(query).await;
        assert_eq!(refused.status, 400, "{query}: {:?}", refused.body);
        assert!(
            refused.body["message"]
                .as_str()
                .unwrap()
                .contains(&query[1..query.find('=').unwrap()]),
            "{query}: {:?}",
            refused.body
        );
    }

    for (body, status) in [
        ("{}", 400),
        (r#"{"sequenceIds":[]}"#, 400),
        (r#"{"sequenceIds":[1],"all":true}"#, 400),
        (r#"{"ids":[1]}"#, 400),
        ("not json", 400),
        (r#"{"sequenceIds":[7]}"#, 404),
        (r#"{"sequenceIds":[2,2]}"#, 400),
    ] {
        let refused = redrive(body).await;
        assert_eq!(refused.status, status, "{body}: {:?}", refused.body);
        assert!(refused.headers.contains_key("rpc-status"), "{body}");
    }
    assert_eq!(
        redrive(r#"{"sequenceIds":[7]}"#).await.headers["rpc-error-code"],
        "resourcelease.redrive.not_dead_lettered"
    );
    let twice = redrive(r#"{"sequenceIds":[2,1,2]}"#).await;
    assert_eq!(
        twice.headers["rpc-error-code"],
        "resourcelease.redrive.named_twice"
    );
    assert_eq!(
        twice.body["message"],
        "item 2 is named twice: name each item once"
    );
    assert_eq!(dispatcher.dead_letters().await.len(), 2, "nothing changed");

    let redriven = redrive(r#"{"sequenceIds":[2],"peerId":"alice"}"#).await;
    assert_eq!(redriven.status, 200, "{:?}", redriven.body);
    assert_eq!(redriven.body["items"][0]["sequenceId"], 2);
    assert_eq!(redriven.body["items"][0]["attempt"], 1);
    assert_eq!(
        list().await.body["deadLetters"].as_array().unwrap().len(),
        1
    );
    // Leased again, with the error that dead-lettered it.
    let leased = post(at, Some("resourcelease::lease"), &[], "{}").await;
    assert_eq!(leased.body["sequenceId"], 2);
    assert_eq!(leased.body["lastError"]["code"], "mesh.poison");

    let rest = redrive(r#"{"all":true}"#).await;
    assert_eq!(rest.body["items"][0]["sequenceId"], 1);
    assert_eq!(list().await.body, json!({"deadLetters": [], "total": 0}));
    assert_eq!(redrive(r#"{"all":true}"#).await.body, json!({"items": []}));
    // The body's peer id names the operator; without one, the headers do.
    assert_eq!(
        peers_of(dir.path(), Type::Requeued),
        [Some("alice".to_owned()), Some("operator".to_owned())]
    );
    // The RPC still answers on every other path, GET included as before.
    let get_rpc = send(at, "GET /omnirelay/v1/resourcelease", None, &[], "").await;
    assert_eq!(get_rpc.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_purged_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (address, dispatcher) = serve(dir.path()).await;
    let at = address.as_str();
    let post_line = format!("POST {}", http::PURGE_PATH);
    let purge =
        |body: &'static str| send(at, &post_line, None, &[("Rpc-Caller", "operator")], body);
    let dead = || async {
        let letters = dispatcher.dead_letters().await;
        letters
            .iter()
            .map(|d| d.item.sequence_id)
            .collect::<Vec<_>>()
    };
    dead_letter(at, 3).await;
    for (body, status) in [
        ("{}", 400),
        (r#"{"sequenceIds":[]}"#, 400),
        (r#"{"sequenceIds":[1],"all":true}"#, 400),
        ("not json", 400),
        (r#"{"sequenceIds":[1,7]}"#, 404),
        (r#"{"sequenceIds":[1,1]}"#, 400),
    ] {
        let refused = purge(body).await;
        assert_eq!(refused.status, status, "{body}: {:?}", refused.body);
        assert!(refused.headers.contains_key("rpc-status"), "{body}");
    }
    let unknown = purge(r#"{"sequenceIds":[7]}"#).await;
    assert_eq!(
        unknown.headers["rpc-error-code"],
        "resourcelease.purge.not_dead_lettered"
    );
    assert_eq!(unknown.body["message"], "item 7 is not dead-lettered");
    let twice = purge(r#"{"sequenceIds":[1,2,1]}"#).await;
    assert_eq!(
        twice.headers["rpc-error-code"],
        "resourcelease.purge.named_twice"
    );
    assert_eq!(
        twice.body["message"],
        "item 1 is named twice: name each item once"
    );
    assert_eq!(dead().await, [1, 2, 3], "nothing purged");

    let purged = purge(r#"{"sequenceIds":[2]}"#).await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(purged.body["items"][0]["sequenceId"], 2);
    assert_eq!(
        purged.body["items"][0]["payload"]["resourceId"],
        "sales.orders"
    );
    assert_eq!(dead().await, [1, 3]);
    let rest = purge(r#"{"all":true,"peerId":"alice"}"#).await;
    let ids: Vec<_> = rest.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sequenceId"].clone())
        .collect();
    assert_eq!(ids, [1, 3]);
    assert!(dead().await.is_empty());
    assert_eq!(purge(r#"{"all":true}"#).await.body, json!({"items": []}));
    assert_eq!(
        peers_of(dir.path(), Type::DeadLetterPurged),
        [Some("operator".to_owned()), Some("alice".to_owned())]
    );
    for body in [r#"{"all":true,"peerId":7}"#, r#"{"all":true,"peer":"x"}"#] {
        assert_eq!(purge(body).await.status, 400, "{body}");
    }
    // Purged items are gone for good: nothing to lease.
    let stats = dispatcher.stats().await;
    assert_eq!((stats.pending, stats.active), (0, 0));
}

/// `POST /standby/promote` over a real socket: a standby behind the
/// primary's stream is not promoted (409, the reason, the standby
/// untouched) unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_promotion_is_refused_over_http_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = crate::support::log(dir.path()).await;
    let standby = omnirelay_dispatcher::Standby::open_fed(
        replicator,
        DispatcherOptions::default(),
        "bus",
        omnirelay_dispatcher::PRIMARY_QUIET,
    )
    .await
    .unwrap();
    // Its source says the primary's stream is at 10; it has nothing.
    standby.report_upstream(false, Some(10), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = http::standby_router(standby.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let status = send(&address, "GET /standby", None, &[], "").await;
    let hazard = status.body["promotionHazard"].as_str().unwrap_or_default();
    assert!(
        hazard.contains("would lose the 10 events"),
        "{}",
        status.body
    );
    let refused = send(&address, "POST /standby/promote?wait_ms=50", None, &[], "").await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let why = refused.body.as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains("through sequence 0 of 10: promoted now, it would lose the 10 events"),
        "{why}"
    );
    assert!(why.contains("force"), "{why}");
    assert!(!standby.is_promoted());
    let bad = send(&address, "POST /standby/promote?force=maybe", None, &[], "").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(!standby.is_promoted());

    let forced = send(&address, "POST /standby/promote?force=true", None, &[], "").await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert_eq!(forced.body["role"], "dispatcher");
    assert!(standby.is_promoted());
    let status = send(&address, "GET /standby", None, &[], "").await;
    assert!(status.body["promotionHazard"].is_null(), "{}", status.body);
}
