//! `omnirelay serve --role receiver` and `omnirelay log tail --url`,
//! black-box: a receiver node, publishers replicating to it over gRPC, and
//! followers subscribing to it, each its own process, on one port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use omnirelay_replication_testkit::process::KillOnDrop;
use std::sync::mpsc;
use std::time::Duration;

use omnirelay_replication_testkit::process::signal;
use serde_json::Value;

use crate::log::{dir_arg, events};
use crate::{http_get, omnirelay, refused, spawn, spawn_listening, text};

/// A publisher's configuration: its log in `dir`, one `grpc` sink to
/// `url` named `sender`, and `extra` settings of that sink.
fn sender_config(dir: &Path, url: &str, sender: &str, extra: &str) -> PathBuf {
    let config = dir.join("sender.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{}"
[replication.sinks.peer]
type = "grpc"
[replication.sinks.peer.retry]
initial_backoff_ms = 10
max_backoff_ms = 100
[replication.sinks.peer.settings]
url = "{url}"
sender = "{sender}"
{extra}
"#,
            dir.display()
        ),
    )
    .unwrap();
    config
}

/// Lines of a child's stdout or stderr, read on a thread.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `count` events a follower printed: (sequence, origin sequence).
fn take(lines: &mpsc::Receiver<String>, count: usize) -> Vec<(u64, u64)> {
    (0..count)
        .map(|_| {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the follower printed nothing");
            let event: Value = serde_json::from_str(&line).unwrap();
            let origin = event["metadata"]["replication.origin.sequence"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            (event["sequenceNumber"].as_u64().unwrap(), origin)
        })
        .collect()
}

fn stop(mut child: KillOnDrop) -> std::process::ExitStatus {
    assert!(signal(child.id(), "TERM"));
    child.wait().unwrap()
}

/// `omnirelay serve --role receiver` on embedded defaults with its data in
/// `dir`, once it listens: the process, its address and its stderr.
pub(crate) fn spawn_receiver(
    dir: &Path,
) -> (KillOnDrop, String, BufReader<std::process::ChildStderr>) {
    spawn_listening(&[
        "serve",
        "--role",
        "receiver",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(dir),
    ])
}

#[test]
fn heavy_a_receiver_takes_events_from_publishers_and_serves_subscribe_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let receiver_dir = dir.path().join("receiver");
    let (receiver, address, mut receiver_err) = spawn_receiver(&receiver_dir);
    let url = format!("http://{address}");
    let mut ready = String::new();
    receiver_err.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("receiver ready"), "{ready}");
    // HTTP on the port of the gRPC services.
    assert_eq!(http_get(&address, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&address, "/readyz").unwrap().0, 200);
    assert!(
        http_get(&address, "/metrics")
            .unwrap()
            .1
            .contains("omnirelay_replication_published_events_total")
    );
    assert_eq!(http_get(&address, "/no-such-page").unwrap().0, 404);

    // Nothing there yet: a tail without --follow says nothing and ends.
    let out = omnirelay(&["log", "tail", "--url", &url], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());

    // A follower from sequence 3, started before anything exists there.
    let mut follower = spawn(&["log", "tail", "--follow", "--url", &url, "--from", "3"]);
    let followed = lines_of(follower.stdout.take().unwrap());

    // A publisher replicates five events to the receiver...
    let sender_dir = dir.path().join("sender");
    std::fs::create_dir_all(&sender_dir).unwrap();
    let config = sender_config(&sender_dir, &url, "node-a", "");
    let config = config.to_str().unwrap();
    let out = omnirelay(&["publish", "--config", config], events(0..5).as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // ... and the follower, in another process, gets 3.. in order.
    assert_eq!(take(&followed, 3), vec![(3, 3), (4, 4), (5, 5)]);
    // Then live events, as they arrive.
    let out = omnirelay(&["publish", "--config", config], events(5..8).as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(take(&followed, 3), vec![(6, 6), (7, 7), (8, 8)]);
    // The receiver's metrics say so.
    let metrics = http_get(&address, "/metrics").unwrap().1;
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(
        sample(
            "omnirelay_replication_receiver_events_total",
            &["sender=\"node-a\"", "outcome=\"appended\""]
        ),
        Some(8.0),
        "{metrics}"
    );
    assert_eq!(
        sample("omnirelay_replication_subscribers", &["stream=\"default\""]),
        Some(1.0),
        "{metrics}"
    );

    // Without --follow: the newest events, then the command ends.
    let out = omnirelay(&["log", "tail", "--url", &url, "-n", "2"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sequences: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sequenceNumber"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, vec![7, 8]);

    // The follower outlives the receiver: stopped and started again on
    // its address, it follows on from the next sequence, nothing twice.
    let said = lines_of(follower.stderr.take().unwrap());
    assert!(stop(receiver).success());
    let line = said.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        line.contains("ended the subscription")
            && line.contains("following on from sequence 9 once it is back"),
        "{line}"
    );
    assert_eq!(follower.try_wait().unwrap(), None, "the follower stopped");
    let restarted = |dir: &Path| {
        spawn_listening(&[
            "serve",
            "--role",
            "receiver",
            "--listen",
            &address,
            "--data-dir",
            dir_arg(dir),
        ])
    };
    let (receiver, _, _receiver_err) = restarted(&receiver_dir);
    let back = said
        .iter()
        .find(|l| !l.starts_with("still waiting"))
        .unwrap();
    assert!(
        back.ends_with("is back: following on from sequence 9"),
        "{back}"
    );
    let out = omnirelay(&["publish", "--config", config], events(8..10).as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(take(&followed, 2), vec![(9, 9), (10, 10)]);
    // What the receiver logged is what it was sent, once.
    assert!(stop(receiver).success());
    let out = omnirelay(
        &["log", "replay", "--data-dir", dir_arg(&receiver_dir)],
        b"",
    );
    assert_eq!(text(&out.stdout).lines().count(), 10);

    // Another node (another log) at that address: the follower stops
    // rather than print another log's events as the next ones.
    let (_other, _, _other_err) = restarted(&dir.path().join("other"));
    let ended = follower.wait().unwrap();
    assert_eq!(ended.code(), Some(1), "{ended}");
    let last = said.iter().last().unwrap();
    assert!(
        last.contains("is back with another log: its log is node-") && last.ends_with("; stopping"),
        "{last}"
    );
    assert!(followed.try_recv().is_err(), "printed after the restarts");
}

#[test]
fn heavy_tls_and_a_token_guard_the_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let receiver_dir = dir.path().join("receiver");
    let (receiver_config, cert) = crate::tls_node_config(
        dir.path(),
        "receiver",
        &format!(
            "data_dir = \"{}\"\n[server]\ntoken = \"s3cret\"\n",
            receiver_dir.display()
        ),
    );
    let (receiver, address, _err) = spawn_listening(&[
        "serve",
        "--role",
        "receiver",
        "--listen",
        "127.0.0.1:0",
        "--config",
        receiver_config.to_str().unwrap(),
    ]);
    let port = address.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}");
    let ca = cert.to_str().unwrap();

    // A publisher with the token and the authority's certificate.
    let sender_dir = dir.path().join("sender");
    std::fs::create_dir_all(&sender_dir).unwrap();
    let config = sender_config(
        &sender_dir,
        &url,
        "node-tls",
        &format!("token = \"s3cret\"\nca_file = \"{ca}\"\nprotocol = \"stream\""),
    );
    let out = omnirelay(
        &["publish", "--config", config.to_str().unwrap()],
        events(0..4).as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tail = |extra: &[&str]| {
        let mut args = vec!["log", "tail", "--url", &url, "--ca-file", ca, "-n", "10"];
        args.extend_from_slice(extra);
        omnirelay(&args, b"")
    };
    let out = tail(&["--token", "s3cret"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 4);
    for refused in [tail(&[]), tail(&["--token", "guess"])] {
        assert!(!refused.status.success());
        assert!(
            text(&refused.stderr).contains("Unauthenticated"),
            "{}",
            text(&refused.stderr)
        );
    }
    // Plain HTTP to the TLS port gets nowhere.
    assert!(http_get(&address, "/healthz").is_none_or(|(status, _)| status != 200));
    assert!(stop(receiver).success());
}

#[test]
fn serve_refuses_what_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &[
            "serve",
            "--role",
            "receiver",
            "--data-dir",
            dir_arg(dir.path()),
        ],
        "--listen",
    );
    refused(
        &[
            "serve",
            "--role",
            "controlplane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg(dir.path()),
            "--hosts",
            "http://node-a:7400,node-b:7400",
        ],
        "--hosts: \"node-b:7400\" is not an http:// or https:// URL",
    );
    // A control plane without hosts is refused before it listens (it
    // used to print `listening on …` first, for whoever waits for that
    // line).
    let stderr = refused(
        &[
            "serve",
            "--role",
            "controlplane",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg(dir.path()),
        ],
        "the control plane needs hosts to watch: --hosts URL,URL,…",
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    refused(
        &["serve", "--role", "janitor", "--listen", "127.0.0.1:0"],
        "possible values: dispatcher, standby, controlplane, receiver",
    );
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    refused(
        &[
            "serve",
            "--role",
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg(dir.path()),
            "--config",
            config.to_str().unwrap(),
        ],
        "server.tls: cannot read /nonexistent/cert.pem",
    );
    // A data directory that is a file is named as one (it was "cannot
    // create the data directory …: File exists").
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for role in ["dispatcher", "receiver"] {
        refused(
            &[
                "serve",
                "--role",
                role,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                file.to_str().unwrap(),
            ],
            &format!(
                "the data directory {} is a file, not a directory",
                file.display()
            ),
        );
    }
    refused(&["log", "tail", "--follow"], "--data-dir");
    refused(
        &["log", "tail", "--url", "http://127.0.0.1:1"],
        "cannot subscribe",
    );
}

/// A second node on a data directory in use fails before it listens,
/// naming the directory; once the first is gone (killed: its lock goes
/// with it), a node starts there again.
#[test]
fn heavy_a_second_node_on_a_data_directory_in_use_fails_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--role",
        "receiver",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg(dir.path()),
    ];
    let (first, _, _first_err) = spawn_listening(&args);
    let stderr = refused(&args, "is in use by another omnirelay node");
    assert!(stderr.contains(dir_arg(dir.path())), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    drop(first);
    let (_again, _, _again_err) = spawn_listening(&args);
}

/// A receiver (data in `DIR/receiver`), and two nodes `DIR/a` and `DIR/b`
/// that each publish 8 events to it through a `grpc` sink `peer` with
/// `settings` added: 5 from a, 5 from b, 3 from a, 3 from b.
struct TwoSenders {
    dir: tempfile::TempDir,
    receiver: KillOnDrop,
    address: String,
}

impl TwoSenders {
    fn run(settings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (receiver, address, _receiver_err) = spawn_receiver(&dir.path().join("receiver"));
        let mut configs = Vec::new();
        for node in ["a", "b"] {
            let node_dir = dir.path().join(node);
            std::fs::create_dir_all(&node_dir).unwrap();
            let config = node_dir.join("node.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{}\"\n[replication.sinks.peer]\ntype = \"grpc\"\n[replication.sinks.peer.settings]\nurl = \"http://{address}\"\n{settings}",
                    node_dir.display()
                ),
            )
            .unwrap();
            configs.push(config);
        }
        for run in [0..5, 5..8] {
            for config in &configs {
                let out = omnirelay(
                    &["publish", "--config", config.to_str().unwrap()],
                    events(run.clone()).as_bytes(),
                );
                assert!(out.status.success(), "{}", text(&out.stderr));
            }
        }
        Self {
            dir,
            receiver,
            address,
        }
    }

    /// The node's own name (`DIR/<node>/node-name`).
    fn node_name(&self, node: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(node)
                .join(omnirelay_replication::node::NODE_NAME_FILE),
        )
        .unwrap()
        .trim()
        .to_owned()
    }

    /// Events the receiver counted from `sender` with `outcome`, by its
    /// metrics.
    fn counted(&self, sender: &str, outcome: &str) -> Option<f64> {
        let metrics = http_get(&self.address, "/metrics").unwrap().1;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("omnirelay_replication_receiver_events_total{")
                    && l.contains(&format!("sender=\"{sender}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    }

    /// Stops the receiver; the events in its log.
    fn logged(self) -> usize {
        assert!(stop(self.receiver).success());
        let out = omnirelay(
            &[
                "log",
                "replay",
                "--data-dir",
                dir_arg(&self.dir.path().join("receiver")),
            ],
            b"",
        );
        text(&out.stdout).lines().count()
    }
}

/// Two nodes sending to one receiver with no `sender` set: each has its
/// own name (made once under its data directory and kept), so the
/// receiver keeps both nodes' events instead of dropping the second one's
/// as duplicates of the first one's sequences.
#[test]
fn heavy_nodes_without_a_sender_name_each_get_their_own() {
    let sent = TwoSenders::run("");
    let names = [sent.node_name("a"), sent.node_name("b")];
    assert_ne!(names[0], names[1]);
    for name in &names {
        assert_eq!(sent.counted(name, "appended"), Some(8.0), "{name}");
    }
    assert_eq!(sent.logged(), 16);
}

/// Two nodes configured with one `sender` name: the receiver keeps one
/// mark for both. b's first events (sequence 1 after a's 5) read as a's
/// numbering restarting, so a's next three (6..=8) were taken, and b's
/// next three, at or below that mark, dropped as duplicates in silence.
/// Now each node sends its own name beside the sender name: b, restarting
/// the numbering, takes the name over, and a is refused from then on, so
/// a's last three go to its dead letters (where `omnirelay deadletter`
/// finds them) and b's are kept.
#[test]
fn heavy_two_nodes_with_one_sender_name_are_told_apart() {
    let sent = TwoSenders::run("sender = \"edge\"\n");
    assert_eq!(sent.counted("edge", "appended"), Some(13.0));
    // The batch, then each of its events alone (the sink looks for the
    // event at fault).
    assert!(
        sent.counted("edge", "refused").is_some_and(|n| n >= 3.0),
        "{:?}",
        sent.counted("edge", "refused")
    );
    let dead_letters = |node: &str| {
        std::fs::read_to_string(
            sent.dir
                .path()
                .join(node)
                .join("deadletter/default/peer.jsonl"),
        )
        .unwrap_or_default()
    };
    let dead = dead_letters("a");
    let sequences: Vec<u64> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(sequences, [6, 7, 8], "{dead}");
    assert!(dead.contains("in use by another writer"), "{dead}");
    assert_eq!(dead_letters("b"), "");
    assert_eq!(sent.logged(), 13);
}
