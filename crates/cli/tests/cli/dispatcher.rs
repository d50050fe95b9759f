//! `omnirelay serve --role dispatcher`, black-box: the reference's HTTP RPC
//! on the node's one port, its stream read over gRPC, a restart that keeps
//! the queue, and the token.

use std::path::Path;

use omnirelay_replication_testkit::process::{KillOnDrop, signal, start_nats, start_nats_with};
use serde_json::{Value, json};

use crate::log::{dir_arg, replay_events};
use crate::{
    http_get, http_post, omnirelay, refused, said, spawn_listening, text, try_http_post,
    try_http_post_to, under_file_limit,
};

const PAYLOAD: &str = r#"{"payload":{"resourceType":"lakehouse.catalog","resourceId":"sales.orders","partitionKey":"p-1","payloadEncoding":"json","body":"e30=","attributes":{}}}"#;

fn rpc(address: &str, procedure: &str, extra: &[(&str, &str)], body: &str) -> (u16, Value) {
    try_rpc(address, procedure, extra, body)
        .unwrap_or_else(|| panic!("nothing answered at {address}"))
}

/// Starts a dispatcher on `dir`; its child, address, and the queue line.
fn start(dir: &Path, extra: &[&str]) -> (KillOnDrop, String, String) {
    let mut args = vec![
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(dir),
    ];
    args.extend_from_slice(extra);
    let (child, address, mut stderr) = spawn_listening(&args);
    let rebuilt = said(&mut stderr);
    let ready = said(&mut stderr);
    assert!(rebuilt.starts_with("queue rebuilt"), "{rebuilt}");
    assert!(ready.starts_with("dispatcher ready"), "{ready}");
    (child, address, rebuilt)
}

/// A record damaged in the newest segment of a stopped dispatcher's log,
/// with intact records after it (a bad sector, not a torn write): the
/// restart keeps them — before, it cut the log at the damage and came up
/// with every acknowledged operation after it undone — and refuses to
/// rebuild a queue from a stream with a hole in it, saying where to look;
/// `log verify` names the one sequence lost, and `log replay
/// --past-damage` still has every other event.
#[test]
fn a_dispatcher_whose_newest_segment_is_damaged_keeps_what_follows_and_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address, _) = start(dir.path(), &[]);
    for _ in 0..10 {
        let (status, body) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
        assert_eq!(status, 200, "{body}");
    }
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
    let data = dir_arg(dir.path());
    let segment = dir.path().join("log/default/00000000000000000001.seg");
    omnirelay_replication_testkit::damage_record(&segment, 4);
    let serve = [
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    // Bounded: a node that starts (as one did before) fails the test
    // instead of hanging it.
    let refused = || {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_omnirelay"))
            .args(serve)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("cannot rebuild the queue from stream default: corrupt"),
            "{stderr}"
        );
        stderr
    };
    let stderr = refused();
    assert!(
        stderr.contains(&format!(
            "`omnirelay log verify --data-dir {data}` names what is lost"
        )),
        "{stderr}"
    );
    // Refused again, not cut by the first attempt.
    refused();
    let out = omnirelay(&["log", "verify", "--data-dir", data], b"");
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("stream default: 1..=10 (9 records"),
        "{report}"
    );
    assert!(
        report.contains("sequences 4..=4 cannot be read"),
        "{report}"
    );
    let out = omnirelay(&["log", "replay", "--data-dir", data, "--past-damage"], b"");
    let sequences: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, [1, 2, 3, 5, 6, 7, 8, 9, 10]);
}

