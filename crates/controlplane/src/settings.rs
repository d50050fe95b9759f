//! The control plane's configuration table, `[services.controlplane]`.

use std::path::PathBuf;
use std::time::Duration;

use omnirelay_replication::config::{SettingsError, parse_settings, refuse_empty};
use serde::Deserialize;

use crate::hosts::Options;

/// The table as the embedded default has it, for `omnirelay config
/// default`.
pub const DEFAULT_TOML: &str = r#"
# The control plane (`omnirelay serve --role controlplane`).
[services.controlplane]
# The hosts it watches (each node's URL, http:// or https://); `--hosts`
# adds to them.
hosts = []
# For https:// hosts: the PEM certificate of the authority that signed
# theirs (without it, the system's roots).
# ca_file = "/etc/omnirelay/ca.pem"
# The hosts' token, when it differs from this node's own [server] token
# (which is sent otherwise).
# token = "…"
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
    ca_file: Option<PathBuf>,
    token: Option<String>,
    poll_interval_ms: u64,
    timeout_ms: u64,
    lag_alert_events: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            ca_file: None,
            token: None,
            poll_interval_ms: 1000,
            timeout_ms: 2000,
            lag_alert_events: 1000,
        }
    }
}

/// `[services.controlplane]` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneSettings {
    /// How it watches (no `ca_pem` yet: the caller reads `ca_file`; the
    /// `token` when the table sets one, else the caller's to choose).
    pub options: Options,
    /// The PEM file of the authority that signed the `https://` hosts'
    /// certificates.
    pub ca_file: Option<PathBuf>,
}

/// Reads `[services.controlplane]` (an empty table when absent).
///
/// # Errors
///
/// The key path of the first setting that is wrong, and why.
pub fn parse(table: Option<&serde_json::Value>) -> Result<ControlPlaneSettings, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let settings: Settings = parse_settings(table.unwrap_or(&empty))?;
    for (i, host) in settings.hosts.iter().enumerate() {
        check_host(host).map_err(|why| SettingsError::new(format!("hosts[{i}]"), why))?;
    }
    refuse_empty("ca_file", settings.ca_file.as_ref())?;
    refuse_empty("token", settings.token.as_ref())?;
    for (key, value) in [
        ("poll_interval_ms", settings.poll_interval_ms),
        ("timeout_ms", settings.timeout_ms),
        ("lag_alert_events", settings.lag_alert_events),
    ] {
        if value == 0 {
            return Err(SettingsError::new(key, "must be at least 1"));
        }
    }
    Ok(ControlPlaneSettings {
        options: Options {
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
            timeout: Duration::from_millis(settings.timeout_ms),
            lag_alert_events: settings.lag_alert_events,
            token: settings.token,
            ..Options::new(settings.hosts)
        },
        ca_file: settings.ca_file,
    })
}

/// Checks one host URL: `http://host:port` or `https://host:port`.
///
/// # Errors
///
/// Why it is not one.
pub fn check_host(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}
