//! `omnirelay publish` and `omnirelay log …`, black-box.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use omnirelay_replication_testkit::process::{KillOnDrop, wait_with_deadline};
use std::time::{Duration, Instant};

use crate::{omnirelay, text};

fn event(i: usize) -> String {
    format!(
        r#"{{"sequenceNumber":999,"eventType":"Enqueue","timestamp":"2025-11-27T18:49:03+00:00","peerId":"p-{i}","payload":{{"resourceType":"t","resourceId":"r-{i}","partitionKey":"k","payloadEncoding":"json","body":"e30=","attributes":{{}}}},"metadata":{{"queue.pending":"{i}"}}}}"#
    )
}

pub(crate) fn events(range: std::ops::Range<usize>) -> String {
    range.map(|i| event(i) + "\n").collect()
}

pub(crate) fn dir_arg(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// `omnirelay log replay` of a node's stream, parsed.
pub(crate) fn replay_events(dir: &Path, write_version: &str) -> Vec<serde_json::Value> {
    let out = omnirelay(
        &[
            "log",
            "replay",
            "--data-dir",
            dir_arg(dir),
            "--write-version",
            write_version,
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn export_sequences(dir: &Path) -> Vec<u64> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("export"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        assert_eq!(file.extension().unwrap(), "jsonl");
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push(v["sequenceNumber"].as_u64().unwrap());
        }
    }
    out
}

fn replay_sequences(dir: &Path, extra: &[&str]) -> Vec<u64> {
    let mut args = vec!["log", "replay", "--data-dir", dir_arg(dir)];
    args.extend_from_slice(extra);
    let out = omnirelay(&args, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn publish_prints_durable_sequences_and_exports_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..25).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        printed,
        (1..=25).collect::<Vec<_>>(),
        "the caller's sequence 999 is ignored"
    );
    assert_eq!(export_sequences(dir.path()), (1..=25).collect::<Vec<_>>());
    // A second run continues the numbering.
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..3).as_bytes(),
    );
    assert_eq!(text(&out.stdout), "26\n27\n28\n");
    assert_eq!(
        replay_sequences(dir.path(), &[]),
        (1..=28).collect::<Vec<_>>()
    );
    assert_eq!(
        replay_sequences(dir.path(), &["--from", "20"]),
        (20..=28).collect::<Vec<_>>()
    );
    // A range: through --to, or the log's last.
    assert_eq!(
        replay_sequences(dir.path(), &["--from", "20", "--to", "22"]),
        vec![20, 21, 22]
    );
    assert_eq!(replay_sequences(dir.path(), &["--to", "2"]), vec![1, 2]);
    assert_eq!(
        replay_sequences(dir.path(), &["--from", "27", "--to", "99"]),
        vec![27, 28]
    );
    let args = ["--from", "5", "--to", "4"];
    let backwards = omnirelay(
        &[
            &["log", "replay", "--data-dir", dir_arg(dir.path())],
            &args[..],
        ]
        .concat(),
        b"",
    );
    assert_eq!(backwards.status.code(), Some(1));
    assert!(
        text(&backwards.stderr).contains("--to 4 is before --from 5"),
        "{}",
        text(&backwards.stderr)
    );
    // Past the end: nothing, said on stderr, and not a failure.
    let replay_from = |from: &str| {
        omnirelay(
            &[
                "log",
                "replay",
                "--data-dir",
                dir_arg(dir.path()),
                "--from",
                from,
            ],
            b"",
        )
    };
    let out = replay_from("29");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
    assert!(
        text(&out.stderr).contains("stream default has no events from sequence 29 on"),
        "{}",
        text(&out.stderr)
    );
    let out = replay_from("28");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    // Sequences start at 1: 0 was taken for 1 without a word.
    let out = replay_from("0");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sequences start at 1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn malformed_lines_are_reported_skipped_and_fail_the_run_without_losing_valid_events() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{}\nnot json\n\n{{\"eventType\":99}}\n{}",
        event(0),
        event(1)
    );
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "1\n2\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 2: invalid json"), "{stderr}");
    assert!(stderr.contains("line 4: unknown event type 99"), "{stderr}");
    assert!(
        stderr.contains("published 2 events to stream default (2 invalid lines)"),
        "{stderr}"
    );
    assert_eq!(export_sequences(dir.path()), [1, 2]);
}

