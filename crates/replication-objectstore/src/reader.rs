//! Reading objects back (a replay source).

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use omnirelay_replication::{Error, ErrorKind};

use crate::layout::{KeyKind, event_key, segment_key, validate_prefix};
use crate::sink::{list_keys, store_error};

/// Reads the events a sink wrote under one prefix, in sequence order:
/// per-event objects and segments alike, so a prefix written in both
/// layouts (or by the reference) reads back whole.
#[derive(Clone)]
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    sequence_field: String,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// A reader of `prefix` in `store`. Lines of segments are matched to
    /// sequences by their `sequenceNumber` field.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self, Error> {
        validate_prefix(prefix)?;
        Ok(Self {
            store,
            prefix: prefix.to_owned(),
            sequence_field: "sequenceNumber".to_owned(),
        })
    }

    /// The event and segment keys under the prefix, in sequence order.
    ///
    /// # Errors
    ///
    /// The store's failure to list.
    pub async fn keys(&self) -> Result<Vec<KeyKind>, Error> {
        list_keys(self.store.as_ref(), &self.prefix).await
    }

    /// The events from sequence `from` on: each sequence and its bytes.
    /// Objects are fetched one at a time as the stream is polled.
    ///
    /// # Errors
    ///
    /// The listing's failure; then each item carries its own.
    pub async fn events_from(
        &self,
        from: u64,
    ) -> Result<BoxStream<'static, Result<(u64, Bytes), Error>>, Error> {
        let keys: Vec<KeyKind> = self
            .keys()
            .await?
            .into_iter()
            .filter(|k| k.last() >= from)
            .collect();
        let reader = self.clone();
        Ok(stream::iter(keys)
            .then(move |key| {
                let reader = reader.clone();
                async move { reader.fetch(key, from).await }
            })
            .flat_map(|result| match result {
                Ok(events) => stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => stream::iter(vec![Err(e)]),
            })
            .boxed())
    }

    async fn fetch(&self, key: KeyKind, from: u64) -> Result<Vec<(u64, Bytes)>, Error> {
        let name = match key {
            KeyKind::Event(s) => event_key(&self.prefix, s),
            KeyKind::Segment(first, last) => segment_key(&self.prefix, first, last),
        };
        let body = self
            .store
            .get(&ObjectPath::from(name.as_str()))
            .await
            .map_err(|e| store_error(&format!("read {name}"), e))?
            .bytes()
            .await
            .map_err(|e| store_error(&format!("read {name}"), e))?;
        match key {
            KeyKind::Event(sequence) => Ok(vec![(sequence, body)]),
            KeyKind::Segment(..) => {
                let mut out = Vec::new();
                let mut start = 0;
                for (at, byte) in body.iter().enumerate() {
                    if *byte != b'\n' {
                        continue;
                    }
                    let line = body.slice(start..at);
                    start = at + 1;
                    let sequence = self.sequence_of(&line).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Corrupt,
                            format!("{name}: a line without a numeric {:?}", self.sequence_field),
                        )
                    })?;
                    if sequence >= from {
                        out.push((sequence, line));
                    }
                }
                Ok(out)
            }
        }
    }

    fn sequence_of(&self, line: &[u8]) -> Option<u64> {
        let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
        doc.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&self.sequence_field))
            .and_then(|(_, v)| v.as_u64())
    }
}
