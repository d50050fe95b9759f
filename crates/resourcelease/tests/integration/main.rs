//! Integration tests of omnirelay-resourcelease, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;
mod leniency;
mod properties;
mod replicators;
pub(crate) mod support;
mod telemetry;
