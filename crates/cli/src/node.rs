//! What every long-running command shares: configuration (file, environment,
//! flags), logging, metrics and the HTTP listener.

use std::future::IntoFuture as _;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use omnirelay_replication::Codec as _;
use omnirelay_replication::config::{
    self, LogFormatConfig, Override, SinkRegistry, Source, ValidConfig,
};
use omnirelay_resourcelease::ResourceLeaseCodec;
use tokio::sync::watch;

/// The flags of every long-running command: each is sugar over a
/// configuration key.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NodeArgs {
    /// The configuration file (default: the embedded default, see
    /// `omnirelay config default`).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The data directory (key `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Serve /metrics, the health checks and, for `serve`, the role's RPC
    /// and gRPC services on HOST:PORT, one port for all (key
    /// `server.listen`; port 0 picks a free one, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Log lines as `text` or `json` (key `telemetry.log_format`).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,
}

impl NodeArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        if let Some(dir) = &self.data_dir {
            out.push(Override::new(
                "--data-dir",
                "data_dir",
                dir.display().to_string(),
            ));
        }
        if let Some(listen) = &self.listen {
            out.push(Override::new("--listen", "server.listen", listen.clone()));
        }
        if let Some(format) = &self.log_format {
            out.push(Override::new(
                "--log-format",
                "telemetry.log_format",
                format.clone(),
            ));
        }
        out
    }

    /// Loads and validates the configuration, printing every problem.
    pub(crate) fn load(&self) -> anyhow::Result<ValidConfig> {
        self.load_with(Vec::new())
    }

    /// As [`NodeArgs::load`], with a command's own flags as overrides.
    pub(crate) fn load_with(&self, extra: Vec<Override>) -> anyhow::Result<ValidConfig> {
        let default = default_toml();
        let source = match &self.config {
            Some(path) => Source::File(path),
            None => Source::Text {
                text: &default,
                name: "the embedded default configuration",
            },
        };
        let mut overrides = self.overrides();
        overrides.extend(extra);
        check(source, &overrides).map_err(|errors| {
            // A file that does not parse at all is the one problem.
            match errors.0.as_slice() {
                [one] if one.path.is_empty() => anyhow::anyhow!("{one}"),
                _ => anyhow::anyhow!("invalid configuration:\n{errors}"),
            }
        })
    }
}

/// Loads and checks a configuration: parsing, validation against the
/// discovered sink types, the `[services.NAME]` tables and the log filter,
/// with every problem of every step reported at once (what a step finds
/// under a key an earlier step found wrong is left out: the key is at its
/// default there).
pub(crate) fn check(
    source: Source<'_>,
    overrides: &[Override],
) -> Result<ValidConfig, config::ConfigErrors> {
    let (loaded, mut errors) = config::load_lenient(source, &config::process_env(), overrides);
    let Some(loaded) = loaded else {
        return Err(config::ConfigErrors(errors));
    };
    let wrong: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    let mut later = Vec::new();
    let valid = match loaded.validate(
        &SinkRegistry::discovered(),
        ResourceLeaseCodec.latest_version(),
    ) {
        Ok(valid) => Some(valid),
        Err(found) => {
            later.extend(found.0);
            None
        }
    };
    later.extend(check_services(&loaded));
    // The filter syntax is the subscriber's, so it is checked here.
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&loaded.config.telemetry.log_level) {
        later.push(config::ConfigError::new(
            loaded.origin("telemetry.log_level"),
            "telemetry.log_level",
            format!("not a log filter ({err})"),
        ));
    }
    let reported = |path: &str| {
        wrong.iter().any(|w| {
            path == w
                || path
                    .strip_prefix(w.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    };
    errors.extend(later.into_iter().filter(|e| !reported(&e.path)));
    match valid {
        Some(valid) if errors.is_empty() => Ok(valid),
        _ => Err(config::ConfigErrors(errors)),
    }
}

/// The services' embedded default configuration: the framework's (one
/// stream, the durable log, the JSON-lines export) plus the SQLite sink at
/// `DIR/replication.db`, and the services' tables.
pub(crate) fn default_toml() -> String {
    format!(
        "{}{}{}{}{}{}",
        config::DEFAULT_TOML,
        omnirelay_replication_sqlite::DEFAULT_SINK_TOML,
        omnirelay_dispatcher::settings::DEFAULT_TOML,
        omnirelay_dispatcher::settings::STANDBY_DEFAULT_TOML,
        omnirelay_controlplane::settings::DEFAULT_TOML,
        omnirelay_controlplane::settings::MESH_DEFAULT_TOML
    )
}

/// The services this binary has, by their `[services.NAME]` table.
const SERVICES: [&str; 4] = ["controlplane", "dispatcher", "mesh", "standby"];

/// Checks every `[services.NAME]` table: known names, valid settings.
fn check_services(loaded: &config::Loaded) -> Vec<config::ConfigError> {
    let mut problems = Vec::new();
    for (name, table) in &loaded.config.services {
        let key = format!("services.{name}");
        let checked = match name.as_str() {
            "dispatcher" | "controlplane" | "mesh" | "standby" => {
                let table = serde_json::Value::Object(table.clone().into_iter().collect());
                let table = Some(&table);
                let checked = match name.as_str() {
                    "dispatcher" => omnirelay_dispatcher::settings::parse(table).map(|_| ()),
                    "standby" => omnirelay_dispatcher::settings::parse_standby(table).map(|_| ()),
                    "mesh" => omnirelay_controlplane::settings::parse_mesh(table).map(|_| ()),
                    _ => omnirelay_controlplane::settings::parse(table).map(|_| ()),
                };
                checked.map_err(|e| {
                    let path = if e.path.is_empty() {
                        key.clone()
                    } else {
                        format!("{key}.{}", e.path)
                    };
                    (path, e.message)
                })
            }
            _ => Err((
                key.clone(),
                format!("no such service (known: {})", SERVICES.join(", ")),
            )),
        };
        if let Err((path, message)) = checked {
            problems.push(config::ConfigError::new(
                loaded.origin(&path),
                path,
                message,
            ));
        }
    }
    problems
}

static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Locks the node's data directory (creating it) for as long as the
/// returned file is held: a second node on the same directory fails here,
/// before it listens, instead of once a stream's log refuses it.
pub(crate) fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "the data directory {} is a file, not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join("node.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the data directory {} is in use by another omnirelay node (give each node its own --data-dir)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A message for the operator on stderr: a plain line, or with
/// `--log-format json` a JSON log event, so that every line of stderr
/// parses as JSON.
pub(crate) fn say(warning: bool, message: &str) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        if warning {
            tracing::warn!(target: "omnirelay", "{message}");
        } else {
            tracing::info!(target: "omnirelay", "{message}");
        }
    } else {
        let _ = writeln!(io::stderr(), "{message}");
    }
}

