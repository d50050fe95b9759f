//! Black-box tests of the `omnirelay` binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod config;
mod log;
mod prometheus;
mod schema;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `omnirelay ARGS` with `stdin` and returns its output.
pub(crate) fn omnirelay(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("omnirelay starts");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}
