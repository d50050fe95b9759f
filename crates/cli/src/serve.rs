//! `omnirelay serve`: a long-running node on one listener.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use omnirelay_dispatcher::{Dispatcher, DispatcherOptions, FeedHolds, Standby};
use omnirelay_replication::config::Override;
use omnirelay_replication::node::adopt_node_name;
use omnirelay_replication::{Encoding, Format, SinkExt as _, StreamId, Timestamp, WireVersion};
use omnirelay_replication_grpc::{Connection, Receiver};
use omnirelay_replication_nats::{FollowUrl, HeldAt, NatsSource};
use omnirelay_resourcelease::telemetry::LagRecording;
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent};

use crate::node::{self, Bound, NodeArgs};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    /// The resource-lease dispatcher: the reference's HTTP RPC
    /// (`POST` with `Rpc-Procedure: resourcelease::…`), every mutation
    /// durable in its log before it answers; `Subscribe` to its log.
    Dispatcher,
    /// Follows a primary dispatcher's stream (`--follow URL`: the primary
    /// over gRPC, or `nats://…` for JetStream through the NATS source) into
    /// its own log and keeps the queue current; serves once promoted
    /// (`omnirelay promote`).
    Standby,
    /// The control plane: watches every host (`--hosts`, or
    /// `services.controlplane.hosts`) and serves one status of them all.
    Controlplane,
    /// Receives events from other nodes (the reference's `Publish` and the
    /// streaming `PublishStream`) into its own durable log and sinks, and
    /// serves `Subscribe` to its log.
    Receiver,
    /// The mesh scenario's seeder: enqueues a lakehouse-catalog operation
    /// on a dispatcher (`--dispatcher URL`) every `seed_interval_ms`, as
    /// caller `mesh-demo-host`. Keeps no log.
    Seeder,
    /// A mesh scenario worker: leases from a dispatcher (`--dispatcher
    /// URL`) as `--peer` (default `mesh-worker-<host name>`), applies each
    /// operation to its own catalog, completes it or fails a stale one
    /// without requeue. Keeps no log.
    Worker,
}

impl Role {
    /// Whether the node is a client of a dispatcher that keeps no log.
    fn is_mesh_client(self) -> bool {
        matches!(self, Self::Seeder | Self::Worker)
    }
}

/// What `omnirelay serve` was asked beyond the node's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeOptions<'a> {
    /// What the node does.
    pub(crate) role: Role,
    /// The stream a receiver appends to or a dispatcher writes.
    pub(crate) stream: &'a str,
    /// A standby's primary.
    pub(crate) follow: Option<&'a str>,
    /// The dispatcher's RPC namespace.
    pub(crate) namespace: Option<&'a str>,
    /// The control plane's hosts.
    pub(crate) hosts: &'a [String],
    /// Also stop when standard input ends.
    pub(crate) stop_on_stdin_eof: bool,
    /// The schema version every sink writes, over each sink's own.
    pub(crate) write_version: Option<u16>,
    /// The dispatcher a seeder or worker calls.
    pub(crate) dispatcher: Option<&'a str>,
    /// A worker's peer id.
    pub(crate) peer: Option<&'a str>,
}

