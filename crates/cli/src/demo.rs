//! `omnirelay demo`: the mesh demo. A dispatcher primary, a standby
//! following it over gRPC and the control plane run as `omnirelay serve`
//! child processes (one data directory each under `--data-dir`); a seeder
//! and two workers run the reference's lakehouse-catalog scenario against
//! the primary's HTTP RPC from this process. Status every five seconds; on
//! Ctrl-C or after `--duration` it winds down, checks that the standby and
//! every sink agree with the primary, and prints a summary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use omnirelay_controlplane::mesh::{self, Catalog, Counters, RpcClient, Seeder};
use omnirelay_replication::{Encoding, Format, Replay, Replayed, StreamId, WireVersion};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent};
use serde_json::Value;

use crate::http_client;

/// The flags of `omnirelay demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Where the nodes keep their data: DIR/dispatcher, DIR/standby,
    /// DIR/controlplane (each with its log, its JSON-lines export, its
    /// SQLite database, its configuration and its node.log).
    #[arg(long, value_name = "DIR", default_value = "omnirelay-data")]
    data_dir: PathBuf,
    /// Stop after SECS seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = duration_secs)]
    duration: Option<u64>,
    /// Also replicate the dispatcher's stream to NATS JetStream at URL
    /// (a `nats` sink; JetStream stream OMNIRELAY_MESH_DEMO).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The dashboard's address (the control plane); when 7420 is taken, a
    /// free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Milliseconds between the seeder's operations (the reference's
    /// compose file ran it every 2 s).
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = seed_interval)]
    seed_interval_ms: u64,
}

/// `--seed-interval-ms`: at least 10 ms.
fn seed_interval(text: &str) -> Result<u64, String> {
    const MIN_MS: u64 = 10;
    let ms = crate::whole_number(text, "milliseconds")?;
    if ms < MIN_MS {
        return Err(format!("{ms} ms is too short: at least {MIN_MS}"));
    }
    Ok(ms)
}

/// `--duration`: at least a second (a run of none has nothing to show).
fn duration_secs(text: &str) -> Result<u64, String> {
    match crate::whole_number(text, "seconds")? {
        0 => Err(
            "0 s is too short: at least 1 (leave --duration out to run until Ctrl-C)".to_owned(),
        ),
        secs => Ok(secs),
    }
}

/// The workers' peer ids (the reference's compose file).
const WORKERS: [&str; 2] = ["mesh-worker-a", "mesh-worker-b"];

/// A node running as a child process.
struct Node {
    name: &'static str,
    dir: PathBuf,
    args: Vec<String>,
    url: String,
    child: Child,
    restarts: u32,
    /// When it was found exited, until it is started again.
    exited: Option<Instant>,
    /// Closing it asks the node to stop (`serve --stop-on-stdin-eof`).
    lifeline: Option<ChildStdin>,
}

