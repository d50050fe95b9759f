//! The dispatcher's enqueue → lease → complete cycle over HTTP, replication
//! on against replication off.

use std::sync::Arc;

use omnirelay_dispatcher::{Dispatcher, DispatcherOptions, http};
use omnirelay_replication::Codec as _;
use omnirelay_replication::config::{self, Override, SinkRegistry, Source};
use omnirelay_resourcelease::ResourceLeaseCodec;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::scenario::{Scenario, Side};

/// Cycles per client per pass.
const CYCLES: usize = 10;

const PAYLOAD: &str = r#"{"payload":{"resourceType":"lakehouse.catalog","resourceId":"sales.orders","partitionKey":"partition-7","payloadEncoding":"json","body":"eyJvcCI6ImNvbXBhY3QifQ==","attributes":{"owner":"mesh"}}}"#;

/// `dispatcher-cycle` (one client) and `dispatcher-cycle-4` (four at once):
/// clients doing enqueue, lease and complete over HTTP/1.1 keep-alive
/// against a dispatcher that replicates (the embedded default: the durable
/// log with `interval` durability, the JSON-lines export and the SQLite
/// sink) and against one with replication off (the same queue and RPC,
/// events kept nowhere), both in this process on loopback.
pub struct DispatcherCycle {
    name: &'static str,
    runtime: tokio::runtime::Runtime,
    replicated: Vec<Client>,
    unreplicated: Vec<Client>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for DispatcherCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherCycle").finish_non_exhaustive()
    }
}

/// A keep-alive HTTP/1.1 connection to a dispatcher.
struct Client {
    stream: BufReader<TcpStream>,
    address: String,
}

impl Client {
    async fn connect(address: String) -> Result<Self, String> {
        let stream = TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            stream: BufReader::new(stream),
            address,
        })
    }

    async fn call(&mut self, procedure: &str, body: &str) -> Result<Value, String> {
        let request = format!(
            "POST /omnirelay/v1/resourcelease HTTP/1.1\r\nHost: {}\r\nRpc-Procedure: resourcelease::{procedure}\r\nRpc-Caller: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        self.stream
            .read_line(&mut status)
            .await
            .map_err(|e| e.to_string())?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
        let mut body = vec![0; length];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        if !status.contains(" 200 ") {
            return Err(format!(
                "{procedure}: {} {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Enqueue, lease, complete.
    async fn cycle(&mut self) -> Result<(), String> {
        self.call("enqueue", PAYLOAD).await?;
        let lease = self.call("lease", "{}").await?;
        let complete = serde_json::json!({"ownershipToken": lease["ownershipToken"]}).to_string();
        self.call("complete", &complete).await?;
        Ok(())
    }
}

async fn serve(dispatcher: Arc<Dispatcher>) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let app = http::router(dispatcher);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

impl DispatcherCycle {
    /// Both dispatchers, served on loopback, with `clients` connections to
    /// each.
    ///
    /// # Errors
    ///
    /// A dispatcher or its listener cannot start.
    pub fn new(name: &'static str, clients: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let runtime = crate::scenario::runtime();
        let (replicated, unreplicated) = runtime.block_on(async {
            let text = format!(
                "{}{}",
                config::DEFAULT_TOML,
                omnirelay_replication_sqlite::DEFAULT_SINK_TOML
            );
            let overrides = [
                Override::new("bench", "data_dir", dir.path().display().to_string()),
                Override::new("bench", "replication.log.durability", "interval".to_owned()),
            ];
            let loaded = config::load_from(
                Source::Text {
                    text: &text,
                    name: "the embedded default",
                },
                &[],
                &overrides,
            )
            .map_err(|e| e.to_string())?;
            let valid = loaded
                .validate(
                    &SinkRegistry::discovered(),
                    ResourceLeaseCodec.latest_version(),
                )
                .map_err(|e| e.to_string())?;
            let replicator = valid
                .build(Arc::new(ResourceLeaseCodec))
                .await
                .map_err(|e| e.to_string())?;
            let replicated = Dispatcher::open(Arc::new(replicator), DispatcherOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let unreplicated = Dispatcher::unreplicated(DispatcherOptions::default())
                .map_err(|e| e.to_string())?;
            let (at_replicated, at_unreplicated) =
                (serve(replicated).await?, serve(unreplicated).await?);
            let (mut replicated, mut unreplicated) = (Vec::new(), Vec::new());
            for _ in 0..clients {
                replicated.push(Client::connect(at_replicated.clone()).await?);
                unreplicated.push(Client::connect(at_unreplicated.clone()).await?);
            }
            Ok::<_, String>((replicated, unreplicated))
        })?;
        Ok(Self {
            name,
            runtime,
            replicated,
            unreplicated,
            _dir: dir,
        })
    }
}

impl Scenario for DispatcherCycle {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unit(&self) -> &'static str {
        "cycles"
    }

    fn baseline(&self) -> &'static str {
        "the same RPC cycle against a dispatcher with replication off"
    }

    fn target(&self) -> f64 {
        0.85
    }

    fn pass(&mut self, side: Side) -> u64 {
        let clients = match side {
            Side::Baseline => &mut self.unreplicated,
            Side::Candidate => &mut self.replicated,
        };
        self.runtime.block_on(async {
            let work = clients.iter_mut().map(|client| async move {
                for _ in 0..CYCLES {
                    client.cycle().await?;
                }
                Ok::<_, String>(())
            });
            for outcome in futures::future::join_all(work).await {
                outcome.unwrap_or_else(|e| panic!("dispatcher cycle: {e}"));
            }
        });
        (CYCLES * clients.len()) as u64
    }
}
