//! Integration tests of omnirelay-replication-grpc, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod marks;
mod publish;
mod streaming;
