//! `omnirelay deadletter list|redrive`, black-box: a sink that cannot
//! write dead-letters what it was given; once it can, the letters are
//! redriven from the log, and never while a node holds it.

use std::io::BufRead as _;

use omnirelay_replication_testkit::process::{start_nats, start_nats_with};
use serde_json::Value;

use crate::log::events;
use crate::{broken_sink_config, omnirelay, spawn_listening, text};

fn redrive(config: &str, sink: &str) -> std::process::Output {
    omnirelay(
        &["deadletter", "redrive", "--config", config, "--sink", sink],
        b"",
    )
}

#[test]
fn dead_letters_are_listed_and_redriven_once_the_sink_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = broken_sink_config(dir.path(), &format!("data_dir = \"{}\"", data.display()));
    let config = config.to_str().unwrap();
    let data = data.to_str().unwrap();
    let out = omnirelay(&["publish", "--config", config], events(0..3).as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A write torn by a crash, at the end of the letters: skipped with a
    // warning, not an error.
    let letters = std::path::Path::new(data).join("deadletter/default/broken.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&letters)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"stream\":\"def").unwrap();

    let out = omnirelay(&["deadletter", "list", "--data-dir", data], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("broken.jsonl line 4 is not a dead letter"),
        "{}",
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(table.starts_with("STREAM"), "{table}");
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.starts_with("default") && r.contains("broken") && r.contains("unavailable")),
        "{table}"
    );
    let out = omnirelay(
        &[
            "deadletter",
            "list",
            "--data-dir",
            data,
            "--sink",
            "broken",
            "--json",
        ],
        b"",
    );
    let letters: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sequences: Vec<u64> = letters
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    let out = omnirelay(
        &["deadletter", "list", "--data-dir", data, "--sink", "export"],
        b"",
    );
    assert!(
        text(&out.stdout).starts_with("no dead letters"),
        "the healthy sink has none"
    );

    // Not while a node holds the log.
    let (mut node, address, mut stderr) = spawn_listening(&[
        "serve",
        "--role",
        "receiver",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut line = String::new();
    while !line.contains("ready at") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the node stopped");
    }
    let out = redrive(config, "broken");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stop the node"),
        "{}",
        text(&out.stderr)
    );
    // A promotion sent to a node that is not a standby says so.
    let url = format!("http://{address}");
    crate::refused(
        &["promote", "--url", &url, "--force"],
        &format!("is {url} a standby?"),
    );
    node.kill().unwrap();
    node.wait().unwrap();
    let out = redrive(config, "nope");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("broken"),
        "names the sinks there are"
    );

    // The sink's directory comes back: the events go where they belong.
    std::fs::create_dir_all(dir.path().join("gone/export")).unwrap();
    let out = redrive(config, "broken");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("redrove 3 events to sink broken"),
        "{}",
        text(&out.stdout)
    );
    let written: Vec<Value> = std::fs::read_dir(dir.path().join("gone/export"))
        .unwrap()
        .flat_map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let written: Vec<u64> = written
        .iter()
        .map(|e| e["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(written, [1, 2, 3]);
    let out = omnirelay(&["deadletter", "list", "--data-dir", data], b"");
    assert!(
        text(&out.stdout).starts_with("no dead letters"),
        "{}",
        text(&out.stdout)
    );
    let out = redrive(config, "broken");
    assert!(
        text(&out.stdout).starts_with("no dead letters of sink broken"),
        "{}",
        text(&out.stdout)
    );
}

/// A sink that keeps a high-water mark (NATS) and went on past a dead
/// letter cannot take it: redriving it used to report it redriven and
/// archive the letter while the sink ignored the event as a re-send.
#[test]
fn letters_behind_a_bus_sink_that_went_on_stay_and_the_ones_ahead_are_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("jetstream");
    let limits = dir.path().join("nats.conf");
    std::fs::write(&limits, "max_payload: 1024\n").unwrap();
    let (mut nats, port) = start_nats_with(&store, None, &["-c", limits.to_str().unwrap()]);
    let data = dir.path().join("data");
    let config = dir.path().join("omnirelay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[replication.sinks.bus]\ntype = \"nats\"\n\
             [replication.sinks.bus.settings]\nservers = [\"nats://127.0.0.1:{port}\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // The third and fifth events are over the server's payload limit.
    let large = format!("\"resourceType\":\"{}\"", "t".repeat(2000));
    let input: String = events(0..5)
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            2 | 4 => line.replace("\"resourceType\":\"t\"", &large) + "\n",
            _ => format!("{line}\n"),
        })
        .collect();
    let out = omnirelay(&["publish", "--config", config], input.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = || {
        let out = omnirelay(
            &[
                "deadletter",
                "list",
                "--data-dir",
                data.to_str().unwrap(),
                "--json",
            ],
            b"",
        );
        text(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["sequence"]
                    .as_u64()
                    .unwrap()
            })
            .collect::<Vec<u64>>()
    };
    assert_eq!(listed(), [3, 5]);

    // The limit is raised. The bus holds 1, 2 and 4: 3 lies behind the
    // sink's mark, 5 ahead of it.
    nats.kill().unwrap();
    nats.wait().unwrap();
    let (_nats, _) = start_nats(&store, Some(port));
    let out = redrive(config, "bus");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("redrove 1 event to sink bus in stream default (sequences 5–5)"),
        "{report}"
    );
    assert!(
        report.contains(
            "1 letter stays: sink bus has gone on to sequence 4 and cannot take sequences [3] behind it"
        ) && report.contains("log replay --data-dir"),
        "{report}"
    );
    assert_eq!(listed(), [3], "the letter the sink could not take stays");
    // Again: nothing to redrive, and one letter that stays.
    let out = redrive(config, "bus");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).starts_with("1 letter stays: sink bus has gone on to sequence 5"),
        "{}",
        text(&out.stdout)
    );
}
