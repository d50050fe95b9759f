//! A real S3-compatible server (moto) on a loopback port, and helpers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use omnirelay_replication_objectstore::{S3Config, StoreConfig};
use omnirelay_replication_testkit::process::{self, KillOnDrop, start_server};

/// `moto_server` on `127.0.0.1` and a random port, stopped on drop. The
/// server keeps its state in memory only.
pub(crate) struct Moto {
    child: KillOnDrop,
    pub(crate) endpoint: String,
}

impl Moto {
    /// Starts the server. Fails loudly if it is not installed: the test
    /// command (`scripts/test`) installs it with `pip install 'moto[server]'`.
    pub(crate) fn start() -> Self {
        Self::start_with(Command::new("moto_server"))
    }

    /// A server that takes the first `unchecked` requests as they come,
    /// then checks every request's credentials against the IAM users it
    /// knows (none: every request is refused).
    pub(crate) fn start_checking_credentials_after(unchecked: u32) -> Self {
        let mut command = Command::new("moto_server");
        command.env("INITIAL_NO_AUTH_ACTION_COUNT", unchecked.to_string());
        Self::start_with(command)
    }

    fn start_with(mut command: Command) -> Self {
        command.args(["-H", "127.0.0.1", "-p", "0"]);
        let (child, line) =
            start_server(command, "http://127.0.0.1:", "pip install 'moto[server]'");
        let endpoint = line[line.find("http://127.0.0.1:").unwrap()..]
            .trim()
            .to_owned();
        Self { child, endpoint }
    }

    /// Creates `bucket` (an unsigned path-style `PUT`, which moto takes).
    pub(crate) fn create_bucket(&self, bucket: &str) {
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// The server's process id (to stop and continue it).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        assert!(process::signal(self.pid(), signal));
    }

    /// A store for `bucket` with short timeouts.
    pub(crate) fn store(&self, bucket: &str, timeout: Duration) -> Arc<dyn ObjectStore> {
        StoreConfig::S3(self.s3(bucket, timeout)).open().unwrap().0
    }

    pub(crate) fn s3(&self, bucket: &str, timeout: Duration) -> S3Config {
        S3Config {
            bucket: bucket.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_owned(),
            access_key_id: Some("testing".to_owned()),
            secret_access_key: Some("testing".to_owned()),
            virtual_hosted_style: false,
            request_timeout: timeout,
            connect_timeout: timeout,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        process::signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store in a local directory and sink options for it in `layout`
/// (written objects synced, no content type).
pub(crate) fn local(
    dir: &std::path::Path,
    layout: omnirelay_replication_objectstore::Layout,
) -> (
    Arc<dyn ObjectStore>,
    omnirelay_replication_objectstore::ObjectSinkOptions,
) {
    let (store, sync_root) = StoreConfig::Local {
        root: dir.to_owned(),
    }
    .open()
    .unwrap();
    let options = omnirelay_replication_objectstore::ObjectSinkOptions {
        layout,
        sync_root,
        content_type: false,
        ..omnirelay_replication_objectstore::ObjectSinkOptions::new()
    };
    (store, options)
}
