//! The dispatcher's configuration table, `[services.dispatcher]`.

use std::time::Duration;

use omnirelay_replication::config::{SettingsError, parse_settings, refuse_empty};
use serde::Deserialize;

use crate::backpressure::BackpressureOptions;
use crate::queue::QueueOptions;
use crate::service::DispatcherOptions;

/// The dispatcher's table as the embedded default has it (every key at
/// its default), for `omnirelay config default`.
pub const DEFAULT_TOML: &str = r#"
# The resource-lease dispatcher (`omnirelay serve --role dispatcher`).
[services.dispatcher]
# The RPC namespace: procedures are `{namespace}::enqueue` and so on.
namespace = "resourcelease"
# How long a peer may go without a lease or a heartbeat and stay healthy.
peer_grace_ms = 30000
# A peer holding no lease and without a sign for this long is forgotten
# (no longer listed or counted unhealthy); 0: never. At least peer_grace_ms.
peer_forget_ms = 3600000
# How often the queue is saved beside the log (while the log moves), so that
# a restart reads only the events after it and retention may delete the
# segments before it; 0: never (every start folds the whole stream, and
# retention deletes none of it).
checkpoint_interval_ms = 10000

# The lease queue (the reference's TaskQueueOptions defaults).
[services.dispatcher.queue]
capacity = 512
lease_duration_ms = 30000
# A heartbeat sooner than this after the last effective one changes nothing.
heartbeat_interval_ms = 5000
sweep_interval_ms = 1000
requeue_delay_ms = 0
max_delivery_attempts = 5

# Backpressure on pending items is off unless this table is set:
# [services.dispatcher.backpressure]
# high_watermark = 64
# low_watermark = 16     # default: high_watermark / 2
# cooldown_ms = 5000
"#;

/// The standby's table as the embedded default has it, for `omnirelay
/// config default`.
pub const STANDBY_DEFAULT_TOML: &str = r#"
# A standby (`omnirelay serve --role standby`).
[services.standby]
# The primary it follows (`--follow` sets it): a node's URL, followed over
# gRPC Subscribe, or the bus the primary publishes to,
# nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[?stream=NAME&subject=TEMPLATE&durable=NAME&reorder_wait_ms=N].
# Set here or in OMNIRELAY_SERVICES__STANDBY__FOLLOW, a bus password stays
# out of the process list.
# follow = "http://primary.example:7421"
# For an https:// primary whose certificate a private authority signed: that
# authority's PEM certificate (the system's roots otherwise).
# ca_file = "/etc/omnirelay/ca.pem"
# The primary's token, when it differs from this node's own [server] token
# (which is sent otherwise). Keep it in OMNIRELAY_SERVICES__STANDBY__TOKEN
# rather than in the file.
# token = "…"
# Following the bus, which cannot show whether the primary still serves:
# how long after the primary's newest event a promotion takes the primary
# for stopped (before, it is refused unless forced; 0: at once).
primary_quiet_ms = 10000
"#;

/// `[services.standby]`: what a standby follows, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandbySettings {
    /// The primary's URL or the bus's address, if set.
    pub follow: Option<String>,
    /// For an `https://` primary: the PEM certificate of the authority
    /// that signed its certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token a node primary wants, when it is not this node's
    /// own `[server] token`.
    pub token: Option<String>,
    /// Following the bus: how long after the primary's newest event a
    /// promotion takes the primary for stopped (see
    /// [`PRIMARY_QUIET`](crate::PRIMARY_QUIET)), in milliseconds.
    pub primary_quiet_ms: Option<u64>,
}

impl StandbySettings {
    /// [`StandbySettings::primary_quiet_ms`], or its default.
    pub fn primary_quiet(&self) -> std::time::Duration {
        self.primary_quiet_ms
            .map_or(crate::PRIMARY_QUIET, std::time::Duration::from_millis)
    }
}

/// The longest `primary_quiet_ms`: an hour.
const MAX_PRIMARY_QUIET_MS: u64 = 3_600_000;

