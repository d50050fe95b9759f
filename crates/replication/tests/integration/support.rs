use std::sync::Arc;

use omnirelay_replication::{
    Encoding, MemoryReplicator, MemoryReplicatorOptions, ReplicationEvent, Timestamp,
};
use omnirelay_replication_testkit::{Note, NoteCodec};

pub(crate) fn fixed_clock() -> Timestamp {
    Timestamp::from_unix_millis(1_764_269_343_456).unwrap()
}

pub(crate) fn replicator(starting_sequence: u64) -> (MemoryReplicator<Note>, Arc<NoteCodec>) {
    let codec = Arc::new(NoteCodec::default());
    let replicator = MemoryReplicator::new(
        codec.clone(),
        MemoryReplicatorOptions {
            starting_sequence,
            clock: fixed_clock,
        },
    );
    (replicator, codec)
}

pub(crate) fn record(
    stream: &str,
    sequence: u64,
    peer: Option<&str>,
) -> omnirelay_replication::OwnedRecord {
    let mut note = Note::new("x");
    note.peer = peer.map(str::to_owned);
    let id: omnirelay_replication::StreamId = stream.try_into().unwrap();
    note.assign(&omnirelay_replication::Assignment {
        stream: &id,
        sequence,
        timestamp: fixed_clock(),
    });
    let header = omnirelay_replication::RecordHeader::of(&note);
    omnirelay_replication::OwnedRecord::new(
        id,
        header,
        Encoding::JSON_V1,
        bytes::Bytes::from_static(b"{}"),
    )
}
