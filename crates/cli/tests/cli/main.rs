//! Black-box tests of the `omnirelay` binary.

// A panic in a test helper is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod config;
mod deadletter;
mod demo;
mod dispatcher;
mod log;
mod mesh;
mod prometheus;
mod rollover;
mod schema;
mod serve;
mod sqlite;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Output, Stdio};

use omnirelay_replication_testkit::process::KillOnDrop;

/// Runs `omnirelay ARGS` with `stdin` and returns its output.
pub(crate) fn omnirelay(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(args);
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.into_inner().wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// Starts `omnirelay ARGS` with its standard streams piped (killed when
/// dropped, so a failing test leaves nothing running).
pub(crate) fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> KillOnDrop {
    spawn_with_env(args, &[])
}

/// As [`spawn`], with environment variables `env` set.
pub(crate) fn spawn_with_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
) -> KillOnDrop {
    Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("omnirelay starts")
        .into()
}

/// How tests make a log's write fail: the `sh` command that runs
/// `omnirelay ARGS --config DIR/node.toml` (a node whose data directory is
/// `DIR/data`, with no sink, so that its log is the only file that grows)
/// with files limited to `blocks` of 512 bytes (`ulimit -f`) and `SIGXFSZ`
/// ignored, so that a write past the limit fails with `EFBIG`.
pub(crate) fn under_file_limit(dir: &Path, blocks: u32, args: &str) -> String {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", dir.join("data").display()),
    )
    .unwrap();
    format!(
        "trap '' XFSZ; ulimit -f {blocks}; exec {} {args} --config {}",
        env!("CARGO_BIN_EXE_omnirelay"),
        config.display()
    )
}

/// Writes `DIR/omnirelay.toml`: `prefix`, then a `file` sink named
/// `broken` that can say where it is (nothing exported) but never write
/// (its directory is a dangling link), retried briefly, three attempts.
pub(crate) fn broken_sink_config(dir: &Path, prefix: &str) -> PathBuf {
    let dangling = dir.join("broken-export");
    std::os::unix::fs::symlink(dir.join("gone/export"), &dangling).unwrap();
    let config = dir.join("omnirelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"{prefix}
[replication.sinks.broken]
type = "file"
[replication.sinks.broken.retry]
initial_backoff_ms = 1
max_backoff_ms = 2
max_attempts = 3
[replication.sinks.broken.settings]
dir = "{}"
"#,
            dangling.display()
        ),
    )
    .unwrap();
    config
}

/// A node configuration serving TLS with a fresh certificate for
/// localhost, written to `DIR/NAME.toml` after the lines `before` (other
/// settings, with their table headers): the file and the certificate, which
/// is its own authority (a client's `ca_file`).
pub(crate) fn tls_node_config(dir: &Path, name: &str, before: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = omnirelay_replication_testkit::tls::localhost_certificate(dir);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "{before}[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    (config, cert)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Runs `omnirelay args`, which must fail saying `expected` on stderr;
/// that stderr.
pub(crate) fn refused(args: &[&str], expected: &str) -> String {
    let out = omnirelay(args, b"");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        text(&out.stdout)
    );
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    stderr
}

/// The node's next line for its operator, past log records (a sink's
/// client may log as it connects).
pub(crate) fn said(stderr: &mut impl BufRead) -> String {
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the node said nothing more"
        );
        if !line.starts_with(|c: char| c.is_ascii_digit()) {
            return line;
        }
    }
}

/// Starts `omnirelay ARGS` (which must include `--listen`) with piped
/// standard streams and reads the address from its first stderr line;
/// the child, the address, and the rest of its stderr.
pub(crate) fn spawn_listening<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> (KillOnDrop, String, BufReader<ChildStderr>) {
    spawn_listening_with_env(args, &[])
}

/// As [`spawn_listening`], with environment variables `env` set.
pub(crate) fn spawn_listening_with_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
) -> (KillOnDrop, String, BufReader<ChildStderr>) {
    let mut child = spawn_with_env(args, env);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let line = line.trim();
    let address = line
        .strip_prefix("listening on http://")
        .or_else(|| line.strip_prefix("listening on https://"))
        .unwrap_or_else(|| panic!("no listening line: {line}"))
        .to_owned();
    (child, address, stderr)
}

/// `POST` of a JSON `body` with `headers` over HTTP/1.1 (one connection);
/// the status code, the response headers (names in lower case) and body.
pub(crate) fn http_post(
    address: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    try_http_post(address, headers, body).unwrap_or_else(|| panic!("nothing answered at {address}"))
}

/// As [`http_post`], `None` when nothing answers (a killed node).
pub(crate) fn try_http_post(
    address: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, std::collections::BTreeMap<String, String>, String)> {
    try_http_post_to(address, "/omnirelay/v1/resourcelease", headers, body)
}

/// As [`try_http_post`], to `path`.
pub(crate) fn try_http_post_to(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, std::collections::BTreeMap<String, String>, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Some((status, headers, body.to_owned()))
}

/// `GET path` over HTTP/1.0; the status code and body, or `None` when
/// nothing answers.
pub(crate) fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
