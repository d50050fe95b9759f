//! The configuration file's shape: serde types with their defaults. Keys
//! carry their units (`_ms`, `_bytes`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::{BatchOptions, RetryPolicy, SinkOptions};
use crate::log::LogOptions;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where logs, checkpoints, dead letters and file exports live.
    pub data_dir: PathBuf,
    /// This node's name in events and telemetry (default: none).
    pub node_id: Option<String>,
    /// The listener: HTTP endpoints (metrics, health, APIs) and gRPC.
    pub server: ServerConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    /// Replication: streams and sinks.
    pub replication: ReplicationConfig,
    /// Settings of the services built on the framework, one table each
    /// (`[services.dispatcher]`): the framework keeps them as they are and
    /// each service reads and checks its own.
    pub services: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("omnirelay-data"),
            node_id: None,
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            replication: ReplicationConfig::default(),
            services: BTreeMap::new(),
        }
    }
}

/// The listener.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `HOST:PORT` to listen on; none means no listener (long-running
    /// commands take `--listen` too).
    pub listen: Option<String>,
    /// When set, requests must carry `Authorization: Bearer <token>`
    /// (`/metrics` and health checks excepted).
    pub token: Option<String>,
    /// TLS for the listener.
    pub tls: TlsConfig,
}

/// TLS of the listener: both files or neither.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: LogFormatConfig,
    /// A `tracing` filter, e.g. `info` or `omnirelay_replication=debug`
    /// (`RUST_LOG` overrides it).
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormatConfig::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormatConfig {
    /// Human-readable lines (no colour when not a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Replication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// The format the logs store events in (at the newest schema version).
    pub log_format: FormatConfig,
    /// When `publish` is acknowledged.
    pub ack: AckConfig,
    /// The log settings of every stream (each stream may override them).
    pub log: LogConfig,
    /// Streams opened at start, by id, with their overrides.
    pub streams: BTreeMap<String, StreamConfig>,
    /// Sinks, by name.
    pub sinks: BTreeMap<String, SinkConfig>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            log_format: FormatConfig::Protobuf,
            ack: AckConfig::Durable,
            log: LogConfig::default(),
            streams: BTreeMap::new(),
            sinks: BTreeMap::new(),
        }
    }
}

/// A serialization format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatConfig {
    /// JSON.
    Json,
    /// Protocol Buffers.
    Protobuf,
}

/// When `publish` is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckConfig {
    /// When durable under the stream's policy.
    Durable,
    /// When, in addition, every required sink has applied it.
    RequiredSinks,
}

/// A durability policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityConfig {
    /// Acknowledge after `fdatasync`.
    Fsync,
    /// Acknowledge after `write`, sync every `interval_ms`.
    Interval,
    /// Acknowledge after `write`, never sync explicitly.
    None,
    /// No file: a bounded in-memory ring.
    Memory,
}

/// The log of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The durability policy.
    pub durability: DurabilityConfig,
    /// For `interval`: how often to sync.
    pub interval_ms: u64,
    /// A segment is sealed past this size.
    pub segment_max_bytes: u64,
    /// One sparse index entry per this many bytes.
    pub index_interval_bytes: u64,
    /// Records kept in memory for sinks that keep up (the ring, for
    /// `memory`).
    pub tail_max_events: u64,
    /// Bytes kept in memory likewise.
    pub tail_max_bytes: u64,
    /// Bytes accepted but not yet written before `publish` waits.
    pub max_pending_bytes: u64,
    /// Which sealed segments may be deleted.
    pub retention: RetentionConfig,
}

/// A library size as a configuration number.
fn size(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// A library duration as configuration milliseconds.
fn millis(value: Duration) -> u64 {
    u64::try_from(value.as_millis()).unwrap_or(u64::MAX)
}

impl Default for LogConfig {
    /// The library's [`LogOptions::default`], as configuration.
    fn default() -> Self {
        let log = LogOptions::default();
        Self {
            durability: DurabilityConfig::Fsync,
            interval_ms: 100,
            segment_max_bytes: log.segment_max_bytes,
            index_interval_bytes: log.index_interval_bytes,
            tail_max_events: size(log.tail_max_events),
            tail_max_bytes: size(log.tail_max_bytes),
            max_pending_bytes: size(log.max_pending_bytes),
            retention: RetentionConfig::default(),
        }
    }
}

/// Retention: the default keeps every segment.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete sealed segments every sink has passed.
    pub delete_consumed: bool,
    /// Delete sealed segments older than this (none: no limit), unless a
    /// required sink needs them.
    pub max_age_ms: Option<u64>,
    /// Delete the oldest sealed segments past this total (none: no
    /// limit), unless a required sink needs them.
    pub max_bytes: Option<u64>,
}

