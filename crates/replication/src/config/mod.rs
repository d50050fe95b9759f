//! Configuration: one TOML file plus `OMNIRELAY_…` environment overrides.
//!
//! Three steps, each with its own type:
//!
//! 1. **Parse** ([`load`]): the file (or the embedded default) and the
//!    environment into [`Config`]. Unknown keys and wrong types are errors
//!    naming the file or variable and the key path.
//! 2. **Validate** ([`Loaded::validate`], no I/O): ranges, names, sink types
//!    and their settings, against a [`SinkRegistry`]; every problem is
//!    reported at once, each with its key path and where it was set.
//! 3. **Build** ([`ValidConfig::build`], I/O): open the durable replicator
//!    and create every enabled sink through its factory.
//!
//! Environment variables name keys with `__` between levels, e.g.
//! `OMNIRELAY_REPLICATION__SINKS__EXPORT__BATCH__MAX_EVENTS=100`. Every
//! `OMNIRELAY_…` variable is configuration: an unknown one is an error.

mod build;
mod error;
mod registry;
mod schema;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use registry::{
    FileSinkFactory, MemorySinkFactory, SettingsError, SinkBuilder, SinkContext, SinkFactory,
    SinkPlugin, SinkRegistry, parse_settings, refuse_empty,
};
pub use schema::{
    AckConfig, BatchConfig, Config, DurabilityConfig, FormatConfig, LogConfig, LogFormatConfig,
    ModeConfig, ReplicationConfig, RetentionConfig, RetryConfig, ServerConfig, SinkConfig,
    StartConfig, StreamConfig, TelemetryConfig, TlsConfig, WhenFullConfig,
};
pub use validate::{ValidConfig, ValidSink};

use std::path::Path;

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};

/// The embedded default configuration: complete and commented. It is what
/// runs when no file is given, and what `omnirelay config default` prints.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "OMNIRELAY_";

/// A parsed configuration and what it was parsed from (kept to name, in
/// later errors, the file or variable that set a key).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    figment: Figment,
}

impl Loaded {
    /// Where the value at `path` (dotted) was set: the file, the
    /// environment variable, or the defaults. For a key that is not set,
    /// where the nearest table holding it was.
    pub fn origin(&self, path: &str) -> String {
        let mut key = path;
        loop {
            if let Some(metadata) = self.figment.find_metadata(key) {
                return match &metadata.source {
                    Some(figment::Source::File(file)) => file.display().to_string(),
                    _ => metadata.name.to_string(),
                };
            }
            // An array element was set with its array; a missing key is
            // named after the table that lacks it.
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None => return "the defaults".to_owned(),
            }
        }
    }
}

/// A provider under a name of our choosing, for error messages.
struct Named<P> {
    inner: P,
    name: String,
}

impl<P> Named<P> {
    fn new(inner: P, name: impl Into<String>) -> Self {
        Self {
            inner,
            name: name.into(),
        }
    }
}

impl<P: figment::Provider> figment::Provider for Named<P> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Where the configuration text comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The embedded default ([`DEFAULT_TOML`]).
    Default,
    /// A file.
    File(&'a Path),
    /// Text read from elsewhere (standard input, say), with a name for
    /// error messages.
    Text {
        /// The TOML.
        text: &'a str,
        /// What to call it in errors.
        name: &'a str,
    },
}

/// A setting given on the command line: a key path, its value, and the
/// flag that set it (for error messages). Flags win over the environment,
/// which wins over the file.
#[derive(Clone, Debug)]
pub struct Override {
    /// The dotted key path, e.g. `server.listen`.
    pub key: String,
    /// The value.
    pub value: toml::Value,
    /// The flag, e.g. `--listen`.
    pub flag: String,
}

impl Override {
    /// `--flag` sets `key` to `value`.
    pub fn new(flag: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.to_owned(),
            value: value.into(),
            flag: flag.to_owned(),
        }
    }
}

/// Parses a configuration: `file` (or the embedded default when `None`)
/// under the process environment's `OMNIRELAY_…` overrides.
///
/// # Errors
///
/// [`ConfigError`] naming the file or variable and the key path, for an
/// unreadable file, invalid TOML, an unknown key or a wrong type.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_with(file, &process_env())
}

/// The process's `OMNIRELAY_…` variables.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect()
}

/// [`load`] with the environment given explicitly.
///
/// # Errors
///
/// As [`load`].
pub fn load_with(file: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let source = match file {
        Some(path) => Source::File(path),
        None => Source::Default,
    };
    load_from(source, env, &[])
}

/// Parses a configuration from `source`, under `env` (`OMNIRELAY_…`
/// variables; others are ignored) and command-line `overrides`.
///
/// # Errors
///
/// As [`load`].
pub fn load_from(
    source: Source<'_>,
    env: &[(String, String)],
    overrides: &[Override],
) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    figment = match source {
        Source::File(path) => {
            if !path.is_file() {
                return Err(ConfigError::new(
                    path.display().to_string(),
                    "",
                    "no such file (or not a regular file)",
                ));
            }
            figment.merge(Toml::file_exact(path))
        }
        Source::Text { text, name } => figment.merge(Named::new(Toml::string(text), name)),
        Source::Default => figment.merge(Named::new(
            Toml::string(DEFAULT_TOML),
            "the embedded default configuration",
        )),
    };
    let mut env: Vec<_> = env
        .iter()
        .filter(|(n, _)| n.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let key = name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        if key.is_empty() {
            continue;
        }
        // A TOML value (number, boolean, array, …), else a plain string.
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        figment = figment.merge(Named::new(
            Serialized::default(&key, value),
            format!("environment variable {name}"),
        ));
    }
    for o in overrides {
        figment = figment.merge(Named::new(
            Serialized::default(&o.key, o.value.clone()),
            format!("command-line flag {}", o.flag),
        ));
    }
    match figment.extract::<Config>() {
        Ok(config) => Ok(Loaded { config, figment }),
        Err(err) => Err(ConfigError::from_figment(&figment, err)),
    }
}
