//! The control plane's configuration table, `[services.controlplane]`.

use std::time::Duration;

use omnirelay_replication::config::{SettingsError, parse_settings};
use serde::Deserialize;

use crate::hosts::Options;

/// The table as the embedded default has it, for `omnirelay config
/// default`.
pub const DEFAULT_TOML: &str = r#"
# The control plane (`omnirelay serve --role controlplane`).
[services.controlplane]
# The hosts it watches (each node's URL); `--hosts` adds to them.
hosts = []
# How often each host is asked for its status, and how long it may take.
poll_interval_ms = 1000
timeout_ms = 2000
# A sink this many events behind raises a lag alert in the journal.
lag_alert_events = 1000
"#;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    hosts: Vec<String>,
    poll_interval_ms: u64,
    timeout_ms: u64,
    lag_alert_events: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            poll_interval_ms: 1000,
            timeout_ms: 2000,
            lag_alert_events: 1000,
        }
    }
}

/// Reads `[services.controlplane]` (an empty table when absent).
///
/// # Errors
///
/// The key path of the first setting that is wrong, and why.
pub fn parse(table: Option<&serde_json::Value>) -> Result<Options, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let settings: Settings = parse_settings(table.unwrap_or(&empty))?;
    for (i, host) in settings.hosts.iter().enumerate() {
        check_host(host).map_err(|why| SettingsError::new(format!("hosts[{i}]"), why))?;
    }
    for (key, value) in [
        ("poll_interval_ms", settings.poll_interval_ms),
        ("timeout_ms", settings.timeout_ms),
        ("lag_alert_events", settings.lag_alert_events),
    ] {
        if value == 0 {
            return Err(SettingsError::new(key, "must be at least 1"));
        }
    }
    Ok(Options {
        poll_interval: Duration::from_millis(settings.poll_interval_ms),
        timeout: Duration::from_millis(settings.timeout_ms),
        lag_alert_events: settings.lag_alert_events,
        ..Options::new(settings.hosts)
    })
}

/// Checks one host URL: `http://host:port` (the control plane speaks
/// plain HTTP to its hosts).
///
/// # Errors
///
/// Why it is not one.
pub fn check_host(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}