/// Runs a node until SIGINT or SIGTERM.
pub(crate) async fn run(args: &NodeArgs, options: ServeOptions<'_>) -> anyhow::Result<ExitCode> {
    let ServeOptions {
        role,
        stream,
        follow,
        namespace,
        hosts,
        stop_on_stdin_eof,
        write_version,
        dispatcher,
        peer,
    } = options;
    if role != Role::Controlplane && !hosts.is_empty() {
        anyhow::bail!("--hosts is for --role controlplane");
    }
    if !role.is_mesh_client() && dispatcher.is_some() {
        anyhow::bail!("--dispatcher is for --role seeder and --role worker");
    }
    if role != Role::Worker && peer.is_some() {
        anyhow::bail!("--peer is for --role worker");
    }
    if role.is_mesh_client() && write_version.is_some() {
        anyhow::bail!(
            "--write-version is for nodes that replicate: a seeder or worker keeps no log"
        );
    }
    for host in hosts {
        omnirelay_controlplane::settings::check_host(host)
            .map_err(|why| anyhow::anyhow!("--hosts: {why}"))?;
    }
    if role != Role::Standby && follow.is_some() {
        anyhow::bail!("--follow is for --role standby");
    }
    let stream = StreamId::new(stream)?;
    let overrides = namespace
        .map(|ns| {
            Override::new(
                "--namespace",
                "services.dispatcher.namespace",
                ns.to_owned(),
            )
        })
        .into_iter()
        .chain(
            follow.map(|url| Override::new("--follow", "services.standby.follow", url.to_owned())),
        )
        .chain(
            dispatcher.map(|url| {
                Override::new("--dispatcher", "services.mesh.dispatcher", url.to_owned())
            }),
        )
        .chain(peer.map(|peer| Override::new("--peer", "services.mesh.peer", peer.to_owned())))
        .collect();
    let mut valid = args.load_with(overrides)?;
    if role.is_mesh_client() {
        return run_mesh_client(&valid, role, stop_on_stdin_eof).await;
    }
    // Checked by `load_with`; a standby's only.
    let standby_settings =
        omnirelay_dispatcher::settings::parse_standby(valid.services.get("standby"))
            .unwrap_or_default();
    let follow = standby_settings
        .follow
        .as_deref()
        .filter(|_| role == Role::Standby);
    if role == Role::Standby && follow.is_none() {
        anyhow::bail!(
            "a standby needs the primary to follow: --follow URL (or services.standby.follow)"
        );
    }
    if let Some(version) = write_version {
        let version = WireVersion::new(version).context("version 0 does not exist")?;
        // Every sink, and so every node this one sends to, gets `version`.
        for sink in &mut valid.sinks {
            sink.options.encoding = Encoding::new(sink.options.encoding.format, version);
        }
    }
    // A standby following the bus: checked before anything starts.
    let bus = match follow {
        Some(url) if FollowUrl::is_nats(url) => {
            let mut follow = FollowUrl::parse(url, &standby_consumer(valid.node_id.as_deref()))?;
            // What a lost connection left unacknowledged comes again soon.
            follow.options.ack_wait = std::time::Duration::from_secs(5);
            Some((FollowUrl::redacted(url), follow))
        }
        _ => None,
    };
    // Checked by `load_with`.
    let dispatcher_options = DispatcherOptions {
        stream: stream.clone(),
        ..omnirelay_dispatcher::settings::parse(valid.services.get("dispatcher"))
            .map_err(|e| anyhow::anyhow!("services.dispatcher.{}: {}", e.path, e.message))?
    };
    node::install_logging(valid.telemetry.log_format, &valid.telemetry.log_level);
    let listen = valid
        .listen
        .clone()
        .context("serve needs an address to listen on: --listen HOST:PORT (or server.listen)")?;
    let _data_dir = node::lock_data_dir(&valid.data_dir)?;
    if role == Role::Standby {
        // Its stream comes numbered by the primary's log, and a sink it
        // shares with the primary (an archive, a bus subject) holds that
        // log's records: the standby's log must not number after them.
        valid.durable.replicas.push(stream.clone());
    }
    if matches!(role, Role::Dispatcher | Role::Standby | Role::Receiver) {
        // The queue (the receiver's marks) is folded from the log: nothing
        // of it may go before its hold is taken, after the sinks start.
        valid.durable.held.push(stream.clone());
    }
    // Said once the node listens (whoever started it reads that first).
    let retention_ignored = matches!(role, Role::Dispatcher | Role::Standby)
        && dispatcher_options.checkpoint_interval.is_zero()
        && valid
            .durable
            .streams
            .iter()
            .find(|(id, _)| *id == stream)
            .map_or(valid.durable.log.retention, |(_, log)| log.retention)
            != omnirelay_replication::Retention::default();
    // A standby following its primary itself: how to reach it.
    let primary = match (role, &bus) {
        (Role::Standby, None) => {
            let mut primary = Connection::new(follow.unwrap_or_default());
            primary.token = standby_settings.token.clone().or(valid.token.clone());
            primary.ca_pem = crate::read_ca(standby_settings.ca_file.as_deref())
                .context("services.standby.ca_file")?;
            // A URL it can never reach is refused now, not retried forever.
            primary
                .channel()
                .context("--follow (services.standby.follow)")?;
            Some(primary)
        }
        _ => None,
    };
    // The control plane's settings: checked before it listens.
    let mut controlplane = match role {
        Role::Controlplane => Some(controlplane_options(&valid, hosts)?),
        _ => None,
    };
    let bound = Bound::bind(&listen, &valid).await?;
    if retention_ignored {
        tracing::warn!(
            stream = %stream,
            "retention does not delete the queue's stream without queue checkpoints (services.dispatcher.checkpoint_interval_ms = 0)"
        );
    }
    // A standby takes its primary's name before its sinks start: after
    // `listening on`, which whoever started the node reads first.
    let unnamed = match role {
        Role::Standby => adopt_primary_name(
            primary.as_ref(),
            bus.as_ref().map(|(_, follow)| follow),
            &stream,
            &valid.data_dir,
        )
        .await
        .err(),
        _ => None,
    };
    let metrics = node::install_metrics()?;
    let cannot_start = || format!("cannot start replication in {}", valid.data_dir.display());
    let replicator = Arc::new(
        omnirelay_replication::DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            valid.durable.clone(),
        )
        .await
        .with_context(cannot_start)?,
    );
    if unnamed.is_some() {
        // Its log on disk, whether the configuration declares it or not.
        replicator
            .open_stream(&stream)
            .await
            .with_context(cannot_start)?;
    }
    // A standby that cannot learn its primary's name yet (a bus with
    // nothing on it, a primary not answering) while its log is empty
    // starts its sinks once the primary's first event is in its log and
    // the name can be asked again: sinks started under this node's own
    // name would send the primary's stream to a sink it shares with the
    // primary (a receiver, a bus subject) as another sender, a second
    // copy of every event.
    let unnamed = match unnamed {
        Some(why) if replicator.last_sequence(&stream) == 0 => {
            tracing::info!(
                why,
                "the primary's node name is not known yet: the sinks start once its first event is here"
            );
            true
        }
        Some(why) => {
            tracing::warn!(
                why,
                "cannot learn the primary's node name now; sinks send under the name this node has"
            );
            false
        }
        None => false,
    };
    if role == Role::Standby {
        // Started later (`start_standby_sinks`): a sink starting "latest"
        // starts where the log stands now.
        let now = replicator.last_sequence(&stream);
        for sink in &mut valid.sinks {
            if sink.options.start == omnirelay_replication::StartFrom::Latest {
                sink.options.start = omnirelay_replication::StartFrom::After(now);
            }
        }
    } else {
        valid
            .add_sinks(&replicator, decorate_sink)
            .await
            .with_context(cannot_start)?;
    }
    let valid = Arc::new(valid);
    let mut rebuilt = None;
    let (receiver, http, service) = match role {
        // Run above, without a log.
        Role::Seeder | Role::Worker => anyhow::bail!("a seeder or worker keeps no log"),
        Role::Receiver => {
            let receiver = Arc::new(
                Receiver::open(replicator.clone(), stream.clone())
                    .await
                    .with_context(|| format!("cannot open stream {stream} to receive into"))?,
            );
            (Some(receiver), None, Service::Receiver)
        }
        Role::Dispatcher => {
            let dispatcher = Dispatcher::open(replicator.clone(), dispatcher_options.clone())
                .await
                .map_err(|e| cannot_rebuild(&stream, &valid.data_dir, e))?;
            let stats = dispatcher.summary().await;
            rebuilt = Some(format!(
                "queue rebuilt from the log: {} pending, {} leased, {} dead-lettered",
                stats.pending, stats.active, stats.dead_lettered
            ));
            (
                None,
                Some(omnirelay_dispatcher::http::router(dispatcher.clone())),
                Service::Dispatcher(dispatcher),
            )
        }
        Role::Controlplane => {
            let options = controlplane
                .take()
                .context("the control plane's settings")?;
            rebuilt = Some(format!("watching {}", options.hosts.join(", ")));
            let journal_dir = valid.data_dir.join("journal");
            let journal = omnirelay_controlplane::journal::Journal::open(&journal_dir)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the control plane's journal in {}",
                        journal_dir.display()
                    )
                })?;
            let plane = omnirelay_controlplane::ControlPlane::start(options, Some(journal))
                .map_err(|why| anyhow::anyhow!("the control plane cannot start: {why}"))?;
            (None, None, Service::ControlPlane(plane))
        }
        Role::Standby => {
            let standby = match bus.clone() {
                Some((url, follow)) => {
                    let standby = Standby::open_fed(
                        replicator.clone(),
                        dispatcher_options.clone(),
                        &url,
                        standby_settings.primary_quiet(),
                    )
                    .await
                    .map_err(|e| cannot_rebuild(&stream, &valid.data_dir, e))?;
                    tokio::spawn(feed_from_bus(
                        standby.clone(),
                        follow.clone(),
                        bound.stopping(),
                    ));
                    standby
                }
                None => {
                    let primary = primary.clone().context("a standby without its primary")?;
                    Standby::open(replicator.clone(), dispatcher_options.clone(), primary)
                        .await
                        .map_err(|e| cannot_rebuild(&stream, &valid.data_dir, e))?
                }
            };
            tokio::spawn(start_standby_sinks(
                StandbySinks {
                    valid: valid.clone(),
                    replicator: replicator.clone(),
                    standby: standby.clone(),
                    primary,
                    bus: bus.map(|(_, follow)| follow),
                    stream: stream.clone(),
                    unnamed,
                },
                bound.stopping(),
            ));
            let stats = standby.summary().await;
            rebuilt = Some(format!(
                "queue rebuilt from the log: {} pending, {} leased, {} dead-lettered; following {}",
                stats.pending,
                stats.active,
                stats.dead_lettered,
                FollowUrl::redacted(follow.unwrap_or_default())
            ));
            (
                None,
                Some(omnirelay_dispatcher::http::standby_router(standby.clone())),
                Service::Standby(standby),
            )
        }
    };
    let mut streaming =
        omnirelay_replication_grpc::StreamingService::new(replicator.clone(), receiver.clone());
    if matches!(role, Role::Dispatcher | Role::Standby) {
        // Its queue checkpoint, for a new standby of a log that no longer
        // holds the stream's start.
        streaming = streaming.with_snapshots(Arc::new(
            omnirelay_dispatcher::checkpoint::Snapshots::new(&valid.data_dir),
        ));
    }
    let routes = omnirelay_replication_grpc::routes_with(
        streaming,
        receiver.clone(),
        valid.token.clone(),
        bound.stopping(),
    );
    let what = service.role();
    let service_for_close = service.clone();
    let status = status_router(StatusSource {
        url: bound.url()?,
        node: valid.node_id.clone(),
        replicator: replicator.clone(),
        service,
    });
    let http = match http {
        Some(http) => status.merge(http),
        None => status,
    };
    // Watched before the node says anything, for whoever stops it at once
    // (until here a signal ends the process, which the log survives).
    let mut shutdown = Shutdown::watch()?;
    let server = bound.serve(metrics, Some(routes), Some(http))?;
    if let Some(rebuilt) = rebuilt {
        node::say(false, &rebuilt);
    }
    server.set_ready(node::replication_health(replicator.clone()));
    node::say(
        false,
        &format!(
            "{what} ready at {}: stream {stream} in {}",
            server.url(),
            valid.data_dir.display()
        ),
    );
    shutdown.wait_or_stdin_eof(stop_on_stdin_eof).await;
    node::say(false, "stopping");
    // Long polls end now (answered `UNAVAILABLE`): a worker may hold one
    // open without a deadline, which would keep the server from stopping.
    match &service_for_close {
        Service::Dispatcher(dispatcher) => dispatcher.stop_waits(),
        Service::Standby(standby) => standby.stop_waits(),
        Service::ControlPlane(_) | Service::Receiver => {}
    }
    server.stop().await;
    match &service_for_close {
        Service::ControlPlane(plane) => {
            if let Some(journal) = plane.journal() {
                journal.close().await?;
            }
        }
        // Its last append finishes before the log closes.
        Service::Standby(standby) => standby.stop_following().await,
        Service::Receiver | Service::Dispatcher(_) => {}
    }
    replicator.close().await?;
    if let Some(receiver) = receiver {
        let stats = receiver.stats();
        node::say(
            false,
            &format!(
                "stopped: {} received, {} ignored, {} skipped by senders, {} quarantined",
                crate::counted(stats.appended.load(Ordering::Relaxed), "event"),
                crate::counted(stats.duplicates.load(Ordering::Relaxed), "re-sent event"),
                crate::counted(stats.gaps.load(Ordering::Relaxed), "sequence"),
                crate::counted(
                    stats.quarantined.load(Ordering::Relaxed),
                    "unreadable event"
                )
            ),
        );
    } else {
        node::say(false, "stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// The control plane's options from its settings and `--hosts`.
fn controlplane_options(
    valid: &omnirelay_replication::config::ValidConfig,
    hosts: &[String],
) -> anyhow::Result<omnirelay_controlplane::Options> {
    let settings = omnirelay_controlplane::settings::parse(valid.services.get("controlplane"))
        .map_err(|e| anyhow::anyhow!("services.controlplane.{}: {}", e.path, e.message))?;
    let mut options = settings.options;
    options.ca_pem =
        crate::read_ca(settings.ca_file.as_deref()).context("services.controlplane.ca_file")?;
    for (url, key, file) in &settings.host_ca_files {
        options.access.entry(url.clone()).or_default().ca_pem =
            crate::read_ca(Some(file)).with_context(|| format!("services.controlplane.{key}"))?;
    }
    options
        .hosts
        .extend(hosts.iter().map(|h| h.trim_end_matches('/').to_owned()));
    if options.hosts.is_empty() {
        anyhow::bail!(
            "the control plane needs hosts to watch: --hosts URL,URL,… (or services.controlplane.hosts)"
        );
    }
    if options.token.is_none() {
        options.token.clone_from(&valid.token);
    }
    Ok(options)
}

/// Why a dispatcher's or standby's queue cannot be rebuilt from `stream`'s
/// log in `data_dir`; for damage, where to look and what to do.
fn cannot_rebuild(
    stream: &StreamId,
    data_dir: &std::path::Path,
    error: omnirelay_replication::Error,
) -> anyhow::Error {
    let hint = if error.kind() == omnirelay_replication::ErrorKind::Corrupt {
        format!(
            " (a queue cannot be rebuilt from a stream with a hole in it: `omnirelay log verify --data-dir {}` names what is lost; promote a standby that followed this node, or put back the damaged segment from a copy: docs/operations.md, \"A damaged log\")",
            data_dir.display()
        )
    } else {
        String::new()
    };
    anyhow::anyhow!("cannot rebuild the queue from stream {stream}: {error}{hint}")
}

/// A standby takes its primary's node name before its sinks start (see
/// [`adopt_node_name`]): its log is the primary's, so its `grpc` sinks send
/// the stream under the primary's name, which a receiver takes as the same
/// sender, and its `nats` sinks publish as the same writer. Following the
/// primary, it asks the primary; following the bus, it reads the writer
/// of the newest message on the followed subject. A primary or bus that
/// cannot be asked now, or a subject with nothing on it yet, leaves the
/// name as it is (taken on an earlier start, or the node's own).
async fn adopt_primary_name(
    primary: Option<&Connection>,
    bus: Option<&FollowUrl>,
    stream: &StreamId,
    data_dir: &std::path::Path,
) -> Result<(), String> {
    let asked = async {
        if let Some(primary) = primary {
            let encoding = Encoding::new(Format::Protobuf, WireVersion::V2);
            let subscription =
                omnirelay_replication_grpc::Subscription::open_last(primary, stream, 1, encoding)
                    .await
                    .map_err(|e| e.to_string())?;
            return Ok(subscription.writer().map(str::to_owned));
        }
        match bus {
            Some(bus) => bus.last_writer(stream).await.map_err(|e| e.to_string()),
            None => Ok(None),
        }
    };
    let name = match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
        Ok(Ok(Some(name))) => name,
        Ok(Ok(None)) => return Err("its primary has published nothing yet".to_owned()),
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err("no answer within 5 s".to_owned()),
    };
    match adopt_node_name(data_dir, &name) {
        Ok(true) => tracing::info!(
            name,
            "took the primary's node name: sinks carry its stream on under it"
        ),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "cannot take the primary's node name"),
    }
    Ok(())
}

