//! Integration tests of omnirelay-replication-nats, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod cluster;
mod conformance;
mod dedup;
mod outage;
mod source;
mod support;
