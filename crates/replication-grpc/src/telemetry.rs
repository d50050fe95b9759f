//! The metrics of the receiving and serving side, recorded through the
//! `metrics` facade (names listed in `docs/telemetry.md`).

/// Events a receiver took, by `stream`, `sender` and `outcome`
/// (`appended`, or `duplicate`: at or below the sender's high-water mark).
pub const RECEIVED_EVENTS: &str = "omnirelay_replication_receiver_events_total";
/// Sequences a sender skipped (gaps in its numbering), by `stream` and
/// `sender`.
pub const SENDER_GAPS: &str = "omnirelay_replication_receiver_sender_gaps_total";
/// Times a sender restarted its numbering, by `stream` and `sender`.
pub const SENDER_EPOCHS: &str = "omnirelay_replication_receiver_sender_epochs_total";
/// Open `Subscribe` calls, by `stream`.
pub const SUBSCRIBERS: &str = "omnirelay_replication_subscribers";

/// Describes the metrics to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        RECEIVED_EVENTS,
        Unit::Count,
        "Events received from senders, appended or ignored as already received."
    );
    describe_counter!(
        SENDER_GAPS,
        Unit::Count,
        "Sequences a sender skipped in its numbering."
    );
    describe_counter!(
        SENDER_EPOCHS,
        Unit::Count,
        "Times a sender restarted its numbering."
    );
    describe_gauge!(
        SUBSCRIBERS,
        Unit::Count,
        "Open Subscribe calls following the stream."
    );
}
