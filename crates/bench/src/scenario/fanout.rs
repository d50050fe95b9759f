//! In-memory fan-out to four sinks against a raw batched-channel baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use omnirelay_replication::{
    BatchOptions, Durability, DurableOptions, DurableReplicator, LogOptions, SinkExt, SinkOptions,
    StreamId,
};
use tokio::sync::mpsc;

use crate::scenario::raw::{Counting, RawCodec, RawEvent};
use crate::scenario::{Scenario, Side};

const SINKS: usize = 4;
const EVENTS_PER_PASS: usize = 8192;
const BATCH: usize = 512;

/// `fanout-memory-4`: batches of events published (`submit_all`) through a
/// `memory` log to four sinks, against the same batches through four
/// bounded channels to four consumer tasks.
pub struct Fanout {
    runtime: tokio::runtime::Runtime,
    replicator: DurableReplicator<RawEvent>,
    counters: Vec<Counting>,
    events: Vec<RawEvent>,
    channels: Vec<mpsc::Sender<Arc<[Bytes]>>>,
    consumed: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").finish_non_exhaustive()
    }
}

impl Fanout {
    /// Builds the replicator, the sinks and the channels, with no metrics
    /// recorder.
    ///
    /// # Panics
    ///
    /// If the runtime or replicator cannot be created.
    pub fn new() -> Self {
        Self::recorded_by(None)
    }

    /// As [`Fanout::new`], with the replicator's metrics recorded by
    /// `recorder` (metric handles are taken when streams and sinks are
    /// set up, so the whole hot path reports to it).
    ///
    /// # Panics
    ///
    /// If the runtime or replicator cannot be created.
    pub fn recorded_by(recorder: Option<&dyn metrics::Recorder>) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let runtime = crate::scenario::runtime();
        let options = DurableOptions {
            log: LogOptions {
                durability: Durability::Memory,
                tail_max_events: 4 * EVENTS_PER_PASS,
                ..LogOptions::default()
            },
            ..DurableOptions::new(dir.path())
        };
        let counters: Vec<Counting> = (0..SINKS).map(|_| Counting::default()).collect();
        let events: Vec<RawEvent> = (0..EVENTS_PER_PASS).map(RawEvent::new).collect();
        let setup = async {
            let replicator = DurableReplicator::open(Arc::new(RawCodec), options)
                .await
                .unwrap_or_else(|e| panic!("open: {e}"));
            for (i, counter) in counters.iter().enumerate() {
                let sink_options = SinkOptions {
                    batch: BatchOptions {
                        max_events: BATCH,
                        ..BatchOptions::default()
                    },
                    ..SinkOptions::default()
                };
                replicator
                    .add_sink(
                        &format!("count-{i}"),
                        counter.clone().shared(),
                        sink_options,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("sink: {e}"));
            }
            // Creates the stream (and its metric handles) now.
            let _ = replicator
                .submit_all(&StreamId::default(), events[..1].to_vec())
                .await;
            replicator.wait_caught_up().await;
            replicator
        };
        let replicator = match recorder {
            Some(recorder) => metrics::with_local_recorder(recorder, || runtime.block_on(setup)),
            None => runtime.block_on(setup),
        };
        let consumed = Arc::new(AtomicU64::new(0));
        let channels = (0..SINKS)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Arc<[Bytes]>>(64);
                let consumed = consumed.clone();
                runtime.spawn(async move {
                    while let Some(batch) = rx.recv().await {
                        let bytes: usize = batch.iter().map(Bytes::len).sum();
                        std::hint::black_box(bytes);
                        consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                });
                tx
            })
            .collect();
        Self {
            runtime,
            replicator,
            counters,
            events,
            channels,
            consumed,
            _dir: dir,
        }
    }

    /// Events in one pass.
    pub(crate) fn events_per_pass(&self) -> u64 {
        self.events.len() as u64
    }

    /// One pass of events through the replicator to every sink.
    pub(crate) fn replicate(&self) {
        let want: Vec<u64> = self
            .counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed) + EVENTS_PER_PASS as u64)
            .collect();
        let (replicator, events, counters) = (&self.replicator, &self.events, &self.counters);
        self.runtime.block_on(async {
            let stream = StreamId::default();
            let mut pending = Vec::with_capacity(events.len() / BATCH + 1);
            for chunk in events.chunks(BATCH) {
                if let Ok(batch) = replicator.submit_all(&stream, chunk.to_vec()).await {
                    pending.push(batch);
                }
            }
            for batch in pending {
                let _ = batch.durable().await;
            }
            while counters
                .iter()
                .zip(&want)
                .any(|(c, w)| c.0.load(Ordering::Relaxed) < *w)
            {
                tokio::task::yield_now().await;
            }
        });
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for Fanout {
    fn name(&self) -> &'static str {
        "fanout-memory-4"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "batches through 4 bounded tokio channels to 4 consumer tasks"
    }

    fn target(&self) -> f64 {
        0.5
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                let start = self.consumed.load(Ordering::Relaxed);
                let want = start + (SINKS * EVENTS_PER_PASS) as u64;
                let (channels, events, consumed) = (&self.channels, &self.events, &self.consumed);
                self.runtime.block_on(async {
                    for chunk in events.chunks(BATCH) {
                        let batch: Arc<[Bytes]> = chunk.iter().map(|e| e.bytes.clone()).collect();
                        for tx in channels {
                            let _ = tx.send(batch.clone()).await;
                        }
                    }
                    while consumed.load(Ordering::Relaxed) < want {
                        tokio::task::yield_now().await;
                    }
                });
            }
            Side::Candidate => self.replicate(),
        }
        EVENTS_PER_PASS as u64
    }
}
