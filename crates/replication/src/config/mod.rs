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
/// [`ConfigErrors`] naming the file or variable and the key path, for an
/// unreadable file or invalid TOML (the first problem), or unknown keys
/// and wrong types (each of them, up to 20).
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigErrors> {
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
pub fn load_with(file: Option<&Path>, env: &[(String, String)]) -> Result<Loaded, ConfigErrors> {
    let source = match file {
        Some(path) => Source::File(path),
        None => Source::Default,
    };
    load_from(source, env, &[])
}

/// How many problems [`load_from`] reports at most.
const MAX_ERRORS: usize = 20;

/// Parses a configuration from `source`, under `env` (`OMNIRELAY_…`
/// variables; others are ignored) and command-line `overrides`.
///
/// Deserialization stops at its first problem; to report every unknown
/// key and wrong type at once, each key found wrong is set aside and the
/// rest parsed again, until it parses or nothing more can be set aside.
///
/// # Errors
///
/// As [`load`].
pub fn load_from(
    source: Source<'_>,
    env: &[(String, String)],
    overrides: &[Override],
) -> Result<Loaded, ConfigErrors> {
    match load_lenient(source, env, overrides) {
        (Some(loaded), errors) if errors.is_empty() => Ok(loaded),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// As [`load_from`], keeping what parsed: every problem parsing found,
/// and the configuration without the keys it found wrong (at their
/// defaults), so that a checker can validate the rest and report the
/// problems of both steps at once (leaving out what [`Loaded::validate`]
/// finds under a key already reported). The configuration is `None`
/// when the text as a whole does not parse, or when more than 20
/// problems were found.
pub fn load_lenient(
    source: Source<'_>,
    env: &[(String, String)],
    overrides: &[Override],
) -> (Option<Loaded>, Vec<ConfigError>) {
    let (text, name) = match source {
        Source::File(path) => {
            if !path.is_file() {
                let error = ConfigError::new(
                    path.display().to_string(),
                    "",
                    "no such file (or not a regular file)",
                );
                return (None, vec![error]);
            }
            match std::fs::read_to_string(path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) => {
                    let error = ConfigError::new(
                        path.display().to_string(),
                        "",
                        format!("cannot read: {e}"),
                    );
                    return (None, vec![error]);
                }
            }
        }
        Source::Text { text, name } => (text.to_owned(), name.to_owned()),
        Source::Default => (
            DEFAULT_TOML.to_owned(),
            "the embedded default configuration".to_owned(),
        ),
    };
    let mut set_aside: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    loop {
        let figment = figment_of(&text, &name, env, overrides, &set_aside);
        let error = match figment.extract::<Config>() {
            Ok(config) => return (Some(Loaded { config, figment }), errors),
            Err(error) => ConfigError::from_figment(&figment, error),
        };
        // A key set aside already (the problem is not where it was set, or
        // the path does not name one key): nothing more to learn.
        if set_aside.contains(&error.path) {
            return (None, errors);
        }
        // The file as a whole (its syntax) is the one problem reported.
        let again = !error.path.is_empty() && errors.len() + 1 < MAX_ERRORS;
        if again {
            set_aside.push(error.path.clone());
        }
        errors.push(error);
        if !again {
            return (None, errors);
        }
    }
}

/// The defaults, `text` (called `name`), `env` and `overrides`, merged in
/// that order, without the keys at the dotted paths `set_aside`.
fn figment_of(
    text: &str,
    name: &str,
    env: &[(String, String)],
    overrides: &[Override],
    set_aside: &[String],
) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    figment = if set_aside.is_empty() {
        figment.merge(Named::new(Toml::string(text), name))
    } else {
        // It parsed before: only keys were wrong.
        let mut table = toml::from_str::<toml::Table>(text).unwrap_or_default();
        for path in set_aside {
            remove_path(&mut table, path);
        }
        figment.merge(Named::new(Serialized::defaults(table), name))
    };
    let kept = |key: &str| {
        !set_aside
            .iter()
            .any(|path| key == path || key.starts_with(&format!("{path}.")))
    };
    let mut env: Vec<_> = env
        .iter()
        .filter(|(n, _)| n.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let key = name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        if key.is_empty() || !kept(&key) {
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
    for o in overrides.iter().filter(|o| kept(&o.key)) {
        figment = figment.merge(Named::new(
            Serialized::default(&o.key, o.value.clone()),
            format!("command-line flag {}", o.flag),
        ));
    }
    figment
}

/// Removes the key at the dotted `path` from `table`, if there.
fn remove_path(table: &mut toml::Table, path: &str) {
    match path.split_once('.') {
        None => {
            table.remove(path);
        }
        Some((first, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(first) {
                remove_path(inner, rest);
            }
        }
    }
}
