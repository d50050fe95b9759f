//! `omnirelay queue dead-letters|redrive|purge`: a dispatcher's
//! dead-lettered items, over its HTTP endpoints.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use omnirelay_dispatcher::http::{DEAD_LETTERS_PATH, PURGE_PATH, REDRIVE_PATH};
use serde_json::Value;

use crate::{RemoteNode, counted, table};

/// Which items a redrive or a purge names.
pub(crate) enum Which {
    All,
    Items(Vec<i64>),
}

/// What is done to the items.
#[derive(Clone, Copy)]
pub(crate) enum Change {
    /// Back at the end of the queue, at attempt 1.
    Redrive,
    /// Discarded.
    Purge,
}

/// The node's answer to `method path` (with `json`), as JSON; an error
/// with the node's message when it refuses.
async fn call(
    node: &RemoteNode,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> anyhow::Result<Value> {
    let (target, answer) = node
        .call(method, path, json, Duration::from_secs(30))
        .await?;
    let body: Option<Value> = serde_json::from_str(&answer.body).ok();
    if answer.status != 200 {
        // The dispatcher's refusals are `{"message", "status", "code"}`.
        let why = body
            .as_ref()
            .and_then(|b| b["message"].as_str())
            .map_or_else(|| answer.body.trim().to_owned(), str::to_owned);
        let code = body
            .as_ref()
            .and_then(|b| b["code"].as_str())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        if answer.status == 404 && body.is_none() {
            bail!(
                "{target} answered 404: is {} a dispatcher (or a standby)?",
                node.url
            );
        }
        bail!("{target} answered {}: {why}{code}", answer.status);
    }
    body.with_context(|| format!("{target} did not answer JSON"))
}

/// Prints a dispatcher's dead-lettered items (at most `limit` after the
/// first `offset`): a table, or with `json` the node's document.
pub(crate) async fn dead_letters(
    node: &RemoteNode,
    json: bool,
    offset: usize,
    limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("{DEAD_LETTERS_PATH}?offset={offset}");
    if let Some(limit) = limit {
        path.push_str(&format!("&limit={limit}"));
    }
    let body = call(node, "GET", &path, None).await?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &body)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let letters = body["deadLetters"].as_array().cloned().unwrap_or_default();
    // A node from before listings were paged says nothing of a total.
    let total = body["total"]
        .as_u64()
        .and_then(|t| usize::try_from(t).ok())
        .unwrap_or(offset + letters.len());
    if letters.is_empty() {
        if total > 0 {
            writeln!(
                out,
                "no dead-lettered items after the first {offset} at {} ({})",
                node.url,
                counted(total, "dead-lettered item")
            )?;
        } else {
            writeln!(out, "no dead-lettered items at {}", node.url)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|letter| {
            let item = &letter["item"];
            let text = |value: &Value, otherwise: &str| {
                value
                    .as_str()
                    .map_or_else(|| otherwise.to_owned(), str::to_owned)
            };
            vec![
                item["sequenceId"].to_string(),
                item["attempt"].to_string(),
                text(&letter["deadLetteredAt"], ""),
                format!(
                    "{}/{}",
                    text(&item["payload"]["resourceType"], "?"),
                    text(&item["payload"]["resourceId"], "?")
                ),
                text(&letter["error"]["code"], "-"),
                text(&letter["error"]["message"], "-"),
            ]
        })
        .collect();
    out.write_all(
        table(
            &[
                "SEQUENCE-ID",
                "ATTEMPT",
                "DEAD-LETTERED",
                "RESOURCE",
                "CODE",
                "MESSAGE",
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    if letters.len() == total {
        writeln!(out, "{}", counted(total, "dead-lettered item"))?;
    } else {
        writeln!(
            out,
            "items {}–{} of {} (--offset and --limit list others)",
            offset + 1,
            offset + letters.len(),
            counted(total, "dead-lettered item")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Redrives or purges a dispatcher's dead-lettered items, as `caller`
/// when given; prints which.
pub(crate) async fn change(
    node: &RemoteNode,
    change: Change,
    which: Which,
    caller: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut request = match which {
        Which::All => serde_json::json!({ "all": true }),
        Which::Items(ids) => serde_json::json!({ "sequenceIds": ids }),
    };
    if let Some(caller) = caller {
        if caller.trim().is_empty() {
            bail!("--caller needs a name, not an empty one");
        }
        request["peerId"] = Value::String(caller);
    }
    let path = match change {
        Change::Redrive => REDRIVE_PATH,
        Change::Purge => PURGE_PATH,
    };
    let body = call(node, "POST", path, Some(&request.to_string())).await?;
    let ids: Vec<String> = body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item["sequenceId"].to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut out = io::stdout().lock();
    match (change, ids.is_empty()) {
        (Change::Redrive, true) => writeln!(out, "nothing to redrive: no dead-lettered items")?,
        (Change::Purge, true) => writeln!(out, "nothing to purge: no dead-lettered items")?,
        (Change::Redrive, false) => writeln!(
            out,
            "redriven: {} back in the queue, at attempt 1: {}",
            counted(ids.len(), "item"),
            ids.join(", ")
        )?,
        (Change::Purge, false) => writeln!(
            out,
            "purged: {} discarded: {}",
            counted(ids.len(), "dead-lettered item"),
            ids.join(", ")
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
