//! The sink registry: sinks are created from configuration through
//! factories registered by type name.
//!
//! A crate registers a sink type by submitting a [`SinkPlugin`]; linking
//! the crate into a binary is all it takes, and configuration alone
//! enables the sink:
//!
//! ```
//! use omnirelay_replication::config::{
//!     SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, SinkRegistry,
//! };
//! use omnirelay_replication::{BoxFuture, Error, MemorySink, SharedSink, SinkExt};
//!
//! /// A sink type that keeps events in memory and takes no settings.
//! struct KeepFactory;
//!
//! impl SinkFactory for KeepFactory {
//!     fn type_name(&self) -> &'static str {
//!         "keep"
//!     }
//!
//!     fn validate(
//!         &self,
//!         settings: &serde_json::Value,
//!     ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
//!         if settings.as_object().is_some_and(|s| !s.is_empty()) {
//!             return Err(SettingsError::new("", "takes no settings"));
//!         }
//!         Ok(Box::new(KeepBuilder))
//!     }
//! }
//!
//! struct KeepBuilder;
//!
//! impl SinkBuilder for KeepBuilder {
//!     fn build<'a>(&'a self, _: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
//!         Box::pin(async { Ok(MemorySink::new().shared()) })
//!     }
//! }
//!
//! inventory::submit! { SinkPlugin::new(&KeepFactory) }
//!
//! // `[replication.sinks.x] type = "keep"` now builds one.
//! assert!(SinkRegistry::discovered().types().contains(&"keep"));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::event::Format;
use crate::sink::{BoxFuture, FileSink, FileSinkOptions, MemorySink, SharedSink, SinkExt};

/// What a sink builder gets to create its sink.
#[derive(Clone, Copy, Debug)]
pub struct SinkContext<'a> {
    /// The sink's name in the configuration.
    pub name: &'a str,
    /// The node's data directory (relative paths in settings are under it).
    pub data_dir: &'a Path,
}

/// A problem with a sink's settings: the path under `settings` and what is
/// wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    /// The dotted path under the sink's `settings` table (empty: the table
    /// itself).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl SettingsError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Refuses a text or path setting that is given but empty (`key = ""`).
///
/// # Errors
///
/// [`SettingsError`] at `key`: "must not be empty".
pub fn refuse_empty(
    key: &str,
    value: Option<impl AsRef<std::ffi::OsStr>>,
) -> Result<(), SettingsError> {
    if value.is_some_and(|v| v.as_ref().is_empty()) {
        return Err(SettingsError::new(key, "must not be empty"));
    }
    Ok(())
}

/// Deserializes a sink's settings into `T` (use `#[serde(deny_unknown_fields)]`
/// on it), reporting the path of any problem.
///
/// # Errors
///
/// [`SettingsError`] with the path of an unknown key or a wrong type.
pub fn parse_settings<T: DeserializeOwned>(
    settings: &serde_json::Value,
) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize(settings).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        SettingsError::new(path, err.into_inner().to_string())
    })
}

/// Creates sinks of one type from configuration.
pub trait SinkFactory: Send + Sync + 'static {
    /// The `type` this factory answers to.
    fn type_name(&self) -> &'static str;

    /// The format the sink receives unless the configuration says.
    fn default_format(&self) -> Format {
        Format::Json
    }

    /// Whether the sink can receive `format`.
    fn accepts_format(&self, format: Format) -> bool {
        let _ = format;
        true
    }

    /// Checks the sink's `settings` table, without I/O, and returns what
    /// builds the sink.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] naming the offending key.
    fn validate(&self, settings: &serde_json::Value)
    -> Result<Box<dyn SinkBuilder>, SettingsError>;
}

/// Builds a sink from validated settings (I/O allowed).
pub trait SinkBuilder: Send + Sync + 'static {
    /// Creates the sink.
    ///
    /// # Errors
    ///
    /// The backend's failure (unreachable, unwritable, …).
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>>;

    /// What the sink writes that no other sink may write too (a database
    /// table, a key prefix), each as a phrase naming it. Validation refuses
    /// two enabled sinks with the same claim. None by default.
    fn claims(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A sink type a crate contributes by linking: see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct SinkPlugin {
    factory: &'static dyn SinkFactory,
}

impl SinkPlugin {
    /// A plugin for `factory`.
    pub const fn new(factory: &'static dyn SinkFactory) -> Self {
        Self { factory }
    }
}

impl std::fmt::Debug for dyn SinkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkFactory({})", self.type_name())
    }
}

