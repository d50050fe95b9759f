//! Metric names, in one place. Libraries emit through the `metrics` facade;
//! binaries install an exporter (Prometheus at `GET /metrics`).
//! `docs/telemetry.md` lists every metric with its labels and meaning.

/// Counter: events published, by `stream`.
pub const PUBLISHED_EVENTS: &str = "omnirelay_replication_published_events_total";
/// Counter: bytes appended to the log (its encoding, framing included),
/// by `stream`.
pub const PUBLISHED_BYTES: &str = "omnirelay_replication_published_bytes_total";
/// Histogram: seconds from `submit` to acknowledgement, by `stream`.
pub const PUBLISH_DURATION: &str = "omnirelay_replication_publish_duration_seconds";
/// Gauge: bytes in the stream's log, by `stream`.
pub const LOG_BYTES: &str = "omnirelay_replication_log_bytes";
/// Gauge: 1 while a required sink's lag budget holds publishers back, by
/// `stream`.
pub const BACKPRESSURE_ACTIVE: &str = "omnirelay_replication_backpressure_active";
/// Counter: events a sink applied, by `stream`, `sink`.
pub const SINK_SENT_EVENTS: &str = "omnirelay_replication_sink_sent_events_total";
/// Counter: failed applies, by `stream`, `sink`, `kind` (the error kind).
pub const SINK_ERRORS: &str = "omnirelay_replication_sink_errors_total";
/// Counter: retries of failed applies, by `stream`, `sink`.
pub const SINK_RETRIES: &str = "omnirelay_replication_sink_retries_total";
/// Counter: events a sink never got, by `stream`, `sink`, `reason`
/// (`retention`: dropped before a best-effort sink read them;
/// `unrepresentable`: no form in the sink's schema version).
pub const SINK_DISCARDED_EVENTS: &str = "omnirelay_replication_sink_discarded_events_total";
/// Counter: events moved to the sink's dead-letter log, by `stream`, `sink`.
pub const SINK_DEAD_LETTERED_EVENTS: &str = "omnirelay_replication_sink_dead_lettered_events_total";
/// Gauge: events the sink has not applied (head − checkpoint), by `stream`,
/// `sink`.
pub const SINK_LAG_EVENTS: &str = "omnirelay_replication_sink_lag_events";
/// Gauge: age in seconds of the oldest event the sink has not applied (0
/// when caught up), by `stream`, `sink`.
pub const SINK_LAG_SECONDS: &str = "omnirelay_replication_sink_lag_seconds";
/// Counter: bytes cut from torn or damaged log tails at recovery, by
/// `stream`.
pub const LOG_RECOVERY_CUT_BYTES: &str = "omnirelay_replication_log_recovery_cut_bytes_total";
/// Counter: recoveries that cut a damaged tail, by `stream`.
pub const LOG_RECOVERY_CUTS: &str = "omnirelay_replication_log_recovery_cuts_total";

/// The reason label of [`SINK_DISCARDED_EVENTS`] for events dropped by
/// retention before a best-effort sink read them.
pub const REASON_RETENTION: &str = "retention";
/// The reason label of [`SINK_DISCARDED_EVENTS`] for events with no form in
/// the sink's schema version.
pub const REASON_UNREPRESENTABLE: &str = "unrepresentable";

/// Histograms in seconds, and the buckets exporters should give them.
pub const SECONDS_HISTOGRAMS: &[&str] = &[PUBLISH_DURATION];
/// Buckets for [`SECONDS_HISTOGRAMS`]: 50 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Describes every metric of the framework to the installed recorder
/// (units and help texts in the exposition).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        PUBLISHED_EVENTS,
        Unit::Count,
        "Events published to the stream."
    );
    describe_counter!(
        PUBLISHED_BYTES,
        Unit::Bytes,
        "Bytes appended to the stream's log, framing included."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time from submit to acknowledgement."
    );
    describe_gauge!(LOG_BYTES, Unit::Bytes, "Bytes in the stream's log.");
    describe_gauge!(
        BACKPRESSURE_ACTIVE,
        "1 while a required sink's lag budget holds publishers back."
    );
    describe_counter!(SINK_SENT_EVENTS, Unit::Count, "Events the sink applied.");
    describe_counter!(SINK_ERRORS, Unit::Count, "Failed applies, by error kind.");
    describe_counter!(SINK_RETRIES, Unit::Count, "Retries of failed applies.");
    describe_counter!(
        SINK_DISCARDED_EVENTS,
        Unit::Count,
        "Events the sink never got, by reason."
    );
    describe_counter!(
        SINK_DEAD_LETTERED_EVENTS,
        Unit::Count,
        "Events moved to the sink's dead-letter log."
    );
    describe_gauge!(
        SINK_LAG_EVENTS,
        Unit::Count,
        "Events the sink has not applied yet."
    );
    describe_gauge!(
        SINK_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest event the sink has not applied."
    );
    describe_counter!(
        LOG_RECOVERY_CUT_BYTES,
        Unit::Bytes,
        "Bytes cut from damaged log tails at recovery."
    );
    describe_counter!(
        LOG_RECOVERY_CUTS,
        Unit::Count,
        "Recoveries that cut a damaged log tail."
    );
}
