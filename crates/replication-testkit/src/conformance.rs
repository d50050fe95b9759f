//! The sink conformance suite: what every sink must do, checked against
//! its real backend.
//!
//! A sink crate implements [`Backend`] for its sink over a backend the test
//! started (a temporary SQLite file, an S3 server on loopback, …) and calls
//! [`run`] from an integration test:
//!
//! ```no_run
//! # use omnirelay_replication_testkit::conformance::{self, Backend};
//! # async fn example(backend: impl Backend) {
//! let report = conformance::run(&backend).await;
//! report.assert_passed();
//! # }
//! ```
//!
//! The checks: records land in order and byte for byte; re-delivery of an
//! already-applied range (before and after a restart) stores nothing twice;
//! the sink's checkpoint follows what it holds and survives a restart; a
//! batch refused part-way reports how far it got and holds exactly that
//! prefix; refusals are permanent errors, outages retryable ones, after
//! which the sink recovers; streams are kept apart; `close` keeps what was
//! applied. A check that does not apply to a sink (one that refuses
//! nothing has no poison record) is reported as not applicable with the
//! reason, never silently skipped.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use omnirelay_replication::{
    Encoding, ErrorKind, EventKind, Health, OwnedRecord, RecordHeader, SharedSink, Sink, SinkError,
    SinkExt, StreamId, Timestamp,
};

/// A sink under test and the backend it writes to.
pub trait Backend: Send + Sync {
    /// The encoding the sink writes; the suite's records are JSON documents
    /// (one line each) labelled with it.
    fn encoding(&self) -> Encoding {
        Encoding::JSON_V1
    }

    /// A new sink over the backend, as a restarted process would open it.
    fn open(&self) -> impl Future<Output = SharedSink> + Send;

    /// What the backend holds for `stream`, read from the backend itself,
    /// not through the sink: each record's sequence and bytes, in sequence
    /// order.
    fn stored(&self, stream: &StreamId) -> impl Future<Output = Vec<(u64, Vec<u8>)>> + Send;

    /// Bytes in the sink's encoding that the sink refuses for good, if it
    /// refuses anything.
    fn poison(&self) -> Option<Bytes> {
        None
    }

    /// An encoding the sink cannot write, if there is one.
    fn refused_encoding(&self) -> Option<Encoding> {
        None
    }

    /// Makes the backend unavailable (returns `false` if this backend
    /// cannot be made so) until [`Backend::end_outage`].
    fn begin_outage(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Ends the outage [`Backend::begin_outage`] began.
    fn end_outage(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sink did what the check requires.
    Passed,
    /// The check does not apply to this sink, and why.
    NotApplicable(String),
    /// The sink did not, and how.
    Failed(String),
}

/// What [`run`] found, check by check.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Each check's name and outcome, in the order they ran.
    pub checks: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// The names of the checks that passed.
    pub fn passed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Panics, listing every failed check, unless all passed or were not
    /// applicable.
    ///
    /// # Panics
    ///
    /// If a check failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                Outcome::Failed(why) => Some(format!("{name}: {why}")),
                _ => None,
            })
            .collect();
        assert!(
            failed.is_empty(),
            "sink conformance failed:\n  {}\n{self}",
            failed.join("\n  ")
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.checks {
            match outcome {
                Outcome::Passed => writeln!(f, "  {name}: passed")?,
                Outcome::NotApplicable(why) => writeln!(f, "  {name}: not applicable ({why})")?,
                Outcome::Failed(why) => writeln!(f, "  {name}: FAILED ({why})")?,
            }
        }
        Ok(())
    }
}

