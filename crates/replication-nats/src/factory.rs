//! The `nats` sink type for configuration.

use std::path::Path;
use std::time::Duration;

use async_nats::ConnectOptions;
use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings, refuse_empty,
};
use omnirelay_replication::node::node_name;
use omnirelay_replication::{BoxFuture, Error, SharedSink, SinkExt};
use serde::Deserialize;

use crate::auth::{NatsCredentials, trust_authority};
use crate::diagnose::TlsTrust;
use crate::sink::{NatsSink, NatsSinkOptions, Retention, Storage, StreamSettings};
use crate::subject::{
    DEFAULT_STREAM, DEFAULT_SUBJECT, validate_stream_name, validate_subject_template,
};

/// Builds [`NatsSink`]s from the `settings` of a sink of type `nats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsSinkFactory;

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StorageSetting {
    File,
    Memory,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RetentionSetting {
    Limits,
    Interest,
    WorkQueue,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    servers: Vec<String>,
    stream: String,
    subject: String,
    create_stream: bool,
    replicas: usize,
    storage: StorageSetting,
    retention: RetentionSetting,
    max_age_ms: u64,
    max_bytes: Option<u64>,
    duplicate_window_ms: u64,
    max_outstanding_acks: usize,
    ack_timeout_ms: u64,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    credentials_file: Option<std::path::PathBuf>,
    nkey_seed_file: Option<std::path::PathBuf>,
    ca_file: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        let defaults = NatsSinkOptions::new();
        let stream = StreamSettings::default();
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            stream: DEFAULT_STREAM.to_owned(),
            subject: DEFAULT_SUBJECT.to_owned(),
            create_stream: true,
            replicas: stream.replicas,
            storage: StorageSetting::File,
            retention: RetentionSetting::Limits,
            max_age_ms: 0,
            max_bytes: None,
            duplicate_window_ms: u64::try_from(stream.duplicate_window.as_millis())
                .unwrap_or(120_000),
            max_outstanding_acks: defaults.max_outstanding_acks,
            ack_timeout_ms: u64::try_from(defaults.ack_timeout.as_millis()).unwrap_or(10_000),
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            nkey_seed_file: None,
            ca_file: None,
        }
    }
}

impl Settings {
    fn options(&self) -> NatsSinkOptions {
        NatsSinkOptions {
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            create: self.create_stream.then(|| StreamSettings {
                replicas: self.replicas,
                storage: match self.storage {
                    StorageSetting::File => Storage::File,
                    StorageSetting::Memory => Storage::Memory,
                },
                retention: match self.retention {
                    RetentionSetting::Limits => Retention::Limits,
                    RetentionSetting::Interest => Retention::Interest,
                    RetentionSetting::WorkQueue => Retention::WorkQueue,
                },
                max_age: Duration::from_millis(self.max_age_ms),
                max_bytes: self.max_bytes,
                duplicate_window: Duration::from_millis(self.duplicate_window_ms),
            }),
            max_outstanding_acks: self.max_outstanding_acks,
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            // Set by the builder, which knows the data directory.
            tls_trust: None,
            writer: None,
        }
    }

    /// Every kind of credentials given (valid settings give one at most),
    /// files relative to `data_dir`.
    fn credentials(&self, data_dir: &Path) -> Vec<NatsCredentials> {
        let mut given = Vec::new();
        if let Some(token) = &self.token {
            given.push(NatsCredentials::Token(token.clone()));
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            given.push(NatsCredentials::UserPassword {
                user: user.clone(),
                password: password.clone(),
            });
        }
        if let Some(path) = &self.credentials_file {
            given.push(NatsCredentials::CredentialsFile(data_dir.join(path)));
        }
        if let Some(path) = &self.nkey_seed_file {
            given.push(NatsCredentials::NkeySeedFile(data_dir.join(path)));
        }
        given
    }

    fn connect_options(&self, data_dir: &Path) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new().name("omnirelay");
        if let Some(ca_file) = &self.ca_file {
            options = trust_authority(options, &data_dir.join(ca_file))?;
        }
        match self.credentials(data_dir).first() {
            Some(credentials) => credentials.present(options),
            None => Ok(options),
        }
    }
}

struct Builder(Settings);

impl SinkFactory for NatsSinkFactory {
    fn type_name(&self) -> &'static str {
        "nats"
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: Settings = parse_settings(settings)?;
        if settings.servers.is_empty() {
            return Err(SettingsError::new(
                "servers",
                "must name at least one server",
            ));
        }
        for (i, server) in settings.servers.iter().enumerate() {
            if server
                .parse::<async_nats::ServerAddr>()
                .map_or(true, |addr| addr.host().is_empty())
            {
                return Err(SettingsError::new(
                    format!("servers.{i}"),
                    format!("not a NATS server address: {server:?}"),
                ));
            }
        }
        validate_stream_name(&settings.stream)
            .map_err(|e| SettingsError::new("stream", e.message()))?;
        validate_subject_template(&settings.subject)
            .map_err(|e| SettingsError::new("subject", e.message()))?;
        if settings.user.is_some() != settings.password.is_some() {
            return Err(SettingsError::new(
                "password",
                "user and password go together",
            ));
        }
        if settings.credentials(Path::new("")).len() > 1 {
            return Err(SettingsError::new(
                "",
                "token, user and password, credentials_file and nkey_seed_file are alternatives: give one",
            ));
        }
        refuse_empty("ca_file", settings.ca_file.as_ref())?;
        if settings.ack_timeout_ms == 0 {
            return Err(SettingsError::new("ack_timeout_ms", "must be at least 1"));
        }
        settings
            .options()
            .validate()
            .map_err(|e| SettingsError::new("", e.message()))?;
        Ok(Box::new(Builder(settings)))
    }
}

impl SinkBuilder for Builder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            // The trust the connect options were given, so that a failed
            // handshake is explained with it.
            let tls_trust = Some(match &self.0.ca_file {
                Some(ca_file) => TlsTrust::Authority(context.data_dir.join(ca_file)),
                None => TlsTrust::System,
            });
            let sink = NatsSink::connect_with(
                &self.0.servers,
                self.0.connect_options(context.data_dir)?,
                NatsSinkOptions {
                    tls_trust,
                    // The node's: a standby that took its primary's is the
                    // same writer on the subject.
                    writer: Some(node_name(context.data_dir)?),
                    ..self.0.options()
                },
            )
            .await?;
            Ok(sink.shared())
        })
    }

    fn claims(&self) -> Vec<String> {
        let mut servers = self.0.servers.clone();
        servers.sort();
        vec![format!(
            "subjects {} of JetStream stream {} on {}",
            self.0.subject,
            self.0.stream,
            servers.join(",")
        )]
    }
}

inventory::submit! { SinkPlugin::new(&NatsSinkFactory) }
