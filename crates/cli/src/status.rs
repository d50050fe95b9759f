//! `omnirelay status`: the status document of a node (or the control
//! plane) as a table.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::table;

pub(crate) async fn run(node: &crate::RemoteNode, json: bool) -> anyhow::Result<ExitCode> {
    let (target, answer) = node
        .call("GET", "/status", None, Duration::from_secs(10))
        .await?;
    if answer.status != 200 {
        bail!(
            "{target} answered {}: {}",
            answer.status,
            answer.body.trim()
        );
    }
    let document: Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("{target} did not answer a status document"))?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
    } else {
        out.write_all(render(&document).as_bytes())?;
    }
    Ok(crate::exit_status(all_up(&document)))
}

/// Whether every host of the document answered: a script running
/// `status` learns from its exit status that one is down.
fn all_up(document: &Value) -> bool {
    document["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|host| host["up"] != false)
}

/// A cell: `-` for nothing, `yes`/`NO` for booleans.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "NO".to_owned(),
        other => other.to_string(),
    }
}

/// A standby's lag: `unknown` while it has not learned how far its
/// primary's stream goes (not `-`, which says there is no standby).
fn standby_lag(standby: &Value) -> String {
    match &standby["lagEvents"] {
        Value::Null if standby.is_object() => "unknown".to_owned(),
        lag => text(lag),
    }
}

