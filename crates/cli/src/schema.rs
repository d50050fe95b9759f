//! `omnirelay schema convert|check`.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use omnirelay_replication::WireVersion;
use omnirelay_resourcelease::lines;

use crate::{FormatArg, exit_status};

pub(crate) fn convert(
    from: FormatArg,
    to: FormatArg,
    write_version: u16,
) -> anyhow::Result<ExitCode> {
    let version = WireVersion::new(write_version).context("version 0 does not exist")?;
    let summary = lines::convert(
        io::stdin().lock(),
        io::BufWriter::new(io::stdout().lock()),
        io::stderr().lock(),
        from.into(),
        to.into(),
        version,
    )?;
    if summary.invalid > 0 || summary.skipped > 0 {
        writeln!(
            io::stderr(),
            "converted {} of {}: {} invalid, {} skipped",
            summary.ok,
            crate::counted(summary.lines, "event"),
            summary.invalid,
            summary.skipped
        )?;
    }
    Ok(exit_status(summary.invalid == 0))
}

pub(crate) fn check() -> anyhow::Result<ExitCode> {
    let summary = lines::check(io::stdin().lock(), io::BufWriter::new(io::stdout().lock()))?;
    writeln!(
        io::stderr(),
        "checked {}: {} valid, {} invalid",
        crate::counted(summary.lines, "event"),
        summary.ok,
        summary.invalid
    )?;
    Ok(exit_status(summary.invalid == 0))
}
