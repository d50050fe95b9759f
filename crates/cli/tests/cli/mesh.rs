//! `omnirelay serve --role seeder|worker`: the mesh scenario's clients as
//! nodes of their own, against a dispatcher in another process.

use std::io::BufRead;
use std::time::{Duration, Instant};

use omnirelay_replication_testkit::process::signal;
use serde_json::Value;

use crate::log::{dir_arg, replay_events};
use crate::{http_get, refused, spawn_listening, spawn_listening_with_env, text};

/// The node's next line on stderr that is not a log record.
fn next_said(stderr: &mut impl BufRead) -> String {
    crate::said(stderr).trim_end().to_owned()
}

/// What a seeder or worker at `address` reports under `mesh`.
fn mesh_of(address: &str) -> Value {
    let (status, body) = http_get(address, "/status").unwrap();
    assert_eq!(status, 200, "{body}");
    let document: Value = serde_json::from_str(&body).unwrap();
    document["hosts"][0]["mesh"].clone()
}

#[test]
fn heavy_a_seeder_and_a_worker_run_the_mesh_against_a_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = |name: &str| dir.path().join(name);
    let (dispatcher_dir, seeder_dir, worker_dir) = (
        node_dir("dispatcher"),
        node_dir("seeder"),
        node_dir("worker"),
    );
    // All three in one namespace other than the dispatcher's default.
    let (mut dispatcher, dispatcher_at, mut dispatcher_err) = spawn_listening(&[
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(&dispatcher_dir),
        "--namespace",
        "lakehouse",
    ]);
    next_said(&mut dispatcher_err);
    assert!(next_said(&mut dispatcher_err).starts_with("dispatcher ready"));
    let url = format!("http://{dispatcher_at}");

    let (mut seeder, seeder_at, mut seeder_err) = spawn_listening_with_env(
        &[
            "serve",
            "--role",
            "seeder",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg(&seeder_dir),
            "--dispatcher",
            &url,
            "--namespace",
            "lakehouse",
        ],
        &[("OMNIRELAY_SERVICES__MESH__SEED_INTERVAL_MS", "100")],
    );
    let ready = next_said(&mut seeder_err);
    assert!(
        ready.starts_with("seeder ready at")
            && ready.ends_with(&format!("calling {url} (namespace lakehouse)")),
        "{ready}"
    );
    let (mut worker, worker_at, mut worker_err) = spawn_listening(&[
        "serve",
        "--role",
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(&worker_dir),
        "--dispatcher",
        &url,
        "--namespace",
        "lakehouse",
        "--peer",
        "worker-1",
    ]);
    let ready = next_said(&mut worker_err);
    assert!(ready.ends_with(" as worker-1"), "{ready}");

    // The worker completes what the seeder enqueues.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut mesh = mesh_of(&worker_at);
    while mesh["completed"].as_u64().unwrap_or(0) < 3 {
        assert!(
            Instant::now() < deadline,
            "the worker completed too little: {mesh}"
        );
        std::thread::sleep(Duration::from_millis(200));
        mesh = mesh_of(&worker_at);
    }
    assert_eq!(mesh["peerId"], "worker-1");
    assert_eq!(mesh["dispatcher"], url.as_str());
    assert_eq!(mesh["workerErrors"], 0, "{mesh}");
    let seeded = mesh_of(&seeder_at);
    assert!(seeded["enqueued"].as_u64().unwrap() >= 3, "{seeded}");
    assert_eq!(seeded["enqueueErrors"], 0, "{seeded}");
    // So does each one's /metrics.
    let metric = |address: &str, prefix: &str| -> u64 {
        let (_, metrics) = http_get(address, "/metrics").unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(
        metric(&worker_at, "omnirelay_mesh_items_total{") >= 3,
        "{:?}",
        http_get(&worker_at, "/metrics")
    );
    assert!(
        metric(
            &seeder_at,
            "omnirelay_mesh_enqueues_total{outcome=\"enqueued\"}"
        ) >= 3
    );
    assert_eq!(metric(&worker_at, "omnirelay_mesh_rpc_errors_total"), 0);
    // `omnirelay status` shows what each did.
    let table = crate::omnirelay(&["status", "--url", &format!("http://{worker_at}")], b"");
    assert!(table.status.success(), "{}", text(&table.stderr));
    assert!(
        text(&table.stdout).contains("worker-1"),
        "{}",
        text(&table.stdout)
    );

    // Stopped, each says what it did; the worker finishes what it holds.
    for (node, stderr, said) in [
        (&mut seeder, &mut seeder_err, " enqueued, 0 refused"),
        (&mut worker, &mut worker_err, " completed ("),
    ] {
        assert!(signal(node.id(), "TERM"));
        assert!(node.wait().unwrap().success());
        assert_eq!(next_said(stderr), "stopping");
        let stopped = next_said(stderr);
        assert!(
            stopped.starts_with("stopped: ") && stopped.contains(said),
            "{stopped}"
        );
    }
    assert!(signal(dispatcher.id(), "TERM"));
    assert!(dispatcher.wait().unwrap().success());

    // The dispatcher's log holds the reference's events: enqueued by the
    // seeder's caller, leased by the worker's peer, completed.
    let events = replay_events(&dispatcher_dir, "1");
    let peers_of = |kind: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["eventType"] == kind)
            .map(|e| e["peerId"].clone())
            .collect()
    };
    let enqueued = peers_of("Enqueue");
    assert!(enqueued.len() >= 3, "{events:?}");
    assert!(
        enqueued.iter().all(|p| p == "mesh-demo-host"),
        "{enqueued:?}"
    );
    let leased = peers_of("LeaseGranted");
    assert!(!leased.is_empty() && leased.iter().all(|p| p == "worker-1"));
    assert!(peers_of("Completed").len() >= 3, "{events:?}");
}

