//! The `grpc` sink type for configuration.

use std::path::PathBuf;
use std::time::Duration;

use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings,
};
use omnirelay_replication::{BoxFuture, Error, ErrorKind, Format, SharedSink, SinkExt};
use serde::Deserialize;

use crate::sink::{GrpcSink, GrpcSinkOptions, Protocol};

/// Builds [`GrpcSink`]s from the `settings` of a sink of type `grpc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcSinkFactory;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    url: String,
    /// Unset: this node's own name (see [`node_sender`]).
    sender: Option<String>,
    timeout_ms: u64,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    protocol: ProtocolSetting,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ProtocolSetting {
    #[default]
    Auto,
    Stream,
    Unary,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: String::new(),
            sender: None,
            timeout_ms: 10_000,
            token: None,
            ca_file: None,
            protocol: ProtocolSetting::Auto,
        }
    }
}

impl Settings {
    fn options(&self, sender: String, writer: String, ca_pem: Option<Vec<u8>>) -> GrpcSinkOptions {
        GrpcSinkOptions {
            writer: Some(writer),
            url: self.url.clone(),
            sender,
            timeout: Duration::from_millis(self.timeout_ms),
            token: self.token.clone(),
            ca_pem,
            protocol: match self.protocol {
                ProtocolSetting::Auto => Protocol::Auto,
                ProtocolSetting::Stream => Protocol::Stream,
                ProtocolSetting::Unary => Protocol::Unary,
            },
        }
    }
}

struct Builder(Settings);

impl SinkFactory for GrpcSinkFactory {
    fn type_name(&self) -> &'static str {
        "grpc"
    }

    fn default_format(&self) -> Format {
        Format::Protobuf
    }

    fn accepts_format(&self, format: Format) -> bool {
        format == Format::Protobuf
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: Settings = parse_settings(settings)?;
        if !(settings.url.starts_with("http://") || settings.url.starts_with("https://")) {
            return Err(SettingsError::new(
                "url",
                format!(
                    "expected the receiver's http:// or https:// URL, got {:?}",
                    settings.url
                ),
            ));
        }
        if let Some(sender) = &settings.sender
            && (sender.is_empty() || !sender.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(SettingsError::new(
                "sender",
                "must be a non-empty name of printable ASCII characters",
            ));
        }
        if settings.timeout_ms == 0 {
            return Err(SettingsError::new("timeout_ms", "must be at least 1"));
        }
        if settings.ca_file.is_some() && !settings.url.starts_with("https://") {
            return Err(SettingsError::new(
                "ca_file",
                "is only used with an https:// url",
            ));
        }
        if settings.token.as_deref() == Some("") {
            return Err(SettingsError::new(
                "token",
                "must not be empty (leave it out for no token)",
            ));
        }
        Ok(Box::new(Builder(settings)))
    }
}

impl SinkBuilder for Builder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let ca_pem = match &self.0.ca_file {
                Some(file) => {
                    let path = if file.is_absolute() {
                        file.clone()
                    } else {
                        context.data_dir.join(file)
                    };
                    Some(std::fs::read(&path).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("grpc: cannot read the CA file {}", path.display()),
                        )
                        .with_source(e)
                    })?)
                }
                None => None,
            };
            // The node's own name: the sender's by default, and always
            // the writer behind it.
            let node = node_sender(context.data_dir)?;
            let sender = self.0.sender.clone().unwrap_or_else(|| node.clone());
            Ok(GrpcSink::new(self.0.options(sender, node, ca_pem))?.shared())
        })
    }

    fn claims(&self) -> Vec<String> {
        // The receiver keeps one high-water mark per sender name.
        vec![format!(
            "sender name {} at the receiver {}",
            self.0.sender.as_deref().unwrap_or("(this node's own)"),
            self.0.url
        )]
    }
}

inventory::submit! { SinkPlugin::new(&GrpcSinkFactory) }

/// The file under a node's data directory holding its sender name.
pub const SENDER_FILE: &str = "grpc-sender";

