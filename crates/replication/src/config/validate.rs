//! Validation: every check that needs no I/O, all problems reported at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Loaded;
use crate::config::error::{ConfigError, ConfigErrors};
use crate::config::registry::{SinkBuilder, SinkRegistry};
use crate::config::schema::{
    AckConfig, DurabilityConfig, FormatConfig, LogConfig, ModeConfig, RetentionConfig, StartConfig,
    StreamConfig, TelemetryConfig, WhenFullConfig,
};
use crate::delivery::{BatchOptions, DeliveryMode, RetryPolicy, SinkOptions, StartFrom, WhenFull};
use crate::event::{Encoding, Format, WireVersion};
use crate::log::{Durability, LogOptions, Retention};
use crate::replicator::{Ack, DurableOptions};
use crate::stream::{StreamId, validate_name};

/// A configuration that passed validation: ready to build.
pub struct ValidConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The node id.
    pub node_id: Option<String>,
    /// `HOST:PORT` to listen on.
    pub listen: Option<String>,
    /// The bearer token the API requires.
    pub token: Option<String>,
    /// TLS files (certificate, key).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Log output.
    pub telemetry: TelemetryConfig,
    /// The replicator's options.
    pub durable: DurableOptions,
    /// The enabled sinks.
    pub sinks: Vec<ValidSink>,
    /// The services' own tables (`[services.NAME]`), unchecked here: each
    /// service checks its own.
    pub services: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for ValidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An enabled sink: its options and the builder its factory returned.
pub struct ValidSink {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: String,
    /// How it is fed.
    pub options: SinkOptions,
    pub(crate) builder: Box<dyn SinkBuilder>,
}

impl std::fmt::Debug for ValidSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidSink")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

struct Checker<'a> {
    loaded: &'a Loaded,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.loaded.origin(path), path, message));
    }

    fn at_least(&mut self, path: &str, value: u64, min: u64) {
        if value < min {
            self.fail(path, format!("must be at least {min} (is {value})"));
        }
    }
}

