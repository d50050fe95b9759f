//! Checking configuration text in tests.

use omnirelay_replication::WireVersion;
use omnirelay_replication::config::{self, SinkRegistry, Source, ValidConfig};

/// Loads `text` as a configuration file named `test.toml` (no environment,
/// no flags) and validates it against every sink type linked into the test
/// binary, for a codec whose newest version is 2; every error as text.
///
/// # Errors
///
/// The loading or validation errors, one per line, each with its key path.
pub fn check(text: &str) -> Result<ValidConfig, String> {
    let loaded = config::load_from(
        Source::Text {
            text,
            name: "test.toml",
        },
        &[],
        &[],
    )
    .map_err(|e| e.to_string())?;
    loaded
        .validate(&SinkRegistry::discovered(), WireVersion::V2)
        .map_err(|e| e.to_string())
}
