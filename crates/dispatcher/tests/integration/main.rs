//! Integration tests of omnirelay-dispatcher, one binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http;
mod queue;
mod service;
mod standby;
mod support;