/// Reads `[services.standby]` (an empty table when absent).
///
/// # Errors
///
/// The key path of the setting that is wrong, and why.
pub fn parse_standby(table: Option<&serde_json::Value>) -> Result<StandbySettings, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let settings: StandbySettings = parse_settings(table.unwrap_or(&empty))?;
    if settings
        .follow
        .as_ref()
        .is_some_and(|f| f.trim().is_empty())
    {
        return Err(SettingsError::new("follow", "must not be empty"));
    }
    refuse_empty("ca_file", settings.ca_file.as_ref())?;
    refuse_empty("token", settings.token.as_ref())?;
    let on_the_bus = settings.follow.as_deref().is_some_and(|f| {
        f.get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("nats://"))
    });
    if settings
        .primary_quiet_ms
        .is_some_and(|ms| ms > MAX_PRIMARY_QUIET_MS)
    {
        return Err(SettingsError::new(
            "primary_quiet_ms",
            format!("at most {MAX_PRIMARY_QUIET_MS} (an hour)"),
        ));
    }
    if settings.token.is_some() && on_the_bus {
        return Err(SettingsError::new(
            "token",
            "is for a node primary: a bus takes its credentials in the follow address",
        ));
    }
    Ok(settings)
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    namespace: String,
    peer_grace_ms: u64,
    peer_forget_ms: u64,
    checkpoint_interval_ms: u64,
    queue: QueueSettings,
    backpressure: Option<BackpressureSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "resourcelease".to_owned(),
            peer_grace_ms: 30_000,
            peer_forget_ms: 3_600_000,
            checkpoint_interval_ms: 10_000,
            queue: QueueSettings::default(),
            backpressure: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QueueSettings {
    capacity: usize,
    lease_duration_ms: u64,
    heartbeat_interval_ms: u64,
    sweep_interval_ms: u64,
    requeue_delay_ms: u64,
    max_delivery_attempts: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        let d = QueueOptions::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            capacity: d.capacity,
            lease_duration_ms: ms(d.lease_duration),
            heartbeat_interval_ms: ms(d.heartbeat_interval),
            sweep_interval_ms: ms(d.sweep_interval),
            requeue_delay_ms: ms(d.requeue_delay),
            max_delivery_attempts: d.max_delivery_attempts,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackpressureSettings {
    high_watermark: usize,
    low_watermark: Option<usize>,
    #[serde(default = "default_cooldown_ms")]
    cooldown_ms: u64,
}

fn default_cooldown_ms() -> u64 {
    5_000
}

/// Reads `[services.dispatcher]` (an empty table when absent) into the
/// dispatcher's options (the stream is the caller's).
///
/// # Errors
///
/// The key path of the first setting that is wrong, and why.
pub fn parse(table: Option<&serde_json::Value>) -> Result<DispatcherOptions, SettingsError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let settings: Settings = parse_settings(table.unwrap_or(&empty))?;
    let namespace = settings.namespace.trim();
    if namespace.is_empty()
        || namespace.contains("::")
        || namespace.chars().any(char::is_whitespace)
    {
        return Err(SettingsError::new(
            "namespace",
            format!(
                "{:?} is not a namespace (non-empty, no spaces, no \"::\")",
                settings.namespace
            ),
        ));
    }
    let q = &settings.queue;
    for (key, value) in [
        ("queue.capacity", q.capacity as u64),
        ("queue.lease_duration_ms", q.lease_duration_ms),
        ("queue.sweep_interval_ms", q.sweep_interval_ms),
        (
            "queue.max_delivery_attempts",
            u64::from(q.max_delivery_attempts),
        ),
        ("peer_grace_ms", settings.peer_grace_ms),
    ] {
        if value == 0 {
            return Err(SettingsError::new(key, "must be at least 1"));
        }
    }
    if settings.peer_forget_ms != 0 && settings.peer_forget_ms < settings.peer_grace_ms {
        return Err(SettingsError::new(
            "peer_forget_ms",
            format!(
                "must be 0 (never) or at least peer_grace_ms ({}): a peer is forgotten only once it is unhealthy",
                settings.peer_grace_ms
            ),
        ));
    }
    let backpressure = match settings.backpressure {
        None => None,
        Some(b) => {
            let options = BackpressureOptions {
                high_watermark: b.high_watermark,
                low_watermark: b.low_watermark,
                cooldown: Duration::from_millis(b.cooldown_ms),
            };
            options.validate().map_err(|message| {
                let (key, why) = message.split_once(": ").unwrap_or(("", message.as_str()));
                SettingsError::new(format!("backpressure.{key}"), why)
            })?;
            Some(options)
        }
    };
    Ok(DispatcherOptions {
        namespace: namespace.to_owned(),
        queue: QueueOptions {
            capacity: q.capacity,
            lease_duration: Duration::from_millis(q.lease_duration_ms),
            heartbeat_interval: Duration::from_millis(q.heartbeat_interval_ms),
            sweep_interval: Duration::from_millis(q.sweep_interval_ms),
            requeue_delay: Duration::from_millis(q.requeue_delay_ms),
            max_delivery_attempts: q.max_delivery_attempts,
        },
        backpressure,
        peer_grace: Duration::from_millis(settings.peer_grace_ms),
        peer_forget: Duration::from_millis(settings.peer_forget_ms),
        checkpoint_interval: Duration::from_millis(settings.checkpoint_interval_ms),
        ..DispatcherOptions::default()
    })
}