/// A line the log refuses (a required sink past its budget, `reject`)
/// ends the run naming the line, once the receipts of what was published
/// are printed, without waiting for stdin to close.
/// The log stops for good when a write fails (here: the file-size limit,
/// `ulimit -f`, with `SIGXFSZ` ignored so the write returns `EFBIG`).
/// Lines already handed to the log when it stopped are not acknowledged
/// either: the error names the first line without a receipt, so that the
/// input can be resumed from it, never a later line (before, it named the
/// line refused after the log stopped, though the lines between it and
/// the last receipt had none).
#[test]
fn a_log_that_stops_mid_input_names_the_first_line_without_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events(0..40_000)).unwrap();
    // 1 MiB of log at most: about ten thousand events.
    let script = format!(
        "{} < {}",
        crate::under_file_limit(dir.path(), 2048, "publish"),
        input.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let receipts: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(!receipts.is_empty(), "{stderr}");
    assert_eq!(
        receipts,
        (1..=receipts.len() as u64).collect::<Vec<_>>(),
        "a receipt per line, in order"
    );
    // One event per line: line N is sequence N.
    let next = receipts.len() + 1;
    let error = stderr
        .lines()
        .find(|l| l.starts_with("omnirelay: "))
        .unwrap_or_else(|| panic!("an error line: {stderr}"));
    assert!(
        error.starts_with(&format!("omnirelay: line {next}:"))
            || error.starts_with(&format!("omnirelay: lines {next}-")),
        "{error}"
    );
    assert!(error.contains("stopped"), "{error}");
    // What is on disk reads back whole, every receipt in it.
    let verify = omnirelay(
        &[
            "log",
            "verify",
            "--data-dir",
            dir_arg(&dir.path().join("data")),
        ],
        b"",
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    let held = replay_events(&dir.path().join("data"), "2").len();
    assert!(held >= receipts.len(), "{held} < {}", receipts.len());
}

#[test]
fn a_refused_line_ends_publish_after_its_receipts_while_stdin_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    // A gRPC sink to a port nobody listens on: always down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{}"
[replication.sinks.down]
type = "grpc"
mode = "required"
max_lag_events = 1
when_full = "reject"
[replication.sinks.down.settings]
url = "http://127.0.0.1:{port}"
sender = "test"
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child: KillOnDrop = Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(["publish", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(events(0..1).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line, "1\n",
        "the first is published: the sink was not behind"
    );
    // One behind now, its budget: the next line is refused.
    stdin.write_all(events(1..2).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(20))
        .expect("publish still runs after the refusal, its stdin open");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("line 2: "), "{stderr}");
    assert!(stderr.contains("events behind"), "{stderr}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing more published");
    drop(stdin);
}

#[test]
fn replay_writes_the_requested_version() {
    let dir = tempfile::tempdir().unwrap();
    omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..2).as_bytes(),
    );
    let out = omnirelay(
        &[
            "log",
            "replay",
            "--data-dir",
            dir_arg(dir.path()),
            "--write-version",
            "2",
        ],
        b"",
    );
    let first = text(&out.stdout).lines().next().unwrap().to_owned();
    assert!(
        first.starts_with(r#"{"schemaVersion":2,"sequenceNumber":1,"#),
        "{first}"
    );
    assert!(first.contains(r#""streamId":"default""#), "{first}");
    let v1 = omnirelay(&["log", "replay", "--data-dir", dir_arg(dir.path())], b"");
    assert!(text(&v1.stdout).starts_with(r#"{"sequenceNumber":1,"eventType":"Enqueue""#));
}

/// A record damaged in a sealed segment: `log verify` names what is lost,
/// a sink added afterwards gets every other event and dead-letters the lost
/// one (before, it stopped there for good and `publish` waited forever),
/// and `log replay` stops at it but reads on from the next sequence.
#[test]
fn a_damaged_record_is_lost_alone_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir_arg(dir.path());
    let config = |sinks: &str| {
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = {data:?}\n[replication.log]\nsegment_max_bytes = 4096\n[replication.sinks.export]\ntype = \"file\"\n{sinks}"
            ),
        )
        .unwrap();
        path
    };
    let one = config("");
    let out = omnirelay(
        &["publish", "--config", dir_arg(&one)],
        events(0..100).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = dir.path().join("log/default/00000000000000000034.seg");
    let mut bytes = std::fs::read(&second).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            std::fs::read_dir(dir.path().join("log/default"))
                .unwrap()
                .collect::<Vec<_>>()
        )
    });
    // The third record of the second segment (33 records of about 120
    // bytes fill a 4 KiB segment): a byte of its payload.
    let mut at = 32;
    for _ in 0..2 {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    let hit = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
    assert_eq!(hit, 36);
    bytes[at + 30] ^= 0xFF;
    std::fs::write(&second, &bytes).unwrap();

    let out = omnirelay(&["log", "verify", "--data-dir", data], b"");
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("(99 records in 4 segments,")
            && report.contains("1 lost to damage")
            && report.contains(&format!(
                "problem: 00000000000000000034.seg: damaged record at byte {at}: checksum mismatch; sequences 36..=36 cannot be read"
            ))
            && !report.contains("gap"),
        "{report}"
    );

    let out = omnirelay(&["log", "inspect", "--data-dir", data], b"");
    assert!(
        text(&out.stdout).contains("  lost           1 record to damage"),
        "{}",
        text(&out.stdout)
    );

    let two = config(&format!(
        "[replication.sinks.late]\ntype = \"file\"\n[replication.sinks.late.settings]\ndir = {:?}\n",
        dir_arg(&dir.path().join("late"))
    ));
    let out = omnirelay(&["publish", "--config", dir_arg(&two)], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("records lost to damage in the log are dead-lettered"),
        "{}",
        text(&out.stderr)
    );
    let late = std::fs::read_to_string(dir.path().join("late/default-00000000000000000001.jsonl"))
        .unwrap();
    let sequences: Vec<u64> = late
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        sequences,
        (1..=100).filter(|s| *s != 36).collect::<Vec<_>>()
    );
    let out = omnirelay(
        &["deadletter", "list", "--data-dir", data, "--sink", "late"],
        b"",
    );
    let listed = text(&out.stdout);
    assert!(
        listed.contains("default  late  36        unreadable  corrupt")
            && listed.lines().count() == 2,
        "{listed}"
    );

    let out = omnirelay(&["log", "replay", "--data-dir", data], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 35);
    assert!(
        text(&out.stderr).contains("checksum mismatch"),
        "{}",
        text(&out.stderr)
    );
    let out = omnirelay(&["log", "replay", "--data-dir", data, "--from", "37"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 64);
    // Rescue: everything readable in one go, the loss named, exit 1.
    let out = omnirelay(&["log", "replay", "--data-dir", data, "--past-damage"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 99);
    assert!(
        text(&out.stderr).contains("sequences 36..=36 lost to damage: going on after them"),
        "{}",
        text(&out.stderr)
    );
    // A range that ends before the damage reads cleanly; one across it
    // reads past it with --past-damage.
    let out = omnirelay(&["log", "replay", "--data-dir", data, "--to", "35"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 35);
    let across = ["--from", "30", "--to", "40", "--past-damage"];
    let out = omnirelay(
        &[&["log", "replay", "--data-dir", data], &across[..]].concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 10);
    // So does `log tail`: it stops at the damage, or reads past it.
    let tail = |extra: &[&str]| {
        let mut args = vec!["log", "tail", "--data-dir", data, "--from", "30"];
        args.extend_from_slice(extra);
        omnirelay(&args, b"")
    };
    let out = tail(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 6, "30..=35");
    let out = tail(&["--past-damage"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 70, "30..=100 but 36");
    assert!(
        text(&out.stderr).contains("sequences 36..=36 lost to damage: going on after them"),
        "{}",
        text(&out.stderr)
    );
    // Following, it reads past the damage and keeps following.
    let mut follower = crate::spawn(&[
        "log",
        "tail",
        "--data-dir",
        data,
        "--from",
        "30",
        "--follow",
        "--past-damage",
    ]);
    let stdout = BufReader::new(follower.stdout.take().unwrap());
    let last = stdout
        .lines()
        .take(70)
        .last()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(last.contains("\"sequenceNumber\":100"), "{last}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "still following after the damage"
    );
    drop(follower);
    let out = omnirelay(
        &[
            "log",
            "tail",
            "--url",
            "http://127.0.0.1:1",
            "--past-damage",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "a local log only");
}

#[test]
fn verify_reports_a_summary_and_fails_on_damage() {
    let dir = tempfile::tempdir().unwrap();
    omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..10).as_bytes(),
    );
    let out = omnirelay(&["log", "verify", "--data-dir", dir_arg(dir.path())], b"");
    assert!(out.status.success());
    let report = text(&out.stdout);
    assert!(
        report.contains("stream default: 1..=10 (10 records in 1 segment,"),
        "{report}"
    );
    assert!(
        report.contains("durability fsync, 0 bytes cut at recovery"),
        "{report}"
    );
    // Flip a byte in the middle of the segment.
    let segment = dir.path().join("log/default/00000000000000000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&segment, &bytes).unwrap();
    let out = omnirelay(&["log", "verify", "--data-dir", dir_arg(dir.path())], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("problem: 00000000000000000001.seg: damaged record"),
        "{}",
        text(&out.stdout)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = omnirelay(&["log", "verify", "--data-dir", dir_arg(empty.path())], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no replication log in"),
        "{}",
        text(&out.stderr)
    );
    // Reading a stream that is not there says what is, rather than an
    // I/O error (tail) or nothing at all.
    let data = dir_arg(dir.path());
    for args in [
        &["log", "tail", "--data-dir", data, "--stream", "nope"][..],
        &[
            "log",
            "tail",
            "--data-dir",
            data,
            "--stream",
            "nope",
            "--from",
            "1",
        ],
        &["log", "replay", "--data-dir", data, "--stream", "nope"],
    ] {
        crate::refused(args, "stream nope has no log in");
        crate::refused(args, "(it has: default)");
    }
    let missing = dir.path().join("nope");
    let missing = dir_arg(&missing);
    crate::refused(
        &["log", "tail", "--data-dir", missing],
        "no replication log in",
    );
    crate::refused(
        &["deadletter", "list", "--data-dir", missing],
        "no data directory",
    );
}

#[test]
fn inspect_and_tail_describe_the_log() {
    let dir = tempfile::tempdir().unwrap();
    omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..12).as_bytes(),
    );
    let out = omnirelay(&["log", "inspect", "--data-dir", dir_arg(dir.path())], b"");
    let report = text(&out.stdout);
    assert!(report.contains("sequences      1..=12"), "{report}");
    assert!(
        report.contains("sink export       checkpoint 12, lag 0 events, 0 dead letters"),
        "{report}"
    );
    let out = omnirelay(
        &["log", "tail", "--data-dir", dir_arg(dir.path()), "-n", "3"],
        b"",
    );
    let tail: Vec<_> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(tail.len(), 3);
    assert!(tail[0].starts_with(r#"{"sequenceNumber":10,"#));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    // From past the end, without --follow: nothing, and said.
    let out = omnirelay(
        &[
            "log",
            "tail",
            "--data-dir",
            dir_arg(dir.path()),
            "--from",
            "13",
        ],
        b"",
    );
    assert!(out.status.success() && text(&out.stdout).is_empty());
    assert!(
        text(&out.stderr).contains("stream default has no events from sequence 13 on"),
        "{}",
        text(&out.stderr)
    );
    assert!(!report.contains("started after"), "{report}");

    // The log lost, its export kept: the new log starts after the export.
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..3).as_bytes(),
    );
    let out = omnirelay(&["log", "inspect", "--data-dir", dir_arg(dir.path())], b"");
    let report = text(&out.stdout);
    assert!(report.contains("sequences      13..=15"), "{report}");
    assert!(report.contains("started after  12"), "{report}");
}

/// Spawns `omnirelay publish` with piped stdin and stdout.
fn spawn_publish(dir: &Path) -> KillOnDrop {
    Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(["publish", "--data-dir", dir_arg(dir)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

#[test]
fn heavy_log_commands_read_beside_a_running_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_publish(dir.path());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(events(0..20).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Wait until the writer acknowledged all 20 (it keeps running: stdin
    // stays open).
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for want in 1..=20u64 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim().parse::<u64>().unwrap(), want);
    }
    assert_eq!(
        replay_sequences(dir.path(), &[]),
        (1..=20).collect::<Vec<_>>()
    );
    let out = omnirelay(&["log", "verify", "--data-dir", dir_arg(dir.path())], b"");
    assert!(out.status.success(), "{}", text(&out.stdout));
    // tail --follow sees events written after it started.
    let mut follower = KillOnDrop::from(
        Command::new(env!("CARGO_BIN_EXE_omnirelay"))
            .args([
                "log",
                "tail",
                "--follow",
                "-n",
                "1",
                "--data-dir",
                dir_arg(dir.path()),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut followed = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    followed.read_line(&mut line).unwrap();
    assert!(line.starts_with(r#"{"sequenceNumber":20,"#), "{line}");
    stdin.write_all(events(20..21).as_bytes()).unwrap();
    stdin.flush().unwrap();
    line.clear();
    followed.read_line(&mut line).unwrap();
    assert!(line.starts_with(r#"{"sequenceNumber":21,"#), "{line}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Reads acknowledged sequences from a publisher's stdout until it dies:
/// only whole lines count.
fn collect_acks(mut stdout: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete.lines().map(|l| l.parse().unwrap()).collect()
    })
}

#[test]
fn heavy_crash_loop_loses_no_acknowledged_event() {
    let cycles: u64 = std::env::var("ORTEST_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = fastrand::u64(..);
    eprintln!("crash loop: {cycles} cycles, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    let mut next_event = 0;
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut child = spawn_publish(dir.path());
        let mut stdin = child.stdin.take().unwrap();
        let acks = collect_acks(child.stdout.take().unwrap());
        let batch = rng.usize(50..400);
        let input = events(next_event..next_event + batch);
        next_event += batch;
        let writer = std::thread::spawn(move || {
            // The publisher may die mid-write: that is the point.
            let _ = stdin.write_all(input.as_bytes());
            // Keep stdin open so the run ends by the kill, not by EOF.
            std::thread::sleep(Duration::from_secs(5));
            drop(stdin);
        });
        std::thread::sleep(Duration::from_millis(rng.u64(5..80)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: publisher finished before the kill"
        );
        acked.extend(acks.join().unwrap());
        drop(writer);
    }
    // One last, clean run: recovery needs no manual step.
    let out = omnirelay(
        &["publish", "--data-dir", dir_arg(dir.path())],
        events(0..5).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    acked.extend(text(&out.stdout).lines().map(|l| l.parse::<u64>().unwrap()));

    let verify = omnirelay(&["log", "verify", "--data-dir", dir_arg(dir.path())], b"");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    let log = replay_sequences(dir.path(), &[]);
    let last = *log.last().unwrap();
    assert_eq!(log, (1..=last).collect::<Vec<_>>(), "the log is gap-free");
    let mut export = export_sequences(dir.path());
    assert_eq!(
        export, log,
        "the export holds every logged event exactly once, in order"
    );
    let table: Vec<u64> = crate::sqlite::sqlite_rows(dir.path())
        .iter()
        .map(|r| r.sequence)
        .collect();
    assert_eq!(
        table, log,
        "the SQLite table holds every logged event exactly once"
    );
    export.sort_unstable();
    for seq in &acked {
        assert!(
            export.binary_search(seq).is_ok(),
            "acknowledged sequence {seq} was lost (seed {seed})"
        );
    }
    let mut unique = acked.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        acked.len(),
        "a sequence was acknowledged twice (seed {seed})"
    );
    assert!(
        acked.len() as u64 > cycles,
        "the loop acknowledged too little to prove anything: {}",
        acked.len()
    );
    eprintln!(
        "crash loop: {} acknowledged, {} in the log, {:?}",
        acked.len(),
        log.len(),
        started.elapsed()
    );
}
