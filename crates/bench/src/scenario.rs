//! The scenarios and the trait they implement.

pub mod backlog;
pub mod dispatcher;
pub mod durable;
pub mod fanout;
pub mod grpc;
pub mod json_codec;
pub mod nats;
pub mod objectstore;
mod raw;
pub mod replay;
pub mod sqlite;
pub mod telemetry;

/// The multi-threaded runtime the scenarios publish on (two workers, as
/// this project's machines have two cores).
///
/// # Panics
///
/// If the runtime cannot be created.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Which side of a comparison to run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The raw baseline: the least work that does the job.
    Baseline,
    /// Our implementation.
    Candidate,
}

/// One side-by-side comparison.
pub trait Scenario {
    /// The name to select it by, e.g. `json-encode`.
    fn name(&self) -> &'static str;

    /// What one operation is, for the throughput unit, e.g. `events`.
    fn unit(&self) -> &'static str;

    /// What the baseline is, in a few words.
    fn baseline(&self) -> &'static str;

    /// The smallest acceptable candidate ÷ baseline throughput ratio; 0
    /// for a scenario that is measured and reported with no target.
    fn target(&self) -> f64;

    /// Runs one pass of `side` and returns how many operations it did.
    /// A pass should take a millisecond or so; the runner repeats it.
    fn pass(&mut self, side: Side) -> u64;
}

/// A scenario's name and how to build it (building may write files, so it
/// happens only for the scenarios that run).
pub struct Entry {
    /// The name.
    pub name: &'static str,
    /// Builds the scenario, or says why it cannot run here (a server it
    /// needs is not installed).
    pub build: fn(&crate::BenchOptions) -> Result<Box<dyn Scenario>, String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every scenario, in a stable order.
pub fn scenarios() -> Vec<Entry> {
    vec![
        Entry {
            name: "json-encode",
            build: |_| Ok(Box::new(json_codec::JsonEncode::new())),
        },
        Entry {
            name: "json-decode",
            build: |_| Ok(Box::new(json_codec::JsonDecode::new())),
        },
        Entry {
            name: "durable-publish-1",
            build: |_| {
                Ok(Box::new(durable::DurablePublish::new(
                    "durable-publish-1",
                    1,
                    1.0 / 1.5,
                )))
            },
        },
        Entry {
            name: "durable-publish-64",
            build: |_| {
                Ok(Box::new(durable::DurablePublish::new(
                    "durable-publish-64",
                    64,
                    0.7,
                )))
            },
        },
        Entry {
            name: "durable-publish-512",
            build: |_| {
                Ok(Box::new(durable::DurablePublish::new(
                    "durable-publish-512",
                    512,
                    0.7,
                )))
            },
        },
        Entry {
            name: "durable-publish-4096",
            build: |_| {
                Ok(Box::new(durable::DurablePublish::new(
                    "durable-publish-4096",
                    4096,
                    0.7,
                )))
            },
        },
        Entry {
            name: "fanout-memory-4",
            build: |_| Ok(Box::new(fanout::Fanout::new())),
        },
        Entry {
            name: "telemetry-fanout",
            build: |_| Ok(Box::new(telemetry::TelemetryOverhead::new())),
        },
        Entry {
            name: "replay",
            build: |_| Ok(Box::new(replay::Replay::new())),
        },
        Entry {
            name: "backlog-drain",
            build: |_| Ok(Box::new(backlog::BacklogDrain::new())),
        },
        Entry {
            name: "sqlite-sink",
            build: |_| Ok(Box::new(sqlite::SqliteSinkScenario::new())),
        },
        Entry {
            name: "nats-sink",
            build: |_| Ok(Box::new(nats::NatsSinkScenario::new()?)),
        },
        Entry {
            name: "grpc-stream",
            build: |options| Ok(Box::new(grpc::GrpcStream::new(options.peer.as_deref())?)),
        },
        Entry {
            name: "dispatcher-cycle",
            build: |_| {
                Ok(Box::new(dispatcher::DispatcherCycle::new(
                    "dispatcher-cycle",
                    1,
                )?))
            },
        },
        Entry {
            name: "dispatcher-cycle-4",
            build: |_| {
                Ok(Box::new(dispatcher::DispatcherCycle::new(
                    "dispatcher-cycle-4",
                    4,
                )?))
            },
        },
        Entry {
            name: "objectstore-segment",
            build: |_| Ok(Box::new(objectstore::ObjectStoreSegments::new())),
        },
    ]
}
