//! The hyperscale tier, black-box against the release binary: volume
//! through four sinks with one slowed, and crash/restart cycles with
//! SIGKILL at random points.
//!
//! CI runs the reduced size (a million events, 100 cycles);
//! `HYPERSCALE=full` runs the full one (ten million events, 1 000
//! cycles). `HYPERSCALE_SEED=N` replays the cycles of a seed (the
//! test prints its seed). Not `OMNIRELAY_…`: every such variable is
//! configuration to the nodes the tests start, which inherit the
//! environment, and an unknown one stops them.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use omnirelay_replication_testkit::process::{KillOnDrop, signal, wait_with_deadline};

fn full() -> bool {
    match std::env::var("HYPERSCALE") {
        Ok(size) => {
            assert_eq!(size, "full", "HYPERSCALE: `full`, or unset for the CI size");
            true
        }
        Err(_) => false,
    }
}

fn omnirelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_omnirelay"))
}

/// An event of the reference's JSON, tagged `tag` (its resource and
/// request id).
fn event(tag: &str) -> String {
    format!(
        r#"{{"sequenceNumber":0,"eventType":"Enqueue","timestamp":"2026-11-28T10:00:00+00:00","peerId":"hyperscale","payload":{{"resourceType":"lakehouse.catalog","resourceId":"{tag}","partitionKey":"p","payloadEncoding":"json","body":"e30=","attributes":{{"tier":"hyperscale"}},"requestId":"{tag}"}},"metadata":{{"queue.pending":"0","queue.active":"0"}}}}"#
    )
}

/// The value of `"field":` in a JSON line (numbers and plain strings), without
/// parsing the whole line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}'])?;
    Some(&rest[..end])
}

/// The sequences of every JSON line of every file under `dir` (recursively),
/// in the order read.
fn sequences_under(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = std::fs::File::open(&path).unwrap();
            for line in BufReader::new(file).lines() {
                let line = line.unwrap();
                // Events only (an object store's checkpoint object is not one).
                if let Some(sequence) = field(&line, "sequenceNumber") {
                    out.push(sequence.parse().unwrap());
                }
            }
        }
    }
    out
}

/// Asserts `sequences` hold 1..=n, each once.
fn each_once(what: &str, mut sequences: Vec<u64>, n: u64) {
    assert_eq!(sequences.len() as u64, n, "{what}: events held");
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len() as u64, n, "{what}: duplicates");
    assert_eq!(
        (sequences.first().copied(), sequences.last().copied()),
        (Some(1), Some(n)),
        "{what}: the range"
    );
}

/// The rows of the stream `default` in a SQLite sink: sequences.
fn sqlite_sequences(db: &Path) -> Vec<u64> {
    let reader = omnirelay_replication_sqlite::SqliteReader::open(db).unwrap();
    reader
        .rows(omnirelay_replication_sqlite::DEFAULT_TABLE, 1)
        .unwrap()
        .map(|row| row.unwrap().sequence)
        .collect()
}

/// Reads stderr lines until one starts with `prefix`; that line.
fn read_until(stderr: &mut BufReader<ChildStderr>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no line starting {prefix:?}"
        );
        if line.starts_with(prefix) {
            return line.trim().to_owned();
        }
    }
}

/// `GET path` over HTTP/1.0; the body, or `None` when nothing answers.
fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

/// The peak resident set of process `pid` so far, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn heavy_hyperscale_volume_through_four_sinks_one_slowed() {
    let events: u64 = if full() { 10_000_000 } else { 1_000_000 };
    // The slowed sink takes about 110 s for all of them.
    let rate = events / 110;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
[replication.log]
durability = "interval"

[replication.sinks.export]
type = "file"

[replication.sinks.sqlite]
type = "sqlite"

[replication.sinks.archive]
type = "object_store"
[replication.sinks.archive.settings]
layout = "segment"