/// Installs the log subscriber: `RUST_LOG`, else the configured level; JSON
/// or text; colour only on a terminal.
pub(crate) fn install_logging(format: LogFormatConfig, level: &str) {
    JSON_LOGS.store(format == LogFormatConfig::Json, Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr);
    let _ = match format {
        LogFormatConfig::Json => builder.json().with_current_span(false).try_init(),
        LogFormatConfig::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
    };
}

/// Standard error for log lines, where a failed write is dropped: a node
/// whose stderr went away (its reader exited) keeps running instead of
/// failing every request that logs.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Installs the Prometheus recorder (histograms as `_bucket` series).
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    use omnirelay_replication::telemetry as core;
    use omnirelay_resourcelease::telemetry as lease;
    let mut builder = PrometheusBuilder::new();
    for name in core::SECONDS_HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), core::SECONDS_BUCKETS)?;
    }
    builder = builder.set_buckets_for_metric(
        Matcher::Full(lease::REPLICATION_LAG_MS.to_owned()),
        lease::LAG_MS_BUCKETS,
    )?;
    // The reference's other histograms, as its dashboard queries them
    // (`_bucket`), with the buckets its exporter gave them.
    for name in [
        lease::PENDING_ITEMS,
        lease::ACTIVE_LEASES,
        omnirelay_dispatcher::health::metrics_names::DURATION_MS,
    ] {
        builder = builder.set_buckets_for_metric(
            Matcher::Full(name.to_owned()),
            lease::REFERENCE_HISTOGRAM_BUCKETS,
        )?;
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    core::describe();
    lease::describe();
    omnirelay_replication_grpc::telemetry::describe();
    omnirelay_dispatcher::describe();
    Ok(handle)
}

/// The node's one listener: HTTP/1.1 and HTTP/2 (cleartext, or TLS from
/// `server.tls`) on one port, serving `GET /metrics`, `/healthz`,
/// `/readyz` and the node's gRPC services.
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    health: Arc<OnceLock<HealthCheck>>,
    task: tokio::task::JoinHandle<()>,
    address: std::net::SocketAddr,
    scheme: &'static str,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .field("scheme", &self.scheme)
            .field("ready", &self.health.get().is_some())
            .finish_non_exhaustive()
    }
}