/// Every sink of a node, wrapped to record its lag in the resource-lease
/// metrics.
fn decorate_sink(
    _: &omnirelay_replication::config::ValidSink,
    sink: omnirelay_replication::SharedSink,
) -> omnirelay_replication::SharedSink {
    LagRecording::new(sink).shared()
}

/// What a standby's sinks start with: see [`start_standby_sinks`].
struct StandbySinks {
    valid: Arc<omnirelay_replication::config::ValidConfig>,
    replicator: Arc<omnirelay_replication::DurableReplicator<ResourceLeaseReplicationEvent>>,
    standby: Arc<Standby>,
    primary: Option<Connection>,
    bus: Option<FollowUrl>,
    stream: StreamId,
    /// Its primary's name was not known when it started, with its log
    /// empty.
    unnamed: bool,
}

/// Starts a standby's sinks once its log is known to be a copy of its
/// primary's stream ([`Standby::wait_log_checked`]: a log with events its
/// primary never had must not reach a sink it shares with the primary)
/// and, when its primary's name was not known when it started, once that
/// name is: after the primary's first event is in its log, the name is
/// asked again (every few seconds until it answers). A standby promoted
/// before then starts them at once, under its own name if it has not
/// learned its primary's; a node stopping, not at all.
async fn start_standby_sinks(
    sinks: StandbySinks,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let StandbySinks {
        valid,
        replicator,
        standby,
        primary,
        bus,
        stream,
        unnamed,
    } = sinks;
    let mut retry = std::time::Duration::from_millis(500);
    let named = !unnamed
        || loop {
            if standby.is_promoted() {
                break false;
            }
            tokio::select! {
                visible = replicator.wait_visible_beyond(&stream, 0) => {
                    if visible.is_err() {
                        return;
                    }
                    match adopt_primary_name(primary.as_ref(), bus.as_ref(), &stream, &valid.data_dir).await {
                        Ok(()) => break true,
                        Err(why) => {
                            tracing::debug!(why, "the primary's node name is still not known");
                            tokio::select! {
                                () = tokio::time::sleep(retry) => {}
                                _ = stopping.changed() => return,
                            }
                            retry = (retry * 2).min(std::time::Duration::from_secs(5));
                        }
                    }
                }
                () = standby.wait_promoted() => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
        };
    if !named {
        tracing::info!(
            "promoted before its primary's node name was known: the sinks start under this node's own name"
        );
    }
    if !standby.is_log_checked() && !standby.is_promoted() {
        tracing::info!(
            "the sinks start once this standby's log is found a copy of its primary's stream"
        );
    }
    tokio::select! {
        () = standby.wait_log_checked() => {}
        _ = stopping.wait_for(|stopping| *stopping) => return,
    }
    if let Err(error) = valid.add_sinks(&replicator, decorate_sink).await {
        tracing::error!(%error, "cannot start the sinks");
    }
}

/// The durable consumer a standby following the bus reads with, unless
/// its `--follow` URL names one: one per node (`node_id`), so that two
/// standbys do not share (and split) one position.
fn standby_consumer(node: Option<&str>) -> String {
    match node {
        Some(node) => format!(
            "omnirelay-standby-{}",
            node.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                })
                .collect::<String>()
        ),
        None => "omnirelay-standby".to_owned(),
    }
}