impl Loaded {
    /// Validates the configuration against the sink types of `registry`,
    /// for a codec whose newest schema version is `latest`. Does no I/O.
    ///
    /// # Errors
    ///
    /// Every problem found, each naming its key path and where it was set.
    pub fn validate(
        &self,
        registry: &SinkRegistry,
        latest: WireVersion,
    ) -> Result<ValidConfig, ConfigErrors> {
        let mut c = Checker {
            loaded: self,
            errors: Vec::new(),
        };
        let config = &self.config;
        if config.data_dir.as_os_str().is_empty() {
            c.fail("data_dir", "must not be empty");
        }
        if let Some(listen) = &config.server.listen {
            check_listen(&mut c, listen);
        }
        if config.server.token.as_deref() == Some("") {
            c.fail(
                "server.token",
                "must not be empty (leave it out for no token)",
            );
        }
        let tls = match (&config.server.tls.cert_file, &config.server.tls.key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => {
                c.fail(
                    "server.tls.key_file",
                    "is required with server.tls.cert_file",
                );
                None
            }
            (None, Some(_)) => {
                c.fail(
                    "server.tls.cert_file",
                    "is required with server.tls.key_file",
                );
                None
            }
        };
        if config.telemetry.log_level.trim().is_empty() {
            c.fail("telemetry.log_level", "must not be empty");
        }
        let replication = &config.replication;
        let defaults = log_options(&mut c, "replication.log", &replication.log);
        let mut streams = Vec::new();
        for (id, overrides) in &replication.streams {
            let path = format!("replication.streams.{id}");
            match StreamId::new(id) {
                Ok(stream) => {
                    let merged = merge(&replication.log, overrides);
                    let options = log_options(&mut c, &path, &merged);
                    streams.push((stream, options));
                }
                Err(err) => c.fail(&path, err.message().to_owned()),
            }
        }
        let mut sinks = Vec::new();
        let mut claimed = std::collections::BTreeMap::new();
        for (name, sink) in &replication.sinks {
            let path = format!("replication.sinks.{name}");
            if let Err(err) = validate_name("sink name", name) {
                c.fail(&path, err.message().to_owned());
                continue;
            }
            let Some(factory) = registry.get(&sink.kind) else {
                let message = if sink.kind.is_empty() {
                    format!(
                        "`type` is required (one of: {})",
                        registry.types().join(", ")
                    )
                } else {
                    format!(
                        "unknown sink type {:?} (one of: {})",
                        sink.kind,
                        registry.types().join(", ")
                    )
                };
                c.fail(&format!("{path}.type"), message);
                continue;
            };
            let format = match sink.format {
                Some(FormatConfig::Json) => Format::Json,
                Some(FormatConfig::Protobuf) => Format::Protobuf,
                None => factory.default_format(),
            };
            if !factory.accepts_format(format) {
                c.fail(
                    &format!("{path}.format"),
                    format!("a {} sink cannot receive {format}", sink.kind),
                );
            }
            let version = WireVersion::new(sink.write_version).filter(|v| *v <= latest);
            if version.is_none() {
                c.fail(
                    &format!("{path}.write_version"),
                    format!(
                        "must be between 1 and {} (is {})",
                        latest.get(),
                        sink.write_version
                    ),
                );
            }
            let mut stream_filter = Vec::new();
            for (i, stream) in sink.streams.iter().enumerate() {
                match StreamId::new(stream) {
                    Ok(id) => stream_filter.push(id),
                    Err(err) => c.fail(&format!("{path}.streams.{i}"), err.message().to_owned()),
                }
            }
            c.at_least(&format!("{path}.max_lag_events"), sink.max_lag_events, 1);
            c.at_least(
                &format!("{path}.batch.max_events"),
                sink.batch.max_events,
                1,
            );
            c.at_least(&format!("{path}.batch.max_bytes"), sink.batch.max_bytes, 1);
            c.at_least(
                &format!("{path}.retry.initial_backoff_ms"),
                sink.retry.initial_backoff_ms,
                1,
            );
            if sink.retry.max_backoff_ms < sink.retry.initial_backoff_ms {
                c.fail(
                    &format!("{path}.retry.max_backoff_ms"),
                    "must be at least initial_backoff_ms",
                );
            }
            if !(sink.retry.multiplier.is_finite()
                && sink.retry.multiplier >= 1.0
                && sink.retry.multiplier <= 100.0)
            {
                c.fail(
                    &format!("{path}.retry.multiplier"),
                    format!("must be between 1 and 100 (is {})", sink.retry.multiplier),
                );
            }
            let settings = serde_json::Value::Object(sink.settings.clone().into_iter().collect());
            let builder = match factory.validate(&settings) {
                Ok(builder) => Some(builder),
                Err(err) => {
                    let at = if err.path.is_empty() {
                        format!("{path}.settings")
                    } else {
                        format!("{path}.settings.{}", err.path)
                    };
                    c.fail(&at, err.message);
                    None
                }
            };
            let (Some(builder), Some(version)) = (builder, version) else {
                continue;
            };
            if !sink.enabled {
                continue;
            }
            for claim in builder.claims() {
                if let Some(other) = claimed.insert(claim.clone(), name.clone()) {
                    c.fail(
                        &format!("{path}.settings"),
                        format!("sinks {other:?} and {name:?} would both write the {claim}"),
                    );
                }
            }
            let options = SinkOptions {
                encoding: Encoding::new(format, version),
                batch: BatchOptions {
                    max_events: usize::try_from(sink.batch.max_events).unwrap_or(usize::MAX),
                    max_bytes: usize::try_from(sink.batch.max_bytes).unwrap_or(usize::MAX),
                    linger: Duration::from_millis(sink.batch.linger_ms),
                },
                retry: RetryPolicy {
                    initial: Duration::from_millis(sink.retry.initial_backoff_ms),
                    max: Duration::from_millis(sink.retry.max_backoff_ms),
                    multiplier: sink.retry.multiplier,
                    max_attempts: (sink.retry.max_attempts > 0).then_some(sink.retry.max_attempts),
                    jitter: sink.retry.jitter,
                },
                mode: match sink.mode {
                    ModeConfig::Required => DeliveryMode::Required {
                        max_lag_events: sink.max_lag_events,
                        when_full: match sink.when_full {
                            WhenFullConfig::Block => WhenFull::Block,
                            WhenFullConfig::Reject => WhenFull::Reject,
                        },
                    },
                    ModeConfig::BestEffort => DeliveryMode::BestEffort,
                },
                start: match sink.start {
                    StartConfig::Earliest => StartFrom::Earliest,
                    StartConfig::Latest => StartFrom::Latest,
                },
                streams: (!stream_filter.is_empty()).then_some(stream_filter),
                checkpoint_interval: Duration::from_millis(sink.checkpoint_interval_ms),
                max_events_per_second: (sink.max_events_per_second > 0)
                    .then_some(sink.max_events_per_second),
            };
            sinks.push(ValidSink {
                name: name.clone(),
                kind: sink.kind.clone(),
                options,
                builder,
            });
        }
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let mut durable = DurableOptions::new(&config.data_dir);
        durable.log = defaults;
        durable.streams = streams;
        durable.log_format = match replication.log_format {
            FormatConfig::Json => Format::Json,
            FormatConfig::Protobuf => Format::Protobuf,
        };
        durable.ack = match replication.ack {
            AckConfig::Durable => Ack::Durable,
            AckConfig::RequiredSinks => Ack::RequiredSinks,
        };
        Ok(ValidConfig {
            data_dir: config.data_dir.clone(),
            node_id: config.node_id.clone(),
            listen: config.server.listen.clone(),
            token: config.server.token.clone(),
            tls,
            telemetry: config.telemetry.clone(),
            durable,
            sinks,
            services: config
                .services
                .iter()
                .map(|(name, table)| {
                    let object = table.clone().into_iter().collect();
                    (name.clone(), serde_json::Value::Object(object))
                })
                .collect(),
        })
    }
}

