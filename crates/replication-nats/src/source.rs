//! The NATS JetStream source: a replica fed from the bus.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use async_nats::jetstream::consumer::pull::Config as ConsumerConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::StreamExt as _;
use omnirelay_replication::delivery::Backoff;
use omnirelay_replication::{
    Codec, CodecErrorKind, Encoding, Error, ErrorKind, EventBatch, Format, ReplicationEvent,
    RetryPolicy, SharedSink, Sink, StreamId, WireVersion,
};

use crate::auth::server_addresses;
use crate::follow::FollowUrl;
use crate::subject::{
    DEFAULT_STREAM, DEFAULT_SUBJECT, header, subject_filter, subject_for, validate_stream_name,
    validate_subject_template,
};

/// Knobs of a [`NatsSource`].
#[derive(Clone, Debug, PartialEq)]
pub struct NatsSourceOptions {
    /// The JetStream stream to read.
    pub stream: String,
    /// The sinks' subject template (its `{stream}` becomes `>`).
    pub subject: String,
    /// The durable consumer's name: the source's position in the stream,
    /// kept by JetStream across restarts.
    pub durable: String,
    /// Messages fetched at once at most.
    pub batch: usize,
    /// How long a fetch waits for messages.
    pub wait: Duration,
    /// How long JetStream waits for a delivered message's acknowledgement
    /// before delivering it again (a consumer's `ack_wait`, set when the
    /// consumer is created): after a lost connection or a server restart,
    /// what was delivered and not acknowledged comes again only then.
    pub ack_wait: Duration,
    /// How applying a batch to a failing sink is retried.
    pub retry: RetryPolicy,
    /// How long a message waits for the one its sink published before it
    /// (`Omnirelay-Previous-Sequence`) when the bus holds them out of
    /// order (a publish lost and sent again after later ones landed);
    /// past it, the message is applied and the gap counted.
    pub reorder_wait: Duration,
}

impl NatsSourceOptions {
    /// The default stream and subjects, consumer `name`.
    pub fn new(durable: &str) -> Self {
        Self {
            stream: DEFAULT_STREAM.to_owned(),
            subject: DEFAULT_SUBJECT.to_owned(),
            durable: durable.to_owned(),
            batch: 256,
            wait: Duration::from_millis(500),
            ack_wait: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            reorder_wait: Duration::from_secs(60),
        }
    }
}

/// What one [`NatsSource::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Messages fetched.
    pub messages: usize,
    /// Messages applied to the sinks (and acknowledged), these or held
    /// from earlier polls.
    pub applied: usize,
    /// Fetched messages at or below the stream's high-water mark: already
    /// applied (acknowledged).
    pub duplicates: usize,
    /// Fetched messages that are unreadable (missing headers, undecodable
    /// payload): quarantined — logged, counted, acknowledged.
    pub quarantined: usize,
    /// Messages held after this poll, unacknowledged, until the message
    /// published before them comes (the bus holds them out of order).
    pub held: usize,
    /// Messages applied although the one published before them never came
    /// within `reorder_wait`: gaps in what the sinks received.
    pub gaps: usize,
    /// Messages past `reorder_wait` that a sink refused for now (it takes
    /// no gap, as a standby): held again, with what follows them, until
    /// the message published before them comes, and offered again with
    /// backoff meanwhile.
    pub refused: usize,
}

/// A fetched message waiting for its turn.
struct Held<E> {
    message: jetstream::Message,
    previous: Option<u64>,
    encoding: Encoding,
    event: E,
    since: Instant,
}

/// A message handed to the sinks, until they have it: what holding it
/// again takes (the event is read again from the message).
struct Handed {
    message: jetstream::Message,
    previous: Option<u64>,
    since: Instant,
}

impl<E> Held<E> {
    /// The event and its payload for the sinks, and the rest.
    fn hand(self) -> ((E, Bytes), Handed) {
        let payload = self.message.payload.clone();
        (
            (self.event, payload),
            Handed {
                message: self.message,
                previous: self.previous,
                since: self.since,
            },
        )
    }
}

/// A stream whose message past `reorder_wait` a sink refused: how often,
/// and when it is offered again.
#[derive(Clone, Copy, Debug)]
struct Refusals {
    count: u32,
    again_at: Instant,
}

