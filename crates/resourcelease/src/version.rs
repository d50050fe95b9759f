//! Schema versions and what each can hold.

use omnirelay_replication::WireVersion;

use crate::error::EncodeError;
use crate::event::ResourceLeaseReplicationEvent;

/// The reference format: no version field, event types 1–7, no stream,
/// node or snapshot items.
pub const V1: WireVersion = WireVersion::V1;
/// Adds `schemaVersion`, the stream and node ids, event types 8–10 and the
/// items of snapshot events.
pub const V2: WireVersion = WireVersion::V2;
/// The newest version: the full-fidelity form.
pub const LATEST: WireVersion = V2;

/// Checks that `event` can be written in `version`.
///
/// # Errors
///
/// [`EncodeError::UnsupportedVersion`] for a version other than 1 or 2;
/// [`EncodeError::Unrepresentable`] for an event type the version lacks.
pub fn check_writable(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
) -> Result<(), EncodeError> {
    if version != V1 && version != V2 {
        return Err(EncodeError::UnsupportedVersion(version));
    }
    let since = event.event_type.since();
    if since > version {
        return Err(EncodeError::Unrepresentable {
            event_type: event.event_type,
            version,
            since,
        });
    }
    Ok(())
}
