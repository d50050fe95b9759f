//! Why the NATS client cannot connect when it says only `IO error`: a probe
//! repeats the first steps of a connection — TCP, the server's `INFO`, the
//! TLS handshake — and reports the first one that fails, with its reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Whom a NATS client trusts for TLS, as its connect options say: what a
/// probe of a failed connection must trust too, so that the reason it
/// gives is the client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsTrust {
    /// The system's roots (no authority given: TLS when the address is
    /// `tls://` or the server requires it).
    System,
    /// Only the authorities whose PEM certificates this file holds (TLS
    /// required), as [`crate::trust_authority`] sets.
    Authority(PathBuf),
}

/// How long each step of the probe may take.
const STEP: Duration = Duration::from_secs(3);
/// How often a client that keeps failing is probed at most.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Why a client is not connected, as its events say (`None` once it is),
/// and what a probe found behind a bare `IO error`.
#[derive(Debug, Default)]
pub(crate) struct ConnectProblem(Mutex<ProblemState>);

#[derive(Debug, Default)]
struct ProblemState {
    problem: Option<String>,
    why: Option<String>,
    /// The server refused the client (its credentials) since it last
    /// connected: waiting for the connection is pointless.
    refused: bool,
    probing: bool,
    probed: Option<Instant>,
}

impl ConnectProblem {
    fn state(&self) -> std::sync::MutexGuard<'_, ProblemState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client connected: no problem.
    pub(crate) fn connected(&self) {
        let mut state = self.state();
        state.problem = None;
        state.why = None;
        state.refused = false;
    }

    /// The client failed with `problem`, a reason in itself (a refused
    /// authorization, say).
    pub(crate) fn refused(&self, problem: String) {
        let mut state = self.state();
        state.why = None;
        state.problem = Some(problem);
        state.refused = true;
    }

    /// Whether the server refused the client since it last connected.
    pub(crate) fn is_refused(&self) -> bool {
        self.state().refused
    }

    /// The client failed with `problem`, which says no more than its kind:
    /// a probe of `servers` (trusting what `trust` names) looks for the
    /// reason, at most one at a time and one every ten seconds.
    pub(crate) fn failed(
        self: &Arc<Self>,
        problem: String,
        servers: &Arc<[ServerAddr]>,
        trust: Option<&TlsTrust>,
    ) {
        let mut state = self.state();
        if state.problem.as_ref() != Some(&problem) {
            state.why = None;
            state.problem = Some(problem);
        }
        let due = state.probed.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if state.probing || !due {
            return;
        }
        state.probing = true;
        let (this, servers, trust) = (self.clone(), servers.clone(), trust.cloned());
        tokio::spawn(async move {
            let why = why_unreachable(&servers, trust.as_ref()).await;
            let mut state = this.state();
            state.probing = false;
            state.probed = Some(Instant::now());
            if state.problem.is_some() {
                state.why = why;
            }
        });
    }

    /// Why the client cannot connect, if it cannot: its own words, then
    /// the probe's.
    pub(crate) fn describe(&self) -> Option<String> {
        let state = self.state();
        let problem = state.problem.as_ref()?;
        Some(match &state.why {
            Some(why) => format!("{problem}; {why}"),
            None => problem.clone(),
        })
    }
}
/// The longest `INFO` line read.
const MAX_INFO: u64 = 64 << 10;

/// Why a connection to any of `servers` fails, from the first that gives a
/// reason; `None` when every step works (the client's failure lies later)
/// or no reason can be found. The TLS handshake is repeated only when
/// `trust` is known.
pub(crate) async fn why_unreachable(
    servers: &[ServerAddr],
    trust: Option<&TlsTrust>,
) -> Option<String> {
    for server in servers {
        if let Some(why) = probe(server, trust).await {
            return Some(why);
        }
    }
    None
}

async fn probe(server: &ServerAddr, trust: Option<&TlsTrust>) -> Option<String> {
    if server.is_websocket() {
        return None;
    }
    let at = format!("{}:{}", server.host(), server.port());
    let tcp = match tokio::time::timeout(STEP, TcpStream::connect(&at)).await {
        Err(_) => return Some(format!("{at} does not answer")),
        Ok(Err(e)) => return Some(format!("cannot reach {at}: {e}")),
        Ok(Ok(tcp)) => tcp,
    };
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    let mut limited = (&mut reader).take(MAX_INFO);
    match tokio::time::timeout(STEP, limited.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        // A server that speaks TLS first sends nothing; the client's own
        // error is all there is to say.
        Err(_) | Ok(Err(_)) => return None,
    }
    let Some(info) = line.strip_prefix("INFO ") else {
        return Some(format!(
            "{at} is not a NATS server (it did not begin with INFO)"
        ));
    };
    let info: serde_json::Value = serde_json::from_str(info.trim()).ok()?;
    let trust = trust?;
    let server_requires = info["tls_required"] == true;
    let offers = server_requires || info["tls_available"] == true;
    let wanted =
        server.tls_required() || server_requires || matches!(trust, TlsTrust::Authority(_));
    if !wanted {
        return None;
    }
    if !offers {
        return Some(format!(
            "{at} does not offer TLS, and the client requires it"
        ));
    }
    let config = match client_config(trust) {
        Ok(config) => config,
        Err(why) => return Some(why),
    };
    let name = rustls::pki_types::ServerName::try_from(server.host().to_owned()).ok()?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, reader);
    match tokio::time::timeout(STEP, handshake).await {
        Ok(Err(e)) => Some(format!("the TLS handshake with {at} failed: {e}")),
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// A rustls client trusting what `trust` names.
fn client_config(trust: &TlsTrust) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        TlsTrust::System => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        TlsTrust::Authority(file) => {
            let pem = std::fs::read(file)
                .map_err(|e| format!("the NATS CA file {} cannot be read: {e}", file.display()))?;
            for certificate in rustls_pemfile::certs(&mut &pem[..]) {
                let certificate = certificate
                    .map_err(|e| format!("the NATS CA file {} is not PEM: {e}", file.display()))?;
                roots.add(certificate).map_err(|e| {
                    format!(
                        "the NATS CA file {} holds a bad certificate: {e}",
                        file.display()
                    )
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_and_a_server_that_is_not_nats_are_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let closed: ServerAddr = format!("nats://127.0.0.1:{port}").parse().unwrap();
        let why = why_unreachable(&[closed], None).await.unwrap();
        assert!(
            why.starts_with(&format!("cannot reach 127.0.0.1:{port}")),
            "{why}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut socket, b"HTTP/1.1 400 Bad Request\r\n")
                .await
                .unwrap();
        });
        let http: ServerAddr = format!("nats://127.0.0.1:{port}").parse().unwrap();
        let why = why_unreachable(&[http], Some(&TlsTrust::System))
            .await
            .unwrap();
        assert!(why.contains("is not a NATS server"), "{why}");
    }

    #[tokio::test]
    async fn an_unreadable_authority_is_the_reason() {
        let why = client_config(&TlsTrust::Authority("/nonexistent/ca.pem".into()))
            .err()
            .unwrap();
        assert!(why.contains("cannot be read"), "{why}");
    }
}
