//! `omnirelay status`: the status document of a node (or the control
//! plane) as a table.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

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
        return Ok(ExitCode::SUCCESS);
    }
    out.write_all(render(&document).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The table: one row per sink of every stream of every host (a host
/// without sinks gets one row for each stream).
fn render(document: &Value) -> String {
    let header = [
        "HOST", "ROLE", "UP", "STREAM", "LAST", "SINK", "STATE", "LAG", "LAG_S", "APPLIED",
        "RETRIES", "DEAD", "ERROR",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "NO".to_owned(),
        other => other.to_string(),
    };
    for host in document["hosts"].as_array().into_iter().flatten() {
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
    let width = |column: usize| {
        rows.iter()
            .filter_map(|r| r.get(column))
            .map(String::len)
            .chain([header[column].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