/// What a node's probes ask once it is ready: why it is broken for good,
/// if it is.
type HealthCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// A probe's answer: `200 ok`, or `503` with what is wrong.
fn probe_answer(failure: Option<String>) -> (StatusCode, String) {
    match failure {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// A health check for a node with `replicator`: the logs that stopped for
/// good, which only a restart recovers from.
pub(crate) fn replication_health<E: omnirelay_replication::ReplicationEvent>(
    replicator: Arc<omnirelay_replication::DurableReplicator<E>>,
) -> impl Fn() -> Option<String> + Send + Sync + 'static {
    move || {
        let stopped = replicator.stopped_streams();
        (!stopped.is_empty()).then(|| {
            stopped
                .iter()
                .map(|(_, error)| error.message().to_owned())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// A bound listener, before it serves: see [`Bound::serve`].
#[derive(Debug)]
pub(crate) struct Bound {
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    token: Option<String>,
    stop: watch::Sender<bool>,
}

impl Bound {
    /// Binds `listen` (TLS when configured; the files are read now).
    pub(crate) async fn bind(listen: &str, valid: &ValidConfig) -> anyhow::Result<Self> {
        let tls = match &valid.tls {
            Some((cert, key)) => Some(crate::listener::server_config(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        // The first line on stderr, before anything the services log while
        // they start: connections queue on the bound socket until serving.
        let scheme = if tls.is_some() { "https" } else { "http" };
        say(
            false,
            &format!("listening on {scheme}://{}", listener.local_addr()?),
        );
        Ok(Self {
            listener,
            tls,
            token: valid.token.clone(),
            stop: watch::Sender::new(false),
        })
    }

    /// The URL the server will answer on.
    pub(crate) fn url(&self) -> anyhow::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.listener.local_addr()?))
    }

    /// Turns true when the server begins to stop: services with
    /// long-lived streams end them then.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Serves until [`Server::stop`]; `/readyz` answers 503 until
    /// [`Server::set_ready`].
    pub(crate) fn serve(
        self,
        metrics: PrometheusHandle,
        grpc: Option<tonic::service::Routes>,
        http: Option<Router>,
    ) -> anyhow::Result<Server> {
        let token = self.token.clone();
        let address = self.listener.local_addr()?;
        let upkeep = metrics.clone();
        let health: Arc<OnceLock<HealthCheck>> = Arc::default();
        let (live, ready) = (health.clone(), health.clone());
        let mut app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move { metrics.render() }
                }),
            )
            // Alive until something only a restart mends is reported.
            .route(
                "/healthz",
                get(move || {
                    let failure = live.get().and_then(|check| check());
                    async move { probe_answer(failure) }
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let failure = match ready.get() {
                        Some(check) => check(),
                        None => Some("starting".to_owned()),
                    };
                    async move { probe_answer(failure) }
                }),
            );
        // Everything else: gRPC calls (a gRPC content type) to the gRPC
        // services, the rest to the service's HTTP router (behind the
        // token, when one is set), or a plain 404.
        let grpc = grpc.map(tonic::service::Routes::into_axum_router);
        let token = token.map(Arc::<str>::from);
        app = app.fallback(move |request: axum::extract::Request| {
            let (grpc, http, token) = (grpc.clone(), http.clone(), token.clone());
            async move {
                use tower::ServiceExt as _;
                let is_grpc = request
                    .headers()
                    .get(axum::http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let routed = match (is_grpc, grpc, http) {
                    (true, Some(grpc), _) => grpc.oneshot(request).await,
                    (false, _, Some(http)) => {
                        if !bearer_matches(request.headers(), token.as_deref()) {
                            return (
                                StatusCode::UNAUTHORIZED,
                                [("www-authenticate", "Bearer")],
                                "a valid bearer token is required\n",
                            )
                                .into_response();
                        }
                        http.oneshot(request).await
                    }
                    _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
                };
                match routed {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        });
        let mut stopped = self.stop.subscribe();
        let mut done = self.stop.subscribe();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listener = self.listener;
        let tls = self.tls;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let serve = async move {
                match tls {
                    Some(config) => match crate::listener::TlsListener::new(listener, config) {
                        Ok(tls) => {
                            axum::serve(tls, app)
                                .with_graceful_shutdown(shutdown)
                                .into_future()
                                .await
                        }
                        Err(err) => Err(err),
                    },
                    None => {
                        use axum::serve::ListenerExt as _;
                        // Replies (acknowledgements) go out at once, not
                        // after the peer's delayed ACK.
                        let listener = listener.tap_io(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                        axum::serve(listener, app)
                            .with_graceful_shutdown(shutdown)
                            .into_future()
                            .await
                    }
                }
            };
            // Histogram upkeep, while serving.
            let upkeep = async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => upkeep.run_upkeep(),
                        _ = done.wait_for(|stop| *stop) => return,
                    }
                }
            };
            let (served, ()) = tokio::join!(serve, upkeep);
            if let Err(err) = served {
                let _ = writeln!(io::stderr(), "omnirelay: the listener failed: {err}");
            }
        });
        Ok(Server {
            stop: self.stop,
            health,
            task,
            address,
            scheme,
        })
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` (always, with
/// no token set).
fn bearer_matches(headers: &axum::http::HeaderMap, token: Option<&str>) -> bool {
    token.is_none_or(|token| {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        omnirelay_replication_grpc::bearer_matches(given, token)
    })
}

impl Server {
    /// Binds `listen` and serves the HTTP endpoints only.
    pub(crate) async fn start(
        listen: &str,
        valid: &ValidConfig,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Self> {
        Bound::bind(listen, valid).await?.serve(metrics, None, None)
    }

    /// The URL the server answers on.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// From now on `/readyz` answers 200 (until then, 503 `starting`)
    /// while `check` finds nothing wrong; what it finds (something only a
    /// restart mends) makes both `/readyz` and `/healthz` answer 503 with
    /// it. Only the first call counts.
    pub(crate) fn set_ready(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.health.set(Box::new(check));
    }

    /// Stops serving and waits for in-flight requests.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}