/// A stream's overrides of `[replication.log]`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// See [`LogConfig::durability`].
    pub durability: Option<DurabilityConfig>,
    /// See [`LogConfig::interval_ms`].
    pub interval_ms: Option<u64>,
    /// See [`LogConfig::segment_max_bytes`].
    pub segment_max_bytes: Option<u64>,
    /// See [`LogConfig::tail_max_events`].
    pub tail_max_events: Option<u64>,
    /// See [`LogConfig::tail_max_bytes`].
    pub tail_max_bytes: Option<u64>,
    /// See [`LogConfig::retention`].
    pub retention: Option<RetentionConfig>,
}

/// Required or best effort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeConfig {
    /// Publishers wait (or are refused) past the lag budget.
    Required,
    /// Never holds publishers back; skips what retention dropped.
    BestEffort,
}

/// Past a required sink's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFullConfig {
    /// `publish` waits.
    Block,
    /// `publish` fails at once, handing the event back.
    Reject,
}

/// Where a sink without a checkpoint starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartConfig {
    /// The oldest record held.
    Earliest,
    /// Records published from now on.
    Latest,
}

/// Batching of a sink's deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Records per batch at most.
    pub max_events: u64,
    /// Bytes per batch at most.
    pub max_bytes: u64,
    /// How long to wait for a batch to fill.
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    /// The library's [`BatchOptions::default`], as configuration.
    fn default() -> Self {
        let batch = BatchOptions::default();
        Self {
            max_events: size(batch.max_events),
            max_bytes: size(batch.max_bytes),
            linger_ms: millis(batch.linger),
        }
    }
}

/// Retries of a sink's transient failures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// The first delay's ceiling.
    pub initial_backoff_ms: u64,
    /// No delay exceeds this.
    pub max_backoff_ms: u64,
    /// Growth of the ceiling per attempt (at least 1).
    pub multiplier: f64,
    /// Attempts of one batch before it goes to the dead letters (0: no
    /// limit).
    pub max_attempts: u32,
    /// Full jitter.
    pub jitter: bool,
}

impl Default for RetryConfig {
    /// The library's [`RetryPolicy::default`], as configuration.
    fn default() -> Self {
        let retry = RetryPolicy::default();
        Self {
            initial_backoff_ms: millis(retry.initial),
            max_backoff_ms: millis(retry.max),
            multiplier: retry.multiplier,
            max_attempts: retry.max_attempts.unwrap_or(0),
            jitter: retry.jitter,
        }
    }
}

/// One sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink type, as registered (e.g. `file`, `memory`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the sink runs.
    pub enabled: bool,
    /// The streams it receives (empty: every stream).
    pub streams: Vec<String>,
    /// The format it receives (default: the type's own).
    pub format: Option<FormatConfig>,
    /// The schema version it writes (1 is the reference format).
    pub write_version: u16,
    /// Required or best effort.
    pub mode: ModeConfig,
    /// For required sinks: the lag budget in events.
    pub max_lag_events: u64,
    /// For required sinks: block or reject past the budget.
    pub when_full: WhenFullConfig,
    /// Where to start without a checkpoint.
    pub start: StartConfig,
    /// How often the checkpoint is saved at most.
    pub checkpoint_interval_ms: u64,
    /// Records per second at most (0: no limit).
    pub max_events_per_second: u64,
    /// Batching.
    pub batch: BatchConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// The type's own settings.
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            kind: String::new(),
            enabled: true,
            streams: Vec::new(),
            format: None,
            write_version: 1,
            mode: ModeConfig::BestEffort,
            max_lag_events: 100_000,
            when_full: WhenFullConfig::Block,
            start: StartConfig::Earliest,
            checkpoint_interval_ms: millis(SinkOptions::default().checkpoint_interval),
            max_events_per_second: 0,
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            settings: BTreeMap::new(),
        }
    }
}
