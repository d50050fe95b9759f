//! Retry schedules, free of I/O.

use std::time::Duration;

/// How a sink's transient failures are retried: exponential backoff with
/// full jitter (each delay is uniform in `[0, min(max, initial × multiplier^n)]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The first delay's ceiling.
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// Growth of the ceiling per attempt (at least 1).
    pub multiplier: f64,
    /// Give up after this many attempts of one batch (`None`: never).
    /// What is given up on goes to the sink's dead-letter log.
    pub max_attempts: Option<u32>,
    /// Draw each delay uniformly below its ceiling (full jitter). Without
    /// jitter every delay is the ceiling itself.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
            jitter: true,
        }
    }
}

/// The retry state of one batch.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A fresh schedule, with jitter drawn from `seed`.
    pub fn new(policy: RetryPolicy, seed: u64) -> Self {
        Self {
            policy,
            failures: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The ceiling of the delay after the `failure`-th failure (from 1).
    pub fn ceiling(policy: &RetryPolicy, failure: u32) -> Duration {
        let growth = policy
            .multiplier
            .max(1.0)
            .powi(failure.saturating_sub(1).min(1_000) as i32);
        let secs = policy.initial.as_secs_f64() * growth;
        if !secs.is_finite() || secs >= policy.max.as_secs_f64() {
            policy.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Records a failure and returns how long to wait before the next
    /// attempt, or `None` when the policy's attempts are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.failures >= max)
        {
            return None;
        }
        let ceiling = Self::ceiling(&self.policy, self.failures);
        if !self.policy.jitter {
            return Some(ceiling);
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(0..=nanos)))
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceilings_grow_exponentially_up_to_the_max() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: None,
            jitter: false,
        };
        let mut backoff = Backoff::new(policy, 0);
        let delays: Vec<_> = (0..6)
            .map(|_| backoff.next_delay().unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn attempts_run_out_when_limited() {
        let policy = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        let mut backoff = Backoff::new(policy, 1);
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert_eq!(backoff.next_delay(), None, "the third attempt was the last");
        backoff.reset();
        assert!(backoff.next_delay().is_some());
    }

    proptest! {
        #[test]
        fn jittered_delays_stay_under_their_ceiling(seed in any::<u64>(), n in 1u32..40, mult in 1.0f64..4.0) {
            let policy = RetryPolicy { multiplier: mult, ..RetryPolicy::default() };
            let mut backoff = Backoff::new(policy, seed);
            for failure in 1..=n {
                let delay = backoff.next_delay().unwrap();
                prop_assert!(delay <= Backoff::ceiling(&policy, failure));
                prop_assert!(delay <= policy.max);
            }
        }
    }
}
