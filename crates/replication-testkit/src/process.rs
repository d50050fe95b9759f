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