/// The sender name of the node whose data directory is `dir`: made once
/// (`node-` and 32 random hex digits), kept in [`SENDER_FILE`] and read
/// back on every start, so that every node has its own (a receiver keeps
/// one high-water mark per sender name, and drops what a second node
/// with the same name sends below the first one's as duplicates) and
/// keeps it across restarts. A node whose directory is lost gets a new
/// name; its log starts again at 1, which the receiver then takes as a
/// new sender's.
///
/// # Errors
///
/// [`ErrorKind::Unavailable`] when the file cannot be read or made.
pub fn node_sender(dir: &std::path::Path) -> Result<String, Error> {
    let path = dir.join(SENDER_FILE);
    if let Some(name) = read_name(&path).map_err(|e| unavailable("read", &path, e))? {
        return Ok(name);
    }
    // A node's sinks starting together agree on the first one linked.
    write_name(
        dir,
        &format!("node-{}", uuid::Uuid::new_v4().simple()),
        false,
    )
    .map_err(|e| unavailable("make", &path, e))?;
    read_name(&path)
        .map_err(|e| unavailable("read", &path, e))?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("grpc: {} holds no sender name", path.display()),
            )
        })
}

/// Makes `name` the sender name of the node whose data directory is
/// `dir` (see [`node_sender`]); whether it changed. A standby takes its
/// primary's ([`Subscription::writer`](crate::Subscription::writer)) before
/// its sinks start: its log is the primary's, so its `grpc` sinks send
/// the same events under the same name and as the same writer — a
/// receiver has them, instead of appending a second copy under the
/// standby's own name or refusing a second writer under a shared
/// `sender` — and, promoted, it carries the stream on under that name.
///
/// # Errors
///
/// [`ErrorKind::Config`] for a name that is not printable ASCII;
/// [`ErrorKind::Unavailable`] when the file cannot be read or written.
pub fn adopt_node_sender(dir: &std::path::Path, name: &str) -> Result<bool, Error> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("grpc: {name:?} is not a sender name (printable ASCII)"),
        ));
    }
    let path = dir.join(SENDER_FILE);
    if read_name(&path)
        .map_err(|e| unavailable("read", &path, e))?
        .as_deref()
        == Some(name)
    {
        return Ok(false);
    }
    write_name(dir, name, true).map_err(|e| unavailable("write", &path, e))?;
    Ok(true)
}

fn unavailable(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("grpc: cannot {what} {}", path.display()),
    )
    .with_source(e)
}

/// The name in `path`: `None` when there is no file or no usable name.
fn read_name(path: &std::path::Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `name` whole and synced under another name, then puts it in
/// place (`replace`: over the file there; else only if there is none).
fn write_name(dir: &std::path::Path, name: &str, replace: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SENDER_FILE);
    let draft = dir.join(format!(
        "{SENDER_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let made = (|| {
        let mut file = std::fs::File::create_new(&draft)?;
        std::io::Write::write_all(&mut file, format!("{name}\n").as_bytes())?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&draft, &path)?;
        } else {
            match std::fs::hard_link(&draft, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&draft);
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_makes_its_sender_name_once_and_keeps_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let name = node_sender(a.path()).unwrap();
        assert!(name.starts_with("node-") && name.len() == 37, "{name}");
        assert_eq!(node_sender(a.path()).unwrap(), name, "kept");
        assert_ne!(node_sender(b.path()).unwrap(), name, "another node's own");
        // Sinks of one node starting together agree on one name.
        let c = tempfile::tempdir().unwrap();
        let names: Vec<String> = std::thread::scope(|scope| {
            let made: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| node_sender(c.path()).unwrap()))
                .collect();
            made.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
        let left: Vec<_> = std::fs::read_dir(c.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no draft left behind");
    }

    #[test]
    fn a_standby_takes_its_primarys_name_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let own = node_sender(dir.path()).unwrap();
        assert!(adopt_node_sender(dir.path(), "node-primary").unwrap());
        assert_eq!(node_sender(dir.path()).unwrap(), "node-primary");
        assert!(
            !adopt_node_sender(dir.path(), "node-primary").unwrap(),
            "unchanged"
        );
        assert_ne!(own, "node-primary");
        let err = adopt_node_sender(dir.path(), "two words").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no draft left behind");
    }

    #[test]
    fn an_unreadable_sender_file_is_an_error_not_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(SENDER_FILE)).unwrap();
        let err = node_sender(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
}