/// Retention configured for every stream, a dispatcher's included, with
/// queue checkpoints every 200 ms: retention deletes the segments the
/// checkpoint covers, and the restart reads the checkpoint and the events
/// after it. Before, retention deleted the sealed segments the export had
/// passed, and the restart folded what was left: most of the queue gone,
/// the rest renumbered from 1.
#[test]
fn retention_deletes_only_what_the_queue_checkpoint_covers() {
    let (dir, said, metrics, primary, primary_at) = dispatcher_under_retention(200);
    assert!(!said.contains("retention does not delete"), "{said}");
    let saved = checkpoint_sequence(&metrics);
    assert!(saved >= 100.0, "{metrics}");
    let data = dir.path().join("data");
    let stream = omnirelay_replication::StreamId::default();
    assert!(data.join("dispatcher/default.queue.json").is_file());
    let oldest = omnirelay_replication_testkit::oldest_record(&data, &stream);
    assert!(oldest > 1, "retention deleted nothing");
    // A new standby begins from the queue checkpoint (over gRPC
    // `Snapshot`), its log after it, and promoted serves the same queue.
    let standby_dir = dir.path().join("standby");
    let (_standby, standby_at) = start_standby(&standby_dir, &format!("http://{primary_at}"));
    let mut status = Value::Null;
    for _ in 0..250 {
        if let Some((_, body)) = http_get(&standby_at, "/standby") {
            status = serde_json::from_str(&body).unwrap();
            if status["lagEvents"] == 0 && status["appliedSequence"].as_u64() > Some(0) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status["lagEvents"], 0, "{status}");
    let began =
        omnirelay_replication::log::read_meta(&standby_dir.join("log").join(stream.as_str()))
            .unwrap()
            .started_after;
    assert!(began >= Some(oldest - 1), "{began:?}, oldest {oldest}");
    drop(primary);
    let out = omnirelay(
        &[
            "promote",
            "--url",
            &format!("http://{standby_at}"),
            "--wait",
            "15",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (status, stats) = rpc(&standby_at, "resourcelease::enqueue", &[], PAYLOAD);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["stats"],
        json!({"pendingCount": 98, "activeLeaseCount": 4}),
        "{stats}"
    );
    let out = omnirelay(
        &["log", "inspect", "--data-dir", dir_arg(&standby_dir)],
        b"",
    );
    let inspected = text(&out.stdout);
    assert!(
        inspected.contains(&format!(
            "started after  {} (begun as a standby from its primary's queue checkpoint through it)",
            began.unwrap()
        )),
        "{inspected}"
    );
    // `log inspect` shows the checkpoint, `log verify` checks that it
    // covers what the log lacks.
    let data_dir = data.to_str().unwrap();
    let inspect = |args: &[&str]| {
        let out = omnirelay(&[&["log"], args, &["--data-dir", data_dir]].concat(), b"");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    let (_, inspected) = inspect(&["inspect"]);
    assert!(
        inspected.contains("  queue          checkpoint through event ")
            && inspected.contains("leased, 0 dead-lettered"),
        "{inspected}"
    );
    let (ok, verified) = inspect(&["verify"]);
    assert!(
        ok && verified.contains("  queue checkpoint through event "),
        "{verified}"
    );
    // A checkpoint through an event before the log's first leaves a hole
    // no start can fold, and so does a damaged one: both are problems.
    let file = data.join("dispatcher/default.queue.json");
    let mut checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    checkpoint["through"] = 1.into();
    std::fs::write(&file, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let (ok, verified) = inspect(&["verify"]);
    assert!(!ok, "{verified}");
    assert!(
        verified.contains(&format!(
            "problem: the queue checkpoint is through event 1, and the log begins at event \
             {oldest}, not 1: events 2 to {} are gone",
            oldest - 1
        )) && verified.ends_with("log DAMAGED\n"),
        "{verified}"
    );
    std::fs::write(&file, b"{").unwrap();
    let (ok, verified) = inspect(&["verify"]);
    assert!(!ok, "{verified}");
    assert!(
        verified.contains("problem: the queue checkpoint is damaged: ")
            && verified.contains(&format!(
                "and the log begins at event {oldest}, not 1: a dispatcher cannot rebuild its queue"
            )),
        "{verified}"
    );
}

/// The same with checkpoints off: the node says that retention leaves the
/// dispatcher's stream whole, and does.
#[test]
fn without_queue_checkpoints_retention_leaves_a_dispatchers_stream_whole() {
    let (dir, said, metrics, primary, _) = dispatcher_under_retention(0);
    drop(primary);
    assert_eq!(checkpoint_sequence(&metrics), 0.0, "{metrics}");
    assert!(
        said.contains("retention does not delete the queue's stream"),
        "{said}"
    );
    let data = dir.path().join("data");
    assert!(!data.join("dispatcher/default.queue.json").exists());
    let stream = omnirelay_replication::StreamId::default();
    assert_eq!(
        omnirelay_replication_testkit::oldest_record(&data, &stream),
        1
    );
    // A damaged checkpoint beside a whole log costs only a longer start.
    std::fs::create_dir_all(data.join("dispatcher")).unwrap();
    std::fs::write(data.join("dispatcher/default.queue.json"), b"{").unwrap();
    let out = omnirelay(
        &["log", "verify", "--data-dir", data.to_str().unwrap()],
        b"",
    );
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{verified}");
    assert!(
        verified.contains("note: the queue checkpoint is damaged: ")
            && verified.contains("a dispatcher's start sets it aside and folds the whole stream")
            && verified.ends_with("log ok\n"),
        "{verified}"
    );
}

/// A queue checkpoint that cannot be saved (a file where its directory
/// goes) is counted and said once, and the dispatcher serves on.
#[test]
fn a_checkpoint_that_cannot_be_saved_is_counted_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[services.dispatcher]\ncheckpoint_interval_ms = 50\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dispatcher"), b"in the way").unwrap();
    let (_node, address, _) = serve_with_config(&data, &config);
    let failures = || {
        let metrics = http_get(&address, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        metric(&metrics, "omnirelay_dispatcher_checkpoint_failures_total").unwrap_or(0.0)
    };
    let mut counted = 0.0;
    for _ in 0..100 {
        let (status, body) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
        assert_eq!(status, 200, "{body}");
        counted = failures();
        if counted >= 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(counted >= 1.0, "no checkpoint failure counted");
    let (status, body) = rpc(&address, "resourcelease::lease", &[], "{}");
    assert_eq!((status, &body["sequenceId"]), (200, &json!(1)), "{body}");
}

/// The value of the (one) series of metric `name` in `metrics`.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of `omnirelay_dispatcher_checkpoint_sequence` in `metrics`.
fn checkpoint_sequence(metrics: &str) -> f64 {
    metric(metrics, "omnirelay_dispatcher_checkpoint_sequence")
        .unwrap_or_else(|| panic!("no checkpoint gauge: {metrics}"))
}

/// `serve --role dispatcher` on `data` with the configuration `config`.
fn serve_with_config(
    data: &Path,
    config: &Path,
) -> (
    KillOnDrop,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    spawn_listening(&[
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(data),
        "--config",
        dir_arg(config),
    ])
}

/// A dispatcher under retention (small segments, an export that passes
/// everything) with queue checkpoints every `checkpoint_ms` (0: none):
/// 100 enqueues, 3 leases, a restart that must give the same queue, and
/// one more lease (97 pending, 4 leased). Its directory (the data under
/// `data`), what it said at its first start, its metrics before it
/// stopped, and the restarted node with its address.
fn dispatcher_under_retention(checkpoint_ms: u64) -> UnderRetention {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    let export = dir.path().join("export");
    std::fs::write(
        &config,
        format!(
            r#"
[services.dispatcher]
checkpoint_interval_ms = {checkpoint_ms}
[replication.log]
segment_max_bytes = 4096
durability = "interval"
interval_ms = 10
[replication.log.retention]
delete_consumed = true
max_bytes = 4096
[replication.sinks.export]
type = "file"
[replication.sinks.export.settings]
dir = "{}"
"#,
            export.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let start = || {
        let (node, address, mut stderr) = serve_with_config(&data, &config);
        let mut lines = Vec::new();
        while !lines
            .last()
            .is_some_and(|l: &String| l.starts_with("dispatcher ready"))
        {
            let mut line = String::new();
            assert!(
                std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
                "the node stopped: {lines:?}"
            );
            lines.push(line);
        }
        (node, address, lines.join(""))
    };
    let (mut node, address, said) = start();
    for _ in 0..100 {
        let (status, body) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
        assert_eq!(status, 200, "{body}");
    }
    for _ in 0..3 {
        let (status, body) = rpc(&address, "resourcelease::lease", &[], "{}");
        assert_eq!(status, 200, "{body}");
    }
    // Retention runs at most every 500 ms, once the export has passed
    // (and the checkpoint, when there are checkpoints).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let (status, body) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let metrics = http_get(&address, "/metrics").unwrap().1;
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
    let (node, address, rebuilt) = start();
    assert!(
        rebuilt.contains("queue rebuilt from the log: 98 pending, 3 leased"),
        "{rebuilt}"
    );
    let (_, leased) = rpc(&address, "resourcelease::lease", &[], "{}");
    assert_eq!(leased["sequenceId"], 4, "{leased}");
    (dir, said, metrics, node, address)
}

/// What [`dispatcher_under_retention`] leaves.
type UnderRetention = (tempfile::TempDir, String, String, KillOnDrop, String);

/// A log that stops for good (a failed write: here the file-size limit,
/// `ulimit -f`, with `SIGXFSZ` ignored so the write returns `EFBIG`) is
/// mended only by a restart: the dispatcher refuses mutations with
/// `Unavailable`, and its probes, `/readyz` and `/healthz`, answer 503
/// with the reason, so that a load balancer stops sending it work and an
/// orchestrator restarts it (before, both answered `200 ok`); `status` and
/// the dashboard show it.
#[test]
fn heavy_a_dispatcher_whose_log_stopped_fails_its_probes_and_shows_it() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    // 32 KiB of log at most: a few hundred enqueues.
    let script = under_file_limit(
        dir.path(),
        64,
        "serve --role dispatcher --listen 127.0.0.1:0",
    );
    let mut node: KillOnDrop = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .into();
    let mut stderr = std::io::BufReader::new(node.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let probe = |path: &str| {
        for _ in 0..250 {
            if let Some(answer) = http_get(&address, path) {
                return answer;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{path} did not answer");
    };
    for _ in 0..250 {
        if probe("/readyz").0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(probe("/readyz"), (200, "ok\n".to_owned()));
    assert_eq!(probe("/healthz"), (200, "ok\n".to_owned()));
    let mut refused = None;
    for _ in 0..2_000 {
        let (status, body) = rpc(
            &address,
            "resourcelease::enqueue",
            &[("Rpc-Caller", "seeder")],
            PAYLOAD,
        );
        if status != 200 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("the log stops once the file is at its limit");
    assert_eq!(status, 503, "{body}");
    for path in ["/readyz", "/healthz"] {
        let (status, why) = probe(path);
        assert_eq!(status, 503, "{path}: {why}");
        assert!(why.contains("stopped"), "{path}: {why}");
        assert!(why.contains("restart"), "{path}: {why}");
    }
    // The operator's table says so beside the sinks.
    let out = omnirelay(&["status", "--url", &format!("http://{address}")], b"");
    let table = text(&out.stdout);
    let stopped = table
        .lines()
        .skip_while(|l| !l.contains("LOG STOPPED"))
        .nth(1)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(stopped.contains("default"), "{table}");
    assert!(stopped.contains("stopped"), "{table}");
    // The dashboard too, in a real browser.
    let chromium = chromium();
    let plane_dir = tempfile::tempdir().unwrap();
    let (_plane, plane_at) = start_plane(&format!("http://{address}"), plane_dir.path(), &[]);
    plane_status(&format!("http://{plane_at}"), "the host seen", |hosts| {
        hosts.iter().any(|h| h["streams"][0]["failure"].is_string())
    });
    let dom = text(&browse(chromium, &format!("http://{plane_at}/"), &["--dump-dom"]).stdout);
    assert!(dom.contains(">log stopped<"), "{dom}");
    let shown = dom
        .split("class=\"error log-stopped\" data-stream=\"default\">")
        .nth(1)
        .unwrap_or_else(|| panic!("{dom}"));
    assert!(
        shown.starts_with("log of stream default: closed: the log of stream default stopped"),
        "{shown}"
    );
}

#[test]
fn heavy_a_dispatcher_serves_the_reference_rpc_and_restarts_with_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address, rebuilt) = start(dir.path(), &[]);
    assert!(rebuilt.contains("0 pending, 0 leased"), "{rebuilt}");
    for _ in 0..3 {
        let (status, body) = rpc(
            &address,
            "resourcelease::enqueue",
            &[("Rpc-Caller", "mesh-demo-host")],
            PAYLOAD,
        );
        assert_eq!(status, 200, "{body}");
    }
    let (_, first) = rpc(
        &address,
        "resourcelease::lease",
        &[],
        r#"{"peerId":"worker-1"}"#,
    );
    assert_eq!(first["sequenceId"], 1);
    let (status, done) = rpc(
        &address,
        "resourcelease::complete",
        &[],
        &json!({"ownershipToken": first["ownershipToken"]}).to_string(),
    );
    assert_eq!((status, done), (200, json!({"success": true})));
    let (_, second) = rpc(
        &address,
        "resourcelease::lease",
        &[("x-peer-id", "worker-2")],
        "{}",
    );
    assert_eq!(second["ownerPeerId"], "worker-2");

    // The stream, read as the reference's (version 1) over gRPC Subscribe
    // on the same port.
    let out = omnirelay(
        &[
            "log",
            "tail",
            "--url",
            &format!("http://{address}"),
            "-n",
            "100",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<(String, Option<String>)> = text(&out.stdout)
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            (
                e["eventType"].as_str().unwrap().to_owned(),
                e["peerId"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let peer = |p: &str| Some(p.to_owned());
    assert_eq!(
        events,
        vec![
            ("Enqueue".to_owned(), peer("mesh-demo-host")),
            ("Enqueue".to_owned(), peer("mesh-demo-host")),
            ("Enqueue".to_owned(), peer("mesh-demo-host")),
            ("LeaseGranted".to_owned(), peer("worker-1")),
            ("Completed".to_owned(), peer("worker-1")),
            ("Heartbeat".to_owned(), peer("worker-1")),
            ("LeaseGranted".to_owned(), peer("worker-2")),
        ]
    );

    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
    let (mut node, address, rebuilt) = start(dir.path(), &[]);
    assert!(
        rebuilt.contains("1 pending, 1 leased, 0 dead-lettered"),
        "{rebuilt}"
    );
    // The lease held across the restart completes; the pending item leases.
    let (status, _) = rpc(
        &address,
        "resourcelease::complete",
        &[],
        &json!({"ownershipToken": second["ownershipToken"]}).to_string(),
    );
    assert_eq!(status, 200);
    let (_, third) = rpc(&address, "resourcelease::lease", &[], "{}");
    assert_eq!(third["sequenceId"], 3);
    // A worker's long poll without a deadline on the empty queue does not
    // keep the node from stopping: it is answered `UNAVAILABLE`.
    let polling = {
        let address = address.clone();
        std::thread::spawn(move || rpc(&address, "resourcelease::lease", &[], "{}"))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!polling.is_finished(), "{:?}", polling.join());
    assert!(signal(node.id(), "TERM"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a long poll kept the node from stopping"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(node.wait().unwrap().success());
    let (status, refused) = polling.join().unwrap();
    assert_eq!(
        (status, refused),
        (
            503,
            json!({"message": "the dispatcher is shutting down", "status": "UNAVAILABLE"})
        )
    );
}

#[test]
fn heavy_the_namespace_flag_names_the_procedures() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address, _) = start(dir.path(), &["--namespace", "mesh"]);
    let (status, _) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
    assert_eq!(status, 501);
    let (status, body) = rpc(&address, "mesh::enqueue", &[], PAYLOAD);
    assert_eq!(status, 200, "{body}");
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
}

#[test]
fn heavy_write_version_sets_what_every_sink_writes() {
    let export_line = |dir: &Path| -> Value {
        for _ in 0..200 {
            if let Some(line) = std::fs::read_dir(dir.join("export"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                .find_map(|text| text.lines().next().map(str::to_owned))
            {
                return serde_json::from_str(&line).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("nothing exported in {}", dir.display());
    };
    let (v1, v2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut first, first_at, _) = start(v1.path(), &[]);
    let (mut second, second_at, _) = start(v2.path(), &["--write-version", "2"]);
    for address in [&first_at, &second_at] {
        let (status, body) = rpc(address, "resourcelease::enqueue", &[], PAYLOAD);
        assert_eq!(status, 200, "{body}");
    }
    let reference = export_line(v1.path());
    assert!(reference.get("schemaVersion").is_none(), "{reference}");
    let newer = export_line(v2.path());
    assert_eq!(newer["schemaVersion"], 2, "{newer}");
    let status = http_get(&second_at, "/status").unwrap().1;
    let status: Value = serde_json::from_str(&status).unwrap();
    for sink in status["hosts"][0]["sinks"].as_array().unwrap() {
        assert!(
            sink["encoding"].as_str().unwrap().ends_with("/v2"),
            "{sink}"
        );
    }
    refused(
        &["serve", "--role", "receiver", "--write-version", "3"],
        "--write-version",
    );
    for node in [&mut first, &mut second] {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
    }
}

#[test]
fn heavy_with_a_token_the_rpc_wants_it_and_metrics_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[server]\ntoken = \"s3cret\"\n").unwrap();
    let (mut node, address, _) = start(dir.path(), &["--config", config.to_str().unwrap()]);
    let (status, _) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
    assert_eq!(status, 401);
    let (status, _) = rpc(
        &address,
        "resourcelease::enqueue",
        &[("Authorization", "Bearer nope")],
        PAYLOAD,
    );
    assert_eq!(status, 401);
    let (status, body) = rpc(
        &address,
        "resourcelease::enqueue",
        &[("Authorization", "Bearer s3cret")],
        PAYLOAD,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(&address, "/metrics").unwrap().0, 200);
    assert_eq!(http_get(&address, "/healthz").unwrap().0, 200);
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
}

#[test]
fn heavy_a_standby_follows_the_primary_and_takes_over_when_promoted() {
    standby_takes_over(
        &[],
        &|primary_at| format!("http://{primary_at}"),
        &[],
        &|| {},
    );
}

/// A standby that has not reached its primary since it started cannot tell
/// how far behind it is: its lag shows as unknown (in `/standby`, `status`
/// and the dashboard; before, 0), and a promotion, which could lose
/// everything the primary wrote, is refused unless forced (before, it went
/// through and served an empty queue).
#[test]
fn heavy_a_standby_that_never_reached_its_primary_is_promoted_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let (_standby, standby_at) = start_standby(dir.path(), "http://127.0.0.1:1");
    let standby_url = format!("http://{standby_at}");
    let mut status = Value::Null;
    for _ in 0..250 {
        if let Some((_, body)) = http_get(&standby_at, "/standby") {
            status = serde_json::from_str(&body).unwrap();
            if status["lastError"].is_string() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status["lagEvents"], Value::Null, "{status}");
    assert_eq!(status["primaryHead"], Value::Null, "{status}");
    let hazard = status["promotionHazard"].as_str().unwrap_or_default();
    assert!(hazard.contains("has not learned how far"), "{status}");
    let out = omnirelay(&["status", "--url", &standby_url], b"");
    let table = text(&out.stdout);
    let row = table
        .lines()
        .skip_while(|l| !l.contains("STANDBY_LAG"))
        .nth(1)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" unknown "), "{table}");
    // The dashboard says so too, in a real browser, beside a standby that
    // follows its primary.
    let (primary_dir, following_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_primary, primary_at, _) = start(primary_dir.path(), &[]);
    let (_following, following_at) =
        start_standby(following_dir.path(), &format!("http://{primary_at}"));
    let following_url = format!("http://{following_at}");
    let chromium = chromium();
    let plane_dir = tempfile::tempdir().unwrap();
    let hosts = format!("{standby_url},{following_url}");
    let (_plane, plane_at) = start_plane(&hosts, plane_dir.path(), &[]);
    plane_status(
        &format!("http://{plane_at}"),
        "both standbys seen",
        |hosts| {
            hosts.iter().filter(|h| h["standby"].is_object()).count() == 2
                && hosts.iter().any(|h| h["standby"]["connected"] == true)
        },
    );
    let dom = text(&browse(chromium, &format!("http://{plane_at}/"), &["--dump-dom"]).stdout);
    let card = |url: &str| {
        dom.split("<article")
            .filter_map(|card| card.split("</article>").next())
            .find(|card| card.contains(&format!("data-host=\"{url}\"")))
            .unwrap_or_else(|| panic!("no card for {url}: {dom}"))
            .to_owned()
    };
    let stranded = card(&standby_url);
    assert!(
        stranded.contains("standby lag <b>unknown</b>"),
        "{stranded}"
    );
    assert!(stranded.contains(">not following<"), "{stranded}");
    assert!(
        stranded.contains("<div class=\"error standby-error\">standby: unavailable: "),
        "{stranded}"
    );
    let following = card(&following_url);
    assert!(following.contains("standby lag <b>0</b>"), "{following}");
    assert!(!following.contains("not following"), "{following}");
    assert!(!following.contains("standby-error"), "{following}");
    // Refused, saying why and how to force it.
    let out = omnirelay(&["promote", "--url", &standby_url, "--wait", "1"], b"");
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("has not learned how far"), "{said}");
    assert!(said.contains("--force"), "{said}");
    let (_, body) = http_get(&standby_at, "/standby").unwrap();
    assert!(body.contains("\"role\":\"standby\""), "{body}");
    // Forced, it serves what it has, and says so.
    let out = omnirelay(&["promote", "--url", &standby_url, "--force"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "promoted {standby_url}: it serves as the dispatcher now, with 0 pending items and \
             0 leased items; its log holds the primary's stream through sequence 0 (how far \
             the primary's stream went was never learned)\n"
        )
    );
    // Promoted again (the same dispatcher), its status document.
    let out = omnirelay(
        &["promote", "--url", &standby_url, "--force", "--json"],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let promoted: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(promoted["role"], "dispatcher", "{promoted}");
    assert_eq!(
        (&promoted["lagEvents"], &promoted["lastError"]),
        (&json!(0), &Value::Null),
        "{promoted}"
    );
}

#[test]
fn heavy_a_standby_sharing_its_primarys_archive_gets_the_whole_queue() {
    // One configuration for both nodes (an ordinary deployment): both
    // archive to one object-store prefix. The standby starts once the
    // archive holds the primary's seven events; before, its empty log
    // numbered after the archive's seven, it followed the primary from
    // the eighth, and promoted it had none of the queue.
    let store = tempfile::tempdir().unwrap();
    let archive = store.path().join("archive");
    let config = store.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[replication.sinks.archive]\ntype = \"object_store\"\n\
             [replication.sinks.archive.settings]\nroot = \"{}\"\n",
            archive.display()
        ),
    )
    .unwrap();
    let objects = || -> Vec<Value> {
        let mut names: Vec<_> = std::fs::read_dir(archive.join("resourcelease"))
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|n| {
                serde_json::from_slice(
                    &std::fs::read(archive.join("resourcelease").join(n)).unwrap(),
                )
                .unwrap()
            })
            .collect()
    };
    let archived_by_primary = std::cell::RefCell::new(Vec::new());
    let wait_for_archive = || {
        for _ in 0..500 {
            if objects().len() == 7 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(objects().len(), 7);
        *archived_by_primary.borrow_mut() = objects();
    };
    let with_config = ["--config", dir_arg(&config)];
    standby_takes_over(
        &with_config,
        &|primary_at| format!("http://{primary_at}"),
        &with_config,
        &wait_for_archive,
    );
    // The archive holds the primary's events, untouched, and the promoted
    // standby's after them.
    let archived = objects();
    assert_eq!(archived.len(), 10, "{archived:?}");
    assert_eq!(&archived[..7], &archived_by_primary.borrow()[..]);
    let sequences: Vec<u64> = archived
        .iter()
        .map(|e| e["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>());
}

#[test]
fn heavy_a_standby_sharing_its_primarys_receiver_sends_each_event_once() {
    // The standby asks its primary for its name.
    standby_shares_its_primarys_receiver(false);
}

#[test]
fn heavy_a_standby_on_the_bus_sharing_its_primarys_receiver_sends_each_event_once() {
    // The standby reads the name off the newest message on the bus.
    standby_shares_its_primarys_receiver(true);
}

/// One configuration for primary and standby, with a `grpc` sink to a
/// receiver (its `sender` unset: each node's own name), and with `bus` a
/// `nats` sink the standby follows. The standby takes its primary's name
/// when it starts and resumes after what the receiver has of it: before,
/// it sent every event again under its own name and the receiver appended
/// a second copy of each (with a shared `sender`, it refused them).
fn standby_shares_its_primarys_receiver(bus: bool) {
    let store = tempfile::tempdir().unwrap();
    let (receiver, receiver_at, _) = crate::serve::spawn_receiver(&store.path().join("receiver"));
    let replica = replica_sink(&receiver_at);
    let (nats, config) = if bus {
        let (nats, bus, config) = bus_and_primary_config(
            store.path(),
            "format = \"protobuf\"\nwrite_version = 2",
            "stream = \"FAILOVER\"",
        );
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&replica);
        std::fs::write(&config, text).unwrap();
        (Some((nats, bus)), config)
    } else {
        let config = store.path().join("node.toml");
        std::fs::write(&config, replica).unwrap();
        (None, config)
    };
    let receiver_url = format!("http://{receiver_at}");
    let received = || received_origins(&receiver_url);
    let wait_for = |count: usize| {
        for _ in 0..500 {
            if received().len() >= count {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let primary_url = std::cell::RefCell::new(String::new());
    // Every sink of the primary has its seven events.
    let primary_delivered = || {
        let url = primary_url.borrow().clone();
        for _ in 0..500 {
            let out = omnirelay(&["status", "--url", &url, "--json"], b"");
            let document: Value = serde_json::from_str(&text(&out.stdout)).unwrap_or_default();
            if document["hosts"][0]["sinks"]
                .as_array()
                .is_some_and(|sinks| sinks.iter().all(|s| s["checkpoint"] == 7))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        wait_for(7);
    };
    let with_config = ["--config", dir_arg(&config)];
    let follow = |primary_at: &str| {
        *primary_url.borrow_mut() = format!("http://{primary_at}");
        match &nats {
            Some((_, bus)) => format!("{bus}?stream=FAILOVER&durable=standby-1"),
            None => format!("http://{primary_at}"),
        }
    };
    standby_takes_over(&with_config, &follow, &with_config, &primary_delivered);
    wait_for(10);
    // Time for a copy the standby would send late.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let events = received();
    let origins: Vec<u64> = events.iter().map(|(_, origin)| *origin).collect();
    assert_eq!(origins, (1..=10).collect::<Vec<_>>(), "{events:?}");
    assert!(
        events.iter().all(|(sender, _)| *sender == events[0].0),
        "{events:?}"
    );
    assert!(signal(receiver.id(), "TERM"));
    if let Some((mut nats, _)) = nats {
        let _ = nats.kill();
        let _ = nats.wait();
    }
}

/// The table of a `grpc` sink, `replica`, sending to the receiver at
/// `receiver_at` under the node's own name.
fn replica_sink(receiver_at: &str) -> String {
    format!(
        "[replication.sinks.replica]\ntype = \"grpc\"\n\
         [replication.sinks.replica.settings]\nurl = \"http://{receiver_at}\"\n"
    )
}

/// (sender name, origin sequence) of every event the receiver at
/// `receiver_url` holds (its newest 100).
fn received_origins(receiver_url: &str) -> Vec<(String, u64)> {
    let out = omnirelay(&["log", "tail", "--url", receiver_url, "-n", "100"], b"");
    text(&out.stdout)
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            let metadata = &event["metadata"];
            (
                metadata["replication.origin.sender"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                metadata["replication.origin.sequence"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect()
}

/// A standby fed from the bus started before its primary published: the
/// bus has no message to read the primary's name from, so the standby
/// starts its sinks once the primary's first event reached it, under the
/// name then read. Before, its sinks started under its own name and its
/// `grpc` sink sent the primary's events to the shared receiver a second
/// time, as another sender.
#[test]
fn heavy_a_standby_started_before_its_primary_published_sends_each_event_once() {
    standby_started_before_its_primary_published(false);
}

/// As above, promoted before its primary published anything: its sinks
/// start then, under its own name.
#[test]
fn heavy_a_standby_promoted_before_its_primary_published_starts_its_sinks() {
    standby_started_before_its_primary_published(true);
}

fn standby_started_before_its_primary_published(promoted_first: bool) {
    let store = tempfile::tempdir().unwrap();
    let (receiver, receiver_at, _) = crate::serve::spawn_receiver(&store.path().join("receiver"));
    let (_nats, bus, config) = bus_and_primary_config(
        store.path(),
        "format = \"protobuf\"\nwrite_version = 2",
        "stream = \"FAILOVER\"",
    );
    let mut text_of_config = std::fs::read_to_string(&config).unwrap();
    text_of_config.push_str(&replica_sink(&receiver_at));
    std::fs::write(&config, text_of_config).unwrap();
    let with_config = ["--config", dir_arg(&config)];
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_primary, primary_at, _) = start(primary_dir.path(), &with_config);
    let follow = format!("{bus}?stream=FAILOVER&durable=standby-1");
    let mut args = vec!["serve", "--role", "standby", "--follow", &follow];
    args.extend(["--listen", "127.0.0.1:0", "--data-dir"]);
    args.push(dir_arg(standby_dir.path()));
    args.extend_from_slice(&with_config);
    let (_standby, standby_at, _) = spawn_listening(&args);
    let standby_url = format!("http://{standby_at}");
    // Until the primary publishes, the standby runs no sink.
    let standby_sinks = || {
        let out = omnirelay(&["status", "--url", &standby_url, "--json"], b"");
        let document: Value = serde_json::from_str(&text(&out.stdout)).unwrap_or_default();
        document["hosts"][0]["sinks"].as_array().cloned()
    };
    let mut sinks = None;
    for _ in 0..100 {
        sinks = standby_sinks();
        if sinks.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(sinks, Some(Vec::new()), "no sink before the first event");
    if promoted_first {
        let out = omnirelay(&["promote", "--url", &standby_url, "--force"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut sinks = Vec::new();
        for _ in 0..500 {
            sinks = standby_sinks().unwrap_or_default();
            if sinks.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(sinks.len(), 2, "the sinks start once promoted: {sinks:?}");
        return;
    }
    for _ in 0..3 {
        rpc(
            &primary_at,
            "resourcelease::enqueue",
            &[("Rpc-Caller", "seeder")],
            PAYLOAD,
        );
    }
    // The standby's sinks start and catch up with its log.
    let mut sinks = Vec::new();
    for _ in 0..500 {
        sinks = standby_sinks().unwrap_or_default();
        if sinks.len() == 2 && sinks.iter().all(|s| s["checkpoint"] == 3) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        sinks.len() == 2 && sinks.iter().all(|s| s["checkpoint"] == 3),
        "{sinks:?}"
    );
    // Time for a copy the standby would send late.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let events = received_origins(&format!("http://{receiver_at}"));
    let origins: Vec<u64> = events.iter().map(|(_, origin)| *origin).collect();
    assert_eq!(origins, [1, 2, 3], "{events:?}");
    assert!(
        events.iter().all(|(sender, _)| *sender == events[0].0),
        "{events:?}"
    );
    assert!(signal(receiver.id(), "TERM"));
}

/// A `nats-server` with its store in `dir`, its URL, and a configuration
/// file (in `dir`) whose one sink, `bus`, publishes to it: `sink` lines go
/// in the sink's table, `settings` lines in its settings.
fn bus_and_primary_config(
    dir: &Path,
    sink: &str,
    settings: &str,
) -> (KillOnDrop, String, std::path::PathBuf) {
    let (nats, port) = start_nats(dir, None);
    let bus = format!("nats://127.0.0.1:{port}");
    let config = dir.join("primary.toml");
    std::fs::write(
        &config,
        format!(
            "[replication.sinks.bus]\ntype = \"nats\"\n{sink}\n\
             [replication.sinks.bus.settings]\nservers = [\"{bus}\"]\n{settings}\n"
        ),
    )
    .unwrap();
    (nats, bus, config)
}

#[test]
fn heavy_a_standby_follows_the_bus_and_takes_over_when_promoted() {
    let store = tempfile::tempdir().unwrap();
    // The primary publishes its full-fidelity stream to JetStream; the
    // standby reads it with its own durable consumer.
    let (mut nats, bus, config) = bus_and_primary_config(
        store.path(),
        "format = \"protobuf\"\nwrite_version = 2",
        "stream = \"FAILOVER\"",
    );
    let follow = format!("{bus}?stream=FAILOVER&durable=standby-1");
    standby_takes_over(
        &["--config", dir_arg(&config)],
        &|_| follow.clone(),
        &[],
        &|| {},
    );
    let _ = nats.kill();
    let _ = nats.wait();
}

/// A standby's `/standby` document, once `ready` holds for it (at most
/// 20 s; then the last one, for the caller's assertion to show).
fn standby_status(at: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut status = Value::Null;
    for _ in 0..1000 {
        status = serde_json::from_str(&http_get(at, "/standby").unwrap().1).unwrap();
        if ready(&status) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    status
}

/// Waits until the standby at `at` is connected to its primary, with no
/// error.
fn assert_following(at: &str) {
    let status = standby_status(at, |s| s["connected"] == true);
    assert_eq!(status["connected"], true, "{status}");
    assert!(status["lastError"].is_null(), "{status}");
}

/// Waits until the standby at `at` reports why it cannot follow (it must
/// not be connected); that reason, lower-cased.
fn refusal_of(at: &str) -> String {
    let status = standby_status(at, |s| s["lastError"].is_string());
    assert_eq!(status["connected"], false, "{status}");
    status["lastError"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

/// Stops `nodes` with SIGTERM (each must exit cleanly), then kills `nats`.
fn stop(nodes: &mut [KillOnDrop], mut nats: KillOnDrop) {
    for node in nodes {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
    }
    let _ = nats.kill();
    let _ = nats.wait();
}

/// `serve --role standby --follow URL` on `dir`: its child and address.
fn start_standby(dir: &Path, follow: &str) -> (KillOnDrop, String) {
    let (child, address, _) = spawn_standby(dir, &["--follow", follow], &[]);
    (child, address)
}

/// `serve --role standby` on `dir` with `extra` arguments and `env`: its
/// child, address and the rest of its stderr.
fn spawn_standby(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (
    KillOnDrop,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let mut args = vec![
        "serve",
        "--role",
        "standby",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(dir),
    ];
    args.extend_from_slice(extra);
    crate::spawn_listening_with_env(&args, env)
}

#[test]
fn heavy_a_standby_on_the_bus_rides_out_a_bus_restart() {
    let store = tempfile::tempdir().unwrap();
    let (mut nats, bus, config) =
        bus_and_primary_config(store.path(), "format = \"protobuf\"\nwrite_version = 2", "");
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, primary_at, _) = start(primary_dir.path(), &["--config", dir_arg(&config)]);
    let (standby, standby_at) = start_standby(standby_dir.path(), &bus);
    let enqueue = || rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
    enqueue();
    enqueue();
    let status = standby_status(&standby_at, |s| s["appliedSequence"] == 2);
    assert_eq!(status["appliedSequence"], 2, "{status}");
    // The bus goes away; the primary goes on (its NATS sink retries); the
    // bus comes back on its port with its store.
    let port: u16 = bus.rsplit(':').next().unwrap().parse().unwrap();
    let _ = nats.kill();
    let _ = nats.wait();
    enqueue();
    enqueue();
    let (nats, _) = start_nats(store.path(), Some(port));
    let status = standby_status(&standby_at, |s| {
        s["appliedSequence"] == 4 && s["connected"] == true && s["lagEvents"] == 0
    });
    assert_eq!(
        (
            &status["appliedSequence"],
            &status["connected"],
            &status["lagEvents"]
        ),
        (&json!(4), &json!(true), &json!(0)),
        "{status}"
    );
    assert!(status["lastError"].is_null(), "{status}");
    stop(&mut [primary, standby], nats);
}

/// A standby on the bus checks, when it starts on a log that holds events,
/// that the bus holds the same event at its last sequence: restarted on
/// its own log it follows on; started on the log of a node whose events
/// never reached the bus (a former primary brought back as a standby of
/// its replacement) it stops and says why, instead of skipping the bus's
/// events up to its own last sequence.
#[test]
fn heavy_a_standby_on_the_bus_does_not_follow_it_with_a_log_that_is_not_a_copy() {
    let store = tempfile::tempdir().unwrap();
    let (nats, bus, config) =
        bus_and_primary_config(store.path(), "format = \"protobuf\"\nwrite_version = 2", "");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (primary, primary_at, _) = start(dirs[0].path(), &["--config", dir_arg(&config)]);
    let enqueue = |at: &str| rpc(at, "resourcelease::enqueue", &[], PAYLOAD);
    enqueue(&primary_at);
    enqueue(&primary_at);

    // Its own log, restarted.
    let follow = format!("{bus}?durable=copy");
    let (mut standby, standby_at) = start_standby(dirs[1].path(), &follow);
    let status = standby_status(&standby_at, |s| s["appliedSequence"] == 2);
    assert_eq!(status["appliedSequence"], 2, "{status}");
    assert!(signal(standby.id(), "TERM"));
    assert!(standby.wait().unwrap().success());
    enqueue(&primary_at);
    let (standby, standby_at) = start_standby(dirs[1].path(), &follow);
    let status = standby_status(&standby_at, |s| s["appliedSequence"] == 3);
    assert_eq!(status["appliedSequence"], 3, "{status}");
    assert!(status["lastError"].is_null(), "{status}");
    assert_eq!(status["logChecked"], true, "{status}");

    // Five events of another node's, never published, with the primary's
    // configuration: its sinks must not publish them to the bus.
    let (mut other, other_at, _) = start(dirs[2].path(), &[]);
    let elsewhere = PAYLOAD.replace("sales.orders", "elsewhere");
    for _ in 0..5 {
        rpc(&other_at, "resourcelease::enqueue", &[], &elsewhere);
    }
    assert!(signal(other.id(), "TERM"));
    assert!(other.wait().unwrap().success());
    let diverged_follow = format!("{bus}?durable=diverged");
    let (diverged, diverged_at, _) = spawn_standby(
        dirs[2].path(),
        &["--follow", &diverged_follow, "--config", dir_arg(&config)],
        &[],
    );
    let refusal = refusal_of(&diverged_at);
    assert!(
        refusal.starts_with("stopped following")
            && refusal.contains(
                "this standby's log holds sequence 5, but its source's stream ends at sequence 3"
            )
            && refusal.contains("start this standby on an empty data directory"),
        "{refusal}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = standby_status(&diverged_at, |_| true);
    assert_eq!(status["appliedSequence"], 5, "{status}");
    assert_eq!(status["logChecked"], false, "{status}");
    // The bus holds the primary's stream alone: a standby reading it from
    // the start gets the primary's four events (before, the diverged
    // node's sink published its events 4 and 5 under the primary's name,
    // and the primary's own 4 was refused as another writer's).
    enqueue(&primary_at);
    let (fresh, fresh_at) = start_standby(dirs[3].path(), &format!("{bus}?durable=fresh"));
    let status = standby_status(&fresh_at, |s| s["appliedSequence"] == 4);
    assert_eq!(status["appliedSequence"], 4, "{status}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = standby_status(&fresh_at, |_| true);
    assert_eq!(
        (&status["appliedSequence"], &status["lastError"]),
        (&json!(4), &Value::Null),
        "{status}"
    );
    stop(&mut [primary, standby, diverged, fresh], nats);
}

/// A configuration file (in `dir`) whose one sink publishes the
/// full-fidelity stream to the NATS server on `port` as `user`.
fn bus_config_as(dir: &Path, port: u16, user: &str, password: &str) -> std::path::PathBuf {
    let config = dir.join("primary.toml");
    std::fs::write(
        &config,
        format!(
            "[replication.sinks.bus]\ntype = \"nats\"\nformat = \"protobuf\"\nwrite_version = 2\n\
             [replication.sinks.bus.settings]\nservers = [\"nats://127.0.0.1:{port}\"]\n\
             user = \"{user}\"\npassword = \"{password}\"\n"
        ),
    )
    .unwrap();
    config
}

/// A bus whose permissions do not let the standby read messages by
/// sequence (`STREAM.MSG.GET` denied): the check of a restarted standby's
/// log cannot be made; after a few tries it says so and follows on, rather
/// than never following again.
#[test]
fn heavy_a_standby_on_a_bus_it_cannot_read_by_sequence_follows_unchecked() {
    let store = tempfile::tempdir().unwrap();
    let conf = store.path().join("nats.conf");
    std::fs::write(
        &conf,
        "authorization { users = [\n\
         { user: primary, password: p }\n\
         { user: standby, password: s, permissions: { publish: { allow: [\">\"], \
         deny: [\"$JS.API.STREAM.MSG.GET.>\"] } } }\n] }\n",
    )
    .unwrap();
    let (nats, port) = start_nats_with(store.path(), None, &["-c", dir_arg(&conf)]);
    let config = bus_config_as(store.path(), port, "primary", "p");
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, primary_at, _) = start(primary_dir.path(), &["--config", dir_arg(&config)]);
    let enqueue = || rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
    enqueue();
    enqueue();
    let follow = format!("nats://standby:s@127.0.0.1:{port}?durable=limited");
    let (mut standby, standby_at) = start_standby(standby_dir.path(), &follow);
    let status = standby_status(&standby_at, |s| s["appliedSequence"] == 2);
    assert_eq!(status["appliedSequence"], 2, "{status}");
    assert!(signal(standby.id(), "TERM"));
    assert!(standby.wait().unwrap().success());
    enqueue();
    let (standby, standby_at, mut stderr) =
        spawn_standby(standby_dir.path(), &["--follow", &follow], &[]);
    // Each try waits 2 s for an answer that never comes (up to 20 s here,
    // and 20 more).
    let mut status = standby_status(&standby_at, |s| s["appliedSequence"] == 3);
    if status["appliedSequence"] != 3 {
        status = standby_status(&standby_at, |s| s["appliedSequence"] == 3);
    }
    assert_eq!(
        (&status["appliedSequence"], &status["connected"]),
        (&json!(3), &json!(true)),
        "{status}"
    );
    stop(&mut [primary, standby], nats);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    assert!(
        said.contains("cannot check that the source holds this standby's last event")
            && said.contains("the bus cannot be read by sequence"),
        "{said}"
    );
}

#[test]
fn heavy_a_standby_follows_a_bus_that_wants_credentials_and_never_shows_them() {
    let store = tempfile::tempdir().unwrap();
    let (nats, port) = start_nats_with(
        store.path(),
        None,
        &["--user", "standby", "--pass", "p@ss w0rd"],
    );
    let config = bus_config_as(store.path(), port, "standby", "p@ss w0rd");
    let (primary_dir, right_dir, wrong_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (primary, primary_at, _) = start(primary_dir.path(), &["--config", dir_arg(&config)]);
    rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
    rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
    // The address comes from the environment (out of the process list:
    // the key `services.standby.follow`), the password percent-encoded.
    let standby = |dir: &Path, password: &str, durable: &str| {
        let follow = format!("nats://standby:{password}@127.0.0.1:{port}?durable={durable}");
        spawn_standby(
            dir,
            &[],
            &[("OMNIRELAY_SERVICES__STANDBY__FOLLOW", &follow)],
        )
    };
    let (right, right_at, right_err) = standby(right_dir.path(), "p%40ss%20w0rd", "right");
    let (wrong, wrong_at, wrong_err) = standby(wrong_dir.path(), "n0t-it", "wrong");
    let status = standby_status(&right_at, |s| s["appliedSequence"] == 2);
    assert_eq!(
        (&status["appliedSequence"], &status["connected"]),
        (&json!(2), &json!(true)),
        "{status}"
    );
    assert_eq!(
        status["following"],
        format!("nats://standby:***@127.0.0.1:{port}?durable=right")
    );
    let refused = standby_status(&wrong_at, |s| !s["lastError"].is_null());
    let error = refused["lastError"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(error.contains("authorization"), "{refused}");
    assert_eq!(refused["appliedSequence"], 0, "{refused}");
    stop(&mut [primary, right, wrong], nats);
    for (mut stderr, shown) in [(right_err, status), (wrong_err, refused)] {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        for secret in ["p%40ss", "p@ss", "n0t-it"] {
            assert!(
                !rest.contains(secret) && !shown.to_string().contains(secret),
                "{rest}\n{shown}"
            );
        }
    }
}

#[test]
fn heavy_a_standby_does_not_follow_a_version_1_stream_on_the_bus() {
    let store = tempfile::tempdir().unwrap();
    let (nats, bus, config) = bus_and_primary_config(store.path(), "write_version = 1", "");
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, primary_at, _) = start(primary_dir.path(), &["--config", dir_arg(&config)]);
    rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
    let (standby, standby_at) = start_standby(standby_dir.path(), &bus);
    let status = standby_status(&standby_at, |s| !s["lastError"].is_null());
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("stopped following") && error.contains("schema version 2"),
        "{status}"
    );
    assert_eq!(status["appliedSequence"], 0, "{status}");
    stop(&mut [primary, standby], nats);
}

#[test]
fn a_standby_refuses_a_bus_address_it_cannot_follow_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (url, why) in [
        (
            "nats://127.0.0.1:4222?queue=x",
            "unknown parameter \"queue\"",
        ),
        ("nats://127.0.0.1:4222?durable=a.b", "durable: invalid"),
        ("nats://", "no server"),
    ] {
        let out = omnirelay(
            &[
                "serve",
                "--role",
                "standby",
                "--follow",
                url,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir_arg(dir.path()),
            ],
            b"",
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{url}");
        assert!(stderr.contains(why), "{url}: {stderr}");
        assert!(!stderr.contains("listening on"), "{url}: {stderr}");
    }
}

/// A primary started with `primary_extra`, three enqueues, a completed
/// lease and a held one; a standby following `follow(primary address)`
/// catches up; the primary is killed, the standby promoted, and it carries
/// on with the same queue and numbering.
/// A primary started with `primary_extra`, a standby following it at
/// `follow(primary's address)` with `standby_extra`, started once
/// `before_standby` returns: the standby catches up, is promoted only once
/// the primary is gone, and serves the same queue, numbering on.
fn standby_takes_over(
    primary_extra: &[&str],
    follow: &dyn Fn(&str) -> String,
    standby_extra: &[&str],
    before_standby: &dyn Fn(),
) {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut primary, primary_at, _) = start(primary_dir.path(), primary_extra);
    for _ in 0..3 {
        rpc(
            &primary_at,
            "resourcelease::enqueue",
            &[("Rpc-Caller", "seeder")],
            PAYLOAD,
        );
    }
    let (_, first) = rpc(
        &primary_at,
        "resourcelease::lease",
        &[],
        r#"{"peerId":"worker-1"}"#,
    );
    rpc(
        &primary_at,
        "resourcelease::complete",
        &[],
        &json!({"ownershipToken": first["ownershipToken"]}).to_string(),
    );
    let (_, held) = rpc(
        &primary_at,
        "resourcelease::lease",
        &[],
        r#"{"peerId":"worker-2"}"#,
    );

    let primary_url = follow(&primary_at);
    before_standby();
    let mut args = vec!["serve", "--role", "standby", "--follow", &primary_url];
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(standby_dir.path()),
    ]);
    args.extend_from_slice(standby_extra);
    let (mut standby, standby_at, mut stderr) = spawn_listening(&args);
    let line = said(&mut stderr);
    assert!(line.contains(&format!("following {primary_url}")), "{line}");
    // Caught up: 3 enqueues, a lease, its completion and heartbeat, a lease.
    let mut status = Value::Null;
    for _ in 0..500 {
        let (code, body) = http_get(&standby_at, "/standby").unwrap();
        assert_eq!(code, 200);
        status = serde_json::from_str(&body).unwrap();
        if status["appliedSequence"] == 7 && status["lagEvents"] == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status["appliedSequence"], 7, "{status}");
    assert_eq!(status["connected"], true);
    assert_eq!(status["role"], "standby");
    // Before promotion it does not serve the RPC.
    let (code, _, _) = http_post(
        &standby_at,
        &[("Rpc-Procedure", "resourcelease::lease")],
        "{}",
    );
    assert_eq!(code, 503);
    let standby_url = format!("http://{standby_at}");
    if primary_url.starts_with("http") {
        // While the primary it follows serves, promoting it would make two
        // dispatchers of one queue: refused (after waiting a second for the
        // primary to go), unless forced.
        let out = omnirelay(&["promote", "--url", &standby_url, "--wait", "1"], b"");
        assert!(!out.status.success());
        let said = text(&out.stderr);
        assert!(said.contains("answered 409"), "{said}");
        assert!(said.contains("still connected to its primary"), "{said}");
        assert!(said.contains("force"), "{said}");
        let (_, body) = http_get(&standby_at, "/standby").unwrap();
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["role"], "standby", "{body}");
        let hazard = status["promotionHazard"].as_str().unwrap_or_default();
        assert!(hazard.contains("still connected to its primary"), "{body}");
        // The primary's host goes away without closing its connections
        // (the process stopped, not killed): the standby's keep-alive
        // pings go unanswered, it notices within 10 s, and the promotion
        // that waits for that goes through.
        assert!(signal(primary.id(), "STOP"));
    } else {
        // The primary dies.
        assert!(signal(primary.id(), "KILL"));
        let _ = primary.wait();
    }
    // Fed from the bus, which cannot show whether the primary serves, the
    // standby takes it for stopped 10 s after its newest event: until
    // then a promotion is unsafe, and the one below waits for that.
    let quiet_left = if primary_url.starts_with("http") {
        None
    } else {
        let (_, body) = http_get(&standby_at, "/standby").unwrap();
        let status: Value = serde_json::from_str(&body).unwrap();
        let written = omnirelay_replication::Timestamp::parse(
            status["primaryLastWrite"].as_str().unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}: {body}"));
        let age = omnirelay_replication::Timestamp::now().saturating_duration_since(written);
        let quiet = std::time::Duration::from_secs(10);
        // Not at the edge, where the two readings could disagree.
        (age < quiet - std::time::Duration::from_secs(1)).then(|| {
            let hazard = status["promotionHazard"].as_str().unwrap_or_default();
            assert!(hazard.contains("may still be serving"), "{body}");
            quiet - age
        })
    };
    // The standby is promoted and carries on.
    let asked = std::time::Instant::now();
    let out = omnirelay(&["promote", "--url", &standby_url, "--json"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    if let Some(left) = quiet_left {
        assert!(
            asked.elapsed() + std::time::Duration::from_millis(500) >= left,
            "promoted after {:?}, with {left:?} of the quiet period left",
            asked.elapsed()
        );
    }
    let promoted: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(promoted["role"], "dispatcher");
    assert_eq!(
        (
            promoted["pendingCount"].as_u64(),
            promoted["activeLeaseCount"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (code, _) = rpc(
        &standby_at,
        "resourcelease::complete",
        &[],
        &json!({"ownershipToken": held["ownershipToken"]}).to_string(),
    );
    assert_eq!(
        code, 200,
        "the lease granted by the primary completes on the new one"
    );
    let (_, third) = rpc(&standby_at, "resourcelease::lease", &[], "{}");
    assert_eq!(third["sequenceId"], 3);
    // Its log continues the primary's numbering.
    let out = omnirelay(
        &[
            "log",
            "tail",
            "--url",
            &format!("http://{standby_at}"),
            "-n",
            "3",
        ],
        b"",
    );
    let sequences: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, vec![8, 9, 10]);
    assert!(signal(standby.id(), "TERM"));
    assert!(standby.wait().unwrap().success());
}

/// The reference's integration scenario (reference §5): enqueue, lease as
/// `integration-peer`, complete, drain; the log, replayed in the reference
/// format, holds exactly its events with its peers and metadata.
#[test]
fn heavy_the_reference_integration_scenario_replays_as_the_reference_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address, _) = start(dir.path(), &[]);
    let peer = [("Rpc-Caller", "integration-peer")];
    let (status, body) = rpc(&address, "resourcelease::enqueue", &peer, PAYLOAD);
    assert_eq!(
        (status, body),
        (
            200,
            json!({"stats": {"pendingCount": 1, "activeLeaseCount": 0}})
        )
    );
    let (_, leased) = rpc(&address, "resourcelease::lease", &peer, "{}");
    assert_eq!(leased["ownerPeerId"], "integration-peer");
    assert_eq!(leased["payload"]["resourceType"], "lakehouse.catalog");
    assert_eq!(leased["payload"]["resourceId"], "sales.orders");
    let (_, done) = rpc(
        &address,
        "resourcelease::complete",
        &peer,
        &json!({"ownershipToken": leased["ownershipToken"]}).to_string(),
    );
    assert_eq!(done, json!({"success": true}));
    let (_, drained) = rpc(&address, "resourcelease::drain", &peer, "{}");
    assert_eq!(drained, json!({"items": []}));
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());

    let out = omnirelay(&["log", "replay", "--data-dir", dir_arg(dir.path())], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shape: Vec<(String, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap().to_owned(),
                e["peerId"].clone(),
                e["metadata"].clone(),
            )
        })
        .collect();
    let meta = |pending: u32, active: u32| json!({"queue.active": active.to_string(), "queue.pending": pending.to_string()});
    assert_eq!(
        shape,
        vec![
            ("Enqueue".to_owned(), json!("integration-peer"), meta(1, 0)),
            (
                "LeaseGranted".to_owned(),
                json!("integration-peer"),
                meta(0, 1)
            ),
            (
                "Completed".to_owned(),
                json!("integration-peer"),
                meta(0, 0)
            ),
            (
                "Heartbeat".to_owned(),
                json!("integration-peer"),
                meta(0, 0)
            ),
            (
                "DrainSnapshot".to_owned(),
                Value::Null,
                json!({"drain.count": "0", "queue.active": "0", "queue.pending": "0"})
            ),
        ]
    );
    assert_eq!(
        events
            .iter()
            .map(|e| e["sequenceNumber"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // Version 1 has no snapshot items, ownership only where the reference
    // writes it.
    assert!(events[4].get("items").is_none());
    assert!(events[0].get("ownership").is_none());
    assert_eq!(events[1]["ownership"], leased["ownershipToken"]);
}

/// Posts an RPC, `None` when the node does not answer (killed).
fn try_rpc(
    address: &str,
    procedure: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Option<(u16, Value)> {
    let mut headers = vec![("Rpc-Procedure", procedure)];
    headers.extend_from_slice(extra);
    let (status, _, body) = try_http_post(address, &headers, body)?;
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

#[test]
fn heavy_failover_under_load_loses_no_item() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const ITEMS: usize = 60;
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = primary_dir.path().join("fast.toml");
    std::fs::write(
        &config,
        "[services.dispatcher.queue]\nlease_duration_ms = 1500\nsweep_interval_ms = 100\nmax_delivery_attempts = 10\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (mut primary, primary_at, _) = start(primary_dir.path(), &["--config", config]);
    let primary_url = format!("http://{primary_at}");
    let mut args = vec![
        "serve",
        "--role",
        "standby",
        "--follow",
        &primary_url,
        "--config",
        config,
    ];
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(standby_dir.path()),
    ]);
    let (mut standby, standby_at, _stderr) = spawn_listening(&args);
    for i in 0..ITEMS {
        let body = PAYLOAD.replace("sales.orders", &format!("item-{i}"));
        let (status, _) = rpc(
            &primary_at,
            "resourcelease::enqueue",
            &[("Rpc-Caller", "seeder")],
            &body,
        );
        assert_eq!(status, 200);
    }

    // The standby has every enqueue before the load starts (a standby is
    // promoted only once current; what it has not followed when its
    // primary dies is not on it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let applied = http_get(&standby_at, "/standby")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["appliedSequence"].as_u64());
        if applied >= Some(ITEMS as u64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Workers lease from whichever node serves, complete most items and
    // fail some without requeue (dead letters).
    let target = Arc::new(Mutex::new(primary_at.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let handled = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (target, done, completed, handled) = (
                target.clone(),
                done.clone(),
                completed.clone(),
                handled.clone(),
            );
            std::thread::spawn(move || {
                let peer = format!("worker-{w}");
                while !done.load(Ordering::Relaxed) {
                    let at = target.lock().unwrap().clone();
                    let Some((200, lease)) = try_rpc(
                        &at,
                        "resourcelease::lease",
                        &[("Rpc-Ttl-Ms", "300")],
                        &json!({"peerId": peer}).to_string(),
                    ) else {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    };
                    let token = json!({"ownershipToken": lease["ownershipToken"]});
                    let id = lease["payload"]["resourceId"].as_str().unwrap().to_owned();
                    // The work itself.
                    std::thread::sleep(std::time::Duration::from_millis(15));
                    let n = handled.fetch_add(1, Ordering::Relaxed);
                    let (procedure, body) = if n % 10 == 7 {
                        (
                            "resourcelease::fail",
                            json!({"ownershipToken": lease["ownershipToken"], "requeue": false}),
                        )
                    } else {
                        ("resourcelease::complete", token)
                    };
                    if let Some((200, _)) = try_rpc(&at, procedure, &[], &body.to_string())
                        && procedure.ends_with("complete")
                    {
                        completed.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();

    // Under load, the primary dies; the standby is promoted.
    while handled.load(Ordering::Relaxed) < ITEMS / 3 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(signal(primary.id(), "KILL"));
    let _ = primary.wait();
    let out = omnirelay(&["promote", "--url", &format!("http://{standby_at}")], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    *target.lock().unwrap() = standby_at.clone();

    // Until nothing is pending or leased (leases lost with the primary
    // expire and come back).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = omnirelay(
            &[
                "log",
                "replay",
                "--data-dir",
                dir_arg(standby_dir.path()),
                "--write-version",
                "2",
            ],
            b"",
        );
        let events: Vec<Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ended = |id: i64| {
            events.iter().any(|e| {
                (e["eventType"] == "Completed" && e["ownership"]["sequenceId"] == id)
                    || (e["eventType"] == "DeadLettered" && e["items"][0]["sequenceId"] == id)
            })
        };
        if (1..=ITEMS as i64).all(ended) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "items never finished");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    done.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(signal(standby.id(), "TERM"));
    assert!(standby.wait().unwrap().success());

    // Every item was completed or dead-lettered; none lost. The standby's
    // log starts with what it followed of the primary's, event for event.
    let primary_log = replay_events(primary_dir.path(), "2");
    let standby_log = replay_events(standby_dir.path(), "2");
    let followed = standby_log
        .iter()
        .take_while(|e| {
            primary_log
                .get(e["sequenceNumber"].as_u64().unwrap() as usize - 1)
                .is_some_and(|p| p == *e)
        })
        .count();
    assert!(
        followed >= ITEMS,
        "the standby had every enqueue before the kill ({followed})"
    );
    assert!(
        standby_log[followed..]
            .iter()
            .all(|e| e["eventType"] != "Enqueue"),
        "after the failover only the standby's own events follow"
    );
    assert_eq!(
        standby_log
            .iter()
            .map(|e| e["sequenceNumber"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=standby_log.len() as u64).collect::<Vec<_>>(),
        "one gap-free numbering across the failover"
    );
    // Restarted as a dispatcher on its log, the queue is empty but for the
    // dead letters the stream holds.
    let dead = standby_log
        .iter()
        .filter(|e| e["eventType"] == "DeadLettered")
        .count();
    let (mut node, _, rebuilt) = start(standby_dir.path(), &["--config", config]);
    assert!(
        rebuilt.contains(&format!("0 pending, 0 leased, {dead} dead-lettered")),
        "{rebuilt}"
    );
    assert!(!completed.lock().unwrap().is_empty());
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
}

#[test]
fn heavy_status_agrees_with_the_nodes_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address, _) = start(dir.path(), &[]);
    for _ in 0..5 {
        rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
    }
    let (_, lease) = rpc(&address, "resourcelease::lease", &[], "{}");
    rpc(
        &address,
        "resourcelease::complete",
        &[],
        &json!({"ownershipToken": lease["ownershipToken"]}).to_string(),
    );
    // Until the sinks caught up with the 8 events.
    let url = format!("http://{address}");
    let mut document = Value::Null;
    for _ in 0..200 {
        let out = omnirelay(&["status", "--url", &url, "--json"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        document = serde_json::from_str(&text(&out.stdout)).unwrap();
        let sinks = document["hosts"][0]["sinks"].as_array().unwrap().clone();
        if sinks
            .iter()
            .all(|s| s["lag_events"] == 0 && s["checkpoint"] == 8)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let host = &document["hosts"][0];
    assert_eq!(host["role"], "dispatcher");
    assert_eq!(
        (
            &host["queue"]["pending"],
            &host["queue"]["active"],
            &host["queue"]["deadLettered"]
        ),
        (&json!(4), &json!(0), &json!(0))
    );
    assert_eq!(
        host["queue"]["fingerprint"].as_str().map(str::len),
        Some(16)
    );
    assert_eq!(host["streams"][0]["last_sequence"], 8);
    let metrics = http_get(&address, "/metrics").unwrap().1;
    let sample = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in {metrics}"))
    };
    assert_eq!(
        sample("omnirelay_replication_published_events_total{stream=\"default\"}"),
        8.0
    );
    for sink in host["sinks"].as_array().unwrap() {
        let name = sink["sink"].as_str().unwrap();
        let sent = sample(&format!(
            "omnirelay_replication_sink_sent_events_total{{stream=\"default\",sink=\"{name}\"}}"
        ));
        assert_eq!(sink["applied"].as_f64(), Some(sent), "{name}");
    }
    // And as a table.
    let out = omnirelay(&["status", "--url", &url], b"");
    let table = text(&out.stdout);
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table.contains("export") && table.contains("sqlite") && table.contains("healthy"),
        "{table}"
    );
    // The queue under it: 4 pending, none leased or dead-lettered.
    let queue = table
        .lines()
        .skip_while(|l| !l.contains("DEAD-LETTERED"))
        .nth(1)
        .unwrap_or_else(|| panic!("no queue table: {table}"));
    assert_eq!(
        queue.split_whitespace().skip(1).take(6).collect::<Vec<_>>(),
        ["dispatcher", "yes", "4", "0", "0", "NO"],
        "{table}"
    );
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
}

/// Starts a control plane watching `hosts` (none: only those of its
/// configuration) with its data in `dir` (and `extra` arguments); its
/// child and address.
fn start_plane(hosts: &str, dir: &Path, extra: &[&str]) -> (KillOnDrop, String) {
    let mut args = vec![
        "serve",
        "--role",
        "controlplane",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(dir),
    ];
    if !hosts.is_empty() {
        args.extend(["--hosts", hosts]);
    }
    args.extend(extra);
    let (plane, address, mut stderr) = spawn_listening(&args);
    // Its log lines are read (and dropped) for as long as it runs.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (plane, address)
}

/// A catalog operation `request` enqueued through the control plane at
/// `plane_at` (`POST /demo/enqueue`), which must succeed: the dispatcher's
/// answer.
fn demo_enqueue(plane_at: &str, request: &str) -> Value {
    let (code, _, body) = try_http_post_to(plane_at, "/demo/enqueue", &[], request).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The control plane's status document, polled until `check` holds.
fn plane_status(url: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut hosts = Vec::new();
    for _ in 0..300 {
        let out = omnirelay(&["status", "--url", url, "--json"], b"");
        let document: Value = serde_json::from_str(&text(&out.stdout))
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
        hosts = document["hosts"].as_array().unwrap().clone();
        // Exit status 1 exactly when a host is down.
        let down = hosts.iter().any(|h| h["up"] == false);
        assert_eq!(out.status.code(), Some(i32::from(down)), "{hosts:?}");
        if check(&hosts) {
            return hosts;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the control plane never showed {what}: {hosts:?}");
}

#[test]
fn heavy_the_control_plane_sees_every_host_go_down_and_come_back() {
    let (a_dir, b_dir, plane_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let bp = b_dir.path().join("bp.toml");
    std::fs::write(
        &bp,
        "[services.dispatcher.backpressure]\nhigh_watermark = 2\nlow_watermark = 0\n",
    )
    .unwrap();
    let (mut a, a_at, _) = start(a_dir.path(), &[]);
    let (mut b, b_at, _) = start(b_dir.path(), &["--config", bp.to_str().unwrap()]);
    for _ in 0..3 {
        rpc(&a_at, "resourcelease::enqueue", &[], PAYLOAD);
    }
    let (_, leased) = rpc(
        &a_at,
        "resourcelease::lease",
        &[],
        r#"{"peerId":"worker-1"}"#,
    );
    rpc(&b_at, "resourcelease::enqueue", &[], PAYLOAD);
    let hosts = format!("http://{a_at},http://{b_at}");
    let (mut plane, plane_at) = start_plane(&hosts, plane_dir.path(), &[]);
    let plane_url = format!("http://{plane_at}");
    let both_up = |hosts: &[Value]| {
        hosts.len() == 2
            && hosts.iter().all(|h| {
                h["up"] == true
                    && h["sinks"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["lag_events"] == 0))
            })
    };
    let hosts = plane_status(&plane_url, "both hosts up and caught up", both_up);
    // What the control plane says of each host is what the host's own
    // metrics say.
    for host in &hosts {
        let address = host["url"].as_str().unwrap().trim_start_matches("http://");
        let metrics = http_get(address, "/metrics").unwrap().1;
        for sink in host["sinks"].as_array().unwrap() {
            let needle = format!(
                "omnirelay_replication_sink_sent_events_total{{stream=\"default\",sink=\"{}\"}} ",
                sink["sink"].as_str().unwrap()
            );
            let sent: f64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&needle))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(sink["applied"].as_f64(), Some(sent));
        }
    }
    let table = text(&omnirelay(&["status", "--url", &plane_url], b"").stdout);
    assert!(table.contains(&a_at) && table.contains(&b_at), "{table}");
    // The hosts' events, followed over Subscribe: the reference's JSON.
    let mut recent = Vec::new();
    for _ in 0..100 {
        let (_, body) = http_get(&plane_at, "/demo/replication").unwrap();
        recent = serde_json::from_str::<Vec<Value>>(&body).unwrap();
        if recent.len() == 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(recent.len(), 5, "{recent:?}");
    assert!(recent.iter().all(|e| e.get("schemaVersion").is_none()));
    assert_eq!(
        recent
            .iter()
            .filter(|e| e["eventType"] == "Enqueue")
            .count(),
        4
    );
    // No backpressure anywhere yet: 204. Lease health from the hosts.
    assert_eq!(http_get(&plane_at, "/demo/backpressure").unwrap().0, 204);
    let (_, body) = http_get(&plane_at, "/demo/lease-health").unwrap();
    let health: Value = serde_json::from_str(&body).unwrap();
    let peer = &health["peers"][0];
    assert_eq!(peer["peerId"], "worker-1");
    assert_eq!(peer["host"], format!("http://{a_at}"));
    assert_eq!(peer["activeAssignments"], 1);
    assert!(leased["ownershipToken"].is_object());
    // Host b reaches its high watermark: the control plane has its signal.
    rpc(&b_at, "resourcelease::enqueue", &[], PAYLOAD);
    let mut signal_seen = Value::Null;
    for _ in 0..100 {
        let (code, body) = http_get(&plane_at, "/demo/backpressure").unwrap();
        if code == 200 {
            signal_seen = serde_json::from_str(&body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(signal_seen["isActive"], true, "{signal_seen}");
    assert_eq!(signal_seen["pendingCount"], 2);
    assert_eq!(signal_seen["highWatermark"], 2);
    let (_, body) = http_get(&plane_at, "/api/events?limit=2").unwrap();
    let events: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 2);
    assert_eq!(events["counts"][format!("http://{a_at}")]["Enqueue"], 3);
    assert_eq!(
        events["counts"][format!("http://{a_at}")]["LeaseGranted"],
        1
    );
    assert_eq!(events["counts"][format!("http://{b_at}")]["Enqueue"], 2);

    // One host dies: down within a few seconds; restarted, it is back.
    assert!(signal(b.id(), "KILL"));
    let _ = b.wait();
    let started = std::time::Instant::now();
    plane_status(&plane_url, "the dead host down", |hosts| {
        hosts
            .iter()
            .any(|h| h["up"] == false && h["url"] == format!("http://{b_at}"))
    });
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let (b2, _, _) = {
        let mut args = vec!["serve", "--role", "dispatcher", "--listen", b_at.as_str()];
        args.extend(["--data-dir", dir_arg(b_dir.path())]);
        spawn_listening(&args)
    };
    b = b2;
    let hosts = plane_status(&plane_url, "the host back", both_up);
    let revived = hosts
        .iter()
        .find(|h| h["url"] == format!("http://{b_at}"))
        .unwrap();
    assert_eq!(revived["outages"], 1);
    assert_eq!(
        revived["queue"]["pending"], 2,
        "it came back with its queue"
    );
    // The control plane's own log tells the story of host b.
    let (_, body) = http_get(&plane_at, "/api/journal").unwrap();
    let journal: Value = serde_json::from_str(&body).unwrap();
    let of_b: Vec<&str> = journal["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["host"] == format!("http://{b_at}"))
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        of_b,
        vec!["HostUp", "Backpressure", "HostDown", "HostUp"],
        "{journal}"
    );
    // The reference demo's operator endpoints: a catalog operation
    // enqueued through the control plane on the serving dispatcher (the
    // first up, by URL), and the catalog its completion adds to.
    let (_, body) = http_get(&plane_at, "/demo/catalogs").unwrap();
    let catalog: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(catalog["tables"], json!([]), "bodies that are no operation");
    let stats = demo_enqueue(&plane_at, r#"{"table":"orders","version":2}"#);
    assert!(stats["stats"]["pendingCount"].as_u64() > Some(0), "{stats}");
    let (code, _, _) =
        try_http_post_to(&plane_at, "/demo/enqueue", &[], r#"{"version":"x"}"#).unwrap();
    assert_eq!(code, 400);
    let serving = if format!("http://{a_at}") < format!("http://{b_at}") {
        &a_at
    } else {
        &b_at
    };
    let resource = "fabric-lakehouse.sales.orders.v0002";
    let mut ours = None;
    for _ in 0..5 {
        let (_, lease) = rpc(
            serving,
            "resourcelease::lease",
            &[],
            r#"{"peerId":"worker-2"}"#,
        );
        let token = json!({"ownershipToken": lease["ownershipToken"]}).to_string();
        rpc(serving, "resourcelease::complete", &[], &token);
        if lease["payload"]["resourceId"] == resource {
            ours = Some(lease);
            break;
        }
    }
    let ours = ours.expect("the enqueued operation was leased");
    assert_eq!(ours["payload"]["attributes"]["operation"], "CommitSnapshot");
    let mut tables = json!(null);
    for _ in 0..100 {
        let (_, body) = http_get(&plane_at, "/demo/catalogs").unwrap();
        tables = serde_json::from_str::<Value>(&body).unwrap()["tables"].clone();
        if tables.as_array().is_some_and(|t| !t.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(tables[0]["table"], "orders", "{tables}");
    assert_eq!(tables[0]["version"], 2);
    assert_eq!(tables[0]["principal"], "cli.enqueue");
    let (_, body) = http_get(&plane_at, "/demo/replication").unwrap();
    let recent: Vec<Value> = serde_json::from_str(&body).unwrap();
    let enqueued = recent
        .iter()
        .find(|e| e["eventType"] == "Enqueue" && e["payload"]["resourceId"] == resource)
        .unwrap();
    assert_eq!(enqueued["peerId"], "mesh-demo-host");
    for child in [&mut a, &mut b, &mut plane] {
        assert!(signal(child.id(), "TERM"));
        assert!(child.wait().unwrap().success());
    }
}

/// The headless browser the dashboard tests drive.
///
/// # Panics
///
/// Loudly, saying how to install it, if there is none.
fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is not installed (Debian: apt-get install chromium; scripts/test installs it)")
}

/// `chromium` headless on `url` with `extra` arguments (`--dump-dom`,
/// `--screenshot=FILE`), after three seconds of the page's own time.
fn browse(chromium: &str, url: &str, extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--window-size=1400,900",
        "--virtual-time-budget=3000",
    ]);
    command.args(extra).arg(url);
    command.output().unwrap()
}

#[test]
fn heavy_the_dashboard_in_a_real_browser_shows_every_host_live_and_a_killed_one_down() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let chromium = chromium();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    let mut addresses = Vec::new();
    for dir in &dirs[..3] {
        let (node, address, _) = start(dir.path(), &[]);
        nodes.push(node);
        addresses.push(address);
    }
    let hosts = addresses
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let (plane, plane_at) = start_plane(&hosts, dirs[3].path(), &[]);
    nodes.push(plane);
    // Traffic on every host while the page watches.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addresses) = (stop.clone(), addresses.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for address in &addresses {
                    try_rpc(
                        address,
                        "resourcelease::enqueue",
                        &[("Rpc-Caller", "seeder")],
                        PAYLOAD,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let url = format!("http://{plane_at}/");
    plane_status(
        &format!("http://{plane_at}"),
        "every host up and busy",
        |hosts| {
            hosts.len() == 3
                && hosts
                    .iter()
                    .all(|h| h["up"] == true && h["eventsPerSecond"].as_f64() > Some(0.0))
        },
    );
    let browse = |extra: &[&str]| browse(chromium, &url, extra);
    let dom = text(&browse(&["--dump-dom"]).stdout);
    for address in &addresses {
        let card = format!("data-host=\"http://{address}\" data-up=\"true\"");
        assert!(dom.contains(&card), "{card} missing from the page:\n{dom}");
    }
    let throughputs: Vec<f64> = dom
        .split("class=\"throughput\" data-value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    assert_eq!(throughputs.len(), 3, "{dom}");
    assert!(throughputs.iter().all(|t| *t > 0.0), "{throughputs:?}");
    let sink_rates: Vec<f64> = dom
        .split("sink-throughput\" data-value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect();
    assert_eq!(sink_rates.len(), 6, "every sink's throughput: {dom}");
    assert!(
        sink_rates.iter().filter(|r| **r > 0.0).count() >= 3,
        "{sink_rates:?}"
    );
    assert_eq!(dom.matches("data-sink=\"export\"").count(), 3);
    assert_eq!(dom.matches("data-sink=\"sqlite\"").count(), 3);
    assert!(dom.contains("Enqueue"), "the live tail shows events");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let out = browse(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "no screenshot: {}", text(&out.stderr));
    eprintln!("dashboard screenshot: {}", shot.display());
    // A host killed shows as down on the page; started again, as up.
    assert!(signal(nodes[0].id(), "KILL"));
    let _ = nodes[0].wait();
    let first = format!("http://{}", addresses[0]);
    plane_status(
        &format!("http://{plane_at}"),
        "the killed host down",
        |hosts| {
            hosts
                .iter()
                .any(|h| h["url"] == first.as_str() && h["up"] == false)
        },
    );
    let dom = text(&browse(&["--dump-dom"]).stdout);
    let card = format!("data-host=\"{first}\" data-up=\"false\"");
    assert!(dom.contains(&card), "{card} missing from the page:\n{dom}");
    let mut args = vec![
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        addresses[0].as_str(),
    ];
    args.extend(["--data-dir", dir_arg(dirs[0].path())]);
    nodes[0] = spawn_listening(&args).0;
    plane_status(&format!("http://{plane_at}"), "the host back", |hosts| {
        hosts.iter().all(|h| h["up"] == true)
    });
    let dom = text(&browse(&["--dump-dom"]).stdout);
    let card = format!("data-host=\"{first}\" data-up=\"true\"");
    assert!(dom.contains(&card), "{card} missing from the page:\n{dom}");
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    for mut node in nodes {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
    }
}

#[test]
fn heavy_the_control_plane_watches_tls_hosts_with_the_authority_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (node_config, cert) =
        crate::tls_node_config(dir.path(), "node", "[server]\ntoken = \"host-secret\"\n");
    let (_node, node_at, _) = start(
        &dir.path().join("node"),
        &["--config", dir_arg(&node_config)],
    );
    let host = format!("https://localhost:{}", node_at.rsplit(':').next().unwrap());
    let trusting_config = dir.path().join("trusting.toml");
    std::fs::write(
        &trusting_config,
        format!(
            "[services.controlplane]\nca_file = \"{}\"\ntoken = \"host-secret\"\n",
            cert.display()
        ),
    )
    .unwrap();
    let (_trusting, trusting_at) = start_plane(
        &host,
        &dir.path().join("trusting"),
        &["--config", dir_arg(&trusting_config)],
    );
    // Its status over TLS (with the hosts' token, the control plane's own
    // endpoints open)…
    let hosts = plane_status(&format!("http://{trusting_at}"), "the host up", |h| {
        h.len() == 1 && h[0]["up"] == true
    });
    assert_eq!(hosts[0]["url"], host.as_str());
    assert_eq!(hosts[0]["role"], "dispatcher");
    // …an operation enqueued through the control plane over TLS…
    demo_enqueue(&trusting_at, r#"{"table":"orders","version":1}"#);
    // …and its event, followed over TLS (gRPC `Subscribe`).
    let mut events = Value::Null;
    for _ in 0..200 {
        let (_, body) = http_get(&trusting_at, "/api/events?limit=5").unwrap();
        events = serde_json::from_str(&body).unwrap();
        if events["counts"][host.as_str()]["Enqueue"] == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(events["counts"][host.as_str()]["Enqueue"], 1, "{events}");
    // Without the authority (the system's roots), the handshake refuses the
    // host's certificate, and the status says so.
    let (_doubting, doubting_at) = start_plane(&host, &dir.path().join("doubting"), &[]);
    let hosts = plane_status(&format!("http://{doubting_at}"), "the host refused", |h| {
        h.len() == 1 && h[0]["error"].is_string() && h[0]["error"] != "not asked yet"
    });
    assert_eq!(hosts[0]["up"], false);
    let error = hosts[0]["error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("certificate"), "{error}");
    // The authority and token given to that host alone.
    let own_config = dir.path().join("own.toml");
    std::fs::write(
        &own_config,
        format!(
            "[services.controlplane]\nhosts = [{{ url = \"{host}\", ca_file = \"{}\", token = \"host-secret\" }}]\n",
            cert.display()
        ),
    )
    .unwrap();
    let (_own, own_at) = start_plane(
        "",
        &dir.path().join("own"),
        &["--config", dir_arg(&own_config)],
    );
    plane_status(&format!("http://{own_at}"), "the host up", |h| {
        h.len() == 1 && h[0]["up"] == true
    });
}

#[test]
fn heavy_a_standby_follows_a_primary_guarded_by_another_token() {
    let dir = tempfile::tempdir().unwrap();
    let primary_config = dir.path().join("primary.toml");
    std::fs::write(&primary_config, "[server]\ntoken = \"primary-secret\"\n").unwrap();
    let (_primary, primary_at, _) = start(
        &dir.path().join("primary"),
        &["--config", dir_arg(&primary_config)],
    );
    // The standby's own endpoints stay open (no [server] token); it sends
    // the primary's token, given in its environment.
    let (_trusted, trusted_at, _) = spawn_standby(
        &dir.path().join("trusted"),
        &["--follow", &format!("http://{primary_at}")],
        &[("OMNIRELAY_SERVICES__STANDBY__TOKEN", "primary-secret")],
    );
    assert_following(&trusted_at);
    // Without it, the primary refuses the subscription, and the standby
    // says so.
    let (_refused, refused_at, _) = spawn_standby(
        &dir.path().join("refused"),
        &["--follow", &format!("http://{primary_at}")],
        &[],
    );
    let error = refusal_of(&refused_at);
    assert!(error.contains("token"), "{error}");
}

#[test]
fn heavy_a_standby_follows_a_tls_primary_with_the_authority_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (primary_config, cert) = crate::tls_node_config(dir.path(), "primary", "");
    let primary_dir = dir.path().join("primary");
    let (_primary, primary_at, _) = start(&primary_dir, &["--config", dir_arg(&primary_config)]);
    let port = primary_at.rsplit(':').next().unwrap();
    // A standby given the authority's certificate follows; one without it
    // (the system's roots) is refused by the handshake and says so.
    let standby = |name: &str, ca: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!("[services.standby]\nfollow = \"https://localhost:{port}\"\n{ca}"),
        )
        .unwrap();
        let (child, address, _) =
            spawn_standby(&dir.path().join(name), &["--config", dir_arg(&config)], &[]);
        (child, address)
    };
    let (_trusting, trusting_at) =
        standby("trusting", &format!("ca_file = \"{}\"\n", cert.display()));
    assert_following(&trusting_at);
    let (_doubting, doubting_at) = standby("doubting", "");
    let error = refusal_of(&doubting_at);
    assert!(error.contains("certificate"), "{error}");
}

/// `omnirelay queue dead-letters --json` of the node at `url`.
fn queue_dead_letters(url: &str) -> Vec<Value> {
    let out = omnirelay(&["queue", "dead-letters", "--url", url, "--json"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let document: Value = serde_json::from_slice(&out.stdout).unwrap();
    document["deadLetters"].as_array().unwrap().clone()
}

#[test]
fn heavy_dead_lettered_items_are_listed_redriven_and_purged_and_a_standby_follows() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut primary, primary_at, _) = start(primary_dir.path(), &[]);
    let (mut standby, standby_at) =
        start_standby(standby_dir.path(), &format!("http://{primary_at}"));
    let (primary_url, standby_url) = (
        format!("http://{primary_at}"),
        format!("http://{standby_at}"),
    );
    let none = omnirelay(&["queue", "dead-letters", "--url", &primary_url], b"");
    assert!(
        text(&none.stdout).contains("no dead-lettered items"),
        "{}",
        text(&none.stdout)
    );
    for reason in ["poison-1", "poison-2", "poison-3"] {
        rpc(&primary_at, "resourcelease::enqueue", &[], PAYLOAD);
        let (_, lease) = rpc(
            &primary_at,
            "resourcelease::lease",
            &[],
            r#"{"peerId":"w"}"#,
        );
        let body = json!({
            "ownershipToken": lease["ownershipToken"],
            "reason": reason,
            "errorCode": "mesh.poison",
            "requeue": false,
        });
        assert_eq!(
            rpc(&primary_at, "resourcelease::fail", &[], &body.to_string()).0,
            200
        );
    }

    let table = omnirelay(&["queue", "dead-letters", "--url", &primary_url], b"");
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(table.starts_with("SEQUENCE-ID"), "{table}");
    assert!(table.contains("lakehouse.catalog/sales.orders"), "{table}");
    assert!(
        table.contains("mesh.poison") && table.contains("poison-2"),
        "{table}"
    );
    assert!(table.contains("3 dead-lettered items"), "{table}");
    // In columns: every item's resource under the header's.
    let resource_at = table.find("RESOURCE").unwrap();
    let rows: Vec<&str> = table.lines().skip(1).take(3).collect();
    assert!(
        rows.iter().all(|row| row
            .get(resource_at..)
            .is_some_and(|r| r.starts_with("lakehouse.catalog/"))),
        "{table}"
    );
    // A page of them, and past the end.
    let page = |args: &[&str]| {
        let mut all = vec!["queue", "dead-letters", "--url", primary_url.as_str()];
        all.extend_from_slice(args);
        let out = omnirelay(&all, b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let second = page(&["--offset", "1", "--limit", "1"]);
    assert!(
        second.contains("poison-2") && !second.contains("poison-1"),
        "{second}"
    );
    assert!(
        second.contains("items 2–2 of 3 dead-lettered items"),
        "{second}"
    );
    let past = page(&["--offset", "5"]);
    assert!(
        past.contains("no dead-lettered items after the first 5")
            && past.contains("(3 dead-lettered items)"),
        "{past}"
    );
    // The standby's projection has them too, once it followed.
    let mut followed = Vec::new();
    for _ in 0..500 {
        followed = queue_dead_letters(&standby_url);
        if followed.len() == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(followed, queue_dead_letters(&primary_url));
    let gauge = |at: &str| {
        let metrics = http_get(at, "/metrics").unwrap().1;
        metrics
            .lines()
            .find(|l| l.starts_with("omnirelay_dispatcher_dead_lettered_items{"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(gauge(&primary_at).as_deref(), Some("3"));

    // Refused: an id that is not dead-lettered, no choice, a standby.
    let why = refused(
        &["queue", "redrive", "--url", &primary_url, "--id", "9"],
        "resourcelease.redrive.not_dead_lettered",
    );
    assert!(why.contains("404"), "{why}");
    refused(&["queue", "redrive", "--url", &primary_url], "--all");
    refused(&["queue", "redrive", "--url", &standby_url, "--all"], "503");

    let redrive_2_as = |caller: &'static str| {
        let url: &str = &primary_url;
        [
            "queue", "redrive", "--url", url, "--id", "2", "--caller", caller,
        ]
    };
    refused(&redrive_2_as(" "), "--caller needs a name");
    let redriven = omnirelay(&redrive_2_as("alice"), b"");
    assert!(redriven.status.success(), "{}", text(&redriven.stderr));
    assert!(
        text(&redriven.stdout).contains("redriven: 1 item back in the queue, at attempt 1: 2"),
        "{}",
        text(&redriven.stdout)
    );
    let (_, lease) = rpc(&primary_at, "resourcelease::lease", &[], "{}");
    assert_eq!(
        (lease["sequenceId"].as_i64(), lease["attempt"].as_i64()),
        (Some(2), Some(1))
    );

    // Purged: gone for good, all or nothing.
    let why = refused(
        &[
            "queue",
            "purge",
            "--url",
            &primary_url,
            "--id",
            "3",
            "--id",
            "9",
        ],
        "resourcelease.purge.not_dead_lettered",
    );
    assert!(why.contains("item 9"), "{why}");
    refused(&["queue", "purge", "--url", &primary_url], "--all");
    refused(&["queue", "purge", "--url", &standby_url, "--all"], "503");
    let purged = omnirelay(&["queue", "purge", "--url", &primary_url, "--id", "3"], b"");
    assert!(purged.status.success(), "{}", text(&purged.stderr));
    assert!(
        text(&purged.stdout).contains("purged: 1 dead-lettered item discarded: 3"),
        "{}",
        text(&purged.stdout)
    );

    for _ in 0..500 {
        if queue_dead_letters(&standby_url).len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = queue_dead_letters(&standby_url);
    assert_eq!(
        left.len(),
        1,
        "the standby applied the redrive and the purge"
    );
    assert_eq!(gauge(&primary_at).as_deref(), Some("1"));
    assert_eq!(left[0]["item"]["sequenceId"], 1);
    assert_eq!(left, queue_dead_letters(&primary_url));

    // The log holds the redrive and the purge (with the item it
    // discarded): a restart rebuilds the same queue.
    for node in [&mut standby, &mut primary] {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
    }
    let redrives: Vec<Value> = replay_events(primary_dir.path(), "2")
        .into_iter()
        .filter(|e| e["eventType"] == "Requeued")
        .collect();
    assert_eq!(redrives.len(), 1);
    assert!(redrives[0].get("ownership").is_none(), "{}", redrives[0]);
    assert_eq!(redrives[0]["peerId"], "alice", "{}", redrives[0]);
    let purges: Vec<Value> = replay_events(primary_dir.path(), "2")
        .into_iter()
        .filter(|e| e["eventType"] == "DeadLetterPurged")
        .collect();
    assert_eq!(purges.len(), 1);
    assert_eq!(purges[0]["items"][0]["sequenceId"], 3, "{}", purges[0]);
    let (mut node, _, rebuilt) = start(primary_dir.path(), &[]);
    assert!(
        rebuilt.contains("0 pending, 1 leased, 1 dead-lettered"),
        "{rebuilt}"
    );
    assert!(signal(node.id(), "TERM"));
    assert!(node.wait().unwrap().success());
}

#[test]
fn heavy_the_control_plane_watches_hosts_that_want_different_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = Vec::new();
    let mut nodes = Vec::new();
    for name in ["alpha", "beta"] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[server]\ntoken = \"{name}-secret\"\n")).unwrap();
        let (node, at, _) = start(&dir.path().join(name), &["--config", dir_arg(&config)]);
        urls.push(format!("http://{at}"));
        nodes.push(node);
    }
    // beta's token as its own; alpha's as the default.
    let config = dir.path().join("plane.toml");
    std::fs::write(
        &config,
        format!(
            "[services.controlplane]\ntoken = \"alpha-secret\"\nhosts = [\"{}\", {{ url = \"{}\", token = \"beta-secret\" }}]\n",
            urls[0], urls[1]
        ),
    )
    .unwrap();
    let (_plane, plane_at) = start_plane(
        &urls[0],
        &dir.path().join("plane"),
        &["--config", dir_arg(&config)],
    );
    let hosts = plane_status(&format!("http://{plane_at}"), "both hosts up", |h| {
        h.len() == 2 && h.iter().all(|host| host["up"] == true)
    });
    assert!(hosts.iter().all(|h| h["role"] == "dispatcher"));
    // Each host's stream is followed with its own token: an operation
    // enqueued on beta shows among beta's events.
    let (code, _) = rpc(
        urls[1].trim_start_matches("http://"),
        "resourcelease::enqueue",
        &[("Authorization", "Bearer beta-secret")],
        PAYLOAD,
    );
    assert_eq!(code, 200);
    let mut events = Value::Null;
    for _ in 0..200 {
        events =
            serde_json::from_str(&http_get(&plane_at, "/api/events?limit=5").unwrap().1).unwrap();
        if events["counts"][urls[1].as_str()]["Enqueue"] == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(events["counts"][urls[1].as_str()]["Enqueue"], 1, "{events}");
    // With only the default token, beta refuses it, and the status says so.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        "[services.controlplane]\ntoken = \"alpha-secret\"\n",
    )
    .unwrap();
    let (_other, other_at) = start_plane(
        &urls.join(","),
        &dir.path().join("other"),
        &["--config", dir_arg(&other)],
    );
    // (Both asked: alpha up, beta refusing; each host is asked on its own.)
    let hosts = plane_status(
        &format!("http://{other_at}"),
        "alpha up and beta refusing",
        |h| {
            let of = |url: &str| h.iter().find(|host| host["url"] == url);
            of(&urls[0]).is_some_and(|alpha| alpha["up"] == true)
                && of(&urls[1])
                    .is_some_and(|beta| beta["error"].as_str().is_some_and(|e| e.contains("401")))
        },
    );
    let beta = hosts.iter().find(|h| h["url"] == urls[1].as_str()).unwrap();
    assert_eq!(beta["up"], false, "{beta}");
}

/// `omnirelay sink retry`: a sink whose backend is fixed tries again at
/// once instead of waiting out its backoff (here ten minutes).
#[test]
fn sink_retry_ends_a_fixed_sinks_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("gone/export");
    let dangling = dir.path().join("export-link");
    std::os::unix::fs::symlink(&export, &dangling).unwrap();
    let config = dir.path().join("omnirelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[replication.sinks.slow]
type = "file"
[replication.sinks.slow.retry]
initial_backoff_ms = 600000
max_backoff_ms = 600000
jitter = false
[replication.sinks.slow.settings]
dir = "{}"
[replication.sinks.fine]
type = "file"
[replication.sinks.fine.settings]
dir = "{}"
"#,
            dangling.display(),
            dir.path().join("fine").display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_node, address, _) = start(&data, &["--config", config.to_str().unwrap()]);
    let url = format!("http://{address}");
    let retry = |extra: &[&str]| {
        let mut args = vec!["sink", "retry", "--url", &url];
        args.extend_from_slice(extra);
        omnirelay(&args, b"")
    };
    let out = retry(&["--sink", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no sink named \"nope\""),
        "{}",
        text(&out.stderr)
    );
    let out = retry(&["--sink", "fine"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no sink of http://"),
        "{}",
        text(&out.stdout)
    );
    // The control plane passes it on to the hosts it watches (before, it
    // woke only its own sinks, and said none was waiting).
    let (_plane, plane_address) = start_plane(&url, &dir.path().join("plane"), &[]);
    let plane_url = format!("http://{plane_address}");
    let plane_retry = |plane_url: &str, extra: &[&str]| {
        let mut args = vec!["sink", "retry", "--url", plane_url];
        args.extend_from_slice(extra);
        omnirelay(&args, b"")
    };
    let out = plane_retry(&plane_url, &["--sink", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("no sink named \"nope\" on the control plane or any of its hosts"),
        "{}",
        text(&out.stderr)
    );
    // A host it cannot reach is named, and the exit status says so.
    let (_lost, lost_address) = start_plane(
        &format!("{url},http://127.0.0.1:9"),
        &dir.path().join("plane-2"),
        &[],
    );
    let out = plane_retry(&format!("http://{lost_address}"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("could not ask http://127.0.0.1:9:"),
        "{}",
        text(&out.stderr)
    );

    let (status, body) = rpc(&address, "resourcelease::enqueue", &[], PAYLOAD);
    assert_eq!(status, 200, "{body}");
    // It failed, and waits ten minutes to try again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&address, "/status").unwrap();
        let status: Value = serde_json::from_str(&body).unwrap();
        let slow = status["hosts"][0]["sinks"]
            .as_array()
            .and_then(|sinks| sinks.iter().find(|s| s["sink"] == "slow").cloned())
            .unwrap();
        if slow["retries"].as_u64() >= Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never failed: {slow}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Its directory appears: the sink could write now.
    std::fs::create_dir_all(&export).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = plane_retry(&plane_url, &["--stream", "default", "--sink", "slow"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        if text(&out.stdout) == format!("retrying now: sink slow of stream default on {url}\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never waiting: {}",
            text(&out.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let written = || -> String {
        std::fs::read_dir(&export)
            .unwrap()
            .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !written().contains("\"Enqueue\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered after the retry"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