/// Feeds `standby` from JetStream through the NATS source until it is
/// promoted or the node stops: connects (again, with backoff, when the
/// bus is away), applies each fetched batch to the standby's feed and
/// reports the consumer's backlog as its lag.
async fn feed_from_bus(
    standby: Arc<Standby>,
    follow: FollowUrl,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let done =
        |stopping: &tokio::sync::watch::Receiver<bool>| standby.is_promoted() || *stopping.borrow();
    let mut backoff = std::time::Duration::from_millis(100);
    // Whether the log was found a copy of the bus's stream.
    let mut checked = false;
    // Checks that failed with the bus reachable: a server that does not
    // let this standby read messages by sequence (its permissions, an old
    // server) would otherwise keep it from following for good.
    let mut unchecked = 0;
    while !done(&stopping) {
        let connected = match NatsSource::connect_to(&follow, Arc::new(ResourceLeaseCodec)).await {
            Ok(source) if checked => Ok(source),
            Ok(source) => match check_against_bus(&standby, &source).await {
                Ok(()) => {
                    checked = true;
                    Ok(source)
                }
                // It stopped, and says why.
                Err(error) if error.kind() == omnirelay_replication::ErrorKind::Corrupt => return,
                Err(error) if unchecked >= 1 => {
                    // Logged by the standby; it follows on.
                    let why = format!("the bus cannot be read by sequence: {error}");
                    match standby.check_feed(FeedHolds::Unknown(why)).await {
                        Ok(()) => {
                            checked = true;
                            Ok(source)
                        }
                        Err(error) => Err(error),
                    }
                }
                Err(error) => {
                    unchecked += 1;
                    Err(error)
                }
            },
            Err(error) => Err(error),
        };
        let mut source = match connected {
            Ok(source) => source,
            Err(error) => {
                tracing::warn!(%error, "standby cannot reach the bus; retrying");
                standby.report_upstream(false, None, Some(error.to_string()));
                let wait = backoff;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = stopping.changed() => if changed.is_err() { return },
                }
                continue;
            }
        };
        backoff = std::time::Duration::from_millis(100);
        // A version-1 stream lacks the events a queue needs.
        source.require_version(WireVersion::V2);
        source.add_sink(
            "standby",
            standby.feed().shared(),
            Encoding::new(Format::Protobuf, WireVersion::V2),
        );
        match primary_head(&standby, &mut source).await {
            Ok(head) => standby.report_upstream(true, Some(head), None),
            Err(error) => standby.report_upstream(false, None, Some(error.to_string())),
        }
        while !done(&stopping) {
            // A batch the feed refuses (a gap) is retried inside `poll`
            // until promotion or shutdown ends it.
            let polled = tokio::select! {
                polled = source.poll() => polled,
                () = standby.wait_promoted() => return,
                _ = stopping.changed() => return,
            };
            let outcome = match polled {
                Ok(_) => primary_head(&standby, &mut source).await,
                Err(error) => Err(error),
            };
            match outcome {
                // While the source holds a message with a gap for its
                // predecessor, the feed's error (the gap) stays shown.
                Ok(head) if source.refusing_gap() => {
                    standby.report_upstream(true, Some(head), standby.status().last_error);
                }
                Ok(head) => standby.report_upstream(true, Some(head), None),
                Err(error) if !error.is_retryable() => {
                    // What the bus holds cannot be followed (an older
                    // schema version): stop, and say why, as a standby
                    // following a node does.
                    tracing::error!(%error, "standby stopped following the bus");
                    standby.report_upstream(
                        false,
                        None,
                        Some(format!("stopped following: {error}")),
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "standby lost the bus; reconnecting");
                    standby.report_upstream(false, None, Some(error.to_string()));
                    break;
                }
            }
        }
    }
}