/// `HOST:PORT` with a numeric port; the host is not resolved (no I/O).
fn check_listen(c: &mut Checker<'_>, listen: &str) {
    let valid = listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        c.fail(
            "server.listen",
            format!("expected HOST:PORT, got {listen:?}"),
        );
    }
}

fn merge(base: &LogConfig, stream: &StreamConfig) -> LogConfig {
    LogConfig {
        durability: stream.durability.unwrap_or(base.durability),
        interval_ms: stream.interval_ms.unwrap_or(base.interval_ms),
        segment_max_bytes: stream.segment_max_bytes.unwrap_or(base.segment_max_bytes),
        tail_max_events: stream.tail_max_events.unwrap_or(base.tail_max_events),
        tail_max_bytes: stream.tail_max_bytes.unwrap_or(base.tail_max_bytes),
        retention: stream
            .retention
            .clone()
            .unwrap_or_else(|| base.retention.clone()),
        ..base.clone()
    }
}

fn log_options(c: &mut Checker<'_>, path: &str, log: &LogConfig) -> LogOptions {
    if log.durability == DurabilityConfig::Interval {
        c.at_least(&format!("{path}.interval_ms"), log.interval_ms, 1);
    }
    c.at_least(
        &format!("{path}.segment_max_bytes"),
        log.segment_max_bytes,
        4096,
    );
    c.at_least(
        &format!("{path}.index_interval_bytes"),
        log.index_interval_bytes,
        1,
    );
    c.at_least(&format!("{path}.tail_max_events"), log.tail_max_events, 1);
    c.at_least(&format!("{path}.tail_max_bytes"), log.tail_max_bytes, 1024);
    c.at_least(
        &format!("{path}.max_pending_bytes"),
        log.max_pending_bytes,
        1024,
    );
    let RetentionConfig {
        delete_consumed,
        max_age_ms,
        max_bytes,
    } = log.retention;
    if max_age_ms == Some(0) {
        c.fail(
            &format!("{path}.retention.max_age_ms"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    if max_bytes == Some(0) {
        c.fail(
            &format!("{path}.retention.max_bytes"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    LogOptions {
        durability: match log.durability {
            DurabilityConfig::Fsync => Durability::Fsync,
            DurabilityConfig::Interval => {
                Durability::Interval(Duration::from_millis(log.interval_ms.max(1)))
            }
            DurabilityConfig::None => Durability::None,
            DurabilityConfig::Memory => Durability::Memory,
        },
        segment_max_bytes: log.segment_max_bytes,
        index_interval_bytes: log.index_interval_bytes.max(1),
        tail_max_events: to_usize(log.tail_max_events),
        tail_max_bytes: to_usize(log.tail_max_bytes),
        max_pending_bytes: to_usize(log.max_pending_bytes),
        retention: Retention {
            delete_consumed,
            max_age: max_age_ms.map(Duration::from_millis),
            max_bytes,
        },
    }
}
