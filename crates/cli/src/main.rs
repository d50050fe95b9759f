//! `omnirelay`: the command-line entry point. Thin wiring only: arguments
//! are parsed here and the work is done by the library crates.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use omnirelay_replication::{Format, WireVersion};
use omnirelay_resourcelease::lines;

/// OmniRelay replication: schema tools and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "omnirelay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert and validate resource-lease replication events.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the side-by-side benchmarks against their raw baselines.
    Bench(BenchArgs),
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Convert events read one per line on stdin, writing one per line on
    /// stdout. Protobuf lines are the standard base64 of the message bytes.
    /// Bad lines are reported on stderr as `line N: reason`; the exit status
    /// is 1 if any line was invalid.
    Convert {
        /// The input format.
        #[arg(long, value_enum)]
        from: FormatArg,
        /// The output format.
        #[arg(long, value_enum)]
        to: FormatArg,
        /// The schema version to write: 1 is the reference format; events
        /// version 1 cannot hold are skipped and reported.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=2))]
        write_version: u16,
    },
    /// Validate JSON events read one per line on stdin, printing
    /// `line N: reason` for each invalid line; the exit status is 1 if any
    /// line was invalid.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Proto,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Json => Format::Json,
            FormatArg::Proto => Format::Protobuf,
        }
    }
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Scenarios to run (all when none is named).
    names: Vec<String>,
    /// Fewer, shorter rounds.
    #[arg(long)]
    quick: bool,
    /// Also write the results as a JSON array of records to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(io::stderr(), "omnirelay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Schema(SchemaCommand::Convert {
            from,
            to,
            write_version,
        }) => {
            let version = WireVersion::new(write_version).context("version 0 does not exist")?;
            let summary = lines::convert(
                io::stdin().lock(),
                io::BufWriter::new(io::stdout().lock()),
                io::stderr().lock(),
                from.into(),
                to.into(),
                version,
            )?;
            let mut err = io::stderr().lock();
            if summary.invalid > 0 || summary.skipped > 0 {
                writeln!(
                    err,
                    "converted {} of {} events: {} invalid, {} skipped",
                    summary.ok, summary.lines, summary.invalid, summary.skipped
                )?;
            }
            Ok(exit_status(summary.invalid))
        }
        Command::Schema(SchemaCommand::Check) => {
            let summary =
                lines::check(io::stdin().lock(), io::BufWriter::new(io::stdout().lock()))?;
            writeln!(
                io::stderr(),
                "checked {} events: {} valid, {} invalid",
                summary.lines,
                summary.ok,
                summary.invalid
            )?;
            Ok(exit_status(summary.invalid))
        }
        Command::Bench(args) => bench(args),
    }
}

fn exit_status(invalid: u64) -> ExitCode {
    if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let records = omnirelay_bench::run(&omnirelay_bench::BenchOptions {
        names: args.names,
        quick: args.quick,
        progress: io::stderr().is_terminal(),
    })?;
    let mut out = io::stdout().lock();
    out.write_all(omnirelay_bench::render_table(&records).as_bytes())?;
    if let Some(path) = args.json {
        let json = serde_json::to_vec_pretty(&records)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "results written to {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
