//! The control plane's own events — hosts going down and coming back,
//! backpressure signals, sinks lagging and catching up — published through
//! the framework to the control plane's own durable log.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, CodecErrorKind, DurableOptions, DurableReplicator, Encoding,
    Error, EventKind, Format, Replayed, ReplicationEvent, StreamId, Timestamp, WireVersion,
};
use serde_json::{Value, json};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A host answered again.
    HostUp,
    /// A host stopped answering.
    HostDown,
    /// A dispatcher host's backpressure changed.
    Backpressure,
    /// A host's sink fell behind its lag alert threshold.
    LagAlert,
    /// That sink caught up again.
    LagCleared,
}

impl Kind {
    const ALL: [Self; 5] = [
        Self::HostUp,
        Self::HostDown,
        Self::Backpressure,
        Self::LagAlert,
        Self::LagCleared,
    ];

    /// The name, as written.
    pub fn name(self) -> &'static str {
        match self {
            Self::HostUp => "HostUp",
            Self::HostDown => "HostDown",
            Self::Backpressure => "Backpressure",
            Self::LagAlert => "LagAlert",
            Self::LagCleared => "LagCleared",
        }
    }

    fn code(self) -> i32 {
        match self {
            Self::HostUp => 1,
            Self::HostDown => 2,
            Self::Backpressure => 3,
            Self::LagAlert => 4,
            Self::LagCleared => 5,
        }
    }
}

/// One control-plane event.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaneEvent {
    /// What happened.
    pub kind: Kind,
    /// To which host.
    pub host: String,
    /// The particulars (the error, the signal, the sink and its lag).
    pub detail: Value,
    /// Its sequence in the control plane's log.
    pub sequence: u64,
    /// When the control plane recorded it.
    pub timestamp: Timestamp,
}

impl PlaneEvent {
    /// An event about `host`, not yet sequenced.
    pub fn new(kind: Kind, host: &str, detail: Value) -> Self {
        Self {
            kind,
            host: host.to_owned(),
            detail,
            sequence: 0,
            timestamp: Timestamp::MIN,
        }
    }

    /// As JSON: `{"sequenceNumber","eventType","timestamp","host","detail"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "sequenceNumber": self.sequence,
            "eventType": self.kind.name(),
            "timestamp": self.timestamp.json_text().as_str(),
            "host": self.host,
            "detail": self.detail,
        })
    }
}

impl ReplicationEvent for PlaneEvent {
    fn kind(&self) -> EventKind {
        EventKind {
            code: self.kind.code(),
            name: self.kind.name(),
        }
    }

    fn peer(&self) -> Option<&str> {
        Some(&self.host)
    }

    fn sequence(&self) -> u64 {
        self.sequence
    }

    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    fn assign(&mut self, assignment: &Assignment<'_>) {
        self.sequence = assignment.sequence;
        self.timestamp = assignment.timestamp;
    }

    fn set_shard(&mut self, _shard: &StreamId) {}
}

/// JSON, version 1 only.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlaneCodec;

impl Codec<PlaneEvent> for PlaneCodec {
    fn latest_version(&self) -> WireVersion {
        WireVersion::V1
    }

    fn encode(&self, event: &PlaneEvent, encoding: Encoding) -> Result<Bytes, CodecError> {
        if encoding.format != Format::Json || encoding.version != WireVersion::V1 {
            return Err(CodecError::new(
                CodecErrorKind::Unrepresentable,
                format!("control-plane events are json/v1, not {encoding}"),
            ));
        }
        serde_json::to_vec(&event.to_json())
            .map(Bytes::from)
            .map_err(|e| CodecError::new(CodecErrorKind::Malformed, e.to_string()))
    }

    fn decode(&self, format: Format, bytes: &[u8]) -> Result<PlaneEvent, CodecError> {
        let malformed = |why: String| CodecError::new(CodecErrorKind::Malformed, why);
        if format != Format::Json {
            return Err(CodecError::new(
                CodecErrorKind::Unsupported,
                format!("control-plane events are json, not {format}"),
            ));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let name = value["eventType"].as_str().unwrap_or_default();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                CodecError::new(CodecErrorKind::Unsupported, format!("event type {name:?}"))
            })?;
        let timestamp = value["timestamp"]
            .as_str()
            .map(Timestamp::parse)
            .transpose()
            .map_err(|e| malformed(e.to_string()))?
            .unwrap_or(Timestamp::MIN);
        Ok(PlaneEvent {
            kind,
            host: value["host"].as_str().unwrap_or_default().to_owned(),
            detail: value["detail"].clone(),
            sequence: value["sequenceNumber"].as_u64().unwrap_or(0),
            timestamp,
        })
    }
}

/// The control plane's log.
#[derive(Debug)]
pub struct Journal {
    log: DurableReplicator<PlaneEvent>,
}

impl Journal {
    /// Opens (or recovers) the log under `data_dir`.
    ///
    /// # Errors
    ///
    /// What opening a log reports.
    pub async fn open(data_dir: &Path) -> Result<Arc<Self>, Error> {
        let options = DurableOptions {
            log_format: Format::Json,
            ..DurableOptions::new(data_dir)
        };
        let log = DurableReplicator::open(Arc::new(PlaneCodec), options).await?;
        log.open_stream(&StreamId::default()).await?;
        Ok(Arc::new(Self { log }))
    }

    /// Records `event` (durable when this returns).
    ///
    /// # Errors
    ///
    /// The log cannot take it.
    pub async fn record(&self, event: PlaneEvent) -> Result<(), Error> {
        self.log
            .submit(&StreamId::default(), event)
            .await
            .map_err(omnirelay_replication::PublishError::into_error)?
            .durable()
            .await
            .map(|_| ())
    }

    /// The newest `limit` events, oldest first.
    ///
    /// # Errors
    ///
    /// The log cannot be read.
    pub async fn recent(&self, limit: u64) -> Result<Vec<PlaneEvent>, Error> {
        let stream = StreamId::default();
        let last = self.log.last_sequence(&stream);
        let replay = self
            .log
            .replay(&stream, last.saturating_sub(limit) + 1, Encoding::JSON_V1)
            .await?;
        let mut out = Vec::new();
        for item in replay {
            if let Replayed::Record(record) = item?
                && let Ok(event) = PlaneCodec.decode(Format::Json, record.bytes())
            {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Syncs and closes the log.
    ///
    /// # Errors
    ///
    /// As [`DurableReplicator::close`].
    pub async fn close(&self) -> Result<(), Error> {
        self.log.close().await
    }
}