# The slowed one: required, so past its budget it holds the publisher.
[replication.sinks.slow]
type = "file"
mode = "required"
max_lag_events = 20000
max_events_per_second = {rate}
[replication.sinks.slow.settings]
dir = "slow"
"#,
            data = data.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut publisher = KillOnDrop::from(
        omnirelay()
            .args(["publish", "--config", config.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = publisher.id();
    let mut stderr = BufReader::new(publisher.stderr.take().unwrap());
    let listening = read_until(&mut stderr, "listening on http://");
    let address = listening
        .trim_start_matches("listening on http://")
        .to_owned();
    let stderr_rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let mut stdin = publisher.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut stdin);
        for i in 0..events {
            writeln!(out, "{}", event(&format!("e{i}"))).unwrap();
        }
        out.flush().unwrap();
    });

    // While it runs: backpressure shows in the metrics; memory stays
    // bounded.
    let mut backpressure_seen = false;
    let mut slow_lag_seen = 0.0_f64;
    let mut peak_kib = 0;
    while publisher.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(metrics) = http_get(&address, "/metrics") {
            for line in metrics.lines() {
                if line.starts_with("omnirelay_replication_backpressure_active")
                    && line.ends_with(" 1")
                {
                    backpressure_seen = true;
                }
                if line.starts_with("omnirelay_replication_sink_lag_events")
                    && line.contains("sink=\"slow\"")
                    && let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse().ok())
                {
                    slow_lag_seen = slow_lag_seen.max(value);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    feeder.join().unwrap();
    let status = publisher.wait().unwrap();
    let stderr = stderr_rest.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("published {events} events"))
            && stderr.contains("sinks caught up"),
        "{stderr}"
    );
    assert!(backpressure_seen, "backpressure engaged (metrics)");
    assert!(
        slow_lag_seen >= 10_000.0,
        "the slowed sink fell behind: {slow_lag_seen}"
    );
    assert!(
        peak_kib < 256 * 1024,
        "resident memory stayed under 256 MiB: {peak_kib} KiB"
    );
    eprintln!(
        "{events} events in {:?}; peak resident memory {} MiB; the slowed sink's lag peaked at {slow_lag_seen}",
        started.elapsed(),
        peak_kib / 1024
    );

    // Nothing lost, nothing twice, in every sink; the checkpoints say
    // every sink caught up (lag back to zero).
    each_once("export", sequences_under(&data.join("export")), events);
    each_once("slow", sequences_under(&data.join("slow")), events);
    each_once("archive", sequences_under(&data.join("objects")), events);
    each_once(
        "sqlite",
        sqlite_sequences(&data.join("replication.db")),
        events,
    );
    let inspect = omnirelay()
        .args(["log", "inspect", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let inspect = String::from_utf8(inspect.stdout).unwrap();
    for sink in ["export", "sqlite", "archive", "slow"] {
        let line = inspect
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("sink {sink} ")))
            .unwrap_or_else(|| panic!("no {sink} in {inspect}"));
        assert!(
            line.contains(&format!("checkpoint {events},")) && line.contains("lag 0 events"),
            "{line}"
        );
    }
}

/// A node started in the crash cycles.
fn start_receiver(config: &Path, listen: &str) -> KillOnDrop {
    let mut child = KillOnDrop::from(
        omnirelay()
            .args(["serve", "--role", "receiver", "--config"])
            .arg(config)
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, "receiver ready at");
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut rest);
    });
    child
}

