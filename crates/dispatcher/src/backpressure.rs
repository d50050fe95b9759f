//! The dispatcher's own backpressure (reference §3.6): high and low
//! watermarks on pending items with a cooldown between transitions; while
//! active, enqueuers wait.
//!
//! Fixed on purpose: a transition the cooldown deferred is retried when the
//! cooldown ends (on the next mutation or the next sweep tick, whichever
//! comes first), so waiting enqueuers never stall for want of traffic; and
//! watermarks are validated (no "disabled" high watermark that keeps
//! backpressure on forever).

use std::time::{Duration, Instant};

use omnirelay_replication::Timestamp;
use omnirelay_resourcelease::telemetry;
use tokio::sync::watch;

/// Backpressure settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackpressureOptions {
    /// Pending items at which backpressure turns on.
    pub high_watermark: usize,
    /// Pending items at which it turns off (default: half the high one).
    pub low_watermark: Option<usize>,
    /// The least time between transitions.
    pub cooldown: Duration,
}

impl BackpressureOptions {
    /// The low watermark in effect.
    pub fn low(&self) -> usize {
        self.low_watermark.unwrap_or(self.high_watermark / 2)
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A message naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_watermark == 0 {
            return Err("high_watermark: must be at least 1".to_owned());
        }
        if self.low() >= self.high_watermark {
            return Err(format!(
                "low_watermark: must be below high_watermark ({})",
                self.high_watermark
            ));
        }
        if self.cooldown.is_zero() {
            return Err("cooldown_ms: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// A transition, as listeners see it (the reference's
/// `ResourceLeaseBackpressureSignal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackpressureSignal {
    /// Whether backpressure is now on.
    pub is_active: bool,
    /// Pending items at the transition.
    pub pending_count: usize,
    /// When.
    pub observed_at: Timestamp,
    /// The high watermark.
    pub high_watermark: usize,
    /// The low watermark.
    pub low_watermark: usize,
}

impl BackpressureSignal {
    /// The reference's JSON: `{"isActive","pendingCount","observedAt",
    /// "highWatermark","lowWatermark"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "isActive": self.is_active,
            "pendingCount": self.pending_count,
            "observedAt": self.observed_at.json_text().as_str(),
            "highWatermark": self.high_watermark,
            "lowWatermark": self.low_watermark,
        })
    }
}

/// The state machine; the dispatcher calls [`Backpressure::evaluate`] after
/// every mutation but heartbeats, and on every sweep tick.
#[derive(Debug)]
pub(crate) struct Backpressure {
    options: Option<BackpressureOptions>,
    active: bool,
    last_transition: Option<Instant>,
    signals: watch::Sender<Option<BackpressureSignal>>,
}

impl Backpressure {
    pub(crate) fn new(options: Option<BackpressureOptions>) -> Self {
        if options.is_some() {
            // Both series exist from the start, so that the first
            // transition counts in a rate or increase over them.
            for state in ["active", "inactive"] {
                metrics::counter!(telemetry::BACKPRESSURE_TRANSITIONS, "state" => state)
                    .increment(0);
            }
        }
        Self {
            options,
            active: false,
            last_transition: None,
            signals: watch::Sender::new(None),
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    pub(crate) fn signals(&self) -> watch::Receiver<Option<BackpressureSignal>> {
        self.signals.subscribe()
    }

    /// Turns backpressure on at or above the high watermark, off at or
    /// below the low one, unless the cooldown since the last transition
    /// has not passed. Returns whether it changed.
    pub(crate) fn evaluate(&mut self, pending: usize, now: Instant, at: Timestamp) -> bool {
        let Some(options) = &self.options else {
            return false;
        };
        let wanted = if pending >= options.high_watermark {
            true
        } else if pending <= options.low() {
            false
        } else {
            return false;
        };
        if wanted == self.active {
            return false;
        }
        if self
            .last_transition
            .is_some_and(|last| now.duration_since(last) < options.cooldown)
        {
            return false;
        }
        self.active = wanted;
        self.last_transition = Some(now);
        let state = if wanted { "active" } else { "inactive" };
        metrics::counter!(telemetry::BACKPRESSURE_TRANSITIONS, "state" => state).increment(1);
        if wanted {
            tracing::warn!(
                pending,
                high = options.high_watermark,
                "backpressure activated: enqueuers wait"
            );
        } else {
            tracing::info!(pending, low = options.low(), "backpressure cleared");
        }
        self.signals.send_replace(Some(BackpressureSignal {
            is_active: wanted,
            pending_count: pending,
            observed_at: at,
            high_watermark: options.high_watermark,
            low_watermark: options.low(),
        }));
        true
    }
}
