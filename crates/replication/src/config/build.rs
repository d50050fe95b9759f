//! Building: the I/O step, after validation.

use std::sync::Arc;

use crate::config::registry::SinkContext;
use crate::config::validate::ValidConfig;
use crate::error::Error;
use crate::event::{Codec, ReplicationEvent};
use crate::replicator::DurableReplicator;

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
        let replicator = DurableReplicator::open(codec, self.durable.clone()).await?;
        for sink in &self.sinks {
            let context = SinkContext {
                name: &sink.name,
                data_dir: &self.data_dir,
            };
            let built = sink.builder.build(context).await.map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("cannot build sink {:?} ({})", sink.name, sink.kind),
                )
                .with_source(e)
            })?;
            replicator
                .add_sink(&sink.name, built, sink.options.clone())
                .await?;
        }
        Ok(replicator)
    }
}
