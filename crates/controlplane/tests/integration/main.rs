//! Integration tests of omnirelay-controlplane, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hosts;
mod settings;
