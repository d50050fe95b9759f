//! The cost of telemetry: the in-memory fan-out with a Prometheus recorder
//! against the same fan-out with none.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use omnirelay_replication::telemetry;

use crate::scenario::fanout::Fanout;
use crate::scenario::{Scenario, Side};

/// How often the recorder is scraped (rendered) and its histograms drained,
/// as a served `/metrics` with a fast Prometheus would be.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// `telemetry-fanout`: [`Fanout`] recorded by a Prometheus recorder
/// (configured as `omnirelay` configures it, and scraped every second,
/// with the scrapes charged to this side) against an identical [`Fanout`]
/// with no recorder.
pub struct TelemetryOverhead {
    off: Fanout,
    on: Fanout,
    handle: PrometheusHandle,
    scraped: Instant,
}

impl std::fmt::Debug for TelemetryOverhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryOverhead").finish_non_exhaustive()
    }
}

impl TelemetryOverhead {
    /// Builds both fan-outs.
    ///
    /// # Panics
    ///
    /// If a fan-out cannot be built.
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for name in telemetry::SECONDS_HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(
                    Matcher::Full((*name).to_owned()),
                    telemetry::SECONDS_BUCKETS,
                )
                .unwrap_or_else(|e| panic!("buckets: {e}"));
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            off: Fanout::new(),
            on: Fanout::recorded_by(Some(&recorder)),
            handle,
            scraped: Instant::now(),
        }
    }
}

impl Default for TelemetryOverhead {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for TelemetryOverhead {
    fn name(&self) -> &'static str {
        "telemetry-fanout"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "the same fan-out with no metrics recorder"
    }

    fn target(&self) -> f64 {
        0.95
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => self.off.replicate(),
            Side::Candidate => {
                self.on.replicate();
                if self.scraped.elapsed() >= SCRAPE_EVERY {
                    self.handle.run_upkeep();
                    std::hint::black_box(self.handle.render());
                    self.scraped = Instant::now();
                }
            }
        }
        self.off.events_per_pass()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `series` (name and labels) in the exposition.
    fn value_of(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn the_recorded_side_reports_every_event_and_the_other_side_costs_no_recorder() {
        let mut scenario = TelemetryOverhead::new();
        let per_pass = scenario.pass(Side::Candidate);
        scenario.pass(Side::Baseline);
        let exposition = scenario.handle.render();
        // One warm-up event, then a pass, to four sinks; the fan-out with
        // no recorder added nothing.
        assert_eq!(
            value_of(
                &exposition,
                r#"omnirelay_replication_published_events_total{stream="default"}"#
            ),
            Some((1 + per_pass) as f64),
            "{exposition}"
        );
        assert_eq!(
            value_of(
                &exposition,
                r#"omnirelay_replication_sink_sent_events_total{stream="default",sink="count-3"}"#
            ),
            Some((1 + per_pass) as f64),
            "{exposition}"
        );
        assert!(
            exposition.contains("omnirelay_replication_publish_duration_seconds_bucket{"),
            "publish durations are a real histogram: {exposition}"
        );
        // One acknowledgement awaited per batch of the pass.
        assert_eq!(
            value_of(
                &exposition,
                r#"omnirelay_replication_publish_duration_seconds_count{stream="default"}"#
            ),
            Some(per_pass.div_ceil(512) as f64),
            "{exposition}"
        );
    }
}
