//! # omnirelay-resourcelease
//!
//! The resource-lease replication event schema: the events the lease
//! dispatcher emits (enqueue, lease granted, heartbeat, completed, failed,
//! drain and restore snapshots, and from version 2 lease expired, requeued
//! and dead-lettered), with JSON and protobuf codecs for every schema
//! version.
//!
//! ## A short tour
//!
//! - [`ResourceLeaseReplicationEvent`] and its parts mirror the reference
//!   (.NET OmniRelay) records; the version-2 fields follow them.
//! - [`json`] writes version 1 exactly as the reference's System.Text.Json
//!   output and reads as leniently as the reference does; [`proto`] speaks
//!   the reference's `omnirelay.dispatcher.replication` contract.
//! - Readers accept versions 1 and 2; an unknown event type or a future
//!   version is a [`DecodeError`] for which
//!   [`DecodeError::is_unsupported`] holds, so callers can quarantine it.
//!   A version-1 writer refuses event types version 1 lacks with
//!   [`EncodeError::Unrepresentable`], so callers can skip and count them.
//! - [`ResourceLeaseCodec`] plugs all of it into `omnirelay-replication`.
//! - [`lines`] converts and checks streams of events, one per line.
//!
//! ```
//! use omnirelay_resourcelease::{json, version, ResourceLeaseReplicationEventType};
//!
//! let doc = br#"{"SequenceNumber":"42","eventType":"leasegranted","timestamp":"2025-11-27T18:49:03.4567890+00:00"}"#;
//! let event = json::decode(doc).unwrap();
//! assert_eq!(event.event_type, ResourceLeaseReplicationEventType::LeaseGranted);
//! assert_eq!(
//!     String::from_utf8(json::encode(&event, version::V1).unwrap()).unwrap(),
//!     r#"{"sequenceNumber":42,"eventType":"LeaseGranted","timestamp":"2025-11-27T18:49:03.456789+00:00","metadata":{}}"#,
//! );
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod event;
pub mod json;
pub mod lines;
pub mod proto;
pub mod telemetry;
pub mod version;

pub use codec::ResourceLeaseCodec;
pub use error::{DecodeError, EncodeError};
pub use event::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    SHARD_ID_KEY,
};
