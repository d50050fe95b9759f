//! A minimal HTTP/1.1 client for the operator commands (`promote`,
//! `status`, `queue`): one request per connection, plain or TLS (rustls).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::rustls;

/// An answer: status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> anyhow::Result<Answer> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer is not HTTP")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the answer has no status")?;
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}

/// `method url` with `json` as its body (none: empty) and a bearer token,
/// within `timeout`.
pub(crate) async fn request(
    method: &str,
    url: &str,
    json: Option<&str>,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("{url:?} is not an http:// or https:// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let body = json.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if json.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let call = async {
        let tcp = tokio::net::TcpStream::connect(&address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        if !tls {
            return exchange(tcp, request.as_bytes()).await;
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for cert in rustls_pemfile::certs(&mut &pem[..]) {
                    roots.add(cert.context("the CA file is not PEM")?)?;
                }
            }
            None => {
                bail!("https needs --ca-file (the authority that signed the node's certificate)")
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a server name"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        exchange(stream, request.as_bytes()).await
    };
    tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
}

impl crate::RemoteNode {
    /// `method` on `path` of this node (with `json` as the body, its token
    /// and the authority of its `--ca-file`), within `timeout`: the URL
    /// called and the answer.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<(String, Answer)> {
        let ca_pem = crate::read_ca(self.ca_file.as_deref())?;
        let target = format!("{}{path}", self.url.trim_end_matches('/'));
        let answer = request(
            method,
            &target,
            json,
            self.token.as_deref(),
            ca_pem.as_deref(),
            timeout,
        )
        .await?;
        Ok((target, answer))
    }
}
