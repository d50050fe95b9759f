//! Configuration errors: each names where the value came from and its key
//! path.

use std::fmt;

/// One configuration problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, environment variable or "the defaults".
    pub origin: String,
    /// The dotted key path, e.g. `replication.sinks.export.batch.max_events`
    /// (empty for the file as a whole).
    pub path: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`, set in `origin`.
    pub fn new(
        origin: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn from_figment(figment: &figment::Figment, err: figment::Error) -> Self {
        let mut path = err.path.join(".");
        if let figment::error::Kind::UnknownField(field, _) = &err.kind
            && err.path.last() != Some(field)
        {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
        }
        let origin = match err.metadata.as_ref() {
            Some(metadata) => match &metadata.source {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ => metadata.name.to_string(),
            },
            None => match figment.find_metadata(&path) {
                Some(metadata) => match &metadata.source {
                    Some(figment::Source::File(file)) => file.display().to_string(),
                    _ => metadata.name.to_string(),
                },
                None => "the configuration".to_owned(),
            },
        };
        let message = match &err.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let mut message = format!(
                    "unknown key `{field}` (expected one of: {})",
                    expected.join(", ")
                );
                // A sink type's own keys (a path, servers) belong in the
                // sink's settings table: the likeliest reason for a key
                // unknown here.
                if expected.contains(&"settings") {
                    let table = &path[..path.len() - field.len()];
                    message.push_str(&format!(
                        "; the sink type's own keys go in its `{table}settings` table"
                    ));
                }
                message
            }
            figment::error::Kind::UnknownVariant(found, expected) => format!(
                "unknown value `{found}` (expected one of: {})",
                expected.join(", ")
            ),
            figment::error::Kind::Message(message) => message.clone(),
            other => other.to_string(),
        };
        Self::new(origin, path, message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem a validation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(err: ConfigError) -> Self {
        Self(vec![err])
    }
}