/// `omnirelay publish` fed `tags` as events; its acknowledged sequences
/// come on the returned channel as (tag, sequence).
fn start_publisher(
    config: &Path,
    tags: Vec<String>,
) -> (KillOnDrop, mpsc::Receiver<(String, u64)>) {
    let mut child = KillOnDrop::from(
        omnirelay()
            .args(["publish", "--config"])
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let sent = tags.clone();
    std::thread::spawn(move || {
        for tag in &sent {
            if writeln!(stdin, "{}", event(tag)).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        // Receipts come in input order, one line per event.
        for (tag, line) in tags.into_iter().zip(stdout.lines()) {
            let Ok(line) = line else { return };
            let Ok(sequence) = line.trim().parse() else {
                return;
            };
            if tx.send((tag, sequence)).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn kill(child: &mut KillOnDrop) {
    assert!(signal(child.id(), "KILL"));
    let _ = child.wait();
}

#[test]
fn heavy_hyperscale_crash_restart_cycles_lose_no_acknowledged_event() {
    let cycles: u32 = if full() { 1000 } else { 100 };
    let seed = std::env::var("HYPERSCALE_SEED").map_or_else(
        |_| fastrand::u64(..),
        |seed| {
            seed.parse()
                .unwrap_or_else(|_| panic!("HYPERSCALE_SEED={seed}: not a seed the test printed"))
        },
    );
    eprintln!("crash cycles: seed {seed} (HYPERSCALE_SEED={seed} replays them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let sender = dir.path().join("sender");
    let receiver = dir.path().join("receiver");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    // Each node: its log (fsync), its export and SQLite; the sender also
    // the receiver, over gRPC.
    let node_config = |data: &Path| {
        format!(
            "data_dir = \"{}\"\n[replication.sinks.export]\ntype = \"file\"\n[replication.sinks.sqlite]\ntype = \"sqlite\"\n",
            data.display()
        )
    };
    let sender_config = dir.path().join("sender.toml");
    std::fs::write(
        &sender_config,
        node_config(&sender)
            + &format!(
                r#"[replication.sinks.receiver]
type = "grpc"
[replication.sinks.receiver.retry]
initial_backoff_ms = 20
max_backoff_ms = 200
[replication.sinks.receiver.settings]
url = "http://{listen}"
sender = "crash-sender"
timeout_ms = 2000
"#
            ),
    )
    .unwrap();
    let receiver_config = dir.path().join("receiver.toml");
    std::fs::write(&receiver_config, node_config(&receiver)).unwrap();

    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut node = Some(start_receiver(&receiver_config, &listen));
    let mut kills = BTreeMap::<&str, u32>::new();
    for cycle in 0..cycles {
        let tags: Vec<String> = (0..rng.usize(50..400))
            .map(|i| format!("c{cycle}-{i}"))
            .collect();
        sent += tags.len() as u64;
        let (mut publisher, receipts) = start_publisher(&sender_config, tags);
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        match rng.u8(0..10) {
            // The publisher (its log and its sinks mid-write).
            0..=5 => {
                kill(&mut publisher);
                *kills.entry("sender").or_default() += 1;
            }
            // The receiver, mid-append.
            6..=7 => {
                if let Some(mut receiving) = node.take() {
                    kill(&mut receiving);
                }
                *kills.entry("receiver").or_default() += 1;
            }
            // Both.
            _ => {
                kill(&mut publisher);
                if let Some(mut receiving) = node.take() {
                    kill(&mut receiving);
                }
                *kills.entry("both").or_default() += 1;
            }
        }
        if node.is_none() {
            node = Some(start_receiver(&receiver_config, &listen));
        }
        // A publisher still running finishes (it waits for its sinks), or
        // is killed after a while.
        if wait_with_deadline(&mut publisher, Duration::from_secs(10)).is_none() {
            kill(&mut publisher);
        }
        for (tag, sequence) in receipts.try_iter() {
            assert!(acknowledged.insert(tag, sequence).is_none());
        }
    }
    // A last clean run: every sink of both catches up.
    let (mut publisher, _) = start_publisher(&sender_config, Vec::new());
    assert!(publisher.wait().unwrap().success(), "the final drain");
    let mut receiving = node.take().unwrap();
    assert!(signal(receiving.id(), "TERM"));
    assert!(receiving.wait().unwrap().success());
    eprintln!(
        "{cycles} cycles, kills {kills:?}: {sent} events sent, {} acknowledged",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());

    // The sender's log holds every acknowledged event at its sequence.
    let replay = |data: &Path| -> Vec<(u64, String)> {
        let out = omnirelay()
            .args(["log", "replay", "--data-dir"])
            .arg(data)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                (
                    field(l, "sequenceNumber").unwrap().parse().unwrap(),
                    field(l, "requestId").unwrap().to_owned(),
                )
            })
            .collect()
    };
    let log = replay(&sender);
    let by_sequence: BTreeMap<u64, &str> = log.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(by_sequence.len(), log.len(), "one event per sequence");
    let tags: BTreeSet<&str> = log.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(tags.len(), log.len(), "no event logged twice");
    for (tag, sequence) in &acknowledged {
        assert_eq!(
            by_sequence.get(sequence).copied(),
            Some(tag.as_str()),
            "acknowledged event {tag} lost (seed {seed})"
        );
    }
    let n = log.len() as u64;
    each_once("sender log", log.iter().map(|(s, _)| *s).collect(), n);
    // Its idempotent sinks hold each event once.
    each_once("sender export", sequences_under(&sender.join("export")), n);
    each_once(
        "sender sqlite",
        sqlite_sequences(&sender.join("replication.db")),
        n,
    );
    // The receiver holds each of the sender's events once, under its own
    // sequences, in its log and its sinks.
    let received = replay(&receiver);
    let received_tags: BTreeSet<&str> = received.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        received_tags, tags,
        "the receiver has the sender's events (seed {seed})"
    );
    assert_eq!(received.len(), log.len(), "none twice in the receiver");
    let m = received.len() as u64;
    each_once(
        "receiver export",
        sequences_under(&receiver.join("export")),
        m,
    );
    each_once(
        "receiver sqlite",
        sqlite_sequences(&receiver.join("replication.db")),
        m,
    );
}