/// Runs every check against `backend`, each on its own stream, and
/// reports them all (a failed check does not stop the others).
pub async fn run<B: Backend>(backend: &B) -> Report {
    let mut report = Report::default();
    let checks: [(&'static str, Check<'_>); 8] = [
        ("ordering", Box::pin(ordering(backend))),
        ("idempotent_redelivery", Box::pin(redelivery(backend))),
        ("checkpoint", Box::pin(checkpoint(backend))),
        ("partial_batch", Box::pin(partial_batch(backend))),
        ("refused_encoding", Box::pin(refused_encoding(backend))),
        ("outage", Box::pin(outage(backend))),
        ("streams_apart", Box::pin(streams_apart(backend))),
        ("close", Box::pin(close(backend))),
    ];
    for (name, check) in checks {
        let outcome = match check.await {
            Ok(outcome) => outcome,
            Err(why) => Outcome::Failed(why),
        };
        report.checks.push((name, outcome));
    }
    report
}

type Check<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Outcome, String>> + Send + 'a>>;

/// The record the suite writes for `sequence` of `stream`: a one-line JSON
/// document in the shape of the reference's events.
pub fn record(stream: &StreamId, sequence: u64, encoding: Encoding) -> OwnedRecord {
    let timestamp = Timestamp::from_unix_millis(1_764_300_000_000 + sequence as i64 * 7)
        .unwrap_or(Timestamp::MIN);
    let peer = (!sequence.is_multiple_of(3)).then(|| format!("peer-{}", sequence % 3));
    let doc = format!(
        r#"{{"sequenceNumber":{sequence},"eventType":"Enqueue","timestamp":"{}","peerId":{},"metadata":{{"stream":"{stream}"}}}}"#,
        timestamp.to_json_string(),
        peer.as_ref()
            .map_or("null".to_owned(), |p| format!("\"{p}\"")),
    );
    let header = RecordHeader {
        sequence,
        timestamp,
        kind: EventKind {
            code: 1 + (sequence % 7) as i32,
            name: "Enqueue",
        },
        peer: peer.map(Into::into),
    };
    OwnedRecord::new(stream.clone(), header, encoding, Bytes::from(doc))
}

fn records<B: Backend>(
    backend: &B,
    stream: &StreamId,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<OwnedRecord> {
    range
        .map(|s| record(stream, s, backend.encoding()))
        .collect()
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap_or_default()
}

async fn apply(sink: &SharedSink, records: &[OwnedRecord]) -> Result<(), String> {
    sink.apply_owned(records)
        .await
        .map_err(|e| format!("apply of {} failed: {}", describe(records), e.error()))
}

fn describe(records: &[OwnedRecord]) -> String {
    match (records.first(), records.last()) {
        (Some(a), Some(b)) => format!("{}..={} of {}", a.sequence(), b.sequence(), a.stream()),
        _ => "nothing".to_owned(),
    }
}

/// Checks the backend holds exactly `expected` of `stream`, byte for byte.
async fn expect_stored<B: Backend>(
    backend: &B,
    stream: &StreamId,
    expected: &[OwnedRecord],
    when: &str,
) -> Result<(), String> {
    let stored = backend.stored(stream).await;
    let want: Vec<(u64, Vec<u8>)> = expected
        .iter()
        .map(|r| (r.sequence(), r.bytes().to_vec()))
        .collect();
    if stored == want {
        return Ok(());
    }
    let sequences = |rows: &[(u64, Vec<u8>)]| rows.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    if sequences(&stored) == sequences(&want) {
        return Err(format!(
            "{when}: the backend holds the right sequences of {stream} but not the bytes written"
        ));
    }
    Err(format!(
        "{when}: the backend holds sequences {:?} of {stream}, expected {:?}",
        sequences(&stored),
        sequences(&want)
    ))
}

async fn checkpoint_of(sink: &SharedSink, stream: &StreamId) -> Result<Option<u64>, String> {
    sink.checkpoint(stream)
        .await
        .map_err(|e| format!("checkpoint of {stream} failed: {}", e.error()))
}

async fn ordering<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let stream = stream("conformance-ordering");
    let sink = backend.open().await;
    let all = records(backend, &stream, 1..=10);
    apply(&sink, &all[..4]).await?;
    apply(&sink, &all[4..]).await?;
    expect_stored(backend, &stream, &all, "after two batches").await?;
    if sink.health() != Health::Healthy {
        return Err(format!(
            "health after successful applies is {:?}",
            sink.health()
        ));
    }
    Ok(Outcome::Passed)
}

