//! The scenarios and the trait they implement.

pub mod json_codec;

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

    /// The smallest acceptable candidate ÷ baseline throughput ratio.
    fn target(&self) -> f64;

    /// Runs one pass of `side` and returns how many operations it did.
    /// A pass should take a millisecond or so; the runner repeats it.
    fn pass(&mut self, side: Side) -> u64;
}

/// Every scenario, in a stable order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(json_codec::JsonEncode::new()),
        Box::new(json_codec::JsonDecode::new()),
    ]
}
