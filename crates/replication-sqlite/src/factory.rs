//! The `sqlite` sink type for configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings,
};
use omnirelay_replication::{BoxFuture, Error, Format, SharedSink, SinkExt, StreamId};
use serde::Deserialize;

use crate::sink::{SqliteSink, SqliteSinkOptions, Synchronous};
use crate::table::validate_table_name;

/// The commented `[replication.sinks.sqlite]` section that services add to
/// the framework's embedded default configuration: a SQLite sink at
/// `DIR/replication.db` with the reference's table.
pub const DEFAULT_SINK_TOML: &str = include_str!("default-sink.toml");

/// Builds [`SqliteSink`]s from the `settings` of a sink of type `sqlite`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteSinkFactory;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    path: PathBuf,
    table: String,
    tables: BTreeMap<String, String>,
    synchronous: SynchronousSetting,
    busy_timeout_ms: u64,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum SynchronousSetting {
    Full,
    Normal,
}

impl Default for Settings {
    fn default() -> Self {
        let defaults = SqliteSinkOptions::new("replication.db");
        Self {
            path: defaults.path,
            table: defaults.table,
            tables: defaults.tables,
            synchronous: SynchronousSetting::Full,
            busy_timeout_ms: u64::try_from(defaults.busy_timeout.as_millis()).unwrap_or(5000),
        }
    }
}

impl Settings {
    fn options(&self, path: PathBuf) -> SqliteSinkOptions {
        SqliteSinkOptions {
            path,
            table: self.table.clone(),
            tables: self.tables.clone(),
            synchronous: match self.synchronous {
                SynchronousSetting::Full => Synchronous::Full,
                SynchronousSetting::Normal => Synchronous::Normal,
            },
            busy_timeout: Duration::from_millis(self.busy_timeout_ms),
        }
    }
}

struct Builder(Settings);

impl SinkFactory for SqliteSinkFactory {
    fn type_name(&self) -> &'static str {
        "sqlite"
    }

    fn accepts_format(&self, format: Format) -> bool {
        format == Format::Json
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: Settings = parse_settings(settings)?;
        if settings.path.as_os_str().is_empty() {
            return Err(SettingsError::new("path", "must not be empty"));
        }
        validate_table_name(&settings.table)
            .map_err(|e| SettingsError::new("table", e.message()))?;
        for (stream, table) in &settings.tables {
            let at = format!("tables.{stream}");
            StreamId::new(stream).map_err(|e| SettingsError::new(&at, e.message()))?;
            validate_table_name(table).map_err(|e| SettingsError::new(&at, e.message()))?;
        }
        settings
            .options(settings.path.clone())
            .validate()
            .map_err(|e| SettingsError::new("tables", e.message()))?;
        Ok(Box::new(Builder(settings)))
    }
}

impl SinkBuilder for Builder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let path = if self.0.path.is_absolute() {
                self.0.path.clone()
            } else {
                context.data_dir.join(&self.0.path)
            };
            Ok(SqliteSink::new(self.0.options(path))?.shared())
        })
    }

    fn claims(&self) -> Vec<String> {
        let options = self.0.options(self.0.path.clone());
        let mut tables: Vec<String> = options.tables.values().cloned().collect();
        tables.push(options.table.clone());
        tables
            .into_iter()
            .map(|table| {
                format!(
                    "table {table} of the SQLite database {}",
                    self.0.path.display()
                )
            })
            .collect()
    }
}

inventory::submit! { SinkPlugin::new(&SqliteSinkFactory) }