/// Checks that the bus holds the event the standby's log holds at its
/// last sequence ([`Standby::check_feed`]).
async fn check_against_bus(
    standby: &Standby,
    source: &NatsSource<ResourceLeaseReplicationEvent>,
) -> Result<(), omnirelay_replication::Error> {
    let last = standby.status().applied;
    if last == 0 {
        return Ok(());
    }
    let held = match source.event_at(standby.stream(), last).await.map_err(|e| {
        omnirelay_replication::Error::new(
            e.kind(),
            format!(
                "cannot check this standby's log against the bus: {}",
                e.message()
            ),
        )
    })? {
        HeldAt::Event(event) => FeedHolds::Event(Box::new(event)),
        HeldAt::EndsAt(head) => FeedHolds::EndsAt(head),
        HeldAt::NotFound(why) => FeedHolds::Unknown(why),
    };
    standby.check_feed(held).await
}

/// The primary's newest sequence as the bus shows it: what the standby
/// applied plus what its consumer has not yet had acknowledged.
async fn primary_head(
    standby: &Standby,
    source: &mut NatsSource<ResourceLeaseReplicationEvent>,
) -> Result<u64, omnirelay_replication::Error> {
    let applied = standby.status().applied;
    Ok(applied + source.pending().await?)
}

/// What a node runs, for its status.
#[derive(Debug, Clone)]
enum Service {
    ControlPlane(Arc<omnirelay_controlplane::ControlPlane>),
    Receiver,
    Dispatcher(Arc<Dispatcher>),
    Standby(Arc<Standby>),
}

