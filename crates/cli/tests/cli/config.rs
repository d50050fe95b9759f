//! `omnirelay config default|check`, flags as configuration, `--listen`
//! metrics and JSON logs, black-box.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use crate::{broken_sink_config, omnirelay, spawn_listening, text};

#[test]
fn the_default_configuration_round_trips_through_check() {
    let default = omnirelay(&["config", "default"], b"");
    assert!(default.status.success());
    let toml = text(&default.stdout);
    assert!(toml.contains("[replication.sinks.export]"), "{toml}");
    assert!(
        toml.lines().filter(|l| l.starts_with('#')).count() > 20,
        "commented"
    );
    let piped = omnirelay(&["config", "check", "-"], &default.stdout);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(
        text(&piped.stdout).starts_with(
            "standard input: ok; data_dir omnirelay-data, 1 stream declared, sinks: export (file), sqlite (sqlite)"
        ),
        "{}",
        text(&piped.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnirelay.toml");
    std::fs::write(&file, &default.stdout).unwrap();
    let checked = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(checked.status.success());
}

/// The ```` ```toml ```` blocks of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```toml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn every_configuration_example_in_the_docs_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pages: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.push(root.join("README.md"));
    let mut checked = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for (index, block) in toml_blocks(&text).into_iter().enumerate() {
            let checks = omnirelay(&["config", "check", "-"], block.as_bytes());
            let said = text_of(&checks);
            // The one example of a sink type a plugin crate adds, which
            // this binary does not link.
            let plugin = said.contains("unknown sink type \"audit\"");
            assert!(
                checks.status.success() || plugin,
                "{} example {index} does not check: {said}\n{block}",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} examples found");
}

fn text_of(output: &std::process::Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

#[test]
fn the_adapter_sink_types_are_linked_into_the_binary() {
    let config = r#"
[replication.sinks.db]
type = "sqlite"
[replication.sinks.archive]
type = "object_store"
[replication.sinks.archive.settings]
backend = "s3"
bucket = "replication"
endpoint = "http://127.0.0.1:9000"
[replication.sinks.bus]
type = "nats"
[replication.sinks.replica]
type = "grpc"
[replication.sinks.replica.settings]
url = "http://127.0.0.1:7421"
"#;
    let out = omnirelay(&["config", "check", "-"], config.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("sinks: archive (object_store), bus (nats), db (sqlite), replica (grpc)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_names_the_key_path_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[replication.sinks.export]\ntype = \"file\"\n[replication.sinks.export.batch]\nmax_events = 0\n[replication.sinks.other]\ntype = \"nope\"\n").unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("replication.sinks.export.batch.max_events: must be at least 1 (is 0)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replication.sinks.other.type: unknown sink type \"nope\""),
        "{stderr}"
    );
    let missing = omnirelay(&["config", "check", "/nonexistent.toml"], b"");
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent.toml: no such file"));
}

/// The problems of every step in one run: a wrong value (parsing), an
/// unknown sink type (validation), a service's table and the log filter
/// (checked last) — before, `check` stopped at the first step that
/// failed, and passed a log filter `serve` then refused. `serve` names
/// the same problems.
#[test]
fn check_reports_the_problems_of_every_step_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[telemetry]\nlog_level = \"info,[[x\"\n[replication.log]\ndurability = \"sometimes\"\n\
         [replication.sinks.other]\ntype = \"nope\"\n[services.janitor]\nbroom = true\n",
    )
    .unwrap();
    let expected = [
        "replication.log.durability: unknown value `sometimes`",
        "replication.sinks.other.type: unknown sink type \"nope\"",
        "services.janitor: no such service",
        "telemetry.log_level: not a log filter",
    ];
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for problem in expected {
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
    let data = dir.path().join("data");
    let serve = omnirelay(
        &[
            "serve",
            "--role",
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(serve.status.code(), Some(1));
    let stderr = text(&serve.stderr);
    assert!(
        stderr.starts_with("omnirelay: invalid configuration:"),
        "{stderr}"
    );
    for problem in expected {
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }

    // The filter alone, which `check` used to pass.
    std::fs::write(&file, "[telemetry]\nlog_level = \"info,[[x\"\n").unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("telemetry.log_level: not a log filter"));
}

#[test]
fn flags_are_configuration_keys_and_bad_values_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = omnirelay(
        &[
            "publish",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--log-format",
            "yaml",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("command-line flag --log-format: telemetry.log_format"),
        "{stderr}"
    );
    let out = omnirelay(
        &[
            "publish",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "nowhere",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("server.listen: expected HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
}

fn event(i: usize) -> String {
    format!(
        r#"{{"eventType":"Enqueue","peerId":"p{}","payload":{{"resourceType":"t","resourceId":"r{i}","partitionKey":"k","payloadEncoding":"json","body":"e30="}}}}"#,
        i % 2
    ) + "\n"
}

/// `GET path` over HTTP/1.0; the body.
pub(crate) fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

#[test]
fn publish_serves_metrics_on_listen_until_its_input_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address, _stderr) = spawn_listening(&[
        "publish",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    let input: String = (0..25).map(event).collect();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..25 {
        let mut ack = String::new();
        stdout.read_line(&mut ack).unwrap();
    }
    // The export sink applies asynchronously: poll until it has all 25.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(&address, "/metrics");
        if metrics.contains(
            r#"omnirelay_replication_sink_sent_events_total{stream="default",sink="export"} 25"#,
        ) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for want in [
        r#"omnirelay_replication_published_events_total{stream="default"} 25"#,
        r#"omnirelay_replication_sink_sent_events_total{stream="default",sink="export"} 25"#,
        r#"omnirelay_resourcelease_replication_events_total{lease_event_type="Enqueue",rpc_peer="p0"} 13"#,
        r#"omnirelay_resourcelease_replication_events_total{lease_event_type="Enqueue",rpc_peer="p1"} 12"#,
        "omnirelay_resourcelease_replication_lag_ms_bucket{",
        "omnirelay_replication_publish_duration_seconds_bucket{",
        "# TYPE omnirelay_replication_sink_lag_events gauge",
    ] {
        assert!(metrics.contains(want), "missing {want}\n{metrics}");
    }
    assert_eq!(http_get(&address, "/healthz"), "ok\n");
    assert_eq!(
        http_get(&address, "/readyz"),
        "ok\n",
        "ready once replication runs"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(
        TcpStream::connect(&address).is_err(),
        "the listener stops with the input"
    );
}

#[test]
fn json_logs_are_json_and_a_sink_failure_names_stream_sink_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let config = broken_sink_config(
        dir.path(),
        &format!(
            "data_dir = \"{}\"\n[replication.log]\ndurability = \"none\"",
            dir.path().join("data").display()
        ),
    );
    let input: String = (0..3).map(event).collect();
    let out = omnirelay(
        &[
            "publish",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failure = lines
        .iter()
        .find(|l| l["fields"]["message"] == "sink failing; retrying")
        .unwrap_or_else(|| panic!("no failure line in {stderr}"));
    assert_eq!(failure["fields"]["stream"], "default");
    assert_eq!(failure["fields"]["sink"], "broken");
    assert_eq!(failure["fields"]["kind"], "unavailable");
    assert_eq!(failure["fields"]["from_sequence"], 1, "{failure}");
    let to = failure["fields"]["to_sequence"].as_u64().unwrap();
    assert!((1..=3).contains(&to), "{failure}");
    assert!(
        failure["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{failure}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "event dead-lettered"),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("published 3 events"))),
        "{stderr}"
    );
    // One line per state change, not per attempt or batch: the sink
    // never recovers, so it fails once and is never healthy again.
    let count = |message: &str| {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .count()
    };
    assert_eq!(count("sink failing; retrying"), 1, "{stderr}");
    assert_eq!(count("sink healthy"), 0, "{stderr}");
    assert_eq!(count("event dead-lettered"), 3, "{stderr}");
}

#[test]
fn a_log_level_that_is_not_a_filter_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(["publish", "--data-dir", dir.path().to_str().unwrap()])
        .env("OMNIRELAY_TELEMETRY__LOG_LEVEL", "info,foo=verbose")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("environment variable OMNIRELAY_TELEMETRY__LOG_LEVEL: telemetry.log_level: not a log filter"),
        "{stderr}"
    );
}

#[test]
fn service_tables_are_checked_by_their_service() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.toml");
    std::fs::write(
        &file,
        "[services.dispatcher]\nnamespace = \"a b\"\n[services.dispatcher.queue]\ncapacity = 0\n[services.janitor]\nbroom = true\n",
    )
    .unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("services.dispatcher.namespace: \"a b\" is not a namespace"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "services.janitor: no such service (known: controlplane, dispatcher, mesh, standby)"
        ),
        "{stderr}"
    );
    std::fs::write(&file, "[services.standby]\nprimary_quiet_ms = 3600001\n").unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains("services.standby.primary_quiet_ms: at most 3600000"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &file,
        "[services.mesh]
seed_interval_ms = 0
",
    )
    .unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains("services.mesh.seed_interval_ms: must be at least 1"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &file,
        "[services.dispatcher.backpressure]\nhigh_watermark = 4\nlow_watermark = 4\n",
    )
    .unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains(
            "services.dispatcher.backpressure.low_watermark: must be below high_watermark (4)"
        ),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &file,
        "[services.dispatcher]\npeer_grace_ms = 60000\npeer_forget_ms = 1000\n",
    )
    .unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains(
            "services.dispatcher.peer_forget_ms: must be 0 (never) or at least peer_grace_ms (60000)"
        ),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&file, "[services.standby]\nfollow = \" \"\nprimary = 1\n").unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains("services.standby") && text(&out.stderr).contains("primary"),
        "{}",
        text(&out.stderr)
    );
    for (table, says) in [
        (
            "follow = \" \"",
            "services.standby.follow: must not be empty",
        ),
        (
            "ca_file = \"\"",
            "services.standby.ca_file: must not be empty",
        ),
        ("token = \"\"", "services.standby.token: must not be empty"),
        (
            "follow = \"nats://bus:4222\"\ntoken = \"t\"",
            "services.standby.token: is for a node primary",
        ),
    ] {
        std::fs::write(&file, format!("[services.standby]\n{table}\n")).unwrap();
        let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    for (table, says) in [
        (
            "hosts = [\"ftp://a\"]",
            "services.controlplane.hosts[0]: \"ftp://a\" is not an http:// or https:// URL",
        ),
        (
            "token = \"\"",
            "services.controlplane.token: must not be empty",
        ),
        (
            "ca_file = \"\"",
            "services.controlplane.ca_file: must not be empty",
        ),
    ] {
        std::fs::write(&file, format!("[services.controlplane]\n{table}\n")).unwrap();
        let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    std::fs::write(&file, "[services.dispatcher.queue]\nlease_seconds = 3\n").unwrap();
    let out = omnirelay(&["config", "check", file.to_str().unwrap()], b"");
    assert!(
        text(&out.stderr).contains("services.dispatcher.queue"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("lease_seconds"),
        "{}",
        text(&out.stderr)
    );
    // The flag is the key: a bad --namespace is named as the flag.
    let out = omnirelay(
        &[
            "serve",
            "--role",
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--namespace",
            "x::y",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("command-line flag --namespace: services.dispatcher.namespace"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_node_address_without_its_scheme_is_refused_naming_the_url_meant() {
    for args in [
        &["status", "--url", "127.0.0.1:9"][..],
        &["promote", "--url", "127.0.0.1:9"],
        &["queue", "dead-letters", "--url", "127.0.0.1:9"],
        &["log", "tail", "--url", "127.0.0.1:9"],
    ] {
        let out = omnirelay(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("not an http:// or https:// URL"),
            "{args:?}: {err}"
        );
        assert!(err.contains("http://127.0.0.1:9"), "{args:?}: {err}");
    }
}

#[test]
fn a_standby_told_to_follow_a_bare_address_stops_at_start_naming_the_url_meant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut node = crate::spawn(&[
        "serve",
        "--role",
        "standby",
        "--follow",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ]);
    // Before, it retried forever: a minute is plenty to stop.
    let status = omnirelay_replication_testkit::process::wait_with_deadline(
        &mut node,
        std::time::Duration::from_secs(60),
    )
    .expect("the standby stops at start");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("--follow"), "{err}");
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
}
