//! `omnirelay config default|check`.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use omnirelay_replication::config::Source;

pub(crate) fn default() -> anyhow::Result<ExitCode> {
    io::stdout().write_all(crate::node::default_toml().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let stdin;
    let from_stdin = file == Path::new("-");
    let source = if from_stdin {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text)?;
        stdin = text;
        Source::Text {
            text: &stdin,
            name: "standard input",
        }
    } else {
        Source::File(file)
    };
    let validated = crate::node::check(source, &[]);
    match validated {
        Ok(valid) => {
            let sinks: Vec<String> = valid
                .sinks
                .iter()
                .map(|s| format!("{} ({})", s.name, s.kind))
                .collect();
            writeln!(
                io::stdout(),
                "{}: ok; data_dir {}, {} declared, sinks: {}",
                if from_stdin {
                    "standard input".to_owned()
                } else {
                    file.display().to_string()
                },
                valid.data_dir.display(),
                crate::counted(valid.durable.streams.len(), "stream"),
                if sinks.is_empty() {
                    "none".to_owned()
                } else {
                    sinks.join(", ")
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            writeln!(io::stderr(), "{errors}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}
