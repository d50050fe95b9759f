//! Integration tests of omnirelay-replication, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod conformance;
mod dedup;
mod durable;
mod file_sink;
mod replicator;
mod support;
mod telemetry;
