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

/// The mesh scenario's clients as the embedded default has them, for
/// `omnirelay config default`.
pub const MESH_DEFAULT_TOML: &str = r#"
# The mesh scenario's seeder and workers (`omnirelay serve --role seeder`
# and `--role worker`): clients of a dispatcher's RPC in the namespace of
# [services.dispatcher] (`--namespace`), as the reference's mesh runs them.
[services.mesh]
# The dispatcher they call (`--dispatcher` sets it).
# dispatcher = "http://dispatcher.example:7420"
# The seeder enqueues one catalog operation this often.
seed_interval_ms = 2000
# A worker's peer id (`--peer` sets it); mesh-worker-<host name> unless set.
# peer = "mesh-worker-a"
# For an https:// dispatcher whose certificate a private authority signed:
# that authority's PEM certificate (the system's roots otherwise).
# ca_file = "/etc/omnirelay/ca.pem"
# The dispatcher's token, when it differs from this node's own [server]
# token (which is sent otherwise).
# token = "…"
"#;

/// `[services.mesh]`: what the mesh scenario's seeder and workers call,
/// and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The dispatcher's URL, if set.
    pub dispatcher: Option<String>,
    /// How often the seeder enqueues.
    pub seed_interval: Duration,
    /// A worker's peer id, if set.
    pub peer: Option<String>,
    /// For an `https://` dispatcher: the authority's PEM certificate file.
    pub ca_file: Option<PathBuf>,
    /// The dispatcher's token, if it differs from the node's own.
    pub token: Option<String>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MeshTable {
    dispatcher: Option<String>,
    seed_interval_ms: u64,
    peer: Option<String>,
    ca_file: Option<PathBuf>,
    token: Option<String>,
}

impl Default for MeshTable {
    fn default() -> Self {
        Self {
            dispatcher: None,
            seed_interval_ms: 2000,
            peer: None,
            ca_file: None,
            token: None,
        }
    }
}

/// Binds and checks `[services.mesh]` (absent: the defaults).
///
/// # Errors
///
/// The key and the problem.
pub fn parse_mesh(table: Option<&serde_json::Value>) -> Result<MeshSettings, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let table: MeshTable = parse_settings(table.unwrap_or(&empty))?;
    if let Some(url) = &table.dispatcher {
        check_host(url).map_err(|why| SettingsError::new("dispatcher", why))?;
    }
    if table.seed_interval_ms == 0 {
        return Err(SettingsError::new("seed_interval_ms", "must be at least 1"));
    }
    if let Some(peer) = &table.peer
        && peer.trim().is_empty()
    {
        return Err(SettingsError::new("peer", "must name the worker"));
    }
    refuse_empty("ca_file", table.ca_file.as_ref())?;
    refuse_empty("token", table.token.as_ref())?;
    Ok(MeshSettings {
        dispatcher: table
            .dispatcher
            .map(|url| url.trim_end_matches('/').to_owned()),
        seed_interval: Duration::from_millis(table.seed_interval_ms),
        peer: table.peer,
        ca_file: table.ca_file,
        token: table.token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_table_binds_its_defaults_and_refuses_bad_values() {
        let defaults = parse_mesh(None).unwrap();
        assert_eq!(defaults.seed_interval, Duration::from_secs(2));
        assert_eq!((defaults.dispatcher, defaults.peer), (None, None));
        let set = parse_mesh(Some(&serde_json::json!({
            "dispatcher": "http://d:7420/",
            "peer": "w-1",
            "seed_interval_ms": 50,
        })))
        .unwrap();
        assert_eq!(set.dispatcher.as_deref(), Some("http://d:7420"));
        assert_eq!(set.peer.as_deref(), Some("w-1"));
        assert_eq!(set.seed_interval, Duration::from_millis(50));
        for (table, key) in [
            (serde_json::json!({"dispatcher": "d:7420"}), "dispatcher"),
            (
                serde_json::json!({"seed_interval_ms": 0}),
                "seed_interval_ms",
            ),
            (serde_json::json!({"peer": " "}), "peer"),
            (serde_json::json!({"token": ""}), "token"),
            (serde_json::json!({"workers": 2}), "workers"),
        ] {
            let error = parse_mesh(Some(&table)).unwrap_err();
            assert!(
                error.path == key || error.message.contains(key),
                "{table}: {} {}",
                error.path,
                error.message
            );
        }
    }
}