impl Service {
    fn role(&self) -> &'static str {
        match self {
            Self::ControlPlane(_) => "controlplane",
            Self::Receiver => "receiver",
            Self::Dispatcher(_) => "dispatcher",
            Self::Standby(standby) if standby.status().promoted => "dispatcher",
            Self::Standby(_) => "standby",
        }
    }
}

/// What `GET /status` describes.
#[derive(Debug, Clone)]
struct StatusSource {
    url: String,
    node: Option<String>,
    replicator: Arc<omnirelay_replication::DurableReplicator<ResourceLeaseReplicationEvent>>,
    service: Service,
}

/// `GET /status`: this node as the one host of the status document
/// `omnirelay status` reads (the control plane answers the same shape for
/// every host it watches).
fn status_router(source: StatusSource) -> axum::Router {
    if let Service::ControlPlane(plane) = &source.service {
        let retry = retry_router(source.replicator.clone(), Some(plane.clone()));
        return omnirelay_controlplane::router(plane.clone()).merge(retry);
    }
    let retry = retry_router(source.replicator.clone(), None);
    axum::Router::new()
        .route(
            "/status",
            axum::routing::get(move || {
                let source = source.clone();
                async move { axum::Json(status_document(&source).await) }
            }),
        )
        .merge(retry)
}