#[test]
fn a_seeder_or_worker_is_refused_without_a_dispatcher_and_with_others_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir_arg(dir.path());
    let serve = |role: &'static str, extra: &[&'static str]| {
        let mut args = vec!["serve", "--role", role, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(&["--data-dir", data]);
        args.extend_from_slice(extra);
        args
    };
    refused(
        &serve("worker", &[]),
        "needs the dispatcher to call: --dispatcher URL",
    );
    refused(
        &serve("seeder", &["--dispatcher", "dispatcher:7420"]),
        "services.mesh.dispatcher",
    );
    refused(
        &serve("dispatcher", &["--dispatcher", "http://d:1"]),
        "--dispatcher is for --role seeder and --role worker",
    );
    refused(
        &serve("seeder", &["--dispatcher", "http://d:1", "--peer", "p"]),
        "--peer is for --role worker",
    );
    refused(
        &serve(
            "worker",
            &["--dispatcher", "http://d:1", "--write-version", "2"],
        ),
        "--write-version is for nodes that replicate",
    );
}

#[test]
fn heavy_a_seeder_and_a_worker_reach_a_tls_dispatcher_with_its_authority_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cert) = crate::tls_node_config(
        dir.path(),
        "dispatcher",
        "[server]\ntoken = \"mesh-secret\"\n",
    );
    let (_dispatcher, dispatcher_at, _) = spawn_listening(&[
        "serve",
        "--role",
        "dispatcher",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(&dir.path().join("dispatcher")),
        "--config",
        dir_arg(&config),
    ]);
    let port = dispatcher_at.rsplit(':').next().unwrap();
    // A client node's settings: the dispatcher, its authority and token.
    let client = |name: &str, mesh: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[services.mesh]\ndispatcher = \"https://localhost:{port}\"\nseed_interval_ms = 100\n{mesh}"
            ),
        )
        .unwrap();
        let role = if name.starts_with("seeder") {
            "seeder"
        } else {
            "worker"
        };
        let (child, address, _) = spawn_listening(&[
            "serve",
            "--role",
            role,
            "--listen",
            "127.0.0.1:0",
            "--config",
            dir_arg(&file),
        ]);
        (child, address)
    };
    let trusted = format!(
        "ca_file = \"{}\"\ntoken = \"mesh-secret\"\n",
        cert.display()
    );
    let (_seeder, seeder_at) = client("seeder", &trusted);
    let (_worker, worker_at) = client("worker", &format!("{trusted}peer = \"tls-worker\"\n"));
    // Without the authority the handshake fails; without the token the
    // dispatcher refuses: each counts its failures and does nothing.
    let (_doubting, doubting_at) = client("seeder-doubting", "token = \"mesh-secret\"\n");
    let (_tokenless, tokenless_at) = client(
        "seeder-tokenless",
        &format!("ca_file = \"{}\"\n", cert.display()),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let done = || {
        mesh_of(&worker_at)["completed"].as_u64().unwrap_or(0) >= 2
            && mesh_of(&doubting_at)["enqueueErrors"].as_u64().unwrap_or(0) >= 1
            && mesh_of(&tokenless_at)["enqueueErrors"]
                .as_u64()
                .unwrap_or(0)
                >= 1
    };
    while !done() {
        assert!(
            Instant::now() < deadline,
            "worker {} doubting {} tokenless {}",
            mesh_of(&worker_at),
            mesh_of(&doubting_at),
            mesh_of(&tokenless_at)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mesh_of(&worker_at)["workerErrors"], 0);
    assert_eq!(mesh_of(&seeder_at)["enqueueErrors"], 0);
    for refused in [&doubting_at, &tokenless_at] {
        assert_eq!(mesh_of(refused)["enqueued"], 0);
    }
}