async fn redelivery<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let stream = stream("conformance-redelivery");
    let all = records(backend, &stream, 1..=12);
    let sink = backend.open().await;
    apply(&sink, &all[..6]).await?;
    apply(&sink, &all[2..9]).await?;
    expect_stored(backend, &stream, &all[..9], "after an overlapping batch").await?;
    apply(&sink, &all[..3]).await?;
    expect_stored(
        backend,
        &stream,
        &all[..9],
        "after an already-applied batch",
    )
    .await?;
    drop(sink);
    let sink = backend.open().await;
    apply(&sink, &all[..9]).await?;
    apply(&sink, &all[7..]).await?;
    expect_stored(
        backend,
        &stream,
        &all,
        "after re-delivery to a restarted sink",
    )
    .await?;
    Ok(Outcome::Passed)
}

async fn checkpoint<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let stream = stream("conformance-checkpoint");
    let sink = backend.open().await;
    match checkpoint_of(&sink, &stream).await? {
        None | Some(0) => {}
        Some(mark) => return Err(format!("an unwritten stream has checkpoint {mark}")),
    }
    apply(&sink, &records(backend, &stream, 1..=4)).await?;
    let Some(mark) = checkpoint_of(&sink, &stream).await? else {
        return Ok(Outcome::NotApplicable(
            "the sink keeps no checkpoint (delivery resumes from the saved one)".to_owned(),
        ));
    };
    if mark != 4 {
        return Err(format!("checkpoint after applying 1..=4 is {mark}"));
    }
    drop(sink);
    let sink = backend.open().await;
    match checkpoint_of(&sink, &stream).await? {
        Some(4) => Ok(Outcome::Passed),
        other => Err(format!(
            "checkpoint after a restart is {other:?}, expected 4"
        )),
    }
}

async fn partial_batch<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let Some(poison) = backend.poison() else {
        return Ok(Outcome::NotApplicable(
            "the sink refuses no record".to_owned(),
        ));
    };
    let stream = stream("conformance-partial");
    let sink = backend.open().await;
    let mut batch = records(backend, &stream, 1..=5);
    let bad = &batch[2];
    batch[2] = OwnedRecord::new(stream.clone(), bad.header().clone(), bad.encoding(), poison);
    let err = match sink.apply_owned(&batch).await {
        Ok(()) => return Err("a batch with a poison record was accepted".to_owned()),
        Err(err) => err,
    };
    expect_refusal(&err, "the poison record")?;
    match err.applied_through_sequence() {
        Some(2) => {}
        other => {
            return Err(format!(
                "the refusal says it applied through {other:?}, expected 2"
            ));
        }
    }
    expect_stored(backend, &stream, &batch[..2], "after a refused batch").await?;
    if let Some(mark) = checkpoint_of(&sink, &stream).await?
        && mark != 2
    {
        return Err(format!(
            "checkpoint after a refused batch is {mark}, expected 2"
        ));
    }
    // Delivery goes on after the poison record (it went to dead letters).
    apply(&sink, &batch[3..]).await?;
    let mut expected = batch[..2].to_vec();
    expected.extend_from_slice(&batch[3..]);
    expect_stored(backend, &stream, &expected, "after the rest of the batch").await?;
    Ok(Outcome::Passed)
}

fn expect_refusal(err: &SinkError, what: &str) -> Result<(), String> {
    if err.error().is_retryable() {
        return Err(format!(
            "{what} failed with a retryable error ({}): it would be retried for ever",
            err.kind()
        ));
    }
    Ok(())
}

