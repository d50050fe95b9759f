//! A real `nats-server` with JetStream on a loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;

use async_nats::jetstream;
use bytes::Bytes;
use omnirelay_replication_nats::header;
use omnirelay_replication_testkit::process::{self, KillOnDrop, try_start_server};

/// How to get `nats-server` (the test command installs it).
const INSTALL: &str = process::NATS_INSTALL;

/// `nats-server -js` on `127.0.0.1`, its store in a directory, stopped on
/// drop.
pub(crate) struct Nats {
    child: KillOnDrop,
    pub(crate) url: String,
    pub(crate) port: u16,
    store: PathBuf,
}

impl Nats {
    /// Starts a server on a random port. Fails loudly if `nats-server` is
    /// not installed: the test command (`scripts/test`) installs it.
    pub(crate) fn start(store: &Path) -> Self {
        Self::start_on(store, None)
    }

    /// Starts a server on `port` (random when `None`).
    pub(crate) fn start_on(store: &Path, port: Option<u16>) -> Self {
        let (child, port) = process::start_nats(store, port);
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store: store.to_owned(),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        assert!(process::signal(self.child.id(), signal));
    }

    /// Kills the server; [`Nats::restart`] brings it back on the same port
    /// with the same store.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its port with its store.
    pub(crate) fn restart(&mut self) {
        let fresh = Self::start_on(&self.store, Some(self.port));
        let old = std::mem::replace(self, fresh);
        drop(old);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        process::signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of the JetStream stream `name` for the replication
/// stream `stream`, read directly from JetStream in stream order: each
/// one's `Omnirelay-Sequence` and payload (duplicates included).
pub(crate) async fn stored(url: &str, name: &str, stream: &str) -> Vec<(u64, Vec<u8>)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let mut js_stream = match js.get_stream(name).await {
        Ok(s) => s,
        Err(_) => return Vec::new(),
    };
    let last = js_stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(message) = js_stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |h: &str| message.headers.get(h).map(|v| v.as_str().to_owned());
        if header(header::STREAM).as_deref() != Some(stream) {
            continue;
        }
        let sequence = header(header::SEQUENCE).unwrap().parse().unwrap();
        out.push((sequence, message.payload.to_vec()));
    }
    out
}

/// Creates the sinks' default JetStream stream, on their default
/// subjects, with the limits of `limits` (its name and subjects are set
/// here).
pub(crate) async fn create_default_stream(url: &str, limits: jetstream::stream::Config) {
    let client = async_nats::connect(url).await.unwrap();
    jetstream::new(client)
        .create_stream(jetstream::stream::Config {
            name: omnirelay_replication_nats::DEFAULT_STREAM.to_owned(),
            subjects: vec!["omnirelay.replication.>".to_owned()],
            ..limits
        })
        .await
        .unwrap();
}

/// Publishes what a NATS sink would for `sequence` of the replication
/// stream `stream` (a JSON v1 `body`) on the default stream and subject,
/// naming `previous` as the message published before it unless `None`
/// (as sinks did before the header).
pub(crate) async fn publish_as_sink(
    url: &str,
    stream: &str,
    sequence: u64,
    previous: Option<u64>,
    body: &[u8],
) {
    publish_as_writer(url, stream, sequence, previous, body, None).await;
}

/// As [`publish_as_sink`], as the sink whose `Omnirelay-Writer` is
/// `writer` (none: a sink of a release before the header).
pub(crate) async fn publish_as_writer(
    url: &str,
    stream: &str,
    sequence: u64,
    previous: Option<u64>,
    body: &[u8],
    writer: Option<&str>,
) {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    publish_on(&js, stream, sequence, previous, body, writer).await;
}

/// As [`publish_as_writer`], on the connection of `js`.
pub(crate) async fn publish_on(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
    previous: Option<u64>,
    body: &[u8],
    writer: Option<&str>,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(header::MSG_ID, format!("{stream}:{sequence}").as_str());
    headers.insert(header::STREAM, stream);
    headers.insert(header::SEQUENCE, sequence.to_string().as_str());
    headers.insert(header::SCHEMA_VERSION, "1");
    headers.insert(header::FORMAT, "json");
    headers.insert(header::EVENT_TYPE, "Heartbeat");
    if let Some(previous) = previous {
        headers.insert(header::PREVIOUS_SEQUENCE, previous.to_string().as_str());
    }
    if let Some(writer) = writer {
        headers.insert(header::WRITER, writer);
    }
    let subject = omnirelay_replication_nats::DEFAULT_SUBJECT.replace("{stream}", stream);
    js.publish_with_headers(subject, headers, Bytes::copy_from_slice(body))
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A payload over the server's default 1 MiB limit.
pub(crate) fn oversized() -> Bytes {
    let mut doc = b"{\"sequenceNumber\":3,\"pad\":\"".to_vec();
    doc.resize(2 << 20, b'x');
    doc.extend_from_slice(b"\"}");
    Bytes::from(doc)
}

/// `n` distinct free loopback ports: all bound at once (so none is
/// handed out twice), then released for servers to take.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Three `nats-server -js` in one cluster on loopback.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
}

/// One member of a [`Cluster`].
pub(crate) struct Node {
    /// Killed when dropped.
    child: Option<KillOnDrop>,
    name: String,
    pub(crate) port: u16,
    cluster_port: u16,
    store: PathBuf,
}

impl Cluster {
    /// Starts three members with their stores under `dir`. A port taken
    /// by another process between choosing it and the server binding it
    /// fails that start; the cluster is then started again on fresh ports
    /// (three tries).
    pub(crate) fn start(dir: &Path) -> Self {
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let ports = free_ports(6);
            let mut cluster = Self {
                nodes: (0..3)
                    .map(|i| Node {
                        child: None,
                        name: format!("n{i}"),
                        port: ports[2 * i],
                        cluster_port: ports[2 * i + 1],
                        store: dir.join(format!("attempt-{attempt}/n{i}")),
                    })
                    .collect(),
            };
            let routes = cluster.routes();
            match cluster.nodes.iter_mut().try_for_each(|n| n.spawn(&routes)) {
                Ok(()) => return cluster,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("no cluster of three started: {failures:#?}");
    }

    /// The client URLs of every member.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    fn routes(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again with its store on its ports.
    pub(crate) fn restart(&mut self, i: usize) {
        let routes = self.routes();
        if let Err(failure) = self.nodes[i].spawn(&routes) {
            panic!("member {i} did not start again: {failure}");
        }
    }
}

impl Node {
    /// Starts this member; what the server said if it did not start.
    fn spawn(&mut self, routes: &str) -> Result<(), String> {
        let mut command = Command::new("nats-server");
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-n",
                &self.name,
                "--cluster_name",
                "omnirelay",
            ])
            .args(["-p", &self.port.to_string()])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            .args(["--routes", routes, "-sd"])
            .arg(&self.store);
        // "Server is ready" comes before the route listener binds (and
        // fails on a taken port): a member is up once that listener is.
        let (child, _) = try_start_server(command, "Listening for route connections", INSTALL)?;
        self.child = Some(child);
        Ok(())
    }
}
