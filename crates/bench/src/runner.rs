//! Measuring scenarios and reporting the results.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::scenario::{Scenario, Side, scenarios};

/// How to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Scenario names to run; empty runs them all.
    pub names: Vec<String>,
    /// Fewer, shorter rounds.
    pub quick: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The `omnirelay` binary, for scenarios that run peers in processes
    /// of their own (`serve`, `bench-peer`); without it they are skipped.
    pub peer: Option<std::path::PathBuf>,
}

impl BenchOptions {
    fn rounds(&self) -> usize {
        if self.quick { 5 } else { 15 }
    }

    fn round_time(&self) -> Duration {
        Duration::from_millis(if self.quick { 100 } else { 400 })
    }
}

/// One scenario's result, the record format of `omnirelay bench --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchRecord {
    /// The scenario.
    pub name: String,
    /// Throughput unit, e.g. `events/s`.
    pub unit: String,
    /// Median baseline throughput.
    pub baseline: f64,
    /// Median candidate throughput.
    pub candidate: f64,
    /// Median of the per-round candidate ÷ baseline ratios.
    pub ratio: f64,
    /// The smallest acceptable ratio (0: reported, no target).
    pub target: f64,
    /// Whether `ratio >= target`.
    pub met: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A name matched no scenario.
    #[error("unknown benchmark {name:?} (available: {available})")]
    UnknownScenario {
        /// The name given.
        name: String,
        /// Every scenario name.
        available: String,
    },
}

/// Runs the selected scenarios, each round measuring the baseline and the
/// candidate back to back (alternating which goes first).
///
/// # Errors
///
/// [`RunError::UnknownScenario`] before anything runs.
pub fn run(options: &BenchOptions) -> Result<BenchRun, RunError> {
    let all = scenarios();
    if let Some(unknown) = options
        .names
        .iter()
        .find(|name| !all.iter().any(|s| s.name == name.as_str()))
    {
        return Err(RunError::UnknownScenario {
            name: unknown.clone(),
            available: all.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        });
    }
    // In the canonical order, each once.
    let selected: Vec<_> = all
        .into_iter()
        .filter(|s| options.names.is_empty() || options.names.iter().any(|n| n == s.name))
        .collect();
    let rounds = options.rounds();
    let bar = if options.progress {
        let bar = ProgressBar::new((selected.len() * rounds) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut records = Vec::with_capacity(selected.len());
    let mut skipped = Vec::new();
    for entry in selected {
        bar.set_message(format!("{} (setting up)", entry.name));
        let mut scenario = match (entry.build)(options) {
            Ok(scenario) => scenario,
            Err(why) => {
                skipped.push((entry.name, why));
                bar.inc(rounds as u64);
                continue;
            }
        };
        settle();
        bar.set_message(entry.name);
        records.push(measure(
            scenario.as_mut(),
            rounds,
            options.round_time(),
            &bar,
        ));
    }
    bar.finish_and_clear();
    Ok(BenchRun { records, skipped })
}

/// What [`run`] measured, and what it could not run here.
#[derive(Clone, Debug, Default)]
pub struct BenchRun {
    /// One record per scenario that ran.
    pub records: Vec<BenchRecord>,
    /// Scenarios that did not run, each with the reason (a server they
    /// need is not installed).
    pub skipped: Vec<(&'static str, String)>,
}

/// Waits until the system has written back what earlier scenarios (and
/// this one's setup) left dirty in the page cache, so that their writeback
/// does not compete with this scenario's rounds (`sync(1)`; without it,
/// the rounds just start).
fn settle() {
    let _ = std::process::Command::new("sync")
        .stdin(std::process::Stdio::null())
        .status();
}

fn measure(
    scenario: &mut dyn Scenario,
    rounds: usize,
    round_time: Duration,
    bar: &ProgressBar,
) -> BenchRecord {
    // Warm caches and allocators on both sides first.
    throughput(scenario, Side::Baseline, round_time / 4);
    throughput(scenario, Side::Candidate, round_time / 4);
    let mut baseline = Vec::with_capacity(rounds);
    let mut candidate = Vec::with_capacity(rounds);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (b, c) = if round % 2 == 0 {
            let b = throughput(scenario, Side::Baseline, round_time);
            (b, throughput(scenario, Side::Candidate, round_time))
        } else {
            let c = throughput(scenario, Side::Candidate, round_time);
            (throughput(scenario, Side::Baseline, round_time), c)
        };
        baseline.push(b);
        candidate.push(c);
        ratios.push(if b > 0.0 { c / b } else { 0.0 });
        bar.inc(1);
    }
    let ratio = median(&mut ratios);
    BenchRecord {
        name: scenario.name().to_owned(),
        unit: format!("{}/s", scenario.unit()),
        baseline: median(&mut baseline),
        candidate: median(&mut candidate),
        ratio,
        target: scenario.target(),
        met: ratio >= scenario.target(),
    }
}

/// Operations per second of `side`, repeating passes for at least `time`.
fn throughput(scenario: &mut dyn Scenario, side: Side, time: Duration) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        ops += scenario.pass(side);
        let elapsed = start.elapsed();
        if elapsed >= time {
            return ops as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The results as an aligned text table.
pub fn render_table(records: &[BenchRecord]) -> String {
    let header = [
        "scenario",
        "unit",
        "baseline",
        "candidate",
        "ratio",
        "target",
        "met",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.unit.clone(),
                human(r.baseline),
                human(r.candidate),
                format!("{:.2}", r.ratio),
                if r.target > 0.0 {
                    format!(">= {:.2}", r.target)
                } else {
                    "none".to_owned()
                },
                if r.target <= 0.0 {
                    "-"
                } else if r.met {
                    "yes"
                } else {
                    "NO"
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if (2..6).contains(&i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}

/// A throughput with thousands separators, e.g. `1,234,567`.
fn human(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(999.0), "999");
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let err = run(&BenchOptions {
            names: vec!["nope".into()],
            quick: true,
            progress: false,
            peer: None,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown benchmark \"nope\" (available: json-encode, json-decode, durable-publish-1, durable-publish-64, durable-publish-512, durable-publish-4096, fanout-memory-4, telemetry-fanout, replay, backlog-drain, sqlite-sink, nats-sink, grpc-stream, dispatcher-cycle, dispatcher-cycle-4, objectstore-segment)"
        );
    }

    #[test]
    fn a_table_has_a_row_per_record() {
        let record = BenchRecord {
            name: "json-encode".into(),
            unit: "events/s".into(),
            baseline: 2_000_000.0,
            candidate: 1_500_000.0,
            ratio: 0.75,
            target: 0.8,
            met: false,
        };
        let table = render_table(&[record]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("scenario"));
        assert!(
            lines[1].contains("2,000,000") && lines[1].contains("0.75") && lines[1].ends_with("NO"),
            "{table}"
        );
    }
}
