//! The sink (configured as users configure it) and a follower's source
//! against real servers that want credentials: nkey users, and operator
//! mode with a user's `.creds` file (JWTs signed with real nkeys).

use std::path::Path;
use std::sync::Arc;

use omnirelay_replication::config::{SinkContext, SinkFactory as _};
use omnirelay_replication::{Encoding, ErrorKind, SharedSink, Sink as _, SinkExt as _, StreamId};
use omnirelay_replication_nats::{FollowUrl, NatsSinkFactory, NatsSource};
use omnirelay_replication_testkit::conformance::record;
use omnirelay_replication_testkit::nats_auth::{self, ServerAuth};
use omnirelay_replication_testkit::process::start_nats_with;

use crate::source::{Doc, DocCodec};

/// The `nats` sink built from `settings` (JSON of its settings table), as
/// a node builds it from its configuration, with `data_dir` for relative
/// paths.
async fn sink(
    settings: serde_json::Value,
    data_dir: &Path,
) -> Result<SharedSink, omnirelay_replication::Error> {
    let builder = NatsSinkFactory
        .validate(&settings)
        .unwrap_or_else(|e| panic!("{settings}: {}", e.message));
    builder
        .build(SinkContext {
            name: "bus",
            data_dir,
        })
        .await
}

async fn presents(kind: &str, setup: fn(&Path) -> ServerAuth) {
    let dir = tempfile::tempdir().unwrap();
    let auth = setup(dir.path());
    let config = auth.config.display().to_string();
    let (_server, port) = start_nats_with(&dir.path().join("store"), None, &["-c", &config]);
    let url = format!("nats://127.0.0.1:{port}");
    // Requests to a server that refuses the client time out after 2 s.
    let settings =
        |file: &Path| serde_json::json!({ "servers": [url], kind: file, "ack_timeout_ms": 2000 });

    // The allowed user publishes; the sink reads its mark back.
    let bus = sink(settings(&auth.allowed), dir.path())
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let stream = StreamId::default();
    let records: Vec<_> = (1..=3)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    bus.apply_owned(&records).await.unwrap();
    assert_eq!(bus.checkpoint(&stream).await.unwrap(), Some(3), "{kind}");

    // Relative to the data directory, as every path in sink settings.
    let name = auth.allowed.file_name().unwrap().to_str().unwrap();
    let relative = sink(settings(Path::new(name)), dir.path()).await;
    assert!(relative.is_ok(), "{kind} relative: {:?}", relative.err());

    // A follower presents the same file through its address.
    let follow = FollowUrl::parse(
        &format!("{url}?{kind}={}", auth.allowed.display()),
        "follower",
    )
    .unwrap();
    let mut source = NatsSource::<Doc>::connect_to(&follow, Arc::new(DocCodec))
        .await
        .unwrap_or_else(|e| panic!("{kind} follower: {e}"));
    assert_eq!(source.pending().await.unwrap(), 3, "{kind} follower");

    // Someone the server does not know, or nobody, is refused.
    for (who, refused) in [
        (
            "a stranger",
            sink(settings(&auth.stranger), dir.path()).await,
        ),
        (
            "no credentials",
            sink(
                serde_json::json!({ "servers": [url], "ack_timeout_ms": 2000 }),
                dir.path(),
            )
            .await,
        ),
    ] {
        // The sink connects in the background (a server down at start is
        // a matter of delivery): the refusal shows on its first call, and
        // says why rather than only timing out.
        let sink = refused.unwrap_or_else(|e| panic!("{kind}, {who}: {e}"));
        let err = match sink.checkpoint(&stream).await {
            Err(err) => err.to_string(),
            Ok(mark) => panic!("{kind}: {who} got in ({mark:?})"),
        };
        assert!(
            err.contains("the client cannot connect") && err.contains("authorization violation"),
            "{kind}, {who}: {err}"
        );
    }

    // A file that is missing or holds something else: a configuration
    // error naming the file, never showing its contents.
    let missing = dir.path().join("missing");
    let err = sink(settings(&missing), dir.path()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    let wrong = if kind == "nkey_seed_file" {
        // A seed, of an account rather than a user.
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        std::fs::write(dir.path().join("wrong"), &account).unwrap();
        account
    } else {
        let seed = std::fs::read_to_string(nats_auth::nkey_user(dir.path()).allowed).unwrap();
        std::fs::write(dir.path().join("wrong"), &seed).unwrap();
        seed
    };
    let err = sink(settings(&dir.path().join("wrong")), dir.path())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        !err.to_string().contains(wrong.trim()),
        "the secret was shown: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_user_creds_file_opens_a_server_in_operator_mode() {
    presents("credentials_file", nats_auth::operator_mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_an_nkey_seed_file_opens_a_server_of_nkey_users() {
    presents("nkey_seed_file", nats_auth::nkey_user).await;
}
