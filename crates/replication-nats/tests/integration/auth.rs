//! The sink (configured as users configure it) and a follower's source
//! against real servers that want credentials: nkey users, and operator
//! mode with a user's `.creds` file (JWTs signed with real nkeys); and
//! against a server speaking TLS with a certificate of its own authority.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use omnirelay_replication::config::{SinkContext, SinkFactory as _};
use omnirelay_replication::{Encoding, ErrorKind, SharedSink, Sink as _, SinkExt as _, StreamId};
use omnirelay_replication_nats::{FollowUrl, NatsSinkFactory, NatsSource};
use omnirelay_replication_testkit::conformance::record;
use omnirelay_replication_testkit::nats_auth::{self, ServerAuth};
use omnirelay_replication_testkit::process::{start_nats, start_nats_with};
use omnirelay_replication_testkit::tls::localhost_certificate;

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
    // It reads who wrote them: the node of the data directory, the name a
    // standby fed from the bus takes for its own.
    assert_eq!(
        follow.last_writer(&stream).await.unwrap(),
        Some(omnirelay_replication::node::node_name(dir.path()).unwrap()),
        "{kind}"
    );
    let empty = StreamId::new("empty").unwrap();
    assert_eq!(follow.last_writer(&empty).await.unwrap(), None, "{kind}");

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
        // Without waiting out the client's 10 s request timeout.
        let sink = refused.unwrap_or_else(|e| panic!("{kind}, {who}: {e}"));
        let err = match tokio::time::timeout(Duration::from_secs(5), sink.checkpoint(&stream))
            .await
            .unwrap_or_else(|_| panic!("{kind}: {who} was not refused within 5 s"))
        {
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

/// The error of the first call of a sink that cannot connect.
async fn refusal(sink: &SharedSink) -> String {
    match sink.checkpoint(&StreamId::default()).await {
        Err(err) => err.to_string(),
        Ok(mark) => panic!("the sink got in ({mark:?})"),
    }
}

/// The error of a sink that cannot connect, once it says why beyond the
/// client's kind of failure (its probe runs beside the first calls).
async fn explained_refusal(sink: &SharedSink) -> String {
    let mut err = String::new();
    for _ in 0..5 {
        err = refusal(sink).await;
        if err.contains("; ") {
            break;
        }
    }
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_sink_and_a_follower_trust_the_authority_of_a_tls_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_certificate(dir.path());
    let config = dir.path().join("tls.conf");
    std::fs::write(
        &config,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (_server, port) = start_nats_with(&dir.path().join("store"), None, &["-c", &config]);
    let url = format!("nats://localhost:{port}");

    // With the authority (relative to the data directory), the sink
    // publishes and reads its mark back.
    let bus = sink(
        serde_json::json!({ "servers": [url], "ca_file": "cert.pem", "ack_timeout_ms": 2000 }),
        dir.path(),
    )
    .await
    .unwrap();
    let stream = StreamId::default();
    let records: Vec<_> = (1..=3)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    bus.apply_owned(&records).await.unwrap();
    assert_eq!(bus.checkpoint(&stream).await.unwrap(), Some(3));

    // A follower trusts it through its address.
    let follow =
        FollowUrl::parse(&format!("{url}?ca_file={}", cert.display()), "follower").unwrap();
    let mut source = NatsSource::<Doc>::connect_to(&follow, Arc::new(DocCodec))
        .await
        .unwrap_or_else(|e| panic!("follower: {e}"));
    assert_eq!(source.pending().await.unwrap(), 3);

    // Without it (the system's roots, which do not know this authority),
    // the handshake fails, and the sink says it cannot connect rather than
    // only timing out, and why: the client reports the failed handshake
    // as an I/O error, so the sink repeats it to find the reason.
    let doubting = sink(
        serde_json::json!({ "servers": [url], "ack_timeout_ms": 2000 }),
        dir.path(),
    )
    .await
    .unwrap();
    let err = explained_refusal(&doubting).await;
    assert!(err.contains("the client cannot connect"), "{err}");
    assert!(
        err.contains(&format!("the TLS handshake with localhost:{port} failed"))
            && err.contains("UnknownIssuer"),
        "{err}"
    );

    // A sink given an authority requires TLS: a server without it is
    // refused, never spoken to in plain text.
    let (_plain, plain_port) = start_nats(&dir.path().join("plain"), None);
    let insisting = sink(
        serde_json::json!({
            "servers": [format!("nats://127.0.0.1:{plain_port}")],
            "ca_file": "cert.pem",
            "ack_timeout_ms": 2000,
        }),
        dir.path(),
    )
    .await
    .unwrap();
    let err = explained_refusal(&insisting).await;
    assert!(err.contains("the client cannot connect"), "{err}");
    assert!(
        err.contains(&format!(
            "127.0.0.1:{plain_port} does not offer TLS, and the client requires it"
        )),
        "{err}"
    );

    // An authority file that is missing or no certificate: a configuration
    // error naming it.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    for (file, why) in [
        ("missing.pem", "cannot be read"),
        ("bad.pem", "no PEM certificate"),
    ] {
        let err = sink(
            serde_json::json!({ "servers": [url], "ca_file": file }),
            dir.path(),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            err.to_string().contains(file) && err.to_string().contains(why),
            "{err}"
        );
    }
    let err = FollowUrl::parse(&format!("{url}?ca_file="), "follower").unwrap_err();
    assert!(err.to_string().contains("ca_file needs a value"), "{err}");
}
