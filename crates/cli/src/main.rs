//! `omnirelay`: the command-line entry point. Thin wiring only: arguments
//! are parsed here and the work is done by the library crates.

mod config_cmd;
mod deadletter;
mod demo;
mod http_client;
mod listener;
mod log;
mod node;
mod publish;
mod queue;
mod schema;
mod serve;
mod status;

/// A faster allocator for a workload of many small, short-lived objects
/// allocated and freed on different threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use omnirelay_replication::Format;
// Sink types linked into the binary: each registers itself (`inventory`),
// so configuration alone enables it.
use omnirelay_replication_grpc as _;
use omnirelay_replication_nats as _;
use omnirelay_replication_objectstore as _;
use omnirelay_replication_sqlite as _;

/// OmniRelay replication: run replicating nodes (dispatcher, standby,
/// receiver, control plane), publish events, read, check and replay durable
/// logs, convert events between schema forms, and benchmark.
#[derive(Debug, Parser)]
#[command(name = "omnirelay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish events read as JSON lines on stdin; print each assigned
    /// sequence once the event is durable. Lines that arrive together (up
    /// to 512) are appended together, one record write and one sync for
    /// all; a line is never held back waiting for more. Without --config
    /// it uses the embedded default: one stream, the log under DIR/log
    /// with the fsync policy, and a JSON-lines export under DIR/export.
    Publish {
        #[command(flatten)]
        node: node::NodeArgs,
        /// The stream to publish to.
        #[arg(long, default_value = "default")]
        stream: String,
    },
    /// Run a node until SIGINT or SIGTERM: its HTTP endpoints (/metrics,
    /// /healthz, /readyz) and gRPC services on the one --listen address.
    Serve {
        #[command(flatten)]
        node: node::NodeArgs,
        /// What the node does.
        #[arg(long, value_enum)]
        role: serve::Role,
        /// The stream a receiver appends to, or a dispatcher writes.
        #[arg(long, default_value = "default")]
        stream: String,
        /// A standby's primary: its URL, followed over gRPC `Subscribe` (the
        /// token is `[server] token`), or the bus it publishes to,
        /// `nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[?stream=NAME&subject=TEMPLATE&durable=NAME&reorder_wait_ms=N]`
        /// (the primary's NATS sink must write protobuf, version 2). Key
        /// `services.standby.follow`: set there (or in the environment), a
        /// password stays out of the process list.
        #[arg(long, value_name = "URL")]
        follow: Option<String>,
        /// The dispatcher's RPC namespace (key
        /// `services.dispatcher.namespace`, default `resourcelease`).
        #[arg(long, value_name = "NAME")]
        namespace: Option<String>,
        /// The control plane's hosts: node URLs, comma-separated (added to
        /// `services.controlplane.hosts`).
        #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
        hosts: Vec<String>,
        /// Also stop when standard input ends (a parent such as `omnirelay
        /// demo` holds it open while the node should run).
        #[arg(long, hide = true)]
        stop_on_stdin_eof: bool,
        /// The schema version every sink writes, over each sink's own
        /// `write_version` (1 is the reference format; roll a mesh forward
        /// by restarting its nodes with 2).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=2))]
        write_version: Option<u16>,
        /// The dispatcher a seeder or worker calls: its URL (key
        /// `services.mesh.dispatcher`), in the namespace of `--namespace`.
        #[arg(long, value_name = "URL")]
        dispatcher: Option<String>,
        /// A worker's peer id (key `services.mesh.peer`; default
        /// `mesh-worker-<host name>`).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
    },
    /// The mesh demo: a dispatcher, a standby following it and the control
    /// plane (dashboard) as nodes on loopback, with a seeder and two workers
    /// running the reference's lakehouse-catalog scenario; a status line
    /// every 5 s and a summary when it stops (Ctrl-C or --duration).
    Demo(demo::DemoArgs),
    /// Show the hosts, streams and sinks a node (or the control plane)
    /// knows: replication state and lag, as a table.
    Status {
        #[command(flatten)]
        node: RemoteNode,
        /// Print the status document as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Promote a standby: it stops following and serves as the dispatcher
    /// with the queue its log holds. Refused while its primary still
    /// serves it, while it is behind the primary's stream, or while it
    /// has not learned how far that stream goes since it started (after
    /// waiting `--wait` seconds for that to pass), unless forced.
    Promote {
        #[command(flatten)]
        node: RemoteNode,
        /// Promote even while the primary still serves, or with events of
        /// the primary's stream not applied or not known (they are lost to
        /// it).
        #[arg(long)]
        force: bool,
        /// How long the standby waits for the promotion to become safe
        /// (its primary noticed gone, its lag caught up).
        #[arg(long, value_name = "SECONDS", default_value_t = 15)]
        wait: u64,
        /// Print the promoted node's status document as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// A dispatcher's dead-lettered items: list them, put them back in its
    /// queue once their cause is fixed, or discard them.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Print the default configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read, follow and check a durable log (read-only; works beside a
    /// running writer).
    #[command(subcommand)]
    Log(LogCommand),
    /// The events sinks refused for good: list them, and once the sink is
    /// fixed, redrive them from the log.
    #[command(subcommand)]
    Deadletter(DeadletterCommand),
    /// A running node's sinks.
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Convert and validate resource-lease replication events.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the side-by-side benchmarks against their raw baselines.
    Bench(BenchArgs),
    /// The raw gRPC peer of the `grpc-stream` benchmark (started by it).
    #[command(hide = true)]
    BenchPeer {
        /// HOST:PORT to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
}

/// A running node to talk to over HTTP.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoteNode {
    /// The node's URL (http:// or https://).
    #[arg(long, value_name = "URL", value_parser = node_url)]
    pub(crate) url: String,
    /// The bearer token the node wants.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// For an https:// URL: the PEM certificate of the authority that
    /// signed the node's certificate.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum SinkCommand {
    /// Make the node's sinks that wait out a retry's backoff try again now.
    ///
    /// For when what they failed on is fixed (a backend back up, a token
    /// corrected): instead of after up to the retry policy's longest delay
    /// (30 s by default). Prints each sink it woke; a sink that is not
    /// waiting is left alone. Against the control plane, it reaches every
    /// host the control plane watches too.
    Retry {
        #[command(flatten)]
        node: RemoteNode,
        /// Only the sinks of this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only the sink of this name.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List the items a dispatcher (or a standby's projection)
    /// dead-lettered: out of attempts, or failed without requeue.
    DeadLetters {
        #[command(flatten)]
        node: RemoteNode,
        /// Print the node's JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Skip the first N items (oldest first).
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
        /// List at most N items (default: all).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Put dead-lettered items back at the end of a dispatcher's queue with
    /// a fresh set of attempts (each a `Requeued` event in its log). All or
    /// nothing: an id that is not dead-lettered, or too little room in the
    /// queue, redrives none.
    Redrive {
        #[command(flatten)]
        node: RemoteNode,
        #[command(flatten)]
        change: DeadLetterChange,
    },
    /// Discard dead-lettered items for good (`DeadLetterPurged` events in
    /// the dispatcher's log, which keeps them for audit). All or nothing:
    /// an id that is not dead-lettered purges none.
    Purge {
        #[command(flatten)]
        node: RemoteNode,
        #[command(flatten)]
        change: DeadLetterChange,
    },
}

/// The dead-lettered items a redrive or a purge names.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct DeadLetterChoice {
    /// Every dead-lettered item, oldest first.
    #[arg(long)]
    all: bool,
    /// The item with this sequence id (repeat for more).
    #[arg(long = "id", value_name = "SEQUENCE-ID")]
    id: Vec<i64>,
}

impl From<DeadLetterChoice> for queue::Which {
    fn from(choice: DeadLetterChoice) -> Self {
        if choice.all {
            Self::All
        } else {
            Self::Items(choice.id)
        }
    }
}

/// A redrive or a purge: the items, and who asks.
#[derive(Debug, clap::Args)]
struct DeadLetterChange {
    #[command(flatten)]
    which: DeadLetterChoice,
    /// The peer id its events record as the one who asked (e.g. your
    /// name), for the audit trail; without it they name no peer.
    #[arg(long, value_name = "NAME")]
    caller: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the complete, commented default configuration.
    Default,
    /// Check a configuration file (`-` reads standard input) under the
    /// environment's OMNIRELAY_ overrides; exit non-zero naming the key
    /// path of every problem.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print a stream's events in order as JSON lines.
    Replay {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The stream.
        #[arg(long, default_value = "default")]
        stream: String,
        /// The first sequence to print.
        #[arg(long, value_name = "SEQ", default_value_t = 1, value_parser = first_sequence)]
        from: u64,
        /// The last sequence to print (default: the log's last).
        #[arg(long, value_name = "SEQ", value_parser = first_sequence)]
        to: Option<u64>,
        /// The schema version to write (1 is the reference format).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
        write_version: u16,
        /// Records lost to damage in sealed segments (`log verify` names
        /// them) are reported on stderr and read past, to rescue every
        /// readable event; the exit status is still 1. Without it, the
        /// replay stops at the first damaged record.
        #[arg(long)]
        past_damage: bool,
    },
    /// Check framing, checksums and sequence continuity of every stream;
    /// exit non-zero if anything is wrong.
    Verify {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Describe each stream: segments, sequences, recovery, sink
    /// checkpoints and dead letters.
    Inspect {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Print the newest events of a stream, and with --follow keep printing
    /// new ones: from a local data directory, or from a running node
    /// (--url, over gRPC Subscribe).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["data_dir", "url"])))]
    Tail {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// A running node's URL (http:// or https://).
        #[arg(long, value_name = "URL", value_parser = node_url)]
        url: Option<String>,
        /// The bearer token the node wants (with --url).
        #[arg(long, value_name = "TOKEN", requires = "url")]
        token: Option<String>,
        /// The PEM certificate of the authority that signed the node's
        /// certificate (with an https:// --url; default: the system's).
        #[arg(long, value_name = "FILE", requires = "url")]
        ca_file: Option<PathBuf>,
        /// The stream.
        #[arg(long, default_value = "default")]
        stream: String,
        /// How many of the newest events to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Start at this sequence instead of the newest events.
        #[arg(long, value_name = "SEQ", value_parser = first_sequence)]
        from: Option<u64>,
        /// Keep printing events as they are written (with --url, across
        /// restarts of the node: it follows on from the next sequence once
        /// the node is back).
        #[arg(long)]
        follow: bool,
        /// The schema version to write (1 is the reference format).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
        write_version: u16,
        /// Records lost to damage in sealed segments are reported on
        /// stderr and read past (a local log only; the exit status is
        /// still 1). Without it, the tail stops at the first damaged
        /// record.
        #[arg(long, conflicts_with = "url")]
        past_damage: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeadletterCommand {
    /// List the dead letters of a data directory (read-only; works beside
    /// a running node): a table, or the letters as JSON lines.
    List {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
        /// One letter per line as JSON (with its payload, base64).
        #[arg(long)]
        json: bool,
    },
    /// Apply a sink's dead letters to it again, read from the log in
    /// order, and archive them (`<sink>.redriven-<ticks>.jsonl`). The node
    /// must be stopped: the log is held meanwhile. The sink is built from
    /// the configuration, as the node builds it. Letters that cannot be
    /// redriven (the log no longer holds the event; the sink went on past
    /// it and keeps only a high-water mark) stay, and the exit status is 1.
    Redrive {
        /// The configuration file (default: the embedded default).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory (key `data_dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The sink.
        #[arg(long)]
        sink: String,
        /// The stream.
        #[arg(long, default_value = "default")]
        stream: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Convert events read one per line on stdin, writing one per line on
    /// stdout. Protobuf lines are the standard base64 of the message bytes.
    /// Bad lines are reported on stderr as `line N: reason`; the exit status
    /// is 1 if any line was invalid.
    Convert {
        /// The input format.
        #[arg(long, value_enum)]
        from: FormatArg,
        /// The output format.
        #[arg(long, value_enum)]
        to: FormatArg,
        /// The schema version to write: 1 is the reference format; events
        /// version 1 cannot hold are skipped and reported.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
        write_version: u16,
    },
    /// Validate JSON events read one per line on stdin, printing
    /// `line N: reason` for each invalid line; the exit status is 1 if any
    /// line was invalid. Also `schema validate`.
    #[command(visible_alias = "validate")]
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Proto,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Json => Format::Json,
            FormatArg::Proto => Format::Protobuf,
        }
    }
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Scenarios to run (all when none is named).
    names: Vec<String>,
    /// Fewer, shorter rounds.
    #[arg(long)]
    quick: bool,
    /// Also write the results as a JSON array of records to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also draw durable-publish throughput against batch size, ours beside
    /// the raw baseline, as an SVG chart in FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running commands install logging from their configuration.
    if !matches!(cli.command, Command::Publish { .. } | Command::Serve { .. }) {
        node::install_logging(omnirelay_replication::config::LogFormatConfig::Text, "warn");
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(io::stderr(), "omnirelay: {}", with_causes(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes, each said once: a cause whose text an outer
/// error already carries (errors that show their source, and return it)
/// is not repeated.
fn with_causes(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// `n` and `noun`, plural unless `n` is 1: "1 event", "3 events".
pub(crate) fn counted<N: std::fmt::Display + PartialEq + From<u8>>(n: N, noun: &str) -> String {
    if n == N::from(1) {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `rows` under `header`, in columns as wide as their widest cell (in
/// characters), two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |column: usize| {
        rows.iter()
            .filter_map(|r| r.get(column))
            .map(|cell| cell.chars().count())
            .chain([header[column].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `text` as a whole number, or why not (`of`: what it counts).
pub(crate) fn whole_number(text: &str, of: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number of {of}"))
}

/// A `--from SEQ`: sequences start at 1.
fn first_sequence(text: &str) -> Result<u64, String> {
    match whole_number(text, "sequences")? {
        0 => Err("sequences start at 1".to_owned()),
        sequence => Ok(sequence),
    }
}

/// A node's `--url`: `http://` or `https://` with a host (a bare
/// `host:port` is refused, naming the URL it probably meant), without a
/// trailing `/`.
fn node_url(url: &str) -> Result<String, String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        let bare = url.split("://").last().unwrap_or(url);
        return Err(format!(
            "not an http:// or https:// URL (a node's address is http://{bare}, or https:// with TLS)"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL names no host".to_owned());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub(crate) fn exit_status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Publish { node, stream } => {
            let runtime = runtime()?;
            let outcome = runtime.block_on(publish::run(&node, &stream));
            // Stopped by an error, its stdin reader may be waiting for a
            // line that never comes: not waited for.
            runtime.shutdown_background();
            outcome
        }
        Command::Config(ConfigCommand::Default) => config_cmd::default(),
        Command::Config(ConfigCommand::Check { file }) => config_cmd::check(&file),
        Command::Log(LogCommand::Replay {
            data_dir,
            stream,
            from,
            to,
            write_version,
            past_damage,
        }) => log::replay(&data_dir, &stream, from, to, write_version, past_damage),
        Command::Log(LogCommand::Verify { data_dir }) => log::verify(&data_dir),
        Command::Log(LogCommand::Inspect { data_dir, stream }) => {
            log::inspect(&data_dir, stream.as_deref())
        }
        Command::Deadletter(DeadletterCommand::List {
            data_dir,
            stream,
            sink,
            json,
        }) => deadletter::list(&data_dir, stream.as_deref(), sink.as_deref(), json),
        Command::Deadletter(DeadletterCommand::Redrive {
            config,
            data_dir,
            sink,
            stream,
        }) => {
            let node = node::NodeArgs {
                config,
                data_dir,
                listen: None,
                log_format: None,
            };
            runtime()?.block_on(deadletter::redrive_sink(&node, &sink, &stream))
        }
        Command::Serve {
            node,
            role,
            stream,
            follow,
            namespace,
            hosts,
            stop_on_stdin_eof,
            write_version,
            dispatcher,
            peer,
        } => runtime()?.block_on(serve::run(
            &node,
            serve::ServeOptions {
                role,
                stream: &stream,
                follow: follow.as_deref(),
                namespace: namespace.as_deref(),
                hosts: &hosts,
                stop_on_stdin_eof,
                write_version,
                dispatcher: dispatcher.as_deref(),
                peer: peer.as_deref(),
            },
        )),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Status { node, json } => runtime()?.block_on(status::run(&node, json)),
        Command::Queue(QueueCommand::DeadLetters {
            node,
            json,
            offset,
            limit,
        }) => runtime()?.block_on(queue::dead_letters(&node, json, offset, limit)),
        Command::Queue(QueueCommand::Redrive { node, change }) => {
            let DeadLetterChange { which, caller } = change;
            runtime()?.block_on(queue::change(
                &node,
                queue::Change::Redrive,
                which.into(),
                caller,
            ))
        }
        Command::Queue(QueueCommand::Purge { node, change }) => {
            let DeadLetterChange { which, caller } = change;
            runtime()?.block_on(queue::change(
                &node,
                queue::Change::Purge,
                which.into(),
                caller,
            ))
        }
        Command::Promote {
            node,
            force,
            wait,
            json,
        } => runtime()?.block_on(promote(&node, force, wait, json)),
        Command::Sink(SinkCommand::Retry { node, stream, sink }) => {
            runtime()?.block_on(retry_sinks(&node, stream.as_deref(), sink.as_deref()))
        }
        Command::Log(LogCommand::Tail {
            data_dir,
            url,
            token,
            ca_file,
            stream,
            lines,
            from,
            follow,
            write_version,
            past_damage,
        }) => {
            let source = match (data_dir, url) {
                (Some(dir), _) => log::TailSource::Local(dir),
                (None, Some(url)) => {
                    let mut connection = omnirelay_replication_grpc::Connection::new(url);
                    connection.token = token;
                    connection.ca_pem = match ca_file {
                        Some(file) => Some(
                            std::fs::read(&file)
                                .with_context(|| format!("cannot read {}", file.display()))?,
                        ),
                        None => None,
                    };
                    log::TailSource::Remote(connection)
                }
                (None, None) => anyhow::bail!("log tail needs --data-dir DIR or --url URL"),
            };
            runtime()?.block_on(log::tail(
                &source,
                &stream,
                lines,
                from,
                follow,
                write_version,
                past_damage,
            ))
        }
        Command::Schema(SchemaCommand::Convert {
            from,
            to,
            write_version,
        }) => schema::convert(from, to, write_version),
        Command::Schema(SchemaCommand::Check) => schema::check(),
        Command::Bench(args) => bench(args),
        Command::BenchPeer { listen } => {
            omnirelay_bench::serve_raw_peer(&listen)
                .with_context(|| format!("bench peer on {listen}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn promote(
    node: &RemoteNode,
    force: bool,
    wait: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = if force {
        "/standby/promote?force=true".to_owned()
    } else {
        format!("/standby/promote?wait_ms={}", wait.saturating_mul(1000))
    };
    let (target, answer) = node
        .call(
            "POST",
            &path,
            None,
            std::time::Duration::from_secs(wait.saturating_add(60)),
        )
        .await?;
    if answer.status == 404 && answer.body.trim().is_empty() {
        anyhow::bail!(
            "{target} answered 404: is {} a standby? (`omnirelay status --url` shows a node's role)",
            node.url
        );
    }
    if answer.status != 200 {
        anyhow::bail!(
            "{target} answered {}: {}",
            answer.status,
            answer.body.trim_end()
        );
    }
    let body = answer.body.trim_end();
    let said = match serde_json::from_str(body) {
        Ok(status) if !json => promoted(&node.url, &status),
        _ => body.to_owned(),
    };
    writeln!(io::stdout().lock(), "{said}")?;
    Ok(ExitCode::SUCCESS)
}

/// What a promotion left, for an operator: the queue it serves and how
/// much of the primary's stream its log holds.
fn promoted(url: &str, status: &serde_json::Value) -> String {
    let number = |key: &str| status[key].as_u64().unwrap_or(0);
    let applied = number("appliedSequence");
    let mut said = format!(
        "promoted {url}: it serves as the dispatcher now, with {} and {}; its log holds the primary's stream through sequence {applied}",
        counted(number("pendingCount"), "pending item"),
        counted(number("activeLeaseCount"), "leased item"),
    );
    match status["primaryHead"].as_u64() {
        Some(head) if head > applied => said.push_str(&format!(
            " ({} after it, through sequence {head} as last reported, never reached it: lost to the new dispatcher)",
            counted(head - applied, "event")
        )),
        Some(_) => {}
        None => said.push_str(" (how far the primary's stream went was never learned)"),
    }
    said
}

/// `omnirelay sink retry`: `POST /sinks/retry` on the node.
async fn retry_sinks(
    node: &RemoteNode,
    stream: Option<&str>,
    sink: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let query: Vec<String> = [("stream", stream), ("sink", sink)]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", query_value(value?))))
        .collect();
    let mut path = serve::RETRY_PATH.to_owned();
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let (target, answer) = node
        .call("POST", &path, None, std::time::Duration::from_secs(30))
        .await?;
    if answer.status != 200 {
        anyhow::bail!(
            "{target} answered {}: {}",
            answer.status,
            answer.body.trim_end()
        );
    }
    let document: serde_json::Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("{target} answered what is not JSON"))?;
    let retried = document["retried"].as_array().cloned().unwrap_or_default();
    // Only the control plane passes it on to hosts, and says which it
    // could not ask.
    let unreachable = document["unreachable"].as_array();
    let mut out = io::stdout().lock();
    if retried.is_empty() {
        let hosts = if unreachable.is_some() {
            " or of the hosts it watches"
        } else {
            ""
        };
        writeln!(out, "no sink of {}{hosts} was waiting to retry", node.url)?;
    }
    for entry in retried {
        let field = |key: &str| entry[key].as_str().unwrap_or("?").to_owned();
        let on = entry["host"]
            .as_str()
            .map(|host| format!(" on {host}"))
            .unwrap_or_default();
        writeln!(
            out,
            "retrying now: sink {} of stream {}{on}",
            field("sink"),
            field("stream")
        )?;
    }
    let unreachable = unreachable.cloned().unwrap_or_default();
    for entry in &unreachable {
        writeln!(
            io::stderr(),
            "could not ask {}: {}",
            entry["host"].as_str().unwrap_or("?"),
            entry["error"].as_str().unwrap_or("?")
        )?;
    }
    Ok(exit_status(unreachable.is_empty()))
}

/// `value` percent-encoded for a query string (all but unreserved bytes).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The PEM file of `--ca-file`, if given.
pub(crate) fn read_ca(file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    file.map(|file| std::fs::read(file).with_context(|| format!("cannot read {}", file.display())))
        .transpose()
}

/// Refuses, before a run of minutes, a `--json` or `--svg` file that could
/// not be written after it.
fn writable_output(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a directory; give a file", path.display());
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        anyhow::bail!(
            "{flag} {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    for (flag, path) in [("--json", &args.json), ("--svg", &args.svg)] {
        if let Some(path) = path {
            writable_output(flag, path)?;
        }
    }
    let run = omnirelay_bench::run(&omnirelay_bench::BenchOptions {
        names: args.names,
        quick: args.quick,
        progress: io::stderr().is_terminal(),
        peer: std::env::current_exe().ok(),
    })?;
    for (name, why) in &run.skipped {
        node::say(true, &format!("skipped {name}: {why}"));
    }
    let records = run.records;
    let mut out = io::stdout().lock();
    out.write_all(omnirelay_bench::render_table(&records).as_bytes())?;
    if let Some(path) = args.json {
        let json = serde_json::to_vec_pretty(&records)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "results written to {}", path.display())?;
    }
    if let Some(path) = args.svg {
        match omnirelay_bench::render_batch_chart(&records) {
            Some(svg) => {
                std::fs::write(&path, svg)
                    .with_context(|| format!("writing {}", path.display()))?;
                writeln!(out, "chart written to {}", path.display())?;
            }
            None => node::say(
                true,
                "no chart: it needs at least two of the durable-publish-N scenarios",
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_says_what_the_new_dispatcher_serves_and_what_it_lacks() {
        let status = |head: serde_json::Value| {
            serde_json::json!({"role": "dispatcher", "appliedSequence": 7, "primaryHead": head,
                "pendingCount": 2, "activeLeaseCount": 1, "lagEvents": 0})
        };
        let said = promoted("http://s", &status(7.into()));
        assert_eq!(
            said,
            "promoted http://s: it serves as the dispatcher now, with 2 pending items and 1 \
             leased item; its log holds the primary's stream through sequence 7"
        );
        let behind = promoted("http://s", &status(9.into()));
        assert!(
            behind.ends_with(
                " (2 events after it, through sequence 9 as last reported, never reached it: \
                 lost to the new dispatcher)"
            ),
            "{behind}"
        );
        let unknown = promoted("http://s", &status(serde_json::Value::Null));
        assert!(
            unknown.ends_with(" (how far the primary's stream went was never learned)"),
            "{unknown}"
        );
    }

    #[test]
    fn a_table_lines_up_its_columns_whatever_the_cells_hold() {
        let rows = vec![
            vec!["1".to_owned(), "zürich/été".to_owned(), "last".to_owned()],
            vec!["12345".to_owned(), "r".to_owned(), String::new()],
        ];
        let out = table(&["ID", "RESOURCE", "NOTE"], &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "ID     RESOURCE    NOTE",
                "1      zürich/été  last",
                "12345  r",
            ]
        );
    }

    #[test]
    fn a_node_url_needs_its_scheme_and_a_host() {
        assert_eq!(
            node_url("http://127.0.0.1:7420/").as_deref(),
            Ok("http://127.0.0.1:7420")
        );
        assert_eq!(
            node_url("https://node-1:7420").as_deref(),
            Ok("https://node-1:7420")
        );
        let bare = node_url("127.0.0.1:7420").unwrap_err();
        assert!(bare.contains("http://127.0.0.1:7420"), "{bare}");
        let grpc = node_url("grpc://node-1:7420").unwrap_err();
        assert!(grpc.contains("http://node-1:7420"), "{grpc}");
        assert!(node_url("http://").is_err());
        assert!(node_url("http:///status").is_err());
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::other("File exists (os error 17)");
        let inner = omnirelay_replication::Error::new(
            omnirelay_replication::ErrorKind::Unavailable,
            "cannot create /x: File exists (os error 17)",
        )
        .with_source(io);
        let outer = omnirelay_replication::Error::new(inner.kind(), "cannot build sink \"obj\"")
            .with_source(inner);
        let err = anyhow::Error::new(outer).context("cannot start replication in /d");
        let text = with_causes(&err);
        assert_eq!(
            text,
            "cannot start replication in /d: unavailable: cannot build sink \"obj\": unavailable: cannot create /x: File exists (os error 17)"
        );
        // A cause nobody printed is kept.
        let err = anyhow::Error::new(std::io::Error::other("disk on fire")).context("cannot write");
        assert_eq!(with_causes(&err), "cannot write: disk on fire");
    }

    #[test]
    fn counts_name_one_thing_in_the_singular() {
        assert_eq!(counted(1_usize, "item"), "1 item");
        assert_eq!(counted(0_usize, "item"), "0 items");
        assert_eq!(
            counted(3_u64, "dead-lettered item"),
            "3 dead-lettered items"
        );
    }
}
