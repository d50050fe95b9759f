//! # omnirelay-replication-objectstore
//!
//! An object-storage sink for `omnirelay-replication` over the
//! [`object_store`] crate — a local directory or an S3 bucket (AWS or any
//! S3-compatible server) — that keeps the reference's (OmniRelay .NET) key
//! layout, and a reader that streams the objects back.
//!
//! Each event is one object, `<prefix><20-digit sequence>.json` (the
//! stream `default` under `resourcelease/`), whose body is the event's
//! JSON in the sink's write version and whose content type is
//! `application/json`. Objects are written create-only (`If-None-Match:
//! *` on S3), so a retry never overwrites what an earlier attempt wrote;
//! finding its object already there counts as success. After each batch
//! the sink writes `<prefix>omnirelay-checkpoint` (no `.json`, so tools
//! listing the reference's keys skip it); a restart resumes from it, or,
//! for a prefix the reference wrote, from the highest key under the
//! prefix — for every prefix, `resourcelease/` included (the reference's
//! resume broke on prefixes with `/`). The segment layout writes one
//! JSON-lines object per batch, `<prefix><first>-<last>.jsonl`, for
//! throughput.
//!
//! Linking this crate registers the sink type `object_store`:
//!
//! ```toml
//! [replication.sinks.archive]
//! type = "object_store"
//! [replication.sinks.archive.settings]
//! backend = "s3"
//! bucket = "replication"
//! endpoint = "http://127.0.0.1:9000"
//! prefix = "resourcelease/"
//! ```

#![warn(missing_docs)]

mod factory;
mod layout;
mod reader;
mod sink;

pub use factory::{ObjectStoreSinkFactory, S3Config, StoreConfig};
pub use layout::{CHECKPOINT_NAME, DEFAULT_PREFIX, KeyKind, Layout, parse_key, validate_prefix};
pub use reader::ObjectReader;
pub use sink::{ObjectSinkOptions, ObjectStoreSink};
