//! # omnirelay-bench
//!
//! The engine of `omnirelay bench`: every scenario runs a raw baseline and
//! our implementation of the same work in one process, interleaved round
//! by round, and reports the median of the per-round throughput ratios
//! (candidate ÷ baseline) against the scenario's target.
//!
//! - [`Scenario`] is one comparison; [`scenarios`] lists them all.
//! - [`run`] measures the selected scenarios with a progress bar and
//!   returns one [`BenchRecord`] each; [`render_table`] formats them, and
//!   they serialize as the JSON record format of `--json FILE`;
//!   [`render_batch_chart`] draws durable-publish throughput against batch
//!   size beside the baseline as SVG (`--svg FILE`).

#![warn(missing_docs)]

mod chart;
mod runner;
pub mod scenario;

pub use chart::render_batch_chart;
pub use runner::{BenchOptions, BenchRecord, BenchRun, RunError, render_table, run};
pub use scenario::grpc::serve_raw_peer;
pub use scenario::{Entry, Scenario, Side, scenarios};