async fn refused_encoding<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let Some(encoding) = backend.refused_encoding() else {
        return Ok(Outcome::NotApplicable(
            "the sink writes every encoding".to_owned(),
        ));
    };
    let stream = stream("conformance-encoding");
    let sink = backend.open().await;
    let batch = vec![record(&stream, 1, encoding)];
    match sink.apply_owned(&batch).await {
        Ok(()) => Err(format!("a record in {encoding} was accepted")),
        Err(err) if err.kind() != ErrorKind::Config => Err(format!(
            "a record in {encoding} failed with {}, expected config",
            err.kind()
        )),
        Err(_) => {
            expect_stored(backend, &stream, &[], "after a refused encoding").await?;
            Ok(Outcome::Passed)
        }
    }
}

/// Attempts at the batch after an outage, 200 ms apart, before the sink
/// counts as not recovering.
const OUTAGE_RETRIES: u32 = 10;

async fn outage<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let stream = stream("conformance-outage");
    let all = records(backend, &stream, 1..=6);
    let sink = backend.open().await;
    apply(&sink, &all[..2]).await?;
    if !backend.begin_outage().await {
        return Ok(Outcome::NotApplicable(
            "the test cannot make this backend unavailable".to_owned(),
        ));
    }
    let during = sink.apply_owned(&all[2..]).await;
    backend.end_outage().await;
    match during {
        Ok(()) => {
            return Err("a batch was acknowledged while the backend was unavailable".to_owned());
        }
        Err(err) if !err.error().is_retryable() => {
            return Err(format!(
                "an outage failed with {}, which is not retried",
                err.kind()
            ));
        }
        Err(_) => {}
    }
    // Delivery retries the whole batch, as often as the error is
    // retryable; the sink recovers (a client still reconnecting, or
    // acknowledgements slow while the backend catches up, may fail the
    // first retries under load, as they would in delivery).
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.apply_owned(&all[2..]).await {
            Ok(()) => break,
            Err(err) if err.error().is_retryable() && attempts < OUTAGE_RETRIES => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(err) => {
                return Err(format!(
                    "after the outage, attempt {attempts} of {} failed: {}",
                    describe(&all[2..]),
                    err.error()
                ));
            }
        }
    }
    expect_stored(backend, &stream, &all, "after the outage").await?;
    if sink.health() != Health::Healthy {
        return Err(format!("health after recovering is {:?}", sink.health()));
    }
    Ok(Outcome::Passed)
}

async fn streams_apart<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let (a, b) = (stream("conformance-a"), stream("conformance-b"));
    let sink = backend.open().await;
    let in_a = records(backend, &a, 1..=3);
    let in_b = records(backend, &b, 1..=2);
    apply(&sink, &in_a).await?;
    apply(&sink, &in_b).await?;
    expect_stored(backend, &a, &in_a, "stream a").await?;
    expect_stored(backend, &b, &in_b, "stream b").await?;
    let marks = (
        checkpoint_of(&sink, &a).await?,
        checkpoint_of(&sink, &b).await?,
    );
    match marks {
        (None, None) | (Some(3), Some(2)) => Ok(Outcome::Passed),
        other => Err(format!(
            "checkpoints of a and b are {other:?}, expected 3 and 2"
        )),
    }
}

async fn close<B: Backend>(backend: &B) -> Result<Outcome, String> {
    let stream = stream("conformance-close");
    let all = records(backend, &stream, 1..=3);
    let sink = backend.open().await;
    apply(&sink, &all).await?;
    sink.close()
        .await
        .map_err(|e| format!("close failed: {}", e.error()))?;
    sink.close()
        .await
        .map_err(|e| format!("a second close failed: {}", e.error()))?;
    drop(sink);
    let sink = backend.open().await;
    expect_stored(backend, &stream, &all, "after close and reopen").await?;
    if let Some(mark) = checkpoint_of(&sink, &stream).await?
        && mark != 3
    {
        return Err(format!(
            "checkpoint after close and reopen is {mark}, expected 3"
        ));
    }
    Ok(Outcome::Passed)
}