struct Target {
    name: String,
    sink: SharedSink,
    encoding: Encoding,
}

/// Reads replication events from JetStream with a durable pull consumer
/// (explicit acknowledgements) and applies them, with their original
/// streams and sequences, to local sinks: a replica. A message is
/// acknowledged only after every sink applied it; a per-stream high-water
/// mark (started from the sinks' own checkpoints) drops what was already
/// applied, so JetStream's redeliveries are harmless.
pub struct NatsSource<E> {
    codec: Arc<dyn Codec<E>>,
    context: Context,
    consumer: PullConsumer,
    options: NatsSourceOptions,
    targets: Vec<Target>,
    marks: HashMap<StreamId, u64>,
    /// Per stream, fetched messages above the mark not yet applied, by
    /// sequence.
    held: HashMap<StreamId, BTreeMap<u64, Held<E>>>,
    /// Per stream, a message applied with a gap that a sink refused.
    refusals: HashMap<StreamId, Refusals>,
    /// Messages of an older schema version are refused.
    required: Option<WireVersion>,
    seed: u64,
}

impl<E> std::fmt::Debug for NatsSource<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("options", &self.options)
            .field(
                "sinks",
                &self.targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn nats_error(context: &str, err: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("nats source: {context}: {err}"),
    )
}