/// `POST /sinks/retry[?stream=S][&sink=NAME]`: the matching sinks that
/// wait out a retry's backoff try again now
/// ([`DurableReplicator::retry_now`](omnirelay_replication::DurableReplicator::retry_now));
/// answers `{"retried": [{"stream", "sink"}]}`, 404 with the reason when
/// no sink matches, 400 for an invalid stream id. The control plane
/// (`plane`) passes it on to every host it watches as well: their entries
/// carry `"host"`, and hosts it could not ask are listed in
/// `"unreachable": [{"host", "error"}]`.
fn retry_router(
    replicator: Arc<omnirelay_replication::DurableReplicator<ResourceLeaseReplicationEvent>>,
    plane: Option<Arc<omnirelay_controlplane::ControlPlane>>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    axum::Router::new().route(
        RETRY_PATH,
        axum::routing::post(
            move |axum::extract::Query(query): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >,
                  axum::extract::RawQuery(raw): axum::extract::RawQuery| {
                let replicator = replicator.clone();
                let plane = plane.clone();
                async move {
                    if let Some(key) = query
                        .keys()
                        .find(|k| !matches!(k.as_str(), "stream" | "sink"))
                    {
                        let why = format!("unknown parameter {key:?} (stream, sink)");
                        return (StatusCode::BAD_REQUEST, why).into_response();
                    }
                    let stream = match query.get("stream").map(|s| StreamId::new(s)).transpose() {
                        Ok(stream) => stream,
                        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                    };
                    let sink = query.get("sink").map(String::as_str);
                    let own = replicator.retry_now(stream.as_ref(), sink).map(|woken| {
                        woken
                            .into_iter()
                            .map(|(stream, sink)| {
                                serde_json::json!({"stream": stream.as_str(), "sink": sink})
                            })
                            .collect::<Vec<_>>()
                    });
                    let Some(plane) = plane else {
                        return match own {
                            Ok(retried) => axum::Json(serde_json::json!({ "retried": retried }))
                                .into_response(),
                            Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
                        };
                    };
                    let path = match raw {
                        Some(raw) => format!("{RETRY_PATH}?{raw}"),
                        None => RETRY_PATH.to_owned(),
                    };
                    let mut matched = own.is_ok();
                    let mut retried = own.unwrap_or_default();
                    let mut unreachable = Vec::new();
                    for (host, answer) in plane.retry_sinks(&path).await {
                        match answer {
                            Ok(Some(woken)) => {
                                matched = true;
                                retried.extend(woken.into_iter().map(|mut entry| {
                                    entry["host"] = serde_json::Value::from(host.as_str());
                                    entry
                                }));
                            }
                            Ok(None) => {}
                            Err(error) => {
                                unreachable.push(serde_json::json!({"host": host, "error": error}))
                            }
                        }
                    }
                    if !matched && unreachable.is_empty() {
                        let why = format!(
                            "no sink named {:?}{} on the control plane or any of its hosts",
                            sink.unwrap_or(""),
                            stream
                                .map(|s| format!(" in stream {s}"))
                                .unwrap_or_default()
                        );
                        return (StatusCode::NOT_FOUND, why).into_response();
                    }
                    axum::Json(serde_json::json!({
                        "retried": retried,
                        "unreachable": unreachable,
                    }))
                    .into_response()
                }
            },
        ),
    )
}

/// Where a node takes `omnirelay sink retry`.
pub(crate) const RETRY_PATH: &str = "/sinks/retry";

async fn status_document(source: &StatusSource) -> serde_json::Value {
    let mut host = serde_json::json!({
        "url": source.url,
        "up": true,
        "node": source.node,
        "role": source.service.role(),
        "streams": source.replicator.stream_snapshots().await,
        "sinks": source.replicator.sink_snapshots().await,
    });
    let queue = match &source.service {
        Service::Receiver | Service::ControlPlane(_) => None,
        Service::Dispatcher(dispatcher) => Some(dispatcher.summary().await),
        Service::Standby(standby) => {
            let status = standby.status();
            host["standby"] = serde_json::json!({
                "following": status.following,
                "connected": status.connected,
                "appliedSequence": status.applied,
                "lagEvents": status.lag_events(),
                "lastError": status.last_error,
                "primaryLastWrite": status.last_written.map(Timestamp::to_json_string),
            });
            Some(match standby.dispatcher() {
                Some(dispatcher) => dispatcher.summary().await,
                None => standby.summary().await,
            })
        }
    };
    if let Some(queue) = queue {
        host["queue"] = serde_json::json!({
            "pending": queue.pending,
            "active": queue.active,
            "deadLettered": queue.dead_lettered,
            "fingerprint": queue.fingerprint,
        });
    }
    let serving = match &source.service {
        Service::Dispatcher(dispatcher) => Some(dispatcher.clone()),
        Service::Standby(standby) => standby.dispatcher(),
        Service::Receiver | Service::ControlPlane(_) => None,
    };
    if let Some(dispatcher) = serving {
        let signal = dispatcher.backpressure_signals().borrow().clone();
        host["namespace"] = serde_json::json!(dispatcher.options().namespace);
        host["backpressure"] = serde_json::json!({
            "active": dispatcher.backpressure_active(),
            "latest": signal.map(|s| s.to_json()),
        });
        host["leaseHealth"] = dispatcher
            .lease_health()
            .iter()
            .map(|peer| {
                serde_json::json!({
                    "peerId": peer.peer,
                    "healthy": peer.healthy,
                    "lastSeen": peer.last_seen.json_text().as_str(),
                    "lastDisconnect": peer.last_disconnect.map(|t| t.json_text().as_str().to_owned()),
                    "activeAssignments": peer.active_assignments,
                    "pendingReassignments": peer.pending_reassignments,
                })
            })
            .collect();
    }
    serde_json::json!({ "hosts": [host] })
}

/// SIGINT and SIGTERM, watched from the moment this is made: a signal
/// that comes before anyone waits (right after a node said it is ready,
/// say) still stops the node cleanly, instead of killing the process by
/// the signal's default action.
pub(crate) struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Starts watching (inside the runtime).
    pub(crate) fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
        })
    }

    /// Until SIGINT or SIGTERM came (at once if one already did).
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// As [`Shutdown::wait`], or, when `stdin_eof`, until standard input
    /// ends too.
    async fn wait_or_stdin_eof(&mut self, stdin_eof: bool) {
        if !stdin_eof {
            return self.wait().await;
        }
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = ended.send(());
        });
        tokio::select! {
            () = self.wait() => {}
            _ = end => {}
        }
    }
}

