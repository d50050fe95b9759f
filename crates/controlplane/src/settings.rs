//! The control plane's configuration table, `[services.controlplane]`.

use std::path::PathBuf;
use std::time::Duration;

use omnirelay_replication::config::{SettingsError, parse_settings, refuse_empty};
use serde::Deserialize;

use crate::hosts::{HostAccess, Options};

/// The table as the embedded default has it, for `omnirelay config
/// default`.
pub const DEFAULT_TOML: &str = r#"
# The control plane (`omnirelay serve --role controlplane`).
[services.controlplane]
# The hosts it watches (each node's URL, http:// or https://); `--hosts`
# adds to them. A host whose token or authority differs from the ones
# below is a table instead of a URL:
#   { url = "https://node-b:7421", token = "…", ca_file = "/etc/omnirelay/b-ca.pem" }
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
    /// URLs, or tables ([`HostTable`]).
    hosts: Vec<serde_json::Value>,
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

/// A host given as a table: its own token and authority.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    url: String,
    token: Option<String>,
    ca_file: Option<PathBuf>,
}

/// `[services.controlplane]` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneSettings {
    /// How it watches (no `ca_pem` yet: the caller reads the `ca_file`s;
    /// the `token` when the table sets one, else the caller's to choose;
    /// a host's own token in `access`).
    pub options: Options,
    /// The PEM file of the authority that signed the `https://` hosts'
    /// certificates.
    pub ca_file: Option<PathBuf>,
    /// The hosts with an authority of their own: URL (as in
    /// `options.hosts`), its key path (`hosts[N].ca_file`) and file.
    pub host_ca_files: Vec<(String, String, PathBuf)>,
}

/// Reads `[services.controlplane]` (an empty table when absent).
///
/// # Errors
///
/// The key path of the first setting that is wrong, and why.
pub fn parse(table: Option<&serde_json::Value>) -> Result<ControlPlaneSettings, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let settings: Settings = parse_settings(table.unwrap_or(&empty))?;
    let mut hosts = Vec::with_capacity(settings.hosts.len());
    let mut access = std::collections::BTreeMap::new();
    let mut host_ca_files = Vec::new();
    for (i, host) in settings.hosts.into_iter().enumerate() {
        let at = format!("hosts[{i}]");
        let (table, url_at) = match host {
            serde_json::Value::String(url) => (
                HostTable {
                    url,
                    token: None,
                    ca_file: None,
                },
                at.clone(),
            ),
            table @ serde_json::Value::Object(_) => (
                parse_settings(&table)
                    .map_err(|e| SettingsError::new(join(&at, &e.path), e.message))?,
                join(&at, "url"),
            ),
            _ => {
                return Err(SettingsError::new(
                    at,
                    "a host is a URL, or a table { url, token, ca_file }",
                ));
            }
        };
        check_host(&table.url).map_err(|why| SettingsError::new(url_at, why))?;
        refuse_empty(&join(&at, "token"), table.token.as_ref())?;
        refuse_empty(&join(&at, "ca_file"), table.ca_file.as_ref())?;
        let url = table.url.trim_end_matches('/').to_owned();
        if let Some(file) = table.ca_file {
            host_ca_files.push((url.clone(), join(&at, "ca_file"), file));
        }
        if let Some(token) = table.token {
            access.insert(
                url.clone(),
                HostAccess {
                    token: Some(token),
                    ca_pem: None,
                },
            );
        }
        hosts.push(url);
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
            access,
            ..Options::new(hosts)
        },
        ca_file: settings.ca_file,
        host_ca_files,
    })
}

/// `hosts[1]` and `url` → `hosts[1].url`.
fn join(at: &str, key: &str) -> String {
    if key.is_empty() {
        at.to_owned()
    } else {
        format!("{at}.{key}")
    }
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
