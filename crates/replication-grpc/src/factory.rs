//! The `grpc` sink type for configuration.

use std::path::PathBuf;
use std::time::Duration;

use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings,
};
use omnirelay_replication::node::node_name;
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
    /// Unset: this node's own name (see [`node_name`]).
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
            let node = node_name(context.data_dir)?;
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