impl Node {
    /// Starts `omnirelay serve ARGS` with its data and log in `dir`; its
    /// URL from the first line of its stderr, the rest copied to
    /// `dir/node.log`.
    fn spawn(name: &'static str, dir: &Path, args: Vec<String>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the omnirelay binary")?;
        let log_path = dir.join("node.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .args(&args)
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped());
        // Ctrl-C in a terminal goes to the demo alone, which stops the
        // nodes in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let lifeline = child.stdin.take();
        let mut stderr = BufReader::new(child.stderr.take().context("no stderr")?);
        let mut first = String::new();
        stderr.read_line(&mut first)?;
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_owned);
        let Some(url) = url else {
            let _ = child.wait();
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
            bail!("the {name} did not start:\n{first}{rest}");
        };
        let _ = writeln!(log, "{}", first.trim());
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut log));
        Ok(Self {
            name,
            dir: dir.to_owned(),
            args,
            url,
            child,
            restarts: 0,
            exited: None,
            lifeline,
        })
    }

    /// Starts it again after it exited, on the same address (the control
    /// plane watches that URL) with the same data.
    fn restart(&mut self) -> anyhow::Result<()> {
        let address = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, address)| address)
            .to_owned();
        let mut args = self.args.clone();
        if let Some(at) = args.iter().position(|a| a == "--listen") {
            args[at + 1] = address;
        }
        let restarts = self.restarts + 1;
        let old = std::mem::replace(self, Self::spawn(self.name, &self.dir, args)?);
        drop(old);
        self.restarts = restarts;
        Ok(())
    }

    /// Waits until `/readyz` answers 200.
    async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(answer) = http_client::request(
                "GET",
                &format!("{}/readyz", self.url),
                None,
                None,
                None,
                Duration::from_secs(2),
            )
            .await
                && answer.status == 200
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} exited while starting ({status}); see its node.log",
                    self.name
                );
            }
            if Instant::now() > deadline {
                bail!("the {} was not ready within a minute", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its own entry of its status document.
    async fn status(&self) -> anyhow::Result<Value> {
        let answer = http_client::request(
            "GET",
            &format!("{}/status", self.url),
            None,
            None,
            None,
            Duration::from_secs(5),
        )
        .await?;
        let document: Value = serde_json::from_str(&answer.body)
            .with_context(|| format!("the {} answered no status", self.name))?;
        Ok(document["hosts"][0].clone())
    }

    /// Asks it to stop and waits (15 s, then kills it); whether it stopped
    /// cleanly.
    async fn stop(mut self) -> bool {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing stdin stops it; this only stops one left behind by an
        // error.
        if self.lifeline.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A node's configuration: the embedded default with its data directory,
/// the demo's dispatcher settings (reference §6) and, for the primary, a
/// NATS sink.
fn write_config(dir: &Path, nats: Option<&str>) -> anyhow::Result<PathBuf> {
    let mut config: toml::Table = crate::node::default_toml()
        .parse()
        .context("the embedded default does not parse")?;
    config.insert(
        "data_dir".to_owned(),
        toml::Value::String(dir.display().to_string()),
    );
    let dispatcher: toml::Table = toml::toml! {
        namespace = "resourcelease.mesh"
        [queue]
        lease_duration_ms = 30000
        heartbeat_interval_ms = 10000
        [backpressure]
        high_watermark = 64
        low_watermark = 16
        cooldown_ms = 5000
    };
    let services = config
        .entry("services")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(services) = services {
        let entry = services
            .entry("dispatcher")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(table) = entry {
            for (key, value) in dispatcher {
                match (table.get_mut(&key), value) {
                    (Some(toml::Value::Table(into)), toml::Value::Table(from)) => into.extend(from),
                    (_, value) => {
                        table.insert(key, value);
                    }
                }
            }
        }
    }
    if let Some(url) = nats {
        let sink: toml::Table = toml::toml! {
            type = "nats"
            [settings]
            stream = "OMNIRELAY_MESH_DEMO"
            subject = "omnirelay.mesh.{stream}"
        };
        let mut sink = sink;
        if let Some(toml::Value::Table(settings)) = sink.get_mut("settings") {
            settings.insert(
                "servers".to_owned(),
                toml::Value::Array(vec![toml::Value::String(url.to_owned())]),
            );
        }
        if let Some(toml::Value::Table(replication)) = config.get_mut("replication")
            && let Some(toml::Value::Table(sinks)) = replication.get_mut("sinks")
        {
            sinks.insert("nats".to_owned(), toml::Value::Table(sink));
        }
    }
    let path = dir.join("omnirelay.toml");
    std::fs::write(
        &path,
        format!(
            "# Written by `omnirelay demo`: the embedded default with the demo's settings.\n{}",
            toml::to_string(&config).context("cannot write the demo's configuration")?
        ),
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The dashboard's address: `7420` on loopback unless it is taken.
fn dashboard_address(listen: Option<&str>) -> String {
    if let Some(listen) = listen {
        return listen.to_owned();
    }
    match std::net::TcpListener::bind("127.0.0.1:7420") {
        Ok(_) => "127.0.0.1:7420".to_owned(),
        Err(_) => "127.0.0.1:0".to_owned(),
    }
}

fn directory(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the demo; exit status 1 when the standby or a sink disagrees with
/// the primary at the end.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let root = std::path::absolute(&args.data_dir)
        .with_context(|| format!("bad data directory {}", args.data_dir.display()))?;
    let primary_dir = directory(&root, "dispatcher")?;
    let standby_dir = directory(&root, "standby")?;
    let plane_dir = directory(&root, "controlplane")?;
    let primary_config = write_config(&primary_dir, args.nats.as_deref())?;
    let standby_config = write_config(&standby_dir, None)?;
    let plane_config = write_config(&plane_dir, None)?;
    let text = |p: &Path| p.display().to_string();
    let args_listen = args.listen.clone();

    let owned = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut primary = Node::spawn(
        "dispatcher",
        &primary_dir,
        owned(&[
            "--role",
            "dispatcher",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &text(&primary_config),
        ]),
    )?;
    let mut standby = Node::spawn(
        "standby",
        &standby_dir,
        owned(&[
            "--role",
            "standby",
            "--listen",
            "127.0.0.1:0",
            "--follow",
            &primary.url,
            "--config",
            &text(&standby_config),
        ]),
    )?;
    let hosts = format!("{},{}", primary.url, standby.url);
    let mut plane = Node::spawn(
        "control plane",
        &plane_dir,
        owned(&[
            "--role",
            "controlplane",
            "--listen",
            &dashboard_address(args_listen.as_deref()),
            "--hosts",
            &hosts,
            "--config",
            &text(&plane_config),
        ]),
    )?;
    say(&format!("dashboard: {}/", plane.url));
    primary.ready().await?;
    standby.ready().await?;
    plane.ready().await?;
    say(&format!(
        "dispatcher {} (RPC: POST {0}/omnirelay/v1/{}) · standby {} · data in {}",
        primary.url,
        mesh::NAMESPACE,
        standby.url,
        root.display()
    ));
    say(&format!(
        "seeder every {} ms, workers {}; Ctrl-C stops{}",
        args.seed_interval_ms,
        WORKERS.join(" and "),
        args.duration
            .map(|s| format!(" (or after {s} s)"))
            .unwrap_or_default()
    ));

    let client = RpcClient::new(&primary.url, mesh::NAMESPACE, None);
    let counters = Arc::new(Counters::default());
    let catalog = Arc::new(Mutex::new(Catalog::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = vec![tokio::spawn(mesh::run_seeder(
        client.clone(),
        Seeder::default(),
        Duration::from_millis(args.seed_interval_ms),
        counters.clone(),
        stopped.clone(),
    ))];
    for worker in WORKERS {
        tasks.push(tokio::spawn(mesh::run_worker(
            client.clone(),
            worker.to_owned(),
            catalog.clone(),
            counters.clone(),
            stopped.clone(),
        )));
    }

    let started = Instant::now();
    let ends = args.duration.map(|s| started + Duration::from_secs(s));
    // Every second the nodes are checked (one that exited is started
    // again on its address); every five a status line.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut ticks: u64 = 0;
    let mut shutdown = crate::serve::Shutdown::watch()?;
    let mut failure = None;
    loop {
        let until_end = ends.map_or(Duration::from_secs(3600), |end| {
            end.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(until_end), if ends.is_some() => break,
            _ = tick.tick() => {
                ticks += 1;
                for node in [&mut primary, &mut standby, &mut plane] {
                    if let Err(why) = supervise(node, started).await {
                        failure = Some(why);
                    }
                }
                if failure.is_some() {
                    break;
                }
                if ticks.is_multiple_of(5) {
                    say(&status_line(started, &counters, &primary, &standby).await);
                }
            }
        }
    }

    // A node still down is started now, so that it can catch up.
    for node in [&mut primary, &mut standby, &mut plane] {
        if node.exited.is_some() {
            node.exited = Instant::now().checked_sub(RESTART_AFTER);
            if let Err(why) = supervise(node, started).await {
                failure.get_or_insert(why);
            }
        }
    }
    say("stopping: the seeder stops, the workers finish the items they hold");
    stop.send_replace(true);
    for task in tasks {
        let _ = task.await;
    }
    let settled = settle(&primary, &standby).await;
    let primary_status = primary.status().await.ok();
    let standby_status = standby.status().await.ok();
    let plane_clean = plane.stop().await;
    let standby_clean = standby.stop().await;
    let primary_clean = primary.stop().await;
    let summary = Summary::gather(
        &primary_dir,
        &standby_dir,
        primary_status.as_ref(),
        standby_status.as_ref(),
    );
    say(&format!("summary after {} s:", started.elapsed().as_secs()));
    say(&work_line(&counters, primary_status.as_ref()));
    let agrees = summary.print(settled);
    let clean = primary_clean && standby_clean && plane_clean;
    if !clean {
        say("  a node did not stop cleanly; see the node.log files");
    }
    if let Some(failure) = failure {
        bail!(failure);
    }
    Ok(crate::exit_status(agrees && clean))
}

/// How long a node that exited stays down before it is started again:
/// long enough for the dashboard to show the outage.
const RESTART_AFTER: Duration = Duration::from_secs(3);

/// Starts `node` again a little after it exited (killed, say): on its
/// address, with its data; after five restarts, or when it cannot start,
/// the reason.
async fn supervise(node: &mut Node, started: Instant) -> Result<(), String> {
    let name = node.name;
    let at = started.elapsed().as_secs();
    match node.exited {
        None => {
            if let Ok(Some(status)) = node.child.try_wait() {
                if node.restarts >= 5 {
                    return Err(format!(
                        "the {name} exited ({status}) a sixth time; see its node.log"
                    ));
                }
                say(&format!(
                    "[{at:>4}s] the {name} exited ({status}); starting it again in {} s at {}",
                    RESTART_AFTER.as_secs(),
                    node.url
                ));
                node.exited = Some(Instant::now());
            }
            Ok(())
        }
        Some(exited) if exited.elapsed() >= RESTART_AFTER => {
            node.restart()
                .map_err(|e| format!("the {name} cannot start again: {e:#}"))?;
            node.ready()
                .await
                .map_err(|e| format!("the {name} cannot start again: {e:#}"))?;
            say(&format!("[{at:>4}s] the {name} is back"));
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Waits (up to 20 s) until the standby has applied the primary's last
/// event and every sink of both has caught up; whether they did.
async fn settle(primary: &Node, standby: &Node) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let (Ok(p), Ok(s)) = (primary.status().await, standby.status().await) {
            let head = last_sequence(&p);
            let caught_up = |status: &Value| {
                status["sinks"]
                    .as_array()
                    .is_some_and(|sinks| sinks.iter().all(|s| s["lag_events"] == 0))
            };
            if s["standby"]["appliedSequence"].as_u64() == Some(head)
                && last_sequence(&s) == head
                && caught_up(&p)
                && caught_up(&s)
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn last_sequence(status: &Value) -> u64 {
    status["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream"] == "default"))
        .and_then(|s| s["last_sequence"].as_u64())
        .unwrap_or(0)
}

async fn status_line(
    started: Instant,
    counters: &Counters,
    primary: &Node,
    standby: &Node,
) -> String {
    let mut line = format!(
        "[{:>4}s] {} enqueued, {} completed, {} failed",
        started.elapsed().as_secs(),
        counters.enqueued.load(Ordering::Relaxed),
        counters.completed(),
        counters.stale.load(Ordering::Relaxed) + counters.invalid.load(Ordering::Relaxed)
    );
    match primary.status().await {
        Ok(status) => {
            line.push_str(&format!(
                " · queue {} pending, {} leased{} · log {} events · sinks",
                status["queue"]["pending"],
                status["queue"]["active"],
                if status["backpressure"]["active"] == true {
                    " (backpressure)"
                } else {
                    ""
                },
                last_sequence(&status)
            ));
            for sink in status["sinks"].as_array().into_iter().flatten() {
                line.push_str(&format!(
                    " {} {} lag {}",
                    sink["sink"].as_str().unwrap_or("?"),
                    sink["state"].as_str().unwrap_or("?"),
                    sink["lag_events"]
                ));
            }
        }
        Err(error) => line.push_str(&format!(" · dispatcher: {error}")),
    }
    match standby.status().await {
        Ok(status) => match status["standby"]["lagEvents"].as_u64() {
            Some(lag) => line.push_str(&format!(" · standby lag {lag}")),
            None => line.push_str(" · standby lag unknown"),
        },
        Err(error) => line.push_str(&format!(" · standby: {error}")),
    }
    line
}

fn work_line(counters: &Counters, primary: Option<&Value>) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut line = format!(
        "  work: {} enqueued ({} refused); {}",
        load(&counters.enqueued),
        load(&counters.enqueue_errors),
        counters.outcomes(),
    );
    if let Some(queue) = primary.map(|p| &p["queue"]) {
        line.push_str(&format!(
            "; left {} pending, {} leased, {} dead-lettered",
            queue["pending"], queue["active"], queue["deadLettered"]
        ));
    }
    line
}

/// What the nodes hold at the end.
struct Summary {
    /// Events per type in the primary's log (every type, version 2).
    types: BTreeMap<String, u64>,
    primary_events: anyhow::Result<u64>,
    standby_events: anyhow::Result<u64>,
    /// Events of the primary's log with a version-1 form: what each sink
    /// (writing version 1) must hold once.
    reference_events: anyhow::Result<u64>,
    /// Per node and sink: events held, distinct sequences, lag.
    sinks: Vec<SinkCount>,
    fingerprints: (Option<String>, Option<String>),
}

struct SinkCount {
    node: &'static str,
    sink: String,
    held: anyhow::Result<(u64, u64)>,
    lag: Value,
    state: Value,
}

impl Summary {
    fn gather(
        primary_dir: &Path,
        standby_dir: &Path,
        primary: Option<&Value>,
        standby: Option<&Value>,
    ) -> Self {
        let mut types = BTreeMap::new();
        let primary_events = count_log(primary_dir, |kind| {
            *types.entry(kind.to_owned()).or_insert(0) += 1;
        });
        let standby_events = count_log(standby_dir, |_| {});
        let reference_events = count_reference_form(primary_dir);
        let mut sinks = Vec::new();
        for (node, dir, status) in [
            ("dispatcher", primary_dir, primary),
            ("standby", standby_dir, standby),
        ] {
            for sink in status
                .and_then(|s| s["sinks"].as_array())
                .into_iter()
                .flatten()
            {
                let name = sink["sink"].as_str().unwrap_or("?").to_owned();
                let held = match name.as_str() {
                    "export" => count_export(&dir.join("export")),
                    "sqlite" => count_sqlite(&dir.join("replication.db")),
                    _ => sink["applied"].as_u64().map(|n| (n, n)).context("no count"),
                };
                sinks.push(SinkCount {
                    node,
                    sink: name,
                    held,
                    lag: sink["lag_events"].clone(),
                    state: sink["state"].clone(),
                });
            }
        }
        let fingerprint = |s: Option<&Value>| {
            s.and_then(|s| s["queue"]["fingerprint"].as_str().map(str::to_owned))
        };
        Self {
            types,
            primary_events,
            standby_events,
            reference_events,
            sinks,
            fingerprints: (fingerprint(primary), fingerprint(standby)),
        }
    }

    /// Prints the summary; whether everything agrees.
    fn print(&self, settled: bool) -> bool {
        let mut agrees = settled;
        match &self.primary_events {
            Ok(n) => {
                let types: Vec<String> =
                    self.types.iter().map(|(t, c)| format!("{t} {c}")).collect();
                say(&format!(
                    "  events in the dispatcher's log: {n} ({})",
                    types.join(", ")
                ));
            }
            Err(e) => {
                agrees = false;
                say(&format!("  the dispatcher's log cannot be read: {e:#}"));
            }
        }
        let events = self.primary_events.as_ref().ok().copied();
        let expected = self.reference_events.as_ref().ok().copied();
        for sink in &self.sinks {
            match &sink.held {
                Ok((held, distinct)) => {
                    // The sinks write version 1: the events it cannot
                    // carry (v2's lease expiries, requeues, dead letters)
                    // are not theirs to hold.
                    let exact = held == distinct && Some(*held) == expected;
                    agrees &= exact;
                    say(&format!(
                        "  {} sink {}: {held} events{}, state {}, lag {}",
                        sink.node,
                        sink.sink,
                        if exact {
                            ", every reference-form event once".to_owned()
                        } else {
                            format!(
                                " ({distinct} distinct) of the {} reference-form events",
                                expected.map_or_else(|| "?".to_owned(), |n| n.to_string())
                            )
                        },
                        sink.state.as_str().unwrap_or("?"),
                        sink.lag
                    ));
                }
                Err(e) => {
                    agrees = false;
                    say(&format!(
                        "  {} sink {}: cannot be read: {e:#}",
                        sink.node, sink.sink
                    ));
                }
            }
        }
        let same_log = match (&self.standby_events, events) {
            (Ok(standby), Some(primary)) => *standby == primary,
            _ => false,
        };
        let same_queue =
            self.fingerprints.0.is_some() && self.fingerprints.0 == self.fingerprints.1;
        agrees &= same_log && same_queue;
        say(&format!(
            "  standby: {} events, queue fingerprint {} — {}",
            self.standby_events
                .as_ref()
                .map_or_else(|e| format!("unreadable ({e:#})"), u64::to_string),
            self.fingerprints.1.as_deref().unwrap_or("?"),
            if same_log && same_queue {
                "agrees with the primary"
            } else {
                "DISAGREES with the primary"
            }
        ));
        if !settled {
            say("  the standby or a sink had not caught up within 20 s of stopping");
        }
        agrees
    }
}

/// Counts the events of the stream `default` under `data_dir` (version 2,
/// every type), calling `each` with every type name.
fn count_log(data_dir: &Path, mut each: impl FnMut(&str)) -> anyhow::Result<u64> {
    let replay = Replay::<ResourceLeaseReplicationEvent>::open(
        data_dir,
        &StreamId::default(),
        1,
        Arc::new(ResourceLeaseCodec),
        Encoding::new(Format::Json, WireVersion::new(2).context("version 2")?),
    )?;
    let mut count = 0;
    for item in replay {
        if let Replayed::Record(record) = item? {
            let event: Value = serde_json::from_slice(record.bytes())?;
            each(event["eventType"].as_str().unwrap_or("?"));
            count += 1;
        }
    }
    Ok(count)
}

/// The events of the stream `default` under `data_dir` that have a
/// version-1 (reference) form.
fn count_reference_form(data_dir: &Path) -> anyhow::Result<u64> {
    let replay = Replay::<ResourceLeaseReplicationEvent>::open(
        data_dir,
        &StreamId::default(),
        1,
        Arc::new(ResourceLeaseCodec),
        Encoding::JSON_V1,
    )?;
    let mut count = 0;
    for item in replay {
        if let Replayed::Record(_) = item? {
            count += 1;
        }
    }
    Ok(count)
}

/// Lines and distinct sequences in a file sink's `*.jsonl` files.
fn count_export(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut lines = 0;
    let mut sequences = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("no {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in BufReader::new(std::fs::File::open(&path)?).lines() {
                let event: Value = serde_json::from_str(&line?)?;
                lines += 1;
                sequences.insert(event["sequenceNumber"].as_u64().unwrap_or(0));
            }
        }
    }
    Ok((lines, sequences.len() as u64))
}

/// Rows and distinct sequences of the stream `default` in a SQLite sink.
fn count_sqlite(path: &Path) -> anyhow::Result<(u64, u64)> {
    let reader = omnirelay_replication_sqlite::SqliteReader::open(path)?;
    let mut rows = 0;
    let mut sequences = BTreeSet::new();
    for row in reader.rows(omnirelay_replication_sqlite::DEFAULT_TABLE, 1)? {
        sequences.insert(row?.sequence);
        rows += 1;
    }
    Ok((rows, sequences.len() as u64))
}