/// Runs a seeder or a worker of the mesh scenario until SIGINT or SIGTERM:
/// a client of a dispatcher's RPC that keeps no log, serving `/metrics`,
/// its health and `GET /status` (what it did) on its listener. A worker
/// stops leasing at once and finishes the item it holds.
async fn run_mesh_client(
    valid: &omnirelay_replication::config::ValidConfig,
    role: Role,
    stop_on_stdin_eof: bool,
) -> anyhow::Result<ExitCode> {
    use omnirelay_controlplane::mesh::{self, Catalog, Counters, RpcClient, Seeder};
    // Both checked by `load_with`.
    let settings = omnirelay_controlplane::settings::parse_mesh(valid.services.get("mesh"))
        .map_err(|e| anyhow::anyhow!("services.mesh.{}: {}", e.path, e.message))?;
    let namespace = omnirelay_dispatcher::settings::parse(valid.services.get("dispatcher"))
        .map_err(|e| anyhow::anyhow!("services.dispatcher.{}: {}", e.path, e.message))?
        .namespace;
    let dispatcher = settings.dispatcher.clone().context(
        "a seeder or worker needs the dispatcher to call: --dispatcher URL (or services.mesh.dispatcher)",
    )?;
    let ca_pem = crate::read_ca(settings.ca_file.as_deref()).context("services.mesh.ca_file")?;
    let client = RpcClient::new(
        &dispatcher,
        &namespace,
        settings.token.clone().or_else(|| valid.token.clone()),
    )
    .trusting_authority(ca_pem.as_deref())
    .map_err(|why| anyhow::anyhow!("services.mesh.ca_file: {why}"))?;
    node::install_logging(valid.telemetry.log_format, &valid.telemetry.log_level);
    let listen = valid
        .listen
        .clone()
        .context("serve needs an address to listen on: --listen HOST:PORT (or server.listen)")?;
    let bound = Bound::bind(&listen, valid).await?;
    let metrics = node::install_metrics()?;
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (what, peer, task) = if role == Role::Worker {
        let peer = settings.peer.clone().unwrap_or_else(default_peer);
        Counters::register_worker(&peer);
        let task = tokio::spawn(mesh::run_worker(
            client,
            peer.clone(),
            Arc::new(std::sync::Mutex::new(Catalog::default())),
            counters.clone(),
            stopped,
        ));
        ("worker", Some(peer), task)
    } else {
        Counters::register_seeder();
        let task = tokio::spawn(mesh::run_seeder(
            client,
            Seeder::default(),
            settings.seed_interval,
            counters.clone(),
            stopped,
        ));
        ("seeder", None, task)
    };
    let document = {
        let (counters, node, peer, dispatcher) = (
            counters.clone(),
            valid.node_id.clone(),
            peer.clone(),
            dispatcher.clone(),
        );
        let url = bound.url()?;
        move || {
            mesh_status(
                &url,
                node.as_deref(),
                what,
                peer.as_deref(),
                &dispatcher,
                &counters,
            )
        }
    };
    let status = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let body = document();
            async move { axum::Json(body) }
        }),
    );
    let mut shutdown = Shutdown::watch()?;
    let server = bound.serve(metrics, None, Some(status))?;
    // No log: nothing of its own a restart would mend.
    server.set_ready(|| None);
    node::say(
        false,
        &format!(
            "{what} ready at {}: calling {dispatcher} (namespace {namespace}){}",
            server.url(),
            peer.map(|p| format!(" as {p}")).unwrap_or_default()
        ),
    );
    shutdown.wait_or_stdin_eof(stop_on_stdin_eof).await;
    node::say(false, "stopping");
    let _ = stop.send(true);
    if let Err(error) = task.await {
        tracing::error!(%error, "the {what} failed");
    }
    server.stop().await;
    node::say(
        false,
        &format!("stopped: {}", mesh_summary(role, &counters)),
    );
    Ok(ExitCode::SUCCESS)
}

/// A worker's default peer id, as the reference's: `mesh-worker-<host name>`.
fn default_peer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("mesh-worker-{host}")
}

/// `GET /status` of a seeder or a worker: the status document's one host,
/// with what it did under `mesh`.
fn mesh_status(
    url: &str,
    node: Option<&str>,
    role: &str,
    peer: Option<&str>,
    dispatcher: &str,
    counters: &omnirelay_controlplane::mesh::Counters,
) -> serde_json::Value {
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    serde_json::json!({ "hosts": [{
        "url": url,
        "up": true,
        "node": node,
        "role": role,
        "streams": [],
        "sinks": [],
        "mesh": {
            "dispatcher": dispatcher,
            "peerId": peer,
            "enqueued": count(&counters.enqueued),
            "enqueueErrors": count(&counters.enqueue_errors),
            "completed": counters.completed(),
            "created": count(&counters.created),
            "updated": count(&counters.updated),
            "duplicates": count(&counters.duplicates),
            "stale": count(&counters.stale),
            "invalid": count(&counters.invalid),
            "workerErrors": count(&counters.worker_errors),
        },
    }]})
}

/// What a seeder or worker did, in one line.
fn mesh_summary(role: Role, counters: &omnirelay_controlplane::mesh::Counters) -> String {
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    if role == Role::Seeder {
        return format!(
            "{} enqueued, {} refused or unanswered",
            count(&counters.enqueued),
            count(&counters.enqueue_errors)
        );
    }
    format!(
        "{}; {} RPC errors",
        counters.outcomes(),
        count(&counters.worker_errors)
    )
}