inventory::collect!(SinkPlugin);

/// Sink factories by type name.
#[derive(Clone, Default)]
pub struct SinkRegistry {
    factories: BTreeMap<&'static str, Arc<dyn SinkFactory>>,
}

impl std::fmt::Debug for SinkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl SinkRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every sink type linked into this program (each crate's
    /// [`SinkPlugin`]s, the built-in `file` and `memory` included).
    pub fn discovered() -> Self {
        let mut registry = Self::empty();
        for plugin in inventory::iter::<SinkPlugin> {
            registry
                .factories
                .entry(plugin.factory.type_name())
                .or_insert_with(|| Arc::new(StaticFactory(plugin.factory)));
        }
        registry
    }

    /// Adds a factory.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if its type name is taken.
    pub fn register(&mut self, factory: Arc<dyn SinkFactory>) -> Result<(), Error> {
        let name = factory.type_name();
        if self.factories.contains_key(name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("sink type {name:?} is registered twice"),
            ));
        }
        self.factories.insert(name, factory);
        Ok(())
    }

    /// The factory of `type_name`.
    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn SinkFactory>> {
        self.factories.get(type_name)
    }

    /// The registered type names, sorted.
    pub fn types(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }
}

/// A `&'static` factory as an `Arc` one.
struct StaticFactory(&'static dyn SinkFactory);

impl SinkFactory for StaticFactory {
    fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    fn default_format(&self) -> Format {
        self.0.default_format()
    }

    fn accepts_format(&self, format: Format) -> bool {
        self.0.accepts_format(format)
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        self.0.validate(settings)
    }
}

/// Resolves a settings path against the data directory.
fn under(data_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        data_dir.join(path)
    }
}

/// The `file` sink type: JSON lines ([`FileSink`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSinkFactory;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileSettings {
    dir: PathBuf,
    max_file_bytes: u64,
    sequence_field: String,
}

impl Default for FileSettings {
    fn default() -> Self {
        let defaults = FileSinkOptions::new("export");
        Self {
            dir: defaults.dir,
            max_file_bytes: defaults.max_file_bytes,
            sequence_field: defaults.sequence_field,
        }
    }
}

struct FileBuilder(FileSettings);

impl SinkFactory for FileSinkFactory {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn accepts_format(&self, format: Format) -> bool {
        format == Format::Json
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: FileSettings = parse_settings(settings)?;
        if settings.max_file_bytes < 1024 {
            return Err(SettingsError::new(
                "max_file_bytes",
                "must be at least 1024",
            ));
        }
        if settings.sequence_field.is_empty() {
            return Err(SettingsError::new("sequence_field", "must not be empty"));
        }
        Ok(Box::new(FileBuilder(settings)))
    }
}

impl SinkBuilder for FileBuilder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let options = FileSinkOptions {
                dir: under(context.data_dir, &self.0.dir),
                max_file_bytes: self.0.max_file_bytes,
                sequence_field: self.0.sequence_field.clone(),
            };
            Ok(FileSink::new(options).shared())
        })
    }

    fn claims(&self) -> Vec<String> {
        vec![format!("JSON-lines directory {}", self.0.dir.display())]
    }
}

/// The `memory` sink type ([`MemorySink`]): for tests and embedding.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemorySinkFactory;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct MemorySettings {
    capacity: Option<u64>,
}

struct MemoryBuilder(MemorySettings);

impl SinkFactory for MemorySinkFactory {
    fn type_name(&self) -> &'static str {
        "memory"
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: MemorySettings = parse_settings(settings)?;
        if settings.capacity == Some(0) {
            return Err(SettingsError::new("capacity", "must be at least 1"));
        }
        Ok(Box::new(MemoryBuilder(settings)))
    }
}

impl SinkBuilder for MemoryBuilder {
    fn build<'a>(&'a self, _context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let sink = match self.0.capacity {
                Some(capacity) => {
                    MemorySink::with_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
                }
                None => MemorySink::new(),
            };
            Ok(sink.shared())
        })
    }
}

inventory::submit! { SinkPlugin::new(&FileSinkFactory) }
inventory::submit! { SinkPlugin::new(&MemorySinkFactory) }
