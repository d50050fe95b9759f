//! Metric names, in one place. Libraries emit through the `metrics` facade;
//! binaries install an exporter. `docs/telemetry.md` lists them all.

/// Counter: bytes cut from torn or damaged log tails at recovery, by
/// `stream`.
pub const LOG_RECOVERY_CUT_BYTES: &str = "omnirelay_replication_log_recovery_cut_bytes_total";

/// Counter: recoveries that cut a damaged tail, by `stream`.
pub const LOG_RECOVERY_CUTS: &str = "omnirelay_replication_log_recovery_cuts_total";
