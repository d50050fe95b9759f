//! The `object_store` sink type for configuration, and building stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use omnirelay_replication::config::{
    SettingsError, SinkBuilder, SinkContext, SinkFactory, SinkPlugin, parse_settings,
};
use omnirelay_replication::{BoxFuture, Error, ErrorKind, Format, SharedSink, SinkExt, StreamId};
use serde::Deserialize;

use crate::layout::{DEFAULT_PREFIX, Layout, validate_prefix};
use crate::sink::{ObjectSinkOptions, ObjectStoreSink, store_error};

/// Where the objects go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// A directory on the local filesystem.
    Local {
        /// The directory (created if missing).
        root: PathBuf,
    },
    /// An S3 bucket, on AWS or any S3-compatible server.
    S3(S3Config),
}

/// How to reach an S3 bucket.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The endpoint URL for S3-compatible servers (AWS when `None`).
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The access key id (from the `AWS_…` environment when `None`).
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// `bucket.host/key` addressing instead of `host/bucket/key`.
    pub virtual_hosted_style: bool,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// Opens the store (creating a local root), and for a local store the
    /// root to sync written objects under.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for settings the store refuses or a local
    /// root that is a file, [`ErrorKind::Unavailable`] for a root that
    /// cannot be created.
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>), Error> {
        match self {
            Self::Local { root } => {
                // Retrying never turns a file into a directory.
                if root.exists() && !root.is_dir() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!("the local root {} is not a directory", root.display()),
                    ));
                }
                std::fs::create_dir_all(root).map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot create {}", root.display()),
                    )
                    .with_source(e)
                })?;
                let root = std::fs::canonicalize(root).map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot resolve {}", root.display()),
                    )
                    .with_source(e)
                })?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| store_error("open the local store", e))?;
                Ok((Arc::new(store), Some(root)))
            }
            Self::S3(s3) => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                    // Retries are the delivery engine's (with backoff,
                    // metrics and dead letters), not the client's.
                    .with_retry(RetryConfig {
                        max_retries: 0,
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(s3.request_timeout)
                            .with_connect_timeout(s3.connect_timeout),
                    );
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = builder.build().map_err(|e| {
                    Error::new(ErrorKind::Config, "object store: s3").with_source(e)
                })?;
                Ok((Arc::new(store), None))
            }
        }
    }
}

/// Builds [`ObjectStoreSink`]s from the `settings` of a sink of type
/// `object_store`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectStoreSinkFactory;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum BackendSetting {
    Local,
    S3,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum LayoutSetting {
    PerEvent,
    Segment,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    backend: BackendSetting,
    root: PathBuf,
    bucket: String,
    endpoint: Option<String>,
    region: String,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    virtual_hosted_style: bool,
    request_timeout_ms: u64,
    connect_timeout_ms: u64,
    prefix: String,
    prefixes: BTreeMap<String, String>,
    layout: LayoutSetting,
    max_in_flight: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backend: BackendSetting::Local,
            root: PathBuf::from("objects"),
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted_style: false,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            prefix: DEFAULT_PREFIX.to_owned(),
            prefixes: BTreeMap::new(),
            layout: LayoutSetting::PerEvent,
            max_in_flight: 16,
        }
    }
}

impl Settings {
    fn store(&self, data_dir: &Path) -> StoreConfig {
        match self.backend {
            BackendSetting::Local => StoreConfig::Local {
                root: if self.root.is_absolute() {
                    self.root.clone()
                } else {
                    data_dir.join(&self.root)
                },
            },
            BackendSetting::S3 => StoreConfig::S3(S3Config {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                virtual_hosted_style: self.virtual_hosted_style,
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            }),
        }
    }

    fn options(&self) -> ObjectSinkOptions {
        ObjectSinkOptions {
            prefix: self.prefix.clone(),
            prefixes: self.prefixes.clone(),
            layout: match self.layout {
                LayoutSetting::PerEvent => Layout::PerEvent,
                LayoutSetting::Segment => Layout::Segment,
            },
            max_in_flight: self.max_in_flight,
            content_type: self.backend == BackendSetting::S3,
            sync_root: None,
        }
    }

    /// Where the objects of `prefix` live, for claims.
    fn place(&self, prefix: &str) -> String {
        match self.backend {
            BackendSetting::Local => format!("objects under {}/{prefix}", self.root.display()),
            BackendSetting::S3 => format!(
                "objects under s3://{}/{prefix}{}",
                self.bucket,
                self.endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}

struct Builder(Settings);

impl SinkFactory for ObjectStoreSinkFactory {
    fn type_name(&self) -> &'static str {
        "object_store"
    }

    fn accepts_format(&self, format: Format) -> bool {
        format == Format::Json
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
    ) -> Result<Box<dyn SinkBuilder>, SettingsError> {
        let settings: Settings = parse_settings(settings)?;
        match settings.backend {
            BackendSetting::Local if settings.root.as_os_str().is_empty() => {
                return Err(SettingsError::new("root", "must not be empty"));
            }
            BackendSetting::S3 if settings.bucket.is_empty() => {
                return Err(SettingsError::new(
                    "bucket",
                    "is required for backend \"s3\"",
                ));
            }
            _ => {}
        }
        if let Some(endpoint) = &settings.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(SettingsError::new(
                "endpoint",
                format!("expected an http:// or https:// URL, got {endpoint:?}"),
            ));
        }
        if settings.access_key_id.is_some() != settings.secret_access_key.is_some() {
            return Err(SettingsError::new(
                "secret_access_key",
                "access_key_id and secret_access_key go together",
            ));
        }
        if settings.request_timeout_ms == 0 {
            return Err(SettingsError::new(
                "request_timeout_ms",
                "must be at least 1",
            ));
        }
        validate_prefix(&settings.prefix).map_err(|e| SettingsError::new("prefix", e.message()))?;
        for (stream, prefix) in &settings.prefixes {
            let at = format!("prefixes.{stream}");
            StreamId::new(stream).map_err(|e| SettingsError::new(&at, e.message()))?;
            validate_prefix(prefix).map_err(|e| SettingsError::new(&at, e.message()))?;
        }
        settings
            .options()
            .validate()
            .map_err(|e| SettingsError::new("prefixes", e.message()))?;
        Ok(Box::new(Builder(settings)))
    }
}

impl SinkBuilder for Builder {
    fn build<'a>(&'a self, context: SinkContext<'a>) -> BoxFuture<'a, Result<SharedSink, Error>> {
        Box::pin(async move {
            let (store, sync_root) = self.0.store(context.data_dir).open()?;
            let options = ObjectSinkOptions {
                sync_root,
                ..self.0.options()
            };
            Ok(ObjectStoreSink::new(store, options)?.shared())
        })
    }

    fn claims(&self) -> Vec<String> {
        let options = self.0.options();
        let mut prefixes: Vec<String> = options.prefixes.values().cloned().collect();
        prefixes.push(options.prefix.clone());
        prefixes.iter().map(|p| self.0.place(p)).collect()
    }
}

inventory::submit! { SinkPlugin::new(&ObjectStoreSinkFactory) }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_root_that_is_a_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("archive");
        std::fs::write(&file, "not a directory").unwrap();
        let err = StoreConfig::Local { root: file }.open().err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let root = dir.path().join("made");
        assert!(StoreConfig::Local { root: root.clone() }.open().is_ok());
        assert!(root.is_dir(), "created when missing");
    }
}
