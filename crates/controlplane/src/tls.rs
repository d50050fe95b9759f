//! HTTP to the hosts: plain for `http://` URLs, TLS (rustls) for
//! `https://` ones.

use std::sync::{Arc, OnceLock};

use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A client of the hosts, `http://` or `https://`.
pub(crate) type HostClient<B> = Client<HttpsConnector<HttpConnector>, B>;

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, String> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))
}

/// How `https://` hosts are trusted: the authority (or authorities) whose
/// PEM certificates are `ca_pem`, or without it the system's roots, loaded
/// only when `system_roots` (some host is `https://`). With neither, no
/// authority: an `https://` URL then fails its handshake.
///
/// # Errors
///
/// `ca_pem` holds no PEM certificate, or the system's roots cannot be
/// loaded.
pub(crate) fn config(ca_pem: Option<&[u8]>, system_roots: bool) -> Result<ClientConfig, String> {
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| format!("the CA file is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the CA file's certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA file holds no PEM certificate".to_owned());
            }
            builder()?.with_root_certificates(roots)
        }
        None if system_roots => builder()?
            .with_native_roots()
            .map_err(|e| format!("the system's TLS roots: {e}"))?,
        None => builder()?.with_root_certificates(RootCertStore::empty()),
    };
    Ok(config.with_no_client_auth())
}

/// A client using `config` for `https://` URLs, plain HTTP/1.1 otherwise.
pub(crate) fn client<B>(config: Arc<ClientConfig>) -> HostClient<B>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// No authority at all, for clients of `http://` URLs.
///
/// # Panics
///
/// Never in practice: the only failure of [`builder`] is a provider
/// without the default TLS versions, and *ring* has both.
pub(crate) fn plain() -> Arc<ClientConfig> {
    static PLAIN: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            Arc::new(
                builder()
                    .map(|b| {
                        b.with_root_certificates(RootCertStore::empty())
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .clone()
}