impl<E: ReplicationEvent> NatsSource<E> {
    /// Connects and creates (or finds) the durable consumer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for invalid options; [`ErrorKind::Unavailable`]
    /// when the server or the stream cannot be reached.
    pub async fn connect(
        servers: &[String],
        connect: ConnectOptions,
        codec: Arc<dyn Codec<E>>,
        options: NatsSourceOptions,
    ) -> Result<Self, Error> {
        validate_stream_name(&options.stream)?;
        validate_subject_template(&options.subject)?;
        validate_stream_name(&options.durable)?;
        let addresses = server_addresses(servers, "nats source")?;
        let client = connect
            .connect(addresses)
            .await
            .map_err(|e| nats_error("connect", e))?;
        let context: Context = jetstream::new(client);
        let stream = context
            .get_stream(&options.stream)
            .await
            .map_err(|e| nats_error(&format!("find stream {}", options.stream), e))?;
        let consumer = stream
            .get_or_create_consumer(
                &options.durable,
                ConsumerConfig {
                    durable_name: Some(options.durable.clone()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    // Messages held for one published before them stay
                    // unacknowledged: room for a long stretch out of order.
                    max_ack_pending: 20_000,
                    filter_subject: subject_filter(&options.subject),
                    ..ConsumerConfig::default()
                },
            )
            .await
            .map_err(|e| nats_error(&format!("consumer {}", options.durable), e))?;
        Ok(Self {
            codec,
            context,
            consumer,
            options,
            targets: Vec::new(),
            marks: HashMap::new(),
            held: HashMap::new(),
            refusals: HashMap::new(),
            required: None,
            seed: 0x5EED,
        })
    }

    /// Connects to the servers of `follow` with its credentials and
    /// creates (or finds) its durable consumer; see [`NatsSource::connect`].
    ///
    /// # Errors
    ///
    /// As [`NatsSource::connect`]; [`ErrorKind::Config`] when a credentials
    /// or seed file cannot be read.
    pub async fn connect_to(follow: &FollowUrl, codec: Arc<dyn Codec<E>>) -> Result<Self, Error> {
        Self::connect(
            &follow.servers,
            follow.connect_options()?,
            codec,
            follow.options.clone(),
        )
        .await
    }

    /// Messages of the stream its consumer has not yet had acknowledged:
    /// how far behind the bus this source is.
    ///
    /// # Errors
    ///
    /// The server cannot be asked.
    pub async fn pending(&mut self) -> Result<u64, Error> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| nats_error("consumer info", e))?;
        Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
    }

    /// What the followed subject of `stream` holds at `sequence`, for a
    /// reader that checks its own copy of the stream against the bus
    /// before following it on (a standby). Found by bisecting the
    /// JetStream stream for the subject's messages from 4 096 sequences
    /// before `sequence`, then reading them on (their headers) up to three
    /// times as many: a message published out of order (a lost publish
    /// sent again after later ones) is found when it landed within 4 096
    /// messages of its place, as the NATS sink's retries do; one further
    /// off may be missed, and is then
    /// [`HeldAt::NotFound`], never taken for the end of the stream.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when the server cannot be asked.
    pub async fn event_at(&self, stream: &StreamId, sequence: u64) -> Result<HeldAt<E>, Error> {
        let bus = Bus {
            context: &self.context,
            name: &self.options.stream,
            subject: subject_for(&self.options.subject, stream.as_str()),
        };
        let Some(newest) = bus.newest().await? else {
            return Ok(HeldAt::NotFound(format!(
                "{} holds nothing on {}",
                bus.name, bus.subject
            )));
        };
        let from = bus
            .first_at_or_past(sequence.saturating_sub(BEHIND))
            .await?;
        let read = bus.read_on(from, sequence).await?;
        if let Some(position) = read.found {
            let Some(found) = bus.at(position).await? else {
                return Ok(HeldAt::NotFound(format!(
                    "{} removed sequence {sequence} of stream {stream} while it was read",
                    bus.name
                )));
            };
            let message = &found.message;
            return Ok(
                match read_parts(
                    self.codec.as_ref(),
                    Some(&message.headers),
                    &message.payload,
                ) {
                    Ok((held, _, _, event)) if held == *stream => HeldAt::Event(event),
                    Ok((held, ..)) => HeldAt::NotFound(format!(
                        "the message of sequence {sequence} on {} is of stream {held}",
                        bus.subject
                    )),
                    Err(_) => HeldAt::NotFound(format!(
                        "the message of sequence {sequence} on {} cannot be read",
                        bus.subject
                    )),
                },
            );
        }
        let highest = read.highest.max(newest);
        Ok(if read.to_the_end && highest < sequence {
            HeldAt::EndsAt(highest)
        } else {
            HeldAt::NotFound(format!(
                "{} does not hold sequence {sequence} of stream {stream} (its limits removed it, \
                 or it was never published, or far out of order)",
                bus.name
            ))
        })
    }

    /// Refuses messages written at a schema version older than `version`:
    /// [`NatsSource::poll`] fails naming the first one and acknowledges
    /// nothing of its batch, so they stay on the bus. For a reader that
    /// needs the full stream (a standby needs version 2's expiry, requeue
    /// and dead-letter events), where an older one would be applied short
    /// of them.
    pub fn require_version(&mut self, version: WireVersion) {
        self.required = Some(version);
    }

    /// Whether a sink refused a message past `reorder_wait` (see
    /// [`Polled::refused`]) that is still held: a reader that takes no gap
    /// is waiting for the message published before it.
    pub fn refusing_gap(&self) -> bool {
        !self.refusals.is_empty()
    }

    /// Adds a sink that receives every event in `encoding`.
    pub fn add_sink(&mut self, name: &str, sink: SharedSink, encoding: Encoding) {
        self.targets.push(Target {
            name: name.to_owned(),
            sink,
            encoding,
        });
        // Marks are re-read from the sinks, the new one included.
        self.marks.clear();
    }

    /// The high-water mark of `stream`: the lowest checkpoint of the sinks
    /// (what every one of them holds), read once.
    async fn mark(&mut self, stream: &StreamId) -> Result<u64, Error> {
        if let Some(mark) = self.marks.get(stream) {
            return Ok(*mark);
        }
        let mut mark = u64::MAX;
        for target in &self.targets {
            let held = target
                .sink
                .checkpoint(stream)
                .await
                .map_err(|e| e.into_error())?
                .unwrap_or(0);
            mark = mark.min(held);
        }
        let mark = if self.targets.is_empty() { 0 } else { mark };
        self.marks.insert(stream.clone(), mark);
        Ok(mark)
    }

    /// Fetches up to one batch of messages, applies them in order and
    /// acknowledges them. Waits up to the options' `wait` for messages
    /// (less while messages are held for one published before them).
    ///
    /// Messages are applied per stream in sequence order: a message whose
    /// `Omnirelay-Previous-Sequence` is above the stream's mark is held,
    /// unacknowledged, until that one comes (the bus holds a publish that
    /// was lost and sent again after the ones that followed it) or
    /// `reorder_wait` passes. A sink that refuses such a message with a
    /// retryable error (a standby takes no gap) is not retried in place:
    /// the message is held again, so that its predecessor can still come,
    /// and offered again with backoff ([`Polled::refused`]).
    ///
    /// # Errors
    ///
    /// The server's failure to deliver or take acknowledgements (the
    /// messages are delivered again later). A failing sink is retried with
    /// backoff here until it takes the batch.
    pub async fn poll(&mut self) -> Result<Polled, Error> {
        let holding = self.held.values().any(|h| !h.is_empty());
        let wait = if holding {
            self.options.wait.min(Duration::from_millis(100))
        } else {
            self.options.wait
        };
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(self.options.batch)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| nats_error("fetch", e))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| nats_error("fetch", e))?);
        }
        let mut polled = Polled {
            messages: messages.len(),
            ..Polled::default()
        };
        // Acknowledged at the end: duplicates, quarantined, applied.
        let mut done = Vec::new();
        let mut refused = None;
        for message in messages {
            let Some((stream, sequence, encoding, event)) = self.read(&message) else {
                polled.quarantined += 1;
                done.push(message);
                continue;
            };
            if let Some(required) = self.required
                && encoding.version < required
            {
                refused = Some(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "nats source: {stream} sequence {sequence} is {encoding} on the bus; \
                         this reader needs schema version {} or later \
                         (set the publishing sink's write_version)",
                        required.get()
                    ),
                ));
                break;
            }
            if sequence <= self.mark(&stream).await? {
                polled.duplicates += 1;
                done.push(message);
                continue;
            }
            let previous = message
                .headers
                .as_ref()
                .and_then(|h| h.get(header::PREVIOUS_SEQUENCE))
                .and_then(|v| v.as_str().parse().ok());
            // A message delivered again while held replaces the older
            // delivery (the one to acknowledge).
            let held = self.held.entry(stream).or_default();
            let since = held.get(&sequence).map_or_else(Instant::now, |h| h.since);
            held.insert(
                sequence,
                Held {
                    message,
                    previous,
                    encoding,
                    event,
                    since,
                },
            );
        }
        if let Some(refused) = refused {
            return Err(refused);
        }
        let streams: Vec<StreamId> = self.held.keys().cloned().collect();
        for stream in streams {
            let ready = self.ready(&stream).await?;
            self.apply_ready(&stream, ready, &mut polled, &mut done)
                .await?;
        }
        polled.held = self.held.values().map(BTreeMap::len).sum();
        for message in &done {
            message
                .double_ack()
                .await
                .map_err(|e| nats_error("acknowledge", e))?;
        }
        Ok(polled)
    }

    /// Takes the held messages of `stream` that may be applied now, in
    /// order: each one whose predecessor is applied (or comes before it in
    /// the run), that names none, or that waited `reorder_wait` for it
    /// (`true` beside it: applied with the gap) — unless a sink refused
    /// such a message and its backoff has not passed.
    async fn ready(&mut self, stream: &StreamId) -> Result<Vec<(u64, Held<E>, bool)>, Error> {
        let mut mark = self.mark(stream).await?;
        let wait = self.options.reorder_wait;
        let refused_until = self.refusals.get(stream).map(|r| r.again_at);
        let Some(held) = self.held.get_mut(stream) else {
            return Ok(Vec::new());
        };
        let mut ready = Vec::new();
        while let Some(entry) = held.first_entry() {
            let (sequence, waiting) = (*entry.key(), entry.get());
            // Nothing applied yet: what comes before the first message is
            // history the bus no longer holds (or never did), not a
            // publish still to come.
            let in_order = mark == 0 || waiting.previous.is_none_or(|previous| previous <= mark);
            if !in_order {
                if waiting.since.elapsed() < wait
                    || refused_until.is_some_and(|at| Instant::now() < at)
                {
                    break;
                }
                tracing::warn!(
                    %stream, sequence, previous = waiting.previous, applied = mark,
                    "nats source: the message published before this one never came; applying it with the gap"
                );
            }
            mark = sequence;
            ready.push((sequence, entry.remove(), !in_order));
        }
        Ok(ready)
    }

    /// Applies `ready` (from [`NatsSource::ready`]) to the sinks, runs of
    /// consecutive messages of one encoding together, and adds the
    /// messages the sinks took to `done`. A run that starts with a message
    /// applied with a gap is offered once: refused, it and everything
    /// after it are held again (see [`Polled::refused`]).
    async fn apply_ready(
        &mut self,
        stream: &StreamId,
        ready: Vec<(u64, Held<E>, bool)>,
        polled: &mut Polled,
        done: &mut Vec<jetstream::Message>,
    ) -> Result<(), Error> {
        let mut ready = ready.into_iter().peekable();
        while let Some((sequence, first, gap)) = ready.next() {
            let encoding = first.encoding;
            let mut run = Vec::new();
            let mut handed = Vec::new();
            let mut next = Some((sequence, first));
            // A gap starts a run of its own; the next one ends it.
            while let Some((sequence, held)) = next {
                let ((event, payload), rest) = held.hand();
                run.push((sequence, event, payload));
                handed.push(rest);
                next = ready
                    .next_if(|(_, h, gap)| h.encoding == encoding && !gap)
                    .map(|(sequence, held, _)| (sequence, held));
            }
            match self.apply(stream, encoding, run, !gap).await {
                Ok(applied) => {
                    polled.applied += applied;
                    polled.gaps += usize::from(gap);
                    self.refusals.remove(stream);
                    done.extend(handed.into_iter().map(|h| h.message));
                }
                Err(error) => {
                    // Only a run with a gap gives up.
                    let count = self.refusals.get(stream).map_or(1, |r| r.count + 1);
                    let delay = Backoff::ceiling(&self.options.retry, count);
                    tracing::warn!(
                        %stream, sequence, error = %error, ?delay,
                        "nats source: a sink refused the message with the gap; holding it again for the one published before it"
                    );
                    self.refusals.insert(
                        stream.clone(),
                        Refusals {
                            count,
                            again_at: Instant::now() + delay,
                        },
                    );
                    polled.refused += 1;
                    let rest: Vec<Handed> = ready.map(|(_, held, _)| held.hand().1).collect();
                    self.hold_again(handed.into_iter().chain(rest));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Puts handed messages back among the held ones, their events read
    /// again from the messages.
    fn hold_again(&mut self, messages: impl Iterator<Item = Handed>) {
        for handed in messages {
            // It was read before.
            let Some((stream, sequence, encoding, event)) = self.read(&handed.message) else {
                continue;
            };
            self.held.entry(stream).or_default().insert(
                sequence,
                Held {
                    message: handed.message,
                    previous: handed.previous,
                    encoding,
                    event,
                    since: handed.since,
                },
            );
        }
    }

    /// The stream, sequence, encoding and event of a message, or `None`
    /// (logged) when it is not a replication record this codec reads.
    fn read(&self, message: &jetstream::Message) -> Option<(StreamId, u64, Encoding, E)> {
        match read_parts(
            self.codec.as_ref(),
            message.headers.as_ref(),
            &message.payload,
        ) {
            Ok(read) => Some(read),
            Err(Unreadable::Headers) => {
                tracing::error!(subject = %message.subject, "quarantined a message without replication headers");
                None
            }
            Err(Unreadable::Event(stream, sequence, error)) => {
                tracing::error!(
                    %stream, sequence, %error,
                    "quarantined a message the codec cannot read"
                );
                None
            }
        }
    }

    /// Applies consecutive events of `stream` to every sink, retrying a
    /// failing sink with backoff (unless not `patient`: then its first
    /// retryable failure is returned); moves the stream's mark.
    async fn apply(
        &mut self,
        stream: &StreamId,
        encoding: Encoding,
        run: Vec<(u64, E, Bytes)>,
        patient: bool,
    ) -> Result<usize, Error> {
        let Some(last) = run.last().map(|(s, _, _)| *s) else {
            return Ok(0);
        };
        let count = run.len();
        let stored = run
            .into_iter()
            .map(|(sequence, event, payload)| (sequence, event.timestamp(), event, payload))
            .collect();
        let batch = EventBatch::from_stored(stream, stored, encoding);
        for target in &self.targets {
            let form = batch.form(self.codec.as_ref(), target.encoding);
            let records: Vec<_> = (0..batch.len())
                .filter_map(|i| match batch.record(i, &form)? {
                    Ok(record) => Some(record),
                    Err(err) if err.kind() == CodecErrorKind::Unrepresentable => None,
                    Err(err) => {
                        tracing::error!(sink = %target.name, error = %err, "cannot encode for the sink");
                        None
                    }
                })
                .collect();
            let mut backoff = Backoff::new(self.options.retry, self.seed);
            self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut rest: &[_] = &records;
            // After a refusal that does not say which record it was, the
            // batch goes one record at a time to find it.
            let mut one_by_one = false;
            while !rest.is_empty() {
                let chunk = if one_by_one { &rest[..1] } else { rest };
                match target.sink.apply(chunk).await {
                    Ok(()) => {
                        rest = &rest[chunk.len()..];
                        backoff.reset();
                    }
                    Err(err) => {
                        let located = err.applied_through_sequence().is_some() || chunk.len() == 1;
                        if let Some(through) = err.applied_through_sequence() {
                            let done = rest.iter().take_while(|r| r.sequence() <= through).count();
                            rest = &rest[done..];
                        }
                        let error = err.into_error();
                        if error.is_retryable() && !patient {
                            return Err(error);
                        }
                        if error.is_retryable() {
                            let delay = backoff.next_delay().unwrap_or_else(|| {
                                Backoff::ceiling(&self.options.retry, backoff.failures())
                            });
                            tracing::warn!(
                                sink = %target.name, %stream, error = %error, ?delay,
                                "sink failed; retrying"
                            );
                            tokio::time::sleep(delay).await;
                        } else if !located {
                            one_by_one = true;
                        } else {
                            tracing::error!(
                                sink = %target.name, %stream, error = %error,
                                sequence = rest.first().map(|r| r.sequence()),
                                "sink refused a replicated record; skipping it"
                            );
                            rest = rest.get(1..).unwrap_or_default();
                        }
                    }
                }
            }
        }
        self.marks.insert(stream.clone(), last);
        Ok(count)
    }
}

/// What a bus holds at one sequence of a replication stream: see
/// [`NatsSource::event_at`].
#[derive(Debug)]
pub enum HeldAt<E> {
    /// The event published with that sequence.
    Event(E),
    /// Nothing that far: the newest message on the subject has this lower
    /// sequence.
    EndsAt(u64),
    /// Not found, and why (an empty subject, removed by the stream's
    /// limits, unreadable): nothing to compare with.
    NotFound(String),
}

/// How far before a sequence [`NatsSource::event_at`] starts reading: a
/// message published out of order by up to this many is found.
const BEHIND: u64 = 4096;

/// One subject of a JetStream stream, read message by message.
struct Bus<'a> {
    context: &'a Context,
    name: &'a str,
    subject: String,
}

/// A message [`Bus`] read.
struct Found {
    message: async_nats::jetstream::message::StreamMessage,
}

/// The replication sequence in `headers`.
fn sequence_in(headers: &async_nats::HeaderMap) -> Option<u64> {
    headers
        .get(header::SEQUENCE)
        .and_then(|v| v.as_str().parse().ok())
}

/// What [`Bus::read_on`] saw.
struct ReadOn {
    /// The JetStream sequence of the message sought.
    found: Option<u64>,
    /// The highest replication sequence seen.
    highest: u64,
    /// It read to the subject's last message.
    to_the_end: bool,
}

impl Bus<'_> {
    /// The subject's first message at or after JetStream sequence `from`.
    async fn next_from(&self, from: u64) -> Result<Option<Found>, Error> {
        self.get(serde_json::json!({ "seq": from, "next_by_subj": self.subject }))
            .await
    }

    /// The stream's message at JetStream sequence `position`.
    async fn at(&self, position: u64) -> Result<Option<Found>, Error> {
        self.get(serde_json::json!({ "seq": position })).await
    }

    /// The replication sequence of the subject's newest message.
    async fn newest(&self) -> Result<Option<u64>, Error> {
        let newest = self
            .get(serde_json::json!({ "last_by_subj": self.subject }))
            .await?;
        Ok(newest.map(|found| sequence_in(&found.message.headers).unwrap_or(0)))
    }

    /// The JetStream sequence from which the subject's messages are at or
    /// past replication sequence `sequence`, bisected (the subject's
    /// messages are in order but for a few published again later).
    async fn first_at_or_past(&self, sequence: u64) -> Result<u64, Error> {
        let info = self
            .context
            .get_stream(self.name)
            .await
            .map_err(|e| nats_error(&format!("find stream {}", self.name), e))?;
        let state = &info.cached_info().state;
        let (mut low, mut high) = (state.first_sequence, state.last_sequence.saturating_add(1));
        while low < high {
            let middle = low + (high - low) / 2;
            match self.next_from(middle).await? {
                Some(found)
                    if sequence_in(&found.message.headers).is_some_and(|s| s < sequence) =>
                {
                    low = found.message.sequence + 1;
                }
                _ => high = middle,
            }
        }
        Ok(low)
    }

    /// Reads the subject's messages' headers from JetStream sequence
    /// `from` until the one of replication sequence `sought`, the last
    /// one, or `3 × BEHIND` of them.
    async fn read_on(&self, from: u64, sought: u64) -> Result<ReadOn, Error> {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        let mut read = ReadOn {
            found: None,
            highest: 0,
            to_the_end: true,
        };
        // An ordered consumer waits for more past the last: none to read.
        if self.next_from(from).await?.is_none() {
            return Ok(read);
        }
        let what = || format!("read {} on {}", self.subject, self.name);
        let stream = self
            .context
            .get_stream(self.name)
            .await
            .map_err(|e| nats_error(&what(), e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                headers_only: true,
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| nats_error(&what(), e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats_error(&what(), e))?;
        let limit = usize::try_from(3 * BEHIND).unwrap_or(usize::MAX);
        for _ in 0..limit {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| nats_error(&what(), "no message within 10 s"))?;
            let message = match next {
                Some(message) => message.map_err(|e| nats_error(&what(), e))?,
                None => return Ok(read),
            };
            let info = message.info().map_err(|e| nats_error(&what(), e))?;
            let sequence = message.headers.as_ref().and_then(sequence_in);
            if sequence == Some(sought) {
                read.found = Some(info.stream_sequence);
                return Ok(read);
            }
            read.highest = read.highest.max(sequence.unwrap_or(0));
            if info.pending == 0 {
                return Ok(read);
            }
        }
        read.to_the_end = false;
        Ok(read)
    }

    /// `STREAM.MSG.GET` (the client's own call cannot start a subject's
    /// next message at a sequence).
    async fn get(&self, request: serde_json::Value) -> Result<Option<Found>, Error> {
        use async_nats::jetstream::response::Response;
        #[derive(serde::Deserialize)]
        struct Got {
            message: async_nats::jetstream::stream::RawMessage,
        }
        let what = || format!("read {} on {}", self.subject, self.name);
        // A server answers at once; one that does not (permissions that
        // deny the request go unanswered) is not waited for long.
        let response: Response<Got> = tokio::time::timeout(
            Duration::from_secs(2),
            self.context
                .request(format!("STREAM.MSG.GET.{}", self.name), &request),
        )
        .await
        .map_err(|_| nats_error(&what(), "no answer within 2 s"))?
        .map_err(|e| nats_error(&what(), e))?;
        match response {
            Response::Ok(got) => {
                let message = got.message.try_into().map_err(|e| nats_error(&what(), e))?;
                Ok(Some(Found { message }))
            }
            Response::Err { error }
                if error.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(None)
            }
            Response::Err { error } => Err(nats_error(&what(), error)),
        }
    }
}

/// Why a message is not a replication record a codec reads.
enum Unreadable {
    /// Its replication headers are missing or malformed.
    Headers,
    /// Its event cannot be decoded.
    Event(StreamId, u64, omnirelay_replication::CodecError),
}

/// The stream, sequence, encoding and event of a message's `headers` and
/// `payload`.
fn read_parts<E: 'static>(
    codec: &dyn Codec<E>,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<(StreamId, u64, Encoding, E), Unreadable> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let parsed = (|| {
        let stream = StreamId::new(get(header::STREAM)?).ok()?;
        let sequence: u64 = get(header::SEQUENCE)?.parse().ok()?;
        let format = match get(header::FORMAT)? {
            "json" => Format::Json,
            "protobuf" => Format::Protobuf,
            _ => return None,
        };
        let version = WireVersion::new(get(header::SCHEMA_VERSION)?.parse().ok()?)?;
        Some((stream, sequence, Encoding::new(format, version)))
    })();
    let (stream, sequence, encoding) = parsed.ok_or(Unreadable::Headers)?;
    match codec.decode(encoding.format, payload) {
        Ok(event) => Ok((stream, sequence, encoding, event)),
        Err(error) => Err(Unreadable::Event(stream, sequence, error)),
    }
}
