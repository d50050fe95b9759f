//! # omnirelay-example-sink
//!
//! How a sink type is added without touching `omnirelay-replication`: this
//! crate defines a `tally` sink (it counts events by type into a JSON file)
//! and submits its factory with `inventory::submit!`. A program that links
//! this crate can then enable it by configuration alone:
//!
//! ```toml
//! [replication.sinks.counts]
//! type = "example-tally"
//! [replication.sinks.counts.settings]
//! file = "tally.json"
//! ```

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings,
};
use omnirelay_replication::{
    BoxFuture, Error, ErrorKind, Record, SharedSink, Sink, SinkError, SinkExt, StreamId,
};
use serde::Deserialize;

/// Counts events by type and stream, keeping the counts in a JSON file.
#[derive(Debug, Clone)]
pub struct TallySink {
    path: PathBuf,
    state: Arc<Mutex<Tally>>,
}

#[derive(Debug, Default, serde::Serialize, Deserialize)]
struct Tally {
    /// stream → event type → count.
    counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// stream → highest sequence counted.
    high_water: BTreeMap<String, u64>,
}

impl TallySink {
    /// A tally kept in `path` (its counts are read back on open).
    ///
    /// # Errors
    ///
    /// If an existing file cannot be read.
    pub fn open(path: PathBuf) -> Result<Self, Error> {
        let tally = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::new(ErrorKind::Corrupt, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Tally::default(),
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::Unavailable, "cannot read the tally").with_source(e)
                );
            }
        };
        Ok(Self {
            path,
            state: Arc::new(Mutex::new(tally)),
        })
    }
}

impl Sink for TallySink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let bytes = {
            let mut tally = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            for record in batch {
                let stream = record.stream().as_str().to_owned();
                let mark = tally.high_water.entry(stream.clone()).or_insert(0);
                if record.sequence() <= *mark {
                    continue;
                }
                *mark = record.sequence();
                *tally
                    .counts
                    .entry(stream)
                    .or_default()
                    .entry(record.header().kind.name.to_owned())
                    .or_insert(0) += 1;
            }
            serde_json::to_vec_pretty(&*tally)
                .map_err(|e| SinkError::new(ErrorKind::Internal, e.to_string()))?
        };
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| {
                SinkError::from(
                    Error::new(ErrorKind::Unavailable, "cannot write the tally").with_source(e),
                )
            })
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let tally = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tally.high_water.get(stream.as_str()).copied())
    }
}

/// The factory of the `example-tally` sink type.
#[derive(Debug, Clone, Copy)]
pub struct TallyFactory;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TallySettings {
    file: PathBuf,
}

struct TallyBuilder(TallySettings);

impl SinkFactory for TallyFactory {
    fn type_name(&self) -> &'static str {
        "example-tally"
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: TallySettings = parse_settings(settings)?;
        if settings.file.as_os_str().is_empty() {
            return Err(SettingsError::new("file", "must not be empty"));
        }
        Ok(Box::new(TallyBuilder(settings)))
    }
}

impl SinkBuilder for TallyBuilder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let path = context.data_dir.join(&self.0.file);
            Ok(TallySink::open(path)?.shared())
        })
    }
}

inventory::submit! { SinkPlugin::new(&TallyFactory) }
