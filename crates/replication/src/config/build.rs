//! Building: the I/O step, after validation.

use std::sync::Arc;

use crate::config::registry::SinkContext;
use crate::config::validate::{ValidConfig, ValidSink};
use crate::error::Error;
use crate::event::{Codec, ReplicationEvent};
use crate::replicator::DurableReplicator;
use crate::sink::SharedSink;

impl ValidConfig {
    /// Opens the durable replicator (recovering every stream's log) and
    /// creates and adds every enabled sink through its factory.
    ///
    /// # Errors
    ///
    /// What opening a log or building a sink reports, naming the sink.
    pub async fn build<E: ReplicationEvent>(
        &self,
        codec: Arc<dyn Codec<E>>,
    ) -> Result<DurableReplicator<E>, Error> {
        self.build_with(codec, |_, sink| sink).await
    }

    /// [`ValidConfig::build`], passing every sink through `decorate` before
    /// it is added (to wrap it with telemetry, say).
    ///
    /// # Errors
    ///
    /// As [`ValidConfig::build`].
    pub async fn build_with<E: ReplicationEvent>(
        &self,
        codec: Arc<dyn Codec<E>>,
        decorate: impl Fn(&ValidSink, SharedSink) -> SharedSink,
    ) -> Result<DurableReplicator<E>, Error> {
        let replicator = DurableReplicator::open(codec, self.durable.clone()).await?;
        self.add_sinks(&replicator, decorate).await?;
        Ok(replicator)
    }

    /// Creates every enabled sink through its factory and adds it to
    /// `replicator` (opened from [`ValidConfig::durable`]), passed through
    /// `decorate`: [`ValidConfig::build_with`] in two steps, for a node
    /// that starts its sinks later than its log.
    ///
    /// # Errors
    ///
    /// As [`ValidConfig::build`].
    pub async fn add_sinks<E: ReplicationEvent>(
        &self,
        replicator: &DurableReplicator<E>,
        decorate: impl Fn(&ValidSink, SharedSink) -> SharedSink,
    ) -> Result<(), Error> {
        for sink in &self.sinks {
            let built = self.build_one(sink).await?;
            replicator
                .add_sink(&sink.name, decorate(sink, built), sink.options.clone())
                .await?;
        }
        Ok(())
    }

    /// Creates the enabled sink `name` alone, through its factory (to
    /// redrive its dead letters, say); `None` when no sink has that name.
    ///
    /// # Errors
    ///
    /// What building the sink reports, naming it.
    pub async fn build_sink(&self, name: &str) -> Result<Option<(&ValidSink, SharedSink)>, Error> {
        match self.sinks.iter().find(|s| s.name == name) {
            Some(sink) => Ok(Some((sink, self.build_one(sink).await?))),
            None => Ok(None),
        }
    }

    async fn build_one(&self, sink: &ValidSink) -> Result<SharedSink, Error> {
        let context = SinkContext {
            name: &sink.name,
            data_dir: &self.data_dir,
        };
        sink.builder.build(context).await.map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot build sink {:?} ({})", sink.name, sink.kind),
            )
            .with_source(e)
        })
    }
}