/// The tables: one row per sink of every stream of every host (a host
/// without sinks gets one row for each stream), then, when a host holds a
/// lease queue (a dispatcher, a standby), one row per queue.
fn render(document: &Value) -> String {
    let hosts: Vec<&Value> = document["hosts"].as_array().into_iter().flatten().collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for host in &hosts {
        let (url, role, up) = (text(&host["url"]), text(&host["role"]), text(&host["up"]));
        let streams = host["streams"].as_array().cloned().unwrap_or_default();
        let sinks = host["sinks"].as_array().cloned().unwrap_or_default();
        if streams.is_empty() {
            rows.push(vec![url.clone(), role.clone(), up.clone()]);
        }
        for stream in &streams {
            let name = &stream["stream"];
            let last = text(&stream["last_sequence"]);
            let mut of_stream = sinks.iter().filter(|s| &s["stream"] == name).peekable();
            if of_stream.peek().is_none() {
                rows.push(vec![
                    url.clone(),
                    role.clone(),
                    up.clone(),
                    text(name),
                    last.clone(),
                ]);
            }
            for sink in of_stream {
                rows.push(vec![
                    url.clone(),
                    role.clone(),
                    up.clone(),
                    text(name),
                    last.clone(),
                    text(&sink["sink"]),
                    text(&sink["state"]),
                    text(&sink["lag_events"]),
                    sink["lag_seconds"]
                        .as_f64()
                        .map_or("-".to_owned(), |s| format!("{s:.1}")),
                    text(&sink["applied"]),
                    text(&sink["retries"]),
                    text(&sink["dead_lettered"]),
                    text(&sink["last_error"]),
                ]);
            }
        }
    }
    let mut out = table(
        &[
            "HOST", "ROLE", "UP", "STREAM", "LAST", "SINK", "STATE", "LAG", "LAG_S", "APPLIED",
            "RETRIES", "DEAD", "ERROR",
        ],
        &rows,
    );
    // Why a host is down: its rows (if any) are what it said last.
    let unreachable: Vec<Vec<String>> = hosts
        .iter()
        .filter(|host| host["up"] == false && host["error"].is_string())
        .map(|host| vec![text(&host["url"]), text(&host["error"])])
        .collect();
    if !unreachable.is_empty() {
        out.push('\n');
        out.push_str(&table(&["HOST", "UNREACHABLE"], &unreachable));
    }
    // A log that stopped for good refuses every publish until the node is
    // restarted: said beside the sinks it starves.
    let stopped: Vec<Vec<String>> = hosts
        .iter()
        .flat_map(|host| {
            host["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|stream| stream["failure"].is_string())
                .map(|stream| {
                    vec![
                        text(&host["url"]),
                        text(&stream["stream"]),
                        text(&stream["failure"]),
                    ]
                })
        })
        .collect();
    if !stopped.is_empty() {
        out.push('\n');
        out.push_str(&table(&["HOST", "STREAM", "LOG STOPPED"], &stopped));
    }
    let queues: Vec<Vec<String>> = hosts
        .iter()
        .filter(|host| host["queue"].is_object())
        .map(|host| {
            let queue = &host["queue"];
            vec![
                text(&host["url"]),
                text(&host["role"]),
                // A host that is down shows what it held when last seen.
                text(&host["up"]),
                text(&queue["pending"]),
                text(&queue["active"]),
                text(&queue["deadLettered"]),
                text(&host["backpressure"]["active"]),
                standby_lag(&host["standby"]),
                text(&host["standby"]["lastError"]),
            ]
        })
        .collect();
    if !queues.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "HOST",
                "ROLE",
                "UP",
                "PENDING",
                "LEASED",
                "DEAD-LETTERED",
                "BACKPRESSURE",
                "STANDBY_LAG",
                "STANDBY_ERROR",
            ],
            &queues,
        ));
    }
    let clients: Vec<Vec<String>> = hosts
        .iter()
        .filter(|host| host["mesh"].is_object())
        .map(|host| {
            let mesh = &host["mesh"];
            vec![
                text(&host["url"]),
                text(&host["role"]),
                text(&mesh["peerId"]),
                text(&mesh["enqueued"]),
                text(&mesh["completed"]),
                text(&mesh["stale"]),
                text(&mesh["invalid"]),
                (mesh["enqueueErrors"].as_u64().unwrap_or(0)
                    + mesh["workerErrors"].as_u64().unwrap_or(0))
                .to_string(),
                text(&mesh["dispatcher"]),
            ]
        })
        .collect();
    if !clients.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "HOST",
                "ROLE",
                "PEER",
                "ENQUEUED",
                "COMPLETED",
                "STALE",
                "INVALID",
                "RPC_ERRORS",
                "DISPATCHER",
            ],
            &clients,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{all_up, render};

    #[test]
    fn queues_get_a_table_of_their_own_after_the_sinks() {
        let sinks = json!([{"stream": "default", "sink": "export", "state": "healthy",
            "lag_events": 0, "lag_seconds": 0.25, "applied": 8, "retries": 0,
            "dead_lettered": 0, "last_error": null}]);
        let streams = json!([{"stream": "default", "last_sequence": 8}]);
        let document = json!({"hosts": [
            {"url": "http://a:1", "role": "dispatcher", "up": true, "streams": streams,
             "sinks": sinks, "queue": {"pending": 4, "active": 1, "deadLettered": 2},
             "backpressure": {"active": false}},
            {"url": "http://b:2", "role": "standby", "up": true, "streams": streams,
             "sinks": [], "queue": {"pending": 4, "active": 1, "deadLettered": 2},
             "standby": {"lagEvents": 3, "lastError": "primary gone"}},
            {"url": "http://c:3", "role": "receiver", "up": false},
        ]});
        let out = render(&document);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("HOST "), "{out}");
        assert!(
            lines[1].starts_with(
                "http://a:1  dispatcher  yes  default  8     export  healthy  0    0.2"
            ),
            "{out}"
        );
        let queues = lines
            .iter()
            .position(|l| l.contains("DEAD-LETTERED"))
            .unwrap();
        assert_eq!(lines[queues - 1], "", "{out}");
        let split = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            split(lines[queues + 1]),
            [
                "http://a:1",
                "dispatcher",
                "yes",
                "4",
                "1",
                "2",
                "NO",
                "-",
                "-"
            ]
        );
        assert_eq!(
            split(lines[queues + 2]),
            [
                "http://b:2",
                "standby",
                "yes",
                "4",
                "1",
                "2",
                "-",
                "3",
                "primary",
                "gone"
            ]
        );
        assert_eq!(lines.len(), queues + 3, "no row for the receiver: {out}");
        // A standby that has not learned its primary's head: unknown, not
        // 0 and not "no standby".
        let unknown = render(&json!({"hosts": [
            {"url": "http://b:2", "role": "standby", "up": true, "streams": [], "sinks": [],
             "queue": {"pending": 0, "active": 0, "deadLettered": 0},
             "standby": {"lagEvents": null, "lastError": null}},
        ]}));
        let row = unknown.lines().last().unwrap_or_default();
        assert_eq!(
            split(row),
            [
                "http://b:2",
                "standby",
                "yes",
                "0",
                "0",
                "0",
                "-",
                "unknown",
                "-"
            ],
            "{unknown}"
        );
        // A host that is down: what it held when last seen, marked so (a
        // primary killed in a failover is not a second dispatcher).
        let down = render(&json!({"hosts": [
            {"url": "http://d:4", "role": "dispatcher", "up": false, "streams": [], "sinks": [],
             "queue": {"pending": 5, "active": 0, "deadLettered": 0},
             "backpressure": {"active": false}},
        ]}));
        let row = down.lines().last().unwrap_or_default();
        assert_eq!(
            split(row),
            [
                "http://d:4",
                "dispatcher",
                "NO",
                "5",
                "0",
                "0",
                "NO",
                "-",
                "-"
            ],
            "{down}"
        );
        let without =
            render(&json!({"hosts": [{"url": "http://c:3", "role": "receiver", "up": true}]}));
        assert!(!without.contains("DEAD-LETTERED"), "{without}");
    }

    #[test]
    fn a_host_that_is_down_says_why() {
        let document = json!({"hosts": [
            {"url": "http://a:1", "role": "dispatcher", "up": true, "streams": [], "sinks": []},
            {"url": "http://b:2", "up": false,
             "error": "tcp connect error: Connection refused (os error 111)"},
        ]});
        let out = render(&document);
        let lines: Vec<&str> = out.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.contains("UNREACHABLE"))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            lines[header + 1],
            "http://b:2  tcp connect error: Connection refused (os error 111)",
            "{out}"
        );
        assert_eq!(lines.len(), header + 2, "only the host that is down: {out}");
        assert!(!all_up(&document), "the exit status says one is down");
        let up = json!({"hosts": [{"url": "http://a:1", "up": true}]});
        assert!(all_up(&up));
    }

    #[test]
    fn a_stopped_log_gets_a_row_of_its_own() {
        let streams = json!([
            {"stream": "default", "last_sequence": 8, "failure": "the log of stream default stopped: write failed"},
            {"stream": "other", "last_sequence": 2, "failure": null},
        ]);
        let document = json!({"hosts": [
            {"url": "http://a:1", "role": "dispatcher", "up": true, "streams": streams, "sinks": []},
        ]});
        let out = render(&document);
        let lines: Vec<&str> = out.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.contains("LOG STOPPED"))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            lines[header + 1],
            "http://a:1  default  the log of stream default stopped: write failed",
            "{out}"
        );
        assert_eq!(
            lines.len(),
            header + 2,
            "one row, for the stopped one: {out}"
        );
        let healthy = render(&json!({"hosts": [
            {"url": "http://a:1", "role": "dispatcher", "up": true,
             "streams": [{"stream": "default", "last_sequence": 8, "failure": null}]},
        ]}));
        assert!(!healthy.contains("LOG STOPPED"), "{healthy}");
    }

    #[test]
    fn seeders_and_workers_get_a_table_of_what_they_did() {
        let document = json!({"hosts": [
            {"url": "http://w:1", "role": "worker", "up": true, "streams": [], "sinks": [],
             "mesh": {"dispatcher": "http://d:7420", "peerId": "mesh-worker-a", "enqueued": 0,
                      "completed": 7, "stale": 2, "invalid": 0, "enqueueErrors": 0,
                      "workerErrors": 1}},
            {"url": "http://s:2", "role": "seeder", "up": true, "streams": [], "sinks": [],
             "mesh": {"dispatcher": "http://d:7420", "peerId": null, "enqueued": 9,
                      "completed": 0, "stale": 0, "invalid": 0, "enqueueErrors": 3,
                      "workerErrors": 0}},
        ]});
        let out = render(&document);
        let lines: Vec<&str> = out.lines().collect();
        let at = lines.iter().position(|l| l.contains("COMPLETED")).unwrap();
        let split = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            split(lines[at + 1]),
            [
                "http://w:1",
                "worker",
                "mesh-worker-a",
                "0",
                "7",
                "2",
                "0",
                "1",
                "http://d:7420"
            ]
        );
        assert_eq!(
            split(lines[at + 2]),
            [
                "http://s:2",
                "seeder",
                "-",
                "9",
                "0",
                "0",
                "0",
                "3",
                "http://d:7420"
            ]
        );
    }
}
